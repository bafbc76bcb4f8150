import PBKVClient
import PBKVServer
import PBKVTestSupport
import PBKVWire
import Testing

/// The bounded duplicate table end to end: a primary and a backup with a small
/// `--max-sessions`, many client ids over loopback.
@Suite("Duplicate table end to end", .serialized, .timeLimit(.minutes(2)))
struct DuplicateTableEndToEndTests {
    @Test("300 client ids against --max-sessions 100: both tables stay bounded and equal, every write is kept, an evicted client starts a new session")
    func boundedAndEqual() async throws {
        let cluster = try await InProcessCluster.start()
        let configure: (inout KVServerConfiguration) -> Void = { $0.replica.maxSessions = 100 }
        let s1 = try await cluster.startServer(name: "s1", configure: configure)
        _ = try await cluster.waitForView("s1 primary") { $0.primary == s1.address && $0.acknowledged }
        let s2 = try await cluster.startServer(name: "s2", configure: configure)
        do {
            try await cluster.waitForView("s1 primary, s2 backup") {
                $0.primary == s1.address && $0.backup == s2.address && $0.acknowledged
            }
            let veteran = try cluster.client()
            try await veteran.put("veteran", "1")
            let firstID = await veteran.clientID
            for i in 0..<300 {
                let client = try cluster.client()
                try await client.put("k\(i)", "v\(i)")
                await client.close()
            }
            // The veteran's session was evicted: its next Put is refused unexecuted, and the
            // client starts a new session and succeeds.
            try await veteran.put("veteran", "2")
            #expect(await veteran.stats.newSessions == 1)
            #expect(await veteran.clientID != firstID)
            #expect(try await veteran.get("veteran") == "2")
            await veteran.close()

            // The backup has applied everything the primary acknowledged.
            let primary = try await s1.server.storeSnapshot()
            let backup = try await s2.server.storeSnapshot()
            #expect(primary.duplicates.count <= primary.evictionThreshold)
            #expect(primary.duplicates.count >= 100)
            #expect(primary.evictionThreshold == 112)
            #expect(backup.duplicates == primary.duplicates)
            #expect(backup.clock == primary.clock && primary.clock == 303)
            #expect(backup.map == primary.map)
            #expect(primary.map.count == 301)
            for i in 0..<300 { #expect(primary.map["k\(i)"] == "v\(i)") }
            #expect(primary.map["veteran"] == "2")
        } catch {
            Issue.record("\(error)")
        }
        await cluster.kill(s1)
        await cluster.kill(s2)
        await cluster.shutdown()
    }
}
