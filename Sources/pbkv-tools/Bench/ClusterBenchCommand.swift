import ArgumentParser
import PBKVCommandLine
import Foundation
import Logging
import PBKVCore
import PBKVClient
import PBKVEtcd
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
/// (with and without compression), the primary's memory per key, and the replicated view
/// service's own failover (`vs-failover`, on etcd). `make bench` runs it.
struct ClusterBenchCommand: AsyncParsableCommand {
    static let configuration = Tool.benchCluster.configuration

    @Option(help: "Sections to run, comma separated: failover, transfer, memory, vs-failover.")
    var sections: String = "failover,transfer,memory"
    @Option(help: "Failover: number of primary kills.")
    var failoverTrials: Int = 5
    @Flag(help: "Failover: a replicated view service (three processes on a three-member etcd) instead of one with a file store.")
    var etcd = false
    @Option(help: "vs-failover: trials of each measurement (leader kill; leader and primary killed together).")
    var vsFailoverTrials: Int = 7
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
    @OptionGroup var security: OwnClusterSecurityOptions
    @Flag(help: "Print one JSON object per section instead of text.")
    var json = false
    @Option(help: "Also append each section's JSON object, one per line, to this file (text still goes to stdout).")
    var results: String?
    @Flag(help: "Show no progress on standard error (a bar on a terminal, a few lines otherwise).")
    var noProgress = false
    @OptionGroup var logging: LoggingOptions

    private var display: ProgressDisplay { ProgressDisplay(enabled: !noProgress) }

