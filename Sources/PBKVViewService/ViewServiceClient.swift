import Logging
import NIOCore
import PBKVCore
import PBKVWire
import Synchronization

/// Why a view service call gave no view, beyond the RPC errors themselves.
public enum ViewServiceClientError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The view service answered with a view older than one this client already saw (a deposed
    /// leader, or an `--in-memory` view service that restarted): it is not believed.
    case staleView(received: View, seen: View)

    public var description: String {
        switch self {
        case .staleView(let received, let seen):
            "the view service answered \(received), older than \(seen) seen before; ignoring it "
                + "(a view service restarted without its data directory?)"
        }
    }
}

/// Typed client stub for the view service, over one or several view service addresses.
///
/// It calls the address it believes is the leader; a NOT_LEADER answer that names the leader
/// sends the call there at once, and a failure (refused, lost, NOT_LEADER without a hint) moves
/// to the next address. View numbers never go backwards: a view older than one this client
/// already returned is refused (`ViewServiceClientError.staleView`).
public final class ViewServiceClient: Sendable {
    private struct State {
        var addresses: [PeerAddress]
        var clients: [PeerAddress: RPCClient] = [:]
        var current = 0
        /// The newest view returned so far.
        var newest = View.initial
    }

    private let state: Mutex<State>
    private let eventLoop: any EventLoop
    private let configuration: RPCClientConfiguration
    private let logger: Logger

    /// A client of the view service at `addresses` (one, or every member of a replicated one).
    public init(addresses: [PeerAddress], eventLoop: any EventLoop, configuration: RPCClientConfiguration = .init(), logger: Logger) {
        precondition(!addresses.isEmpty, "a view service client needs at least one address")
        self.state = Mutex(State(addresses: addresses))
        self.eventLoop = eventLoop
        self.configuration = configuration
        self.logger = logger
    }

    /// A client of one view service reached through `rpc` (tests).
    public init(rpc: RPCClient) {
        var state = State(addresses: [rpc.peer])
        state.clients[rpc.peer] = rpc
        self.state = Mutex(state)
        self.eventLoop = rpc.eventLoop
        self.configuration = RPCClientConfiguration()
        self.logger = Logger(label: "pbkv.viewservice-client")
    }

    /// The addresses known (the configured ones, and leaders named in NOT_LEADER answers).
    public var addresses: [PeerAddress] { state.withLock { $0.addresses } }

    /// Heartbeat: `viewnum` is the view the server acknowledges (0 after a restart).
    public func ping(server: String, viewnum: UInt64, timeout: Duration) -> EventLoopFuture<View> {
        viewCall(ViewServiceMethods.ping, PingArgs(server: server, viewnum: viewnum), timeout: timeout)
    }

    /// The current view, without counting as a ping.
    public func getView(timeout: Duration) -> EventLoopFuture<View> {
        viewCall(ViewServiceMethods.getView, GetViewArgs(), timeout: timeout)
    }

    public func getView(timeout: Duration) async throws -> View {
        try await getView(timeout: timeout).get()
    }

    /// The leader's view and every server it tracks, idle ones included (`pbkv status`).
    public func status(timeout: Duration) async throws -> ViewServiceStatus {
        try await attempt(
            ViewServiceMethods.viewServiceStatus, ViewServiceStatusArgs(), timeout: timeout,
            remaining: state.withLock { $0.addresses.count } + 1
        ) { status, _ in status }.get()
    }

    /// Closes every connection.
    public func shutdown() -> EventLoopFuture<Void> {
        let clients = state.withLock { state in
            defer { state.clients.removeAll() }
            return Array(state.clients.values)
        }
        return EventLoopFuture.andAllComplete(clients.map { $0.shutdown() }, on: eventLoop)
    }

    /// Tries the believed leader, following hints and moving on after failures, at most once
    /// around the known addresses (plus the hops hints cause).
    private func viewCall<Request: Sendable>(
        _ method: RPCMethod<Request, View>, _ request: Request, timeout: Duration
    ) -> EventLoopFuture<View> {
        attempt(method, request, timeout: timeout, remaining: state.withLock { $0.addresses.count } + 1) { view, address in
            try self.accept(view, from: address)
        }
    }

    /// `extract` turns the reply into the caller's result (or throws: the call failed).
    private func attempt<Request: Sendable, Reply, T: Sendable>(
        _ method: RPCMethod<Request, Reply>, _ request: Request, timeout: Duration, remaining: Int,
        extract: @escaping @Sendable (Reply, PeerAddress) throws -> T
    ) -> EventLoopFuture<T> {
        let (address, client) = currentClient()
        return client.call(method, request, timeout: timeout)
            .flatMapThrowing { result in try extract(result, address) }
            .flatMapError { error in
                let retry: Bool
                switch error {
                case RPCError.notLeader(_, let leader) where !leader.isEmpty:
                    retry = self.follow(leader, from: address)
                case RPCError.notLeader, RPCError.connectionRefused, RPCError.connectionLost:
                    self.moveOn(from: address)
                    retry = true
                default:
                    // A timeout already spent the caller's budget; a stale view is a deposed
                    // leader's: try elsewhere next time.
                    self.moveOn(from: address)
                    retry = false
                }
                guard retry, remaining > 1 else { return self.eventLoop.makeFailedFuture(error) }
                return self.attempt(method, request, timeout: timeout, remaining: remaining - 1, extract: extract)
            }
    }

    private func currentClient() -> (PeerAddress, RPCClient) {
        state.withLock { state in
            let address = state.addresses[state.current]
            if let client = state.clients[address] { return (address, client) }
            let client = RPCClient(peer: address, eventLoop: eventLoop, configuration: configuration, logger: logger)
            state.clients[address] = client
            return (address, client)
        }
    }

    private func accept(_ view: View, from address: PeerAddress) throws -> View {
        try state.withLock { state in
            let newest = state.newest
            if view.viewnum < newest.viewnum || (view.viewnum == newest.viewnum && newest.acknowledged && !view.acknowledged) {
                throw ViewServiceClientError.staleView(received: view, seen: newest)
            }
            state.newest = view
            return view
        }
    }

    /// Switches to the leader a NOT_LEADER answer named; false when that changes nothing.
    private func follow(_ leader: String, from address: PeerAddress) -> Bool {
        guard let target = try? PeerAddress(parsing: leader), target != address else {
            moveOn(from: address)
            return true
        }
        state.withLock { state in
            if let index = state.addresses.firstIndex(of: target) {
                state.current = index
            } else {
                state.addresses.append(target)
                state.current = state.addresses.count - 1
            }
        }
        return true
    }

    private func moveOn(from address: PeerAddress) {
        state.withLock { state in
            if state.addresses[state.current] == address { state.current = (state.current + 1) % state.addresses.count }
        }
    }
}
