import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVWire
import Synchronization
import Testing

// MARK: - logging

/// Tests do not print the servers' logs.
let quietLogger = Logger(label: "pbkv.wire.test", factory: { _ in SwiftLogNoOpLogHandler() })

// MARK: - polling

/// Polls `condition` every few milliseconds until it holds or `limit` passes; returns whether it held.
func poll(within limit: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + limit
    while true {
        if try await condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(5))
    }
}

// MARK: - hand-written protobuf

/// Writes protobuf wire format by hand, from the field numbers in proto/pbkv.proto — the way a
/// client in another language (or a newer pbkv) would put bytes on the wire.
struct ProtoWriter {
    private(set) var bytes: [UInt8] = []

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func key(_ field: UInt64, wireType: UInt64) { varint(field << 3 | wireType) }

    /// Bytes as they are (e.g. fields written by another writer).
    mutating func raw(_ more: [UInt8]) { bytes += more }

    mutating func varintField(_ field: UInt64, _ value: UInt64) {
        key(field, wireType: 0)
        varint(value)
    }

    mutating func fixed64Field(_ field: UInt64, _ value: UInt64) {
        key(field, wireType: 1)
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
    }

    mutating func bytesField(_ field: UInt64, _ value: [UInt8]) {
        key(field, wireType: 2)
        varint(UInt64(value.count))
        bytes += value
    }

    mutating func stringField(_ field: UInt64, _ value: String) { bytesField(field, Array(value.utf8)) }

    mutating func messageField(_ field: UInt64, _ build: (inout ProtoWriter) -> Void) {
        var inner = ProtoWriter()
        build(&inner)
        bytesField(field, inner.bytes)
    }

    mutating func fixed32Field(_ field: UInt64, _ value: UInt32) {
        key(field, wireType: 5)
        for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))) }
    }
}

func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

func bytes(of buffer: ByteBuffer) -> [UInt8] { Array(buffer.readableBytesView) }

/// A frame built by hand: u32 BE length, flags, payload.
func frameBytes(flags: UInt8 = 0, payload: [UInt8]) -> [UInt8] {
    let n = UInt32(payload.count)
    return [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n), flags]
        + payload
}

/// The plain (uncompressed) frame carrying `envelope`.
func frameBytes(_ envelope: Envelope) -> [UInt8] {
    frameBytes(payload: bytes(of: EnvelopeCodec.encode(envelope)))
}

// MARK: - test doubles

/// Records every call a test server answered, and from which connection.
final class CallLog: Sendable {
    private let state = Mutex<[(call: Call, remote: String)]>([])

    func record(_ call: Call, _ context: RPCCallContext) {
        let remote = context.remoteAddress.map { "\($0)" } ?? "?"
        state.withLock { $0.append((call, remote)) }
    }

    var count: Int { state.withLock { $0.count } }
    var calls: [Call] { state.withLock { $0.map(\.call) } }
    /// The distinct client connections that made calls.
    var connections: Set<String> { state.withLock { Set($0.map(\.remote)) } }
}

/// Calls a test double holds unanswered until the test releases them.
final class HeldCalls: Sendable {
    private let promises = Mutex<[EventLoopPromise<View>]>([])

    func hold(on eventLoop: any EventLoop) -> EventLoopFuture<View> {
        let promise = eventLoop.makePromise(of: View.self)
        promises.withLock { $0.append(promise) }
        return promise.futureResult
    }

    var count: Int { promises.withLock { $0.count } }

    func releaseAll() {
        for promise in promises.withLock({ p in defer { p.removeAll() }; return p }) { promise.succeed(.initial) }
    }
}

/// A view service double: Ping echoes the caller's arguments back as a view (so every reply is
/// specific to its call), GetView returns a fixed view. A Ping from server "hold" is not
/// answered until the test releases it.
struct EchoViewService: ViewServiceProtocol {
    static let fixedView = View(viewnum: 42, primary: "127.0.0.1:7001", backup: "127.0.0.1:7002")
    let log: CallLog
    var held: HeldCalls? = nil

    func ping(_ args: PingArgs, context: RPCCallContext) -> EventLoopFuture<View> {
        log.record(.ping(args), context)
        if args.server == "hold", let held { return held.hold(on: context.eventLoop) }
        return context.eventLoop.makeSucceededFuture(View(viewnum: args.viewnum, primary: args.server, backup: "echo"))
    }

    func getView(context: RPCCallContext) -> EventLoopFuture<View> {
        log.record(.getView, context)
        return context.eventLoop.makeSucceededFuture(Self.fixedView)
    }
}

func echoed(_ n: UInt64, _ server: String = "s") -> CallResult { .view(View(viewnum: n, primary: server, backup: "echo")) }

// MARK: - a live server for one test

/// One event loop group, one `RPCServer` serving `EchoViewService`, and the clients a test made;
/// all of it shut down when the test ends, whether it passed or threw.
final class LiveServer: Sendable {
    let group: MultiThreadedEventLoopGroup
    let server: RPCServer
    let log: CallLog
    let held: HeldCalls
    private let clients = Mutex<[RPCClient]>([])

