import PBKVWire
import Testing

@testable import PBKVCore
@testable import PBKVServer

private func op(_ kind: OpKind, _ key: String, _ value: String = "", client: UInt64, seq: UInt64) -> Operation {
    Operation(kind: kind, key: key, value: value, id: RequestID(clientID: client, seq: seq))
}

/// A primary of view 1 without backup, acknowledged (answers at once).
func primaryAlone(maxSessions: Int) -> ReplicaStateMachine {
    var configuration = ReplicaConfiguration()
    configuration.maxSessions = maxSessions
    var p = ReplicaStateMachine(me: "p", configuration: configuration)
    _ = p.onView(View(viewnum: 1, primary: "p", backup: "", acknowledged: false))
    _ = p.onView(View(viewnum: 1, primary: "p", backup: "", acknowledged: true))
    return p
}

/// The reply of a request answered at once (a primary without backup).
func answer(_ p: inout ReplicaStateMachine, _ operation: Operation) -> KVReply? {
    let directives = p.onClientRequest(operation, token: 1)
    guard directives.count == 1, case .reply(1, let reply) = directives[0] else { return nil }
    return reply
}

@Suite("Duplicate table: bounded, replicated eviction")
struct DuplicateTableTests {
    @Test("The table never holds more than maxSessions + maxSessions/8 rows, and maxSessions after an eviction")
    func boundHolds() {
        var store = KVStore(maxSessions: 64)
        for client in 1...10_000 as ClosedRange<UInt64> {
            _ = store.apply(op(.put, "k\(client % 7)", "v", client: client, seq: 1))
            #expect(store.duplicates.count <= 72)
        }
        #expect(store.duplicates.count >= 64)
        #expect(store.clock == 10_000)
        // The most recent sessions are the ones kept.
        #expect(store.duplicates[10_000] != nil && store.duplicates[9_937] != nil)
        #expect(store.duplicates[1] == nil)
    }

    @Test("Rows keep what a retry needs only: nothing for a Get, no value for a Put, the previous value for a PutHash")
    func rowsDoNotPinValues() {
        var store = KVStore()
        let big = String(repeating: "x", count: 1 << 20)
        _ = store.apply(op(.put, "k", big, client: 1, seq: 1))
        #expect(store.duplicates[1] == KVStore.DuplicateRecord(seq: 1, lastUsed: 1, reply: KVReply(code: .ok)))
        #expect(store.apply(op(.get, "k", client: 2, seq: 1)) == KVReply(code: .ok, value: big))
        #expect(store.duplicates[2] == KVStore.DuplicateRecord(seq: 1, lastUsed: 2, reply: nil))
        #expect(store.apply(op(.putHash, "h", "a", client: 3, seq: 1)) == KVReply(code: .ok, value: ""))
        #expect(store.apply(op(.putHash, "h", "b", client: 3, seq: 2)) == KVReply(code: .ok, value: PutHash.newValue(previous: "", value: "a")))
        #expect(store.duplicates[3]?.reply == KVReply(code: .ok, value: PutHash.newValue(previous: "", value: "a")))
    }

    @Test("Two stores fed the same operations evict the same rows, also when one started from a transfer")
    func evictionIsDeterministic() {
        var a = KVStore(maxSessions: 16)
        var rng = SplitMix(seed: 5)
        var seqs: [UInt64: UInt64] = [:]
        func next() -> Operation {
            let client = rng.next() % 60 + 1
            let seq = (seqs[client] ?? 0) + 1
            seqs[client] = seq
            let kinds: [OpKind] = [.get, .put, .putHash]
            return op(kinds[Int(rng.next() % 3)], "k\(rng.next() % 5)", "v\(seq)", client: client, seq: 1)
        }
        // seq 1 every time: clients restart sessions, so every operation is new.
        for _ in 0..<500 { _ = a.apply(next()) }
        // b starts from a transfer of a's state (rows in a different dictionary order).
        var b = KVStore(maxSessions: 16)
        var cursor = TransferCursor(store: a)
        var last = false
        while !last {
            let (entries, rows, isLast) = cursor.next(maxEntries: 3, maxBytes: 1 << 20)
            b.load(entries: entries, duplicates: rows.reversed(), clock: cursor.clock)
            last = isLast
        }
        #expect(b.map == a.map && b.duplicates == a.duplicates && b.clock == a.clock)
        for _ in 0..<2_000 {
            let operation = next()
            #expect(a.apply(operation) == b.apply(operation))
        }
        #expect(a.duplicates == b.duplicates && a.map == b.map && a.clock == b.clock)
        #expect(a.duplicates.count <= a.evictionThreshold && a.clock == 2_500)
    }

    @Test("A retry of an evicted session gets SESSION_EXPIRED and is not executed")
    func evictedRetryIsRefused() {
        var p = primaryAlone(maxSessions: 4)
        #expect(answer(&p, op(.putHash, "k", "a", client: 1, seq: 1)) == KVReply(code: .ok, value: ""))
        #expect(answer(&p, op(.putHash, "k", "b", client: 1, seq: 2)) == KVReply(code: .ok, value: PutHash.newValue(previous: "", value: "a")))
        let afterB = p.store.map["k"]
        // Five other sessions push client 1 out (4 + 4/8 = 5 rows trigger an eviction at 6).
        for client in 2...6 as ClosedRange<UInt64> { _ = answer(&p, op(.get, "other", client: client, seq: 1)) }
        #expect(p.store.duplicates[1] == nil)
        let retry = answer(&p, op(.putHash, "k", "b", client: 1, seq: 2))
        #expect(retry?.code == .sessionExpired)
        #expect(retry?.value.contains("start a new session") == true)
        #expect(p.store.map["k"] == afterB)
        // Not executed: no clock tick, no row.
        #expect(p.store.duplicates[1] == nil)
        // A new session (new id, seq 1) is served.
        #expect(answer(&p, op(.putHash, "k", "b", client: 99, seq: 1)) == KVReply(code: .ok, value: afterB ?? ""))
    }

