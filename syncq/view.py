"""The local view: each prompt's records sealed on their own, so that listing the newest
prompts, showing one and counting them need not load the whole Doc.

Why a view beside the envelopes and not Docs sharded by time (DESIGN.md section 6): a shard
would change the data model every device merges and the wire format, and a prompt from last
year that is claimed or cancelled today would still pull its year's shard in. The view is only
this device's cache of what the Doc says: it is rebuilt from the Doc whenever it may be wrong,
and no peer ever sees it.

A row is a prompt id (time and randomness, no content), a keyed tag of its status (for
``syncq log --status`` and the counts of ``syncq status``: it shows which prompts share a
status, not which status that is) and the prompt's records (``log.Raw``) sealed with a local
key, the prompt id and the tag as associated data so that a row cannot be moved to another
prompt nor given another status's tag (it would be listed under that status). Nothing
of a prompt's text, model, files or results is on disk in the clear.

This module is pure: the store keeps the rows, the replica decides when they are written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass

from syncq import crypto
from syncq.entries import Entry, Raw, entry_of
from syncq.errors import EnvelopeRejected
from syncq.lifecycle import Status

TAG_BYTES = 8


@dataclass(frozen=True, slots=True)
class Sealed:
    """A prompt's row of the view as stored."""

    prompt_id: str
    status: bytes  # ``Keys.tag(status)``
    data: bytes  # ``Keys.seal``


class Keys:
    """The view's keys, derived from the space's local key: one to seal rows, one to tag
    statuses."""

    def __init__(self, local_key: Callable[[str], bytes], entropy: Callable[[int], bytes]) -> None:
        self._seal_key = local_key("view")
        self._tag_key = local_key("view status")
        self._entropy = entropy
        self._tags = {s: self._tag(s.value) for s in Status}
        # A prompt whose records do not decode has a row too: the Doc counts it among the
        # prompts (``len``) but in no status, and showing it fails as on the Doc.
        self.malformed = self._tag("malformed")

    def tag(self, status: Status) -> bytes:
        """The status's tag in this home (the same for every row with that status)."""
        return self._tags[status]

    def status_of(self, tag: bytes) -> Status | None:
        """The status a tag stands for, or None for a tag of another key."""
        return next((s for s, t in self._tags.items() if hmac.compare_digest(t, tag)), None)

    def seal(self, prompt_id: str, raw: Raw, status: Status | None) -> Sealed:
        """The row of a prompt whose records are ``raw`` and whose derived status is ``status``
        (None: its records do not decode)."""
        plain = json.dumps(
            [raw.prompt, raw.cancel, raw.retry, raw.claims, raw.results, raw.stream],
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        tag = self.tag(status) if status is not None else self.malformed
        nonce = self._entropy(crypto.NONCE_SIZE)
        data = crypto.seal_local(self._seal_key, plain, nonce, _aad(prompt_id, tag))
        return Sealed(prompt_id, tag, data)

    def open(self, prompt_id: str, tag: bytes, data: bytes) -> Raw:
        """A row's records. Raises ``EnvelopeRejected`` (a damaged row, another key's, or one
        given another row's tag)."""
        plain = crypto.open_local(self._seal_key, data, _aad(prompt_id, tag))
        try:
            prompt, cancel, retry, claims, results, stream = json.loads(plain)
            return Raw(
                prompt=str(prompt),
                cancel=_optional(cancel),
                retry=_optional(retry),
                claims=tuple((str(k), str(v)) for k, v in claims),
                results=tuple((str(k), str(v)) for k, v in results),
                stream=_optional(stream),
            )
        except (ValueError, TypeError) as exc:  # sealed by us, so only a bug gets here
            raise EnvelopeRejected(f"view row of {prompt_id} does not decode: {exc}") from exc

    def entry(self, prompt_id: str, tag: bytes, data: bytes) -> Entry:
        """A row's ``Entry``. Raises ``EnvelopeRejected`` or ``MalformedRecord``."""
        return entry_of(prompt_id, self.open(prompt_id, tag, data))

    def _tag(self, name: str) -> bytes:
        return hmac.new(self._tag_key, name.encode(), hashlib.sha256).digest()[:TAG_BYTES]


def _aad(prompt_id: str, tag: bytes) -> bytes:
    # The tag is of fixed length (a row's is always one of ``Keys``' tags): nothing is ambiguous.
    return b"view " + bytes(tag) + prompt_id.encode()


def _optional(value: object) -> str | None:
    return None if value is None else str(value)
