
/// What a server is in the current view.
public enum ReplicaRole: String, Sendable, Hashable, CustomStringConvertible {
    /// Not in the view (or not yet holding state as backup): serves nobody.
    case idle
    /// Backup of the view: accepts state and operations from its primary only.
    case backup
    /// Primary of the view with legitimate state: serves clients.
    case primary
    /// Named primary but holds no legitimate state (it restarted): serves nobody, pings 0.
    case primaryWithoutState = "primary-without-state"

    public var description: String { rawValue }
}

/// An opaque handle for a client waiting on a reply; the shell maps it to a promise.
public typealias ReplyToken = UInt64

/// Limits and tuning of the replica logic.
public struct ReplicaConfiguration: Sendable, Hashable {
    /// The default largest key: 4 KiB.
    public static let defaultMaxKeyBytes = 4 * 1024
    /// The default largest value: 1 MiB.
    public static let defaultMaxValueBytes = 1024 * 1024

    /// Largest key of a Get, Put or PutHash, in UTF-8 bytes; a longer one is refused with
    /// BAD_REQUEST before anything is applied.
    public var maxKeyBytes = ReplicaConfiguration.defaultMaxKeyBytes
    /// Largest value of a Put or PutHash, in UTF-8 bytes; a longer one is refused likewise.
    public var maxValueBytes = ReplicaConfiguration.defaultMaxValueBytes
    /// Largest frame payload between replicas (the RPC maximum, the same on every server). The
    /// largest key and value must fit in it as one forward (`validate(me:)`); batches and
    /// chunks are cut so that they always fit.
    public var maxFrameBytes = EncodedSize.defaultMaxFramePayload
    /// Most operations in one forward batch.
    public var maxBatchOperations = 512
    /// Most bytes of items (`EncodedSize.item`: keys, values and their framing) in one forward
    /// batch or transfer chunk — fewer when the frame is smaller. A single item larger than
    /// this still goes alone: the limits guarantee it fits in a frame.
    public var maxBatchBytes = 1 << 20
    /// Most entries in one transfer chunk.
    public var maxChunkEntries = 16_384
    /// Transfer chunks sent ahead of the backup's acknowledgements, once it accepted the first:
    /// the primary encodes the next chunks while the backup loads the previous ones.
    public var maxChunksInFlight = 4
    /// Wait before re-sending to a backup that failed to answer.
    public var retryDelay: Duration = .milliseconds(20)
    /// Most client sessions (duplicate-table rows) kept; the least recently used beyond it are
    /// evicted (`KVStore`). Every server of a cluster must use the same value: evictions are
    /// decided by each replica from the operation stream.
    public var maxSessions = KVStore.defaultMaxSessions
    /// Read leases: a primary whose ping was answered with a view naming it primary answers
    /// Gets from its own committed state until the lease ends (`leaseLength` after the ping was
    /// sent), without a round trip to the backup. Off: every Get goes through the backup.
    public var readLeases = true
    /// The view service's dead interval (its ping interval × dead pings): it never names
    /// another primary before this primary has been silent that long. Must not exceed the view
    /// service's; a smaller value only shortens leases.
    public var leaseDeadInterval: Duration = .milliseconds(500)
    /// Largest relative rate difference assumed between this server's monotonic clock and the
    /// view service's (1 %: real clocks drift by well under 0.1 %).
    public var leaseDriftBound = 0.01
    /// Subtracted from every lease on top of the drift bound (clock granularity, the time
    /// between reading the clock and reading the state).
    public var leaseMargin: Duration = .milliseconds(10)

    public init() {}

    /// How long after sending a ping a lease granted by its answer lasts:
    /// `leaseDeadInterval × (1 − leaseDriftBound) − leaseMargin`; zero when leases are off.
    public var leaseLength: Duration {
        guard readLeases else { return .zero }
        return max(.zero, leaseDeadInterval * (1 - leaseDriftBound) - leaseMargin)
    }

    /// Most bytes of items in one batch sent by `me`: `maxBatchBytes`, or less so that the batch
    /// with its envelope fits in `maxFrameBytes`.
    public func batchBudget(me: String) -> Int {
        min(maxBatchBytes, maxFrameBytes - EncodedSize.batchEnvelope(primaryBytes: me.utf8.count))
    }

