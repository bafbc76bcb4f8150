import PBKVTestSupport
import PBKVViewService
import PBKVWire
import Testing

@testable import PBKVCore
@testable import PBKVServer

// MARK: - helpers

private func view(_ viewnum: UInt64, _ primary: String, _ backup: String = "", acknowledged: Bool = false) -> View {
    View(viewnum: viewnum, primary: primary, backup: backup, acknowledged: acknowledged)
}

private func put(_ key: String, _ value: String, client: UInt64 = 1, seq: UInt64) -> Operation {
    Operation(kind: .put, key: key, value: value, id: RequestID(clientID: client, seq: seq))
}

private func get(_ key: String, client: UInt64 = 1, seq: UInt64) -> Operation {
    Operation(kind: .get, key: key, id: RequestID(clientID: client, seq: seq))
}

private func putHash(_ key: String, _ value: String, client: UInt64 = 1, seq: UInt64) -> Operation {
    Operation(kind: .putHash, key: key, value: value, id: RequestID(clientID: client, seq: seq))
}

private let ok = KVReply(code: .ok)
private let wrongServer = KVReply(code: .wrongServer)

private func ok(_ value: String) -> KVReply { KVReply(code: .ok, value: value) }

/// A backup of view 2 (primary "p") that already holds a complete, empty transfer.
private func readyBackup(_ name: String = "b", configuration: ReplicaConfiguration = .init()) -> ReplicaStateMachine {
    var backup = ReplicaStateMachine(me: name, configuration: configuration)
    _ = backup.onView(view(2, "p", name))
    let chunk = TransferChunk(
        viewnum: 2, primary: "p", transferID: 7, chunkIndex: 0, last: true, nextIndex: 0, entries: [], duplicates: [])
    _ = backup.onTransfer(chunk)
    return backup
}

/// An in-memory network between replica state machines. Forwards and transfers the machines
/// ask for wait in `inFlight` until the test delivers (or fails) them; the target's answer goes
/// straight back to the sender, whose resulting directives are absorbed and returned.
struct ReplicaNetwork {
    /// A forward or transfer sent by `from`, not yet delivered.
    struct Call {
        var from: String
        var directive: ReplicaDirective
    }

    var nodes: [String: ReplicaStateMachine] = [:]
    private(set) var inFlight: [Call] = []
    /// Every `.reply` given to clients, in order.
    private(set) var replies: [ReplicaDirective] = []

    init(_ names: [String], configuration: ReplicaConfiguration = .init()) {
        for name in names { nodes[name] = ReplicaStateMachine(me: name, configuration: configuration) }
    }

    subscript(name: String) -> ReplicaStateMachine { nodes[name]! }

    /// `name` learns `view` (the answer to a ping sent at `pingSentAt`, if given).
    @discardableResult
    mutating func onView(_ name: String, _ view: View, pingSentAt: Duration? = nil) -> [ReplicaDirective] {
        absorb(name, nodes[name]!.onView(view, pingSentAt: pingSentAt))
    }

    /// A client sends `op` to `name`, handled at `now` (nil: time unknown, no read lease).
    @discardableResult
    mutating func request(_ name: String, _ op: Operation, token: ReplyToken, now: Duration? = nil) -> [ReplicaDirective] {
        absorb(name, nodes[name]!.onClientRequest(op, token: token, now: now))
    }

    /// Delivers the oldest call and feeds the answer back to its sender.
    @discardableResult
    mutating func deliver() -> [ReplicaDirective] {
        let call = inFlight.removeFirst()
        switch call.directive {
        case .forward(let target, let args, _):
            guard nodes[target] != nil else { return outcome(of: call, failed: true) }
            let (reply, _) = nodes[target]!.onForward(args)
            return absorb(
                call.from,
                nodes[call.from]!.onForwardOutcome(to: target, firstIndex: args.firstIndex, outcome: .replied(reply)))
        case .transfer(let target, let chunk, _):
            guard nodes[target] != nil else { return outcome(of: call, failed: true) }
            let (reply, _) = nodes[target]!.onTransfer(chunk)
            return absorb(
                call.from,
                nodes[call.from]!.onTransferOutcome(
                    to: target, transferID: chunk.transferID, chunkIndex: chunk.chunkIndex, outcome: .replied(reply)))
        default:
            preconditionFailure("only forwards and transfers travel")
        }
    }

    /// The oldest call gets no answer (timeout, lost connection): its sender hears `.failed`.
    @discardableResult
    mutating func fail() -> [ReplicaDirective] {
        outcome(of: inFlight.removeFirst(), failed: true)
    }

    /// Delivers calls until none is left.
    mutating func settle() {
        var steps = 0
        while !inFlight.isEmpty {
            deliver()
            steps += 1
            precondition(steps < 10_000, "the replicas never settle")
        }
    }

