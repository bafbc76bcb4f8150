import PBKVCore
@testable import PBKVEtcd
import PBKVTestSupport
import PBKVViewService
import PBKVWire
import Testing

/// The lease TTL the elections use (the default) and the margin allowed on top of it.
private let ttl = Duration.seconds(2)
private let margin = Duration.seconds(3)

extension EtcdTests {
    @Suite("EtcdElection: one leader at a time on real etcd")
    struct EtcdElectionTests {
        let logs = LogCapture()

        @Test("Two view services: exactly one leads, the other follows and names the leader's address")
        func oneLeader() async throws {
            try await withEtcd(logs: logs) { _, client in
                let a = RunningElection(client: client, advertise: "127.0.0.1:7101", logger: logs.logger)
                let b = RunningElection(client: client, advertise: "127.0.0.1:7102", logger: logs.logger)
                let settled = await eventually(within: .seconds(5)) {
                    let (aLeads, bLeads) = (await a.log.isLeader, await b.log.isLeader)
                    let (aFollows, bFollows) = (await a.log.followedLeader, await b.log.followedLeader)
                    return (aLeads && bFollows == a.advertise) || (bLeads && aFollows == b.advertise)
                }
                #expect(settled)
                let aLeads = await a.log.isLeader, bLeads = await b.log.isLeader
                #expect(aLeads != bLeads, "exactly one leader")
                let leader = aLeads ? a : b
                #expect(try await client.range("pbkv/leader").keyValue?.value == Array(leader.advertise.utf8))
                // The follower keeps following for a few campaign rounds (it does not flap).
                try await Task.sleep(for: .milliseconds(800))
                #expect(await (aLeads ? b : a).log.entries == [.follower(leader.advertise)])
                await a.stop()
                await b.stop()
            }
        }

