import Foundation
import Logging
import NIOPosix
import PBKVCore
import PBKVClient
import PBKVWire

#if canImport(Glibc)
import Glibc
#endif

/// What a chaos run does.
public struct ChaosConfiguration: Sendable {
    /// How long clients run, in seconds.
    public var seconds: Double = 20
    /// Concurrent clients (each one `KVClient`).
    public var clients = 4
    /// Operations each client keeps outstanding: its `KVClient` pipelines them in one session
    /// (`pipelineWindow`). Each outstanding slot is a process of its own in the history.
    public var pipeline = 1
    /// Keys the clients share (few keys: more contention, stronger check).
    public var keys = 4
    /// Seed of the nemesis schedule, the workload and the servers' fault injectors.
    public var seed: UInt64 = 1
    /// Request/reply drop probability on every server (through `--fault-drop-*`).
    public var dropProbability = 0.02
    /// Ping interval of the cluster, in milliseconds.
    public var pingIntervalMs = 100
    /// Mutual TLS with a CA made for the run (false: plaintext).
    public var tls = true
    /// Servers answer Gets on read leases (false: `--read-leases=false`, every Get through the backup).
    public var readLeases = true
    /// Arguments every view service and server of the cluster gets (e.g. `--log-format json`).
    public var memberArguments: [String] = []
    /// The pbkv binary to run the cluster with; nil: the one beside the running binary
    /// (`ProcessCluster.builtExecutable()`).
    public var executable: URL?
    /// Per-operation deadline of the clients; an operation still unanswered then is recorded as
    /// indeterminate (it may or may not have happened).
    public var operationDeadline: Duration = .seconds(4)
    /// Replicated mode (`pbkv chaos --etcd`): three view services on a three-member etcd of
    /// their own, and the nemesis also kills etcd members. The value is the readiness probe of
    /// an etcd member (PBKVTestSupport has no HTTP client; `pbkv` passes `EtcdClient.isServing`).
    /// nil: one view service with a file store.
    public var etcdProbe: EtcdCluster.Probe?

    public init() {}

    /// The faults the nemesis draws from: the file-store mix (same order as always, so a seed
    /// replays the same schedule), plus `kill-etcd-member` in replicated mode.
    public var faultKinds: [NemesisFault] {
        etcdProbe == nil ? NemesisFault.allCases.filter { $0 != .killEtcdMember } : NemesisFault.allCases
    }
}

/// The kinds of fault the nemesis injects.
public enum NemesisFault: String, Sendable, CaseIterable {
    /// SIGKILL a random server, restart it empty on the same address.
    case killRestart = "kill+restart"
    /// SIGKILL the primary, restart it empty.
    case killPrimary = "kill-primary"
    /// SIGSTOP the primary long enough to be declared dead, then SIGCONT (split-brain trap).
    case pausePrimary = "pause-primary"
    /// SIGSTOP the backup for a while, then SIGCONT.
    case pauseBackup = "pause-backup"
    /// SIGKILL the view service (the leader, when replicated), restart it on the same address
    /// and data directory.
    case killViewService = "kill-viewservice"
    /// SIGSTOP the view service (the leader, when replicated) for a while, then SIGCONT. In
    /// replicated mode the pause may outlast the etcd lease (2 s), so the leader wakes deposed.
    case pauseViewService = "pause-viewservice"
    /// SIGKILL one random etcd member, restart it (same ports and data) after a random pause.
    /// Replicated mode only.
    case killEtcdMember = "kill-etcd-member"
}

/// The outcome of a chaos run.
public struct ChaosReport: Sendable, CustomStringConvertible {
    public var seed: UInt64
    public var seconds: Double
    /// The faults this run could inject (its mode's mix).
    public var faultKinds: [NemesisFault] = NemesisFault.allCases
    /// How the view service ran, e.g. "3 view services on a 3-member etcd".
    public var viewService = ""
    public var completed = 0
    public var indeterminate = 0
    public var byKind: [OperationKind: Int] = [:]
    public var faults: [String] = []
    public var faultCounts: [NemesisFault: Int] = [:]
    public var viewChanges: UInt64 = 0
    public var auditedKeys = 0
    public var clusterSettledAtEnd = true
    public var linearizability: LinearizabilityResult?

    /// True when the history was judged linearizable (including the final audit reads).
    public var passed: Bool { linearizability?.verdict == .linearizable && clusterSettledAtEnd }

