import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVClient
import PBKVServer
import PBKVTestSupport
import PBKVWire
import Synchronization
import Testing

/// A TCP connection that sends what a test crafts and keeps what comes back (a foreign or
/// hostile peer of a live cluster).
private final class RawPeer: Sendable {
    private final class Box: Sendable {
        let state = Mutex<(bytes: [UInt8], closed: Bool)>(([], false))
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
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }

    private let channel: any Channel
    private let box: Box

    private init(channel: any Channel, box: Box) {
        self.channel = channel
        self.box = box
    }

    static func connect(to address: String, group: any EventLoopGroup) async throws -> RawPeer {
        let peer = try PeerAddress(parsing: address)
        let box = Box()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collector(box: box)) }
            }
            .connect(host: peer.host, port: peer.port).get()
        return RawPeer(channel: channel, box: box)
    }

    func send(_ envelope: Envelope) async throws { try await send(payload: Array(EnvelopeCodec.encode(envelope).readableBytesView)) }

    func send(payload: [UInt8]) async throws {
        var frame = ByteBuffer()
        frame.writeInteger(UInt32(payload.count))
        frame.writeInteger(UInt8(0))
        frame.writeBytes(payload)
        try await channel.writeAndFlush(frame)
    }

    var isClosed: Bool { box.state.withLock { $0.closed } }

    func envelopes() throws -> [Envelope] {
        var buffer = ByteBuffer(bytes: box.state.withLock { $0.bytes })
        var result: [Envelope] = []
        while let frame = try FrameDecoder.readFrame(from: &buffer, maxPayload: Frame.defaultMaxPayload) {
            result.append(try EnvelopeCodec.decode(frame.payload))
        }
        return result
    }

    /// Polls until `count` envelopes arrived or the connection closed; returns what came.
    func envelopes(count: Int) async throws -> [Envelope] {
        let deadline = ContinuousClock.now + .seconds(10)
        while try envelopes().count < count && !isClosed && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        return try envelopes()
    }

    func waitForClose() async -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while !isClosed && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(5)) }
        return isClosed
    }

    func close() async { try? await channel.close() }
}

/// Polls `condition` every few milliseconds for up to `limit`; whether it came true.
private func eventually(within limit: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}

/// The limits end to end: an in-process view service and two servers over loopback; every case
/// from the outside report is refused or harmless, and afterwards the acknowledged data is
/// still there (on the backup too: it survives the primary) and the store takes writes.
@Suite("Limits end to end: refused up front, never a stall", .serialized, .timeLimit(.minutes(2)))
struct LimitsEndToEndTests {
    /// s1 primary with s2 as its acknowledged backup, both configured by `configure`.
    private func primaryAndBackup(
        _ cluster: InProcessCluster, configure: @escaping (inout KVServerConfiguration) -> Void = { _ in }
    ) async throws -> (InProcessCluster.Node, InProcessCluster.Node) {
        let s1 = try await cluster.startServer(name: "s1", configure: configure)
        try await cluster.waitForView("s1 primary") { $0.primary == s1.address && $0.acknowledged }
        let s2 = try await cluster.startServer(name: "s2", configure: configure)
        try await cluster.waitForView("s1 primary, s2 backup") {
            $0.primary == s1.address && $0.backup == s2.address && $0.acknowledged
        }
        return (s1, s2)
    }

    /// Kills the primary and checks that the promoted backup holds `expected` (nil: absent).
    private func failOverAndCheck(
        _ cluster: InProcessCluster, primary: InProcessCluster.Node, backup: InProcessCluster.Node, client: KVClient,
        expected: [String: String?]
    ) async throws {
        await cluster.kill(primary)
        try await cluster.waitForView("s2 promoted") { $0.primary == backup.address }
        for (key, value) in expected.sorted(by: { $0.key < $1.key }) {
            #expect(try await client.get(key) == value, "\(key.prefix(20))")
        }
    }

