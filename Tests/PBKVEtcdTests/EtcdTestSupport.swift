import Logging
import NIOConcurrencyHelpers
import PBKVCore
import PBKVEtcd
import PBKVTestSupport
import PBKVViewService
import PBKVWire
import Testing

/// Every etcd test, one at a time (each starts its own etcd; timings are checked): the suites
/// are nested in this one.
@Suite("etcd", .serialized, .timeLimit(.minutes(2)))
enum EtcdTests {}

/// Log lines kept in memory: tests assert on them and stay quiet.
final class LogCapture: Sendable {
    private let lines = NIOLockedValueBox<[String]>([])

    var logger: Logger {
        Logger(label: "pbkv.etcd.test", factory: { label in Handler(capture: self) })
    }

    var all: [String] { lines.withLockedValue { $0 } }

    func contains(_ text: String) -> Bool { all.contains { $0.contains(text) } }

    fileprivate func append(_ line: String) { lines.withLockedValue { $0.append(line) } }

    private struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .debug

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }
            let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            capture.append("\(event.level) \(event.message) \(fields)")
        }
    }
}

/// Starts etcd for one test (1 or 3 members), gives it and a client of all its members to
/// `body`, and stops everything afterwards, also when `body` throws.
func withEtcd<T>(
    members: Int = 1, logs: LogCapture = LogCapture(), requestTimeout: Duration = .seconds(1),
    _ body: (EtcdCluster, EtcdClient) async throws -> T
) async throws -> T {
    let cluster = try await EtcdCluster.start(members: members) { await EtcdClient.isServing(endpoint: $0) }
    let client: EtcdClient
    do {
        client = try EtcdClient(endpoints: cluster.endpoints, requestTimeout: requestTimeout, logger: logs.logger)
    } catch {
        await cluster.shutdown()
        throw error
    }
    do {
        let result = try await body(cluster, client)
        await cluster.shutdown()
        return result
    } catch {
        await cluster.shutdown()
        throw error
    }
}

/// Polls `condition` every 20 ms until it holds (true) or `limit` passes (false).
func eventually(within limit: Duration, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + limit
    while true {
        if try await condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(20))
    }
}

/// A view record for view `n`.
func record(_ n: UInt64, primary: String = "127.0.0.1:7001", backup: String = "127.0.0.1:7002") -> ViewRecord {
    ViewRecord(view: View(viewnum: n, primary: primary, backup: backup, acknowledged: n % 2 == 0), previousBackup: "")
}

