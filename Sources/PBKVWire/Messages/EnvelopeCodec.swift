import CPBKVProto
import NIOCore

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
/// The only place in pbkv that touches the C message structs and their pointers.
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
        var message = Pbkv__Envelope()
        pbkv__envelope__init(&message)
        switch envelope {
        case .hello(let hello):
            message.body_case = PBKV__ENVELOPE__BODY_HELLO
            message.hello = cHello(hello, arena)
        case .helloReply(let reply):
            message.body_case = PBKV__ENVELOPE__BODY_HELLO_REPLY
            message.hello_reply = cHelloReply(reply, arena)
        case .request(let request):
            message.body_case = PBKV__ENVELOPE__BODY_REQUEST
            message.request = cRequest(request, arena)
        case .response(let response):
            message.body_case = PBKV__ENVELOPE__BODY_RESPONSE
            message.response = cResponse(response, arena)
        case .goodbye(let goodbye):
            let g = arena.allocate(Pbkv__Goodbye.self)
            pbkv__goodbye__init(g)
            g.pointee.code = cCode(goodbye.code)
            g.pointee.message = arena.cString(goodbye.message)
            message.body_case = PBKV__ENVELOPE__BODY_GOODBYE
            message.goodbye = g
        }
        let size = pbkv__envelope__get_packed_size(&message)
        let written = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { out in
            size == 0 ? 0 : pbkv__envelope__pack(&message, out.baseAddress!.assumingMemoryBound(to: UInt8.self))
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

    private static func cCode(_ code: Code) -> Pbkv__Code { Pbkv__Code(rawValue: numericCast(code.rawValue)) }

    private static func cFeatures(_ features: [Feature], _ arena: CArena) -> (Int, UnsafeMutablePointer<Pbkv__Feature>?) {
        guard !features.isEmpty else { return (0, nil) }
        let array = arena.allocate(Pbkv__Feature.self, count: features.count)
        for (i, f) in features.enumerated() { array[i] = Pbkv__Feature(rawValue: numericCast(f.rawValue)) }
        return (features.count, array)
    }

    private static func cHello(_ hello: Hello, _ arena: CArena) -> UnsafeMutablePointer<Pbkv__Hello> {
        let h = arena.allocate(Pbkv__Hello.self)
        pbkv__hello__init(h)
        h.pointee.protocol_version = hello.protocolVersion
        (h.pointee.n_features, h.pointee.features) = cFeatures(hello.features, arena)
        h.pointee.max_frame_size = hello.maxFrameSize
        h.pointee.client_name = arena.cString(hello.clientName)
        return h
    }

    private static func cHelloReply(_ reply: HelloReply, _ arena: CArena) -> UnsafeMutablePointer<Pbkv__HelloReply> {
        let h = arena.allocate(Pbkv__HelloReply.self)
        pbkv__hello_reply__init(h)
        h.pointee.protocol_version = reply.protocolVersion
        (h.pointee.n_features, h.pointee.features) = cFeatures(reply.features, arena)
        h.pointee.max_frame_size = reply.maxFrameSize
        h.pointee.server_name = arena.cString(reply.serverName)
        return h
    }

    private static func cRequestID(_ id: RequestID, _ arena: CArena) -> UnsafeMutablePointer<Pbkv__RequestId> {
        let r = arena.allocate(Pbkv__RequestId.self)
        pbkv__request_id__init(r)
        r.pointee.client_id = id.clientID
        r.pointee.seq = id.seq
        return r
    }

    private static func cOperation(_ op: Operation, _ arena: CArena) -> UnsafeMutablePointer<Pbkv__Operation> {
        let o = arena.allocate(Pbkv__Operation.self)
        pbkv__operation__init(o)
        o.pointee.kind = Pbkv__OpKind(rawValue: numericCast(op.kind.rawValue))
        o.pointee.key = arena.binary(op.key)
        o.pointee.value = arena.binary(op.value)
        o.pointee.id = cRequestID(op.id, arena)
        return o
    }

    private static func cKVReply(_ reply: KVReply, _ arena: CArena) -> UnsafeMutablePointer<Pbkv__KVReply> {
        let r = arena.allocate(Pbkv__KVReply.self)
        pbkv__kvreply__init(r)
        r.pointee.code = cCode(reply.code)
        r.pointee.value = arena.binary(reply.value)
        return r
    }

    private static func cRequest(_ request: Request, _ arena: CArena) -> UnsafeMutablePointer<Pbkv__Request> {
        let r = arena.allocate(Pbkv__Request.self)
        pbkv__request__init(r)
        r.pointee.call_id = request.callID
        r.pointee.timeout_ms = request.timeoutMs
        guard case .success(let call) = request.call else { return r }  // sends "no method"
        switch call {
        case .ping(let args):
            let p = arena.allocate(Pbkv__PingArgs.self)
            pbkv__ping_args__init(p)
            p.pointee.server = arena.cString(args.server)
            p.pointee.viewnum = args.viewnum
            r.pointee.call_case = PBKV__REQUEST__CALL_PING
            r.pointee.ping = p
        case .getView:
            let g = arena.allocate(Pbkv__GetViewArgs.self)
            pbkv__get_view_args__init(g)
            r.pointee.call_case = PBKV__REQUEST__CALL_GET_VIEW
            r.pointee.get_view = g
        case .viewServiceStatus:
            let v = arena.allocate(Pbkv__ViewServiceStatusArgs.self)
            pbkv__view_service_status_args__init(v)
            r.pointee.call_case = PBKV__REQUEST__CALL_VIEW_SERVICE_STATUS
            r.pointee.view_service_status = v
        case .serverStatus:
            let a = arena.allocate(Pbkv__ServerStatusArgs.self)
            pbkv__server_status_args__init(a)
            r.pointee.call_case = PBKV__REQUEST__CALL_SERVER_STATUS
            r.pointee.server_status = a
        case .get(let key, let id):
            let g = arena.allocate(Pbkv__GetArgs.self)
            pbkv__get_args__init(g)
            g.pointee.key = arena.binary(key)
            g.pointee.id = cRequestID(id, arena)
            r.pointee.call_case = PBKV__REQUEST__CALL_GET
            r.pointee.get = g
        case .put(let key, let value, let id):
            let p = arena.allocate(Pbkv__PutArgs.self)
            pbkv__put_args__init(p)
            p.pointee.key = arena.binary(key)
            p.pointee.value = arena.binary(value)
            p.pointee.id = cRequestID(id, arena)
            r.pointee.call_case = PBKV__REQUEST__CALL_PUT
            r.pointee.put = p
        case .putHash(let key, let value, let id):
            let p = arena.allocate(Pbkv__PutHashArgs.self)
            pbkv__put_hash_args__init(p)
            p.pointee.key = arena.binary(key)
            p.pointee.value = arena.binary(value)
            p.pointee.id = cRequestID(id, arena)
            r.pointee.call_case = PBKV__REQUEST__CALL_PUT_HASH
            r.pointee.put_hash = p
        case .forward(let args):
            let f = arena.allocate(Pbkv__ForwardArgs.self)
            pbkv__forward_args__init(f)
            f.pointee.viewnum = args.viewnum
            f.pointee.primary = arena.cString(args.primary)
            f.pointee.first_index = args.firstIndex
            if !args.ops.isEmpty {
                let ops = arena.allocate(UnsafeMutablePointer<Pbkv__Operation>?.self, count: args.ops.count)
                for (i, op) in args.ops.enumerated() { ops[i] = cOperation(op, arena) }
                f.pointee.n_ops = args.ops.count
                f.pointee.ops = ops
            }
            r.pointee.call_case = PBKV__REQUEST__CALL_FORWARD
            r.pointee.forward = f
        case .transfer(let chunk):
            let t = arena.allocate(Pbkv__TransferChunk.self)
            pbkv__transfer_chunk__init(t)
            t.pointee.viewnum = chunk.viewnum
            t.pointee.primary = arena.cString(chunk.primary)
            t.pointee.transfer_id = chunk.transferID
            t.pointee.chunk_index = chunk.chunkIndex
            t.pointee.last = chunk.last ? 1 : 0
            t.pointee.next_index = chunk.nextIndex
            t.pointee.clock = chunk.clock
            if !chunk.packedEntries.isEmpty {
                t.pointee.packed_entries = chunk.packedEntries.bytes.withUnsafeBytes { arena.binary($0) }
            }
            if !chunk.duplicates.isEmpty {
                let dups = arena.allocate(UnsafeMutablePointer<Pbkv__DuplicateEntry>?.self, count: chunk.duplicates.count)
                for (i, dup) in chunk.duplicates.enumerated() {
                    let d = arena.allocate(Pbkv__DuplicateEntry.self)
                    pbkv__duplicate_entry__init(d)
                    d.pointee.client_id = dup.clientID
                    d.pointee.seq = dup.seq
                    d.pointee.last_used = dup.lastUsed
                    d.pointee.reread = dup.reread ? 1 : 0
                    d.pointee.reply = cKVReply(dup.reply, arena)
                    dups[i] = d
                }
                t.pointee.n_duplicates = chunk.duplicates.count
                t.pointee.duplicates = dups
            }
            r.pointee.call_case = PBKV__REQUEST__CALL_TRANSFER
            r.pointee.transfer = t
        }
        return r
    }

    private static func cView(_ view: View, _ arena: CArena) -> UnsafeMutablePointer<Pbkv__View> {
        let v = arena.allocate(Pbkv__View.self)
        pbkv__view__init(v)
        v.pointee.viewnum = view.viewnum
        v.pointee.primary = arena.cString(view.primary)
        v.pointee.backup = arena.cString(view.backup)
        v.pointee.acknowledged = view.acknowledged ? 1 : 0
        return v
    }

    private static func cResponse(_ response: Response, _ arena: CArena) -> UnsafeMutablePointer<Pbkv__Response> {
        let r = arena.allocate(Pbkv__Response.self)
        pbkv__response__init(r)
        r.pointee.call_id = response.callID
        r.pointee.code = cCode(response.code)
        r.pointee.message = arena.cString(response.message)
        r.pointee.leader = arena.cString(response.leader)
        switch response.result {
        case nil:
            break
        case .view(let view):
            r.pointee.result_case = PBKV__RESPONSE__RESULT_VIEW
            r.pointee.view = cView(view, arena)
        case .kv(let reply):
            r.pointee.result_case = PBKV__RESPONSE__RESULT_KV
            r.pointee.kv = cKVReply(reply, arena)
        case .forward(let reply):
            let f = arena.allocate(Pbkv__ForwardReply.self)
            pbkv__forward_reply__init(f)
            f.pointee.code = cCode(reply.code)
            f.pointee.next_index = reply.nextIndex
            r.pointee.result_case = PBKV__RESPONSE__RESULT_FORWARD
            r.pointee.forward = f
        case .transfer(let reply):
            let t = arena.allocate(Pbkv__TransferReply.self)
            pbkv__transfer_reply__init(t)
            t.pointee.code = cCode(reply.code)
            r.pointee.result_case = PBKV__RESPONSE__RESULT_TRANSFER
            r.pointee.transfer = t
        case .viewServiceStatus(let status):
            r.pointee.result_case = PBKV__RESPONSE__RESULT_VIEW_SERVICE_STATUS
            r.pointee.view_service_status = cViewServiceStatus(status, arena)
        case .serverStatus(let status):
            r.pointee.result_case = PBKV__RESPONSE__RESULT_SERVER_STATUS
            r.pointee.server_status = cServerStatus(status, arena)
        }
        return r
    }

    private static func cViewServiceStatus(
        _ status: ViewServiceStatus, _ arena: CArena
    ) -> UnsafeMutablePointer<Pbkv__ViewServiceStatus> {
        let v = arena.allocate(Pbkv__ViewServiceStatus.self)
        pbkv__view_service_status__init(v)
        v.pointee.view = cView(status.view, arena)
        if !status.servers.isEmpty {
            let servers = arena.allocate(UnsafeMutablePointer<Pbkv__ServerSeen>?.self, count: status.servers.count)
            for (i, seen) in status.servers.enumerated() {
                let s = arena.allocate(Pbkv__ServerSeen.self)
                pbkv__server_seen__init(s)
                s.pointee.server = arena.cString(seen.server)
                s.pointee.last_ping_ms_ago = seen.lastPingMsAgo
                servers[i] = s
            }
            v.pointee.n_servers = status.servers.count
            v.pointee.servers = servers
        }
        return v
    }

    private static func cServerStatus(_ status: ServerStatus, _ arena: CArena) -> UnsafeMutablePointer<Pbkv__ServerStatus> {
        let s = arena.allocate(Pbkv__ServerStatus.self)
        pbkv__server_status__init(s)
        s.pointee.server = arena.cString(status.server)
        s.pointee.role = arena.cString(status.role)
        s.pointee.view = cView(status.view, arena)
        s.pointee.keys = status.keys
        s.pointee.bytes = status.bytes
        s.pointee.duplicate_rows = status.duplicateRows
        s.pointee.operations = status.operations
        s.pointee.connections = status.connections
        s.pointee.uptime_ms = status.uptimeMs
        if let transfer = status.transfer {
            let t = arena.allocate(Pbkv__TransferProgress.self)
            pbkv__transfer_progress__init(t)
            t.pointee.peer = arena.cString(transfer.peer)
            t.pointee.entries_done = transfer.entriesDone
            t.pointee.entries_total = transfer.entriesTotal
            t.pointee.chunks = transfer.chunks
            s.pointee.transfer = t
        }
        return s
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

    /// `nulField`: the first `string` field whose bytes held a NUL (its C string is cut short).
    private static func swiftEnvelope(_ m: Pbkv__Envelope, nulField: String?) throws(MessageCodecError) -> Envelope {
        switch m.body_case {
        case PBKV__ENVELOPE__BODY_HELLO:
            guard let h = m.hello?.pointee else { throw .emptyEnvelope }
            if let nulField { throw .nulInString(field: nulField) }
            return .hello(Hello(
                protocolVersion: h.protocol_version, features: features(h.n_features, h.features),
                maxFrameSize: h.max_frame_size, clientName: try text(h.client_name, "Hello.client_name")))
        case PBKV__ENVELOPE__BODY_HELLO_REPLY:
            guard let h = m.hello_reply?.pointee else { throw .emptyEnvelope }
            if let nulField { throw .nulInString(field: nulField) }
            return .helloReply(HelloReply(
                protocolVersion: h.protocol_version, features: features(h.n_features, h.features),
                maxFrameSize: h.max_frame_size, serverName: try text(h.server_name, "HelloReply.server_name")))
        case PBKV__ENVELOPE__BODY_REQUEST:
            guard let r = m.request?.pointee else { throw .emptyEnvelope }
            let call: Result<Call, CallDecodeError>
            do throws(MessageCodecError) {
                if let nulField { throw .nulInString(field: nulField) }
                if let decoded = try swiftCall(r) {
                    call = .success(decoded)
                } else {
                    call = .failure(.unknownMethod)
                }
            } catch {
                call = .failure(.badArguments(error.description))
            }
            return .request(Request(callID: r.call_id, timeoutMs: r.timeout_ms, decoded: call))
        case PBKV__ENVELOPE__BODY_RESPONSE:
            guard let r = m.response?.pointee else { throw .emptyEnvelope }
            return .response(try swiftResponse(r, nulField: nulField))
        case PBKV__ENVELOPE__BODY_GOODBYE:
            guard let g = m.goodbye?.pointee else { throw .emptyEnvelope }
            // A farewell note: shown as far as it goes, marked when it was cut at a NUL byte.
            let message = (try? text(g.message, "Goodbye.message")) ?? "<invalid UTF-8>"
            return .goodbye(Goodbye(
                code: (try? code(g.code, "Goodbye.code")) ?? .protocolViolation,
                message: nulField == nil ? message : message + " [cut at a NUL byte]"))
        default:
            throw .emptyEnvelope
        }
    }

    private static func features(_ count: Int, _ array: UnsafeMutablePointer<Pbkv__Feature>?) -> [Feature] {
        guard let array, count > 0 else { return [] }
        // Unknown features (from a newer peer) are ignored: they were merely offered.
        return (0..<count).compactMap { Feature(rawValue: Int32(truncatingIfNeeded: array[$0].rawValue)) }
    }

    private static func code(_ c: Pbkv__Code, _ field: String) throws(MessageCodecError) -> Code {
        // protobuf-c keeps an enum field as the int32 it arrived as; Swift imports it as UInt32,
        // so any value of a hostile peer (2^31 and above, negatives) is converted bit for bit.
        guard let code = Code(rawValue: Int32(truncatingIfNeeded: c.rawValue)) else {
            throw .unknownValue(field: field, value: Int64(Int32(truncatingIfNeeded: c.rawValue)))
        }
        return code
    }

    /// A protobuf `string` field: NULL and "" are both empty; invalid UTF-8 is refused.
    private static func text(_ pointer: UnsafeMutablePointer<CChar>?, _ field: String) throws(MessageCodecError) -> String {
        guard let pointer, pointer.pointee != 0 else { return "" }
        guard let string = String(validatingCString: pointer) else { throw .invalidUTF8(field: field) }
        return string
    }

    /// A protobuf `bytes` field holding UTF-8 text: every byte kept (NUL included); invalid UTF-8 refused.
    private static func utf8(_ data: ProtobufCBinaryData, _ field: String) throws(MessageCodecError) -> String {
        guard data.len > 0, let bytes = data.data else { return "" }
        let buffer = UnsafeBufferPointer(start: bytes, count: data.len)
        // ASCII (the common case) is valid UTF-8 and takes the fast non-generic initializer;
        // `String(validating:as:)` instantiates generic metadata on every call (seen in profiles
        // of state transfers), so it is kept for text with non-ASCII bytes.
        if PackedEntries.isASCII(UnsafeRawBufferPointer(buffer)) { return String(decoding: buffer, as: UTF8.self) }
        guard let string = String(validating: buffer, as: UTF8.self) else { throw .invalidUTF8(field: field) }
        return string
    }

    /// The entries of a transfer chunk: the repeated `entries` (older senders) packed first, then
    /// the `packed_entries` bytes, checked (lengths, UTF-8) and copied as they are.
    private static func packedEntries(_ t: Pbkv__TransferChunk) throws(MessageCodecError) -> PackedEntries {
        let packed = t.packed_entries
        let raw = UnsafeRawBufferPointer(start: packed.data, count: packed.data == nil ? 0 : packed.len)
        let result: PackedEntries
        do throws(PackedEntriesError) {
            result = try PackedEntries(validating: raw)
        } catch .invalidUTF8(let which) {
            throw .invalidUTF8(field: "TransferChunk.packed_entries \(which)")
        } catch {
            throw .malformed("TransferChunk.packed_entries: \(error)")
        }
        guard t.n_entries > 0 else { return result }
        var entries: [Entry] = []
        entries.reserveCapacity(t.n_entries + result.count)
        for i in 0..<t.n_entries {
            guard let e = t.entries[i]?.pointee else { continue }
            entries.append(Entry(key: try utf8(e.key, "Entry.key"), value: try utf8(e.value, "Entry.value")))
        }
        return PackedEntries(entries + result.entries)
    }

    private static func requestID(_ pointer: UnsafeMutablePointer<Pbkv__RequestId>?) -> RequestID {
        guard let id = pointer?.pointee else { return RequestID(clientID: 0, seq: 0) }
        return RequestID(clientID: id.client_id, seq: id.seq)
    }

    private static func kvReply(_ r: Pbkv__KVReply) throws(MessageCodecError) -> KVReply {
        KVReply(code: try code(r.code, "KVReply.code"), value: try utf8(r.value, "KVReply.value"))
    }

    /// nil when no known method field is set.
    private static func swiftCall(_ r: Pbkv__Request) throws(MessageCodecError) -> Call? {
        switch r.call_case {
        case PBKV__REQUEST__CALL_PING:
            guard let p = r.ping?.pointee else { return nil }
            return .ping(PingArgs(server: try text(p.server, "PingArgs.server"), viewnum: p.viewnum))
        case PBKV__REQUEST__CALL_GET_VIEW:
            return .getView
        case PBKV__REQUEST__CALL_VIEW_SERVICE_STATUS:
            return .viewServiceStatus
        case PBKV__REQUEST__CALL_SERVER_STATUS:
            return .serverStatus
        case PBKV__REQUEST__CALL_GET:
            guard let g = r.get?.pointee else { return nil }
            return .get(key: try utf8(g.key, "GetArgs.key"), id: requestID(g.id))
        case PBKV__REQUEST__CALL_PUT:
            guard let p = r.put?.pointee else { return nil }
            return .put(key: try utf8(p.key, "PutArgs.key"), value: try utf8(p.value, "PutArgs.value"), id: requestID(p.id))
        case PBKV__REQUEST__CALL_PUT_HASH:
            guard let p = r.put_hash?.pointee else { return nil }
            return .putHash(
                key: try utf8(p.key, "PutHashArgs.key"), value: try utf8(p.value, "PutHashArgs.value"), id: requestID(p.id))
        case PBKV__REQUEST__CALL_FORWARD:
            guard let f = r.forward?.pointee else { return nil }
            var ops: [Operation] = []
            ops.reserveCapacity(f.n_ops)
            for i in 0..<f.n_ops {
                guard let o = f.ops[i]?.pointee else { continue }
                guard let kind = OpKind(rawValue: Int32(truncatingIfNeeded: o.kind.rawValue)) else {
                    throw .unknownValue(field: "Operation.kind", value: Int64(Int32(truncatingIfNeeded: o.kind.rawValue)))
                }
                ops.append(Operation(
                    kind: kind, key: try utf8(o.key, "Operation.key"), value: try utf8(o.value, "Operation.value"),
                    id: requestID(o.id)))
            }
            return .forward(ForwardArgs(
                viewnum: f.viewnum, primary: try text(f.primary, "ForwardArgs.primary"), firstIndex: f.first_index, ops: ops))
        case PBKV__REQUEST__CALL_TRANSFER:
            guard let t = r.transfer?.pointee else { return nil }
            let entries = try packedEntries(t)
            var duplicates: [DuplicateEntry] = []
            duplicates.reserveCapacity(t.n_duplicates)
            for i in 0..<t.n_duplicates {
                guard let d = t.duplicates[i]?.pointee else { continue }
                let reply = try d.reply.map { (r) throws(MessageCodecError) in try kvReply(r.pointee) } ?? KVReply(code: .ok)
                duplicates.append(DuplicateEntry(
                    clientID: d.client_id, seq: d.seq, reply: reply, lastUsed: d.last_used, reread: d.reread != 0))
            }
            return .transfer(TransferChunk(
                viewnum: t.viewnum, primary: try text(t.primary, "TransferChunk.primary"), transferID: t.transfer_id,
                chunkIndex: t.chunk_index, last: t.last != 0, nextIndex: t.next_index, packedEntries: entries,
                duplicates: duplicates, clock: t.clock))
        default:
            return nil
        }
    }

    private static func swiftView(_ v: Pbkv__View) throws(MessageCodecError) -> View {
        View(
            viewnum: v.viewnum, primary: try text(v.primary, "View.primary"), backup: try text(v.backup, "View.backup"),
            acknowledged: v.acknowledged != 0)
    }

    // MARK: view record

    /// The protobuf encoding of a `pbkv.ViewRecord` (format version 1).
    public static func encode(_ record: ViewRecord) -> [UInt8] {
        let arena = CArena()
        defer { arena.reset() }
        var message = Pbkv__ViewRecord()
        pbkv__view_record__init(&message)
        message.format_version = ViewRecord.formatVersion
        message.view = cView(record.view, arena)
        message.previous_backup = arena.cString(record.previousBackup)
        let size = pbkv__view_record__get_packed_size(&message)
        var bytes = [UInt8](repeating: 0, count: size)
        if size > 0 { _ = bytes.withUnsafeMutableBufferPointer { pbkv__view_record__pack(&message, $0.baseAddress!) } }
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
                guard let v = m.view?.pointee else { return .failure(.malformed("ViewRecord without a view")) }
                if let nulField = stringFieldWithNUL(in: UnsafeRawBufferPointer(raw), of: message.pointee.base.descriptor) {
                    return .failure(.nulInString(field: nulField))
                }
                do throws(MessageCodecError) {
                    return .success(ViewRecord(
                        view: try swiftView(v), previousBackup: try text(m.previous_backup, "ViewRecord.previous_backup")))
                } catch {
                    return .failure(error)
                }
            }
        }
        return try result.get()
    }

    private static func swiftServerStatus(_ s: Pbkv__ServerStatus) throws(MessageCodecError) -> ServerStatus {
        let transfer = try s.transfer.map { (p) throws(MessageCodecError) in
            TransferProgress(
                peer: try text(p.pointee.peer, "TransferProgress.peer"), entriesDone: p.pointee.entries_done,
                entriesTotal: p.pointee.entries_total, chunks: p.pointee.chunks)
        }
        return ServerStatus(
            server: try text(s.server, "ServerStatus.server"), role: try text(s.role, "ServerStatus.role"),
            view: try s.view.map { (p) throws(MessageCodecError) in try swiftView(p.pointee) } ?? .initial,
            keys: s.keys, bytes: s.bytes, duplicateRows: s.duplicate_rows, operations: s.operations,
            connections: s.connections, transfer: transfer, uptimeMs: s.uptime_ms)
    }

    private static func swiftResponse(_ r: Pbkv__Response, nulField: String?) throws(MessageCodecError) -> Response {
        let responseCode: Code
        do throws(MessageCodecError) {
            responseCode = try code(r.code, "Response.code")
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
            var message = (try? text(r.message, "Response.message")) ?? "<invalid UTF-8>"
            if nulField != nil { message += " [cut at a NUL byte]" }
            let leader = (try? text(r.leader, "Response.leader")) ?? ""
            return Response(callID: r.call_id, code: responseCode, message: message, leader: leader)
        }
        do throws(MessageCodecError) {
            switch r.result_case {
            case PBKV__RESPONSE__RESULT_VIEW:
                guard let v = r.view?.pointee else { break }
                return Response(callID: r.call_id, result: .view(try swiftView(v)))
            case PBKV__RESPONSE__RESULT_KV:
                guard let k = r.kv?.pointee else { break }
                return Response(callID: r.call_id, result: .kv(try kvReply(k)))
            case PBKV__RESPONSE__RESULT_FORWARD:
                guard let f = r.forward?.pointee else { break }
                return Response(callID: r.call_id, result: .forward(ForwardReply(
                    code: try code(f.code, "ForwardReply.code"), nextIndex: f.next_index)))
            case PBKV__RESPONSE__RESULT_TRANSFER:
                guard let t = r.transfer?.pointee else { break }
                return Response(callID: r.call_id, result: .transfer(TransferReply(code: try code(t.code, "TransferReply.code"))))
            case PBKV__RESPONSE__RESULT_VIEW_SERVICE_STATUS:
                guard let v = r.view_service_status?.pointee else { break }
                var servers: [ServerSeen] = []
                for i in 0..<v.n_servers {
                    guard let seen = v.servers[i]?.pointee else { continue }
                    servers.append(ServerSeen(server: try text(seen.server, "ServerSeen.server"), lastPingMsAgo: seen.last_ping_ms_ago))
                }
                let view = try v.view.map { (p) throws(MessageCodecError) in try swiftView(p.pointee) } ?? .initial
                return Response(callID: r.call_id, result: .viewServiceStatus(ViewServiceStatus(view: view, servers: servers)))
            case PBKV__RESPONSE__RESULT_SERVER_STATUS:
                guard let s = r.server_status?.pointee else { break }
                return Response(callID: r.call_id, result: .serverStatus(try swiftServerStatus(s)))
            default:
                break
            }
        } catch {
            return Response(callID: r.call_id, code: .protocolViolation, message: "reply could not be decoded: \(error)")
        }
        return Response(callID: r.call_id, code: .protocolViolation, message: "OK reply without a result")
    }
}
