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
        case later(PendingAnswer)
    }

    /// A call its service completes later. `whenAnswered` turns the outcome into the `Response`
    /// with one callback: a chain of `map`, `recover` and a reply callback would cost a promise
    /// and a closure per link, on every call.
    struct PendingAnswer {
        /// The service's result, on the connection's event loop.
        let result: EventLoopFuture<CallResult>
        let callID: UInt64
        /// The call's `Call.methodIndex`.
        let method: Int

        /// Calls `body` with the response once the service completed (at once if it has).
        func whenAnswered(_ body: @escaping @Sendable (Response) -> Void) {
            let callID = callID
            result.whenComplete { outcome in
                switch outcome {
                case .success(let result): body(Response(callID: callID, result: result))
                case .failure(let error): body(RPCDispatch.response(callID: callID, error: error))
                }
            }
        }
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
                return .later(PendingAnswer(result: future.hop(to: context.eventLoop), callID: callID, method: call.methodIndex))
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
