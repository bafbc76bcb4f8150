import Logging
import NIOCore
import NIOPosix
import PBKVTLS
import PBKVCore
import PBKVViewService
import PBKVWire

/// Why a `KVClient` call failed for good.
public enum KVClientError: Error, Sendable, Hashable, CustomStringConvertible {
    /// No primary completed the operation before the deadline.
    case deadlineExceeded(operation: String, key: String, seconds: Double, lastProblem: String)
    /// The view service address is not HOST:PORT.
    case invalidAddress(String)
    /// The primary refused the request as malformed or too large, or the request or its reply
    /// does not fit in a frame (retrying cannot help).
    case rejected(operation: String, key: String, reason: String)
    /// The client was closed.
    case closed
    /// The calling task was cancelled before the operation completed; it may or may not have
    /// run (retrying with a new call is a new operation).
    case cancelled(operation: String, key: String)
    /// A retried Put or PutHash found its session evicted from the server's duplicate table
    /// (SESSION_EXPIRED): an earlier attempt may or may not have taken effect, and the server
    /// can no longer tell. The client has started a new session for later calls.
    case sessionExpired(operation: String, key: String)
    /// `KVClientConfiguration.pipelineWindow` is outside 1 ... `RequestID.maxWindow`.
    case invalidPipelineWindow(Int)

    public var description: String {
        switch self {
        case .deadlineExceeded(let operation, let key, let seconds, let lastProblem):
            "\(operation) \"\(Self.shown(key))\" did not complete within \(seconds) s (last problem: \(lastProblem)); "
                + "check that the view service and at least one server of the current view are running (pbkv view)"
        case .invalidAddress(let address):
            "invalid view service address \"\(address)\": expected HOST:PORT[,HOST:PORT…], e.g. 127.0.0.1:7000"
        case .rejected(let operation, let key, let reason):
            "\(operation) \"\(Self.shown(key))\" was refused: \(reason)"
        case .closed:
            "the client was closed"
        case .cancelled(let operation, let key):
            "\(operation) \"\(key)\" was cancelled before it completed; it may or may not have taken effect"
        case .sessionExpired(let operation, let key):
            "\(operation) \"\(Self.shown(key))\" was retried after its session expired on the server (SESSION_EXPIRED: "
                + "the duplicate table evicted it, see --max-sessions): an earlier attempt may or may not have taken "
                + "effect; read the key to find out before repeating it"
        case .invalidPipelineWindow(let window):
            "pipelineWindow \(window) is out of range: use 1 (one request outstanding) to \(RequestID.maxWindow) "
                + "(the most a server keeps per session)"
        }
    }

    /// A key as messages show it: long ones cut, with their size.
    private static func shown(_ key: String) -> String {
        key.count <= 64 ? key : "\(key.prefix(48))… (\(key.utf8.count) bytes)"
    }
}

/// How a `KVClient` retries.
public struct KVClientConfiguration: Sendable {
    /// Give up on an operation after this long.
    public var deadline: Duration = .seconds(30)
    /// Sleep between attempts when no primary answered (about a ping interval).
    public var retryInterval: Duration = .milliseconds(100)
    /// Deadline of one attempt at the primary.
    public var attemptTimeout: Duration = .milliseconds(500)
    /// Deadline of one view service call.
    public var viewServiceTimeout: Duration = .milliseconds(500)
    /// Smallest request that is compressed (when the primary agrees to zlib). High by default:
    /// on a LAN deflate costs more time than the bytes it saves.
    public var compressionThreshold = FrameCodec.latencyCompressionThreshold
    /// What to offer the view service and the primary: zlib per frame (the default), nothing,
    /// or also the per-connection deflate streams (for slow links; on a LAN they cost more CPU
    /// than the bytes they save).
    public var compression = CompressionMode.frame
    /// Mutual TLS with a client certificate of the cluster CA; the view service and the
    /// primary must present server certificates covering the addresses dialed. nil: plaintext.
    public var tls: MutualTLS?
    /// How servers are reached: TCP by default, or an `InMemoryNetwork`'s transport in tests.
    public var transport: any RPCTransport = TCPTransport()
    /// Most operations of this client outstanding at once, 1 ... `RequestID.maxWindow` (64).
    /// 1 (the default): one at a time, concurrent calls wait their turn. Above 1: concurrent
    /// calls are pipelined on the one connection with consecutive sequence numbers of one
    /// session, each retried with its own request id (see README "At-most-once").
    public var pipelineWindow = 1

    public init() {}

    /// What the client's connections (to the view service, to the primary) share: transport,
    /// TLS and compression.
    var connections: RPCClientConfiguration {
        var rpc = RPCClientConfiguration()
        rpc.transport = transport
        rpc.tls = tls
        rpc.compression = compression
        return rpc
    }
}

