import Dispatch
import NIOCore
import NIOPosix
import PBKVTLS
import PBKVCore
import PBKVWire
import Synchronization
import Testing

/// The in-memory transport keeps the RPC contract of TCP (replies, error codes, limits, lost
/// connections) and adds seeded network faults: loss, latency that reorders, partitions.
@Suite("In-memory transport", .timeLimit(.minutes(1)))
struct InMemoryTransportTests {
    /// A `LiveServer` (an echo view service) listening on `network` as node "server".
    func withServer<T>(
        _ network: InMemoryNetwork, configure: (inout RPCServerConfiguration) -> Void = { _ in },
        _ body: (LiveServer) async throws -> T
    ) async throws -> T {
        try await LiveServer.with(configure: {
            $0.transport = network.transport(node: "server")
            configure(&$0)
        }, body)
    }

    @Test("A call reaches the listener's method table and gets its typed reply, on the listener's address")
    func callAndReply() async throws {
        let network = InMemoryNetwork()
        try await withServer(network) { (live: LiveServer) async throws in
            let client = live.client { $0.transport = network.transport(node: "client") }
            #expect(try await client.call(.ping(PingArgs(server: "a", viewnum: 3)), timeout: .seconds(5)) == echoed(3, "a"))
            #expect(try await client.call(ViewServiceMethods.getView, GetViewArgs(), timeout: .seconds(5)) == EchoViewService.fixedView)
            #expect(live.log.count == 2)
            #expect(live.server.address == "127.0.0.1:\(live.port)")
            #expect(live.server.connectionCount == 1)
            #expect(network.counts.delivered == 4, "two requests and two replies")
        }
    }

    @Test("A method no table serves is answered UNKNOWN_METHOD, as on TCP")
    func unknownMethod() async throws {
        let network = InMemoryNetwork()
        try await withServer(network) { (live: LiveServer) async throws in
            let client = live.client { $0.transport = network.transport(node: "client") }
            let error = await rpcError { () async throws(RPCError) in try await client.call(.get(key: "k", id: RequestID(clientID: 1, seq: 1)), timeout: .seconds(5)) }
            guard case .remote(code: .unknownMethod, _)? = error else {
                Issue.record("expected UNKNOWN_METHOD, got \(String(describing: error))")
                return
            }
        }
    }

