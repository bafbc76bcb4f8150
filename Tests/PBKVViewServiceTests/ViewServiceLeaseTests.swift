import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVTestSupport
import PBKVViewService
import PBKVWire
import Testing

/// A memory store that can hold or half-fail the store of a view naming a given primary.
actor ScriptedViewStore: ViewStore {
    nonisolated let location = "scripted"
    private var record: ViewRecord?
    /// Stores of a record naming this primary wait for `release()`.
    private var holdPrimary: String?
    private var waiting: [CheckedContinuation<Void, Never>] = []
    /// The next store of a record naming this primary is written, then reported `.unavailable`.
    private var ambiguousPrimary: String?
    private(set) var holding = false
    private(set) var ambiguousFired = false

    func hold(primary: String) { holdPrimary = primary }
    func failAmbiguously(primary: String) { ambiguousPrimary = primary }

    func release() {
        holdPrimary = nil
        for continuation in waiting { continuation.resume() }
        waiting.removeAll()
    }

    /// Writes `record` as another writer would (the view service's next compare-and-store conflicts).
    func overwrite(_ record: ViewRecord) { self.record = record }

    func load() async throws(ViewStoreError) -> ViewRecord? { record }

    func compareAndStore(_ new: ViewRecord, expected: ViewRecord?) async throws(ViewStoreError) {
        if let holdPrimary, new.view.primary == holdPrimary {
            holding = true
            await withCheckedContinuation { waiting.append($0) }
        }
        guard record == expected else { throw .conflict(location: location) }
        record = new
        if let ambiguousPrimary, new.view.primary == ambiguousPrimary {
            self.ambiguousPrimary = nil
            ambiguousFired = true
            throw .unavailable(location: location, reason: "timed out (the write may have happened)")
        }
    }
}

/// What read leases need from the view service shell, over TCP with a scripted store: no ping
/// answer names a primary whose replacement is being stored (or may have been stored), and a
/// fresh start names no primary before a dead interval.
@Suite("View service: ping answers a read lease can rely on", .serialized, .timeLimit(.minutes(1)))
struct ViewServiceLeaseTests {
    static let interval = Duration.milliseconds(50)
    static let deadInterval = interval * 5

    struct Harness {
        let store: ScriptedViewStore
        let client: ViewServiceClient
        /// Taken before the view service started.
        let startedAt: ContinuousClock.Instant

        func ping(_ server: String, _ viewnum: UInt64) async throws -> View {
            try await client.ping(server: server, viewnum: viewnum, timeout: .seconds(5)).get()
        }

        /// `server` pings (acknowledging what it last saw, `viewnum` at first: 0 is a restart)
        /// until `condition` holds.
        func pingUntil(_ server: String, from viewnum: UInt64 = 0, _ condition: (View) -> Bool) async throws -> View {
            let end = ContinuousClock.now + .seconds(5)
            var viewnum = viewnum
            while ContinuousClock.now < end {
                // NOT_LEADER until the view service has loaded its store: try again.
                if let view = try? await ping(server, viewnum) {
                    if condition(view) { return view }
                    viewnum = view.viewnum
                }
                try await Task.sleep(for: ViewServiceLeaseTests.interval / 5)
            }
            throw ViewServiceWaitFailed(description: "\(server) never saw the view it waited for")
        }

        /// Polls the store until `condition` holds; throws after 5 s.
        func waitForStore(_ what: String, _ condition: (ScriptedViewStore) async -> Bool) async throws {
            let end = ContinuousClock.now + .seconds(5)
            while await !condition(store) {
                guard ContinuousClock.now < end else { throw ViewServiceWaitFailed(description: "no \(what) within 5 s") }
                try await Task.sleep(for: ViewServiceLeaseTests.interval / 5)
            }
        }

        /// s1 primary and s2 backup of an acknowledged view 2.
        func primaryAndBackup() async throws {
            _ = try await pingUntil("s1") { $0.primary == "s1" && $0.acknowledged }
            let end = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < end {
                let seen = try await ping("s2", 0)
                let view = try await ping("s1", seen.viewnum)
                if view.backup == "s2" && view.acknowledged { return }
                try await Task.sleep(for: ViewServiceLeaseTests.interval / 5)
            }
            throw ViewServiceWaitFailed(description: "no acknowledged view with s1 primary and s2 backup")
        }
    }

