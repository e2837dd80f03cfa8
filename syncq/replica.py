"""A space's replica: its envelopes in the store, and the Doc kept in step with them.

``Space`` writes through it and reads its ``log``; the sync layer (``peering``) exchanges
envelopes through it. The Doc is only a cache of the envelopes: it is loaded from the last
checkpoint, then brought up to date per author in seq order, holding back any envelope that
arrives after a gap until the missing one comes (applying out of order is quadratic in pycrdt,
and a gap must never be skipped). Every process that opens a space uses a fresh random Yjs
client id (DESIGN.md section 4).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncq import authorship, crypto, epochs, roster, snapshots, view
from syncq.crypto import DeviceKeys, Kind, SpaceKeys
from syncq.entries import Raw
from syncq.errors import (
    BadRoster,
    DiskFull,
    EnvelopeRejected,
    ForgedRecord,
    MalformedRecord,
    SeqConflict,
    UnknownEpoch,
    Unlisted,
)
from syncq.lifecycle import Status
from syncq.snapshots import Head, Snapshot
from syncq.store import Checkpoint, Row, Store
from syncq.viewstore import VOIDS_META, Reader, ViewState

if TYPE_CHECKING:
    from syncq.log import Changes, Log
    from syncq.records import Prompt

# The device list in the store's meta table (PROTOCOL.md, "Device list (roster)"): the space's
# root and this device's own chain of entries (what the entries it signs extend). Who is listed
# is worked out from the device-list envelopes themselves (``listing``).
ROOT_META = "roster.root"
CHAIN_META = "roster.chain"
CHECKPOINT_AFTER = 256  # envelopes replayed on open before a fresh checkpoint is written
FOLD_MOST = 8  # prompts whose rows an own write carries; more wait for the next flush
SNAPSHOT_FAR = 1000  # envelopes a peer lacks before it is sent a snapshot instead
# Pruning (``Replica.prune``): when the floor stood where (so that envelopes are dropped only once
# covered for the retention period), and what each peer said it holds, and when.
MARKS_META = "prune.marks"
PEERS_META = "prune.peers"
MAX_MARKS = 64
NOTE_PEER_MS = 1000
BOOTSTRAP_BELOW = 100  # prompts a Doc holds under which a snapshot taken replaces it (``_take``)
_CLIENT_ID_BITS = 53  # Yjs client ids stay below 2**53; random, fresh for every process


def new_client_id(entropy: Callable[[int], bytes]) -> int:
    """A random Yjs client id."""
    return int.from_bytes(entropy(8), "big") % ((1 << _CLIENT_ID_BITS) - 1) + 1


@dataclass(slots=True)
class ReceiveReport:
    """What ``Space.receive`` did with a batch of envelopes from elsewhere."""

    added: int = 0  # stored now, quarantined ones included
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # dropped, never stored
    quarantined: dict[str, int] = field(default_factory=dict)  # stored, never applied (or held)
    accepted: list[tuple[bytes, int]] = field(default_factory=list)  # stored now or before
    # A relay's refusals that do not fail the batch (PROTOCOL.md, "Device list"): envelopes of
    # authors not on the list, and device lists that do not chain to the root. A member may
    # pass them on in good faith; they are counted as rejections but the rest is stored.
    refused: dict[str, int] = field(default_factory=dict)
    control: bool = False  # a device list or a key epoch came: who is listed, or the keys, changed


@dataclass(frozen=True, slots=True)
class SnapshotReport:
    """What ``Replica.receive_snapshot`` did with a snapshot from elsewhere."""

    kept: bool = False  # held now (it covers what no held snapshot does)
    added: int = 0  # envelopes it covers that this device lacked
    rejected: str | None = None  # why it was refused (the reason of an ``EnvelopeRejected``)


class Replica:
    """The envelopes of one space on this device and the Doc built from them."""

    def __init__(
        self,
        store: Store,
        keys: SpaceKeys,
        entropy: Callable[[int], bytes],
        lock: threading.RLock,
        clock: Callable[[], int] = lambda: 0,
    ) -> None:
        self.store = store
        self.clock = clock  # ms: when snapshots came and peers were seen, for pruning
        self.keys = keys
        self._entropy = entropy
        self._lock = lock
        self._log: Log | None = None
        self._applied: dict[bytes, int] = {}  # per author: highest seq applied, gapless
        self._root: bytes | None = None
        self._control: tuple[int, list[Row]] | None = None  # (data version, device lists and keys)
        self._lists: tuple[list[Row], list[roster.Held]] | None = None
        self._listing: tuple[list[roster.Held], roster.Listing] | None = None
        self._rotations: tuple[list[Row], list[tuple[bytes, epochs.Rotation]]] | None = None
        self._waiting: dict[bytes, int] = {}  # per author held for a key: the epoch it needs
        # The local view (syncq.view): prompts changed since it was last written, the store's
        # generation it was last brought to here, and whether it must be written whole.
        self._dirty: Changes | None = None
        self._view_generation: int | None = None
        self._rebuild = False
        self._filling = False  # a rebuild written in part: the rest comes as changed prompts
        self._view_keys: view.Keys | None = None
        self._folded: set[str] = set()  # rows handed to the write in progress (``own_rows``)
        self._view_devices = -1  # how many devices the view's state counts
        self._voids: str | None = None  # the store's count of voids when the Doc was loaded
        self._held: tuple[int, list[Head]] | None = None  # (data version, snapshots held)
        self._noted: dict[bytes, int] = {}  # per peer: when its holdings were last written down
        self._rewrite = False  # a held snapshot may no longer be given: write one of this Doc
        self._too_big = False  # the Doc is past what a snapshot may hold

    @property
    def log(self) -> Log:
        """The Doc, loaded on first use and brought up to date with the store on every access
        (other processes may have written)."""
        with self._lock:
            if self._log is None:
                self._log = self._load()
            else:
                self._catch_up(self._log)
            return self._log

    def catch_up(self) -> None:
        """Apply what the store holds beyond the Doc (if the Doc is loaded at all)."""
        with self._lock:
            if self._log is not None:
                self._catch_up(self._log)

    def flush_view(self, most: int | None = None) -> bool:
        """Bring the local view up to the Doc (if the Doc is loaded). Writes of this process
        carry their rows themselves (``own_rows``); what came from elsewhere is written here,
        in one transaction for whatever changed since the last flush: the node calls it a few
        times a second (``viewstore.NODE_FLUSH_S``), a process that loaded the Doc on close. A flush per
        received envelope tripled the cost of receiving one. With ``most``, at most that many
        prompts are written now and the rest at the next call (a node's loop is not held up
        for long after a burst, or a rebuild); the view covers the store only once all are.
        Returns whether prompts were left for later."""
        with self._lock:
            if self._log is not None and self._voided_since_load():
                self.drop()  # it may hold what is voided now: loaded again when next used
            if self._log is None:
                return False
            generation = self.store.generation()  # first: the catch-up reads at least this
            self._catch_up(self._log)
            return self._flush_view(self._log, generation, most)

    def view_behind(self) -> bool:
        """Whether a flush would write anything."""
        return self._log is not None and (
            self._view_generation is None
            or self._view_generation != self.store.generation()
            or bool(self._dirty is not None and self._dirty.pending())
        )

    def stored_own(self, author: bytes, seqs: Sequence[int], payloads: Sequence[bytes] | None) -> None:
        """Own envelopes were just stored under ``seqs``: take them in without reading them
        back and decrypting them (every write did). With ``payloads`` (a blind write: prompts
        encoded without the Doc) they are applied from memory; without, the Doc made the
        change itself and holds it already. Another process of this home that wrote in between
        leaves a gap, and then the store is read as usual."""
        with self._lock:
            log = self._log
            if log is None or not seqs:
                return
            if payloads is not None:
                self._catch_up(log, {(author, s): p for s, p in zip(seqs, payloads, strict=True)})
            elif seqs[0] == self._applied.get(author, 0) + 1:
                self._applied[author] = seqs[-1]
            if self._folded and self._dirty is not None:
                # The write's rows moved the view on if nothing else wrote since it was current.
                state = self.store.view.state()
                if state is not None and state.generation == self.store.generation():
                    self._view_generation = state.generation
                else:
                    for prompt_id in self._folded:
                        self._dirty.add(prompt_id)
                    self._view_generation = None
                self._folded = set()

    def drop(self) -> None:
        """Forget the Doc (it holds a change the store does not, or the store is closing): the
        next use rebuilds it from the store."""
        self._log = None
        self._dirty = None

    # -- the local view (syncq.view) -------------------------------------------------------------

    def reader(self) -> Reader | None:
        """The view, to answer from without loading the Doc: None when the Doc is loaded here
        (it answers at once) or the view may not cover the store as it is now."""
        state = self._view_state()
        if state is None or state.generation != self.store.generation():
            return None
        return Reader(self.store.view, self._keys_for_view(), state)

    def reader_may_come(self) -> bool:
        """Whether another process may bring the view up to the store soon: the Doc is not
        loaded here, and the view has a state for this home's keys (only behind)."""
        return self._view_state() is not None

    def _view_state(self) -> ViewState | None:
        """The view's state, if a reader here may use it at some generation: the Doc is not
        loaded here, and the state was written for the key epochs this home holds."""
        if self.keys.is_relay or self._log is not None:
            return None
        state = self.store.view.state()
        return state if state is not None and state.epochs == tuple(sorted(self.keys.secrets)) else None

    def blind_rows(self, prompts: Sequence[Prompt], encoded: Sequence[str]) -> list[view.Sealed]:
        """The view's rows for prompts about to be written blind (without the Doc), which
        ``Store.append_own`` writes with them; none when the Doc is loaded (writing it then
        brings the view up to date)."""
        if self._log is not None:
            return []
        keys = self._keys_for_view()
        return [keys.seal(p.id, Raw(prompt=e), Status.QUEUED) for p, e in zip(prompts, encoded, strict=True)]

    def own_rows(self) -> tuple[list[view.Sealed], int | None]:
        """For a write of this process's Doc about to be stored: the rows of the prompts it
        changed, and the generation the view covered (``Store.append_own`` writes them in the
        envelope's transaction only if the store is still there), so that a write costs no
        transaction of its own for the view. None and no rows when the view was not current,
        or the write changed the devices: the next flush then writes them."""
        log, dirty = self._log, self._dirty
        if log is None or dirty is None or self._view_generation is None or self._rebuild:
            return [], None
        if len(log.devices()) != self._view_devices:
            return [], None
        if len(dirty) > FOLD_MOST:  # a heartbeat of many claims: left to the next flush
            return [], None
        if self._voided_since_load():
            self._view_generation = None  # the next flush loads the Doc again first
            return [], None
        ids = dirty.drain()
        rows, removed = self._rows(log, ids)
        if removed:
            for prompt_id in ids:
                dirty.add(prompt_id)
            return [], None
        self._folded = ids
        return rows, self._view_generation

    def _rows(self, log: Log, ids: Iterable[str]) -> tuple[list[view.Sealed], list[str]]:
        """The view rows of ``ids``, and those of them the Doc does not hold (to drop)."""
        keys = self._keys_for_view()
        rows, removed = [], []
        for prompt_id in ids:
            if not log.has_prompt(prompt_id):
                removed.append(prompt_id)
                continue
            try:
                status: Status | None = log.status(prompt_id)  # remembered: the scheduler asks too
            except MalformedRecord:
                status = None
            rows.append(keys.seal(prompt_id, log.raw(prompt_id), status))
        return rows, removed

    def _voided_since_load(self) -> bool:
        """Whether a void came (maybe in another process) since the Doc was loaded: then the
        Doc may hold what is voided now, and must write nothing into the view."""
        return self.store.get_meta(VOIDS_META) != self._voids

    def _keys_for_view(self) -> view.Keys:
        if self._view_keys is None:
            self._view_keys = view.Keys(self.keys.local_key, self._entropy)
        return self._view_keys

    def _flush_view(self, log: Log, generation: int, most: int | None = None) -> bool:
        """Write the rows of the prompts changed since the last flush (every row, for a
        rebuild: the first ``most`` of them replacing the table, the rest as changed), and the
        state saying the view covers ``generation`` (unless ``most`` left some for later).
        Returns whether some were left for later."""
        if self._dirty is None or self.keys.is_relay:
            return False
        if not self._rebuild and not self._filling and self.store.view.state() is None:
            self._rebuild = True  # forgotten meanwhile (a damaged row, a removal): write it whole
        ids = log.prompt_ids() if self._rebuild else sorted(self._dirty.drain())
        if not ids and not self._rebuild and generation == self._view_generation:
            return False
        later = ids[most:] if most is not None else []
        now = ids[: len(ids) - len(later)]
        rows, removed = self._rows(log, now)
        devices = len(log.devices())
        state = ViewState(
            generation=generation,
            vv=dict(self._applied),
            devices=devices,
            epochs=tuple(sorted(self.keys.secrets)),
        )
        try:
            ok = self.store.view.write(
                rows, state, replace=self._rebuild, removed=removed, partial=bool(later)
            )
        except BaseException:
            # Not written (a full disk, say): the next flush must write these rows, or it would
            # record a state covering prompts the view lacks (the disk-full test found that).
            for prompt_id in ids:
                self._dirty.add(prompt_id)
            raise
        for prompt_id in later if ok else ids if not self._rebuild else ():
            self._dirty.add(prompt_id)  # for the next flush: left for later, or overtaken
        if ok:
            # The rest of a rebuild goes as changed prompts, the state forgotten until the last.
            self._filling = (self._rebuild or self._filling) and bool(later)
            self._rebuild = False
        self._view_generation = generation if ok and not later else None
        self._view_devices = devices
        return ok and bool(later)

    # -- exchanging envelopes (the sync layer and the tests use these) -------------------------

    def version_vector(self) -> dict[bytes, int]:
        """Per author, the highest seq up to which this device holds every envelope, or what
        its snapshots cover and every envelope after that."""
        return self.store.gapless_seqs(self.floor())

    def envelopes(self, after: Mapping[bytes, int] | None = None) -> Iterator[bytes]:
        """Stored envelopes the holder of ``after`` lacks, per author in seq order."""
        after = after or {}
        self.store.sync()
        for author in self.store.tops():
            for row in self.store.rows(author, after.get(author, 0)):
                yield row.data

    def envelopes_for(
        self, peer_vv: Mapping[bytes, int], max_count: int, max_bytes: int
    ) -> list[tuple[bytes, int, bytes]]:
        """A batch of (author, seq, data) the holder of ``peer_vv`` lacks: per author in seq
        order, never across a gap in this store, at most ``max_count`` and about ``max_bytes``."""
        batch: list[tuple[bytes, int, bytes]] = []
        size = 0
        self.store.sync()  # own envelopes written without an fsync: on disk before they leave
        for author, top in self.store.tops().items():
            after = peer_vv.get(author, 0)
            if top <= after:
                continue
            for row in self.store.rows(author, after):
                if (
                    row.seq != after + 1
                    # Voided by a removal (stored before it came): every later seq is too, and
                    # a peer that knows the removal refuses them; sent, they came back on every
                    # session (found by the simulation, tests/sim).
                    or row.quarantined == Unlisted.reason
                    or len(batch) >= max_count
                    or (batch and size + len(row.data) > max_bytes)
                ):
                    break
                batch.append((author, row.seq, row.data))
                size += len(row.data)
                after = row.seq
            if len(batch) >= max_count or size >= max_bytes:
                break
        return batch

    # -- snapshots (syncq.snapshots; PROTOCOL.md, "Snapshots") ---------------------------------

    def held_snapshots(self) -> list[Head]:
        """What the snapshots held say in the clear (read again when another process commits,
        or this one changes them)."""
        version = self.store.data_version()
        if self._held is None or self._held[0] != version:
            held = []
            for digest, head in self.store.snapshots():
                try:
                    held.append(snapshots.decode_head(head, digest))
                except EnvelopeRejected:
                    continue  # checked when it came: a damaged file covers nothing
            self._held = (version, held)
        return self._held[1]

    def snapshot(self, head: Head) -> Snapshot | None:
        """A held snapshot whole (None if it is gone meanwhile, or damaged)."""
        data = self.store.snapshot_data(head.digest)
        try:
            return snapshots.decode_snapshot(data) if data is not None else None
        except EnvelopeRejected:
            return None

    def floor(self) -> dict[bytes, int]:
        """Per author, what the held snapshots cover: envelopes at or below it need not be here."""
        return snapshots.merged(s.covers for s in self.held_snapshots())

    def snapshots_for(self, have: Mapping[bytes, int], holds: Iterable[bytes]) -> list[Head]:
        """The snapshots to send first to a peer whose HAVE is ``have`` and who holds ``holds``:
        it is far behind them, or lacks what only they can give it (``snapshots.to_send``)."""
        floor, listing = self.floor(), self.listing()
        return snapshots.to_send(
            [h for h in self.held_snapshots() if self._usable(h, listing)],
            have,
            holds,
            lambda a, seq: self.store.has_run(a, seq, floor.get(a, 0)),
            SNAPSHOT_FAR,
        )

    def snapshot_due(self, every: int) -> bool:
        """Whether this device has applied enough since the snapshots it holds to write one:
        ``every`` envelopes, or a quarter of what they cover if that is more (a snapshot is the
        whole history: writing 50 MB every 500 prompts would cost more than the envelopes)."""
        if self.keys.is_relay or self._too_big:
            return False
        if self._rewrite:
            return True
        floor = self.floor()  # the highest seqs stored stand in for what the Doc applied: no load
        return snapshots.beyond(self.store.tops(), floor) >= max(every, sum(floor.values()) // 4)

    def write_snapshot(self, device: DeviceKeys) -> Snapshot | None:
        """Seal the Doc as a snapshot of ``device`` and hold it (dropping those it covers); None
        when a held one covers as much already. What removed devices wrote past their cutoff is
        voided first, so the state never holds what the vector leaves out."""
        with self._lock:
            self.void_removed()
            log = self.log
            listing = self.listing()
            covers = snapshots.clipped(self._applied, self._bounds(listing))
            held = self.held_snapshots()
            if not covers or any(
                snapshots.dominates(h.covers, covers) for h in held if self._usable(h, listing)
            ):
                self._rewrite = False  # one that may be given covers as much
                return None
            state = log.state()
            if len(state) + (1 << 20) > snapshots.MAX_SNAPSHOT_SIZE:  # it could not be sent
                self.store.record_rejection("malformed", f"no snapshot: the Doc is {len(state)} bytes")
                self._too_big = True  # not tried again by this process: each try seals it whole
                return None
            data = snapshots.seal_snapshot(
                device=device, space=self.keys, covers=covers, state=state, nonce=self._entropy(12)
            )
            self._rewrite = False
            snapshot = snapshots.decode_snapshot(data)
            self._hold(snapshot, snapshots.kept(held, snapshot)[1])
            return snapshot

    def receive_snapshot(self, data: bytes, me: bytes | None = None) -> SnapshotReport:
        """Verify a snapshot from elsewhere, apply it (a member) and hold it unless a held one
        covers as much. Refused (counted, never held): one that fails its signature or space,
        of an author not listed as a member, covering what a removed device wrote past its
        cutoff, or (a member) sealed under an epoch not held here or not a Doc state. Raises
        ``StoreBroken`` only."""
        with self._lock:
            try:
                snapshot = snapshots.verify_snapshot(data, self.keys.space_id)
                listing = self.listing()
                if listing.root is not None and listing.role(snapshot.author) is not roster.Role.MEMBER:
                    raise Unlisted(f"a snapshot of {snapshot.author.hex()[:12]}, not a member of the space")
                device = snapshots.poisoned(snapshot.covers, self._bounds(listing, snapshot.covers))
                if device is not None:
                    raise Unlisted(f"a snapshot holds what {device.hex()[:12]} wrote after its removal")
                if me is not None and snapshot.covers.get(me, 0) > self.store.tops().get(me, 0):
                    # What this device wrote, it knows: a vector past it would make this device
                    # skip its own next envelopes (a member's lie; others' seqs cannot be checked).
                    raise ForgedRecord(
                        f"a snapshot of {snapshot.author.hex()[:12]} claims seqs this device never wrote"
                    )
                keep, drop = snapshots.kept(self.held_snapshots(), snapshot)
                added = snapshots.beyond(snapshot.covers, self.version_vector())
                if not self.keys.is_relay:
                    # A member holds one only once it took it (its own next one covers it too);
                    # a relay, which cannot open it, holds it to pass on.
                    keep = keep and added > 0
                    if keep:
                        self._take(snapshot)
            except EnvelopeRejected as exc:
                self.store.record_rejection(exc.reason, str(exc))
                return SnapshotReport(rejected=exc.reason)
            if keep:
                try:
                    self._hold(snapshot, drop)
                except BaseException:
                    self.drop()  # the Doc holds what the store does not: rebuilt on next use
                    raise
            return SnapshotReport(kept=keep, added=added if keep else 0)

    def _hold(self, snapshot: Snapshot, drop: Sequence[bytes]) -> None:
        """Store a snapshot (forgetting the held ones named in ``drop``) and mark when the floor
        moved, for pruning."""
        self._held = None
        self.store.keep_snapshot(snapshot.data, snapshot.digest, snapshot.head, drop)
        self._mark()

    # -- pruning ------------------------------------------------------------------------------

    def _mark(self) -> None:
        """Record when the floor reached where it is now: envelopes under it may go once that is
        the retention period ago."""
        marks = self._marks()
        marks.append((self.clock(), self.floor()))
        self.store.set_meta(MARKS_META, _vectors_json(marks[-MAX_MARKS:]))

    def _marks(self) -> list[tuple[int, dict[bytes, int]]]:
        return _vectors(self.store.get_meta(MARKS_META))

    def note_peer(self, peer: bytes, have: Mapping[bytes, int], *, at_once: bool = False) -> None:
        """What a peer holds (its HAVE; or, ``at_once`` false, what it acknowledged since, at
        most once a second). Pruning keeps what a peer seen within the retention period has not
        said it holds."""
        now = self.clock()
        if not at_once and now - self._noted.get(peer, -NOTE_PEER_MS) < NOTE_PEER_MS:
            return  # at most once a second per peer: an ACK comes for every batch
        self._noted[peer] = now
        # Only authors this device holds: a HAVE may name 100,000 of them, made up.
        ours = {*self.store.tops(), *self.floor()}
        peers = {p: (at, vv) for at, vv, p in _peer_entries(self.store.get_meta(PEERS_META))}
        peers[peer] = (now, {a: s for a, s in have.items() if s > 0 and a in ours})
        self.store.set_meta(PEERS_META, _peers_json(peers))

    def prunable(self, retention_ms: int) -> dict[bytes, int]:
        """Per author, the seq up to which envelopes may go: covered by the held snapshots for
        at least ``retention_ms`` (the latest floor recorded that long ago, and no higher than
        the floor now: a snapshot forgotten since covers nothing), held by every peer seen
        within that time, and below the author's newest (kept, so no seq is ever reused)."""
        now = self.clock()
        old = [vv for at, vv in self._marks() if at <= now - retention_ms]
        if not old:
            return {}
        floor, bounds = self.floor(), dict(old[-1])
        peers = [
            vv for at, vv, _ in _peer_entries(self.store.get_meta(PEERS_META)) if at >= now - retention_ms
        ]
        tops = self.store.tops()
        for author in list(bounds):
            bound = min(bounds[author], floor.get(author, 0), tops.get(author, 0) - 1)
            for vv in peers:
                bound = min(bound, vv.get(author, 0))
            bounds[author] = bound
        return {a: b for a, b in bounds.items() if b > 0}

    def prune(self, retention_ms: int) -> int:
        """Drop the envelopes ``prunable`` names (never a device list or keys envelope); returns
        how many went. One transaction: a kill in the middle leaves all of them or none."""
        with self._lock:
            bounds = self.prunable(retention_ms)
            return self.store.prune(bounds) if bounds else 0

    def _covered_elsewhere(self, head: Head) -> bool:
        """Whether every envelope ``head`` covers is stored here, or covered by another held
        snapshot that stays: forgetting it then loses nothing but what a removal voids."""
        listing = self.listing()
        others = snapshots.merged(
            h.covers for h in self.held_snapshots() if h is not head and self._usable(h, listing)
        )
        return all(
            others.get(author, 0) >= seq or self.store.has_run(author, others.get(author, 0), seq)
            for author, seq in head.covers.items()
        )

    def _take(self, snapshot: Snapshot) -> None:
        """Apply a verified snapshot's state to the Doc and count what it covers as applied."""
        from syncq.log import Log

        state = snapshots.open_state(snapshot, self.keys)
        log = self.log
        if len(log) < BOOTSTRAP_BELOW:
            # A new device: the snapshot becomes the Doc (built unobserved, ``Log``), with the
            # little it held merged in; the view is then written whole.
            fresh = Log(client_id=new_client_id(self._entropy), state=state)
            fresh.apply(log.state())
            self._log, log = fresh, fresh
            self._dirty = fresh.follow(streams=True)
            self._dirty.drain()
            self._rebuild = True
        else:
            log.apply(state)  # raises BadUpdate before changing anything for one that is not a state
        self._applied = snapshots.merged([self._applied, snapshot.covers])
        self._catch_up(log)  # envelopes held behind the gap it filled

    def _bounds(self, listing: roster.Listing, also: Iterable[bytes] = ()) -> dict[bytes, int]:
        """Per device whose writes count only up to a seq, that seq: a removed device's cutoff,
        and 0 for one not listed as a member (admitted by a chain a removal cut), among the
        authors stored here and ``also`` (a snapshot's, which may name authors not stored)."""
        if listing.root is None:
            return {}
        bounds = dict(listing.removed)
        for author in {*self.store.tops(), *also}:
            if author not in bounds and listing.roles.get(author) is not roster.Role.MEMBER:
                bounds[author] = 0
        return bounds

    def _usable(self, head: Head, listing: roster.Listing) -> bool:
        """Whether a held snapshot may be given to a peer or applied: its author is a listed
        member, and it holds nothing a removal voids."""
        if listing.root is not None and listing.role(head.author) is not roster.Role.MEMBER:
            return False
        return snapshots.poisoned(head.covers, self._bounds(listing, head.covers)) is None

    def receive(self, datas: Iterable[bytes]) -> ReceiveReport:
        """Verify, store and apply envelopes from elsewhere, each on its own (PROTOCOL.md,
        "Envelope", checks on receipt).

        One that fails decoding, its space or its signature is dropped: counted in ``rejected``,
        never stored. One its author signed but that cannot be applied (a bad AEAD tag, a payload
        that is not a Yjs update, a forged record) is stored quarantined: never applied, but it
        spends its author's seq, so that author's later envelopes are not held behind it. One
        sealed under an epoch not held here is stored and held, with its author's later ones,
        until the key comes. A relay checks space and signature only: it cannot decrypt. Raises
        ``StoreBroken`` only.
        """
        report = ReceiveReport()
        rows: list[Row] = []
        payloads: dict[tuple[bytes, int], bytes | None] = {}
        details: dict[str, str] = {}
        listing: roster.Listing | None = None  # worked out when an envelope that is not a list needs it
        lists: list[roster.Held] = []  # device lists of this batch: they admit what follows them
        for data in datas:
            try:
                envelope = crypto.verify_envelope(data, self.keys.space_id)
                if envelope.kind is not Kind.ROSTER and listing is None:
                    listing = self.listing(lists)  # once per run of lists, not once per list
                held = self._admit(envelope, listing)
                if held is not None:
                    lists.append(held)
                    listing = None
            except (Unlisted, BadRoster) as exc:
                # Refused by the device list (PROTOCOL.md, "Device list"): a peer may pass such
                # an envelope on in good faith (an older relay stores what anyone sends), so it
                # does not count towards closing the session, but it is counted, never stored.
                _count(report.refused, details, exc)
                continue
            except EnvelopeRejected as exc:
                _count(report.rejected, details, exc)
                continue
            if self.keys.is_relay:
                rows.append(Row(envelope.author, envelope.seq, data))
                continue
            payload, verdict = self._inspect(envelope)
            reason = verdict.reason if verdict is not None else None
            rows.append(Row(envelope.author, envelope.seq, data, reason))
            if verdict is not None:
                details[verdict.reason] = str(verdict)
            if reason != UnknownEpoch.reason:  # held: it stays for the key, not applied now
                payloads[(envelope.author, envelope.seq)] = payload
        with self._lock:
            put = self.store.put(rows)
            for row in put.conflicts:
                conflict = SeqConflict(f"seq {row.seq} of {row.author.hex()[:12]} reused")
                _count(report.rejected, details, conflict)
            for row in put.added:
                if row.quarantined is not None:
                    report.quarantined[row.quarantined] = report.quarantined.get(row.quarantined, 0) + 1
            report.added += len(put.added)
            report.duplicates += put.duplicates
            report.control = any(r.data[3] in (Kind.ROSTER, Kind.KEYS) for r in put.added)
            if report.control:
                self._control = None
            report.accepted = [(r.author, r.seq) for r in rows if r not in put.conflicts]
            self._record({**report.rejected, **report.quarantined, **report.refused}, details)
            if self._log is not None and put.added:
                added = {(r.author, r.seq) for r in put.added}
                self._catch_up(self._log, {k: v for k, v in payloads.items() if k in added})
        return report

    def _inspect(self, envelope: crypto.Envelope) -> tuple[bytes | None, EnvelopeRejected | None]:
        """Open a member's envelope whose signature verified and check what it writes: the
        payload (None for a device list: nothing for the Doc), or why it must not be applied."""
        try:
            if envelope.kind is Kind.ROSTER:
                if self.root is None:  # with a root, ``_admit`` has checked its chain already
                    roster.open_roster(envelope, self.keys.space_id, None)
                return None, None
            if envelope.kind is Kind.KEYS:
                if self.root is None:  # with a root, ``_admit`` has checked it already
                    epochs.open_rotation(envelope)
                return None, None
            payload = crypto.open_payload(envelope, self.keys)
            authorship.check_update(payload, envelope.author_id)
        except EnvelopeRejected as exc:
            return None, exc
        return payload, None

    def _record(self, counts: Mapping[str, int], details: Mapping[str, str]) -> None:
        # One row per reason, however many came: a flood of garbage costs a counter.
        for reason, count in sorted(counts.items()):
            self.store.record_rejection(reason, details.get(reason, ""), count)

    # -- the device list (PROTOCOL.md, "Device list (roster)") ---------------------------------

    @property
    def root(self) -> bytes | None:
        """The space's root key, or None for a space from before device lists."""
        if self._root is None:
            found = self.store.get_meta(ROOT_META)
            self._root = bytes.fromhex(found) if found else None
        return self._root

    def set_root(self, root: bytes) -> None:
        """Record the space's root (a relay's home, from its grant)."""
        self.store.set_meta(ROOT_META, root.hex())
        self._root = root

    def own_chain(self) -> tuple[roster.Entry, ...]:
        """This device's chain of entries from the root (empty without a device list)."""
        found = self.store.get_meta(CHAIN_META)
        return roster.decode_entries(bytes.fromhex(found)) if found else ()

    def start_roster(self, device: DeviceKeys, root: bytes, chain: tuple[roster.Entry, ...]) -> None:
        """Record the root and this device's chain, and write the chain as this device's first
        envelope (a new home: seq 1), so that relays store what it writes from then on."""
        self.set_root(root)
        self.store.set_meta(CHAIN_META, roster.encode_entries(chain).hex())
        self.write_control(device, [lambda seq: self.seal_roster(device, seq, chain)])

    def seal_roster(self, device: DeviceKeys, seq: int, entries: Sequence[roster.Entry]) -> bytes:
        """Device-list envelope ``seq`` of ``device`` holding ``entries``."""
        return roster.seal_roster(
            device=device, space_id=self.keys.space_id, epoch=self.keys.epoch, seq=seq, entries=entries
        )

    def write_control(self, device: DeviceKeys, seals: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Append this device's own device-list or keys envelopes (one transaction)."""
        seqs = self.store.append_own(device.public_key, seals)
        self._control = None
        return seqs

    def write_roster(self, device: DeviceKeys, entries: Sequence[roster.Entry]) -> None:
        """Append a device-list envelope of this device: its chain, then ``entries``."""
        chain = roster.extend(self.own_chain(), *entries)
        self.write_control(device, [lambda seq: self.seal_roster(device, seq, chain)])

    def control(self) -> list[Row]:
        """The device-list and keys envelopes held (cached until the store changes)."""
        version = self.store.data_version()
        if self._control is None or self._control[0] != version:
            self._control = (version, self.store.control_rows())
        return self._control[1]

    def lists(self) -> list[roster.Held]:
        """Every device-list envelope held, decoded (cached until the store changes)."""
        rows = self.control()
        if self._lists is not None and self._lists[0] is rows:
            return self._lists[1]
        held = []
        for row in rows:
            if row.data[3] == Kind.ROSTER:
                try:
                    entries = roster.decode_entries(crypto.decode(row.data).ciphertext)
                except EnvelopeRejected:
                    continue  # checked when it came; a damaged file lists nobody
                held.append(roster.Held(author=row.author, seq=row.seq, entries=entries))
        self._lists = (rows, held)
        return held

    def listing(self, more: Sequence[roster.Held] = ()) -> roster.Listing:
        """Who is on the device list (``roster.resolve`` over every device list held, and
        ``more`` not stored yet)."""
        held = self.lists()
        if not more and self._listing is not None and self._listing[0] is held:
            return self._listing[1]
        found = roster.resolve(self.root, [*held, *more])
        if not more:
            self._listing = (held, found)
        return found

    def rotations(self) -> list[tuple[bytes, epochs.Rotation]]:
        """Every key rotation held: (author, what it says)."""
        rows = self.control()
        if self._rotations is not None and self._rotations[0] is rows:
            return self._rotations[1]
        found = []
        for row in self.control():
            if row.data[3] == Kind.KEYS:
                try:
                    found.append((row.author, epochs.open_rotation(crypto.decode(row.data))))
                except EnvelopeRejected:
                    continue
        self._rotations = (rows, found)
        return found

    def void_removed(self) -> int:
        """Quarantine what removed devices wrote after their cutoff, and what devices no longer
        listed wrote (it reached this device before the removal did), so every replica ends up
        without it; if the Doc held any of it, it is rebuilt without it. Returns how many
        envelopes were voided."""
        voided, rebuild = 0, False
        with self._lock:
            listing = self.listing()
            if listing.root is None:
                return 0
            # A device listed when it came, by a chain the removal has since cut (one a thief
            # admitted after its cutoff), counts for nothing, as where the removal came first.
            bounds = self._bounds(listing)
            # A snapshot written before its author knew of the removal holds what it voids,
            # and cannot be taken apart: forgotten, and the Doc rebuilt without it (peers send
            # the envelopes again, or a snapshot written since).
            poisoned = [h for h in self.held_snapshots() if not self._usable(h, listing)]
            # ...unless the envelopes it covers are gone (pruned, or never here: taken from it).
            # Forgotten then, it would take every author's history with it, on every node; kept,
            # it keeps what the removed device wrote late (counted, and said in the detail).
            gone = [h for h in poisoned if self._covered_elsewhere(h)]
            kept = [h for h in poisoned if h not in gone]
            # Either way no peer is given one of them any more: a snapshot of this Doc takes its
            # place (the node writes one at once: ``snapshot_due``).
            self._rewrite = self._rewrite or bool(poisoned)
            if kept:
                detail = (
                    f"{len(kept)} snapshot(s) keep what a removed device wrote late: their envelopes are gone"
                )
                self.store.record_rejection(Unlisted.reason, detail)
            if gone:
                self._held = None
                self.store.forget_snapshots([h.digest for h in gone])
                voided += len(gone)
                rebuild = True
            for device, cutoff in bounds.items():
                for row in self.store.rows(device, cutoff):  # by index: nothing, usually
                    if row.data[3] == Kind.ROSTER or row.quarantined not in (None, UnknownEpoch.reason):
                        continue  # device lists are ``resolve``'s to judge
                    # The view's state goes in the mark's transaction (``Store.mark``).
                    self.store.mark(device, row.seq, Unlisted.reason)
                    voided += 1
                    rebuild = rebuild or row.seq <= self._applied.get(device, 0)
            # A later removal of the same device with a higher cutoff (made apart) counts: what
            # was voided under the lower one counts again, as where the higher came first.
            restored = [(a, seq) for a, seq in self.store.marked(Unlisted.reason) if listing.admits(a, seq)]
            for author, seq in restored:
                self.store.mark(author, seq, UnknownEpoch.reason)  # held: checked in full on apply
            if rebuild:
                self.drop()
            if restored and not self.keys.is_relay:
                self._restore(restored)
        return voided

    def _restore(self, restored: Sequence[tuple[bytes, int]]) -> None:
        """Apply envelopes no longer voided (their seqs were spent: ``_catch_up`` is past them),
        and checkpoint, so that a rebuild from an older checkpoint does not skip them."""
        log = self.log
        for author, seq in restored:
            row = next(self.store.rows(author, seq - 1), None)
            if row is not None and row.seq == seq and row.quarantined == UnknownEpoch.reason:
                self._apply_row(log, row)
        self.checkpoint()

    def listed(self, device: bytes) -> bool:
        """Whether ``device`` may write (and ask a relay to keep files): a member on the list
        now, or anyone in a space without a list."""
        listing = self.listing()
        return listing.root is None or listing.role(device) is roster.Role.MEMBER

    def _admit(self, envelope: crypto.Envelope, listing: roster.Listing | None) -> roster.Held | None:
        """In a space with a root, relays and members alike store a device list that chains to
        the root, a keys envelope of a member, and an envelope of a member on the list (or of a
        removed device, up to its cutoff), and refuse anything else: a device that was removed,
        or one nobody listed, gets nothing stored anywhere (a member that stored it would keep
        it and pass it on). Returns a device list's entries, which admit what follows them."""
        if self.root is None:
            return None  # a space from before device lists: nobody can tell
        if envelope.kind is Kind.ROSTER:
            # Stored even from a removed author: whether what it lists counts is ``resolve``'s
            # to judge over the whole set, and refusing some would make replicas hold different
            # sets (and so different lists). A removed device cannot connect anywhere, so only
            # what it wrote before its removal was known can still be making its way around.
            entries = roster.open_roster(envelope, self.keys.space_id, self.root)
            return roster.Held(author=envelope.author, seq=envelope.seq, entries=entries)
        assert listing is not None  # ``receive`` works it out for every envelope but a list
        if not listing.admits(envelope.author, envelope.seq):
            if envelope.author in listing.removed:
                raise Unlisted(f"{envelope.author.hex()[:12]} was removed from the space")
            raise Unlisted(f"{envelope.author.hex()[:12]} is not on the space's device list")
        if envelope.kind is Kind.KEYS:
            epochs.open_rotation(envelope)
        return None

    def checkpoint(self) -> None:
        """Seal the Doc's state into the store, so the next open need not replay envelopes."""
        with self._lock:
            log = self.log
            vv = dict(self._applied)
            data = crypto.seal_local(
                self.keys.local_key("checkpoint"), log.state(), self._entropy(12), _vv_aad(vv)
            )
            self.store.save_checkpoint(Checkpoint(vv=vv, data=data))

    # -- internals ----------------------------------------------------------------------------

    def _load(self) -> Log:
        from syncq.log import Log

        generation = self.store.generation()
        self._voids = self.store.get_meta(VOIDS_META)  # after the generation: a void moves both
        self._applied = {}
        self._waiting = {}
        log: Log | None = None
        found = self.store.load_checkpoint()
        removed = self.listing().removed if found is not None else {}
        if found is not None and any(found.vv.get(d, 0) > cutoff for d, cutoff in removed.items()):
            found = None  # it holds what a removed device wrote after its cutoff: replay instead
        if found is not None:
            vv, sealed = dict(found.vv), found.data
            del found
            try:
                state = crypto.open_local(self.keys.local_key("checkpoint"), sealed, _vv_aad(vv))
                del sealed  # free the ciphertext before the Doc decodes the state: peak memory
                log = Log(client_id=new_client_id(self._entropy), state=state)
                del state
                self._applied = vv
            except EnvelopeRejected as exc:
                # The checkpoint is only a cache of the envelopes: replay them all instead.
                self.store.record_rejection(exc.reason, f"checkpoint ignored: {exc}")
        if log is None:
            log = Log(client_id=new_client_id(self._entropy))
        self._dirty = log.follow(streams=True)
        # Held snapshots the checkpoint does not cover (none, or one taken since it was written):
        # the envelopes they cover need not be here.
        self._take_held(log)
        # The view holds every prompt as it was at its state's vector or later: if that is as
        # new as the checkpoint, rewriting the prompts the catch-up changes is enough.
        covered = self.store.view.state() if not self.keys.is_relay else None
        self._rebuild = covered is None or any(covered.vv.get(a, 0) < s for a, s in self._applied.items())
        self._dirty.drain()
        # The checkpoint and the view are caches: on a full disk, reading must still work
        # (``syncq log`` did not); they are written when there is room again.
        caught_up = self._catch_up(log)
        with contextlib.suppress(DiskFull):
            if caught_up >= CHECKPOINT_AFTER:
                self._log = log
                self.checkpoint()
            self._flush_view(log, generation)
        return log

    def _take_held(self, log: Log) -> None:
        """Apply the held snapshots the Doc does not cover: on load, and when another process
        took one (and may have pruned the envelopes it covers)."""
        if self.keys.is_relay:
            return
        held = [h for h in self.held_snapshots() if not snapshots.dominates(self._applied, h.covers)]
        listing = self.listing()
        for head in held:
            # One a removal voids is applied only while it is the one copy of what it covers.
            if not self._usable(head, listing) and self._covered_elsewhere(head):
                continue
            snapshot = self.snapshot(head)
            if snapshot is None:
                continue
            try:
                log.apply(snapshots.open_state(snapshot, self.keys))
            except EnvelopeRejected as exc:
                self.store.record_rejection(exc.reason, f"snapshot ignored: {exc}")
                continue
            self._applied = snapshots.merged([self._applied, snapshot.covers])

    def _catch_up(self, log: Log, fresh: Mapping[tuple[bytes, int], bytes | None] | None = None) -> int:
        """Apply stored envelopes the Doc lacks, per author in seq order, stopping at gaps and
        at envelopes held for an epoch's key.

        ``fresh`` holds payloads just verified and stored by ``receive`` (``None`` for one
        quarantined there): they are applied from memory, and only their authors are looked up
        in the store (for envelopes held behind a gap they filled), which spares reading back
        and decrypting again what just arrived.
        """
        applied = 0
        if fresh is None:
            self._take_held(log)
        if fresh is not None:
            for author, seq in sorted(fresh):
                if seq == self._applied.get(author, 0) + 1:
                    payload = fresh[(author, seq)]
                    if payload is not None:
                        self._apply(log, author, seq, payload)
                    self._applied[author] = seq
                    applied += 1
        if fresh is not None:
            authors = sorted({a for a, _ in fresh})
        else:
            # An author held for a key is looked at again only once that key is here: a stranger
            # with many keys must not make every read of the log scan their envelopes.
            missing = {e for e in self._waiting.values() if e not in self.keys.secrets}
            authors = [
                a
                for a, top in self.store.tops().items()
                if top > self._applied.get(a, 0) and self._waiting.get(a) not in missing
            ]
        for author in authors:
            done = self._applied.get(author, 0)
            for row in self.store.rows(author, done):
                if row.seq != done + 1 or not self._apply_row(log, row):
                    break  # a gap or a missing key: hold the rest until it comes
                done = row.seq
                applied += 1
            self._applied[author] = done
        return applied

    def _apply_row(self, log: Log, row: Row) -> bool:
        """Apply one stored envelope, or skip it if quarantined; False if it waits for a key."""
        if row.quarantined is not None and row.quarantined != UnknownEpoch.reason:
            return True  # quarantined: its seq is spent, it is never applied
        try:
            envelope = crypto.decode(row.data)
        except EnvelopeRejected as exc:  # a damaged file
            self._quarantine(row.author, row.seq, exc)
            return True
        if envelope.kind in (Kind.ROSTER, Kind.KEYS):
            return True  # a device list or a key epoch: nothing for the Doc
        if envelope.epoch not in self.keys.secrets:
            self._waiting[row.author] = envelope.epoch
            return False
        self._waiting.pop(row.author, None)
        if row.quarantined is None:
            # Stored envelopes were verified on the way in (or written here); the AEAD tag still
            # guards against a damaged file, so only the signature check is skipped.
            try:
                payload: bytes | None = crypto.open_payload(envelope, self.keys)
            except EnvelopeRejected as exc:
                self._quarantine(row.author, row.seq, exc)
                return True
        else:
            # Held for its epoch's key, which is here now: the checks it waited for.
            payload, verdict = self._inspect(envelope)
            self.store.mark(row.author, row.seq, verdict.reason if verdict is not None else None)
            if verdict is not None:
                self.store.record_rejection(verdict.reason, str(verdict))
        if payload is not None:
            self._apply(log, row.author, row.seq, payload)
        return True

    def _apply(self, log: Log, author: bytes, seq: int, payload: bytes) -> None:
        try:
            log.apply(payload)
        except EnvelopeRejected as exc:
            self._quarantine(author, seq, exc)

    def _quarantine(self, author: bytes, seq: int, exc: EnvelopeRejected) -> None:
        self.store.mark(author, seq, exc.reason)
        self.store.record_rejection(exc.reason, f"envelope {seq} of {author.hex()[:12]}: {exc}")


def _count(counts: dict[str, int], details: dict[str, str], exc: EnvelopeRejected) -> None:
    counts[exc.reason] = counts.get(exc.reason, 0) + 1
    details[exc.reason] = str(exc)


def _vectors_json(marks: Iterable[tuple[int, Mapping[bytes, int]]]) -> str:
    return json.dumps([[at, _hexed(vv)] for at, vv in marks])


def _vectors(text: str | None) -> list[tuple[int, dict[bytes, int]]]:
    """Marks as ``_vectors_json`` wrote them; none for a missing or damaged value."""
    try:
        return [(int(at), _unhexed(vv)) for at, vv in json.loads(text or "[]")]
    except (ValueError, TypeError, AttributeError):
        return []


def _peers_json(peers: Mapping[bytes, tuple[int, Mapping[bytes, int]]]) -> str:
    return json.dumps({p.hex(): [at, _hexed(vv)] for p, (at, vv) in sorted(peers.items())})


def _peer_entries(text: str | None) -> list[tuple[int, dict[bytes, int], bytes]]:
    """(when seen, what it holds, peer) per peer, as ``_peers_json`` wrote them."""
    try:
        return [(int(at), _unhexed(vv), bytes.fromhex(p)) for p, (at, vv) in json.loads(text or "{}").items()]
    except (ValueError, TypeError, AttributeError):
        return []


def _hexed(vv: Mapping[bytes, int]) -> dict[str, int]:
    return {author.hex(): seq for author, seq in sorted(vv.items())}


def _unhexed(found: Mapping[str, Any]) -> dict[bytes, int]:
    return {bytes.fromhex(author): int(seq) for author, seq in found.items()}


def _vv_aad(vv: Mapping[bytes, int]) -> bytes:
    return b"checkpoint" + b"".join(a + s.to_bytes(8, "big") for a, s in sorted(vv.items()))
