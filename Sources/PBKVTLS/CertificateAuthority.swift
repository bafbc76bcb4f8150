import COpenSSL
import Foundation

/// Why a certificate command or TLS set-up failed. Each case says what to do.
public enum ClusterCertificateError: Error, Sendable, Hashable, CustomStringConvertible {
    /// `certs init` found a CA already there: it is never overwritten.
    case authorityExists(path: String)
    /// A file that should be there is missing.
    case missing(path: String, hint: String)
    /// A file could not be read or parsed.
    case unreadable(path: String, reason: String)
    /// A file could not be written.
    case unwritable(path: String, reason: String)
    /// The command's arguments are unusable.
    case invalid(String)

    public var description: String {
        switch self {
        case .authorityExists(let path):
            "a CA already exists at \(path); pbkv never overwrites one (certificates signed by it would stop working). "
                + "Use another directory, or move the old CA away yourself"
        case .missing(let path, let hint): "\(path) does not exist: \(hint)"
        case .unreadable(let path, let reason): "cannot read \(path): \(reason)"
        case .unwritable(let path, let reason): "cannot write \(path): \(reason)"
        case .invalid(let what): what
        }
    }
}

/// A cluster's certificate authority in a directory: `ca.pem` and `ca-key.pem`, and the
/// certificates it issues there as `NAME.pem` / `NAME-key.pem` (keys mode 0600). ECDSA P-256,
/// signed with SHA-256 by the system's libcrypto (OpenSSL 3).
public struct CertificateAuthority: Sendable {
    public let directory: String
    private let certificatePEM: String
    private let keyPEM: String

    public static func certificatePath(_ directory: String, _ name: String) -> String { directory + "/\(name).pem" }
    public static func keyPath(_ directory: String, _ name: String) -> String { directory + "/\(name)-key.pem" }

    /// Makes a new CA in `directory` (created if absent); refuses to overwrite an existing one.
    @discardableResult
    public static func create(in directory: String, name: String = "pbkv cluster CA", validFor days: Int = 3650) throws(ClusterCertificateError)
        -> CertificateAuthority
    {
        let certPath = certificatePath(directory, "ca")
        let keyFile = keyPath(directory, "ca")
        for path in [certPath, keyFile] where FileManager.default.fileExists(atPath: path) {
            throw .authorityExists(path: path)
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw .unwritable(path: directory, reason: "\(error)")
        }
        let (keyPEM, certificatePEM) = try Self.makeKeyAndCertificate(
            commonName: name, issuer: nil, days: days,
            extensions: [
                (NID_basic_constraints, "critical,CA:TRUE,pathlen:0"),
                (NID_key_usage, "critical,keyCertSign,cRLSign"),
                (NID_subject_key_identifier, "hash"),
            ],
            alternativeNames: [])
        try write(keyPEM, to: keyFile, mode: 0o600)
        try write(certificatePEM, to: certPath, mode: 0o644)
        return CertificateAuthority(directory: directory, certificatePEM: certificatePEM, keyPEM: keyPEM)
    }

    /// Opens the CA in `directory`.
    public init(directory: String) throws(ClusterCertificateError) {
        let certPath = Self.certificatePath(directory, "ca")
        let keyFile = Self.keyPath(directory, "ca")
        let certText = try Self.read(certPath, hint: "run `pbkv certs init \(directory)` first")
        let keyText = try Self.read(keyFile, hint: "the CA's private key must sit next to ca.pem")
        do {
            _ = try OpenSSLCertificate(pem: certText)
        } catch {
            throw .unreadable(path: certPath, reason: "\(error)")
        }
        do {
            _ = try OpenSSLPrivateKey(pem: keyText)
        } catch {
            throw .unreadable(path: keyFile, reason: "\(error)")
        }
        self.init(directory: directory, certificatePEM: certText, keyPEM: keyText)
    }

    private init(directory: String, certificatePEM: String, keyPEM: String) {
        self.directory = directory
        self.certificatePEM = certificatePEM
        self.keyPEM = keyPEM
    }

