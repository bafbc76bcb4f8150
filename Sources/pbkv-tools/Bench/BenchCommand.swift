import ArgumentParser
import PBKVCommandLine
import Foundation
import Histogram
import Synchronization
import NIOCore
import NIOPosix
import PBKVCore
import PBKVClient
import PBKVWire

/// `pbkv bench`: N concurrent clients (each its own `KVClient`, one request outstanding, or
/// `--pipeline P` of them) for a fixed time; prints throughput and latency percentiles
/// (HdrHistogram), errors and retries.
/// With `--redis` the same loop drives a Redis server instead (SET/GET, optionally each SET
/// followed by `WAIT`), so both stores are measured by one load generator; with `--fill` it
/// writes every key once and reports the load rate.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = Tool.bench.configuration

    @Option(help: "The view service, HOST:PORT; a replicated one as HOST:PORT,HOST:PORT,…")
    var viewservice: String = "127.0.0.1:7000"
    @Option(help: "Concurrent clients (one request outstanding each, or --pipeline).")
    var clients: Int = 1
    @Option(help: "Operations each client keeps outstanding: pbkv pipelines them in one session (pipelineWindow, at most 64); Redis on its one connection.")
    var pipeline: Int = 1
    @Option(help: "Seconds to run.")
    var duration: Double = 10
    @Option(help: "Number of distinct keys.")
    var keys: Int = 1000
    @Option(help: "Value size in bytes.")
    var valueSize: Int = 16
    @Option(help: "Operation mix in percent, e.g. get=90,put=10,puthash=0.")
    var mix: String = "put=100"
    @Option(help: "Seconds of warm-up before measuring.")
    var warmup: Double = 1
    @Flag(help: "Print one JSON object instead of text.")
    var json = false
    @OptionGroup var security: SecurityOptions
    @OptionGroup var compression: CompressionOptions
    @Option(help: "Benchmark a Redis server at HOST:PORT instead of pbkv (get and put only).")
    var redis: String?
    @Option(help: "With --redis: send WAIT N 0 after every SET (synchronous replication to N replicas).")
    var redisWait: Int = 0
    @Flag(help: "Write each of the --keys keys once (split among the clients), report the rate, and exit.")
    var fill = false
    @Flag(help: "Show no progress on standard error (a bar on a terminal, a few lines otherwise).")
    var noProgress = false
    @Option(help: "Also report the CPU time per operation of these processes, NAME=PID,… (e.g. primary=4242,backup=4243; Linux), next to this load generator's own.")
    var cpuOf: String?

    struct Mix {
        var get = 0
        var put = 0
        var putHash = 0
    }

    func parseMix() throws -> Mix {
        var m = Mix()
        for part in mix.split(separator: ",") {
            let kv = part.split(separator: "=")
            guard kv.count == 2, let n = Int(kv[1]), n >= 0 else { throw ValidationError("--mix: bad part \"\(part)\"") }
            switch kv[0].lowercased() {
            case "get": m.get = n
            case "put": m.put = n
            case "puthash": m.putHash = n
            default: throw ValidationError("--mix: unknown operation \"\(kv[0])\" (get, put, puthash)")
            }
        }
        guard m.get + m.put + m.putHash > 0 else { throw ValidationError("--mix must name at least one operation") }
        return m
    }

    /// `--cpu-of`: the named processes, in the order given.
    func parseCPUOf() throws -> [(name: String, pid: Int32)] {
        guard let cpuOf else { return [] }
        return try cpuOf.split(separator: ",").map { part in
            let nameAndPID = part.split(separator: "=")
            guard nameAndPID.count == 2, let pid = Int32(nameAndPID[1]), pid > 0,
                nameAndPID[0].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" })
            else { throw ValidationError("--cpu-of: expected NAME=PID (NAME of letters, digits and _), got \"\(part)\"") }
            guard ProcessCPU.seconds(pid: pid) != nil else { throw ValidationError("--cpu-of: no process \(pid) (/proc/\(pid)/stat unreadable)") }
            return (String(nameAndPID[0]), pid)
        }
    }

    func validate() throws {
        if redis == nil { _ = try security.choice() }
        _ = try parseMix()
        _ = try parseCPUOf()
        guard clients > 0, duration > 0, keys > 0, valueSize >= 0 else {
            throw ValidationError("--clients, --duration and --keys must be positive")
        }
        guard (1...Int(RequestID.maxWindow)).contains(pipeline) else {
            throw ValidationError("--pipeline must be 1 to \(RequestID.maxWindow) (the most a pbkv server keeps per session)")
        }
        if redis != nil, try parseMix().putHash > 0 {
            throw ValidationError("--redis supports get and put only; drop puthash from --mix")
        }
    }

    func run() async throws {
        _ = NIOSingletonsInstaller.installOnce
        let mix = try parseMix()
        let value = String(repeating: "x", count: valueSize)
        let keyNames = (0..<keys).map { "key:\($0)" }  // as Redis's DEBUG POPULATE names them

        let targets: [any BenchTarget]
        if let redis {
            var list: [any BenchTarget] = []
            for _ in 0..<clients {
                let client = try await RedisBenchClient.connect(to: redis, group: MultiThreadedEventLoopGroup.singleton)
                list.append(RedisBenchTarget(client: client, waitReplicas: redisWait))
            }
            targets = list
        } else {
            var configuration = KVClientConfiguration()
            configuration.tls = try security.resolve()
            configuration.compression = compression.mode
            configuration.pipelineWindow = pipeline
            targets = try (0..<clients).map { _ in
                PBKVBenchTarget(
                    client: try KVClient(viewService: viewservice, configuration: configuration, logger: ClusterBenchCommand.quietLogger))
            }
        }
        let display = ProgressDisplay(enabled: !noProgress)
        if fill {
            try await runFill(targets, keyNames: keyNames, value: value, display: display)
            for target in targets { await target.close() }
            return
        }
        // Make sure every key exists so Gets measure the same path as writes.
        if mix.get > 0 {
            let loader = targets[0]
            let preload = Array(keyNames.prefix(min(keys, 10_000)))
            let loaded = Progress()
            try await display.run("\(targetName) preload", sample: { Self.keysSample(loaded.count, of: preload.count) }) {
                for key in preload {
                    try await loader.put(key, value)
                    loaded.add(1)
                }
            }
        }
        let start = ContinuousClock.now
        let warmupEnd = start + .milliseconds(Int64(warmup * 1000))
        let end = warmupEnd + .milliseconds(Int64(duration * 1000))
        let progress = Progress()
        // CPU seconds used between the end of the warm-up and the end: this process, then --cpu-of's.
        let watched = try parseCPUOf()
        let cpuUsed = Task { () -> [Double] in
            func sample() -> [Double] { [ProcessCPU.ownSeconds()] + watched.map { ProcessCPU.seconds(pid: $0.pid) ?? .nan } }
            try? await Task.sleep(until: warmupEnd, clock: .continuous)
            let before = sample()
            try? await Task.sleep(until: end, clock: .continuous)
            return zip(sample(), before).map { $0 - $1 }
        }
        // One closed loop per operation a client keeps outstanding (its "lanes").
        let clientLoops = targets.enumerated().map { n, client in
            (client, (0..<pipeline).map { lane in
                BenchLoop(
                    seed: UInt64(n + 1) &+ UInt64(lane) << 32, keyNames: keyNames, value: value, mix: mix,
                    warmupEnd: warmupEnd, end: end, progress: progress)
            })
        }
        let title = "\(targetName) \(clients) client\(clients == 1 ? "" : "s")\(pipeline > 1 ? " ×\(pipeline) pipelined" : "")"
        let results = try await display.run(title, sample: { Self.timeSample(ops: progress.count, start: start, end: end) }) {
            // Each client's loops run on that client's own event loop: no thread hop per call.
            await runConcurrently(clientLoops) { client, loops in await client.drive(loops) }
        }
        var retries = 0
        var vsCalls = 0
        var operations = 0
        for target in targets {
            if let stats = await target.stats {
                retries += stats.retries
                vsCalls += stats.viewServiceCalls
                operations += stats.operations
            }
            await target.close()
        }
        let h = results.0
        let count = Double(h.totalCount)
        let throughput = count / duration
        func us(_ p: Double) -> Double { Double(h.valueAtPercentile(p)) / 1000 }
        let vsPerOp = operations > 0 ? Double(vsCalls) / Double(operations) : 0
        let cpuNames = ["client"] + watched.map(\.name)
        let cpuPerOp = await cpuUsed.value.map { count > 0 ? $0 * 1e6 / count : 0 }
        if json {
            let cpuFields = zip(cpuNames, cpuPerOp).map { String(format: ",\"cpu_us_per_op_%@\":%.2f", $0, $1) }.joined()
            print("{\"target\":\"\(targetName)\",\"mix\":\"\(self.mix)\"," + String(
                format: "\"clients\":%d,\"pipeline\":%d,\"value_size\":%d,\"seconds\":%.1f,\"ops\":%d,\"throughput\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,\"errors\":%d,\"retries\":%d,\"viewservice_calls_per_op\":%.5f",
                clients, pipeline, valueSize, duration, Int(count), throughput, us(50), us(90), us(99), us(99.9),
                Double(h.max) / 1000, results.1, retries, vsPerOp) + cpuFields + "}")
        } else {
            print("\(targetName) bench: \(clients) clients\(pipeline > 1 ? " with \(pipeline) operations outstanding each" : ""), \(keys) keys, \(valueSize) B values, mix \(self.mix), \(duration) s")
            print(String(format: "  throughput  %.0f ops/s (%d ops)", throughput, Int(count)))
            print(String(format: "  latency µs  p50 %.0f  p90 %.0f  p99 %.0f  p99.9 %.0f  max %.0f", us(50), us(90), us(99), us(99.9), Double(h.max) / 1000))
            print("  errors \(results.1), retries \(retries), view service calls per operation \(String(format: "%.5f", vsPerOp))")
            print("  CPU µs per operation  " + zip(cpuNames, cpuPerOp).map { String(format: "%@ %.1f", $0, $1) }.joined(separator: "  "))
        }
    }
}