/// Counters of what a client did, for benchmarks and tests.
public struct KVClientStats: Sendable, Hashable {
    public var operations = 0
    public var attempts = 0
    public var retries = 0
    public var viewServiceCalls = 0
    /// Sessions started again after a SESSION_EXPIRED (a new client id each).
    public var newSessions = 0
}

/// The pbkv client library: Get, Put and PutHash with at-most-once semantics across failover.
///
/// It finds the primary through the view service, caches the view, and talks only to that
/// primary; on an error or timeout it asks the view service again, sleeps about a ping interval
/// and retries with the same request id until success or the deadline. By default a client has
/// one request outstanding at a time: concurrent calls on one `KVClient` wait their turn. With
/// `KVClientConfiguration.pipelineWindow` W > 1, up to W concurrent calls are in flight at once
/// on its connection (the first request of each session still goes alone).
public actor KVClient {
    /// The client id of the current session: random, replaced when the server answers
    /// SESSION_EXPIRED (its duplicate table evicted this session).
    public var clientID: UInt64 { session.clientID }
    private let configuration: KVClientConfiguration
    private nonisolated let eventLoop: any EventLoop
    private nonisolated let executor: any SerialExecutor
    private let logger: Logger
    private let viewService: ViewServiceClient
    private var session: Session
    private let window: Int
    private var primary: String?
    private var primaryClient: RPCClient?
    /// The view's text for `primaryClient`'s address (compared per call; never re-formatted).
    private var primaryClientAddress: String?
    /// Operations holding one of the `window` places (their seq may be of an older session).
    private var inFlight = 0
    /// Calls waiting for a place and a seq, first come first served; resumed with their id,
    /// or with nil when their task is cancelled or the client closed.
    private var waiters: [(ticket: UInt64, continuation: CheckedContinuation<RequestID?, Never>)] = []
    private var lastWaiterTicket: UInt64 = 0
    private var closed = false
    public private(set) var stats = KVClientStats()
    /// Calls waiting for their turn: for a place in the pipelining window, or, with a window of
    /// 1, for the call ahead of them to end.
    public var callsWaiting: Int { waiters.count }

    /// A client of the view service at `viewService`: `HOST:PORT`, or several addresses of a
    /// replicated view service separated by commas.
    public init(
        viewService: String, configuration: KVClientConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger = Logger(label: "pbkv.client")
    ) throws(KVClientError) {
        guard let addresses = try? PeerAddress.list(parsing: viewService) else { throw .invalidAddress(viewService) }
        guard (1...Int(RequestID.maxWindow)).contains(configuration.pipelineWindow) else {
            throw .invalidPipelineWindow(configuration.pipelineWindow)
        }
        self.session = Session()
        self.window = configuration.pipelineWindow
        self.configuration = configuration
        self.eventLoop = eventLoopGroup.next()
        self.executor = eventLoop.executor
        self.logger = logger
        let viewServiceConfiguration = configuration.connections
        self.viewService = ViewServiceClient(
            addresses: addresses, eventLoop: eventLoop, configuration: viewServiceConfiguration, logger: logger)
    }

    /// The actor runs on its connections' event loop: a call and its reply need no thread hop.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// Runs `body` isolated to this client, on its event loop: a sequence of operations issued
    /// from inside does not hop between threads for each call (the caller's task otherwise
    /// hops to the client's loop and back for every operation).
    public func withIsolation<T: Sendable>(
        _ body: @Sendable (isolated KVClient) async throws -> T
    ) async rethrows -> T {
        try await body(self)
    }

    /// The value of `key`, or nil if the key is absent.
    public func get(_ key: String) async throws(KVClientError) -> String? {
        let reply = try await perform(KVMethods.get) { id in GetArgs(key: key, id: id) }
        return reply.code == .noKey ? nil : reply.value
    }

    /// Sets `key` to `value`.
    public func put(_ key: String, _ value: String) async throws(KVClientError) {
        _ = try await perform(KVMethods.put) { id in PutArgs(key: key, value: value, id: id) }
    }

    /// Sets `key` to FNV-1a-32(previous + value) in decimal; returns the previous value ("" if absent).
    public func putHash(_ key: String, _ value: String) async throws(KVClientError) -> String {
        try await perform(KVMethods.putHash) { id in PutHashArgs(key: key, value: value, id: id) }.value
    }

    /// The view as the view service reports it now (one call).
    public func currentView() async throws -> View {
        stats.viewServiceCalls += 1
        return try await viewService.getView(timeout: configuration.viewServiceTimeout)
    }

    /// Closes connections; calls waiting for their turn, calls in flight and later calls fail
    /// with `.closed`.
    public func close() async {
        closed = true
        let waiting = waiters
        waiters = []
        for waiter in waiting { waiter.continuation.resume(returning: nil) }
        try? await viewService.shutdown().get()
        try? await primaryClient?.shutdown().get()
    }

    // MARK: - internals

    private func perform<Request: Sendable>(
        _ method: RPCMethod<Request, KVReply>, _ makeRequest: (RequestID) -> Request
    ) async throws(KVClientError) -> KVReply {
        guard !closed else { throw .closed }
        guard var id = await admit() else { throw notAdmitted(method, makeRequest) }
        // Whether `id` holds one of the window's places (given back when the call ends).
        var holdsPlace = true
        defer { if holdsPlace { finish(id) } }
        guard !closed else { throw .closed }
        var request = makeRequest(id)
        var call: Call { method.call(request) }
        stats.operations += 1
        let start = ContinuousClock.now
        var lastProblem = "no primary known yet"
        var first = true
        // Whether an attempt of this call reached the RPC layer: it may have run on a server.
        var sent = false
        while true {
            // Closed meanwhile: the connections are gone, retrying until the deadline cannot help.
            if closed { throw .closed }
            if !first {
                stats.retries += 1
                if Task.isCancelled { throw .cancelled(operation: call.method, key: call.key) }
            }
            first = false
            if primary == nil { await refreshView(&lastProblem) }
            if let primary, let client = client(for: primary) {
                stats.attempts += 1
                let mayHaveRun = sent
                sent = true
                do {
                    let reply = try await client.call(method, request, timeout: configuration.attemptTimeout)
                    if reply.code == .ok || reply.code == .noKey { return reply }
                    if reply.code == .sessionExpired {
                        // The server did not run this attempt. A new session (new id, seq 1) is
                        // safe when no earlier attempt may have run, and always for a Get (a
                        // read has no effect to repeat); otherwise the outcome is unknown. Other
                        // calls in flight in the expired session meet the same answer and decide
                        // for themselves; the session is replaced once.
                        if id.clientID == session.clientID { newSession() }
                        if mayHaveRun, !call.isGet {
                            throw KVClientError.sessionExpired(operation: call.method, key: call.key)
                        }
                        guard let newID = await reissue(id) else {
                            holdsPlace = false
                            throw notAdmitted(method, makeRequest)
                        }
                        id = newID
                        request = makeRequest(id)
                        sent = false
                        continue
                    }
                    if reply.code == .badRequest {
                        throw KVClientError.rejected(operation: call.method, key: call.key, reason: reply.value)
                    }
                    lastProblem = "\(primary) answered \(reply.code)"
                } catch let error as KVClientError {
                    throw error
                } catch let error as RPCError {
                    // Too large to send, or a reply too large to receive, or arguments refused:
                    // the same request would fail the same way on any primary.
                    switch error {
                    case .requestTooLarge, .remote(code: .frameTooLarge, _), .remote(code: .badRequest, _):
                        throw KVClientError.rejected(operation: call.method, key: call.key, reason: error.description)
                    default:
                        lastProblem = "\(error)"
                    }
                } catch {
                    lastProblem = "\(error)"
                }
                // The primary we believed in failed us: ask again, and retry at once if it moved.
                self.primary = nil
                await refreshView(&lastProblem)
                if let newPrimary = self.primary, newPrimary != primary, ContinuousClock.now - start < configuration.deadline {
                    continue
                }
            }
            if ContinuousClock.now - start >= configuration.deadline {
                throw .deadlineExceeded(
                    operation: call.method, key: call.key, seconds: Double(configuration.deadline.milliseconds) / 1000,
                    lastProblem: lastProblem)
            }
            do {
                try await Task.sleep(for: configuration.retryInterval)
            } catch {
                throw .cancelled(operation: call.method, key: call.key)
            }
        }
    }

    /// Starts a new session: a fresh random client id, seq restarting at 1. Calls of the old
    /// session still in flight keep their ids (their retries must be recognised as such).
    private func newSession() {
        session = Session()
        stats.newSessions += 1
        wakeWaiters()
    }

    private func refreshView(_ lastProblem: inout String) async {
        stats.viewServiceCalls += 1
        do {
            let view = try await viewService.getView(timeout: configuration.viewServiceTimeout)
            primary = view.primary.isEmpty ? nil : view.primary
            if primary == nil { lastProblem = "the view service knows no primary (\(view))" }
        } catch {
            lastProblem = "view service: \(error)"
            primary = nil
        }
    }

    private func client(for address: String) -> RPCClient? {
        if let primaryClient, primaryClientAddress == address { return primaryClient }
        guard let peer = try? PeerAddress(parsing: address) else { return nil }
        if let old = primaryClient { _ = old.shutdown() }
        var rpcConfiguration = configuration.connections
        rpcConfiguration.compressionThreshold = configuration.compressionThreshold
        let client = RPCClient(peer: peer, eventLoop: eventLoop, configuration: rpcConfiguration, logger: logger)
        primaryClient = client
        primaryClientAddress = address
        return client
    }

    /// A place among the `window` in flight and the next seq of the current session, waiting
    /// for them if needed (after the callers already waiting). nil: the task was cancelled or
    /// the client closed while it waited; it holds no place then.
    private func admit() async -> RequestID? {
        if waiters.isEmpty, let id = issue() { return id }
        lastWaiterTicket += 1
        let ticket = lastWaiterTicket
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if closed || Task.isCancelled { return continuation.resume(returning: nil) }
                waiters.append((ticket, continuation))
            }
        } onCancel: {
            Task { await self.cancelWaiter(ticket) }
        }
    }

    /// A waiting call's task was cancelled: it stops waiting (if still waiting).
    private func cancelWaiter(_ ticket: UInt64) {
        guard let index = waiters.firstIndex(where: { $0.ticket == ticket }) else { return }
        waiters.remove(at: index).continuation.resume(returning: nil)
    }

    /// The error of a call that got no place: the client closed, or its task was cancelled.
    private func notAdmitted<Request>(_ method: RPCMethod<Request, KVReply>, _ makeRequest: (RequestID) -> Request) -> KVClientError {
        if closed { return .closed }
        let call = method.call(makeRequest(RequestID(clientID: 0, seq: 0)))
        return .cancelled(operation: call.method, key: call.key)
    }

    /// The next request id if a place is free and the session's window allows its seq.
    private func issue() -> RequestID? {
        guard inFlight < window, session.allowsNextSeq(window: window) else { return nil }
        inFlight += 1
        return session.nextID(pipelining: window > 1)
    }

    /// A new id in the current session for a call whose `old` id's session expired: at once,
    /// keeping its place, when the window allows; else after the callers already waiting (nil,
    /// holding no place, if cancelled or closed meanwhile).
    private func reissue(_ old: RequestID) async -> RequestID? {
        if session.allowsNextSeq(window: window) { return session.nextID(pipelining: window > 1) }
        finish(old)
        return await admit()
    }

    /// `id`'s call is over (replied, failed or given up): it will never be sent again.
    private func finish(_ id: RequestID) {
        inFlight -= 1
        if id.clientID == session.clientID { session.finish(id.seq) }
        wakeWaiters()
    }

    private func wakeWaiters() {
        while !waiters.isEmpty, let id = issue() { waiters.removeFirst().continuation.resume(returning: id) }
    }
}

