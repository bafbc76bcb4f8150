"""The view service, over one or several addresses (README.md, "Calls": several addresses)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from .connection import Connection, code_name, parse_address
from .errors import DeadlineExceeded, ProtocolError, Unavailable


@dataclass(frozen=True)
class View:
    """Who is primary and who is backup ("" for none) in view `viewnum`."""

    viewnum: int
    primary: str
    backup: str
    acknowledged: bool


def parse_addresses(addresses: str | Sequence[str]) -> list[str]:
    """A list of `HOST:PORT`, or one string of them separated by commas; ValueError otherwise."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    result = [item.strip() for item in items if item.strip()]
    if not result:
        raise ValueError("no view service address given")
    for address in result:
        parse_address(address)
    return result


@dataclass
class ViewServiceStats:
    calls: int = 0
    not_leader: int = 0
    failovers: int = 0
    stale_views: int = 0


class ViewServiceClient:
    """Calls the address it believes is the leader. NOT_LEADER naming a leader sends the call
    there at once (the address is learnt if new); NOT_LEADER without one, a refused or lost
    connection or a timeout moves to the next address. A view older than one already returned
    (a deposed leader's) is never accepted: that address is passed over.
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        call_timeout: float = 0.5,
        connect: Optional[Callable[[str, float], Connection]] = None,
    ) -> None:
        self.addresses = parse_addresses(addresses)
        self.call_timeout = call_timeout
        self.stats = ViewServiceStats()
        self._connect = connect or (lambda address, deadline: Connection(address, deadline=deadline))
        self._connections: dict[str, Connection] = {}
        self._current = 0
        self._newest: Optional[View] = None

    @property
    def newest(self) -> Optional[View]:
        """The newest view returned so far."""
        return self._newest

    def get_view(self, deadline: float) -> View:
        """The current view: one round of the known addresses (plus the hops NOT_LEADER hints
        cause), each call bounded by `call_timeout` and `deadline`."""
        problems: list[str] = []
        hops = 2 * len(self.addresses) + 1
        for _ in range(hops):
            now = time.monotonic()
            if now >= deadline:
                break
            address = self.addresses[self._current]
            call_deadline = min(deadline, now + self.call_timeout)
            self.stats.calls += 1
            try:
                connection = self._connection(address, call_deadline)
                schema = connection.schema
                response = connection.call(schema.Request(get_view=schema.GetViewArgs()), call_deadline)
            except (Unavailable, DeadlineExceeded, ProtocolError) as error:
                self._drop(address)
                problems.append(f"{address}: {error}")
                self._move_on(address)
                continue
            if response.code == schema.NOT_LEADER:
                self.stats.not_leader += 1
                leader = getattr(response, "leader", "")  # an older schema may not have the field
                problems.append(f"{address}: not the leader" + (f" (leader: {leader})" if leader else ""))
                if leader and leader != address and self._follow(leader):
                    continue
                self._move_on(address)
                continue
            if response.code != schema.OK or response.WhichOneof("result") != "view":
                problems.append(f"{address}: answered {code_name(schema, response.code)} {response.message}".rstrip())
                self._move_on(address)
                continue
            view = View(
                viewnum=response.view.viewnum,
                primary=response.view.primary,
                backup=response.view.backup,
                acknowledged=bool(getattr(response.view, "acknowledged", False)),
            )
            if self._is_stale(view):
                self.stats.stale_views += 1
                problems.append(f"{address}: answered view {view.viewnum}, older than view {self._newest.viewnum} seen before")
                self._move_on(address)
                continue
            self._newest = view
            return view
        raise Unavailable("no view service answered: " + ("; ".join(problems[-4:]) or "no time left"))

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    # ------------------------------------------------------------------ internals

    def _connection(self, address: str, deadline: float) -> Connection:
        connection = self._connections.get(address)
        if connection is None or connection.closed:
            connection = self._connect(address, deadline)
            self._connections[address] = connection
        return connection

    def _drop(self, address: str) -> None:
        connection = self._connections.pop(address, None)
        if connection is not None:
            connection.close()

    def _is_stale(self, view: View) -> bool:
        newest = self._newest
        if newest is None:
            return False
        return view.viewnum < newest.viewnum or (
            view.viewnum == newest.viewnum and newest.acknowledged and not view.acknowledged)

    def _follow(self, leader: str) -> bool:
        """Makes the leader a NOT_LEADER answer named the current address; False if unusable."""
        try:
            parse_address(leader)
        except ValueError:
            return False
        if leader not in self.addresses:
            self.addresses.append(leader)
        self._current = self.addresses.index(leader)
        return True

    def _move_on(self, address: str) -> None:
        if self.addresses[self._current] == address:
            self._current = (self._current + 1) % len(self.addresses)
            self.stats.failovers += 1