    static func run(_ body: (Harness) async throws -> Void) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let logger = Logger(label: "pbkv.test.viewservice", factory: { _ in SwiftLogNoOpLogHandler() })
        let store = ScriptedViewStore()
        let startedAt = ContinuousClock.now
        let started = try await ViewServiceServer.start(
            rpc: RPCServerConfiguration(host: "127.0.0.1", port: 0),
            configuration: ViewServiceConfiguration(pingInterval: interval, deadPings: 5),
            election: SoleLeadership(store: store), group: group, logger: logger)
        let rpc = RPCClient(peer: PeerAddress(host: "127.0.0.1", port: started.server.port), eventLoop: group.next(), logger: logger)
        let outcome: Result<Void, any Error>
        do {
            try await started.service.waitUntil(role: ViewServiceRole(role: .leader))
            try await body(Harness(store: store, client: ViewServiceClient(rpc: rpc), startedAt: startedAt))
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        await store.release()
        try? await rpc.shutdown().get()
        await started.server.close()
        await started.service.stop()
        try await group.shutdownGracefully()
        try outcome.get()
    }

    /// s2 keeps pinging (alive, acknowledging view 2) while s1 is silent, until cancelled.
    static func keepAlive(_ h: Harness) -> Task<Void, Never> {
        Task {
            while !Task.isCancelled {
                _ = try? await h.ping("s2", 2)
                try? await Task.sleep(for: interval)
            }
        }
    }

    @Test("A fresh view service names no primary before a dead interval has passed since its start")
    func freshStartWaits() async throws {
        try await Self.run { h in
            _ = try await h.pingUntil("s1") { $0.primary == "s1" }
            #expect(ContinuousClock.now - h.startedAt >= Self.deadInterval)
        }
    }

    @Test("A ping that arrives while the primary's replacement is being stored is answered only after, with it")
    func pingWaitsForChangeInFlight() async throws {
        try await Self.run { h in
            try await h.primaryAndBackup()
            await h.store.hold(primary: "s2")
            let s2 = Self.keepAlive(h)
            defer { s2.cancel() }
            // s1 falls silent; after a dead interval the view service decides to promote s2.
            try await h.waitForStore("promotion being stored") { await $0.holding }
            // s1 wakes and pings: the stored view still names it, but it must not hear so.
            let answer = Task { () -> (View, ContinuousClock.Instant) in
                let view = try await h.ping("s1", 2)
                return (view, ContinuousClock.now)
            }
            try await Task.sleep(for: Self.interval * 4)
            let released = ContinuousClock.now
            await h.store.release()
            let (view, answeredAt) = try await answer.value
            #expect(answeredAt >= released)
            #expect(view.primary == "s2" && view.viewnum == 3, "answered \(view)")
        }
    }

    @Test("A sole view service whose store changed under it steps down, reloads the store and leads again from it")
    func conflictReloads() async throws {
        try await Self.run { h in
            try await h.primaryAndBackup()
            // Another writer stores view 7 (s2 primary, s1 backup); the service still holds view 2.
            let written = View(viewnum: 7, primary: "s2", backup: "s1", acknowledged: true)
            await h.store.overwrite(ViewRecord(view: written, previousBackup: ""))
            let s2 = Self.keepAlive(h)
            defer { s2.cancel() }
            // s1 falls silent: promoting s2 in view 3 conflicts with the store. The service must
            // come back from view 7, not stay without a leader.
            let view = try await h.pingUntil("s2", from: 2) { $0.viewnum >= 7 }
            #expect(view.primary == "s2", "answered \(view)")
            let stored = try #require(try await h.store.load())
            #expect(stored.view.viewnum >= 7 && stored.view.primary == "s2", "stored \(stored.view)")
        }
    }

    @Test("A store that failed without a verdict is retried: no ping is answered with the view it may have replaced")
    func ambiguousStoreFailure() async throws {
        try await Self.run { h in
            try await h.primaryAndBackup()
            await h.store.failAmbiguously(primary: "s2")
            let s2 = Self.keepAlive(h)
            defer { s2.cancel() }
            try await h.waitForStore("promotion attempted") { await $0.ambiguousFired }
            // The record naming s2 is in the store: s1 must never again hear that it is primary.
            for _ in 0..<5 {
                let view = try await h.ping("s1", 2)
                #expect(view.primary == "s2" && view.viewnum == 3, "answered \(view)")
            }
        }
    }
}
