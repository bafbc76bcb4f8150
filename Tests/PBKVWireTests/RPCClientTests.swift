import NIOCore
import NIOPosix
import PBKVCore
import PBKVWire
import PBKVTestSupport
import Testing

@Suite("RPC client and server", .timeLimit(.minutes(1)))
struct RPCClientTests {
    @Test("1,000 concurrent calls on one connection are all answered, each to its own caller")
    func manyConcurrentCalls() async throws {
        try await LiveServer.with { live async throws in
            let client = live.client()
            let results = try await withThrowingTaskGroup(of: (UInt64, CallResult).self) { group in
                for n in UInt64(1)...1_000 {
                    group.addTask {
                        (n, try await client.call(.ping(PingArgs(server: "caller-\(n)", viewnum: n)), timeout: .seconds(30)))
                    }
                }
                var results: [UInt64: CallResult] = [:]
                for try await (n, result) in group { results[n] = result }
                return results
            }
            #expect(results.count == 1_000)
            for n in UInt64(1)...1_000 {
                #expect(results[n] == echoed(n, "caller-\(n)"), "call \(n)")
            }
            #expect(live.log.count == 1_000)
            #expect(live.log.connections.count == 1, "all calls share one connection")
        }
    }

    @Test("Large values travel compressed both ways and come back intact")
    func largeValues() async throws {
        try await LiveServer.with { live async throws in
            let client = live.client()
            let big = String(repeating: "сервер-", count: 100_000)  // ~1.3 MB, compressed on the wire
            #expect(try await client.call(.ping(PingArgs(server: big, viewnum: 1)), timeout: .seconds(20)) == echoed(1, big))
            let plain = live.client(configure: { $0.compression = .off })
            #expect(try await plain.call(.ping(PingArgs(server: big, viewnum: 2)), timeout: .seconds(20)) == echoed(2, big))
        }
    }

    @Test("A call to a server that drops requests fails with timeout at its deadline")
    func timeoutWhenRequestsDropped() async throws {
        let faults = FaultInjector(policy: FaultPolicy(dropRequest: 1.0), seed: 1)
        try await LiveServer.with(configure: { $0.faults = faults }) { live async throws in
            let client = live.client()
            let start = ContinuousClock.now
            let error = await rpcError { () async throws(RPCError) in
                try await client.call(.ping(PingArgs(server: "s", viewnum: 1)), timeout: .milliseconds(300))
            }
            let elapsed = ContinuousClock.now - start
            guard case .timeout(let method, let peer)? = error else {
                Issue.record("expected timeout, got \(String(describing: error))")
                return
            }
            #expect(method == "Ping")
            #expect(peer == "\(live.peer)")
            #expect(elapsed >= .milliseconds(290))
            #expect(elapsed < .seconds(5))
            #expect(faults.counts.requestsDropped == 1)
            #expect(live.log.count == 0)
        }
    }

    @Test("Calls with different deadlines on one connection each time out at their own deadline")
    func mixedDeadlines() async throws {
        let faults = FaultInjector(policy: FaultPolicy(dropRequest: 1.0), seed: 2)
        try await LiveServer.with(configure: { $0.faults = faults }) { live async throws in
            let client = live.client()
            let start = ContinuousClock.now
            let longFinished = Latch()
            // A long call first arms the connection's deadline timer; a shorter one sent after it
            // must re-arm it earlier, and the long one must still expire afterwards.
            async let long: RPCError? = rpcError { () async throws(RPCError) in
                defer { longFinished.set() }
                return try await client.call(.ping(PingArgs(server: "long", viewnum: 1)), timeout: .milliseconds(1_200))
            }
            try await Task.sleep(for: .milliseconds(50))
            let short = await rpcError { () async throws(RPCError) in
                try await client.call(.ping(PingArgs(server: "short", viewnum: 2)), timeout: .milliseconds(200))
            }
            let shortElapsed = ContinuousClock.now - start
            // Had the timer not been re-armed, the short call would expire with the long one.
            #expect(!longFinished.isSet, "the short call expired only when the long one did")
            let longError = await long
            let longElapsed = ContinuousClock.now - start
            if case .timeout? = short {} else { Issue.record("expected timeout, got \(String(describing: short))") }
            if case .timeout? = longError {} else { Issue.record("expected timeout, got \(String(describing: longError))") }
            // Deadlines never fire early (no upper bounds: a busy machine may run them late).
            #expect(shortElapsed >= .milliseconds(240), "\(shortElapsed)")
            #expect(longElapsed >= .milliseconds(1_190), "\(longElapsed)")
        }
    }

