import NIOCore
import NIOPosix
import PBKVCore
import PBKVWire
import Testing

/// Answers the first bytes it reads with `reply`, then says nothing more: a server as scripted
/// by a test (e.g. one that announces a tiny `max_frame_size`).
private final class ScriptedReply: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let reply: [UInt8]
    private var sent = false

    init(reply: [UInt8]) { self.reply = reply }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !sent else { return }
        sent = true
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: reply)), promise: nil)
    }
}

/// The Goodbye a raw connection received last, or nil.
private func lastGoodbye(_ raw: RawConnection) throws -> Goodbye? {
    guard case .goodbye(let goodbye)? = try raw.envelopes().last else { return nil }
    return goodbye
}

@Suite("Connection limits: clear refusals, never a stall", .timeLimit(.minutes(1)))
struct ConnectionLimitsTests {
    @Test("max_frame_size 0 (the default) and exactly the minimum are accepted")
    func minimumMaxFrameSizeAccepted() async throws {
        try await LiveServer.with { live async throws in
            for size in [0, RPCProtocol.minimumMaxFrameSize] {
                let raw = try await live.raw()
                let reply = try await raw.handshake(maxFrameSize: size)
                #expect(reply.maxFrameSize == UInt32(Frame.defaultMaxPayload))
                try await raw.send(frameBytes(.request(Request(callID: 1, call: .ping(PingArgs(server: "s", viewnum: UInt64(size)))))))
                #expect(try await raw.envelopes(count: 2).last == .response(Response(callID: 1, result: echoed(UInt64(size)))))
                await raw.close()
            }
        }
    }

    @Test("A reply too large for the peer's max_frame_size is answered FRAME_TOO_LARGE naming it; the connection stays open")
    func replyTooLargeForPeer() async throws {
        try await LiveServer.with { live async throws in
            let raw = try await live.raw()
            _ = try await raw.handshake(maxFrameSize: RPCProtocol.minimumMaxFrameSize)
            // The echo reply repeats the 5,000-byte server name: it cannot fit in 4,096 bytes.
            let long = String(repeating: "x", count: 5_000)
            try await raw.send(frameBytes(.request(Request(callID: 7, call: .ping(PingArgs(server: long, viewnum: 1))))))
            let received = try await raw.envelopes(count: 2)
            guard received.count == 2, case .response(let response) = received[1] else {
                Issue.record("expected a reply, got \(received.count) envelopes")
                return
            }
            #expect(response.callID == 7)
            #expect(response.code == .frameTooLarge)
            #expect(response.message.contains("exceeds your max_frame_size of 4096 bytes"), "\(response.message)")
            try await raw.send(frameBytes(.request(Request(callID: 8, call: .ping(PingArgs(server: "short", viewnum: 2))))))
            #expect(try await raw.envelopes(count: 3).last == .response(Response(callID: 8, result: echoed(2, "short"))))
            #expect(!raw.isClosed)
            await raw.close()
        }
    }

    @Test("When not even the FRAME_TOO_LARGE answer fits, the peer gets a Goodbye, not silence")
    func goodbyeWhenNothingFits() async throws {
        try await LiveServer.with(configure: { $0.maxPayload = 64 }) { live async throws in
            let raw = try await live.raw()
            _ = try await raw.handshake()
            // A 62-byte request fits the server's 64 bytes; its 68-byte echo does not, nor does
            // the FRAME_TOO_LARGE reply that would explain it.
            try await raw.send(frameBytes(.request(Request(callID: 3, call: .ping(PingArgs(server: String(repeating: "y", count: 52), viewnum: 1))))))
            #expect(await raw.waitForClose())
            let goodbye = try #require(try lastGoodbye(raw))
            #expect(goodbye.code == .frameTooLarge)
            #expect(goodbye.message.contains("exceeds this server's frame limit of 64 bytes"), "\(goodbye.message)")
        }
    }

