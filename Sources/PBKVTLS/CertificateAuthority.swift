import Crypto
import Foundation
import SwiftASN1
import X509

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
/// certificates it issues there as `NAME.pem` / `NAME-key.pem` (keys mode 0600). ECDSA P-256.
public struct CertificateAuthority: Sendable {
    public let directory: String
    private let certificate: Certificate
    private let key: P256.Signing.PrivateKey

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
        let key = P256.Signing.PrivateKey()
        let subject: DistinguishedName
        let certificate: Certificate
        do {
            subject = try DistinguishedName { CommonName(name) }
            let now = Date()
            certificate = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
                notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(Double(days) * 86_400),
                issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
                },
                issuerPrivateKey: .init(key))
        } catch {
            throw .invalid("cannot make the CA certificate: \(error)")
        }
        try write(key.pemRepresentation, to: keyFile, mode: 0o600)
        try write(try pem(certificate), to: certPath, mode: 0o644)
        return CertificateAuthority(directory: directory, certificate: certificate, key: key)
    }

    /// Opens the CA in `directory`.
    public init(directory: String) throws(ClusterCertificateError) {
        let certPath = Self.certificatePath(directory, "ca")
        let keyFile = Self.keyPath(directory, "ca")
        let certText = try Self.read(certPath, hint: "run `pbkv certs init \(directory)` first")
        let keyText = try Self.read(keyFile, hint: "the CA's private key must sit next to ca.pem")
        do {
            certificate = try Certificate(pemEncoded: certText)
        } catch {
            throw .unreadable(path: certPath, reason: "\(error)")
        }
        do {
            key = try P256.Signing.PrivateKey(pemRepresentation: keyText)
        } catch {
            throw .unreadable(path: keyFile, reason: "\(error)")
        }
        self.directory = directory
    }

    private init(directory: String, certificate: Certificate, key: P256.Signing.PrivateKey) {
        self.directory = directory
        self.certificate = certificate
        self.key = key
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
        var names: [GeneralName] = []
        var seenHosts: Set<String> = []
        for address in hosts {
            guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
                (1...65535).contains(port), colon != address.startIndex
            else {
                throw .invalid("--host \(address): expected HOST:PORT, e.g. 10.0.0.5:7001")
            }
            names.append(.uniformResourceIdentifier(MemberIdentity.serverPrefix + address))
            var host = String(address[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard seenHosts.insert(host).inserted else { continue }
            if let ip = Self.ipBytes(host) {
                names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip))))
            } else {
                names.append(.dnsName(host))
            }
        }
        if role == .client { names.append(.uniformResourceIdentifier(MemberIdentity.clientPrefix + name)) }
        let key = P256.Signing.PrivateKey()
        let issued: Certificate
        do {
            let now = Date()
            issued = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
                notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(Double(days) * 86_400),
                issuer: certificate.subject, subject: try DistinguishedName { CommonName(name) },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                    try ExtendedKeyUsage(role == .server ? [.serverAuth, .clientAuth] : [.clientAuth])
                    SubjectAlternativeNames(names)
                },
                issuerPrivateKey: .init(self.key))
        } catch {
            throw .invalid("cannot make the certificate for \(name): \(error)")
        }
        try Self.write(key.pemRepresentation, to: Self.keyPath(directory, name), mode: 0o600)
        try Self.write(try Self.pem(issued), to: Self.certificatePath(directory, name), mode: 0o644)
    }

    // MARK: - files

    private static func pem(_ certificate: Certificate) throws(ClusterCertificateError) -> String {
        do {
            return try certificate.serializeAsPEM().pemString
        } catch {
            throw .invalid("cannot encode a certificate: \(error)")
        }
    }

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
