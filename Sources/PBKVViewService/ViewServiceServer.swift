import Logging
import NIOCore
import NIOPosix
import PBKVWire

/// Counters of what the view service has answered, for status and benchmarks.
public struct ViewServiceStats: Sendable, Hashable {
    public var pings = 0
    public var getViews = 0
    public var viewChanges = 0
}

/// The view service's network shell: owns the state machine on one event loop, answers
/// Ping/GetView over RPC, and ticks the machine every ping interval with the real clock.
public final class ViewServiceServer: ViewServiceProtocol, Sendable {
    private struct State {
        var machine: ViewServiceStateMachine
        var stats = ViewServiceStats()
    }

    public let eventLoop: any EventLoop
    private let state: NIOLoopBoundBox<State>
    private let origin = ContinuousClock.now
    private let logger: Logger
    private let ticker: NIOLoopBoundBox<RepeatedTask?>

    private init(eventLoop: any EventLoop, configuration: ViewServiceConfiguration, logger: Logger) {
        self.eventLoop = eventLoop
        self.logger = logger
        self.state = NIOLoopBoundBox.makeBoxSendingValue(
            State(machine: ViewServiceStateMachine(configuration: configuration)), eventLoop: eventLoop)
        self.ticker = NIOLoopBoundBox.makeBoxSendingValue(nil, eventLoop: eventLoop)
    }

    /// A view service bound to `rpc.host:rpc.port` on a loop of `group`.
    public static func start(
        rpc: RPCServerConfiguration, configuration: ViewServiceConfiguration = .init(),
        group: any EventLoopGroup, logger: Logger
    ) async throws -> (service: ViewServiceServer, server: RPCServer) {
        let loop = group.next()
        let service = ViewServiceServer(eventLoop: loop, configuration: configuration, logger: logger)
        let server = try await RPCServer.start(
            configuration: rpc, group: loop, tables: [.viewService(service)], logger: logger)
        try await loop.submit {
            service.ticker.value = loop.scheduleRepeatedTask(
                initialDelay: configuration.pingInterval.timeAmount, delay: configuration.pingInterval.timeAmount
            ) { _ in service.tick() }
        }.get()
        logger.info("view service listening", metadata: [
            "address": "\(server.localAddress)", "ping_interval_ms": "\(configuration.pingInterval.milliseconds)",
            "dead_pings": "\(configuration.deadPings)",
        ])
        return (service, server)
    }

    /// Stops the ticker (the RPC server is closed by its owner).
    public func stop() async {
        try? await eventLoop.submit { self.ticker.value?.cancel() }.get()
    }

    private var now: Duration { ContinuousClock.now - origin }

    private func tick() {
        if let change = state.value.machine.onTick(now: now) { record(change) }
    }

    private func record(_ change: ViewServiceStateMachine.ViewChange) {
        state.value.stats.viewChanges += 1
        logger.info("view changed", metadata: [
            "view.num": "\(change.to.viewnum)", "view.primary": "\(change.to.primary)",
            "view.backup": "\(change.to.backup)", "previous.primary": "\(change.from.primary)",
            "previous.backup": "\(change.from.backup)",
        ])
    }

    private func onLoop<T: Sendable>(_ body: @escaping @Sendable () -> T) -> EventLoopFuture<T> {
        eventLoop.inEventLoop ? eventLoop.makeSucceededFuture(body()) : eventLoop.submit(body)
    }

    public func ping(_ args: PingArgs, context: RPCCallContext) -> EventLoopFuture<View> {
        onLoop {
            self.state.value.stats.pings += 1
            let (view, change) = self.state.value.machine.onPing(server: args.server, viewnum: args.viewnum, now: self.now)
            if let change { self.record(change) }
            return view
        }
    }

    public func getView(context: RPCCallContext) -> EventLoopFuture<View> {
        onLoop {
            self.state.value.stats.getViews += 1
            return self.state.value.machine.currentView
        }
    }

    /// The current view and counters.
    public func snapshot() async throws -> (view: View, acknowledged: Bool, stats: ViewServiceStats) {
        try await eventLoop.submit {
            (self.state.value.machine.currentView, self.state.value.machine.acknowledged, self.state.value.stats)
        }.get()
    }
}

/// Typed client stub for the view service.
public struct ViewServiceClient: Sendable {
    public let rpc: RPCClient

    public init(rpc: RPCClient) { self.rpc = rpc }

    /// Heartbeat: `viewnum` is the view the server acknowledges (0 after a restart).
    public func ping(server: String, viewnum: UInt64, timeout: Duration) -> EventLoopFuture<View> {
        rpc.call(.ping(PingArgs(server: server, viewnum: viewnum)), timeout: timeout).flatMapThrowing(Self.view)
    }

    /// The current view, without counting as a ping.
    public func getView(timeout: Duration) -> EventLoopFuture<View> {
        rpc.call(.getView, timeout: timeout).flatMapThrowing(Self.view)
    }

    public func getView(timeout: Duration) async throws -> View {
        try await getView(timeout: timeout).get()
    }

    private static func view(_ result: CallResult) throws -> View {
        guard case .view(let view) = result else { throw RPCError.protocolViolation("expected a View reply") }
        return view
    }
}

extension Duration {
    /// Whole milliseconds.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
