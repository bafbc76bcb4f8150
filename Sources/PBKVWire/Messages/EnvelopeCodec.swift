import CPBKVProto
import NIOCore
import PBKVCore

/// Why bytes could not be turned into an `Envelope` (or the reverse).
public enum MessageCodecError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The payload is not a valid protobuf `Envelope`.
    case malformed(String)
    /// The envelope had no body set (empty, or a body kind from a newer protocol).
    case emptyEnvelope
    /// A field held a value this version does not know (e.g. an unknown code).
    case unknownValue(field: String, value: Int64)
    /// A `string` or `bytes` field held bytes that are not valid UTF-8.
    case invalidUTF8(field: String)
    /// A `string` field held a NUL byte (protobuf-c would cut the text there).
    case nulInString(field: String)

    public var description: String {
        switch self {
        case .malformed(let why): "malformed protobuf message: \(why)"
        case .emptyEnvelope: "envelope carries no known body (check the protocol version)"
        case .unknownValue(let field, let value): "unknown value \(value) in field \(field)"
        case .invalidUTF8(let field): "field \(field) is not valid UTF-8; pbkv keys and values are UTF-8 text"
        case .nulInString(let field):
            "field \(field) contains a NUL byte; string fields (names, addresses, messages) must be UTF-8 text without NUL"
        }
    }
}

/// Converts `Envelope` values to and from protobuf bytes through the protoc-c generated code.
/// With the generated copy-in/copy-out (Sources/PBKVWire/Generated/pbkv.codec.swift) and the
/// other files of Messages/, the only code in pbkv that touches the C message structs.
public enum EnvelopeCodec {
    // MARK: encode

    /// Appends the protobuf encoding of `envelope` to `buffer`; returns the number of bytes written.
    @discardableResult
    public static func encode(_ envelope: Envelope, into buffer: inout ByteBuffer) -> Int {
        encode(envelope, into: &buffer, arena: CArena())
    }

