import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVTestSupport
import PBKVViewService
import PBKVWire
import Testing

/// Fake servers pinging a real view service over TCP: every ping interval, one ping per running
/// server, all at once, from one task.
actor FakeServers {
    /// The view number a fake server puts in its pings.
    enum Acknowledging: Sendable {
        /// The number of the last view it received (0 before any): a healthy server.
        case latest
        /// Always this number: a server that never gets round to acknowledging.
        case fixed(UInt64)
    }

    private struct Server {
        var acknowledging: Acknowledging
        var running = true
        var lastView: View?
        /// Bumped at every restart, so a reply to the previous incarnation's ping is dropped.
        var incarnation: Int
    }

    private let client: ViewServiceClient
    private let interval: Duration
    private var servers: [String: Server] = [:]
    private var incarnations = 0

    init(client: ViewServiceClient, interval: Duration) {
        self.client = client
        self.interval = interval
    }

    /// Starts `name`, or restarts it with nothing remembered: its first ping carries 0.
    func start(_ name: String, acknowledging: Acknowledging = .latest) {
        incarnations += 1
        servers[name] = Server(acknowledging: acknowledging, incarnation: incarnations)
    }

    /// `name` stops pinging (it crashed, or is cut off) but remembers what it knew.
    func stop(_ names: String...) {
        for name in names { servers[name]?.running = false }
    }

    /// `name` pings again, with what it remembers, acknowledging as told.
    func resume(_ name: String, acknowledging: Acknowledging) {
        servers[name]?.running = true
        servers[name]?.acknowledging = acknowledging
    }

    /// Changes what a running server acknowledges.
    func acknowledge(_ name: String, _ acknowledging: Acknowledging) {
        servers[name]?.acknowledging = acknowledging
    }

    /// The last view `name` received in reply to a ping, if any.
    func lastView(of name: String) -> View? { servers[name]?.lastView }

    /// One ping per running server, sent together; returns once all are answered or failed.
    func pingAll() async {
        let round = servers.filter(\.value.running).map { name, server in
            let viewnum: UInt64
            switch server.acknowledging {
            case .latest: viewnum = server.lastView?.viewnum ?? 0
            case .fixed(let number): viewnum = number
            }
            return (name, server.incarnation, client.ping(server: name, viewnum: viewnum, timeout: interval * 4))
        }
        for (name, incarnation, reply) in round {
            guard let view = try? await reply.get() else { continue }
            if servers[name]?.incarnation == incarnation { servers[name]?.lastView = view }
        }
    }

    /// Pings every interval until cancelled.
    func run() async {
        let clock = ContinuousClock()
        var next = clock.now
        while !Task.isCancelled {
            await pingAll()
            next = max(next + interval, clock.now)
            try? await Task.sleep(until: next, clock: clock)
        }
    }
}

/// Why an end-to-end test gave up.
struct ViewServiceWaitFailed: Error, CustomStringConvertible {
    var description: String
}

/// A real view service on loopback, fake servers pinging it, and an observer calling GetView.
struct ViewServiceEndToEnd {
    static let interval = Duration.milliseconds(50)

    let service: ViewServiceServer
    let servers: FakeServers
    let observer: ViewServiceClient

    /// Runs `body` against a fresh view service; shuts everything down afterwards, also on failure.
    static func run(_ body: (ViewServiceEndToEnd) async throws -> Void) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let logger = Logger(label: "pbkv.test.viewservice", factory: { _ in SwiftLogNoOpLogHandler() })
        let started: (service: ViewServiceServer, server: RPCServer)
        do {
            started = try await ViewServiceServer.start(
                rpc: RPCServerConfiguration(host: "127.0.0.1", port: 0),
                configuration: ViewServiceConfiguration(pingInterval: interval, deadPings: 5),
                group: group, logger: logger)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        let peer = PeerAddress(host: "127.0.0.1", port: started.server.port)
        let pingRPC = RPCClient(peer: peer, eventLoop: group.next(), logger: logger)
        let observerRPC = RPCClient(peer: peer, eventLoop: group.next(), logger: logger)
        let servers = FakeServers(client: ViewServiceClient(rpc: pingRPC), interval: interval)
        var pinging: Task<Void, Never>?

        let outcome: Result<Void, any Error>
        do {
            try await started.service.waitUntil(role: ViewServiceRole(role: .leader))
            pinging = Task { await servers.run() }
            try await body(ViewServiceEndToEnd(service: started.service, servers: servers, observer: ViewServiceClient(rpc: observerRPC)))
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }

        pinging?.cancel()
        await pinging?.value
        try? await pingRPC.shutdown().get()
        try? await observerRPC.shutdown().get()
        await started.server.close()
        await started.service.stop()
        try await group.shutdownGracefully()
        try outcome.get()
    }

