"""The library's public face: one space on this device, opened from its home directory.

``Space`` ties the pure core (log, crypto, records) to local storage (store, keys). It is what
the CLI, the node and scripts call::

    space = Space.open(home)                 # or Space.init(home, name="laptop")
    prompt = space.add("Why is the sky blue?", model="smollm2-135m")
    for entry in space.entries(limit=20):
        print(entry.prompt.id, entry.status)

Writes go to the store first (one SQLite transaction, synchronous=FULL), then into the Doc, so
an add that returned is never lost. The Doc is loaded lazily: adding a prompt writes a blind
insert (``syncq.yjs``) and needs no Doc at all, which keeps a cold ``syncq add`` fast whatever
the size of the space. Envelopes are applied to the Doc per author in seq order; an envelope
that arrives after a gap is stored and held until the gap fills.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from syncq import chat, crypto, devices, roster, yjs
from syncq.batching import by_size
from syncq.blobs import MAX_BLOB_SIZE, MAX_FILES, BlobRef, Sealer
from syncq.blobstore import DEFAULT_RELAY_QUOTA, BlobStore
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.device_records import InviteRecord
from syncq.devices import DeviceView, Removal
from syncq.errors import (
    AlreadyInitialized,
    EnvelopeRejected,
    InvalidInput,
    InvalidState,
    MalformedRecord,
    RelayOnly,
    StoreBroken,
    StoreError,
)
from syncq.ids import ID_LENGTH, DeviceId, PromptId, SpaceId, is_prompt_id, next_prompt_id, resolve_prefix
from syncq.invite import Grant
from syncq.keys import (
    HomePaths,
    discard_home,
    load_device,
    load_space,
    make_home_private,
    save_device,
    save_space,
)
from syncq.lifecycle import TERMINAL, Status
from syncq.padding import Floor
from syncq.records import (
    Cancel,
    Claim,
    Device,
    NodeInfo,
    ParamValue,
    Prompt,
    PromptKind,
    Result,
    Retry,
    check_max_attempts,
    check_model,
    check_params,
    check_priority,
    check_prompt_input,
    encode,
)
from syncq.replica import ReceiveReport, Replica, new_client_id
from syncq.store import SqliteStore, Store
from syncq.viewstore import NODE_FLUSH_S

T = TypeVar("T")

if TYPE_CHECKING:
    # syncq.log imports pycrdt (~100 ms): only code that reads the Doc loads it, so that a
    # cold `syncq add` (a blind insert) never pays for it.
    from syncq.log import Entry, Log
    from syncq.viewstore import Reader

BACKEND_KINDS = {"whisper": PromptKind.ASR, "diffusers": PromptKind.IMAGE}
NODE_FRESH_MS = 15_000  # a node heartbeat older than this means no node runs in the home
MAX_UPDATE_BYTES = 512 * 1024  # a batch of adds is split into envelopes of about this size


def wall_clock_ms() -> int:
    """Milliseconds since the epoch (the default clock of ``Space``)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class NewPrompt:
    """What a caller asks to add (``Space.add_many``)."""

    text: str
    model: str
    kind: PromptKind | None = None  # None: from the backend that serves the model, else llm
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int = 3
    id: PromptId | None = None  # from ``Space.new_prompt_id``: adding it again adds nothing
    files: Sequence[BlobRef] = ()  # from ``Space.attach``
    # An llm prompt's conversation (``Message``s or dicts; ``chat.messages_from``), or its
    # whole ``llm`` field: one or the other. With either, an empty ``text`` is filled in.
    messages: Sequence[chat.Message | Mapping[str, Any]] | None = None
    llm: chat.LlmInput | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceStatus:
    """A summary of this device's view of the space (``syncq status``)."""

    home: Path
    device_id: DeviceId
    device_name: str
    space_id: SpaceId
    relay: bool
    prompts: int | None
    counts: Mapping[str, int]
    devices: int | None
    envelopes: int
    store_bytes: int
    rejected: Mapping[str, int]
    snapshots: int = 0  # snapshots held (syncq.snapshots)
    snapshot_covers: int = 0  # envelopes they cover between them (some may be stored too)
    files: int = 0  # attachments held here (a relay's kept copies included)
    files_bytes: int = 0
    node: str | None = None  # the running node's listen URL, if one runs in this home
    peers: int = 0
    peers_connected: int = 0
    peers_behind: int = 0  # envelopes held here that connected peers still lack
    # The running node's tasks that crashed and were restarted: name -> {restarts, last_error,
    # last_error_at} (node/supervise.py writes it to the ``node.tasks`` metadata).
    node_tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Envelopes stored but never applied, by reason ("unknown-epoch": held for a key to come).
    quarantined: Mapping[str, int] = field(default_factory=dict)


