"""Peers with another version of the schema talk to the current server (README, "Compatibility
policy"): a newer one (extra fields, an extra method, code and feature), an older one (without
`Response.leader` and `View.acknowledged`), and a newer one in protobuf editions whose new
fields are DELIMITED (groups on the wire). The variants are tests/proto/*.proto, compiled here."""

from __future__ import annotations

import importlib.util
import socket
import time

import pytest
from google.protobuf.unknown_fields import UnknownFieldSet

from conftest import PROTO_VARIANTS, REPO, Cluster
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


# ---------------------------------------------------------------- the variants themselves


def numbered(module) -> dict[tuple[str, int], tuple]:
    """Every message field and enum value of a compiled schema, by (owner, number): its name and
    type — what must never change for a number (README, "Compatibility policy")."""
    shapes: dict[tuple[str, int], tuple] = {}

    def walk(message, prefix: str) -> None:
        for field in message.fields:
            shapes[(prefix + message.name, field.number)] = (
                field.name, field.type, field.is_repeated,
                field.message_type.name if field.message_type else None,
                field.enum_type.name if field.enum_type else None)
        for nested in message.nested_types:
            walk(nested, prefix + message.name + ".")

    for message in module.DESCRIPTOR.message_types_by_name.values():
        walk(message, "")
    for enum in module.DESCRIPTOR.enum_types_by_name.values():
        for value in enum.values:
            shapes[("enum " + enum.name, value.number)] = (value.name,)
    return shapes


@pytest.mark.parametrize("variant", ["pbkv_newer", "pbkv_delimited"])
def test_newer_variants_hold_the_whole_current_schema_and_add_only_new_numbers(compile_variant, variant) -> None:
    current_shapes, variant_shapes = numbered(current), numbered(compile_variant(variant))
    missing = sorted(set(current_shapes) - set(variant_shapes))
    changed = sorted(key for key in current_shapes.keys() & variant_shapes.keys() if current_shapes[key] != variant_shapes[key])
    assert not missing, f"{variant}.proto lacks what the current schema has: run make proto ({missing})"
    assert not changed, f"{variant}.proto gives current numbers another meaning: {changed}"
    assert set(variant_shapes) - set(current_shapes), f"{variant}.proto adds nothing newer"


def test_older_variant_uses_no_number_the_current_schema_gives_another_meaning(older) -> None:
    current_shapes, older_shapes = numbered(current), numbered(older)
    assert not set(older_shapes) - set(current_shapes)
    assert [key for key in older_shapes if older_shapes[key] != current_shapes[key]] == []
    assert ("View", 4) in current_shapes and ("View", 4) not in older_shapes


def test_newer_variants_are_what_make_variants_writes_from_the_current_schema() -> None:
    spec = importlib.util.spec_from_file_location("make_variants", PROTO_VARIANTS / "make_variants.py")
    make_variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_variants)
    schema = (REPO / "proto" / "pbkv.proto").read_text()
    assert (PROTO_VARIANTS / "pbkv_newer.proto").read_text() == make_variants.newer(schema), "run make proto"
    assert (PROTO_VARIANTS / "pbkv_delimited.proto").read_text() == make_variants.delimited(schema), "run make proto"


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
