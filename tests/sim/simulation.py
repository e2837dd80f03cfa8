"""A whole mesh in one process, under a seeded clock, network and crash schedule.

Every node is a real ``Space`` on real SQLite files; nodes talk through real ``Peering`` and
``SyncSession`` objects whose frames cross a simulated network (latency, loss, duplication,
reordering, cuts, partitions), and nodes that run prompts follow the claim protocol with the
real rules of ``syncq.claims`` and ``syncq.lifecycle`` (pick, claim, settle, run, heartbeat,
expire). A crash drops a node's whole in-memory state at an event boundary (its store is
closed without a flush, as a kill -9 leaves it) and the node restarts from its home. Nothing
reads the wall clock or the OS's randomness: one seed decides everything, so a failing
schedule replays from its seed alone.

After the faults stop and the mesh heals, ``World.check`` asserts the promises of DESIGN.md:
no acknowledged prompt lost, equal replicas, no prompt run twice among nodes that stayed
connected, every cancel honoured, and no removed device holding a key made after its removal.

What it does not run: node/scheduler.py's asyncio loop itself (streams, runs at once, the
per-model gates), the websockets layer, and the blob transfers. The claim protocol here is the
scheduler's, step for step, over the same pure functions.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import random
import shutil
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from syncq.claims import HeartbeatWatch, Policy, candidate, expiry_record, order, won
from syncq.crypto import DeviceKeys
from syncq.entries import Entry
from syncq.errors import InvalidState, SyncqError
from syncq.ids import DeviceId, PromptId
from syncq.invite import decode_invite
from syncq.lifecycle import TERMINAL, Status
from syncq.log import Changes, Log
from syncq.peering import NoHooks, Peering
from syncq.protocol import PeerClosed, Role, SessionFailed, State
from syncq.records import Claim, Result, RunStatus
from syncq.space import Space

BASE_MS = 1_700_000_000_000  # what the simulated wall clock reads at time 0
POLICY = Policy(lease_ms=3_000, heartbeat_ms=500, backoff_first_ms=200, backoff_max_ms=2_000)
SETTLE_MS = 250  # as the scheduler's SETTLE_MIN_S: claims cross the mesh before anyone runs
TICK_MS = 500  # as the scheduler's TICK_S: it looks even when nothing woke it
DIAL_MS = 300  # how often a node redials the peers it is not connected to
DEPTH = 2  # prompts a node holds claimed at once
HEAL_LIMIT_MS = 60_000  # after the heal, the mesh must be quiet and equal within this
RETENTION_MS = 1_000  # pruning's retention period here (a node's is prune_days)
MODEL = "echo"


@dataclass(frozen=True)
class Scale:
    """How big a schedule is: ``SMALL`` for the thousands ``make test`` runs, ``FULL`` for
    ``make sim``."""

    nodes: tuple[int, int]
    prompts: tuple[int, int]
    active_ms: int  # client operations and faults happen in this first stretch
    cancels: int  # at most
    kills: tuple[int, ...]  # a schedule's crash count is one of these
    partitions: tuple[int, ...]
    cuts: int  # at most
    name: str


SMALL = Scale(
    nodes=(3, 3),
    prompts=(2, 6),
    active_ms=3_000,
    cancels=2,
    kills=(0, 1, 2),
    partitions=(0, 0, 1),
    cuts=2,
    name="small",
)
FULL = Scale(
    nodes=(3, 5),
    prompts=(5, 25),
    active_ms=6_000,
    cancels=4,
    kills=(0, 1, 2, 4),
    partitions=(0, 0, 1, 2),
    cuts=3,
    name="full",
)


class SimFailure(AssertionError):
    """An invariant broke (or the product raised where it must not): the seed replays it."""


def template(folder: Path, members: int) -> list[Path]:
    """Homes of ``members`` devices of one space, founder first, made from a fixed seed: every
    schedule copies them, so device ids (and with them claim ranks) are the same in every run."""
    rng = random.Random(20261202)
    ticks = iter(range(BASE_MS - 10_000_000, BASE_MS))
    homes = [folder / f"n{i}" for i in range(members)]
    founder = Space.init(
        homes[0], name="n0", device_list=True, entropy=rng.randbytes, clock=lambda: next(ticks)
    )
    for i, home in enumerate(homes[1:], start=1):
        code, _ = founder.create_invite()
        device = DeviceKeys.from_seed(rng.randbytes(64))
        grant = founder.admit(
            decode_invite(code).id,
            device=device.public_key,
            exchange=device.exchange_public_key,
            name=f"n{i}",
        )
        Space.join_granted(home, device=device, name=f"n{i}", grant=grant).close()
    members_spaces = [Space.open(h) for h in homes[1:]]
    everyone = [founder, *members_spaces]
    for _ in range(2):  # everyone learns the whole device list before the schedule starts
        for a in everyone:
            for b in everyone:
                if a is not b:
                    b.receive(list(a.envelopes(b.version_vector())))
    for space in everyone:
        space.close()
    return homes


@dataclass
class Job:
    """A prompt claimed by a node (the scheduler's ``Running``)."""

    prompt_id: PromptId
    attempt: int
    claimed_at: int
    beat: int = 1
    running: bool = False

    def claim(self, me: DeviceId) -> Claim:
        self.beat += 1
        return Claim(
            prompt_id=self.prompt_id, node=me, attempt=self.attempt, heartbeat=self.beat, running=self.running
        )


@dataclass(frozen=True)
class Run:
    """One run that passed its settle check and started (what could run twice)."""

    prompt_id: str
    node: int
    attempt: int
    claimed_at: int
    started_at: int
    calm_since: int | None  # since when the mesh was whole and fault-free, when it started


@dataclass
class Written:
    """A done run's result a node wrote: every replica must show it (unless its node was
    removed first)."""

    prompt_id: str
    node: int
    attempt: int
    finished_at: int
    seq: int


class Node:
    """One simulated device: its home, its open space (None while down) and its claims."""

    def __init__(self, world: World, index: int, home: Path, runs_prompts: bool) -> None:
        self.world, self.index, self.home = world, index, home
        self.runs_prompts = runs_prompts
        self.space: Space | None = None
        self.jobs: dict[str, Job] = {}
        self.watch = HeartbeatWatch()
        self.life = 0  # raised by every crash: timers of an earlier life do nothing
        self.tick_due = False
        self.public_key = b""
        self._log: Log | None = None
        self._feed: Changes | None = None
        self._open: dict[str, Entry] = {}

    @property
    def name(self) -> str:
        return f"n{self.index}"

    def start(self) -> None:
        world = self.world
        self.space = Space.open(self.home, clock=world.wall, entropy=world.rng.randbytes)
        self.public_key = self.space.device.public_key
        self.jobs, self.watch = {}, HeartbeatWatch()
        self._log, self._feed, self._open = None, None, {}
        self.life += 1
        world.every(TICK_MS, self, self.tick)

    def crash(self) -> None:
        """Drop everything in memory, as kill -9 does: the store is closed with no view flush and
        no goodbye to the peers (their connections just die)."""
        assert self.space is not None
        self.space.store.close()
        self.space = None
        self.jobs = {}
        self.life += 1

    # -- the claim protocol (node/scheduler.py, step for step) -------------------------------

    def wake(self) -> None:
        if self.runs_prompts and not self.tick_due and self.space is not None:
            self.tick_due = True
            self.world.after(5, self, self.tick)

    def look(self, log: Log) -> list[Entry]:
        """The open prompts, kept from the log's feed of changes as the scheduler keeps them
        (a new Doc, after a restart or a snapshot taken, starts from everything)."""
        if log is not self._log or self._feed is None:
            self._log, self._feed, self._open = log, log.follow(), {}
        for prompt_id in sorted(self._feed.drain()):
            try:
                entry = log.entry(prompt_id, stream=False)
            except KeyError:  # a claim or result came before its prompt (or a removal voided it)
                self._open.pop(prompt_id, None)
                continue
            self.world.saw(self, entry)
            if entry.status in TERMINAL:
                self._open.pop(prompt_id, None)
                self.watch.forget(prompt_id)
            else:
                self._open[prompt_id] = entry
                self.watch.observe(entry.facts.claims, self.world.now)
        return [self._open[p] for p in sorted(self._open)]

    def tick(self) -> None:
        self.tick_due = False
        space = self.space
        if space is None or not self.runs_prompts:
            return
        me, now = space.device_id, self.world.now
        void = space.void_devices()
        options = []
        for entry in self.look(space.log):
            prompt_id = entry.prompt.id
            if prompt_id in self.jobs:
                continue
            option = candidate(
                prompt_id=prompt_id,
                model=MODEL,
                priority=entry.prompt.priority,
                status=entry.status,
                facts=entry.facts,
                me=me,
                wall_ms=self.world.wall(),
                monotonic_ms=now,
                watch=self.watch,
                policy=POLICY,
                holding=False,
                void=void,
            )
            if option is not None:
                options.append(option)
        chosen = order(options)[: max(0, DEPTH - len(self.jobs))]
        if not chosen:
            return
        for option in chosen:
            if option.expired is not None:
                space.finish(
                    expiry_record(
                        option.expired,
                        observer=me,
                        observer_name=self.name,
                        now_ms=self.world.wall(),
                        void=void,
                    )
                )
                self.world.note(f"{self.name} expires {option.prompt_id[-6:]} of {option.expired.node[:6]}")
        jobs = [Job(option.prompt_id, option.attempt, now) for option in chosen]
        self.write_claims(jobs)
        for job in jobs:
            self.jobs[job.prompt_id] = job
            self.world.note(f"{self.name} claims {job.prompt_id[-6:]} attempt {job.attempt}")
            self.world.after(SETTLE_MS, self, lambda job=job: self.settled(job))

    def write_claims(self, jobs: list[Job]) -> None:
        assert self.space is not None
        me = self.space.device_id

        def changes(log: Log) -> None:
            for job in jobs:
                log.put_claim(job.claim(me))

        self.space.write(changes, durable=False)  # as the scheduler: a lost claim only runs again
        self.world.changed(self)

    def still_mine(self, job: Job) -> bool:
        assert self.space is not None
        try:
            entry = self.space.log.entry(job.prompt_id, stream=False)
        except KeyError:
            return False  # voided by a removal (node/scheduler.py's _still_mine)
        self.world.saw(self, entry)
        return won(entry.claims, self.space.device_id, job.attempt) and entry.status is not Status.CANCELLED

    def settled(self, job: Job) -> None:
        if not self.still_mine(job):
            del self.jobs[job.prompt_id]
            self.world.note(f"{self.name} lost {job.prompt_id[-6:]}")
            self.wake()
            return
        job.running = True
        self.world.started(self, job)
        self.write_claims([job])
        length = self.world.rng.choice((5, 20, 80, 400, 1_200, 4_000))  # some outlast a lease
        self.world.after(length, self, lambda: self.finished(job))
        self.world.after(POLICY.heartbeat_ms, self, lambda: self.heartbeat(job))

    def heartbeat(self, job: Job) -> None:
        if self.jobs.get(job.prompt_id) is job:
            self.write_claims([job])
            self.world.after(POLICY.heartbeat_ms, self, lambda: self.heartbeat(job))

    def finished(self, job: Job) -> None:
        space = self.space
        assert space is not None
        del self.jobs[job.prompt_id]
        try:
            entry = space.log.entry(job.prompt_id, stream=False)
        except KeyError:
            self.world.note(f"{self.name} stops {job.prompt_id[-6:]}: voided by a removal")
            return
        self.world.saw(self, entry)
        if entry.status is Status.CANCELLED:
            space.drop_stream(job.prompt_id)  # a cancelled run leaves no result
            self.world.note(f"{self.name} stops {job.prompt_id[-6:]}: cancelled")
        else:
            now = self.world.wall()
            result = Result(
                prompt_id=job.prompt_id,
                node=space.device_id,
                node_name=self.name,
                attempt=job.attempt,
                status=RunStatus.DONE,
                output=entry.prompt.input[::-1],
                started_at=now,
                finished_at=now,
            )
            space.finish(result)
            seq = space.store.tops()[self.public_key]
            self.world.results.append(Written(job.prompt_id, self.index, job.attempt, self.world.now, seq))
            self.world.note(f"{self.name} done {job.prompt_id[-6:]} attempt {job.attempt}")
        self.world.changed(self)


class Hooks(NoHooks):
    """What a peering tells its node (the node's ``Connection``)."""

    def __init__(self, world: World, node: Node) -> None:
        self.world, self.node = world, node

    def stored(self, peering: Peering, added: int) -> None:
        self.world.stored(self.node, peering)

    def ended(self, peering: Peering, event: SessionFailed | PeerClosed) -> None:
        self.world.note(f"{self.node.name} session ended: {event}")


class Link:
    """A connection between two nodes: two peerings and the frames in flight between them."""

    def __init__(self, world: World, a: Node, b: Node) -> None:
        assert a.space is not None and b.space is not None
        self.nodes = (a, b)
        self.ends = (
            Peering(a.space, Role.INITIATOR, hooks=Hooks(world, a), challenge=world.rng.randbytes(32)),
            Peering(b.space, Role.RESPONDER, hooks=Hooks(world, b), challenge=world.rng.randbytes(32)),
        )
        self.alive = True
        self.landing = [0, 0]  # per direction: when its last frame lands (a stream keeps order)
        self.latency = world.rng.randint(1, 40)
        self.in_flight = 0

    def end_of(self, node: Node) -> Peering:
        return self.ends[self.nodes.index(node)]

    def other(self, node: Node) -> Node:
        return self.nodes[1 - self.nodes.index(node)]

    @property
    def authenticated(self) -> bool:
        return all(end.session.state is State.SYNCING for end in self.ends)


class World:
    """The simulated mesh: nodes, links, one clock, one random source and the oracle."""

    def __init__(self, seed: int, root: Path, templates: list[Path], scale: Scale = FULL) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0
        self.root = root
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._order = 0
        self.trace: list[str] = []
        self.faulty = True  # client operations and faults are drawn (until the heal)
        rng = self.rng
        self.scale = scale
        count = rng.randint(*scale.nodes)
        for i in range(count):
            shutil.copytree(templates[i], root / f"n{i}")
        runners = rng.sample(range(count), rng.randint(1, min(3, count - 1)))
        self.nodes = [Node(self, i, root / f"n{i}", i in runners) for i in range(count)]
        self.links: dict[tuple[int, int], Link] = {}
        self.side = [0] * count  # a partition: only nodes on the same side connect
        self.redial: dict[tuple[int, int], tuple[int, int]] = {}  # pair: (not before, failures)
        # The knobs of this schedule: each seed explores a different mix of faults.
        self.p_drop = rng.choice((0.0, 0.0, 0.002, 0.01))
        self.p_duplicate = rng.choice((0.0, 0.0, 0.002, 0.01))
        self.p_reorder = rng.choice((0.0, 0.0, 0.002, 0.01))
        self.kills = rng.choice(scale.kills)
        self.partitions = rng.choice(scale.partitions)
        self.removal = rng.random() < 0.3
        # The oracle.
        self.acked: dict[str, tuple[int, int]] = {}  # prompt id: (node, seq of its envelope)
        self.cancels: dict[str, list[tuple[int, int]]] = {}  # prompt id: (node, seq) of each cancel
        self.seen_cancel: dict[tuple[int, str], int] = {}  # (node, prompt id): when it first saw it
        self.runs: list[Run] = []
        self.results: list[Written] = []
        self.removed: tuple[int, int, int] | None = None  # (node, cutoff, epoch)
        self.calm_since: int | None = None
        self.stats: Counter[str] = Counter()
        for node in self.nodes:
            node.start()
        self.every(DIAL_MS, None, self.dial)
        self.plan()

    # -- time ----------------------------------------------------------------------------------

    def wall(self) -> int:
        return BASE_MS + self.now

    def after(self, delay: int, node: Node | None, action: Callable[[], None]) -> None:
        """Run ``action`` after ``delay`` ms; with a node, only if it has not crashed since."""
        life = node.life if node is not None else 0

        def guarded() -> None:
            if node is None or (node.life == life and node.space is not None):
                action()

        self._order += 1
        heapq.heappush(self._events, (self.now + delay, self._order, guarded))

    def every(self, period: int, node: Node | None, action: Callable[[], None]) -> None:
        def again() -> None:
            action()
            self.after(period, node, again)

        self.after(self.rng.randint(1, period), node, again)

    def run_until(self, end: int, done: Callable[[], bool] | None = None) -> bool:
        while self._events and self._events[0][0] <= end:
            when, _, action = heapq.heappop(self._events)
            self.now = max(self.now, when)
            action()
            if done is not None and done():
                return True
        self.now = max(self.now, end)
        return done is not None and done()

    def note(self, line: str) -> None:
        self.trace.append(f"{self.now:>6} {line}")

    # -- the client side and the faults --------------------------------------------------------

    def plan(self) -> None:
        """Draw this schedule's operations over the active stretch."""
        rng, scale, active = self.rng, self.scale, self.scale.active_ms
        for count, action in (
            (rng.randint(*scale.prompts), self.add),
            (rng.randint(0, scale.cancels), self.cancel),
            (self.kills, self.kill),
            (self.partitions, self.partition),
            (rng.randint(0, scale.cuts), self.cut),
            (rng.randint(0, 2), self.snapshot),
            (rng.randint(0, 2), self.prune),
        ):
            for _ in range(count):
                self.after(rng.randint(0, active), None, action)
        if self.removal:
            self.after(rng.randint(active // 4, active), None, self.remove)
        self.after(active, None, self.heal)

    def up(self) -> list[Node]:
        return [n for n in self.nodes if n.space is not None]

    def members(self) -> list[Node]:
        """Nodes up that are still in the space."""
        return [n for n in self.up() if self.removed is None or n.index != self.removed[0]]

    def pick(self, nodes: list[Node]) -> Node | None:
        """One of ``nodes`` at random (None if there are none: everyone is down)."""
        return self.rng.choice(nodes) if nodes else None

    def add(self) -> None:
        if node := self.pick(self.up()):
            self.add_on(node)

    def add_on(self, node: Node) -> None:
        assert node.space is not None
        text = f"prompt {len(self.acked)} of seed {self.seed}"
        try:
            prompt = node.space.add(text, model=MODEL, max_attempts=self.rng.choice((1, 3)))
        except SyncqError as exc:  # a removed device may be refused by itself: never lost silently
            self.note(f"{node.name} add refused: {exc}")
            return
        self.acked[prompt.id] = (node.index, node.space.store.tops()[node.public_key])
        self.note(f"{node.name} adds {prompt.id[-6:]}")
        self.changed(node)

    def cancel(self) -> None:
        node = self.pick(self.up())
        if node is None or node.space is None:
            return
        known = self.known(node.space.log)
        if not known:
            return
        prompt_id = self.rng.choice(known)
        try:
            node.space.cancel(prompt_id)
        except InvalidState:
            return  # it ended already
        self.cancels.setdefault(prompt_id, []).append((node.index, node.space.store.tops()[node.public_key]))
        self.seen_cancel.setdefault((node.index, prompt_id), self.now)
        self.note(f"{node.name} cancels {prompt_id[-6:]}")
        self.changed(node)

    def kill(self) -> None:
        node = self.pick(self.up())
        if node is None:
            return
        self.disturbed("kill")
        for key in [k for k, link in self.links.items() if node in link.nodes]:
            self.drop_link(key)
        node.crash()
        self.note(f"{node.name} killed")
        self.after(self.rng.randint(50, 3_000), None, lambda: self.restart(node))

    def restart(self, node: Node) -> None:
        if node.space is None:
            node.start()
            self.note(f"{node.name} restarted")
            node.wake()

    def partition(self) -> None:
        self.disturbed("partition")
        self.side = [self.rng.randint(0, 1) for _ in self.nodes]
        for key, link in list(self.links.items()):
            a, b = link.nodes
            if self.side[a.index] != self.side[b.index]:
                self.drop_link(key)
        self.note(f"partition {self.side}")
        self.after(self.rng.randint(300, 4_000), None, self.unpartition)

    def unpartition(self) -> None:
        self.side = [0] * len(self.nodes)
        self.note("partition healed")

    def cut(self) -> None:
        if self.links:
            key = self.rng.choice(sorted(self.links))
            self.disturbed("cut")
            self.drop_link(key)
            self.note(f"cut {key}")

    def snapshot(self) -> None:
        node = self.pick(self.members())
        if node is None or node.space is None:
            return
        made = node.space.replica.write_snapshot(node.space.device)
        self.note(f"{node.name} snapshot {'written' if made else 'not needed'}")

    def prune(self) -> None:
        node = self.pick(self.members())
        if node is None or node.space is None:
            return
        gone = node.space.replica.prune(RETENTION_MS)
        self.note(f"{node.name} pruned {gone}")

    def remove(self) -> None:
        """A member removes another device (never the last that runs prompts)."""
        members = self.members()
        runners = [n for n in members if n.runs_prompts]
        targets = [n for n in members if n.index != 0 and not (n.runs_prompts and len(runners) == 1)]
        if len(members) < 3 or not targets:
            return
        target = self.rng.choice(targets)
        remover = self.rng.choice([n for n in members if n is not target])
        assert remover.space is not None
        removal = remover.space.remove_device(target.name)
        self.removed = (target.index, removal.cutoff, removal.epoch)
        self.disturbed("removal")
        self.note(f"{remover.name} removes {target.name} (cutoff {removal.cutoff}, epoch {removal.epoch})")
        self.changed(remover)
        self.devices_changed(remover)

    def heal(self) -> None:
        """Stop the faults: heal the partition and restart every node that is down."""
        self.faulty = False
        self.unpartition()
        for node in self.nodes:
            self.restart(node)
        self.note("heal")

    def disturbed(self, kind: str) -> None:
        self.stats[kind] += 1
        self.calm_since = None

    # -- the network ---------------------------------------------------------------------------

    def dial(self) -> None:
        """Every node connects to every peer it can reach and is not connected to."""
        for a in self.up():
            for b in self.up():
                key = (a.index, b.index)
                if (
                    a.index < b.index
                    and key not in self.links
                    and self.side[a.index] == self.side[b.index]
                    and self.redial.get(key, (0, 0))[0] <= self.now
                ):
                    link = self.links[key] = Link(self, a, b)
                    self.pump(link)

    def drop_link(self, key: tuple[int, int]) -> None:
        link = self.links.pop(key, None)
        if link is not None:
            link.alive = False

    def pump(self, link: Link) -> None:
        """Put on the wire whatever either end has to send."""
        for side, end in enumerate(link.ends):
            while end.wants_to_send and end.send_batch():
                pass
            for frame in end.data_to_send():
                self.send(link, side, frame)
        if not all(end.open for end in link.ends):
            # Closed on one side: what it sent before closing still lands, then the link goes.
            self.after(link.latency + 1, None, lambda: self.close_link(link))

    def close_link(self, link: Link) -> None:
        key = (link.nodes[0].index, link.nodes[1].index)
        if self.links.get(key) is link:
            self.drop_link(key)
            self.disturbed("closed")
            # Refused or failed: the node backs off, doubling (node/daemon.py BACKOFF_*), so a
            # removed device knocks less and less often.
            failures = self.redial.get(key, (0, 0))[1] + 1
            self.redial[key] = (self.now + min(8_000, DIAL_MS << failures), failures)
            self.note(f"link {key} closed: {[e.session.close_code for e in link.ends]}")

    def send(self, link: Link, side: int, frame: bytes) -> None:
        rng = self.rng
        if self.faulty and rng.random() < self.p_drop:
            # A stream cannot lose one frame and go on: the connection dies with it (what the
            # frames after it would meet, a bad tag, shows when it is not the last).
            self.disturbed("dropped")
            self.after(link.latency, None, lambda: self.close_link(link))
            return
        landing = max(link.landing[side], self.now + link.latency)
        if self.faulty and rng.random() < self.p_reorder:
            self.disturbed("reordered")
            landing = self.now  # overtakes what is in flight
        link.landing[side] = max(link.landing[side], landing)
        copies = 2 if self.faulty and rng.random() < self.p_duplicate else 1
        if copies == 2:
            self.disturbed("duplicated")
        for _ in range(copies):
            link.in_flight += 1
            self.after(landing - self.now, None, lambda: self.deliver(link, 1 - side, frame))

    def in_flight(self) -> int:
        """Frames on their way between members (a removed device keeps dialing, and is refused)."""
        members = self.members()
        return sum(link.in_flight for link in self.links.values() if all(n in members for n in link.nodes))

    def deliver(self, link: Link, side: int, frame: bytes) -> None:
        link.in_flight -= 1
        if not link.alive:
            return
        end = link.ends[side]
        was_open = link.authenticated
        end.receive(frame)
        if link.authenticated and not was_open:
            self.redial.pop((link.nodes[0].index, link.nodes[1].index), None)
            self.whole()
        self.pump(link)

    def stored(self, node: Node, source: Peering) -> None:
        """Envelopes from a peer are stored: gossip them on, and act on device-list changes."""
        self.offer(node, source)
        self.devices_changed(node)
        node.wake()
        space = node.space
        assert space is not None
        for prompt_id in self.cancels:
            # ``space.log`` only when needed: it may load the Doc, which draws a client id.
            if (node.index, prompt_id) not in self.seen_cancel and space.log.has_prompt(prompt_id):
                self.saw(node, space.log.entry(prompt_id, stream=False))

    def changed(self, node: Node) -> None:
        """The node wrote to its log: offer it to every peer, and let its claims look."""
        self.offer(node)
        node.wake()

    def offer(self, node: Node, source: Peering | None = None) -> None:
        """Let every session of ``node`` but ``source`` send what it has."""
        for link in self.links_of(node):
            end = link.end_of(node)
            if end is not source:
                end.wants_to_send = True
                self.pump(link)

    def devices_changed(self, node: Node) -> None:
        """As the node's ``devices_changed``: close sessions the list now refuses, and rotate
        the keys when a removal asks for it."""
        space = node.space
        assert space is not None
        space.keys_changed()
        for link in self.links_of(node):
            peer = link.other(node)
            refusal = space.peer_refusal(peer.public_key)
            end = link.end_of(node)
            if refusal is not None and end.open:
                end.refuse(refusal)
                self.pump(link)
        if not space.is_relay and space.rotate_if_needed():
            self.note(f"{node.name} rotated to epoch {space.keys.epoch}")
            self.changed(node)

    def links_of(self, node: Node) -> list[Link]:
        return [link for link in self.links.values() if node in link.nodes]

    def apart(self) -> list[tuple[int, int]]:
        """The pairs of members with no open session between them."""
        members = self.members()
        pairs = [(a.index, b.index) for a in members for b in members if a.index < b.index]
        return [k for k in pairs if k not in self.links or not self.links[k].authenticated]

    def whole(self) -> None:
        """A session opened: the mesh is calm from now if every pair of members is connected."""
        if self.calm_since is None and not self.apart():
            self.calm_since = self.now

    # -- the oracle ----------------------------------------------------------------------------

    def known(self, log: Log) -> list[str]:
        """The prompts added anywhere that this log holds, in a stable order."""
        return [p for p in self.acked if log.has_prompt(p)]

    def saw(self, node: Node, entry: Entry) -> None:
        if entry.facts.cancelled:
            self.seen_cancel.setdefault((node.index, entry.prompt.id), self.now)

    def started(self, node: Node, job: Job) -> None:
        self.runs.append(
            Run(job.prompt_id, node.index, job.attempt, job.claimed_at, self.now, self.calm_since)
        )
        self.note(f"{node.name} runs {job.prompt_id[-6:]} attempt {job.attempt}")

    def quiet(self) -> bool:
        return not self.unquiet()

    def unquiet(self) -> str:
        """Why the mesh is not quiet yet ("" once nothing is in flight or claimed, every member
        is connected to every other, every prompt ended and every member holds the same)."""
        members = self.members()
        if len(members) != len(self.nodes) - (self.removed is not None):
            return "a node is down"
        if self.in_flight():
            return "frames in flight"
        if any(n.jobs for n in members):
            return f"claims held: {[(n.name, sorted(n.jobs)) for n in members if n.jobs]}"
        if apart := self.apart():
            return f"not connected: {apart}"
        vectors = {n.name: self.named(self.counted(n.space.version_vector())) for n in members if n.space}
        if len(set(vectors.values())) != 1:
            return f"version vectors differ: {vectors}"
        first = members[0].space
        assert first is not None
        statuses = {p: first.log.entry(p, stream=False).status for p in self.known(first.log)}
        open_ = {p: s.value for p, s in statuses.items() if s not in TERMINAL}
        return f"prompts not ended: {open_}" if open_ else ""

    def counted(self, vector: dict[bytes, int]) -> dict[bytes, int]:
        """A version vector without what a removed device wrote past its cutoff: a member that
        stored it before the removal came keeps it, voided (``Replica.void_removed``)."""
        if self.removed is None:
            return vector
        gone = self.nodes[self.removed[0]].public_key
        return {a: min(s, self.removed[1]) if a == gone else s for a, s in vector.items()}

    def named(self, vector: dict[bytes, int]) -> str:
        names = {n.public_key: n.name for n in self.nodes}
        return " ".join(f"{names.get(a, a.hex()[:6])}:{s}" for a, s in sorted(vector.items()))

    def check(self) -> None:
        """The promises, once the mesh is quiet after the heal."""
        members = self.members()
        removed = self.removed
        cutoff = {removed[0]: removed[1]} if removed is not None else {}

        def counts(node: int, seq: int) -> bool:
            return seq <= cutoff.get(node, seq)

        dumps = []
        for node in members:
            space = node.space
            assert space is not None
            log = space.log
            for prompt_id, (author, seq) in self.acked.items():
                if counts(author, seq) and prompt_id not in log.prompt_ids():
                    raise SimFailure(f"{node.name} lost acknowledged prompt {prompt_id} (from n{author})")
            dump = self.dump(log.entries(sorted(log.prompt_ids())))
            for prompt_id, status, *_ in dump:
                if status not in TERMINAL:
                    raise SimFailure(f"{node.name}: {prompt_id} is still {status} after the heal")
            # What `syncq log` and `syncq show` print: another process reads the local view the
            # node keeps (flushed as the node does), not the Doc.
            space.replica.flush_view()
            with Space.open(node.home) as reader:
                if self.dump(reader.entries(limit=None)) != dump:
                    raise SimFailure(f"{node.name}'s local view differs from its log")
            for written in self.results:
                # A result stays unless its node was removed before it, or its prompt was
                # (voided: written by the removed device past its cutoff).
                if counts(written.node, written.seq) and log.has_prompt(written.prompt_id):
                    runs = {
                        (r.node, r.attempt)
                        for r in log.entry(written.prompt_id, stream=False).results
                        if r.status is RunStatus.DONE
                    }
                    who = self.nodes[written.node].public_key.hex()
                    if (who, written.attempt) not in runs:
                        raise SimFailure(f"{node.name} lacks n{written.node}'s result of {written.prompt_id}")
            dumps.append(dump)
            for prompt_id, cancels in self.cancels.items():
                # A cancel by a device removed before it reached the remover is void too.
                if any(counts(author, seq) for author, seq in cancels):
                    self.check_cancel(node, log, prompt_id)
        if any(dump != dumps[0] for dump in dumps):
            raise SimFailure("replicas differ after the heal")
        self.check_duplicates()
        if removed is not None:
            gone = self.nodes[removed[0]]
            assert gone.space is not None
            if removed[2] in gone.space.keys.ordered():
                raise SimFailure(f"removed {gone.name} holds the epoch {removed[2]} made to exclude it")
            for node in members:
                assert node.space is not None
                if removed[2] not in node.space.keys.ordered():
                    raise SimFailure(f"{node.name} never got the new epoch {removed[2]}")

    @staticmethod
    def dump(
        entries: Iterable[Entry],
    ) -> list[tuple[str, Status, tuple[tuple[str, int, str, str], ...], bool]]:
        """What a replica says of each prompt, comparable across replicas."""
        return [
            (
                e.prompt.id,
                e.status,
                tuple(sorted((r.node, r.attempt, r.status.value, r.output) for r in e.results)),
                e.facts.cancelled,
            )
            for e in entries
        ]

    def check_cancel(self, node: Node, log: Log, prompt_id: str) -> None:
        """A cancelled prompt ends cancelled, unless a run finished where the cancel had not yet
        arrived (an answer already given is kept: DESIGN.md's rule)."""
        if not log.has_prompt(prompt_id):
            return  # voided by a removal (the acknowledged ones that count were checked)
        entry = log.entry(prompt_id, stream=False)
        if entry.status is Status.CANCELLED:
            return
        if entry.status is not Status.DONE:
            raise SimFailure(f"{node.name}: cancelled {prompt_id} is {entry.status}")
        for written in self.results:
            if written.prompt_id == prompt_id:
                seen = self.seen_cancel.get((written.node, prompt_id))
                if seen is not None and seen < written.finished_at:
                    raise SimFailure(f"n{written.node} finished {prompt_id} after it saw the cancel")

    def check_duplicates(self) -> None:
        """Two runs of one prompt are allowed only if the mesh was disturbed between the first
        claim and the second start (a partition, a kill, a lost frame...): among nodes that
        stayed connected, every claim is seen before anyone runs."""
        by_prompt: dict[str, list[Run]] = {}
        for run in self.runs:
            by_prompt.setdefault(run.prompt_id, []).append(run)
        for prompt_id, runs in by_prompt.items():
            for first, second in itertools.combinations(runs, 2):
                calm = second.calm_since
                if calm is not None and calm <= min(first.claimed_at, second.claimed_at):
                    raise SimFailure(
                        f"{prompt_id} ran twice in a calm mesh: n{first.node} attempt {first.attempt}"
                        f" and n{second.node} attempt {second.attempt}"
                    )
            self.stats["reruns"] += len(runs) - 1
        done = Counter(w.prompt_id for w in self.results)
        self.stats["duplicates"] += sum(1 for n in done.values() if n > 1)  # shown as two runs

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()[:16]

    def close(self) -> None:
        for node in self.nodes:
            if node.space is not None:
                node.space.close()


@dataclass
class Outcome:
    seed: int
    digest: str
    stats: dict[str, int] = field(default_factory=dict)
    converge_ms: int = 0


def simulate(
    seed: int,
    templates: list[Path],
    scratch: Path,
    scale: Scale = FULL,
    on_trace: Callable[[str], object] | None = None,
) -> Outcome:
    """Run the schedule of ``seed``; raises ``SimFailure`` (with the seed and the trace's tail)
    when a promise breaks or the product raises."""
    root = Path(tempfile.mkdtemp(prefix=f"seed{seed}-", dir=scratch))
    world = World(seed, root, templates, scale)
    try:
        try:
            world.run_until(scale.active_ms)
            healed = world.now
            if not world.run_until(healed + HEAL_LIMIT_MS, world.quiet):
                raise SimFailure(f"not quiet {HEAL_LIMIT_MS} ms after the heal: {world.unquiet()}")
            converge_ms = world.now - healed
            world.check()
        except Exception as exc:
            tail = "\n".join(world.trace[-40:])
            where = "" if isinstance(exc, SimFailure) else traceback.format_exc(limit=-6)
            raise SimFailure(
                f"seed {seed}: {type(exc).__name__}: {exc}\n{where}"
                f"replay: .venv/bin/python tests/sim/run.py --seed {seed} --scale {scale.name}"
                f" --trace\n{tail}"
            ) from exc
        stats = dict(world.stats)
        stats.update(
            prompts=len(world.acked),
            runs=len(world.runs),
            nodes=len(world.nodes),
            removals=int(world.removed is not None),
        )
        return Outcome(seed, world.digest(), stats, converge_ms)
    finally:
        for line in world.trace if on_trace is not None else ():
            on_trace(line)
        world.close()
        shutil.rmtree(root, ignore_errors=True)


def scratch_folder() -> Path:
    """Where homes go: memory-backed where the machine has it (the fsyncs are real either way)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="syncq-sim-", dir=base))