    public var description: String {
        var lines: [String] = []
        lines.append("seed \(seed), \(String(format: "%.0f", seconds)) s, \(viewService)")
        let kinds = OperationKind.allCases.map { "\($0): \(byKind[$0] ?? 0)" }.joined(separator: ", ")
        lines.append("operations: \(completed + indeterminate) (\(completed) completed, \(indeterminate) indeterminate; \(kinds))")
        let faultSummary = faultKinds.map { "\($0.rawValue) \(faultCounts[$0] ?? 0)" }.joined(separator: ", ")
        lines.append("faults injected: \(faults.count) (\(faultSummary))")
        lines.append("view changes: \(viewChanges)")
        lines.append("audit: \(auditedKeys) keys read back after the faults stopped\(clusterSettledAtEnd ? "" : " — CLUSTER DID NOT SETTLE")")
        if let result = linearizability {
            lines.append("linearizable: \(result.verdict == .linearizable ? "yes" : result.verdict.description) (\(result.searchSteps) search steps)")
            if result.verdict != .linearizable { lines.append(result.description) }
        }
        return lines.joined(separator: "\n")
    }
}

/// Runs clients against a real multi-process cluster while a nemesis kills, restarts and
/// pauses servers, view services and (replicated mode) etcd members; records the history and
/// checks it. Every process it starts, it stops, also when the run fails.
public struct ChaosRunner: Sendable {
    public let configuration: ChaosConfiguration
    /// Receives one line per event (fault, view change, progress).
    public let log: @Sendable (String) -> Void

    public init(configuration: ChaosConfiguration, log: @escaping @Sendable (String) -> Void) {
        self.configuration = configuration
        self.log = log
    }

    public func run() async throws -> ChaosReport {
        let cluster = try ProcessCluster(
            executable: configuration.executable ?? ProcessCluster.builtExecutable(), pingIntervalMs: configuration.pingIntervalMs, tls: configuration.tls,
            memberArguments: configuration.memberArguments)
        var replicated: ReplicatedViewService?
        do {
            if let probe = configuration.etcdProbe {
                replicated = try await ReplicatedViewService.start(prefix: "chaos", in: cluster, probe: probe)
            } else {
                try cluster.startViewService()
            }
            let report = try await run(cluster: cluster, replicated: replicated)
            cluster.stopAll()
            await replicated?.shutdown()
            return report
        } catch {
            log("run failed: \(error); process logs in \(cluster.logDirectory.path)")
            cluster.stopAll()
            await replicated?.shutdown()
            throw error
        }
    }

