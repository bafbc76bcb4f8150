
/// The replicated state: the key/value map (a `CompactMap`: records in slabs, a hash index,
/// cheap copy-on-write snapshots for state transfer) and the at-most-once table (one row per
/// client session, at most `maxSessions` of them). Applying the same operations in the same order
/// gives the same state, replies and evictions on every replica, which is what lets the backup
/// compute its own copy of the duplicate table.
///
/// The table is bounded by count: `clock` counts applied operations (a replicated logical
/// clock, carried by the state transfer), each row remembers the clock of its last use, and
/// when rows exceed `maxSessions + maxSessions / 8` the least recently used are dropped down to
/// `maxSessions` (amortized O(log n) per operation). Rows keep only what a retry needs: a
/// PutHash its reply (the previous value), a Put its OK, a Get nothing (a retried Get is
/// executed again as a new read) — for the session's newest executed seq and, when the client
/// pipelines (`RequestID.acked`), for every executed seq above the client's `acked`: at most
/// `RequestID.maxWindow` per row.
public struct KVStore: Sendable, Hashable {
    /// The default most client sessions remembered: 65,536.
    public static let defaultMaxSessions = 65_536

    /// What a retry of one executed request gets.
    public struct KeptReply: Sendable, Hashable {
        public var seq: UInt64
        /// The reply to send to a retry; nil for a Get, whose retry is executed again.
        public var reply: KVReply?

        public init(seq: UInt64, reply: KVReply?) {
            self.seq = seq
            self.reply = reply
        }
    }

    /// A client session's row: what retries of its requests still in flight need, and when
    /// the row was last used.
    ///
    /// Invariant: `acked < seq`, and `older` holds executed seqs in `(acked, seq)`, ascending —
    /// empty for a client with one request outstanding (`acked == seq - 1`), so such a row
    /// costs no allocation.
    public struct DuplicateRecord: Sendable, Hashable {
        /// The newest (largest) executed seq.
        public var seq: UInt64
        /// The store's `clock` when this row was last written: eviction drops the smallest.
        public var lastUsed: UInt64
        /// The reply to a retry of `seq`; nil for a Get, whose retry is executed again.
        public var reply: KVReply?
        /// The client holds the replies of every seq up to this one: a request at or below it
        /// is stale.
        public var acked: UInt64
        /// Executed seqs between `acked` and `seq` (pipelining), ascending.
        public var older: [KeptReply]

        /// The row of a client with one request outstanding: `seq` and its reply only.
        public init(seq: UInt64, lastUsed: UInt64, reply: KVReply?) {
            self.init(seq: seq, lastUsed: lastUsed, reply: reply, acked: seq > 0 ? seq - 1 : 0, older: [])
        }

        public init(seq: UInt64, lastUsed: UInt64, reply: KVReply?, acked: UInt64, older: [KeptReply]) {
            self.seq = seq
            self.lastUsed = lastUsed
            self.reply = reply
            self.acked = acked
            self.older = older
        }

        /// Every kept seq with its reply, ascending (the newest last).
        public var kept: [KeptReply] { older + [KeptReply(seq: seq, reply: reply)] }

        /// The kept entry of `seq`, if it was executed and is above `acked`.
        func keptEntry(_ wanted: UInt64) -> KeptReply? {
            if wanted == seq { return KeptReply(seq: seq, reply: reply) }
            guard wanted > acked, wanted < seq else { return nil }
            return Self.position(of: wanted, in: older).found.map { older[$0] }
        }

        /// Records an executed `seq` of a request that carried `requestAcked`, and forgets the
        /// replies the client now holds.
        mutating func record(_ entry: KeptReply, requestAcked: UInt64) {
            if entry.seq >= seq {
                if entry.seq > seq { older.append(KeptReply(seq: seq, reply: reply)) }
                seq = entry.seq
                reply = entry.reply
            } else {
                // Pipelined requests can run out of order (a retry after a failover).
                let (found, index) = Self.position(of: entry.seq, in: older)
                if let found { older[found] = entry } else { older.insert(entry, at: index) }
            }
            // A request's own seq is above its acked (the primary refuses others); clamped so
            // that a kept entry is never dropped by the request that made it.
            acked = max(acked, min(requestAcked, entry.seq > 0 ? entry.seq - 1 : 0))
            if let first = older.first, first.seq <= acked {
                older.removeFirst(Self.position(of: acked + 1, in: older).index)
            }
        }

        /// Binary search: the index holding `seq`, or where it would go.
        private static func position(of seq: UInt64, in list: [KeptReply]) -> (found: Int?, index: Int) {
            var low = 0
            var high = list.count
            while low < high {
                let mid = (low + high) / 2
                if list[mid].seq < seq { low = mid + 1 } else { high = mid }
            }
            return (low < list.count && list[low].seq == seq ? low : nil, low)
        }
    }

    /// The keys and values, stored compactly (`CompactMap`); a copy is a cheap snapshot.
    public private(set) var map: CompactMap
    public private(set) var duplicates: [UInt64: DuplicateRecord] = [:]
    /// UTF-8 bytes of every key and value in `map` (kept up to date, for status and metrics).
    public var bytes: Int { map.keyValueBytes }
    /// Operations applied since the state began (including those before a transfer): the
    /// replicated logical clock that orders rows for eviction.
    public private(set) var clock: UInt64 = 0
    /// Most rows kept after an eviction; must be the same on every server of a cluster.
    public let maxSessions: Int

