"""Failover of the primary (SIGKILL) under a client, on clusters of their own."""

from __future__ import annotations

import threading
import time
from typing import Callable

from conftest import Cluster, start_replicated, wait_for
from pbkv import Client, put_hash_value


def test_put_hash_retried_across_a_primary_sigkill_is_applied_once(make_cluster: Callable[[], Cluster]) -> None:
    cluster = make_cluster()
    # The first primary runs every call but loses every reply: the client's PutHash is applied
    # (on the primary and its backup) and the client, hearing nothing, retries it with the
    # same request id — to the same primary, then to the backup once the primary is killed.
    primary = cluster.start_server("--fault-drop-replies", "1", "--fault-seed", "7")
    cluster.wait_for_view(lambda v: v.primary == primary and v.acknowledged, "the lossy server to be primary")
    backup = cluster.start_server()
    cluster.wait_for_view(lambda v: v.backup == backup and v.acknowledged, "the backup to hold the state")

    with Client(cluster.viewservice_address, timeout=30, attempt_timeout=0.3) as client:
        outcome: dict[str, object] = {}

        def put_hash() -> None:
            try:
                outcome["previous"] = client.put_hash("once", "x")
            except Exception as error:  # reported by the assertions below
                outcome["error"] = error

        thread = threading.Thread(target=put_hash)
        thread.start()
        try:
            # Three unanswered attempts at the primary: the first ran long before the third went out.
            wait_for(lambda: client.stats.attempts >= 3, within=15, what="three attempts at the lossy primary")
            assert "previous" not in outcome and "error" not in outcome
            cluster.servers[primary].kill()
        finally:
            thread.join(timeout=40)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["previous"] == "", "the retry got the original reply (the key was absent)"
        assert client.connection.address == backup
        assert client.stats.operations == 1 and client.stats.attempts >= 4

    view = cluster.wait_for_view(lambda v: v.primary == backup, "the backup to be primary", within=1)
    assert view.primary == backup
    with Client(cluster.viewservice_address, timeout=20) as reader:
        once = put_hash_value("", "x")
        assert reader.get("once") == once, "applied exactly once (twice would store a hash of the hash)"
        assert reader.put_hash("once", "y") == once


def test_acknowledged_writes_survive_the_primary(make_cluster: Callable[[], Cluster]) -> None:
    cluster = make_cluster()
    primary, backup = start_replicated(cluster)
    spare = cluster.start_server()
    with Client(cluster.viewservice_address, timeout=30) as client:
        for i in range(50):
            client.put(f"k{i}", f"v{i}")
        cluster.servers[primary].kill()
        start = time.monotonic()
        assert client.get("k0") == "v0"  # waits out the failover
        assert time.monotonic() - start < 15
        assert [client.get(f"k{i}") for i in range(50)] == [f"v{i}" for i in range(50)]
        assert client.connection.address == backup
    cluster.wait_for_view(lambda v: v.primary == backup and v.backup == spare and v.acknowledged, "the spare as backup")