    private mutating func outcome(of call: Call, failed: Bool) -> [ReplicaDirective] {
        switch call.directive {
        case .forward(let target, let args, _):
            return absorb(call.from, nodes[call.from]!.onForwardOutcome(to: target, firstIndex: args.firstIndex, outcome: .failed))
        case .transfer(let target, let chunk, _):
            return absorb(
                call.from,
                nodes[call.from]!.onTransferOutcome(
                    to: target, transferID: chunk.transferID, chunkIndex: chunk.chunkIndex, outcome: .failed))
        default:
            preconditionFailure("only forwards and transfers travel")
        }
    }

    private mutating func absorb(_ from: String, _ directives: [ReplicaDirective]) -> [ReplicaDirective] {
        for directive in directives {
            switch directive {
            case .reply: replies.append(directive)
            case .forward, .transfer: inFlight.append(Call(from: from, directive: directive))
            case .pingNow, .roleChanged, .transferCompleted: break
            }
        }
        return directives
    }

    /// "p" primary of view 2 with backup "b", the (empty) state transferred and acknowledged.
    static func primaryWithBackup(configuration: ReplicaConfiguration = .init(), others: [String] = []) -> ReplicaNetwork {
        var net = ReplicaNetwork(["p", "b"] + others, configuration: configuration)
        net.onView("p", view(1, "p"))
        net.onView("p", view(1, "p", acknowledged: true))
        net.onView("p", view(2, "p", "b"))
        net.onView("b", view(2, "p", "b"))
        net.settle()
        precondition(net["p"].pingViewnum == 2 && net["b"].hasState)
        return net
    }
}

// MARK: - role from view

@Suite("Replica rules: role from the view")
struct ReplicaRoleTests {
    @Test("A fresh server named primary of view 1 serves once the view service confirms its acknowledgement")
    func firstPrimaryServes() {
        var a = ReplicaStateMachine(me: "a")
        let v1 = view(1, "a")
        #expect(a.onView(v1) == [.roleChanged(from: .idle, to: .primary, view: v1)])
        #expect(a.role == .primary)
        #expect(a.hasState)
        #expect(a.pingViewnum == 1)
        #expect(a.onClientRequest(put("k", "v", seq: 1), token: 1) == [.reply(1, wrongServer)])
        #expect(a.onView(view(1, "a", acknowledged: true)) == [])
        // The refused request was not executed: its retry (same id) is.
        #expect(a.onClientRequest(put("k", "v", seq: 1), token: 2) == [.reply(2, ok)])
    }

    @Test("A restarted server named primary of an acknowledged view has no state: WRONG_SERVER, pings 0")
    func restartedPrimaryWithoutState() {
        var a = ReplicaStateMachine(me: "a")
        let v1 = view(1, "a", acknowledged: true)
        #expect(a.onView(v1) == [.roleChanged(from: .idle, to: .primaryWithoutState, view: v1)])
        #expect(!a.hasState)
        #expect(a.pingViewnum == 0)
        #expect(a.onClientRequest(put("k", "v", seq: 1), token: 1) == [.reply(1, wrongServer)])
        #expect(a.onClientRequest(get("k", seq: 2), token: 2) == [.reply(2, wrongServer)])
        #expect(a.store == KVStore())

        // Named primary of a later view with a backup: it has nothing legitimate to transfer.
        var c = ReplicaStateMachine(me: "c")
        let v3 = view(3, "c", "d")
        #expect(c.onView(v3) == [.roleChanged(from: .idle, to: .primaryWithoutState, view: v3)])
        #expect(c.pingViewnum == 0)
    }

    @Test("A first primary that restarts before acknowledging view 1 does not serve an empty state")
    func restartedFirstPrimaryLosesNothing() {
        var vs = ViewServiceStateMachine(configuration: .init(pingInterval: .milliseconds(100), deadPings: 5))
        var a = ReplicaStateMachine(me: "a")
        _ = a.onView(vs.answer(server: "a", viewnum: 0, now: .zero))
        // View 1 is not served before the view service confirms the acknowledgement...
        let first = a.onClientRequest(put("k", "v", seq: 1), token: 1)
        #expect(first == [.reply(1, wrongServer)])
        // ...so a crash now (before the acknowledging ping) loses nothing acknowledged.
        var restarted = ReplicaStateMachine(me: "a")
        _ = restarted.onView(vs.answer(server: "a", viewnum: 0, now: .milliseconds(50)))
        let answer = restarted.onClientRequest(get("k", client: 2, seq: 1), token: 2)
        #expect(answer == [.reply(2, wrongServer)])
        // Once the acknowledgement is confirmed, it serves.
        _ = restarted.onView(vs.answer(server: "a", viewnum: 1, now: .milliseconds(100)))
        #expect(restarted.onClientRequest(put("k", "v", client: 3, seq: 1), token: 3) == [.reply(3, ok)])
    }

