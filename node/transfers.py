"""Attachments over the sync connections: fetching what a job or a user needs, serving peers.

A node fetches a blob only when something here needs it: a job it runs (the scheduler), or a
user (``syncq get``, which writes a want into ``blobs.db``; the node notices through its watch).
It asks connected peers for missing chunks, at most ``WINDOW`` in flight per peer, and stores
each chunk as it arrives, so a broken connection costs only the chunks in flight: the fetch goes
on with the next peer, or the same one when it reconnects.

Every chunk is checked before it is stored: its relay tag (``auth_key``) by every node, and its
AEAD by a member. A bad chunk is dropped, counted and asked for again elsewhere; it never
reaches the store.

A node asked for chunks it lacks asks its other peers in turn (up to ``MAX_HOPS`` nodes away),
keeps what arrives and passes it on: this is how a relay, which cannot read a chunk, carries a
blob between two devices that never meet.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncq.blobs import BlobRef, Sealer
from syncq.blobstore import Chunk
from syncq.errors import BlobUnavailable, StoreError, UnknownEpoch
from syncq.protocol import BlobMissing, BlobOffered, BlobReceived, BlobWanted, State
from syncq.watch import wait_event

if TYPE_CHECKING:
    from .connection import Connection
    from .daemon import Node

WINDOW = 8  # chunks in flight per peer: 8 MiB, enough to fill a fast link's pipe
CHUNK_TIMEOUT_S = 30.0  # a chunk asked for and not come by then is asked for again
FORGET_LACKS_S = 5.0
STALL_S = 60.0  # a fetch that gets nothing for this long, with nobody left to ask, fails


@dataclass(slots=True)
class Fetch:
    """One blob being fetched."""

    ref: BlobRef
    hops: int
    missing: set[int]
    asked: dict[int, tuple[str, float]] = field(default_factory=dict)  # index -> (peer, when)
    lacking: dict[str, set[int]] = field(default_factory=dict)  # peer -> indices it has not
    forward: dict[int, set[str]] = field(default_factory=dict)  # index -> peers that want it
    done: asyncio.Event = field(default_factory=asyncio.Event)
    last_progress: float = field(default_factory=time.monotonic)

    @property
    def blob_id(self) -> bytes:
        return self.ref.raw_id


class Transfers:
    """The node's blob fetches and answers."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.space = node.space
        self.store = node.space.blobs
        self.fetches: dict[bytes, Fetch] = {}
        self.rejected = 0  # chunks refused (bad tag, failed AEAD)
        self._sealers: dict[int, Sealer] = {}

    # -- fetching ----------------------------------------------------------------------------

    async def fetch(self, ref: BlobRef, stall_s: float = STALL_S) -> None:
        """Return once every chunk of ``ref`` is stored here. Raises ``BlobUnavailable`` if no
        chunk arrives for ``stall_s`` seconds and no connected peer is left to ask."""
        if self.store.complete(ref):
            return
        if too_big := self._too_big(ref):
            raise BlobUnavailable(too_big)
        fetch = self._start(ref, hops=2)
        while not fetch.done.is_set():
            if not await wait_event(fetch.done, 1.0):
                self._retry(fetch)
                idle = time.monotonic() - fetch.last_progress
                if idle > stall_s and not fetch.asked:
                    self.fetches.pop(fetch.blob_id, None)
                    raise BlobUnavailable(self._why_unavailable(fetch)) from None

    def fetch_wanted(self) -> None:
        """Start fetches for what local processes asked for (``syncq get``)."""
        for ref in self.store.wants():
            if ref.raw_id not in self.fetches:
                self.node.spawn(self._fetch_quietly(ref))

    async def _fetch_quietly(self, ref: BlobRef) -> None:
        try:
            await self.fetch(ref)
        except BlobUnavailable as exc:
            self.node.log.event("blob-unavailable", level="warning", blob=ref.id[:12], reason=str(exc))

    def _start(self, ref: BlobRef, hops: int) -> Fetch:
        fetch = self.fetches.get(ref.raw_id)
        if fetch is None:
            missing = set(self.store.missing(ref.raw_id, ref.size))
            fetch = self.fetches[ref.raw_id] = Fetch(ref=ref, hops=hops, missing=missing)
            self.node.log.event("blob-fetch", blob=ref.id[:12], size=ref.size, missing=len(missing))
        self._pump(fetch)
        return fetch

    def _pump(self, fetch: Fetch, exclude: str = "") -> None:
        """Ask peers for the missing chunks nobody has been asked for, WINDOW per peer."""
        waiting = sorted(fetch.missing - fetch.asked.keys())
        if not waiting:
            return
        busy: dict[str, int] = {}
        for peer, _ in fetch.asked.values():
            busy[peer] = busy.get(peer, 0) + 1
        now = time.monotonic()
        for peer, conn in list(self.node.connections.items()):
            if peer == exclude or not waiting or conn.session.state is not State.SYNCING:
                continue
            lacks = fetch.lacking.get(peer, set())
            room = WINDOW - busy.get(peer, 0)
            mine = [i for i in waiting if i not in lacks][: max(0, room)]
            if not mine:
                continue
            for index in mine:
                fetch.asked[index] = (peer, now)
            waiting = [i for i in waiting if i not in fetch.asked]
            conn.session.want_blob(fetch.blob_id, fetch.ref.size, fetch.ref.epoch, mine, fetch.hops)
            conn.wake.set()

    def _retry(self, fetch: Fetch) -> None:
        now = time.monotonic()
        for index, (_, when) in list(fetch.asked.items()):
            if now - when > CHUNK_TIMEOUT_S:
                del fetch.asked[index]
        if not fetch.asked and now - fetch.last_progress > FORGET_LACKS_S:
            fetch.lacking.clear()  # a peer that lacked a chunk may have fetched it since
        self._pump(fetch)

    def _why_unavailable(self, fetch: Fetch) -> str:
        name = fetch.ref.name
        if not self.node.connections:
            return f"{name}: no peer is connected to fetch it from"
        return (
            f"{name}: none of the {len(self.node.connections)} connected peers has "
            f"{len(fetch.missing)} of its {fetch.ref.chunks} chunks"
        )

    # -- events from connections ------------------------------------------------------------

    def on_event(
        self, conn: Connection, event: BlobWanted | BlobReceived | BlobMissing | BlobOffered
    ) -> None:
        """A blob frame from ``conn``'s peer."""
        if isinstance(event, BlobWanted):
            self._wanted(conn, event)
        elif isinstance(event, BlobReceived):
            self._received(conn, event)
        elif isinstance(event, BlobMissing):
            self._missing(conn, event)
        else:
            self._keep(conn, event)

    def connected(self, conn: Connection) -> None:
        """A peer is back: ask it for what is still missing (a fetch that gave up included),
        and a relay to keep this device's own files."""
        for fetch in list(self.fetches.values()):
            fetch.lacking.pop(self._peer(conn), None)
            self._pump(fetch)
        self.fetch_wanted()
        self._offer(conn)

    # -- relays keep copies ------------------------------------------------------------------

    def offer_to_relays(self) -> None:
        """Ask every connected relay to keep the files added on this device since it was last
        asked: a relay that holds a copy serves it while this device is away."""
        for conn in list(self.node.connections.values()):
            self._offer(conn)

    def _offer(self, conn: Connection) -> None:
        session = conn.session
        if self.space.is_relay or not session.peer_relay or session.state is not State.SYNCING:
            return
        peer = bytes.fromhex(self._peer(conn))
        refs = self.store.unoffered(peer)
        for ref in refs:
            session.keep_blob(ref.raw_id, ref.size, ref.epoch)
        # Recorded as sent: the relay records each as a want when the frame arrives, so only a
        # frame lost with the connection goes unkept (the file is still fetched from here).
        self.store.offered_to(peer, refs)
        if refs:
            conn.wake.set()

    def _keep(self, conn: Connection, event: BlobOffered) -> None:
        """A member asks this relay to keep a blob: it becomes a want, fetched (from that
        member, or any peer) now and after a restart until it is complete."""
        if not self.space.is_relay:
            return  # members fetch what their jobs and users need, when they need it
        ref = BlobRef.by_id(event.blob_id, event.size, event.epoch)
        if too_big := self._too_big(ref):
            self.node.log.event("blob-refused", level="warning", peer=conn.label, reason=too_big)
            return
        if not self.store.complete(ref):
            self.store.want(ref)
            self.fetch_wanted()

    def disconnected(self, conn: Connection) -> None:
        """A peer is gone: what was asked of it is asked of others."""
        peer = self._peer(conn)
        for fetch in list(self.fetches.values()):
            for index, (asked_of, _) in list(fetch.asked.items()):
                if asked_of == peer:
                    del fetch.asked[index]
            for wanting in fetch.forward.values():
                wanting.discard(peer)
            self._pump(fetch)

    def _wanted(self, conn: Connection, event: BlobWanted) -> None:
        lacking = []
        for index in event.indices:
            chunk = self.store.chunk(event.blob_id, index)
            if chunk is None:
                lacking.append(index)
            else:
                conn.session.send_chunk(*_fields(chunk))
        others = [
            p
            for p, c in self.node.connections.items()
            if p != self._peer(conn) and c.session.state is State.SYNCING
        ]
        if lacking and event.hops > 0 and others and event.size <= self.space.blob_limit:
            ref = BlobRef.by_id(event.blob_id, event.size, event.epoch)
            fetch = self.fetches.get(event.blob_id) or Fetch(
                ref=ref, hops=event.hops - 1, missing=set(self.store.missing(event.blob_id, event.size))
            )
            self.fetches[event.blob_id] = fetch
            for index in lacking:
                fetch.forward.setdefault(index, set()).add(self._peer(conn))
                fetch.missing.add(index)
            self._pump(fetch, exclude=self._peer(conn))
            lacking = [i for i in lacking if i not in fetch.asked]  # nobody else to ask for these
        if lacking:
            conn.session.no_blob(event.blob_id, lacking)
        conn.wake.set()

    def _received(self, conn: Connection, event: BlobReceived) -> None:
        fetch = self.fetches.get(event.blob_id)
        if fetch is None or event.index not in fetch.missing:
            return  # not asked for (or here already): a peer cannot fill this disk unasked
        peer = self._peer(conn)
        fetch.asked.pop(event.index, None)
        problem = self._check(event)
        if problem:
            self.rejected += 1
            self.node.log.event("blob-rejected", level="warning", peer=conn.label, reason=problem)
            fetch.lacking.setdefault(peer, set()).add(event.index)  # ask someone else first
            self._pump(fetch)
            return
        chunk = Chunk(event.blob_id, event.index, event.size, event.epoch, event.sealed, event.tag)
        try:
            self.store.put_chunk(chunk)
        except (StoreError, OSError) as exc:
            self.node.log.event("store-failed", level="error", reason=str(exc))
            return
        fetch.missing.discard(event.index)
        fetch.last_progress = time.monotonic()
        for wanting in fetch.forward.pop(event.index, set()):
            target = self.node.connections.get(wanting)
            if target is not None:
                target.session.send_chunk(*_fields(chunk))
                target.wake.set()
        if fetch.missing:
            self._pump(fetch)
        else:
            self.fetches.pop(event.blob_id, None)
            fetch.done.set()
            self.node.log.event("blob-fetched", blob=fetch.ref.id[:12], size=fetch.ref.size)

    def _missing(self, conn: Connection, event: BlobMissing) -> None:
        fetch = self.fetches.get(event.blob_id)
        if fetch is None:
            return
        peer = self._peer(conn)
        lacks = fetch.lacking.setdefault(peer, set())
        for index in event.indices:
            lacks.add(index)
            if fetch.asked.get(index, ("",))[0] == peer:
                del fetch.asked[index]
        self._pump(fetch)
        # Peers that asked us for chunks nobody here can get are told so at once.
        for index in event.indices:
            if index in fetch.asked:
                continue
            for wanting in fetch.forward.pop(index, set()):
                target = self.node.connections.get(wanting)
                if target is not None:
                    target.session.no_blob(event.blob_id, [index])
                    target.wake.set()

    def _check(self, event: BlobReceived) -> str:
        """Why a chunk must be refused, or "" if it is sound."""
        try:
            sealer = self._sealer(event.epoch)
        except UnknownEpoch:
            return f"chunk {event.index} of {event.blob_id.hex()[:12]} is of unknown epoch {event.epoch}"
        # The tag is all a relay can check, and it is enough to refuse what changed on the way.
        # A member opens every chunk (AEAD) when it saves the file and drops one that fails, so
        # a chunk forged by a holder of auth_key costs a refetch, never a wrong file; checking the
        # AEAD here as well cost 40% of the transfer's time.
        if not sealer.check_tag(event.blob_id, event.size, event.index, event.sealed, event.tag):
            return f"chunk {event.index} of {event.blob_id.hex()[:12]} has a bad tag"
        return ""

    def _too_big(self, ref: BlobRef) -> str:
        limit = self.space.blob_limit
        return (
            f"{ref.name} is {ref.size} bytes, over this node's blob_limit of {limit}"
            if ref.size > limit
            else ""
        )

    def _sealer(self, epoch: int) -> Sealer:
        if epoch not in self._sealers:
            self._sealers[epoch] = Sealer(self.space.keys, epoch)
        return self._sealers[epoch]

    @staticmethod
    def _peer(conn: Connection) -> str:
        return str(conn.session.peer_id)


def _fields(chunk: Chunk) -> tuple[bytes, int, int, int, bytes, bytes]:
    return (chunk.blob_id, chunk.size, chunk.epoch, chunk.index, chunk.sealed, chunk.tag)
