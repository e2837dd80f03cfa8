"""Attachments over the sync connections: fetching what a job or a user needs, serving peers.

A member fetches a blob only when something here needs it: a job it runs (the scheduler), or a
user (``syncq get``, which writes a want into ``blobs.db``; the node notices through its watch).
A relay fetches what members ask it to keep (KEEP_BLOB: every file added on a member), so that
devices never online together can still exchange files. A node asks connected peers for missing
chunks, at most ``WINDOW`` in flight per peer, and stores each chunk as it arrives, so a broken
connection costs only the chunks in flight: the fetch goes on with the next peer, or the same
one when it reconnects.

Every chunk's relay tag (``auth_key``) is checked before it is stored; a bad chunk is dropped,
counted and asked for again elsewhere. A member also opens every chunk (AEAD) when it saves the
file, and drops and fetches again one that fails.

Checking and writing a chunk (an HMAC over 1 MiB, a 1 MiB write, a SQLite row) happen in one
worker thread, not on the event loop: hashlib, os.pwrite and sqlite3 release the GIL, so the loop
goes on receiving the next chunks meanwhile (on the loop they took about half of the receiving
node's time; on two cores this moved 1.05-1.2x the MiB/s, ``benchmarks/exec.py blobs``). A
connection stops reading while ``MAX_STORING`` of its chunks are in hand, so a peer cannot pile
up memory here.

A node asked for chunks it lacks asks its other peers in turn (up to ``MAX_HOPS`` nodes away),
keeps what arrives and passes it on: this is how a relay, which cannot read a chunk, carries a
blob between two devices that never meet.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncq.blobs import BlobRef, Sealer
from syncq.blobstore import Chunk
from syncq.errors import BlobUnavailable, StoreError, UnknownEpoch
from syncq.peering import BlobEvent
from syncq.protocol import BlobKept, BlobMissing, BlobOffered, BlobReceived, BlobWanted, State
from syncq.watch import wait_event

if TYPE_CHECKING:
    from .connection import Connection
    from .daemon import Node

WINDOW = 8  # chunks in flight per peer: 8 MiB, enough to fill a fast link's pipe (on loopback,
# 4 moved as fast and 16 was 12% slower: more chunks wait behind the store thread)
CHUNK_TIMEOUT_S = 30.0  # a chunk asked for and not come by then is asked for again
FORGET_LACKS_S = 5.0
STALL_S = 60.0  # a fetch that gets nothing for this long, with nobody left to ask, fails
MAX_UNLISTED_OFFERS = 1000  # KEEP_BLOBs held per connection until its peer is listed
MAX_STORING = 4  # chunks per connection checked and written off the loop at once (2 and 8: alike)


@dataclass(slots=True)
class Fetch:
    """One blob being fetched."""

    ref: BlobRef
    hops: int
    missing: set[int]
    asked: dict[int, tuple[str, float]] = field(default_factory=dict)  # index -> (peer, when)
    lacking: dict[str, set[int]] = field(default_factory=dict)  # peer -> indices it has not
    forward: dict[int, set[str]] = field(default_factory=dict)  # index -> peers that want it
    storing: set[int] = field(default_factory=set)  # arrived, being checked and written
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
        self._storing: dict[Connection, set[asyncio.Task[None]]] = {}
        self._offering: dict[Connection, set[bytes]] = {}  # KEEP_BLOBs sent, not yet answered
        # (at a relay) KEEP_BLOBs of peers not listed yet: a member's KEEP_BLOB can come before
        # its device list (sent on connection, while envelopes wait for the HAVE). Answered once
        # the list arrives; never, for a stranger (it asks again on its next connection).
        self._unlisted: dict[Connection, list[BlobOffered]] = {}
        # One thread, not asyncio's pool: with several, the HMACs of 4 chunks competed with the
        # event loop for two cores and the receiving node spent a quarter more CPU per MiB.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-store")

    def close(self) -> None:
        """Wait for the chunks in hand to be stored (a few ms), before the store closes."""
        self._writer.shutdown(wait=True)

    async def forget_unused(self, before: float) -> int:
        """``BlobStore.forget_unused`` on the store thread, so that no chunk is being written
        while its blob is deleted (a record must never outlive its bytes)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self.store.forget_unused, before)

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
                if idle > stall_s and not fetch.asked and not fetch.storing:
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
        waiting = sorted(fetch.missing - fetch.asked.keys() - fetch.storing)
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

    def on_event(self, conn: Connection, event: BlobEvent) -> None:
        """A blob frame from ``conn``'s peer."""
        if isinstance(event, BlobWanted):
            self._wanted(conn, event)
        elif isinstance(event, BlobReceived):
            self._received(conn, event)
        elif isinstance(event, BlobMissing):
            self._missing(conn, event)
        elif isinstance(event, BlobOffered):
            self._keep(conn, event)
        else:
            self._kept(conn, event)

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
        """Ask every connected relay to keep the files added on this device that it has not
        said it keeps: a relay that holds a copy serves it while this device is away."""
        for conn in list(self.node.connections.values()):
            self._offer(conn)

    def _offer(self, conn: Connection) -> None:
        session = conn.session
        if self.space.is_relay or not session.peer_relay or session.state is not State.SYNCING:
            return
        # Recorded only when the relay answers KEPT_BLOB: an offer lost with its connection is
        # made again on the next one. Within a connection, each is sent once.
        sent = self._offering.setdefault(conn, set())
        refs = [r for r in self.store.unoffered(bytes.fromhex(self._peer(conn))) if r.raw_id not in sent]
        for ref in refs:
            session.keep_blob(ref.raw_id, ref.size, ref.epoch)
            sent.add(ref.raw_id)
        if refs:
            conn.wake.set()

    def _kept(self, conn: Connection, event: BlobKept) -> None:
        if event.blob_id in self._offering.get(conn, set()):  # only what was offered: no junk rows
            self.store.offered_to(bytes.fromhex(self._peer(conn)), [event.blob_id])

    def _keep(self, conn: Connection, event: BlobOffered) -> None:
        """A member asks this relay to keep a blob: it becomes a want, fetched (from that
        member, or any peer) now and after a restart until it is complete."""
        if not self.space.is_relay:
            return  # members fetch what their jobs and users need, when they need it
        ref = BlobRef.by_id(event.blob_id, event.size, event.epoch)
        peer = conn.session.peer_id
        if peer is None or not self.space.replica.listed(bytes.fromhex(peer)):
            waiting = self._unlisted.setdefault(conn, [])
            if len(waiting) < MAX_UNLISTED_OFFERS:
                waiting.append(event)
            return
        if refused := self._too_big(ref) or self._over_quota(peer, ref):
            self.node.log.event(
                "blob-refused", level="warning", peer=conn.label, blob=ref.id[:12], reason=refused
            )
        elif not self.store.complete(ref):
            self.store.want(ref)  # stored before the answer: the member will not ask again
            self.fetch_wanted()
        conn.session.kept_blob(ref.raw_id)  # a refusal too: asking again would not change it
        conn.wake.set()

    def disconnected(self, conn: Connection) -> None:
        """A peer is gone: what was asked of it is asked of others."""
        self._offering.pop(conn, None)  # unanswered offers are made again on reconnection
        self._unlisted.pop(conn, None)
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
        # Fetching on a peer's behalf keeps what arrives: a relay with a device list does that
        # only for listed members, or a relay code would buy disk through WANT_BLOBs.
        forwards = self.space.replica.listed(bytes.fromhex(self._peer(conn)))
        if lacking and event.hops > 0 and others and forwards and event.size <= self.space.blob_limit:
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

    async def throttle(self, conn: Connection) -> None:
        """Return once fewer than ``MAX_STORING`` chunks from ``conn`` are being stored: its
        reader waits here, so the websocket's buffer fills and TCP slows the peer down."""
        jobs = self._storing.get(conn)
        while jobs and len(jobs) >= MAX_STORING:
            await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)

    def _received(self, conn: Connection, event: BlobReceived) -> None:
        fetch = self.fetches.get(event.blob_id)
        if fetch is None or event.index not in fetch.missing or event.index in fetch.storing:
            return  # not asked for (or here already): a peer cannot fill this disk unasked
        fetch.asked.pop(event.index, None)
        try:
            sealer = self._sealer(event.epoch)
        except UnknownEpoch:
            self._refuse(conn, fetch, event, f"is of unknown epoch {event.epoch}")
            return
        fetch.storing.add(event.index)
        job = asyncio.ensure_future(self._store(conn, fetch, event, sealer))
        jobs = self._storing.setdefault(conn, set())
        jobs.add(job)
        job.add_done_callback(lambda done: self._stored_job(conn, done))
        self._pump(fetch)  # the peer has room in its window again

    def _stored_job(self, conn: Connection, job: asyncio.Task[None]) -> None:
        jobs = self._storing.get(conn, set())
        jobs.discard(job)
        if not jobs:
            self._storing.pop(conn, None)

    async def _store(self, conn: Connection, fetch: Fetch, event: BlobReceived, sealer: Sealer) -> None:
        chunk = Chunk(event.blob_id, event.index, event.size, event.epoch, event.sealed, event.tag)
        loop = asyncio.get_running_loop()
        try:
            sound = await loop.run_in_executor(self._writer, self._check_and_put, sealer, chunk)
        except (StoreError, OSError) as exc:
            self.node.log.event("store-failed", level="error", reason=str(exc))
            sound = None
        finally:
            fetch.storing.discard(event.index)
        if sound is None:
            return  # still missing: asked for again by the next pump
        if not sound:
            self._refuse(conn, fetch, event, "has a bad tag")
        else:
            self._completed(fetch, chunk)

    def _check_and_put(self, sealer: Sealer, chunk: Chunk) -> bool:
        """In a worker thread: store the chunk if its tag is sound; whether it was.

        The tag is all a relay can check, and it is enough to refuse what changed on the way.
        A member opens every chunk (AEAD) when it saves the file and drops one that fails, so a
        chunk forged by a holder of auth_key costs a refetch, never a wrong file; checking the
        AEAD here as well cost 40% of the transfer's time.
        """
        if not sealer.check_tag(chunk.blob_id, chunk.size, chunk.index, chunk.sealed, chunk.tag):
            return False
        self.store.put_chunk(chunk)
        return True

    def _refuse(self, conn: Connection, fetch: Fetch, event: BlobReceived, why: str) -> None:
        self.rejected += 1
        reason = f"chunk {event.index} of {event.blob_id.hex()[:12]} {why}"
        self.node.log.event("blob-rejected", level="warning", peer=conn.label, reason=reason)
        fetch.lacking.setdefault(self._peer(conn), set()).add(event.index)  # ask someone else first
        self._pump(fetch)

    def _completed(self, fetch: Fetch, chunk: Chunk) -> None:
        """A chunk is stored: pass it on to peers that asked us for it; finish the fetch."""
        fetch.missing.discard(chunk.index)
        fetch.last_progress = time.monotonic()
        for wanting in fetch.forward.pop(chunk.index, set()):
            target = self.node.connections.get(wanting)
            if target is not None:
                target.session.send_chunk(*_fields(chunk))
                target.wake.set()
        if fetch.missing:
            self._pump(fetch)
        elif not fetch.done.is_set():
            if self.fetches.get(chunk.blob_id) is fetch:
                del self.fetches[chunk.blob_id]
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

    def envelopes_stored(self) -> None:
        """New envelopes are stored here: KEEP_BLOBs of peers that were not listed are tried
        again (a device list among them may list their senders now)."""
        for conn in list(self._unlisted):
            peer = conn.session.peer_id
            if peer is not None and self.space.replica.listed(bytes.fromhex(peer)):
                for event in self._unlisted.pop(conn):
                    self._keep(conn, event)

    def _over_quota(self, peer: str, ref: BlobRef) -> str:
        """Why this relay will not keep ``ref`` for the member ``peer`` (empty: it keeps it,
        counted against the member's ``relay_quota``). The peer is the session's authenticated
        node id, and at a relay with a device list a listed member: fresh keys earn no quota."""
        used = self.store.keep(ref, bytes.fromhex(peer), self.space.relay_quota, time.time())
        if used is None:
            return ""
        return (
            f"keeping {ref.size} more bytes for this member would pass this relay's relay_quota of "
            f"{self.space.relay_quota} bytes ({used} kept); its older files stay"
        )

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
