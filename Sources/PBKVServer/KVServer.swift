import CoreMetrics
import Logging
import NIOCore
import NIOPosix
import PBKVTLS
import PBKVCore
import PBKVViewService
import PBKVWire
import ServiceLifecycle
import Synchronization

/// How a KV server runs.
public struct KVServerConfiguration: Sendable {
    /// Where to listen.
    public var listenHost: String
    public var listenPort: Int
    /// The address put in views (what clients and the primary dial). Defaults to the bound
    /// listen address.
    public var advertise: String?
    /// The view service: its address, or every address of a replicated one.
    public var viewService: [PeerAddress]
    /// How it listens and dials (to the view service, to its backup): TCP by default (mutual
    /// TLS with `tls`), or an `InMemoryNetwork`'s transport in tests.
    public var transport: any RPCTransport = TCPTransport()
    public var pingInterval: Duration = .milliseconds(100)
    /// Inbound fault injection (testing aid: `--fault-drop-requests`, `--fault-drop-replies`).
    public var faults: FaultInjector?
    /// Outbound fault injection on the link to the view service (tests: cut a server off).
    public var viewServiceFaults: FaultInjector?
    /// Timeout of a forward or transfer chunk to the backup before any round trip was measured
    /// (TCP's initial RTO), per 64 KiB on the link. Then calls time out after a few measured round
    /// trips (`RoundTripEstimator`), doubled after each timeout.
    public var forwardTimeout: Duration = .milliseconds(250)
    /// The most a forward or transfer chunk waits before it is retried, however large, slow or
    /// backed off: a few 1 MiB chunks in flight on a slow link still fit.
    public var transferTimeout: Duration = .seconds(5)
    /// The least a call to the backup waits (per 64 KiB on the link), however quick the round
    /// trips: below this, scheduling delays on a busy machine would look like loss.
    public var minimumBackupTimeout: Duration = .milliseconds(30)
    /// Key and value limits (`maxKeyBytes`, `maxValueBytes`) and batching. `maxFrameBytes` is
    /// set from `maxPayload` when the server starts.
    public var replica = ReplicaConfiguration()
    /// Largest frame payload sent or accepted; must be the same on every server of a cluster.
    public var maxPayload = Frame.defaultMaxPayload
    /// A connection must complete its Hello within this time (`RPCServerConfiguration.handshakeTimeout`).
    public var handshakeTimeout: Duration = .seconds(5)
    /// A connection with no call in flight and no frame for this long is closed; nil: never.
    /// The primary's link to its backup and this server's link to the view service reconnect
    /// on their next call.
    public var idleTimeout: Duration? = .seconds(300)
    /// Most client and server connections open at once (`RPCServerConfiguration.maxConnections`).
    public var maxConnections = RPCServerConfiguration.defaultMaxConnections
    /// With mutual TLS, places of `maxConnections` kept for cluster members, never given to
    /// clients (`RPCServerConfiguration.memberReserve`); nil: automatic.
    public var memberReserve: Int?
    /// What to offer on every connection (to clients, to the backup, to the view service) when
    /// the peer agrees: zlib per frame (the default), nothing, or also the deflate streams for
    /// slow links (`--compression off|frame|stream`).
    public var compression = CompressionMode.frame
    /// Mutual TLS on every connection: accepted ones (clients, the primary) and opened ones (the
    /// view service, the backup — which must hold a certificate for its address before it gets
    /// any state). nil: plaintext.
    public var tls: MutualTLS?
    /// Smallest transfer chunk that is compressed: bulk state, where bytes matter.
    public var transferCompressionThreshold = FrameCodec.defaultCompressionThreshold
    /// Smallest reply or forward batch that is compressed: the latency path, where on a LAN
    /// deflate costs more time than the bytes it saves (50 clients putting 1 KiB values: 15 k ops/s
    /// with a 1 KiB threshold, 29 k with 64 KiB).
    public var latencyCompressionThreshold = FrameCodec.latencyCompressionThreshold
    /// Where this server's metrics go (`--metrics`): calls, latency, bytes, connections, and its
    /// state sampled by `KVServer.refreshMetrics()`. nil: nothing is measured.
    public var metrics: (any MetricsFactory)?