    /// Checks that the largest key and value could always be forwarded and transferred by the
    /// server called `me` (and answered to a client): otherwise a Put could be applied on the
    /// primary and never reach the backup.
    public func validate(me: String) throws(ReplicaConfigurationError) {
        guard maxKeyBytes >= 1 else { throw .keyLimitTooSmall(maxKeyBytes) }
        guard maxValueBytes >= 0 else { throw .valueLimitNegative(maxValueBytes) }
        guard maxBatchBytes >= 1, maxBatchOperations >= 1, maxChunkEntries >= 1 else { throw .batchLimitsNotPositive }
        guard maxSessions >= 1 else { throw .sessionLimitTooSmall(maxSessions) }
        guard leaseDriftBound >= 0, leaseDriftBound < 1, leaseDeadInterval >= .zero, leaseMargin >= .zero else {
            throw .leaseSettingsInvalid
        }
        let envelope = EncodedSize.batchEnvelope(primaryBytes: me.utf8.count)
        guard EncodedSize.item(keyBytes: maxKeyBytes, valueBytes: maxValueBytes) + envelope <= maxFrameBytes else {
            throw .limitsExceedFrame(
                maxKeyBytes: maxKeyBytes, maxValueBytes: maxValueBytes,
                largestSum: maxFrameBytes - envelope - EncodedSize.itemOverhead, maxFrameBytes: maxFrameBytes)
        }
    }
}

/// Why a `ReplicaConfiguration` cannot be used; each message names the setting to change.
public enum ReplicaConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    case keyLimitTooSmall(Int)
    case valueLimitNegative(Int)
    case batchLimitsNotPositive
    case sessionLimitTooSmall(Int)
    /// A negative dead interval or margin, or a drift bound outside 0 ..< 1.
    case leaseSettingsInvalid
    /// The largest key plus the largest value, with the message around them, exceed a frame.
    case limitsExceedFrame(maxKeyBytes: Int, maxValueBytes: Int, largestSum: Int, maxFrameBytes: Int)

    public var description: String {
        switch self {
        case .keyLimitTooSmall(let n): "--max-key-bytes is \(n); it must be at least 1"
        case .valueLimitNegative(let n): "--max-value-bytes is \(n); it must not be negative"
        case .batchLimitsNotPositive: "maxBatchBytes, maxBatchOperations and maxChunkEntries must be positive"
        case .sessionLimitTooSmall(let n): "--max-sessions is \(n); it must be at least 1 (default \(KVStore.defaultMaxSessions))"
        case .leaseSettingsInvalid:
            "the read lease settings are invalid: the dead interval and margin must not be negative, the drift "
                + "bound must be at least 0 and below 1"
        case .limitsExceedFrame(let key, let value, let largestSum, let frame):
            "--max-key-bytes \(key) plus --max-value-bytes \(value) do not fit in a frame of \(frame) bytes with the "
                + "message around them: such a Put could never be forwarded to a backup; "
                + "keep their sum at most \(largestSum)"
        }
    }
}

/// Something the shell must do for the replica state machine.
public enum ReplicaDirective: Sendable, Hashable {
    /// Answer the client waiting on `token`.
    case reply(ReplyToken, KVReply)
    /// Send operations to the backup (after `delay`), then report with `onForwardOutcome`.
    case forward(to: String, ForwardArgs, delay: Duration)
    /// Send a state chunk to the backup (after `delay`), then report with `onTransferOutcome`.
    case transfer(to: String, TransferChunk, delay: Duration)
    /// Ping the view service now rather than at the next tick (the view probably changed); the
    /// answer is a ping like any other (it acknowledges the view the server holds).
    case pingNow
    /// The role changed (for logs).
    case roleChanged(from: ReplicaRole, to: ReplicaRole, view: View)
    /// A state transfer to the backup completed (for logs).
    case transferCompleted(to: String, entries: Int, chunks: Int)
}

/// The outcome of a call the shell made for the machine.
public enum ReplicaCallOutcome<Reply: Sendable & Hashable>: Sendable, Hashable {
    case replied(Reply)
    /// No reply: timeout, connection refused or lost. The call may or may not have run.
    case failed
}

