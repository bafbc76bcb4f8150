import NIOCore

/// A member's TLS material: the cluster's CA (`DIR/ca.pem`) to trust and its own certificate
/// and key (`DIR/NAME.pem`, `DIR/NAME-key.pem`) to present. Both ends authenticate (mutual
/// TLS); who the peer is comes from its certificate (`MemberIdentity`), not from host names.
public struct ClusterTLS: Sendable {
    public let directory: String
    public let name: String
    /// What this member's own certificate says it is.
    public let identity: MemberIdentity
    private let caText: String
    private let certificateText: String
    private let keyText: String

    /// Loads `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME-key.pem`.
    public init(directory: String, name: String) throws(ClusterCertificateError) {
        let caPath = CertificateAuthority.certificatePath(directory, "ca")
        let certPath = CertificateAuthority.certificatePath(directory, name)
        let keyPath = CertificateAuthority.keyPath(directory, name)
        caText = try CertificateAuthority.read(caPath, hint: "make a CA with `pbkv certs init \(directory)`")
        certificateText = try CertificateAuthority.read(
            certPath, hint: "issue it with `pbkv certs issue \(directory) \(name) --role server|client [--host HOST:PORT]`")
        keyText = try CertificateAuthority.read(keyPath, hint: "the key is written next to \(name).pem by `pbkv certs issue`")
        _ = try Self.certificates(caText, path: caPath)
        let chain = try Self.certificates(certificateText, path: certPath)
        guard let leaf = chain.first, let identity = MemberIdentity(certificate: leaf) else {
            throw .unreadable(path: certPath, reason: "not a pbkv member certificate (no pbkv://server/ or pbkv://client/ name)")
        }
        do {
            _ = try OpenSSLPrivateKey(pem: keyText)
        } catch {
            throw .unreadable(path: keyPath, reason: "\(error)")
        }
        self.directory = directory
        self.name = name
        self.identity = identity
    }

    /// Every certificate of a PEM file's text (at least one), or what is wrong with `path`.
    private static func certificates(_ text: String, path: String) throws(ClusterCertificateError) -> [OpenSSLCertificate] {
        do {
            return try OpenSSLCertificate.all(pem: text)
        } catch {
            throw .unreadable(path: path, reason: "\(error)")
        }
    }

    private func makeContext(_ role: TLSContext.Role) throws(ClusterCertificateError) -> TLSContext {
        do {
            return try TLSContext(
                role: role, trustRoots: OpenSSLCertificate.all(pem: caText), chain: OpenSSLCertificate.all(pem: certificateText),
                key: OpenSSLPrivateKey(pem: keyText))
        } catch {
            throw .unreadable(path: CertificateAuthority.certificatePath(directory, name), reason: "\(error)")
        }
    }

    /// The context for accepted connections: a client certificate of the cluster CA is required.
    public func makeServerContext() throws(ClusterCertificateError) -> TLSContext { try makeContext(.server) }

    /// The context for connections this member opens: it presents its own certificate.
    public func makeClientContext() throws(ClusterCertificateError) -> TLSContext { try makeContext(.client) }

    /// The verified identity of the peer of a TLS channel (nil when the channel has no TLS
    /// handler, its handshake has not completed, or the peer's certificate names no pbkv role).
    /// Call on the channel's loop.
    public static func peerIdentity(of pipeline: ChannelPipeline.SynchronousOperations) -> MemberIdentity? {
        (try? pipeline.handler(type: TLSHandler.self))?.peerIdentity
    }
}

/// A member's ready-to-use mutual TLS: the contexts for accepted and for opened connections,
/// built once from its `ClusterTLS` material.
public struct MutualTLS: Sendable {
    public let material: ClusterTLS
    public let serverContext: TLSContext
    public let clientContext: TLSContext

    public init(_ material: ClusterTLS) throws {
        self.material = material
        self.serverContext = try material.makeServerContext()
        self.clientContext = try material.makeClientContext()
    }

    /// Loads `DIR/ca.pem`, `DIR/NAME.pem`, `DIR/NAME-key.pem` and builds the contexts.
    public init(directory: String, name: String) throws {
        try self.init(ClusterTLS(directory: directory, name: name))
    }
}
