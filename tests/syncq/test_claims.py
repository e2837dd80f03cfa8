"""Property tests of the claim rules (pure: clocks are arguments)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncq.claims import (
    Candidate,
    HeartbeatWatch,
    Policy,
    backoff_ms,
    candidate,
    expiry_record,
    first_choice,
    order,
    retry_at,
    won,
)
from syncq.ids import DeviceId, PromptId, new_prompt_id
from syncq.lifecycle import Facts, Status, derive_status, winner
from syncq.records import Claim, Result, RunStatus

POLICY = Policy(lease_ms=30_000, heartbeat_ms=5_000, backoff_first_ms=1_000, backoff_max_ms=60_000)
PID = PromptId(new_prompt_id(1_700_000_000_000, bytes(10)))
nodes = st.lists(
    st.text("abcdef0123456789", min_size=4, max_size=8).map(DeviceId), min_size=1, max_size=6, unique=True
)


def claim(node: str, attempt: int = 1, beat: int = 1, running: bool = False) -> Claim:
    return Claim(prompt_id=PID, node=DeviceId(node), attempt=attempt, heartbeat=beat, running=running)


def failed(node: str, attempt: int, at: int) -> Result:
    return Result(
        prompt_id=PID,
        node=DeviceId(node),
        node_name="n",
        attempt=attempt,
        status=RunStatus.FAILED,
        error="x",
        started_at=at,
        finished_at=at,
    )


@given(nodes, st.randoms())
def test_every_replica_picks_the_same_winner_in_any_order(names: list[DeviceId], rnd) -> None:
    claims = [claim(n) for n in names]
    shuffled = list(claims)
    rnd.shuffle(shuffled)
    assert winner(claims) == winner(shuffled)
    assert sum(won(claims, n, 1) for n in names) == 1  # exactly one node runs it


@given(nodes, st.integers(1, 5))
def test_a_later_attempt_supersedes_earlier_claims(names: list[DeviceId], attempt: int) -> None:
    claims = [claim(n, 1) for n in names] + [claim("zz" + names[0], attempt + 1)]
    assert winner(claims) == claims[-1]


@given(nodes, st.lists(st.integers(-(10**9), 10**9), min_size=6, max_size=6))
def test_clock_skew_cannot_steal_a_job(names: list[DeviceId], offsets: list[int]) -> None:
    """Each observer reads its own monotonic clock, offset arbitrarily from the others: a claim
    whose heartbeat keeps changing is never stale to any of them, whatever the offsets."""
    holder = claim(names[0], beat=1, running=True)
    watches = [HeartbeatWatch() for _ in names]
    for step in range(0, 120_000, POLICY.heartbeat_ms):
        beating = claim(names[0], beat=1 + step // POLICY.heartbeat_ms, running=True)
        for watch, offset in zip(watches, offsets, strict=False):
            watch.observe([beating], step + offset)
            assert not watch.stale(beating, step + offset, POLICY)
    for watch, offset in zip(watches, offsets, strict=False):
        watch.observe([holder], 200_000 + offset)  # heartbeat 1 again: a change, so seen anew
        assert watch.stale(holder, 200_000 + offset + POLICY.lease_ms, POLICY)


@given(st.integers(1, 40))
def test_backoff_doubles_up_to_the_cap(failures: int) -> None:
    assert backoff_ms(failures, POLICY) == min(1_000 * 2 ** (failures - 1), 60_000)
    assert backoff_ms(0, POLICY) == 0
    assert backoff_ms(failures + 1, POLICY) >= backoff_ms(failures, POLICY)


def decide(facts: Facts, me: str, wall: int, mono: int, watch: HeartbeatWatch) -> Candidate | None:
    return candidate(
        prompt_id=PID,
        model="echo",
        priority=0,
        status=derive_status(facts),
        facts=facts,
        me=DeviceId(me),
        wall_ms=wall,
        monotonic_ms=mono,
        watch=watch,
        policy=POLICY,
    )


def test_queued_prompts_are_candidates_at_the_next_attempt_after_backoff() -> None:
    watch = HeartbeatWatch()
    fresh = Facts(max_attempts=3)
    assert decide(fresh, "me", 0, 0, watch) == Candidate(prompt_id=PID, model="echo", priority=0, attempt=1)
    once = Facts(max_attempts=3, claims=[claim("other")], results=[failed("other", 1, at=10_000)])
    assert decide(once, "me", 10_500, 0, watch) is None  # backoff: 1 s after the failure
    assert decide(once, "me", 11_000, 0, watch).attempt == 2
    assert retry_at(once, POLICY) == 11_000


@given(st.integers(0, 10**9), st.integers(1, 3))
def test_a_run_that_does_not_count_leaves_the_prompt_to_another_node_at_once(
    at: int, max_attempts: int
) -> None:
    # The node whose worker died by SIGILL: its run is no attempt, so no backoff either.
    from dataclasses import replace

    refused = replace(failed("bad", 1, at=at), counts=False)
    facts = Facts(max_attempts=max_attempts, claims=[claim("bad")], results=[refused])
    assert derive_status(facts) is Status.QUEUED and retry_at(facts, POLICY) == 0
    assert decide(facts, "good", at, 0, HeartbeatWatch()).attempt == 2


def test_finished_and_cancelled_prompts_are_never_candidates() -> None:
    watch = HeartbeatWatch()
    done = Facts(
        max_attempts=3,
        results=[
            Result(
                prompt_id=PID,
                node=DeviceId("x"),
                node_name="",
                attempt=1,
                status=RunStatus.DONE,
                started_at=1,
                finished_at=2,
            )
        ],
    )
    out = Facts(max_attempts=1, results=[failed("x", 1, 0)])
    cancelled = Facts(max_attempts=3, cancelled=True)
    for facts in (done, out, cancelled):
        assert decide(facts, "me", 10**9, 10**9, watch) is None


@given(st.integers(0, 10**9))
def test_a_stale_claim_is_taken_over_at_the_next_attempt(start: int) -> None:
    watch = HeartbeatWatch()
    held = claim("other", attempt=1, beat=7, running=True)
    facts = Facts(max_attempts=3, claims=[held])
    watch.observe([held], start)
    assert decide(facts, "me", 0, start + POLICY.lease_ms - 1, watch) is None
    taken = decide(facts, "me", 0, start + POLICY.lease_ms, watch)
    assert taken is not None and taken.attempt == 2 and taken.expired == held
    assert decide(Facts(max_attempts=3, claims=[claim("me", beat=7)]), "me", 0, 10**12, watch) is None


def test_an_expiry_record_counts_as_one_failure_and_never_overwrites_the_run() -> None:
    held = claim("other", attempt=1)
    record = expiry_record(held, observer=DeviceId("me"), observer_name="me", now_ms=5)
    own = failed("other", 1, 6)
    assert record.key != own.key
    facts = Facts(max_attempts=2, claims=[held], results=[record, own])
    assert facts.failures() == 1
    assert derive_status(facts) is Status.QUEUED
    assert facts.next_attempt() == 2


def test_order_is_priority_then_age() -> None:
    ids = [PromptId(new_prompt_id(t, bytes(10))) for t in (3, 1, 2)]
    picked = order(
        [
            Candidate(prompt_id=i, model="m", priority=p, attempt=1)
            for i, p in zip(ids, (0, 0, 5), strict=True)
        ]
    )
    assert [c.prompt_id for c in picked] == [ids[2], ids[1], ids[0]]


@given(nodes)
def test_losing_claims_never_keep_a_prompt_claimed(names: list[DeviceId]) -> None:
    claims = [claim(n) for n in names]
    top = winner(claims)
    assert top is not None
    facts = Facts(max_attempts=3, claims=claims, results=[failed(top.node, 1, 0)])
    assert derive_status(facts) is Status.QUEUED  # the losers never ran it


@given(nodes, st.integers(0, 10**6))
def test_exactly_one_node_has_a_prompt_as_first_choice_and_it_wins(names: list[DeviceId], n: int) -> None:
    """Nodes that claim their first choices first never collide: for any prompt, exactly one
    node of the mesh has it as a first choice, and that node would win the claim."""
    pid = PromptId(new_prompt_id(1_700_000_000_000 + n, bytes(10)))
    firsts = [me for me in names if first_choice(pid, me, [r for r in names if r != me])]
    assert len(firsts) == 1
    claims = [Claim(prompt_id=pid, node=node, attempt=1, heartbeat=1, running=False) for node in names]
    assert won(claims, firsts[0], 1)


def test_a_watch_forgets_a_finished_prompt() -> None:
    watch = HeartbeatWatch()
    watch.observe([claim("aa")], 0)
    watch.forget(PID)
    assert not watch.stale(claim("aa"), POLICY.lease_ms * 10, POLICY)  # never seen: not stale


@given(nodes, st.integers(1, 3), st.integers(0, 10**9))
def test_a_node_takes_back_its_own_claim_only_when_it_no_longer_holds_it(
    names: list[DeviceId], attempt: int, mono: int
) -> None:
    """After a kill -9 and a restart, a node's old claim would otherwise wait a whole lease
    (or forever, alone in the mesh): the node takes it over at once, at the next attempt."""
    me = names[0]
    mine = claim(me, attempt=attempt, running=True)
    facts = Facts(max_attempts=5, claims=[mine])
    status = derive_status(facts)
    common = dict(
        prompt_id=PID,
        model="m",
        priority=0,
        status=status,
        facts=facts,
        me=me,
        wall_ms=0,
        monotonic_ms=mono,
        watch=HeartbeatWatch(),
        policy=POLICY,
    )
    assert candidate(**common, holding=True) is None
    taken = candidate(**common, holding=False)
    assert taken is not None and taken.attempt == attempt + 1 and taken.expired == mine
    record = expiry_record(mine, observer=me, observer_name="gpu", now_ms=5)
    assert record.status is RunStatus.FAILED and "gpu stopped" in (record.error or "")


@given(nodes, st.integers(1, 3), st.integers(0, 10**9), st.booleans())
def test_a_claim_of_a_removed_device_is_taken_over_at_once(
    names: list[DeviceId], attempt: int, mono: int, running: bool
) -> None:
    """Whatever the heartbeats say, a claim of a void device (removed from the space) is stale
    the moment the removal is known: the removed device can write nothing more, so nobody waits
    a lease for it; other devices' claims still wait for their lease."""
    removed, others = names[0], names[1:]
    held = claim(removed, attempt=attempt, beat=9, running=running)
    facts = Facts(max_attempts=attempt + 2, claims=[held])
    watch = HeartbeatWatch()
    watch.observe([held], mono)  # just seen beating: no lease has run out
    common = dict(
        prompt_id=PID,
        model="m",
        priority=0,
        status=derive_status(facts),
        facts=facts,
        wall_ms=0,
        monotonic_ms=mono,
        watch=watch,
        policy=POLICY,
    )
    for me in [*others, DeviceId("f" * 9)]:
        assert candidate(**common, me=me) is None  # not void: its lease still runs
        taken = candidate(**common, me=me, void={removed})
        assert taken is not None and taken.attempt == attempt + 1 and taken.expired == held
        record = expiry_record(held, observer=me, observer_name="gpu", now_ms=5, void={removed})
        assert record.status is RunStatus.FAILED and "removed from the space" in (record.error or "")
    # A removed device claims nothing: not its own left-overs, not a fresh prompt.
    assert candidate(**common, me=removed, holding=False, void={removed}) is None
    fresh = dict(common, status=Status.QUEUED, facts=Facts(max_attempts=3))
    assert candidate(**fresh, me=removed, void={removed}) is None
    assert candidate(**fresh, me=removed, void={"someone-else"}) is not None


@given(nodes, st.sets(st.text("abcdef0123456789", min_size=4, max_size=8)), st.integers(0, 10**9))
def test_void_claims_of_other_devices_never_free_a_live_claim(
    names: list[DeviceId], void: set[str], mono: int
) -> None:
    """Only the winning claim's own device being void frees a prompt: a void set that does not
    hold the holder changes nothing."""
    holder = names[0]
    held = claim(holder, beat=3, running=True)
    facts = Facts(max_attempts=3, claims=[held])
    watch = HeartbeatWatch()
    watch.observe([held], mono)
    void.discard(holder)
    for me in names[1:]:
        if me in void:
            continue
        found = candidate(
            prompt_id=PID,
            model="m",
            priority=0,
            status=derive_status(facts),
            facts=facts,
            me=me,
            wall_ms=0,
            monotonic_ms=mono,
            watch=watch,
            policy=POLICY,
            void=void,
        )
        assert found is None
