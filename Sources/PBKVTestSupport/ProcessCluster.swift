import Foundation
import Logging
import NIOCore
import PBKVCore
import PBKVClient
import PBKVTLS
import PBKVWire

#if canImport(Glibc)
import Glibc
#endif

/// One pbkv process started by a `ProcessCluster`.
public final class ClusterProcess: @unchecked Sendable {
    // @unchecked: `Process` is not Sendable; it is only started once and then read or signalled by pid.
    public let name: String
    public let address: String
    public let process: Process
    public let logFile: URL

    init(name: String, address: String, process: Process, logFile: URL) {
        self.name = name
        self.address = address
        self.process = process
        self.logFile = logFile
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    /// Sends `signal` to this process (and only this one).
    public func signal(_ signal: Int32) {
        if process.isRunning { kill(pid, signal) }
    }

    /// SIGKILL, then waits for it to be gone.
    public func killAndWait() {
        signal(SIGKILL)
        process.waitUntilExit()
    }
}

/// Starts a view service and KV servers as real `pbkv` processes on loopback, for `pbkv local`,
/// chaos runs and end-to-end tests. Kills only what it started, by pid.
public final class ProcessCluster: @unchecked Sendable {
    // @unchecked: the process list is guarded by `lock`.
    public let executable: URL
    public let host: String
    public let pingIntervalMs: Int
    public let logDirectory: URL
    /// Arguments every view service and server gets after its own (e.g. `--log-format json`).
    public let memberArguments: [String]
    private let lock = NSLock()
    private var processes: [ClusterProcess] = []
    /// Every view service started (one, or the members of a replicated one), in order.
    private var viewServices: [String] = []
    /// The fewest `--dead-pings` of any view service started: servers base read leases on it.
    private var deadPings = Int.max

    /// What servers and clients are given: the view service address(es), comma-separated.
    public var viewServiceAddress: String { lock.withLock { viewServices.joined(separator: ",") } }

    /// With mutual TLS: the cluster's own CA, made in the log directory (`tls/`).
    public let tlsDirectory: String?
    /// With mutual TLS: a client certificate of the cluster's CA, for the clients of tools and
    /// tests (`KVClientConfiguration.tls`, `RPCClientConfiguration.tls`); nil when plaintext.
    public let clientTLS: MutualTLS?

    /// A cluster whose processes log under `logDirectory` (a new temporary one by default).
    /// `tls` (the default) makes a CA for it and gives every process a certificate for its
    /// address; false runs everything with `--insecure`. `memberArguments` go to every view
    /// service and server it starts.
    public init(
        executable: URL, host: String = "127.0.0.1", pingIntervalMs: Int = 100, logDirectory: URL? = nil, tls: Bool = true,
        memberArguments: [String] = []
    ) throws {
        self.executable = executable
        self.memberArguments = memberArguments
        self.host = host
        self.pingIntervalMs = pingIntervalMs
        let dir = logDirectory ?? FileManager.default.temporaryDirectory.appendingPathComponent("pbkv-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        self.logDirectory = dir
        if tls {
            let tlsDirectory = dir.appendingPathComponent("tls").path
            try CertificateAuthority.create(in: tlsDirectory).issue(name: "client", role: .client, hosts: [])
            self.tlsDirectory = tlsDirectory
            self.clientTLS = try MutualTLS(directory: tlsDirectory, name: "client")
        } else {
            self.tlsDirectory = nil
            self.clientTLS = nil
        }
    }

    /// A client of this cluster (its view services, its TLS): `configuration` with `tls` set.
    public func client(_ configuration: KVClientConfiguration = .init(), logger: Logger) throws -> KVClient {
        var configuration = configuration
        configuration.tls = clientTLS
        return try KVClient(viewService: viewServiceAddress, configuration: configuration, logger: logger)
    }

    /// A raw RPC client of one process of this cluster (its TLS, with the client certificate).
    public func rpcClient(to address: String, eventLoop: any EventLoop, logger: Logger) throws -> RPCClient {
        var configuration = RPCClientConfiguration()
        configuration.tls = clientTLS
        return RPCClient(peer: try PeerAddress(parsing: address), eventLoop: eventLoop, configuration: configuration, logger: logger)
    }

    /// `--tls DIR --tls-name NAME` with a server certificate for `address` (issued once), or `--insecure`.
    private func securityArguments(for address: String) throws -> [String] {
        guard let tlsDirectory else { return ["--insecure"] }
        let name = "server-" + address.replacingOccurrences(of: ":", with: "_")
        if !FileManager.default.fileExists(atPath: CertificateAuthority.certificatePath(tlsDirectory, name)) {
            try CertificateAuthority(directory: tlsDirectory).issue(name: name, role: .server, hosts: [address])
        }
        return ["--tls", tlsDirectory, "--tls-name", name]
    }

    /// The `pbkv` binary built beside the running binary: a test binary (tests run from the
    /// build directory, where `swift build --build-tests` also puts `pbkv`) or `pbkv-tools`.
    public static func builtExecutable() throws -> URL {
        let url = currentExecutable.deletingLastPathComponent().appendingPathComponent("pbkv")
        // The test bundle may sit one level deeper (`pbkvPackageTests.xctest/...`).
        let candidates = [url, currentExecutable.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("pbkv")]
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
            throw ClusterError.notReady("no pbkv binary beside \(currentExecutable.path): run `swift build --build-tests` first")
        }
        return found
    }