    @Test("Backup and idle servers answer clients WRONG_SERVER")
    func backupAndIdleRefuseClients() {
        let v2 = view(2, "p", "b")
        var b = ReplicaStateMachine(me: "b")
        var c = ReplicaStateMachine(me: "c")
        #expect(b.onView(v2) == [.roleChanged(from: .idle, to: .backup, view: v2)])
        #expect(c.onView(v2) == [])
        #expect(c.role == .idle)
        #expect(b.onClientRequest(put("k", "v", seq: 1), token: 1) == [.reply(1, wrongServer)])
        #expect(b.onClientRequest(get("k", seq: 2), token: 2) == [.reply(2, wrongServer)])
        #expect(c.onClientRequest(putHash("k", "v", seq: 3), token: 3) == [.reply(3, wrongServer)])
        #expect(b.pingViewnum == 2)
        #expect(c.pingViewnum == 2)
        #expect(b.store == KVStore() && c.store == KVStore())
    }
}

// MARK: - primary alone

@Suite("Replica rules: primary without a backup")
struct ReplicaPrimaryAloneTests {
    @Test("Primary with no backup answers Put, Get and PutHash at once")
    func answersAtOnce() {
        var p = ReplicaStateMachine(me: "p")
        _ = p.onView(view(1, "p"))
        _ = p.onView(view(1, "p", acknowledged: true))
        #expect(p.onClientRequest(put("k", "v", seq: 1), token: 1) == [.reply(1, ok)])
        #expect(p.onClientRequest(get("k", seq: 2), token: 2) == [.reply(2, ok("v"))])
        #expect(p.onClientRequest(putHash("k", "x", seq: 3), token: 3) == [.reply(3, ok("v"))])
        #expect(p.store.map["k"] == PutHash.newValue(previous: "v", value: "x"))
        #expect(p.onClientRequest(putHash("fresh", "x", seq: 4), token: 4) == [.reply(4, ok(""))])
        #expect(p.store.map["fresh"] == PutHash.newValue(previous: "", value: "x"))
        #expect(p.onClientRequest(get("k", seq: 5), token: 5) == [.reply(5, ok(PutHash.newValue(previous: "v", value: "x")))])
        #expect(p.pendingCount == 0)
    }

    @Test("Get of an absent key is NO_KEY, unlike an empty value")
    func absentVersusEmpty() {
        var p = ReplicaStateMachine(me: "p")
        _ = p.onView(view(1, "p"))
        _ = p.onView(view(1, "p", acknowledged: true))
        #expect(p.onClientRequest(get("missing", seq: 1), token: 1) == [.reply(1, KVReply(code: .noKey))])
        #expect(p.onClientRequest(put("empty", "", seq: 2), token: 2) == [.reply(2, ok)])
        #expect(p.onClientRequest(get("empty", seq: 3), token: 3) == [.reply(3, ok(""))])
        #expect(KVReply(code: .noKey) != ok(""))
    }
}

// MARK: - primary with a backup

@Suite("Replica rules: forwarding to the backup")
struct ReplicaForwardingTests {
    @Test("An operation is answered only once the backup acknowledged it; in order; Gets are forwarded too")
    func repliesAfterBackupAck() {
        var net = ReplicaNetwork.primaryWithBackup()
        let first = put("k", "v", client: 1, seq: 1)
        let read = get("k", client: 2, seq: 1)
        let hash = putHash("k", "x", client: 3, seq: 1)
        #expect(
            net.request("p", first, token: 1)
                == [.forward(to: "b", ForwardArgs(viewnum: 2, primary: "p", firstIndex: 0, ops: [first]), delay: .zero)])
        // One batch in flight: the next operations wait, unanswered.
        #expect(net.request("p", read, token: 2) == [])
        #expect(net.request("p", hash, token: 3) == [])
        #expect(net.replies.isEmpty)
        #expect(net["p"].pendingCount == 3)

