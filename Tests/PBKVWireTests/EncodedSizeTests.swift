import NIOCore
import PBKVCore
import PBKVWire
import Testing

private let largestID = RequestID(clientID: .max, seq: .max, acked: .max)

private func size(_ envelope: Envelope) -> Int { EnvelopeCodec.encode(envelope).readableBytes }

private func request(_ call: Call) -> Envelope { .request(Request(callID: .max, timeoutMs: .max, call: call)) }

@Suite("Encoded size bounds")
struct EncodedSizeTests {
    @Test("Forwards, transfer chunks and KV replies never exceed the bounds batches are cut by", arguments: [
        (0, 0), (1, 1), (127, 128), (200, 70_000), (4_096, 1 << 20), (16_383, 2_097_152),
    ])
    func boundsHold(keyBytes: Int, valueBytes: Int) {
        let key = String(repeating: "k", count: keyBytes)
        let value = String(repeating: "v", count: valueBytes)
        for primary in ["", "p", "[fe80::1:2:3:4]:65535", String(repeating: "h", count: 253) + ":65535"] {
            let envelope = EncodedSize.batchEnvelope(primaryBytes: primary.utf8.count)
            let item = EncodedSize.item(keyBytes: keyBytes, valueBytes: valueBytes)
            for kind in [OpKind.get, .put, .putHash] {
                let op = Operation(kind: kind, key: key, value: value, id: largestID)
                let oneOp = ForwardArgs(viewnum: .max, primary: primary, firstIndex: .max, ops: [op])
                #expect(size(request(.forward(oneOp))) <= envelope + item)
                let threeOps = ForwardArgs(viewnum: .max, primary: primary, firstIndex: .max, ops: [op, op, op])
                #expect(size(request(.forward(threeOps))) <= envelope + 3 * item)
            }
            let entryChunk = TransferChunk(
                viewnum: .max, primary: primary, transferID: .max, chunkIndex: .max, last: true, nextIndex: .max,
                entries: [Entry(key: key, value: value), Entry(key: key, value: value)], duplicates: [])
            #expect(size(request(.transfer(entryChunk))) <= envelope + 2 * item)
            for code in [Code.ok, .noKey, .wrongServer, .unavailable] {
                let row = DuplicateEntry(
                    clientID: .max, seq: .max, reply: KVReply(code: code, value: value), lastUsed: .max, reread: true, acked: .max)
                let rowChunk = TransferChunk(
                    viewnum: .max, primary: primary, transferID: .max, chunkIndex: .max, last: true, nextIndex: .max,
                    entries: [Entry(key: key, value: value)], duplicates: [row, row])
                #expect(size(request(.transfer(rowChunk))) <= envelope + item + 2 * EncodedSize.item(keyBytes: 0, valueBytes: valueBytes))
            }
        }
        // A reply to a client carrying a value: one item in an envelope.
        for code in [Code.ok, .noKey, .badRequest] {
            let reply = Envelope.response(Response(callID: .max, result: .kv(KVReply(code: code, value: value))))
            #expect(size(reply) <= EncodedSize.batchEnvelope(primaryBytes: 0) + EncodedSize.item(keyBytes: 0, valueBytes: valueBytes))
        }
    }
}
