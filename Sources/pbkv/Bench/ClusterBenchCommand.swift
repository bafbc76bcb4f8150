import ArgumentParser
import Foundation
import Logging
import PBKVClient
import PBKVTestSupport
import PBKVWire
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `pbkv bench-cluster`: the measurements that need their own cluster of processes — failover
/// gap over several SIGKILLs of the primary, state transfer of a large state to a new backup
/// (with and without compression), and the primary's memory per key. `make bench` runs it.
struct ClusterBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-cluster",
        abstract: "Measure failover gap, state transfer and memory per key on local clusters of processes.")

    @Option(help: "Sections to run, comma separated: failover, transfer, memory.")
    var sections: String = "failover,transfer,memory"
    @Option(help: "Failover: number of primary kills.")
    var failoverTrials: Int = 5
    @Option(help: "Failover: concurrent writers.")
    var failoverClients: Int = 4
    @Option(help: "Transfer: keys held by the primary.")
    var transferKeys: Int = 1_000_000
    @Option(help: "Transfer: value size in bytes (text).")
    var transferValueSize: Int = 100
    @Option(help: "Memory: keys written (16 B values).")
    var memoryKeys: Int = 1_000_000
    @Option(help: "Clients used to load keys.")
    var fillClients: Int = 50
    @Flag(help: "Print one JSON object per section instead of text.")
    var json = false

    func run() async throws {
        _ = NIOSingletonsInstaller.installOnce
        let wanted = Set(sections.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
        for name in wanted where !["failover", "transfer", "memory"].contains(name) {
            throw ValidationError("--sections: unknown section \"\(name)\" (failover, transfer, memory)")
        }
        if wanted.contains("failover") { try await runFailover() }
        if wanted.contains("transfer") { try await runTransfer() }
        if wanted.contains("memory") { try await runMemory() }
    }

    // MARK: Failover

    /// Writers put continuously; each trial SIGKILLs the current primary and measures the time
    /// from the kill to the first acknowledged Put that was invoked after it (a reply already in
    /// flight from the dead primary does not count). The killed server is restarted empty and
    /// the next trial waits until it is back in an acknowledged view with a backup.
    private func runFailover() async throws {
        let cluster = try ProcessCluster(executable: ProcessCluster.currentExecutable)
        defer { cluster.stopAll() }
        let vs = try cluster.startViewService()
        let watcher = try KVClient(viewService: vs.address, logger: Self.quietLogger)
        for name in ["s1", "s2", "s3"] {
            try cluster.startServer(name: name)
            if name != "s3" {
                _ = try await watcher.waitForView(within: .seconds(15)) { $0.acknowledged && !$0.primary.isEmpty && (name == "s1" || !$0.backup.isEmpty) }
            }
        }
        let recorder = AckRecorder()
        let writers = (0..<failoverClients).map { n in
            Task {
                var config = KVClientConfiguration()
                config.deadline = .seconds(30)
                guard let client = try? KVClient(viewService: vs.address, configuration: config, logger: Self.quietLogger) else { return }
                var i = 0
                while !Task.isCancelled {
                    let invoked = ContinuousClock.now
                    do {
                        try await client.put("failover-\(n)-\(i % 100)", "v\(i)")
                        recorder.record(invokedAt: invoked, completedAt: .now)
                    } catch {}
                    i += 1
                }
                await client.close()
            }
        }
        defer { for writer in writers { writer.cancel() } }

        var gaps: [Double] = []
        for trial in 1...failoverTrials {
            let view = try await watcher.waitForView(within: .seconds(30)) { $0.acknowledged && !$0.backup.isEmpty }
            try await Task.sleep(for: .milliseconds(300))  // steady state
            guard let primary = cluster.process(at: view.primary) else { throw ClusterError.notReady("primary process not found") }
            let killedAt = ContinuousClock.now
            primary.killAndWait()
            let deadline = killedAt + .seconds(30)
            var gap: Duration?
            while gap == nil && ContinuousClock.now < deadline {
                gap = recorder.firstCompletion(invokedAfter: killedAt).map { $0 - killedAt }
                if gap == nil { try await Task.sleep(for: .milliseconds(5)) }
            }
            guard let gap else { throw ClusterError.notReady("no Put was acknowledged within 30 s of the kill") }
            gaps.append(gap.inSeconds)
            if !json { print(String(format: "  failover trial %d: gap %.0f ms", trial, gap.inSeconds * 1000)) }
            try cluster.startServer(name: "s-restart-\(trial)", address: primary.address)
        }
        for writer in writers { writer.cancel() }
        await watcher.close()
        let sorted = gaps.sorted()
        let median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        if json {
            let list = gaps.map { String(format: "%.1f", $0 * 1000) }.joined(separator: ",")
            print(String(format: "{\"section\":\"failover\",\"trials\":%d,\"median_ms\":%.1f,\"max_ms\":%.1f,",
                gaps.count, median * 1000, (sorted.last ?? 0) * 1000) + "\"gaps_ms\":[\(list)]}")
        } else {
            print(String(format: "failover: %d trials, gap median %.0f ms, max %.0f ms (default settings: ping 100 ms, 5 missed pings)",
                gaps.count, median * 1000, (sorted.last ?? 0) * 1000))
        }
    }

    // MARK: State transfer

    /// A primary holding `transferKeys` keys; a new backup joins, once with compression and once
    /// without. Measures the time from the backup's start to the acknowledged view naming it,
    /// logical MB/s, the primary's written bytes, and both processes' peak memory.
    private func runTransfer() async throws {
        let (cluster, vs, watcher, primary) = try await Self.startLonePrimary()
        defer { cluster.stopAll() }
        let fillSeconds = try await Self.fill(viewService: vs.address, keys: transferKeys, clients: fillClients) { i in
            Self.textValue(i, size: transferValueSize)
        }
        let logicalBytes = (0..<transferKeys).reduce(0) { $0 + "key:\($1)".utf8.count } + transferKeys * transferValueSize
        let primaryRSS = ProcStats(pid: primary.pid).residentBytes
        if !json {
            print(String(format: "transfer: primary loaded %d keys of %d B (%.1f MB logical) in %.1f s; primary RSS %.0f MiB",
                transferKeys, transferValueSize, Double(logicalBytes) / 1e6, fillSeconds, Double(primaryRSS) / 1_048_576))
        }
        for (trial, compression) in [true, false].enumerated() {
            ProcStats.resetPeak(pid: primary.pid)
            let writtenBefore = ProcStats(pid: primary.pid).writtenBytes
            let start = ContinuousClock.now
            let backup = try cluster.startServer(name: "backup-\(trial)", extraArguments: compression ? [] : ["--no-compression"])
            _ = try await watcher.waitForView(within: .seconds(300), pollEvery: .milliseconds(2)) {
                $0.acknowledged && $0.backup == backup.address
            }
            let elapsed = (ContinuousClock.now - start).inSeconds
            // The primary logs how long the transfer itself took (first chunk to last ack).
            try await Task.sleep(for: .milliseconds(100))
            let transferSeconds = Self.lastTransferMilliseconds(in: primary.logFile).map { Double($0) / 1000 } ?? elapsed
            let primaryStats = ProcStats(pid: primary.pid)
            let backupStats = ProcStats(pid: backup.pid)
            let wire = primaryStats.writtenBytes - writtenBefore
            let rate = Double(logicalBytes) / 1e6 / transferSeconds
            if json {
                print("{\"section\":\"transfer\",\"compression\":\(compression)," + String(format: "\"keys\":%d,\"value_size\":%d,\"logical_bytes\":%d,\"seconds_to_backup\":%.3f,\"transfer_seconds\":%.3f,\"mb_per_s\":%.1f,\"wire_bytes\":%d,\"primary_peak_rss\":%d,\"backup_peak_rss\":%d}",
                    transferKeys, transferValueSize, logicalBytes, elapsed, transferSeconds, rate, wire,
                    primaryStats.peakResidentBytes, backupStats.peakResidentBytes))
            } else {
                print("transfer (compression \(compression ? "on" : "off")): " + String(format: "backup in the acknowledged view %.2f s after its start; transfer %.2f s, %.0f MB/s logical; primary wrote %.1f MB (%.2f of logical); peak RSS primary %.0f MiB, backup %.0f MiB",
                    elapsed, transferSeconds, rate, Double(wire) / 1e6, Double(wire) / Double(logicalBytes),
                    Double(primaryStats.peakResidentBytes) / 1_048_576, Double(backupStats.peakResidentBytes) / 1_048_576))
            }
            // Remove this backup so the next one joins afresh: the view service drops it after
            // its missed pings, and the primary acknowledges the view without a backup.
            backup.killAndWait()
            _ = try await watcher.waitForView(within: .seconds(15)) { $0.acknowledged && $0.backup.isEmpty }
        }
        await watcher.close()
    }

    // MARK: Memory

    /// The primary's resident memory before and after writing `memoryKeys` keys of 16 B.
    private func runMemory() async throws {
        let (cluster, vs, watcher, primary) = try await Self.startLonePrimary()
        defer { cluster.stopAll() }
        await watcher.close()
        let before = ProcStats(pid: primary.pid).residentBytes
        let seconds = try await Self.fill(viewService: vs.address, keys: memoryKeys, clients: fillClients) { i in
            Self.textValue(i, size: 16)
        }
        // Let the allocator settle after the burst of connections and buffers.
        try await Task.sleep(for: .milliseconds(500))
        let after = ProcStats(pid: primary.pid).residentBytes
        let perKey = Double(after - before) / Double(memoryKeys)
        if json {
            print(String(format: "{\"section\":\"memory\",\"keys\":%d,\"value_size\":16,\"rss_before\":%d,\"rss_after\":%d,\"bytes_per_key\":%.1f,\"fill_seconds\":%.2f}",
                memoryKeys, before, after, perKey, seconds))
        } else {
            print(String(format: "memory: %d keys of 16 B: primary RSS %.0f MiB → %.0f MiB, %.1f bytes per key (%.0f MiB per million keys)",
                memoryKeys, Double(before) / 1_048_576, Double(after) / 1_048_576, perKey, perKey * 1e6 / 1_048_576))
        }
    }

    // MARK: Helpers

    /// A view service and one server, waited for until it is the acknowledged primary; the
    /// returned client watches the view.
    static func startLonePrimary() async throws -> (ProcessCluster, ClusterProcess, KVClient, ClusterProcess) {
        let cluster = try ProcessCluster(executable: ProcessCluster.currentExecutable)
        do {
            let vs = try cluster.startViewService()
            let watcher = try KVClient(viewService: vs.address, logger: quietLogger)
            let primary = try cluster.startServer(name: "primary")
            _ = try await watcher.waitForView(within: .seconds(15)) { $0.acknowledged && $0.primary == primary.address }
            return (cluster, vs, watcher, primary)
        } catch {
            cluster.stopAll()
            throw error
        }
    }

    static let quietLogger: Logger = {
        var logger = Logger(label: "pbkv.bench")
        logger.logLevel = .critical
        return logger
    }()

    /// Deterministic English-like text of `size` bytes for key `index` (compresses like text).
    static func textValue(_ index: Int, size: Int) -> String {
        let words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "replica", "primary",
                     "backup", "view", "service", "value", "key", "store", "order", "client", "server", "write"]
        var rng = SplitMix64(seed: UInt64(index) &+ 1)
        var text = "\(index) "
        while text.utf8.count < size {
            text += words[Int(rng.next() % UInt64(words.count))] + " "
        }
        return String(text.utf8.prefix(size))!
    }

    /// Puts keys `key:0` … with `clients` concurrent clients; returns the seconds it took.
    static func fill(viewService: String, keys: Int, clients: Int, value: @escaping @Sendable (Int) -> String) async throws -> Double {
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for n in 0..<clients {
                group.addTask {
                    let client = try KVClient(viewService: viewService, logger: quietLogger)
                    var index = n
                    while index < keys {
                        try await client.put("key:\(index)", value(index))
                        index += clients
                    }
                    await client.close()
                }
            }
            try await group.waitForAll()
        }
        return (ContinuousClock.now - start).inSeconds
    }

    /// The `milliseconds` of the last "state transfer completed" line of a server's log.
    static func lastTransferMilliseconds(in logFile: URL) -> Int? {
        guard let text = try? String(contentsOf: logFile, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n").reversed() where line.contains("state transfer completed") {
            guard let range = line.range(of: "milliseconds=") else { continue }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
        return nil
    }
}

