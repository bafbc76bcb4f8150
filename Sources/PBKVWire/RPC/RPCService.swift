import Logging
import PBKVTLS
import NIOCore

/// Who sent a call, as far as the connection can tell.
public enum PeerAuthentication: Sendable, Hashable {
    /// Plaintext (`--insecure`): nobody is authenticated and no method is refused.
    case plaintext
    /// Mutual TLS: the peer's certificate, verified against the cluster CA, states this
    /// identity (nil: a certificate of the CA without a pbkv role, allowed nothing).
    case certificate(MemberIdentity?)

    /// Nil when the peer may call a client method (Get, Put, PutHash, GetView, and the status
    /// methods); the refusal otherwise.
    public func refusalOfClientCall(_ method: String) -> RPCServiceError? {
        guard case .certificate(let identity) = self, identity == nil else { return nil }
        return RPCServiceError(code: .permissionDenied, message: "\(method) refused: the certificate names no pbkv role")
    }

    /// Nil when the peer may call a member method (Ping, Forward, Transfer) speaking for
    /// `address`: only a server certificate covering that address may; the refusal otherwise.
    public func refusalOfMemberCall(_ method: String, speakingFor address: String) -> RPCServiceError? {
        guard case .certificate(let identity) = self else { return nil }
        guard let identity, identity.role == .server else {
            return RPCServiceError(
                code: .permissionDenied,
                message: "\(method) refused: only a server certificate may call it (this one is \(identity.map { "\($0)" } ?? "without a role"))")
        }
        guard identity.speaks(for: address) else {
            return RPCServiceError(
                code: .permissionDenied,
                message: "\(method) refused: \(identity) may not speak for \(address) (issue it a certificate with --host \(address))")
        }
        return nil
    }
}

/// What a service implementation knows about the call it is answering.
public struct RPCCallContext: Sendable {
    /// The loop the connection runs on; replies may be completed from any thread.
    public var eventLoop: any EventLoop
    public var remoteAddress: SocketAddress?
    /// Who the caller is (TLS) or that nobody is authenticated (plaintext).
    public var peer: PeerAuthentication
    public var logger: Logger

    public init(eventLoop: any EventLoop, remoteAddress: SocketAddress?, peer: PeerAuthentication = .plaintext, logger: Logger) {
        self.eventLoop = eventLoop
        self.remoteAddress = remoteAddress
        self.peer = peer
        self.logger = logger
    }
}

/// A service's answer that is an error code rather than a result: fail the reply future with
/// it and the caller receives `code`, `message` (and `leader` with `.notLeader`).
public struct RPCServiceError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: Code
    public var message: String
    public var leader: String

    public init(code: Code, message: String, leader: String = "") {
        self.code = code
        self.message = message
        self.leader = leader
    }

    /// "Not the view service leader; ask `leader`."
    public static func notLeader(_ leader: String?) -> RPCServiceError {
        RPCServiceError(
            code: .notLeader,
            message: leader.map { "this view service is not the leader; the leader is \($0)" }
                ?? "this view service is not the leader and knows none yet; retry shortly",
            leader: leader ?? "")
    }

    public var description: String { "\(code): \(message)" }
}

/// The view service's methods, as the RPC server dispatches them.
public protocol ViewServiceProtocol: Sendable {
    /// A server's heartbeat; returns the current view.
    func ping(_ args: PingArgs, context: RPCCallContext) -> EventLoopFuture<View>
    /// The current view, without counting as a ping.
    func getView(context: RPCCallContext) -> EventLoopFuture<View>
    /// The view and every live server, idle ones included (`pbkv status`).
    func status(context: RPCCallContext) -> EventLoopFuture<ViewServiceStatus>
}

extension ViewServiceProtocol {
    /// Default: the method is not implemented (answered UNKNOWN_METHOD).
    public func status(context: RPCCallContext) -> EventLoopFuture<ViewServiceStatus> {
        context.eventLoop.makeFailedFuture(RPCServiceError(code: .unknownMethod, message: "this view service does not report its status"))
    }
}

