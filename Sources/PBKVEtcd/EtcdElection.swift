import Logging
import NIOConcurrencyHelpers
import PBKVCore
import PBKVViewService

/// The leader election of the replicated view service, on etcd.
///
/// Each view service process runs one. The leader holds `<prefix>/leader` (value: its advertised
/// `HOST:PORT`), bound to an etcd lease it keeps alive; the key is created only if absent, in one
/// transaction. While it holds the key it is leader for one term, identified by the key's create
/// revision, and writes views through an `EtcdViewStore` fenced on that revision.
///
/// The leader steps down (reports `.follower(leader: nil)`) at once when a keepalive fails or has
/// not succeeded before the lease's local deadline: the send time of the last successful
/// keepalive (or grant) plus the granted TTL, on the monotonic clock. That deadline is never later
/// than etcd's own expiry, which counts from when etcd received the request. Followers retry the
/// transaction every `campaignInterval` and report the leader's address when it changes.
///
/// Polling instead of `/v3/watch`: a follower's failed transaction is a read-only transaction
/// (no raft write), takeover time is dominated by the lease TTL (2 s) rather than by a 250 ms poll,
/// and a streaming watch would need its own reconnection and resumption logic.
public final class EtcdElection: ViewServiceElection {
    /// Timing of the election.
    public struct Timing: Sendable, Hashable {
        /// The TTL asked for the lease, rounded up to whole seconds (etcd may raise it; the
        /// granted TTL is what counts).
        public var leaseTTL: Duration
        /// How often a follower tries to become leader.
        public var campaignInterval: Duration
        /// How long a leader that resigned waits before campaigning again, so another can win.
        public var resignBackoff: Duration
        /// Largest relative rate difference assumed between this process's monotonic clock and
        /// etcd's: leadership is taken as sure only until `lastSent + TTL × (1 − driftBound)`.
        public var driftBound = 0.01

        public init(
            leaseTTL: Duration = .seconds(2), campaignInterval: Duration = .milliseconds(250),
            resignBackoff: Duration = .milliseconds(500)
        ) {
            self.leaseTTL = leaseTTL
            self.campaignInterval = campaignInterval
            self.resignBackoff = resignBackoff
        }
    }

    public let keys: EtcdKeys
    /// This view service's address, the leader key's value while it leads.
    public let advertise: String
    public let timing: Timing
    private let client: EtcdClient
    private let logger: Logger
    private let resignation = Wakeup()
    /// Raised unless a test froze the election (see `freeze()`).
    private let thawed = Wakeup()
    private let running = NIOLockedValueBox(false)
    /// `leadershipValidUntil`: set while leading, in the past otherwise.
    private let validUntil = NIOLockedValueBox(ContinuousClock.now)

    /// Until when this process surely leads: the lease's local deadline shortened by the drift
    /// bound (etcd counts the TTL from when it received the grant or keepalive, on its clock;
    /// a new leader's key can only be created after that). In the past while not leading.
    public var leadershipValidUntil: ContinuousClock.Instant? { validUntil.withLockedValue { $0 } }

    public convenience init(
        client: EtcdClient, prefix: String = "pbkv", advertise: String, leaseTTL: Duration = .seconds(2), logger: Logger
    ) {
        self.init(client: client, keys: EtcdKeys(prefix: prefix), advertise: advertise, timing: Timing(leaseTTL: leaseTTL),
            logger: logger)
    }

    public init(client: EtcdClient, keys: EtcdKeys, advertise: String, timing: Timing, logger: Logger) {
        self.client = client
        self.keys = keys
        self.advertise = advertise
        self.timing = timing
        var logger = logger
        logger[metadataKey: "etcd.leader_key"] = "\(keys.leader)"
        self.logger = logger
        thawed.raise()
    }

    /// The leader lost a compare-and-store (or cannot load): revokes the lease, reports
    /// `.follower(leader: nil)`, waits `resignBackoff` and campaigns again. Returns at once; the
    /// `run` loop does the work (so its reports stay in order). Does nothing unless leader.
    public func resign() async {
        logger.info("view service resigns leadership")
        resignation.raise()
    }

