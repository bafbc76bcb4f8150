@testable import PBKVCore
import PBKVTestSupport
import PBKVWire
import Testing

import PBKVViewService

/// Drives a view service state machine with a fake clock, storing every proposal in a real
/// `ViewStore` before it counts (as the shell does), so the rules run on every store.
struct ViewServiceHarness {
    let interval = Duration.milliseconds(100)
    let configuration = ViewServiceConfiguration(pingInterval: .milliseconds(100), deadPings: 5)
    var clock = FakeClock()
    var vs: ViewServiceStateMachine
    let store: any ViewStore

    init(_ kind: ViewStoreKind) async throws {
        store = try await kind.makeStore()
        vs = ViewServiceStateMachine(configuration: configuration, resuming: try await store.load(), now: clock.now)
    }

    /// Stores a proposal and makes it visible, as the shell does before it answers.
    private mutating func settle(_ proposal: ViewRecord?) async throws {
        guard let proposal else { return }
        try await store.compareAndStore(proposal, expected: vs.storedRecord)
        _ = vs.onStored(proposal)
    }

    mutating func tick() async throws {
        try await settle(vs.onTick(now: clock.now))
    }

    /// Pings from `servers` (name → viewnum to send), once per interval, `count` times.
    mutating func rounds(_ count: Int, _ pings: (View) -> [(String, UInt64)]) async throws {
        for _ in 0..<count {
            for (server, viewnum) in pings(vs.view) { try await ping(server, viewnum) }
            clock.advance(by: interval)
            try await tick()
        }
    }

    /// One ping; returns the view the shell would answer with (after storing what it caused).
    @discardableResult
    mutating func ping(_ server: String, _ viewnum: UInt64) async throws -> View {
        try await settle(vs.onPing(server: server, viewnum: viewnum, now: clock.now).store)
        return vs.currentView
    }

    /// Lets a dead-pings' worth of intervals pass with only `alive` pinging (acknowledging the current view).
    mutating func letDie(keeping alive: [String]) async throws {
        try await rounds(6) { view in alive.map { ($0, view.viewnum) } }
    }

    /// The view service restarts: a new machine resumes from what the store holds.
    mutating func restartViewService() async throws {
        vs = ViewServiceStateMachine(configuration: configuration, resuming: try await store.load(), now: clock.now)
    }
}

/// The classic view service scenarios, on the pure state machine with a fake clock.
@Suite("View service rules (state machine, fake clock)", .sharedEtcd)
struct ViewServiceStateMachineTests {

