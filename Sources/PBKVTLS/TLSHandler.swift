import COpenSSL
import NIOCore

/// A TLS connection failed; the handler closes the channel after reporting it.
public enum TLSConnectionError: Error, CustomStringConvertible {
    /// The handshake failed: OpenSSL's reasons, and the certificate check's verdict when that failed.
    case handshakeFailed(reason: String)
    /// A record could not be decrypted or verified, or the peer sent a fatal alert.
    case recordFailed(reason: String)
    /// The connection closed before the handshake completed.
    case closedDuringHandshake
    /// OpenSSL could not make a session for a new connection.
    case sessionUnavailable(reason: String)

    public var description: String {
        switch self {
        case .handshakeFailed(let reason):
            "the TLS handshake failed (\(reason)): both ends need certificates of this cluster's CA for their role (`pbkv certs issue DIR NAME --role server|client`)"
        case .recordFailed(let reason):
            "a TLS record failed (\(reason)): the peer is not speaking valid TLS; the connection was closed"
        case .closedDuringHandshake:
            "the connection closed during the TLS handshake: the peer refused this member's certificate or is not a pbkv member"
        case .sessionUnavailable(let reason):
            "OpenSSL could not make a TLS session (\(reason)): the process is probably out of memory"
        }
    }
}

/// Runs TLS over a channel with OpenSSL: ciphertext below, plaintext above. One session per
/// channel, from a `TLSContext`; writes made before the handshake completes are held and sent
/// after it. The peer's certificate has been verified against the cluster CA when the first
/// plaintext arrives; `peerIdentity` then says what it lets the peer be.
///
/// OpenSSL reads from and writes to two memory BIOs; this handler moves bytes between them and
/// the channel, so all I/O stays NIO's. Every call runs on the channel's event loop.
public final class TLSHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State { case idle, handshaking, active, closed }

    private let session: OpaquePointer
    /// Ciphertext from the peer, for OpenSSL to read.
    private let incoming: OpaquePointer
    /// Ciphertext OpenSSL wrote, for the channel.
    private let outgoing: OpaquePointer
    private var state = State.idle
    /// Plaintext written and not yet flushed (or written before the handshake completed):
    /// encrypted together at the next flush, so a flush of many small writes costs one record.
    private var heldWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    /// Promises of plaintext already encrypted into `outgoing`, completed by the next channel write.
    private var encryptedPromises: [EventLoopPromise<Void>] = []

    /// The peer's verified identity, from its certificate: set when the handshake completes
    /// (nil before, or when the certificate names no pbkv role).
    public private(set) var peerIdentity: MemberIdentity?

    /// A handler for one channel. Fails only when OpenSSL cannot allocate a session.
    public init(context: TLSContext) throws(TLSConnectionError) {
        ERR_clear_error()
        guard let session = SSL_new(context.pointer) else {
            throw .sessionUnavailable(reason: OpenSSLFailure("SSL_new").description)
        }
        guard let incoming = BIO_new(BIO_s_mem()), let outgoing = BIO_new(BIO_s_mem()) else {
            SSL_free(session)
            throw .sessionUnavailable(reason: OpenSSLFailure("BIO_new").description)
        }
        SSL_set_bio(session, incoming, outgoing)  // the session owns both BIOs from here
        if context.role == .server { SSL_set_accept_state(session) } else { SSL_set_connect_state(session) }
        self.session = session
        self.incoming = incoming
        self.outgoing = outgoing  // the session holds its own reference to the context's SSL_CTX
    }

    deinit { SSL_free(session) }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startHandshake(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        startHandshake(context: context)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        markClosed()
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state != .closed else { return }
        let ciphertext = unwrapInboundIn(data)
        let stored = ciphertext.withUnsafeReadableBytes { bytes -> Bool in
            bytes.isEmpty || BIO_write(incoming, bytes.baseAddress, Int32(bytes.count)) == Int32(bytes.count)
        }
        guard stored else {
            return fail(context: context, TLSConnectionError.recordFailed(reason: "out of memory buffering \(ciphertext.readableBytes) bytes"))
        }
        switch state {
        case .idle, .handshaking:
            state = .handshaking
            advanceHandshake(context: context)
        case .active:
            readPlaintext(context: context)
        case .closed:
            break
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let plaintext = unwrapOutboundIn(data)
        switch state {
        case .idle, .handshaking, .active:
            heldWrites.append((plaintext, promise))
        case .closed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        switch state {
        case .idle, .handshaking:
            break  // the held writes go out, flushed, when the handshake completes
        case .active:
            encryptHeldWrites(context: context)
            sendCiphertext(context: context)
            context.flush()
        case .closed:
            context.flush()
        }
    }

    /// A full close sends close_notify first; the channel closes without waiting for the peer's
    /// (pbkv's frames carry their own lengths, so a truncated stream is detected above TLS).
    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, state == .active {
            encryptHeldWrites(context: context)
            ERR_clear_error()
            _ = SSL_shutdown(session)
            ERR_clear_error()
            sendCiphertext(context: context)
            context.flush()
        }
        if mode == .all { markClosed() }
        context.close(mode: mode, promise: promise)
    }

    // MARK: - Handshake

    private func startHandshake(context: ChannelHandlerContext) {
        guard state == .idle else { return }
        state = .handshaking
        advanceHandshake(context: context)
    }

    private func advanceHandshake(context: ChannelHandlerContext) {
        ERR_clear_error()
        let result = SSL_do_handshake(session)
        if result == 1 {
            state = .active
            if let certificate = SSL_get1_peer_certificate(session) {
                peerIdentity = MemberIdentity(certificate: OpenSSLCertificate(owning: certificate))
            }
            encryptHeldWrites(context: context)
            sendCiphertext(context: context)
            context.flush()
            // The peer's first records may have come with its last handshake message.
            if state == .active { readPlaintext(context: context) }
            return
        }
        if SSL_get_error(session, result) == SSL_ERROR_WANT_READ {
            ERR_clear_error()
            sendCiphertext(context: context)
            context.flush()
            return
        }
        var reasons = OpenSSLFailure("handshake").reasons
        let verdict = SSL_get_verify_result(session)
        if verdict != X509_V_OK, let text = X509_verify_cert_error_string(verdict) {
            reasons.append("certificate check: \(String(cString: text))")
        }
        fail(context: context, TLSConnectionError.handshakeFailed(reason: reasons.isEmpty ? "no reason given" : reasons.joined(separator: "; ")))
    }

    // MARK: - Records

    /// Decrypts what `incoming` holds and passes it on as one buffer.
    private func readPlaintext(context: ChannelHandlerContext) {
        var plaintext = context.channel.allocator.buffer(capacity: 0)
        var peerClosed = false
        ERR_clear_error()  // SSL_get_error reads the queue: it must hold only this session's errors
        while true {
            var result: Int32 = 0
            // Room for all the ciphertext held (plaintext is shorter); grown only once it is full.
            let room = plaintext.writableBytes > 0 ? 0 : max(Int(BIO_ctrl_pending(incoming)), 512)
            plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: room) { buffer in
                var count = 0
                result = SSL_read_ex(session, buffer.baseAddress, buffer.count, &count)
                return result == 1 ? count : 0
            }
            if result == 1 {
                // Nothing left in OpenSSL or in `incoming`: done, without a read that only says so.
                if SSL_pending(session) == 0, BIO_ctrl_pending(incoming) == 0 { break }
                continue
            }
            let error = SSL_get_error(session, result)
            if error == SSL_ERROR_WANT_READ { break }
            if error == SSL_ERROR_ZERO_RETURN {
                peerClosed = true
                break
            }
            let reasons = OpenSSLFailure("record").reasons
            if plaintext.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(plaintext)) }
            return fail(context: context, TLSConnectionError.recordFailed(reason: reasons.isEmpty ? "error \(error)" : reasons.joined(separator: "; ")))
        }
        if plaintext.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(plaintext)) }
        // Reading may have produced records of its own (a key update's answer, close_notify).
        if BIO_ctrl_pending(outgoing) > 0, state == .active {
            sendCiphertext(context: context)
            context.flush()
        }
        if peerClosed, state == .active { context.close(promise: nil) }
    }

    /// Encrypts the held writes as one stretch of plaintext (records of up to 16 KiB).
    private func encryptHeldWrites(context: ChannelHandlerContext) {
        guard !heldWrites.isEmpty else { return }
        let plaintext: ByteBuffer
        if heldWrites.count == 1 {
            plaintext = heldWrites[0].0
        } else {
            var joined = context.channel.allocator.buffer(capacity: heldWrites.reduce(0) { $0 + $1.0.readableBytes })
            for (part, _) in heldWrites { joined.writeImmutableBuffer(part) }
            plaintext = joined
        }
        // On failure the connection is closed and failPending fails the held writes' promises.
        guard encrypt(context: context, plaintext) else { return }
        for (_, promise) in heldWrites { if let promise { encryptedPromises.append(promise) } }
        heldWrites.removeAll(keepingCapacity: true)
    }

    /// Encrypts `plaintext` into `outgoing`; on failure closes the connection and returns false.
    private func encrypt(context: ChannelHandlerContext, _ plaintext: ByteBuffer) -> Bool {
        var failure: Int32 = 0
        plaintext.withUnsafeReadableBytes { bytes in
            guard !bytes.isEmpty else { return }
            ERR_clear_error()
            var written = 0
            // The memory BIO takes everything: SSL_write_ex writes all of it or fails.
            if SSL_write_ex(session, bytes.baseAddress, bytes.count, &written) != 1 { failure = SSL_get_error(session, 0) }
        }
        if failure != 0 {
            let reasons = OpenSSLFailure("write").reasons
            fail(context: context, TLSConnectionError.recordFailed(reason: reasons.isEmpty ? "error \(failure)" : reasons.joined(separator: "; ")))
            return false
        }
        return true
    }

    /// Writes what OpenSSL produced to the channel (without flushing), completing the promises
    /// of the plaintext it carries.
    private func sendCiphertext(context: ChannelHandlerContext) {
        let pending = Int(BIO_ctrl_pending(outgoing))
        let promise: EventLoopPromise<Void>?
        switch encryptedPromises.count {
        case 0: promise = nil
        case 1: promise = encryptedPromises[0]
        default:
            let combined = context.eventLoop.makePromise(of: Void.self)
            for each in encryptedPromises { combined.futureResult.cascade(to: each) }
            promise = combined
        }
        encryptedPromises.removeAll(keepingCapacity: true)
        guard pending > 0 else {
            promise?.succeed()
            return
        }
        var ciphertext = context.channel.allocator.buffer(capacity: pending)
        ciphertext.writeWithUnsafeMutableBytes(minimumWritableBytes: pending) { buffer in
            Int(max(BIO_read(outgoing, buffer.baseAddress, Int32(pending)), 0))
        }
        context.write(wrapOutboundOut(ciphertext), promise: promise)
    }

    // MARK: - Failure

    private func fail(context: ChannelHandlerContext, _ error: any Error) {
        guard state != .closed else { return }
        // An alert OpenSSL wrote tells the peer why.
        sendCiphertext(context: context)
        context.flush()
        state = .closed
        failPending(error)
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    /// The connection is over: what waits to be sent fails, as closed during the handshake
    /// or as written to a closed channel.
    private func markClosed() {
        let wasHandshaking = state == .idle || state == .handshaking
        state = .closed
        failPending(wasHandshaking ? TLSConnectionError.closedDuringHandshake : ChannelError.ioOnClosedChannel)
    }

    private func failPending(_ error: any Error) {
        let held = heldWrites
        let encrypted = encryptedPromises
        heldWrites = []
        encryptedPromises = []
        for (_, promise) in held { promise?.fail(error) }
        for promise in encrypted { promise.fail(error) }
    }
}