    /// Polls GetView until `condition` holds; throws after `deadline`.
    @discardableResult
    func waitFor(
        _ what: String, deadline: Duration = .seconds(5), _ condition: (View) -> Bool
    ) async throws -> View {
        let clock = ContinuousClock()
        let end = clock.now + deadline
        var last: View?
        while true {
            if let view = try? await observer.getView(timeout: .seconds(1)) {
                if condition(view) { return view }
                last = view
            }
            if clock.now >= end {
                throw ViewServiceWaitFailed(description: "no \(what) within \(deadline); last view: \(last.map { "\($0)" } ?? "none")")
            }
            try await Task.sleep(for: Self.interval / 2)
        }
    }

    /// Checks `invariant` against GetView once per interval for `intervals` intervals.
    @discardableResult
    func observe(
        _ what: String, intervals: Int = 15, sourceLocation: SourceLocation = #_sourceLocation, _ invariant: (View) -> Bool
    ) async throws -> View {
        var last = View.initial
        for _ in 0..<intervals {
            try await Task.sleep(for: Self.interval)
            last = try await observer.getView(timeout: .seconds(1))
            guard invariant(last) else {
                Issue.record("broken: \(what); view: \(last)", sourceLocation: sourceLocation)
                return last
            }
        }
        return last
    }

    /// Polls what the fake servers know until `condition` holds; throws after `deadline`.
    func waitUntil(_ what: String, deadline: Duration = .seconds(5), _ condition: (FakeServers) async -> Bool) async throws {
        let clock = ContinuousClock()
        let end = clock.now + deadline
        while await !condition(servers) {
            if clock.now >= end { throw ViewServiceWaitFailed(description: "no \(what) within \(deadline)") }
            try await Task.sleep(for: Self.interval / 2)
        }
    }

    /// s1 primary and s2 backup of view 2, acknowledged.
    func startPrimaryAndBackup() async throws {
        await servers.start("s1")
        try await waitFor("acknowledged view 1 with primary s1") {
            $0.sameAssignment(as: View(viewnum: 1, primary: "s1", backup: "")) && $0.acknowledged
        }
        await servers.start("s2")
        try await waitFor("acknowledged view 2 {s1, s2}") {
            $0.sameAssignment(as: View(viewnum: 2, primary: "s1", backup: "s2")) && $0.acknowledged
        }
    }
}

/// The classic view service scenarios again, over real TCP with real timing (50 ms pings).
@Suite("View service end to end (TCP, real time)", .serialized, .timeLimit(.minutes(1)))
struct ViewServiceEndToEndTests {

    @Test("No primary before any ping")
    func noPrimaryBeforePing() async throws {
        try await ViewServiceEndToEnd.run { vs in
            try await vs.observe("no view before any ping") {
                $0.sameAssignment(as: View.initial) && !$0.acknowledged
            }
            #expect(try await vs.service.snapshot().stats.pings == 0)
        }
    }

    @Test("First primary")
    func firstPrimary() async throws {
        try await ViewServiceEndToEnd.run { vs in
            await vs.servers.start("s1")
            let view = try await vs.waitFor("a primary") { !$0.primary.isEmpty }
            #expect(view.sameAssignment(as: View(viewnum: 1, primary: "s1", backup: "")))
            try await vs.waitFor("s1 acknowledging view 1") { $0.viewnum == 1 && $0.acknowledged }
        }
    }

    @Test("First backup")
    func firstBackup() async throws {
        try await ViewServiceEndToEnd.run { vs in
            await vs.servers.start("s1")
            try await vs.waitFor("acknowledged view 1") { $0.viewnum == 1 && $0.acknowledged }
            await vs.servers.start("s2")
            let view = try await vs.waitFor("a backup") { !$0.backup.isEmpty }
            #expect(view.sameAssignment(as: View(viewnum: 2, primary: "s1", backup: "s2")))
        }
    }

    @Test("Backup takes over if primary fails")
    func backupTakesOver() async throws {
        try await ViewServiceEndToEnd.run { vs in
            try await vs.startPrimaryAndBackup()
            await vs.servers.stop("s1")
            let view = try await vs.waitFor("s2 as primary") { $0.primary == "s2" }
            #expect(view.sameAssignment(as: View(viewnum: 3, primary: "s2", backup: "")))
        }
    }

    @Test("Restarted server becomes backup")
    func restartedServerBecomesBackup() async throws {
        try await ViewServiceEndToEnd.run { vs in
            try await vs.startPrimaryAndBackup()
            await vs.servers.stop("s1")
            try await vs.waitFor("acknowledged view 3 {s2, -}") {
                $0.sameAssignment(as: View(viewnum: 3, primary: "s2", backup: "")) && $0.acknowledged
            }
            await vs.servers.start("s1")  // comes back empty, pinging 0
            let view = try await vs.waitFor("a backup") { !$0.backup.isEmpty }
            #expect(view.sameAssignment(as: View(viewnum: 4, primary: "s2", backup: "s1")))
        }
    }