    /// Issues `NAME.pem` and `NAME-key.pem` in the CA's directory. A server certificate lists
    /// the `HOST:PORT` addresses it may speak for (at least one) and works in both directions;
    /// a client certificate may call client methods only.
    public func issue(name: String, role: MemberRole, hosts: [String], validFor days: Int = 825) throws(ClusterCertificateError) {
        guard !name.isEmpty, name != "ca", !name.contains("/") else {
            throw .invalid("certificate name \"\(name)\" is not usable: give a plain name other than \"ca\"")
        }
        if role == .server && hosts.isEmpty {
            throw .invalid("a server certificate needs at least one --host HOST:PORT (the address it advertises in views)")
        }
        if role == .client && !hosts.isEmpty {
            throw .invalid("--host is for server certificates; a client certificate speaks for no address")
        }
        var names: [(Int32, [UInt8])] = []
        var seenHosts: Set<String> = []
        for address in hosts {
            guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
                (1...65535).contains(port), colon != address.startIndex
            else {
                throw .invalid("--host \(address): expected HOST:PORT, e.g. 10.0.0.5:7001")
            }
            names.append((GEN_URI, Array((MemberIdentity.serverPrefix + address).utf8)))
            var host = String(address[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard seenHosts.insert(host).inserted else { continue }
            if let ip = Self.ipBytes(host) {
                names.append((GEN_IPADD, ip))
            } else {
                names.append((GEN_DNS, Array(host.utf8)))
            }
        }
        if role == .client { names.append((GEN_URI, Array((MemberIdentity.clientPrefix + name).utf8))) }
        let (keyPEM, certificatePEM) = try Self.makeKeyAndCertificate(
            commonName: name, issuer: (certificatePEM, keyPEM), days: days,
            extensions: [
                (NID_basic_constraints, "critical,CA:FALSE"),
                (NID_key_usage, "critical,digitalSignature"),
                (NID_ext_key_usage, role == .server ? "serverAuth,clientAuth" : "clientAuth"),
                (NID_subject_key_identifier, "hash"),
                (NID_authority_key_identifier, "keyid:always"),
            ],
            alternativeNames: names)
        try Self.write(keyPEM, to: Self.keyPath(directory, name), mode: 0o600)
        try Self.write(certificatePEM, to: Self.certificatePath(directory, name), mode: 0o644)
    }

    /// A new P-256 key and a certificate for it, both as PEM, signed by `issuer` (PEM
    /// certificate and key), or self-signed when it is nil.
    private static func makeKeyAndCertificate(
        commonName: String, issuer: (certificate: String, key: String)?, days: Int,
        extensions: [(nid: Int32, value: String)], alternativeNames: [(type: Int32, bytes: [UInt8])]
    ) throws(ClusterCertificateError) -> (key: String, certificate: String) {
        do {
            let key = try OpenSSLPrivateKey.generateP256()
            let authority = try issuer.map { issuer throws(OpenSSLFailure) in
                (try OpenSSLCertificate(pem: issuer.certificate), try OpenSSLPrivateKey(pem: issuer.key))
            }
            let certificate = try sign(
                commonName: commonName, key: key, issuer: authority?.0, issuerKey: authority?.1 ?? key, days: days,
                extensions: extensions, alternativeNames: alternativeNames)
            return (try key.pem(), try certificate.pem())
        } catch {
            throw .invalid("cannot make the certificate for \(commonName): \(error)")
        }
    }

    /// A v3 certificate for `key` named `commonName`, valid from 5 minutes ago for `days` days,
    /// with a random 159-bit serial, signed by `issuerKey` (self-signed when `issuer` is nil).
    private static func sign(
        commonName: String, key: OpenSSLPrivateKey, issuer: OpenSSLCertificate?, issuerKey: OpenSSLPrivateKey, days: Int,
        extensions: [(nid: Int32, value: String)], alternativeNames: [(type: Int32, bytes: [UInt8])]
    ) throws(OpenSSLFailure) -> OpenSSLCertificate {
        let certificate = try OpenSSLCertificate.makeV3()
        let x509 = certificate.pointer
        var serial = [UInt8](repeating: 0, count: 20)
        guard RAND_bytes(&serial, Int32(serial.count)) == 1 else { throw OpenSSLFailure("drawing a serial number") }
        serial[0] &= 0x7f  // positive, as RFC 5280 requires
        guard let number = BN_bin2bn(serial, Int32(serial.count), nil) else { throw OpenSSLFailure("making a serial number") }
        defer { BN_free(number) }
        guard BN_to_ASN1_INTEGER(number, X509_get_serialNumber(x509)) != nil,
            X509_gmtime_adj(X509_getm_notBefore(x509), -300) != nil,
            X509_time_adj_ex(X509_getm_notAfter(x509), Int32(clamping: days), 0, nil) != nil
        else { throw OpenSSLFailure("setting the serial number and validity") }
        guard let subject = X509_NAME_new() else { throw OpenSSLFailure("allocating a name") }
        defer { X509_NAME_free(subject) }
        guard X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, commonName, -1, -1, 0) == 1,
            X509_set_subject_name(x509, subject) == 1,
            X509_set_issuer_name(x509, issuer.map { X509_get_subject_name($0.pointer) } ?? subject) == 1,
            X509_set_pubkey(x509, key.pointer) == 1
        else { throw OpenSSLFailure("setting the names and public key") }
        for (nid, value) in extensions where pbkv_add_extension(x509, issuer?.pointer ?? x509, nid, value) != 1 {
            throw OpenSSLFailure("adding the extension \(value)")
        }
        if !alternativeNames.isEmpty {
            guard let names = GENERAL_NAMES_new() else { throw OpenSSLFailure("allocating the alternative names") }
            defer { GENERAL_NAMES_free(names) }
            for name in alternativeNames where pbkv_general_names_append(names, name.type, name.bytes, Int32(name.bytes.count)) != 1 {
                throw OpenSSLFailure("adding an alternative name")
            }
            guard X509_add1_ext_i2d(x509, NID_subject_alt_name, UnsafeMutableRawPointer(names), 0, UInt(X509V3_ADD_DEFAULT)) == 1
            else { throw OpenSSLFailure("adding the subject alternative names") }
        }
        guard X509_sign(x509, issuerKey.pointer, EVP_sha256()) > 0 else { throw OpenSSLFailure("signing the certificate") }
        return certificate
    }

    // MARK: - files

    static func read(_ path: String, hint: String) throws(ClusterCertificateError) -> String {
        guard FileManager.default.fileExists(atPath: path) else { throw .missing(path: path, hint: hint) }
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw .unreadable(path: path, reason: "\(error)")
        }
    }

    private static func write(_ text: String, to path: String, mode: Int) throws(ClusterCertificateError) {
        // Created with its final mode, so a key is never readable by others, not even briefly.
        guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode]) else {
            throw .unwritable(path: path, reason: "the file could not be created")
        }
        do {
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        } catch {
            throw .unwritable(path: path, reason: "\(error)")
        }
    }

    /// The 4 or 16 bytes of an IPv4 or IPv6 literal; nil for a name.
    static func ipBytes(_ host: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}
