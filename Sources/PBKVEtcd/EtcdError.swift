/// Why a call to etcd failed. Each case says what to do about it.
public enum EtcdError: Error, Sendable, Hashable, CustomStringConvertible {
    /// No endpoint was given.
    case noEndpoints
    /// An endpoint is not `HOST:PORT`.
    case invalidEndpoint(String)
    /// No endpoint answered: every one refused the connection, timed out or said it cannot serve.
    /// `attempts` says, per endpoint, what went wrong.
    case unreachable(attempts: [String])
    /// etcd answered with an error (a gRPC status code and its message).
    case rejected(endpoint: String, code: Int, message: String)
    /// The lease expired or was revoked (keepalive of a dead lease, put bound to one).
    case leaseNotFound(id: Int64)
    /// The reply is not what etcd's v3 JSON gateway sends.
    case malformedResponse(endpoint: String, reason: String)
    /// The calling task was cancelled before the reply came.
    case cancelled
    /// `EtcdElection.run` was called while it was already running.
    case electionAlreadyRunning

    public var description: String {
        switch self {
        case .noEndpoints:
            "no etcd endpoint given: pass --etcd HOST:PORT[,HOST:PORT…] (the client addresses of the etcd members)"
        case .invalidEndpoint(let endpoint):
            "'\(endpoint)' is not an etcd client endpoint: give HOST:PORT (e.g. 127.0.0.1:2379), several separated by "
                + "commas; TLS (https) is not supported"
        case .unreachable(let attempts):
            "no etcd endpoint answered (\(attempts.joined(separator: "; "))): check that etcd runs, that --etcd names "
                + "its client addresses, and that a majority of its members are up"
        case .rejected(let endpoint, let code, let message):
            "etcd at \(endpoint) refused the request: \(message) (gRPC code \(code)); see that member's log"
        case .leaseNotFound(let id):
            "etcd lease \(id) has expired or was revoked: grant a new lease (a view service steps down and campaigns again)"
        case .malformedResponse(let endpoint, let reason):
            "\(endpoint) answered something that is not an etcd v3 JSON reply (\(reason)): is it the client port of "
                + "etcd 3.4 or later?"
        case .cancelled:
            "the etcd request was cancelled because its task stopped"
        case .electionAlreadyRunning:
            "EtcdElection.run was called while it is already running: make one election per view service and run it once"
        }
    }
}