        @Test("A leader stopped cleanly (task cancelled) revokes its lease: the other leads within TTL + margin")
        func cancelledLeaderHandsOver() async throws {
            try await withEtcd(logs: logs) { _, client in
                let a = RunningElection(client: client, advertise: "127.0.0.1:7101", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await a.log.isLeader })
                let b = RunningElection(client: client, advertise: "127.0.0.1:7102", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await b.log.followedLeader == a.advertise })
                let stopped = ContinuousClock.now
                await a.stop()
                #expect(await eventually(within: ttl + margin) { await b.log.isLeader })
                let handover = ContinuousClock.now - stopped
                // The lease was revoked, so B did not have to wait for it to expire.
                #expect(handover < ttl, "handover took \(handover)")
                let holder = try await client.range("pbkv/leader").keyValue
                #expect(holder?.value == Array(b.advertise.utf8))
                await b.stop()
                let afterStop = try await client.range("pbkv/leader").keyValue
                #expect(afterStop == nil)
            }
        }

        @Test("resign(): the leader reports follower at once and the other takes over; the resigned store is fenced")
        func resignHandsOver() async throws {
            try await withEtcd(logs: logs) { _, client in
                let a = RunningElection(client: client, advertise: "127.0.0.1:7101", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await a.log.isLeader })
                let b = RunningElection(client: client, advertise: "127.0.0.1:7102", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await b.log.followedLeader == a.advertise })
                let oldStore = try #require(await a.log.lastStore)
                #expect(try await oldStore.load() == nil)
                try await oldStore.compareAndStore(record(1), expected: nil)

                await a.election.resign()
                #expect(await eventually(within: .seconds(2)) { await a.log.last == .follower(nil) })
                #expect(await eventually(within: ttl) { await b.log.isLeader })
                #expect(await eventually(within: .seconds(2)) { await a.log.followedLeader == b.advertise })
                await #expect(throws: ViewStoreError.conflict(location: oldStore.location)) {
                    try await oldStore.compareAndStore(record(2), expected: record(1))
                }
                // The new leader reads the stored view and continues from it.
                let newStore = try #require(await b.log.lastStore)
                #expect(newStore.term > oldStore.term)
                #expect(try await newStore.load() == record(1))
                try await newStore.compareAndStore(record(2), expected: record(1))
                #expect(await a.log.entries == [.leader(term: oldStore.term), .follower(nil), .follower(b.advertise)])
                await a.stop()
                await b.stop()
            }
        }

        @Test("A paused leader whose lease expired cannot publish a view, even before the new leader wrote one")
        func pausedLeaderIsFenced() async throws {
            try await withEtcd(logs: logs) { _, client in
                let a = RunningElection(client: client, advertise: "127.0.0.1:7101", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await a.log.isLeader })
                #expect(try #require(a.election.leadershipValidUntil) > ContinuousClock.now)
                let staleStore = try #require(await a.log.lastStore)
                _ = try await staleStore.load()
                try await staleStore.compareAndStore(record(1), expected: nil)
                let b = RunningElection(client: client, advertise: "127.0.0.1:7102", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await b.log.followedLeader == a.advertise })

                // A stops as under SIGSTOP: no keepalive, no report. Its lease expires; B is elected.
                a.election.freeze()
                let paused = ContinuousClock.now
                #expect(await eventually(within: ttl + margin) { await b.log.isLeader })
                #expect(ContinuousClock.now - paused >= .seconds(1), "B must have waited for A's lease to expire")
                // A's sure leadership (what lets it answer pings, and so grant read leases) ended
                // before B could lead: B gives every server a full dead interval from its start.
                #expect(try #require(a.election.leadershipValidUntil) <= ContinuousClock.now)
                #expect(await a.log.isLeader, "a frozen election reports nothing")

                // A's store still thinks it leads; its compare-and-store fails and changes nothing.
                let before = try #require(try await client.range("pbkv/view").keyValue)
                await #expect(throws: ViewStoreError.conflict(location: staleStore.location)) {
                    try await staleStore.compareAndStore(record(2, primary: "stale"), expected: record(1))
                }
                #expect(try await client.range("pbkv/view").keyValue == before)

                // B continues from the stored view; A, woken, steps down at once and follows B.
                let newStore = try #require(await b.log.lastStore)
                #expect(try await newStore.load() == record(1))
                try await newStore.compareAndStore(record(2), expected: record(1))
                await #expect(throws: ViewStoreError.conflict(location: staleStore.location)) {
                    try await staleStore.compareAndStore(record(2, primary: "stale"), expected: record(1))
                }
                a.election.thaw()
                #expect(await eventually(within: .seconds(2)) { await a.log.followedLeader == b.advertise })
                #expect(await a.log.entries == [.leader(term: staleStore.term), .follower(nil), .follower(b.advertise)])
                #expect(logs.contains("lost its etcd lease"))
                #expect(try await client.range("pbkv/view").keyValue?.value == EnvelopeCodec.encode(record(2)))
                await a.stop()
                await b.stop()
            }
        }

        @Test("etcd paused (SIGSTOP) under a leader: it steps down by the lease's local deadline, then leads again")
        func keepaliveTimeoutStepsDown() async throws {
            try await withEtcd(logs: logs, requestTimeout: .milliseconds(500)) { cluster, client in
                let a = RunningElection(client: client, advertise: "127.0.0.1:7101", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await a.log.isLeader })
                let term = try #require(await a.log.lastStore).term
                cluster.members[0].pause()
                let paused = ContinuousClock.now
                #expect(await eventually(within: ttl + .milliseconds(500)) { await a.log.last == .follower(nil) })
                #expect(ContinuousClock.now - paused <= ttl + .milliseconds(500))
                cluster.members[0].resume()
                #expect(await eventually(within: ttl + margin) { await a.log.isLeader })
                #expect(try #require(await a.log.lastStore).term > term)
                await a.stop()
            }
        }

        @Test("etcd stopped under a leader: the failed keepalive makes it step down at once")
        func keepaliveFailureStepsDown() async throws {
            try await withEtcd(logs: logs, requestTimeout: .milliseconds(500)) { cluster, client in
                let a = RunningElection(client: client, advertise: "127.0.0.1:7101", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await a.log.isLeader })
                await cluster.members[0].kill()
                let killed = ContinuousClock.now
                // The next keepalive is due within TTL/3 and is refused at once.
                #expect(await eventually(within: ttl) { await a.log.last == .follower(nil) })
                #expect(ContinuousClock.now - killed < ttl)
                #expect(logs.contains("keepalive failed"))
                await a.stop()
            }
        }

        @Test("Elections under different prefixes do not see each other")
        func prefixes() async throws {
            try await withEtcd(logs: logs) { _, client in
                let a = RunningElection(client: client, advertise: "127.0.0.1:7101", prefix: "one", logger: logs.logger)
                let b = RunningElection(client: client, advertise: "127.0.0.1:7102", prefix: "two", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) {
                    let (aLeads, bLeads) = (await a.log.isLeader, await b.log.isLeader)
                    return aLeads && bLeads
                })
                let one = try await client.range("one/leader").keyValue
                let two = try await client.range("two/leader").keyValue
                #expect(one?.value == Array(a.advertise.utf8))
                #expect(two?.value == Array(b.advertise.utf8))
                await a.stop()
                await b.stop()
            }
        }

        @Test("run() twice at once is refused with a typed error")
        func runTwice() async throws {
            try await withEtcd(logs: logs) { _, client in
                let a = RunningElection(client: client, advertise: "127.0.0.1:7101", logger: logs.logger)
                #expect(await eventually(within: .seconds(5)) { await a.log.isLeader })
                await #expect(throws: EtcdError.electionAlreadyRunning) { try await a.election.run { _ in } }
                await a.stop()
            }
        }
    }
}
