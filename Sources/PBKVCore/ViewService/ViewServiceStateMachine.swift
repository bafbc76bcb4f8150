
/// Timing rules of the view service.
public struct ViewServiceConfiguration: Sendable, Hashable {
    /// How often servers ping.
    public var pingInterval: Duration
    /// A server that misses this many pings in a row is dead.
    public var deadPings: Int

    public init(pingInterval: Duration = .milliseconds(100), deadPings: Int = 5) {
        self.pingInterval = pingInterval
        self.deadPings = deadPings
    }

    /// Silence longer than this means dead.
    public var deadAfter: Duration { pingInterval * deadPings }
}

/// The view service's rules as a pure state machine: pings and ticks in, records to store and
/// the view out.
///
/// Time is a monotonic `Duration` since an arbitrary origin, passed in by the caller; the
/// machine never reads a clock. Rules:
/// - the first server to ping becomes primary of view 1;
/// - the view changes only when the primary or backup died or restarted (pinged 0), when there
///   is no backup and an idle server is available, or when there is no primary yet;
/// - it never moves past view N until N's primary acknowledged N (pinged with N), except to
///   replace N's backup when it failed while N's primary is alive (the primary stays);
/// - only the backup of the acknowledged view is ever promoted; idle servers never are;
/// - an idle server fills the backup slot in the same change that promotes the backup;
/// - idle servers are remembered; dead idle servers are forgotten.
///
/// Durability: what the machine shows (`currentView`) is always a stored record. A new view or
/// an acknowledgement becomes a `proposal` that the shell stores (`ViewStore`); only
/// `onStored` makes it visible. One proposal is in flight at a time. A machine resumed from a
/// stored record (`init(configuration:resuming:now:)`) shows that view unchanged, gives its
/// primary and backup a full dead interval from `now`, and numbers every later view above it.
///
/// Read leases rest on one promise: a server whose ping was answered with a view naming it
/// primary stays primary until it has been silent for a dead interval (or pinged 0). A machine
/// that starts from nothing stored cannot know what an earlier incarnation promised, so with
/// `waitBeforeFirstView` it names no primary before a dead interval has passed since its start.
public struct ViewServiceStateMachine: Sendable {
    /// What the machine knows of one server.
    struct ServerRecord: Sendable, Hashable {
        var lastPing: Duration
        /// Pinged 0 while primary or backup: it lost its state and must leave the view.
        var restarted: Bool
        /// Order of first appearance: the longest-idle server becomes backup first.
        var arrival: UInt64
    }

    public let configuration: ViewServiceConfiguration
    /// The stored record: the view everyone sees (with its acknowledgement) and the previous backup.
    public private(set) var record = ViewRecord.initial
    /// What the store holds, as `ViewStore.compareAndStore` expects it: nil before view 1.
    public var storedRecord: ViewRecord? { record.view.viewnum == 0 ? nil : record }
    /// A record handed to the shell to store and not yet confirmed stored.
    public private(set) var proposal: ViewRecord?
    private var servers: [String: ServerRecord] = [:]
    private var arrivals: UInt64 = 0
    /// No first view (from view 0) before this time: see `init(configuration:resuming:now:waitBeforeFirstView:)`.
    public private(set) var firstViewNotBefore: Duration?

    /// A machine with nothing stored: view 0.
    public init(configuration: ViewServiceConfiguration = .init()) {
        self.configuration = configuration
    }

    /// A machine that continues from `stored` (nil: nothing was stored, view 0). The servers
    /// of the stored view count as alive at `now`, so none is declared dead before a full dead
    /// interval has passed. From nothing stored with `waitBeforeFirstView` (what the shell
    /// does), the first primary is named only once a dead interval has passed since `now`: an
    /// earlier incarnation (an `--in-memory` one, or one whose record was moved away) may have
    /// granted a read lease that lasts until then.
    public init(
        configuration: ViewServiceConfiguration = .init(), resuming stored: ViewRecord?, now: Duration,
        waitBeforeFirstView: Bool = false
    ) {
        self.configuration = configuration
        guard let stored else {
            if waitBeforeFirstView { firstViewNotBefore = now + configuration.deadAfter }
            return
        }
        record = stored
        for name in [stored.view.primary, stored.view.backup] where !name.isEmpty {
            arrivals += 1
            servers[name] = ServerRecord(lastPing: now, restarted: false, arrival: arrivals)
        }
    }

    /// A change of view, for logs.
    public struct ViewChange: Sendable, Hashable {
        public var from: View
        public var to: View
    }

    /// The view as stored and shown (number, servers, acknowledgement).
    public var view: View { record.view }
    /// True once the primary of `view` pinged with `view.viewnum` and that was stored.
    public var acknowledged: Bool { record.view.acknowledged }

    /// The view sent to servers and clients: the stored one.
    public var currentView: View { record.view }