/// The primary/backup replica rules as a pure state machine: views, client operations and
/// replies from the backup in; replies, forwards, transfers out. No sockets, clock or sleeping.
///
/// Primary: applies each operation to its state in arrival order, forwards it (Gets included)
/// to the backup in that order — batched, one batch in flight — and answers the client only
/// when the backup acknowledged it (or the view has no backup). A new backup first receives the
/// whole state in chunks; the primary acknowledges the view to the view service only then.
/// Backup: accepts transfers and forwards only from the primary of its current view, applies
/// them in stream order, deduplicating by stream index. Any server that is not an initialized
/// primary answers clients WRONG_SERVER and never answers from its own state.
///
/// Read leases (`ReplicaConfiguration.readLeases`): a ping answered with a view naming this
/// server primary (`onView(_:pingSentAt:)`) grants a lease until `pingSentAt + leaseLength`.
/// While it lasts (`onClientRequest(_:token:now:)` compares `now`), a Get of a key with no
/// write waiting for the backup is answered from the store at once (and still streamed to the
/// backup, unanswered, so that both apply the same operations); any other Get is answered only
/// once the backup has it, as before. Time is an input like everything else: a `Duration` on the shell's
/// monotonic clock.
public struct ReplicaStateMachine: Sendable {
    public let me: String
    public let configuration: ReplicaConfiguration
    public private(set) var view = View.initial
    public private(set) var role = ReplicaRole.idle
    public private(set) var store: KVStore
    /// True when `store` is legitimate: received by a complete transfer, promoted from such a
    /// backup, or the empty state of the very first primary. False after any loss of role.
    public private(set) var hasState = false

    // Backup side.
    private struct BackupSession: Sendable {
        var primary: String
        var transferID: UInt64
        var nextChunk: UInt32
        var complete: Bool
        /// Stream index of the next forwarded operation expected.
        var nextIndex: UInt64
    }
    private var session: BackupSession?

    // Primary side.
    private struct PendingOperation: Sendable {
        var index: UInt64
        var op: Operation
        var reply: KVReply
        var tokens: [ReplyToken]
    }

    private struct Transfer: Sendable {
        var target: String
        var id: UInt64
        var cursor: TransferCursor
        var nextChunk: UInt32
        /// Chunks sent and not yet acknowledged, in order.
        var inFlight: [TransferChunk] = []
        /// Whether the chunk marked `last` has been produced.
        var lastProduced = false
        /// Whether the backup accepted a chunk (so it knows the view): only then are several
        /// chunks sent ahead.
        var accepted = false
        /// Operations with an index below this are part of the snapshot.
        var snapshotIndex: UInt64
        var entriesSent = 0
    }

    private enum BackupLink: Sendable {
        /// The view has no backup: operations commit on the primary alone.
        case none
        /// The backup is receiving the state; operations wait.
        case transferring(Transfer)
        /// The backup holds the state; operations stream to it.
        case streaming(target: String, inFlight: (first: UInt64, count: Int)?)
    }
    private var link = BackupLink.none
    private var pending: [PendingOperation] = []
    /// Entries of `pending` that a client waits for (all but the Gets answered on a lease).
    private var pendingAwaited = 0
    /// Gets answered on a lease go to the backup only with something a client waits for, or
    /// once this many wait: they keep the replicas' tables alike, and nobody needs them soon.
    static let leaseGetsPerForward = 64
    /// Writes (Put, PutHash) in `pending`, by key: a Get of such a key must not be answered from
    /// the store, which already holds a write the backup has not acknowledged.
    private var pendingWrites: [String: Int] = [:]
    /// End of the read lease (`onView(_:pingSentAt:)`); nil: none. Only a primary holds one.
    public private(set) var leaseEnd: Duration?
    private var nextIndex: UInt64 = 0
    private var transferCounter: UInt64 = 0
    /// The view number the primary has made good and acknowledges in pings.
    private var acknowledgedViewnum: UInt64 = 0

    /// Most bytes of items in one forward batch or transfer chunk (`ReplicaConfiguration.batchBudget(me:)`).
    private let batchBudget: Int

    public init(me: String, configuration: ReplicaConfiguration = .init()) {
        self.me = me
        self.configuration = configuration
        self.batchBudget = configuration.batchBudget(me: me)
        self.store = KVStore(maxSessions: configuration.maxSessions)
    }

    /// The view number to send in the next ping: 0 while holding no state that the view
    /// service may rely on; the primary's number only once its backup holds the state.
    public var pingViewnum: UInt64 {
        switch role {
        case .primaryWithoutState: 0
        case .primary: acknowledgedViewnum
        case .backup, .idle: view.viewnum
        }
    }

    /// Operations applied but not yet acknowledged by the backup.
    public var pendingCount: Int { pending.count }

