import PBKVWire
import Testing

@testable import PBKVCore
@testable import PBKVServer

/// Bugs found by chaos runs, pinned down on the state machine.
@Suite("Replica regressions")
struct ReplicaRegressionTests {
    /// A backup holding a complete transfer from `primary` in view `viewnum`.
    func syncedBackup(me: String, primary: String, viewnum: UInt64) -> ReplicaStateMachine {
        var backup = ReplicaStateMachine(me: me)
        _ = backup.onView(View(viewnum: viewnum, primary: primary, backup: me))
        let (reply, _) = backup.onTransfer(TransferChunk(
            viewnum: viewnum, primary: primary, transferID: 9, chunkIndex: 0, last: true, nextIndex: 0,
            entries: [Entry(key: "k", value: "v")], duplicates: []))
        #expect(reply.code == .ok)
        return backup
    }

    @Test("A promoted backup never pings 0 while it transfers to its new backup (chaos seed 1)")
    func promotedPrimaryDoesNotPingZero() {
        var b = syncedBackup(me: "b", primary: "a", viewnum: 3)
        #expect(b.pingViewnum == 3)
        let directives = b.onView(View(viewnum: 4, primary: "b", backup: "c", acknowledged: false))
        #expect(b.role == .primary)
        #expect(directives.contains { if case .transfer(to: "c", _, _) = $0 { true } else { false } })
        // Pinging 0 here would make the view service treat the new primary as restarted.
        #expect(b.pingViewnum == 3, "acknowledges the old view until the transfer completes")
    }

    @Test("A promoted backup with no new backup acknowledges the new view at once")
    func promotedPrimaryWithoutBackupAcks() {
        var b = syncedBackup(me: "b", primary: "a", viewnum: 3)
        _ = b.onView(View(viewnum: 4, primary: "b", backup: ""))
        #expect(b.role == .primary)
        #expect(b.pingViewnum == 4)
        let directives = b.onClientRequest(Operation(kind: .get, key: "k", id: RequestID(clientID: 1, seq: 1)), token: 1)
        #expect(directives == [.reply(1, KVReply(code: .ok, value: "v"))])
    }
}