    @Test("The RPC client refuses a server that announces a max_frame_size below the minimum")
    func clientRefusesTinyServerMaximum() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let helloReply = frameBytes(.helloReply(HelloReply(protocolVersion: RPCProtocol.version, features: [], maxFrameSize: 16)))
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(ScriptedReply(reply: helloReply)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = RPCClient(
            peer: PeerAddress(host: "127.0.0.1", port: server.localAddress!.port!), eventLoop: group.next(), logger: quietLogger)
        let start = ContinuousClock.now
        let error = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .seconds(10)) }
        #expect(ContinuousClock.now - start < .seconds(5), "refused at the handshake, not timed out")
        if case .protocolViolation(let what)? = error {
            #expect(what.contains("max_frame_size 16, below the minimum of 4096 bytes"), "\(what)")
        } else {
            Issue.record("expected protocolViolation, got \(String(describing: error))")
        }
        try await client.shutdown().get()
        try await server.close()
        try await group.shutdownGracefully()
    }

    @Test("A request too large for the server fails at once with requestTooLarge, not at its deadline")
    func requestTooLarge() async throws {
        try await LiveServer.with(configure: { $0.maxPayload = 8_192 }) { live async throws in
            let client = live.client()
            let start = ContinuousClock.now
            let error = await rpcError { () async throws(RPCError) in
                try await client.call(.ping(PingArgs(server: String(repeating: "z", count: 10_000), viewnum: 1)), timeout: .seconds(20))
            }
            #expect(ContinuousClock.now - start < .seconds(5))
            guard case .requestTooLarge(let method, let size, let limit)? = error else {
                Issue.record("expected requestTooLarge, got \(String(describing: error))")
                return
            }
            #expect(method == "Ping")
            #expect(size > 10_000)
            #expect(limit == 8_192)
            #expect(live.log.count == 0)
            #expect(try await client.call(.ping(PingArgs(server: "fits", viewnum: 2)), timeout: .seconds(10)) == echoed(2, "fits"))
        }
    }

    @Test("A connection that completes no Hello in time gets a Goodbye and is closed; one that did stays open")
    func handshakeDeadline() async throws {
        // 1 s, not less: the good connection's Hello must beat it even on two busy cores.
        try await LiveServer.with(configure: { $0.handshakeTimeout = .seconds(1) }) { live async throws in
            let good = try await live.raw()
            _ = try await good.handshake()
            let silent = try await live.raw()
            let slow = try await live.raw()
            // Slowloris: the first 3 bytes of a Hello frame, then nothing.
            try await slow.send(Array(frameBytes(.hello(Hello(protocolVersion: 1, features: [], maxFrameSize: 0))).prefix(3)))
            for raw in [silent, slow] {
                #expect(await raw.waitForClose(within: .seconds(5)))
                let goodbye = try #require(try lastGoodbye(raw))
                #expect(goodbye.code == .protocolViolation)
                #expect(goodbye.message.contains("no Hello within 1.0 s"), "\(goodbye.message)")
            }
            #expect(!good.isClosed)
            try await good.send(frameBytes(.request(Request(callID: 1, call: .getView))))
            #expect(try await good.envelopes(count: 2).last == .response(Response(callID: 1, result: .view(EchoViewService.fixedView))))
            #expect(await poll { live.server.connectionCount == 1 })
            await good.close()
        }
    }

    @Test("An idle connection gets a Goodbye (code OK) and is closed; a call in flight or steady calls keep it open")
    func idleTimeout() async throws {
        // 1 s, not less: the busy connection's first call must come before it even on two busy cores.
        try await LiveServer.with(configure: { $0.idleTimeout = .seconds(1) }) { live async throws in
            let idle = try await live.raw()
            _ = try await idle.handshake()
            let waiting = try await live.raw()
            _ = try await waiting.handshake()
            try await waiting.send(frameBytes(.request(Request(callID: 1, call: .ping(PingArgs(server: "hold", viewnum: 1))))))
            let busy = try await live.raw()
            _ = try await busy.handshake()
            #expect(await poll { live.held.count == 1 })

            let start = ContinuousClock.now
            var calls: UInt64 = 0
            while ContinuousClock.now - start < .milliseconds(2_500) {
                calls += 1
                try await busy.send(frameBytes(.request(Request(callID: calls, call: .getView))))
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(idle.isClosed)
            let goodbye = try #require(try lastGoodbye(idle))
            #expect(goodbye.code == .ok)
            #expect(goodbye.message.contains("idle timeout"), "\(goodbye.message)")
            #expect(!busy.isClosed, "a connection calling every 100 ms is not idle")
            #expect(!waiting.isClosed, "a connection waiting for a reply is not idle")

            // Its reply arrives; from then on it is idle, and closed after the timeout.
            live.held.releaseAll()
            #expect(try await waiting.envelopes(count: 2).last == .response(Response(callID: 1, result: .view(.initial))))
            #expect(await waiting.waitForClose(within: .seconds(5)))
            #expect(try lastGoodbye(waiting)?.code == .ok)
            await busy.close()
        }
    }

    @Test("After the server closed an idle connection, the RPC client reconnects on its next call")
    func clientReconnectsAfterIdleClose() async throws {
        try await LiveServer.with(configure: { $0.idleTimeout = .milliseconds(200) }) { live async throws in
            let client = live.client()
            #expect(try await client.call(.ping(PingArgs(server: "a", viewnum: 1)), timeout: .seconds(5)) == echoed(1, "a"))
            #expect(await poll { live.server.connectionCount == 0 }, "the server closed the idle connection")
            #expect(try await client.call(.ping(PingArgs(server: "b", viewnum: 2)), timeout: .seconds(5)) == echoed(2, "b"))
            #expect(live.log.connections.count == 2, "the second call came on a new connection")
        }
    }

    @Test("Beyond maxConnections a connection gets Goodbye UNAVAILABLE naming the limit; a freed slot is taken again")
    func connectionLimit() async throws {
        try await LiveServer.with(configure: { $0.maxConnections = 3 }) { live async throws in
            var open: [RawConnection] = []
            for _ in 0..<3 {
                let raw = try await live.raw()
                _ = try await raw.handshake()
                open.append(raw)
            }
            #expect(live.server.connectionCount == 3)
            let extra = try await live.raw()
            #expect(await extra.waitForClose())
            #expect(try extra.envelopes() == [.goodbye(Goodbye(code: .unavailable, message: "too many connections (limit 3); try again later"))])

            let client = live.client()
            let error = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .seconds(5)) }
            if case .connectionRefused(_, let reason)? = error {
                #expect(reason.contains("too many connections (limit 3)"), "\(reason)")
            } else {
                Issue.record("expected connectionRefused, got \(String(describing: error))")
            }
            // Connections already open are served as before.
            try await open[0].send(frameBytes(.request(Request(callID: 1, call: .getView))))
            #expect(try await open[0].envelopes(count: 2).last == .response(Response(callID: 1, result: .view(EchoViewService.fixedView))))

            await open[2].close()
            var answer: CallResult?
            #expect(await poll {
                answer = try? await client.call(.getView, timeout: .seconds(1))
                return answer != nil
            })
            #expect(answer == .view(EchoViewService.fixedView))
            for raw in open { await raw.close() }
        }
    }

    @Test("When the server is full, a new connection takes the place of the oldest one that sent no Hello")
    func silentConnectionsGiveWay() async throws {
        try await LiveServer.with(configure: {
            $0.maxConnections = 4
            $0.handshakeTimeout = .seconds(30)
        }) { live async throws in
            let talking = try await live.raw()
            _ = try await talking.handshake()
            var silent: [RawConnection] = []
            for _ in 0..<3 { silent.append(try await live.raw()) }
            #expect(await poll { live.server.connectionCount == 4 })
            // Full, but three places are held by connections that never said Hello: a client is
            // served at once (long before their 30 s deadline), in the place of the oldest.
            let client = live.client()
            #expect(try await client.call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))
            #expect(await silent[0].waitForClose(within: .seconds(5)), "the oldest silent connection gave way")
            #expect(live.server.connectionCount == 4)
            // A flood of silent connections only displaces silent ones: the client and the
            // connection that completed its handshake keep their places and are served.
            for _ in 0..<6 { silent.append(try await live.raw()) }
            #expect(await poll { live.server.connectionCount == 4 })
            #expect(try await client.call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))
            try await talking.send(frameBytes(.request(Request(callID: 1, call: .getView))))
            #expect(try await talking.envelopes(count: 2).last == .response(Response(callID: 1, result: .view(EchoViewService.fixedView))))
            for raw in silent { await raw.close() }
            await talking.close()
        }
    }

    @Test("The default connection limit keeps a reserve below the file descriptor limit")
    func defaultConnectionLimit() {
        #expect(RPCServerConfiguration.maxConnections(fileDescriptorLimit: 1_024) == 960)
        #expect(RPCServerConfiguration.maxConnections(fileDescriptorLimit: 1_048_576) == 4_096)
        #expect(RPCServerConfiguration.maxConnections(fileDescriptorLimit: nil) == 4_096)
        #expect(RPCServerConfiguration.maxConnections(fileDescriptorLimit: 10) == 1)
        #expect(RPCServerConfiguration.defaultMaxConnections
            == RPCServerConfiguration.maxConnections(fileDescriptorLimit: RPCServerConfiguration.fileDescriptorLimit))
        #expect(RPCServerConfiguration(host: "127.0.0.1", port: 0).maxConnections == RPCServerConfiguration.defaultMaxConnections)
    }
}
