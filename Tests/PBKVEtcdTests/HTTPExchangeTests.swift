import NIOCore
import NIOHTTP1
import NIOPosix
import PBKVEtcd
import Testing

/// `HTTPExchange` against a scripted peer: a good reply, and each way a peer can fail it.
@Suite("HTTP exchange: every bad peer ends in a clear failure, never a stall")
struct HTTPExchangeTests {
    /// Answers each connection's first bytes with `reply` (then closes when `close`), or says nothing.
    final class ScriptedPeer: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let reply: String?
        let close: Bool

        init(reply: String?, close: Bool) {
            self.reply = reply
            self.close = close
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard let reply else { return }
            let written = context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply)))
            if close { written.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
        }
    }

    /// Runs `body` with the port of a peer that behaves as `ScriptedPeer(reply:close:)`.
    func withPeer(reply: String?, close: Bool, _ body: (Int) async throws -> Void) async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ScriptedPeer(reply: reply, close: close))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        do {
            try await body(server.localAddress!.port!)
        } catch {
            try? await server.close()
            throw error
        }
        try await server.close()
    }

    func post(_ port: Int, limit: Int = 1024, within timeout: TimeAmount = .seconds(5)) async throws(HTTPExchange.Failure)
        -> HTTPExchange.Response
    {
        try await HTTPExchange.perform(
            .POST, host: "127.0.0.1", port: port, path: "/v3/kv/range", body: ByteBuffer(string: "{}"), maximumBodyBytes: limit,
            deadline: .now() + timeout)
    }

    @Test("A complete reply, chunked or with a length, is returned with its status")
    func completeReply() async throws {
        try await withPeer(reply: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", close: false) { port in
            let response = try await post(port)
            #expect(response.status == .ok)
            #expect(String(buffer: response.body) == "hello")
        }
        let chunked = "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        try await withPeer(reply: chunked, close: true) { port in
            let response = try await post(port)
            #expect(response.status == .serviceUnavailable)
            #expect(String(buffer: response.body) == "abcde")
        }
    }

    @Test("A peer that accepts and never answers times out at the deadline")
    func silentPeer() async throws {
        try await withPeer(reply: nil, close: false) { port in
            let started = ContinuousClock.now
            await #expect(throws: HTTPExchange.Failure.timedOut) { try await post(port, within: .milliseconds(300)) }
            #expect(ContinuousClock.now - started >= .milliseconds(300))
        }
    }

    @Test("A reply longer than the limit is refused, naming the limit")
    func tooLarge() async throws {
        try await withPeer(reply: "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + String(repeating: "x", count: 2000), close: false) {
            port in
            await #expect(throws: HTTPExchange.Failure.responseTooLarge(limit: 1024)) { try await post(port, limit: 1024) }
        }
    }

    @Test("A peer that closes in the middle of its reply, or speaks no HTTP, ends the exchange at once")
    func brokenReplies() async throws {
        for reply in ["HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nonly this", "SSH-2.0-OpenSSH\r\n"] {
            try await withPeer(reply: reply, close: true) { port in
                do {
                    _ = try await post(port, within: .seconds(10))
                    Issue.record("\(reply.debugDescription) gave a response")
                } catch {
                    guard case HTTPExchange.Failure.incompleteResponse = error else {
                        Issue.record("\(reply.debugDescription): expected incompleteResponse (not a timeout), got \(error)")
                        return
                    }
                }
            }
        }
    }

    @Test("Nobody listening is a connect failure")
    func refused() async throws {
        let port = try await withPeerPort()
        await #expect {
            try await post(port)
        } throws: { error in
            guard case HTTPExchange.Failure.connectFailed = error else { return false }
            return true
        }
    }

    /// A port that was just free (a peer bound it and closed).
    func withPeerPort() async throws -> Int {
        var free = 0
        try await withPeer(reply: nil, close: false) { free = $0 }
        return free
    }
}
