import ArgumentParser
import PBKVCommandLine
import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVEtcd
import PBKVObservability
import PBKVServer
import PBKVViewService
import PBKVWire
import ServiceLifecycle

/// `pbkv viewservice`: runs the view service until SIGTERM/SIGINT.
struct ViewServiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viewservice", abstract: "Run the view service (failure detector and view manager).")

    @Option(help: "Address to listen on, HOST:PORT.")
    var listen: String = "127.0.0.1:7000"
    @Option(help: "Expected interval between a server's pings, in milliseconds.")
    var pingIntervalMs: Int = 100
    @Option(help: "A server that misses this many pings in a row is dead.")
    var deadPings: Int = 5
    @Option(help: "Directory of the durable view record (created if absent; one view service per directory).")
    var dataDir: String = "./pbkv-viewservice"
    @Flag(help: "Keep the view only in memory (tests): a restart forgets it and starts again from view 0.")
    var inMemory = false
    @Option(help: "Replicated mode: the etcd cluster's client endpoints, HOST:PORT[,HOST:PORT…] (instead of --data-dir).")
    var etcd: String?
    @Option(help: "Replicated mode: the key prefix of this pbkv cluster in etcd (several clusters may share one etcd).")
    var etcdPrefix: String = "pbkv"
    @Option(help: "Replicated mode: the address other view services give clients for this one, HOST:PORT. Default: --listen.")
    var advertise: String?
    @OptionGroup var compression: CompressionOptions
    @OptionGroup var security: SecurityOptions
    @OptionGroup var metrics: MetricsOptions
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard pingIntervalMs > 0 else { throw ValidationError("--ping-interval-ms must be positive") }
        guard !dataDir.isEmpty else { throw ValidationError("--data-dir must not be empty") }
        _ = try security.choice()
        if let etcd {
            guard !inMemory else { throw ValidationError("--etcd and --in-memory exclude each other: choose one store") }
            do { _ = try EtcdClient.parseEndpoints(etcd) } catch { throw ValidationError("--etcd: \(error)") }
            guard !etcdPrefix.isEmpty, !etcdPrefix.contains(" ") else { throw ValidationError("--etcd-prefix must be a non-empty name without spaces") }
        }
        if let advertise, (try? PeerAddress(parsing: advertise)) == nil { throw ValidationError("--advertise must be HOST:PORT") }
        guard deadPings > 0 else { throw ValidationError("--dead-pings must be positive") }
        guard (try? PeerAddress(parsing: listen)) != nil else { throw ValidationError("--listen must be HOST:PORT") }
    }

    func run() async throws {
        let logger = logging.bootstrap(label: "pbkv.viewservice")
        let address = try PeerAddress(parsing: listen)
        var rpc = RPCServerConfiguration(host: address.host, port: address.port)
        rpc.tls = try security.resolve(logger: logger)
        rpc.compression = compression.mode
        let election = try await makeElection(logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let exported = try await metrics.start(group: group, logger: logger)
        let (service, server) = try await ViewServiceServer.start(
            rpc: rpc,
            configuration: ViewServiceConfiguration(pingInterval: .milliseconds(pingIntervalMs), deadPings: deadPings),
            election: election, metrics: exported?.metrics.factory, group: group, logger: logger)
        exported?.metrics.addSampler { await service.refreshMetrics() }
        // What the view service needs, closed after it stopped (services stop in reverse order).
        let connections = ShutdownOnSignal {
            await exported?.server.close()
            await server.close()
        }
        // Listed first, so shut down last: it returns once the service stopped.
        let storeWatch = FailWhen(future: service.terminated)
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: storeWatch, failureTerminationBehavior: .gracefullyShutdownGroup), .init(service: connections),
                    .init(service: service),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await serviceGroup.run()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
        logger.info("view service stopped")
    }

    /// The etcd election (replicated mode), or sole leadership of the file store (default) or
    /// of memory. The file store is opened and read once here, so a damaged or locked data
    /// directory stops the command at once with a message naming it.
    private func makeElection(logger: Logger) async throws -> any ViewServiceElection {
        if let etcd {
            let client = try EtcdClient(endpoints: EtcdClient.parseEndpoints(etcd), logger: logger)
            logger.info("replicated view service on etcd", metadata: ["etcd": "\(etcd)", "etcd.prefix": "\(etcdPrefix)"])
            return EtcdElection(client: client, prefix: etcdPrefix, advertise: advertise ?? listen, logger: logger)
        }
        if inMemory {
            logger.warning("view kept in memory only (--in-memory): a restart of this view service forgets the view")
            return SoleLeadership(store: InMemoryViewStore())
        }
        let store = try FileViewStore(directory: dataDir)
        let record = try await store.load()
        logger.info("view store opened", metadata: ["path": "\(store.location)", "stored": "\(record.map(\.description) ?? "nothing yet")"])
        return SoleLeadership(store: store)
    }
}

