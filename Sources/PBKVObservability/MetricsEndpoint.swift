import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Synchronization

/// One process's metrics: a Prometheus registry, the swift-metrics factory that fills it (with
/// buckets suited to pbkv: microsecond latencies, batches of 1 to thousands of operations), and
/// the samplers that bring state gauges up to date before each scrape.
public final class ProcessMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    /// Pass this to `KVServerConfiguration.metrics` or `ViewServiceServer.start(metrics:)`.
    public let factory: PrometheusMetricsFactory
    private let samplers = Mutex<[@Sendable () async -> Void]>([])

    public init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["pbkv_rpc_duration_seconds"] = [
            .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
            .microseconds(2500), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        ]
        factory.valueHistogramBuckets["pbkv_forward_batch_operations"] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
        self.factory = factory
    }

    /// Runs `sampler` before every scrape (e.g. `{ await server.refreshMetrics() }`).
    public func addSampler(_ sampler: @escaping @Sendable () async -> Void) {
        samplers.withLock { $0.append(sampler) }
    }

    /// Every series in the Prometheus text format, after running the samplers.
    public func scrape() async -> [UInt8] {
        for sampler in samplers.withLock({ $0 }) { await sampler() }
        return registry.emitToBuffer()
    }
}

/// Serves `ProcessMetrics` as Prometheus text on `GET /metrics` over plain HTTP/1.1
/// (`--metrics HOST:PORT`). It exposes counts and sizes only, never keys or values; bind it to
/// loopback or a monitoring network.
public final class MetricsHTTPServer: Sendable {
    private let channel: any Channel
    /// The address actually bound (useful with port 0).
    public let localAddress: SocketAddress

    private init(channel: any Channel) {
        self.channel = channel
        self.localAddress = channel.localAddress!
    }

    /// The bound port.
    public var port: Int { localAddress.port ?? 0 }

    /// Binds `host:port` and serves `metrics` until `close()`.
    public static func start(
        host: String, port: Int, metrics: ProcessMetrics, group: any EventLoopGroup, logger: Logger
    ) async throws -> MetricsHTTPServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(metrics: metrics))
                }
            }
            .bind(host: host, port: port)
            .get()
        let server = MetricsHTTPServer(channel: channel)
        logger.info("metrics served", metadata: ["address": "http://\(host):\(server.port)/metrics"])
        return server
    }

    /// Stops listening (open scrapes finish on their own).
    public func close() async {
        try? await channel.close()
    }
}

/// Answers `GET /metrics` (and HEAD) with the scrape; 404 for other paths, 405 for other methods.
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let metrics: ProcessMetrics
    private var head: HTTPRequestHead?

    init(metrics: ProcessMetrics) {
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(context: context, to: head)
        }
    }

    private func respond(context: ChannelHandlerContext, to head: HTTPRequestHead) {
        guard head.method == .GET || head.method == .HEAD else {
            return send(context: context, head: head, status: .methodNotAllowed, body: Array("use GET /metrics\n".utf8))
        }
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        guard path == "/metrics" else {
            return send(context: context, head: head, status: .notFound, body: Array("pbkv serves its metrics at /metrics\n".utf8))
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let metrics = self.metrics
        let scraped = context.eventLoop.makePromise(of: [UInt8].self)
        scraped.completeWithTask { await metrics.scrape() }
        scraped.futureResult.whenSuccess { body in
            let (handler, context) = loopBound.value
            handler.send(context: context, head: head, status: .ok, body: body)
        }
    }

    private func send(context: ChannelHandlerContext, head: HTTPRequestHead, status: HTTPResponseStatus, body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: status == .ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(body.count)")
        if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            var buffer = context.channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let keepAlive = head.isKeepAlive
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}

@available(*, unavailable)
extension MetricsHTTPHandler: Sendable {}