    func run() async throws {
        _ = logging.bootstrap(label: "pbkv.bench-cluster")
        _ = NIOSingletonsInstaller.installOnce
        let wanted = Set(sections.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
        for name in wanted where !Self.sectionNames.contains(name) {
            throw ValidationError("--sections: unknown section \"\(name)\" (\(Self.sectionNames.joined(separator: ", ")))")
        }
        guard failoverTrials > 0, vsFailoverTrials > 0 else { throw ValidationError("--failover-trials and --vs-failover-trials must be positive") }
        if wanted.contains("failover") { try await runFailover() }
        if wanted.contains("vs-failover") { try await runViewServiceFailover() }
        if wanted.contains("transfer") { try await runTransfer() }
        if wanted.contains("memory") { try await runMemory() }
    }

    static let sectionNames = ["failover", "transfer", "memory", "vs-failover"]

    // MARK: Failover

    /// Writers put continuously; each trial SIGKILLs the current primary and measures the time
    /// from the kill to the first acknowledged Put that was invoked after the primary was gone
    /// (a reply already in flight from the dead primary does not count). The killed server is
    /// restarted empty and the next trial waits until it is back in an acknowledged view with a
    /// backup. `--etcd`: the same on a replicated view service.
    private func runFailover() async throws {
        try await Self.withCluster(replicated: etcd, tls: security.tls, memberArguments: logging.memberArguments) { cluster, replicated in
            let (watcher, recorder, writers) = try await Self.startWritingCluster(cluster, writers: failoverClients)
            defer { for writer in writers { writer.cancel() } }

            var gaps: [Double] = []
            for trial in 1...failoverTrials {
                let view = try await watcher.waitForView(within: .seconds(30)) { $0.acknowledged && !$0.backup.isEmpty }
                try await Task.sleep(for: .milliseconds(300))  // steady state
                guard let primary = cluster.process(at: view.primary) else { throw ClusterError.notReady("primary process not found") }
                recorder.clear()
                let killedAt = ContinuousClock.now
                primary.killAndWait()
                // Only Puts invoked once it is gone count (one invoked between `killedAt` and the
                // signal may still be answered by it); the gap counts from before the kill.
                let gap = try await recorder.waitForFirstCompletion(invokedAfter: .now, within: .seconds(30)) - killedAt
                gaps.append(gap.inSeconds)
                if !json { print(String(format: "  failover trial %d: gap %.0f ms", trial, gap.inSeconds * 1000)) }
                try cluster.startServer(name: "s-restart-\(trial)", address: primary.address)
            }
            for writer in writers { writer.cancel() }
            await watcher.close()
            let stats = Self.summary(gaps)
            let viewService = replicated == nil ? "file" : "etcd"
            try report(
                json: "{\"section\":\"failover\",\"view_service\":\"\(viewService)\"," + stats.json + "}",
                text: "failover\(replicated == nil ? "" : " (view service on etcd)"): \(gaps.count) trials, gap " + stats.text
                    + " (default settings: ping 100 ms, 5 missed pings)")
        }
    }

    // MARK: View service failover (etcd)

    /// The replicated view service's own failover, on three view services over a three-member
    /// etcd, with three servers and writers running throughout:
    /// (a) SIGKILL of the leader view service → the first GetView answered by the new leader
    /// (asked directly, every 5 ms), and → the first GetView through a client that knew the old
    /// leader (its rotation and NOT_LEADER hints included); the longest stretch without an
    /// acknowledged Put meanwhile;
    /// (b) SIGKILL of the leader view service and of the primary at the same moment → the first
    /// acknowledged Put invoked after it.
    /// Killed processes are restarted (the view service with the same arguments, the server
    /// empty); each trial waits for agreement on a leader and a settled view, then 0.3–1.3 s.
    private func runViewServiceFailover() async throws {
        try await Self.withCluster(replicated: true, tls: security.tls, memberArguments: logging.memberArguments) { cluster, replicated in
            guard let replicated else { return }
            let (watcher, recorder, writers) = try await Self.startWritingCluster(cluster, writers: failoverClients)
            defer { for writer in writers { writer.cancel() } }

            var leaderGaps: [Double] = []
            var clientGaps: [Double] = []
            var putStalls: [Double] = []
            for trial in 1...vsFailoverTrials {
                _ = try await watcher.waitForView(within: .seconds(30)) { $0.acknowledged && !$0.backup.isEmpty }
                let leader = try await cluster.waitForSteadyViewServices(within: .seconds(30))
                // A client that knows the leader, as every server and client does in steady state.
                let viewClient = try cluster.client(logger: Self.quietLogger)
                _ = try await viewClient.currentView()
                try await Task.sleep(for: Self.steadyThenRandomPhase())
                recorder.clear()
                let killedAt = ContinuousClock.now
                leader.killAndWait()
                async let direct = cluster.waitForViewServiceLeader(within: .seconds(30), excluding: leader.address, pollEvery: .milliseconds(5))
                async let throughClient = Self.firstView(through: viewClient, within: .seconds(30))
                let newLeader = try await direct
                let leaderAt = ContinuousClock.now
                let clientAt = try await throughClient
                await viewClient.close()
                let stall = recorder.longestStall(from: killedAt, to: leaderAt)
                leaderGaps.append((leaderAt - killedAt).inSeconds)
                clientGaps.append((clientAt - killedAt).inSeconds)
                putStalls.append(stall.inSeconds)
                if !json {
                    print(String(format: "  vs-failover (a) trial %d: new leader %@ answered after %.0f ms, a client's GetView after %.0f ms; longest stretch without an acknowledged Put %.0f ms",
                        trial, newLeader.address, (leaderAt - killedAt).inSeconds * 1000, (clientAt - killedAt).inSeconds * 1000, stall.inSeconds * 1000))
                }
                try cluster.startViewService(address: leader.address, extraArguments: replicated.arguments)
            }

            var bothGaps: [Double] = []
            for trial in 1...vsFailoverTrials {
                let leader = try await cluster.waitForSteadyViewServices(within: .seconds(30))
                let view = try await watcher.waitForView(within: .seconds(30)) { $0.acknowledged && !$0.backup.isEmpty }
                try await Task.sleep(for: Self.steadyThenRandomPhase())
                guard let primary = cluster.process(at: view.primary) else { throw ClusterError.notReady("primary process not found") }
                recorder.clear()
                let killedAt = ContinuousClock.now
                leader.signal(SIGKILL)
                primary.signal(SIGKILL)
                leader.killAndWait()
                primary.killAndWait()
                let gap = try await recorder.waitForFirstCompletion(invokedAfter: .now, within: .seconds(30)) - killedAt
                bothGaps.append(gap.inSeconds)
                if !json { print(String(format: "  vs-failover (b) trial %d: leader view service and primary killed together; first acknowledged Put after %.0f ms", trial, gap.inSeconds * 1000)) }
                try cluster.startViewService(address: leader.address, extraArguments: replicated.arguments)
                try cluster.startServer(name: "s-restart-\(trial)", address: primary.address)
            }
            for writer in writers { writer.cancel() }
            await watcher.close()

            let a = Self.summary(leaderGaps), client = Self.summary(clientGaps), stalls = Self.summary(putStalls), b = Self.summary(bothGaps)
            try report(
                json: "{\"section\":\"vs-failover\",\"leader\":{" + a.json + "},\"client_getview\":{" + client.json
                    + "},\"put_stall\":{" + stalls.json + "},\"leader_and_primary\":{" + b.json + "}}",
                text: """
                    vs-failover (a): \(leaderGaps.count) trials, SIGKILL of the leader view service to the first GetView answered by the new leader: \(a.text)
                    vs-failover (a): the same through a client that knew the old leader: \(client.text); longest stretch without an acknowledged Put meanwhile: \(stalls.text)
                    vs-failover (b): \(bothGaps.count) trials, SIGKILL of the leader view service and the primary together to the first acknowledged Put: \(b.text)
                    vs-failover: etcd lease TTL 2 s, campaign every 250 ms; ping 100 ms, 5 missed pings
                    """)
        }
    }

    /// 300 ms of steady state, then 0–1 s at random: each trial starts a fixed time after the
    /// previous election, so without it every kill would fall at the same point of the leader's
    /// keepalive cycle (every TTL/3 ≈ 667 ms) and of etcd's expiry check (every 500 ms).
    private static func steadyThenRandomPhase() -> Duration {
        .milliseconds(300 + Int64.random(in: 0..<1000))
    }

    /// When `client` first got a view (polling every 5 ms).
    private static func firstView(through client: KVClient, within limit: Duration) async throws -> ContinuousClock.Instant {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if (try? await client.currentView()) != nil { return .now }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw ClusterError.notReady("no view service answered a client within \(limit)")
    }

    /// Median and max of `seconds`, as text ("median 523 ms, max 537 ms") and JSON fields.
    private static func summary(_ seconds: [Double]) -> (text: String, json: String) {
        let sorted = seconds.sorted()
        guard !sorted.isEmpty else { return ("no trials", "\"trials\":0") }
        let median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        let max = sorted.last ?? 0
        let list = seconds.map { String(format: "%.1f", $0 * 1000) }.joined(separator: ",")
        return (String(format: "median %.0f ms, max %.0f ms", median * 1000, max * 1000),
            String(format: "\"trials\":%d,\"median_ms\":%.1f,\"max_ms\":%.1f,", sorted.count, median * 1000, max * 1000) + "\"gaps_ms\":[\(list)]")
    }

    /// Three servers (s1 primary, s2 backup, s3 idle) and `writers` clients putting continuously,
    /// each acknowledged Put recorded; the watcher client watches the view.
    private static func startWritingCluster(
        _ cluster: ProcessCluster, writers count: Int
    ) async throws -> (KVClient, AckRecorder, [Task<Void, Never>]) {
        let watcher = try cluster.client(logger: quietLogger)
        for name in ["s1", "s2", "s3"] {
            try cluster.startServer(name: name)
            if name != "s3" {
                _ = try await watcher.waitForView(within: .seconds(15)) { $0.acknowledged && !$0.primary.isEmpty && (name == "s1" || !$0.backup.isEmpty) }
            }
        }
        let recorder = AckRecorder()
        let writers = (0..<count).map { n in
            Task {
                var config = KVClientConfiguration()
                config.deadline = .seconds(30)
                guard let client = try? cluster.client(config, logger: quietLogger) else { return }
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
        return (watcher, recorder, writers)
    }

    /// Runs `body` on a fresh cluster of processes whose view service is one process with a file
    /// store, or (`replicated`) three on a three-member etcd; every process is stopped after,
    /// also when `body` throws.
    private static func withCluster(
        replicated: Bool, tls: Bool, memberArguments: [String], _ body: (ProcessCluster, ReplicatedViewService?) async throws -> Void
    ) async throws {
        let cluster = try ProcessCluster(executable: try ProcessCluster.builtExecutable(), tls: tls, memberArguments: memberArguments)
        var viewService: ReplicatedViewService?
        do {
            if replicated {
                viewService = try await ReplicatedViewService.start(prefix: "bench", in: cluster) { await EtcdClient.isServing(endpoint: $0) }
            } else {
                try cluster.startViewService()
            }
            try await body(cluster, viewService)
        } catch {
            cluster.stopAll()
            await viewService?.shutdown()
            throw error
        }
        cluster.stopAll()
        await viewService?.shutdown()
    }

    // MARK: State transfer

    /// A primary holding `transferKeys` keys; a new backup joins, once with compression and once
    /// without. Measures the time from the backup's start to the acknowledged view naming it,
    /// logical MB/s, the primary's written bytes, and both processes' peak memory.
    private func runTransfer() async throws {
        let (cluster, _, watcher, primary) = try await Self.startLonePrimary(tls: security.tls, memberArguments: logging.memberArguments)
        defer { cluster.stopAll() }
        let fillSeconds = try await Self.fill(cluster, keys: transferKeys, clients: fillClients, display: display) { i in
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
            let title = "transfer (compression \(compression ? "on" : "off"))"
            let backupPID = backup.pid
            try await display.run(title, sample: { Self.transferSample(backup: backupPID, primaryRSS: primaryRSS) }) {
                _ = try await watcher.waitForView(within: .seconds(300), pollEvery: .milliseconds(2)) {
                    $0.acknowledged && $0.backup == backup.address
                }
            }
            let elapsed = (ContinuousClock.now - start).inSeconds
            // The primary logs how long the transfer itself took (first chunk to last ack).
            try await Task.sleep(for: .milliseconds(100))
            let transferSeconds = Self.lastTransferMilliseconds(in: primary.logFile).map { Double($0) / 1000 } ?? elapsed
            let primaryStats = ProcStats(pid: primary.pid)
            let backupStats = ProcStats(pid: backup.pid)
            let wire = primaryStats.writtenBytes - writtenBefore
            let rate = Double(logicalBytes) / 1e6 / transferSeconds
            try report(
                json: "{\"section\":\"transfer\",\"compression\":\(compression)," + String(format: "\"keys\":%d,\"value_size\":%d,\"logical_bytes\":%d,\"fill_seconds\":%.2f,\"primary_rss\":%d,\"seconds_to_backup\":%.3f,\"transfer_seconds\":%.3f,\"mb_per_s\":%.1f,\"wire_bytes\":%d,\"primary_peak_rss\":%d,\"backup_peak_rss\":%d}",
                    transferKeys, transferValueSize, logicalBytes, fillSeconds, primaryRSS, elapsed, transferSeconds, rate, wire,
                    primaryStats.peakResidentBytes, backupStats.peakResidentBytes),
                text: "transfer (compression \(compression ? "on" : "off")): " + String(format: "backup in the acknowledged view %.2f s after its start; transfer %.2f s, %.0f MB/s logical; primary wrote %.1f MB (%.2f of logical); peak RSS primary %.0f MiB, backup %.0f MiB",
                    elapsed, transferSeconds, rate, Double(wire) / 1e6, Double(wire) / Double(logicalBytes),
                    Double(primaryStats.peakResidentBytes) / 1_048_576, Double(backupStats.peakResidentBytes) / 1_048_576))
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
        let (cluster, _, watcher, primary) = try await Self.startLonePrimary(tls: security.tls, memberArguments: logging.memberArguments)
        defer { cluster.stopAll() }
        await watcher.close()
        let before = ProcStats(pid: primary.pid).residentBytes
        let seconds = try await Self.fill(cluster, keys: memoryKeys, clients: fillClients, display: display) { i in
            Self.textValue(i, size: 16)
        }
        // Let the allocator settle after the burst of connections and buffers.
        try await Task.sleep(for: .milliseconds(500))
        let after = ProcStats(pid: primary.pid).residentBytes
        let perKey = Double(after - before) / Double(memoryKeys)
        try report(
            json: String(format: "{\"section\":\"memory\",\"keys\":%d,\"value_size\":16,\"rss_before\":%d,\"rss_after\":%d,\"bytes_per_key\":%.1f,\"fill_seconds\":%.2f}",
                memoryKeys, before, after, perKey, seconds),
            text: String(format: "memory: %d keys of 16 B: primary RSS %.0f MiB → %.0f MiB, %.1f bytes per key (%.0f MiB per million keys)",
                memoryKeys, Double(before) / 1_048_576, Double(after) / 1_048_576, perKey, perKey * 1e6 / 1_048_576))
    }

    // MARK: Helpers

    /// Prints a section's result (its JSON object with `--json`, else `text`) and appends the
    /// JSON object as one line to `--results`.
    private func report(json object: String, text: @autoclosure () -> String) throws {
        print(json ? object : text())
        guard let results else { return }
        guard let file = FileHandle(forWritingAtPath: results) ?? (FileManager.default.createFile(atPath: results, contents: nil)
            ? FileHandle(forWritingAtPath: results) : nil)
        else { throw ValidationError("--results: cannot write \(results)") }
        defer { try? file.close() }
        _ = try file.seekToEnd()
        try file.write(contentsOf: Data((object + "\n").utf8))
    }

    /// A view service and one server, waited for until it is the acknowledged primary; the
    /// returned client watches the view.
    static func startLonePrimary(tls: Bool, memberArguments: [String]) async throws
        -> (ProcessCluster, ClusterProcess, KVClient, ClusterProcess)
    {
        let cluster = try ProcessCluster(executable: try ProcessCluster.builtExecutable(), tls: tls, memberArguments: memberArguments)
        do {
            let vs = try cluster.startViewService()
            let watcher = try cluster.client(logger: quietLogger)
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

    /// Puts keys `key:0` … with `clients` concurrent clients, showing progress on `display`;
    /// returns the seconds it took.
    static func fill(
        _ cluster: ProcessCluster, keys: Int, clients: Int, display: ProgressDisplay, value: @escaping @Sendable (Int) -> String
    ) async throws -> Double {
        let start = ContinuousClock.now
        let loaded = Progress()
        try await display.run("fill \(keys) keys", sample: { BenchCommand.keysSample(loaded.count, of: keys) }) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for n in 0..<clients {
                    group.addTask {
                        let client = try cluster.client(logger: quietLogger)
                        var index = n
                        while index < keys {
                            try await client.put("key:\(index)", value(index))
                            loaded.add(1)
                            index += clients
                        }
                        await client.close()
                    }
                }
                try await group.waitForAll()
            }
        }
        return (ContinuousClock.now - start).inSeconds
    }

    /// Progress of a state transfer, estimated from outside: the backup's resident memory grows
    /// towards the primary's (`primaryRSS`, measured before the transfer) as it loads the state.
    static func transferSample(backup: Int32, primaryRSS: Int) -> (fraction: Double?, detail: String) {
        let backupRSS = ProcStats(pid: backup).residentBytes
        let mib = { (bytes: Int) in String(format: "%.0f", Double(bytes) / 1_048_576) }
        return (primaryRSS > 0 ? min(0.99, Double(backupRSS) / Double(primaryRSS)) : nil,
            "backup resident \(mib(backupRSS)) of the primary's \(mib(primaryRSS)) MiB")
    }

    /// The `milliseconds` of the last "state transfer completed" line of a server's log, text
    /// (`milliseconds=N`) or JSON (`"milliseconds":"N"`).
    static func lastTransferMilliseconds(in logFile: URL) -> Int? {
        guard let text = try? String(contentsOf: logFile, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n").reversed() where line.contains("state transfer completed") {
            for key in ["milliseconds=", "\"milliseconds\":\"", "\"milliseconds\":"] {
                guard let range = line.range(of: key) else { continue }
                return Int(line[range.upperBound...].prefix { $0.isNumber })
            }
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

    /// Forgets every Put recorded so far (before a trial, so the searches stay short).
    func clear() {
        acks.withLock { $0.removeAll(keepingCapacity: true) }
    }

    /// The earliest completion of a Put invoked after `instant`.
    func firstCompletion(invokedAfter instant: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        acks.withLock { list in list.lazy.filter { $0.invoked > instant }.map(\.completed).min() }
    }

    /// Polls (every 5 ms) until a Put invoked after `instant` was acknowledged; returns when it
    /// was. Throws `ClusterError.notReady` after `limit`.
    func waitForFirstCompletion(invokedAfter instant: ContinuousClock.Instant, within limit: Duration) async throws -> ContinuousClock.Instant {
        let deadline = instant + limit
        while ContinuousClock.now < deadline {
            if let completed = firstCompletion(invokedAfter: instant) { return completed }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw ClusterError.notReady("no Put was acknowledged within \(limit) of the kill")
    }

    /// The longest time between `start` and `end` without an acknowledged Put.
    func longestStall(from start: ContinuousClock.Instant, to end: ContinuousClock.Instant) -> Duration {
        let completions = acks.withLock { list in list.map(\.completed).filter { $0 > start && $0 < end }.sorted() }
        var longest = Duration.zero
        var previous = start
        for completed in completions + [end] {
            longest = max(longest, completed - previous)
            previous = completed
        }
        return longest
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
