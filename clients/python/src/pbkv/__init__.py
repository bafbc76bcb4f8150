"""pbkv: a client for the pbkv primary/backup replicated key/value service.

    from pbkv import Client, TLS

    with Client(["127.0.0.1:7000"], tls=TLS.from_dir("certs", "alice"), timeout=10) as kv:
        kv.put("greeting", "hello")
        assert kv.get("greeting") == "hello"
        previous = kv.put_hash("counter", "x")
"""

from .client import Client, ClientStats
from .connection import PROTOCOL_VERSION, Connection, ConnectionStats, SocketFactory, tcp_socket_factory
from .errors import (
    BadRequest,
    CallError,
    ClientClosed,
    DeadlineExceeded,
    PbkvError,
    ProtocolError,
    SessionExpired,
    Unavailable,
)
from .puthash import fnv1a32, put_hash_value
from .tls import TLS, ServerIdentityError, TLSConfigError, TLSSocketFactory
from .viewservice import View, ViewServiceClient

__all__ = [
    "BadRequest",
    "CallError",
    "Client",
    "ClientClosed",
    "ClientStats",
    "Connection",
    "ConnectionStats",
    "DeadlineExceeded",
    "PROTOCOL_VERSION",
    "PbkvError",
    "ProtocolError",
    "SessionExpired",
    "ServerIdentityError",
    "SocketFactory",
    "TLS",
    "TLSConfigError",
    "TLSSocketFactory",
    "Unavailable",
    "View",
    "ViewServiceClient",
    "fnv1a32",
    "put_hash_value",
    "tcp_socket_factory",
]
__version__ = "0.1.0"
