import PBKVWire
import Testing

@testable import PBKVCore
@testable import PBKVServer

/// An operation of a pipelining client: `acked` is what it says it holds the replies of.
private func op(_ kind: OpKind, _ key: String, _ value: String = "", client: UInt64 = 1, seq: UInt64, acked: UInt64) -> Operation {
    Operation(kind: kind, key: key, value: value, id: RequestID(clientID: client, seq: seq, acked: acked))
}

/// A store whose client 1 pipelined PutHashes of `h` at seqs 2...9 (acked 1), after seq 1 alone.
private func pipelinedStore() -> (KVStore, [UInt64: KVReply]) {
    var store = KVStore()
    _ = store.apply(op(.putHash, "h", "s1", seq: 1, acked: 0))
    var replies: [UInt64: KVReply] = [:]
    // Out of order: 5, 3, 9, 2, 8, 4, 7, 6.
    for seq in [5, 3, 9, 2, 8, 4, 7, 6] as [UInt64] {
        replies[seq] = store.apply(op(.putHash, "h", "s\(seq)", seq: seq, acked: 1))
    }
    return (store, replies)
}

/// Loads a transfer of `store` cut into chunks of at most `maxEntries` items, rows in each chunk
/// reversed when `reversed` (a receiver must not depend on their order).
private func transferred(_ store: KVStore, maxEntries: Int, reversed: Bool = false) -> (KVStore, [DuplicateEntry]) {
    var target = KVStore(maxSessions: store.maxSessions)
    var cursor = TransferCursor(store: store)
    var sent: [DuplicateEntry] = []
    var last = false
    while !last {
        let (entries, rows, isLast) = cursor.next(maxEntries: maxEntries, maxBytes: 1 << 20)
        target.load(entries: entries, duplicates: reversed ? rows.reversed() : rows, clock: cursor.clock)
        sent += rows
        last = isLast
    }
    return (target, sent)
}

@Suite("Duplicate table: pipelining windows")
struct PipelineWindowTests {
    @Test("Requests arriving out of order are each executed once; a seq below the newest but not yet run is new")
    func outOfOrder() {
        var store = KVStore()
        _ = store.apply(op(.put, "a", "1", seq: 1, acked: 0))
        #expect(store.apply(op(.put, "a", "4", seq: 4, acked: 1)) == KVReply(code: .ok))
        // 2 and 3 have not run although 4 has: they are new, not stale.
        #expect(store.check(RequestID(clientID: 1, seq: 2, acked: 1)) == .new)
        #expect(store.check(RequestID(clientID: 1, seq: 3, acked: 1)) == .new)
        #expect(store.check(RequestID(clientID: 1, seq: 4, acked: 1)) == .duplicate(KVReply(code: .ok)))
        _ = store.apply(op(.put, "a", "2", seq: 2, acked: 1))
        #expect(store.check(RequestID(clientID: 1, seq: 2, acked: 1)) == .duplicate(KVReply(code: .ok)))
        #expect(store.check(RequestID(clientID: 1, seq: 3, acked: 1)) == .new)
        #expect(store.map["a"] == "2")
        let row = store.duplicates[1]
        #expect(row?.seq == 4 && row?.acked == 1 && row?.older.map(\.seq) == [2])
    }

    @Test("A retry of each seq in the window gets that seq's own recorded reply (PutHash previous values)")
    func duplicatesOfEverySeq() {
        var p = primaryAlone(maxSessions: KVStore.defaultMaxSessions)
        #expect(answer(&p, op(.putHash, "h", "s1", seq: 1, acked: 0)) == KVReply(code: .ok, value: ""))
        var replies: [UInt64: KVReply] = [:]
        for seq in [5, 3, 9, 2, 8, 4, 7, 6] as [UInt64] {
            replies[seq] = answer(&p, op(.putHash, "h", "s\(seq)", seq: seq, acked: 1))
        }
        #expect(Set(replies.values.map(\.value)).count == 8, "every PutHash saw a different previous value")
        let hashed = p.store.map["h"]
        let clock = p.store.clock
        for seq in 2...9 as ClosedRange<UInt64> {
            // Retried with a later acked (what the client holds by then): still its own reply.
            #expect(answer(&p, op(.putHash, "h", "s\(seq)", seq: seq, acked: 1)) == replies[seq])
        }
        #expect(p.store.map["h"] == hashed && p.store.clock == clock, "no retry ran again")
        #expect(p.store.duplicates[1]?.kept.map(\.seq) == Array(2...9), "seq 1 is acknowledged by the others")
    }