    public init(listenHost: String, listenPort: Int, viewService: [PeerAddress]) {
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.viewService = viewService
    }

    /// Checks the limits before anything is bound: the largest key and value must fit in a
    /// frame as one forward from this server (its advertised address, or the longest address
    /// the listen host can have), the frame at least the protocol's minimum.
    public func validate() throws(KVServerConfigurationError) {
        guard maxPayload >= Int(RPCProtocol.minimumMaxFrameSize), maxPayload <= Int(UInt32.max) else {
            throw .maxPayloadOutOfRange(maxPayload)
        }
        guard maxConnections >= 1 else { throw .maxConnectionsNotPositive(maxConnections) }
        if let memberReserve, !(0..<maxConnections).contains(memberReserve) {
            throw .memberReserveOutOfRange(memberReserve, maxConnections: maxConnections)
        }
        guard handshakeTimeout > .zero, idleTimeout.map({ $0 > .zero }) ?? true else { throw .timeoutNotPositive }
        var replica = replica
        replica.maxFrameBytes = maxPayload
        do {
            try replica.validate(me: advertise ?? "\(listenHost):65535")
        } catch {
            throw .replica(error)
        }
    }
}

/// Why a `KVServerConfiguration` cannot be used; each message names the setting to change.
public enum KVServerConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    case maxPayloadOutOfRange(Int)
    case maxConnectionsNotPositive(Int)
    case memberReserveOutOfRange(Int, maxConnections: Int)
    case timeoutNotPositive
    case replica(ReplicaConfigurationError)

    public var description: String {
        switch self {
        case .maxPayloadOutOfRange(let n):
            "maxPayload \(n) is out of range: at least \(RPCProtocol.minimumMaxFrameSize) and at most \(UInt32.max)"
        case .maxConnectionsNotPositive(let n): "--max-connections is \(n); it must be at least 1"
        case .memberReserveOutOfRange(let n, let limit):
            "--member-reserve is \(n); it must be at least 0 and below --max-connections (\(limit)), or clients could never connect"
        case .timeoutNotPositive: "the handshake and idle timeouts must be positive"
        case .replica(let error): error.description
        }
    }
}

/// The KV server's network shell: runs the replica state machine on one event loop, feeds
/// it views (from pings), client calls and backup replies, and carries out its directives.
public final class KVServer: KVServiceProtocol, ReplicaServiceProtocol, Sendable {
    private struct State {
        var machine: ReplicaStateMachine
        var waiting: [ReplyToken: EventLoopPromise<KVReply>] = [:]
        var nextToken: ReplyToken = 1
        var pingInFlight = false
        var pingAgain = false
        /// Timeouts of calls to the backup and timing of transfers; made at the first call.
        var backupTimer: BackupCallTimer?
        var backupLink: (address: String, client: RPCClient)?
        var ticker: RepeatedTask?
        var stopped = false
        /// Backups already reported as refusing our frames (logged once each).
        var tooLargeReported: Set<String> = []
        /// Get, Put and PutHash calls received.
        var operations: UInt64 = 0
    }

    public let eventLoop: any EventLoop
    /// The address this server calls itself in views.
    public let me: String
    private let configuration: KVServerConfiguration
    private let logger: Logger
    private let state: NIOLoopBoundBox<State>
    private let viewService: ViewServiceClient
    private let rpcServer: NIOLoopBoundBox<RPCServer?>
    private let metrics: ServerMetrics?