    /// Campaigns and keeps leadership until the task is cancelled, reporting every change to
    /// `onChange` (one call at a time, in order). On cancellation the lease is revoked (best
    /// effort), so a leader stopped cleanly hands over at once; then it throws `CancellationError`.
    public func run(onChange: @escaping @Sendable (ViewServiceLeadership) async -> Void) async throws {
        let alreadyRunning = running.withLockedValue { running in
            defer { running = true }
            return running
        }
        if alreadyRunning { throw EtcdError.electionAlreadyRunning }
        defer { running.withLockedValue { $0 = false } }

        var reporter = Reporter(onChange: onChange)
        var lease: HeldLease?
        var abandoned: [Int64] = []
        while !Task.isCancelled {
            guard let term = await campaign(lease: &lease, abandoned: &abandoned, reporter: &reporter) else { break }
            guard let held = lease else { continue }
            let outcome = await lead(term: term, lease: held, reporter: &reporter)
            switch outcome {
            case .lost(let reason):
                logger.warning("view service lost its etcd lease; stepping down", metadata: [
                    "etcd.lease": "\(held.id)", "etcd.term": "\(term)", "reason": "\(reason)",
                ])
                await reporter.follower(nil)
                lease = nil
                abandoned.append(held.id)
                await revoke(held.id)
            case .resigned:
                await reporter.follower(nil)
                lease = nil
                abandoned.append(held.id)
                await revoke(held.id)
                try? await Task.sleep(for: timing.resignBackoff)
            case .cancelled:
                break
            }
            // Only the latest terms' leases can still hold the key.
            if abandoned.count > 8 { abandoned.removeFirst(abandoned.count - 8) }
        }
        if let lease {
            // A fresh task, so the cancellation of this one does not cancel the revoke.
            let client = self.client
            await Task { try? await client.leaseRevoke(lease.id) }.value
            logger.info("view service left the election; lease revoked", metadata: ["etcd.lease": "\(lease.id)"])
        }
        throw CancellationError()
    }

    // MARK: - test seam

    /// Stops the election loop where it stands, as SIGSTOP would: no keepalive, no campaign, no
    /// report, until `thaw()`. Tests only.
    func freeze() { thawed.lower() }

    /// Lets a frozen election go on; it then finds out what it missed (an expired lease).
    func thaw() { thawed.raise() }

    // MARK: - the loop

    /// A lease this process holds, as far as it knows.
    struct HeldLease: Sendable {
        var id: Int64
        var ttl: Duration
        /// When the last successful grant or keepalive request was sent.
        var lastSent: ContinuousClock.Instant

        /// Past this, etcd may have expired the lease.
        var deadline: ContinuousClock.Instant { lastSent + ttl }
        /// When to renew it.
        var renewal: ContinuousClock.Instant { lastSent + ttl / 3 }
    }

    private enum LeadOutcome {
        case lost(String)
        case resigned
        case cancelled
    }

    /// Reports changes in order, a follower's leader only when it changed.
    private struct Reporter {
        let onChange: @Sendable (ViewServiceLeadership) async -> Void
        /// The last follower report (`.some(nil)`: follower, leader unknown); nil after a leader report.
        var lastFollower: String??

        mutating func follower(_ leader: String?) async {
            if case .some(let last) = lastFollower, last == leader { return }
            lastFollower = .some(leader)
            await onChange(.follower(leader: leader))
        }

        mutating func leader(_ store: EtcdViewStore) async {
            lastFollower = nil
            await onChange(.leader(store))
        }
    }

    /// Tries to create the leader key until it succeeds (returns the term) or the task is
    /// cancelled (returns nil).
    private func campaign(lease: inout HeldLease?, abandoned: inout [Int64], reporter: inout Reporter) async -> Int64? {
        var lastError: EtcdError?
        while !Task.isCancelled {
            await thawed.waitRaised()
            if Task.isCancelled { return nil }
            do throws(EtcdError) {
                let held = try await ensureLease(&lease)
                let result = try await client.txn(
                    compare: [EtcdCompare(key: keys.leader, .createRevision(0))],
                    success: [.put(key: keys.leader, value: Array(advertise.utf8), lease: held.id)],
                    failure: [.range(key: keys.leader)])
                lastError = nil
                if result.succeeded {
                    logger.info("view service won the etcd election", metadata: [
                        "etcd.term": "\(result.revision)", "etcd.lease": "\(held.id)", "etcd.lease_ttl": "\(held.ttl)",
                    ])
                    return result.revision
                }
                var holder: EtcdKeyValue?
                if case .range(let kvs) = result.results.first { holder = kvs.first }
                if let holder, holder.lease == held.id {
                    // Our own transaction applied although its reply was lost (a retried request).
                    return holder.createRevision
                }
                if let holder, abandoned.contains(holder.lease) {
                    // Our previous term's key, still there: its lease revoke failed. Try again.
                    await revoke(holder.lease)
                    await reporter.follower(nil)
                } else {
                    await reporter.follower(holder.map { String(decoding: $0.value, as: UTF8.self) })
                }
            } catch .cancelled {
                return nil
            } catch .leaseNotFound {
                lease = nil
                continue
            } catch {
                if lastError != error {
                    logger.warning("etcd election: cannot campaign; retrying", metadata: ["error": "\(error)"])
                }
                lastError = error
            }
            do { try await Task.sleep(for: timing.campaignInterval) } catch { return nil }
        }
        return nil
    }

