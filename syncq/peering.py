"""A sync session bound to a space: what to do with each protocol event, with no I/O of its own.

``SyncSession`` (syncq.protocol) knows the wire; ``Peering`` adds what this device does about it:
answer ``Authenticated`` with its version vector, verify and store every received batch (all of
it or none of it) before acknowledging it, and fill the flow-control window from the store with
what the peer lacks, per author in seq order and never across a local gap. The node's websocket
connection and the in-memory transport of the tests both drive this one class, so what is tested
in memory is what runs over the network.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from syncq.admission import told_refusal
from syncq.errors import SeqConflict, StoreError
from syncq.protocol import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ENVELOPES,
    Authenticated,
    BlobKept,
    BlobMissing,
    BlobOffered,
    BlobReceived,
    BlobWanted,
    CloseCode,
    EnvelopesReceived,
    Event,
    HaveReceived,
    PeerClosed,
    Role,
    SessionFailed,
    SnapshotPart,
    SnapshotReceived,
    State,
    SyncSession,
    WindowOpen,
)

BlobEvent = BlobWanted | BlobReceived | BlobMissing | BlobOffered | BlobKept
MAX_DROPPED = 100  # invalid envelopes one session may send before it is closed with 4403

if TYPE_CHECKING:
    from syncq.crypto import SpaceKeys
    from syncq.snapshots import Head, Snapshot
    from syncq.space import Space


def admission_keys(keys: SpaceKeys) -> list[tuple[int, bytes]]:
    """(epoch, ``auth_key``) of every epoch these keys know (a member's secrets, a relay's
    keys), newest first: what ``SyncSession`` tags its HELLO with."""
    return [(epoch, keys.auth_key(epoch)) for epoch in keys.ordered()]


class Hooks(Protocol):
    """What the owner of a peering (the node) is told."""

    def authenticated(self, peering: Peering) -> bool:
        """The peer is admitted; return False to drop this connection (a duplicate)."""
        ...

    def stored(self, peering: Peering, added: int) -> None:
        """New envelopes from this peer are stored: offer them to the other peers."""
        ...

    def ended(self, peering: Peering, event: SessionFailed | PeerClosed) -> None:
        """The session ended (this side failed it, or the peer closed it)."""
        ...

    def blob(self, peering: Peering, event: BlobEvent) -> None:
        """A blob frame arrived: a want to answer, a chunk, a peer that lacks chunks, a blob to
        keep (at a relay) or a relay's word that it keeps one."""
        ...


class NoHooks:
    """Hooks that admit every peer and ignore the rest."""

    def authenticated(self, peering: Peering) -> bool:
        """Admit."""
        return True

    def stored(self, peering: Peering, added: int) -> None:
        """Ignore."""

    def ended(self, peering: Peering, event: SessionFailed | PeerClosed) -> None:
        """Ignore."""

    def blob(self, peering: Peering, event: BlobEvent) -> None:
        """Ignore (nobody here serves blobs)."""


