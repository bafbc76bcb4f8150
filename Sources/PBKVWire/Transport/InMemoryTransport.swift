import Logging
import NIOCore
import PBKVCore
import PBKVTLS
import Synchronization

/// Why an in-memory listener could not start.
public enum InMemoryTransportError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Another listener of the same network holds the address.
    case addressInUse(String)

    public var description: String {
        switch self {
        case .addressInUse(let address):
            "\(address) is already listened on in this in-memory network; stop that server first or pick another port"
        }
    }
}

/// How an `InMemoryNetwork` treats every message (request or reply), decided by its seeded
/// generator: lost with `loss`, otherwise delivered after a delay drawn from `latency` (so
/// that messages overtake one another when the range is wide).
public struct InMemoryNetworkConditions: Sendable, Hashable {
    /// Probability 0...1 that a message is lost (the call then times out).
    public var loss: Double
    /// Delay of each message; `.zero ... .zero` delivers at once (still on the receiver's loop).
    public var latency: ClosedRange<Duration>

    public init(loss: Double = 0, latency: ClosedRange<Duration> = .zero ... .zero) {
        self.loss = loss
        self.latency = latency
    }

    /// A perfect network.
    public static let perfect = InMemoryNetworkConditions()
}

/// Messages an `InMemoryNetwork` has carried and lost so far.
public struct InMemoryNetworkCounts: Sendable, Hashable {
    public var delivered = 0
    /// Lost to `InMemoryNetworkConditions.loss`.
    public var lost = 0
    /// Lost to a partition.
    public var cut = 0
}

/// A network inside one process, for tests: servers listen at `HOST:PORT` addresses of the
/// network, connections hand each call to the listener's method tables on its event loops — no
/// sockets, frames or handshake. Requests and replies are still encoded and decoded with the
/// schema's codec, with the same size limits and error codes as on TCP.
///
/// Faults, all seeded: per-message loss and latency (`conditions`), partitions between nodes
/// (`partition(_:from:)`, `isolate(_:)`, `heal()`), and the per-endpoint `FaultInjector`s of the
/// client and server configurations, which act as they do on TCP. A node is the address its
/// transport was made for (`transport(node:)`): a server's advertised address, or a client's name.
///
/// What TCP has and this has not: TLS (a transport may state the identity its calls carry
/// instead), the handshake, compression, connection limits and idle timeouts.
public final class InMemoryNetwork: Sendable {
    private struct Link: Hashable {
        var from: String
        var to: String
    }

    private struct State {
        var listeners: [String: InMemoryListener] = [:]
        var lastPort = 10_000
        var cut: Set<Link> = []
        var isolated: Set<String> = []
        var conditions: InMemoryNetworkConditions
        var rng: SplitMix64
        var counts = InMemoryNetworkCounts()

        mutating func nextPort(host: String) -> Int {
            repeat { lastPort += 1 } while listeners["\(PeerAddress(host: host, port: lastPort))"] != nil
            return lastPort
        }
    }

    private let state: Mutex<State>

    public init(conditions: InMemoryNetworkConditions = .perfect, seed: UInt64 = 1) {
        state = Mutex(State(conditions: conditions, rng: SplitMix64(seed: seed)))
    }

    /// The transport of one node: its calls come from `node` (partitions apply to it) and carry
    /// `identity` as a certificate would (nil: plaintext, nobody is authenticated).
    public func transport(node: String, identity: MemberIdentity? = nil) -> InMemoryTransport {
        InMemoryTransport(network: self, node: node, identity: identity)
    }

    /// Loss and latency of every message from now on.
    public var conditions: InMemoryNetworkConditions {
        get { state.withLock { $0.conditions } }
        set { state.withLock { $0.conditions = newValue } }
    }

    public var counts: InMemoryNetworkCounts { state.withLock { $0.counts } }

    /// Cuts every node of `side` from every node of `others`, both ways, until `heal()`.
    public func partition(_ side: [String], from others: [String]) {
        state.withLock { state in
            for a in side {
                for b in others {
                    state.cut.insert(Link(from: a, to: b))
                    state.cut.insert(Link(from: b, to: a))
                }
            }
        }
    }

    /// Cuts `node` from every other node, both ways, until `heal()`.
    public func isolate(_ node: String) {
        _ = state.withLock { $0.isolated.insert(node) }
    }

    /// Removes every partition and isolation.
    public func heal() {
        state.withLock { state in
            state.cut = []
            state.isolated = []
        }
    }