    /// The state transfer in progress: on a primary, the one to its backup; on a backup, the
    /// one it is receiving (entries received so far; the total is not known there). Nil otherwise.
    public var transferProgress: TransferProgress? {
        switch role {
        case .primary:
            guard case .transferring(let transfer) = link else { return nil }
            return TransferProgress(
                peer: transfer.target, entriesDone: UInt64(transfer.entriesSent), entriesTotal: UInt64(transfer.cursor.entryCount),
                chunks: transfer.nextChunk)
        case .backup:
            guard let session, !session.complete else { return nil }
            return TransferProgress(
                peer: session.primary, entriesDone: UInt64(store.map.count), entriesTotal: 0, chunks: session.nextChunk)
        case .idle, .primaryWithoutState:
            return nil
        }
    }

    // MARK: - view

    /// The view service answered a ping with `newView`; the ping was sent at `pingSentAt` (read
    /// before sending). nil: not the answer to a ping, or its send time is unknown — it grants no
    /// read lease.
    public mutating func onView(_ newView: View, pingSentAt: Duration? = nil) -> [ReplicaDirective] {
        defer { updateLease(answering: newView, pingSentAt: pingSentAt) }
        // View numbers never go backwards: the view service stores every view before showing
        // it, so an older number is a stale answer (a deposed leader's), never news.
        if newView == view || newView.viewnum < view.viewnum { return [] }
        var directives: [ReplicaDirective] = []
        let oldRole = role
        let oldView = view
        view = newView

        let newRole: ReplicaRole
        if newView.primary == me {
            if oldRole == .primary || (oldRole == .backup && session?.complete == true && hasState) {
                newRole = .primary
            } else if newView.viewnum == 1 && !newView.acknowledged && oldRole != .primaryWithoutState
                && (oldView.viewnum == 0 || hasState)
            {
                // The first primary of a fresh view service: empty is the true state. (A restarted
                // server finds view 1 already acknowledged by its former self and must not serve.)
                hasState = true
                newRole = .primary
            } else {
                newRole = .primaryWithoutState
            }
        } else if newView.backup == me {
            newRole = .backup
        } else {
            newRole = .idle
        }

        if oldRole == .primary && newRole != .primary {
            // Deposed: nothing pending may be acknowledged; our state is no longer trusted.
            for op in pending { for token in op.tokens { directives.append(.reply(token, KVReply(code: .wrongServer))) } }
            dropAllPending()
            link = .none
            hasState = false
        }
        if newRole == .backup {
            if session?.primary != newView.primary || oldRole != .backup {
                session = nil
                if oldRole != .primary { hasState = false }
            }
        } else if newRole != .primary {
            session = nil
            if newRole == .idle { hasState = false }
        }
        if newRole == .primary && oldRole != .primary {
            session = nil
            dropAllPending()
            link = .none
            nextIndex = 0
            // Until the new backup holds the state, ping with the last view we knew — never 0,
            // which would tell the view service we restarted and lost everything.
            acknowledgedViewnum = max(oldView.viewnum, 1)
        }
        role = newRole
        if oldRole != newRole { directives.append(.roleChanged(from: oldRole, to: newRole, view: newView)) }
        if newRole == .primary { directives += syncBackup() }
        return directives
    }

    /// After a ping's answer: a lease from the ping's send time when the answer names this
    /// server primary of the view it now holds; no lease at all when it is not primary. An
    /// answer older than our view (a stale one) neither grants nor ends a lease.
    private mutating func updateLease(answering answer: View, pingSentAt: Duration?) {
        guard role == .primary, configuration.readLeases else {
            leaseEnd = nil
            return
        }
        guard let pingSentAt, answer == view, answer.primary == me else { return }
        let end = pingSentAt + configuration.leaseLength
        leaseEnd = max(leaseEnd ?? end, end)
    }

    /// True when this server is primary and its read lease has not ended at `now`.
    public func holdsLease(at now: Duration) -> Bool {
        guard role == .primary, let leaseEnd else { return false }
        return now < leaseEnd
    }

    /// Aligns the link with the view's backup: start a transfer to a new backup, or drop it.
    private mutating func syncBackup() -> [ReplicaDirective] {
        let backup = view.backup
        switch link {
        case .streaming(let target, _) where target == backup:
            acknowledgedViewnum = view.viewnum
            return []
        case .transferring(let transfer) where transfer.target == backup:
            return []
        default:
            break
        }
        if backup.isEmpty {
            link = .none
            acknowledgedViewnum = view.viewnum
            return commitAllPending()
        }
        return startTransfer(to: backup)
    }