    @Test("After the server restarts on the same port the same client reconnects")
    func reconnectAfterRestart() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let log = CallLog()
        let tables: [RPCMethodTable] = [.viewService(EchoViewService(log: log))]
        var first = RPCServerConfiguration(host: "127.0.0.1", port: 0)
        first.faults = FaultInjector(policy: FaultPolicy(dropRequest: 1.0), seed: 7)
        let dropping: RPCServer
        do {
            dropping = try await RPCServer.start(configuration: first, group: group, tables: tables, logger: quietLogger)
        } catch {
            try await group.shutdownGracefully()
            throw error
        }
        let port = dropping.port
        let client = RPCClient(peer: PeerAddress(host: "127.0.0.1", port: port), eventLoop: group.next(), logger: quietLogger)
        var restarted: RPCServer?
        func cleanUp() async throws {
            try? await client.shutdown().get()
            await dropping.close()
            await restarted?.close()
            try await group.shutdownGracefully()
        }
        do {
            let error = await rpcError { () async throws(RPCError) in
                try await client.call(.ping(PingArgs(server: "s", viewnum: 1)), timeout: .milliseconds(200))
            }
            if case .timeout? = error {} else { Issue.record("expected timeout, got \(String(describing: error))") }

            await dropping.close()
            // A new server, same port, no faults. (Rebinding is polled: the port may not be free at once.)
            let rebound = await poll {
                restarted = try? await RPCServer.start(
                    configuration: RPCServerConfiguration(host: "127.0.0.1", port: port), group: group, tables: tables,
                    logger: quietLogger)
                return restarted != nil
            }
            #expect(rebound)
            #expect(restarted?.port == port)

            var answer: CallResult?
            let reconnected = await poll {
                answer = try? await client.call(.ping(PingArgs(server: "s", viewnum: 2)), timeout: .milliseconds(500))
                return answer != nil
            }
            #expect(reconnected)
            #expect(answer == echoed(2))
            #expect(try await client.call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))
            #expect(log.connections.count == 1, "only the new server's connection ran calls")

            try await client.shutdown().get()
            let afterShutdown = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .seconds(1)) }
            #expect(afterShutdown == .shutdown)
        } catch {
            try await cleanUp()
            throw error
        }
        try await cleanUp()
    }

    @Test("Closing a server also closes its open connections")
    func closeClosesConnections() async throws {
        try await LiveServer.with { live async throws in
            let raw = try await live.raw()
            _ = try await raw.handshake()
            await live.server.close()
            #expect(await raw.waitForClose(within: .seconds(5)))
        }
    }

    @Test("A call to a port where nothing listens fails with connectionRefused")
    func connectionRefused() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // Find a port that was just free: bind one, then close it.
        let probe = try await RPCServer.start(
            configuration: RPCServerConfiguration(host: "127.0.0.1", port: 0), group: group, tables: [], logger: quietLogger)
        let port = probe.port
        await probe.close()
        let client = RPCClient(peer: PeerAddress(host: "127.0.0.1", port: port), eventLoop: group.next(), logger: quietLogger)
        let start = ContinuousClock.now
        let error = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .seconds(5)) }
        let elapsed = ContinuousClock.now - start
        if case .connectionRefused(let peer, _)? = error {
            #expect(peer == "127.0.0.1:\(port)")
        } else {
            Issue.record("expected connectionRefused, got \(String(describing: error))")
        }
        #expect(elapsed < .seconds(3))
        // The next call tries again (and is refused again), it does not hang on a dead connection.
        let again = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .seconds(5)) }
        if case .connectionRefused? = again {} else { Issue.record("expected connectionRefused, got \(String(describing: again))") }
        try await client.shutdown().get()
        try await group.shutdownGracefully()
    }

    @Test("A server that never answers the handshake fails the call within the connect timeout")
    func handshakeTimeout() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // A listener that accepts and says nothing.
        let silent = try await ServerBootstrap(group: group)
            .childChannelInitializer { $0.eventLoop.makeSucceededVoidFuture() }
            .bind(host: "127.0.0.1", port: 0).get()
        var configuration = RPCClientConfiguration()
        configuration.connectTimeout = .milliseconds(300)
        let client = RPCClient(
            peer: PeerAddress(host: "127.0.0.1", port: silent.localAddress!.port!), eventLoop: group.next(),
            configuration: configuration, logger: quietLogger)
        let start = ContinuousClock.now
        let error = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .seconds(10)) }
        #expect(ContinuousClock.now - start < .seconds(5))
        if case .connectionRefused(_, let reason)? = error {
            #expect(reason.contains("handshake"))
        } else {
            Issue.record("expected connectionRefused, got \(String(describing: error))")
        }
        try await client.shutdown().get()
        try await silent.close()
        try await group.shutdownGracefully()
    }

    @Test("Calls in flight fail with connectionLost when the connection drops; the client then reconnects")
    func connectionLostThenReconnect() async throws {
        try await LiveServer.with { live async throws in
            let client = live.client()
            async let stuck = rpcError { () async throws(RPCError) in
                try await client.call(.ping(PingArgs(server: "hold", viewnum: 1)), timeout: .seconds(20))
            }
            #expect(await poll { live.held.count == 1 }, "the server got the call")
            let start = ContinuousClock.now
            client.disconnect()
            let error = await stuck
            #expect(ContinuousClock.now - start < .seconds(5))
            if case .connectionLost(let peer)? = error {
                #expect(peer == "\(live.peer)")
            } else {
                Issue.record("expected connectionLost, got \(String(describing: error))")
            }
            var answer: CallResult?
            #expect(await poll {
                answer = try? await client.call(.ping(PingArgs(server: "s", viewnum: 5)), timeout: .seconds(1))
                return answer != nil
            })
            #expect(answer == echoed(5))
            #expect(live.log.connections.count == 2)
        }
    }
}
