import PBKVCore
import Synchronization

/// What the fault injector does to calls and connections. Probabilities are 0...1.
public struct FaultPolicy: Sendable, Hashable {
    /// Drop an inbound request before it runs (the caller times out).
    public var dropRequest: Double = 0
    /// Run the request but lose its reply (the caller times out; the effect happened).
    public var dropReply: Double = 0
    /// Close a new connection at once.
    public var refuseConnection: Double = 0
    /// Hold a new connection's handshake for `connectionDelay` with this probability.
    public var delayConnection: Double = 0
    public var connectionDelay: Duration = .milliseconds(200)
    /// Drop every request (a partition); overrides the probabilities.
    public var partitioned = false
    /// Drop this many of the next requests for sure (one fault placed on purpose, e.g. the first
    /// transfer chunk a restarted backup receives); counts down as they drop.
    public var dropNextRequests = 0
    /// Lose the replies of this many of the next requests that run; counts down as they drop.
    public var dropNextReplies = 0

    public init(
        dropRequest: Double = 0, dropReply: Double = 0, refuseConnection: Double = 0,
        delayConnection: Double = 0, connectionDelay: Duration = .milliseconds(200), partitioned: Bool = false,
        dropNextRequests: Int = 0, dropNextReplies: Int = 0
    ) {
        self.dropRequest = dropRequest
        self.dropReply = dropReply
        self.refuseConnection = refuseConnection
        self.delayConnection = delayConnection
        self.connectionDelay = connectionDelay
        self.partitioned = partitioned
        self.dropNextRequests = dropNextRequests
        self.dropNextReplies = dropNextReplies
    }

    /// No faults.
    public static let none = FaultPolicy()
}

/// How many faults an injector has injected so far.
public struct FaultCounts: Sendable, Hashable {
    public var requestsSeen = 0
    public var requestsDropped = 0
    public var repliesDropped = 0
    public var connectionsRefused = 0
    public var connectionsDelayed = 0
}

/// Decides, reproducibly from a seed, which calls and connections to sabotage. Tests and the
/// `--fault-*` options of `pbkv server` use it to make an unreliable network on demand.
/// Thread-safe; the policy can be changed while running (e.g. to partition a server).
public final class FaultInjector: Sendable {
    private struct State {
        var policy: FaultPolicy
        var rng: SplitMix64
        var counts = FaultCounts()
    }

    private let state: Mutex<State>

    public init(policy: FaultPolicy, seed: UInt64) {
        state = Mutex(State(policy: policy, rng: SplitMix64(seed: seed)))
    }

    public var policy: FaultPolicy {
        get { state.withLock { $0.policy } }
        set { state.withLock { $0.policy = newValue } }
    }

    public var counts: FaultCounts { state.withLock { $0.counts } }

    /// True if this inbound request should vanish before it runs.
    public func shouldDropRequest() -> Bool {
        state.withLock { s in
            s.counts.requestsSeen += 1
            let drop = s.policy.partitioned || s.policy.dropNextRequests.takeOne() || s.rng.chance(s.policy.dropRequest)
            if drop { s.counts.requestsDropped += 1 }
            return drop
        }
    }

    /// True if the reply of a request that ran should vanish.
    public func shouldDropReply() -> Bool {
        state.withLock { s in
            let drop = s.policy.partitioned || s.policy.dropNextReplies.takeOne() || s.rng.chance(s.policy.dropReply)
            if drop { s.counts.repliesDropped += 1 }
            return drop
        }
    }

    /// True if a new connection should be closed at once.
    public func shouldRefuseConnection() -> Bool {
        state.withLock { s in
            let refuse = s.rng.chance(s.policy.refuseConnection)
            if refuse { s.counts.connectionsRefused += 1 }
            return refuse
        }
    }

    /// How long to hold a new connection's handshake, if at all.
    public func connectionDelay() -> Duration? {
        state.withLock { s in
            guard s.rng.chance(s.policy.delayConnection) else { return nil }
            s.counts.connectionsDelayed += 1
            return s.policy.connectionDelay
        }
    }
}

extension Int {
    /// Counts down by one if positive; true if it did.
    fileprivate mutating func takeOne() -> Bool {
        guard self > 0 else { return false }
        self -= 1
        return true
    }
}

/// A small, fast, seedable random number generator (SplitMix64), for reproducible faults.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// True with probability `p`.
    public mutating func chance(_ p: Double) -> Bool {
        guard p > 0 else { return false }
        guard p < 1 else { return true }
        return Double(next() >> 11) / Double(1 << 53) < p
    }
}
