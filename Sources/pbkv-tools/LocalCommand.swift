import ArgumentParser
import PBKVCommandLine
import Foundation
import Logging
import PBKVCore
import PBKVClient
import PBKVEtcd
import PBKVTestSupport
import PBKVWire
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `pbkv local`: a view service and three servers as real processes on loopback, a visible
/// workload, a SIGKILL of the primary part-way, and a check that nothing acknowledged was lost.
/// With `--etcd` the view service is replicated (three processes on a three-member etcd) and
/// its leader is killed first.
struct LocalCommand: AsyncParsableCommand {
    static let configuration = Tool.local.configuration

    @Option(help: "Number of Puts in the workload.")
    var operations: Int = 300
    @Option(help: "Kill the primary after this many Puts (with --etcd: and once a new view service leader answers).")
    var killAfter: Int = 150
    @Option(help: "Ping interval of the cluster, in milliseconds.")
    var pingIntervalMs: Int = 100
    @Flag(help: "Replicated view service: a three-member etcd and three view services; their leader is killed too.")
    var etcd = false
    @Option(help: "With --etcd: kill the leader view service after this many Puts.")
    var killLeaderAfter: Int = 50
    @Option(help: "Pause between Puts, in milliseconds (default 0; 20 with --etcd, so Puts go on during the view service failover).")
    var putIntervalMs: Int?
    @Option(help: "Servers answer Gets on read leases (true or false, e.g. --read-leases=false).")
    var readLeases = true
    @OptionGroup var security: OwnClusterSecurityOptions
    @Flag(help: "Keep the cluster running after the demo and print its addresses (Ctrl-C stops it).")
    var keepRunning = false
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard operations > 0, (0..<operations).contains(killAfter) else {
            throw ValidationError("--kill-after must be at least 0 and below --operations (\(operations))")
        }
        if etcd, !(0..<killAfter).contains(killLeaderAfter) {
            throw ValidationError("--kill-leader-after must be at least 0 and below --kill-after (\(killAfter))")
        }
        if let putIntervalMs, putIntervalMs < 0 { throw ValidationError("--put-interval-ms must not be negative") }
    }

    func run() async throws {
        _ = logging.bootstrap(label: "pbkv.local")
        let started = ContinuousClock.now
        let say: @Sendable (String) -> Void = { line in
            let t = ContinuousClock.now - started
            print(String(format: "[%6.2fs] ", t.inSeconds) + line)
            fflush(nil)
        }
        let cluster = try ProcessCluster(executable: try ProcessCluster.builtExecutable(), pingIntervalMs: pingIntervalMs, tls: security.tls,
            memberArguments: logging.memberArguments)
        var replicated: ReplicatedViewService?
        let lost: Int
        do {
            if etcd {
                say("starting a three-member etcd and three view services on it")
                let started = try await ReplicatedViewService.start(prefix: "local", in: cluster) {
                    await EtcdClient.isServing(endpoint: $0)
                }
                replicated = started
                for member in started.etcd.members {
                    say("etcd member \(member.name) at \(member.clientEndpoint) (pid \(member.pid))")
                }
                for (i, vs) in cluster.viewServiceProcesses.enumerated() {
                    say("view service vs\(i + 1) started at \(vs.address) (pid \(vs.pid)); logs in \(cluster.logDirectory.path)")
                }
                if let leader = await cluster.viewServiceLeader() {
                    say("view service leader: \(Self.viewServiceName(leader.address, cluster))")
                }
            } else {
                let vs = try cluster.startViewService()
                say("view service started at \(vs.address) (pid \(vs.pid)); logs in \(cluster.logDirectory.path)")
            }
            lost = try await demo(cluster: cluster, replicated: replicated, say: say)
        } catch {
            cluster.stopAll()
            await replicated?.shutdown()
            throw error
        }
        if keepRunning {
            let viewServices = cluster.viewServiceAddress
            say("cluster running. Addresses:")
            if let replicated { print("  etcd:          \(replicated.etcd.endpointList)") }
            print("  \(replicated == nil ? "view service: " : "view services:") \(viewServices)")
            let servers = cluster.all.filter { $0.name.hasPrefix("s") && $0.isRunning }
            print("  servers:       " + servers.map { "\($0.name) \($0.address)" }.joined(separator: ", "))
            let security = cluster.tlsDirectory.map { "--tls \($0) --tls-name client" } ?? "--insecure"
            if let directory = cluster.tlsDirectory { print("  CA and certificates: \(directory) (client certificate: client)") }
            print("Try:")
            print("  pbkv view --viewservice \(viewServices) \(security)")
            print("  pbkv put hello world --viewservice \(viewServices) \(security)")
            print("  pbkv get hello --viewservice \(viewServices) \(security)")
            print("Press Ctrl-C to stop (the processes are stopped with it).")
            fflush(nil)
            signal(SIGINT, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGINT)
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                source.setEventHandler { done.resume() }
                source.resume()
            }
        }
        cluster.stopAll()
        await replicated?.shutdown()
        if lost > 0 { throw ExitStatus.failure }
    }

    /// The workload and the kills; returns how many acknowledged writes were lost.
    private func demo(cluster: ProcessCluster, replicated: ReplicatedViewService?, say: @escaping @Sendable (String) -> Void) async throws -> Int {
        var logger = Logger(label: "pbkv.local")
        logger.logLevel = .critical
        var clientConfig = KVClientConfiguration()
        clientConfig.deadline = .seconds(20)
        let client = try cluster.client(clientConfig, logger: logger)

        // Servers one after another, so s1 is primary and s2 its backup; s3 waits idle.
        var servers: [ClusterProcess] = []
        for i in 1...3 {
            let server = try cluster.startServer(name: "s\(i)", extraArguments: ["--read-leases=\(readLeases)"])
            servers.append(server)
            say("server s\(i) started at \(server.address) (pid \(server.pid))")
            if i < 3 {
                _ = try await client.waitForView(within: .seconds(10)) { view in
                    view.acknowledged && (i == 1 ? view.primary == server.address : view.backup == server.address)
                }
            }
        }
        var lastView = try await client.waitForView(within: .seconds(10)) { $0.acknowledged && !$0.backup.isEmpty }
        say("view \(lastView.viewnum): primary \(Self.name(lastView.primary, servers)), backup \(Self.name(lastView.backup, servers))")

        let serverList = servers
        let firstView = lastView
        let watcher = Task {
            var seen = firstView
            while !Task.isCancelled {
                if let view = try? await client.currentView(), !view.sameAssignment(as: seen) {
                    say("view \(view.viewnum): primary \(Self.name(view.primary, serverList)), backup \(Self.name(view.backup, serverList))")
                    seen = view
                }
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
        defer { watcher.cancel() }

        let interval = Duration.milliseconds(putIntervalMs ?? (replicated == nil ? 0 : 20))
        var acknowledged: [String: String] = [:]
        var killedAt: ContinuousClock.Instant?
        var gap: Duration?
        // --etcd: the leader view service's kill, and the search for its successor.
        var leaderKill: (process: ClusterProcess, at: ContinuousClock.Instant, successor: Task<ClusterProcess, any Error>)?
        var leaderFailover: Duration?
        var putsWithoutLeader = 0
        let leaderAnswered = Moment()
        for i in 0..<operations {
            if replicated != nil, i == killLeaderAfter {
                guard let leader = await cluster.viewServiceLeader() else {
                    throw ClusterError.notReady("no view service answered as leader; see the logs in \(cluster.logDirectory.path)")
                }
                leader.killAndWait()
                let at = ContinuousClock.now
                say("killed the leader view service \(Self.viewServiceName(leader.address, cluster)) with SIGKILL (pid \(leader.pid))")
                let successor = Task {
                    let next = try await cluster.waitForViewServiceLeader(within: .seconds(30), excluding: leader.address, pollEvery: .milliseconds(5))
                    leaderAnswered.set()
                    return next
                }
                leaderKill = (leader, at, successor)
            }
            if i == killAfter {
                if let kill = leaderKill, leaderFailover == nil {
                    if leaderAnswered.instant == nil { say("waiting for a new view service leader before killing the primary") }
                    let next = try await kill.successor.value
                    let answeredAt = leaderAnswered.instant ?? .now
                    leaderFailover = answeredAt - kill.at
                    say("new view service leader: \(Self.viewServiceName(next.address, cluster)), answering \(leaderFailover!.milliseconds) ms after the kill; \(putsWithoutLeader) Puts were acknowledged meanwhile")
                    let restarted = try cluster.startViewService(address: kill.process.address, extraArguments: replicated?.arguments ?? [])
                    let role = await Self.settledRole(of: restarted.address, in: cluster, within: .seconds(5))
                    say("restarted view service \(Self.viewServiceName(kill.process.address, cluster)) (pid \(restarted.pid)); it answers as \(role)")
                }
                let view = try await client.currentView()
                if let primary = cluster.process(at: view.primary) {
                    primary.killAndWait()
                    killedAt = .now
                    say("killed the primary \(Self.name(primary.address, servers)) with SIGKILL (pid \(primary.pid))")
                }
            }
            let key = "key-\(i % 100)"
            let value = "value-\(i)"
            try await client.put(key, value)
            acknowledged[key] = value
            if leaderKill != nil, leaderAnswered.instant == nil { putsWithoutLeader += 1 }
            if let k = killedAt, gap == nil {
                gap = ContinuousClock.now - k
                say("first Put acknowledged after the kill: \(gap!.milliseconds) ms after it")
            }
            if (i + 1) % 50 == 0 { say("\(i + 1)/\(operations) Puts acknowledged") }
            if interval > .zero { try await Task.sleep(for: interval) }
        }
        watcher.cancel()
        lastView = try await client.currentView()
        say("final view \(lastView.viewnum): primary \(Self.name(lastView.primary, servers)), backup \(Self.name(lastView.backup, servers))")

        var lost = 0
        for (key, value) in acknowledged.sorted(by: { $0.key < $1.key }) {
            let read = try await client.get(key)
            if read != value {
                lost += 1
                say("LOST: \(key) should be \(value), read \(read ?? "(absent)")")
            }
        }
        if lost == 0 {
            say("verified: all \(acknowledged.count) keys hold their last acknowledged value — nothing lost")
        } else {
            say("FAILED: \(lost) acknowledged writes lost")
        }
        if replicated != nil {
            let leader = await cluster.viewServiceLeader()
            let failover = leaderFailover.map { "\($0.milliseconds) ms" } ?? "not measured"
            let kvGap = gap.map { "\($0.milliseconds) ms" } ?? "not measured"
            say("view service leader now: \(leader.map { Self.viewServiceName($0.address, cluster) } ?? "none answered")")
            say("measured: view service leader failover \(failover) (SIGKILL to the first GetView answered by the new leader; lease TTL 2 s), \(putsWithoutLeader) Puts acknowledged during it; primary failover \(kvGap) (SIGKILL to the first acknowledged Put)")
        }
        await client.close()
        return lost
    }

    private static func name(_ address: String, _ servers: [ClusterProcess]) -> String {
        guard !address.isEmpty else { return "(none)" }
        guard let i = servers.firstIndex(where: { $0.address == address }) else { return address }
        return "s\(i + 1) (\(address))"
    }

    /// What a (re)started view service answers once it knows a leader, polled for at most `limit`.
    private static func settledRole(of address: String, in cluster: ProcessCluster, within limit: Duration) async -> ProbedViewServiceRole {
        let deadline = ContinuousClock.now + limit
        var role = ProbedViewServiceRole.unreachable
        while ContinuousClock.now < deadline {
            role = await cluster.role(of: address, timeout: .milliseconds(200))
            if role == .leader { return role }
            if case .follower(.some) = role { return role }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return role
    }

    /// "vsN (HOST:PORT)", N in start order.
    private static func viewServiceName(_ address: String, _ cluster: ProcessCluster) -> String {
        let addresses = cluster.viewServiceAddress.split(separator: ",").map(String.init)
        guard let i = addresses.firstIndex(of: address) else { return address }
        return "vs\(i + 1) (\(address))"
    }
}

/// An instant set once, read from other tasks.
private final class Moment: Sendable {
    private let value = Mutex<ContinuousClock.Instant?>(nil)

    /// Records now, unless already set.
    func set() { value.withLock { if $0 == nil { $0 = .now } } }

    var instant: ContinuousClock.Instant? { value.withLock { $0 } }
}
