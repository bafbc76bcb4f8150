import ArgumentParser
import PBKVCommandLine
import Foundation
import NIOCore
import PBKVCore
import PBKVTestSupport
import PBKVWire

#if canImport(Glibc)
import Glibc
#endif

/// `pbkv bench-wire`: the bytes a replicated Put puts on the wire and the CPU it costs, for each
/// compression mode — plain, zlib per frame (forced on every frame, for the comparison) and the
/// per-connection deflate streams — with the very codecs the connections use, in process (no
/// network, so the figures are exact and repeatable).
struct WireBenchCommand: ParsableCommand {
    static let configuration = Tool.benchWire.configuration

    @Option(help: "Puts per row.")
    var operations = 20_000
    @Flag(help: "Print one JSON object per row instead of text.")
    var json = false

    enum Mode: String, CaseIterable {
        case plain
        case frame
        case stream
    }

    /// One row: a kind of value in one mode.
    struct Row {
        var values: String
        var mode: Mode
        /// Client to primary and back (request and reply frames, headers included), per Put.
        var clientBytes: Double
        /// Primary to backup and back (a forward of one operation and its reply), per Put.
        var forwardBytes: Double
        /// CPU of encoding and decoding those four frames at both ends, per Put.
        var cpuMicroseconds: Double
    }

    func validate() throws {
        guard operations > 0 else { throw ValidationError("--operations must be positive") }
    }

    func run() throws {
        var text = SampleText(seed: 1)
        let kinds: [(String, [String])] = [
            ("1 KiB JSON records", (0..<1_000).map { text.jsonRecord(id: $0, bytes: 1024) }),
            ("1 KiB English-like text", (0..<1_000).map { _ in text.english(bytes: 1024) }),
            ("16 B text", (0..<1_000).map { _ in text.english(bytes: 16) }),
        ]
        if !json {
            print("pbkv bench-wire — \(operations) Puts per row, in process: each Put is a request and a reply between client and")
            print("primary and a forward of one operation and its reply between primary and backup, encoded and decoded at both ends.")
            print("Bytes are whole frames (5-byte header included) per Put; CPU is user+system time per Put for all four frames.")
            print("")
            print("values                   mode   | client↔primary B | primary↔backup B | ×plain | ×frame | CPU µs | +µs vs plain")
            print("-------------------------------+------------------+------------------+--------+--------+--------+-------------")
        }
        for (name, values) in kinds {
            var rows: [Row] = []
            for mode in Mode.allCases { rows.append(try measure(name, values, mode)) }
            for row in rows { report(row, plain: rows[0], frame: rows[1]) }
        }
        let memory = try memoryPerConnection()
        if json {
            print(String(format: "{\"section\":\"wire\",\"stream_memory_bytes_per_connection_end\":%.0f}", memory))
        } else {
            print("")
            print(String(format: "deflate streams: %.1f KiB resident per connection end (one deflate and one inflate context, measured over 200 connections)", memory / 1024))
        }
    }

    private func report(_ row: Row, plain: Row, frame: Row) {
        let ratioPlain = row.clientBytes / plain.clientBytes
        let ratioFrame = row.clientBytes / frame.clientBytes
        if json {
            print(String(
                format: "{\"section\":\"wire\",\"values\":\"%@\",\"mode\":\"%@\",\"client_bytes_per_put\":%.1f,\"forward_bytes_per_put\":%.1f,\"cpu_us_per_put\":%.2f}",
                row.values, row.mode.rawValue, row.clientBytes, row.forwardBytes, row.cpuMicroseconds))
            return
        }
        let label = row.values.padding(toLength: 24, withPad: " ", startingAt: 0) + " " + row.mode.rawValue.padding(toLength: 6, withPad: " ", startingAt: 0)
        print(String(
            format: "%@ | %16.1f | %16.1f | %6.3f | %6.3f | %6.1f | %+12.1f",
            label, row.clientBytes, row.forwardBytes, ratioPlain, ratioFrame, row.cpuMicroseconds,
            row.cpuMicroseconds - plain.cpuMicroseconds))
    }

