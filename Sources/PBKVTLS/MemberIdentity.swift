import COpenSSL

/// What a certificate lets its holder be in a pbkv cluster.
public enum MemberRole: String, Sendable, Hashable, CustomStringConvertible {
    /// A KV server or view service: may ping, forward and transfer, for the addresses it names.
    case server
    /// A client: may call Get, Put, PutHash and GetView, nothing else.
    case client

    public var description: String { rawValue }
}

/// Who is at the other end of a TLS connection, read from its certificate (already verified
/// against the cluster's CA by the TLS handshake).
///
/// pbkv names servers in views by their advertised `HOST:PORT`, and several servers may share
/// one IP, so the port is part of the identity: a server certificate carries one URI subject
/// alternative name `pbkv://server/HOST:PORT` per address it may speak for (plus IP or DNS names
/// of those hosts for ordinary TLS tooling). A client certificate carries `pbkv://client/NAME`.
public struct MemberIdentity: Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public var role: MemberRole
    /// The `HOST:PORT` addresses a server certificate covers (empty for clients).
    public var addresses: [String]

    public init(name: String, role: MemberRole, addresses: [String] = []) {
        self.name = name
        self.role = role
        self.addresses = addresses
    }

    /// True when this is a server certificate that covers `address` (`HOST:PORT`).
    public func speaks(for address: String) -> Bool {
        role == .server && addresses.contains(address)
    }

    public var description: String {
        role == .server ? "server \(name) (\(addresses.joined(separator: ", ")))" : "client \(name)"
    }

    static let serverPrefix = "pbkv://server/"
    static let clientPrefix = "pbkv://client/"

    /// The identity a verified certificate states (DER bytes); nil when it names no pbkv role
    /// or is not a certificate. A server is named by its certificate's common name.
    public init?(derEncoded bytes: [UInt8]) {
        guard let certificate = try? OpenSSLCertificate(der: bytes) else { return nil }
        self.init(certificate: certificate)
    }

    init?(certificate: OpenSSLCertificate) {
        var servers: [String] = []
        var clientName: String?
        for name in certificate.subjectAlternativeNames where name.type == GEN_URI {
            let uri = String(decoding: name.bytes, as: UTF8.self)
            if uri.hasPrefix(Self.serverPrefix) {
                servers.append(String(uri.dropFirst(Self.serverPrefix.count)))
            } else if uri.hasPrefix(Self.clientPrefix) {
                clientName = String(uri.dropFirst(Self.clientPrefix.count))
            }
        }
        if !servers.isEmpty {
            self.init(name: certificate.commonName ?? servers[0], role: .server, addresses: servers)
        } else if let clientName {
            self.init(name: clientName, role: .client)
        } else {
            return nil
        }
    }
}