    /// `slabBytes` below the default (1 MiB) are for tests.
    public init(maxSessions: Int = KVStore.defaultMaxSessions, slabBytes: Int = 1 << 20) {
        self.maxSessions = max(1, maxSessions)
        map = CompactMap(slabBytes: slabBytes)
    }

    /// What the at-most-once table says about a request.
    public enum DuplicateCheck: Sendable, Hashable {
        /// Not seen (or a retried Get, which is read again): execute it.
        case new
        /// Executed and kept: answer with the recorded reply, do not execute again.
        case duplicate(KVReply)
        /// At or below the row's `acked` (or, without pipelining, older than the client's last
        /// request): the client no longer waits for it.
        case stale
        /// No row for this client and `seq > 1`: its session was evicted (or never existed).
        /// The request must not be executed: it may be a retry of one that already ran.
        case expired
    }

    /// A seq above the row's `acked` that is not kept is new, even below the newest executed
    /// one: pipelined requests may arrive out of order.
    public func check(_ id: RequestID) -> DuplicateCheck {
        guard let record = duplicates[id.clientID] else { return id.seq > 1 ? .expired : .new }
        if let kept = record.keptEntry(id.seq) {
            guard let reply = kept.reply else { return .new }
            return .duplicate(reply)
        }
        return id.seq <= record.acked ? .stale : .new
    }

    /// Executes `op` (which must not be `.duplicate`), records it in the duplicate table,
    /// evicts the least recently used rows if the table is over its bound, returns the reply.
    public mutating func apply(_ op: Operation) -> KVReply {
        let reply: KVReply
        let kept: KVReply?
        switch op.kind {
        case .get:
            if let value = map[op.key] {
                reply = KVReply(code: .ok, value: value)
            } else {
                reply = KVReply(code: .noKey)
            }
            kept = nil
        case .put:
            map.set(op.key, op.value)
            reply = KVReply(code: .ok)
            kept = reply
        case .putHash:
            let previous = map[op.key] ?? ""
            map.set(op.key, PutHash.newValue(previous: previous, value: op.value))
            reply = KVReply(code: .ok, value: previous)
            kept = reply
        }
        clock += 1
        let entry = KeptReply(seq: op.id.seq, reply: kept)
        if let row = duplicates.index(forKey: op.id.clientID) {
            duplicates.values[row].record(entry, requestAcked: op.id.effectiveAcked)
            duplicates.values[row].lastUsed = clock
        } else {
            duplicates[op.id.clientID] = DuplicateRecord(
                seq: op.id.seq, lastUsed: clock, reply: kept, acked: min(op.id.effectiveAcked, op.id.seq &- 1), older: [])
        }
        evictIfOverBound()
        return reply
    }

    /// Rows above which an eviction runs: 1/8 of slack so that each sort is paid for by
    /// `maxSessions / 8` insertions.
    public var evictionThreshold: Int { maxSessions + max(1, maxSessions / 8) }

    private mutating func evictIfOverBound() {
        guard duplicates.count > evictionThreshold else { return }
        // lastUsed values are distinct (one clock tick per applied operation; ties only among
        // rows from an older sender, broken by id), so every replica holding the same rows
        // drops the same ones whatever its dictionary order.
        let excess = duplicates.count - maxSessions
        let oldest = duplicates.map { (id: $0.key, lastUsed: $0.value.lastUsed) }
            .sorted { ($0.lastUsed, $0.id) < ($1.lastUsed, $1.id) }
            .prefix(excess)
        for row in oldest { duplicates[row.id] = nil }
    }

    /// Replaces everything (a backup receiving chunk 0 of a transfer).
    public mutating func reset() {
        map = CompactMap(slabBytes: map.slabBytes)
        duplicates = [:]
        clock = 0
    }

    /// Adds transferred entries (copied straight from their packed bytes into the map) and
    /// duplicate rows; `clock` is the sender's (the largest wins). A pipelining session's row
    /// comes as one `DuplicateEntry` per kept seq (possibly split across chunks): they are
    /// merged into one row.
    public mutating func load(entries: PackedEntries, duplicates rows: [DuplicateEntry], clock: UInt64 = 0) {
        map.load(entries)
        for row in rows {
            let entry = KeptReply(seq: row.seq, reply: row.reread ? nil : row.reply)
            // An older sender sends no `acked`: its rows are those of one request outstanding.
            let acked = row.acked != 0 ? min(row.acked, row.seq &- 1) : (row.seq > 0 ? row.seq - 1 : 0)
            if let index = duplicates.index(forKey: row.clientID) {
                // Entries of one row carry the same `acked`; the smallest keeps everything sent.
                duplicates.values[index].acked = min(duplicates.values[index].acked, acked)
                duplicates.values[index].record(entry, requestAcked: 0)
                duplicates.values[index].lastUsed = max(duplicates.values[index].lastUsed, row.lastUsed)
            } else {
                duplicates[row.clientID] = DuplicateRecord(
                    seq: row.seq, lastUsed: row.lastUsed, reply: entry.reply, acked: acked, older: [])
            }
        }
        self.clock = max(self.clock, clock)
    }
}
