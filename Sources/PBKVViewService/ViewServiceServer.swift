import CoreMetrics
import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVWire
import ServiceLifecycle

/// Counters of what the view service has answered, for status and benchmarks.
public struct ViewServiceStats: Sendable, Hashable {
    public var pings = 0
    public var getViews = 0
    public var viewChanges = 0
}

/// The view service's network shell: answers Ping/GetView over RPC, runs the state machine on
/// one event loop while this process is leader, stores every new record before anyone sees it,
/// and ticks the machine every ping interval with the real clock.
///
/// Leadership comes from a `ViewServiceElection`: `SoleLeadership` for one process with a file
/// or memory store, the etcd election in replicated mode. While not leader it answers every
/// call NOT_LEADER with the leader's address. A failed compare-and-store makes it step down at
/// once; a stored record it cannot read stops it (`terminated` fails).
public final class ViewServiceServer: ViewServiceProtocol, Sendable {
    private enum Role {
        /// Not leader; `leader` is the leader's address when known.
        case follower(leader: String?)
        /// Elected; loading the stored record.
        case loading
        case leader(store: any ViewStore, machine: ViewServiceStateMachine)
        /// The stored record cannot be read: nothing is answered.
        case failed(ViewStoreError)
    }

    private struct State {
        var role = Role.follower(leader: nil)
        /// Bumped at every change of role, so a store or load finishing late is ignored.
        var term: UInt64 = 0
        var stats = ViewServiceStats()
        var ticker: RepeatedTask?
        var electionTask: Task<Void, Never>?
        /// Settles when the machine's proposal in flight is stored or dropped.
        var settling: EventLoopFuture<Void>?
        /// `terminated` is complete.
        var terminated = false
    }

    public let eventLoop: any EventLoop
    private let state: NIOLoopBoundBox<State>
    private let origin = ContinuousClock.now
    private let logger: Logger
    private let configuration: ViewServiceConfiguration
    private let election: any ViewServiceElection
    private let terminatedPromise: EventLoopPromise<Void>
    private let metrics: ViewServiceMetrics?

    private init(
        eventLoop: any EventLoop, configuration: ViewServiceConfiguration, election: any ViewServiceElection,
        metrics: ViewServiceMetrics?, logger: Logger
    ) {
        self.eventLoop = eventLoop
        self.metrics = metrics
        self.logger = logger
        self.configuration = configuration
        self.election = election
        self.state = NIOLoopBoundBox.makeBoxSendingValue(State(), eventLoop: eventLoop)
        self.terminatedPromise = eventLoop.makePromise()
    }

    /// A view service bound to `rpc.host:rpc.port` on a loop of `group`, taking part in
    /// `election` (default: sole leader of an in-memory store, as in tests). With `metrics`,
    /// it counts calls, bytes and connections, and `refreshMetrics()` samples its view.
    public static func start(
        rpc: RPCServerConfiguration, configuration: ViewServiceConfiguration = .init(),
        election: (any ViewServiceElection)? = nil, metrics factory: (any MetricsFactory)? = nil, group: any EventLoopGroup,
        logger: Logger
    ) async throws -> (service: ViewServiceServer, server: RPCServer) {
        let loop = group.next()
        let election = election ?? SoleLeadership(store: InMemoryViewStore())
        let metrics = factory.map(ViewServiceMetrics.init)
        var rpc = rpc
        if let metrics { rpc.metrics = metrics.rpc }
        let service = ViewServiceServer(
            eventLoop: loop, configuration: configuration, election: election, metrics: metrics, logger: logger)
        let server = try await RPCServer.start(
            configuration: rpc, group: loop, tables: [.viewService(service)], logger: logger)
        try await loop.submit {
            service.state.value.ticker = loop.scheduleRepeatedTask(
                initialDelay: configuration.pingInterval.timeAmount, delay: configuration.pingInterval.timeAmount
            ) { _ in service.tick() }
            service.state.value.electionTask = Task {
                do {
                    try await election.run { leadership in await service.onLeadership(leadership) }
                } catch {
                    if !Task.isCancelled { logger.error("view service election stopped", metadata: ["error": "\(error)"]) }
                }
            }
        }.get()
        logger.info("view service listening", metadata: [
            "address": "\(server.address)", "ping_interval_ms": "\(configuration.pingInterval.milliseconds)",
            "dead_pings": "\(configuration.deadPings)",
        ])
        return (service, server)
    }

