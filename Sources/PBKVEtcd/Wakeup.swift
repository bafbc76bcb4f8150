import NIOConcurrencyHelpers

/// A flag that can be raised from anywhere and waited for with a deadline: how `resign()` wakes
/// the election loop, and (as a gate) how tests freeze it.
final class Wakeup: Sendable {
    private struct State {
        var raised = false
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// Raises the flag and wakes every waiter.
    func raise() {
        let waiters = state.withLockedValue { state in
            state.raised = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Lowers the flag; returns whether it was raised.
    @discardableResult
    func lower() -> Bool {
        state.withLockedValue { state in
            defer { state.raised = false }
            return state.raised
        }
    }

    var isRaised: Bool { state.withLockedValue { $0.raised } }

    /// Returns when the flag is raised (at once if it is), at `deadline`, or when the task is
    /// cancelled, whichever comes first. Does not lower the flag.
    func wait(until deadline: ContinuousClock.Instant) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            group.addTask { await self.waitRaised() }
            await group.next()
            group.cancelAll()
        }
    }

    /// Returns when the flag is raised or the task is cancelled.
    func waitRaised() async {
        let id = state.withLockedValue { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLockedValue { state in
                    // `Task.isCancelled` is set before the cancellation handler runs, and both take
                    // the lock: either the handler finds this waiter, or this sees the cancellation.
                    if state.raised || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLockedValue { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}
