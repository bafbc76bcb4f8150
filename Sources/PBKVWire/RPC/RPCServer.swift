import Logging
import NIOCore
import PBKVCore
import PBKVTLS

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Constants of the connection protocol.
public enum RPCProtocol {
    /// The protocol version this build speaks (`Hello.protocol_version`).
    public static let version: UInt32 = 1
    /// The smallest `max_frame_size` a handshake may announce (0 means the default): every
    /// HelloReply, Goodbye and error reply fits in it, so no answer ever has to be dropped.
    public static let minimumMaxFrameSize: UInt32 = 4096
    /// Error messages sent on the wire are cut to this many bytes, so that an error reply or a
    /// Goodbye always fits in a frame of `minimumMaxFrameSize`.
    static let maxMessageBytes = 1024
}

/// How an `RPCServer` listens and talks.
public struct RPCServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// How connections are accepted: TCP (the default; mutual TLS with `tls`) or in memory.
    public var transport: any RPCTransport = TCPTransport()
    /// Largest frame payload accepted or sent, compressed or inflated.
    public var maxPayload: Int = Frame.defaultMaxPayload
    /// Replies at least this large are compressed when the client agreed to zlib.
    public var compressionThreshold: Int = FrameCodec.defaultCompressionThreshold
    /// What to agree to when a client offers it: zlib per frame (the default), nothing, or also
    /// the per-connection deflate streams (`FEATURE_DEFLATE_STREAM`: for slow links; on a LAN
    /// it costs more CPU than it saves).
    public var compression = CompressionMode.frame
    /// Sabotages inbound calls and connections (tests and `--fault-*` options only).
    public var faults: FaultInjector?
    /// Name sent in `HelloReply`, for logs.
    public var name = "pbkv"
    /// Mutual TLS: accepted connections must present a certificate of the cluster CA, and each
    /// call carries the peer's identity (`RPCCallContext.peer`). nil: plaintext (`--insecure`).
    public var tls: MutualTLS?
    /// A new connection must complete its `Hello` within this time; otherwise it gets a
    /// Goodbye (PROTOCOL_VIOLATION) and is closed.
    public var handshakeTimeout: Duration = .seconds(5)
    /// A connection with no call in flight that completes no frame for this long gets a
    /// Goodbye (code OK: a normal close) and is closed; nil: never.
    public var idleTimeout: Duration? = .seconds(300)
    /// Most connections open at once. When they are all open, a new connection takes the place
    /// of the oldest one that has not sent its Hello yet; when every one has, the new connection
    /// is sent a Goodbye (UNAVAILABLE) that names the limit, and closed.
    /// Default: `defaultMaxConnections`.
    public var maxConnections = RPCServerConfiguration.defaultMaxConnections
    /// With mutual TLS: places of `maxConnections` that clients (client certificates) may not
    /// take, kept for cluster members (server certificates), so that a flood of clients never
    /// cuts a primary from its backup or a server from the view service. nil: automatic,
    /// `defaultMemberReserve(maxConnections:)`. Plaintext has no members to tell apart: no reserve.
    public var memberReserve: Int?
    /// Counts calls, their latency, bytes and connections (`--metrics`); nil: nothing is measured.
    public var metrics: RPCMetrics?

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// File descriptors kept back from the connection limit for what a server opens itself: its
    /// listening socket, standard streams, event loop descriptors, its own outgoing connections
    /// (to the view service, to its backup, to etcd), and the socket of a connection it is refusing.
    public static let reservedFileDescriptors = 64
    /// The default connection limit when the file descriptor limit is unknown or unlimited.
    public static let connectionLimitCap = 4096

    /// The connection limit for a process allowed `fileDescriptorLimit` open files:
    /// that limit minus `reservedFileDescriptors`, at most `connectionLimitCap`, at least 1.
    public static func maxConnections(fileDescriptorLimit: Int?) -> Int {
        guard let limit = fileDescriptorLimit else { return connectionLimitCap }
        return max(1, min(connectionLimitCap, limit - reservedFileDescriptors))
    }

    /// This process's soft RLIMIT_NOFILE, or nil when unlimited or unreadable.
    public static var fileDescriptorLimit: Int? {
        var limit = rlimit()
        #if canImport(Glibc)
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
        let resource = RLIMIT_NOFILE
        #endif
        // RLIM_INFINITY is all ones (a macro Swift imports as an overflowing literal); any value
        // above Int.max means unlimited in practice.
        guard getrlimit(resource, &limit) == 0, limit.rlim_cur < rlim_t(Int.max) else { return nil }
        return Int(limit.rlim_cur)
    }

    /// `maxConnections(fileDescriptorLimit:)` of this process's limit (960 under `ulimit -n 1024`).
    public static var defaultMaxConnections: Int { maxConnections(fileDescriptorLimit: fileDescriptorLimit) }

    /// The automatic member reserve: a quarter of the connection limit, at most 64 (a cluster
    /// has a handful of members; each opens a few connections to a peer).
    public static func defaultMemberReserve(maxConnections: Int) -> Int { min(64, maxConnections / 4) }

    /// Places kept for members: `memberReserve` (or the automatic one) with TLS, 0 in plaintext.
    public var effectiveMemberReserve: Int {
        guard tls != nil else { return 0 }
        return memberReserve ?? Self.defaultMemberReserve(maxConnections: maxConnections)
    }

    /// Most connections clients may hold at once: `maxConnections` less the member reserve.
    public var clientConnectionLimit: Int { max(0, maxConnections - effectiveMemberReserve) }
}


/// A server that answers pbkv RPCs with method tables, over its configuration's transport
/// (`RPCTransport`: TCP by default). Calls are answered on their connection's event loop.
public final class RPCServer: Sendable {
    private let listener: any RPCListener

    private init(listener: any RPCListener) {
        self.listener = listener
    }

    /// The bound port.
    public var port: Int { listener.port }
    /// Where it listens, `HOST:PORT`, for logs.
    public var address: String { listener.address }
    /// Connections open now (on TCP, counted against `maxConnections`; refused ones are not).
    public var connectionCount: Int { listener.connectionCount }

    /// Starts serving `tables` on `group` at the configured address and transport.
    public static func start(
        configuration: RPCServerConfiguration, group: any EventLoopGroup, tables: [RPCMethodTable], logger: Logger
    ) async throws -> RPCServer {
        RPCServer(listener: try await configuration.transport.listen(configuration: configuration, group: group, tables: tables, logger: logger))
    }

    /// Stops accepting connections and closes every connection it accepted (a stopped server
    /// must not go on answering calls on connections made before).
    public func close() async {
        await listener.close()
    }
}

extension String {
    /// This text cut to at most `limit` UTF-8 bytes, on a character boundary.
    func cut(toUTF8Bytes limit: Int) -> String {
        guard utf8.count > limit else { return self }
        var bytes = 0
        var end = startIndex
        for character in self {
            let size = character.utf8.count
            guard bytes + size <= limit - 3 else { break }
            bytes += size
            end = index(after: end)
        }
        return String(self[..<end]) + "..."
    }
}

extension Duration {
    /// This duration as NIO's `TimeAmount`.
    public var timeAmount: TimeAmount {
        let (seconds, attoseconds) = components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// This duration in (fractional) seconds, for reports.
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