/// Acknowledged Puts of the failover writers: (invoked, completed) pairs.
private final class AckRecorder: Sendable {
    private let acks = Mutex<[(invoked: ContinuousClock.Instant, completed: ContinuousClock.Instant)]>([])

    func record(invokedAt: ContinuousClock.Instant, completedAt: ContinuousClock.Instant) {
        acks.withLock { $0.append((invokedAt, completedAt)) }
    }

    /// The earliest completion of a Put invoked after `instant`.
    func firstCompletion(invokedAfter instant: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        acks.withLock { list in list.lazy.filter { $0.invoked > instant }.map(\.completed).min() }
    }
}

/// Figures of a child process from /proc (Linux): resident and peak memory, bytes written.
struct ProcStats {
    var residentBytes = 0
    var peakResidentBytes = 0
    /// Bytes passed to write-like system calls (`wchar`): for a server, what it sent on sockets.
    var writtenBytes = 0

    init(pid: Int32) {
        if let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) {
            for line in status.split(separator: "\n") {
                let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                guard parts.count >= 2, let kib = Int(parts[1]) else { continue }
                if parts[0] == "VmRSS:" { residentBytes = kib * 1024 }
                if parts[0] == "VmHWM:" { peakResidentBytes = kib * 1024 }
            }
        }
        if let io = try? String(contentsOfFile: "/proc/\(pid)/io", encoding: .utf8) {
            for line in io.split(separator: "\n") where line.hasPrefix("wchar:") {
                writtenBytes = Int(line.dropFirst("wchar:".count).trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
    }

    /// Resets the peak resident size (VmHWM) to the current one (`/proc/PID/clear_refs`, value 5).
    static func resetPeak(pid: Int32) {
        try? "5".write(toFile: "/proc/\(pid)/clear_refs", atomically: false, encoding: .utf8)
    }
}

/// Makes async code of the benchmark run on NIO's threads (one thread hop less per request).
enum NIOSingletonsInstaller {
    static let installOnce: Bool = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
}
