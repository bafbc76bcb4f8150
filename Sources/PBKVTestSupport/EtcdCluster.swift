import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Why an etcd cluster for tests could not be run.
public enum EtcdClusterError: Error, CustomStringConvertible {
    /// `/usr/bin/etcd` (Debian's etcd-server) is missing.
    case etcdNotInstalled(path: String)
    /// A member did not become ready in time; `log` is the end of its output.
    case notReady(member: String, after: Duration, log: String)
    case badMemberCount(Int)

    public var description: String {
        switch self {
        case .etcdNotInstalled(let path):
            "\(path) not found: run `make deps` (it installs Debian's etcd-server; root or sudo needed)"
        case .notReady(let member, let after, let log):
            "etcd member \(member) was not ready after \(after); the end of its log:\n\(log)"
        case .badMemberCount(let n):
            "an etcd cluster for tests has 1 or 3 members, not \(n)"
        }
    }
}

/// One etcd member started by an `EtcdCluster`, on loopback ports of its own, with a data
/// directory of its own. Signalled only by its pid.
public final class EtcdProcess: @unchecked Sendable {
    // @unchecked: `Process` is not Sendable; `process` is only read or replaced under `lock`, the rest is immutable.
    public let name: String
    /// The client address, `127.0.0.1:PORT` (what `--etcd` takes).
    public let clientEndpoint: String
    /// The peer URL, `http://127.0.0.1:PORT`.
    public let peerURL: String
    public let dataDirectory: URL
    public let logFile: URL
    private let initialCluster: String
    private let lock = NSLock()
    private var process: Process?

    init(name: String, clientEndpoint: String, peerURL: String, dataDirectory: URL, logFile: URL, initialCluster: String) {
        self.name = name
        self.clientEndpoint = clientEndpoint
        self.peerURL = peerURL
        self.dataDirectory = dataDirectory
        self.logFile = logFile
        self.initialCluster = initialCluster
    }

    /// The pid of the running process (0 when never started).
    public var pid: Int32 { lock.withLock { process?.processIdentifier ?? 0 } }
    public var isRunning: Bool { lock.withLock { process?.isRunning ?? false } }

    /// Starts (or starts again, on the same ports and data directory) this member.
    func start(executable: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = [
            "--name", name, "--data-dir", dataDirectory.path,
            "--listen-client-urls", "http://\(clientEndpoint)", "--advertise-client-urls", "http://\(clientEndpoint)",
            "--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
            "--initial-cluster", initialCluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "pbkv-test-\(getpid())",
        ]
        if !FileManager.default.fileExists(atPath: logFile.path) {
            _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
        }
        let handle = try FileHandle(forWritingTo: logFile)
        handle.seekToEndOfFile()
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? handle.close()
        lock.withLock { self.process = process }
    }

    /// Sends `signal` to this process only (by pid), if it runs.
    public func signal(_ signal: Int32) {
        let pid = self.pid
        if pid > 0 && isRunning { _ = Glibc.kill(pid, signal) }
    }

    /// SIGSTOP: the member stops answering (connections still open, nothing replies).
    public func pause() { signal(SIGSTOP) }
    /// SIGCONT after `pause()`.
    public func resume() { signal(SIGCONT) }

    /// SIGKILL, then waits until it is gone (at most `timeout`).
    public func kill(timeout: Duration = .seconds(5)) async {
        signal(SIGKILL)
        await waitForExit(timeout: timeout)
    }

    /// SIGTERM (after SIGCONT, in case it is paused); SIGKILL if still running after `grace`.
    public func stop(grace: Duration = .seconds(3)) async {
        guard isRunning else { return }
        signal(SIGCONT)
        signal(SIGTERM)
        if await waitForExit(timeout: grace) { return }
        await kill()
    }

    @discardableResult
    private func waitForExit(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    /// The last `bytes` of the member's output.
    public func logTail(bytes: Int = 2000) -> String {
        guard let data = try? Data(contentsOf: logFile) else { return "(no log)" }
        return String(decoding: data.suffix(bytes), as: UTF8.self)
    }
}

/// One or three etcd members started for a test, on random free loopback ports (never 2379 or
/// 2380, so a system-wide etcd is left alone) with temporary data directories. Everything is
/// stopped by pid; `shutdown()` stops the members and removes the directories.
///
/// Readiness is checked by a probe the caller passes (PBKVTestSupport has no HTTP client): a
/// member is ready when the probe of its client endpoint returns true. With PBKVEtcd:
///
///     let etcd = try await EtcdCluster.start(members: 3) { await EtcdClient.isServing(endpoint: $0) }
///     etcd.endpoints          // ["127.0.0.1:41234", …]; etcd.endpointList for --etcd
///     etcd.members[0].pause() // SIGSTOP; .resume(), await .kill(), await .stop()
///     try await etcd.restart(0)
///     await etcd.shutdown()   // also when the test fails
public final class EtcdCluster: Sendable {
    /// Whether the member at an endpoint serves requests (e.g. a linearizable read succeeds).
    public typealias Probe = @Sendable (_ endpoint: String) async -> Bool