    /// The fate of a message from `from` to `to`: nil when it is lost or cut, else its latency
    /// (the caller delivers it after that long).
    func route(from: String, to: String) -> Duration? {
        state.withLock { state in
            if state.isolated.contains(from) || state.isolated.contains(to) || state.cut.contains(Link(from: from, to: to)) {
                state.counts.cut += 1
                return nil
            }
            if state.rng.chance(state.conditions.loss) {
                state.counts.lost += 1
                return nil
            }
            state.counts.delivered += 1
            let range = state.conditions.latency
            guard range.upperBound > range.lowerBound else { return range.lowerBound }
            let span = (range.upperBound - range.lowerBound).timeAmount.nanoseconds
            return range.lowerBound + .nanoseconds(Int64(state.rng.next() % UInt64(span + 1)))
        }
    }

    /// A port of `host` that no listener holds and none was handed out for before.
    public func unusedPort(host: String) -> Int {
        state.withLock { state in
            state.nextPort(host: host)
        }
    }

    func register(_ listener: InMemoryListener, host: String, port: Int) throws(InMemoryTransportError) -> Int {
        try state.withLock { state throws(InMemoryTransportError) -> Int in
            let port = port == 0 ? state.nextPort(host: host) : port
            let address = "\(PeerAddress(host: host, port: port))"
            guard state.listeners[address] == nil else { throw .addressInUse(address) }
            state.listeners[address] = listener
            return port
        }
    }

    func unregister(_ address: String, _ listener: InMemoryListener) {
        state.withLock { state in
            if state.listeners[address] === listener { state.listeners[address] = nil }
        }
    }

    func listener(at address: String) -> InMemoryListener? {
        state.withLock { $0.listeners[address] }
    }
}

/// One node's way onto an `InMemoryNetwork` (made by `InMemoryNetwork.transport(node:)`).
public struct InMemoryTransport: RPCTransport {
    public let network: InMemoryNetwork
    /// The address (or name) this node's calls come from.
    public let node: String
    /// What its calls carry as a certificate would; nil: plaintext.
    public let identity: MemberIdentity?

    public func connection(
        to peer: PeerAddress, eventLoop: any EventLoop, configuration: RPCClientConfiguration, logger: Logger
    ) -> any RPCConnection {
        InMemoryConnection(
            peer: peer, eventLoop: eventLoop, transport: self, configuration: configuration, logger: logger)
    }

    public func listen(
        configuration: RPCServerConfiguration, group: any EventLoopGroup, tables: [RPCMethodTable], logger: Logger
    ) async throws -> any RPCListener {
        let listener = InMemoryListener(
            network: network, node: node, configuration: configuration, group: group, tables: tables, logger: logger)
        let port = try network.register(listener, host: configuration.host, port: configuration.port)
        listener.bound(port: port)
        return listener
    }
}

/// Where messages for one endpoint are put on its event loop, while the endpoint is open.
/// Closing it comes before the endpoint's event loop shuts down, and a message is enqueued
/// under the lock that closing takes: nothing is ever enqueued on a loop that has shut down
/// (which NIO reports as an error, and will make a crash).
final class InMemoryMailbox: Sendable {
    private let isOpen = Mutex(true)

    /// Runs `work` on `loop` after `delay`, unless this mailbox is closed.
    func post(on loop: any EventLoop, after delay: Duration, _ work: @escaping @Sendable () -> Void) {
        isOpen.withLock { isOpen in
            guard isOpen else { return }
            if delay == .zero {
                loop.execute(work)
            } else {
                loop.scheduleTask(in: delay.timeAmount, work)
            }
        }
    }

    /// Nothing is posted from now on.
    func close() { isOpen.withLock { $0 = false } }
}

/// The server side of an in-memory network: answers calls with its method tables; knows the
/// connections made to it, so that closing it fails their calls in flight as a closed socket would.
final class InMemoryListener: RPCListener {
    private struct State {
        var port = 0
        var closed = false
        var lastTicket: UInt64 = 0
        /// Per connection, what to tell it when this listener closes.
        var connections: [UInt64: @Sendable () -> Void] = [:]
    }

    let network: InMemoryNetwork
    /// The node it belongs to (partitions name it).
    let node: String
    let configuration: RPCServerConfiguration
    private let group: any EventLoopGroup
    private let dispatch: RPCDispatch
    private let logger: Logger
    private let state = Mutex(State())
    /// Requests are delivered through it; closed with the listener.
    let mailbox = InMemoryMailbox()

    init(
        network: InMemoryNetwork, node: String, configuration: RPCServerConfiguration, group: any EventLoopGroup,
        tables: [RPCMethodTable], logger: Logger
    ) {
        self.network = network
        self.node = node
        self.configuration = configuration
        self.group = group
        self.dispatch = RPCDispatch(tables: tables)
        self.logger = logger
    }