/// The key/value methods clients call on the primary.
public protocol KVServiceProtocol: Sendable {
    func get(key: String, id: RequestID, context: RPCCallContext) -> EventLoopFuture<KVReply>
    func put(key: String, value: String, id: RequestID, context: RPCCallContext) -> EventLoopFuture<KVReply>
    func putHash(key: String, value: String, id: RequestID, context: RPCCallContext) -> EventLoopFuture<KVReply>
    /// Role, view, keys, counters and transfer progress (`pbkv status`).
    func serverStatus(context: RPCCallContext) -> EventLoopFuture<ServerStatus>
}

extension KVServiceProtocol {
    /// Default: the method is not implemented (answered UNKNOWN_METHOD).
    public func serverStatus(context: RPCCallContext) -> EventLoopFuture<ServerStatus> {
        context.eventLoop.makeFailedFuture(RPCServiceError(code: .unknownMethod, message: "this server does not report its status"))
    }
}

/// The methods a primary calls on its backup.
public protocol ReplicaServiceProtocol: Sendable {
    func forward(_ args: ForwardArgs, context: RPCCallContext) -> EventLoopFuture<ForwardReply>
    func transfer(_ chunk: TransferChunk, context: RPCCallContext) -> EventLoopFuture<TransferReply>
}

/// A set of methods the RPC server can dispatch to: built from a typed service protocol.
/// A server hosts one or more tables; a call no table handles is answered UNKNOWN_METHOD.
public struct RPCMethodTable: Sendable {
    /// Returns nil when the call is not one of this table's methods.
    public let route: @Sendable (Call, RPCCallContext) -> EventLoopFuture<CallResult>?

    public init(route: @escaping @Sendable (Call, RPCCallContext) -> EventLoopFuture<CallResult>?) {
        self.route = route
    }

    /// Answers with `refusal` when there is one (the peer's certificate does not allow the call).
    private static func refused(_ refusal: RPCServiceError?, _ context: RPCCallContext) -> EventLoopFuture<CallResult>? {
        refusal.map { context.eventLoop.makeFailedFuture($0) }
    }

    public static func viewService(_ service: some ViewServiceProtocol) -> RPCMethodTable {
        RPCMethodTable { call, context in
            switch call {
            case .ping(let args):
                // A ping speaks for the server it names: only that server's certificate may send it.
                refused(context.peer.refusalOfMemberCall("Ping", speakingFor: args.server), context)
                    ?? service.ping(args, context: context).map { .view($0) }
            case .getView:
                refused(context.peer.refusalOfClientCall("GetView"), context) ?? service.getView(context: context).map { .view($0) }
            case .viewServiceStatus:
                refused(context.peer.refusalOfClientCall("ViewServiceStatus"), context)
                    ?? service.status(context: context).map { .viewServiceStatus($0) }
            default: nil
            }
        }
    }

    public static func kv(_ service: some KVServiceProtocol) -> RPCMethodTable {
        RPCMethodTable { call, context in
            if let refusal = context.peer.refusalOfClientCall(call.method) {
                switch call {
                case .get, .put, .putHash, .serverStatus: return context.eventLoop.makeFailedFuture(refusal)
                default: break
                }
            }
            return switch call {
            case .get(let a): service.get(key: a.key, id: a.id, context: context).map { .kv($0) }
            case .put(let a): service.put(key: a.key, value: a.value, id: a.id, context: context).map { .kv($0) }
            case .putHash(let a): service.putHash(key: a.key, value: a.value, id: a.id, context: context).map { .kv($0) }
            case .serverStatus: service.serverStatus(context: context).map { .serverStatus($0) }
            default: nil
            }
        }
    }

    public static func replica(_ service: some ReplicaServiceProtocol) -> RPCMethodTable {
        RPCMethodTable { call, context in
            switch call {
            // Only the primary's own certificate may stream operations or state to a backup (the
            // backup then checks that this primary is the one its view names).
            case .forward(let args):
                refused(context.peer.refusalOfMemberCall("Forward", speakingFor: args.primary), context)
                    ?? service.forward(args, context: context).map { .forward($0) }
            case .transfer(let chunk):
                refused(context.peer.refusalOfMemberCall("Transfer", speakingFor: chunk.primary), context)
                    ?? service.transfer(chunk, context: context).map { .transfer($0) }
            default: nil
            }
        }
    }
}
