"""Peers with another version of the schema talk to the current server (README, "Compatibility
policy"): a newer one (extra fields, an extra method, code and feature), an older one (without
`Response.leader` and `View.acknowledged`), and a newer one in protobuf editions whose new
fields are DELIMITED (groups on the wire). The variants are tests/proto/*.proto, compiled here."""

from __future__ import annotations

import socket
import time

import pytest
from google.protobuf.unknown_fields import UnknownFieldSet

from conftest import Cluster
from fakes import FakeViewService, not_leader
from pbkv import Client, Connection, put_hash_value
from pbkv import pbkv_pb2 as current
from pbkv.framing import encode_frame, frame_payload, read_frame

WIRETYPE_START_GROUP = 3


@pytest.fixture(scope="module")
def newer(compile_variant):
    return compile_variant("pbkv_newer")


@pytest.fixture(scope="module")
def older(compile_variant):
    return compile_variant("pbkv_older")


@pytest.fixture(scope="module")
def delimited(compile_variant):
    return compile_variant("pbkv_delimited")


def primary_of(cluster: Cluster) -> str:
    return cluster.view().primary


def deadline(seconds: float = 10) -> float:
    return time.monotonic() + seconds


# ---------------------------------------------------------------- a newer peer


def test_newer_client_fields_are_ignored_and_its_unknown_method_answered(cluster: Cluster, newer) -> None:
    with Connection(primary_of(cluster), deadline=deadline(), schema=newer) as connection:
        rid = newer.RequestId(client_id=0xC0FFEE, seq=1)
        put = newer.Request(trace_id="t-1", put=newer.PutArgs(key=b"newer", value=b"v1", id=rid, ttl_ms=5, tags=["a", "b"]))
        response = connection.call(put, deadline())
        assert response.code == newer.OK and response.kv.code == newer.OK

        delete = newer.Request(trace_id="t-2", delete=newer.DeleteArgs(key=b"newer", id=newer.RequestId(client_id=0xC0FFEE, seq=2)))
        response = connection.call(delete, deadline())
        assert response.code == newer.UNKNOWN_METHOD, response
        assert response.call_id == delete.call_id and "unknown method" in response.message

        # The same connection goes on; the method that was not known did not run.
        get = newer.Request(get=newer.GetArgs(key=b"newer", id=newer.RequestId(client_id=0xC0FFEE, seq=3)))
        response = connection.call(get, deadline())
        assert response.code == newer.OK and response.kv.value == b"v1"
        assert not connection.closed


def test_newer_client_library_works_against_the_current_server(cluster: Cluster, newer) -> None:
    with Client(cluster.viewservice_address, timeout=20, schema=newer) as client:
        client.put("newer-client", "ok")
        assert client.get("newer-client") == "ok"
        assert client.put_hash("newer-client", "x") == "ok"


def test_newer_hello_extra_field_and_feature_negotiate_what_both_know(cluster: Cluster, newer) -> None:
    host, port = cluster.viewservice_address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        hello = newer.Hello(
            protocol_version=1, features=[newer.FEATURE_ZSTD, newer.FEATURE_ZLIB], client_version="2.0")
        sock.sendall(encode_frame(newer.Envelope(hello=hello).SerializeToString()))
        buffer = bytearray()
        while (frame := read_frame(buffer)) is None:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            buffer += chunk
        reply = newer.Envelope.FromString(frame_payload(frame, compression_agreed=False))
        assert reply.WhichOneof("body") == "hello_reply"
        assert list(reply.hello_reply.features) == [newer.FEATURE_ZLIB]


# ---------------------------------------------------------------- an older peer


def test_older_client_ignores_the_fields_it_does_not_know(cluster: Cluster, older) -> None:
    with Connection(cluster.viewservice_address, deadline=deadline(), schema=older) as connection:
        response = connection.call(older.Request(get_view=older.GetViewArgs()), deadline())
        assert response.code == older.OK and response.view.primary
        # The server sent View.acknowledged (field 4); this schema keeps it as an unknown field.
        assert [(f.field_number, f.data) for f in UnknownFieldSet(response.view)] == [(4, 1)]
    with Client(cluster.viewservice_address, timeout=20, schema=older) as client:
        previous = ""
        for i in range(10):
            assert client.put_hash("older-client", str(i)) == previous
            previous = put_hash_value(previous, str(i))
        assert client.get("older-client") == previous


def test_older_client_without_leader_field_moves_on_after_not_leader(cluster: Cluster, older) -> None:
    with FakeViewService(lambda request: not_leader(cluster.viewservice_address)) as follower:
        # The current schema learns the leader from the answer …
        with Client([follower.address], timeout=20) as client:
            client.put("led", "1")
            assert cluster.viewservice_address in client.viewservice.addresses
        # … an older one cannot see it, and tries the next address instead.
        with Client([follower.address, cluster.viewservice_address], timeout=20, schema=older) as client:
            assert client.get("led") == "1"
            assert client.viewservice.stats.not_leader >= 1
            assert client.viewservice.addresses == [follower.address, cluster.viewservice_address]


# ---------------------------------------------------------------- DELIMITED fields (groups)


def test_delimited_fields_are_groups_on_the_wire(delimited) -> None:
    request = delimited.Request(call_id=1, trace=delimited.Trace(id="t", parent=delimited.Trace(id="p")),
                                get_view=delimited.GetViewArgs())
    as_current = current.Request.FromString(request.SerializeToString())
    assert [(f.field_number, f.wire_type) for f in UnknownFieldSet(as_current)] == [(3, WIRETYPE_START_GROUP)]


def test_delimited_fields_from_a_newer_peer_are_skipped_by_the_server(cluster: Cluster, delimited) -> None:
    def trace(name: str) -> object:
        return delimited.Trace(id=name, span=7, parent=delimited.Trace(id=f"{name}-parent"))

    with Connection(primary_of(cluster), deadline=deadline(), schema=delimited) as connection:
        rid = delimited.RequestId(client_id=0xDE11, seq=1)
        put = delimited.Request(trace=trace("put"), put=delimited.PutArgs(key=b"delimited", value=b"v", id=rid, trace=trace("args")))
        response = connection.call(put, deadline())
        assert response.code == delimited.OK and response.kv.code == delimited.OK
        get = delimited.Request(trace=trace("get"), get=delimited.GetArgs(key=b"delimited", id=delimited.RequestId(client_id=0xDE11, seq=2)))
        response = connection.call(get, deadline())
        assert response.code == delimited.OK and response.kv.value == b"v"
        assert not connection.closed
    with Connection(cluster.viewservice_address, deadline=deadline(), schema=delimited) as connection:
        response = connection.call(delimited.Request(trace=trace("view"), get_view=delimited.GetViewArgs()), deadline())
        assert response.code == delimited.OK and response.view.primary == primary_of(cluster)
