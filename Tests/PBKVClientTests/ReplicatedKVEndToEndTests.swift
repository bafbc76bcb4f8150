import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVClient
import PBKVServer
import PBKVTestSupport
import PBKVWire
import Testing

/// The replicated store end to end: in-process view service and servers over loopback TCP and
/// over an in-memory network, real timing (ping interval 100 ms, 5 missed pings = dead), bounded in time.
/// Every case starts its own cluster (own ports, own network, own etcd) and shares nothing, so
/// the cases may run at once: `make test` runs four at a time (`make test-scenarios`).
@Suite("Replicated KV end to end", .timeLimit(.minutes(2)))
struct ReplicatedKVEndToEndTests {
    /// Waits until `node` is primary and `backup` (if any) is its acknowledged backup.
    func waitForPrimary(
        _ cluster: InProcessCluster, _ node: InProcessCluster.Node, backup: InProcessCluster.Node? = nil
    ) async throws {
        try await cluster.waitForView("\(node.name) primary, backup \(backup?.name ?? "none")") { view in
            view.primary == node.address && view.acknowledged && (backup == nil || view.backup == backup!.address)
        }
    }

    /// A direct call to one server, bypassing the client's view cache (a delayed or misdirected request).
    func directGet(
        _ cluster: InProcessCluster, _ node: InProcessCluster.Node, key: String, timeout: Duration
    ) async -> Result<KVReply, RPCError> {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let rpc = try! cluster.rpcClient(to: node.address, eventLoop: group.next())
        let outcome: Result<KVReply, RPCError>
        do {
            let result = try await rpc.call(.get(key: key, id: RequestID(clientID: 42, seq: 1)), timeout: timeout)
            if case .kv(let reply) = result { outcome = .success(reply) } else { outcome = .failure(.protocolViolation("not a KV reply")) }
        } catch {
            outcome = .failure(error)
        }
        // The client first, so that a late reply is never handed to a loop that has shut down.
        try? await rpc.shutdown().get()
        try? await group.shutdownGracefully()
        return outcome
    }