        #expect(
            net.deliver()
                == [
                    .reply(1, ok),
                    .forward(to: "b", ForwardArgs(viewnum: 2, primary: "p", firstIndex: 1, ops: [read, hash]), delay: .zero),
                ])
        #expect(net.deliver() == [.reply(2, ok("v")), .reply(3, ok("v"))])
        #expect(net.replies == [.reply(1, ok), .reply(2, ok("v")), .reply(3, ok("v"))])
        #expect(net.inFlight.isEmpty)
        #expect(net["p"].pendingCount == 0)
        // The backup applied the Get too: its duplicate table has client 2's row (a Get's row
        // keeps no value), stamped with the second operation of the stream.
        #expect(net["b"].store.duplicates[2] == KVStore.DuplicateRecord(seq: 1, lastUsed: 2, reply: nil))
        #expect(net["b"].store == net["p"].store)
    }

    @Test("A new backup gets the whole state in chunks first; the primary acknowledges the view after the last")
    func chunkedTransfer() {
        var configuration = ReplicaConfiguration()
        configuration.maxChunkEntries = 3
        configuration.maxChunksInFlight = 2
        var net = ReplicaNetwork(["p", "b"], configuration: configuration)
        net.onView("p", view(1, "p"))
        net.onView("p", view(1, "p", acknowledged: true))
        // 10 keys written by 4 clients: 10 map entries and 4 duplicate rows.
        for i in 0..<10 {
            net.request("p", put("key\(i)", "value\(i)", client: UInt64(i % 4 + 1), seq: UInt64(i / 4 + 1)), token: ReplyToken(i))
        }
        let snapshot = net["p"].store
        #expect(snapshot.map.count == 10 && snapshot.duplicates.count == 4)

        let v2 = view(2, "p", "b")
        let started = net.onView("p", v2)
        guard started.count == 1, case .transfer(to: "b", let chunk0, delay: .zero) = started[0] else {
            Issue.record("expected one transfer, got \(started)")
            return
        }
        #expect(chunk0.viewnum == 2 && chunk0.primary == "p" && chunk0.chunkIndex == 0 && chunk0.nextIndex == 0)
        #expect(net["p"].pingViewnum == 1)
        #expect(net["p"].transferProgress == TransferProgress(peer: "b", entriesDone: 3, entriesTotal: 10, chunks: 1))
        net.onView("b", v2)
        #expect(net["b"].transferProgress == nil)  // nothing received yet

        // An operation arriving during the transfer waits; nothing is forwarded yet.
        let late = put("late", "1", client: 9, seq: 1)
        #expect(net.request("p", late, token: 100) == [])

        // One chunk until the backup accepted one (it may not know the view yet); then two ahead:
        // each acknowledgement lets one more go until the last is out.
        var chunks = [chunk0]
        for expectedNew in [2, 1, 1, 0] {
            let next = net.deliver()
            #expect(net["p"].pingViewnum == 1, "acknowledged before the transfer completed")
            var sent: [TransferChunk] = []
            for directive in next {
                guard case .transfer(to: "b", let chunk, delay: .zero) = directive else {
                    Issue.record("expected only chunks, got \(next)")
                    return
                }
                sent.append(chunk)
            }
            #expect(sent.count == expectedNew, "\(next)")
            chunks += sent
            // Progress as each side sees it: entries produced by the primary, received by the backup.
            let produced = chunks.reduce(0) { $0 + $1.entries.count }
            #expect(net["p"].transferProgress == TransferProgress(
                peer: "b", entriesDone: UInt64(produced), entriesTotal: 10, chunks: UInt32(chunks.count)))
            #expect(net["b"].transferProgress?.peer == "p")
            #expect(net["b"].transferProgress?.entriesDone == UInt64(net["b"].store.map.count))
        }
        #expect(chunks.map(\.chunkIndex) == [0, 1, 2, 3, 4])
        #expect(chunks.allSatisfy { $0.transferID == chunk0.transferID })
        #expect(chunks.map(\.last) == [false, false, false, false, true])
        #expect(chunks.map { $0.entries.count + $0.duplicates.count } == [3, 3, 3, 3, 2])

        // The last chunk acknowledged: the view is made good, and the waiting operation streams.
        #expect(
            net.deliver()
                == [
                    .transferCompleted(to: "b", entries: 10, chunks: 5),
                    .pingNow,
                    .forward(to: "b", ForwardArgs(viewnum: 2, primary: "p", firstIndex: 0, ops: [late]), delay: .zero),
                ])
        #expect(net["p"].pingViewnum == 2)
        #expect(net["p"].transferProgress == nil && net["b"].transferProgress == nil)
        #expect(net["b"].store == snapshot, "the transfer carried exactly the snapshot")
        #expect(net.deliver() == [.reply(100, ok)])
        #expect(net["b"].store == net["p"].store)
    }

    @Test("A chunk lost after the backup accepted the first starts a fresh transfer; stale answers are ignored")
    func lostChunkRestartsTransfer() {
        var configuration = ReplicaConfiguration()
        configuration.maxChunkEntries = 2
        configuration.maxChunksInFlight = 2
        var net = ReplicaNetwork(["p", "b"], configuration: configuration)
        net.onView("p", view(1, "p"))
        net.onView("p", view(1, "p", acknowledged: true))
        for i in 0..<7 { net.request("p", put("key\(i)", "v\(i)", client: 1, seq: UInt64(i + 1)), token: ReplyToken(i)) }
        let v2 = view(2, "p", "b")
        net.onView("b", v2)
        net.onView("p", v2)
        #expect(net.deliver().count == 2, "chunk 0 accepted: chunks 1 and 2 go ahead")
        // Chunk 1 gets no answer: the primary starts over with a new snapshot, after a pause.
        let restarted = net.fail()
        guard restarted.count == 1, case .transfer(to: "b", let fresh, let delay) = restarted[0] else {
            Issue.record("expected a fresh transfer, got \(restarted)")
            return
        }
        #expect(fresh.chunkIndex == 0 && delay == configuration.retryDelay)
        // Chunk 2 of the abandoned transfer reaches the backup out of order; its answer is ignored.
        #expect(net.deliver() == [])
        net.settle()
        #expect(net["p"].pingViewnum == 2)
        #expect(net["b"].store == net["p"].store)
        #expect(net["b"].store.map.count == 7)
    }

    @Test("A backup that lost its state (NOT_READY) gets a fresh transfer; the waiting operation is answered after it")
    func notReadyRestartsTransfer() {
        var net = ReplicaNetwork.primaryWithBackup()
        net.request("p", put("a", "1", seq: 1), token: 1)
        net.settle()
        // b restarts: a fresh machine that learns the same view.
        net.nodes["b"] = ReplicaStateMachine(me: "b")
        net.onView("b", view(2, "p", "b"))
        let op = put("c", "3", seq: 2)
        net.request("p", op, token: 2)
        let restarted = net.deliver()
        guard restarted.count == 1, case .transfer(to: "b", let chunk, delay: .zero) = restarted[0] else {
            Issue.record("expected a fresh transfer, got \(restarted)")
            return
        }
        #expect(chunk.chunkIndex == 0 && chunk.last && chunk.nextIndex == 2)
        #expect(net.replies == [.reply(1, ok)])
        // The operation was applied before the snapshot: the transfer completes it.
        #expect(net.deliver() == [.transferCompleted(to: "b", entries: 2, chunks: 1), .pingNow, .reply(2, ok)])
        #expect(net["b"].store == net["p"].store)
    }
}

