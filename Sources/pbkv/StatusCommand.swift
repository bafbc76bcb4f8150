import ArgumentParser
import PBKVCommandLine
import Foundation
import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVViewService
import PBKVWire

/// `pbkv status`: one table of the cluster, from the view service's status (the view and every
/// server it hears from, idle ones included) and each server's own status, sampled twice for ops/s.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the cluster: each server in the view and idle, its role, view, keys, ops/s, connections, transfer.")

    @Flag(help: "Print JSON: {\"view\":{…},\"servers\":[{\"server\",\"role\",\"viewnum\",\"keys\",\"ops_per_second\",…}]}.")
    var json = false
    @Option(help: "Milliseconds between the two samples of each server that give ops/s (0: one sample, no ops/s).")
    var sampleMs: Int = 1000
    @OptionGroup var options: ClientOptions

    func validate() throws {
        guard sampleMs >= 0 else { throw ValidationError("--sample-ms must not be negative") }
        guard (try? PeerAddress.list(parsing: options.viewservice)) != nil else {
            throw ValidationError("--viewservice must be HOST:PORT, or several separated by commas")
        }
        _ = try options.security.choice()
    }

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            try await show(group: group)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
    }

    private func show(group: MultiThreadedEventLoopGroup) async throws {
        var rpc = RPCClientConfiguration()
        rpc.name = "pbkv-status"
        rpc.tls = try options.resolveTLS()
        rpc.compression = options.compression.mode
        var logger = Logger(label: "pbkv.status")
        logger.logLevel = .critical
        let timeout = options.deadline
        let viewService = ViewServiceClient(
            addresses: try PeerAddress.list(parsing: options.viewservice), eventLoop: group.next(), configuration: rpc, logger: logger)
        let cluster: ViewServiceStatus
        do {
            cluster = try await viewService.status(timeout: timeout)
        } catch {
            printError("pbkv: cannot read the cluster's status from \(options.viewservice): \(error)")
            throw ExitStatus.failure
        }
        _ = try? await viewService.shutdown().get()
        let rows = await ClusterStatus.sample(
            cluster, group: group, configuration: rpc, timeout: timeout, interval: .milliseconds(sampleMs), logger: logger)
        if json {
            print(try ClusterStatus.json(view: cluster.view, rows: rows))
        } else {
            print(ClusterStatus.table(view: cluster.view, rows: rows), terminator: "")
        }
    }
}

/// One line of `pbkv status`: what the view service and the server itself say. In JSON its
/// fields are snake_case (`in_view`, `ops_per_second`, …).
struct ServerRow: Encodable {
    var server: String
    /// Its place in the view: primary, backup or idle.
    var inView: String
    var lastPingMsAgo: UInt64?
    /// From the server (nil when it could not be reached: `error`).
    var role: String?
    var viewnum: UInt64?
    var keys: UInt64?
    var bytes: UInt64?
    var duplicateRows: UInt64?
    var operations: UInt64?
    var opsPerSecond: Double?
    var connections: UInt32?
    var transfer: Transfer?
    var error: String?

    struct Transfer: Encodable {
        var peer: String
        var direction: String
        var entriesDone: UInt64
        var entriesTotal: UInt64?
        var chunks: UInt32
    }
}

/// Gathers and prints `pbkv status`.
enum ClusterStatus {
    /// Every server the view service tracks plus the view's own, each asked for its status
    /// twice `interval` apart (at once when zero), all at the same time.
    static func sample(
        _ cluster: ViewServiceStatus, group: any EventLoopGroup, configuration: RPCClientConfiguration, timeout: Duration,
        interval: Duration, logger: Logger
    ) async -> [ServerRow] {
        let seen = Dictionary(cluster.servers.map { ($0.server, $0.lastPingMsAgo) }, uniquingKeysWith: { first, _ in first })
        var names = Set(seen.keys)
        for name in [cluster.view.primary, cluster.view.backup] where !name.isEmpty { names.insert(name) }
        let ordered = names.sorted { (rank($0, in: cluster.view), $0) < (rank($1, in: cluster.view), $1) }
        return await withTaskGroup(of: (Int, ServerRow).self) { tasks in
            for (index, name) in ordered.enumerated() {
                tasks.addTask {
                    var row = ServerRow(
                        server: name, inView: name == cluster.view.primary ? "primary" : name == cluster.view.backup ? "backup" : "idle",
                        lastPingMsAgo: seen[name])
                    await fill(&row, group: group, configuration: configuration, timeout: timeout, interval: interval, logger: logger)
                    return (index, row)
                }
            }
            var rows = [ServerRow?](repeating: nil, count: ordered.count)
            for await (index, row) in tasks { rows[index] = row }
            return rows.compactMap { $0 }
        }
    }