    /// The running binary.
    public static var currentExecutable: URL {
        URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
    }

    /// Starts a view service with its own data directory under the log directory. `address`
    /// restarts the one at that address (same data directory); nil starts a new one (one more
    /// member when `extraArguments` make it replicated, e.g. `--etcd`).
    @discardableResult
    public func startViewService(address: String? = nil, deadPings: Int = 5, extraArguments: [String] = []) throws -> ClusterProcess {
        let address = try address ?? "\(host):\(Self.freePort(host: host))"
        let dataDirectory = logDirectory.appendingPathComponent("viewservice-\(address.replacingOccurrences(of: ":", with: "_"))").path
        let proc = try launch(name: "viewservice", address: address, arguments: [
            "viewservice", "--listen", address, "--data-dir", dataDirectory,
        ] + securityArguments(for: address) + [
            "--ping-interval-ms", "\(pingIntervalMs)", "--dead-pings", "\(deadPings)",
        ] + extraArguments + memberArguments)
        lock.withLock {
            if !viewServices.contains(address) { viewServices.append(address) }
            self.deadPings = min(self.deadPings, deadPings)
        }
        return proc
    }

    /// The view services' running processes.
    public var viewServiceProcesses: [ClusterProcess] {
        lock.withLock { viewServices }.compactMap { process(at: $0) }
    }

    /// Starts a KV server (fresh, empty). `address` reuses a port (a restart); nil picks a free one.
    /// Its read leases are based on the view services' dead interval (`--dead-interval-ms`).
    @discardableResult
    public func startServer(name: String, address: String? = nil, extraArguments: [String] = []) throws -> ClusterProcess {
        let address = try address ?? "\(host):\(Self.freePort(host: host))"
        let deadPings = lock.withLock { self.deadPings == .max ? 5 : self.deadPings }
        return try launch(name: name, address: address, arguments: [
            "server", "--listen", address, "--viewservice", viewServiceAddress, "--ping-interval-ms", "\(pingIntervalMs)",
            "--dead-interval-ms", "\(pingIntervalMs * deadPings)",
        ] + securityArguments(for: address) + extraArguments + memberArguments)
    }

    /// Starts KV servers named `names` one after another, each waited for through `client`:
    /// the first becomes the acknowledged primary, the second its backup, the rest wait idle.
    public func startServersInOrder(_ names: [String], watching client: KVClient, within limit: Duration = .seconds(15))
        async throws -> [ClusterProcess]
    {
        var servers: [ClusterProcess] = []
        for (i, name) in names.enumerated() {
            let server = try startServer(name: name)
            servers.append(server)
            guard i < 2 else { continue }
            _ = try await client.waitForView(within: limit) { view in
                view.acknowledged && (i == 0 ? view.primary == server.address : view.backup == server.address)
            }
        }
        return servers
    }

    /// Every process started, in order.
    public var all: [ClusterProcess] { lock.withLock { processes } }

    /// The running process serving `address`, if any.
    public func process(at address: String) -> ClusterProcess? {
        all.last { $0.address == address && $0.isRunning }
    }

    /// SIGKILLs every process this cluster started that still runs.
    public func stopAll() {
        for p in all where p.isRunning {
            p.signal(SIGTERM)
        }
        let deadline = Date().addingTimeInterval(2)
        for p in all {
            while p.isRunning && Date() < deadline { usleep(20_000) }
            if p.isRunning { p.killAndWait() }
        }
    }

    private func launch(name: String, address: String, arguments: [String]) throws -> ClusterProcess {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let logFile = logDirectory.appendingPathComponent("\(name)-\(address.replacingOccurrences(of: ":", with: "_"))-\(all.count).log")
        guard FileManager.default.createFile(atPath: logFile.path, contents: nil) else {
            throw ClusterError.notReady("cannot create the log file \(logFile.path)")
        }
        let handle = try FileHandle(forWritingTo: logFile)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? handle.close()
        let proc = ClusterProcess(name: name, address: address, process: process, logFile: logFile)
        lock.withLock { processes.append(proc) }
        return proc
    }

    /// A TCP port on `host` that was free a moment ago (bound to port 0, then released).
    public static func freePort(host: String = "127.0.0.1") throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ClusterError.noFreePort }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr(host)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw ClusterError.noFreePort }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard named == 0 else { throw ClusterError.noFreePort }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// Why a local cluster could not be run.
public enum ClusterError: Error, CustomStringConvertible {
    case noFreePort
    case notReady(String)

    public var description: String {
        switch self {
        case .noFreePort: "no free TCP port on loopback"
        case .notReady(let what): "cluster not ready: \(what)"
        }
    }
}
