"""One websocket connection: moves bytes between the socket and a ``Peering``.

Two tasks per connection: the reader feeds every message to the peering (which verifies and
stores envelopes, then acknowledges them); the sender waits to be woken (the peer's HAVE, an
acknowledgement, a new local envelope) and sends batches while the flow-control window allows.
A stalled peer only ever blocks its own tasks.

Until the peer's AUTH verifies, the websocket admits messages of at most 64 KiB
(``MAX_HANDSHAKE_FRAME``, set where the daemon opens it): a stranger cannot make the node buffer
8 MiB per connection. The limit rises to ``MAX_FRAME_SIZE`` the moment the session says the peer
is authenticated. Everything the peer says (its ERROR reason, its name) is logged through
``logs.one_line``: one line, no control characters.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from websockets.asyncio.connection import Connection as WebSocket
from websockets.exceptions import ConnectionClosed

from syncq.joining import is_join_hello
from syncq.peering import BlobEvent, Peering
from syncq.protocol import MAX_FRAME_SIZE, CloseCode, PeerClosed, Role, SessionFailed, State

from .joins import admit_join
from .logs import one_line

if TYPE_CHECKING:
    from syncq.node.daemon import Node

HANDSHAKE_TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 1.0


class Connection:
    """A peer connection, inbound or outbound; it is also the peering's hooks."""

    def __init__(self, node: Node, ws: WebSocket, role: Role, url: str | None) -> None:
        self.node = node
        self.ws = ws
        self.url = url
        self.peering = Peering(node.space, role, hooks=self)
        self.session = self.peering.session
        self.wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._last_progress = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.error: str | None = None  # why a session that never got past AUTH ended
        self._join_close: tuple[int, str] | None = None  # set when this connection was a join

    @property
    def address(self) -> str:
        """The peer's ip:port, as this socket sees it."""
        try:
            host, port = self.ws.remote_address[:2]
        except (TypeError, ValueError):
            return "?"
        return f"{host}:{port}"

    @property
    def key(self) -> str:
        """How the peers table names this peer."""
        return self.url or f"inbound:{self.session.peer_id}"

    @property
    def label(self) -> str:
        """A short human name for log lines."""
        peer = self.session.peer_id
        who = one_line(self.peering.peer_name) or (peer[:12] if peer else "unknown peer")
        return f"{who} ({self.url or self.address})"

    async def run(self) -> None:
        """Run the session until either side ends it; always closes the websocket."""
        sender = asyncio.create_task(self._send_loop())
        timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)
        try:
            await self._flush()
            syncing = False
            async for message in self.ws:
                if not self.bytes_in and isinstance(message, bytes) and self._is_join(message):
                    self._join_close = await admit_join(self, message)
                    break
                self.bytes_in += len(message)
                self.peering.receive(message if isinstance(message, bytes) else b"")
                if not syncing and self.session.state is State.SYNCING:
                    syncing = True
                    # Only now: a peer that refuses this device (4410) does so at its AUTH, after
                    # this side has accepted the peer's, and sends no HAVE.
                    self.node.log.event("peer-connected", peer=self.label, relay=self.session.relay)
                    self.node.transfers.connected(self)  # blob frames are allowed from now on
                if self.peering.wants_to_send:
                    self.wake.set()
                await self._flush()
                await self.node.transfers.throttle(self)  # backpressure: blob chunks in hand
                if not self.peering.open:
                    break
        except ConnectionClosed:
            self._closed_early()
        finally:
            timer.cancel()
            sender.cancel()
            await self.close()
            self.node.disconnected(self)

    def _is_join(self, message: bytes) -> bool:
        """Whether an inbound connection opens with a JOIN_HELLO: a device with an invite code
        (PROTOCOL.md, "Joining"), not a peer."""
        return self.url is None and is_join_hello(message)

    async def close(self) -> None:
        """Send what the session queued (its ERROR, if it failed) and close the websocket."""
        if self._join_close is not None:  # the join said its last word itself
            code, reason = self._join_close
            await self.ws.close(code if 4000 <= code <= 4999 else CloseCode.NORMAL, reason[:120])
            return
        await self._flush()
        code = self.session.close_code or CloseCode.NORMAL
        if not (code == 1000 or 4000 <= code <= 4999):
            code = CloseCode.NORMAL
        await self.ws.close(code, self.session.close_reason[:120])

    # -- hooks of the peering --------------------------------------------------------------

    def authenticated(self, peering: Peering) -> bool:
        """Register with the node; False for a duplicate connection to the same peer. The peer
        proved itself: its frames may now be as large as ``MAX_FRAME_SIZE``."""
        self.ws.protocol.max_message_size = MAX_FRAME_SIZE
        return self.node.connected(self)

    def stored(self, peering: Peering, added: int) -> None:
        """Gossip: offer what arrived to every other peer."""
        self.node.stored(self, added)

    def blob(self, peering: Peering, event: BlobEvent) -> None:
        """Attachments: the node's transfers answer wants and take chunks."""
        self.node.transfers.on_event(self, event)

    def ended(self, peering: Peering, event: SessionFailed | PeerClosed) -> None:
        """Log why the session ended (with the peer's address), and remember why a session
        that never got past AUTH ended, for `syncq peers` on this side."""
        failed = isinstance(event, SessionFailed)
        reason = one_line(event.reason)
        self.node.log.event(
            "peer-failed" if failed else "peer-closed",
            level="warning" if failed else "info",
            peer=self.label,
            address=self.address,
            code=int(event.code),
            reason=reason,
        )
        # A device-list refusal (4410) comes after the peer's AUTH verified: remember it too.
        early = self.session.peer_id is None or event.code == CloseCode.NOT_LISTED
        if early and event.code != CloseCode.NORMAL:
            who = "refused the peer" if failed else "refused by the peer"
            self.error = f"{who}: {reason} ({int(event.code)})"

    # -- internals ---------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.peering.send_batch():
                await self._flush()
            await self._flush()  # blob frames queued by another connection's events
            now = time.monotonic()
            if self.session.peer_id is not None and now - self._last_progress >= PROGRESS_EVERY_S:
                self._last_progress = now
                self.node.progress(self)

    async def _flush(self) -> None:
        # One lock keeps the session's frames in order across the reader and sender tasks.
        async with self._send_lock:
            for frame in self.peering.data_to_send():
                try:
                    await self.ws.send(frame)
                    self.bytes_out += len(frame)
                except ConnectionClosed:
                    return

    def _closed_early(self) -> None:
        """The websocket closed before the session did (no ERROR frame came)."""
        code, reason = self.ws.close_code, self.ws.close_reason or "connection closed"
        if self.session.peer_id is None and self.error is None and code not in (None, 1000):
            self.error = f"closed by the peer: {one_line(reason)} ({code})"

    def _handshake_timeout(self) -> None:
        # Until SYNCING, not just AUTH: a HAVE lost on the way (a man in the middle dropping it,
        # with nothing after it to fail its tag) would leave the session waiting for ever.
        if self.session.state is not State.SYNCING and self.peering.open:
            self.peering.fail(CloseCode.TIMEOUT, "handshake took too long")
            self.node.spawn(self.close())
