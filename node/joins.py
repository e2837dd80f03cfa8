"""The join handshake over a real websocket (PROTOCOL.md, "Joining"): both drivers of the pure
machines in ``syncq.joining``.

- ``admit_join``: a member's node runs it for an inbound connection whose first message is a
  JOIN_HELLO (``Connection.run`` hands it over), within that connection's limits: the 64 KiB
  frames, the 10 s handshake timeout and the cap on connections in their handshake.
- ``request_grant``: `syncq join` runs it against one address of the code: it dials, proves the
  code and returns what came back (a grant's bytes, a refusal, or a one-line failure).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from syncq.crypto import DeviceKeys
from syncq.errors import InviteRefused, SyncqError
from syncq.frames import CloseCode
from syncq.invite import grant_to_wire
from syncq.joining import MAX_GRANT, Admitter, Granted, Joiner, JoinEvent, JoinFailed, JoinRequested, Refused

from .logs import one_line

if TYPE_CHECKING:
    from syncq.node.connection import Connection

JOIN_TIMEOUT_S = 15.0  # one address: connect, prove the code, get the answer


async def admit_join(conn: Connection, first: bytes) -> tuple[int, str]:
    """Run the member's side of a join on ``conn`` (``first`` is its JOIN_HELLO); returns the
    close code and reason. A relay knows no invites: it answers with the decoy."""
    node, space = conn.node, conn.node.space
    invites = {} if space.is_relay else space.invite_auth_keys()
    admitter = Admitter(node=space.device, challenge=os.urandom(32), invites=invites)
    events = admitter.receive(first)
    while True:
        for event in events:
            if isinstance(event, JoinRequested):
                _answer(conn, admitter, event)
            elif isinstance(event, JoinFailed):
                node.log.event(
                    "join-failed",
                    level="warning",
                    address=conn.address,
                    code=event.code,
                    reason=one_line(event.reason),
                )
        for frame in admitter.data_to_send():
            await conn.ws.send(frame)
        if admitter.closed:
            return admitter.close_code or CloseCode.NORMAL, admitter.close_reason
        try:
            message = await conn.ws.recv()
        except ConnectionClosed:
            return CloseCode.NORMAL, ""
        events = admitter.receive(message if isinstance(message, bytes) else b"")


def _answer(conn: Connection, admitter: Admitter, event: JoinRequested) -> None:
    node = conn.node
    fields = {"device": event.device.hex()[:12], "name": one_line(event.name), "invite": event.invite_id}
    try:
        grant = node.space.admit(
            event.invite_id, device=event.device, exchange=event.exchange, name=event.name
        )
    except InviteRefused as exc:
        admitter.refuse(str(exc))
        node.log.event("join-refused", address=conn.address, reason=one_line(str(exc)), **fields)
        return
    except SyncqError as exc:  # the store failed: nothing was granted, the joiner may retry
        admitter.refuse(f"the member could not record the join: {exc}")
        node.log.event(
            "join-failed", level="error", address=conn.address, reason=one_line(str(exc)), **fields
        )
        return
    admitter.grant(grant_to_wire(grant))
    node.log.event("device-joined", address=conn.address, **fields)
    node.changed()  # the device list's new entry and the used invite go to every peer
    node.invites_changed()


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one address answered: ``grant`` bytes, a member's ``refused`` reason, or a one-line
    ``failure`` (unreachable, forged code, broken handshake)."""

    grant: bytes | None = None
    refused: str | None = None
    failure: str | None = None
    forged: bool = False


async def request_grant(url: str, *, invite_auth: bytes, device: DeviceKeys, name: str) -> Outcome:
    """Ask the member at ``url`` to admit ``device`` with the invite whose auth key is given."""
    unreachable = Outcome(failure=f"no member reachable at {url}: start `syncq node` on the inviting device")
    try:
        async with asyncio.timeout(JOIN_TIMEOUT_S):
            async with connect(url, max_size=MAX_GRANT + 1024, compression=None, open_timeout=10) as ws:
                return await _join(ws, url, invite_auth=invite_auth, device=device, name=name)
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError):
        return unreachable
    except ConnectionClosed as exc:
        why = one_line(exc.rcvd.reason) if exc.rcvd is not None else "the connection closed"
        return Outcome(failure=f"the member at {url} closed the connection: {why or 'no reason given'}")


async def _join(
    ws: ClientConnection, url: str, *, invite_auth: bytes, device: DeviceKeys, name: str
) -> Outcome:
    joiner = Joiner(
        node=device,
        challenge=os.urandom(32),
        invite_auth=invite_auth,
        exchange=device.exchange_public_key,
        name=name,
    )
    while True:
        for frame in joiner.data_to_send():
            await ws.send(frame)
        message = await ws.recv()
        for event in joiner.receive(message if isinstance(message, bytes) else b""):
            outcome = _outcome(url, event)
            if outcome is not None:
                for frame in joiner.data_to_send():  # the ERROR saying why, if this side failed
                    await ws.send(frame)
                return outcome


def _outcome(url: str, event: JoinEvent) -> Outcome | None:
    if isinstance(event, Granted):
        return Outcome(grant=event.grant)
    if isinstance(event, Refused):
        return Outcome(refused=one_line(event.reason))
    if isinstance(event, JoinFailed):
        if event.code == CloseCode.AUTH_FAILED:
            return Outcome(
                failure=f"no member at {url} accepted this code: it is forged or from another space",
                forged=True,
            )
        return Outcome(failure=f"the member at {url} ended the join: {one_line(event.reason)} ({event.code})")
    return None