// MARK: - backup accepting forwards and transfers

@Suite("Replica rules: what the backup accepts")
struct ReplicaBackupAcceptanceTests {
    @Test("The backup refuses forwards and transfers from a server that is not its primary")
    func refusesStrangers() {
        var b = readyBackup()
        let op = put("k", "v", seq: 1)
        #expect(b.onForward(ForwardArgs(viewnum: 2, primary: "x", firstIndex: 0, ops: [op])) == (ForwardReply(code: .wrongServer), []))
        #expect(b.onForward(ForwardArgs(viewnum: 1, primary: "p", firstIndex: 0, ops: [op])) == (ForwardReply(code: .wrongServer), []))
        // A sender ahead of us: we should look at the view.
        #expect(b.onForward(ForwardArgs(viewnum: 3, primary: "p", firstIndex: 0, ops: [op])) == (ForwardReply(code: .wrongServer), [.pingNow]))
        let strangerChunk = TransferChunk(
            viewnum: 2, primary: "x", transferID: 9, chunkIndex: 0, last: true, nextIndex: 0,
            entries: [Entry(key: "k", value: "evil")], duplicates: [])
        #expect(b.onTransfer(strangerChunk) == (TransferReply(code: .wrongServer), []))
        #expect(b.store == KVStore())

        // Idle and primary servers accept nothing either.
        var c = ReplicaStateMachine(me: "c")
        _ = c.onView(view(2, "p", "b"))
        #expect(c.onForward(ForwardArgs(viewnum: 2, primary: "p", firstIndex: 0, ops: [op])).0 == ForwardReply(code: .wrongServer))
        var p = ReplicaStateMachine(me: "p")
        _ = p.onView(view(1, "p"))
        _ = p.onView(view(1, "p", acknowledged: true))
        #expect(p.onForward(ForwardArgs(viewnum: 1, primary: "p", firstIndex: 0, ops: [op])).0 == ForwardReply(code: .wrongServer))
        #expect(p.store == KVStore())
    }

    @Test("The backup answers NOT_READY to forwards before a complete transfer")
    func notReadyBeforeTransfer() {
        var b = ReplicaStateMachine(me: "b")
        _ = b.onView(view(2, "p", "b"))
        let batch = ForwardArgs(viewnum: 2, primary: "p", firstIndex: 0, ops: [put("k", "v", seq: 1)])
        #expect(b.onForward(batch) == (ForwardReply(code: .notReady), []))
        let chunk0 = TransferChunk(
            viewnum: 2, primary: "p", transferID: 5, chunkIndex: 0, last: false, nextIndex: 0,
            entries: [Entry(key: "a", value: "1")], duplicates: [])
        #expect(b.onTransfer(chunk0) == (TransferReply(code: .ok), []))
        #expect(b.onForward(batch) == (ForwardReply(code: .notReady), []))
        #expect(!b.hasState)
        let chunk1 = TransferChunk(
            viewnum: 2, primary: "p", transferID: 5, chunkIndex: 1, last: true, nextIndex: 0,
            entries: [Entry(key: "b", value: "2")], duplicates: [])
        #expect(b.onTransfer(chunk1) == (TransferReply(code: .ok), []))
        #expect(b.hasState)
        #expect(b.onForward(batch) == (ForwardReply(code: .ok, nextIndex: 1), []))
        #expect(b.store.map == ["a": "1", "b": "2", "k": "v"])
    }