    private init(
        me: String, eventLoop: any EventLoop, configuration: KVServerConfiguration, metrics: ServerMetrics?, logger: Logger
    ) {
        self.me = me
        self.metrics = metrics
        self.eventLoop = eventLoop
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "server"] = "\(me)"
        self.logger = logger
        self.state = NIOLoopBoundBox.makeBoxSendingValue(
            State(machine: ReplicaStateMachine(me: me, configuration: configuration.replica)), eventLoop: eventLoop)
        var vsConfig = Self.peerConfiguration(me: me, configuration: configuration, metrics: metrics)
        vsConfig.faults = configuration.viewServiceFaults
        self.viewService = ViewServiceClient(
            addresses: configuration.viewService, eventLoop: eventLoop, configuration: vsConfig, logger: logger)
        self.rpcServer = NIOLoopBoundBox.makeBoxSendingValue(nil, eventLoop: eventLoop)
    }

    /// Binds, starts pinging the view service, and serves until `shutdown()`.
    public static func start(configuration: KVServerConfiguration, group: any EventLoopGroup, logger: Logger) async throws
        -> KVServer
    {
        try configuration.validate()
        let configuration = {
            var adjusted = configuration
            adjusted.replica.maxFrameBytes = adjusted.maxPayload
            return adjusted
        }()
        let loop = group.next()
        // Bind first so the advertised address can default to the real port.
        let holder = ServiceHolder()
        let metrics = configuration.metrics.map(ServerMetrics.init)
        var rpc = RPCServerConfiguration(host: configuration.listenHost, port: configuration.listenPort)
        rpc.transport = configuration.transport
        rpc.metrics = metrics?.rpc
        rpc.tls = configuration.tls
        rpc.faults = configuration.faults
        rpc.maxPayload = configuration.maxPayload
        rpc.compression = configuration.compression
        rpc.compressionThreshold = configuration.latencyCompressionThreshold
        rpc.name = "pbkv-server"
        rpc.handshakeTimeout = configuration.handshakeTimeout
        rpc.idleTimeout = configuration.idleTimeout
        rpc.maxConnections = configuration.maxConnections
        rpc.memberReserve = configuration.memberReserve
        let server = try await RPCServer.start(
            configuration: rpc, group: loop,
            tables: [.kv(LateBoundKV(holder: holder)), .replica(LateBoundReplica(holder: holder))], logger: logger)
        let me = configuration.advertise ?? "\(configuration.listenHost):\(server.port)"
        let kv = KVServer(me: me, eventLoop: loop, configuration: configuration, metrics: metrics, logger: logger)
        holder.set(kv)
        try await loop.submit {
            kv.rpcServer.value = server
            kv.state.value.ticker = loop.scheduleRepeatedTask(
                initialDelay: .zero, delay: configuration.pingInterval.timeAmount
            ) { _ in kv.ping() }
        }.get()
        kv.logger.info("server listening", metadata: [
            "address": "\(server.address)", "viewservice": "\(configuration.viewService.map(\.description).joined(separator: ","))",
            "max_key_bytes": "\(configuration.replica.maxKeyBytes)", "max_value_bytes": "\(configuration.replica.maxValueBytes)",
            "max_connections": "\(configuration.maxConnections)",
        ])
        return kv
    }

    /// Stops pinging and serving; waiting clients get WRONG_SERVER.
    public func shutdown() async {
        let server: RPCServer? = try? await eventLoop.submit { () -> RPCServer? in
            self.state.value.stopped = true
            self.state.value.ticker?.cancel()
            for (_, promise) in self.state.value.waiting { promise.succeed(KVReply(code: .wrongServer)) }
            self.state.value.waiting.removeAll()
            _ = self.state.value.backupLink?.client.shutdown()
            _ = self.viewService.shutdown()
            return self.rpcServer.value
        }.get()
        await server?.close()
        logger.info("server stopped")
    }

    /// Role, view and key count, for status output and tests.
    public func status() async throws -> (role: ReplicaRole, view: View, keys: Int, hasState: Bool) {
        try await eventLoop.submit {
            let m = self.state.value.machine
            return (m.role, m.view, m.store.map.count, m.hasState)
        }.get()
    }

    /// Whether this server holds a read lease now (tests: wait for it to end).
    public func holdsReadLease() async throws -> Bool {
        try await eventLoop.submit { self.state.value.machine.holdsLease(at: self.clockNow) }.get()
    }

    /// What `pbkv status` shows: role, view, keys, bytes, rows, operations, connections, transfer.
    public func serverStatus() async throws -> ServerStatus {
        try await eventLoop.submit { self.currentStatus() }.get()
    }

    /// Samples the state into the metrics (before a scrape); does nothing without `--metrics`.
    public func refreshMetrics() async {
        guard let metrics else { return }
        if let status = try? await serverStatus() { metrics.update(from: status) }
    }

    /// The status, read on the loop.
    private func currentStatus() -> ServerStatus {
        let m = state.value.machine
        return ServerStatus(
            server: me, role: m.role.rawValue, view: m.view, keys: UInt64(m.store.map.count), bytes: UInt64(m.store.bytes),
            duplicateRows: UInt64(m.store.duplicates.count), operations: state.value.operations,
            connections: UInt32(clamping: rpcServer.value?.connectionCount ?? 0), transfer: m.transferProgress,
            uptimeMs: UInt64(clamping: clockNow.milliseconds))
    }

    /// Connections open at this server now (clients, and a primary's link if this is its backup).
    public func connectionCount() async -> Int {
        (try? await eventLoop.submit { self.rpcServer.value?.connectionCount ?? 0 }.get()) ?? 0
    }

    /// A copy of the map (tests: compare replicas).
    public func snapshot() async throws -> [String: String] {
        try await eventLoop.submit { self.state.value.machine.store.map.dictionary }.get()
    }

    /// A copy of the whole replicated state, duplicate table included (tests: compare replicas).
    public func storeSnapshot() async throws -> KVStore {
        try await eventLoop.submit { self.state.value.machine.store }.get()
    }

    // MARK: - view service

    private func ping() {
        guard !state.value.stopped else { return }
        guard !state.value.pingInFlight else {
            state.value.pingAgain = true
            return
        }
        state.value.pingInFlight = true
        let viewnum = state.value.machine.pingViewnum
        // A read lease counts from before the ping left (ContinuousClock: it also advances
        // while the machine is suspended, so a lease never outlives a suspend).
        let sentAt = clockNow
        viewService.ping(server: me, viewnum: viewnum, timeout: max(configuration.pingInterval * 2, .milliseconds(500))).whenComplete { result in
            self.state.value.pingInFlight = false
            if case .success(let view) = result, !self.state.value.stopped {
                self.run(self.state.value.machine.onView(view, pingSentAt: sentAt))
            }
            if self.state.value.pingAgain {
                self.state.value.pingAgain = false
                self.ping()
            }
        }
    }

    // MARK: - directives

    private func run(_ directives: [ReplicaDirective]) {
        for directive in directives {
            switch directive {
            case .reply(let token, let reply):
                state.value.waiting.removeValue(forKey: token)?.succeed(reply)
            case .forward(let target, let args, let delay):
                after(delay) { self.sendForward(to: target, args) }
            case .transfer(let target, let chunk, let delay):
                after(delay) { self.sendTransfer(to: target, chunk) }
            case .pingNow:
                ping()
            case .roleChanged(let from, let to, let view):
                logger.info("role changed", metadata: [
                    "role.from": "\(from)", "role.to": "\(to)", "view.num": "\(view.viewnum)",
                    "view.primary": "\(view.primary)", "view.backup": "\(view.backup)",
                ])
            case .transferCompleted(let target, let entries, let chunks):
                metrics?.transfersCompleted.increment()
                // The whole transfer: since its first chunk 0 left, resends and restarts included.
                let summary = withBackupTimer { $0.transferCompleted(to: target, at: clockNow) }
                logger.info("state transfer completed", metadata: [
                    "backup": "\(target)", "entries": "\(entries)", "chunks": "\(chunks)",
                    "milliseconds": "\(summary.map { Int($0.elapsed / .milliseconds(1)) } ?? 0)",
                    "resends": "\(summary?.resends ?? 0)", "unanswered": "\(summary?.unanswered ?? 0)",
                ])
            }
        }
    }

    private func after(_ delay: Duration, _ body: @escaping () -> Void) {
        let bound = NIOLoopBound(body, eventLoop: eventLoop)
        if delay <= .zero {
            body()
        } else {
            eventLoop.scheduleTask(in: delay.timeAmount) { bound.value() }
        }
    }

    /// What this server's own connections (to the view service, to its backup) share: its name,
    /// transport, TLS, compression and metrics.
    private static func peerConfiguration(
        me: String, configuration: KVServerConfiguration, metrics: ServerMetrics?
    ) -> RPCClientConfiguration {
        var peer = RPCClientConfiguration()
        peer.name = me
        peer.transport = configuration.transport
        peer.tls = configuration.tls
        peer.compression = configuration.compression
        peer.metrics = metrics?.rpc
        return peer
    }

    private func backupClient(_ address: String) -> RPCClient? {
        if let link = state.value.backupLink, link.address == address { return link.client }
        if let old = state.value.backupLink { _ = old.client.shutdown() }
        guard let peer = try? PeerAddress(parsing: address) else { return nil }
        var config = Self.peerConfiguration(me: me, configuration: configuration, metrics: metrics)
        config.maxPayload = configuration.maxPayload
        let client = RPCClient(peer: peer, eventLoop: eventLoop, configuration: config, logger: logger)
        state.value.backupLink = (address, client)
        withBackupTimer { $0.backupChanged() }
        return client
    }

    /// Origin of the `Duration`s handed to the backup timer and the replica state machine.
    private let clockOrigin = ContinuousClock.now
    /// Time for the backup timer and read leases: since this server was made.
    private var clockNow: Duration { ContinuousClock.now - clockOrigin }

    private func withBackupTimer<T>(_ body: (inout BackupCallTimer) -> T) -> T {
        var timer = state.value.backupTimer ?? BackupCallTimer(
            initial: configuration.forwardTimeout, minimum: configuration.minimumBackupTimeout,
            maximum: configuration.transferTimeout)
        defer { state.value.backupTimer = timer }
        return body(&timer)
    }

    private func sendForward(to target: String, _ args: ForwardArgs) {
        guard !state.value.stopped, let client = backupClient(target) else { return }
        let timed = withBackupTimer { $0.willSendForward(args, at: clockNow) }
        metrics?.forwardBatch.record(args.ops.count)
        ReplicaStub(client).forward(args, timeout: timed.timeout, compressionThreshold: configuration.latencyCompressionThreshold)
            .whenComplete { result in
            let outcome: ReplicaCallOutcome<ForwardReply>
            if case .success(let reply) = result { outcome = .replied(reply) } else { outcome = .failed }
            if case .failure(let error) = result { self.reportIfTooLarge(error, target: target) }
            self.withBackupTimer { $0.didComplete(timed, replied: outcome != .failed, at: self.clockNow) }
            self.run(self.state.value.machine.onForwardOutcome(to: target, firstIndex: args.firstIndex, outcome: outcome))
        }
    }

    private func sendTransfer(to target: String, _ chunk: TransferChunk) {
        guard !state.value.stopped, let client = backupClient(target) else { return }
        let timed = withBackupTimer { $0.willSendTransfer(chunk, to: target, at: clockNow) }
        ReplicaStub(client).transfer(chunk, timeout: timed.timeout, compressionThreshold: configuration.transferCompressionThreshold)
            .whenComplete { result in
            let outcome: ReplicaCallOutcome<TransferReply>
            if case .success(let reply) = result { outcome = .replied(reply) } else { outcome = .failed }
            if case .failure(let error) = result { self.reportIfTooLarge(error, target: target) }
            self.withBackupTimer { $0.didComplete(timed, replied: outcome != .failed, at: self.clockNow) }
            self.run(self.state.value.machine.onTransferOutcome(
                to: target, transferID: chunk.transferID, chunkIndex: chunk.chunkIndex, outcome: outcome))
        }
    }

    /// A batch that fits our frames but not the backup's: the servers run with different frame
    /// limits, and the call is retried in vain until the view changes. Said once per backup.
    private func reportIfTooLarge(_ error: any Error, target: String) {
        guard case .requestTooLarge = error as? RPCError, !state.value.tooLargeReported.contains(target) else { return }
        state.value.tooLargeReported.insert(target)
        logger.info("the backup refuses frames this primary must send: run every server with the same limits", metadata: [
            "backup": "\(target)", "error": "\(error)",
        ])
    }

    // MARK: - KVServiceProtocol

    /// Runs `body` on the server's loop: at once when already there (the usual case: the RPC
    /// server shares the loop), so a reply can go out in the same read batch.
    private func onLoop<T: Sendable>(_ body: @escaping @Sendable () -> EventLoopFuture<T>) -> EventLoopFuture<T> {
        eventLoop.inEventLoop ? body() : eventLoop.flatSubmit(body)
    }

    private func submit(_ op: Operation) -> EventLoopFuture<KVReply> {
        onLoop {
            guard !self.state.value.stopped else { return self.eventLoop.makeSucceededFuture(KVReply(code: .wrongServer)) }
            let token = self.state.value.nextToken
            self.state.value.nextToken += 1
            self.state.value.operations += 1
            // The clock is read here, when the request is handled: a process paused since the
            // request arrived sees the time it woke at, and its lease has ended.
            let directives = self.state.value.machine.onClientRequest(op, token: token, now: self.clockNow)
            // Answered at once (a Get on a lease, a duplicate, a refusal): no promise to keep.
            for case .reply(let replied, let reply) in directives where replied == token {
                self.run(directives)
                return self.eventLoop.makeSucceededFuture(reply)
            }
            let promise = self.eventLoop.makePromise(of: KVReply.self)
            self.state.value.waiting[token] = promise
            self.run(directives)
            return promise.futureResult
        }
    }

    public func get(_ request: GetArgs, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        submit(Operation(kind: .get, key: request.key, id: request.id))
    }

    public func put(_ request: PutArgs, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        submit(Operation(kind: .put, key: request.key, value: request.value, id: request.id))
    }

    public func putHash(_ request: PutHashArgs, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        submit(Operation(kind: .putHash, key: request.key, value: request.value, id: request.id))
    }

    public func serverStatus(context: RPCCallContext) -> EventLoopFuture<ServerStatus> {
        onLoop { self.eventLoop.makeSucceededFuture(self.currentStatus()) }
    }

    // MARK: - ReplicaServiceProtocol

    public func forward(_ args: ForwardArgs, context: RPCCallContext) -> EventLoopFuture<ForwardReply> {
        onLoop {
            let (reply, directives) = self.state.value.machine.onForward(args)
            self.run(directives)
            return self.eventLoop.makeSucceededFuture(reply)
        }
    }

    public func transfer(_ chunk: TransferChunk, context: RPCCallContext) -> EventLoopFuture<TransferReply> {
        onLoop {
            let (reply, directives) = self.state.value.machine.onTransfer(chunk)
            self.run(directives)
            return self.eventLoop.makeSucceededFuture(reply)
        }
    }
}