    /// A lease valid for a while yet: the one held, renewed if due, or a new one.
    private func ensureLease(_ lease: inout HeldLease?) async throws(EtcdError) -> HeldLease {
        let clock = ContinuousClock()
        if var held = lease {
            if clock.now < held.renewal { return held }
            if clock.now < held.deadline {
                let sent = clock.now
                do {
                    let ttl = try await client.leaseKeepAlive(held.id)
                    held.lastSent = sent
                    held.ttl = .seconds(ttl)
                    lease = held
                    return held
                } catch .leaseNotFound {
                    lease = nil
                }
            } else {
                lease = nil
            }
        }
        let requested = max(1, Int64((timing.leaseTTL + .nanoseconds(999_999_999)).components.seconds))
        let sent = clock.now
        let granted = try await client.leaseGrant(ttl: requested)
        if granted.ttl != requested {
            logger.info("etcd granted another lease TTL than asked", metadata: [
                "etcd.lease": "\(granted.id)", "etcd.lease_ttl_requested": "\(requested)", "etcd.lease_ttl": "\(granted.ttl)",
            ])
        }
        let held = HeldLease(id: granted.id, ttl: .seconds(granted.ttl), lastSent: sent)
        lease = held
        return held
    }

    /// Leads one term: reports `.leader` and keeps the lease alive until it is lost, the leader
    /// resigns, or the task is cancelled.
    private func lead(term: Int64, lease: HeldLease, reporter: inout Reporter) async -> LeadOutcome {
        let clock = ContinuousClock()
        var held = lease
        guard clock.now < held.deadline else { return .lost("the lease's local deadline passed while campaigning") }
        resignation.lower()
        let sureUntil = { (held: HeldLease) in held.lastSent + held.ttl * (1 - self.timing.driftBound) }
        validUntil.withLockedValue { $0 = sureUntil(held) }
        defer { validUntil.withLockedValue { $0 = clock.now } }
        await reporter.leader(EtcdViewStore(client: client, keys: keys, term: term, logger: logger))
        while true {
            await resignation.wait(until: held.renewal)
            if Task.isCancelled { return .cancelled }
            await thawed.waitRaised()
            if Task.isCancelled { return .cancelled }
            if resignation.lower() { return .resigned }
            guard clock.now < held.deadline else {
                return .lost("no keepalive succeeded before the lease's local deadline")
            }
            if clock.now < held.renewal { continue }
            let sent = clock.now
            switch await keepAlive(held.id, before: held.deadline) {
            case .renewed(let ttl):
                held.lastSent = sent
                held.ttl = .seconds(ttl)
                validUntil.withLockedValue { $0 = sureUntil(held) }
            case .timedOut:
                if Task.isCancelled { return .cancelled }
                return .lost("no keepalive succeeded before the lease's local deadline")
            case .failed(.cancelled):
                return .cancelled
            case .failed(let error):
                return .lost("keepalive failed: \(error)")
            }
        }
    }

    private enum KeepAliveOutcome: Sendable {
        /// The lease's TTL from now, in seconds.
        case renewed(Int64)
        case failed(EtcdError)
        case timedOut
    }

    /// One keepalive, abandoned at `deadline`.
    private func keepAlive(_ id: Int64, before deadline: ContinuousClock.Instant) async -> KeepAliveOutcome {
        let client = self.client
        return await withTaskGroup(of: KeepAliveOutcome.self) { group in
            group.addTask {
                do throws(EtcdError) {
                    return .renewed(try await client.leaseKeepAlive(id))
                } catch {
                    return .failed(error)
                }
            }
            group.addTask {
                try? await Task.sleep(until: deadline, clock: .continuous)
                return .timedOut
            }
            let first = await group.next() ?? .timedOut
            group.cancelAll()
            return first
        }
    }

    /// Revokes `id`, best effort (the lease expires by itself anyway).
    private func revoke(_ id: Int64) async {
        do throws(EtcdError) {
            try await client.leaseRevoke(id)
            logger.debug("etcd lease revoked", metadata: ["etcd.lease": "\(id)"])
        } catch {
            logger.info("could not revoke the etcd lease; it will expire", metadata: [
                "etcd.lease": "\(id)", "error": "\(error)",
            ])
        }
    }
}
