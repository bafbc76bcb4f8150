import CoreMetrics
import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVClient
import PBKVServer
import PBKVViewService
import PBKVWire
import Synchronization

/// A view service and KV servers inside the test process, each on its own event loop, talking
/// real TCP over loopback, or through an `InMemoryNetwork` when started with one. Servers can be
/// killed (their loop and connections vanish at once), restarted empty on the same address, made
/// lossy, or cut off from the view service.
public final class InProcessCluster: Sendable {
    /// A running in-process KV server and what it needs to be killed or restarted.
    public struct Node: Sendable {
        public let name: String
        public let address: String
        public let server: KVServer
        public let group: MultiThreadedEventLoopGroup
        /// Inbound faults (drop requests/replies); its policy can be changed at any time.
        public let faults: FaultInjector
        /// Faults on the link to the view service (set `partitioned` to cut the server off).
        public let viewServiceFaults: FaultInjector
    }

    public let pingInterval: Duration
    /// The view service's dead interval: what servers base read leases on.
    public let deadInterval: Duration
    /// Whether servers started here use read leases (`ReplicaConfiguration.readLeases`).
    public let readLeases: Bool
    public let viewServiceAddress: String
    /// The network the nodes talk through; nil: TCP over loopback. Its nodes (for partitions)
    /// are "viewservice", each server's address, "client-N" and "direct-N".
    public let network: InMemoryNetwork?
    private let clientCount = Atomic<Int>(0)
    private let viewService: ViewServiceServer
    private let rpcServer: RPCServer
    private let vsGroup: MultiThreadedEventLoopGroup
    private let logger: Logger
    private let onShutdown: @Sendable () async -> Void

    private init(
        pingInterval: Duration, deadInterval: Duration, readLeases: Bool, network: InMemoryNetwork?, viewService: ViewServiceServer,
        rpcServer: RPCServer, vsGroup: MultiThreadedEventLoopGroup, logger: Logger, onShutdown: @escaping @Sendable () async -> Void
    ) {
        self.pingInterval = pingInterval
        self.deadInterval = deadInterval
        self.readLeases = readLeases
        self.network = network
        self.viewService = viewService
        self.rpcServer = rpcServer
        self.vsGroup = vsGroup
        self.viewServiceAddress = "127.0.0.1:\(rpcServer.port)"
        self.logger = logger
        self.onShutdown = onShutdown
    }

    /// Starts the view service: by default the sole leader of a memory store; `election` (with
    /// the `port` it advertises) runs it in another mode, e.g. on etcd. `onShutdown` runs after
    /// the view service stopped (to stop what the election needed). `readLeases` is given to
    /// every server started. `metrics` measures the view
    /// service (`ViewServiceServer.start(metrics:)`; sample it with `refreshViewServiceMetrics()`).
    /// With `network`, every node and client talks through it instead of TCP.
    public static func start(
        pingInterval: Duration = .milliseconds(100), deadPings: Int = 5, port: Int = 0, election: (any ViewServiceElection)? = nil,
        readLeases: Bool = true, network: InMemoryNetwork? = nil, metrics: (any MetricsFactory)? = nil, logger: Logger? = nil,
        onShutdown: @escaping @Sendable () async -> Void = {}
    ) async throws -> InProcessCluster {
        var logger = logger ?? Logger(label: "pbkv.test")
        if logger.logLevel > .warning || logger.logLevel == .info { logger.logLevel = .warning }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var rpc = RPCServerConfiguration(host: "127.0.0.1", port: port)
        if let network { rpc.transport = network.transport(node: "viewservice") }
        let (service, server) = try await ViewServiceServer.start(
            rpc: rpc,
            configuration: ViewServiceConfiguration(pingInterval: pingInterval, deadPings: deadPings), election: election,
            metrics: metrics, group: group, logger: logger)
        return InProcessCluster(
            pingInterval: pingInterval, deadInterval: pingInterval * deadPings, readLeases: readLeases, network: network, viewService: service,
            rpcServer: server, vsGroup: group, logger: logger, onShutdown: onShutdown)
    }