    @Test("A re-sent batch is acknowledged without being applied twice")
    func deduplicatesResentBatch() {
        var b = readyBackup()
        let hash = putHash("k", "x", seq: 1)
        let batch = ForwardArgs(viewnum: 2, primary: "p", firstIndex: 0, ops: [hash])
        #expect(b.onForward(batch) == (ForwardReply(code: .ok, nextIndex: 1), []))
        let once = b.store
        #expect(b.onForward(batch) == (ForwardReply(code: .ok, nextIndex: 1), []))
        #expect(b.store == once)
        #expect(b.store.map["k"] == PutHash.newValue(previous: "", value: "x"))
        // A batch overlapping what the backup has: only the new tail is applied.
        let more = putHash("k", "y", seq: 2)
        #expect(b.onForward(ForwardArgs(viewnum: 2, primary: "p", firstIndex: 0, ops: [hash, more])) == (ForwardReply(code: .ok, nextIndex: 2), []))
        #expect(b.store.map["k"] == PutHash.newValue(previous: PutHash.newValue(previous: "", value: "x"), value: "y"))
    }

    @Test("A forward that leaves a gap is OUT_OF_ORDER, with the index the backup expects")
    func outOfOrderGap() {
        var b = readyBackup()
        #expect(b.onForward(ForwardArgs(viewnum: 2, primary: "p", firstIndex: 0, ops: [put("a", "1", seq: 1)])) == (ForwardReply(code: .ok, nextIndex: 1), []))
        let before = b.store
        #expect(b.onForward(ForwardArgs(viewnum: 2, primary: "p", firstIndex: 3, ops: [put("z", "9", seq: 4)])) == (ForwardReply(code: .outOfOrder, nextIndex: 1), []))
        #expect(b.store == before)
    }
}

// MARK: - at most once

@Suite("Replica rules: at-most-once execution")
struct ReplicaAtMostOnceTests {
    @Test("A retried request gets the original reply and is not applied again")
    func retryGetsOriginalReply() {
        var p = ReplicaStateMachine(me: "p")
        _ = p.onView(view(1, "p"))
        _ = p.onView(view(1, "p", acknowledged: true))
        let hash = putHash("k", "x", client: 7, seq: 1)
        #expect(p.onClientRequest(hash, token: 1) == [.reply(1, ok(""))])
        #expect(p.onClientRequest(hash, token: 2) == [.reply(2, ok(""))])
        let once = PutHash.newValue(previous: "", value: "x")
        #expect(p.store.map["k"] == once)
        // The client's next request runs.
        #expect(p.onClientRequest(putHash("k", "x", client: 7, seq: 2), token: 3) == [.reply(3, ok(once))])
        // An older request than the client's last is never run (the client stopped waiting for it).
        let twice = p.store
        let stale = p.onClientRequest(putHash("k", "x", client: 7, seq: 1), token: 4)
        guard case .reply(4, let reply) = stale.first, stale.count == 1 else {
            Issue.record("expected one reply, got \(stale)")
            return
        }
        #expect(reply.code == .badRequest, "a stale seq cannot succeed anywhere: not WRONG_SERVER")
        #expect(p.store == twice)
    }

    @Test("A request without a client id or seq is refused, not answered from a shared duplicate row")
    func missingRequestIDRefused() {
        var p = ReplicaStateMachine(me: "p")
        _ = p.onView(view(1, "p"))
        _ = p.onView(view(1, "p", acknowledged: true))
        for (token, id) in [(1, RequestID(clientID: 0, seq: 0)), (2, RequestID(clientID: 0, seq: 5)), (3, RequestID(clientID: 9, seq: 0))] {
            let before = p.store
            let directives = p.onClientRequest(Operation(kind: .put, key: "k", value: "v\(token)", id: id), token: UInt64(token))
            guard case .reply(let replyToken, let reply) = directives.first, directives.count == 1 else {
                Issue.record("expected one reply, got \(directives)")
                continue
            }
            #expect(replyToken == UInt64(token))
            #expect(reply.code == .badRequest)
            #expect(p.store == before, "nothing applied, nothing recorded")
        }
    }

