import Synchronization

/// A latch that any task may set once and any task may read: "stop now", "it happened".
public final class Latch: Sendable {
    private let value = Mutex(false)

    public init() {}

    public func set() { value.withLock { $0 = true } }
    public var isSet: Bool { value.withLock { $0 } }
}