    /// Starts a fresh (empty) server; `port` 0 picks a free one, another value restarts on it.
    /// `configure` adjusts its configuration last (limits, timeouts).
    public func startServer(
        name: String, port: Int = 0, faults: FaultPolicy = .none, seed: UInt64 = 1,
        configure: (inout KVServerConfiguration) -> Void = { _ in }
    ) async throws -> Node {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let chosenPort = port != 0 ? port : try network?.unusedPort(host: "127.0.0.1") ?? ProcessCluster.freePort()
        var configuration = KVServerConfiguration(
            listenHost: "127.0.0.1", listenPort: chosenPort, viewService: try PeerAddress.list(parsing: viewServiceAddress))
        configuration.transport = transport(node: "127.0.0.1:\(chosenPort)")
        configuration.pingInterval = pingInterval
        configuration.replica.leaseDeadInterval = deadInterval
        configuration.replica.readLeases = readLeases
        let inbound = FaultInjector(policy: faults, seed: seed)
        let toViewService = FaultInjector(policy: .none, seed: seed &+ 1)
        configuration.faults = inbound
        configuration.viewServiceFaults = toViewService
        configure(&configuration)
        var serverLogger = logger
        serverLogger[metadataKey: "node"] = "\(name)"
        // A restart may find the port in TIME_WAIT or not yet released: retry briefly.
        var lastError: (any Error)?
        for _ in 0..<50 {
            do {
                let server = try await KVServer.start(configuration: configuration, group: group, logger: serverLogger)
                return Node(
                    name: name, address: server.me, server: server, group: group, faults: inbound,
                    viewServiceFaults: toViewService)
            } catch let error as KVServerConfigurationError {
                try await group.shutdownGracefully()
                throw error  // retrying cannot help
            } catch {
                lastError = error
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        try await group.shutdownGracefully()
        throw lastError!
    }

    /// Kills a server: its event loop stops, its sockets close, its state is gone.
    public func kill(_ node: Node) async {
        await node.server.shutdown()
        try? await node.group.shutdownGracefully()
    }

    /// Restarts a killed server on the same address, empty.
    public func restart(_ node: Node, faults: FaultPolicy = .none, seed: UInt64 = 1) async throws -> Node {
        let port = try PeerAddress(parsing: node.address).port
        return try await startServer(name: node.name, port: port, faults: faults, seed: seed)
    }

    /// The view service's current view (with its acknowledged flag) and counters.
    public func view() async throws -> View {
        try await viewService.snapshot().view ?? .initial
    }

    /// Samples the view service's state into its metrics (when started with `metrics`).
    public func refreshViewServiceMetrics() async {
        await viewService.refreshMetrics()
    }

    public func viewServiceStats() async throws -> ViewServiceStats {
        try await viewService.snapshot().stats
    }

    /// Polls the view until `condition` holds; throws after `timeout`.
    @discardableResult
    public func waitForView(
        timeout: Duration = .seconds(10), _ what: String = "the expected view", _ condition: (View) -> Bool
    ) async throws -> View {
        let start = ContinuousClock.now
        while true {
            let view = try await self.view()
            if condition(view) { return view }
            if ContinuousClock.now - start > timeout {
                throw ClusterError.notReady("\(what) did not appear within \(timeout); last \(view)")
            }
            try await Task.sleep(for: pingInterval / 2)
        }
    }

    /// Polls `condition` until it holds; throws after `timeout`.
    public func waitUntil(timeout: Duration = .seconds(10), _ what: String, _ condition: () async throws -> Bool) async throws {
        let start = ContinuousClock.now
        while try await !condition() {
            if ContinuousClock.now - start > timeout { throw ClusterError.notReady("\(what) within \(timeout)") }
            try await Task.sleep(for: pingInterval / 2)
        }
    }

    /// How `node` reaches the others: this cluster's in-memory network, or TCP.
    public func transport(node: String) -> any RPCTransport {
        network.map { $0.transport(node: node) } ?? TCPTransport()
    }

    /// An RPC client straight to `address` (a delayed or misdirected request), on this cluster's transport.
    public func rpcClient(to address: String, eventLoop: any EventLoop) throws -> RPCClient {
        var configuration = RPCClientConfiguration()
        configuration.transport = transport(node: "direct-\(clientCount.add(1, ordering: .relaxed).newValue)")
        return RPCClient(peer: try PeerAddress(parsing: address), eventLoop: eventLoop, configuration: configuration, logger: logger)
    }

    /// A client of this cluster.
    public func client(deadline: Duration = .seconds(30), configure: (inout KVClientConfiguration) -> Void = { _ in }) throws -> KVClient {
        var configuration = KVClientConfiguration()
        configuration.transport = transport(node: "client-\(clientCount.add(1, ordering: .relaxed).newValue)")
        configuration.deadline = deadline
        configuration.retryInterval = pingInterval
        configuration.attemptTimeout = .milliseconds(300)
        configure(&configuration)
        return try KVClient(viewService: viewServiceAddress, configuration: configuration, logger: logger)
    }

    /// Stops the view service (kill servers first).
    public func shutdown() async {
        await viewService.stop()
        await rpcServer.close()
        try? await vsGroup.shutdownGracefully()
        await onShutdown()
    }
}