class Peering:
    """One sync session with one peer, driven against ``space``."""

    def __init__(
        self, space: Space, role: Role, *, hooks: Hooks | None = None, challenge: bytes | None = None
    ) -> None:
        self.space = space
        self.hooks: Hooks = hooks or NoHooks()
        self.session = SyncSession(
            role=role,
            auth_keys=admission_keys(space.keys),
            node=space.device,
            name=space.name,
            challenge=challenge if challenge is not None else os.urandom(32),
            relay=space.is_relay,
            admit=space.peer_refusal,  # the device list, checked once the peer's AUTH verifies
        )
        self.peer_name = ""
        self.wants_to_send = False  # the peer's HAVE or an ACK arrived: try ``send_batch``
        self.received = 0
        self.sent = 0
        self.dropped = 0  # envelopes of this session that failed decoding, space or signature
        self.snapshots_sent = 0
        self.snapshots_taken = 0  # from the peer, held or applied here
        self.snapshots_refused = 0  # sent, and refused by the peer
        self._awaiting: dict[int, dict[bytes, int]] = {}  # a snapshot's last batch: the peer's vv before
        self._snapshots: list[Head] = []  # to send before any envelope (``Replica.snapshots_for``)
        self._sending: Snapshot | None = None  # the first of them, read whole
        self._control: list[tuple[bytes, int, bytes]] = []  # device lists and keys a snapshot covers
        self._peer_holds: set[bytes] = set()  # digests of the snapshots the peer holds or was sent
        self._peer_have: dict[bytes, int] = {}  # its HAVE, as it came

    @property
    def open(self) -> bool:
        """Whether the session still runs."""
        return self.session.state is not State.CLOSED

    def data_to_send(self) -> list[bytes]:
        """Frames to put on the wire, in order."""
        return self.session.data_to_send()

    def receive(self, frame: bytes) -> None:
        """Feed one received message and act on what it means."""
        for event in self.session.receive(frame):
            self._handle(event)

    def send_batch(self) -> int:
        """Queue one batch of envelopes the peer lacks, if the window allows; returns how many."""
        self.wants_to_send = False
        if not self.session.can_send:
            return 0
        while self._snapshots and self._sending is None:  # first: envelopes would wait behind gaps
            self._sending = self.space.replica.snapshot(self._snapshots[0])
            if self._sending is None:
                self._snapshots.pop(0)  # gone meanwhile (a newer one took its place)
            else:  # no Doc state holds a device list or a key epoch: they go first
                self._control = self._covered_control(self._sending.covers)
        if self._control:  # the receiver must list the snapshot's author before it takes it
            batch, self._control = self._control[:MAX_BATCH_ENVELOPES], self._control[MAX_BATCH_ENVELOPES:]
            self.session.send_envelopes(batch)
            self.sent += len(batch)
            self.wants_to_send = True
            return len(batch)
        if self._sending is not None:
            snapshot = self._sending
            if self.session.send_snapshot(snapshot.data) == len(snapshot.data):
                self._snapshots.pop(0)
                self._sending = None
                self._awaiting[self.session.last_batch] = dict(self.session.peer_vv)
                self.session.note_peer_covers(snapshot.covers)
                self.snapshots_sent += 1
            self.wants_to_send = True
            return 0
        batch = self.space.envelopes_for(self.session.peer_vv, MAX_BATCH_ENVELOPES, MAX_BATCH_BYTES)
        if batch:
            self.session.send_envelopes(batch)
            self.sent += len(batch)
            self.wants_to_send = True
        return len(batch)

    def _covered_control(self, covers: dict[bytes, int]) -> list[tuple[bytes, int, bytes]]:
        """The device-list and keys envelopes a snapshot covers that the peer lacks: it works
        out who is listed, and the epochs, from those envelopes, which no Doc state holds."""
        have = self._peer_have
        return [
            (row.author, row.seq, row.data)
            for row in self.space.replica.control()
            if have.get(row.author, 0) < row.seq <= covers.get(row.author, 0)
        ]

    def offer_snapshot(self, snapshot: Head) -> bool:
        """Send ``snapshot`` (one just written) unless the peer holds it or it is queued;
        whether it was queued. A relay serves it to newcomers instead of every envelope."""
        if snapshot.digest in self._peer_holds or any(s.digest == snapshot.digest for s in self._snapshots):
            return False
        self._peer_holds.add(snapshot.digest)
        self._snapshots.append(snapshot)
        self.wants_to_send = True
        return True

    def fail(self, code: CloseCode, reason: str) -> None:
        """End the session from this side."""
        if self.open:
            self.hooks.ended(self, self.session.fail(code, reason))

    def refuse(self, refusal: str) -> None:
        """End the session because the device list now refuses the peer (``refusal``, from
        ``Space.peer_refusal``): 4410, and the peer is told which of the two lines it is."""
        if self.open:
            told = told_refusal(refusal)
            self.hooks.ended(
                self, self.session.fail(CloseCode.NOT_LISTED, f"device list: {refusal}", told=told)
            )

    def behind(self) -> int:
        """How many envelopes this side holds that the peer lacks."""
        mine = self.space.version_vector()
        return sum(max(0, seq - self.session.peer_vv.get(a, 0)) for a, seq in mine.items())

    def _handle(self, event: Event) -> None:
        if isinstance(event, Authenticated):
            self.peer_name = event.peer_name
            if not self.hooks.authenticated(self):
                self.session.fail(CloseCode.NORMAL, "duplicate connection")
                return
            held = self.space.replica.held_snapshots()  # newest last: named first, if more than 8
            self.session.send_have(self.space.version_vector(), [s.digest for s in reversed(held)])
        elif isinstance(event, HaveReceived):
            self._peer_holds = set(event.snapshots)
            self._peer_have = dict(event.vv)
            if self.session.peer_id is not None:  # what it holds, for pruning (``Replica.prune``)
                self.space.replica.note_peer(bytes.fromhex(self.session.peer_id), event.vv, at_once=True)
            self._snapshots = self.space.replica.snapshots_for(event.vv, event.snapshots)
            self.wants_to_send = True
        elif isinstance(event, WindowOpen):
            self.wants_to_send = True
            before = self._awaiting.pop(event.batch, None)
            if before is not None and not event.taken:
                # Refused (its author is off the peer's list, a key it lacks): the peer holds
                # what its HAVE said, not the snapshot. Whatever can go as envelopes goes.
                self.session.peer_vv = before
                self.snapshots_refused += 1
            if self.session.all_acked and self.session.peer_id is not None:  # it stored all we sent
                self.space.replica.note_peer(bytes.fromhex(self.session.peer_id), self.session.peer_vv)
        elif isinstance(event, SnapshotPart):
            self.session.ack(event.batch)
        elif isinstance(event, SnapshotReceived):
            self._take(event)
        elif isinstance(event, EnvelopesReceived):
            self._store(event)
        elif isinstance(event, BlobEvent):
            self.hooks.blob(self, event)
        else:
            self.hooks.ended(self, event)

    def _take(self, event: SnapshotReceived) -> None:
        """Verify and hold (or apply) a snapshot, then acknowledge it, saying whether it was
        taken; one nobody could have signed closes the session."""
        try:
            report = self.space.replica.receive_snapshot(event.data, me=self.space.device.public_key)
        except StoreError as exc:
            self.fail(CloseCode.UNAVAILABLE, f"cannot store a snapshot here: {exc}")
            return
        if report.rejected in ("malformed", "wrong-space", "bad-signature"):
            # Nobody signed it as it is (a relay never passes one on): up to 256 MiB each, one
            # is enough to close the session.
            self.fail(CloseCode.BAD_ENVELOPE, f"a snapshot nobody signed ({report.rejected})")
            return
        self.session.ack(event.batch, taken=report.rejected is None)
        if report.kept:
            self.snapshots_taken += 1
            self.received += report.added
            self.hooks.stored(self, report.added)

    def _store(self, event: EnvelopesReceived) -> None:
        # Each envelope is judged on its own and the batch is acknowledged (PROTOCOL.md,
        # "Envelope"): one a member cannot open is quarantined, so a relay holding a stranger's
        # garbage costs a counter, not every session with it. Only a peer that keeps sending
        # envelopes nobody could have signed (they are dropped, never stored, so no relay
        # forwards them) is cut off.
        try:
            report = self.space.receive(event.envelopes)
        except StoreError as exc:
            self.fail(CloseCode.UNAVAILABLE, f"cannot store envelopes here: {exc}")
            return
        # A seq conflict is signed by its author (a member that wrote two envelopes for one
        # seq): an honest peer may pass the other one on, so it does not count against it.
        self.dropped += sum(n for r, n in report.rejected.items() if r != SeqConflict.reason)
        if self.dropped > MAX_DROPPED:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(report.rejected.items()))
            self.fail(CloseCode.BAD_ENVELOPE, f"too many invalid envelopes: {reasons}")
            return
        for author, seq in report.accepted:
            self.session.note_peer_has(author, seq)
        self.session.ack(event.batch)  # only now: an ACK means "stored here"
        self.received += report.added
        if report.added:
            self.hooks.stored(self, report.added)
