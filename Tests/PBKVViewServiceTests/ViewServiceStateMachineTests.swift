import PBKVTestSupport
import PBKVWire
import Testing

@testable import PBKVViewService

/// Drives a view service state machine with a fake clock.
struct ViewServiceHarness {
    let interval = Duration.milliseconds(100)
    var clock = FakeClock()
    var vs = ViewServiceStateMachine(configuration: .init(pingInterval: .milliseconds(100), deadPings: 5))

    /// Pings from `servers` (name → viewnum to send), once per interval, `count` times.
    mutating func rounds(_ count: Int, _ pings: (View) -> [(String, UInt64)]) {
        for _ in 0..<count {
            for (server, viewnum) in pings(vs.view) { _ = vs.onPing(server: server, viewnum: viewnum, now: clock.now) }
            clock.advance(by: interval)
            _ = vs.onTick(now: clock.now)
        }
    }

    @discardableResult
    mutating func ping(_ server: String, _ viewnum: UInt64) -> View {
        vs.onPing(server: server, viewnum: viewnum, now: clock.now).view
    }

    /// Lets a dead-pings' worth of intervals pass with only `alive` pinging (acknowledging the current view).
    mutating func letDie(keeping alive: [String]) {
        rounds(6) { view in alive.map { ($0, view.viewnum) } }
    }
}

/// The classic view service scenarios, on the pure state machine with a fake clock.
@Suite("View service rules (state machine, fake clock)")
struct ViewServiceStateMachineTests {

    @Test("No primary before any ping")
    func noPrimaryBeforePing() {
        var h = ViewServiceHarness()
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 0, primary: "", backup: "")))
        h.clock.advance(by: .seconds(2))
        #expect(h.vs.onTick(now: h.clock.now) == nil)
        #expect(h.vs.view.primary == "")
    }

    @Test("First primary")
    func firstPrimary() {
        var h = ViewServiceHarness()
        let view = h.ping("a", 0)
        #expect(view.sameAssignment(as: View(viewnum: 1, primary: "a", backup: "")))
    }

    @Test("First backup")
    func firstBackup() {
        var h = ViewServiceHarness()
        h.ping("a", 0)
        h.ping("a", 1)
        let view = h.ping("b", 0)
        #expect(view.sameAssignment(as: View(viewnum: 2, primary: "a", backup: "b")))
    }

    @Test("Backup takes over if primary fails")
    func backupTakesOver() {
        var h = ViewServiceHarness()
        h.ping("a", 0); h.ping("a", 1); h.ping("b", 0); h.ping("a", 2)
        h.letDie(keeping: ["b"])
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "b", backup: "")))
    }

    @Test("Restarted server becomes backup")
    func restartedBecomesBackup() {
        var h = ViewServiceHarness()
        h.ping("a", 0); h.ping("a", 1); h.ping("b", 0); h.ping("a", 2)
        h.letDie(keeping: ["b"])
        #expect(h.vs.view.primary == "b")
        h.ping("b", 3)
        let view = h.ping("a", 0)  // a comes back empty
        #expect(view.sameAssignment(as: View(viewnum: 4, primary: "b", backup: "a")))
    }

    @Test("Idle third server becomes backup if primary fails, in one view change")
    func idleThirdBecomesBackup() {
        var h = ViewServiceHarness()
        h.ping("a", 0); h.ping("a", 1); h.ping("b", 0); h.ping("a", 2)
        h.ping("c", 0)
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 2, primary: "a", backup: "b")))
        h.rounds(6) { _ in [("b", 2), ("c", 2)] }
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "b", backup: "c")))
    }

    @Test("Restarted primary (pings 0 while alive) is treated as dead")
    func restartedPrimaryIsDead() {
        var h = ViewServiceHarness()
        h.ping("a", 0); h.ping("a", 1); h.ping("b", 0); h.ping("a", 2); h.ping("b", 2)
        let view = h.ping("a", 0)
        #expect(view.sameAssignment(as: View(viewnum: 3, primary: "b", backup: "a")) || view.sameAssignment(as: View(viewnum: 3, primary: "b", backup: "")))
        #expect(h.vs.view.primary == "b")
    }

    @Test("Dead backup is removed from the view")
    func deadBackupRemoved() {
        var h = ViewServiceHarness()
        h.ping("a", 0); h.ping("a", 1); h.ping("b", 0); h.ping("a", 2)
        h.letDie(keeping: ["a"])
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "a", backup: "")))
    }

    @Test("View does not change until the primary acknowledges it; the backup's ack does not count")
    func waitsForPrimaryAck() {
        var h = ViewServiceHarness()
        h.ping("a", 0); h.ping("a", 1); h.ping("b", 0)
        #expect(h.vs.view.viewnum == 2)
        // a never acknowledges view 2; b does; a dies. b must not be promoted.
        h.rounds(10) { _ in [("b", 2)] }
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 2, primary: "a", backup: "b")))
        #expect(!h.vs.acknowledged)
        h.ping("a", 2)  // a comes back and acknowledges: now the view may move on (b stays)
        #expect(h.vs.acknowledged)
    }

    @Test("Uninitialized (idle) server cannot become primary")
    func idleNeverPrimary() {
        var h = ViewServiceHarness()
        h.ping("a", 0); h.ping("a", 1); h.ping("b", 0); h.ping("a", 2)
        h.ping("c", 0)
        // Both a and b die; c keeps pinging. c was never primary or backup.
        h.rounds(3) { _ in [("a", 2), ("c", 2)] }
        h.rounds(10) { _ in [("c", 2)] }
        #expect(h.vs.view.primary != "c")
        #expect(h.vs.view.primary == "a" || h.vs.view.primary == "b")
    }

    @Test("The first primary repeating its first ping (lost reply) keeps its role")
    func firstPrimaryRetry() {
        var h = ViewServiceHarness()
        h.ping("a", 0)
        let view = h.ping("a", 0)
        #expect(view.sameAssignment(as: View(viewnum: 1, primary: "a", backup: "")))
        h.ping("a", 1)
        #expect(h.vs.acknowledged)
    }

    @Test("Dead idle servers are forgotten")
    func deadIdleForgotten() {
        var h = ViewServiceHarness()
        h.ping("a", 0); h.ping("a", 1); h.ping("b", 0); h.ping("a", 2); h.ping("c", 0)
        #expect(h.vs.knownServers.contains("c"))
        h.rounds(7) { _ in [("a", 2), ("b", 2)] }
        #expect(!h.vs.knownServers.contains("c"))
    }
}

