import PBKVTestSupport
import PBKVViewService
import PBKVWire
import Testing

@testable import PBKVCore
@testable import PBKVServer

private func view(_ viewnum: UInt64, _ primary: String, _ backup: String = "", acknowledged: Bool = false) -> View {
    View(viewnum: viewnum, primary: primary, backup: backup, acknowledged: acknowledged)
}

private func op(_ kind: OpKind, _ key: String, _ value: String = "", client: UInt64 = 1, seq: UInt64) -> Operation {
    Operation(kind: kind, key: key, value: value, id: RequestID(clientID: client, seq: seq))
}

private let length = ReplicaConfiguration().leaseLength

/// "p" primary of view 2 with backup "b" (state transferred, view acknowledged), "p" holding a
/// read lease from a ping sent at `sentAt` and `k` = "v1" committed on both.
private func leasedPrimary(sentAt: Duration = .zero, configuration: ReplicaConfiguration = .init()) -> ReplicaNetwork {
    var net = ReplicaNetwork.primaryWithBackup(configuration: configuration)
    net.request("p", op(.put, "k", "v1", client: 9, seq: 1), token: 900)
    net.settle()
    _ = net.nodes["p"]!.onView(view(2, "p", "b", acknowledged: true), pingSentAt: sentAt)
    return net
}

@Suite("Read leases (replica state machine, fake clock)")
struct ReadLeaseTests {
    @Test("The lease length is dead interval × (1 − drift bound) − margin")
    func leaseLength() {
        var configuration = ReplicaConfiguration()
        #expect(configuration.leaseLength == .milliseconds(500) * 0.99 - .milliseconds(10))
        configuration.readLeases = false
        #expect(configuration.leaseLength == .zero)
    }

    @Test("A ping answered with a view naming the primary grants a lease that ends exactly at its end")
    func leaseEndsExactly() {
        var clock = FakeClock(now: .seconds(10))
        let sentAt = clock.now
        var net = leasedPrimary(sentAt: sentAt)
        #expect(net["p"].leaseEnd == sentAt + length)
        // Within the lease: answered at once from the store; it reaches the backup later.
        clock.advance(by: length - .nanoseconds(1))
        let inside = net.request("p", op(.get, "k", seq: 1), token: 1, now: clock.now)
        #expect(inside == [.reply(1, KVReply(code: .ok, value: "v1"))])
        #expect(net.inFlight.isEmpty)
        // At its end: the Get goes through the backup, answered only once the backup has it.
        clock.advance(by: .nanoseconds(1))
        let atEnd = net.request("p", op(.get, "k", seq: 2), token: 2, now: clock.now)
        #expect(!atEnd.contains { if case .reply = $0 { true } else { false } })
        #expect(net.inFlight.count == 1)
        net.settle()
        #expect(net.replies.last == .reply(2, KVReply(code: .ok, value: "v1")))
        #expect(net.replies.filter { if case .reply(1, _) = $0 { true } else { false } }.count == 1, "the leased Get, forwarded with this one, is answered once")
    }

