import NIOCore
import PBKVCore

/// What every transport's server side does with a decoded request: find the method table that
/// serves it and turn the outcome into a `Response`. Decoding failures, unknown methods and
/// service errors become the same error codes on every transport.
struct RPCDispatch: Sendable {
    let tables: [RPCMethodTable]

    /// The answer to one request: ready now, or when the service completes.
    enum Answer {
        case now(Response)
        /// `method` is the call's `Call.methodIndex`.
        case later(EventLoopFuture<Response>, method: Int)
    }

    func answer(_ request: Request, context: RPCCallContext) -> Answer {
        let callID = request.callID
        let call: Call
        switch request.call {
        case .failure(.unknownMethod):
            return .now(Response(
                callID: callID, code: .unknownMethod,
                message: "unknown method: the request named no method this server knows (newer client?)"))
        case .failure(.badArguments(let why)):
            return .now(Response(callID: callID, code: .badRequest, message: why))
        case .success(let decoded):
            call = decoded
        }
        // A plain loop: `lazy.compactMap(...).first` evaluates the route twice, running every call twice.
        for table in tables {
            if let future = table.route(call, context) {
                let response = future.hop(to: context.eventLoop).map { Response(callID: callID, result: $0) }
                    .recover { Self.response(callID: callID, error: $0) }
                return .later(response, method: call.methodIndex)
            }
        }
        return .now(Response(callID: callID, code: .unknownMethod, message: "this server does not implement \(call.method)"))
    }

    /// A service's failure as the caller receives it: its code (an `RPCServiceError`), or INTERNAL.
    static func response(callID: UInt64, error: any Error) -> Response {
        if let error = error as? RPCServiceError {
            return Response(callID: callID, code: error.code, message: error.message, leader: error.leader)
        }
        return Response(callID: callID, code: .internal, message: "\(error)")
    }
}

extension Response {
    /// What the caller of the call this answers gets: its result or the error the code stands for.
    func outcome(from peer: PeerAddress) -> Result<CallResult, RPCError> {
        if code == .ok, let result { return .success(result) }
        if code == .notLeader { return .failure(.notLeader(peer: "\(peer)", leader: leader)) }
        return .failure(.remote(code: code, message: message))
    }
}