    /// Starts sending a fresh snapshot (a new transfer id: answers about older ones are ignored).
    private mutating func startTransfer(to target: String, delay: Duration = .zero) -> [ReplicaDirective] {
        transferCounter += 1
        let id = (view.viewnum << 24) ^ transferCounter
        var transfer = Transfer(
            target: target, id: id, cursor: TransferCursor(store: store), nextChunk: 0, snapshotIndex: nextIndex)
        let chunk = nextTransferChunk(&transfer)
        link = .transferring(transfer)
        return [.transfer(to: target, chunk, delay: delay)]
    }

    private func nextTransferChunk(_ transfer: inout Transfer) -> TransferChunk {
        let (entries, duplicates, last) = transfer.cursor.next(maxEntries: configuration.maxChunkEntries, maxBytes: batchBudget)
        let chunk = TransferChunk(
            viewnum: view.viewnum, primary: me, transferID: transfer.id, chunkIndex: transfer.nextChunk, last: last,
            nextIndex: transfer.snapshotIndex, packedEntries: entries, duplicates: duplicates, clock: transfer.cursor.clock)
        transfer.entriesSent += entries.count
        transfer.nextChunk += 1
        transfer.lastProduced = last
        transfer.inFlight.append(chunk)
        return chunk
    }

    private mutating func commitAllPending() -> [ReplicaDirective] {
        acknowledgePending(below: .max)
    }

    /// The backup holds every operation below stream index `end`: answer and forget them.
    private mutating func acknowledgePending(below end: UInt64) -> [ReplicaDirective] {
        var directives: [ReplicaDirective] = []
        var done = 0
        for op in pending {
            guard op.index < end else { break }
            for token in op.tokens { directives.append(.reply(token, op.reply)) }
            if !op.tokens.isEmpty { pendingAwaited -= 1 }
            if op.op.kind != .get {
                if pendingWrites[op.op.key, default: 0] <= 1 {
                    pendingWrites[op.op.key] = nil
                } else {
                    pendingWrites[op.op.key, default: 0] -= 1
                }
            }
            done += 1
        }
        pending.removeFirst(done)
        return directives
    }

    private mutating func dropAllPending() {
        pending.removeAll()
        pendingAwaited = 0
        pendingWrites.removeAll()
    }

    // MARK: - client operations (primary)

    /// A client asked for `op` at `now` (read when the request is handled, never earlier: a
    /// process that was paused must see the time it woke at); the reply comes now or later as
    /// `.reply(token, …)`. nil `now`: the time is unknown, and no Get is answered on a lease.
    public mutating func onClientRequest(_ op: Operation, token: ReplyToken, now: Duration? = nil) -> [ReplicaDirective] {
        // Client id 0 or sequence number 0 (also what a missing RequestId decodes to) would
        // share one duplicate-table row with every other such request and get its reply:
        // refuse it rather than answer from someone else's row.
        guard op.id.clientID != 0, op.id.seq != 0 else {
            return [.reply(token, KVReply(code: .badRequest, value: "RequestId with a non-zero client_id and seq is required"))]
        }
        // A pipelining window the duplicate table would not keep: refused before anything else.
        if let refusal = op.id.windowRefusal { return [.reply(token, KVReply(code: .badRequest, value: refusal))] }
        // Too large to forward or store: refused by every server alike, before anything is applied.
        if let refusal = limitRefusal(op) { return [.reply(token, refusal)] }
        guard role == .primary else { return [.reply(token, KVReply(code: .wrongServer))] }
        // The first primary waits until the view service has its acknowledgement of view 1: a
        // crash before that lets it come back empty as the same primary (the view service cannot
        // tell a restart from a repeated first ping), so it must not have answered anything yet.
        guard view.viewnum > 1 || view.acknowledged else { return [.reply(token, KVReply(code: .wrongServer))] }
        switch store.check(op.id) {
        case .duplicate(let reply):
            // Retried: the original may still wait for the backup; answer with it, never twice.
            // (By client id and seq: a retry may carry a later `acked`.)
            if let i = pending.firstIndex(where: { $0.op.id.clientID == op.id.clientID && $0.op.id.seq == op.id.seq }) {
                pending[i].tokens.append(token)
                return []
            }
            return [.reply(token, reply)]
        case .stale:
            // At or below what the client acknowledged (without pipelining: older than its last
            // request): a correct client no longer waits for it, so only a misbehaving one sees
            // this. Retrying elsewhere would not help, hence not WRONG_SERVER.
            return [.reply(token, KVReply(code: .badRequest, value: "seq \(op.id.seq) is at or below what this client id acknowledged (its last request's seq - 1, or RequestId.acked when pipelining): seqs increase, and an acknowledged seq is never sent again"))]
        case .expired:
            // No row and seq > 1: the session was evicted, and this may be a retry of a request
            // that already ran. Never execute it; the client starts a new session.
            return [.reply(token, KVReply(
                code: .sessionExpired,
                value: "no duplicate-table row for client id \(op.id.clientID) at seq \(op.id.seq) (evicted: this server keeps the \(store.maxSessions) most recently used sessions); the request was not executed: start a new session with a new client id and seq 1"))]
        case .new:
            break
        }
        let reply = store.apply(op)
        if case .none = link { return [.reply(token, reply)] }
        // On a lease, a Get of a key without a write waiting for the backup reads committed
        // state: answered now. It still goes to the backup, in stream order and with nobody
        // waiting for it (with the next write, or once `leaseGetsPerForward` of them wait), so
        // that both replicas apply the same operations in the same order: their duplicate
        // tables, clocks and evictions stay identical (see the README's "Read leases").
        let answeredOnLease = op.kind == .get && pendingWrites[op.key] == nil && now.map { holdsLease(at: $0) } == true
        if op.kind != .get { pendingWrites[op.key, default: 0] += 1 }
        pending.append(PendingOperation(index: nextIndex, op: op, reply: reply, tokens: answeredOnLease ? [] : [token]))
        if !answeredOnLease { pendingAwaited += 1 }
        nextIndex += 1
        let sends = sendNextBatch(delay: .zero)
        return answeredOnLease ? [.reply(token, reply)] + sends : sends
    }

