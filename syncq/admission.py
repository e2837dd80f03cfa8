"""Who a sync session admits: the HELLO's tags, the session epoch, the AUTH payload and the
device check (PROTOCOL.md, "Sync"). Pure functions, kept apart from the state machine in
``syncq.protocol`` so each stays readable.

- ``hello_tags``: a HELLO carries ``TAGS`` (4) tags, one under each of this node's 3 newest
  epochs and epoch 0 (deduplicated), the rest fillers keyed by the node's signing seed, sorted
  bytewise. Every HELLO looks alike whatever its sender knows: neither a stranger nor an insider
  holding some epoch's key learns how many epochs the sender knows, nor which tag is whose.
- ``session_epoch``: the first epoch of *this side's own* tag list (newest first) under which one
  of the peer's tags verifies. The rule is symmetric: both sides order epochs alike (by
  generation, then id: ``SpaceKeys.ordered``), so both pick the newest epoch common to both
  tag lists. A member several rotations behind still meets the others on epoch 0; two
  partitioned members that rotated concurrently meet on the last epoch they share. Every tag
  is checked against every epoch, each compare in constant time, so the time taken does not
  say which matched.
- ``auth_fields``: the node id, signature, name and relay flag sealed in an AUTH.
- ``told_refusal``: what a peer refused by the device check (4410) is told; the refusing node
  logs its own, more precise reason.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import msgpack

from syncq import frames as fr
from syncq.frames import MAX_NAME, CloseCode, Violation
from syncq.handshake import HELLO_TAG_SIZE, hello_tag

TAGS = 4  # tags in every HELLO, real or filler
NEWEST_TAGGED = 3  # how many of the newest epochs get a tag (epoch 0 always does)
REFUSED = "not admitted (another space, or another key epoch)"  # all a stranger is told
TOLD_REMOVED = "this device was removed from the space"
TOLD_UNLISTED = "this device is not on the space's device list yet: ask a member to invite it"

Epochs = Sequence[tuple[int, bytes]]  # (epoch, auth_key), newest first


def tagged_epochs(auth_keys: Epochs) -> list[tuple[int, bytes]]:
    """The epochs a HELLO carries tags for, newest first: the 3 newest, and epoch 0."""
    chosen = list(auth_keys[:NEWEST_TAGGED])
    if all(epoch != 0 for epoch, _ in chosen):
        chosen += [(epoch, key) for epoch, key in auth_keys if epoch == 0][:1]
    return chosen


def filler_tag(signing_seed: bytes, challenge: bytes, index: int) -> bytes:
    """A tag that stands for no epoch: as random-looking as a real one to anyone but the sender."""
    message = b"syncq-filler" + challenge + bytes([index])
    return hmac.new(signing_seed, message, hashlib.sha256).digest()[:HELLO_TAG_SIZE]


def hello_tags(tagged: Epochs, signing_seed: bytes, challenge: bytes, ephemeral: bytes) -> list[bytes]:
    """The ``TAGS`` tags of this side's HELLO, sorted so their order says nothing."""
    tags = [hello_tag(key, challenge, ephemeral) for _, key in tagged[:TAGS]]
    tags += [filler_tag(signing_seed, challenge, i) for i in range(len(tags), TAGS)]
    return sorted(tags)


def session_epoch(
    tagged: Epochs, challenge: bytes, ephemeral: bytes, tags: Sequence[bytes]
) -> tuple[int, bytes] | None:
    """The (epoch, auth_key) of the first of ``tagged`` (this side's, newest first) under which
    one of the peer's ``tags`` (over the peer's challenge and ephemeral) verifies, or None."""
    found = None
    for epoch, key in tagged:
        mine = hello_tag(key, challenge, ephemeral)
        hit = False
        for tag in tags:  # no early exit: every compare is made
            hit |= hmac.compare_digest(mine, tag)
        if hit and found is None:
            found = (epoch, key)
    return found


def check_tags(tags: object) -> list[bytes]:
    """A HELLO's tag list: exactly ``TAGS`` tags of 16 bytes. Raises ``Violation``."""
    if not isinstance(tags, list) or len(tags) != TAGS:
        raise Violation(CloseCode.MALFORMED, f"a HELLO carries {TAGS} tags")
    for tag in tags:
        fr.check_bytes(tag, HELLO_TAG_SIZE, "hello tag")
    return tags


def told_refusal(reason: str) -> str:
    """What a peer refused by the device check is told: one of two fixed lines, whatever detail
    ``Space.peer_refusal`` gave (it names a removed device's removal as such)."""
    return TOLD_REMOVED if "removed" in reason else TOLD_UNLISTED


def sealed_fields(inner: bytes, what: str, count: int) -> list[Any]:
    """The msgpack array of ``count`` fields sealed in an AUTH or a JOIN_REQUEST: sealed by a
    holder of the key, yet still untrusted bytes. Raises ``Violation``."""
    try:
        fields: Any = msgpack.unpackb(inner, raw=False, max_str_len=1024, max_bin_len=1024)
    except Exception as exc:
        raise Violation(CloseCode.MALFORMED, f"{what} holds no msgpack array") from exc
    if not isinstance(fields, list):
        raise Violation(CloseCode.MALFORMED, f"{what} holds no msgpack array")
    fr.shape(fields, count)
    return fields


def auth_fields(inner: bytes) -> tuple[bytes, bytes, str, bool]:
    """The node id, signature, name and relay flag sealed in an AUTH. Raises ``Violation``."""
    node_id, signature, name, relay = sealed_fields(inner, "AUTH", 4)
    fr.check_bytes(node_id, 32, "node id")
    fr.check_bytes(signature, 64, "signature")
    if not isinstance(name, str) or len(name) > MAX_NAME or not isinstance(relay, bool):
        raise Violation(CloseCode.MALFORMED, "bad name or relay flag")
    return node_id, signature, name, relay
