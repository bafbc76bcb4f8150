import Logging
import NIOCore
import PBKVCore
import PBKVTLS

/// How an `RPCClient` connects and talks.
public struct RPCClientConfiguration: Sendable {
    /// How the peer is reached: TCP (the default; mutual TLS with `tls`) or in memory.
    public var transport: any RPCTransport = TCPTransport()
    public var maxPayload: Int = Frame.defaultMaxPayload
    public var compressionThreshold: Int = FrameCodec.defaultCompressionThreshold
    /// What to offer in the handshake: zlib per frame (the default), nothing, or also the
    /// per-connection deflate streams (`FEATURE_DEFLATE_STREAM`: for slow links; on a LAN it
    /// costs more CPU than the bytes it saves).
    public var compression = CompressionMode.frame
    /// Upper bound for TCP connect plus handshake.
    public var connectTimeout: Duration = .seconds(1)
    /// Sabotages this client's outbound calls (tests only).
    public var faults: FaultInjector?
    public var name = "pbkv-client"
    /// Mutual TLS: present this member's certificate and accept only a server certificate of
    /// the cluster CA that covers the address dialed. nil: plaintext (`--insecure`).
    public var tls: MutualTLS?
    /// Counts this client's bytes per traffic kind (a server's links to its backup and to the
    /// view service, with `--metrics`); nil: nothing is measured.
    public var metrics: RPCMetrics?

    public init() {}
}

/// A connection-reusing RPC client to one peer, over its configuration's transport
/// (`RPCTransport`: TCP by default): calls are multiplexed by call id, many in flight at once,
/// each with its own deadline. A lost connection fails the calls in flight and is re-made on
/// the next call. Thread-safe.
public final class RPCClient: Sendable {
    public let peer: PeerAddress
    public let eventLoop: any EventLoop
    private let connection: any RPCConnection

    public init(peer: PeerAddress, eventLoop: any EventLoop, configuration: RPCClientConfiguration = .init(), logger: Logger) {
        self.peer = peer
        self.eventLoop = eventLoop
        self.connection = configuration.transport.connection(to: peer, eventLoop: eventLoop, configuration: configuration, logger: logger)
    }

    /// Calls `call` and completes with its result, or fails with an `RPCError`.
    ///
    /// `compressionThreshold` overrides the configured threshold for this call's request frame
    /// (when the handshake agreed zlib): latency-sensitive calls use a higher one.
    public func call(_ call: Call, timeout: Duration, compressionThreshold: Int? = nil) -> EventLoopFuture<CallResult> {
        connection.call(call, timeout: timeout, compressionThreshold: compressionThreshold)
    }

    /// Async form of `call(_:timeout:)`; throws `RPCError`.
    public func call(_ call: Call, timeout: Duration, compressionThreshold: Int? = nil) async throws(RPCError) -> CallResult {
        do {
            return try await self.call(call, timeout: timeout, compressionThreshold: compressionThreshold).get()
        } catch let error as RPCError {
            throw error
        } catch {
            throw .protocolViolation("\(error)")
        }
    }

    /// Closes the connection; later calls fail with `.shutdown`.
    public func shutdown() -> EventLoopFuture<Void> {
        connection.shutdown()
    }

    /// Closes the current connection (if any); the next call reconnects. For tests and failover.
    public func disconnect() {
        connection.disconnect()
    }
}
