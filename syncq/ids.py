"""Identifiers: time-sortable prompt ids, device ids and space ids.

Prompt ids are ULIDs: 48 bits of milliseconds since the epoch then 80 random bits, written as
26 characters of Crockford base32. Sorting ids as strings sorts prompts by creation time across
devices, which is what `syncq log` shows. Time and randomness are arguments: this module never
reads a clock or an entropy source.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NewType

from syncq.errors import AmbiguousId, InvalidInput, UnknownId

PromptId = NewType("PromptId", str)
DeviceId = NewType("DeviceId", str)  # hex of the device's Ed25519 public key (64 characters)
SpaceId = NewType("SpaceId", str)  # hex of the 16-byte public space id (32 characters)

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(CROCKFORD)}
ID_LENGTH = 26
ENTROPY_BYTES = 10
_MAX_MS = (1 << 48) - 1


def new_prompt_id(now_ms: int, entropy: bytes) -> PromptId:
    """Make a ULID from a millisecond timestamp and 10 random bytes.

    Raises ``ValueError`` if the timestamp is out of range or the entropy is not 10 bytes.
    """
    if not 0 <= now_ms <= _MAX_MS:
        raise ValueError(f"timestamp out of range: {now_ms}")
    if len(entropy) != ENTROPY_BYTES:
        raise ValueError("a prompt id needs exactly 10 bytes of entropy")
    return _encode((now_ms << 80) | int.from_bytes(entropy, "big"))


def next_prompt_id(now_ms: int, entropy: bytes, previous: str | None) -> PromptId:
    """A new id that sorts after ``previous`` (the ULID monotonic rule).

    Ids made in the same millisecond (or after the clock stepped back) take ``previous`` plus
    one, so one process's prompts keep the order they were added in.
    """
    if previous is not None and prompt_id_time_ms(previous) >= now_ms:
        value = _decode(previous) + 1
        if value >> 128:
            raise ValueError("prompt id space exhausted for this millisecond")
        return _encode(value)
    return new_prompt_id(now_ms, entropy)


def is_prompt_id(text: str) -> bool:
    """Whether ``text`` is a well-formed prompt id (upper-case Crockford base32, 26 characters)."""
    return len(text) == ID_LENGTH and all(c in _DECODE for c in text) and text[0] in "01234567"


def prompt_id_time_ms(prompt_id: str) -> int:
    """The creation time in milliseconds encoded in a prompt id.

    Raises ``ValueError`` for a malformed id.
    """
    if not is_prompt_id(prompt_id):
        raise ValueError(f"not a prompt id: {prompt_id!r}")
    return _decode(prompt_id) >> 80


def normalize_prefix(prefix: str) -> str:
    """Upper-case a user-typed prefix and map the letters Crockford treats as digits.

    Raises ``InvalidInput`` if it contains characters no id can contain.
    """
    text = prefix.strip().upper().translate(str.maketrans("OIL", "011"))
    if not text:
        raise InvalidInput("an id (or the first characters of one) is required")
    bad = sorted({c for c in text if c not in _DECODE})
    if bad:
        raise InvalidInput(f"{prefix!r} is not an id: ids never contain {''.join(bad)!r}")
    return text


def resolve_prefix(prefix: str, ids: Iterable[str]) -> PromptId:
    """Find the one id that starts with ``prefix`` (case-insensitive).

    Raises ``UnknownId`` when none does and ``AmbiguousId`` (listing them) when several do.
    """
    wanted = normalize_prefix(prefix)
    matches = sorted(i for i in ids if i.startswith(wanted))
    if not matches:
        raise UnknownId(f"no prompt id starts with {prefix!r} (see `syncq log`)")
    if len(matches) > 1:
        raise AmbiguousId(prefix, matches)
    return PromptId(matches[0])


def _encode(value: int) -> PromptId:
    chars = []
    for _ in range(ID_LENGTH):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return PromptId("".join(reversed(chars)))


def _decode(prompt_id: str) -> int:
    value = 0
    for c in prompt_id:
        value = (value << 5) | _DECODE[c]
    return value
