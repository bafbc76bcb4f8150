import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVTLS
import Synchronization

/// `TCPTransport`'s listening side: accepts TCP (optionally mutual TLS) connections up to the
/// connection limit and serves each with the frame decoder and an `RPCServerHandler`.
/// Calls are answered on the connection's event loop; one bad peer only loses its own connection.
package final class TCPListener: RPCListener {
    private let channel: any Channel
    private let connections: AcceptedConnections
    /// The address actually bound (useful with port 0).
    let localAddress: SocketAddress

    private init(channel: any Channel, connections: AcceptedConnections) {
        self.channel = channel
        self.connections = connections
        self.localAddress = channel.localAddress!
    }

    package var port: Int { localAddress.port ?? 0 }
    package var address: String { "\(localAddress)" }
    /// Connections open now, counted against `maxConnections` (refused ones are not).
    package var connectionCount: Int { connections.count }

    /// Binds and starts serving `tables` on `group`.
    static func start(
        configuration: RPCServerConfiguration, group: any EventLoopGroup, tables: [RPCMethodTable], logger: Logger
    ) async throws -> TCPListener {
        let connections = AcceptedConnections()
        configuration.metrics?.addConnectionSource { connections.count }
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelInitializer { channel in
                let ticket: UInt64
                switch connections.insert(channel, limit: configuration.maxConnections) {
                case .admitted(let admittedTicket, let refusedBefore, let displaced):
                    ticket = admittedTicket
                    if refusedBefore > 0 {
                        logger.info("accepting connections again", metadata: [
                            "limit": "\(configuration.maxConnections)", "refused": "\(refusedBefore)",
                        ])
                    }
                    if let displaced {
                        logger.debug("connection limit reached: closing the oldest connection without a Hello", metadata: [
                            "limit": "\(configuration.maxConnections)",
                            "closed": "\(displaced.remoteAddress.map { "\($0)" } ?? "?")",
                        ])
                        displaced.close(promise: nil)
                    }
                case .refused(let first):
                    if first {
                        logger.info("connection limit reached: refusing new connections with a Goodbye", metadata: [
                            "limit": "\(configuration.maxConnections)",
                        ])
                    }
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ConnectionRefuser(limit: configuration.maxConnections, maxPayload: configuration.maxPayload))
                    }
                case .serverClosed:
                    return channel.eventLoop.makeSucceededVoidFuture()
                }
                let clientLimit = configuration.clientConnectionLimit
                let identify: ConnectionIdentification = { member in
                    connections.identify(ticket, asMember: member, clientLimit: clientLimit)
                }
                return channel.eventLoop.makeCompletedFuture {
                    if let tls = configuration.tls {
                        try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls.serverContext))
                    }
                    try addConnectionHandlers(
                        to: channel.pipeline.syncOperations, configuration: configuration, tables: tables,
                        identify: identify, logger: logger)
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        return TCPListener(channel: channel, connections: connections)
    }

    /// Adds what serves one admitted connection (after TLS): the frame decoder, then the
    /// handshake and dispatch handler. `package` for one more caller: the fuzzer
    /// (`Sources/PBKVFuzz`) drives these very handlers over an `EmbeddedChannel`, without sockets.
    package static func addConnectionHandlers(
        to pipeline: ChannelPipeline.SynchronousOperations, configuration: RPCServerConfiguration,
        tables: [RPCMethodTable], identify: @escaping ConnectionIdentification = { _ in true }, logger: Logger
    ) throws {
        try pipeline.addHandler(ByteToMessageHandler(FrameDecoder(maxPayload: configuration.maxPayload)))
        try pipeline.addHandler(RPCServerHandler(configuration: configuration, tables: tables, identify: identify, logger: logger))
    }

    /// Stops accepting connections, closes the listening socket and every connection it accepted
    /// (a stopped server must not go on answering calls on connections made before).
    package func close() async {
        try? await channel.close()
        for connection in connections.closeAll() { try? await connection.close() }
    }
}


/// Told, at a connection's Hello, whether its peer is a cluster member; false: no room for
/// another client connection (the handler then says Goodbye).
package typealias ConnectionIdentification = @Sendable (_ member: Bool) -> Bool

/// The connections a server accepted and that are still open, up to a limit; once the server
/// closed, new ones are closed at once.
///
/// A connection is *pending* until its Hello arrives, then a *member* (mutual TLS, a server
/// certificate) or a *client*. When every place is taken, a new connection takes the place of the
/// oldest pending one, so connections that never say Hello cannot lock anyone out for the
/// handshake deadline; clients may hold at most `clientLimit` places, and the rest stay free for
/// members. A member is thus refused only when every place is held by members and clients that
/// completed their handshake.
private final class AcceptedConnections: Sendable {
    private enum Kind {
        case pending
        case client
        case member
    }

