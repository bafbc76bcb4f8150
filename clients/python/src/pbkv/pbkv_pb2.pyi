from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[Code]
    NO_KEY: _ClassVar[Code]
    WRONG_SERVER: _ClassVar[Code]
    NOT_READY: _ClassVar[Code]
    UNKNOWN_METHOD: _ClassVar[Code]
    BAD_REQUEST: _ClassVar[Code]
    PROTOCOL_VIOLATION: _ClassVar[Code]
    FRAME_TOO_LARGE: _ClassVar[Code]
    UNSUPPORTED_VERSION: _ClassVar[Code]
    INTERNAL: _ClassVar[Code]
    OUT_OF_ORDER: _ClassVar[Code]
    NOT_LEADER: _ClassVar[Code]
    UNAVAILABLE: _ClassVar[Code]
    PERMISSION_DENIED: _ClassVar[Code]
    SESSION_EXPIRED: _ClassVar[Code]

class Feature(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_NONE: _ClassVar[Feature]
    FEATURE_ZLIB: _ClassVar[Feature]
    FEATURE_DEFLATE_STREAM: _ClassVar[Feature]

class OpKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OP_GET: _ClassVar[OpKind]
    OP_PUT: _ClassVar[OpKind]
    OP_PUT_HASH: _ClassVar[OpKind]

class LeadershipRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_FOLLOWER: _ClassVar[LeadershipRole]
    ROLE_LOADING: _ClassVar[LeadershipRole]
    ROLE_LEADER: _ClassVar[LeadershipRole]
    ROLE_FAILED: _ClassVar[LeadershipRole]
OK: Code
NO_KEY: Code
WRONG_SERVER: Code
NOT_READY: Code
UNKNOWN_METHOD: Code
BAD_REQUEST: Code
PROTOCOL_VIOLATION: Code
FRAME_TOO_LARGE: Code
UNSUPPORTED_VERSION: Code
INTERNAL: Code
OUT_OF_ORDER: Code
NOT_LEADER: Code
UNAVAILABLE: Code
PERMISSION_DENIED: Code
SESSION_EXPIRED: Code
FEATURE_NONE: Feature
FEATURE_ZLIB: Feature
FEATURE_DEFLATE_STREAM: Feature
OP_GET: OpKind
OP_PUT: OpKind
OP_PUT_HASH: OpKind
ROLE_FOLLOWER: LeadershipRole
ROLE_LOADING: LeadershipRole
ROLE_LEADER: LeadershipRole
ROLE_FAILED: LeadershipRole

class Hello(_message.Message):
    __slots__ = ("protocol_version", "features", "max_frame_size", "client_name")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    features: _containers.RepeatedScalarFieldContainer[Feature]
    max_frame_size: int
    client_name: str
    def __init__(self, protocol_version: _Optional[int] = ..., features: _Optional[_Iterable[_Union[Feature, str]]] = ..., max_frame_size: _Optional[int] = ..., client_name: _Optional[str] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("protocol_version", "features", "max_frame_size", "server_name")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_SIZE_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    features: _containers.RepeatedScalarFieldContainer[Feature]
    max_frame_size: int
    server_name: str
    def __init__(self, protocol_version: _Optional[int] = ..., features: _Optional[_Iterable[_Union[Feature, str]]] = ..., max_frame_size: _Optional[int] = ..., server_name: _Optional[str] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: Code
    message: str
    def __init__(self, code: _Optional[_Union[Code, str]] = ..., message: _Optional[str] = ...) -> None: ...

class View(_message.Message):
    __slots__ = ("viewnum", "primary", "backup", "acknowledged")
    VIEWNUM_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    BACKUP_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    viewnum: int
    primary: str
    backup: str
    acknowledged: bool
    def __init__(self, viewnum: _Optional[int] = ..., primary: _Optional[str] = ..., backup: _Optional[str] = ..., acknowledged: _Optional[bool] = ...) -> None: ...

class PingArgs(_message.Message):
    __slots__ = ("server", "viewnum")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    VIEWNUM_FIELD_NUMBER: _ClassVar[int]
    server: str
    viewnum: int
    def __init__(self, server: _Optional[str] = ..., viewnum: _Optional[int] = ...) -> None: ...

class GetViewArgs(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ViewRecord(_message.Message):
    __slots__ = ("format_version", "view", "previous_backup")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_BACKUP_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    view: View
    previous_backup: str
    def __init__(self, format_version: _Optional[int] = ..., view: _Optional[_Union[View, _Mapping]] = ..., previous_backup: _Optional[str] = ...) -> None: ...

class RequestId(_message.Message):
    __slots__ = ("client_id", "seq", "acked")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    acked: int
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., acked: _Optional[int] = ...) -> None: ...

class GetArgs(_message.Message):
    __slots__ = ("key", "id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    id: RequestId
    def __init__(self, key: _Optional[bytes] = ..., id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class PutArgs(_message.Message):
    __slots__ = ("key", "value", "id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    id: RequestId
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class PutHashArgs(_message.Message):
    __slots__ = ("key", "value", "id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    id: RequestId
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class KVReply(_message.Message):
    __slots__ = ("code", "value")
    CODE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    code: Code
    value: bytes
    def __init__(self, code: _Optional[_Union[Code, str]] = ..., value: _Optional[bytes] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("kind", "key", "value", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: OpKind
    key: bytes
    value: bytes
    id: RequestId
    def __init__(self, kind: _Optional[_Union[OpKind, str]] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., id: _Optional[_Union[RequestId, _Mapping]] = ...) -> None: ...

class ForwardArgs(_message.Message):
    __slots__ = ("viewnum", "primary", "first_index", "ops")
    VIEWNUM_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    viewnum: int
    primary: str
    first_index: int
    ops: _containers.RepeatedCompositeFieldContainer[Operation]
    def __init__(self, viewnum: _Optional[int] = ..., primary: _Optional[str] = ..., first_index: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ...) -> None: ...

class ForwardReply(_message.Message):
    __slots__ = ("code", "next_index")
    CODE_FIELD_NUMBER: _ClassVar[int]
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    code: Code
    next_index: int
    def __init__(self, code: _Optional[_Union[Code, str]] = ..., next_index: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class DuplicateEntry(_message.Message):
    __slots__ = ("client_id", "seq", "reply", "last_used", "reread", "acked")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    REREAD_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    reply: KVReply
    last_used: int
    reread: bool
    acked: int
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., reply: _Optional[_Union[KVReply, _Mapping]] = ..., last_used: _Optional[int] = ..., reread: _Optional[bool] = ..., acked: _Optional[int] = ...) -> None: ...

class TransferChunk(_message.Message):
    __slots__ = ("viewnum", "primary", "transfer_id", "chunk_index", "last", "next_index", "entries", "duplicates", "packed_entries", "clock")
    VIEWNUM_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    PACKED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    viewnum: int
    primary: str
    transfer_id: int
    chunk_index: int
    last: bool
    next_index: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    duplicates: _containers.RepeatedCompositeFieldContainer[DuplicateEntry]
    packed_entries: bytes
    clock: int
    def __init__(self, viewnum: _Optional[int] = ..., primary: _Optional[str] = ..., transfer_id: _Optional[int] = ..., chunk_index: _Optional[int] = ..., last: _Optional[bool] = ..., next_index: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., duplicates: _Optional[_Iterable[_Union[DuplicateEntry, _Mapping]]] = ..., packed_entries: _Optional[bytes] = ..., clock: _Optional[int] = ...) -> None: ...

class TransferReply(_message.Message):
    __slots__ = ("code",)
    CODE_FIELD_NUMBER: _ClassVar[int]
    code: Code
    def __init__(self, code: _Optional[_Union[Code, str]] = ...) -> None: ...

class ServerStatusArgs(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TransferProgress(_message.Message):
    __slots__ = ("peer", "entries_done", "entries_total", "chunks")
    PEER_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_DONE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    peer: str
    entries_done: int
    entries_total: int
    chunks: int
    def __init__(self, peer: _Optional[str] = ..., entries_done: _Optional[int] = ..., entries_total: _Optional[int] = ..., chunks: _Optional[int] = ...) -> None: ...

class ServerStatus(_message.Message):
    __slots__ = ("server", "role", "view", "keys", "bytes", "duplicate_rows", "operations", "connections", "transfer", "uptime_ms")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_ROWS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    server: str
    role: str
    view: View
    keys: int
    bytes: int
    duplicate_rows: int
    operations: int
    connections: int
    transfer: TransferProgress
    uptime_ms: int
    def __init__(self, server: _Optional[str] = ..., role: _Optional[str] = ..., view: _Optional[_Union[View, _Mapping]] = ..., keys: _Optional[int] = ..., bytes: _Optional[int] = ..., duplicate_rows: _Optional[int] = ..., operations: _Optional[int] = ..., connections: _Optional[int] = ..., transfer: _Optional[_Union[TransferProgress, _Mapping]] = ..., uptime_ms: _Optional[int] = ...) -> None: ...

class ViewServiceStatusArgs(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerSeen(_message.Message):
    __slots__ = ("server", "last_ping_ms_ago")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    LAST_PING_MS_AGO_FIELD_NUMBER: _ClassVar[int]
    server: str
    last_ping_ms_ago: int
    def __init__(self, server: _Optional[str] = ..., last_ping_ms_ago: _Optional[int] = ...) -> None: ...

class ViewServiceStatus(_message.Message):
    __slots__ = ("view", "servers")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    view: View
    servers: _containers.RepeatedCompositeFieldContainer[ServerSeen]
    def __init__(self, view: _Optional[_Union[View, _Mapping]] = ..., servers: _Optional[_Iterable[_Union[ServerSeen, _Mapping]]] = ...) -> None: ...

class ViewServiceRoleArgs(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ViewServiceRole(_message.Message):
    __slots__ = ("role", "leader", "detail")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    role: LeadershipRole
    leader: str
    detail: str
    def __init__(self, role: _Optional[_Union[LeadershipRole, str]] = ..., leader: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("call_id", "timeout_ms", "ping", "get_view", "get", "put", "put_hash", "forward", "transfer", "view_service_status", "server_status", "view_service_role")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    GET_VIEW_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    PUT_HASH_FIELD_NUMBER: _ClassVar[int]
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    VIEW_SERVICE_STATUS_FIELD_NUMBER: _ClassVar[int]
    SERVER_STATUS_FIELD_NUMBER: _ClassVar[int]
    VIEW_SERVICE_ROLE_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    timeout_ms: int
    ping: PingArgs
    get_view: GetViewArgs
    get: GetArgs
    put: PutArgs
    put_hash: PutHashArgs
    forward: ForwardArgs
    transfer: TransferChunk
    view_service_status: ViewServiceStatusArgs
    server_status: ServerStatusArgs
    view_service_role: ViewServiceRoleArgs
    def __init__(self, call_id: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., ping: _Optional[_Union[PingArgs, _Mapping]] = ..., get_view: _Optional[_Union[GetViewArgs, _Mapping]] = ..., get: _Optional[_Union[GetArgs, _Mapping]] = ..., put: _Optional[_Union[PutArgs, _Mapping]] = ..., put_hash: _Optional[_Union[PutHashArgs, _Mapping]] = ..., forward: _Optional[_Union[ForwardArgs, _Mapping]] = ..., transfer: _Optional[_Union[TransferChunk, _Mapping]] = ..., view_service_status: _Optional[_Union[ViewServiceStatusArgs, _Mapping]] = ..., server_status: _Optional[_Union[ServerStatusArgs, _Mapping]] = ..., view_service_role: _Optional[_Union[ViewServiceRoleArgs, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("call_id", "code", "message", "leader", "view", "kv", "forward", "transfer", "view_service_status", "server_status", "view_service_role")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    VIEW_SERVICE_STATUS_FIELD_NUMBER: _ClassVar[int]
    SERVER_STATUS_FIELD_NUMBER: _ClassVar[int]
    VIEW_SERVICE_ROLE_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    code: Code
    message: str
    leader: str
    view: View
    kv: KVReply
    forward: ForwardReply
    transfer: TransferReply
    view_service_status: ViewServiceStatus
    server_status: ServerStatus
    view_service_role: ViewServiceRole
    def __init__(self, call_id: _Optional[int] = ..., code: _Optional[_Union[Code, str]] = ..., message: _Optional[str] = ..., leader: _Optional[str] = ..., view: _Optional[_Union[View, _Mapping]] = ..., kv: _Optional[_Union[KVReply, _Mapping]] = ..., forward: _Optional[_Union[ForwardReply, _Mapping]] = ..., transfer: _Optional[_Union[TransferReply, _Mapping]] = ..., view_service_status: _Optional[_Union[ViewServiceStatus, _Mapping]] = ..., server_status: _Optional[_Union[ServerStatus, _Mapping]] = ..., view_service_role: _Optional[_Union[ViewServiceRole, _Mapping]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("hello", "hello_reply", "request", "response", "goodbye")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HELLO_REPLY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    hello_reply: HelloReply
    request: Request
    response: Response
    goodbye: Goodbye
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., hello_reply: _Optional[_Union[HelloReply, _Mapping]] = ..., request: _Optional[_Union[Request, _Mapping]] = ..., response: _Optional[_Union[Response, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ...) -> None: ...