    @Test("Nothing listening at the address: connection refused at once")
    func nothingListening() async throws {
        let network = InMemoryNetwork()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var configuration = RPCClientConfiguration()
        configuration.transport = network.transport(node: "client")
        let client = RPCClient(
            peer: PeerAddress(host: "127.0.0.1", port: 9), eventLoop: group.next(), configuration: configuration, logger: quietLogger)
        let error = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .seconds(5)) }
        guard case .connectionRefused(peer: "127.0.0.1:9", _)? = error else {
            Issue.record("expected connectionRefused, got \(String(describing: error))")
            return
        }
        try await group.shutdownGracefully()
    }

    @Test("A partition makes calls time out; healing it lets the next call through")
    func partition() async throws {
        let network = InMemoryNetwork()
        try await withServer(network) { (live: LiveServer) async throws in
            let client = live.client { $0.transport = network.transport(node: "client") }
            network.partition(["client"], from: ["server"])
            let error = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .milliseconds(200)) }
            #expect(error == .timeout(method: "GetView", peer: "\(live.peer)"))
            #expect(live.log.count == 0, "the request never arrived")
            #expect(network.counts.cut == 1)
            network.heal()
            #expect(try await client.call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))
            network.isolate("server")
            #expect(await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .milliseconds(200)) } == .timeout(method: "GetView", peer: "\(live.peer)"))
        }
    }

    @Test("A lost reply: the call ran on the server but times out at the caller")
    func lostReply() async throws {
        let network = InMemoryNetwork()
        try await withServer(network, configure: { $0.faults = FaultInjector(policy: FaultPolicy(dropNextReplies: 1), seed: 1) }) { (live: LiveServer) async throws in
            let client = live.client { $0.transport = network.transport(node: "client") }
            let error = await rpcError { () async throws(RPCError) in try await client.call(.ping(PingArgs(server: "a", viewnum: 1)), timeout: .milliseconds(200)) }
            #expect(error == .timeout(method: "Ping", peer: "\(live.peer)"))
            #expect(live.log.count == 1, "the call ran")
            #expect(try await client.call(.ping(PingArgs(server: "a", viewnum: 2)), timeout: .seconds(5)) == echoed(2, "a"))
        }
    }

    @Test("Closing the listener fails the calls in flight with connectionLost; later calls are refused")
    func listenerClosed() async throws {
        let network = InMemoryNetwork()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let log = CallLog()
        let held = HeldCalls()
        var serverConfiguration = RPCServerConfiguration(host: "127.0.0.1", port: 0)
        serverConfiguration.transport = network.transport(node: "server")
        let server = try await RPCServer.start(
            configuration: serverConfiguration, group: group, tables: [.viewService(EchoViewService(log: log, held: held))],
            logger: quietLogger)
        var configuration = RPCClientConfiguration()
        configuration.transport = network.transport(node: "client")
        let peer = PeerAddress(host: "127.0.0.1", port: server.port)
        let client = RPCClient(peer: peer, eventLoop: group.next(), configuration: configuration, logger: quietLogger)
        let inFlight: EventLoopFuture<CallResult> = client.call(.ping(PingArgs(server: "hold", viewnum: 1)), timeout: .seconds(30))
        #expect(await poll { held.count == 1 })
        await server.close()
        await #expect(throws: RPCError.connectionLost(peer: "\(peer)")) { try await inFlight.get() }
        held.releaseAll()
        let error = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .seconds(5)) }
        guard case .connectionRefused? = error else {
            Issue.record("expected connectionRefused after the close, got \(String(describing: error))")
            return
        }
        try await client.shutdown().get()
        try await group.shutdownGracefully()
    }

    @Test("A call started before the client heard of the listener's close connects again (refused here), not sent to the closed one")
    func callRacingTheClose() async throws {
        let network = InMemoryNetwork()
        let serverGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var serverConfiguration = RPCServerConfiguration(host: "127.0.0.1", port: 0)
        serverConfiguration.transport = network.transport(node: "server")
        let server = try await RPCServer.start(
            configuration: serverConfiguration, group: serverGroup, tables: [.viewService(EchoViewService(log: CallLog()))],
            logger: quietLogger)
        var configuration = RPCClientConfiguration()
        configuration.transport = network.transport(node: "client")
        let peer = PeerAddress(host: "127.0.0.1", port: server.port)
        let clientLoop = clientGroup.next()
        let client = RPCClient(peer: peer, eventLoop: clientLoop, configuration: configuration, logger: quietLogger)
        #expect(try await client.call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))
        // The client's loop is held: the call below is queued on it ahead of the close's notice.
        let gate = DispatchSemaphore(value: 0)
        clientLoop.execute { gate.wait() }
        let racing: EventLoopFuture<CallResult> = client.call(.getView, timeout: .seconds(10))
        await server.close()
        gate.signal()
        do {
            _ = try await racing.get()
            Issue.record("a call to a closed listener succeeded")
        } catch let error as RPCError {
            guard case .connectionRefused = error else {
                Issue.record("expected connectionRefused (nothing listens any more), got \(error)")
                return
            }
        }
        try await client.shutdown().get()
        try await clientGroup.shutdownGracefully()
        try await serverGroup.shutdownGracefully()
    }

    @Test("A request larger than the server's frame limit is not sent: requestTooLarge")
    func requestTooLarge() async throws {
        let network = InMemoryNetwork()
        try await withServer(network, configure: { $0.maxPayload = 4096 }) { (live: LiveServer) async throws in
            let client = live.client { $0.transport = network.transport(node: "client") }
            let error = await rpcError { () async throws(RPCError) in
                try await client.call(.ping(PingArgs(server: String(repeating: "x", count: 5000), viewnum: 1)), timeout: .seconds(5))
            }
            guard case .requestTooLarge(method: "Ping", _, limit: 4096)? = error else {
                Issue.record("expected requestTooLarge, got \(String(describing: error))")
                return
            }
            #expect(live.log.count == 0)
        }
    }

    @Test("Latency drawn per message reorders a burst of calls, reproducibly from the seed")
    func latencyReorders() async throws {
        func arrivalOrder(seed: UInt64) async throws -> [UInt64] {
            let network = InMemoryNetwork(conditions: InMemoryNetworkConditions(latency: .milliseconds(1) ... .milliseconds(40)), seed: seed)
            return try await withServer(network) { (live: LiveServer) async throws in
                let client = live.client { $0.transport = network.transport(node: "client") }
                let calls = (1...20).map { n -> EventLoopFuture<CallResult> in client.call(.ping(PingArgs(server: "a", viewnum: UInt64(n))), timeout: .seconds(5)) }
                for call in calls { _ = try await call.get() }
                return live.log.calls.compactMap { call in
                    guard case .ping(let args) = call else { return nil }
                    return args.viewnum
                }
            }
        }
        let order = try await arrivalOrder(seed: 11)
        #expect(Set(order) == Set(1...20), "every call arrived once")
        #expect(order != Array(1...20), "sent in order, arrived in another: \(order)")
    }

    @Test("Calls carry the transport's identity as a certificate would: a member call for another address is refused")
    func identity() async throws {
        let network = InMemoryNetwork()
        let tables = [RPCMethodTable.viewService(EchoViewService(log: CallLog()))]
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var serverConfiguration = RPCServerConfiguration(host: "127.0.0.1", port: 0)
        serverConfiguration.transport = network.transport(node: "server")
        let server = try await RPCServer.start(configuration: serverConfiguration, group: group, tables: tables, logger: quietLogger)
        var configuration = RPCClientConfiguration()
        let member = MemberIdentity(name: "s1", role: .server, addresses: ["127.0.0.1:7001"])
        configuration.transport = network.transport(node: "127.0.0.1:7001", identity: member)
        let client = RPCClient(
            peer: PeerAddress(host: "127.0.0.1", port: server.port), eventLoop: group.next(), configuration: configuration, logger: quietLogger)
        #expect(try await client.call(.ping(PingArgs(server: "127.0.0.1:7001", viewnum: 1)), timeout: .seconds(5)) == echoed(1, "127.0.0.1:7001"))
        let error = await rpcError { () async throws(RPCError) in try await client.call(.ping(PingArgs(server: "127.0.0.1:7002", viewnum: 1)), timeout: .seconds(5)) }
        guard case .remote(code: .permissionDenied, _)? = error else {
            Issue.record("expected PERMISSION_DENIED, got \(String(describing: error))")
            return
        }
        try await client.shutdown().get()
        await server.close()
        try await group.shutdownGracefully()
    }
}
