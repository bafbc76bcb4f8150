import PBKVCore

/// Why an RPC call failed. Every case says what happened and what to do about it.
///
/// Keep every payload at most two `String`s (32 bytes): with a larger one (a case of two Strings
/// and two Ints was tried) `RPCClient.call(_:timeout:) async throws(RPCError)` crashed now and
/// then in "outlined consume of RPCError" (Swift 6.3.1, debug build; 5 of 8 runs of three RPC
/// tests), and never with the payload kept at 32 bytes (16 of 16).
public enum RPCError: Error, Sendable, Hashable, CustomStringConvertible {
    /// No reply before the deadline; the call may or may not have run on the server.
    case timeout(method: String, peer: String)
    /// The connection closed while the call was in flight; it may or may not have run.
    case connectionLost(peer: String)
    /// No connection could be made (nothing listening, handshake refused, ...).
    case connectionRefused(peer: String, reason: String)
    /// The server answered the call with an error code.
    case remote(code: Code, message: String)
    /// A view service that is not the leader answered; `leader` is the leader's address ("" if unknown).
    case notLeader(peer: String, leader: String)
    /// The request was not sent: encoded, it exceeds the largest frame of the connection (the
    /// smaller of this client's and the server's maximum). Retrying cannot help.
    case requestTooLarge(method: String, size: Int, limit: Int)
    /// The peer broke the protocol (bad frame, bad handshake, undecodable reply).
    case protocolViolation(String)
    /// The address is not `HOST:PORT`.
    case invalidAddress(String)
    /// The client was shut down.
    case shutdown

    public var description: String {
        switch self {
        case .timeout(let method, let peer):
            "\(method) to \(peer) timed out; the server may be down or slow — it is retried if the caller retries"
        case .connectionLost(let peer):
            "connection to \(peer) was lost during the call; the server may have crashed"
        case .connectionRefused(let peer, let reason):
            "cannot connect to \(peer): \(reason) — is the server running at that address?"
        case .remote(let code, let message):
            "server error \(code): \(message)"
        case .notLeader(let peer, let leader):
            "view service \(peer) is not the leader" + (leader.isEmpty ? "; no leader is known yet — retry shortly" : "; the leader is \(leader)")
        case .requestTooLarge(let method, let size, let limit):
            "\(method) not sent: its \(size) bytes exceed the connection's frame limit of \(limit) bytes; send smaller keys and values"
        case .protocolViolation(let what):
            "protocol violation: \(what) — are both sides the same pbkv version?"
        case .invalidAddress(let address):
            "invalid address \"\(address)\": expected HOST:PORT, e.g. 127.0.0.1:7000"
        case .shutdown:
            "the RPC client was shut down"
        }
    }
}

/// A `HOST:PORT` address as pbkv writes it in views and on the command line.
public struct PeerAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` or `[IPv6]:PORT`.
    public init(parsing text: String) throws(RPCError) {
        guard let colon = text.lastIndex(of: ":") else { throw .invalidAddress(text) }
        var host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard let port = Int(portText), (0...65535).contains(port), !host.isEmpty else { throw .invalidAddress(text) }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses a comma-separated list `HOST:PORT[,HOST:PORT…]` (at least one; spaces ignored).
    public static func list(parsing text: String) throws(RPCError) -> [PeerAddress] {
        let parts = text.split(separator: ",").map { $0.filter { $0 != " " } }.filter { !$0.isEmpty }
        guard !parts.isEmpty else { throw .invalidAddress(text) }
        var addresses: [PeerAddress] = []
        for part in parts { addresses.append(try PeerAddress(parsing: String(part))) }
        return addresses
    }
}
