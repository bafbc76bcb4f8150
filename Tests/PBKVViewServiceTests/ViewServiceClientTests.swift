import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVTestSupport
import PBKVViewService
import PBKVWire
import Testing

/// An election that never elects this process and names `leader` as the leader.
private struct FollowerOf: ViewServiceElection {
    let leader: String?
    func run(onChange: @escaping @Sendable (ViewServiceLeadership) async -> Void) async throws {
        await onChange(.follower(leader: leader))
        while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
    }
    func resign() async {}
}

/// One in-process view service on loopback.
private struct RunningViewService {
    let service: ViewServiceServer
    let server: RPCServer
    var address: PeerAddress { PeerAddress(host: "127.0.0.1", port: server.port) }

    /// Started, and returned once it answers ViewServiceRole with `role` (its election's report).
    static func start(
        _ election: any ViewServiceElection, role: ViewServiceRole, group: any EventLoopGroup
    ) async throws -> RunningViewService {
        let (service, server) = try await ViewServiceServer.start(
            rpc: RPCServerConfiguration(host: "127.0.0.1", port: 0), election: election, group: group,
            logger: Logger(label: "pbkv.test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let running = RunningViewService(service: service, server: server)
        do {
            try await service.waitUntil(role: role)
        } catch {
            await running.stop()
            throw error
        }
        return running
    }

    /// A sole leader whose store already holds `view`, once it leads.
    static func leader(of view: View, group: any EventLoopGroup) async throws -> RunningViewService {
        try await start(
            SoleLeadership(store: InMemoryViewStore(record: ViewRecord(view: view))), role: ViewServiceRole(role: .leader),
            group: group)
    }

    /// A follower that names `leader`, once it does.
    static func follower(of leader: RunningViewService, group: any EventLoopGroup) async throws -> RunningViewService {
        try await start(
            FollowerOf(leader: "\(leader.address)"), role: ViewServiceRole(role: .follower, leader: "\(leader.address)"),
            group: group)
    }

    func stop() async {
        await service.stop()
        await server.close()
    }
}

/// The view service client over several addresses: leader hints, rotation, monotonic views.
@Suite("View service client with several addresses", .serialized, .timeLimit(.minutes(1)))
struct ViewServiceClientTests {
    let logger = Logger(label: "pbkv.test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("A follower answers NOT_LEADER with the leader's address, and the client follows it")
    func followsLeaderHint() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let view = View(viewnum: 7, primary: "p:1", backup: "b:2", acknowledged: true)
        let leader = try await RunningViewService.leader(of: view, group: group)
        let follower = try await RunningViewService.follower(of: leader, group: group)
        // Straight to the follower: NOT_LEADER naming the leader.
        let direct = RPCClient(peer: follower.address, eventLoop: group.next(), logger: logger)
        await #expect(throws: RPCError.notLeader(peer: "\(follower.address)", leader: "\(leader.address)")) {
            _ = try await direct.call(.getView, timeout: .seconds(1)).get()
        }
        try await direct.shutdown().get()
        // The client, given only the follower, ends at the leader and remembers it.
        let client = ViewServiceClient(addresses: [follower.address], eventLoop: group.next(), logger: logger)
        #expect(try await client.getView(timeout: .seconds(1)) == view)
        #expect(client.addresses == [follower.address, leader.address])
        try await client.shutdown().get()
        await follower.stop()
        await leader.stop()
        try await group.shutdownGracefully()
    }

    @Test("Every view service answers ViewServiceRole: the leader says so, a follower names its leader")
    func rolesOfLeaderAndFollower() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let leader = try await RunningViewService.leader(of: View(viewnum: 2, primary: "p:1", backup: ""), group: group)
        let follower = try await RunningViewService.follower(of: leader, group: group)
        let toLeader = RPCClient(peer: leader.address, eventLoop: group.next(), logger: logger)
        let toFollower = RPCClient(peer: follower.address, eventLoop: group.next(), logger: logger)
        #expect(try await ViewServiceStub(toLeader).viewServiceRole(timeout: .seconds(5)) == ViewServiceRole(role: .leader))
        #expect(
            try await ViewServiceStub(toFollower).viewServiceRole(timeout: .seconds(5))
                == ViewServiceRole(role: .follower, leader: "\(leader.address)"))
        try await toLeader.shutdown().get()
        try await toFollower.shutdown().get()
        await follower.stop()
        await leader.stop()
        try await group.shutdownGracefully()
    }

    @Test("An unreachable first address is skipped for the next one")
    func rotatesPastDeadAddress() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let leader = try await RunningViewService.leader(of: View(viewnum: 3, primary: "p:1", backup: ""), group: group)
        let dead = PeerAddress(host: "127.0.0.1", port: try ProcessCluster.freePort())
        let client = ViewServiceClient(addresses: [dead, leader.address], eventLoop: group.next(), logger: logger)
        #expect(try await client.getView(timeout: .seconds(1)).viewnum == 3)
        try await client.shutdown().get()
        await leader.stop()
        try await group.shutdownGracefully()
    }

    @Test("A view older than one already seen is refused, not believed")
    func refusesOlderView() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let newer = View(viewnum: 9, primary: "p:1", backup: "", acknowledged: true)
        let older = View(viewnum: 4, primary: "q:1", backup: "", acknowledged: true)
        let current = try await RunningViewService.leader(of: newer, group: group)
        let stale = try await RunningViewService.leader(of: older, group: group)
        let client = ViewServiceClient(addresses: [current.address, stale.address], eventLoop: group.next(), logger: logger)
        #expect(try await client.getView(timeout: .seconds(1)) == newer)
        // The current one goes away: the client moves on to the stale one and refuses its view.
        await current.stop()
        await #expect(throws: ViewServiceClientError.staleView(received: older, seen: newer)) {
            _ = try await client.getView(timeout: .seconds(1))
        }
        try await client.shutdown().get()
        await stale.stop()
        try await group.shutdownGracefully()
    }
}