/// A client session: its id, the seqs handed out and how far the client holds every reply.
///
/// Pipelining rules (README "At-most-once"): seq 1 goes alone — the server refuses a seq above 1
/// for a client id it has no row for (SESSION_EXPIRED, the row was evicted), so seq 2 is sent
/// only once seq 1's reply proved the row exists; after that, seqs up to `acked + window` may
/// be in flight, `acked` being the highest seq such that every call up to it is over.
private struct Session {
    let clientID = UInt64.random(in: 1...UInt64.max)
    private(set) var lastSeq: UInt64 = 0
    private(set) var acked: UInt64 = 0
    /// Seqs above `acked + 1` whose calls are over.
    private var finishedAbove: Set<UInt64> = []

    func allowsNextSeq(window: Int) -> Bool {
        lastSeq == 0 || (acked >= 1 && lastSeq + 1 - acked <= UInt64(window))
    }

    /// The next id; with pipelining it carries `acked` (without, 0: the server reads seq - 1).
    mutating func nextID(pipelining: Bool) -> RequestID {
        lastSeq += 1
        return RequestID(clientID: clientID, seq: lastSeq, acked: pipelining ? acked : 0)
    }

    mutating func finish(_ seq: UInt64) {
        guard seq == acked + 1 else {
            finishedAbove.insert(seq)
            return
        }
        acked = seq
        while finishedAbove.remove(acked + 1) != nil { acked += 1 }
    }
}

extension Call {
    /// Whether this is a Get (repeating it has no effect).
    var isGet: Bool {
        if case .get = self { return true }
        return false
    }

    /// The key an operation is about ("" for others).
    var key: String {
        switch self {
        case .get(let args): args.key
        case .put(let args): args.key
        case .putHash(let args): args.key
        default: ""
        }
    }
}

