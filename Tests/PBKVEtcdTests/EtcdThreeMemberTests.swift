import PBKVCore
import PBKVEtcd
import PBKVTestSupport
import PBKVViewService
import PBKVWire
import Testing

extension EtcdTests {
    @Suite("Three etcd members")
    struct EtcdThreeMemberTests {
        let logs = LogCapture()

        @Test("One member killed: the leader's store still works (through another member), the member rejoins")
        func memberKilled() async throws {
            try await withEtcd(members: 3, logs: logs, requestTimeout: .milliseconds(500)) { cluster, client in
                let a = RunningElection(client: client, advertise: "127.0.0.1:7101", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await a.log.isLeader })
                let store = try #require(await a.log.lastStore)
                #expect(try await store.load() == nil)
                try await store.compareAndStore(record(1), expected: nil)

                // The member the client talks to goes (it may also be etcd's raft leader).
                let victim = try #require(cluster.members.firstIndex { $0.clientEndpoint == client.currentEndpoint })
                await cluster.members[victim].kill()

                // Store view 2 through whichever store leads now (a new term if the lease was lost
                // while etcd elected a new raft leader).
                var stored = false
                let deadline = ContinuousClock.now + .seconds(15)
                while !stored && ContinuousClock.now < deadline {
                    if let current = await a.log.lastStore, await a.log.isLeader {
                        do {
                            let loaded = try await current.load()
                            #expect(loaded == record(1))
                            try await current.compareAndStore(record(2), expected: loaded)
                            stored = true
                        } catch {
                            // .unavailable while etcd elects; .conflict if the term just ended.
                        }
                    }
                    if !stored { try await Task.sleep(for: .milliseconds(50)) }
                }
                #expect(stored)
                #expect(client.currentEndpoint != cluster.endpoints[victim])

                // Read it back from each surviving member alone.
                for (index, endpoint) in cluster.endpoints.enumerated() where index != victim {
                    let one = try EtcdClient(endpoints: [endpoint], logger: logs.logger)
                    let value = try await one.range("pbkv/view").keyValue?.value
                    #expect(value == EnvelopeCodec.encode(record(2)), "member \(index)")
                }

                // The killed member comes back with its data and catches up.
                try await cluster.restart(victim)
                let back = try EtcdClient(endpoints: [cluster.endpoints[victim]], logger: logs.logger)
                let value = try await back.range("pbkv/view").keyValue?.value
                #expect(value == EnvelopeCodec.encode(record(2)))
                await a.stop()
            }
        }
    }
}