/// Lets the RPC server be bound before the `KVServer` (which needs the bound port) exists.
private final class ServiceHolder: Sendable {
    private let box = Mutex<KVServer?>(nil)
    func set(_ server: KVServer) { box.withLock { $0 = server } }
    var server: KVServer? { box.withLock { $0 } }
}

private struct LateBoundKV: KVServiceProtocol {
    let holder: ServiceHolder
    func get(_ request: GetArgs, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        holder.server?.get(request, context: context) ?? context.eventLoop.makeSucceededFuture(KVReply(code: .wrongServer))
    }
    func put(_ request: PutArgs, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        holder.server?.put(request, context: context) ?? context.eventLoop.makeSucceededFuture(KVReply(code: .wrongServer))
    }
    func putHash(_ request: PutHashArgs, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        holder.server?.putHash(request, context: context) ?? context.eventLoop.makeSucceededFuture(KVReply(code: .wrongServer))
    }
    func serverStatus(context: RPCCallContext) -> EventLoopFuture<ServerStatus> {
        holder.server?.serverStatus(context: context)
            ?? context.eventLoop.makeFailedFuture(RPCServiceError(code: .notReady, message: "the server is starting; retry shortly"))
    }
}

private struct LateBoundReplica: ReplicaServiceProtocol {
    let holder: ServiceHolder
    func forward(_ args: ForwardArgs, context: RPCCallContext) -> EventLoopFuture<ForwardReply> {
        holder.server?.forward(args, context: context) ?? context.eventLoop.makeSucceededFuture(ForwardReply(code: .wrongServer))
    }
    func transfer(_ chunk: TransferChunk, context: RPCCallContext) -> EventLoopFuture<TransferReply> {
        holder.server?.transfer(chunk, context: context)
            ?? context.eventLoop.makeSucceededFuture(TransferReply(code: .wrongServer))
    }
}

extension KVServer: Service {
    /// Serves until the service group shuts down gracefully (SIGTERM, SIGINT) or the task is
    /// cancelled, then `shutdown()`: a `KVServer` runs in a ServiceLifecycle `ServiceGroup`.
    public func run() async throws {
        try? await gracefulShutdown()
        await shutdown()
    }
}
