import Foundation
import Logging
import NIOPosix
import PBKVCore
import PBKVWire

/// A replicated view service for tools: an etcd cluster of its own (three members on random
/// loopback ports) and view service processes of a `ProcessCluster` on it, all with the same
/// `--etcd … --etcd-prefix …`. `pbkv chaos --etcd`, `pbkv local --etcd` and `pbkv bench-cluster`
/// use it.
///
///     let replicated = try await ReplicatedViewService.start(prefix: "chaos", in: cluster) {
///         await EtcdClient.isServing(endpoint: $0)   // PBKVTestSupport has no HTTP client
///     }
///     try cluster.startServer(name: "s1")            // given every view service address
///     …
///     cluster.stopAll()                              // view services and servers, by pid
///     await replicated.shutdown()                    // the etcd members, by pid
public final class ReplicatedViewService: Sendable {
    public let etcd: EtcdCluster
    public let prefix: String

    /// What every view service process of this cluster is started with (a restart too).
    public var arguments: [String] { ["--etcd", etcd.endpointList, "--etcd-prefix", prefix] }

    private init(etcd: EtcdCluster, prefix: String) {
        self.etcd = etcd
        self.prefix = prefix
    }

    /// Starts `etcdMembers` (1 or 3) etcd members, then `viewServices` view service processes in
    /// `cluster` on them, and waits until one of those answers as leader (at most `within`).
    /// On failure the etcd members are stopped here; the view services by `cluster.stopAll()`.
    public static func start(
        etcdMembers: Int = 3, viewServices: Int = 3, prefix: String, in cluster: ProcessCluster,
        within limit: Duration = .seconds(30), probe: @escaping EtcdCluster.Probe
    ) async throws -> ReplicatedViewService {
        let etcd = try await EtcdCluster.start(members: etcdMembers, probe: probe)
        let replicated = ReplicatedViewService(etcd: etcd, prefix: prefix)
        do {
            for _ in 0..<viewServices { try cluster.startViewService(extraArguments: replicated.arguments) }
            _ = try await cluster.waitForViewServiceLeader(within: limit)
            return replicated
        } catch {
            await etcd.shutdown()
            throw error
        }
    }

    /// Stops every etcd member (by pid) and removes their data.
    public func shutdown() async { await etcd.shutdown() }
}

extension ProcessCluster {
    /// The view service process that answers GetView as leader now, or nil. Each one is asked
    /// directly (a follower's NOT_LEADER is not followed), at most `timeout` each.
    public func viewServiceLeader(timeout: Duration = .milliseconds(500)) async -> ClusterProcess? {
        for process in viewServiceProcesses where process.isRunning {
            if await answersAsLeader(process.address, timeout: timeout) { return process }
        }
        return nil
    }

    /// Polls until a view service other than `excluded` answers as leader; throws
    /// `ClusterError.notReady` after `limit`. Every round asks all of them at once, each over a
    /// connection kept between rounds, so a measurement is not slowed by connecting.
    public func waitForViewServiceLeader(
        within limit: Duration, excluding excluded: String? = nil, pollEvery interval: Duration = .milliseconds(10)
    ) async throws -> ClusterProcess {
        let deadline = ContinuousClock.now + limit
        var clients: [String: RPCClient] = [:]
        defer { for client in clients.values { _ = client.shutdown() } }
        while ContinuousClock.now < deadline {
            let candidates = viewServiceProcesses.filter { $0.isRunning && $0.address != excluded }
            for process in candidates where clients[process.address] == nil {
                clients[process.address] = try? rpcClient(
                    to: process.address, eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
                    logger: Logger(label: "pbkv.leader-probe", factory: { _ in SwiftLogNoOpLogHandler() }))
            }
            let asked = candidates.compactMap { process in clients[process.address].map { (process, $0) } }
            let leader = await withTaskGroup(of: ClusterProcess?.self) { group in
                for (process, client) in asked {
                    group.addTask { (try? await client.call(.getView, timeout: .milliseconds(200))) != nil ? process : nil }
                }
                for await answer in group where answer != nil {
                    group.cancelAll()
                    return answer
                }
                return nil
            }
            if let leader { return leader }
            try await Task.sleep(for: interval)
        }
        let logs = viewServiceProcesses.map(\.logFile.path).joined(separator: ", ")
        throw ClusterError.notReady("no view service answered as leader within \(limit); see their logs: \(logs)")
    }

    /// Polls until every view service process runs and they agree: one answers as leader, the
    /// others NOT_LEADER naming it (each has campaigned since it started). Returns the leader;
    /// throws `ClusterError.notReady` after `limit`.
    public func waitForSteadyViewServices(
        within limit: Duration, pollEvery interval: Duration = .milliseconds(20)
    ) async throws -> ClusterProcess {
        let deadline = ContinuousClock.now + limit
        var last: [String] = []
        while ContinuousClock.now < deadline {
            let processes = viewServiceProcesses
            var roles: [ProbedViewServiceRole] = []
            for process in processes { roles.append(await role(of: process.address, timeout: .milliseconds(200))) }
            last = zip(processes, roles).map { "\($0.address): \($1)" }
            let leaders = zip(processes, roles).filter { $1 == .leader }.map(\.0)
            if processes.count == viewServiceAddress.split(separator: ",").count, leaders.count == 1,
                roles.allSatisfy({ $0 == .leader || $0 == .follower(leader: leaders[0].address) })
            {
                return leaders[0]
            }
            try await Task.sleep(for: interval)
        }
        throw ClusterError.notReady("the view services did not agree on a leader within \(limit): \(last.joined(separator: ", "))")
    }

    /// Whether the view service at `address` answers a GetView itself (not NOT_LEADER).
    public func answersAsLeader(_ address: String, timeout: Duration) async -> Bool {
        await role(of: address, timeout: timeout) == .leader
    }

    /// What the view service at `address` says of itself now (`ViewServiceRole`, asked directly, once).
    public func role(of address: String, timeout: Duration) async -> ProbedViewServiceRole {
        guard
            let client = try? rpcClient(
                to: address, eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
                logger: Logger(label: "pbkv.leader-probe", factory: { _ in SwiftLogNoOpLogHandler() }))
        else { return .unreachable }
        defer { _ = client.shutdown() }
        guard let answer = try? await ViewServiceStub(client).viewServiceRole(timeout: timeout) else { return .unreachable }
        switch answer.role {
        case .leader: return .leader
        case .follower: return .follower(leader: answer.leader.isEmpty ? nil : answer.leader)
        case .loading, .failed: return .notServing(answer.detail.isEmpty ? "\(answer.role)" : "\(answer.role): \(answer.detail)")
        }
    }
}

/// What a view service process says of itself when asked (`ViewServiceRole`).
public enum ProbedViewServiceRole: Sendable, Hashable, CustomStringConvertible {
    /// It leads.
    case leader
    /// It follows, naming the leader when it knows one.
    case follower(leader: String?)
    /// Elected but still loading its store, or stopped by a store it cannot read.
    case notServing(String)
    /// No answer (refused, timed out, paused).
    case unreachable

    public var description: String {
        switch self {
        case .leader: "leader"
        case .follower(let leader): "follower of \(leader ?? "nobody yet")"
        case .notServing(let what): "not serving (\(what))"
        case .unreachable: "unreachable"
        }
    }
}