    @Test("A retry arriving while the original waits for the backup is answered with it, once")
    func retryWhilePending() {
        var net = ReplicaNetwork.primaryWithBackup()
        let hash = putHash("k", "x", seq: 1)
        #expect(
            net.request("p", hash, token: 1)
                == [.forward(to: "b", ForwardArgs(viewnum: 2, primary: "p", firstIndex: 0, ops: [hash]), delay: .zero)])
        #expect(net.request("p", hash, token: 2) == [])
        #expect(net["p"].pendingCount == 1)
        #expect(net.deliver() == [.reply(1, ok("")), .reply(2, ok(""))])
        #expect(net.inFlight.isEmpty, "the retry is not forwarded again")
        #expect(net["b"].store.map["k"] == PutHash.newValue(previous: "", value: "x"))
        #expect(net["p"].store == net["b"].store)
    }

    @Test("The duplicate table moves with the transfer: the promoted backup answers a retry with the original reply")
    func duplicateTableTransferred() {
        var net = ReplicaNetwork(["p", "b"])
        net.onView("p", view(1, "p"))
        net.onView("p", view(1, "p", acknowledged: true))
        let hash = putHash("k", "x", client: 5, seq: 1)
        #expect(net.request("p", hash, token: 1) == [.reply(1, ok(""))])
        let v2 = view(2, "p", "b")
        net.onView("p", v2)
        net.onView("b", v2)
        net.settle()
        #expect(net["b"].store == net["p"].store)

        // p dies; b takes over.
        let v3 = view(3, "b")
        #expect(net.onView("b", v3) == [.roleChanged(from: .backup, to: .primary, view: v3)])
        #expect(net["b"].pingViewnum == 3)
        #expect(net.request("b", hash, token: 2) == [.reply(2, ok(""))])
        let once = PutHash.newValue(previous: "", value: "x")
        #expect(net["b"].store.map["k"] == once)
        #expect(net.request("b", get("k", client: 6, seq: 1), token: 3) == [.reply(3, ok(once))])
    }
}

// MARK: - failures and view changes

@Suite("Replica rules: failures and view changes")
struct ReplicaFailureTests {
    @Test("A failed forward is re-sent after the retry delay, and nothing is answered")
    func failedForwardIsResent() {
        var configuration = ReplicaConfiguration()
        configuration.retryDelay = .milliseconds(35)
        var net = ReplicaNetwork.primaryWithBackup(configuration: configuration)
        let op = put("k", "v", seq: 1)
        let args = ForwardArgs(viewnum: 2, primary: "p", firstIndex: 0, ops: [op])
        #expect(net.request("p", op, token: 1) == [.forward(to: "b", args, delay: .zero)])
        #expect(net.fail() == [.forward(to: "b", args, delay: .milliseconds(35))])
        #expect(net.fail() == [.forward(to: "b", args, delay: .milliseconds(35))])
        #expect(net.replies.isEmpty)
        #expect(net.deliver() == [.reply(1, ok)])
        #expect(net["b"].store == net["p"].store)
    }

    @Test("A view change deposing the primary answers its pending operations WRONG_SERVER")
    func deposedPrimaryAnswersWrongServer() {
        var net = ReplicaNetwork.primaryWithBackup()
        net.request("p", put("k", "v", seq: 1), token: 1)
        net.request("p", get("k", seq: 2), token: 2)
        let v3 = view(3, "b")
        #expect(
            net.onView("p", v3)
                == [.reply(1, wrongServer), .reply(2, wrongServer), .roleChanged(from: .primary, to: .idle, view: v3)])
        #expect(net["p"].pendingCount == 0)
        #expect(!net["p"].hasState)
        // The backup's late acknowledgement changes nothing.
        #expect(net.deliver() == [])
        #expect(net.replies == [.reply(1, wrongServer), .reply(2, wrongServer)])
        #expect(net.request("p", get("k", seq: 3), token: 3) == [.reply(3, wrongServer)])
    }

    @Test("A view change to no backup answers pending operations with their real replies")
    func noBackupCommitsPending() {
        var net = ReplicaNetwork.primaryWithBackup()
        net.request("p", putHash("k", "x", client: 1, seq: 1), token: 1)
        net.request("p", get("k", client: 2, seq: 1), token: 2)
        let hashed = PutHash.newValue(previous: "", value: "x")
        let v3 = view(3, "p")
        #expect(net.onView("p", v3) == [.reply(1, ok("")), .reply(2, ok(hashed))])
        #expect(net["p"].pingViewnum == 3)
        #expect(net["p"].pendingCount == 0)
        // The dead backup's late answer changes nothing; new operations are answered at once.
        #expect(net.deliver() == [])
        #expect(net.request("p", put("k", "v", client: 1, seq: 2), token: 3) == [.reply(3, ok)])
        #expect(net.inFlight.isEmpty)
    }

    @Test("A backup that completed a transfer is promoted on the next view and serves the transferred data")
    func backupPromoted() {
        var net = ReplicaNetwork(["p", "b"])
        net.onView("p", view(1, "p"))
        net.onView("p", view(1, "p", acknowledged: true))
        net.request("p", put("a", "1", client: 1, seq: 1), token: 1)
        net.request("p", put("b", "2", client: 1, seq: 2), token: 2)
        net.onView("p", view(2, "p", "b"))
        net.onView("b", view(2, "p", "b"))
        net.settle()
        net.request("p", put("c", "3", client: 1, seq: 3), token: 3)
        net.settle()
        #expect(net.replies == [.reply(1, ok), .reply(2, ok), .reply(3, ok)])

        let v3 = view(3, "b")
        #expect(net.onView("b", v3) == [.roleChanged(from: .backup, to: .primary, view: v3)])
        #expect(net["b"].hasState)
        #expect(net["b"].pingViewnum == 3)
        #expect(net.request("b", get("a", client: 2, seq: 1), token: 4) == [.reply(4, ok("1"))])
        #expect(net.request("b", get("c", client: 2, seq: 2), token: 5) == [.reply(5, ok("3"))])
    }

    @Test("A backup whose transfer is incomplete is not promoted: it has no state to serve")
    func incompleteBackupNotPromoted() {
        var b = ReplicaStateMachine(me: "b")
        _ = b.onView(view(2, "p", "b"))
        let chunk0 = TransferChunk(
            viewnum: 2, primary: "p", transferID: 5, chunkIndex: 0, last: false, nextIndex: 0,
            entries: [Entry(key: "a", value: "1")], duplicates: [])
        _ = b.onTransfer(chunk0)
        let v3 = view(3, "b")
        #expect(b.onView(v3) == [.roleChanged(from: .backup, to: .primaryWithoutState, view: v3)])
        #expect(b.pingViewnum == 0)
        #expect(b.onClientRequest(get("a", seq: 1), token: 1) == [.reply(1, wrongServer)])
    }

    @Test("A promoted backup acknowledges the old view, never 0, until its new backup holds the state")
    func promotedPrimaryPingsOldViewDuringTransfer() {
        var net = ReplicaNetwork.primaryWithBackup(others: ["c"])
        let v3 = view(3, "b", "c")
        let promoted = net.onView("b", v3)
        net.onView("c", v3)
        #expect(net["b"].role == .primary)
        #expect(promoted.first == .roleChanged(from: .backup, to: .primary, view: v3))
        // Pinging 0 would tell the view service that b restarted and lost its state.
        #expect(net["b"].pingViewnum == 2)
        net.settle()
        #expect(net["b"].pingViewnum == 3)
        #expect(net["c"].store == net["b"].store)
    }
}

