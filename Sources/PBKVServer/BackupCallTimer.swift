import PBKVCore

/// Times the primary's calls to its backup: gives each forward and transfer chunk a timeout from
/// the round trips measured so far, feeds replies back as samples, backs off on timeouts, and
/// times each state transfer as a whole, resends included, for the log.
///
/// One estimate for the link, per 64 KiB of load (`RoundTripEstimator`), serves forwards and
/// transfers alike rather than one per kind: the link is either transferring or streaming, and
/// transfers are rare and often one chunk, so a transfer estimate of its own would rarely have a
/// sample — after a transfer whose only chunk was re-sent it would stay backed off until the
/// next one. The size scaling covers what differs: a 1 MiB chunk waits 16 small round trips.
///
/// Karn's rule: the reply to a call re-sent after an attempt that got no reply is not sampled
/// (the backup may answer it from work the lost attempt already did — a duplicate chunk or
/// forward is acknowledged at once), and until a fresh sample arrives the backed-off timeout stays.
///
/// Pure: the shell passes the time (`now`, a `Duration` since any fixed origin) into every call.
struct BackupCallTimer: Sendable {
    /// A call on its way to the backup, as `willSend…` recorded it; hand it back to `didComplete`.
    struct Call: Sendable, Hashable {
        enum Kind: Sendable, Hashable {
            case forward(firstIndex: UInt64)
            case transfer(transferID: UInt64, chunkIndex: UInt32)
        }
        var kind: Kind
        /// Approximate bytes this call carries.
        var bytes: Int
        /// Bytes on the link when it was sent, itself included (what its round trip waits for).
        var load: Int
        var sentAt: Duration
        /// How long it may go unanswered.
        var timeout: Duration
        /// The estimator's backoffs when it was sent.
        var backoffsAtSend: Int
        /// Whether its reply becomes a round-trip sample (false for a resend after no reply).
        var sampled: Bool
    }

    /// A state transfer from its first chunk 0 to the backup's acknowledgement of the last chunk.
    struct TransferSummary: Sendable, Hashable {
        /// Since the first chunk 0 of the transfer was first sent, resends and restarts included.
        var elapsed: Duration
        /// Chunk calls sent, resends included.
        var chunksSent: Int
        /// Chunks sent again: the same chunk after a refusal or no reply, or chunks of a fresh
        /// snapshot after a restart.
        var resends: Int
        /// Chunk calls that got no reply (timeout or lost connection).
        var unanswered: Int
    }

    private struct TransferRecord: Sendable {
        var target: String
        var viewnum: UInt64
        var startedAt: Duration
        var highestChunkSent: UInt32 = 0
        var chunksSent = 1
        var resends = 0
        var unanswered = 0
    }

    /// Most unanswered calls remembered for Karn's rule (a forward or a chunk not yet re-sent).
    private static let maxRemembered = 64

    private(set) var estimator: RoundTripEstimator
    /// Bytes of calls sent and not yet completed.
    private(set) var bytesInFlight = 0
    /// Calls that got no reply and were not re-sent yet.
    private var unanswered: Set<Call.Kind> = []
    private var transfer: TransferRecord?

    /// `initial`, `minimum` and `maximum` are per `RoundTripEstimator.defaultReferenceBytes`
    /// of load; see `RoundTripEstimator`.
    init(initial: Duration, minimum: Duration, maximum: Duration) {
        estimator = RoundTripEstimator(initial: initial, minimum: minimum, maximum: maximum)
    }

    /// A forward is about to be sent: its timeout and what to report back.
    mutating func willSendForward(_ args: ForwardArgs, at now: Duration) -> Call {
        var bytes = 0
        for op in args.ops { bytes += op.key.utf8.count + op.value.utf8.count + 24 }
        return willSend(.forward(firstIndex: args.firstIndex), bytes: bytes, at: now)
    }

    /// A transfer chunk is about to be sent to `target`: its timeout and what to report back.
    mutating func willSendTransfer(_ chunk: TransferChunk, to target: String, at now: Duration) -> Call {
        var bytes = 64 + chunk.packedEntries.textBytes + 8 * chunk.packedEntries.count
        for row in chunk.duplicates { bytes += row.reply.value.utf8.count + 24 }
        if var record = transfer, record.target == target, record.viewnum == chunk.viewnum {
            record.chunksSent += 1
            if chunk.chunkIndex <= record.highestChunkSent {
                record.resends += 1
            } else {
                record.highestChunkSent = chunk.chunkIndex
            }
            transfer = record
        } else if chunk.chunkIndex == 0 {
            transfer = TransferRecord(target: target, viewnum: chunk.viewnum, startedAt: now)
        }
        return willSend(.transfer(transferID: chunk.transferID, chunkIndex: chunk.chunkIndex), bytes: bytes, at: now)
    }

    private mutating func willSend(_ kind: Call.Kind, bytes: Int, at now: Duration) -> Call {
        let resend = unanswered.remove(kind) != nil
        bytesInFlight += bytes
        return Call(
            kind: kind, bytes: bytes, load: bytesInFlight, sentAt: now, timeout: estimator.timeout(forBytes: bytesInFlight),
            backoffsAtSend: estimator.backoffs, sampled: !resend)
    }

    /// `call` got a reply (`replied`), or failed: timed out, or the connection was refused or lost.
    /// A failure that took the whole timeout backs the estimate off; a quick one (nothing
    /// listening) says nothing about round trips.
    mutating func didComplete(_ call: Call, replied: Bool, at now: Duration) {
        bytesInFlight -= call.bytes
        let elapsed = now - call.sentAt
        if replied {
            if call.sampled { estimator.observe(elapsed, bytes: call.load) }
            return
        }
        if unanswered.count >= Self.maxRemembered { unanswered.removeAll() }
        unanswered.insert(call.kind)
        if case .transfer = call.kind, let record = transfer, call.sentAt >= record.startedAt {
            transfer?.unanswered += 1
        }
        // The RPC deadline runs from a moment after `sentAt`, on another clock: allow 1 ms.
        if elapsed + .milliseconds(1) >= call.timeout {
            estimator.timedOut(backoffsAtSend: call.backoffsAtSend)
        }
    }

    /// The transfer to `target` completed: how long it took as a whole, and what was re-sent.
    mutating func transferCompleted(to target: String, at now: Duration) -> TransferSummary? {
        guard let record = transfer, record.target == target else { return nil }
        transfer = nil
        return TransferSummary(
            elapsed: now - record.startedAt, chunksSent: record.chunksSent, resends: record.resends,
            unanswered: record.unanswered)
    }

    /// The primary now talks to another backup: the old one's silence says nothing about it.
    mutating func backupChanged() {
        estimator.resetBackoff()
        unanswered.removeAll()
    }
}
