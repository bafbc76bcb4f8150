import PBKVCore
import PBKVClient
import PBKVWire

extension KVClient {
    /// Polls the view service through this client until `condition` holds for the current view;
    /// throws `ClusterError.notReady` after `limit`. For tools and tests that wait for a cluster.
    public nonisolated func waitForView(
        within limit: Duration, pollEvery interval: Duration = .milliseconds(50), _ condition: (View) -> Bool
    ) async throws -> View {
        let deadline = ContinuousClock.now + limit
        var last: View?
        while ContinuousClock.now < deadline {
            if let view = try? await currentView() {
                if condition(view) { return view }
                last = view
            }
            try await Task.sleep(for: interval)
        }
        throw ClusterError.notReady("the expected view did not appear within \(limit); last \(last.map { "\($0)" } ?? "none")")
    }
}