    @Test("1. Single primary, no backup: Puts and Gets", arguments: scenarioClusters)
    func singlePrimary(viewService: ViewServiceKind, transport: TransportKind) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        let s1 = try await cluster.startServer(name: "s1")
        try await waitForPrimary(cluster, s1)
        let client = try cluster.client()
        #expect(try await client.get("a") == nil)
        try await client.put("a", "aa")
        try await client.put("b", "")
        #expect(try await client.get("a") == "aa")
        #expect(try await client.get("b") == "", "empty value is not absent")
        try await client.put("a", "aaa")
        #expect(try await client.get("a") == "aaa")
        #expect(try await client.putHash("h", "x") == "")
        #expect(try await client.get("h") == PutHash.newValue(previous: "", value: "x"))
        let stats = await client.stats
        #expect(stats.viewServiceCalls <= 2, "the client caches the view: \(stats.viewServiceCalls) view service calls")
        await client.close()
        await cluster.kill(s1)
        await cluster.shutdown()
    }

    @Test("2. Add a backup: a Put right after it appears and another after 300 ms survive the primary", arguments: scenarioClusters)
    func addBackup(viewService: ViewServiceKind, transport: TransportKind) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        let s1 = try await cluster.startServer(name: "s1")
        try await waitForPrimary(cluster, s1)
        let client = try cluster.client()
        try await client.put("1", "one")
        let s2 = try await cluster.startServer(name: "s2")
        try await cluster.waitForView("s2 named backup") { $0.backup == s2.address }
        try await client.put("2", "two")
        try await Task.sleep(for: .milliseconds(300))
        try await client.put("3", "three")
        try await waitForPrimary(cluster, s1, backup: s2)
        await cluster.kill(s1)
        try await waitForPrimary(cluster, s2)
        #expect(try await client.get("1") == "one")
        #expect(try await client.get("2") == "two")
        #expect(try await client.get("3") == "three")
        await client.close()
        await cluster.kill(s2)
        await cluster.shutdown()
    }

    @Test("3. Primary failure: the backup becomes primary and holds everything", arguments: scenarioClusters)
    func primaryFailure(viewService: ViewServiceKind, transport: TransportKind) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        let s1 = try await cluster.startServer(name: "s1")
        try await waitForPrimary(cluster, s1)
        let s2 = try await cluster.startServer(name: "s2")
        try await waitForPrimary(cluster, s1, backup: s2)
        let client = try cluster.client()
        for i in 0..<100 { try await client.put("k\(i)", "v\(i)") }
        await cluster.kill(s1)
        let view = try await cluster.waitForView("s2 promoted") { $0.primary == s2.address }
        #expect(view.backup.isEmpty)
        for i in 0..<100 { #expect(try await client.get("k\(i)") == "v\(i)") }
        #expect(try await s2.server.snapshot().count == 100)
        await client.close()
        await cluster.kill(s2)
        await cluster.shutdown()
    }

    @Test("4. Kill the last server, start a fresh one: a Get does not complete (a fresh server never serves)", arguments: scenarioClusters)
    func freshServerNeverServes(viewService: ViewServiceKind, transport: TransportKind) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        let s1 = try await cluster.startServer(name: "s1")
        try await waitForPrimary(cluster, s1)
        let s2 = try await cluster.startServer(name: "s2")
        try await waitForPrimary(cluster, s1, backup: s2)
        let client = try cluster.client()
        try await client.put("k", "v")
        await cluster.kill(s2)
        try await cluster.waitForView("backup removed") { $0.backup.isEmpty && $0.acknowledged }
        await cluster.kill(s1)
        // s1 was the last server holding state; a fresh server must never answer.
        let s3 = try await cluster.startServer(name: "s3")
        let s1again = try await cluster.restart(s1)  // same address, empty
        let shortClient = try cluster.client(deadline: .seconds(2))
        await #expect(throws: KVClientError.self) { _ = try await shortClient.get("k") }
        let direct3 = await directGet(cluster, s3, key: "k", timeout: .milliseconds(500))
        let direct1 = await directGet(cluster, s1again, key: "k", timeout: .milliseconds(500))
        for result in [direct3, direct1] {
            if case .success(let reply) = result { #expect(reply.code == .wrongServer, "fresh server answered \(reply)") }
        }
        #expect(try await s1again.server.status().role != .primary)
        await shortClient.close()
        await client.close()
        await cluster.kill(s3)
        await cluster.kill(s1again)
        await cluster.shutdown()
    }

    @Test("5. At-most-once PutHash chain of 100 on unreliable servers", arguments: scenarioClusters)
    func putHashChainUnreliable(viewService: ViewServiceKind, transport: TransportKind) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        let lossy = FaultPolicy(dropRequest: 0.1, dropReply: 0.1)
        let s1 = try await cluster.startServer(name: "s1", faults: lossy, seed: 11)
        try await waitForPrimary(cluster, s1)
        let s2 = try await cluster.startServer(name: "s2", faults: lossy, seed: 12)
        try await waitForPrimary(cluster, s1, backup: s2)
        let client = try cluster.client()
        var expected = ""
        for i in 0..<100 {
            let previous = try await client.putHash("chain", "\(i)")
            #expect(previous == expected, "step \(i)")
            expected = PutHash.newValue(previous: expected, value: "\(i)")
        }
        #expect(try await client.get("chain") == expected)
        let faults = s1.faults.counts
        #expect(faults.requestsDropped + faults.repliesDropped > 0, "the network was lossy")
        let stats = await client.stats
        #expect(stats.retries > 0)
        await client.close()
        await cluster.kill(s1)
        await cluster.kill(s2)
        await cluster.shutdown()
    }

    @Test("6. Put right after the backup fails, a third server becomes backup, Put right after the primary fails", arguments: scenarioClusters)
    func repeatedFailover(viewService: ViewServiceKind, transport: TransportKind) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        let s1 = try await cluster.startServer(name: "s1")
        try await waitForPrimary(cluster, s1)
        let s2 = try await cluster.startServer(name: "s2")
        try await waitForPrimary(cluster, s1, backup: s2)
        let client = try cluster.client()
        try await client.put("a", "1")
        await cluster.kill(s2)
        try await client.put("b", "2")
        let s3 = try await cluster.startServer(name: "s3")
        try await waitForPrimary(cluster, s1, backup: s3)
        try await client.put("c", "3")
        await cluster.kill(s1)
        try await client.put("d", "4")
        try await waitForPrimary(cluster, s3)
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] { #expect(try await client.get(k) == v) }
        #expect(try await s3.server.snapshot() == ["a": "1", "b": "2", "c": "3", "d": "4"])
        await client.close()
        await cluster.kill(s3)
        await cluster.shutdown()
    }

    /// Scenarios 7 and 8: concurrent Puts to shared keys, then the primary dies.
    func concurrentPutsThenKillPrimary(_ viewService: ViewServiceKind, _ transport: TransportKind, faults: FaultPolicy) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        let s1 = try await cluster.startServer(name: "s1", faults: faults, seed: 21)
        try await waitForPrimary(cluster, s1)
        let s2 = try await cluster.startServer(name: "s2", faults: faults, seed: 22)
        try await waitForPrimary(cluster, s1, backup: s2)
        let clients = try (0..<3).map { _ in try cluster.client() }
        let stop = ContinuousClock.now + .seconds(3)
        try await withThrowingTaskGroup(of: Int.self) { group in
            for (n, client) in clients.enumerated() {
                group.addTask {
                    var i = 0
                    while ContinuousClock.now < stop {
                        try await client.put("k\(i % 10)", "c\(n)-\(i)")
                        i += 1
                    }
                    return i
                }
            }
            var total = 0
            for try await count in group { total += count }
            #expect(total > 10, "the workload ran (\(total) Puts)")
        }
        // On a busy machine a late ping may have swapped the roles meanwhile: take them from the
        // settled view. Every Put was acknowledged, so the backup holds exactly the primary's state.
        let settled = try await cluster.waitForView("a settled view") { $0.acknowledged && !$0.backup.isEmpty }
        let (primary, backup) = settled.primary == s1.address ? (s1, s2) : (s2, s1)
        let primaryState = try await primary.server.snapshot()
        let backupState = try await backup.server.snapshot()
        #expect(primaryState == backupState)
        await cluster.kill(primary)
        try await waitForPrimary(cluster, backup)
        for i in 0..<10 {
            #expect(try await clients[0].get("k\(i)") == primaryState["k\(i)"])
        }
        for client in clients { await client.close() }
        await cluster.kill(backup)
        await cluster.shutdown()
    }

    @Test("7. Concurrent Puts to the same keys; kill the primary; the backup has the primary's values", arguments: scenarioClusters)
    func concurrentSameKeys(viewService: ViewServiceKind, transport: TransportKind) async throws {
        try await concurrentPutsThenKillPrimary(viewService, transport, faults: .none)
    }

    @Test("8. The same with request and reply drops", arguments: scenarioClusters)
    func concurrentSameKeysUnreliable(viewService: ViewServiceKind, transport: TransportKind) async throws {
        try await concurrentPutsThenKillPrimary(viewService, transport, faults: FaultPolicy(dropRequest: 0.1, dropReply: 0.1))
    }

    /// Scenarios 9 and 10: a killer restarts a random server (fresh, empty) every ~2 s, `restarts`
    /// times, while two clients write and read their own keys (or PutHash chains) and check every
    /// result until the killer is done.
    func killerRestarts(_ viewService: ViewServiceKind, _ transport: TransportKind, restarts wanted: Int, putHash: Bool, faults: FaultPolicy) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        var nodes: [InProcessCluster.Node] = []
        for i in 1...3 {
            nodes.append(try await cluster.startServer(name: "s\(i)", faults: faults, seed: UInt64(30 + i)))
            if i == 1 { try await waitForPrimary(cluster, nodes[0]) }
        }
        try await cluster.waitForView("primary and backup") { $0.acknowledged && !$0.backup.isEmpty }
        let stop = Latch()
        let clients = try (0..<2).map { _ in try cluster.client() }
        async let checks: [Int] = withThrowingTaskGroup(of: Int.self) { group in
            for (n, client) in clients.enumerated() {
                group.addTask {
                    var ops = 0
                    var chain = ""
                    var i = 0
                    while !stop.isSet {
                        let key = "c\(n)-\(i % 5)"
                        if putHash {
                            let previous = try await client.putHash("chain-\(n)", "\(i)")
                            #expect(previous == chain, "client \(n) step \(i)")
                            chain = PutHash.newValue(previous: chain, value: "\(i)")
                        } else {
                            try await client.put(key, "v\(i)")
                            let read = try await client.get(key)
                            #expect(read == "v\(i)", "client \(n) read \(read ?? "nil") for \(key)")
                        }
                        ops += 1
                        i += 1
                    }
                    if putHash { #expect(try await client.get("chain-\(n)") == chain) }
                    return ops
                }
            }
            var all: [Int] = []
            for try await ops in group { all.append(ops) }
            return all
        }
        var rng = SplitMix64(seed: 7)
        for restarts in 0..<wanted {
            try await Task.sleep(for: .seconds(2))
            // Restart only a settled cluster, so there is always a server holding the state.
            try await cluster.waitForView(timeout: .seconds(10), "settled view") { $0.acknowledged && !$0.backup.isEmpty }
            let i = Int(rng.next() % 3)
            await cluster.kill(nodes[i])
            nodes[i] = try await cluster.restart(nodes[i], faults: faults, seed: UInt64(40 + restarts))
        }
        // Let the clients work against the last restart too, then stop them.
        try await cluster.waitForView(timeout: .seconds(10), "settled view") { $0.acknowledged && !$0.backup.isEmpty }
        stop.set()
        let ops = try await checks
        #expect(ops.allSatisfy { $0 > 5 }, "both clients made progress: \(ops)")
        for client in clients { await client.close() }
        for node in nodes { await cluster.kill(node) }
        await cluster.shutdown()
    }

    @Test("9. Repeated failures and restarts: every Get returns the last Put", arguments: scenarioClusters)
    func repeatedRestarts(viewService: ViewServiceKind, transport: TransportKind) async throws {
        try await killerRestarts(viewService, transport, restarts: 6, putHash: false, faults: .none)
    }

    @Test("10. Repeated failures and restarts with PutHash chains and drops", arguments: scenarioClusters)
    func repeatedRestartsPutHashUnreliable(viewService: ViewServiceKind, transport: TransportKind) async throws {
        try await killerRestarts(viewService, transport, restarts: 6, putHash: true, faults: FaultPolicy(dropRequest: 0.05, dropReply: 0.05))
    }

    @Test("11. An old primary cut off from the view service does not serve a stale Get", arguments: scenarioClusters)
    func oldPrimaryDoesNotServeStaleGet(viewService: ViewServiceKind, transport: TransportKind) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        let s1 = try await cluster.startServer(name: "s1")
        try await waitForPrimary(cluster, s1)
        let s2 = try await cluster.startServer(name: "s2")
        try await waitForPrimary(cluster, s1, backup: s2)
        let client = try cluster.client()
        try await client.put("k", "old")
        // Cut s1 off from the view service only; clients can still reach it.
        s1.viewServiceFaults.policy = FaultPolicy(partitioned: true)
        try await cluster.waitForView("s2 took over") { $0.primary == s2.address }
        // Until s2 itself hears of the new view it is still s1's backup, and s1 may rightly
        // complete operations through it (a Put of "new", a Get answering "new"): wait for it.
        try await cluster.waitUntil("s2 knows it is primary") {
            let status = try await s2.server.status()
            return status.role == .primary && status.view.primary == s2.address
        }
        try await client.put("k", "new")
        #expect(try await client.get("k") == "new")
        // A request that was delayed and reaches the old primary now must not see "old". Its
        // lease is over, so it forwards the Get to s2, which refuses (it is primary of a later
        // view), and retries until it learns a view it cannot reach: no answer at all.
        let result = await directGet(cluster, s1, key: "k", timeout: .seconds(1))
        if case .success(let reply) = result {
            let status = try await s1.server.status()
            let leased = try await s1.server.holdsReadLease()
            Issue.record("old primary answered \(reply) (role \(status.role), view \(status.view), lease \(leased))")
        }
        #expect(result == .failure(.timeout(method: "Get", peer: s1.address)))
        await client.close()
        await cluster.kill(s1)
        await cluster.kill(s2)
        await cluster.shutdown()
    }

    @Test("12. A partitioned old primary does not complete Gets when its backup is dead", arguments: scenarioClusters)
    func partitionedPrimaryWithDeadBackup(viewService: ViewServiceKind, transport: TransportKind) async throws {
        let cluster = try await InProcessCluster.start(viewService, transport)
        let s1 = try await cluster.startServer(name: "s1")
        try await waitForPrimary(cluster, s1)
        let s2 = try await cluster.startServer(name: "s2")
        try await waitForPrimary(cluster, s1, backup: s2)
        let client = try cluster.client()
        try await client.put("k", "v")
        s1.viewServiceFaults.policy = FaultPolicy(partitioned: true)
        await cluster.kill(s2)
        // Within its read lease s1 may still answer (nobody else can be primary before it ends);
        // once the lease is over, a Get needs the dead backup and never completes.
        try await cluster.waitUntil("s1's read lease ended") { try await !s1.server.holdsReadLease() }
        // It cannot learn that it was deposed either: the Get waits for the backup until it times out.
        let result = await directGet(cluster, s1, key: "k", timeout: .seconds(2))
        #expect(result == .failure(.timeout(method: "Get", peer: s1.address)), "partitioned primary answered: \(result)")
        await client.close()
        await cluster.kill(s1)
        await cluster.shutdown()
    }
}