    /// Two connections, each a pair of codecs as the two ends hold them.
    private func measure(_ name: String, _ values: [String], _ mode: Mode) throws -> Row {
        var client = Self.codec(mode)
        var primary = Self.codec(mode)
        var primaryToBackup = Self.codec(mode)
        var backup = Self.codec(mode)
        var wire = ByteBuffer()
        var clientBytes = 0
        var forwardBytes = 0
        let started = ProcessCPU.ownSeconds()
        for i in 0..<operations {
            let n = UInt64(i + 1)
            let id = RequestID(clientID: 0x5EED_1234_ABCD_0001, seq: n)
            let key = "key:\(i % 10_000)"
            let value = values[i % values.count]
            clientBytes += try Self.send(
                .request(Request(callID: n, timeoutMs: 500, call: .put(key: key, value: value, id: id))), &client, &primary, &wire, mode)
            clientBytes += try Self.send(.response(Response(callID: n, result: .kv(KVReply(code: .ok)))), &primary, &client, &wire, mode)
            let forward = ForwardArgs(
                viewnum: 2, primary: "10.0.0.1:7001", firstIndex: n, ops: [Operation(kind: .put, key: key, value: value, id: id)])
            forwardBytes += try Self.send(.request(Request(callID: n, timeoutMs: 1_000, call: .forward(forward))), &primaryToBackup, &backup, &wire, mode)
            forwardBytes += try Self.send(
                .response(Response(callID: n, result: .forward(ForwardReply(code: .ok, nextIndex: n + 1)))), &backup, &primaryToBackup, &wire, mode)
        }
        let cpu = ProcessCPU.ownSeconds() - started
        let count = Double(operations)
        return Row(
            values: name, mode: mode, clientBytes: Double(clientBytes) / count, forwardBytes: Double(forwardBytes) / count,
            cpuMicroseconds: cpu * 1e6 / count)
    }

    private static func codec(_ mode: Mode) -> FrameCodec {
        var codec = FrameCodec()
        codec.compressionEnabled = mode != .plain
        codec.streamEnabled = mode == .stream
        return codec
    }

    /// Encodes `envelope` at `sender`, decodes it at `receiver`; the frame's size on the wire.
    private static func send(
        _ envelope: Envelope, _ sender: inout FrameCodec, _ receiver: inout FrameCodec, _ wire: inout ByteBuffer, _ mode: Mode
    ) throws -> Int {
        wire.clear()
        try sender.encode(envelope, into: &wire, compressionThreshold: mode == .frame ? 0 : nil)
        let size = wire.readableBytes
        guard let frame = try FrameDecoder.readFrame(from: &wire, maxPayload: Frame.defaultMaxPayload),
            try EnvelopeCodec.decode(receiver.payload(of: frame, allocator: ByteBufferAllocator())) == envelope
        else { throw ValidationError("a frame did not come back as it was sent (\(mode))") }
        return size
    }

    /// Resident memory per connection end with the streams in use: 200 connections, each end
    /// with both contexts warmed by frames filling the 4 KiB window.
    private func memoryPerConnection() throws -> Double {
        var text = SampleText(seed: 2)
        let values = (0..<8).map { text.jsonRecord(id: $0, bytes: 1024) }
        var wire = ByteBuffer()
        var kept: [FrameCodec] = []
        let before = Self.residentBytes()
        for _ in 0..<200 {
            var a = Self.codec(.stream)
            var b = Self.codec(.stream)
            for (i, value) in values.enumerated() {
                let id = RequestID(clientID: 1, seq: UInt64(i + 1))
                let put = Envelope.request(Request(callID: UInt64(i + 1), call: .put(key: "k", value: value, id: id)))
                _ = try Self.send(put, &a, &b, &wire, .stream)
                _ = try Self.send(put, &b, &a, &wire, .stream)
            }
            kept.append(a)
            kept.append(b)
        }
        let grown = Self.residentBytes() - before
        withExtendedLifetime(kept) {}
        return Double(grown) / Double(kept.count)
    }

    /// This process's resident set, from /proc/self/statm (0 where there is none).
    private static func residentBytes() -> Int {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = statm.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
