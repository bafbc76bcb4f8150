import Logging
import NIOSSL
import PBKVTLS
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Constants of the connection protocol.
public enum RPCProtocol {
    /// The protocol version this build speaks (`Hello.protocol_version`).
    public static let version: UInt32 = 1
    /// The smallest `max_frame_size` a handshake may announce (0 means the default): every
    /// HelloReply, Goodbye and error reply fits in it, so no answer ever has to be dropped.
    public static let minimumMaxFrameSize: UInt32 = 4096
    /// Error messages sent on the wire are cut to this many bytes, so that an error reply or a
    /// Goodbye always fits in a frame of `minimumMaxFrameSize`.
    static let maxMessageBytes = 1024
}

/// How an `RPCServer` listens and talks.
public struct RPCServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Largest frame payload accepted or sent, compressed or inflated.
    public var maxPayload: Int = Frame.defaultMaxPayload
    /// Replies at least this large are compressed when the client agreed to zlib.
    public var compressionThreshold: Int = FrameCodec.defaultCompressionThreshold
    /// What to agree to when a client offers it: zlib per frame (the default), nothing, or also
    /// the per-connection deflate streams (`FEATURE_DEFLATE_STREAM`: for slow links; on a LAN
    /// it costs more CPU than it saves).
    public var compression = CompressionMode.frame
    /// Sabotages inbound calls and connections (tests and `--fault-*` options only).
    public var faults: FaultInjector?
    /// Name sent in `HelloReply`, for logs.
    public var name = "pbkv"
    /// Mutual TLS: accepted connections must present a certificate of the cluster CA, and each
    /// call carries the peer's identity (`RPCCallContext.peer`). nil: plaintext (`--insecure`).
    public var tls: MutualTLS?
    /// A new connection must complete its `Hello` within this time; otherwise it gets a
    /// Goodbye (PROTOCOL_VIOLATION) and is closed.
    public var handshakeTimeout: Duration = .seconds(5)
    /// A connection with no call in flight that completes no frame for this long gets a
    /// Goodbye (code OK: a normal close) and is closed; nil: never.
    public var idleTimeout: Duration? = .seconds(300)
    /// Most connections open at once. When they are all open, a new connection takes the place
    /// of the oldest one that has not sent its Hello yet; when every one has, the new connection
    /// is sent a Goodbye (UNAVAILABLE) that names the limit, and closed.
    /// Default: `defaultMaxConnections`.
    public var maxConnections = RPCServerConfiguration.defaultMaxConnections
    /// With mutual TLS: places of `maxConnections` that clients (client certificates) may not
    /// take, kept for cluster members (server certificates), so that a flood of clients never
    /// cuts a primary from its backup or a server from the view service. nil: automatic,
    /// `defaultMemberReserve(maxConnections:)`. Plaintext has no members to tell apart: no reserve.
    public var memberReserve: Int?
    /// Counts calls, their latency, bytes and connections (`--metrics`); nil: nothing is measured.
    public var metrics: RPCMetrics?

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// File descriptors kept back from the connection limit for what a server opens itself: its
    /// listening socket, standard streams, event loop descriptors, its own outgoing connections
    /// (to the view service, to its backup, to etcd), and the socket of a connection it is refusing.
    public static let reservedFileDescriptors = 64
    /// The default connection limit when the file descriptor limit is unknown or unlimited.
    public static let connectionLimitCap = 4096

    /// The connection limit for a process allowed `fileDescriptorLimit` open files:
    /// that limit minus `reservedFileDescriptors`, at most `connectionLimitCap`, at least 1.
    public static func maxConnections(fileDescriptorLimit: Int?) -> Int {
        guard let limit = fileDescriptorLimit else { return connectionLimitCap }
        return max(1, min(connectionLimitCap, limit - reservedFileDescriptors))
    }

    /// This process's soft RLIMIT_NOFILE, or nil when unlimited or unreadable.
    public static var fileDescriptorLimit: Int? {
        var limit = rlimit()
        #if canImport(Glibc)
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
        let resource = RLIMIT_NOFILE
        #endif
        // RLIM_INFINITY is all ones (a macro Swift imports as an overflowing literal); any value
        // above Int.max means unlimited in practice.
        guard getrlimit(resource, &limit) == 0, limit.rlim_cur < rlim_t(Int.max) else { return nil }
        return Int(limit.rlim_cur)
    }

    /// `maxConnections(fileDescriptorLimit:)` of this process's limit (960 under `ulimit -n 1024`).
    public static var defaultMaxConnections: Int { maxConnections(fileDescriptorLimit: fileDescriptorLimit) }

    /// The automatic member reserve: a quarter of the connection limit, at most 64 (a cluster
    /// has a handful of members; each opens a few connections to a peer).
    public static func defaultMemberReserve(maxConnections: Int) -> Int { min(64, maxConnections / 4) }

    /// Places kept for members: `memberReserve` (or the automatic one) with TLS, 0 in plaintext.
    public var effectiveMemberReserve: Int {
        guard tls != nil else { return 0 }
        return memberReserve ?? Self.defaultMemberReserve(maxConnections: maxConnections)
    }

    /// Most connections clients may hold at once: `maxConnections` less the member reserve.
    public var clientConnectionLimit: Int { max(0, maxConnections - effectiveMemberReserve) }
}

