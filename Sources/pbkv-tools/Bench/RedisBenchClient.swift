import NIOCore
import NIOPosix

/// A minimal Redis (RESP2) client for `pbkv bench --redis`: one connection, commands pipelined in
/// one write, replies matched in order. It exists so Redis is driven by the very same load loop,
/// clock and histogram as pbkv (including `SET` followed by `WAIT 1`, which `redis-benchmark`
/// cannot send); it is not a general Redis client.
actor RedisBenchClient {
    /// A RESP reply, reduced to what the benchmark looks at.
    enum Reply: Sendable, Equatable {
        case simple(String)
        case error(String)
        case integer(Int)
        case bulk([UInt8]?)
        case array(Int)
    }

    /// What can go wrong talking to Redis; the message says what to check.
    enum Failure: Error, CustomStringConvertible {
        case badAddress(String)
        case redisError(String)
        case protocolViolation(String)
        case connectionClosed

        var description: String {
            switch self {
            case .badAddress(let address): "bad Redis address \"\(address)\": use HOST:PORT"
            case .redisError(let message): "Redis answered an error: \(message)"
            case .protocolViolation(let detail): "unexpected bytes from Redis: \(detail)"
            case .connectionClosed: "the Redis connection closed; is redis-server still running?"
            }
        }
    }

    private nonisolated let channel: Channel
    private nonisolated let executor: any SerialExecutor

    private init(channel: Channel) {
        self.channel = channel
        self.executor = channel.eventLoop.executor
    }

    /// The actor runs on its connection's event loop, as `KVClient` does.
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// Runs `body` isolated to this client (no thread hop per command).
    func withIsolation<T: Sendable>(_ body: @Sendable (isolated RedisBenchClient) async throws -> T) async rethrows -> T {
        try await body(self)
    }

    static func connect(to address: String, group: EventLoopGroup) async throws -> RedisBenchClient {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw Failure.badAddress(address)
        }
        let host = String(address[..<colon])
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPReplyDecoder()))
                    try channel.pipeline.syncOperations.addHandler(RESPRequestHandler())
                }
            }
            .connect(literalOrName: host, port: port).get()
        return RedisBenchClient(channel: channel)
    }

    /// Sends `commands` in one write and returns their replies in order; a Redis error reply throws.
    func pipeline(_ commands: [[String]]) async throws -> [Reply] {
        let promise = channel.eventLoop.makePromise(of: [Reply].self)
        channel.writeAndFlush(RESPRequestHandler.Request(commands: commands, promise: promise), promise: nil)
        let replies = try await promise.futureResult.get()
        for case .error(let message) in replies { throw Failure.redisError(message) }
        return replies
    }

    func close() async {
        try? await channel.close()
    }
}

/// Encodes pipelined commands as RESP arrays and hands their replies back to the caller.
private final class RESPRequestHandler: ChannelDuplexHandler {
    typealias InboundIn = RedisBenchClient.Reply
    typealias OutboundIn = Request
    typealias OutboundOut = ByteBuffer

    struct Request {
        var commands: [[String]]
        var promise: EventLoopPromise<[RedisBenchClient.Reply]>
    }

    private struct Pending {
        var remaining: Int
        var replies: [RedisBenchClient.Reply]
        var promise: EventLoopPromise<[RedisBenchClient.Reply]>
    }

    private var pending: [Pending] = []
    private var head = 0

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        var buffer = context.channel.allocator.buffer(capacity: 64)
        for command in request.commands {
            buffer.writeString("*\(command.count)\r\n")
            for part in command {
                buffer.writeString("$\(part.utf8.count)\r\n")
                buffer.writeString(part)
                buffer.writeString("\r\n")
            }
        }
        pending.append(Pending(remaining: request.commands.count, replies: [], promise: request.promise))
        context.write(wrapOutboundOut(buffer), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let reply = unwrapInboundIn(data)
        guard head < pending.count else {
            context.fireErrorCaught(RedisBenchClient.Failure.protocolViolation("a reply nobody asked for"))
            return
        }
        pending[head].replies.append(reply)
        pending[head].remaining -= 1
        if pending[head].remaining == 0 {
            let done = pending[head]
            head += 1
            if head > 64 && head * 2 > pending.count {
                pending.removeFirst(head)
                head = 0
            }
            done.promise.succeed(done.replies)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failAll(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(RedisBenchClient.Failure.connectionClosed)
        context.fireChannelInactive()
    }

    private func failAll(_ error: Error) {
        let failed = pending[head...]
        pending = []
        head = 0
        for item in failed { item.promise.fail(error) }
    }
}

/// Decodes RESP2 replies. Array headers are returned as `.array(count)` followed by their
/// elements as separate replies, which is all the benchmark's commands need (none returns one).
private struct RESPReplyDecoder: ByteToMessageDecoder {
    typealias InboundOut = RedisBenchClient.Reply

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let reply = try Self.parse(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(reply))
        return .continue
    }

    private static func parse(_ buffer: inout ByteBuffer) throws -> RedisBenchClient.Reply? {
        let view = buffer.readableBytesView
        guard let type = view.first, let cr = view.firstIndex(of: UInt8(ascii: "\r")) else { return nil }
        guard cr + 1 < view.endIndex else { return nil }
        let line = String(decoding: view[(view.startIndex + 1)..<cr], as: UTF8.self)
        let lineLength = cr + 2 - view.startIndex
        switch type {
        case UInt8(ascii: "+"):
            buffer.moveReaderIndex(forwardBy: lineLength)
            return .simple(line)
        case UInt8(ascii: "-"):
            buffer.moveReaderIndex(forwardBy: lineLength)
            return .error(line)
        case UInt8(ascii: ":"):
            guard let value = Int(line) else { throw RedisBenchClient.Failure.protocolViolation("integer \(line)") }
            buffer.moveReaderIndex(forwardBy: lineLength)
            return .integer(value)
        case UInt8(ascii: "*"):
            guard let count = Int(line) else { throw RedisBenchClient.Failure.protocolViolation("array \(line)") }
            buffer.moveReaderIndex(forwardBy: lineLength)
            return .array(count)
        case UInt8(ascii: "$"):
            guard let length = Int(line) else { throw RedisBenchClient.Failure.protocolViolation("bulk \(line)") }
            if length < 0 {
                buffer.moveReaderIndex(forwardBy: lineLength)
                return .bulk(nil)
            }
            guard buffer.readableBytes >= lineLength + length + 2 else { return nil }
            buffer.moveReaderIndex(forwardBy: lineLength)
            let bytes = buffer.readBytes(length: length)
            buffer.moveReaderIndex(forwardBy: 2)
            return .bulk(bytes)
        default:
            throw RedisBenchClient.Failure.protocolViolation("reply type byte \(type)")
        }
    }
}
