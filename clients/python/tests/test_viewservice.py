"""Several view service addresses: NOT_LEADER hints, rotation, and views that never go back."""

from __future__ import annotations

import time
from typing import Callable

import pytest

from conftest import Cluster, free_port, start_replicated, wait_for
from fakes import FakeViewService, not_leader, view_response
from pbkv import Client, Unavailable, ViewServiceClient
from pbkv import pbkv_pb2 as pb


def test_a_replicated_view_service_follower_sends_the_client_to_its_leader(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(etcd=True, viewservices=2)

    def roles() -> tuple[str, str] | None:
        answers = {address: cluster.get_view_response(address) for address in cluster.viewservices}
        leaders = [a for a, r in answers.items() if r is not None and r.code == pb.OK]
        followers = [a for a, r in answers.items() if r is not None and r.code == pb.NOT_LEADER and r.leader in leaders]
        return (leaders[0], followers[0]) if len(leaders) == 1 and len(followers) == 1 else None

    leader, follower = wait_for(roles, within=30, what="a view service leader, and a follower that names it")
    primary, _ = start_replicated(cluster)
    with Client([follower], timeout=20) as client:  # only the follower's address
        client.put("replicated", "1")
        assert client.viewservice.stats.not_leader >= 1
        assert client.viewservice.addresses == [follower, leader]
    # The leader dies; the follower takes over once its lease expires, and the KV data is there.
    cluster.viewservices[leader].kill()
    with Client([leader, follower], timeout=30) as client:
        assert client.get("replicated") == "1"
        client.put("replicated", "2")
        assert client.view().primary == primary
        assert client.viewservice.stats.failovers >= 1


def test_not_leader_with_a_leader_is_followed(cluster: Cluster) -> None:
    with FakeViewService(lambda request: not_leader(cluster.viewservice_address)) as follower:
        # The leader is not among the given addresses: the client learns it from the answer.
        with Client([follower.address], timeout=20) as client:
            client.put("led", "by the leader")
            assert client.get("led") == "by the leader"
            assert client.viewservice.stats.not_leader >= 1
            assert client.viewservice.addresses == [follower.address, cluster.viewservice_address]
            calls = follower.calls
            client.put("led", "again")  # steady state: no view service call at all
            assert follower.calls == calls


def test_not_leader_without_a_leader_moves_to_the_next_address(cluster: Cluster) -> None:
    with FakeViewService(lambda request: not_leader("")) as follower:
        with Client([follower.address, cluster.viewservice_address], timeout=20) as client:
            client.put("rotated", "1")
            assert client.get("rotated") == "1"
            assert follower.calls >= 1 and client.viewservice.stats.not_leader >= 1
            assert client.viewservice.addresses == [follower.address, cluster.viewservice_address]


def test_an_older_view_is_never_accepted() -> None:
    state = {"a": view_response(7, "127.0.0.1:1", acknowledged=True), "b": view_response(5, "127.0.0.1:2")}
    with FakeViewService(lambda r: state["a"]) as a, FakeViewService(lambda r: state["b"]) as b:
        viewservice = ViewServiceClient([a.address, b.address], call_timeout=1)
        try:
            assert viewservice.get_view(time.monotonic() + 5).viewnum == 7
            # a is deposed; b answers from an older view: refused, and nothing else answers.
            state["a"] = not_leader("")
            with pytest.raises(Unavailable, match="older than view 7"):
                viewservice.get_view(time.monotonic() + 5)
            assert viewservice.stats.stale_views >= 1
            assert viewservice.newest.viewnum == 7
            # The same number, unacknowledged, after an acknowledged one: older too.
            state["b"] = view_response(7, "127.0.0.1:2", acknowledged=False)
            with pytest.raises(Unavailable):
                viewservice.get_view(time.monotonic() + 5)
            state["b"] = view_response(8, "127.0.0.1:2")
            assert viewservice.get_view(time.monotonic() + 5).primary == "127.0.0.1:2"
        finally:
            viewservice.close()


def test_every_address_dead_is_unavailable_within_the_deadline() -> None:
    viewservice = ViewServiceClient([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], call_timeout=0.2)
    start = time.monotonic()
    with pytest.raises(Unavailable, match="cannot connect"):
        viewservice.get_view(time.monotonic() + 2)
    assert time.monotonic() - start < 2.5
    assert viewservice.stats.failovers >= 2