    private static func rank(_ name: String, in view: View) -> Int {
        name == view.primary ? 0 : name == view.backup ? 1 : 2
    }

    private static func fill(
        _ row: inout ServerRow, group: any EventLoopGroup, configuration: RPCClientConfiguration, timeout: Duration,
        interval: Duration, logger: Logger
    ) async {
        guard let peer = try? PeerAddress(parsing: row.server) else {
            row.error = "not a HOST:PORT address"
            return
        }
        let client = RPCClient(peer: peer, eventLoop: group.next(), configuration: configuration, logger: logger)
        defer { _ = client.shutdown() }
        do {
            let first = try await status(of: client, timeout: timeout)
            var last = first
            if interval > .zero {
                try await Task.sleep(for: interval)
                last = try await status(of: client, timeout: timeout)
                let seconds = Double(last.uptimeMs &- first.uptimeMs) / 1000
                if seconds > 0 && last.operations >= first.operations {
                    row.opsPerSecond = Double(last.operations - first.operations) / seconds
                }
            }
            row.role = last.role
            row.viewnum = last.view.viewnum
            row.keys = last.keys
            row.bytes = last.bytes
            row.duplicateRows = last.duplicateRows
            row.operations = last.operations
            row.connections = last.connections
            row.transfer = last.transfer.map { transfer in
                let sending = last.role == "primary"
                return ServerRow.Transfer(
                    peer: transfer.peer, direction: sending ? "sending" : "receiving", entriesDone: transfer.entriesDone,
                    entriesTotal: sending ? transfer.entriesTotal : nil, chunks: transfer.chunks)
            }
        } catch {
            row.error = "\(error)"
        }
    }

    private static func status(of client: RPCClient, timeout: Duration) async throws -> ServerStatus {
        try await KVStub(client).serverStatus(timeout: timeout)
    }

    /// `{"view":{…},"servers":[…]}` on one line.
    static func json(view: View, rows: [ServerRow]) throws -> String {
        struct Document: Encodable {
            struct ViewJSON: Encodable {
                var viewnum: UInt64
                var primary: String
                var backup: String
                var acknowledged: Bool
            }
            var view: ViewJSON
            var servers: [ServerRow]
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let document = Document(
            view: .init(viewnum: view.viewnum, primary: view.primary, backup: view.backup, acknowledged: view.acknowledged),
            servers: rows)
        return String(decoding: try encoder.encode(document), as: UTF8.self)
    }

    /// A header line with the view, then one aligned row per server.
    static func table(view: View, rows: [ServerRow]) -> String {
        var out = "view \(view.viewnum)\(view.acknowledged ? "" : " (not yet acknowledged)"): "
            + "primary \(view.primary.isEmpty ? "(none)" : view.primary), backup \(view.backup.isEmpty ? "(none)" : view.backup)\n"
        let header = ["SERVER", "IN VIEW", "ROLE", "VIEW", "KEYS", "OPS/S", "CONNS", "LAST PING", "TRANSFER"]
        var lines = [header]
        for row in rows {
            let transfer: String
            if let error = row.error {
                transfer = "unreachable: \(error)"
            } else if let t = row.transfer {
                let progress = t.entriesTotal.map { total in
                    "\(t.entriesDone)/\(total) entries (\(total == 0 ? 100 : Int(Double(t.entriesDone) * 100 / Double(total)))%)"
                } ?? "\(t.entriesDone) entries"
                transfer = "\(t.direction) \(progress), \(t.chunks) chunks, \(t.direction == "sending" ? "to" : "from") \(t.peer)"
            } else {
                transfer = "-"
            }
            lines.append([
                row.server, row.inView, row.role ?? "?", row.viewnum.map { "\($0)" } ?? "?", row.keys.map { "\($0)" } ?? "?",
                row.opsPerSecond.map { String(format: "%.0f", $0) } ?? "-", row.connections.map { "\($0)" } ?? "?",
                row.lastPingMsAgo.map { "\($0) ms ago" } ?? "-", transfer,
            ])
        }
        var widths = [Int](repeating: 0, count: header.count)
        for line in lines { for (i, cell) in line.enumerated() { widths[i] = max(widths[i], cell.count) } }
        for line in lines {
            var text = ""
            for (i, cell) in line.enumerated() {
                text += i == line.count - 1 ? cell : cell.padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0)
            }
            out += text + "\n"
        }
        return out
    }
}
