import Logging
import PBKVCore
import PBKVViewService
import PBKVWire

extension ViewServiceServer {
    /// Polls until this view service answers ViewServiceRole with `role`; throws
    /// `ClusterError.notReady` after `limit`. `start` returns before the election has reported,
    /// and until it has (and the store is loaded) a leader-to-be answers NOT_LEADER: tests that
    /// call it at once wait here first.
    public func waitUntil(role: ViewServiceRole, within limit: Duration = .seconds(10)) async throws {
        let context = RPCCallContext(
            eventLoop: eventLoop, remoteAddress: nil, logger: Logger(label: "pbkv.test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let deadline = ContinuousClock.now + limit
        var last = try await viewServiceRole(context: context).get()
        while last != role {
            guard ContinuousClock.now < deadline else {
                throw ClusterError.notReady("the view service answered \(last), not \(role), for \(limit)")
            }
            try await Task.sleep(for: .milliseconds(5))
            last = try await viewServiceRole(context: context).get()
        }
    }
}
