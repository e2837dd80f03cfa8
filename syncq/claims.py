"""Claim, lease and retry rules, as pure functions of the log's facts and the time.

The protocol every node follows (DESIGN.md section 7)::

    1. pick    ``candidates``: queued prompts for models served here, not cancelled, whose
               retry backoff has passed; highest priority first, then oldest
    2. claim   write ``claims[id/me] = {attempt: facts.next_attempt(), heartbeat: 1}``
    3. settle  wait a few round trips to connected peers, re-read the merged claims
    4. run     only if ``lifecycle.winner`` of the merged claims is this node; heartbeat every
               ``heartbeat_ms`` while running
    5. expire  a claim whose heartbeat has not changed for ``lease_ms`` on the *observer's own
               monotonic clock* is stale (clock skew between nodes cannot steal a job): the
               observer records the run as failed ("lease expired") and, if attempts remain,
               claims the next attempt
    6. retry   a failed run is retried after ``backoff_ms`` (doubling) until ``max_attempts``
    7. void    a claim of a device removed from the space (``void``) is stale at once: the
               removed device can write nothing more (its later envelopes are refused), so
               waiting a lease for its heartbeat would only delay the takeover. A removal is
               recorded like an expired lease (one attempt), since the run may have half
               happened there, as when a node dies.

No duplicate runs among connected nodes (they all see the same claims before running); at least
once across partitions, where two winners may each run an attempt and both results are kept.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from syncq.ids import DeviceId, PromptId
from syncq.lifecycle import Facts, Status, rank, winner
from syncq.records import Claim, Result, RunStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Timings of the claim protocol, in milliseconds."""

    lease_ms: int = 30_000
    heartbeat_ms: int = 5_000
    backoff_first_ms: int = 1_000
    backoff_max_ms: int = 60_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A prompt this node may claim now."""

    prompt_id: PromptId
    model: str
    priority: int
    attempt: int
    expired: Claim | None = None  # the stale claim this one takes over, if any


def backoff_ms(failures: int, policy: Policy) -> int:
    """How long after its last failure a prompt waits before the next attempt."""
    if failures <= 0:
        return 0
    return int(min(policy.backoff_first_ms * 2 ** (failures - 1), policy.backoff_max_ms))


def retry_at(facts: Facts, policy: Policy) -> int:
    """The wall-clock time (ms) from which the prompt may be claimed again (0: at once)."""
    failed = facts.counted_failures()  # a node that cannot run the model delays nobody
    if not failed:
        return 0
    last = max(r.finished_at for r in failed)
    if facts.retried_at >= last:
        return 0  # a user asked for another run after the last failure: no backoff
    return last + backoff_ms(facts.failures(), policy)


@dataclass(slots=True)
class HeartbeatWatch:
    """When this observer last saw each claim's heartbeat change, on its own monotonic clock.

    Observe the claims whenever they change (and once at start): a heartbeat seen again
    unchanged keeps the time it was first seen."""

    seen: dict[str, dict[tuple[str, int], tuple[int, int]]] = field(default_factory=dict)

    def observe(self, claims: Iterable[Claim], now_ms: int) -> None:
        """Record the heartbeats visible now."""
        for claim in claims:
            beats = self.seen.setdefault(claim.prompt_id, {})
            key = (claim.node, claim.attempt)
            previous = beats.get(key)
            if previous is None or previous[0] != claim.heartbeat:
                beats[key] = (claim.heartbeat, now_ms)

    def stale(self, claim: Claim, now_ms: int, policy: Policy) -> bool:
        """Whether the claim's heartbeat has not changed for a whole lease."""
        seen = self.seen.get(claim.prompt_id, {}).get((claim.node, claim.attempt))
        return seen is not None and now_ms - seen[1] >= policy.lease_ms

    def forget(self, prompt_id: str) -> None:
        """Drop what was seen of a prompt that finished."""
        self.seen.pop(prompt_id, None)


def candidate(
    *,
    prompt_id: PromptId,
    model: str,
    priority: int,
    status: Status,
    facts: Facts,
    me: DeviceId,
    wall_ms: int,
    monotonic_ms: int,
    watch: HeartbeatWatch,
    policy: Policy,
    holding: bool = True,
    void: Collection[str] = (),
) -> Candidate | None:
    """Whether this node may claim the prompt now, and at which attempt.

    ``holding`` says whether this node still runs (or waits to run) its own claim on the prompt.
    A claim of this node that it does not hold was left by an earlier life of the node (killed
    before it could finish): nobody else would take it over before the lease runs out, so the
    node takes it over at once.

    ``void`` holds the ids of devices removed from the space: their claims are stale at once
    (step 7), and a node that is itself void claims nothing (nobody would accept its claim)."""
    if me in void:
        return None
    if status is Status.QUEUED:
        if wall_ms < retry_at(facts, policy):
            return None
        return Candidate(prompt_id=prompt_id, model=model, priority=priority, attempt=facts.next_attempt())
    if status in (Status.CLAIMED, Status.RUNNING):
        current = winner(facts.claims)
        if current is None:
            return None
        if current.node == me:
            if holding:
                return None
        elif current.node not in void and not watch.stale(current, monotonic_ms, policy):
            return None
        return Candidate(
            prompt_id=prompt_id, model=model, priority=priority, attempt=facts.next_attempt(), expired=current
        )
    return None


def order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Highest priority first, then oldest (ids sort by creation time)."""
    return sorted(candidates, key=lambda c: (-c.priority, c.prompt_id))


def first_choice(prompt_id: str, me: DeviceId, rivals: Iterable[str]) -> bool:
    """Whether this node would win a claim on the prompt against every rival node: nodes that
    claim their first choices first split a long queue instead of all claiming its head."""
    mine = rank(prompt_id, me)
    return all(mine < rank(prompt_id, rival) for rival in rivals)


def won(claims: Sequence[Claim], me: DeviceId, attempt: int) -> bool:
    """After settling: whether this node's claim at ``attempt`` is the winner."""
    current = winner(claims)
    return current is not None and current.node == me and current.attempt == attempt


def expiry_record(
    stale: Claim, *, observer: DeviceId, observer_name: str, now_ms: int, void: Collection[str] = ()
) -> Result:
    """The failed run an observer records for a claim whose lease expired (or, when the
    observer is the claim's own node, that it left behind when it stopped; or whose node was
    removed from the space, when it is in ``void``)."""
    if stale.node in void:
        error = (
            f"node {stale.node[:12]} was removed from the space while it held this prompt"
            f" (seen by {observer_name})"
        )
    elif stale.node == observer:
        error = f"node {observer_name} stopped (killed or crashed) while it held this prompt"
    else:
        error = f"lease expired: node {stale.node[:12]} stopped sending heartbeats (seen by {observer_name})"
    return Result(
        prompt_id=stale.prompt_id,
        node=stale.node,
        node_name="",
        attempt=stale.attempt,
        status=RunStatus.FAILED,
        error=error,
        started_at=now_ms,
        finished_at=now_ms,
        observer=observer,
    )
