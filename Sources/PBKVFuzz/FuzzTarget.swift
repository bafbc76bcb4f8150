import Foundation
import Logging
import NIOCore
import NIOEmbedded
import PBKVCore
import PBKVTLS
import PBKVWire

/// One fuzz input run through the wire code. Its first byte picks the path (modulo the number
/// of paths), the rest is that path's data:
///
/// | first byte | path | rest |
/// |---|---|---|
/// | 0 | frame stream, as a receiver reads it | bytes of frames: each is decoded, inflated (per frame or through the connection's deflate stream), and its `Envelope` decoded |
/// | 1 | inflation | u32 BE declared size, then a zlib stream |
/// | 2 | `Envelope` decoding | one protobuf payload |
/// | 3 | a server connection | one options byte, then what a client sends (see `serverConversation`) |
/// | 4 | `ViewRecord` decoding | one protobuf payload |
/// | 5 | a server's TLS layer (`TLSHandler`) | one options byte, then bytes as if from the network (see `tlsServer`) |
///
/// Every path checks more than "no crash": what decodes must encode back to the same value, an
/// inflated payload has exactly its declared size, and a server only ever answers with well-formed
/// frames: a `HelloReply` or a `Goodbye` first, a `Goodbye` last if at all; and no bytes a
/// fuzzer makes up ever come out of TLS as plaintext.
enum FuzzTarget {
    /// The receive limit used by every path: small enough that the fuzzer reaches the limits.
    static let maxPayload = 64 * 1024

