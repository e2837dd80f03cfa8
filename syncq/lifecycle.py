"""The prompt lifecycle: status is derived from facts in the log, never stored.

A prompt's facts are its cancel (if any), its claims and its results. Facts only accumulate, and
they may reach a device in any order, so the status is a function of the *set* of facts, decided
by the first rule in ``RULES`` that holds (h11 style: the whole table lives here and the tests
walk it)::

    rule                                              status
    a run finished with status done                   done        (work done is never hidden)
    a cancel exists                                   cancelled
    runs failed max_attempts times                    failed      (runs that showed their
                                                                   node cannot run the model
                                                                   do not count: Result.counts)
    the winning claim has no result, marked running   running
    the winning claim has no result                   claimed
    otherwise                                         queued      (including "failed, will retry")

Because facts only accumulate, a terminal status can only move to a terminal status of a higher
rule: failed -> cancelled -> done (``TERMINAL_ORDER``). A cancel that arrives after a run
finished does not undo the run. The one way back is a user's ``syncq retry`` of a failed
prompt: its retry record raises ``max_attempts``, so the prompt is queued again.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from syncq.records import Claim, Result, RunStatus


class Status(enum.StrEnum):
    """The derived status of a prompt."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """Everything the log knows about one prompt's progress."""

    max_attempts: int
    cancelled: bool = False
    claims: Sequence[Claim] = ()
    results: Sequence[Result] = ()
    retried_at: int = 0  # when a user last asked for a retry (0: never)

    def failures(self) -> int:
        """How many runs failed (each (node, attempt) counted once), leaving out runs that only
        showed their node cannot run the model (``Result.counts``)."""
        return len({(r.node, r.attempt) for r in self.counted_failures()})

    def counted_failures(self) -> list[Result]:
        """The failed runs that count against ``max_attempts``."""
        return [r for r in self.results if r.status is RunStatus.FAILED and r.counts]

    def refusal(self) -> Result | None:
        """The latest run that showed its node cannot run the model, if nothing ran after it:
        the prompt then waits for another node (``Result.counts``)."""
        latest = max(self.results, key=lambda r: (r.attempt, r.finished_at), default=None)
        return latest if latest is not None and not latest.counts else None

    def open_claims(self) -> list[Claim]:
        """The winning claim of the latest attempt, if its run has not produced a result yet.

        Claims that lost (``winner``) are ignored: their nodes never ran the prompt.
        """
        current = winner(self.claims)
        if current is None:
            return []
        finished = {(r.node, r.attempt) for r in self.results}
        return [] if (current.node, current.attempt) in finished else [current]

    def next_attempt(self) -> int:
        """The attempt number a new claim takes: one past every attempt claimed or run."""
        return 1 + max([c.attempt for c in self.claims] + [r.attempt for r in self.results], default=0)


RULES: tuple[tuple[Callable[[Facts], bool], Status], ...] = (
    (lambda f: any(r.status is RunStatus.DONE for r in f.results), Status.DONE),
    (lambda f: f.cancelled, Status.CANCELLED),
    (lambda f: f.failures() >= f.max_attempts, Status.FAILED),
    (lambda f: any(c.running for c in f.open_claims()), Status.RUNNING),
    (lambda f: bool(f.open_claims()), Status.CLAIMED),
)

TERMINAL_ORDER: tuple[Status, ...] = (Status.FAILED, Status.CANCELLED, Status.DONE)
TERMINAL = frozenset(TERMINAL_ORDER)


def derive_status(facts: Facts) -> Status:
    """The status that the first matching rule of ``RULES`` gives (queued if none matches)."""
    for holds, status in RULES:
        if holds(facts):
            return status
    return Status.QUEUED


def winner(claims: Iterable[Claim]) -> Claim | None:
    """Who holds a prompt: among the claims of the highest attempt, the one whose node ranks
    first for this prompt (``rank``). Every replica picks the same claim from the same set, and
    the rank spreads prompts across nodes instead of always favouring one (the CRDT's own
    tie-break always favours the higher Yjs client id, so it is not used)."""
    claims = list(claims)
    if not claims:
        return None
    top = max(c.attempt for c in claims)
    return min((c for c in claims if c.attempt == top), key=lambda c: (rank(c.prompt_id, c.node), c.node))


def rank(prompt_id: str, node: str) -> bytes:
    """A node's place in the queue for one prompt: a hash, so no node always wins."""
    return hashlib.sha256(f"{prompt_id}/{node}".encode()).digest()


def canonical_result(results: Sequence[Result]) -> Result | None:
    """The result shown as *the* answer: the first done run by (attempt, node), else the last
    failure by (attempt, node). Every replica picks the same one from the same set."""
    done = sorted((r for r in results if r.status is RunStatus.DONE), key=_run_order)
    if done:
        return done[0]
    failed = sorted(results, key=_run_order)
    return failed[-1] if failed else None


def _run_order(result: Result) -> tuple[int, str]:
    return (result.attempt, result.node)