    private init(group: MultiThreadedEventLoopGroup, server: RPCServer, log: CallLog, held: HeldCalls) {
        self.group = group
        self.server = server
        self.log = log
        self.held = held
    }

    var port: Int { server.port }
    var peer: PeerAddress { PeerAddress(host: "127.0.0.1", port: port) }

    static func with<T>(
        configure: (inout RPCServerConfiguration) -> Void = { _ in },
        _ body: (LiveServer) async throws -> T
    ) async throws -> T {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let log = CallLog()
        let held = HeldCalls()
        var configuration = RPCServerConfiguration(host: "127.0.0.1", port: 0)
        configure(&configuration)
        let server: RPCServer
        do {
            server = try await RPCServer.start(
                configuration: configuration, group: group, tables: [.viewService(EchoViewService(log: log, held: held))],
                logger: quietLogger)
        } catch {
            try await group.shutdownGracefully()
            throw error
        }
        let live = LiveServer(group: group, server: server, log: log, held: held)
        do {
            let result = try await body(live)
            await live.shutdown()
            try await group.shutdownGracefully()
            return result
        } catch {
            await live.shutdown()
            try await group.shutdownGracefully()
            throw error
        }
    }

    func client(configure: (inout RPCClientConfiguration) -> Void = { _ in }) -> RPCClient {
        var configuration = RPCClientConfiguration()
        configure(&configuration)
        let client = RPCClient(peer: peer, eventLoop: group.next(), configuration: configuration, logger: quietLogger)
        clients.withLock { $0.append(client) }
        return client
    }

    func raw() async throws -> RawConnection { try await RawConnection.connect(port: port, group: group) }

    private func shutdown() async {
        held.releaseAll()
        for client in clients.withLock({ $0 }) { try? await client.shutdown().get() }
        await server.close()
    }
}

/// `body`'s RPCError, or nil (recorded as an issue) if it did not throw one.
func rpcError(_ body: () async throws(RPCError) -> CallResult) async -> RPCError? {
    do {
        let result = try await body()
        Issue.record("expected an RPCError, got \(result)")
        return nil
    } catch {
        return error
    }
}

// MARK: - a raw TCP connection

/// A client that writes whatever bytes a test crafts and records everything the server sends
/// back and whether it closed the connection.
final class RawConnection: Sendable {
    struct Received {
        var bytes: [UInt8] = []
        var closed = false
    }

    final class Box: Sendable {
        let state = Mutex(Received())
    }

    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let box: Box
        init(box: Box) { self.box = box }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            box.state.withLock { $0.bytes += buffer.readableBytesView }
        }

        func channelInactive(context: ChannelHandlerContext) {
            box.state.withLock { $0.closed = true }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }

    let channel: any Channel
    private let box: Box

    private init(channel: any Channel, box: Box) {
        self.channel = channel
        self.box = box
    }

    static func connect(port: Int, group: any EventLoopGroup) async throws -> RawConnection {
        let box = Box()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(box: box))
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        return RawConnection(channel: channel, box: box)
    }

    var received: Received { box.state.withLock { $0 } }

    /// Whether the connection is closed (the server closed it, or we did).
    var isClosed: Bool { received.closed }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    /// Half-close: no more bytes from us; we still read.
    func finishSending() async throws {
        try await channel.close(mode: .output)
    }

    func close() async {
        try? await channel.close()
    }

    /// Every whole frame received so far, as envelopes (zlib frames inflated).
    func envelopes() throws -> [Envelope] {
        var buffer = ByteBuffer(bytes: received.bytes)
        var codec = FrameCodec()
        codec.compressionEnabled = true
        var result: [Envelope] = []
        while let frame = try FrameDecoder.readFrame(from: &buffer, maxPayload: Frame.defaultMaxPayload) {
            result.append(try EnvelopeCodec.decode(try codec.payload(of: frame, allocator: ByteBufferAllocator())))
        }
        return result
    }

    /// Waits until at least `count` envelopes arrived; returns them (fewer if time ran out).
    func envelopes(count: Int, within limit: Duration = .seconds(10)) async throws -> [Envelope] {
        _ = try await poll(within: limit) { try self.envelopes().count >= count }
        return try envelopes()
    }

    /// Waits for the server to close the connection; returns whether it did in time.
    func waitForClose(within limit: Duration = .seconds(10)) async -> Bool {
        await poll(within: limit) { self.isClosed }
    }

    /// Sends Hello and returns the server's HelloReply.
    func handshake(features: [Feature] = [], version: UInt32 = RPCProtocol.version, maxFrameSize: UInt32 = 0) async throws
        -> HelloReply
    {
        try await send(frameBytes(.hello(Hello(
            protocolVersion: version, features: features, maxFrameSize: maxFrameSize, clientName: "raw"))))
        let envelopes = try await envelopes(count: 1)
        guard case .helloReply(let reply)? = envelopes.first else {
            throw HandshakeFailed(received: envelopes)
        }
        return reply
    }

    struct HandshakeFailed: Error { var received: [Envelope] }
}
