"""Mutual TLS for the Python client: the same certificates and identity rules as `pbkv`.

A cluster made with `pbkv certs init DIR` trusts `DIR/ca.pem`. A client presents a certificate of
that CA with the client role (`pbkv certs issue DIR NAME --role client`), and checks that the
server it reached holds a server certificate covering the very `HOST:PORT` it dialed: pbkv names
servers in views by address, so the identity is the URI subject alternative name
`pbkv://server/HOST:PORT` (the port included: several servers may share one IP).

    from pbkv import Client, TLS
    with Client("10.0.0.1:7000", tls=TLS.from_dir("certs", "alice")) as kv:
        kv.put("k", "v")
"""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from .errors import PbkvError, Unavailable

#: The URI subject alternative name a server certificate carries per address it speaks for.
SERVER_URI_PREFIX = "pbkv://server/"

PathLike = Union[str, "os.PathLike[str]"]


class TLSConfigError(PbkvError):
    """The TLS material cannot be used (a missing or unreadable file, a key that does not match
    its certificate): fix the files named in the message; retrying cannot help."""


class ServerIdentityError(Unavailable):
    """The server reached presented a certificate of the cluster's CA that does not cover the
    address dialed: a wrong address, or a certificate issued without that `--host`."""


def dialed_address(host: str, port: int) -> str:
    """`HOST:PORT` as views name it (`[v6]:PORT` for an IPv6 host)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_addresses(certificate: dict[str, Any]) -> list[str]:
    """The `HOST:PORT` addresses a peer certificate (as `SSLSocket.getpeercert()` returns it)
    speaks for: its `pbkv://server/…` URI subject alternative names."""
    return [
        value[len(SERVER_URI_PREFIX):]
        for kind, value in certificate.get("subjectAltName", ())
        if kind == "URI" and value.startswith(SERVER_URI_PREFIX)
    ]


@dataclass(frozen=True)
class TLS:
    """Mutual TLS material: the cluster CA to trust, and this client's certificate and key
    (PEM files). `TLS.from_dir(DIR, NAME)` takes them where `pbkv certs` writes them, as the
    `pbkv` command's `--tls DIR --tls-name NAME` does."""

    ca: PathLike
    cert: PathLike
    key: PathLike

    @classmethod
    def from_dir(cls, directory: PathLike, name: str) -> "TLS":
        """`DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME-key.pem`."""
        base = Path(directory)
        return cls(ca=base / "ca.pem", cert=base / f"{name}.pem", key=base / f"{name}-key.pem")

    @classmethod
    def from_env(cls, environ: Optional[dict[str, str]] = None) -> Optional["TLS"]:
        """From `PBKV_TLS_DIR` and `PBKV_TLS_NAME` (the `pbkv` command's stand-ins for the
        flags); None when neither is set. One without the other is a `TLSConfigError`."""
        env = os.environ if environ is None else environ
        directory, name = env.get("PBKV_TLS_DIR"), env.get("PBKV_TLS_NAME")
        if directory is None and name is None:
            return None
        if directory is None or name is None:
            raise TLSConfigError("set both PBKV_TLS_DIR (the CA directory) and PBKV_TLS_NAME (the certificate name)")
        return cls.from_dir(directory, name)

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2 or newer, the cluster CA only, this client's certificate.
        Host names are not checked by `ssl` (pbkv identities are `HOST:PORT`); `socket_factory`
        checks the address instead."""
        for label, path in (("CA certificate", self.ca), ("certificate", self.cert), ("private key", self.key)):
            if not os.path.isfile(path):
                raise TLSConfigError(
                    f"{label} {os.fspath(path)} not found: make it with `pbkv certs init DIR` and "
                    "`pbkv certs issue DIR NAME --role client`, or pass the right directory and name")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=os.fspath(self.ca))
            context.load_cert_chain(certfile=os.fspath(self.cert), keyfile=os.fspath(self.key))
        except (ssl.SSLError, OSError) as error:
            raise TLSConfigError(
                f"cannot use {os.fspath(self.cert)} with {os.fspath(self.key)} and CA {os.fspath(self.ca)}: {error}"
            ) from error
        return context

    def socket_factory(self) -> "TLSSocketFactory":
        """A `SocketFactory` for `Client`/`Connection` (the context is built once, here, so a
        bad file is reported at once)."""
        return TLSSocketFactory(self.context())


class TLSSocketFactory:
    """Opens TCP (Nagle off), completes the TLS handshake against the cluster CA, and accepts the
    peer only if its certificate covers the dialed `HOST:PORT` (`ServerIdentityError` otherwise)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    def __call__(self, host: str, port: int, timeout: float) -> ssl.SSLSocket:
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._context.wrap_socket(raw, server_hostname=None)
        except BaseException:
            raw.close()
            raise
        address = dialed_address(host, port)
        covered = server_addresses(sock.getpeercert() or {})
        if address not in covered:
            sock.close()
            raise ServerIdentityError(
                f"the server at {address} holds a certificate of the cluster CA that does not cover {address} "
                f"(it covers {', '.join(covered) or 'no server address'}): check the address, or issue its "
                f"certificate with `--host {address}`")
        return sock
