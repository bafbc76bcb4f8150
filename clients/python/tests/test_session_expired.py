"""SESSION_EXPIRED: the server's duplicate table evicted the client's session. A fake server
(view service and primary in one) scripts the answers."""

from __future__ import annotations

from typing import Optional

import pytest

from fakes import FakeViewService, view_response
from pbkv import Client, SessionExpired
from pbkv import pbkv_pb2 as pb


class ScriptedPrimary:
    """Answers get_view with itself as primary; answers KV calls from `answers` in turn
    ("expired", "ok" or "silent"), recording each KV request's id."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.ids: list[tuple[int, int]] = []
        self.server = FakeViewService(self.script)

    def script(self, request: pb.Request) -> Optional[pb.Response]:
        kind = request.WhichOneof("call")
        if kind in ("ping", "get_view"):
            return view_response(1, self.server.address)
        args = getattr(request, kind)
        self.ids.append((args.id.client_id, args.id.seq))
        answer = self.answers.pop(0) if self.answers else "ok"
        if answer == "silent":
            return None
        code = pb.SESSION_EXPIRED if answer == "expired" else pb.OK
        return pb.Response(code=pb.OK, kv=pb.KVReply(code=code))


def test_expired_at_the_first_attempt_starts_a_new_session() -> None:
    primary = ScriptedPrimary(["ok", "expired", "ok"])
    with primary.server, Client(primary.server.address, timeout=5) as client:
        client.put("a", "1")
        old_id = client.client_id
        client.put("b", "2")  # refused unexecuted at seq 2: retried as seq 1 of a new session
        assert client.stats.new_sessions == 1
        assert client.client_id != old_id
        assert primary.ids == [(old_id, 1), (old_id, 2), (client.client_id, 1)]


def test_expired_on_a_retry_of_a_put_is_an_error_saying_the_outcome_is_unknown() -> None:
    primary = ScriptedPrimary(["ok", "silent", "expired"])
    with primary.server, Client(primary.server.address, timeout=5, attempt_timeout=0.3) as client:
        client.put("a", "1")
        with pytest.raises(SessionExpired, match="may or may not have taken effect"):
            client.put("b", "2")
        old_id = primary.ids[0][0]
        assert primary.ids == [(old_id, 1), (old_id, 2), (old_id, 2)]
        # The next operation uses a new session.
        client.put("c", "3")
        assert primary.ids[-1] == (client.client_id, 1) and client.client_id != old_id


def test_expired_on_a_retry_of_a_get_reads_again_in_a_new_session() -> None:
    primary = ScriptedPrimary(["ok", "silent", "expired", "ok"])
    with primary.server, Client(primary.server.address, timeout=5, attempt_timeout=0.3) as client:
        client.put("a", "1")
        client.get("a")
        assert client.stats.new_sessions == 1
        assert primary.ids[-1] == (client.client_id, 1)