// MARK: - stale results

@Suite("Replica rules: stale results are ignored")
struct ReplicaStaleResultTests {
    @Test("Forward outcomes for an old target or an old first index do nothing")
    func staleForwardOutcomes() {
        var net = ReplicaNetwork.primaryWithBackup(others: ["c"])
        net.request("p", put("a", "1", seq: 1), token: 1)
        #expect(net.deliver() == [.reply(1, ok)])
        net.request("p", put("b", "2", seq: 2), token: 2)  // in flight from index 1
        #expect(net.inFlight.count == 1)

        // An answer about the batch at index 0, acknowledged before: nothing happens.
        #expect(net.nodes["p"]!.onForwardOutcome(to: "b", firstIndex: 0, outcome: .replied(ForwardReply(code: .ok, nextIndex: 1))) == [])
        #expect(net.nodes["p"]!.onForwardOutcome(to: "b", firstIndex: 0, outcome: .failed) == [])
        // An answer from a server that is not the backup.
        #expect(net.nodes["p"]!.onForwardOutcome(to: "c", firstIndex: 1, outcome: .replied(ForwardReply(code: .ok, nextIndex: 2))) == [])
        #expect(net["p"].pendingCount == 1)

        // The backup changes to c: b's answer about the current batch is stale now.
        let v3 = view(3, "p", "c")
        let started = net.onView("p", v3)
        guard started.count == 1, case .transfer(to: "c", let chunk, delay: .zero) = started[0] else {
            Issue.record("expected a transfer to c, got \(started)")
            return
        }
        #expect(net.nodes["p"]!.onForwardOutcome(to: "b", firstIndex: 1, outcome: .replied(ForwardReply(code: .ok, nextIndex: 2))) == [])
        #expect(net["p"].pendingCount == 1)

        // Transfer outcomes for another transfer or another chunk do nothing either.
        #expect(net.nodes["p"]!.onTransferOutcome(to: "c", transferID: chunk.transferID &+ 1, chunkIndex: 0, outcome: .replied(TransferReply(code: .ok))) == [])
        #expect(net.nodes["p"]!.onTransferOutcome(to: "c", transferID: chunk.transferID, chunkIndex: 1, outcome: .replied(TransferReply(code: .ok))) == [])
        #expect(net.nodes["p"]!.onTransferOutcome(to: "b", transferID: chunk.transferID, chunkIndex: 0, outcome: .replied(TransferReply(code: .ok))) == [])
        #expect(net["p"].pingViewnum == 2)
        #expect(net.replies == [.reply(1, ok)])
    }
}

extension ViewServiceStateMachine {
    /// A ping answered as the view service shell answers it: after storing what it caused.
    mutating func answer(server: String, viewnum: UInt64, now: Duration) -> View {
        if let proposal = onPing(server: server, viewnum: viewnum, now: now).store { _ = onStored(proposal) }
        return currentView
    }
}