extension BenchCommand {
    var targetName: String {
        guard let redis else { return "pbkv" }
        return redisWait > 0 ? "redis+wait\(redisWait)@\(redis)" : "redis@\(redis)"
    }

    /// Writes every key once, the keys split evenly among the clients, and prints the rate.
    func runFill(_ targets: [any BenchTarget], keyNames: [String], value: String, display: ProgressDisplay) async throws {
        let start = ContinuousClock.now
        let count = targets.count
        let loaded = Progress()
        try await display.run("\(targetName) fill", sample: { Self.keysSample(loaded.count, of: keyNames.count) }) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (n, target) in targets.enumerated() {
                    group.addTask {
                        var index = n
                        while index < keyNames.count {
                            try await target.put(keyNames[index], value)
                            loaded.add(1)
                            index += count
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        let seconds = (ContinuousClock.now - start).inSeconds
        let rate = Double(keyNames.count) / seconds
        if json {
            print("{\"target\":\"\(targetName)\"," + String(format: "\"fill_keys\":%d,\"value_size\":%d,\"seconds\":%.3f,\"throughput\":%.1f}",
                keyNames.count, valueSize, seconds, rate))
        } else {
            print("\(targetName) fill: " + String(format: "%d keys of %d B in %.2f s (%.0f puts/s)", keyNames.count, valueSize, seconds, rate))
        }
    }
}

extension BenchCommand {
    /// Progress of a fill: keys written of the total.
    static func keysSample(_ done: Int, of total: Int) -> (fraction: Double?, detail: String) {
        (total > 0 ? Double(done) / Double(total) : nil, "\(done)/\(total) keys")
    }

    /// Progress of a timed run (warm-up included): operations so far and the time left.
    static func timeSample(ops: Int, start: ContinuousClock.Instant, end: ContinuousClock.Instant) -> (fraction: Double?, detail: String) {
        let now = ContinuousClock.now
        let fraction = (now - start).inSeconds / (end - start).inSeconds
        return (fraction, String(format: "%d ops, %.0f s left", ops, max(0, (end - now).inSeconds)))
    }
}

/// One benchmark client: a pbkv `KVClient` or a Redis connection.
protocol BenchTarget: Sendable {
    /// One Put (SET for Redis), for preloading and `--fill`.
    func put(_ key: String, _ value: String) async throws
    /// Runs `loops` concurrently with this client (each isolated to it: one operation of each
    /// outstanding at a time); their histograms merged and errors summed.
    func drive(_ loops: [BenchLoop]) async -> (Histogram<UInt64>, Int)
    /// The client's retry and view service counters (pbkv only).
    var stats: KVClientStats? { get async }
    func close() async
}

/// Drives pbkv through its real client.
struct PBKVBenchTarget: BenchTarget {
    let client: KVClient
    func put(_ key: String, _ value: String) async throws { try await client.put(key, value) }
    func drive(_ loops: [BenchLoop]) async -> (Histogram<UInt64>, Int) {
        await runConcurrently(loops) { loop in
            await client.withIsolation { client in
                await loop.run { kind, key in
                    switch kind {
                    case .get: _ = try await client.get(key)
                    case .put: try await client.put(key, loop.value)
                    case .putHash: _ = try await client.putHash(key, loop.value)
                    }
                }
            }
        }
    }
    var stats: KVClientStats? { get async { await client.stats } }
    func close() async { await client.close() }
}

/// Drives Redis: GET, and SET optionally followed (in the same write) by `WAIT n 0`.
struct RedisBenchTarget: BenchTarget {
    let client: RedisBenchClient
    let waitReplicas: Int

    func put(_ key: String, _ value: String) async throws {
        try await Self.set(client, key, value, waitReplicas: waitReplicas)
    }

    /// SET, followed in the same write by `WAIT n 0` when `waitReplicas` > 0.
    static func set(
        _ client: isolated RedisBenchClient, _ key: String, _ value: String, waitReplicas: Int
    ) async throws {
        if waitReplicas > 0 {
            let replies = try await client.pipeline([["SET", key, value], ["WAIT", String(waitReplicas), "0"]])
            if case .integer(let acknowledged) = replies.last, acknowledged < waitReplicas {
                throw RedisBenchClient.Failure.redisError("WAIT: only \(acknowledged) replicas acknowledged")
            }
        } else {
            _ = try await client.pipeline([["SET", key, value]])
        }
    }

    func drive(_ loops: [BenchLoop]) async -> (Histogram<UInt64>, Int) {
        let waitReplicas = self.waitReplicas
        return await runConcurrently(loops) { loop in
            await client.withIsolation { client in
                await loop.run { kind, key in
                    switch kind {
                    case .get: _ = try await client.pipeline([["GET", key]])
                    case .put: try await RedisBenchTarget.set(client, key, loop.value, waitReplicas: waitReplicas)
                    case .putHash: throw RedisBenchClient.Failure.redisError("no Redis equivalent of PutHash")
                    }
                }
            }
        }
    }

    var stats: KVClientStats? { get async { nil } }
    func close() async { await client.close() }
}

/// Runs `body` for each item (clients, or the loops of one client) concurrently (a single one
/// directly) and merges the histograms and error counts.
func runConcurrently<Item: Sendable>(
    _ items: [Item], _ body: @escaping @Sendable (Item) async -> (Histogram<UInt64>, Int)
) async -> (Histogram<UInt64>, Int) {
    if items.count == 1 { return await body(items[0]) }
    return await withTaskGroup(of: (Histogram<UInt64>, Int).self) { group in
        for item in items { group.addTask { await body(item) } }
        var merged = latencyHistogram()
        var errors = 0
        for await (histogram, e) in group {
            merged.add(histogram)
            errors += e
        }
        return (merged, errors)
    }
}

/// An empty histogram of latencies in nanoseconds, up to 60 s at three significant digits.
func latencyHistogram() -> Histogram<UInt64> {
    Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
}

/// Counts operations across client tasks for the progress display.
final class Progress: Sendable {
    private let counter = Atomic<Int>(0)
    var count: Int { counter.load(ordering: .relaxed) }
    func add(_ n: Int) { counter.add(n, ordering: .relaxed) }
}

/// One benchmark client's closed loop: pick a key and an operation, run it, record its latency
/// (after the warm-up), until the end.
struct BenchLoop: Sendable {
    var seed: UInt64
    var keyNames: [String]
    var value: String
    var mix: BenchCommand.Mix
    var warmupEnd: ContinuousClock.Instant
    var end: ContinuousClock.Instant
    var progress: Progress

    enum Kind { case get, put, putHash }

    /// Runs on the caller's isolation (a client's actor), so operations issued by `perform`
    /// stay on that actor's executor.
    func run(
        isolation: isolated (any Actor)? = #isolation, _ perform: (Kind, String) async throws -> Void
    ) async -> (Histogram<UInt64>, Int) {
        var histogram = latencyHistogram()
        var rng = SplitMix64(seed: seed)
        let total = UInt64(mix.get + mix.put + mix.putHash)
        var errors = 0
        var localCount = 0
        while true {
            let now = ContinuousClock.now
            if now >= end { break }
            let key = keyNames[Int(rng.next() % UInt64(keyNames.count))]
            let roll = Int(rng.next() % total)
            let kind: Kind = roll < mix.get ? .get : (roll < mix.get + mix.put ? .put : .putHash)
            do {
                try await perform(kind, key)
            } catch {
                errors += 1
            }
            let after = ContinuousClock.now
            if now >= warmupEnd {
                let ns = (after - now).components
                _ = histogram.record(UInt64(ns.seconds) * 1_000_000_000 + UInt64(ns.attoseconds / 1_000_000_000))
            }
            localCount += 1
            if localCount % 64 == 0 { progress.add(64) }
        }
        return (histogram, errors)
    }
}
