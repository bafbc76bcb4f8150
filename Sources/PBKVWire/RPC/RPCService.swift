import Logging
import PBKVCore
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

extension PeerAuthentication {
    /// Nil when the peer may make `call`; the refusal otherwise. Ping, Forward and Transfer are
    /// member calls speaking for the server they name (`PingArgs.server`, the primary); every other
    /// method is a client call.
    public func refusal(of call: Call) -> RPCServiceError? {
        switch call {
        case .ping(let args): refusalOfMemberCall(call.method, speakingFor: args.server)
        // Only the primary's own certificate may stream operations or state to a backup (the
        // backup then checks that this primary is the one its view names).
        case .forward(let args): refusalOfMemberCall(call.method, speakingFor: args.primary)
        case .transfer(let chunk): refusalOfMemberCall(call.method, speakingFor: chunk.primary)
        default: refusalOfClientCall(call.method)
        }
    }
}

extension ViewServiceProtocol {
    /// Default: the method is not implemented (answered UNKNOWN_METHOD).
    public func viewServiceStatus(context: RPCCallContext) -> EventLoopFuture<ViewServiceStatus> {
        context.eventLoop.makeFailedFuture(RPCServiceError(code: .unknownMethod, message: "this view service does not report its status"))
    }

    /// Default: the method is not implemented (answered UNKNOWN_METHOD).
    public func viewServiceRole(context: RPCCallContext) -> EventLoopFuture<ViewServiceRole> {
        context.eventLoop.makeFailedFuture(RPCServiceError(code: .unknownMethod, message: "this view service does not report its role"))
    }
}

extension KVServiceProtocol {
    /// Default: the method is not implemented (answered UNKNOWN_METHOD).
    public func serverStatus(context: RPCCallContext) -> EventLoopFuture<ServerStatus> {
        context.eventLoop.makeFailedFuture(RPCServiceError(code: .unknownMethod, message: "this server does not report its status"))
    }
}

/// One method of a service (generated per `rpc` in proto/pbkv.proto, e.g. `KVMethods.get`): how
/// its request becomes a `Call` and where its reply is in a `CallResult`.
public struct RPCMethod<Request: Sendable, Reply: Sendable>: Sendable {
    public let name: String
    public let call: @Sendable (Request) -> Call
    /// The reply, nil when `CallResult` holds another method's reply type.
    public let reply: @Sendable (CallResult) -> Reply?

    public init(name: String, call: @escaping @Sendable (Request) -> Call, reply: @escaping @Sendable (CallResult) -> Reply?) {
        self.name = name
        self.call = call
        self.reply = reply
    }

    /// The error for a reply of the wrong type (a peer that breaks the protocol).
    func wrongReply(_ result: CallResult) -> RPCError {
        .protocolViolation("\(name) answered with a \(result.caseName) result")
    }
}

extension RPCClient {
    /// Calls `method` with `request`; its reply, typed.
    public func call<Request, Reply>(
        _ method: RPCMethod<Request, Reply>, _ request: Request, timeout: Duration, compressionThreshold: Int? = nil
    ) -> EventLoopFuture<Reply> {
        call(method.call(request), timeout: timeout, compressionThreshold: compressionThreshold).flatMapThrowing { result in
            guard let reply = method.reply(result) else { throw method.wrongReply(result) }
            return reply
        }
    }

    /// Calls `method` with `request`; its reply, typed.
    public func call<Request, Reply>(
        _ method: RPCMethod<Request, Reply>, _ request: Request, timeout: Duration, compressionThreshold: Int? = nil
    ) async throws(RPCError) -> Reply {
        let result = try await call(method.call(request), timeout: timeout, compressionThreshold: compressionThreshold)
        guard let reply = method.reply(result) else { throw method.wrongReply(result) }
        return reply
    }
}

/// A set of methods the RPC server can dispatch to: built from a typed service protocol by the
/// generated `RPCMethodTable.viewService(_:)`, `.kv(_:)` and `.replica(_:)`.
/// A server hosts one or more tables; a call no table handles is answered UNKNOWN_METHOD.
public struct RPCMethodTable: Sendable {
    /// Returns nil when the call is not one of this table's methods.
    public let route: @Sendable (Call, RPCCallContext) -> EventLoopFuture<CallResult>?

    public init(route: @escaping @Sendable (Call, RPCCallContext) -> EventLoopFuture<CallResult>?) {
        self.route = route
    }

    /// A failed reply when the peer may not make `call` (its certificate does not allow it).
    static func refused(_ call: Call, _ context: RPCCallContext) -> EventLoopFuture<CallResult>? {
        context.peer.refusal(of: call).map { context.eventLoop.makeFailedFuture($0) }
    }
}