    @Test("A Put a few dozen bytes under the frame limit is refused with BAD_REQUEST naming the limit; the view stays, writes go on")
    func putUnderFrameLimitRefused() async throws {
        // A dead interval of 2 s: decoding a 16 MiB frame holds a debug build's event loop (and
        // its pings) for a while on a busy machine; "nothing failed over" must mean the refusal.
        let cluster = try await InProcessCluster.start(deadPings: 20)
        let (s1, s2) = try await primaryAndBackup(cluster)
        let client = try cluster.client(deadline: .seconds(20))
        try await client.put("k", "v")
        let before = try await cluster.view()

        // Straight to the primary, as the outside client did: 64 bytes under the 16 MiB frame.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let rpc = RPCClient(peer: try PeerAddress(parsing: s1.address), eventLoop: group.next(), logger: Logger(label: "test"))
        let huge = String(repeating: "x", count: Frame.defaultMaxPayload - 64)
        let result = try await rpc.call(.put(key: "huge", value: huge, id: RequestID(clientID: 77, seq: 1)), timeout: .seconds(30))
        guard case .kv(let reply) = result else {
            Issue.record("expected a KV reply, got \(result)")
            return
        }
        #expect(reply.code == .badRequest)
        #expect(reply.value == "value of \(huge.utf8.count) bytes exceeds this server's limit of 1048576 bytes (--max-value-bytes)")
        try await rpc.shutdown().get()
        try await group.shutdownGracefully()

        // The client library gives up at once: retrying cannot help.
        let start = ContinuousClock.now
        await #expect(throws: KVClientError.self) { try await client.put("big", String(repeating: "y", count: (1 << 20) + 1)) }
        #expect(ContinuousClock.now - start < .seconds(5))

        // Every later Put by every client goes through; nothing failed over.
        let other = try cluster.client(deadline: .seconds(20))
        try await client.put("after", "1")
        try await other.put("other", "2")
        #expect(try await cluster.view().viewnum == before.viewnum)
        #expect(try await s2.server.snapshot()["huge"] == nil)
        try await failOverAndCheck(
            cluster, primary: s1, backup: s2, client: client,
            expected: ["k": "v", "after": "1", "other": "2", "huge": nil, "big": nil])
        try await client.put("later", "3")
        #expect(try await client.get("later") == "3")
        await client.close()
        await other.close()
        await cluster.kill(s2)
        await cluster.shutdown()
    }