    @Test("acked trims the row: seqs at or below it are stale, the rest of the window stays")
    func ackedTrims() {
        var (store, replies) = pipelinedStore()
        _ = store.apply(op(.putHash, "h", "s10", seq: 10, acked: 5))
        let row = store.duplicates[1]
        #expect(row?.acked == 5 && row?.older.map(\.seq) == [6, 7, 8, 9] && row?.seq == 10)
        for seq in 1...5 as ClosedRange<UInt64> {
            #expect(store.check(RequestID(clientID: 1, seq: seq, acked: 5)) == .stale)
        }
        for seq in 6...9 as ClosedRange<UInt64> {
            #expect(store.check(RequestID(clientID: 1, seq: seq, acked: 5)) == .duplicate(replies[seq]!))
        }
        // A lower acked later (an older request run late) does not bring trimmed seqs back.
        _ = store.apply(op(.putHash, "h", "s11", seq: 11, acked: 3))
        #expect(store.duplicates[1]?.acked == 5)
        #expect(store.check(RequestID(clientID: 1, seq: 4, acked: 5)) == .stale)
        // One request outstanding again (acked 0 = seq - 1): the row shrinks to its newest seq.
        _ = store.apply(op(.put, "x", "y", seq: 12, acked: 0))
        #expect(store.duplicates[1] == KVStore.DuplicateRecord(seq: 12, lastUsed: store.clock, reply: KVReply(code: .ok)))
    }

    @Test("Gets in the window keep no reply: a retried Get is read again")
    func getsReRead() {
        var store = KVStore()
        _ = store.apply(op(.put, "k", "old", seq: 1, acked: 0))
        #expect(store.apply(op(.get, "k", seq: 3, acked: 1)) == KVReply(code: .ok, value: "old"))
        _ = store.apply(op(.put, "k", "new", seq: 2, acked: 1))
        #expect(store.check(RequestID(clientID: 1, seq: 3, acked: 1)) == .new)
        #expect(store.check(RequestID(clientID: 1, seq: 2, acked: 1)) == .duplicate(KVReply(code: .ok)))
        #expect(store.apply(op(.get, "k", seq: 3, acked: 1)) == KVReply(code: .ok, value: "new"))
    }

    @Test("A request beyond the window or with acked not below seq is refused with BAD_REQUEST and not run")
    func windowLimit() {
        var p = primaryAlone(maxSessions: KVStore.defaultMaxSessions)
        _ = answer(&p, op(.put, "k", "1", seq: 1, acked: 0))
        let clock = p.store.clock
        let beyond = answer(&p, op(.put, "k", "2", seq: 70, acked: 5))
        #expect(beyond?.code == .badRequest)
        #expect(beyond?.value.contains("at most 64") == true)
        let backwards = answer(&p, op(.put, "k", "3", seq: 7, acked: 7))
        #expect(backwards?.code == .badRequest)
        #expect(backwards?.value.contains("must be below seq") == true)
        #expect(p.store.map["k"] == "1" && p.store.clock == clock)
        // The edge of the window is accepted.
        #expect(answer(&p, op(.put, "k", "4", seq: 69, acked: 5)) == KVReply(code: .ok))
        #expect(p.store.map["k"] == "4")
    }

    @Test("A seq at or below acked is refused as stale, naming acked")
    func staleRefused() {
        var p = primaryAlone(maxSessions: KVStore.defaultMaxSessions)
        _ = answer(&p, op(.put, "k", "1", seq: 1, acked: 0))
        _ = answer(&p, op(.put, "k", "5", seq: 5, acked: 3))
        let stale = answer(&p, op(.put, "k", "3", seq: 3, acked: 1))
        #expect(stale?.code == .badRequest && stale?.value.contains("acknowledged") == true)
        #expect(p.store.map["k"] == "5")
    }

    @Test("The transfer carries every kept reply: a row split across chunks, in any order, is rebuilt as it was")
    func transferRoundTrip() {
        var (store, _) = pipelinedStore()
        _ = store.apply(op(.putHash, "h", "s10", seq: 10, acked: 5))
        for client in 2...5 as ClosedRange<UInt64> { _ = store.apply(op(.get, "h", client: client, seq: 1, acked: 0)) }
        for maxEntries in [1, 2, 3, 100] {
            for reversed in [false, true] {
                let (copy, sent) = transferred(store, maxEntries: maxEntries, reversed: reversed)
                #expect(copy == store, "maxEntries \(maxEntries), reversed \(reversed)")
                // One entry per kept seq, oldest first, each with the row's acked.
                let rowOne = sent.filter { $0.clientID == 1 }
                #expect(rowOne.map(\.seq) == [6, 7, 8, 9, 10] && rowOne.allSatisfy { $0.acked == 5 })
            }
        }
    }

    @Test("Compatibility: a receiver that keeps the last entry per client gets the newest seq and its reply; an older sender's row (no acked) is one request outstanding")
    func transferCompatibility() {
        let (store, _) = pipelinedStore()
        let (_, sent) = transferred(store, maxEntries: 4)
        var lastWins: [UInt64: DuplicateEntry] = [:]
        for entry in sent { lastWins[entry.clientID] = entry }
        let row = store.duplicates[1]!
        #expect(lastWins[1]?.seq == row.seq && lastWins[1]?.reply == row.reply)

        var fromOld = KVStore()
        let old = DuplicateEntry(clientID: 9, seq: 12, reply: KVReply(code: .ok, value: "prev"), lastUsed: 3)
        fromOld.load(entries: PackedEntries(), duplicates: [old])
        #expect(fromOld.duplicates[9] == KVStore.DuplicateRecord(seq: 12, lastUsed: 3, reply: KVReply(code: .ok, value: "prev")))
        #expect(fromOld.check(RequestID(clientID: 9, seq: 11)) == .stale)
        #expect(fromOld.check(RequestID(clientID: 9, seq: 12)) == .duplicate(KVReply(code: .ok, value: "prev")))
    }