    @Test("An unknown client id with seq > 1 gets SESSION_EXPIRED; seq 1 starts a session")
    func unknownClient() {
        var p = primaryAlone(maxSessions: 4)
        #expect(answer(&p, op(.put, "k", "v", client: 5, seq: 3))?.code == .sessionExpired)
        #expect(p.store.map["k"] == nil && p.store.clock == 0)
        #expect(answer(&p, op(.put, "k", "v", client: 5, seq: 1)) == KVReply(code: .ok))
        #expect(answer(&p, op(.put, "k", "w", client: 5, seq: 2)) == KVReply(code: .ok))
        #expect(p.store.map["k"] == "w")
    }

    @Test("A retried PutHash is answered from its row; a retried Put is not applied again")
    func putHashRetryFromRow() {
        var p = primaryAlone(maxSessions: 4)
        _ = answer(&p, op(.put, "k", "start", client: 1, seq: 1))
        let first = answer(&p, op(.putHash, "k", "x", client: 2, seq: 1))
        #expect(first == KVReply(code: .ok, value: "start"))
        let hashed = p.store.map["k"]
        #expect(answer(&p, op(.putHash, "k", "x", client: 2, seq: 1)) == first)
        #expect(p.store.map["k"] == hashed)
        // Client 1's Put retried after another write: answered OK, the later write stays.
        _ = answer(&p, op(.put, "k", "later", client: 3, seq: 1))
        #expect(answer(&p, op(.put, "k", "start", client: 1, seq: 1)) == KVReply(code: .ok))
        #expect(p.store.map["k"] == "later")
    }

    @Test("A retried Get is executed again: it reads the current value")
    func getRetryReExecuted() {
        var p = primaryAlone(maxSessions: 4)
        _ = answer(&p, op(.put, "k", "old", client: 1, seq: 1))
        #expect(answer(&p, op(.get, "k", client: 2, seq: 1)) == KVReply(code: .ok, value: "old"))
        _ = answer(&p, op(.put, "k", "new", client: 1, seq: 2))
        #expect(answer(&p, op(.get, "k", client: 2, seq: 1)) == KVReply(code: .ok, value: "new"))
        #expect(p.store.duplicates[2]?.seq == 1)
    }

    @Test("The transfer carries rows and the clock: a promoted backup dedups and evicts like the primary")
    func transferCarriesTable() {
        var configuration = ReplicaConfiguration()
        configuration.maxSessions = 8
        configuration.maxChunkEntries = 3
        var net = ReplicaNetwork(["p", "b"], configuration: configuration)
        net.onView("p", View(viewnum: 1, primary: "p", backup: "", acknowledged: false))
        net.onView("p", View(viewnum: 1, primary: "p", backup: "", acknowledged: true))
        var token: ReplyToken = 0
        for client in 1...20 as ClosedRange<UInt64> {
            token += 1
            net.request("p", op(client % 2 == 0 ? .putHash : .get, "k", "\(client)", client: client, seq: 1), token: token)
        }
        let hashReply = net.replies.compactMap { d -> KVReply? in
            if case .reply(20, let r) = d { return r } else { return nil }
        }.first
        let v2 = View(viewnum: 2, primary: "p", backup: "b", acknowledged: false)
        net.onView("p", v2)
        net.onView("b", v2)
        net.settle()
        #expect(net["b"].store == net["p"].store)
        #expect(net["b"].store.clock == 20)
        // More operations stream to the backup; both evict the same rows.
        for client in 21...40 as ClosedRange<UInt64> {
            token += 1
            net.request("p", op(.putHash, "k", "\(client)", client: client, seq: 1), token: token)
            net.settle()
        }
        #expect(net["b"].store.duplicates == net["p"].store.duplicates)
        #expect(net["b"].store.map == net["p"].store.map && net["b"].store.clock == 40)
        // The backup is promoted: a retried PutHash of a kept session is answered from its row...
        let v3 = View(viewnum: 3, primary: "b", backup: "", acknowledged: false)
        net.onView("b", v3)
        let before = net["b"].store.map["k"]
        let lastReply = net.replies.compactMap { d -> KVReply? in
            if case .reply(token, let r) = d { return r } else { return nil }
        }.first
        #expect(net.request("b", op(.putHash, "k", "40", client: 40, seq: 1), token: 1000) == [.reply(1000, lastReply!)])
        #expect(net["b"].store.map["k"] == before)
        // ...and one of an evicted session is refused, not executed.
        #expect(hashReply != nil)
        #expect(net["b"].store.duplicates[20] == nil)
        let refused = net.request("b", op(.putHash, "k", "20", client: 20, seq: 2), token: 1001)
        #expect(refused.count == 1)
        if case .reply(1001, let reply) = refused.first { #expect(reply.code == .sessionExpired) } else { Issue.record("\(refused)") }
        #expect(net["b"].store.map["k"] == before)
    }
}

/// A tiny deterministic generator for the tests.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