    /// A server pinged. Returns the view to answer with (the stored one) and a record to
    /// store, when the ping made one (then call `onStored` or `onStoreFailed`).
    public mutating func onPing(server: String, viewnum: UInt64, now: Duration) -> (view: View, store: ViewRecord?) {
        if var known = servers[server] {
            known.lastPing = now
            servers[server] = known
        } else {
            arrivals += 1
            servers[server] = ServerRecord(lastPing: now, restarted: false, arrival: arrivals)
        }
        let view = record.view
        if viewnum == 0 && view.viewnum > 0 && (server == view.primary || server == view.backup) {
            // The first primary starts empty, so repeating its first ping (a lost reply) loses nothing.
            let firstPrimaryRetrying = view.viewnum == 1 && server == view.primary && !view.acknowledged
            // Likewise a backup that joined in this still unacknowledged view holds nothing the
            // view relies on yet (its primary acknowledges only after the transfer); its primary
            // notices the lost state and starts the transfer again.
            let newBackupRetrying = server == view.backup && !view.acknowledged && record.previousBackup != server
            if !firstPrimaryRetrying && !newBackupRetrying { servers[server]?.restarted = true }
        }
        guard proposal == nil else { return (view, nil) }
        if server == view.primary && viewnum == view.viewnum && viewnum > 0 && !view.acknowledged {
            var acknowledged = record
            acknowledged.view.acknowledged = true
            return (view, propose(acknowledged))
        }
        return (view, advance(now: now, pinger: server).map { propose($0) })
    }

    /// Time passed: forget dead idle servers and react to deaths. Call every ping interval.
    /// Returns a record to store when the view must change.
    public mutating func onTick(now: Duration) -> ViewRecord? {
        for (name, known) in servers where !inView(name) && isDead(known, now: now) {
            servers.removeValue(forKey: name)
        }
        guard proposal == nil else { return nil }
        return advance(now: now, pinger: nil).map { propose($0) }
    }

    /// The proposal is stored: it becomes the view everyone sees. Returns the change of view
    /// it made, if it was one (an acknowledgement is not).
    public mutating func onStored(_ stored: ViewRecord) -> ViewChange? {
        guard stored == proposal else { return nil }
        proposal = nil
        let previous = record.view
        record = stored
        guard stored.view.viewnum != previous.viewnum else { return nil }
        // Servers that left the view are ordinary idle servers again (a restarted one may
        // become backup later and receive the state); the dead are forgotten.
        for name in [previous.primary, previous.backup] where !name.isEmpty && !inView(name) {
            servers[name]?.restarted = false
        }
        return ViewChange(from: previous, to: stored.view)
    }

    /// The proposal could not be stored (nothing was): it is dropped, and the next ping or
    /// tick proposes again what the rules then say.
    public mutating func onStoreFailed() {
        proposal = nil
    }

    /// Servers the machine currently tracks (alive or not yet forgotten), for status output.
    public var knownServers: [String] { servers.keys.sorted() }

    /// Every server the machine tracks (the view's, and idle ones not yet forgotten) with the
    /// time since its last ping at `now`, by address (`pbkv status`).
    public func serversSeen(now: Duration) -> [ServerSeen] {
        servers.sorted { $0.key < $1.key }.map { name, known in
            ServerSeen(server: name, lastPingMsAgo: UInt64(max(0, (now - known.lastPing).milliseconds)))
        }
    }

    private mutating func propose(_ next: ViewRecord) -> ViewRecord {
        proposal = next
        return next
    }

    private func inView(_ server: String) -> Bool {
        !server.isEmpty && (server == record.view.primary || server == record.view.backup)
    }

    private func isDead(_ known: ServerRecord, now: Duration) -> Bool {
        now - known.lastPing >= configuration.deadAfter
    }

    private func failed(_ server: String, now: Duration) -> Bool {
        guard let known = servers[server] else { return true }
        return known.restarted || isDead(known, now: now)
    }

    /// The live, idle server that has waited longest, if any.
    private func idleCandidate(now: Duration) -> String? {
        servers
            .filter { name, known in !inView(name) && !known.restarted && !isDead(known, now: now) }
            .min { $0.value.arrival < $1.value.arrival }?
            .key
    }

    /// The next record the rules call for, if any.
    private func advance(now: Duration, pinger: String?) -> ViewRecord? {
        let view = record.view
        if view.viewnum == 0 {
            // No view yet: the first server to ping becomes primary (only a pinger, never on a
            // tick), not before `firstViewNotBefore`.
            guard let pinger, now >= firstViewNotBefore ?? now else { return nil }
            return next(primary: pinger, backup: "")
        }
        guard view.acknowledged else {
            // The one way past an unacknowledged view: its backup failed while its primary is
            // alive. The primary acknowledges only once its backup holds the whole state, so a
            // backup dying during its transfer would otherwise freeze the view until it came
            // back. The primary stays (it holds the state), and the backup of an unacknowledged
            // view is always one that joined in it, which nothing relies on yet.
            guard !view.backup.isEmpty, failed(view.backup, now: now), !failed(view.primary, now: now) else { return nil }
            return next(primary: view.primary, backup: idleCandidate(now: now) ?? "")
        }
        let primaryFailed = failed(view.primary, now: now)
        let backupFailed = !view.backup.isEmpty && failed(view.backup, now: now)
        if primaryFailed {
            // Only the backup of the acknowledged view may take over; otherwise wait.
            guard !view.backup.isEmpty, !backupFailed else { return nil }
            return next(primary: view.backup, backup: idleCandidate(now: now) ?? "")
        }
        if backupFailed {
            return next(primary: view.primary, backup: idleCandidate(now: now) ?? "")
        }
        if view.backup.isEmpty, let idle = idleCandidate(now: now) {
            return next(primary: view.primary, backup: idle)
        }
        return nil
    }

    /// The view after the current one: numbered above every view ever shown.
    private func next(primary: String, backup: String) -> ViewRecord {
        ViewRecord(
            view: View(viewnum: record.view.viewnum + 1, primary: primary, backup: backup),
            previousBackup: record.view.backup)
    }
}