    /// BAD_REQUEST naming the limit when `op`'s key or value is larger than allowed; nil if it fits.
    private func limitRefusal(_ op: Operation) -> KVReply? {
        let keyBytes = op.key.utf8.count
        if keyBytes > configuration.maxKeyBytes {
            return KVReply(
                code: .badRequest,
                value: "key of \(keyBytes) bytes exceeds this server's limit of \(configuration.maxKeyBytes) bytes (--max-key-bytes)")
        }
        let valueBytes = op.value.utf8.count
        if valueBytes > configuration.maxValueBytes {
            return KVReply(
                code: .badRequest,
                value: "value of \(valueBytes) bytes exceeds this server's limit of \(configuration.maxValueBytes) bytes (--max-value-bytes)")
        }
        return nil
    }

    /// Sends unacknowledged operations to a streaming backup if nothing is in flight and a client
    /// waits for one of them (or `leaseGetsPerForward` Gets answered on a lease wait): as many as
    /// fit in `batchBudget` (at least one, which the key and value limits let fit in a frame).
    private mutating func sendNextBatch(delay: Duration) -> [ReplicaDirective] {
        guard case .streaming(let target, let inFlight) = link, inFlight == nil, let first = pending.first,
            pendingAwaited > 0 || pending.count >= Self.leaseGetsPerForward
        else { return [] }
        var ops: [Operation] = []
        var bytes = 0
        for p in pending {
            let size = EncodedSize.item(keyBytes: p.op.key.utf8.count, valueBytes: p.op.value.utf8.count)
            if ops.count >= configuration.maxBatchOperations || (!ops.isEmpty && bytes + size > batchBudget) { break }
            ops.append(p.op)
            bytes += size
        }
        link = .streaming(target: target, inFlight: (first.index, ops.count))
        let args = ForwardArgs(viewnum: view.viewnum, primary: me, firstIndex: first.index, ops: ops)
        return [.forward(to: target, args, delay: delay)]
    }

    /// The backup answered (or did not answer) a forward.
    public mutating func onForwardOutcome(
        to target: String, firstIndex: UInt64, outcome: ReplicaCallOutcome<ForwardReply>
    ) -> [ReplicaDirective] {
        guard role == .primary, case .streaming(let current, let inFlight?) = link, current == target,
            inFlight.first == firstIndex
        else { return [] }  // stale: the view or link changed meanwhile
        link = .streaming(target: target, inFlight: nil)
        switch outcome {
        case .failed:
            // Keep trying until the view changes; never answer without the backup.
            return sendNextBatch(delay: configuration.retryDelay)
        case .replied(let reply):
            switch reply.code {
            case .ok:
                return acknowledgePending(below: firstIndex + UInt64(inFlight.count)) + sendNextBatch(delay: .zero)
            case .notReady:
                return startTransfer(to: target)
            case .outOfOrder where pending.first.map({ reply.nextIndex >= $0.index }) == true:
                // The backup already has operations below its nextIndex: they are acknowledged.
                return acknowledgePending(below: reply.nextIndex) + sendNextBatch(delay: .zero)
            case .outOfOrder:
                return startTransfer(to: target)
            default:
                // WRONG_SERVER (the backup's view differs from ours) or anything else: re-read
                // the view; retry until it changes.
                return [.pingNow] + sendNextBatch(delay: configuration.retryDelay)
            }
        }
    }