    private struct State {
        /// By ticket: a number given at admission, never reused (so a late close of a displaced
        /// connection cannot remove another's entry); lower tickets arrived earlier.
        var open: [UInt64: (channel: any Channel, kind: Kind)] = [:]
        var clients = 0
        var lastTicket: UInt64 = 0
        var closed = false
        /// Connections refused since the last one admitted (for logging the change only).
        var refused = 0

        /// The ticket of the connection that has waited longest for its Hello.
        func oldestPending() -> UInt64? {
            open.lazy.filter { $0.value.kind == .pending }.map(\.key).min()
        }
    }

    enum Admission {
        /// Counted as open (pending) under `ticket`; `refusedBefore` connections were refused since
        /// the last admission; `displaced` is the pending connection whose place it took (to close).
        case admitted(ticket: UInt64, refusedBefore: Int, displaced: (any Channel)?)
        /// Every place is held by a connection past its Hello: not counted; `first` for the first
        /// refusal since the last admission.
        case refused(first: Bool)
        /// The server is closed: the connection was closed.
        case serverClosed
    }

    private let state = Mutex(State())

    func insert(_ channel: any Channel, limit: Int) -> Admission {
        let admission = state.withLock { state -> Admission in
            guard !state.closed else { return .serverClosed }
            var displaced: (any Channel)?
            if state.open.count >= limit {
                guard let oldest = state.oldestPending() else {
                    state.refused += 1
                    return .refused(first: state.refused == 1)
                }
                displaced = state.open.removeValue(forKey: oldest)?.channel
            }
            state.lastTicket += 1
            state.open[state.lastTicket] = (channel, .pending)
            defer { state.refused = 0 }
            return .admitted(ticket: state.lastTicket, refusedBefore: state.refused, displaced: displaced)
        }
        switch admission {
        case .serverClosed:
            channel.close(promise: nil)
        case .admitted(let ticket, _, _):
            channel.closeFuture.whenComplete { _ in
                self.state.withLock { state in
                    if state.open.removeValue(forKey: ticket)?.kind == .client { state.clients -= 1 }
                }
            }
        case .refused:
            break
        }
        return admission
    }

    /// Records what the connection under `ticket` turned out to be at its Hello; false when it
    /// is a client and `clientLimit` clients are connected already.
    func identify(_ ticket: UInt64, asMember member: Bool, clientLimit: Int) -> Bool {
        state.withLock { state in
            guard let entry = state.open[ticket], entry.kind == .pending else { return true }
            if member {
                state.open[ticket] = (entry.channel, .member)
                return true
            }
            guard state.clients < clientLimit else { return false }
            state.clients += 1
            state.open[ticket] = (entry.channel, .client)
            return true
        }
    }

    var count: Int { state.withLock { $0.open.count } }

    /// Marks the set closed and returns the connections still open.
    func closeAll() -> [any Channel] {
        state.withLock { state in
            state.closed = true
            defer { state.open.removeAll() }
            return state.open.values.map(\.channel)
        }
    }
}

/// Answers a connection beyond the server's limit: a Goodbye (UNAVAILABLE) that names the
/// limit, then an immediate close (no lingering: a refused connection must not hold its
/// descriptor, or a flood of them would use up what the limit protects).
final class ConnectionRefuser: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let limit: Int
    private let maxPayload: Int

    init(limit: Int, maxPayload: Int) {
        self.limit = limit
        self.maxPayload = maxPayload
    }

    func channelActive(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 128)
        var plain = FrameCodec(maxPayload: max(maxPayload, Frame.defaultMaxPayload))
        let goodbye = Goodbye(
            code: .unavailable, message: "too many connections (limit \(limit)); try again later")
        _ = try? plain.encode(.goodbye(goodbye), into: &buffer)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}  // not listened to

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension ConnectionRefuser: Sendable {}

