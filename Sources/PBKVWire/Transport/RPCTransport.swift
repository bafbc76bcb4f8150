import Logging
import NIOCore
import PBKVCore

/// How pbkv reaches its peers and is reached: the seam between the RPC layer (`RPCClient`,
/// `RPCServer`, the method tables) and the network. `TCPTransport` is the real one (frames over
/// TCP, with mutual TLS when configured); `InMemoryTransport` connects the nodes of one process
/// without sockets, with seeded faults, for fast scenario tests.
///
/// Every transport keeps the same contract: calls on one connection are multiplexed, each ends
/// with its reply or an `RPCError` (timeout, connection lost or refused, request too large,
/// remote error), requests and replies are the schema's envelopes with the schema's limits.
public protocol RPCTransport: Sendable {
    /// A connection to `peer` whose callbacks run on `eventLoop`. It connects on its first call
    /// and again after a loss; it does nothing before.
    func connection(
        to peer: PeerAddress, eventLoop: any EventLoop, configuration: RPCClientConfiguration, logger: Logger
    ) -> any RPCConnection

    /// Starts accepting connections at `configuration.host:port` (port 0: any free port) and
    /// answering their calls with `tables`, on `group`'s event loops.
    func listen(
        configuration: RPCServerConfiguration, group: any EventLoopGroup, tables: [RPCMethodTable], logger: Logger
    ) async throws -> any RPCListener
}

/// One transport's connection to one peer (what `RPCClient` calls through).
public protocol RPCConnection: Sendable {
    /// Sends `call`; completes with its result, or fails with an `RPCError`.
    func call(_ call: Call, timeout: Duration, compressionThreshold: Int?) -> EventLoopFuture<CallResult>
    /// Closes the connection; later calls fail with `.shutdown`.
    func shutdown() -> EventLoopFuture<Void>
    /// Drops the current connection (calls in flight fail with `.connectionLost`); the next call reconnects.
    func disconnect()
}

/// One transport's listening endpoint (what `RPCServer` serves through).
public protocol RPCListener: Sendable {
    /// The port bound (the one chosen when 0 was asked for).
    var port: Int { get }
    /// Where it listens, `HOST:PORT`, for logs.
    var address: String { get }
    /// Connections open now.
    var connectionCount: Int { get }
    /// Stops accepting and closes every connection accepted (calls in flight on them are lost).
    func close() async
}

/// Frames over TCP: the production transport. With `tls` in the configurations, connections are
/// mutual TLS and every call carries the peer's certificate identity.
public struct TCPTransport: RPCTransport {
    public init() {}

    public func connection(
        to peer: PeerAddress, eventLoop: any EventLoop, configuration: RPCClientConfiguration, logger: Logger
    ) -> any RPCConnection {
        TCPConnection(peer: peer, eventLoop: eventLoop, configuration: configuration, logger: logger)
    }

    public func listen(
        configuration: RPCServerConfiguration, group: any EventLoopGroup, tables: [RPCMethodTable], logger: Logger
    ) async throws -> any RPCListener {
        try await TCPListener.start(configuration: configuration, group: group, tables: tables, logger: logger)
    }
}
