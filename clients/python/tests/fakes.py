"""A scripted stand-in for a view service, for what a real one does only in rare moments
(a deposed leader's old view) or needs etcd for (NOT_LEADER). It speaks the real protocol:
handshake, frames, one `Response` per `Request`."""

from __future__ import annotations

import socket
import threading
from typing import Callable, Optional

from pbkv import pbkv_pb2 as pb
from pbkv.framing import encode_frame, frame_payload, read_frame

#: Answers one request (a `pb.Request`) with a `pb.Response`, or None to stay silent.
Script = Callable[[pb.Request], Optional[pb.Response]]


def view_response(viewnum: int, primary: str, backup: str = "", acknowledged: bool = True) -> pb.Response:
    return pb.Response(code=pb.OK, view=pb.View(viewnum=viewnum, primary=primary, backup=backup, acknowledged=acknowledged))


def not_leader(leader: str = "") -> pb.Response:
    return pb.Response(code=pb.NOT_LEADER, message="not the leader", leader=leader)


class FakeViewService:
    """Listens on a random loopback port; answers every call with `script(request)`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def stop(self) -> None:
        self._stopping.set()
        self._accepter.join(timeout=5)
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                connection.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "FakeViewService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        buffer = bytearray()
        handshaken = False
        try:
            while not self._stopping.is_set():
                frame = read_frame(buffer)
                if frame is None:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                envelope = pb.Envelope.FromString(frame_payload(frame, compression_agreed=False))
                if not handshaken:
                    reply = pb.HelloReply(protocol_version=1, server_name="fake view service")
                    connection.sendall(encode_frame(pb.Envelope(hello_reply=reply).SerializeToString()))
                    handshaken = True
                    continue
                with self._lock:
                    self.calls += 1
                response = self.script(envelope.request)
                if response is not None:
                    response.call_id = envelope.request.call_id
                    connection.sendall(encode_frame(pb.Envelope(response=response).SerializeToString()))
        except OSError:
            return