    func bound(port: Int) { state.withLock { $0.port = port } }

    var port: Int { state.withLock { $0.port } }
    var address: String { "\(PeerAddress(host: configuration.host, port: port))" }
    var connectionCount: Int { state.withLock { $0.connections.count } }
    var isClosed: Bool { state.withLock { $0.closed } }

    /// A new connection's server end, or nil when closed or refused by the fault injector.
    /// `lost` runs (once) if the listener closes while the connection is open.
    func accept(lost: @escaping @Sendable () -> Void) -> (ticket: UInt64, loop: any EventLoop)? {
        if configuration.faults?.shouldRefuseConnection() == true { return nil }
        return state.withLock { state in
            guard !state.closed else { return nil }
            state.lastTicket += 1
            state.connections[state.lastTicket] = lost
            return (state.lastTicket, group.next())
        }
    }

    /// The client closed its end.
    func closed(_ ticket: UInt64) {
        _ = state.withLock { $0.connections.removeValue(forKey: ticket) }
    }

    func close() async {
        let lost = state.withLock { state in
            state.closed = true
            defer { state.connections = [:] }
            return Array(state.connections.values)
        }
        mailbox.close()
        network.unregister(address, self)
        for notify in lost { notify() }
    }

    /// Answers one encoded request on `loop` (the connection's); `respond` gets the encoded reply
    /// unless it is dropped. Mirrors `RPCServerHandler`: the same fault checks and replies.
    func receive(_ bytes: ByteBuffer, on loop: any EventLoop, peer: PeerAuthentication, replyLimit: Int,
                 respond: @escaping @Sendable (ByteBuffer) -> Void) {
        guard !isClosed, case .request(let request)? = try? EnvelopeCodec.decode(bytes) else { return }
        if configuration.faults?.shouldDropRequest() == true { return }
        let context = RPCCallContext(eventLoop: loop, remoteAddress: nil, peer: peer, logger: logger)
        let send: @Sendable (Response) -> Void = { response in
            guard !self.isClosed, self.configuration.faults?.shouldDropReply() != true else { return }
            var response = response
            response.message = response.message.cut(toUTF8Bytes: RPCProtocol.maxMessageBytes)
            var encoded = EnvelopeCodec.encode(.response(response))
            let limit = min(replyLimit, self.configuration.maxPayload)
            if encoded.readableBytes > limit {
                encoded = EnvelopeCodec.encode(.response(Response(
                    callID: response.callID, code: .frameTooLarge,
                    message: "the reply of \(encoded.readableBytes) bytes exceeds the frame limit of \(limit) bytes")))
            }
            respond(encoded)
        }
        switch dispatch.answer(request, context: context) {
        case .now(let response): send(response)
        case .later(let pending): pending.whenAnswered(send)
        }
    }
}

/// The client side of an in-memory connection: call ids, deadlines, matching replies to callers,
/// like `TCPConnection`. Its state lives on `eventLoop`.
final class InMemoryConnection: RPCConnection {
    private struct InFlight {
        var method: String
        var promise: EventLoopPromise<CallResult>
        var timer: Scheduled<Void>
    }

    private struct Open {
        var listener: InMemoryListener
        var ticket: UInt64
        var loop: any EventLoop
    }

    private struct State {
        var open: Open?
        var shutDown = false
        var nextCallID: UInt64 = 1
        var inFlight: [UInt64: InFlight] = [:]
    }

    let peer: PeerAddress
    let eventLoop: any EventLoop
    /// Replies and notices are delivered through it; closed by `shutdown()`, before the loop stops.
    private let mailbox = InMemoryMailbox()
    private let transport: InMemoryTransport
    private let configuration: RPCClientConfiguration
    private let logger: Logger
    private let state: NIOLoopBoundBox<State>

    init(peer: PeerAddress, eventLoop: any EventLoop, transport: InMemoryTransport, configuration: RPCClientConfiguration, logger: Logger) {
        self.peer = peer
        self.eventLoop = eventLoop
        self.transport = transport
        self.configuration = configuration
        self.logger = logger
        self.state = NIOLoopBoundBox.makeBoxSendingValue(State(), eventLoop: eventLoop)
    }

    func call(_ call: Call, timeout: Duration, compressionThreshold: Int?) -> EventLoopFuture<CallResult> {
        let promise = eventLoop.makePromise(of: CallResult.self)
        if eventLoop.inEventLoop {
            start(call, timeout: timeout, promise: promise)
        } else {
            eventLoop.execute { self.start(call, timeout: timeout, promise: promise) }
        }
        return promise.futureResult
    }