/// Per-connection server state machine: handshake, then requests dispatched by method.
///
/// Limits: the Hello must come within `handshakeTimeout` and announce a `max_frame_size` of
/// 0 or at least `RPCProtocol.minimumMaxFrameSize`; after that the connection is closed with a
/// Goodbye (code OK) once it has had no call in flight and completed no frame for
/// `idleTimeout`. Every call gets an answer or the connection gets a Goodbye: a reply too large
/// for the peer becomes FRAME_TOO_LARGE, and if even that cannot be sent, a Goodbye.
final class RPCServerHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = ByteBuffer

    private enum State {
        case awaitingHello
        case delayingHello
        case ready
        case closing
    }

    private let configuration: RPCServerConfiguration
    private let dispatch: RPCDispatch
    private var logger: Logger
    private var codec: FrameCodec
    private var state = State.awaitingHello
    private var inReadBatch = false
    private var needsFlush = false
    /// The peer's address, read once: `context.remoteAddress` is a getpeername(2) call plus
    /// formatting the address as text, which showed up per request in profiles.
    private var remoteAddress: SocketAddress?
    private var handshakeTimer: Scheduled<Void>?
    /// One timer per connection for the idle timeout, re-armed when it fires early (a frame
    /// came or a call was in flight meanwhile), never per call.
    private var idleTimer: Scheduled<Void>?
    /// When the connection last completed a frame, or its last call in flight was answered.
    private var lastActivity = NIODeadline.now()
    /// Calls dispatched to a service and not yet answered.
    private var callsInFlight = 0
    /// Who the peer is, read from its certificate at the Hello (TLS only).
    private var peer: PeerAuthentication?
    /// This connection's handles on the server's metrics; nil when nothing is measured.
    private var metrics: CallMetrics?

    /// Says, at the Hello, whether this connection may stay (see `AcceptedConnections`).
    private let identify: ConnectionIdentification

    init(
        configuration: RPCServerConfiguration, tables: [RPCMethodTable], identify: @escaping ConnectionIdentification,
        logger: Logger
    ) {
        self.configuration = configuration
        self.dispatch = RPCDispatch(tables: tables)
        self.identify = identify
        self.logger = logger
        self.metrics = configuration.metrics.map(CallMetrics.init)
        self.codec = FrameCodec(maxPayload: configuration.maxPayload, compressionThreshold: configuration.compressionThreshold)
    }

    func channelActive(context: ChannelHandlerContext) {
        remoteAddress = context.remoteAddress
        logger[metadataKey: "peer"] = "\(remoteAddress.map { "\($0)" } ?? "?")"
        if configuration.faults?.shouldRefuseConnection() == true {
            logger.debug("fault injection: refusing connection")
            context.close(promise: nil)
            return
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let limit = configuration.handshakeTimeout
        handshakeTimer = context.eventLoop.scheduleTask(in: limit.timeAmount) {
            let (handler, context) = loopBound.value
            guard handler.state == .awaitingHello else { return }
            handler.fail(
                context: context, code: .protocolViolation,
                message: "no Hello within \(limit.inSeconds) s of connecting; a client's first frame must be Hello")
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        state = .closing
        handshakeTimer?.cancel()
        handshakeTimer = nil
        idleTimer?.cancel()
        idleTimer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state != .closing else { return }
        let frame = unwrapInboundIn(data)
        let envelope: Envelope
        do {
            let payload = try codec.payload(of: frame, allocator: context.channel.allocator)
            envelope = try EnvelopeCodec.decode(payload)
            if let metrics {
                var kind = TrafficKind.other
                if case .request(let request) = envelope, case .success(let call) = request.call {
                    kind = TrafficKind.of(method: call.methodIndex)
                }
                metrics.metrics.count(
                    kind, .inbound, wire: frame.payload.readableBytes, payload: payload.readableBytes)
            }
        } catch let error as FrameError {
            return fail(context: context, code: error.code, message: error.description)
        } catch {
            return fail(context: context, code: .protocolViolation, message: "\(error)")
        }
        inReadBatch = true
        switch (state, envelope) {
        case (.awaitingHello, .hello(let hello)):
            handshakeTimer?.cancel()
            handshakeTimer = nil
            handshake(context: context, hello: hello)
        case (.awaitingHello, _), (.delayingHello, _):
            fail(context: context, code: .protocolViolation, message: "the first frame on a connection must be Hello")
        case (.ready, .request(let request)):
            if configuration.idleTimeout != nil { lastActivity = .now() }
            handle(context: context, request: request)
        case (.ready, .goodbye(let goodbye)):
            logger.debug("peer said goodbye", metadata: ["code": "\(goodbye.code)", "message": "\(goodbye.message)"])
            state = .closing
            context.close(promise: nil)
        case (.ready, _):
            fail(context: context, code: .protocolViolation, message: "a server accepts only Request and Goodbye after the handshake")
        case (.closing, _):
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        inReadBatch = false
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let frameError = error as? FrameError {
            fail(context: context, code: frameError.code, message: frameError.description)
        } else if error is ByteToMessageDecoderError {
            fail(context: context, code: .protocolViolation, message: "\(error)")
        } else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
            state = .closing
            context.close(promise: nil)
        }
    }

    private func handshake(context: ChannelHandlerContext, hello: Hello) {
        guard hello.protocolVersion == RPCProtocol.version else {
            return fail(
                context: context, code: .unsupportedVersion,
                message: "protocol version \(hello.protocolVersion) not supported; this server speaks \(RPCProtocol.version)")
        }
        guard hello.maxFrameSize == 0 || hello.maxFrameSize >= RPCProtocol.minimumMaxFrameSize else {
            return fail(
                context: context, code: .protocolViolation,
                message: "Hello.max_frame_size \(hello.maxFrameSize) is below the minimum of \(RPCProtocol.minimumMaxFrameSize) "
                    + "bytes; announce at least \(RPCProtocol.minimumMaxFrameSize) (0 means the default, \(Frame.defaultMaxPayload))")
        }
        let peer = configuration.tls == nil ? PeerAuthentication.plaintext
            : .certificate(ClusterTLS.peerIdentity(of: context.pipeline.syncOperations))
        self.peer = peer
        let member: Bool
        if case .certificate(let identity?) = peer, identity.role == .server { member = true } else { member = false }
        guard identify(member) else {
            let reserve = configuration.effectiveMemberReserve
            return fail(
                context: context, code: .unavailable,
                message: "too many client connections (limit \(configuration.clientConnectionLimit); \(reserve) of "
                    + "\(configuration.maxConnections) kept for cluster members); try again later")
        }
        let features = configuration.compression.agreed(with: hello.features)
        if hello.maxFrameSize > 0 { codec.peerMaxPayload = Int(hello.maxFrameSize) }
        let reply = HelloReply(
            protocolVersion: RPCProtocol.version, features: features, maxFrameSize: UInt32(clamping: configuration.maxPayload),
            serverName: configuration.name)
        if let delay = configuration.faults?.connectionDelay() {
            state = .delayingHello
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: delay.timeAmount) {
                let (handler, context) = loopBound.value
                guard handler.state == .delayingHello else { return }
                handler.state = .ready
                handler.send(context: context, .helloReply(reply))
                handler.codec.compressionEnabled = features.contains(.zlib)
                handler.codec.streamEnabled = features.contains(.deflateStream)
                handler.startIdleTimer(context: context)
                context.flush()
            }
        } else {
            state = .ready
            send(context: context, .helloReply(reply))
            codec.compressionEnabled = features.contains(.zlib)
            codec.streamEnabled = features.contains(.deflateStream)
            startIdleTimer(context: context)
        }
    }

    private func handle(context: ChannelHandlerContext, request: Request) {
        if configuration.faults?.shouldDropRequest() == true {
            logger.trace("fault injection: dropped request", metadata: ["call": "\(request.callID)"])
            return
        }
        let callContext = RPCCallContext(
            eventLoop: context.eventLoop, remoteAddress: remoteAddress, peer: peer ?? (configuration.tls == nil ? .plaintext : .certificate(nil)), logger: logger)
        switch dispatch.answer(request, context: callContext) {
        case .now(let response):
            reply(context: context, response)
        case .later(let pending):
            callsInFlight += 1
            let method = pending.method
            let started = metrics == nil ? NIODeadline.uptimeNanoseconds(0) : .now()
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            pending.whenAnswered { response in
                let (handler, context) = loopBound.value
                handler.callsInFlight -= 1
                if handler.callsInFlight == 0 && handler.configuration.idleTimeout != nil { handler.lastActivity = .now() }
                handler.reply(context: context, response, method: method)
                handler.metrics?.answered(method: method, code: response.code, started: started)
            }
        }
    }

    /// Sends `response`; `method` is the call's `Call.methodIndex` when it was decoded.
    private func reply(context: ChannelHandlerContext, _ response: Response, method: Int? = nil) {
        guard state == .ready else { return }
        if configuration.faults?.shouldDropReply() == true {
            logger.trace("fault injection: dropped reply", metadata: ["call": "\(response.callID)"])
            return
        }
        var response = response
        if response.message.utf8.count > RPCProtocol.maxMessageBytes {
            response.message = response.message.cut(toUTF8Bytes: RPCProtocol.maxMessageBytes)
        }
        send(context: context, .response(response), method: method)
    }

    /// Writes one envelope; flushed at the end of the read batch, or now if outside one.
    /// Nothing is dropped in silence: a reply too large for the peer becomes a FRAME_TOO_LARGE
    /// reply to that call, and anything that still cannot be sent ends the connection with a Goodbye.
    /// `method`: the `Call.methodIndex` of the call a response answers (its traffic kind).
    private func send(context: ChannelHandlerContext, _ envelope: Envelope, method: Int? = nil) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            let payload = try codec.encode(envelope, into: &buffer)
            metrics?.metrics.count(
                method.map(TrafficKind.of(method:)) ?? .other, .outbound, wire: buffer.readableBytes - Frame.headerSize,
                payload: payload)
        } catch {
            guard !codec.streamBroken, case .response(let response) = envelope else {
                return fail(context: context, code: .internal, message: "the server could not send its answer: \(error)")
            }
            buffer.clear()
            let refusal = Response(callID: response.callID, code: .frameTooLarge, message: tooLargeMessage(error))
            do {
                try codec.encode(.response(refusal), into: &buffer)
            } catch {
                return fail(context: context, code: .frameTooLarge, message: tooLargeMessage(error))
            }
        }
        if inReadBatch {
            context.write(wrapOutboundOut(buffer), promise: nil)
            needsFlush = true
        } else {
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }
    }

    /// What a FRAME_TOO_LARGE reply says: whose limit the reply exceeds and what to do.
    private func tooLargeMessage(_ error: FrameError) -> String {
        guard case .frameTooLarge(let size, let limit) = error else { return error.description }
        if let peerLimit = codec.peerMaxPayload, peerLimit < codec.maxPayload, size <= codec.maxPayload {
            return "the reply of \(size) bytes exceeds your max_frame_size of \(peerLimit) bytes; "
                + "announce a larger one in Hello (0 means the default, \(Frame.defaultMaxPayload))"
        }
        return "the reply of \(size) bytes exceeds this server's frame limit of \(limit) bytes"
    }

    // MARK: - idle timeout

    private func startIdleTimer(context: ChannelHandlerContext) {
        guard let idle = configuration.idleTimeout else { return }
        lastActivity = .now()
        armIdleTimer(context: context, at: lastActivity + idle.timeAmount)
    }

    private func armIdleTimer(context: ChannelHandlerContext, at deadline: NIODeadline) {
        idleTimer?.cancel()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = loopBound.value
            handler.idleTimerFired(context: context)
        }
    }

    /// Closes the connection if it stayed idle for the whole timeout; otherwise looks again
    /// when it could next be idle that long.
    private func idleTimerFired(context: ChannelHandlerContext) {
        idleTimer = nil
        guard state == .ready, let idle = configuration.idleTimeout else { return }
        let now = NIODeadline.now()
        if callsInFlight > 0 {
            return armIdleTimer(context: context, at: now + idle.timeAmount)
        }
        if now < lastActivity + idle.timeAmount {
            return armIdleTimer(context: context, at: lastActivity + idle.timeAmount)
        }
        sayGoodbye(
            context: context,
            Goodbye(code: .ok, message: "closing this connection: no call for \(idle.inSeconds) s (idle timeout); reconnect to call again"),
            logLevel: .debug)
    }

    // MARK: - closing

    /// Says why in a Goodbye, then closes this connection (only this one).
    private func fail(context: ChannelHandlerContext, code: Code, message: String) {
        sayGoodbye(context: context, Goodbye(code: code, message: message), logLevel: .info)
    }

    /// Sends `goodbye` and closes the connection once it is written; later replies are not sent.
    private func sayGoodbye(context: ChannelHandlerContext, _ goodbye: Goodbye, logLevel: Logger.Level) {
        guard state != .closing else { return }
        logger.log(
            level: logLevel, "closing connection", metadata: ["code": "\(goodbye.code)", "reason": "\(goodbye.message)"])
        handshakeTimer?.cancel()
        idleTimer?.cancel()
        var goodbye = goodbye
        goodbye.message = goodbye.message.cut(toUTF8Bytes: RPCProtocol.maxMessageBytes)
        var buffer = context.channel.allocator.buffer(capacity: 64)
        // Not limited by our own (possibly tiny) receive maximum: the Goodbye must get out. It
        // fits in any frame a peer may announce (`RPCProtocol.minimumMaxFrameSize`).
        var plain = FrameCodec(maxPayload: max(configuration.maxPayload, Frame.defaultMaxPayload))
        _ = try? plain.encode(.goodbye(goodbye), into: &buffer)
        state = .closing
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }
}

@available(*, unavailable)
extension RPCServerHandler: Sendable {}