    public static let executable = "/usr/bin/etcd"

    public let members: [EtcdProcess]
    /// The directory holding every member's data directory and log.
    public let directory: URL
    private let probe: Probe
    private let readyTimeout: Duration

    /// The client endpoints of all members, `HOST:PORT`, in member order.
    public var endpoints: [String] { members.map(\.clientEndpoint) }

    /// The endpoints as `pbkv viewservice --etcd` takes them: `HOST:PORT,HOST:PORT,…`.
    public var endpointList: String { endpoints.joined(separator: ",") }

    private init(members: [EtcdProcess], directory: URL, probe: @escaping Probe, readyTimeout: Duration) {
        self.members = members
        self.directory = directory
        self.probe = probe
        self.readyTimeout = readyTimeout
    }

    /// Starts `members` (1 or 3) members and waits until each one serves (at most `readyTimeout`).
    /// A member that exits at once (another process took a port between our check and its bind)
    /// makes it start again on other ports, up to three times.
    public static func start(
        members count: Int = 1, readyTimeout: Duration = .seconds(30), probe: @escaping Probe
    ) async throws -> EtcdCluster {
        guard FileManager.default.isExecutableFile(atPath: executable) else { throw EtcdClusterError.etcdNotInstalled(path: executable) }
        guard count == 1 || count == 3 else { throw EtcdClusterError.badMemberCount(count) }
        var attempt = 1
        while true {
            let cluster = try makeCluster(members: count, probe: probe, readyTimeout: readyTimeout)
            do {
                for member in cluster.members { try member.start(executable: executable) }
                for member in cluster.members { try await cluster.waitUntilReady(member) }
                return cluster
            } catch {
                let exited = cluster.members.contains { !$0.isRunning }
                await cluster.shutdown()
                if exited && attempt < 3 {
                    attempt += 1
                    continue
                }
                throw error
            }
        }
    }

    /// Members on free loopback ports (never 2379 or 2380), not started yet.
    private static func makeCluster(members count: Int, probe: @escaping Probe, readyTimeout: Duration) throws -> EtcdCluster {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("pbkv-etcd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var ports: [Int] = []
        while ports.count < 2 * count {
            let port = try ProcessCluster.freePort()
            if port != 2379 && port != 2380 && !ports.contains(port) { ports.append(port) }
        }
        let names = (1...count).map { "m\($0)" }
        let peerURLs = (0..<count).map { "http://127.0.0.1:\(ports[2 * $0 + 1])" }
        let initialCluster = zip(names, peerURLs).map { "\($0)=\($1)" }.joined(separator: ",")
        let processes = (0..<count).map { i in
            EtcdProcess(
                name: names[i], clientEndpoint: "127.0.0.1:\(ports[2 * i])", peerURL: peerURLs[i],
                dataDirectory: directory.appendingPathComponent(names[i]),
                logFile: directory.appendingPathComponent("\(names[i]).log"), initialCluster: initialCluster)
        }
        return EtcdCluster(members: processes, directory: directory, probe: probe, readyTimeout: readyTimeout)
    }

    /// Starts member `index` again (after `kill()` or `stop()`), same ports and data, and waits
    /// until it serves.
    public func restart(_ index: Int) async throws {
        let member = members[index]
        await member.stop()
        try member.start(executable: Self.executable)
        try await waitUntilReady(member)
    }

    /// Polls `probe` until the member serves or `readyTimeout` passes.
    public func waitUntilReady(_ member: EtcdProcess) async throws {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < readyTimeout {
            guard member.isRunning else {
                throw EtcdClusterError.notReady(member: member.name, after: ContinuousClock.now - start, log: "(exited)\n" + member.logTail())
            }
            if await probe(member.clientEndpoint) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw EtcdClusterError.notReady(member: member.name, after: readyTimeout, log: member.logTail())
    }

    /// Stops every member (SIGTERM, then SIGKILL) and removes the data directories and logs.
    public func shutdown() async {
        for member in members { await member.stop() }
        try? FileManager.default.removeItem(at: directory)
    }
}