    @Test("Pipelined sessions out of order: two replicas, one started from a transfer, compute the same replies, rows and evictions; rows stay within the window")
    func evictionStaysDeterministic() {
        var a = KVStore(maxSessions: 8)
        var rng = SplitMix64(seed: 11)
        // 30 clients, window 6: each has seq 1 done, then sends seqs in shuffled groups.
        var next: [UInt64: UInt64] = [:]
        var acked: [UInt64: UInt64] = [:]
        func batch() -> [Operation] {
            let client = rng.next() % 30 + 1
            guard let first = next[client] else {
                next[client] = 2
                acked[client] = 1
                return [op(.putHash, "k\(client % 4)", "v", client: client, seq: 1, acked: 0)]
            }
            let count = UInt64(rng.next() % 6 + 1)
            var ops = (first..<first + count).map { seq in
                op([OpKind.get, .put, .putHash][Int(rng.next() % 3)], "k\(rng.next() % 4)", "v\(seq)", client: client, seq: seq, acked: acked[client]!)
            }
            ops.shuffle(using: &rng)
            next[client] = first + count
            acked[client] = first + count - 1
            return ops
        }
        for _ in 0..<300 { for o in batch() { _ = a.apply(o) } }
        var (b, _) = transferred(a, maxEntries: 5, reversed: true)
        #expect(b == a)
        var expired = 0
        for _ in 0..<1_000 {
            let ops = batch()
            for o in ops {
                // Both replicas agree on what is new, and on the replies; only new requests run.
                let check = a.check(o.id)
                #expect(check == b.check(o.id))
                if check == .expired { expired += 1 }
                guard check == .new else { continue }
                #expect(a.apply(o) == b.apply(o))
            }
            // An evicted client starts a new session (seq 1 alone).
            if let client = ops.first?.id.clientID, a.duplicates[client] == nil { next[client] = nil }
        }
        #expect(expired > 0, "some sessions were evicted and refused")
        #expect(a == b)
        #expect(a.duplicates.count <= a.evictionThreshold)
        #expect(a.duplicates.values.allSatisfy { $0.older.count < Int(RequestID.maxWindow) && $0.seq - $0.acked <= RequestID.maxWindow })
    }

    @Test("Primary and backup: pipelined requests forwarded out of order; after failover each retry gets its own reply and unrun seqs run once")
    func failoverRetries() {
        var net = ReplicaNetwork(["p", "b"])
        net.onView("p", View(viewnum: 1, primary: "p", backup: "", acknowledged: false))
        net.onView("p", View(viewnum: 1, primary: "p", backup: "", acknowledged: true))
        let v2 = View(viewnum: 2, primary: "p", backup: "b", acknowledged: false)
        net.onView("p", v2)
        net.onView("b", v2)
        net.settle()
        net.request("p", op(.putHash, "h", "1", seq: 1, acked: 0), token: 1)
        net.settle()
        // Seqs 2...6 arrive as 4, 2, 6; 3 and 5 never reach the primary before it dies.
        for (token, seq) in [(4, 4), (2, 2), (6, 6)] as [(ReplyToken, UInt64)] {
            net.request("p", op(.putHash, "h", "\(seq)", seq: seq, acked: 1), token: token)
        }
        // A retry of 4 while it still waits for the backup joins it (a later acked, same seq).
        #expect(net.request("p", op(.putHash, "h", "4", seq: 4, acked: 1), token: 40).isEmpty)
        net.settle()
        let answered = Dictionary(uniqueKeysWithValues: net.replies.compactMap { d -> (ReplyToken, KVReply)? in
            if case .reply(let token, let reply) = d { return (token, reply) } else { return nil }
        })
        #expect(answered[40] == answered[4] && answered[4] != nil)
        #expect(net["b"].store == net["p"].store)
        // The primary dies; the backup is promoted. Retries of 2, 4, 6 get their replies; 3 and 5 run.
        net.onView("b", View(viewnum: 3, primary: "b", backup: "", acknowledged: false))
        let clockBefore = net["b"].store.clock
        for seq in [6, 4, 2] as [UInt64] {
            #expect(net.request("b", op(.putHash, "h", "\(seq)", seq: seq, acked: 1), token: 100 + seq) == [.reply(100 + seq, answered[seq]!)])
        }
        #expect(net["b"].store.clock == clockBefore)
        for seq in [5, 3] as [UInt64] {
            let directives = net.request("b", op(.putHash, "h", "\(seq)", seq: seq, acked: 1), token: 100 + seq)
            #expect(directives.count == 1)
        }
        #expect(net["b"].store.clock == clockBefore + 2)
        #expect(net["b"].store.duplicates[1]?.kept.map(\.seq) == [2, 3, 4, 5, 6])
    }
}