/// Random ping/tick sequences; invariants checked after every step.
@Suite("View service invariants (property test)")
struct ViewServicePropertyTests {
    @Test("Random pings and ticks never break the view rules", arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func randomSchedules(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var clock = FakeClock()
        var vs = ViewServiceStateMachine(configuration: .init(pingInterval: .milliseconds(100), deadPings: 5))
        let names = ["s1", "s2", "s3", "s4"]
        // What each server believes: last view it got (0 = fresh). Restarted servers start at 0.
        var believed: [String: UInt64] = [:]
        var everInView: Set<String> = []
        for _ in 0..<3000 {
            let before = vs.view
            let ackedBefore = vs.acknowledged
            var ackedNow = false
            let roll = rng.next() % 10
            if roll < 6 {
                let server = names[Int(rng.next() % UInt64(names.count))]
                // 1 in 20: the server restarts (pings 0); otherwise it acknowledges what it last saw.
                let viewnum = rng.next() % 20 == 0 ? 0 : (believed[server] ?? 0)
                ackedNow = server == before.primary && viewnum == before.viewnum
                let reply = vs.onPing(server: server, viewnum: viewnum, now: clock.now).view
                believed[server] = reply.viewnum
            } else {
                clock.advance(by: .milliseconds(Int64(rng.next() % 250)))
                _ = vs.onTick(now: clock.now)
            }
            let after = vs.view
            if after != before {
                #expect(after.viewnum == before.viewnum + 1, "view number grows by exactly one")
                if before.viewnum > 0 {
                    #expect(ackedBefore || ackedNow, "view \(before.viewnum) changed before its primary acknowledged it")
                    #expect(
                        after.primary == before.primary || after.primary == before.backup,
                        "new primary \(after.primary) was neither primary nor backup of \(before)")
                }
                if before.viewnum > 0 && after.primary != before.primary {
                    #expect(!before.backup.isEmpty && after.primary == before.backup, "only the backup is promoted")
                }
            }
            #expect(after.primary.isEmpty || after.primary != after.backup, "primary and backup differ")
            if after.viewnum > 1 { #expect(!after.primary.isEmpty, "a started view always has a primary") }
            if after.viewnum >= 1, before.viewnum >= 1, after.primary != before.primary {
                #expect(everInView.contains(after.primary), "an idle server became primary")
            }
            for name in [after.primary, after.backup] where !name.isEmpty { everInView.insert(name) }
        }
    }
}
