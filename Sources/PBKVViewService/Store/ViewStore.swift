import PBKVCore
import PBKVWire

/// Why a view store could not load or store a record. Each case says what to do.
public enum ViewStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The stored data exists but cannot be read (truncated, damaged, another format).
    case unreadable(location: String, reason: String)
    /// The store no longer holds what this process last loaded or stored: another view service
    /// wrote it, or this one lost its leadership. The caller must stop acting as leader.
    case conflict(location: String)
    /// The store could not be reached or written (I/O error, etcd down); nothing was stored.
    case unavailable(location: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let location, let reason):
            "the stored view at \(location) cannot be read (\(reason)); restore it from a backup or, if every "
                + "KV server was restarted empty anyway, move it away to start from view 0"
        case .conflict(let location):
            "the stored view at \(location) changed under this view service (another leader wrote it); stepping down"
        case .unavailable(let location, let reason):
            "the view store at \(location) is unavailable: \(reason)"
        }
    }
}

/// Where the view service keeps what it must not forget: the current view, its acknowledgement
/// and the previous backup. The state machine stays pure; the shell loads the record when it
/// starts (or becomes leader) and stores each new record before anyone can see it.
///
/// Implementations: `InMemoryViewStore` (tests, `--in-memory`), `FileViewStore` (the default),
/// and the etcd store (replicated mode).
public protocol ViewStore: Sendable {
    /// Where the record lives, for logs and errors (a path, an etcd key).
    var location: String { get }
    /// The stored record, or nil when nothing was ever stored. Throws `.unreadable` on damaged
    /// data (never returns nil for it) and `.unavailable` when the store cannot be reached.
    func load() async throws(ViewStoreError) -> ViewRecord?
    /// Stores `record` if the store still holds `expected` (nil: nothing stored yet), which is
    /// what this process last loaded or stored. Durable when it returns; throws `.conflict`
    /// when the stored record is not `expected` (or the writer is no longer leader).
    func compareAndStore(_ record: ViewRecord, expected: ViewRecord?) async throws(ViewStoreError)
}

/// What a view service process may do now.
public enum ViewServiceLeadership: Sendable {
    /// Run the rules, storing every new record in `store`.
    case leader(any ViewStore)
    /// Answer every call NOT_LEADER with the leader's address (nil: none known yet).
    case follower(leader: String?)
}

/// Decides which view service process is the leader. A single process with a file (or memory)
/// store is always leader (`SoleLeadership`); in replicated mode the etcd election decides.
public protocol ViewServiceElection: Sendable {
    /// Campaigns and keeps leadership until the task is cancelled, reporting every change to
    /// `onChange` (one at a time, in order; the first report comes as soon as it is known).
    func run(onChange: @escaping @Sendable (ViewServiceLeadership) async -> Void) async throws
    /// The leader lost a compare-and-store: give up leadership at once (report `.follower`);
    /// campaigning starts again afterwards.
    func resign() async
    /// Until when (on the monotonic clock) this process is surely still leader, if that is
    /// bounded: no other leader can have started before it. nil: unbounded (a sole leader).
    /// The view service answers no ping past it, so that a deposed leader that has not yet
    /// heard of its deposition (paused, partitioned) grants no read lease a new leader does
    /// not know of.
    var leadershipValidUntil: ContinuousClock.Instant? { get }
}

extension ViewServiceElection {
    public var leadershipValidUntil: ContinuousClock.Instant? { nil }
}

/// The election of a single view service process: leader of its one store. After a
/// `resign()` (its compare-and-store found the store changed under it) it reports follower,
/// then leader again at once, so the service reloads the store and resumes from what it holds
/// instead of staying a follower of nobody until it is restarted.
public struct SoleLeadership: ViewServiceElection {
    public let store: any ViewStore
    private let resignations: AsyncStream<Void>
    private let resignation: AsyncStream<Void>.Continuation

    public init(store: any ViewStore) {
        self.store = store
        (resignations, resignation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    public func run(onChange: @escaping @Sendable (ViewServiceLeadership) async -> Void) async throws {
        await onChange(.leader(store))
        // Ends when the task is cancelled.
        for await _ in resignations {
            await onChange(.follower(leader: nil))
            await onChange(.leader(store))
        }
    }

    public func resign() async { resignation.yield() }
}
