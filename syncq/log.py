"""The CRDT log of one space: a pycrdt Doc with the root maps of DESIGN.md section 5.

Every mutation is one Doc transaction whose incremental update the caller seals into one
envelope; status is derived (``syncq.lifecycle``), never stored. Each value is one record as
JSON text (``records.encode``: one immutable value per key, far less memory than nested maps or
dicts); changing a record writes a new value.

Each mutation also says how its envelope is padded (``Log.floor``, ``syncq.padding.Floor``):
the content floor unless the method is marked content-free or a stream chunk (``SMALL``
below); a batch takes the largest floor of its parts, so a claim written with a prompt or a
result pads as content.

The Doc is a cache: it is rebuilt from envelopes (and checkpoints) by ``syncq.space``. Its Yjs
client id is an argument so that each process can use a fresh random one (DESIGN.md section 4:
reusing one after losing unsaved state makes peers ignore the new writes).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from pycrdt import Doc, Map, Text, TransactionEvent

from syncq.device_records import DeviceName, InviteRecord
from syncq.entries import Entry as Entry  # re-exported: Entry was defined here first
from syncq.entries import Raw, entry_of
from syncq.errors import BadUpdate, LocalProtocolError, MalformedRecord
from syncq.ids import PromptId
from syncq.lifecycle import Status
from syncq.padding import Floor
from syncq.records import Cancel, Claim, Device, NodeInfo, Prompt, Result, Retry, Wire, decode, encode

T = TypeVar("T")

ROOTS = (
    "prompts",
    "cancels",
    "retries",
    "claims",
    "results",
    "streams",
    "nodes",
    "devices",
    "invites",
    "names",
)


class Changes:
    """A feed of the prompt ids whose facts changed (prompt, cancel, retry, claims, results),
    for a consumer that keeps derived state, such as the scheduler, instead of rescanning the
    whole log on every change."""

    def __init__(self, initial: Iterable[str], *, streams: bool = False) -> None:
        self._ids: set[str] = set(initial)
        self.streams = streams  # also name prompts whose streamed output grew

    def add(self, prompt_id: str) -> None:
        """Note a change (called by the log)."""
        self._ids.add(prompt_id)

    def pending(self) -> bool:
        """Whether a change is waiting to be drained."""
        return bool(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def drain(self) -> set[str]:
        """The ids changed since the last drain (every prompt, the first time)."""
        ids, self._ids = self._ids, set()
        return ids


def _text(value: object) -> str | None:
    # Anything but JSON text (another type a hostile member wrote) stays malformed: "" decodes
    # to nothing, where str() of a nested map could read as a record.
    return None if value is None else value if isinstance(value, str) else ""


# Roots whose keys start with a prompt id and change its status; ``claims`` and ``results`` are
# keyed ``id/...``, one entry per node or run.
_FACTS = ("prompts", "cancels", "retries", "claims", "results")
_GROUPED = ("claims", "results")
# What the mutations marked so pad to (``Floor.SMALL``): records that carry no prompt and no
# result, and stream chunks. Every other mutation, a new one included, pads as content.
SMALL = Floor.SMALL


class Log:
    """One space's CRDT state: mutations return the update to seal, queries return records."""

    def __init__(self, client_id: int, state: bytes | None = None) -> None:
        """A Doc, empty or holding ``state`` (a checkpoint's or a snapshot's): a state is
        applied before the observers are attached, and the claim and result keys are then
        grouped in one pass; observed, each key built an event nobody reads (at 100k prompts,
        three quarters of the time to load a state). Raises ``BadUpdate`` for a bad state."""
        self._doc: Doc[Any] = Doc(client_id=client_id)
        self._maps = {name: self._doc.get(name, type=Map) for name in ROOTS}
        self._captured: list[bytes] = []
        self._batching = False
        self._floor = Floor.CONTENT
        # Claim and result keys grouped by prompt id, kept up to date by the observers.
        self._grouped: dict[str, dict[str, set[str]]] = {name: {} for name in _GROUPED}
        if state is not None:
            try:
                self._doc.apply_update(state)
            except ValueError as exc:
                raise BadUpdate(f"state is not a valid update: {exc}") from exc
            for name, grouped in self._grouped.items():
                for key in self._maps[name]:
                    grouped.setdefault(key.split("/", 1)[0], set()).add(key)
        self._feeds: list[Changes] = []
        self._statuses: dict[str, Status] = {}  # derived on demand, dropped when facts change
        self._doc.observe(self._capture)
        # pycrdt drops an observer when its subscription is garbage collected: keep them.
        self._subscriptions = [self._maps[name].observe(self._observer(name)) for name in _FACTS]
        self._subscriptions.append(self._maps["streams"].observe_deep(self._observe_streams))
        # The nodes' presence, decoded once per change: the scheduler and every waiter of the
        # API read it several times per prompt.
        self._nodes: list[NodeInfo] | None = None
        self._subscriptions.append(self._maps["nodes"].observe(self._forget_nodes))
        self._devices: list[Device] | None = None  # likewise: the view counts them on each write
        self._subscriptions.append(self._maps["devices"].observe(self._forget_devices))

    # -- state in and out ------------------------------------------------------------------

    def apply(self, update: bytes) -> None:
        """Merge an update (from the store or a peer). Raises ``BadUpdate`` if the
        authenticated payload is still not a Yjs update (a broken or hostile member)."""
        try:
            self._doc.apply_update(update)
        except ValueError as exc:
            raise BadUpdate(f"payload is not a valid update: {exc}") from exc
        finally:
            self._captured.clear()

    def state(self) -> bytes:
        """The whole state as one update (what a checkpoint stores)."""
        return self._doc.get_update()

    def follow(self, *, streams: bool = False) -> Changes:
        """A feed of changed prompt ids from now on, starting with every prompt there is; with
        ``streams``, output streamed into a prompt counts as a change too."""
        feed = Changes(self._maps["prompts"].keys(), streams=streams)
        self._feeds.append(feed)
        return feed

    # -- mutations: each is one transaction and returns its update ---------------------------

    @property
    def floor(self) -> Floor:
        """The padding floor of the update the last mutation returned: what it carries, not its
        size (``syncq.padding``)."""
        return self._floor

    def batch(self, changes: Callable[[Log], object]) -> bytes:
        """Run several mutations as one transaction and return its one update (each mutation
        inside returns ``b""``): one envelope instead of several, padded to the largest floor
        of its parts."""

        def run() -> None:
            self._batching = True
            try:
                changes(self)
            finally:
                self._batching = False

        return self._mutate(run, SMALL)  # raised by each part (``_mutate``)

    def cancel(self, cancel: Cancel) -> bytes:
        """Record a cancel request."""
        return self._mutate(lambda: _set(self._maps["cancels"], cancel.prompt_id, cancel.to_wire()), SMALL)

    def put_prompt(self, prompt: Prompt) -> bytes:
        """Record a prompt through the Doc, for a batch that also claims and ends it (a run at
        once, ``Scheduler.run_at_once``); adds go out as blind inserts (``Space.add_many``)."""
        return self._mutate(lambda: _set(self._maps["prompts"], prompt.id, prompt.to_wire()))

    def put_retry(self, retry: Retry) -> bytes:
        """Record a request to run a failed prompt again."""
        return self._mutate(lambda: _set(self._maps["retries"], retry.prompt_id, retry.to_wire()), SMALL)

    def append_stream(self, prompt_id: str, text: str) -> bytes:
        """Append output to the prompt's stream (a Text, so each chunk is a small update). A
        chunk pads to the small floor: under it, its length (a token's) does not show."""
        streams = self._maps["streams"]

        def append() -> None:
            current = streams.get(prompt_id)
            if isinstance(current, Text):
                current += text
            else:
                streams[prompt_id] = Text(text)

        return self._mutate(append, SMALL)

    def finish(self, result: Result) -> bytes:
        """Record a run's result and drop its stream, in one transaction: a finished job
        costs no per-chunk history."""

        def change() -> None:
            _set(self._maps["results"], result.key, result.to_wire())
            if result.prompt_id in self._maps["streams"]:
                del self._maps["streams"][result.prompt_id]

        return self._mutate(change)

    def drop_stream(self, prompt_id: str) -> bytes:
        """Remove a stream (of a cancelled run). Raises ``KeyError`` if there is none."""
        return self._mutate(lambda: self._maps["streams"].pop(prompt_id), SMALL)

    def put_claim(self, claim: Claim) -> bytes:
        """Write (or refresh) this node's claim on a prompt."""
        return self._mutate(lambda: _set(self._maps["claims"], claim.key, claim.to_wire()), SMALL)

    def put_result(self, result: Result) -> bytes:
        """Record the outcome of one run."""
        return self._mutate(lambda: _set(self._maps["results"], result.key, result.to_wire()))

    def put_device(self, device: Device) -> bytes:
        """Record (or update) a member device."""
        return self._mutate(lambda: _set(self._maps["devices"], device.id, device.to_wire()), SMALL)

    def put_invite(self, invite: InviteRecord) -> bytes:
        """Record an invite, or its new state."""
        return self._mutate(lambda: _set(self._maps["invites"], invite.id, invite.to_wire()), SMALL)

    def put_name(self, name: DeviceName) -> bytes:
        """Record a name given to a device."""
        return self._mutate(lambda: _set(self._maps["names"], name.device, name.to_wire()), SMALL)

    def put_node(self, node: NodeInfo) -> bytes:
        """Record a node's presence."""
        return self._mutate(lambda: _set(self._maps["nodes"], node.id, node.to_wire()), SMALL)

    # -- queries -------------------------------------------------------------------------------

    def prompt_ids(self) -> list[PromptId]:
        """Every prompt id, oldest first (ids sort by creation time)."""
        return sorted(PromptId(k) for k in self._maps["prompts"])

    def __len__(self) -> int:
        return len(self._maps["prompts"])

    def has_prompt(self, prompt_id: str) -> bool:
        """Whether the log holds this prompt."""
        return prompt_id in self._maps["prompts"]

    def entry(self, prompt_id: str, *, stream: bool = True) -> Entry:
        """The prompt with its facts and status (and the output streamed so far, unless
        ``stream`` is false). Raises ``KeyError`` or ``MalformedRecord``."""
        return entry_of(prompt_id, self.raw(prompt_id, stream=stream))

    def raw(self, prompt_id: str, *, stream: bool = True) -> Raw:
        """The prompt's records as stored, undecoded (what ``syncq.view`` keeps of it). Raises
        ``KeyError``."""
        maps = self._maps
        return Raw(
            prompt=_text(maps["prompts"][prompt_id]) or "",
            cancel=_text(maps["cancels"].get(prompt_id)),
            retry=_text(maps["retries"].get(prompt_id)),
            claims=self._grouped_values("claims", prompt_id),
            results=self._grouped_values("results", prompt_id),
            stream=self.stream(prompt_id) if stream else None,
        )

    def stream(self, prompt_id: str) -> str | None:
        """The output streamed so far by the node running the prompt, if it runs."""
        text = self._maps["streams"].get(prompt_id)
        return str(text) if isinstance(text, Text) else None

    def entries(self, ids: Iterable[str]) -> Iterator[Entry]:
        """Entries for ``ids`` in that order, skipping records that are malformed."""
        for prompt_id in ids:
            try:
                yield self.entry(prompt_id)
            except MalformedRecord:
                continue

    def mentions(self, prompt_id: str, text: str) -> bool:
        """``Entry.mentions`` for one prompt, deciding most misses from the stored JSON text
        without decoding it (``syncq log --grep`` over a year of prompts). Raises ``KeyError``
        or ``MalformedRecord``."""
        stored = [self._maps["prompts"][prompt_id]]
        stored += [self._maps["results"][key] for key in self._grouped["results"].get(prompt_id, ())]
        if _absent(text, stored):
            return False
        return self.entry(prompt_id, stream=False).mentions(text)

    def fingerprints(self) -> dict[str, str]:
        """Per prompt id, a digest of every fact stored about it, as stored: its record, cancel,
        retry, claims and results. It moves whenever its entry (and so its status) may have: an
        export rewrites only the prompts whose fingerprint moved (``syncq.export``). One pass
        over each root: asking each prompt's keys one by one costs 3 times as long."""
        digests = {key: hashlib.blake2b(digest_size=16) for key in self._maps["prompts"]}
        with self._doc.transaction():
            for root in _FACTS:
                for key, value in sorted(self._maps[root].items()):
                    digest = digests.get(key.split("/", 1)[0])
                    if digest is not None:
                        part = f"{root}\0{key}\0{value}".encode(errors="surrogatepass")
                        digest.update(len(part).to_bytes(8, "big") + part)
        return {key: digest.hexdigest() for key, digest in digests.items()}

    def prompt(self, prompt_id: str) -> Prompt:
        """Just the prompt record. Raises ``KeyError`` or ``MalformedRecord``."""
        return Prompt.from_wire(prompt_id, decode(self._maps["prompts"][prompt_id]))

    def untouched(self, prompt_id: str) -> bool:
        """Whether nothing has happened to the prompt yet (no claim, result, cancel or retry)."""
        return (
            prompt_id not in self._maps["cancels"]
            and prompt_id not in self._grouped["claims"]
            and prompt_id not in self._grouped["results"]
            and prompt_id not in self._maps["retries"]
        )

    def status(self, prompt_id: str) -> Status:
        """The derived status (remembered until the prompt's facts change)."""
        status = self._statuses.get(prompt_id)
        if status is None:
            status = (
                Status.QUEUED if self.untouched(prompt_id) else self.entry(prompt_id, stream=False).status
            )
            self._statuses[prompt_id] = status
        return status

    def counts(self) -> Counter[Status]:
        """How many prompts have each status (malformed records are not counted)."""
        counts: Counter[Status] = Counter()
        for prompt_id in self._maps["prompts"]:
            try:
                counts[self.status(prompt_id)] += 1
            except MalformedRecord:
                continue
        return counts

    def nodes(self) -> list[NodeInfo]:
        """Every node that announced itself, by name."""
        if self._nodes is None:
            self._nodes = sorted(self._all(NodeInfo.from_wire, "nodes"), key=lambda n: (n.name, n.id))
        return list(self._nodes)

    def _forget_nodes(self, event: object) -> None:
        self._nodes = None

    def devices(self) -> list[Device]:
        """Every member device known to the log, by name."""
        if self._devices is None:
            self._devices = sorted(self._all(Device.from_wire, "devices"), key=lambda d: (d.name, d.id))
        return list(self._devices)

    def _forget_devices(self, event: object) -> None:
        self._devices = None

    def invites(self) -> list[InviteRecord]:
        """Every invite made, newest first."""
        return sorted(self._all(InviteRecord.from_wire, "invites"), key=lambda i: (-i.created_at, i.id))

    def names(self) -> dict[str, str]:
        """Device id -> the name members gave it last."""
        return {n.device: n.name for n in self._all(DeviceName.from_wire, "names")}

    # -- internals ---------------------------------------------------------------------------

    def _capture(self, event: TransactionEvent) -> None:
        self._captured.append(event.update)

    def _observer(self, root: str) -> Callable[[Any], None]:
        # A closure of one argument: pycrdt passes the transaction too to a callback that
        # takes two (a default argument counts).
        return lambda event: self._observe(root, event)

    def _observe(self, root: str, event: Any) -> None:
        grouped = self._grouped.get(root)
        for key, change in event.keys.items():
            # Claims and results are keyed ``id/...``; prompts, cancels and retries by the id
            # alone, whatever it holds (a member may write a key with a "/" in it).
            prompt_id = key.split("/", 1)[0] if grouped is not None else key
            self._statuses.pop(prompt_id, None)
            if grouped is not None:
                keys = grouped.setdefault(prompt_id, set())
                if change["action"] == "delete":
                    keys.discard(key)
                    if not keys:
                        del grouped[prompt_id]
                else:
                    keys.add(key)
            for feed in self._feeds:
                feed.add(prompt_id)

    def _observe_streams(self, events: list[Any]) -> None:
        for event in events:
            path = getattr(event, "path", None)
            ids = [str(path[0])] if path else list(getattr(event, "keys", {}))
            for feed in self._feeds:
                if feed.streams:
                    for prompt_id in ids:
                        feed.add(prompt_id)

    def _mutate(self, change: Callable[[], object], floor: Floor = Floor.CONTENT) -> bytes:
        # ``floor``: the content floor unless the caller marks it small (``SMALL``); inside a
        # batch, the batch's floor rises to it.
        if self._batching:
            self._floor = max(self._floor, floor)
            change()
            return b""
        self._floor = floor
        self._captured.clear()
        with self._doc.transaction():
            change()
        if len(self._captured) != 1:
            raise LocalProtocolError("a mutation must produce exactly one update")
        return self._captured.pop()

    def _grouped_values(self, root: str, prompt_id: str) -> tuple[tuple[str, str], ...]:
        root_map = self._maps[root]
        return tuple((k, _text(root_map[k]) or "") for k in sorted(self._grouped[root].get(prompt_id, ())))

    def _all(self, convert: Callable[[str, object], T], root: str) -> Iterator[T]:
        return self._read(convert, root, list(self._maps[root]))

    def _read(
        self, convert: Callable[[str, object], T], root: str, keys: Iterable[str] | None
    ) -> Iterator[T]:
        root_map = self._maps[root]
        for key in sorted(keys or ()):
            try:
                yield convert(key, decode(root_map[key]))
            except MalformedRecord:
                continue


def _set(root: Map[object], key: str, wire: Wire) -> None:
    root[key] = encode(wire)


# What JSON may write as an escape: a needle holding none of these appears verbatim in the stored
# text wherever it appears in a decoded string, unless the text holds a \u escape (which may
# spell any character; ``records.encode`` writes none, another writer might).
_ESCAPED = frozenset('"\\/') | frozenset(map(chr, range(32)))


def _absent(text: str, stored: list[object]) -> bool:
    """Whether ``text`` surely occurs in no string of the stored records (ignoring case):
    False where only decoding can tell."""
    if _ESCAPED.intersection(text) or not all(isinstance(s, str) and "\\u" not in s for s in stored):
        return False
    needle = text.casefold()
    return not any(needle in str(s).casefold() for s in stored)