/// `pbkv server`: runs a KV server until SIGTERM/SIGINT.
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server", abstract: "Run a KV server (primary, backup or idle, as the view service decides).")

    @Option(help: "Address to listen on, HOST:PORT.")
    var listen: String
    @Option(help: "The view service, HOST:PORT; a replicated one as HOST:PORT,HOST:PORT,…")
    var viewservice: String
    @Option(help: "Address to put in views (what clients dial), HOST:PORT. Default: the listen address.")
    var advertise: String?
    @Option(help: "Interval between pings to the view service, in milliseconds.")
    var pingIntervalMs: Int = 100
    @OptionGroup var compression: CompressionOptions
    @Flag(help: "Same as --compression off (for measurements).")
    var noCompression = false
    @Option(help: """
        Largest key, in UTF-8 bytes; a Get, Put or PutHash with a longer key is refused with BAD_REQUEST \
        naming this limit. The largest key plus the largest value must fit in one 16 MiB frame.
        """)
    var maxKeyBytes: Int = ReplicaConfiguration.defaultMaxKeyBytes
    @Option(help: """
        Largest value, in UTF-8 bytes; a Put or PutHash with a longer value is refused with BAD_REQUEST \
        naming this limit, before anything is applied. Use the same limits on every server.
        """)
    var maxValueBytes: Int = ReplicaConfiguration.defaultMaxValueBytes
    @Option(help: """
        Most client sessions remembered for at-most-once (duplicate-table rows, about 100 bytes each); \
        the least recently used beyond it are evicted and a retry of an evicted session gets \
        SESSION_EXPIRED, never a second execution. Use the same value on every server.
        """)
    var maxSessions: Int = KVStore.defaultMaxSessions
    @Option(help: """
        Most connections open at once, from clients and servers alike. When all are open, a new \
        connection takes the place of the oldest one that has not sent its Hello; when every one \
        has, it gets a Goodbye (UNAVAILABLE, "too many connections") and is closed. Default: the \
        open-file limit minus \(RPCServerConfiguration.reservedFileDescriptors) kept for the server's \
        own use, at most \(RPCServerConfiguration.connectionLimitCap) (here: \(RPCServerConfiguration.defaultMaxConnections)).
        """)
    var maxConnections: Int?
    @Option(help: """
        With --tls: places of --max-connections that clients may not take, kept for cluster \
        members (server certificates), so a flood of clients never cuts this server from its \
        primary or backup. Default: a quarter of --max-connections, at most 64.
        """)
    var memberReserve: Int?
    @Option(help: "Milliseconds a new connection has to send its Hello; then it gets a Goodbye and is closed.")
    var handshakeTimeoutMs: Int = 5_000
    @Option(help: "Seconds a connection may stay idle (no call in flight, nothing received) before it gets a Goodbye and is closed; 0: never.")
    var idleTimeoutSeconds: Int = 300
    @Option(help: """
        Read leases (true or false, e.g. --read-leases=false): the primary answers a Get from its own \
        committed state while the view service cannot have named another primary, instead of a round \
        trip to the backup. Off: every Get goes through the backup.
        """)
    var readLeases = true
    @Option(help: """
        The view service's dead interval in milliseconds (its --ping-interval-ms times --dead-pings), \
        on which read leases are based. Never set it above the view service's.
        """)
    var deadIntervalMs: Int = 500
    @Option(help: "TESTING AID: drop each inbound call before it runs with this probability (0...1).")
    var faultDropRequests: Double = 0
    @Option(help: "TESTING AID: run each inbound call but lose its reply with this probability (0...1).")
    var faultDropReplies: Double = 0
    @Option(help: "TESTING AID: seed of the fault injector (same seed, same faults).")
    var faultSeed: UInt64 = 1
    @OptionGroup var security: SecurityOptions
    @OptionGroup var metrics: MetricsOptions
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard (try? PeerAddress(parsing: listen)) != nil else { throw ValidationError("--listen must be HOST:PORT") }
        _ = try security.choice()
        guard (try? PeerAddress.list(parsing: viewservice)) != nil else {
            throw ValidationError("--viewservice must be HOST:PORT, or several separated by commas")
        }
        if let advertise, (try? PeerAddress(parsing: advertise)) == nil {
            throw ValidationError("--advertise must be HOST:PORT")
        }
        guard (0...1).contains(faultDropRequests), (0...1).contains(faultDropReplies) else {
            throw ValidationError("fault probabilities must be between 0 and 1")
        }
        guard handshakeTimeoutMs > 0 else { throw ValidationError("--handshake-timeout-ms must be positive") }
        guard idleTimeoutSeconds >= 0 else { throw ValidationError("--idle-timeout-seconds must not be negative (0: never)") }
        guard deadIntervalMs >= 0 else { throw ValidationError("--dead-interval-ms must not be negative") }
        if noCompression && compression.mode != .frame {
            throw ValidationError("--no-compression and --compression \(compression.mode.rawValue) exclude each other: choose one")
        }
        do {
            try makeConfiguration().validate()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// The server's configuration from the flags (addresses already validated).
    private func makeConfiguration() throws -> KVServerConfiguration {
        let address = try PeerAddress(parsing: listen)
        var configuration = KVServerConfiguration(
            listenHost: address.host, listenPort: address.port, viewService: try PeerAddress.list(parsing: viewservice))
        configuration.advertise = advertise ?? (address.port == 0 ? nil : listen)
        configuration.pingInterval = .milliseconds(pingIntervalMs)
        configuration.compression = noCompression ? .off : compression.mode
        configuration.replica.maxKeyBytes = maxKeyBytes
        configuration.replica.maxValueBytes = maxValueBytes
        configuration.replica.maxSessions = maxSessions
        configuration.replica.readLeases = readLeases
        configuration.replica.leaseDeadInterval = .milliseconds(deadIntervalMs)
        if let maxConnections { configuration.maxConnections = maxConnections }
        configuration.memberReserve = memberReserve
        configuration.handshakeTimeout = .milliseconds(handshakeTimeoutMs)
        configuration.idleTimeout = idleTimeoutSeconds == 0 ? nil : .seconds(idleTimeoutSeconds)
        return configuration
    }

    func run() async throws {
        let logger = logging.bootstrap(label: "pbkv.server")
        var configuration = try makeConfiguration()
        configuration.tls = try security.resolve(logger: logger)
        if let tls = configuration.tls, let me = configuration.advertise, !tls.material.identity.speaks(for: me) {
            throw ValidationError(
                "the certificate \(tls.material.name) (\(tls.material.identity)) does not cover this server's address \(me); "
                    + "issue one with `pbkv certs issue \(tls.material.directory) NAME --role server --host \(me)`")
        }
        if faultDropRequests > 0 || faultDropReplies > 0 {
            configuration.faults = FaultInjector(
                policy: FaultPolicy(dropRequest: faultDropRequests, dropReply: faultDropReplies), seed: faultSeed)
            logger.warning("fault injection on", metadata: [
                "drop_requests": "\(faultDropRequests)", "drop_replies": "\(faultDropReplies)", "seed": "\(faultSeed)",
            ])
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let exported = try await metrics.start(group: group, logger: logger)
        configuration.metrics = exported?.metrics.factory
        let server = try await KVServer.start(configuration: configuration, group: group, logger: logger)
        exported?.metrics.addSampler { await server.refreshMetrics() }
        // The metrics endpoint closes after the server stopped (services stop in reverse order).
        let metricsEndpoint = ShutdownOnSignal { await exported?.server.close() }
        let serviceGroup = ServiceGroup(
            configuration: .init(services: [metricsEndpoint, server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await serviceGroup.run()
        try await group.shutdownGracefully()
    }
}

/// `--metrics HOST:PORT` of the long-running commands: Prometheus text over plain HTTP.
struct MetricsOptions: ParsableArguments {
    @Option(help: """
        Serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP; counts and sizes only, never \
        keys or values: bind it to loopback or a monitoring network). Off by default.
        """)
    var metrics: String?

    func validate() throws {
        if let metrics, (try? PeerAddress(parsing: metrics)) == nil {
            throw ValidationError("--metrics must be HOST:PORT, e.g. 127.0.0.1:9100")
        }
    }

    /// Starts the metrics endpoint when `--metrics` was given.
    func start(group: any EventLoopGroup, logger: Logger) async throws -> (metrics: ProcessMetrics, server: MetricsHTTPServer)? {
        guard let metrics else { return nil }
        let address = try PeerAddress(parsing: metrics)
        let registry = ProcessMetrics()
        do {
            let server = try await MetricsHTTPServer.start(
                host: address.host, port: address.port, metrics: registry, group: group, logger: logger)
            return (registry, server)
        } catch {
            throw ValidationError("--metrics \(metrics): cannot listen there: \(error)")
        }
    }
}

/// A lifecycle service that fails when `future` fails; when it succeeds (the service it
/// watches was stopped) it waits for its own turn to shut down.
struct FailWhen: Service {
    let future: EventLoopFuture<Void>

    func run() async throws {
        try await future.get()
        try? await gracefulShutdown()
    }
}

/// A lifecycle service that waits for graceful shutdown, then runs `onShutdown`.
struct ShutdownOnSignal: Service {
    let onShutdown: @Sendable () async -> Void

    func run() async throws {
        try? await gracefulShutdown()
        await onShutdown()
    }
}