    @Test("No primary before any ping", arguments: ViewStoreKind.allCases)
    func noPrimaryBeforePing(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 0, primary: "", backup: "")))
        h.clock.advance(by: .seconds(2))
        #expect(h.vs.onTick(now: h.clock.now) == nil)
        #expect(h.vs.view.primary == "")
    }

    @Test("First primary", arguments: ViewStoreKind.allCases)
    func firstPrimary(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        let view = try await h.ping("a", 0)
        #expect(view.sameAssignment(as: View(viewnum: 1, primary: "a", backup: "")))
    }

    @Test("First backup", arguments: ViewStoreKind.allCases)
    func firstBackup(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0)
        try await h.ping("a", 1)
        let view = try await h.ping("b", 0)
        #expect(view.sameAssignment(as: View(viewnum: 2, primary: "a", backup: "b")))
    }

    @Test("Backup takes over if primary fails", arguments: ViewStoreKind.allCases)
    func backupTakesOver(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0); try await h.ping("a", 2)
        try await h.letDie(keeping: ["b"])
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "b", backup: "")))
    }

    @Test("Restarted server becomes backup", arguments: ViewStoreKind.allCases)
    func restartedBecomesBackup(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0); try await h.ping("a", 2)
        try await h.letDie(keeping: ["b"])
        #expect(h.vs.view.primary == "b")
        try await h.ping("b", 3)
        let view = try await h.ping("a", 0)  // a comes back empty
        #expect(view.sameAssignment(as: View(viewnum: 4, primary: "b", backup: "a")))
    }

    @Test("Idle third server becomes backup if primary fails, in one view change", arguments: ViewStoreKind.allCases)
    func idleThirdBecomesBackup(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0); try await h.ping("a", 2)
        try await h.ping("c", 0)
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 2, primary: "a", backup: "b")))
        try await h.rounds(6) { _ in [("b", 2), ("c", 2)] }
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "b", backup: "c")))
    }

    @Test("Restarted primary (pings 0 while alive) is treated as dead", arguments: ViewStoreKind.allCases)
    func restartedPrimaryIsDead(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0); try await h.ping("a", 2); try await h.ping("b", 2)
        let view = try await h.ping("a", 0)
        // a's restart deposes it at once; it is not taken as b's backup in the same change (it
        // was still marked restarted), only at its next ping, in view 4.
        #expect(view.sameAssignment(as: View(viewnum: 3, primary: "b", backup: "")))
        try await h.ping("b", 3)
        #expect(try await h.ping("a", 0).sameAssignment(as: View(viewnum: 4, primary: "b", backup: "a")))
    }

    @Test("Dead backup is removed from the view", arguments: ViewStoreKind.allCases)
    func deadBackupRemoved(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0); try await h.ping("a", 2)
        try await h.letDie(keeping: ["a"])
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "a", backup: "")))
    }

    @Test("View does not change until the primary acknowledges it; the backup's ack does not count", arguments: ViewStoreKind.allCases)
    func waitsForPrimaryAck(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0)
        #expect(h.vs.view.viewnum == 2)
        // a never acknowledges view 2; b does; a dies. b must not be promoted.
        try await h.rounds(10) { _ in [("b", 2)] }
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 2, primary: "a", backup: "b")))
        #expect(!h.vs.acknowledged)
        try await h.ping("a", 2)  // a comes back and acknowledges: now the view may move on (b stays)
        #expect(h.vs.acknowledged)
    }

    @Test("A backup that dies before its primary acknowledged the view is replaced; the primary stays", arguments: ViewStoreKind.allCases)
    func unacknowledgedBackupReplaced(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0)
        try await h.ping("c", 0)
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 2, primary: "a", backup: "b")))
        #expect(!h.vs.acknowledged)
        // b dies during its transfer: a (alive, still filling b) never acknowledges view 2.
        try await h.rounds(10) { _ in [("a", 1), ("c", 0)] }
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "a", backup: "c")))
        #expect(!h.vs.acknowledged)
        try await h.ping("a", 3)
        #expect(h.vs.acknowledged)
    }

    @Test("With no idle server, a dead unacknowledged backup leaves the primary alone in the view", arguments: ViewStoreKind.allCases)
    func unacknowledgedBackupDropped(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0)
        try await h.rounds(10) { _ in [("a", 1)] }
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "a", backup: "")))
    }

    @Test("Uninitialized (idle) server cannot become primary", arguments: ViewStoreKind.allCases)
    func idleNeverPrimary(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0); try await h.ping("a", 2)
        try await h.ping("c", 0)
        // Both a and b die; c keeps pinging. c was never primary or backup.
        try await h.rounds(3) { _ in [("a", 2), ("c", 2)] }
        try await h.rounds(10) { _ in [("c", 2)] }
        // b died first: a (alive then) got c as backup in view 3 and never acknowledged it, so
        // the view stays there: c, never initialized, is not promoted.
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "a", backup: "c")))
        #expect(!h.vs.acknowledged)
    }

    @Test("The first primary repeating its first ping (lost reply) keeps its role", arguments: ViewStoreKind.allCases)
    func firstPrimaryRetry(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0)
        let view = try await h.ping("a", 0)
        #expect(view.sameAssignment(as: View(viewnum: 1, primary: "a", backup: "")))
        try await h.ping("a", 1)
        #expect(h.vs.acknowledged)
    }

    @Test("Dead idle servers are forgotten", arguments: ViewStoreKind.allCases)
    func deadIdleForgotten(store: ViewStoreKind) async throws {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0); try await h.ping("a", 2); try await h.ping("c", 0)
        #expect(h.vs.knownServers.contains("c"))
        try await h.rounds(7) { _ in [("a", 2), ("b", 2)] }
        #expect(!h.vs.knownServers.contains("c"))
    }
}

/// Random ping/tick sequences; invariants checked after every step.
/// The view service restarts (or a new leader takes over) and resumes from its store.
@Suite("View service resumes from its store (state machine, fake clock)", .sharedEtcd)
struct ViewServiceResumeTests {
    /// a primary, b backup, view 2 acknowledged; c idle.
    private func twoServerView(_ store: ViewStoreKind) async throws -> ViewServiceHarness {
        var h = try await ViewServiceHarness(store)
        try await h.ping("a", 0); try await h.ping("a", 1); try await h.ping("b", 0); try await h.ping("a", 2)
        try await h.ping("c", 0)
        #expect(h.vs.currentView == View(viewnum: 2, primary: "a", backup: "b", acknowledged: true))
        return h
    }

    @Test("A restarted view service shows the stored view: same number, servers and acknowledgement", arguments: ViewStoreKind.allCases)
    func resumesStoredView(store: ViewStoreKind) async throws {
        var h = try await twoServerView(store)
        try await h.restartViewService()
        #expect(h.vs.currentView == View(viewnum: 2, primary: "a", backup: "b", acknowledged: true))
    }

    @Test("After a restart an idle, empty server pinging first does not become primary", arguments: ViewStoreKind.allCases)
    func idleFirstAfterRestart(store: ViewStoreKind) async throws {
        var h = try await twoServerView(store)
        for _ in 0..<6 {
            try await h.restartViewService()
            h.clock.advance(by: .milliseconds(30))
            let view = try await h.ping("c", 0)
            #expect(view.sameAssignment(as: View(viewnum: 2, primary: "a", backup: "b")))
            try await h.ping("b", 2)
            try await h.ping("a", 2)
        }
    }

