import PBKVWire

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

/// The view service's rules as a pure state machine: pings and ticks in, the view out.
///
/// Time is a monotonic `Duration` since an arbitrary origin, passed in by the caller; the
/// machine never reads a clock. Rules:
/// - the first server to ping becomes primary of view 1;
/// - the view changes only when the primary or backup died or restarted (pinged 0), when there
///   is no backup and an idle server is available, or when there is no primary yet;
/// - it never moves past view N until N's primary acknowledged N (pinged with N);
/// - only the backup of the acknowledged view is ever promoted; idle servers never are;
/// - an idle server fills the backup slot in the same change that promotes the backup;
/// - idle servers are remembered; dead idle servers are forgotten.
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
    public private(set) var view = View.initial
    /// The view before `view`.
    private var previousView = View.initial
    /// True once the primary of `view` pinged with `view.viewnum`.
    public private(set) var acknowledged = false
    private var servers: [String: ServerRecord] = [:]
    private var arrivals: UInt64 = 0

    public init(configuration: ViewServiceConfiguration = .init()) {
        self.configuration = configuration
    }

    /// A change of view, for logs.
    public struct ViewChange: Sendable, Hashable {
        public var from: View
        public var to: View
    }

    /// A server pinged; returns the view to send back and the change it caused, if any.
    public mutating func onPing(server: String, viewnum: UInt64, now: Duration) -> (view: View, change: ViewChange?) {
        if var record = servers[server] {
            record.lastPing = now
            servers[server] = record
        } else {
            arrivals += 1
            servers[server] = ServerRecord(lastPing: now, restarted: false, arrival: arrivals)
        }
        if viewnum == 0 && view.viewnum > 0 && (server == view.primary || server == view.backup) {
            // The first primary starts empty, so repeating its first ping (a lost reply) loses nothing.
            let firstPrimaryRetrying = view.viewnum == 1 && server == view.primary && !acknowledged
            // Likewise a backup that joined in this still unacknowledged view holds nothing the
            // view relies on yet (its primary acknowledges only after the transfer); its primary
            // notices the lost state and starts the transfer again.
            let newBackupRetrying = server == view.backup && !acknowledged && previousView.backup != server
            if !firstPrimaryRetrying && !newBackupRetrying { servers[server]?.restarted = true }
        }
        if server == view.primary && viewnum == view.viewnum && viewnum > 0 {
            acknowledged = true
        }
        let change = advance(now: now, pinger: server)
        return (currentView, change)
    }

    /// Time passed: forget dead idle servers and react to deaths. Call every ping interval.
    public mutating func onTick(now: Duration) -> ViewChange? {
        for (name, record) in servers where !inView(name) && isDead(record, now: now) {
            servers.removeValue(forKey: name)
        }
        return advance(now: now, pinger: nil)
    }

    /// The view with its acknowledgement flag, as sent to servers and clients.
    public var currentView: View {
        var current = view
        current.acknowledged = acknowledged
        return current
    }

    /// Servers the machine currently tracks (alive or not yet forgotten), for status output.
    public var knownServers: [String] { servers.keys.sorted() }

    private func inView(_ server: String) -> Bool {
        !server.isEmpty && (server == view.primary || server == view.backup)
    }

    private func isDead(_ record: ServerRecord, now: Duration) -> Bool {
        now - record.lastPing >= configuration.deadAfter
    }

    private func failed(_ server: String, now: Duration) -> Bool {
        guard let record = servers[server] else { return true }
        return record.restarted || isDead(record, now: now)
    }

    /// The live, idle server that has waited longest, if any.
    private func idleCandidate(now: Duration) -> String? {
        servers
            .filter { name, record in !inView(name) && !record.restarted && !isDead(record, now: now) }
            .min { $0.value.arrival < $1.value.arrival }?
            .key
    }

    private mutating func advance(now: Duration, pinger: String?) -> ViewChange? {
        if view.viewnum == 0 {
            // No view yet: the first server to ping becomes primary (only a pinger, never on a tick).
            guard let pinger else { return nil }
            return change(to: View(viewnum: 1, primary: pinger, backup: ""))
        }
        guard acknowledged else { return nil }
        let primaryFailed = failed(view.primary, now: now)
        let backupFailed = !view.backup.isEmpty && failed(view.backup, now: now)
        if primaryFailed {
            // Only the backup of the acknowledged view may take over; otherwise wait.
            guard !view.backup.isEmpty, !backupFailed else { return nil }
            let newBackup = idleCandidate(now: now) ?? ""
            return change(to: View(viewnum: view.viewnum + 1, primary: view.backup, backup: newBackup))
        }
        if backupFailed {
            return change(to: View(viewnum: view.viewnum + 1, primary: view.primary, backup: idleCandidate(now: now) ?? ""))
        }
        if view.backup.isEmpty, let idle = idleCandidate(now: now) {
            return change(to: View(viewnum: view.viewnum + 1, primary: view.primary, backup: idle))
        }
        return nil
    }

    private mutating func change(to next: View) -> ViewChange {
        let previous = view
        previousView = view
        view = next
        acknowledged = false
        // Servers that left the view are ordinary idle servers again (a restarted one may
        // become backup later and receive the state); the dead are forgotten.
        for name in [previous.primary, previous.backup] where !name.isEmpty && !inView(name) {
            servers[name]?.restarted = false
        }
        return ViewChange(from: previous, to: next)
    }
}
