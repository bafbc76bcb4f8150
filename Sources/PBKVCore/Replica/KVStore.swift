
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
/// PutHash row its reply (the previous value), a Put row its OK, a Get row nothing (a retried
/// Get is executed again as a new read).
public struct KVStore: Sendable, Hashable {
    /// The default most client sessions remembered: 65,536.
    public static let defaultMaxSessions = 65_536

    /// A client's last request: what a retry of it needs, and when the row was last used.
    public struct DuplicateRecord: Sendable, Hashable {
        public var seq: UInt64
        /// The store's `clock` when this row was last written: eviction drops the smallest.
        public var lastUsed: UInt64
        /// The reply to send to a retry; nil for a Get, whose retry is executed again.
        public var reply: KVReply?

        public init(seq: UInt64, lastUsed: UInt64, reply: KVReply?) {
            self.seq = seq
            self.lastUsed = lastUsed
            self.reply = reply
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
        /// The client's last request: answer with the recorded reply, do not execute again.
        case duplicate(KVReply)
        /// Older than the client's last request: the client no longer waits for it.
        case stale
        /// No row for this client and `seq > 1`: its session was evicted (or never existed).
        /// The request must not be executed: it may be a retry of one that already ran.
        case expired
    }

    public func check(_ id: RequestID) -> DuplicateCheck {
        guard let record = duplicates[id.clientID] else { return id.seq > 1 ? .expired : .new }
        if id.seq == record.seq {
            guard let reply = record.reply else { return .new }
            return .duplicate(reply)
        }
        return id.seq < record.seq ? .stale : .new
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
        duplicates[op.id.clientID] = DuplicateRecord(seq: op.id.seq, lastUsed: clock, reply: kept)
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
    /// duplicate rows; `clock` is the sender's (the largest wins).
    public mutating func load(entries: PackedEntries, duplicates rows: [DuplicateEntry], clock: UInt64 = 0) {
        map.load(entries)
        for row in rows {
            duplicates[row.clientID] = DuplicateRecord(
                seq: row.seq, lastUsed: row.lastUsed, reply: row.reread ? nil : row.reply)
        }
        self.clock = max(self.clock, clock)
    }
}