    /// Stops the ticker and leaves the election (the RPC server is closed by its owner).
    public func stop() async {
        let task = try? await eventLoop.submit { () -> Task<Void, Never>? in
            self.state.value.ticker?.cancel()
            self.state.value.term += 1
            self.state.value.role = .follower(leader: nil)
            return self.state.value.electionTask
        }.get()
        if let task = task ?? nil {
            task.cancel()
            await task.value
        }
        try? await eventLoop.submit { self.terminate(.success(())) }.get()
    }

    /// Succeeds when `stop()` ran; fails when the stored record cannot be read (the process
    /// must stop and say why).
    public var terminated: EventLoopFuture<Void> { terminatedPromise.futureResult }

    private var now: Duration { ContinuousClock.now - origin }

    private func terminate(_ result: Result<Void, any Error>) {
        guard !state.value.terminated else { return }
        state.value.terminated = true
        terminatedPromise.completeWith(result)
    }

    // MARK: - leadership

    private func onLeadership(_ leadership: ViewServiceLeadership) async {
        switch leadership {
        case .follower(let leader):
            _ = try? await eventLoop.submit {
                if case .failed = self.state.value.role { return }
                if case .leader = self.state.value.role {
                    self.logger.warning("view service is no longer leader", metadata: ["leader": "\(leader ?? "-")"])
                } else {
                    self.logger.info("view service follows", metadata: ["leader": "\(leader ?? "-")"])
                }
                self.state.value.term += 1
                self.state.value.role = .follower(leader: leader)
            }.get()
        case .leader(let store):
            guard let term = try? await eventLoop.submit({ () -> UInt64 in
                self.state.value.term += 1
                self.state.value.role = .loading
                return self.state.value.term
            }).get() else { return }
            let loaded: Result<ViewRecord?, ViewStoreError>
            do throws(ViewStoreError) {
                loaded = .success(try await store.load())
            } catch {
                loaded = .failure(error)
            }
            _ = try? await eventLoop.submit {
                guard self.state.value.term == term else { return }
                switch loaded {
                case .success(let record):
                    let machine = ViewServiceStateMachine(
                        configuration: self.configuration, resuming: record, now: self.now, waitBeforeFirstView: true)
                    self.state.value.role = .leader(store: store, machine: machine)
                    self.logger.info("view service is leader", metadata: [
                        "store": "\(store.location)", "view.num": "\(machine.view.viewnum)",
                        "view.primary": "\(machine.view.primary)", "view.backup": "\(machine.view.backup)",
                        "view.acknowledged": "\(machine.view.acknowledged)",
                    ])
                case .failure(.unavailable(_, let reason)):
                    // Not elected in practice: try again on the next leadership report.
                    self.logger.error("cannot load the stored view", metadata: ["store": "\(store.location)", "reason": "\(reason)"])
                    self.state.value.role = .follower(leader: nil)
                    self.resign()
                case .failure(let error):
                    self.logger.critical("\(error)")
                    self.state.value.role = .failed(error)
                    self.terminate(.failure(error))
                }
            }.get()
        }
    }

    /// Steps down (on the loop) and tells the election.
    private func resign() {
        state.value.term += 1
        if case .leader = state.value.role { state.value.role = .follower(leader: nil) }
        let election = self.election
        Task { await election.resign() }
    }

    // MARK: - the rules

    private func tick() {
        guard case .leader(let store, var machine) = state.value.role else { return }
        let proposal = machine.onTick(now: now)
        state.value.role = .leader(store: store, machine: machine)
        if let proposal { _ = persist(proposal, store: store, expected: machine.storedRecord) }
    }

    /// Stores `proposal`, then shows it; the future completes when that is settled. Pings that
    /// arrive meanwhile wait for it (`settledView`). A store that failed without a verdict
    /// (`.unavailable`: the write may have happened) is retried with the same record every ping
    /// interval until it is stored or refused as a conflict, so no ping is answered with a view
    /// the store may already have replaced.
    private func persist(_ proposal: ViewRecord, store: any ViewStore, expected: ViewRecord?) -> EventLoopFuture<Void> {
        let settled = eventLoop.makePromise(of: Void.self)
        state.value.settling = settled.futureResult
        attemptStore(proposal, store: store, expected: expected, term: state.value.term, retrying: false, settled: settled)
        return settled.futureResult
    }

