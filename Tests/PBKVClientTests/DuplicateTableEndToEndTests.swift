import PBKVCore
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
        // Leases off: a Get answered on a read lease is applied on the primary alone, and this
        // test compares the two tables entry for entry.
        let configure: (inout KVServerConfiguration) -> Void = {
            $0.replica.maxSessions = 100
            $0.replica.readLeases = false
        }
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

    @Test("A Put whose first attempt ran (reply lost) and whose session was then evicted fails with sessionExpired, and is not run again")
    func retryAfterEviction() async throws {
        let cluster = try await InProcessCluster.start()
        // One session kept: a third client's request evicts the others.
        let s1 = try await cluster.startServer(name: "s1") { $0.replica.maxSessions = 1 }
        do {
            _ = try await cluster.waitForView("s1 primary") { $0.primary == s1.address && $0.acknowledged }
            var configuration = KVClientConfiguration()
            configuration.deadline = .seconds(20)
            configuration.attemptTimeout = .seconds(2)  // the window in which the others evict it
            let veteran = try KVClient(viewService: cluster.viewServiceAddress, configuration: configuration)
            try await veteran.put("a", "1")
            let firstID = await veteran.clientID
            s1.faults.policy = FaultPolicy(dropNextReplies: 1)
            let attempt = Task { () -> String in
                do {
                    try await veteran.put("a", "2")
                    return "succeeded"
                } catch {
                    return "\(error)"
                }
            }
            // The first attempt ran: its reply was dropped.
            try await cluster.waitUntil("the first attempt applied") { try await s1.server.storeSnapshot().clock == 2 }
            for name in ["b", "c"] {
                let other = try cluster.client()
                try await other.put(name, name)
                await other.close()
            }
            let evicted = try await s1.server.storeSnapshot()
            #expect(evicted.duplicates[firstID] == nil)
            let error = await attempt.value
            #expect(error == KVClientError.sessionExpired(operation: "Put", key: "a").description)
            let after = try await s1.server.storeSnapshot()
            #expect(after.map["a"] == "2" && after.clock == 4)  // ran once, not twice
            // The client has moved to a new session: the next call works.
            try await veteran.put("a", "3")
            #expect(await veteran.clientID != firstID)
            #expect(try await veteran.get("a") == "3")
            await veteran.close()
        } catch {
            Issue.record("\(error)")
        }
        await cluster.kill(s1)
        await cluster.shutdown()
    }
}
