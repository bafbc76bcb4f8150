import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Constants of the connection protocol.
public enum RPCProtocol {
    /// The protocol version this build speaks (`Hello.protocol_version`).
    public static let version: UInt32 = 1
}

/// How an `RPCServer` listens and talks.
public struct RPCServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Largest frame payload accepted or sent, compressed or inflated.
    public var maxPayload: Int = Frame.defaultMaxPayload
    /// Replies at least this large are compressed when the client agreed to zlib.
    public var compressionThreshold: Int = FrameCodec.defaultCompressionThreshold
    /// Offer zlib in the handshake.
    public var compression = true
    /// Sabotages inbound calls and connections (tests and `--fault-*` options only).
    public var faults: FaultInjector?
    /// Name sent in `HelloReply`, for logs.
    public var name = "pbkv"

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
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

    /// Binds and starts serving `tables` on `group`.
    public static func start(
        configuration: RPCServerConfiguration, group: any EventLoopGroup, tables: [RPCMethodTable], logger: Logger
    ) async throws -> RPCServer {
        let connections = AcceptedConnections()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelInitializer { channel in
                connections.insert(channel)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(FrameDecoder(maxPayload: configuration.maxPayload)))
                    try channel.pipeline.syncOperations.addHandler(
                        RPCServerHandler(configuration: configuration, tables: tables, logger: logger))
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        return RPCServer(channel: channel, connections: connections)
    }

    /// Stops accepting connections, closes the listening socket and every connection it accepted
    /// (a stopped server must not go on answering calls on connections made before).
    public func close() async {
        try? await channel.close()
        for connection in connections.closeAll() { try? await connection.close() }
    }
}

/// The connections a server accepted and that are still open; once closed, new ones are refused.
private final class AcceptedConnections: Sendable {
    private let state = Mutex<(open: [ObjectIdentifier: any Channel], closed: Bool)>(([:], false))

    func insert(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        let accepted = state.withLock { state in
            guard !state.closed else { return false }
            state.open[id] = channel
            return true
        }
        guard accepted else { return channel.close(promise: nil) }
        channel.closeFuture.whenComplete { _ in self.state.withLock { _ = $0.open.removeValue(forKey: id) } }
    }

    /// Marks the set closed and returns the connections still open.
    func closeAll() -> [any Channel] {
        state.withLock { state in
            state.closed = true
            defer { state.open.removeAll() }
            return Array(state.open.values)
        }
    }
}

/// Per-connection server state machine: handshake, then requests dispatched by method.
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

    init(configuration: RPCServerConfiguration, tables: [RPCMethodTable], logger: Logger) {
        self.configuration = configuration
        self.tables = tables
        self.logger = logger
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
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state != .closing else { return }
        let frame = unwrapInboundIn(data)
        let envelope: Envelope
        do {
            let payload = try codec.payload(of: frame, allocator: context.channel.allocator)
            envelope = try EnvelopeCodec.decode(payload)
        } catch let error as FrameError {
            return fail(context: context, code: error.code, message: error.description)
        } catch {
            return fail(context: context, code: .protocolViolation, message: "\(error)")
        }
        inReadBatch = true
        switch (state, envelope) {
        case (.awaitingHello, .hello(let hello)):
            handshake(context: context, hello: hello)
        case (.awaitingHello, _), (.delayingHello, _):
            fail(context: context, code: .protocolViolation, message: "the first frame on a connection must be Hello")
        case (.ready, .request(let request)):
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
        let features: [Feature] = configuration.compression && hello.features.contains(.zlib) ? [.zlib] : []
        if hello.maxFrameSize > 0 { codec.peerMaxPayload = Int(hello.maxFrameSize) }
        let reply = HelloReply(
            protocolVersion: RPCProtocol.version, features: features, maxFrameSize: UInt32(configuration.maxPayload),
            serverName: configuration.name)
        if let delay = configuration.faults?.connectionDelay() {
            state = .delayingHello
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: delay.timeAmount) {
                let (handler, context) = loopBound.value
                guard handler.state == .delayingHello else { return }
                handler.send(context: context, .helloReply(reply))
                handler.codec.compressionEnabled = features.contains(.zlib)
                handler.state = .ready
                context.flush()
            }
        } else {
            send(context: context, .helloReply(reply))
            codec.compressionEnabled = features.contains(.zlib)
            state = .ready
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
        let callContext = RPCCallContext(eventLoop: context.eventLoop, remoteAddress: remoteAddress, logger: logger)
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
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        future.hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(let result):
                handler.reply(context: context, Response(callID: callID, result: result))
            case .failure(let error as RPCServiceError):
                handler.reply(context: context, Response(callID: callID, code: error.code, message: error.message, leader: error.leader))
            case .failure(let error):
                handler.reply(context: context, Response(callID: callID, code: .internal, message: "\(error)"))
            }
        }
    }

    private func reply(context: ChannelHandlerContext, _ response: Response) {
        guard state == .ready else { return }
        if configuration.faults?.shouldDropReply() == true {
            logger.trace("fault injection: dropped reply", metadata: ["call": "\(response.callID)"])
            return
        }
        send(context: context, .response(response))
    }

    /// Writes one envelope; flushed at the end of the read batch, or now if outside one.
    private func send(context: ChannelHandlerContext, _ envelope: Envelope) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            try codec.encode(envelope, into: &buffer)
        } catch {
            // Too large to send: tell the caller instead of the bytes.
            if case .response(let response) = envelope {
                buffer.clear()
                try? codec.encode(
                    .response(Response(callID: response.callID, code: .frameTooLarge, message: error.description)), into: &buffer)
            } else {
                return
            }
        }
        if inReadBatch {
            context.write(wrapOutboundOut(buffer), promise: nil)
            needsFlush = true
        } else {
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }
    }

    /// Says why in a Goodbye, then closes this connection (only this one).
    private func fail(context: ChannelHandlerContext, code: Code, message: String) {
        guard state != .closing else { return }
        logger.info("closing connection after protocol error", metadata: ["code": "\(code)", "error": "\(message)"])
        var buffer = context.channel.allocator.buffer(capacity: 64)
        // Not limited by our own (possibly tiny) receive maximum: the Goodbye must get out.
        var plain = FrameCodec(maxPayload: max(configuration.maxPayload, Frame.defaultMaxPayload))
        try? plain.encode(.goodbye(Goodbye(code: code, message: message)), into: &buffer)
        state = .closing
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }
}

@available(*, unavailable)
extension RPCServerHandler: Sendable {}

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
