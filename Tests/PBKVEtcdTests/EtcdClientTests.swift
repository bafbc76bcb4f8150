import PBKVCore
import PBKVEtcd
import PBKVTestSupport
import Testing

extension EtcdTests {
    @Suite("etcd JSON gateway client")
    struct EtcdClientTests {
        @Test("--etcd takes HOST:PORT[,HOST:PORT…]; anything else is refused with what to give")
        func endpointParsing() throws {
            #expect(try EtcdClient.parseEndpoints("127.0.0.1:2379, localhost:22379,http://[::1]:3000") == [
                "127.0.0.1:2379", "localhost:22379", "[::1]:3000",
            ])
            #expect(throws: EtcdError.invalidEndpoint("127.0.0.1")) { try EtcdClient.parseEndpoints("127.0.0.1") }
            #expect(throws: EtcdError.invalidEndpoint("host:99999")) { try EtcdClient.parseEndpoints("host:99999") }
            #expect(throws: EtcdError.noEndpoints) { try EtcdClient.parseEndpoints(" , ") }
            #expect(EtcdError.invalidEndpoint("x").description.contains("HOST:PORT"))
        }

        @Test("A missing etcd binary fails with 'run make deps', not a skip")
        func missingEtcdMessage() {
            #expect(EtcdClusterError.etcdNotInstalled(path: "/usr/bin/etcd").description.contains("make deps"))
        }

        @Test("Puts, reads and compares through a transaction; an absent key reads as nil")
        func rangeAndTxn() async throws {
            try await withEtcd { _, client in
                #expect(try await client.range("t/a").keyValue == nil)
                let put = try await client.txn(
                    compare: [EtcdCompare(key: "t/a", .modRevision(0))], success: [.put(key: "t/a", value: [0, 1, 255])])
                #expect(put.succeeded)
                let kv = try #require(try await client.range("t/a").keyValue)
                #expect(kv.value == [0, 1, 255])
                #expect(kv.modRevision == put.revision && kv.createRevision == put.revision && kv.version == 1)
                // The same compare again fails and runs the failure branch.
                let again = try await client.txn(
                    compare: [EtcdCompare(key: "t/a", .modRevision(0))], success: [.put(key: "t/a", value: [9])],
                    failure: [.range(key: "t/a")])
                #expect(!again.succeeded)
                #expect(again.results == [.range([kv])])
                let deleted = try await client.txn(compare: [], success: [.delete(key: "t/a")])
                #expect(deleted.results == [.delete(deleted: 1)])
            }
        }

        @Test("Lease grant, keepalive and revoke; a key bound to a revoked lease is gone; a dead lease is not found")
        func leases() async throws {
            try await withEtcd { _, client in
                let lease = try await client.leaseGrant(ttl: 1)
                // etcd 3.4 raises TTLs below its minimum (1.5 × election timeout, rounded up: 2 s).
                #expect(lease.ttl == 2)
                #expect(try await client.leaseKeepAlive(lease.id) == 2)
                _ = try await client.txn(compare: [], success: [.put(key: "t/leased", value: [1], lease: lease.id)])
                #expect(try await client.range("t/leased").keyValue?.lease == lease.id)
                try await client.leaseRevoke(lease.id)
                #expect(try await client.range("t/leased").keyValue == nil)
                await #expect(throws: EtcdError.leaseNotFound(id: lease.id)) { try await client.leaseKeepAlive(lease.id) }
                // Revoking it again is not an error; a put bound to it is refused.
                try await client.leaseRevoke(lease.id)
                await #expect(throws: EtcdError.self) {
                    try await client.txn(compare: [], success: [.put(key: "t/x", value: [1], lease: lease.id)])
                }
            }
        }

        @Test("A lease not kept alive expires after its TTL, with its key")
        func leaseExpires() async throws {
            try await withEtcd { _, client in
                let lease = try await client.leaseGrant(ttl: 2)
                _ = try await client.txn(compare: [], success: [.put(key: "t/leased", value: [1], lease: lease.id)])
                let start = ContinuousClock.now
                #expect(try await eventually(within: .seconds(6)) { try await client.range("t/leased").keyValue == nil })
                #expect(ContinuousClock.now - start >= .milliseconds(1500))
                await #expect(throws: EtcdError.leaseNotFound(id: lease.id)) { try await client.leaseKeepAlive(lease.id) }
            }
        }

        @Test("The client moves past an endpoint that refuses connections and stays on the one that answers")
        func rotatesPastDeadEndpoint() async throws {
            let logs = LogCapture()
            try await withEtcd(logs: logs) { cluster, _ in
                let dead = "127.0.0.1:\(try ProcessCluster.freePort())"
                let client = try EtcdClient(endpoints: [dead] + cluster.endpoints, logger: logs.logger)
                #expect(client.currentEndpoint == dead)
                #expect(try await client.range("t/a").keyValue == nil)
                #expect(client.currentEndpoint == cluster.endpoints[0])
                #expect(logs.contains("etcd endpoint failed"))
            }
        }

        @Test("No endpoint answering is .unreachable, naming each endpoint and saying what to check")
        func unreachable() async throws {
            let logs = LogCapture()
            let dead = try ["127.0.0.1:\(ProcessCluster.freePort())", "127.0.0.1:\(ProcessCluster.freePort())"]
            let client = try EtcdClient(endpoints: dead, requestTimeout: .milliseconds(300), logger: logs.logger)
            do {
                _ = try await client.range("t/a")
                Issue.record("a read with no etcd running succeeded")
            } catch {
                guard case .unreachable(let attempts) = error else {
                    Issue.record("expected .unreachable, got \(error)")
                    return
                }
                #expect(attempts.count == 2)
                #expect(attempts[0].hasPrefix(dead[0]) && attempts[1].hasPrefix(dead[1]))
                #expect(error.description.contains("check that etcd runs"))
            }
        }

        @Test("A paused (SIGSTOP) member times out and the client moves to the next one")
        func pausedMemberTimesOut() async throws {
            try await withEtcd(members: 3, requestTimeout: .milliseconds(500)) { cluster, client in
                let before = try await client.range("t/a")
                #expect(before.keyValue == nil)
                cluster.members[0].pause()
                // If the paused member was etcd's raft leader the others elect another first (~1 s).
                #expect(await eventually(within: .seconds(6)) { (try? await client.range("t/a")) != nil })
                #expect(client.currentEndpoint != cluster.endpoints[0])
                cluster.members[0].resume()
            }
        }
    }
}