    static func run(_ input: UnsafeRawBufferPointer) {
        guard let selector = input.first else { return }
        let data = ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: input.dropFirst()))
        switch selector % 6 {
        case 0: frameStream(data)
        case 1: inflation(data)
        case 2: envelope(data)
        case 3: serverConversation(data)
        case 4: viewRecord(data)
        default: tlsServer(data)
        }
    }

    // MARK: - the receive path, piece by piece

    static func frameStream(_ data: ByteBuffer) {
        var buffer = data
        var codec = FrameCodec(maxPayload: maxPayload)
        codec.compressionEnabled = true
        codec.streamEnabled = true
        while let frame = try? FrameDecoder.readFrame(from: &buffer, maxPayload: maxPayload) {
            guard let payload = try? codec.payload(of: frame, allocator: ByteBufferAllocator()) else { return }
            envelope(payload)
        }
    }

    static func inflation(_ data: ByteBuffer) {
        var codec = FrameCodec(maxPayload: maxPayload)
        codec.compressionEnabled = true
        guard let declared = data.getInteger(at: data.readerIndex, as: UInt32.self),
            let inflated = try? codec.payload(of: Frame(flags: .zlib, payload: data), allocator: ByteBufferAllocator())
        else { return }
        check(inflated.readableBytes == Int(declared), "inflated \(inflated.readableBytes) bytes, declared \(declared)")
    }

    /// Decodes; whatever decodes (with every call usable) must survive encode → decode unchanged.
    static func envelope(_ data: ByteBuffer) {
        guard let decoded = try? EnvelopeCodec.decode(data) else { return }
        if case .request(let request) = decoded, case .failure = request.call { return }  // cannot be encoded
        let again = try? EnvelopeCodec.decode(EnvelopeCodec.encode(decoded))
        check(again == decoded, "envelope changed on encode → decode: \(decoded) became \(again.map { "\($0)" } ?? "undecodable")")
    }

    static func viewRecord(_ data: ByteBuffer) {
        guard let decoded = try? EnvelopeCodec.decodeViewRecord(Array(data.readableBytesView)) else { return }
        let again = try? EnvelopeCodec.decodeViewRecord(EnvelopeCodec.encode(decoded))
        check(again == decoded, "view record changed on encode → decode: \(decoded) became \(again.map { "\($0)" } ?? "undecodable")")
    }

    // MARK: - a whole server connection

    /// The server's own connection handlers (`TCPListener.addConnectionHandlers`) on an
    /// `EmbeddedChannel`, serving the real method tables over `FuzzServices`. Options byte:
    /// bits 0–5 cut the client's first 1 KiB into writes of that many bytes (0: one write; the
    /// rest always goes in one write, so that an input stays fast), bit 6 moves the clock past
    /// the handshake deadline at the end, bit 7 turns the server's zlib and deflate stream offers off.
    static func serverConversation(_ data: ByteBuffer) {
        var data = data
        guard let options = data.readInteger(as: UInt8.self) else { return }
        var configuration = RPCServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.maxPayload = maxPayload
        configuration.compression = options & 0x80 == 0 ? .stream : .off
        let services = FuzzServices()
        let channel = EmbeddedChannel()
        do {
            try TCPListener.addConnectionHandlers(
                to: channel.pipeline.syncOperations, configuration: configuration,
                tables: [.viewService(services), .kv(services), .replica(services)], logger: quietLogger)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        } catch {
            fatalError("the embedded server pipeline could not be set up: \(error)")
        }
        let chunk = Int(options & 0x3f)
        while data.readableBytes > 0 && channel.isActive {
            let whole = chunk == 0 || data.readerIndex > 1024
            let piece = data.readSlice(length: whole ? data.readableBytes : min(chunk, data.readableBytes))!
            // Errors reach the server's handler, which answers them with a Goodbye; none may escape it.
            do {
                try channel.writeInbound(piece)
            } catch {
                fatalError("an error escaped the server's handlers: \(error)")
            }
        }
        if options & 0x40 != 0 { channel.embeddedEventLoop.advanceTime(by: .seconds(6)) }
        channel.embeddedEventLoop.run()
        var answers: [ByteBuffer] = []
        while let out = try? channel.readOutbound(as: ByteBuffer.self) { answers.append(out) }
        if channel.isActive, case .goodbye = checkServerAnswers(answers).last {
            check(false, "the server said Goodbye and left the connection open")
        }
        // The end of the input: the server may still answer (e.g. a Goodbye for a cut frame).
        _ = try? channel.finish(acceptAlreadyClosed: true)
        while let out = try? channel.readOutbound(as: ByteBuffer.self) { answers.append(out) }
        checkServerAnswers(answers)
    }

    // MARK: - TLS

    /// A cluster CA with a server s1 and a client c1, made once per process in a temporary
    /// directory: the contexts every TLS input uses.
    static let tls: (server: TLSContext, client: TLSContext) = {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pbkv-fuzz-tls-\(getpid())").path
        do {
            try? FileManager.default.removeItem(atPath: directory)
            try CertificateAuthority.create(in: directory)
            let authority = try CertificateAuthority(directory: directory)
            try authority.issue(name: "s1", role: .server, hosts: ["127.0.0.1:7001"])
            try authority.issue(name: "c1", role: .client, hosts: [])
            let contexts = try (
                ClusterTLS(directory: directory, name: "s1").makeServerContext(),
                ClusterTLS(directory: directory, name: "c1").makeClientContext())
            try? FileManager.default.removeItem(atPath: directory)
            return contexts
        } catch {
            fatalError("the fuzzer's TLS material could not be made: \(error)")
        }
    }()

    /// A server's `TLSHandler` on an `EmbeddedChannel`, fed the input as network bytes. Options
    /// byte: bit 0 first completes a real handshake with a client's `TLSHandler` (so the input
    /// lands on the record layer of an established session; else on the handshake), bits 1–6
    /// cut the input into writes of that many bytes (0: one write). Whatever the bytes, the
    /// handler must not crash or deliver plaintext: a forged record cannot authenticate, and no
    /// handshake can complete without the cluster CA's signature on the peer's certificate.
    static func tlsServer(_ data: ByteBuffer) {
        var data = data
        guard let options = data.readInteger(as: UInt8.self) else { return }
        let server: EmbeddedChannel
        do {
            server = EmbeddedChannel(handler: try TLSHandler(context: tls.server))
            try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        } catch {
            fatalError("the embedded TLS server could not be set up: \(error)")
        }
        let established = options & 1 != 0
        if established {
            do {
                let client = EmbeddedChannel(handler: try TLSHandler(context: tls.client))
                try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 7001)).wait()
                var moved = true
                while moved {
                    moved = false
                    while let bytes = try client.readOutbound(as: ByteBuffer.self) { moved = true; try server.writeInbound(bytes) }
                    while let bytes = try server.readOutbound(as: ByteBuffer.self) { moved = true; try client.writeInbound(bytes) }
                }
                _ = try? client.finish(acceptAlreadyClosed: true)
            } catch {
                fatalError("the fuzzer's own TLS handshake failed: \(error)")
            }
            check(server.isActive, "the server closed a connection whose handshake was genuine")
        }
        let chunk = Int(options >> 1 & 0x3f)
        while data.readableBytes > 0 && server.isActive {
            let piece = data.readSlice(length: chunk == 0 ? data.readableBytes : min(chunk, data.readableBytes))!
            _ = try? server.writeInbound(piece)  // a TLS failure is reported as an error, then the channel closes
        }
        let plaintext = try? server.readInbound(as: ByteBuffer.self)
        check(plaintext == nil, "TLS delivered \(plaintext?.readableBytes ?? 0) bytes of plaintext made up by the fuzzer")
        _ = try? server.finish(acceptAlreadyClosed: true)
    }

    /// The server's output is well-formed frames of envelopes: a HelloReply or Goodbye first,
    /// then responses, and a Goodbye only last. Returns them.
    @discardableResult
    static func checkServerAnswers(_ answers: [ByteBuffer]) -> [Envelope] {
        var stream = ByteBuffer()
        for var answer in answers { stream.writeBuffer(&answer) }
        var codec = FrameCodec(maxPayload: Frame.defaultMaxPayload)
        codec.compressionEnabled = true
        codec.streamEnabled = true
        var envelopes: [Envelope] = []
        while stream.readableBytes > 0 {
            do {
                guard let frame = try FrameDecoder.readFrame(from: &stream, maxPayload: Frame.defaultMaxPayload) else {
                    check(false, "the server wrote a partial frame of \(stream.readableBytes) bytes")
                    return envelopes
                }
                envelopes.append(try EnvelopeCodec.decode(codec.payload(of: frame, allocator: ByteBufferAllocator())))
            } catch {
                check(false, "the server wrote a frame its own decoder refuses: \(error)")
                return envelopes
            }
        }
        for (index, envelope) in envelopes.enumerated() {
            switch envelope {
            case .helloReply: check(index == 0, "HelloReply as answer \(index)")
            case .goodbye: check(index == envelopes.count - 1, "Goodbye as answer \(index) of \(envelopes.count)")
            case .response: check(index > 0, "a Response before the HelloReply")
            case .hello, .request: check(false, "the server sent \(envelope)")
            }
        }
        return envelopes
    }

    /// A broken invariant is a finding: crash, so that libFuzzer keeps the input.
    static func check(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { fatalError("fuzz invariant broken: \(message())") }
    }

    static let quietLogger = Logger(label: "pbkv.fuzz", factory: { _ in SwiftLogNoOpLogHandler() })
}