    /// The backup answered (or did not answer) a transfer chunk.
    ///
    /// Until the backup accepted the first chunk, one chunk is in flight and a WRONG_SERVER or a
    /// missing answer re-sends it (the backup usually learns the view a ping after the primary).
    /// Then up to `maxChunksInFlight` go ahead; the backup applies them in order, so an OK for
    /// chunk i covers every chunk up to i. A failure after that point starts over with a fresh
    /// snapshot: simpler than re-sending a window in order, and rare.
    public mutating func onTransferOutcome(
        to target: String, transferID: UInt64, chunkIndex: UInt32, outcome: ReplicaCallOutcome<TransferReply>
    ) -> [ReplicaDirective] {
        guard role == .primary, case .transferring(var transfer) = link, transfer.target == target,
            transfer.id == transferID, let position = transfer.inFlight.firstIndex(where: { $0.chunkIndex == chunkIndex })
        else { return [] }
        switch outcome {
        case .replied(let reply) where reply.code == .ok:
            transfer.inFlight.removeFirst(position + 1)
            transfer.accepted = true
            if !transfer.inFlight.isEmpty || !transfer.lastProduced {
                var directives: [ReplicaDirective] = []
                while !transfer.lastProduced && transfer.inFlight.count < max(1, configuration.maxChunksInFlight) {
                    directives.append(.transfer(to: target, nextTransferChunk(&transfer), delay: .zero))
                }
                link = .transferring(transfer)
                return directives
            }
            // The backup holds the snapshot: operations below snapshotIndex are safe; the view
            // may now be acknowledged (at once: the view service waits for it); later
            // operations stream.
            let directives: [ReplicaDirective] = [
                .transferCompleted(to: target, entries: transfer.entriesSent, chunks: Int(transfer.nextChunk)),
                .pingNow,
            ] + acknowledgePending(below: transfer.snapshotIndex)
            link = .streaming(target: target, inFlight: nil)
            acknowledgedViewnum = view.viewnum
            return directives + sendNextBatch(delay: .zero)
        case .replied(let reply) where reply.code == .wrongServer && !transfer.accepted:
            // The backup has not seen this view yet (it learns it at its next ping).
            return [.pingNow, .transfer(to: target, transfer.inFlight[position], delay: configuration.retryDelay)]
        case .failed where !transfer.accepted:
            return [.transfer(to: target, transfer.inFlight[position], delay: configuration.retryDelay)]
        case .replied(let reply):
            // Out of order, or refused after accepting: start over with a fresh snapshot.
            return (reply.code == .wrongServer ? [.pingNow] : [])
                + startTransfer(to: target, delay: configuration.retryDelay)
        case .failed:
            return startTransfer(to: target, delay: configuration.retryDelay)
        }
    }

    // MARK: - backup side

    /// A primary forwarded operations. Returns the reply to send and anything else to do.
    public mutating func onForward(_ args: ForwardArgs) -> (ForwardReply, [ReplicaDirective]) {
        guard role == .backup, args.primary == view.primary, args.viewnum == view.viewnum else {
            // Not my primary (as far as I know). If it is ahead of me, I should look.
            return (ForwardReply(code: .wrongServer), args.viewnum > view.viewnum ? [.pingNow] : [])
        }
        guard var session, session.complete, session.primary == args.primary else {
            return (ForwardReply(code: .notReady), [])
        }
        let end = args.firstIndex + UInt64(args.ops.count)
        if args.firstIndex > session.nextIndex {
            return (ForwardReply(code: .outOfOrder, nextIndex: session.nextIndex), [])
        }
        if end > session.nextIndex {
            let skip = Int(session.nextIndex - args.firstIndex)
            for op in args.ops[skip...] {
                // The primary applied every forwarded operation: apply it unless it is already
                // in the table (a repeated stream piece). An `.expired` here (a server with a
                // smaller --max-sessions than its primary) is applied too, so the map never
                // diverges from the primary's.
                switch store.check(op.id) {
                case .new, .expired: _ = store.apply(op)
                case .duplicate, .stale: break
                }
            }
            session.nextIndex = end
            self.session = session
        }
        return (ForwardReply(code: .ok, nextIndex: session.nextIndex), [])
    }