    private func run(cluster: ProcessCluster, replicated: ReplicatedViewService?) async throws -> ChaosReport {
        let config = configuration
        var report = ChaosReport(seed: config.seed, seconds: config.seconds)
        report.faultKinds = config.faultKinds
        let viewServiceArguments = replicated?.arguments ?? []
        log("process logs in \(cluster.logDirectory.path)")
        if let replicated {
            report.viewService = "\(cluster.viewServiceProcesses.count) view services on a \(replicated.etcd.members.count)-member etcd"
            let leader = await cluster.viewServiceLeader()
            log("etcd up: \(replicated.etcd.endpointList); view services \(cluster.viewServiceAddress), leader \(leader?.address ?? "?")")
        } else {
            report.viewService = "1 view service (file store)"
        }
        var quiet = Logger(label: "pbkv.chaos")
        quiet.logLevel = .critical
        var observerConfig = KVClientConfiguration()
        observerConfig.deadline = .seconds(2)
        let observer = try cluster.client(observerConfig, logger: quiet)

        func faultArguments(_ n: UInt64) -> [String] {
            let leases = ["--read-leases=\(config.readLeases)"]
            guard config.dropProbability > 0 else { return leases }
            return leases + [
                "--fault-drop-requests", "\(config.dropProbability)", "--fault-drop-replies", "\(config.dropProbability)",
                "--fault-seed", "\(config.seed &* 1000 &+ n)",
            ]
        }
        var restarts: UInt64 = 0
        var addresses: [String] = []
        for i in 1...3 {
            let p = try cluster.startServer(name: "s\(i)", extraArguments: faultArguments(UInt64(i)))
            addresses.append(p.address)
            if i == 1 {
                _ = try await observer.waitForView(within: .seconds(10)) { $0.primary == p.address && $0.acknowledged }
            }
        }
        let firstView = try await observer.waitForView(within: .seconds(15)) { $0.acknowledged && !$0.backup.isEmpty }
        log("cluster up: view \(firstView.viewnum), primary \(firstView.primary), backup \(firstView.backup)")

        let recorder = HistoryRecorder()
        let stopAt = ContinuousClock.now + .milliseconds(Int64(config.seconds * 1000))
        let keys = (0..<config.keys).map { "key\($0)" }

        // Clients: `pipeline` lanes per client, each lane a process of the history with one
        // operation at a time, all lanes of a client sharing its KVClient (and session).
        let clientTasks = try (0..<config.clients).map { n -> Task<Void, Never> in
            var clientConfig = KVClientConfiguration()
            clientConfig.deadline = config.operationDeadline
            clientConfig.attemptTimeout = .milliseconds(300)
            clientConfig.pipelineWindow = config.pipeline
            let client = try cluster.client(clientConfig, logger: quiet)
            return Task {
                await withTaskGroup(of: Void.self) { lanes in
                    for lane in 0..<config.pipeline {
                        lanes.addTask {
                            // Lane 0 draws what the client drew before lanes existed: a seed replays as it did.
                            await Self.runLane(
                                client: client, seed: config.seed &* 7919 &+ UInt64(n) &+ (UInt64(lane) << 32),
                                process: n * config.pipeline + lane,
                                valuePrefix: config.pipeline == 1 ? "c\(n)" : "c\(n).\(lane)",
                                keys: keys, until: stopAt, recorder: recorder)
                        }
                    }
                }
                await client.close()
            }
        }

        // Nemesis.
        var rng = SplitMix64(seed: config.seed)
        var faults: [String] = []
        var faultCounts: [NemesisFault: Int] = [:]
        var lastView = firstView
        let started = ContinuousClock.now
        func stamp() -> String {
            let t = ContinuousClock.now - started
            return String(format: "%6.2fs", t.inSeconds)
        }
        func injected(_ fault: NemesisFault, _ what: String) {
            faults.append("\(fault.rawValue) \(what)")
            faultCounts[fault, default: 0] += 1
        }
        let kinds = config.faultKinds
        do {
            while ContinuousClock.now + .milliseconds(1500) < stopAt {
                try await Task.sleep(for: .milliseconds(Int64(400 + rng.next() % 1200)))
                // Destroy only a settled cluster (a view acknowledged with a backup holding the state);
                // otherwise two faults in a row may leave no server with the state, which this design
                // answers with unavailability, not loss.
                guard let view = try? await observer.waitForView(within: .seconds(10), { $0.acknowledged && !$0.backup.isEmpty })
                else {
                    log("[\(stamp())] cluster not settled within 10 s; nemesis waits")
                    continue
                }
                if !view.sameAssignment(as: lastView) {
                    log("[\(stamp())] view \(view.viewnum): primary \(view.primary), backup \(view.backup)")
                    lastView = view
                }
                guard ContinuousClock.now + .milliseconds(1000) < stopAt else { break }
                let fault = kinds[Int(rng.next() % UInt64(kinds.count))]
                switch fault {
                case .killRestart, .killPrimary:
                    let target = fault == .killPrimary ? view.primary : addresses[Int(rng.next() % 3)]
                    guard let process = cluster.process(at: target) else { continue }
                    process.killAndWait()
                    let downFor = Int64(rng.next() % 800)
                    injected(fault, target)
                    log("[\(stamp())] SIGKILL \(target)\(target == view.primary ? " (primary)" : target == view.backup ? " (backup)" : ""); restart in \(downFor) ms")
                    try await Task.sleep(for: .milliseconds(downFor))
                    restarts += 1
                    let name = "s\((addresses.firstIndex(of: target) ?? 0) + 1)"
                    try cluster.startServer(name: name, address: target, extraArguments: faultArguments(100 + restarts))
                case .pausePrimary, .pauseBackup:
                    let target = fault == .pausePrimary ? view.primary : view.backup
                    guard let process = cluster.process(at: target) else { continue }
                    let pauseFor = Int64(300 + rng.next() % 1200)
                    injected(fault, "\(target) \(pauseFor) ms")
                    log("[\(stamp())] SIGSTOP \(target) (\(fault == .pausePrimary ? "primary" : "backup")) for \(pauseFor) ms")
                    process.signal(SIGSTOP)
                    try await Task.sleep(for: .milliseconds(pauseFor))
                    process.signal(SIGCONT)
                    log("[\(stamp())] SIGCONT \(target)")
                case .killViewService, .pauseViewService:
                    guard let process = await cluster.viewServiceLeader() else {
                        log("[\(stamp())] no view service leader found; nemesis waits")
                        continue
                    }
                    if fault == .killViewService {
                        process.killAndWait()
                        let downFor = Int64(rng.next() % 800)
                        injected(fault, process.address)
                        log("[\(stamp())] SIGKILL view service \(process.address)\(replicated == nil ? "" : " (leader)"); restart in \(downFor) ms")
                        try await Task.sleep(for: .milliseconds(downFor))
                        try cluster.startViewService(address: process.address, extraArguments: viewServiceArguments)
                    } else {
                        // Replicated: up to 3.5 s, past the lease TTL (2 s), so the leader may wake deposed.
                        let pauseFor = Int64(300 + rng.next() % (replicated == nil ? 1200 : 3200))
                        injected(fault, "\(process.address) \(pauseFor) ms")
                        log("[\(stamp())] SIGSTOP view service \(process.address)\(replicated == nil ? "" : " (leader)") for \(pauseFor) ms")
                        process.signal(SIGSTOP)
                        try await Task.sleep(for: .milliseconds(pauseFor))
                        process.signal(SIGCONT)
                        log("[\(stamp())] SIGCONT view service \(process.address)")
                    }
                case .killEtcdMember:
                    guard let etcd = replicated?.etcd else { continue }
                    let index = Int(rng.next() % UInt64(etcd.members.count))
                    let member = etcd.members[index]
                    let downFor = Int64(200 + rng.next() % 1800)
                    let pid = member.pid
                    await member.kill()
                    injected(fault, "\(member.name) \(member.clientEndpoint)")
                    log("[\(stamp())] SIGKILL etcd member \(member.name) \(member.clientEndpoint) (pid \(pid)); restart in \(downFor) ms")
                    try await Task.sleep(for: .milliseconds(downFor))
                    try await etcd.restart(index)
                    log("[\(stamp())] etcd member \(member.name) serves again (pid \(member.pid))")
                }
            }
        } catch {
            for task in clientTasks { task.cancel() }
            for task in clientTasks { await task.value }
            await observer.close()
            throw error
        }
        for task in clientTasks { await task.value }
        report.faults = faults
        report.faultCounts = faultCounts

        // Audit: after the faults stopped, every key must read back consistently with the history.
        let finalView = try? await observer.waitForView(within: .seconds(20)) { $0.acknowledged && !$0.primary.isEmpty }
        report.clusterSettledAtEnd = finalView != nil
        if let finalView {
            report.viewChanges = finalView.viewnum - firstView.viewnum
            log("[\(stamp())] final view \(finalView.viewnum): primary \(finalView.primary), backup \(finalView.backup)")
        }
        if replicated != nil {
            let leader = await cluster.viewServiceLeader()
            log("[\(stamp())] view service leader at the end: \(leader?.address ?? "none answered")")
        }
        var auditConfig = KVClientConfiguration()
        auditConfig.deadline = .seconds(10)
        let auditor = try cluster.client(auditConfig, logger: quiet)
        for key in keys {
            if await Self.recordedGet(auditor, key: key, process: config.clients * config.pipeline, recorder: recorder) {
                report.auditedKeys += 1
            } else {
                report.clusterSettledAtEnd = false
            }
        }
        await auditor.close()
        await observer.close()

        let history = recorder.history()
        for op in history {
            report.byKind[op.kind, default: 0] += 1
            if op.isIndeterminate { report.indeterminate += 1 } else { report.completed += 1 }
        }
        log("[\(stamp())] checking \(history.count) operations for linearizability")
        report.linearizability = LinearizabilityChecker().check(history)
        return report
    }