    func shutdown() -> EventLoopFuture<Void> {
        mailbox.close()
        return eventLoop.submit {
            self.state.value.shutDown = true
            self.drop(RPCError.shutdown)
        }
    }

    func disconnect() {
        eventLoop.execute { self.drop(RPCError.connectionLost(peer: "\(self.peer)")) }
    }

    /// Ends the open connection (if any): its calls in flight fail with `error`.
    private func drop(_ error: RPCError) {
        if let open = state.value.open {
            open.listener.closed(open.ticket)
            state.value.open = nil
        }
        let calls = state.value.inFlight
        state.value.inFlight = [:]
        for call in calls.values {
            call.timer.cancel()
            call.promise.fail(error)
        }
    }

    private func connect() -> Result<Open, RPCError> {
        if let open = state.value.open {
            guard open.listener.isClosed else { return .success(open) }
            // Closed, and its notice not yet run here: the calls in flight are lost, and this
            // one connects again (to a listener restarted at the address, if any) rather than
            // being sent to the closed one and failing with them.
            drop(.connectionLost(peer: "\(peer)"))
        }
        let address = "\(peer)"
        guard let listener = transport.network.listener(at: address) else {
            return .failure(.connectionRefused(peer: address, reason: "nothing listens at \(address) in this in-memory network"))
        }
        let loop = eventLoop
        let lost: @Sendable () -> Void = { [weak self] in
            guard let self else { return }
            self.mailbox.post(on: loop, after: .zero) { self.listenerClosed(listener) }
        }
        guard let (ticket, serverLoop) = listener.accept(lost: lost) else {
            return .failure(.connectionRefused(peer: address, reason: "the server closed the connection at once"))
        }
        let open = Open(listener: listener, ticket: ticket, loop: serverLoop)
        state.value.open = open
        return .success(open)
    }

    private func listenerClosed(_ listener: InMemoryListener) {
        guard state.value.open?.listener === listener else { return }
        state.value.open = nil
        drop(.connectionLost(peer: "\(peer)"))
    }

    private func start(_ call: Call, timeout: Duration, promise: EventLoopPromise<CallResult>) {
        guard !state.value.shutDown else { return promise.fail(RPCError.shutdown) }
        let open: Open
        switch connect() {
        case .success(let made): open = made
        case .failure(let error): return promise.fail(error)
        }
        let callID = state.value.nextCallID
        state.value.nextCallID += 1
        // Encoded as on the wire: the same limits, and the server decodes what TCP would carry.
        let request = EnvelopeCodec.encode(.request(Request(
            callID: callID, timeoutMs: UInt32(clamping: timeout.timeAmount.nanoseconds / 1_000_000), call: .success(call))))
        let limit = min(configuration.maxPayload, open.listener.configuration.maxPayload)
        guard request.readableBytes <= limit else {
            return promise.fail(RPCError.requestTooLarge(method: call.method, size: request.readableBytes, limit: limit))
        }
        let timer = eventLoop.scheduleTask(in: timeout.timeAmount) {
            guard let call = self.state.value.inFlight.removeValue(forKey: callID) else { return }
            call.promise.fail(RPCError.timeout(method: call.method, peer: "\(self.peer)"))
        }
        state.value.inFlight[callID] = InFlight(method: call.method, promise: promise, timer: timer)
        if configuration.faults?.shouldDropRequest() == true { return }  // never sent: it times out
        let network = transport.network
        let node = transport.node
        let peerNode = open.listener.node
        let authentication: PeerAuthentication = transport.identity.map { .certificate($0) } ?? .plaintext
        let replyLimit = configuration.maxPayload
        let listener = open.listener
        let serverLoop = open.loop
        let loop = eventLoop
        guard let requestDelay = network.route(from: node, to: peerNode) else { return }
        listener.mailbox.post(on: serverLoop, after: requestDelay) {
            listener.receive(request, on: serverLoop, peer: authentication, replyLimit: replyLimit) { reply in
                guard let replyDelay = network.route(from: peerNode, to: node) else { return }
                self.mailbox.post(on: loop, after: replyDelay) { self.receive(reply) }
            }
        }
    }

    private func receive(_ bytes: ByteBuffer) {
        guard case .response(let response)? = try? EnvelopeCodec.decode(bytes),
            let call = state.value.inFlight[response.callID]
        else { return }  // timed out or dropped already
        if configuration.faults?.shouldDropReply() == true { return }  // lost on the way: it times out
        state.value.inFlight[response.callID] = nil
        call.timer.cancel()
        call.promise.completeWith(response.outcome(from: peer).mapError { $0 })
    }
}