    /// As `encode(_:into:)`, building the C message in `arena` (reset afterwards).
    @discardableResult
    static func encode(_ envelope: Envelope, into buffer: inout ByteBuffer, arena: CArena) -> Int {
        defer { arena.reset() }
        let message = envelope.cMessage(arena)
        let size = pbkv__envelope__get_packed_size(message)
        let written = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { out in
            size == 0 ? 0 : pbkv__envelope__pack(message, out.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        withExtendedLifetime(arena) {}
        return written
    }

    /// The protobuf encoding of `envelope` as a new buffer.
    public static func encode(_ envelope: Envelope, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 64)
        encode(envelope, into: &buffer)
        return buffer
    }

    // MARK: decode

    /// Decodes one `Envelope` from all readable bytes of `buffer` (which is not consumed).
    ///
    /// A request whose call cannot be used (unknown method, invalid UTF-8 in a key) still
    /// decodes: its `call` holds the reason, so the server can answer that one call.
    public static func decode(_ buffer: ByteBuffer) throws(MessageCodecError) -> Envelope {
        // Unknown fields of the group wire types would make protobuf-c refuse the whole envelope.
        let result: Result<Envelope, MessageCodecError> = UnknownGroupFields.removed(from: buffer).withUnsafeReadableBytes { raw in
            let base = raw.baseAddress?.assumingMemoryBound(to: UInt8.self)
            let empty: [UInt8] = [0]
            return empty.withUnsafeBufferPointer { fallback in
                guard let message = pbkv__envelope__unpack(nil, raw.count, base ?? fallback.baseAddress!) else {
                    return .failure(.malformed("protobuf-c could not unpack \(raw.count) bytes as pbkv.Envelope"))
                }
                defer { pbkv__envelope__free_unpacked(message, nil) }
                // protobuf-c cut any `string` field at its first NUL byte: look at the bytes again.
                let nulField = stringFieldWithNUL(in: raw, of: message.pointee.base.descriptor)
                do throws(MessageCodecError) {
                    return .success(try swiftEnvelope(message.pointee, nulField: nulField))
                } catch {
                    return .failure(error)
                }
            }
        }
        return try result.get()
    }

    /// The generated decoding, with the tolerance of each body: a request with an unusable call
    /// and a reply that cannot be decoded still decode (answered or failed per call), a Goodbye
    /// shows what it can. `nulField`: the first `string` field whose bytes held a NUL.
    private static func swiftEnvelope(_ m: Pbkv__Envelope, nulField: String?) throws(MessageCodecError) -> Envelope {
        switch m.body_case {
        case PBKV__ENVELOPE__BODY_REQUEST:
            guard let r = m.request?.pointee else { throw .emptyEnvelope }
            var request = try Request(r)
            if let nulField { request.call = .failure(.badArguments(MessageCodecError.nulInString(field: nulField).description)) }
            return .request(request)
        case PBKV__ENVELOPE__BODY_RESPONSE:
            guard let r = m.response?.pointee else { throw .emptyEnvelope }
            return .response(swiftResponse(r, nulField: nulField))
        case PBKV__ENVELOPE__BODY_GOODBYE:
            guard let g = m.goodbye?.pointee else { throw .emptyEnvelope }
            // A farewell note: shown as far as it goes, marked when it was cut at a NUL byte.
            let message = (try? CDecode.text(g.message, "Goodbye.message")) ?? "<invalid UTF-8>"
            return .goodbye(Goodbye(
                code: (try? Code(g.code, field: "Goodbye.code")) ?? .protocolViolation,
                message: nulField == nil ? message : message + " [cut at a NUL byte]"))
        default:
            if let nulField { throw .nulInString(field: nulField) }
            guard let envelope = try Envelope(m) else { throw .emptyEnvelope }
            return envelope
        }
    }

    private static func swiftResponse(_ r: Pbkv__Response, nulField: String?) -> Response {
        let responseCode: Code
        do throws(MessageCodecError) {
            responseCode = try Code(r.code, field: "Response.code")
        } catch {
            return Response(callID: r.call_id, code: .protocolViolation, message: error.description)
        }
        // Only the error message may be shown cut short; a NUL in an address or a view is refused.
        if let nulField, nulField != "Response.message" {
            return Response(
                callID: r.call_id, code: .protocolViolation,
                message: "reply could not be decoded: \(MessageCodecError.nulInString(field: nulField))")
        }
        if responseCode != .ok {
            var message = (try? CDecode.text(r.message, "Response.message")) ?? "<invalid UTF-8>"
            if nulField != nil { message += " [cut at a NUL byte]" }
            let leader = (try? CDecode.text(r.leader, "Response.leader")) ?? ""
            return Response(callID: r.call_id, code: responseCode, message: message, leader: leader)
        }
        do throws(MessageCodecError) {
            if let result = try CallResult(r) { return Response(callID: r.call_id, result: result) }
        } catch {
            return Response(callID: r.call_id, code: .protocolViolation, message: "reply could not be decoded: \(error)")
        }
        return Response(callID: r.call_id, code: .protocolViolation, message: "OK reply without a result")
    }

    // MARK: view record

    /// The protobuf encoding of a `pbkv.ViewRecord` (format version 1).
    public static func encode(_ record: ViewRecord) -> [UInt8] {
        let arena = CArena()
        defer { arena.reset() }
        var record = record
        record.formatVersion = ViewRecord.formatVersion
        let message = record.cMessage(arena)
        let size = pbkv__view_record__get_packed_size(message)
        var bytes = [UInt8](repeating: 0, count: size)
        if size > 0 { _ = bytes.withUnsafeMutableBufferPointer { pbkv__view_record__pack(message, $0.baseAddress!) } }
        return bytes
    }

    /// Decodes a `pbkv.ViewRecord`; refuses bytes that are not one, a missing view and any
    /// format version but 1.
    public static func decodeViewRecord(_ bytes: [UInt8]) throws(MessageCodecError) -> ViewRecord {
        let result: Result<ViewRecord, MessageCodecError> = bytes.withUnsafeBufferPointer { raw in
            let empty: [UInt8] = [0]
            return empty.withUnsafeBufferPointer { fallback in
                guard let message = pbkv__view_record__unpack(nil, raw.count, raw.baseAddress ?? fallback.baseAddress!) else {
                    return .failure(.malformed("protobuf-c could not unpack \(raw.count) bytes as pbkv.ViewRecord"))
                }
                defer { pbkv__view_record__free_unpacked(message, nil) }
                let m = message.pointee
                guard m.format_version == ViewRecord.formatVersion else {
                    return .failure(.unknownValue(field: "ViewRecord.format_version", value: Int64(m.format_version)))
                }
                guard m.view != nil else { return .failure(.malformed("ViewRecord without a view")) }
                if let nulField = stringFieldWithNUL(in: UnsafeRawBufferPointer(raw), of: message.pointee.base.descriptor) {
                    return .failure(.nulInString(field: nulField))
                }
                do throws(MessageCodecError) {
                    return .success(try ViewRecord(m))
                } catch {
                    return .failure(error)
                }
            }
        }
        return try result.get()
    }
}