    /// One lane of a chaos client: until `stopAt`, one operation at a time on a random key —
    /// Get (40 %), Put (40 %) or PutHash (20 %) of the value `valuePrefix-i` — each recorded in
    /// the history as process `process`.
    private static func runLane(
        client: KVClient, seed: UInt64, process: Int, valuePrefix: String, keys: [String],
        until stopAt: ContinuousClock.Instant, recorder: HistoryRecorder
    ) async {
        var rng = SplitMix64(seed: seed)
        var i = 0
        while ContinuousClock.now < stopAt && !Task.isCancelled {
            let key = keys[Int(rng.next() % UInt64(keys.count))]
            let roll = rng.next() % 10
            let value = "\(valuePrefix)-\(i)"
            i += 1
            if roll < 4 {
                await recordedGet(client, key: key, process: process, recorder: recorder)
            } else if roll < 8 {
                let token = recorder.invoke(client: process, kind: .put, key: key, value: value)
                do {
                    try await client.put(key, value)
                    recorder.complete(token, output: .ok)
                } catch { recorder.completeIndeterminate(token) }
            } else {
                let token = recorder.invoke(client: process, kind: .putHash, key: key, value: value)
                do {
                    let previous = try await client.putHash(key, value)
                    recorder.complete(token, output: .value(previous))
                } catch { recorder.completeIndeterminate(token) }
            }
        }
    }

    /// A Get recorded in the history as process `process`; false when it got no answer
    /// (recorded as indeterminate).
    @discardableResult
    private static func recordedGet(_ client: KVClient, key: String, process: Int, recorder: HistoryRecorder) async -> Bool {
        let token = recorder.invoke(client: process, kind: .get, key: key)
        do {
            let value = try await client.get(key)
            recorder.complete(token, output: value.map { .value($0) } ?? .absent)
            return true
        } catch {
            recorder.completeIndeterminate(token)
            return false
        }
    }
}
