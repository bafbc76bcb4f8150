import PBKVWire

/// The replicated state: the key/value map and the at-most-once table (one row per client).
/// Applying the same operations in the same order gives the same state and replies on every
/// replica, which is what lets the backup compute its own copy of the duplicate table.
public struct KVStore: Sendable, Hashable {
    /// A client's last request and the reply it got.
    public struct DuplicateRecord: Sendable, Hashable {
        public var seq: UInt64
        public var reply: KVReply
    }

    public private(set) var map: [String: String] = [:]
    public private(set) var duplicates: [UInt64: DuplicateRecord] = [:]

    public init() {}

    /// What the at-most-once table says about a request.
    public enum DuplicateCheck: Sendable, Hashable {
        /// Not seen: execute it.
        case new
        /// The client's last request: answer with the recorded reply, do not execute again.
        case duplicate(KVReply)
        /// Older than the client's last request: the client no longer waits for it.
        case stale
    }

    public func check(_ id: RequestID) -> DuplicateCheck {
        guard let record = duplicates[id.clientID] else { return .new }
        if id.seq == record.seq { return .duplicate(record.reply) }
        return id.seq < record.seq ? .stale : .new
    }

    /// Executes `op` (which must be `.new`), records it in the duplicate table, returns the reply.
    public mutating func apply(_ op: Operation) -> KVReply {
        let reply: KVReply
        switch op.kind {
        case .get:
            if let value = map[op.key] {
                reply = KVReply(code: .ok, value: value)
            } else {
                reply = KVReply(code: .noKey)
            }
        case .put:
            map[op.key] = op.value
            reply = KVReply(code: .ok)
        case .putHash:
            let previous = map[op.key] ?? ""
            map[op.key] = PutHash.newValue(previous: previous, value: op.value)
            reply = KVReply(code: .ok, value: previous)
        }
        duplicates[op.id.clientID] = DuplicateRecord(seq: op.id.seq, reply: reply)
        return reply
    }

    /// Replaces everything (a backup receiving chunk 0 of a transfer).
    public mutating func reset() {
        map = [:]
        duplicates = [:]
    }

    /// Adds transferred entries and duplicate rows.
    public mutating func load(entries: [Entry], duplicates rows: [DuplicateEntry]) {
        map.reserveCapacity(map.count + entries.count)
        for entry in entries { map[entry.key] = entry.value }
        for row in rows { duplicates[row.clientID] = DuplicateRecord(seq: row.seq, reply: row.reply) }
    }
}
