"""The client against a real cluster: a view service, a primary and a backup (processes)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import Cluster, free_port
from pbkv import BadRequest, Client, ClientClosed, DeadlineExceeded, fnv1a32, put_hash_value


@pytest.fixture
def client(cluster: Cluster):
    with Client([cluster.viewservice_address], timeout=20) as client:
        yield client


def test_round_trip(client: Client) -> None:
    assert client.get("absent") is None
    client.put("greeting", "hello")
    assert client.get("greeting") == "hello"
    client.put("greeting", "bonjour")
    assert client.get("greeting") == "bonjour"
    client.put("empty", "")
    assert client.get("empty") == ""  # an empty value is not an absent key


def test_nul_and_non_ascii_keys_and_values_travel_unchanged(client: Client) -> None:
    pairs = {
        "nul": "a\x00b\x00",
        "ключ": "значение",
        "鍵\x00🔑": "👩‍👩‍👧‍👦 ünïcødé",
        "\x00": "\x00\x00\x00",
    }
    for key, value in pairs.items():
        client.put(key, value)
    for key, value in pairs.items():
        assert client.get(key) == value
    # bytes that are valid UTF-8 are the same key as the str.
    assert client.get("ключ".encode()) == "значение"


def test_put_hash_chain(client: Client) -> None:
    previous = ""
    for i in range(100):
        assert client.put_hash("chain", str(i)) == previous
        previous = put_hash_value(previous, str(i))
    assert client.get("chain") == previous == "3868028174"
    assert put_hash_value("", "x") == str(fnv1a32(b"x"))


def test_one_mib_value_is_compressed_both_ways(client: Client) -> None:
    value = "".join(f"{i:08d}-pbkv-" for i in range(80_000))[: 1 << 20]
    assert len(value) == 1 << 20
    client.put("warm-up", "x")  # the connection to the primary exists from here on
    connection = client.connection
    assert connection is not None and connection.compression_agreed
    stats = connection.stats
    sent, received, bytes_sent = stats.frames_sent_compressed, stats.frames_received_compressed, stats.bytes_sent
    client.put("big", value)
    assert stats.frames_sent_compressed == sent + 1, "the 1 MiB Put went out as a zlib frame"
    assert stats.bytes_sent - bytes_sent < (1 << 20) // 2, "much smaller than the value"
    bytes_received = stats.bytes_received
    assert client.get("big") == value
    assert stats.frames_received_compressed == received + 1, "the 1 MiB reply came back as a zlib frame"
    assert stats.bytes_received - bytes_received < (1 << 20) // 2
    assert client.connection is connection


def test_without_zlib_nothing_is_compressed(cluster: Cluster) -> None:
    value = "z" * (1 << 20)
    with Client(cluster.viewservice_address, timeout=20, compression=False) as client:
        client.put("big-plain", value)
        assert client.get("big-plain") == value
        stats = client.connection.stats
        assert not client.connection.compression_agreed
        assert stats.frames_sent_compressed == 0 and stats.frames_received_compressed == 0
        assert stats.bytes_sent > 1 << 20 and stats.bytes_received > 1 << 20


def test_invalid_utf8_is_a_bad_request_and_the_connection_stays(client: Client) -> None:
    client.put("before", "1")
    connection, connects = client.connection, client.stats.connects
    with pytest.raises(BadRequest, match="UTF-8"):
        client.get(b"\xff\xfe")
    with pytest.raises(BadRequest, match="UTF-8"):
        client.put("k", b"\xc3\x28")
    with pytest.raises(BadRequest, match="UTF-8"):
        client.put_hash(b"\xed\xa0\x80", "x")  # an encoded surrogate is not UTF-8 either
    with pytest.raises(BadRequest):
        client.put("\udcff", "x")  # a lone surrogate cannot even be encoded
    assert client.connection is connection and not connection.closed
    assert client.stats.connects == connects
    client.put("after", "2")
    assert client.get("before") == "1" and client.get("after") == "2"
    assert client.get("k") is None


def test_comma_separated_addresses_with_a_dead_first_one(cluster: Cluster) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: connection refused
    with Client(f"{dead}, {cluster.viewservice_address}", timeout=20) as client:
        client.put("several", "addresses")
        assert client.get("several") == "addresses"
        assert client.viewservice.stats.failovers >= 1
        assert client.view().primary == client.connection.address


def test_a_silent_first_view_service_costs_one_call_timeout(cluster: Cluster) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with Client([address, cluster.viewservice_address], timeout=20, viewservice_timeout=0.3) as client:
            client.put("silent", "first")
            assert client.get("silent") == "first"
        assert time.monotonic() - start < 5


def test_deadline_exceeded_names_the_last_problem() -> None:
    dead = f"127.0.0.1:{free_port()}"
    with Client(dead, timeout=0.5) as client:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded) as raised:
            client.put("k", "v")
        assert 0.5 <= time.monotonic() - start < 3
        assert dead in (raised.value.last_problem or "")


def test_threads_share_a_client_one_operation_at_a_time(client: Client) -> None:
    def work() -> None:
        for _ in range(10):
            client.put_hash("threads", "x")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    expected = ""
    for _ in range(40):
        expected = put_hash_value(expected, "x")
    assert client.get("threads") == expected  # 40 applications, none lost or doubled


def test_closed_client_refuses_and_closed_its_connection(cluster: Cluster) -> None:
    client = Client([cluster.viewservice_address], timeout=20)
    client.put("closing", "1")
    connection = client.connection
    client.close()
    assert connection.closed
    with pytest.raises(ClientClosed):
        client.get("closing")
    with Client([cluster.viewservice_address], timeout=20) as again:
        assert again.get("closing") == "1"


def test_addresses_are_checked() -> None:
    for bad in ["", "localhost", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:x"]:
        with pytest.raises(ValueError):
            Client(bad)
