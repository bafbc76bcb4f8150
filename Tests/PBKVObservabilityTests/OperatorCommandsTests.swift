import Foundation
import Logging
import PBKVCore
import PBKVClient
import PBKVTestSupport
import PBKVWire
import Synchronization
import Testing

/// A `pbkv` command run by a test: its standard output collected as it comes.
final class CommandRun: Sendable {
    let process: Process
    private let output = CapturedLines()

    init(_ executable: URL, _ arguments: [String]) throws {
        process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        let output = self.output
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            guard !data.isEmpty else {
                handle.readabilityHandler = nil
                return
            }
            output.append(String(decoding: data, as: UTF8.self))
        }
        try process.run()
    }

    var stdout: String { output.all.joined() }
    var lines: [String] { stdout.split(separator: "\n").map(String.init) }

    /// Polls until `condition` holds on the output so far; fails after `limit`.
    func waitFor(_ what: String, within limit: Duration = .seconds(20), _ condition: ([String]) -> Bool) async throws {
        let deadline = ContinuousClock.now + limit
        while !condition(lines) {
            guard ContinuousClock.now < deadline else {
                throw ClusterError.notReady("\(what) within \(limit); output so far:\n\(stdout)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Waits for the command to exit on its own (the output read to its end); fails after `limit`.
    func waitForExit(within limit: Duration = .seconds(30)) async throws -> Int32 {
        let deadline = ContinuousClock.now + limit
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                process.terminate()
                throw ClusterError.notReady("pbkv \(process.arguments ?? []) did not finish within \(limit)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        try await Task.sleep(for: .milliseconds(50))  // the last bytes of the pipe
        return process.terminationStatus
    }

    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}

@Suite("Operator commands against process clusters", .serialized)
struct OperatorCommandsTests {
    private let logger: Logger = {
        var logger = Logger(label: "pbkv.test")
        logger.logLevel = .critical
        return logger
    }()

    @Test("pbkv status (mutual TLS, client certificate) shows each server's role, view and keys; --log-format json and --metrics work")
    func statusShowsTheCluster() async throws {
        let cluster = try ProcessCluster(executable: try ProcessCluster.builtExecutable(), pingIntervalMs: 100, tls: true)
        defer { cluster.stopAll() }
        let tls = try #require(cluster.tlsDirectory)
        try cluster.startViewService()
        let client = try cluster.client(logger: logger)
        let metricsPort = try ProcessCluster.freePort()
        let s1 = try cluster.startServer(
            name: "s1", extraArguments: ["--log-format", "json", "--metrics", "127.0.0.1:\(metricsPort)"])
        _ = try await client.waitForView(within: .seconds(15)) { $0.acknowledged && $0.primary == s1.address }
        let s2 = try cluster.startServer(name: "s2")
        let view = try await client.waitForView(within: .seconds(15)) { $0.acknowledged && $0.backup == s2.address }
        let s3 = try cluster.startServer(name: "s3")
        for i in 0..<5 { try await client.put("key\(i)", "value\(i)") }
        await client.close()
        let security = ["--tls", tls, "--tls-name", "client"]

        // The idle server shows once the view service heard from it.
        var document: [String: Any] = [:]
        var servers: [[String: Any]] = []
        let deadline = ContinuousClock.now + .seconds(15)
        repeat {
            let run = try CommandRun(
                cluster.executable, ["status", "--json", "--sample-ms", "200", "--viewservice", cluster.viewServiceAddress] + security)
            #expect(try await run.waitForExit() == 0)
            document = try jsonObject(run.stdout)
            servers = try #require(document["servers"] as? [[String: Any]])
        } while servers.count < 3 && ContinuousClock.now < deadline
        let shownView = try #require(document["view"] as? [String: Any])
        #expect(shownView["primary"] as? String == s1.address)
        #expect(shownView["backup"] as? String == s2.address)
        #expect((shownView["viewnum"] as? NSNumber)?.uint64Value == view.viewnum)
        #expect(servers.map { $0["server"] as? String } == [s1.address, s2.address, s3.address])
        #expect(servers.map { $0["in_view"] as? String } == ["primary", "backup", "idle"])
        #expect(servers.map { $0["role"] as? String } == ["primary", "backup", "idle"])
        #expect(servers.map { ($0["keys"] as? NSNumber)?.intValue } == [5, 5, 0])
        #expect(servers.map { ($0["viewnum"] as? NSNumber)?.uint64Value } == [view.viewnum, view.viewnum, view.viewnum])
        #expect(servers.allSatisfy { $0["error"] == nil && $0["ops_per_second"] != nil && $0["last_ping_ms_ago"] != nil })
        #expect((servers[0]["operations"] as? NSNumber)?.intValue ?? 0 >= 5)

        let table = try CommandRun(cluster.executable, ["status", "--sample-ms", "0", "--viewservice", cluster.viewServiceAddress] + security)
        #expect(try await table.waitForExit() == 0)
        #expect(table.lines.first == "view \(view.viewnum): primary \(s1.address), backup \(s2.address)")
        #expect(table.lines.dropFirst().first?.hasPrefix("SERVER") == true)
        #expect(table.lines.count == 5)
        #expect(table.lines[2].hasPrefix(s1.address) && table.lines[2].contains("primary"))

        // Without a certificate (plaintext at a TLS port) there is no status, and it says so.
        let refused = try CommandRun(
            cluster.executable, ["status", "--insecure", "--timeout", "2", "--viewservice", cluster.viewServiceAddress])
        #expect(try await refused.waitForExit() == 2)

        // --log-format json: every line of s1's log is a JSON object; role changes carry their metadata.
        let log = try String(contentsOf: s1.logFile, encoding: .utf8)
        let objects = try log.split(separator: "\n").map { try jsonObject(String($0)) }
        let roleChange = try #require(objects.first { $0["message"] as? String == "role changed" })
        let metadata = try #require(roleChange["metadata"] as? [String: Any])
        #expect(metadata["role.to"] as? String == "primary")
        #expect(metadata["server"] as? String == s1.address)

        // --metrics: the primary's scrape agrees with the status.
        let (code, scrape) = try await Scrape.get("http://127.0.0.1:\(metricsPort)/metrics")
        #expect(code == 200)
        #expect(scrape.value("pbkv_role", ["role": "primary"]) == 1)
        #expect(scrape.value("pbkv_keys") == 5)
        #expect(scrape.value("pbkv_rpc_calls_total", ["method": "Put", "code": "OK"]) ?? 0 >= 5)
        #expect(scrape.value("pbkv_rpc_calls_total", ["method": "ServerStatus", "code": "OK"]) ?? 0 >= 1)
    }

    @Test("pbkv view --watch prints the view, then each change as it happens")
    func viewWatchFollowsAFailover() async throws {
        let cluster = try ProcessCluster(executable: try ProcessCluster.builtExecutable(), pingIntervalMs: 100, tls: false)
        defer { cluster.stopAll() }
        try cluster.startViewService()
        let client = try cluster.client(logger: logger)
        let servers = try await cluster.startServersInOrder(["s1", "s2"], watching: client)
        await client.close()
        let watch = try CommandRun(
            cluster.executable, ["view", "--watch", "--json", "--insecure", "--viewservice", cluster.viewServiceAddress])
        defer { watch.stop() }
        func views(_ lines: [String]) -> [[String: Any]] { lines.compactMap { try? jsonObject($0) } }
        try await watch.waitFor("the current view") { lines in
            views(lines).contains { $0["primary"] as? String == servers[0].address && $0["backup"] as? String == servers[1].address }
        }
        servers[0].killAndWait()
        try await watch.waitFor("the backup promoted") { lines in
            views(lines).contains { $0["primary"] as? String == servers[1].address && $0["acknowledged"] as? Bool == true }
        }
        let shown = views(watch.lines)
        #expect(shown.count == watch.lines.count)  // every line is a JSON object
        let numbers = shown.compactMap { ($0["viewnum"] as? NSNumber)?.uint64Value }
        #expect(numbers == numbers.sorted())
        #expect(shown.allSatisfy { ($0["time"] as? String)?.hasSuffix("Z") == true })
        // One line per change: no two consecutive lines show the same view.
        for (a, b) in zip(shown, shown.dropFirst()) {
            #expect(!(a["viewnum"] as? NSNumber == b["viewnum"] as? NSNumber && a["acknowledged"] as? Bool == b["acknowledged"] as? Bool))
        }
    }

    @Test("pbkv local --log-format json passes the format on: every line of every process's log is a JSON object")
    func localPassesTheLogFormatOn() async throws {
        let run = try CommandRun(
            try ProcessCluster.builtExecutable(),
            ["local", "--insecure", "--log-format", "json", "--operations", "30", "--kill-after", "15"])
        defer { run.stop() }
        #expect(try await run.waitForExit(within: .seconds(60)) == 0)
        let announced = try #require(run.lines.first { $0.contains("; logs in ") })
        let directory = URL(fileURLWithPath: String(try #require(announced.components(separatedBy: "; logs in ").last)))
        defer { try? FileManager.default.removeItem(at: directory) }
        let logs = try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "log" }
        #expect(logs.count == 4)  // the view service and three servers
        var messages: [String] = []
        for log in logs {
            let lines = try String(contentsOf: log, encoding: .utf8).split(separator: "\n")
            #expect(!lines.isEmpty)
            for line in lines { messages.append(try #require(try jsonObject(String(line))["message"] as? String)) }
        }
        #expect(messages.contains("role changed"))
        #expect(messages.contains("view service is leader"))
    }
}
