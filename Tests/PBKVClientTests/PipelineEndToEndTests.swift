import PBKVClient
import PBKVCore
import PBKVServer
import PBKVTestSupport
import PBKVWire
import Synchronization
import Testing

/// Pipelining clients (`pipelineWindow` 8) over loopback, with the primary killed mid-run.
@Suite("Pipelining end to end", .serialized, .timeLimit(.minutes(2)))
struct PipelineEndToEndTests {
    @Test("Two clients with 8 operations outstanding each; the primary is killed mid-run, replies are dropped: the history is linearizable, and the new primary's backup holds the same table")
    func primaryKilledMidRun() async throws {
        // Leases off: every operation goes through the backup, so the replicas' tables can be compared.
        let cluster = try await InProcessCluster.start(readLeases: false)
        let s1 = try await cluster.startServer(name: "s1")
        _ = try await cluster.waitForView("s1 primary") { $0.primary == s1.address && $0.acknowledged }
        let s2 = try await cluster.startServer(name: "s2")
        _ = try await cluster.waitForView("s2 backup") { $0.primary == s1.address && $0.backup == s2.address && $0.acknowledged }
        let s3 = try await cluster.startServer(name: "s3")
        let recorder = HistoryRecorder()
        let keys = (0..<4).map { "k\($0)" }
        let window = 8
        let clients = try (0..<2).map { _ in
            try cluster.client(deadline: .seconds(20)) { $0.pipelineWindow = window }
        }
        let lanesState = LanesState(clients: 2)

        // Each client runs `window` lanes, each one operation at a time.
        let lanes = (0..<2).flatMap { n in
            (0..<window).map { lane in
                let client = clients[n]
                return Task {
                    var rng = SplitMix64(seed: UInt64(n * 100 + lane + 1))
                    var i = 0
                    while !lanesState.stopped {
                        let key = keys[Int(rng.next() % UInt64(keys.count))]
                        let value = "c\(n)-\(lane)-\(i)"
                        i += 1
                        lanesState.begin(client: n)
                        switch rng.next() % 3 {
                        case 0:
                            let token = recorder.invoke(client: n, kind: .get, key: key)
                            do {
                                let v = try await client.get(key)
                                recorder.complete(token, output: v.map { .value($0) } ?? .absent)
                            } catch { recorder.completeIndeterminate(token) }
                        case 1:
                            let token = recorder.invoke(client: n, kind: .put, key: key, value: value)
                            do {
                                try await client.put(key, value)
                                recorder.complete(token, output: .ok)
                            } catch { recorder.completeIndeterminate(token) }
                        default:
                            let token = recorder.invoke(client: n, kind: .putHash, key: key, value: value)
                            do {
                                let previous = try await client.putHash(key, value)
                                recorder.complete(token, output: .value(previous))
                            } catch { recorder.completeIndeterminate(token) }
                        }
                        lanesState.end(client: n)
                    }
                }
            }
        }
        do {
            // The primary's table shows replies kept for several seqs of one session: the
            // requests really are pipelined on the wire.
            try await cluster.waitUntil("a row keeping several replies") {
                try await s1.server.storeSnapshot().duplicates.values.contains { !$0.older.isEmpty }
            }
            let before = recorder.count
            try await cluster.waitUntil("100 more operations") { recorder.count >= before + 100 }
            // Replies lost: their requests are retried, some after the failover, out of order.
            s1.faults.policy = FaultPolicy(dropNextReplies: 5)
            try await cluster.waitUntil("the replies dropped") { s1.faults.policy.dropNextReplies == 0 }
            await cluster.kill(s1)
            s2.faults.policy = FaultPolicy(dropNextReplies: 3)
            _ = try await cluster.waitForView(timeout: .seconds(15), "s2 primary, s3 backup") {
                $0.primary == s2.address && $0.backup == s3.address && $0.acknowledged
            }
            let afterFailover = recorder.count
            try await cluster.waitUntil("200 operations after the failover") { recorder.count >= afterFailover + 200 }
        } catch {
            Issue.record("\(error)")
        }
        lanesState.stop()
        for lane in lanes { await lane.value }

        let history = recorder.history()
        let result = LinearizabilityChecker().check(history)
        #expect(result.isLinearizable, "\(result)")
        #expect(history.count >= 300)
        #expect(lanesState.mostOutstanding > 1)
        for client in clients {
            let stats = await client.stats
            #expect(stats.retries > 0, "the failover made the clients retry")
            await client.close()
        }
        do {
            // Every operation s2 applied reaches s3 (the last forwards may still be in flight).
            try await cluster.waitUntil("s3 holds s2's state") {
                let (primary, backup) = (try await s2.server.storeSnapshot(), try await s3.server.storeSnapshot())
                return backup.duplicates == primary.duplicates && backup.map == primary.map
            }
            let primary = try await s2.server.storeSnapshot()
            #expect(primary.duplicates.values.allSatisfy { $0.older.count < window })
        } catch {
            Issue.record("\(error)")
        }
        await cluster.kill(s2)
        await cluster.kill(s3)
        await cluster.shutdown()
    }

    @Test("A pipelining client whose session was evicted: its 8 concurrent Puts are all refused unexecuted, it starts one new session, and every Put then runs once")
    func sessionExpiredWithCallsInFlight() async throws {
        let cluster = try await InProcessCluster.start()
        let s1 = try await cluster.startServer(name: "s1") { $0.replica.maxSessions = 1 }
        do {
            _ = try await cluster.waitForView("s1 primary") { $0.primary == s1.address && $0.acknowledged }
            let client = try cluster.client { $0.pipelineWindow = 8 }
            try await client.put("first", "1")
            let firstID = await client.clientID
            // Two other sessions evict this one (1 + 1/8 rows trigger an eviction at 2).
            for name in ["b", "c"] {
                let other = try cluster.client()
                try await other.put(name, name)
                await other.close()
            }
            #expect(try await s1.server.storeSnapshot().duplicates[firstID] == nil)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<8 { group.addTask { try await client.put("k\(i)", "v\(i)") } }
                try await group.waitForAll()
            }
            #expect(await client.stats.newSessions == 1)
            let newID = await client.clientID
            #expect(newID != firstID)
            let store = try await s1.server.storeSnapshot()
            for i in 0..<8 { #expect(store.map["k\(i)"] == "v\(i)") }
            // 1 + 2 + 8 Puts ran, each once; the new session's row kept its seqs 1...8.
            #expect(store.clock == 11)
            #expect(store.duplicates[newID]?.seq == 8)
            await client.close()
        } catch {
            Issue.record("\(error)")
        }
        await cluster.kill(s1)
        await cluster.shutdown()
    }
}

/// What the lanes of the pipelining test share: when to stop, and how many calls each client has
/// in progress (and the most seen at once).
private final class LanesState: Sendable {
    private let state: Mutex<(stopped: Bool, now: [Int], most: Int)>

    init(clients: Int) { state = Mutex((false, Array(repeating: 0, count: clients), 0)) }

    var stopped: Bool { state.withLock { $0.stopped } }
    var mostOutstanding: Int { state.withLock { $0.most } }
    func stop() { state.withLock { $0.stopped = true } }

    func begin(client: Int) {
        state.withLock {
            $0.now[client] += 1
            $0.most = max($0.most, $0.now[client])
        }
    }

    func end(client: Int) { state.withLock { $0.now[client] -= 1 } }
}