    @Test("Gets answered on the lease reach the backup with the next write, or once 64 of them wait, in stream order")
    func leaseGetsFollowLazily() {
        var net = leasedPrimary()
        let now = Duration.milliseconds(10)
        let perForward = ReplicaStateMachine.leaseGetsPerForward
        for seq in 1..<UInt64(perForward) {
            #expect(net.request("p", op(.get, "k", client: 5, seq: seq), token: 100 + seq, now: now)
                == [.reply(100 + seq, KVReply(code: .ok, value: "v1"))])
        }
        #expect(net.inFlight.isEmpty, "\(perForward - 1) Gets wait for company")
        let clockBefore = net["b"].store.clock
        // The 64th goes out with the 63 before it.
        let last = net.request("p", op(.get, "k", client: 5, seq: UInt64(perForward)), token: 999, now: now)
        #expect(last.first == .reply(999, KVReply(code: .ok, value: "v1")))
        #expect(net.inFlight.count == 1)
        net.settle()
        #expect(net["b"].store.clock == clockBefore + UInt64(perForward))
        #expect(net["b"].store.duplicates == net["p"].store.duplicates)
        // A single Get waits; a write takes it along, ahead of itself.
        net.request("p", op(.get, "k", client: 6, seq: 1), token: 1000, now: now)
        #expect(net.inFlight.isEmpty)
        net.request("p", op(.put, "j", "x", client: 7, seq: 1), token: 1001, now: now)
        net.settle()
        #expect(net.replies.last == .reply(1001, KVReply(code: .ok)))
        #expect(net["b"].store.duplicates[6]?.seq == 1)
        #expect(net["b"].store.duplicates == net["p"].store.duplicates)
        #expect(net["p"].pendingCount == 0)
    }

    @Test("A lease is renewed only by an answer naming this primary in its current view; without a send time, none")
    func renewalRules() {
        var net = leasedPrimary(sentAt: .seconds(1))
        let end = net["p"].leaseEnd
        // The answer to a view fetch that was not a ping (no send time): no lease change.
        _ = net.nodes["p"]!.onView(view(2, "p", "b", acknowledged: true))
        #expect(net["p"].leaseEnd == end)
        // A stale answer (an older view, e.g. from a deposed view service leader) renews nothing.
        _ = net.nodes["p"]!.onView(view(1, "p", acknowledged: true), pingSentAt: .seconds(5))
        #expect(net["p"].leaseEnd == end)
        // A later ping of the same view renews it; an earlier one never shortens it.
        _ = net.nodes["p"]!.onView(view(2, "p", "b", acknowledged: true), pingSentAt: .seconds(2))
        #expect(net["p"].leaseEnd == .seconds(2) + length)
        _ = net.nodes["p"]!.onView(view(2, "p", "b", acknowledged: true), pingSentAt: .milliseconds(1500))
        #expect(net["p"].leaseEnd == .seconds(2) + length)
        // A view naming another primary ends it at once: Gets get WRONG_SERVER, never a value.
        _ = net.nodes["p"]!.onView(view(3, "b"), pingSentAt: .seconds(3))
        #expect(net["p"].leaseEnd == nil)
        #expect(!net["p"].holdsLease(at: .seconds(3)))
        #expect(net.nodes["p"]!.onClientRequest(op(.get, "k", seq: 1), token: 1, now: .seconds(3))
            == [.reply(1, KVReply(code: .wrongServer))])
    }

    @Test("No lease for a server that is not an initialized primary, nor with leases off")
    func noLeaseWithoutRole() {
        var b = ReplicaStateMachine(me: "b")
        _ = b.onView(view(2, "p", "b", acknowledged: true), pingSentAt: .zero)
        #expect(b.leaseEnd == nil)
        var restarted = ReplicaStateMachine(me: "p")
        _ = restarted.onView(view(2, "p", "b", acknowledged: true), pingSentAt: .zero)
        #expect(restarted.role == .primaryWithoutState && restarted.leaseEnd == nil)

        var off = ReplicaConfiguration()
        off.readLeases = false
        var net = leasedPrimary(configuration: off)
        #expect(net["p"].leaseEnd == nil)
        let directives = net.request("p", op(.get, "k", seq: 1), token: 1, now: .milliseconds(1))
        #expect(!directives.contains { if case .reply = $0 { true } else { false } })
        #expect(net.inFlight.count == 1)
    }

    @Test("A Get of a key with a write not yet acknowledged by the backup waits for it; other keys are read at once")
    func pendingWriteIsNotRead() {
        var net = leasedPrimary()
        let now = Duration.milliseconds(10)
        net.request("p", op(.put, "k", "v2", client: 2, seq: 1), token: 1, now: now)
        net.request("p", op(.putHash, "h", "x", client: 3, seq: 1), token: 2, now: now)
        #expect(net["p"].store.map["k"] == "v2")  // applied on the primary, not yet on the backup
        // The Get of "k" must not see "v2" before the backup has it: it is queued behind the Put.
        let held = net.request("p", op(.get, "k", client: 4, seq: 1), token: 3, now: now)
        #expect(!held.contains { if case .reply = $0 { true } else { false } })
        let heldHash = net.request("p", op(.get, "h", client: 5, seq: 1), token: 4, now: now)
        #expect(!heldHash.contains { if case .reply = $0 { true } else { false } })
        // Another key is read from committed state at once.
        #expect(net.request("p", op(.get, "other", client: 6, seq: 1), token: 5, now: now).first
            == .reply(5, KVReply(code: .noKey)))
        // If the primary died now, the promoted backup would not have "v2", and no reader saw it.
        #expect(net["b"].store.map["k"] == "v1")
        #expect(!net.replies.contains(.reply(3, KVReply(code: .ok, value: "v2"))))
        net.settle()
        #expect(net.replies.contains(.reply(3, KVReply(code: .ok, value: "v2"))))
        #expect(net["b"].store.map["k"] == "v2")
        // Acknowledged: now read locally.
        #expect(net.request("p", op(.get, "k", client: 4, seq: 2), token: 6, now: now).first
            == .reply(6, KVReply(code: .ok, value: "v2")))
    }

    @Test("A retried Get after a local answer is read again; the session's next Put is new")
    func duplicateTable() {
        var net = leasedPrimary()
        let now = Duration.milliseconds(10)
        #expect(net.request("p", op(.get, "k", client: 7, seq: 1), token: 1, now: now).first
            == .reply(1, KVReply(code: .ok, value: "v1")))
        net.request("p", op(.put, "k", "v2", client: 8, seq: 1), token: 2, now: now)
        net.settle()
        // The retry (same id) is a new read at a new point: it sees the later write.
        #expect(net.request("p", op(.get, "k", client: 7, seq: 1), token: 3, now: now).first
            == .reply(3, KVReply(code: .ok, value: "v2")))
        net.request("p", op(.put, "k", "v3", client: 7, seq: 2), token: 4, now: now)
        net.settle()
        #expect(net.replies.last == .reply(4, KVReply(code: .ok)))
        #expect(net["b"].store.map["k"] == "v3")
        #expect(net["b"].store.duplicates[7]?.seq == 2)
        // Both applied the same operations, the Gets answered on the lease included.
        #expect(net["b"].store.duplicates == net["p"].store.duplicates)
        #expect(net["b"].store.clock == net["p"].store.clock)
    }

    @Test("Gets answered on the lease evict the same sessions on both replicas: a retried first PutHash is not run on the primary alone")
    func leaseGetsEvictAlike() {
        // Room for 2 sessions (evicted down to 2 once there are 4 rows).
        var configuration = ReplicaConfiguration()
        configuration.maxSessions = 2
        var net = leasedPrimary(configuration: configuration)
        let now = Duration.milliseconds(10)
        // Client 1's first request, a PutHash, runs; its reply is lost and the client retries.
        net.request("p", op(.putHash, "h", "a", client: 1, seq: 1), token: 1, now: now)
        net.settle()
        // Meanwhile read-only clients come and go, answered on the lease.
        for client in UInt64(20)..<23 {
            #expect(net.request("p", op(.get, "k", client: client, seq: 1), token: ReplyToken(client), now: now).first
                == .reply(ReplyToken(client), KVReply(code: .ok, value: "v1")))
        }
        #expect(net["p"].store.duplicates[1] == nil, "evicted on the primary")
        // The retry: the Gets reach the backup ahead of it, so both replicas decide alike
        // (here: both execute it again, client 1's row being gone on both) and hold the same value.
        net.request("p", op(.putHash, "h", "a", client: 1, seq: 1), token: 2, now: now)
        net.settle()
        #expect(net["p"].store.map["h"] == net["b"].store.map["h"])
        #expect(net["p"].store.duplicates == net["b"].store.duplicates)
    }

    @Test("A paused primary that wakes after the view moved on does not answer from its state")
    func pausedPrimaryWakes() throws {
        let configuration = ViewServiceConfiguration(pingInterval: .milliseconds(100), deadPings: 5)
        var vs = ViewServiceStateMachine(configuration: configuration)
        var clock = FakeClock()
        var net = ReplicaNetwork(["p", "b"])
        // p and b ping until the view (p primary, b backup) is acknowledged.
        for _ in 0..<6 {
            for name in ["p", "b"] {
                let sent = clock.now
                net.onView(name, vs.answer(server: name, viewnum: net[name].pingViewnum, now: clock.now), pingSentAt: sent)
                net.settle()
            }
            clock.advance(by: .milliseconds(100))
            if let proposal = vs.onTick(now: clock.now) { _ = vs.onStored(proposal) }
        }
        #expect(vs.view.primary == "p" && vs.view.backup == "b" && vs.view.acknowledged)
        net.request("p", op(.put, "k", "old", seq: 1), token: 1, now: clock.now)
        net.settle()
        let lastPing = clock.now
        net.onView("p", vs.answer(server: "p", viewnum: net["p"].pingViewnum, now: clock.now), pingSentAt: lastPing)
        #expect(net["p"].holdsLease(at: clock.now))

        // p is paused (SIGSTOP): only b pings; the view service promotes b once p is dead.
        var promotedAt: Duration?
        for _ in 0..<200 where promotedAt == nil {
            clock.advance(by: .milliseconds(10))
            net.onView("b", vs.answer(server: "b", viewnum: net["b"].pingViewnum, now: clock.now), pingSentAt: clock.now)
            if let proposal = vs.onTick(now: clock.now) { _ = vs.onStored(proposal) }
            if vs.view.primary == "b" { promotedAt = clock.now }
        }
        let promoted = try #require(promotedAt)
        #expect(net["p"].leaseEnd! <= promoted)
        #expect(!net["p"].holdsLease(at: promoted))
        // The lease ended before the view service could name another primary (above).
        net.onView("b", vs.answer(server: "b", viewnum: net["b"].pingViewnum, now: clock.now), pingSentAt: clock.now)
        net.request("b", op(.put, "k", "new", client: 2, seq: 1), token: 2, now: clock.now)
        #expect(net.replies.last == .reply(2, KVReply(code: .ok)))

        // p wakes (SIGCONT) and reads the clock first: the lease is over, the Get goes to its
        // old backup, which refuses; p learns the view and answers WRONG_SERVER — never "old".
        clock.advance(by: .seconds(2))
        let woke = net.request("p", op(.get, "k", client: 3, seq: 1), token: 3, now: clock.now)
        #expect(!woke.contains { if case .reply = $0 { true } else { false } })
        net.deliver()
        net.onView("p", vs.answer(server: "p", viewnum: net["p"].pingViewnum, now: clock.now), pingSentAt: clock.now)
        #expect(net.replies.last == .reply(3, KVReply(code: .wrongServer)))
        #expect(!net.replies.contains(.reply(3, KVReply(code: .ok, value: "old"))))
    }

    @Test("The lease always ends before the view service may name another primary", arguments: [0, 1, 37, 99, 150, 480])
    func leaseEndsBeforePromotion(pingOffsetMs: Int) throws {
        // One ping answered at an arbitrary point, then silence: the promotion comes no earlier
        // than a dead interval after the ping reached the view service, the lease ends before.
        let configuration = ViewServiceConfiguration(pingInterval: .milliseconds(100), deadPings: 5)
        var vs = ViewServiceStateMachine(configuration: configuration, resuming: ViewRecord(view: view(4, "p", "b", acknowledged: true)), now: .zero)
        var p = ReplicaStateMachine(me: "p")
        _ = p.onView(view(3, "a", "p"))
        _ = p.onTransfer(TransferChunk(
            viewnum: 3, primary: "a", transferID: 1, chunkIndex: 0, last: true, nextIndex: 0, entries: [], duplicates: []))
        let sentAt = Duration.milliseconds(pingOffsetMs)
        let delivered = sentAt + .milliseconds(3)
        _ = p.onView(vs.answer(server: "p", viewnum: 4, now: delivered), pingSentAt: sentAt)
        #expect(p.role == .primary)
        let end = try #require(p.leaseEnd)
        var now = delivered
        var promotedAt: Duration?
        for _ in 0..<2000 where promotedAt == nil {
            now += .milliseconds(1)
            _ = vs.answer(server: "b", viewnum: 4, now: now)
            if let proposal = vs.onTick(now: now) { _ = vs.onStored(proposal) }
            if vs.view.primary == "b" { promotedAt = now }
        }
        let promoted = try #require(promotedAt)
        #expect(end < promoted)
        #expect(promoted - end >= configuration.deadAfter - length)
    }
}

