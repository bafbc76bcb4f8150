import NIOCore
import NIOPosix

extension ClientBootstrap {
    /// Connects to `host:port`. An IP literal (what views and most command lines hold) is
    /// connected to directly; only a name goes through NIO's resolver. The resolver runs
    /// `getaddrinfo` on a background queue and hands its late answers (the AAAA query of a
    /// happy-eyeballs race already won) to the event loop, which may have shut down by then:
    /// NIO reports that as an error today and means to make it a crash.
    public func connect(literalOrName host: String, port: Int) -> EventLoopFuture<any Channel> {
        if let address = try? SocketAddress(ipAddress: host, port: port) { return connect(to: address) }
        return connect(host: host, port: port)
    }

    /// The same for the async bootstrap API: `channelInitializer` builds the connection's output.
    public func connect<Output: Sendable>(
        literalOrName host: String, port: Int,
        channelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Output>
    ) async throws -> Output {
        if let address = try? SocketAddress(ipAddress: host, port: port) {
            return try await connect(to: address, channelInitializer: channelInitializer)
        }
        return try await connect(host: host, port: port, channelInitializer: channelInitializer)
    }
}