    @Test("After a restart the view's servers get a full dead interval before any is declared dead", arguments: ViewStoreKind.allCases)
    func fullDeadIntervalAfterRestart(store: ViewStoreKind) async throws {
        var h = try await twoServerView(store)
        // a and b go silent long before the restart: the old silence does not count.
        h.clock.advance(by: .seconds(10))
        try await h.restartViewService()
        try await h.rounds(4) { _ in [("c", 2)] }
        #expect(h.vs.view.viewnum == 2)
        // a alone keeps pinging: after a whole dead interval b is replaced by c.
        try await h.rounds(3) { _ in [("a", 2), ("c", 2)] }
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "a", backup: "c")))
    }

    @Test("Views made after a restart are numbered above every view shown before", arguments: ViewStoreKind.allCases)
    func numbersKeepGrowing(store: ViewStoreKind) async throws {
        var h = try await twoServerView(store)
        try await h.letDie(keeping: ["b", "c"])  // view 3 {b, c}
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 3, primary: "b", backup: "c")))
        try await h.restartViewService()
        try await h.ping("b", 3)
        try await h.letDie(keeping: ["b", "a"])  // c dies: a (idle again) fills the backup slot
        #expect(h.vs.view.sameAssignment(as: View(viewnum: 4, primary: "b", backup: "a")))
    }

    @Test("A view is shown only once stored; a failed store shows nothing and is proposed again")
    func notVisibleBeforeStored() {
        var vs = ViewServiceStateMachine()
        let first = vs.onPing(server: "a", viewnum: 0, now: .zero)
        #expect(first.view == .initial)
        #expect(first.store == ViewRecord(view: View(viewnum: 1, primary: "a", backup: "")))
        // While the store is in flight, pings see the stored view and propose nothing else.
        #expect(vs.onPing(server: "b", viewnum: 0, now: .milliseconds(1)) == (View.initial, nil))
        vs.onStoreFailed()
        #expect(vs.currentView == .initial)
        let again = vs.onPing(server: "a", viewnum: 0, now: .milliseconds(2))
        #expect(again.store?.view.primary == "a")
        #expect(vs.onStored(again.store!) == .init(from: .initial, to: View(viewnum: 1, primary: "a", backup: "")))
        // The acknowledgement is stored before it is shown too.
        let ack = vs.onPing(server: "a", viewnum: 1, now: .milliseconds(3))
        #expect(!ack.view.acknowledged)
        #expect(ack.store?.view.acknowledged == true)
        #expect(vs.onStored(ack.store!) == nil)
        #expect(vs.acknowledged)
    }
}

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
        var shown: [UInt64: View] = [:]
        /// Stores a proposal, or (1 in 8) fails to: a failed store must change nothing visible.
        func settle(_ proposal: ViewRecord?) {
            guard let proposal else { return }
            if rng.next() % 8 == 0 {
                let visible = vs.currentView
                vs.onStoreFailed()
                #expect(vs.currentView == visible, "a record that was not stored became visible")
            } else {
                _ = vs.onStored(proposal)
            }
        }
        for _ in 0..<3000 {
            let before = vs.view
            let ackedBefore = vs.acknowledged
            let roll = rng.next() % 10
            if roll < 6 {
                let server = names[Int(rng.next() % UInt64(names.count))]
                // 1 in 20: the server restarts (pings 0); otherwise it acknowledges what it last saw.
                let viewnum = rng.next() % 20 == 0 ? 0 : (believed[server] ?? 0)
                let proposal = vs.onPing(server: server, viewnum: viewnum, now: clock.now).store
                settle(proposal)
                believed[server] = vs.currentView.viewnum
            } else if roll < 9 {
                clock.advance(by: .milliseconds(Int64(rng.next() % 250)))
                settle(vs.onTick(now: clock.now))
            } else {
                // The view service restarts from what it stored.
                vs = ViewServiceStateMachine(configuration: vs.configuration, resuming: vs.record, now: clock.now)
            }
            let after = vs.view
            if !after.sameAssignment(as: before) {
                #expect(after.viewnum == before.viewnum + 1, "view number grows by exactly one")
                if before.viewnum > 0 {
                    #expect(
                        ackedBefore || (after.primary == before.primary && !before.backup.isEmpty),
                        "view \(before.viewnum) changed before its primary acknowledged it, other than to replace its backup")
                    #expect(
                        after.primary == before.primary || after.primary == before.backup,
                        "new primary \(after.primary) was neither primary nor backup of \(before)")
                }
                if before.viewnum > 0 && after.primary != before.primary {
                    #expect(!before.backup.isEmpty && after.primary == before.backup, "only the backup is promoted")
                }
            }
            #expect(after.primary.isEmpty || after.primary != after.backup, "primary and backup differ")
            if let earlier = shown[after.viewnum] {
                #expect(earlier.sameAssignment(as: after), "two different views shared number \(after.viewnum)")
            }
            shown[after.viewnum] = after
            if after.viewnum > 1 { #expect(!after.primary.isEmpty, "a started view always has a primary") }
            if after.viewnum >= 1, before.viewnum >= 1, after.primary != before.primary {
                #expect(everInView.contains(after.primary), "an idle server became primary")
            }
            for name in [after.primary, after.backup] where !name.isEmpty { everInView.insert(name) }
        }
    }
}