    private func attemptStore(
        _ proposal: ViewRecord, store: any ViewStore, expected: ViewRecord?, term: UInt64, retrying: Bool,
        settled: EventLoopPromise<Void>
    ) {
        let stored = eventLoop.makePromise(of: Result<Void, ViewStoreError>.self)
        stored.completeWithTask {
            do throws(ViewStoreError) {
                try await store.compareAndStore(proposal, expected: expected)
                return .success(())
            } catch .conflict(let location) where retrying {
                // The attempt that failed without a verdict may have stored it after all.
                if let current = try? await store.load(), current == proposal { return .success(()) }
                return .failure(.conflict(location: location))
            } catch {
                return .failure(error)
            }
        }
        stored.futureResult.whenSuccess { outcome in
            guard self.state.value.term == term, case .leader(let store, var machine) = self.state.value.role else {
                return self.settle(settled)
            }
            switch outcome {
            case .success:
                let change = machine.onStored(proposal)
                self.state.value.role = .leader(store: store, machine: machine)
                if let change { self.record(change) }
            case .failure(.conflict):
                self.logger.error("\(ViewStoreError.conflict(location: store.location))")
                self.resign()
            case .failure(.unavailable(_, let reason)):
                self.logger.error("view not stored; will retry", metadata: ["error": "\(reason)"])
                self.eventLoop.scheduleTask(in: self.configuration.pingInterval.timeAmount) {
                    guard self.state.value.term == term else { return self.settle(settled) }
                    self.attemptStore(proposal, store: store, expected: expected, term: term, retrying: true, settled: settled)
                }.futureResult.whenFailure { _ in settled.succeed(()) }  // the loop shut down
                return
            case .failure(let error):
                machine.onStoreFailed()
                self.state.value.role = .leader(store: store, machine: machine)
                self.logger.error("view not stored; will retry", metadata: ["error": "\(error)"])
            }
            self.settle(settled)
        }
    }

    private func settle(_ settled: EventLoopPromise<Void>) {
        if state.value.settling == settled.futureResult { state.value.settling = nil }
        settled.succeed(())
    }

    /// The view to answer a ping with once no proposal is in flight (waiting for it if one
    /// is); fails NOT_LEADER when this process stopped leading meanwhile.
    private func settledView() -> EventLoopFuture<View> {
        guard case .leader(_, let machine) = state.value.role else { return eventLoop.makeFailedFuture(notServing()) }
        guard machine.proposal != nil, let settling = state.value.settling else {
            return eventLoop.makeSucceededFuture(machine.currentView)
        }
        return settling.flatMap { self.settledView() }
    }

    private func record(_ change: ViewServiceStateMachine.ViewChange) {
        state.value.stats.viewChanges += 1
        metrics?.viewChanges.increment()
        logger.info("view changed", metadata: [
            "view.num": "\(change.to.viewnum)", "view.primary": "\(change.to.primary)",
            "view.backup": "\(change.to.backup)", "previous.primary": "\(change.from.primary)",
            "previous.backup": "\(change.from.backup)",
        ])
    }

    private func onLoop<T: Sendable>(_ body: @escaping @Sendable () -> EventLoopFuture<T>) -> EventLoopFuture<T> {
        eventLoop.inEventLoop ? body() : eventLoop.flatSubmit(body)
    }

    /// The error to answer with when this process cannot run the rules now.
    private func notServing() -> any Error {
        switch state.value.role {
        case .follower(let leader): RPCServiceError.notLeader(leader)
        case .loading, .leader: RPCServiceError.notLeader(nil)
        case .failed(let error): RPCServiceError(code: .internal, message: "\(error)")
        }
    }

    public func ping(_ args: PingArgs, context: RPCCallContext) -> EventLoopFuture<View> {
        onLoop {
            guard case .leader(let store, var machine) = self.state.value.role else {
                return self.eventLoop.makeFailedFuture(self.notServing())
            }
            // Past the time it surely leads, a paused or partitioned leader may have been replaced
            // by one that never heard this ping: answering it would grant a read lease the new
            // leader does not honour.
            if let until = self.election.leadershipValidUntil, ContinuousClock.now >= until {
                return self.eventLoop.makeFailedFuture(RPCServiceError.notLeader(nil))
            }
            self.state.value.stats.pings += 1
            let (view, proposal) = machine.onPing(server: args.server, viewnum: args.viewnum, now: self.now)
            self.state.value.role = .leader(store: store, machine: machine)
            if let proposal {
                // Answer once the change is stored, so the pinger sees it without waiting a ping.
                return self.persist(proposal, store: store, expected: machine.storedRecord).flatMap { self.settledView() }
            }
            // A change in flight (a tick's) may name another primary: the answer waits for it, so
            // that no ping is answered with a view that is about to be replaced.
            if machine.proposal != nil { return self.settledView() }
            return self.eventLoop.makeSucceededFuture(view)
        }
    }