    @Test("Keys and values at the limits are stored and survive failover; many at once are cut into frames that fit")
    func largestValuesBatchedIntoFrames() async throws {
        let cluster = try await InProcessCluster.start()
        // A 64 KiB frame and 32 KiB values: two of them already exceed a frame, though the batch
        // budget (1 MiB) would hold thirty.
        let (s1, s2) = try await primaryAndBackup(cluster) {
            $0.maxPayload = 64 * 1024
            $0.replica.maxKeyBytes = 1_024
            $0.replica.maxValueBytes = 32 * 1024
        }
        let clients = try (0..<8).map { _ in try cluster.client(deadline: .seconds(30)) }
        func key(_ c: Int, _ i: Int) -> String { String(repeating: "k", count: 1_020) + "\(c)-\(i)" }
        func value(_ c: Int, _ i: Int) -> String { String(repeating: Character(UnicodeScalar(UInt8(97 + c))), count: 32 * 1024 - 4) + "\(c)-\(i)" }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (c, client) in clients.enumerated() {
                group.addTask {
                    for i in 0..<4 { try await client.put(key(c, i), value(c, i)) }
                }
            }
            try await group.waitForAll()
        }
        #expect(try await s1.server.snapshot() == s2.server.snapshot())
        var expected: [String: String?] = [:]
        for c in 0..<8 { for i in 0..<4 { expected[key(c, i)] = value(c, i) } }
        try await failOverAndCheck(cluster, primary: s1, backup: s2, client: clients[0], expected: expected)
        for client in clients { await client.close() }
        await cluster.kill(s2)
        await cluster.shutdown()
    }

    @Test("Tiny max_frame_size, a NUL in Ping.server and silent connections: Goodbyes and refusals; data stays, writes go on")
    func badPeersAgainstALiveCluster() async throws {
        let cluster = try await InProcessCluster.start()
        let (s1, s2) = try await primaryAndBackup(cluster) {
            $0.handshakeTimeout = .seconds(1)
            $0.maxConnections = 16
        }
        let client = try cluster.client(deadline: .seconds(20))
        try await client.put("k", "v")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

        // Hello.max_frame_size 16 or 64: a Goodbye that says the minimum, not silence.
        for size: UInt32 in [16, 64] {
            let raw = try await RawPeer.connect(to: s1.address, group: group)
            try await raw.send(.hello(Hello(protocolVersion: RPCProtocol.version, features: [], maxFrameSize: size)))
            #expect(await raw.waitForClose())
            guard case .goodbye(let goodbye)? = try raw.envelopes().last else {
                Issue.record("no Goodbye for max_frame_size \(size)")
                continue
            }
            #expect(goodbye.code == .protocolViolation)
            #expect(goodbye.message.contains("below the minimum of 4096 bytes"))
        }

        // Ping{server: "ADDR\0tail"} to the view service: refused, not taken as "ADDR".
        let changes = try await cluster.viewServiceStats().viewChanges
        let vs = try await RawPeer.connect(to: cluster.viewServiceAddress, group: group)
        try await vs.send(.hello(Hello(protocolVersion: RPCProtocol.version, features: [], maxFrameSize: 0)))
        let ping: [UInt8] = [0x1A, 0x11, 0x08, 0x09, 0x52, 0x0D, 0x0A, 0x09] + Array("ADDR\u{0}tail".utf8) + [0x10, 0x00]
        try await vs.send(payload: ping)
        let answers = try await vs.envelopes(count: 2)
        guard answers.count == 2, case .response(let response) = answers[1] else {
            Issue.record("expected a reply to the ping, got \(answers)")
            return
        }
        #expect(response.callID == 9)
        #expect(response.code == .badRequest)
        #expect(response.message.contains("PingArgs.server contains a NUL byte"))
        await vs.close()

        // Connections that never say Hello fill the primary's free places (the client's own
        // connection holds one of the 16); each one past them takes the place of the oldest
        // silent one, closed without a word; the others get a Goodbye at the handshake deadline.
        var raws: [RawPeer] = []
        for _ in 0..<20 { raws.append(try await RawPeer.connect(to: s1.address, group: group)) }
        for raw in raws { #expect(await raw.waitForClose(), "displaced, or closed at the handshake deadline") }
        for (index, raw) in raws.enumerated() {
            let last = try raw.envelopes().last
            if index < 5 {
                #expect(last == nil, "connection \(index), among the 5 oldest, gave its place without a frame")
            } else if case .goodbye(let goodbye)? = last {
                #expect(goodbye.code == .protocolViolation, "connection \(index): \(goodbye)")
            } else {
                Issue.record("connection \(index) closed without the handshake deadline's Goodbye: \(String(describing: last))")
            }
        }
        try await client.put("after", "1")
        let other = try cluster.client(deadline: .seconds(20))
        try await other.put("other", "2")
        #expect(try await cluster.viewServiceStats().viewChanges == changes, "no view change")
        try await group.shutdownGracefully()
        try await failOverAndCheck(
            cluster, primary: s1, backup: s2, client: client, expected: ["k": "v", "after": "1", "other": "2", "ADDR": nil])
        await client.close()
        await other.close()
        await cluster.kill(s2)
        await cluster.shutdown()
    }

    @Test("After a quiet period past the idle timeout the primary reconnects to its backup; nothing fails over")
    func idleBackupLinkReconnects() async throws {
        let cluster = try await InProcessCluster.start()
        let (s1, s2) = try await primaryAndBackup(cluster) { $0.idleTimeout = .milliseconds(400) }
        let client = try cluster.client(deadline: .seconds(20))
        try await client.put("a", "1")
        let before = try await cluster.view()
        // The only connection at the backup is the primary's link: closed once idle.
        #expect(await eventually { await s2.server.connectionCount() == 0 }, "the backup closed the idle link")
        let start = ContinuousClock.now
        try await client.put("b", "2")
        #expect(ContinuousClock.now - start < .seconds(2), "no stall: the primary dialled its backup again")
        #expect(await s2.server.connectionCount() == 1)
        #expect(try await cluster.view().viewnum == before.viewnum, "pings kept the servers in the view")
        try await failOverAndCheck(cluster, primary: s1, backup: s2, client: client, expected: ["a": "1", "b": "2"])
        await client.close()
        await cluster.kill(s2)
        await cluster.shutdown()
    }
}
