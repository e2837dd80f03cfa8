"""A prompt with everything known about it (``Entry``), and the records it is decoded from
(``Raw``): the Doc's reading (``syncq.log``) and the local view's (``syncq.view``) go through
the same ``entry_of``, so they cannot differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from syncq.errors import MalformedRecord
from syncq.lifecycle import Facts, Status, canonical_result, derive_status
from syncq.records import Cancel, Claim, Prompt, Result, Retry, decode

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A prompt with everything known about it and its derived status."""

    prompt: Prompt
    status: Status
    facts: Facts
    cancel: Cancel | None = None
    retry: Retry | None = None
    claims: tuple[Claim, ...] = ()
    results: tuple[Result, ...] = ()
    stream: str | None = None  # output so far while it runs (streams[id])

    @property
    def result(self) -> Result | None:
        """The canonical result (``lifecycle.canonical_result``), if any run finished."""
        return canonical_result(self.results)

    def texts(self) -> Iterator[str]:
        """The prompt's words and its runs' answers: its text, each turn of its conversation,
        the texts it asks to embed, and each run's output and error."""
        yield self.prompt.input
        if self.prompt.llm is not None:
            yield from (turn.content for turn in self.prompt.llm.messages)
            yield from self.prompt.llm.inputs
        for run in self.results:
            yield run.output
            if run.error is not None:
                yield run.error

    def mentions(self, text: str) -> bool:
        """Whether ``text`` occurs in one of ``texts``, ignoring case (a substring, not words)."""
        needle = text.casefold()
        return any(needle in found.casefold() for found in self.texts())


@dataclass(frozen=True, slots=True, kw_only=True)
class Raw:
    """One prompt's records as the Doc holds them (JSON texts, claims and results as sorted
    (key, text) pairs): an ``Entry`` before decoding, which ``syncq.view`` keeps sealed on disk
    so that reading a prompt need not load the Doc."""

    prompt: str
    cancel: str | None = None
    retry: str | None = None
    claims: tuple[tuple[str, str], ...] = ()
    results: tuple[tuple[str, str], ...] = ()
    stream: str | None = None


def entry_of(prompt_id: str, raw: Raw) -> Entry:
    """Decode a prompt's records into its ``Entry``; a malformed cancel, retry, claim or result
    is left out, as if it were not there. Raises ``MalformedRecord`` for a malformed prompt."""
    prompt = Prompt.from_wire(prompt_id, decode(raw.prompt))
    cancel = _decoded(Cancel.from_wire, prompt_id, raw.cancel)
    retry = _decoded(Retry.from_wire, prompt_id, raw.retry)
    claims = tuple(c for k, v in raw.claims if (c := _decoded(Claim.from_wire, k, v)) is not None)
    results = tuple(r for k, v in raw.results if (r := _decoded(Result.from_wire, k, v)) is not None)
    facts = Facts(
        max_attempts=max(prompt.max_attempts, retry.max_attempts if retry else 0),
        cancelled=cancel is not None,
        claims=claims,
        results=results,
        retried_at=retry.at if retry else 0,
    )
    return Entry(
        prompt=prompt,
        status=derive_status(facts),
        facts=facts,
        cancel=cancel,
        retry=retry,
        claims=claims,
        results=results,
        stream=raw.stream,
    )


def _decoded(convert: Callable[[str, object], T], key: str, text: str | None) -> T | None:
    if text is None:
        return None
    try:
        return convert(key, decode(text))
    except MalformedRecord:
        return None
