import COpenSSL

/// One side's TLS configuration (an OpenSSL `SSL_CTX`): the cluster CA as the only trust root,
/// the member's certificate and key, the peer's certificate required and verified, TLS 1.2 at
/// least. `TLSHandler` makes each connection's TLS session from it.
public final class TLSContext: @unchecked Sendable {  // SSL_CTX is only read after init; OpenSSL locks what SSL_new shares.
    /// Which end of the handshake the connections made from this context play.
    public enum Role: Sendable { case server, client }

    public let role: Role
    let pointer: OpaquePointer

    /// A context that trusts `trustRoots` only and presents `chain` (leaf first) with `key`.
    /// A server context demands a client certificate; neither checks host names (pbkv checks the
    /// certificate's pbkv identity instead, see `MemberIdentity`).
    init(role: Role, trustRoots: [OpenSSLCertificate], chain: [OpenSSLCertificate], key: OpenSSLPrivateKey) throws(OpenSSLFailure) {
        ERR_clear_error()
        guard let context = SSL_CTX_new(role == .server ? TLS_server_method() : TLS_client_method()) else {
            throw OpenSSLFailure("creating a TLS context")
        }
        self.pointer = context
        self.role = role
        guard pbkv_ssl_ctx_configure(context) == 1 else { throw OpenSSLFailure("configuring a TLS context") }
        // No default verify paths are loaded: the cluster CA is the only root.
        guard let store = SSL_CTX_get_cert_store(context) else { throw OpenSSLFailure("reading the context's trust store") }
        for root in trustRoots where X509_STORE_add_cert(store, root.pointer) != 1 {
            throw OpenSSLFailure("adding the cluster CA to the trust store")
        }
        guard let leaf = chain.first else { throw OpenSSLFailure("no certificate to present") }
        guard SSL_CTX_use_certificate(context, leaf.pointer) == 1 else { throw OpenSSLFailure("using the member certificate") }
        for intermediate in chain.dropFirst() where pbkv_ssl_ctx_add_chain_certificate(context, intermediate.pointer) != 1 {
            throw OpenSSLFailure("adding an intermediate certificate")
        }
        guard SSL_CTX_use_PrivateKey(context, key.pointer) == 1, SSL_CTX_check_private_key(context) == 1 else {
            throw OpenSSLFailure("using the member key (does it belong to the certificate?)")
        }
        let demandCertificate = role == .server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER | demandCertificate, nil)
        SSL_CTX_set_verify_depth(context, 4)
    }

    deinit { SSL_CTX_free(pointer) }
}
