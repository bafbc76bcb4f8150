import PBKVCore
import PBKVClient
import PBKVTestSupport
import PBKVWire
import Testing

/// A new backup that dies before its state transfer completed: the view (never acknowledged,
/// since the primary acknowledges only once its backup holds the state) must not stay frozen.
@Suite("A backup lost during its transfer is replaced", .serialized, .timeLimit(.minutes(1)))
struct BackupLostDuringTransferTests {
    @Test("The primary keeps its role, the next idle server becomes backup, every acknowledged key is served")
    func backupLostMidTransfer() async throws {
        let cluster = try await InProcessCluster.start()
        let s1 = try await cluster.startServer(name: "s1")
        try await cluster.waitForView("s1 primary of an acknowledged view") { $0.primary == s1.address && $0.acknowledged }
        let client = try cluster.client(deadline: .seconds(20))
        for i in 0..<50 { try await client.put("k\(i)", "v\(i)") }

        // s2 pings the view service but takes no call: its transfer can never complete.
        let s2 = try await cluster.startServer(name: "s2", faults: FaultPolicy(partitioned: true))
        let joined = try await cluster.waitForView("s2 backup") { $0.primary == s1.address && $0.backup == s2.address }
        #expect(!joined.acknowledged)
        let s3 = try await cluster.startServer(name: "s3")
        await cluster.kill(s2)

        let replaced = try await cluster.waitForView(timeout: .seconds(15), "s3 backup of an acknowledged view") {
            $0.primary == s1.address && $0.backup == s3.address && $0.acknowledged
        }
        #expect(replaced.viewnum == joined.viewnum + 1, "one view change: the dead backup replaced")
        for i in 0..<50 { #expect(try await client.get("k\(i)") == "v\(i)") }
        try await client.put("after", "yes")
        // s3 holds everything: it takes over when s1 dies.
        await cluster.kill(s1)
        try await cluster.waitForView(timeout: .seconds(15), "s3 primary") { $0.primary == s3.address }
        for i in 0..<50 { #expect(try await client.get("k\(i)") == "v\(i)") }
        #expect(try await client.get("after") == "yes")
        await client.close()
        await cluster.kill(s3)
        await cluster.shutdown()
    }
}