    /// A primary sent a piece of its state.
    public mutating func onTransfer(_ chunk: TransferChunk) -> (TransferReply, [ReplicaDirective]) {
        guard role == .backup, chunk.primary == view.primary, chunk.viewnum == view.viewnum else {
            return (TransferReply(code: .wrongServer), chunk.viewnum > view.viewnum ? [.pingNow] : [])
        }
        if var session, session.primary == chunk.primary, session.transferID == chunk.transferID {
            if chunk.chunkIndex < session.nextChunk { return (TransferReply(code: .ok), []) }  // duplicate
            guard chunk.chunkIndex == session.nextChunk, !session.complete else {
                return (TransferReply(code: .outOfOrder), [])
            }
            store.load(entries: chunk.packedEntries, duplicates: chunk.duplicates, clock: chunk.clock)
            session.nextChunk += 1
            if chunk.last {
                session.complete = true
                session.nextIndex = chunk.nextIndex
                hasState = true
            }
            self.session = session
            return (TransferReply(code: .ok), [])
        }
        guard chunk.chunkIndex == 0 else { return (TransferReply(code: .outOfOrder), []) }
        store.reset()
        hasState = false
        store.load(entries: chunk.packedEntries, duplicates: chunk.duplicates, clock: chunk.clock)
        session = BackupSession(
            primary: chunk.primary, transferID: chunk.transferID, nextChunk: 1, complete: chunk.last,
            nextIndex: chunk.nextIndex)
        if chunk.last { hasState = true }
        return (TransferReply(code: .ok), [])
    }
}

/// Walks a snapshot of the store in chunks for a state transfer. The snapshot is a copy of the
/// store's `CompactMap`: taking it is O(1), and the primary's later writes copy only the index
/// segments they touch (see `CompactMap`). Chunks are filled by copying records byte for byte.
struct TransferCursor: Sendable {
    private let map: CompactMap
    private var position = CompactMap.Position()
    private var mapDone = false
    private let duplicates: [DuplicateEntry]
    private var duplicateIndex = 0
    /// The store's operation clock at the snapshot.
    let clock: UInt64
    /// Entries in the snapshot.
    var entryCount: Int { map.count }

    init(store: KVStore) {
        map = store.map
        clock = store.clock
        // A Get's row has no reply; it is sent as WRONG_SERVER, which a receiver that knows
        // `reread` ignores and an older one (a rolling upgrade) answers to a retried Get — a
        // retry elsewhere, never a made-up value. A pipelining row goes as one entry per kept
        // seq, oldest first: a receiver that does not know `acked` keeps the newest.
        duplicates = store.duplicates.flatMap { id, row in
            row.kept.map {
                DuplicateEntry(
                    clientID: id, seq: $0.seq, reply: $0.reply ?? KVReply(code: .wrongServer), lastUsed: row.lastUsed,
                    reread: $0.reply == nil, acked: row.acked)
            }
        }
    }

    /// The next chunk: at most `maxEntries` entries and rows, and at most `maxBytes` of items
    /// (`EncodedSize.item`) unless a single item is larger — then it goes alone.
    mutating func next(maxEntries: Int, maxBytes: Int) -> (entries: PackedEntries, duplicates: [DuplicateEntry], last: Bool) {
        var entries = PackedEntries()
        entries.reserveCapacity(min(maxBytes, 64 << 10))
        var bytes = 0
        if !mapDone {
            mapDone = map.appendRecords(from: &position, to: &entries, maxEntries: maxEntries, maxBytes: maxBytes, bytes: &bytes)
        }
        var rows: [DuplicateEntry] = []
        if mapDone {
            while duplicateIndex < duplicates.count && entries.count + rows.count < maxEntries {
                let row = duplicates[duplicateIndex]
                let size = EncodedSize.item(keyBytes: 0, valueBytes: row.reply.value.utf8.count)
                if entries.count + rows.count > 0 && bytes + size > maxBytes { break }
                rows.append(row)
                bytes += size
                duplicateIndex += 1
            }
        }
        let last = mapDone && duplicateIndex == duplicates.count
        return (entries, rows, last)
    }
}