    @Test("Idle third server becomes backup if primary fails, in one view change")
    func idleThirdServerBecomesBackup() async throws {
        try await ViewServiceEndToEnd.run { vs in
            try await vs.startPrimaryAndBackup()
            await vs.servers.start("s3")
            try await vs.waitUntil("ping reply to s3") { await $0.lastView(of: "s3") != nil }
            let idle = try await vs.service.snapshot()
            #expect(try #require(idle.view).sameAssignment(as: View(viewnum: 2, primary: "s1", backup: "s2")))

            await vs.servers.stop("s1")
            let view = try await vs.waitFor("s2 as primary") { $0.primary == "s2" }
            #expect(view.sameAssignment(as: View(viewnum: 3, primary: "s2", backup: "s3")))
            #expect(try await vs.service.snapshot().stats.viewChanges == idle.stats.viewChanges + 1)
        }
    }

    @Test("Restarted primary (pings 0 while alive) is treated as dead")
    func restartedPrimaryTreatedAsDead() async throws {
        try await ViewServiceEndToEnd.run { vs in
            try await vs.startPrimaryAndBackup()
            let before = try await vs.service.snapshot().stats.viewChanges
            // s1 restarts and pings 0; it never misses a ping, so only the restart can depose it.
            await vs.servers.start("s1")
            // Two changes: s2 promoted alone (view 3), then the restarted s1 taken as an ordinary
            // (empty) backup (view 4), never as primary.
            let view = try await vs.waitFor("s2 primary with s1 as backup") { $0.primary == "s2" && $0.backup == "s1" }
            #expect(view.sameAssignment(as: View(viewnum: 4, primary: "s2", backup: "s1")))
            #expect(try await vs.service.snapshot().stats.viewChanges == before + 2)
            try await vs.observe("s2 stays primary") { $0.primary == "s2" }
        }
    }

    @Test("Dead backup is removed from the view")
    func deadBackupRemoved() async throws {
        try await ViewServiceEndToEnd.run { vs in
            try await vs.startPrimaryAndBackup()
            await vs.servers.stop("s2")
            let view = try await vs.waitFor("the backup removed") { $0.backup.isEmpty }
            #expect(view.sameAssignment(as: View(viewnum: 3, primary: "s1", backup: "")))
        }
    }

    @Test("View does not change until the primary acknowledges it; the backup's ack does not count")
    func waitsForPrimaryAck() async throws {
        try await ViewServiceEndToEnd.run { vs in
            await vs.servers.start("s1")
            try await vs.waitFor("acknowledged view 1") { $0.viewnum == 1 && $0.acknowledged }
            await vs.servers.acknowledge("s1", .fixed(1))  // s1 will never acknowledge view 2
            await vs.servers.start("s2")  // s2 follows: it pings 2 once it saw view 2
            try await vs.waitFor("view 2 {s1, s2}") { $0.sameAssignment(as: View(viewnum: 2, primary: "s1", backup: "s2")) }
            try await vs.waitUntil("s2 seeing view 2") { await $0.lastView(of: "s2")?.viewnum == 2 }
            await vs.servers.stop("s1")
            try await vs.observe("view 2 unacknowledged, s2 not promoted") {
                $0.sameAssignment(as: View(viewnum: 2, primary: "s1", backup: "s2")) && !$0.acknowledged
            }
            #expect(await vs.servers.lastView(of: "s2")?.viewnum == 2)

            // s1 comes back and acknowledges view 2; now the view may move on when it fails.
            await vs.servers.resume("s1", acknowledging: .fixed(2))
            try await vs.waitFor("acknowledged view 2") { $0.viewnum == 2 && $0.acknowledged }
            await vs.servers.stop("s1")
            let view = try await vs.waitFor("s2 as primary") { $0.primary == "s2" }
            #expect(view.sameAssignment(as: View(viewnum: 3, primary: "s2", backup: "")))
        }
    }

    @Test("Uninitialized (idle) server cannot become primary")
    func idleServerNeverPrimary() async throws {
        try await ViewServiceEndToEnd.run { vs in
            try await vs.startPrimaryAndBackup()
            await vs.servers.start("s3")
            try await vs.waitUntil("ping reply to s3") { await $0.lastView(of: "s3") != nil }
            // Primary and backup die together; s3 keeps pinging.
            await vs.servers.stop("s1", "s2")
            try await vs.observe("s3 never primary") { $0.primary != "s3" && !$0.primary.isEmpty }
            #expect(await vs.servers.lastView(of: "s3")?.primary != "s3")
        }
    }
}
