import NIOCore
import NIOHTTP1
import NIOPosix
import PBKVWire

/// One HTTP/1.1 request on a connection of its own, closed after the response: how
/// `EtcdClient` talks to etcd's JSON gateway (a few requests a second, so a pool would buy
/// nothing), and how tests scrape `/metrics`. Plain HTTP only.
public enum HTTPExchange {
    /// A complete response.
    public struct Response: Sendable {
        public var status: HTTPResponseStatus
        public var body: ByteBuffer
    }

    /// Why an exchange got no complete response.
    public enum Failure: Error, Sendable, Hashable, CustomStringConvertible {
        /// The connection could not be made.
        case connectFailed(String)
        /// The deadline passed first.
        case timedOut
        /// The body was longer than the caller allows.
        case responseTooLarge(limit: Int)
        /// The peer closed the connection, or the connection failed, before the response ended.
        case incompleteResponse(String)

        public var description: String {
            switch self {
            case .connectFailed(let reason): "cannot connect: \(reason)"
            case .timedOut: "no complete reply before the deadline"
            case .responseTooLarge(let limit): "the reply is longer than \(limit) bytes"
            case .incompleteResponse(let reason): "the connection ended before the reply did: \(reason)"
            }
        }
    }

    /// Sends `method path` with `body` (as `contentType`) to `host:port` and collects the
    /// response, of at most `maximumBodyBytes`, before `deadline`.
    public static func perform(
        _ method: HTTPMethod, host: String, port: Int, path: String, body: ByteBuffer? = nil,
        contentType: String = "application/json", maximumBodyBytes: Int, deadline: NIODeadline,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws(Failure) -> Response {
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(max(.milliseconds(1), deadline - .now()))
                .connect(literalOrName: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw NIODeadline.now() >= deadline ? .timedOut : .connectFailed("\(error)")
        }
        // The deadline closes the connection, which ends the exchange below.
        let timer = channel.channel.eventLoop.scheduleTask(deadline: deadline) { channel.channel.close(promise: nil) }
        defer { timer.cancel() }
        do {
            return try await channel.executeThenClose { inbound, outbound in
                var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
                head.headers.add(name: "Host", value: "\(host):\(port)")
                head.headers.add(name: "Connection", value: "close")
                if let body {
                    head.headers.add(name: "Content-Type", value: contentType)
                    head.headers.add(name: "Content-Length", value: "\(body.readableBytes)")
                }
                var request: [HTTPClientRequestPart] = [.head(head)]
                if let body { request.append(.body(.byteBuffer(body))) }
                request.append(.end(nil))
                // One write: a server that answers as soon as it has the body and closes (as
                // `Connection: close` asks) may be done before a later write of ours. Whether the
                // write failed or not, what arrived decides.
                var writeFailure: (any Error)?
                do {
                    try await outbound.write(contentsOf: request)
                } catch {
                    writeFailure = error
                }
                var status: HTTPResponseStatus?
                var collected = ByteBuffer()
                for try await part in inbound {
                    switch part {
                    case .head(let responseHead):
                        status = responseHead.status
                    case .body(var chunk):
                        guard collected.readableBytes + chunk.readableBytes <= maximumBodyBytes else {
                            throw Failure.responseTooLarge(limit: maximumBodyBytes)
                        }
                        collected.writeBuffer(&chunk)
                    case .end:
                        guard let status else { throw Failure.incompleteResponse("a response end without a head") }
                        return Response(status: status, body: collected)
                    }
                }
                throw Failure.incompleteResponse(writeFailure.map { "the request could not be sent: \($0)" } ?? "closed")
            }
        } catch {
            if NIODeadline.now() >= deadline { throw .timedOut }
            throw (error as? Failure) ?? .incompleteResponse("\(error)")
        }
    }
}
