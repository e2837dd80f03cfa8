"""Walk the status table and check that facts arriving in any order only move status forward."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncq.ids import DeviceId, PromptId
from syncq.lifecycle import RULES, TERMINAL, TERMINAL_ORDER, Facts, Status, canonical_result, derive_status
from syncq.records import Claim, Result, RunStatus

PID = PromptId("01" + "0" * 24)
A, B = DeviceId("a" * 64), DeviceId("b" * 64)


def claim(node: DeviceId = A, attempt: int = 1, running: bool = False) -> Claim:
    return Claim(prompt_id=PID, node=node, attempt=attempt, heartbeat=1, running=running)


def result(status: RunStatus, node: DeviceId = A, attempt: int = 1, counts: bool = True) -> Result:
    return Result(
        prompt_id=PID,
        node=node,
        node_name="n",
        attempt=attempt,
        status=status,
        error=None if status is RunStatus.DONE else "boom",
        started_at=1,
        finished_at=2,
        counts=counts,
    )


def refused(node: DeviceId = A, attempt: int = 1) -> Result:
    """A run that showed its node cannot run the model (the worker died by SIGILL)."""
    return result(RunStatus.FAILED, node, attempt, counts=False)


TABLE = [
    (Facts(max_attempts=3), Status.QUEUED),
    (Facts(max_attempts=3, claims=[claim()]), Status.CLAIMED),
    (Facts(max_attempts=3, claims=[claim(running=True)]), Status.RUNNING),
    (Facts(max_attempts=3, claims=[claim()], results=[result(RunStatus.DONE)]), Status.DONE),
    (Facts(max_attempts=3, claims=[claim()], results=[result(RunStatus.FAILED)]), Status.QUEUED),
    (Facts(max_attempts=1, results=[result(RunStatus.FAILED)]), Status.FAILED),
    (Facts(max_attempts=3, cancelled=True, claims=[claim(running=True)]), Status.CANCELLED),
    (Facts(max_attempts=3, cancelled=True, results=[result(RunStatus.DONE)]), Status.DONE),
    (Facts(max_attempts=1, cancelled=True, results=[result(RunStatus.FAILED)]), Status.CANCELLED),
    (Facts(max_attempts=2, results=[result(RunStatus.FAILED), result(RunStatus.FAILED)]), Status.QUEUED),
    (Facts(max_attempts=2, results=[result(RunStatus.FAILED), result(RunStatus.FAILED, B)]), Status.FAILED),
    (Facts(max_attempts=1, claims=[claim()], results=[refused()]), Status.QUEUED),
    (Facts(max_attempts=1, results=[refused(), result(RunStatus.DONE, B, 2)]), Status.DONE),
]


def test_every_rule_of_the_table_is_walked() -> None:
    for facts, expected in TABLE:
        assert derive_status(facts) is expected, facts
    reached = {expected for _, expected in TABLE}
    assert reached == set(Status)
    assert {status for _, status in RULES} | {Status.QUEUED} == set(Status)


fact = st.one_of(
    st.just(("cancel",)),
    st.tuples(st.just("claim"), st.sampled_from([A, B]), st.integers(1, 3), st.booleans()),
    st.tuples(
        st.just("result"), st.sampled_from([A, B]), st.integers(1, 3), st.sampled_from(list(RunStatus))
    ),
)


@given(st.lists(fact, max_size=12), st.integers(1, 3))
def test_terminal_status_only_moves_up_the_terminal_order(facts: list[tuple], max_attempts: int) -> None:
    cancelled, claims, results = False, [], []
    previous = Status.QUEUED
    for f in facts:
        if f[0] == "cancel":
            cancelled = True
        elif f[0] == "claim":
            claims.append(claim(f[1], f[2], f[3]))
        else:
            results.append(result(f[3], f[1], f[2]))
        status = derive_status(
            Facts(max_attempts=max_attempts, cancelled=cancelled, claims=claims, results=results)
        )
        if previous in TERMINAL:
            assert status in TERMINAL
            assert TERMINAL_ORDER.index(status) >= TERMINAL_ORDER.index(previous)
        previous = status


@given(
    st.permutations(
        [result(RunStatus.FAILED, A, 1), result(RunStatus.DONE, B, 2), result(RunStatus.DONE, A, 2)]
    )
)
def test_canonical_result_does_not_depend_on_order(results: list[Result]) -> None:
    chosen = canonical_result(results)
    assert chosen is not None
    assert (chosen.status, chosen.attempt, chosen.node) == (RunStatus.DONE, 2, A)
    assert canonical_result([]) is None
    assert canonical_result([result(RunStatus.FAILED)]) == result(RunStatus.FAILED)


@given(
    st.lists(st.tuples(st.sampled_from([A, B]), st.booleans()), max_size=10),
    st.integers(1, 3),
)
def test_runs_that_do_not_count_never_spend_an_attempt(runs: list[tuple], max_attempts: int) -> None:
    # One run per attempt, in order, as the scheduler takes them.
    results = [result(RunStatus.FAILED, node, i + 1, counts=counts) for i, (node, counts) in enumerate(runs)]
    facts = Facts(max_attempts=max_attempts, results=results)
    counted = sum(counts for _, counts in runs)
    assert facts.failures() == counted
    assert derive_status(facts) is (Status.FAILED if counted >= max_attempts else Status.QUEUED)
    last_refused = bool(runs) and not runs[-1][1]
    assert (facts.refusal() is not None) == last_refused
    assert facts.refusal() in (None, results[-1] if results else None)
