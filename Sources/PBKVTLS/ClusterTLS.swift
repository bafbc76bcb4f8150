import NIOCore
import NIOSSL

/// A member's TLS material: the cluster's CA (`DIR/ca.pem`) to trust and its own certificate
/// and key (`DIR/NAME.pem`, `DIR/NAME-key.pem`) to present. Both ends authenticate (mutual
/// TLS); who the peer is comes from its certificate (`MemberIdentity`), not from host names.
public struct ClusterTLS: Sendable {
    public let directory: String
    public let name: String
    /// What this member's own certificate says it is.
    public let identity: MemberIdentity
    private let trustRoots: [NIOSSLCertificate]
    private let chain: [NIOSSLCertificate]
    private let key: NIOSSLPrivateKey

    /// Loads `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME-key.pem`.
    public init(directory: String, name: String) throws(ClusterCertificateError) {
        let caPath = CertificateAuthority.certificatePath(directory, "ca")
        let certPath = CertificateAuthority.certificatePath(directory, name)
        let keyPath = CertificateAuthority.keyPath(directory, name)
        let caText = try CertificateAuthority.read(caPath, hint: "make a CA with `pbkv certs init \(directory)`")
        let certText = try CertificateAuthority.read(
            certPath, hint: "issue it with `pbkv certs issue \(directory) \(name) --role server|client [--host HOST:PORT]`")
        let keyText = try CertificateAuthority.read(keyPath, hint: "the key is written next to \(name).pem by `pbkv certs issue`")
        do {
            trustRoots = try NIOSSLCertificate.fromPEMBytes(Array(caText.utf8))
        } catch {
            throw .unreadable(path: caPath, reason: "\(error)")
        }
        do {
            chain = try NIOSSLCertificate.fromPEMBytes(Array(certText.utf8))
        } catch {
            throw .unreadable(path: certPath, reason: "\(error)")
        }
        do {
            key = try NIOSSLPrivateKey(bytes: Array(keyText.utf8), format: .pem)
        } catch {
            throw .unreadable(path: keyPath, reason: "\(error)")
        }
        guard let leaf = chain.first, let der = try? leaf.toDERBytes(), let identity = MemberIdentity(derEncoded: der) else {
            throw .unreadable(path: certPath, reason: "not a pbkv member certificate (no pbkv://server/ or pbkv://client/ name)")
        }
        self.directory = directory
        self.name = name
        self.identity = identity
    }

    private func configuration(server: Bool) -> TLSConfiguration {
        var configuration =
            server
            ? TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            : TLSConfiguration.makeClientConfiguration()
        if !server {
            configuration.certificateChain = chain.map { .certificate($0) }
            configuration.privateKey = .privateKey(key)
        }
        configuration.trustRoots = .certificates(trustRoots)
        configuration.additionalTrustRoots = []
        // The chain is verified against the cluster CA only; the peer's identity (the address
        // it may speak for) is checked by pbkv from its certificate, not by host name.
        configuration.certificateVerification = .noHostnameVerification
        configuration.minimumTLSVersion = .tlsv12
        return configuration
    }

    /// The context for accepted connections: a client certificate of the cluster CA is required.
    public func makeServerContext() throws -> NIOSSLContext { try NIOSSLContext(configuration: configuration(server: true)) }

    /// The context for connections this member opens: it presents its own certificate.
    public func makeClientContext() throws -> NIOSSLContext { try NIOSSLContext(configuration: configuration(server: false)) }

    /// The verified identity of the peer of a TLS channel (nil when the channel has no TLS
    /// handler or the peer's certificate names no pbkv role). Call on the channel's loop after
    /// the handshake.
    public static func peerIdentity(of pipeline: ChannelPipeline.SynchronousOperations) -> MemberIdentity? {
        guard let handler = try? pipeline.handler(type: NIOSSLHandler.self),
            let certificate = handler.peerCertificate, let der = try? certificate.toDERBytes()
        else { return nil }
        return MemberIdentity(derEncoded: der)
    }
}

/// A member's ready-to-use mutual TLS: the contexts for accepted and for opened connections,
/// built once from its `ClusterTLS` material.
public struct MutualTLS: Sendable {
    public let material: ClusterTLS
    public let serverContext: NIOSSLContext
    public let clientContext: NIOSSLContext

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
