/// A manual clock for state-machine tests: time moves only when the test says so.
public struct FakeClock: Sendable, Hashable {
    public private(set) var now: Duration

    public init(now: Duration = .zero) { self.now = now }

    /// Moves time forward.
    public mutating func advance(by duration: Duration) {
        now += duration
    }
}
