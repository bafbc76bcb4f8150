import Foundation
import Logging
import PBKVCore
import PBKVEtcd
import PBKVTestSupport
import PBKVViewService
import Testing

/// The view stores the rules' tests run on: the same scenarios, unchanged, on each.
enum ViewStoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory
    case file
    case etcd

    var testDescription: String { rawValue }

    /// A fresh, empty store. `.etcd` needs the suite's `.sharedEtcd` trait: each store gets its
    /// own key prefix on that etcd and holds the leadership of it (a term of its own).
    func makeStore() async throws -> any ViewStore {
        switch self {
        case .memory:
            return InMemoryViewStore()
        case .file:
            return try FileViewStore(directory: temporaryDirectory(prefix: "pbkv-vs-store"))
        case .etcd:
            let client = try #require(SharedEtcd.client, "the suite needs the .sharedEtcd trait")
            let keys = EtcdKeys(prefix: "rules-\(UUID().uuidString)")
            let claim = try await client.txn(
                compare: [EtcdCompare(key: keys.leader, .createRevision(0))],
                success: [.put(key: keys.leader, value: Array("127.0.0.1:1".utf8))])
            try #require(claim.succeeded)
            return EtcdViewStore(
                client: client, keys: keys, term: claim.revision, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        }
    }
}

/// One etcd for a suite's tests, started before and stopped after them (by pid).
enum SharedEtcd {
    @TaskLocal static var client: EtcdClient?
}

/// Starts a one-member etcd around the suite it is applied to and exposes a client of it as
/// `SharedEtcd.client`.
struct SharedEtcdTrait: SuiteTrait, TestScoping {
    var isRecursive: Bool { false }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let cluster = try await EtcdCluster.start(members: 1) { await EtcdClient.isServing(endpoint: $0) }
        let client: EtcdClient
        do {
            client = try EtcdClient(endpoints: cluster.endpoints, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        } catch {
            await cluster.shutdown()
            throw error
        }
        do {
            try await SharedEtcd.$client.withValue(client) { try await function() }
        } catch {
            await cluster.shutdown()
            throw error
        }
        await cluster.shutdown()
    }
}

extension Trait where Self == SharedEtcdTrait {
    /// A one-member etcd for the suite (see `SharedEtcdTrait`).
    static var sharedEtcd: SharedEtcdTrait { SharedEtcdTrait() }
}

/// A fresh directory under the system's temporary directory.
func temporaryDirectory(prefix: String) -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
