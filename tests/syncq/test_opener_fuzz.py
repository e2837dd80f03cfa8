"""Fuzzing the envelope opener (``crypto.open_envelope`` and what a member checks after it):
whatever bytes arrive, it returns the payload of an envelope exactly as sealed, or raises
``EnvelopeRejected`` with one of the documented reasons, and nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncq import authorship, crypto, yjs
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import EnvelopeRejected
from syncq.records import encode

DEVICE = DeviceKeys.from_seed(bytes(range(64)))
SPACE = SpaceKeys.create(bytes(range(32)))
# Wrong keys: another space; this space's id with another secret (a forged invite); a relay's.
WRONG = [
    SpaceKeys.create(b"\x07" * 32),
    SpaceKeys(space_id=SPACE.space_id, secrets={0: b"\x08" * 32}),
    SpaceKeys(space_id=SPACE.space_id, secrets={1: bytes(range(32))}),
]
PAYLOAD = yjs.encode_map_inserts(
    3, 0, "prompts", [("01J0000000000000000000000", encode({"author": DEVICE.device_id, "input": "hi"}))]
)
REAL = [
    crypto.seal(device=DEVICE, space=SPACE, seq=seq, payload=payload, nonce=bytes([seq]) * 12)
    for seq, payload in [(1, PAYLOAD), (2, b""), (3, b"\x00" * 300)]
]
REASONS = {"malformed", "wrong-space", "bad-signature", "unknown-epoch", "bad-tag", "bad-update", "forged"}


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A real envelope with bits flipped, cut short, extended or spliced with another."""
    data = bytearray(draw(st.sampled_from(REAL)))
    how = draw(st.sampled_from(["flip", "cut", "extend", "splice", "field"]))
    if how == "flip":
        for index in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4, unique=True)):
            data[index] ^= 1 << draw(st.integers(0, 7))
    elif how == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif how == "splice":
        other = draw(st.sampled_from(REAL))
        cut = draw(st.integers(1, len(data) - 1))
        data = data[:cut] + other[cut:]
    else:  # rewrite one header field to any value
        start, size = draw(st.sampled_from([(2, 1), (3, 1), (4, 16), (20, 4), (24, 32), (56, 8), (64, 12)]))
        data[start : start + size] = draw(st.binary(min_size=size, max_size=size))
    return bytes(data)


ANYTHING = st.one_of(
    st.binary(max_size=400),
    st.binary(min_size=crypto.OVERHEAD, max_size=crypto.OVERHEAD + 64).map(lambda b: b"SQ\x01\x01" + b[4:]),
    st.binary(min_size=crypto.OVERHEAD, max_size=crypto.OVERHEAD + 64).map(lambda b: b"SQ\x02\x01" + b[4:]),
    damaged(),
    st.sampled_from(REAL),
)


@settings(max_examples=3000, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=ANYTHING, keys=st.sampled_from([SPACE, SPACE, *WRONG]))
def test_the_opener_accepts_only_untouched_envelopes_and_rejects_with_a_reason(
    data: bytes, keys: SpaceKeys
) -> None:
    try:
        envelope, payload = crypto.open_envelope(data, keys)
        authorship.check_update(payload, envelope.author_id) if payload else None
    except EnvelopeRejected as exc:
        reason = exc.reason
    else:
        reason = None
    if reason is not None:
        assert reason in REASONS
        assert not (data in REAL and keys is SPACE and reason != "bad-update")
        return
    assert data in REAL, "a modified envelope was accepted"
    assert keys is SPACE
    assert (
        crypto.seal(device=DEVICE, space=SPACE, seq=envelope.seq, payload=payload, nonce=envelope.nonce)
        == data
    )
