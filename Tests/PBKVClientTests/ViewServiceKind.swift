import Foundation
import Logging
import PBKVCore
import PBKVEtcd
import PBKVTestSupport
import PBKVWire
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

/// How the nodes of the replicated KV scenarios talk.
enum TransportKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case tcp = "TCP"
    /// An `InMemoryNetwork` (seeded, no sockets).
    case inMemory = "in memory"

    var testDescription: String { rawValue }

    /// The network to start a cluster with (nil: TCP).
    func network() -> InMemoryNetwork? {
        self == .inMemory ? InMemoryNetwork(seed: 7) : nil
    }
}

/// The clusters the replicated KV scenarios run on. By default every view service over TCP, and
/// the single view service (read leases on) over the in-memory network; `PBKV_E2E_TRANSPORT=tcp`,
/// `memory` or `all` runs every view service on that transport (or both), e.g. to time each.
let scenarioClusters: [(ViewServiceKind, TransportKind)] = {
    let viewServices = ViewServiceKind.allCases
    switch ProcessInfo.processInfo.environment["PBKV_E2E_TRANSPORT"] {
    case "tcp": return viewServices.map { ($0, .tcp) }
    case "memory": return viewServices.map { ($0, .inMemory) }
    case "all": return viewServices.map { ($0, .tcp) } + viewServices.map { ($0, .inMemory) }
    default: return viewServices.map { ($0, .tcp) } + [(.single, .inMemory)]
    }
}()

extension InProcessCluster {
    /// An in-process cluster whose view service is of `kind`, talking over `transport`;
    /// `shutdown()` stops all of it.
    static func start(_ kind: ViewServiceKind, _ transport: TransportKind = .tcp, logger: Logger? = nil) async throws -> InProcessCluster {
        let network = transport.network()
        switch kind {
        case .single:
            return try await start(network: network, logger: logger)
        case .singleWithoutLeases:
            return try await start(readLeases: false, network: network, logger: logger)
        case .etcd:
            let quiet = Logger(label: "pbkv.test", factory: { _ in SwiftLogNoOpLogHandler() })
            let etcd = try await EtcdCluster.start(members: 1) { await EtcdClient.isServing(endpoint: $0) }
            do {
                let client = try EtcdClient(endpoints: etcd.endpoints, logger: quiet)
                let port = try ProcessCluster.freePort()
                let election = EtcdElection(client: client, prefix: "e2e", advertise: "127.0.0.1:\(port)", logger: quiet)
                return try await start(port: port, election: election, network: network, logger: logger) {
                    await etcd.shutdown()
                }
            } catch {
                await etcd.shutdown()
                throw error
            }
        }
    }
}