class Space:
    """One space as seen from this device. Not safe to share between threads without its lock
    (every public method takes it)."""

    def __init__(
        self,
        *,
        paths: HomePaths,
        device: DeviceKeys,
        name: str,
        keys: SpaceKeys,
        store: Store,
        clock: Callable[[], int] = wall_clock_ms,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.paths = paths
        self.device = device
        self.name = name
        self.clock = clock
        self.entropy = entropy
        self._author = device.public_key
        self.lock = threading.RLock()
        self.replica = Replica(store, keys, entropy, self.lock, clock)
        self._keys_stamp = _stamp(paths.space_key)
        self._blind_client = new_client_id(entropy)
        self._blind_clock = 0
        self._last_id: PromptId | None = None
        self._blobs: BlobStore | None = None
        self.blob_limit = MAX_BLOB_SIZE  # a node sets its own from config.toml
        self.relay_quota = DEFAULT_RELAY_QUOTA  # bytes a relay keeps per member (config.toml)
        # What opening found readable by others and made private (the CLI says so, once).
        self.made_private: list[Path] = []

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        home: Path,
        *,
        name: str,
        secret: bytes | None = None,
        entropy: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], int] = wall_clock_ms,
        device_list: bool = False,
    ) -> Space:
        """Create a new space in ``home`` (or join the space of ``secret``) with a fresh device
        identity. With ``device_list`` (what `syncq init` does) a new space's device list is
        rooted at this device, so its relays store only what listed devices write (PROTOCOL.md,
        "Device list"). Raises ``AlreadyInitialized``, ``HomeError`` or ``StoreBroken``."""
        keys = SpaceKeys.create(secret if secret is not None else entropy(crypto.SECRET_SIZE))
        founding = device_list and secret is None
        return cls.join(home, name=name, keys=keys, entropy=entropy, clock=clock, founding=founding)

    @classmethod
    def join(
        cls,
        home: Path,
        *,
        name: str,
        keys: SpaceKeys,
        entropy: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], int] = wall_clock_ms,
        founding: bool = False,
    ) -> Space:
        """Create a home for a new member device of the space of ``keys`` and record the device
        in the log (as the ``founding`` device of its device list, if it founds one). A failure
        leaves no home behind. Raises ``AlreadyInitialized``, ``HomeError`` or ``StoreBroken``."""
        if keys.is_relay:
            raise ValueError("a member needs the space secret")

        def setup(space: Space) -> None:
            if founding:
                chain = roster.founding_chain(space.device, keys.space_id)
                space.replica.start_roster(space.device, space.device.public_key, chain)
            space.put_device(space._own_record())

        return cls._create(home, name=name, keys=keys, entropy=entropy, clock=clock, setup=setup)

    @classmethod
    def join_granted(
        cls,
        home: Path,
        *,
        device: DeviceKeys,
        name: str,
        grant: Grant,
        clock: Callable[[], int] = wall_clock_ms,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> Space:
        """Create the home of a device a member admitted (``grant``, from the join handshake):
        its keys, the space's root, and (a member) its device-list chain as its first envelope.
        A failure leaves no home behind. Raises ``InvalidInput``, ``AlreadyInitialized``,
        ``HomeError`` or ``StoreBroken``."""
        keys = devices.granted_keys(grant, device)

        def setup(space: Space) -> None:
            if keys.is_relay:
                space.replica.set_root(grant.root)
            else:
                space.replica.start_roster(space.device, grant.root, grant.chain)
                space.put_device(space._own_record())
            space.receive(grant.lists)  # checked like any envelope from a peer

        return cls._create(
            home, name=name, keys=keys, entropy=entropy, clock=clock, setup=setup, device=device
        )

    def _own_record(self) -> Device:
        # ``added_by`` names the writer (syncq.authorship): who admitted it is the device list's.
        return Device(
            id=self.device_id,
            name=self.name,
            x25519=self.device.exchange_public_key.hex(),
            added_by=self.device_id,
            added_at=self.clock(),
        )

    @classmethod
    def init_relay(
        cls,
        home: Path,
        *,
        name: str,
        keys: SpaceKeys,
        entropy: Callable[[int], bytes] = os.urandom,
        root: bytes | None = None,
    ) -> Space:
        """Create a relay's home: it will store and forward the space's envelopes, and holds
        no key that decrypts them. With the space's ``root`` it stores only what devices on the
        space's list wrote. Raises ``AlreadyInitialized``, ``HomeError`` or ``StoreBroken``."""
        if not keys.is_relay:
            raise ValueError("a relay must not hold the space secret")

        def setup(space: Space) -> None:
            if root is not None:
                space.replica.set_root(root)

        return cls._create(home, name=name, keys=keys, entropy=entropy, clock=wall_clock_ms, setup=setup)

    @classmethod
    def _create(
        cls,
        home: Path,
        *,
        name: str,
        keys: SpaceKeys,
        entropy: Callable[[int], bytes],
        clock: Callable[[], int],
        setup: Callable[[Space], None],
        device: DeviceKeys | None = None,
    ) -> Space:
        paths = HomePaths(Path(home))  # a str works too
        if paths.space_key.exists():
            raise AlreadyInitialized(f"{home} holds a space already (see `syncq status`)")
        if paths.database.exists():
            raise AlreadyInitialized(
                f"{home} holds a database but no space.key (an interrupted init?): "
                "move the home aside and run `syncq init` again"
            )
        existed = paths.root.exists()
        paths.create()
        store: Store | None = None
        try:
            device = device or DeviceKeys.from_seed(entropy(64))
            store = SqliteStore.create(paths.database)
            store.set_meta("space_id", keys.space_id)
            save_device(paths, device, name)
            space = cls(
                paths=paths, device=device, name=name, keys=keys, store=store, clock=clock, entropy=entropy
            )
            setup(space)
            save_space(paths, keys)  # written last: its presence means "initialised"
        except BaseException:
            if store is not None:
                store.close()
            discard_home(paths, remove_root=not existed)  # no half-built home to trip over
            raise
        space.made_private = make_home_private(paths)
        return space

    @classmethod
    def open(
        cls,
        home: Path,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> Space:
        """Open the space in ``home``. Raises ``NotInitialized``, ``HomeError``,
        ``InsecureKeyFile`` or ``StoreBroken``."""
        paths = HomePaths(Path(home))  # a str works too
        paths.check_initialized()
        made_private = make_home_private(paths)
        keys = load_space(paths)
        device, name = load_device(paths)
        store = SqliteStore.open(paths.database)
        stored_id = store.get_meta("space_id")
        if stored_id != keys.space_id:
            store.close()
            raise StoreBroken(
                f"{paths.database} belongs to space {stored_id}, not to {keys.space_id} of {paths.space_key}"
            )
        space = cls(
            paths=paths, device=device, name=name, keys=keys, store=store, clock=clock, entropy=entropy
        )
        space.made_private = made_private
        devices.learn_keys(space)  # a keys envelope stored before a crash, its epoch not saved
        space.replica.void_removed()  # and a removal stored before a crash
        return space

    def close(self) -> None:
        """Close the store. Idempotent."""
        with self.lock:
            with contextlib.suppress(StoreError):  # broken, closed or a full disk: a cache
                self.replica.flush_view()  # what this process read or wrote, for the next reader
            self.replica.drop()
            self.store.close()
            if self._blobs is not None:
                self._blobs.close()
                self._blobs = None

    def __enter__(self) -> Space:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> Store:
        """Where the envelopes live (the replica's store)."""
        return self.replica.store

    @store.setter
    def store(self, store: Store) -> None:
        self.replica.store = store

    @property
    def keys(self) -> SpaceKeys:
        """The space's keys on this device (the replica's): they grow with each key epoch."""
        return self.replica.keys

    @keys.setter
    def keys(self, keys: SpaceKeys) -> None:
        self.replica.keys = keys
        self._keys_stamp = _stamp(self.paths.space_key)

    def keys_changed(self) -> bool:
        """Take a key epoch another process of this home learnt (space.key changed), or one a
        keys envelope here holds: whether the keys changed. The node asks before it acts on a
        change of the device list, and every write asks, so nothing is sealed under an epoch a
        removal ended."""
        changed = False
        stamp = _stamp(self.paths.space_key)
        if stamp != self._keys_stamp:
            with self.lock:
                self.replica.keys = load_space(self.paths)
                self._keys_stamp = stamp
                self.replica.catch_up()
                changed = True
        return devices.learn_keys(self) or changed

    @property
    def device_id(self) -> DeviceId:
        """This device's id."""
        return DeviceId(self._author.hex())

    @property
    def is_relay(self) -> bool:
        """Whether this home is a relay (ciphertext only)."""
        return self.keys.is_relay

    def require_member(self) -> None:
        if self.keys.is_relay:
            raise RelayOnly(
                f"{self.paths.root} is a relay: it stores and forwards ciphertext and can never "
                "read or write prompts"
            )

    # -- writing ------------------------------------------------------------------------------

    def add(
        self,
        text: str,
        *,
        model: str,
        kind: PromptKind | str | None = None,
        params: Mapping[str, ParamValue] | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        prompt_id: PromptId | None = None,
        files: Sequence[str | os.PathLike[str] | BlobRef] = (),
        messages: Sequence[chat.Message | Mapping[str, Any]] | None = None,
        llm: chat.LlmInput | None = None,
    ) -> Prompt:
        """Queue one prompt; returns it once it is durably stored.

        ``files`` are attachments: paths (sealed into this home's attachment store first) or
        references from ``attach``. Without ``kind``, the kind follows from the backend the
        mesh serves the model with (whisper: asr, diffusers: image), else llm.

        ``messages`` is a whole conversation (``chat.Message`` turns, or dicts with role,
        content and optionally tool_calls, tool_call_id, name), ``llm`` everything an llm
        prompt may carry (``chat.LlmInput``: messages, tools, output format, stop strings,
        texts to embed); give one or neither. With either, ``text`` may be empty: it becomes
        the last user turn. A model the mesh serves with a backend that cannot do what is asked
        (tools, JSON output, a conversation's history...) is refused (``chat.Unable``).

        With ``prompt_id`` (from ``new_prompt_id``) the add is idempotent: if the log holds that
        prompt already, it is returned and nothing is written (a caller that crashed between
        recording the id and adding it can simply add it again).

        Raises ``InvalidInput`` for bad arguments and ``StoreBroken`` if it cannot be stored.
        """
        if prompt_id is not None and is_prompt_id(prompt_id) and self.log.has_prompt(prompt_id):
            return self.log.prompt(prompt_id)  # added before: its files need not be read again
        new = NewPrompt(
            text=text,
            model=model,
            kind=_kind(kind),
            params=params or {},
            priority=priority,
            max_attempts=max_attempts,
            id=prompt_id,
            files=[f if isinstance(f, BlobRef) else self.attach(f) for f in files],
            messages=messages,
            llm=llm,
        )
        return self.add_many([new])[0]

    # -- attachments ----------------------------------------------------------------------------

    @property
    def blobs(self) -> BlobStore:
        """This home's attachment store (opened on first use)."""
        with self.lock:
            if self._blobs is None:
                self._blobs = BlobStore(self.paths.blobs)
            return self._blobs

    def sealer(self, epoch: int | None = None) -> Sealer:
        """Blob ids and chunk sealing under ``epoch``'s keys (the newest by default)."""
        return Sealer(self.keys, epoch)

    def attach(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> BlobRef:
        """Seal a file into the attachment store, for ``add(files=...)`` or a result. Raises
        ``InvalidInput`` (missing, unreadable, over ``blob_limit``)."""
        self.require_member()
        return self.blobs.add_file(
            Path(path), self.sealer(), name=name, limit=self.blob_limit, progress=progress
        )

    def save_file(self, ref: BlobRef, folder: str | os.PathLike[str], *, name: str | None = None) -> Path:
        """Decrypt an attachment held here into ``folder``. Raises ``BlobUnavailable`` while
        chunks are missing (``want`` asks the node for them) or ``BlobError``."""
        self.require_member()
        return self.blobs.save(ref, self.sealer(ref.epoch), Path(folder) / (name or ref.name))

    def mesh_models(self) -> dict[str, str] | None:
        """Models the mesh advertises, with their backends, as this home's node last noted them
        (reading the Doc for this would cost a cold add its speed); None if no node ran here."""
        known = self.store.get_meta("mesh.models")
        if known is None:
            return None
        try:
            found = json.loads(known)
        except ValueError:
            return None
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None

    def new_prompt_id(self) -> PromptId:
        """A fresh prompt id, for a caller that must record it before adding (``add``)."""
        with self.lock:
            self._last_id = next_prompt_id(self.clock(), self.entropy(10), self._last_id)
            return self._last_id

    def prepare(self, new: NewPrompt) -> Prompt:
        """The prompt ``new`` asks for, checked as ``add_many`` checks it, but not stored: for
        this device's node to run at once and store with its result (``Scheduler.run_at_once``).
        Raises ``InvalidInput``."""
        self.require_member()
        return self._make_prompt(new, self.mesh_models() or {})

    def add_many(self, new: Sequence[NewPrompt], *, durable: bool = True) -> list[Prompt]:
        """Queue several prompts in one store transaction (envelopes of up to ~512 KiB each).

        With ``durable`` false the commit skips its fsync: the prompts survive the process
        being killed but not power loss until the next fsync of this home's store (any durable
        write, such as a result, or ``Store.sync`` before envelopes leave the device). For a
        caller whose acknowledgement is the prompt's result, as the HTTP API's answer is.

        Raises ``InvalidInput`` (nothing is stored) or ``StoreBroken``.
        """
        self.require_member()
        served = self.mesh_models() or {}  # read once for the batch: a store read and a parse
        prompts = [self._make_prompt(n, served) for n in new]
        known = {n.id for n in new if n.id is not None and self.log.has_prompt(n.id)}
        if known:
            stored = {p.id: self.log.prompt(p.id) for p in prompts if p.id in known}
            rest = [n for n in new if n.id not in known]
            fresh = self.add_many(rest, durable=durable) if rest else []
            added = iter(fresh)
            return [stored[p.id] if p.id in known else next(added) for p in prompts]
        with self.lock:
            self.keys_changed()
            updates, clock, encoded = [], self._blind_clock, list[str]()
            for batch in by_size(prompts, prompt_bytes, MAX_UPDATE_BYTES):
                entries = [(p.id, encode(p.to_wire())) for p in batch]
                updates.append(yjs.encode_map_inserts(self._blind_client, clock, "prompts", entries))
                encoded.extend(text for _, text in entries)
                clock += len(batch)
            # Prompts: the content floor (a 10-byte and a 900-byte one look alike).
            seqs = self.store.append_own(
                self._author,
                [self._sealer(u, Floor.CONTENT) for u in updates],
                durable=durable,
                view=self.replica.blind_rows(prompts, encoded),
            )
            # Only now: a clock used by an update that never reached the store would leave a gap
            # that makes every peer hold this client's later updates forever.
            self._blind_clock = clock
            self.replica.stored_own(self._author, seqs, updates)
        return prompts

    def cancel(self, prefix: str) -> Entry:
        """Ask every device to cancel the prompt. Raises ``UnknownId``, ``AmbiguousId`` or
        ``InvalidState`` (when it already finished or was cancelled)."""
        with self.lock:
            entry = self.show(prefix)
            if entry.status in TERMINAL:
                raise InvalidState(f"prompt {entry.prompt.id} is {entry.status} already")
            cancel = Cancel(prompt_id=entry.prompt.id, by=self.device_id, at=self.clock())
            self._write(lambda log: log.cancel(cancel))
            return self.log.entry(entry.prompt.id)

    def retry(self, prefix: str) -> Entry:
        """Run a failed prompt again: up to its max attempts more runs, with no backoff.

        Raises ``UnknownId``, ``AmbiguousId`` or ``InvalidState`` (it has not failed)."""
        with self.lock:
            entry = self.show(prefix)
            if entry.status is Status.CANCELLED:
                raise InvalidState(f"prompt {entry.prompt.id} was cancelled: add it again instead")
            if entry.status is not Status.FAILED:
                raise InvalidState(
                    f"prompt {entry.prompt.id} is {entry.status}: only failed prompts are retried"
                )
            retry = Retry(
                prompt_id=entry.prompt.id,
                by=self.device_id,
                at=self.clock(),
                max_attempts=entry.facts.failures() + entry.prompt.max_attempts,
            )
            self._write(lambda log: log.put_retry(retry))
            return self.log.entry(entry.prompt.id)

    def append_stream(self, prompt_id: str, text: str, *, durable: bool = True) -> None:
        """Append streamed output of a running prompt (the scheduler calls this ~10 times/s);
        ``durable`` as in ``write``."""
        with self.lock:
            self._write(lambda log: log.append_stream(prompt_id, text), durable=durable)

    def finish(self, result: Result) -> None:
        """Write a run's result and drop its stream in one transaction."""
        with self.lock:
            self._write(lambda log: log.finish(result))

    def drop_stream(self, prompt_id: str) -> None:
        """Remove the stream of a run that ended without a result (cancelled)."""
        with self.lock:
            if self.log.stream(prompt_id) is not None:
                self._write(lambda log: log.drop_stream(prompt_id))

    def write(self, changes: Callable[[Log], object], *, durable: bool = True) -> None:
        """Make several changes as one envelope (``Log.batch``): a scheduler's claims, or a
        run's "running" mark with its first output. With ``durable`` false the commit skips
        its fsync (``Store.sync``, before envelopes leave the device): for what power loss may
        take back, since the prompt then simply runs again (claims, heartbeats, streams).

        The envelope pads to the largest floor of the changes (``Log.floor``): the small one for
        claims, heartbeats and stream chunks alone, the content floor once a prompt or a result
        is among them (PROTOCOL.md, "Padding")."""
        with self.lock:
            self._write(lambda log: log.batch(changes), durable=durable)

    def put_claim(self, claim: Claim) -> None:
        """Write a claim (used by the scheduler, and by tests of the lifecycle)."""
        with self.lock:
            self._write(lambda log: log.put_claim(claim))

    def put_result(self, result: Result) -> None:
        """Write the result of a run."""
        with self.lock:
            self._write(lambda log: log.put_result(result))

    def put_node(self, node: NodeInfo) -> None:
        """Write this node's presence record."""
        with self.lock:
            self._write(lambda log: log.put_node(node))

    def put_device(self, device: Device) -> None:
        """Record a member device."""
        with self.lock:
            self._write(lambda log: log.put_device(device))

    # -- devices (syncq.devices) ------------------------------------------------------------

    def create_invite(
        self, *, role: str = "member", expires_ms: int = devices.DAY_MS, addresses: Sequence[str] = ()
    ) -> tuple[str, InviteRecord]:
        """A fresh one-time invite code, and its record (``devices.create_invite``)."""
        return devices.create_invite(self, role=role, expires_ms=expires_ms, addresses=tuple(addresses))

    def invites(self, *, everything: bool = False) -> list[InviteRecord]:
        """Pending invites, or every one made (``devices.invites``)."""
        return devices.invites(self, everything=everything)

    def revoke_invite(self, prefix: str) -> InviteRecord:
        """Revoke a pending invite (``devices.revoke_invite``)."""
        return devices.revoke_invite(self, prefix)

    def invite_auth_keys(self) -> dict[str, bytes]:
        """Invite id -> its join handshake key (``devices.invite_auth_keys``)."""
        return devices.invite_auth_keys(self)

    def admit(self, invite_id: str, *, device: bytes, exchange: bytes, name: str) -> Grant:
        """Admit the holder of an invite (``devices.admit``)."""
        return devices.admit(self, invite_id, device=device, exchange=exchange, name=name)

    def listing(self) -> roster.Listing:
        """Who is on the device list (``Replica.listing``)."""
        return self.replica.listing()

    def peer_refusal(self, device: bytes) -> str | None:
        """Why a peer may not sync with this node, or None (``devices.peer_refusal``)."""
        return devices.peer_refusal(self, device)

    def devices(self) -> list[DeviceView]:
        """Every device of the space (``devices.devices``)."""
        return devices.devices(self)

    def rename_device(self, old: str, new: str) -> DeviceView:
        """Rename a device for every member (``devices.rename_device``)."""
        return devices.rename_device(self, old, new)

    def remove_device(self, target: str) -> Removal:
        """Remove a device and rotate the keys (``devices.remove_device``)."""
        return devices.remove_device(self, target)

    def rotate_if_needed(self) -> bool:
        """Rotate if a removed device may hold the newest epoch (``devices.rotate_if_needed``)."""
        return devices.rotate_if_needed(self)

    def void_devices(self) -> frozenset[str]:
        """Devices whose claims are void (``devices.void_devices``)."""
        return devices.void_devices(self)

    # -- reading ------------------------------------------------------------------------------

    @property
    def log(self) -> Log:
        """The Doc, loaded on first use and brought up to date with the store on every access
        (other processes may have written)."""
        self.require_member()
        return self.replica.log

    def resolve(self, prefix: str) -> PromptId:
        """The one prompt id starting with ``prefix``. Raises ``UnknownId`` or ``AmbiguousId``."""
        found = self._viewed(lambda view: view.resolve(prefix))
        return found if found is not None else _resolve(self.log, prefix)

    def show(self, prefix: str) -> Entry:
        """A prompt with its status, claims and every run. Raises ``UnknownId``,
        ``AmbiguousId`` or ``MalformedRecord``."""
        found = self._viewed(lambda view: view.show(prefix))
        if found is not None:
            return found
        log = self.log
        return log.entry(_resolve(log, prefix))

    def entries(
        self,
        *,
        limit: int | None = 20,
        status: Status | str | None = None,
        model: str | None = None,
        since: str | None = None,
        grep: str | None = None,
    ) -> list[Entry]:
        """The newest ``limit`` prompts that match, oldest first (like a chat).

        ``since`` is an id (or prefix): only prompts added after it. ``grep`` keeps the prompts
        that mention it, ignoring case, in their text, conversation, answers or errors
        (``Entry.mentions``): searched in memory, in the local view's rows or the Doc, so nothing
        is written anywhere. Raises ``UnknownId`` or ``AmbiguousId`` for a bad ``since``.
        """
        wanted = Status(status) if status is not None else None
        found = self._viewed(
            lambda view: view.entries(limit=limit, status=wanted, model=model, since=since, grep=grep)
        )
        if found is not None:
            return found
        log = self.log
        ids = log.prompt_ids()
        if since is not None:
            start = resolve_prefix(since, ids)
            ids = [i for i in ids if i > start]
        picked: list[Entry] = []
        for prompt_id in reversed(ids):
            if limit is not None and len(picked) >= limit:
                break
            if wanted is not None and _status(log, prompt_id) is not wanted:
                continue
            if grep is not None and not _mentions(log, prompt_id, grep):
                continue
            for entry in log.entries([prompt_id]):
                if model is None or entry.prompt.model == model:
                    picked.append(entry)
        picked.reverse()
        return picked

    def status(self) -> SpaceStatus:
        """Counts and sizes for ``syncq status`` (a relay has no prompts it can count)."""
        prompts, counts, devices = None, {}, None
        if not self.is_relay:
            found = self._viewed(lambda view: (*view.counts(), view.devices))
            if found is None:
                log = self.log
                found = (len(log), log.counts(), len(log.devices()))
            prompts, counts, devices = found[0], {s.value: n for s, n in found[1].items()}, found[2]
        # Not opened just to count: creating the attachment store is a write (a full disk).
        files, files_bytes = self.blobs.usage() if self._blobs or self.paths.blobs.exists() else (0, 0)
        return SpaceStatus(
            home=self.paths.root,
            device_id=self.device_id,
            device_name=self.name,
            space_id=self.keys.space_id,
            relay=self.is_relay,
            prompts=prompts,
            counts=counts,
            devices=devices,
            envelopes=self.store.count(),
            store_bytes=self.store.size_bytes(),
            snapshots=len(self.replica.held_snapshots()),
            snapshot_covers=sum(self.replica.floor().values()),
            rejected=self.store.rejections(),
            quarantined=self.store.quarantined(),
            files=files,
            files_bytes=files_bytes,
            **self._mesh_status(),
        )

    def _viewed(self, read: Callable[[Reader], T]) -> T | None:
        """``read``'s answer from the local view, or None when the view cannot answer: it may
        not cover the store, or the Doc is loaded here anyway (``Replica.reader``). A damaged
        row makes the view be rebuilt from the Doc, which answers instead."""
        self.require_member()
        reader = self.replica.reader()
        if reader is None and self.replica.reader_may_come() and self.node_running():
            # The node writes what its peers changed into the view a few times a second:
            # waiting for that costs less than loading a long history's Doc.
            deadline = time.monotonic() + 2 * NODE_FLUSH_S
            while reader is None and time.monotonic() < deadline:
                time.sleep(NODE_FLUSH_S / 10)
                reader = self.replica.reader()
        if reader is None:
            return None
        try:
            return read(reader)
        except EnvelopeRejected as exc:
            self.store.view.clear()
            self.store.record_rejection(exc.reason, f"view ignored: {exc}")
            return None

    def node_running(self) -> str | None:
        """The listen URL of the node running in this home, judged by its heartbeat."""
        beat = self.store.get_meta("node.heartbeat")
        if beat is None or not beat.isdigit() or self.clock() - int(beat) > NODE_FRESH_MS:
            return None
        return self.store.get_meta("node.listen") or "?"

    def _mesh_status(self) -> dict[str, Any]:
        node = self.node_running()
        peers = self.store.peers()
        connected = [p for p in peers if p.connected] if node else []
        return {
            "node": node,
            "peers": len(peers),
            "peers_connected": len(connected),
            "peers_behind": sum(p.behind or 0 for p in connected),
            "node_tasks": self._node_tasks() if node else {},
        }

    def _node_tasks(self) -> dict[str, Mapping[str, Any]]:
        """What the running node says of its crashed tasks (``node.tasks``); {} if unreadable."""
        try:
            tasks = json.loads(self.store.get_meta("node.tasks") or "{}")
        except ValueError:
            return {}
        if not isinstance(tasks, dict):
            return {}
        return {str(k): v for k, v in tasks.items() if isinstance(v, dict)}

    # -- exchanging envelopes: the replica's (the sync layer and the tests use these) ----------

    def version_vector(self) -> dict[bytes, int]:
        """Per author, the highest seq up to which this device holds every envelope."""
        return self.replica.version_vector()

    def envelopes(self, after: Mapping[bytes, int] | None = None) -> Iterator[bytes]:
        """Stored envelopes the holder of ``after`` lacks, per author in seq order."""
        return self.replica.envelopes(after)

    def envelopes_for(
        self, peer_vv: Mapping[bytes, int], max_count: int, max_bytes: int
    ) -> list[tuple[bytes, int, bytes]]:
        """A batch of envelopes the holder of ``peer_vv`` lacks (``Replica.envelopes_for``)."""
        return self.replica.envelopes_for(peer_vv, max_count, max_bytes)

    def receive(self, datas: Iterable[bytes]) -> ReceiveReport:
        """Verify, store and apply envelopes from elsewhere (``Replica.receive``), and take any
        key epoch sealed to this device that came with them."""
        report = self.replica.receive(datas)
        if report.control:
            devices.learn_keys(self)
            self.replica.void_removed()
        return report

    def checkpoint(self) -> None:
        """Seal the Doc's state into the store, so the next open need not replay envelopes."""
        self.require_member()
        self.replica.checkpoint()

    # -- internals ----------------------------------------------------------------------------

    def _make_prompt(self, new: NewPrompt, served: Mapping[str, str]) -> Prompt:
        """The prompt ``new`` asks for, checked; ``served`` maps the mesh's models to their
        backends (``mesh_models``): a model not in it has a guessed kind, and nothing is
        refused for its abilities."""
        now = self.clock()
        if new.id is not None and not is_prompt_id(new.id):
            raise InvalidInput(f"{new.id!r} is not a prompt id")
        prompt_id = new.id
        if prompt_id is None:
            prompt_id = self._last_id = next_prompt_id(now, self.entropy(10), self._last_id)
        backend = served.get(new.model)
        kind = new.kind if new.kind is not None else BACKEND_KINDS.get(backend or "", PromptKind.LLM)
        guessed = new.kind is None and backend is None
        text, llm = chat.prompt_llm(new.text, new.messages, new.llm)
        if llm is not None and kind is not PromptKind.LLM:
            raise InvalidInput(f"only llm prompts carry a conversation or tools, not {kind} prompts")
        if len(new.files) > MAX_FILES:
            raise InvalidInput(f"at most {MAX_FILES} files per prompt ({len(new.files)} given)")
        if kind is PromptKind.ASR and len(new.files) != 1:
            raise InvalidInput("a speech prompt needs exactly one audio file (--file)")
        params = check_params(new.params, kind, guessed_for=new.model if guessed else None)
        if kind is PromptKind.LLM:
            mode = str(params.get("mode", "chat"))
            reason = chat.refusal(backend, new.model, mode, llm)
            if reason is not None:
                raise chat.Unable(reason)
        return Prompt(
            id=prompt_id,
            model=check_model(new.model),
            kind=kind,
            input=check_prompt_input(text, files=len(new.files)),
            params=params,
            files=tuple(new.files),
            created_at=now,
            author=self.device_id,
            priority=check_priority(new.priority),
            max_attempts=check_max_attempts(new.max_attempts),
            llm=llm,
        )

    def _sealer(self, payload: bytes, floor: Floor = Floor.CONTENT) -> Callable[[int], bytes]:
        """Seals ``payload`` padded to ``floor``: the content floor unless the writer knows it
        carries no prompt and no result (PROTOCOL.md, "Padding")."""

        def seal(seq: int) -> bytes:
            return crypto.seal(
                device=self.device,
                space=self.keys,
                seq=seq,
                payload=payload,
                nonce=self.entropy(12),
                floor=floor,
            )

        return seal

    def _write(self, mutate: Callable[[Log], bytes], *, durable: bool = True) -> None:
        self.keys_changed()  # seal under the newest epoch, even one another process learnt
        log = self.log
        update = mutate(log)
        # What the update carries picks its padding: the Log marks claims, presence, cancels,
        # retries, streams and device records small, and a batch pads as its largest part.
        floor = log.floor
        rows, covered = self.replica.own_rows()  # the view's rows go in the same transaction
        try:
            seqs = self.store.append_own(
                self._author, [self._sealer(update, floor)], durable=durable, view=rows, covered=covered
            )
        except BaseException:
            self.replica.drop()  # the Doc holds a change the store does not
            raise
        self.replica.stored_own(self._author, seqs, None)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_ino


def _kind(kind: PromptKind | str | None) -> PromptKind | None:
    if kind is None:
        return None
    try:
        return PromptKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in PromptKind)
        raise InvalidInput(f"unknown kind {kind!r} (known: {known})") from None


def prompt_bytes(prompt: Prompt) -> int:
    """About how many bytes the prompt takes in an envelope (for ``grouped.by_size``)."""
    cost = len(prompt.input.encode()) + 300
    if prompt.llm is not None:  # a conversation can outweigh its text many times over
        cost += len(encode(prompt.llm.to_wire()).encode())
    return cost


def _status(log: Log, prompt_id: str) -> Status | None:
    try:
        return log.status(prompt_id)
    except MalformedRecord:
        return None  # skipped, as ``Log.entries`` skips it (a member may overwrite any prompt)


def _mentions(log: Log, prompt_id: str, text: str) -> bool:
    try:
        return log.mentions(prompt_id, text)
    except MalformedRecord:
        return False  # skipped, as ``Log.entries`` skips it


def _resolve(log: Log, prefix: str) -> PromptId:
    """``resolve_prefix`` over the log's ids; a whole id the log holds is looked up, not
    searched for (the API follows each of its prompts by whole id, many times a second)."""
    if len(prefix) == ID_LENGTH and log.has_prompt(prefix):
        return PromptId(prefix)
    return resolve_prefix(prefix, log.prompt_ids())
