import Foundation
import Logging
import NIOPosix
import PBKVCore
import PBKVClient
import PBKVEtcd
import PBKVTestSupport
import PBKVWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The replicated view service as real processes: three `pbkv viewservice --etcd` over one
/// etcd, three KV servers, SIGKILL and SIGSTOP of the leader view service.
@Suite("Replicated view service (processes, etcd)", .serialized, .timeLimit(.minutes(3)))
struct ReplicatedViewServiceTests {
    static let quiet = Logger(label: "pbkv.test", factory: { _ in SwiftLogNoOpLogHandler() })

    struct Setup {
        let etcd: EtcdCluster
        let cluster: ProcessCluster
        let client: KVClient
        let viewServiceArguments: [String]

        func stop() async {
            await client.close()
            cluster.stopAll()
            await etcd.shutdown()
        }

        /// The view service process that answers GetView itself (the leader), other than `excluded`.
        func leader(within limit: Duration = .seconds(8), excluding excluded: String? = nil) async throws -> ClusterProcess {
            try await cluster.waitForViewServiceLeader(within: limit, excluding: excluded)
        }
    }

    /// etcd, three view services on it, s1 primary, s2 backup, s3 idle, keys a and b written.
    static func start(prefix: String) async throws -> Setup {
        let etcd = try await EtcdCluster.start(members: 1) { await EtcdClient.isServing(endpoint: $0) }
        let cluster: ProcessCluster
        do {
            cluster = try ProcessCluster(executable: try ProcessCluster.builtExecutable(), pingIntervalMs: 100)
        } catch {
            await etcd.shutdown()
            throw error
        }
        let arguments = ["--etcd", etcd.endpointList, "--etcd-prefix", prefix]
        do {
            for _ in 0..<3 { try cluster.startViewService(extraArguments: arguments) }
            var config = KVClientConfiguration()
            config.deadline = .seconds(10)
            let client = try cluster.client(config, logger: quiet)
            let setup = Setup(etcd: etcd, cluster: cluster, client: client, viewServiceArguments: arguments)
            _ = try await cluster.startServersInOrder(["s1", "s2", "s3"], watching: client)
            try await client.put("a", "1")
            try await client.put("b", "2")
            return setup
        } catch {
            cluster.stopAll()
            await etcd.shutdown()
            throw error
        }
    }

    @Test("SIGKILL and restart of the leader view service, six times: every key readable, writes within 2 s")
    func killLeaderSixTimes() async throws {
        let setup = try await Self.start(prefix: "kill")
        do {
            var rng = SplitMix64(seed: 11)
            var expected = ["a": "1", "b": "2"]
            var newest = try await setup.client.currentView()
            for round in 1...6 {
                let leader = try await setup.leader()
                leader.killAndWait()
                try await Task.sleep(for: .milliseconds(Int64(rng.next() % 300)))
                try setup.cluster.startViewService(address: leader.address, extraArguments: setup.viewServiceArguments)
                let restarted = ContinuousClock.now
                try await setup.client.put("round\(round)", "\(round)")
                let elapsed = ContinuousClock.now - restarted
                #expect(elapsed < .seconds(2), "round \(round): the first write took \(elapsed) after the restart")
                expected["round\(round)"] = "\(round)"
                for (key, value) in expected {
                    #expect(try await setup.client.get(key) == value, "round \(round): key \(key)")
                }
                // A new leader took over from the stored view: never an older number, still a
                // primary and a backup.
                let view = try await setup.client.waitForView(within: .seconds(8)) { $0.viewnum >= newest.viewnum }
                #expect(!view.primary.isEmpty && !view.backup.isEmpty, "round \(round): \(view)")
                newest = view
            }
        } catch {
            await setup.stop()
            throw error
        }
        await setup.stop()
    }

    @Test("A leader view service paused past its lease wakes up unable to publish a view; the store goes on")
    func pausedLeaderCannotPublish() async throws {
        let setup = try await Self.start(prefix: "pause")
        do {
            let before = try await setup.client.currentView()
            let paused = try await setup.leader()
            let logBeforePause = try Data(contentsOf: paused.logFile).count
            paused.signal(SIGSTOP)
            // Another view service takes over once the paused one's lease (2 s) expired.
            _ = try await setup.leader(within: .seconds(10), excluding: paused.address)
            // Woken, the old leader finds every server silent for seconds: its rules want a new
            // view at once. Its compare-and-swap is fenced on its expired term, so it cannot.
            let woke = ContinuousClock.now
            paused.signal(SIGCONT)
            try await Task.sleep(for: .milliseconds(1500))
            let afterWake = String(decoding: try Data(contentsOf: paused.logFile).dropFirst(logBeforePause), as: UTF8.self)
            #expect(!afterWake.contains("view changed"), "the paused leader published a view:\n\(afterWake)")
            #expect(afterWake.contains("no longer leader"), "the woken leader did not step down:\n\(afterWake)")
            // The servers never stopped pinging: the view is the one from before the pause.
            let view = try await setup.client.waitForView(within: .seconds(5)) { $0.viewnum >= before.viewnum }
            #expect(view.sameAssignment(as: before), "view moved from \(before) to \(view) \(ContinuousClock.now - woke) after the wake")
            try await setup.client.put("c", "3")
            #expect(try await setup.client.get("a") == "1")
            #expect(try await setup.client.get("c") == "3")
        } catch {
            await setup.stop()
            throw error
        }
        await setup.stop()
    }
}
