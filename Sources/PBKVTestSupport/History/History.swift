import Dispatch
import Synchronization

/// The kind of a key/value operation recorded in a history.
///
/// - `get(key)` reads the key: its output is `.value(v)` or `.absent`.
/// - `put(key, value)` overwrites the key: its output is `.ok`.
/// - `putHash(key, value)` stores `PutHash.newValue(previous: old ?? "", value: value)` and returns
///   the previous value (`""` when the key was absent): its output is `.value(previous)`.
public enum OperationKind: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case get
    case put
    case putHash

    /// Whether the operation changes the stored value.
    public var isWrite: Bool { self != .get }

    public var description: String { rawValue }
}

/// What a completed operation returned.
///
/// `get` returns `.value(v)` or `.absent` (absent is different from `.value("")`); `put` returns
/// `.ok`; `putHash` returns `.value(previous)`, `previous == ""` when the key was absent (`.absent`
/// is accepted as a synonym of `.value("")` there, and `.ok` means "previous value not recorded").
public enum OperationOutput: Sendable, Hashable, CustomStringConvertible {
    case value(String)
    case absent
    case ok

    public var description: String {
        switch self {
        case .value(let value): String(reflecting: value)
        case .absent: "absent"
        case .ok: "ok"
        }
    }
}

/// How a recorded operation ended: completed (with its output and completion time), or
/// indeterminate — timed out or otherwise unknown, so it may or may not have taken effect at any
/// time after its invocation, and its output is unconstrained.
public enum OperationOutcome: Sendable, Hashable {
    case completed(output: OperationOutput, at: UInt64)
    case indeterminate
}

/// One operation of a history: who ran it, what it was, when it was invoked and how it ended.
///
/// Timestamps are monotonic nanoseconds. An operation that definitely did not take effect (the
/// client got a definite error) should simply be left out of the history.
public struct HistoryOperation: Sendable, Hashable, CustomStringConvertible {
    /// An identifier for cross-referencing (the recorder numbers operations from 0).
    public var id: Int
    /// The client (process, connection, task…) that issued the operation.
    public var client: Int
    public var kind: OperationKind
    public var key: String
    /// The input value of `put`/`putHash` (`nil` is treated as `""`); ignored for `get`.
    public var value: String?
    /// When the operation was invoked (monotonic nanoseconds).
    public var invokedAt: UInt64
    public var outcome: OperationOutcome

    public init(
        id: Int = 0,
        client: Int,
        kind: OperationKind,
        key: String,
        value: String? = nil,
        invokedAt: UInt64,
        outcome: OperationOutcome
    ) {
        self.id = id
        self.client = client
        self.kind = kind
        self.key = key
        self.value = value
        self.invokedAt = invokedAt
        self.outcome = outcome
    }

    /// The completion time, or `nil` when indeterminate.
    public var completedAt: UInt64? {
        if case .completed(_, let at) = outcome { return at }
        return nil
    }

    /// The output, or `nil` when indeterminate.
    public var output: OperationOutput? {
        if case .completed(let output, _) = outcome { return output }
        return nil
    }

    public var isIndeterminate: Bool { outcome == .indeterminate }

    /// One line: `#id client c [invoked, completed] kind(key, input) -> output`.
    public var description: String {
        let call: String
        switch kind {
        case .get: call = "get(\(String(reflecting: key)))"
        case .put, .putHash:
            call = "\(kind)(\(String(reflecting: key)), \(String(reflecting: value ?? "")))"
        }
        switch outcome {
        case .completed(let output, let at):
            return "#\(id) client \(client) [\(invokedAt), \(at)] \(call) -> \(output)"
        case .indeterminate:
            return "#\(id) client \(client) [\(invokedAt), ∞) \(call) -> indeterminate"
        }
    }
}

/// Identifies an operation invoked on a `HistoryRecorder`, to complete it later.
public struct OperationToken: Sendable, Hashable {
    /// The operation's `id` (its index in the recorder).
    public let id: Int
}

/// A thread-safe recorder of a concurrent history, for feeding `LinearizabilityChecker`.
///
/// Call `invoke` just before sending a request and `complete`/`completeIndeterminate` just after
/// its outcome is known. Operations still open when `history()` is called are indeterminate.
/// Timestamps err on the wide side (invocation stamped before taking the lock, completion after),
/// which can only hide violations, never invent them.
public final class HistoryRecorder: Sendable {
    private struct Storage {
        var operations: [HistoryOperation] = []
        var open: [Bool] = []
    }

    private let storage = Mutex(Storage())
    private let now: @Sendable () -> UInt64

    /// - Parameter clock: monotonic nanoseconds; defaults to `HistoryRecorder.monotonicNanoseconds`.
    public init(clock: @escaping @Sendable () -> UInt64 = HistoryRecorder.monotonicNanoseconds) {
        self.now = clock
    }

    /// The default clock: `DispatchTime.now().uptimeNanoseconds` (monotonic).
    @Sendable
    public static func monotonicNanoseconds() -> UInt64 {
        DispatchTime.now().uptimeNanoseconds
    }

    /// Records the invocation of an operation and returns the token to complete it with.
    public func invoke(client: Int, kind: OperationKind, key: String, value: String? = nil) -> OperationToken {
        let invokedAt = now()
        return storage.withLock { storage in
            let id = storage.operations.count
            storage.operations.append(
                HistoryOperation(
                    id: id, client: client, kind: kind, key: key, value: value,
                    invokedAt: invokedAt, outcome: .indeterminate))
            storage.open.append(true)
            return OperationToken(id: id)
        }
    }

    /// Records that the operation completed with `output`. Completing twice, or a token from
    /// another recorder, is ignored.
    public func complete(_ token: OperationToken, output: OperationOutput) {
        storage.withLock { storage in
            guard storage.open.indices.contains(token.id), storage.open[token.id] else { return }
            let completedAt = max(now(), storage.operations[token.id].invokedAt)
            storage.operations[token.id].outcome = .completed(output: output, at: completedAt)
            storage.open[token.id] = false
        }
    }

    /// Records that the operation's outcome is unknown (e.g. it timed out): it may or may not
    /// have taken effect.
    public func completeIndeterminate(_ token: OperationToken) {
        storage.withLock { storage in
            guard storage.open.indices.contains(token.id), storage.open[token.id] else { return }
            storage.operations[token.id].outcome = .indeterminate
            storage.open[token.id] = false
        }
    }

    /// The operations recorded so far, by `id` (the order `invoke` was called in); open ones are
    /// indeterminate.
    public func history() -> [HistoryOperation] {
        storage.withLock { $0.operations }
    }

    /// The number of operations recorded so far.
    public var count: Int {
        storage.withLock { $0.operations.count }
    }
}