@Suite("View service: a start from nothing stored names no primary for a dead interval (fake clock)")
struct FirstViewWaitTests {
    @Test("No primary before a dead interval since the start, then the next pinger")
    func waitsOneDeadInterval() {
        let configuration = ViewServiceConfiguration(pingInterval: .milliseconds(100), deadPings: 5)
        var clock = FakeClock(now: .seconds(3))
        var vs = ViewServiceStateMachine(configuration: configuration, resuming: nil, now: clock.now, waitBeforeFirstView: true)
        #expect(vs.firstViewNotBefore == .seconds(3) + configuration.deadAfter)
        while clock.now < .seconds(3) + configuration.deadAfter {
            #expect(vs.onPing(server: "a", viewnum: 0, now: clock.now).store == nil)
            #expect(vs.onTick(now: clock.now) == nil)
            #expect(vs.view.viewnum == 0)
            clock.advance(by: .milliseconds(50))
        }
        let (_, proposal) = vs.onPing(server: "a", viewnum: 0, now: clock.now)
        #expect(proposal?.view == view(1, "a"))
    }

    @Test("A resumed view is shown at once; without the wait a fresh machine names the first pinger")
    func resumedAndUnwaited() {
        let stored = ViewRecord(view: view(4, "p", "b", acknowledged: true))
        let resumed = ViewServiceStateMachine(resuming: stored, now: .zero, waitBeforeFirstView: true)
        #expect(resumed.firstViewNotBefore == nil && resumed.view == stored.view)
        var fresh = ViewServiceStateMachine(resuming: nil, now: .zero)
        #expect(fresh.onPing(server: "a", viewnum: 0, now: .zero).store?.view == view(1, "a"))
    }
}