/// A TCP server that answers pbkv RPCs: frames, handshake, and dispatch to method tables.
/// Calls are answered on the connection's event loop; one bad peer only loses its own connection.
public final class RPCServer: Sendable {
    private let channel: any Channel
    private let connections: AcceptedConnections
    /// The address actually bound (useful with port 0).
    public let localAddress: SocketAddress

    private init(channel: any Channel, connections: AcceptedConnections) {
        self.channel = channel
        self.connections = connections
        self.localAddress = channel.localAddress!
    }

    /// The bound port.
    public var port: Int { localAddress.port ?? 0 }

    /// Connections open now, counted against `maxConnections` (refused ones are not).
    public var connectionCount: Int { connections.count }

    /// Binds and starts serving `tables` on `group`.
    public static func start(
        configuration: RPCServerConfiguration, group: any EventLoopGroup, tables: [RPCMethodTable], logger: Logger
    ) async throws -> RPCServer {
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
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.serverContext))
                    }
                    try addConnectionHandlers(
                        to: channel.pipeline.syncOperations, configuration: configuration, tables: tables,
                        identify: identify, logger: logger)
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        return RPCServer(channel: channel, connections: connections)
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
    public func close() async {
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
    private let tables: [RPCMethodTable]
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
        self.tables = tables
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
        let callID = request.callID
        let call: Call
        switch request.call {
        case .failure(.unknownMethod):
            return reply(context: context, Response(
                callID: callID, code: .unknownMethod,
                message: "unknown method: the request named no method this server knows (newer client?)"))
        case .failure(.badArguments(let why)):
            return reply(context: context, Response(callID: callID, code: .badRequest, message: why))
        case .success(let decoded):
            call = decoded
        }
        let callContext = RPCCallContext(
            eventLoop: context.eventLoop, remoteAddress: remoteAddress, peer: peer ?? (configuration.tls == nil ? .plaintext : .certificate(nil)), logger: logger)
        // A plain loop: `lazy.compactMap(...).first` evaluates the route twice, running every call twice.
        var routed: EventLoopFuture<CallResult>?
        for table in tables {
            if let future = table.route(call, callContext) {
                routed = future
                break
            }
        }
        guard let future = routed else {
            return reply(context: context, Response(
                callID: callID, code: .unknownMethod, message: "this server does not implement \(call.method)"))
        }
        callsInFlight += 1
        let method = call.methodIndex
        let started = metrics == nil ? NIODeadline.uptimeNanoseconds(0) : .now()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        future.hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = loopBound.value
            handler.callsInFlight -= 1
            if handler.callsInFlight == 0 && handler.configuration.idleTimeout != nil { handler.lastActivity = .now() }
            let response: Response
            switch result {
            case .success(let result):
                response = Response(callID: callID, result: result)
            case .failure(let error as RPCServiceError):
                response = Response(callID: callID, code: error.code, message: error.message, leader: error.leader)
            case .failure(let error):
                response = Response(callID: callID, code: .internal, message: "\(error)")
            }
            handler.reply(context: context, response, method: method)
            handler.metrics?.answered(method: method, code: response.code, started: started)
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

extension String {
    /// This text cut to at most `limit` UTF-8 bytes, on a character boundary.
    func cut(toUTF8Bytes limit: Int) -> String {
        guard utf8.count > limit else { return self }
        var bytes = 0
        var end = startIndex
        for character in self {
            let size = character.utf8.count
            guard bytes + size <= limit - 3 else { break }
            bytes += size
            end = index(after: end)
        }
        return String(self[..<end]) + "..."
    }
}

extension Duration {
    /// This duration as NIO's `TimeAmount`.
    public var timeAmount: TimeAmount {
        let (seconds, attoseconds) = components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// This duration in (fractional) seconds, for reports.
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