    public func getView(context: RPCCallContext) -> EventLoopFuture<View> {
        onLoop {
            self.state.value.stats.getViews += 1
            guard let view = self.currentView() else { return self.eventLoop.makeFailedFuture(self.notServing()) }
            return self.eventLoop.makeSucceededFuture(view)
        }
    }

    private func currentView() -> View? {
        guard case .leader(_, let machine) = state.value.role else { return nil }
        return machine.currentView
    }

    /// The view and every server the leader tracks (`pbkv status`); NOT_LEADER elsewhere.
    public func viewServiceStatus(context: RPCCallContext) -> EventLoopFuture<ViewServiceStatus> {
        onLoop {
            guard let status = self.currentStatus() else { return self.eventLoop.makeFailedFuture(self.notServing()) }
            return self.eventLoop.makeSucceededFuture(status)
        }
    }

    /// What this view service is now: leader, loading, follower (and whom it follows) or failed.
    /// Answered leader or not.
    public func viewServiceRole(context: RPCCallContext) -> EventLoopFuture<ViewServiceRole> {
        onLoop {
            let answer = switch self.state.value.role {
            case .follower(let leader): ViewServiceRole(role: .follower, leader: leader ?? "")
            case .loading: ViewServiceRole(role: .loading)
            case .leader: ViewServiceRole(role: .leader)
            case .failed(let error): ViewServiceRole(role: .failed, detail: "\(error)")
            }
            return self.eventLoop.makeSucceededFuture(answer)
        }
    }

    private func currentStatus() -> ViewServiceStatus? {
        guard case .leader(_, let machine) = state.value.role else { return nil }
        return ViewServiceStatus(view: machine.currentView, servers: machine.serversSeen(now: now))
    }

    /// Samples the view and the servers into the metrics (before a scrape); does nothing
    /// without metrics.
    public func refreshMetrics() async {
        guard let metrics else { return }
        let status = try? await eventLoop.submit { self.currentStatus() }.get()
        metrics.update(from: status ?? nil, deadAfter: configuration.deadAfter)
    }

    /// The current view and counters; nil view when this process is not the leader.
    public func snapshot() async throws -> (view: View?, isLeader: Bool, stats: ViewServiceStats) {
        try await eventLoop.submit { (self.currentView(), self.currentView() != nil, self.state.value.stats) }.get()
    }
}

/// The view service's own series (`--metrics`), sampled at scrape time, besides the RPC layer's.
final class ViewServiceMetrics: Sendable {
    let rpc: RPCMetrics
    /// `pbkv_view_changes_total`: views this process stored and showed as leader.
    let viewChanges: Counter
    private let leader: Gauge
    private let viewNumber: Gauge
    private let acknowledged: Gauge
    private let liveServers: Gauge

    init(factory: any MetricsFactory) {
        rpc = RPCMetrics(factory: factory)
        viewChanges = Counter(label: "pbkv_view_changes_total", factory: factory)
        leader = Gauge(label: "pbkv_viewservice_leader", factory: factory)
        viewNumber = Gauge(label: "pbkv_view_number", factory: factory)
        acknowledged = Gauge(label: "pbkv_view_acknowledged", factory: factory)
        liveServers = Gauge(label: "pbkv_viewservice_live_servers", factory: factory)
    }

    /// `status` is nil when this process is not the leader (then only `leader` and the RPC
    /// series move).
    func update(from status: ViewServiceStatus?, deadAfter: Duration) {
        leader.record(status == nil ? 0 : 1)
        if let status {
            viewNumber.record(status.view.viewnum)
            acknowledged.record(status.view.acknowledged ? 1 : 0)
            liveServers.record(status.servers.filter { $0.lastPingMsAgo < UInt64(deadAfter.milliseconds) }.count)
        }
        rpc.flush()
    }
}

extension ViewServiceServer: Service {
    /// Leads or follows until the service group shuts down gracefully (SIGTERM, SIGINT) or the
    /// task is cancelled, then `stop()`. The RPC server `start` returned is closed by its owner;
    /// a store failure ends `terminated` with the error.
    public func run() async throws {
        try? await gracefulShutdown()
        await stop()
    }
}
