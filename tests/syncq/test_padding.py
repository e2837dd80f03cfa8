"""Padding of sealed payloads (PROTOCOL.md, "Envelope", "Padding"): a 2 KiB floor, PADMÉ above
it, a cap that keeps every envelope within a frame; bad padding quarantined; version 1 (unpadded)
envelopes still read."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from syncq import crypto, frames
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import BadSignature, BadTag, BadUpdate
from syncq.padding import FLOOR, LENGTH_SIZE, PAD_LIMIT, pad, padded_size, padme, unpad
from syncq.protocol import MAX_FRAME_SIZE, Frame
from syncq.space import Space

DEVICE = DeviceKeys.from_seed(bytes(range(64)))
SPACE = SpaceKeys.create(bytes(32))
LENGTHS = st.integers(min_value=0, max_value=(1 << 32) - 1)


def seal_raw(*, device: DeviceKeys, space: SpaceKeys, seq: int, plaintext: bytes, version: int = 2) -> bytes:
    """An envelope sealed and signed by hand: ``plaintext`` goes into the AEAD exactly as given
    (what a broken member, or a node from before padding, writes)."""
    header = crypto._HEADER.pack(
        crypto.MAGIC, version, crypto.Kind.UPDATE, bytes.fromhex(space.space_id), space.epoch,
        device.public_key, seq,
    )  # fmt: skip
    nonce = os.urandom(crypto.NONCE_SIZE)
    body = header + nonce + ChaCha20Poly1305(space.enc_key(space.epoch)).encrypt(nonce, plaintext, header)
    return body + device.sign(body)


@given(st.binary(max_size=20_000))
def test_pad_and_unpad_round_trip(payload: bytes) -> None:
    padded = pad(payload)
    assert len(padded) == padded_size(len(payload))
    assert unpad(padded) == payload


@given(LENGTHS)
def test_the_padded_size_depends_only_on_the_bucket(length: int) -> None:
    size = padded_size(length)
    assert size >= length + LENGTH_SIZE
    # A bucket is a fixed point: every length up to the bucket's own payload pads to it.
    if size <= PAD_LIMIT:
        assert padded_size(size - LENGTH_SIZE) == size
    assert padded_size(max(0, length - 1)) <= size  # monotonic: no smaller length pads larger


@given(LENGTHS)
def test_the_overhead_stays_within_what_protocol_md_says(length: int) -> None:
    inner, size = length + LENGTH_SIZE, padded_size(length)
    if inner <= FLOOR:
        assert size == FLOOR
    elif inner > PAD_LIMIT:
        assert size == inner  # only the length field: padding must not leave a frame
    else:
        assert size <= PAD_LIMIT
        assert size - inner <= inner * (0.0625 if inner < 1 << 16 else 0.03125)


def test_padme_leaves_only_the_top_bits() -> None:
    assert [padme(n) for n in (0, 1, 2, 3, 9, 259, 1149, 2049, 100_000)] == [
        0, 1, 2, 3, 10, 272, 1152, 2176, 100_352
    ]  # fmt: skip
    with pytest.raises(ValueError):
        padme(-1)
    with pytest.raises(ValueError):
        padded_size(1 << 32)


def test_a_10_byte_and_a_900_byte_prompt_seal_to_one_size(space: Space) -> None:
    space.add("x" * 10, model="echo")
    space.add("x" * 900, model="echo")
    space.add("x" * 3000, model="echo")
    short, long, longer = (len(e) for e in list(space.envelopes())[-3:])
    assert short == long == crypto.OVERHEAD + FLOOR
    assert longer > long


def test_a_padded_envelope_near_the_limit_still_fits_one_frame() -> None:
    for length in (PAD_LIMIT - LENGTH_SIZE - 100_000, PAD_LIMIT - LENGTH_SIZE, PAD_LIMIT - LENGTH_SIZE + 1):
        data = crypto.seal(device=DEVICE, space=SPACE, seq=1, payload=bytes(length), nonce=bytes(12))
        frame = frames.pack([Frame.ENVELOPES, (1 << 63) - 1, [data]])
        assert len(frame) + crypto.TAG_SIZE <= MAX_FRAME_SIZE, length
        assert crypto.open_envelope(data, SPACE)[1] == bytes(length)


@given(st.binary(max_size=3000))
def test_unpadding_arbitrary_bytes_returns_a_payload_or_raises_bad_update(data: bytes) -> None:
    try:
        payload = unpad(data)
    except BadUpdate:
        return
    assert data == struct.pack(">I", len(payload)) + payload + bytes(len(data) - LENGTH_SIZE - len(payload))


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",  # no length field
        b"\x00\x00",
        struct.pack(">I", 2045) + bytes(2044),  # a length past the end
        struct.pack(">I", 0xFFFFFFFF) + bytes(2044),
        struct.pack(">I", 3) + b"abc" + bytes(2040) + b"\x01",  # a nonzero padding byte
    ],
)
def test_a_sealed_envelope_with_bad_padding_is_rejected(plaintext: bytes) -> None:
    with pytest.raises(BadUpdate, match="envelope 1 of"):
        crypto.open_envelope(seal_raw(device=DEVICE, space=SPACE, seq=1, plaintext=plaintext), SPACE)


def test_a_member_quarantines_bad_padding_and_applies_what_follows(
    space: Space, member: Callable[[str], Space]
) -> None:
    gpu = member("gpu")
    forged = struct.pack(">I", 9999) + bytes(FLOOR - 4)  # signed and sealed by a member, but broken
    space.store.append_own(
        space.device.public_key,
        [lambda seq: seal_raw(device=space.device, space=space.keys, seq=seq, plaintext=forged)],
    )
    space.add("after the bad padding", model="echo")
    report = gpu.receive(space.envelopes())
    assert report.rejected == {} and report.quarantined == {"bad-update": 1}
    assert [e.prompt.input for e in gpu.entries()] == ["after the bad padding"]
    (detail,) = [row[4] for row in gpu.store.rejection_details() if row[0] == "bad-update"]
    assert "padding names a 9999-byte payload" in detail


def test_an_unpadded_version_1_envelope_is_still_read(space: Space, member: Callable[[str], Space]) -> None:
    gpu = member("gpu")
    space.add("written before padding", model="echo")
    *earlier, padded = space.envelopes()
    envelope, update = crypto.open_envelope(padded, space.keys)
    unpadded = seal_raw(device=space.device, space=space.keys, seq=envelope.seq, plaintext=update, version=1)
    assert len(unpadded) == crypto.OVERHEAD + len(update) < len(padded)
    assert crypto.open_envelope(unpadded, gpu.keys)[1] == update  # version 1: nothing stripped
    report = gpu.receive([*earlier, unpadded])
    assert report.rejected == report.quarantined == {}
    assert [e.prompt.input for e in gpu.entries()] == ["written before padding"]


def test_the_version_cannot_be_changed_by_anyone_nor_rewrapped_by_the_author() -> None:
    data = bytearray(crypto.seal(device=DEVICE, space=SPACE, seq=1, payload=b"x", nonce=bytes(12)))
    data[2] = crypto.UNPADDED_VERSION  # the signature covers the version byte
    with pytest.raises(BadSignature):
        crypto.open_envelope(bytes(data), SPACE)
    body = bytes(data[: -crypto.SIGNATURE_SIZE])
    with pytest.raises(BadTag):  # re-signed by the author: the AEAD's associated data covers it too
        crypto.open_envelope(body + DEVICE.sign(body), SPACE)


def test_clear_envelopes_are_not_padded() -> None:
    data = crypto.sign_clear(
        device=DEVICE, space_id=SPACE.space_id, epoch=0, seq=1, kind=crypto.Kind.ROSTER, payload=b"\x90"
    )
    assert len(data) == crypto.OVERHEAD - crypto.TAG_SIZE + 1
    assert data[2] == crypto.ENVELOPE_VERSION
