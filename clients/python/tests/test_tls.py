"""Mutual TLS from Python against a cluster whose every process presents a certificate of its own
CA (made with `pbkv certs`), and the client-side identity check against a TLS server of the
test's own."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Cluster, free_port, start_replicated
from pbkv import (
    TLS,
    Client,
    Connection,
    DeadlineExceeded,
    ServerIdentityError,
    TLSConfigError,
    pbkv_pb2,
    put_hash_value,
)


@pytest.fixture(scope="module")
def tls_cluster(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(binary, tmp_path_factory.mktemp("tls-cluster"), tls=True)
    try:
        start_replicated(cluster)
        yield cluster
    finally:
        cluster.stop()


def test_a_client_certificate_reads_and_writes_over_mutual_tls(tls_cluster: Cluster) -> None:
    assert tls_cluster.client_tls is not None
    with Client(tls_cluster.viewservice_address, tls=tls_cluster.client_tls, timeout=20) as kv:
        kv.put("tls-key", "secret\x00value é")
        assert kv.get("tls-key") == "secret\x00value é"
        assert kv.get("tls-absent") is None
        assert kv.put_hash("tls-hash", "a") == ""
        assert kv.get("tls-hash") == put_hash_value("", "a")
        assert kv.stats.connects >= 1


def test_a_plaintext_client_gets_nothing_from_a_tls_cluster(tls_cluster: Cluster) -> None:
    with Client(tls_cluster.viewservice_address, timeout=1.5) as kv:
        with pytest.raises(DeadlineExceeded):
            kv.put("plaintext", "never")
    # The TLS client still sees that the key was never written.
    with Client(tls_cluster.viewservice_address, tls=tls_cluster.client_tls, timeout=20) as kv:
        assert kv.get("plaintext") is None


def test_a_certificate_of_another_ca_is_refused(tls_cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    tls_cluster.certs_command("init", str(other))
    tls_cluster.certs_command("issue", str(other), "mallory", "--role", "client")
    with Client(tls_cluster.viewservice_address, tls=TLS.from_dir(other, "mallory"), timeout=1.5) as kv:
        with pytest.raises(DeadlineExceeded) as raised:
            kv.get("tls-key")
    assert "certificate" in str(raised.value).lower()


def test_a_client_certificate_cannot_ping_as_the_primary(tls_cluster: Cluster) -> None:
    view = tls_cluster.view()
    assert view is not None and view.primary
    viewservice = next(iter(tls_cluster.viewservices))
    assert tls_cluster.client_tls is not None
    with Connection(viewservice, deadline=time.monotonic() + 5,
                    socket_factory=tls_cluster.client_tls.socket_factory()) as connection:
        response = connection.call(
            pbkv_pb2.Request(ping=pbkv_pb2.PingArgs(server=view.primary, viewnum=0)), time.monotonic() + 5)
    assert response.code == pbkv_pb2.PERMISSION_DENIED
    # The forged restart changed nothing: the same primary, and it still takes writes.
    after = tls_cluster.view()
    assert after is not None and after.primary == view.primary and after.viewnum == view.viewnum
    with Client(tls_cluster.viewservice_address, tls=tls_cluster.client_tls, timeout=20) as kv:
        kv.put("after-forged-ping", "ok")
        assert kv.get("after-forged-ping") == "ok"


def test_a_server_whose_certificate_does_not_cover_the_address_dialed_is_refused(
    tls_cluster: Cluster, tmp_path: Path
) -> None:
    assert tls_cluster.certs is not None and tls_cluster.client_tls is not None
    port = free_port()
    # A genuine server certificate of the cluster's CA, but for another address.
    tls_cluster.certs_command("issue", str(tls_cluster.certs), "elsewhere", "--role", "server", "--host", "127.0.0.1:1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_cluster.certs / "elsewhere.pem", tls_cluster.certs / "elsewhere-key.pem")
    context.load_verify_locations(tls_cluster.certs / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(10)

    def serve_one_handshake() -> None:
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.settimeout(5)
                tls_conn.recv(1)  # until the client hangs up
        except OSError:
            pass

    thread = threading.Thread(target=serve_one_handshake, daemon=True)
    thread.start()
    try:
        with pytest.raises(ServerIdentityError) as raised:
            Connection(f"127.0.0.1:{port}", deadline=time.monotonic() + 5,
                       socket_factory=tls_cluster.client_tls.socket_factory())
        message = str(raised.value)
        assert f"127.0.0.1:{port}" in message and "127.0.0.1:1" in message and "--host" in message
    finally:
        thread.join(timeout=10)
        listener.close()


def test_missing_tls_files_are_reported_before_any_connection(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError) as raised:
        Client("127.0.0.1:1", tls=TLS.from_dir(tmp_path, "nobody"))
    assert str(tmp_path / "ca.pem") in str(raised.value) and "pbkv certs" in str(raised.value)


def test_tls_from_env_needs_both_variables(tmp_path: Path) -> None:
    assert TLS.from_env({}) is None
    assert TLS.from_env({"PBKV_TLS_DIR": str(tmp_path), "PBKV_TLS_NAME": "alice"}) == TLS.from_dir(tmp_path, "alice")
    with pytest.raises(TLSConfigError):
        TLS.from_env({"PBKV_TLS_DIR": str(tmp_path)})


def test_tls_and_a_socket_factory_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", tls=TLS.from_dir(tmp_path, "x"), socket_factory=lambda h, p, t: None)
