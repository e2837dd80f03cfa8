"""Replicas in separate homes converge whatever subsets of envelopes reach them, in any order,
with duplicates, across restarts: after a full exchange every log is identical and holds every
prompt ever added."""

from __future__ import annotations

import contextlib
import itertools
import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from syncq.errors import InvalidState
from syncq.records import Claim, Result, RunStatus
from syncq.space import Space


class Replicas(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="syncq-replicas-"))
        self.replicas: list[Space] = []
        self.added: set[str] = set()
        # Deterministic ids, keys and clocks: hypothesis replays a case only if every draw
        # depends on earlier draws alone.
        rng = random.Random(0)
        self.entropy = rng.randbytes
        self.ticks = itertools.count(1_700_000_000_000)
        self.clock = lambda: next(self.ticks)

    @initialize(n=st.integers(min_value=3, max_value=5))
    def make_replicas(self, n: int) -> None:
        first = Space.init(self.root / "r0", name="r0", entropy=self.entropy, clock=self.clock)
        self.replicas = [first] + [
            Space.init(
                self.root / f"r{i}",
                name=f"r{i}",
                secret=first.keys.secrets[0],
                entropy=self.entropy,
                clock=self.clock,
            )
            for i in range(1, n)
        ]

    def pick(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.replicas) - 1), label="replica")

    def known(self, replica: Space, data: st.DataObject) -> str | None:
        ids = replica.log.prompt_ids()
        return data.draw(st.sampled_from(ids), label="prompt") if ids else None

    @rule(data=st.data(), text=st.text(min_size=1, max_size=20).filter(str.strip))
    def add(self, data: st.DataObject, text: str) -> None:
        replica = self.replicas[self.pick(data)]
        self.added.add(replica.add(text, model="echo", max_attempts=2).id)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        replica = self.replicas[self.pick(data)]
        prompt_id = self.known(replica, data)
        if prompt_id is not None:
            with contextlib.suppress(InvalidState):  # already finished there
                replica.cancel(prompt_id)

    @rule(data=st.data(), attempt=st.integers(1, 2), running=st.booleans(), beat=st.integers(1, 5))
    def claim(self, data: st.DataObject, attempt: int, running: bool, beat: int) -> None:
        replica = self.replicas[self.pick(data)]
        prompt_id = self.known(replica, data)
        if prompt_id is not None:
            replica.put_claim(
                Claim(
                    prompt_id=prompt_id,
                    node=replica.device_id,
                    attempt=attempt,
                    heartbeat=beat,
                    running=running,
                )
            )

    @rule(data=st.data(), attempt=st.integers(1, 2), status=st.sampled_from(list(RunStatus)))
    def result(self, data: st.DataObject, attempt: int, status: RunStatus) -> None:
        replica = self.replicas[self.pick(data)]
        prompt_id = self.known(replica, data)
        if prompt_id is not None:
            replica.put_result(
                Result(
                    prompt_id=prompt_id,
                    node=replica.device_id,
                    node_name=replica.name,
                    attempt=attempt,
                    status=status,
                    output="out",
                    error=None if status is RunStatus.DONE else "err",
                    started_at=1,
                    finished_at=2,
                )
            )

    @rule(data=st.data())
    def deliver_some(self, data: st.DataObject) -> None:
        """A random subset of one replica's envelopes, shuffled, some twice, reaches another."""
        src, dst = self.pick(data), self.pick(data)
        envelopes = list(self.replicas[src].envelopes())
        picks = data.draw(st.lists(st.integers(0, len(envelopes) - 1), max_size=12), label="envelopes")
        report = self.replicas[dst].receive([envelopes[i] for i in picks])
        assert not report.rejected

    @precondition(lambda self: self.replicas)
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        i = self.pick(data)
        home = self.replicas[i].paths.root
        self.replicas[i].close()
        self.replicas[i] = Space.open(home, entropy=self.entropy, clock=self.clock)

    @precondition(lambda self: self.replicas)
    @rule()
    def full_exchange(self) -> None:
        self.check_convergence()

    @invariant()
    def no_replica_knows_a_prompt_nobody_added(self) -> None:
        for replica in self.replicas:
            assert set(replica.log.prompt_ids()) <= self.added

    def check_convergence(self) -> None:
        for _ in range(2):  # everyone sends everything to everyone, twice over
            for src in self.replicas:
                for dst in self.replicas:
                    if src is not dst:
                        dst.receive(src.envelopes(dst.version_vector()))
        views = [replica.entries(limit=None) for replica in self.replicas]
        assert {e.prompt.id for e in views[0]} == self.added
        for view in views[1:]:
            assert view == views[0]

    def teardown(self) -> None:
        try:
            if self.replicas:
                self.check_convergence()
        finally:
            for replica in self.replicas:
                replica.close()
            shutil.rmtree(self.root, ignore_errors=True)


Replicas.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestReplicasConverge = Replicas.TestCase
