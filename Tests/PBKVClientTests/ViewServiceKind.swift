import Logging
import PBKVEtcd
import PBKVTestSupport
import Testing

/// The view services the replicated KV scenarios run against.
enum ViewServiceKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// One view service, the sole leader of its store.
    case single
    /// The same, with servers that do not use read leases (`--read-leases=false`).
    case singleWithoutLeases = "single, read leases off"
    /// A view service elected on etcd (its own one-member etcd), storing views there.
    case etcd

    var testDescription: String { rawValue }
}

extension InProcessCluster {
    /// An in-process cluster whose view service is of `kind`; `shutdown()` stops all of it.
    static func start(_ kind: ViewServiceKind, logger: Logger? = nil) async throws -> InProcessCluster {
        switch kind {
        case .single:
            return try await start(logger: logger)
        case .singleWithoutLeases:
            return try await start(readLeases: false, logger: logger)
        case .etcd:
            let quiet = Logger(label: "pbkv.test", factory: { _ in SwiftLogNoOpLogHandler() })
            let etcd = try await EtcdCluster.start(members: 1) { await EtcdClient.isServing(endpoint: $0) }
            do {
                let client = try EtcdClient(endpoints: etcd.endpoints, logger: quiet)
                let port = try ProcessCluster.freePort()
                let election = EtcdElection(client: client, prefix: "e2e", advertise: "127.0.0.1:\(port)", logger: quiet)
                return try await start(port: port, election: election, logger: logger) {
                    await client.shutdown()
                    await etcd.shutdown()
                }
            } catch {
                await etcd.shutdown()
                throw error
            }
        }
    }
}
