from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncq import crypto, padding
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import (
    BadSignature,
    BadTag,
    EnvelopeRejected,
    MalformedEnvelope,
    UnknownEpoch,
    WrongSpace,
)

DEVICE = DeviceKeys.from_seed(bytes(range(64)))
OTHER_DEVICE = DeviceKeys.from_seed(bytes(range(1, 65)))
SPACE = SpaceKeys.create(bytes(32))
OTHER_SPACE = SpaceKeys.create(b"\x01" * 32)


def sealed(payload: bytes = b"update", seq: int = 1, space: SpaceKeys = SPACE) -> bytes:
    return crypto.seal(device=DEVICE, space=space, seq=seq, payload=payload, nonce=b"n" * 12)


@given(payload=st.binary(max_size=2000), seq=st.integers(min_value=1, max_value=2**63 - 1))
def test_envelope_round_trip(payload: bytes, seq: int) -> None:
    envelope, opened = crypto.open_envelope(sealed(payload, seq), SPACE)
    assert opened == payload
    assert envelope.seq == seq
    assert envelope.author_id == DEVICE.device_id
    assert envelope.epoch == 0
    assert envelope.kind is crypto.Kind.UPDATE


def test_envelope_layout_matches_protocol_md() -> None:
    data = sealed(b"abc")
    assert data[:2] == b"SQ"
    assert data[2] == crypto.ENVELOPE_VERSION == 2
    assert len(data) == crypto.OVERHEAD + padding.Floor.CONTENT  # 3 bytes, padded ("Padding")
    assert data[4:20] == bytes.fromhex(SPACE.space_id)
    assert data[24:56] == DEVICE.public_key
    assert int.from_bytes(data[56:64], "big") == 1


@settings(max_examples=300)
@given(data=st.data())
def test_any_flipped_bit_is_rejected(data: st.DataObject) -> None:
    envelope = bytearray(sealed(b"a prompt worth protecting"))
    position = data.draw(st.integers(min_value=0, max_value=len(envelope) * 8 - 1))
    envelope[position // 8] ^= 1 << (position % 8)
    with pytest.raises(EnvelopeRejected):
        crypto.open_envelope(bytes(envelope), SPACE)


@given(data=st.data())
def test_any_changed_byte_is_rejected(data: st.DataObject) -> None:
    envelope = bytearray(sealed(b"another prompt"))
    position = data.draw(st.integers(min_value=0, max_value=len(envelope) - 1))
    envelope[position] = data.draw(st.integers(0, 255).filter(lambda b: b != envelope[position]))
    with pytest.raises(EnvelopeRejected):
        crypto.open_envelope(bytes(envelope), SPACE)


@given(st.binary(max_size=400))
def test_decoding_arbitrary_bytes_raises_only_malformed(data: bytes) -> None:
    try:
        envelope = crypto.decode(data)
    except MalformedEnvelope:
        return
    assert envelope.raw == data


def test_truncated_and_oversized_envelopes_are_malformed() -> None:
    with pytest.raises(MalformedEnvelope, match="shorter"):
        crypto.decode(sealed()[:100])
    with pytest.raises(MalformedEnvelope, match="exceeds"):
        crypto.decode(b"SQ" + bytes(crypto.MAX_ENVELOPE_SIZE))


def test_wrong_space_is_rejected_before_decryption() -> None:
    with pytest.raises(WrongSpace):
        crypto.open_envelope(sealed(space=OTHER_SPACE), SPACE)


def test_unknown_epoch_is_rejected() -> None:
    later = SpaceKeys(space_id=SPACE.space_id, secrets={0: bytes(32), 1: b"\x02" * 32})
    with pytest.raises(UnknownEpoch):
        crypto.open_envelope(sealed(space=later), SPACE)


def test_signature_by_another_device_is_rejected() -> None:
    data = bytearray(sealed())
    data[24:56] = OTHER_DEVICE.public_key  # claim another author: the signature no longer fits
    with pytest.raises(BadSignature):
        crypto.open_envelope(bytes(data), SPACE)


def test_resigned_envelope_with_changed_ciphertext_fails_the_tag() -> None:
    data = bytearray(sealed(b"payload"))
    data[crypto.HEADER_SIZE + 12] ^= 1
    body = bytes(data[: -crypto.SIGNATURE_SIZE])
    forged = body + DEVICE.sign(body)  # a member re-signs tampered ciphertext
    with pytest.raises(BadTag):
        crypto.open_envelope(forged, SPACE)


def test_derived_keys_differ_and_are_stable() -> None:
    keys = {SPACE.enc_key(0), SPACE.auth_key(0), SPACE.local_key("checkpoint")}
    assert len(keys) == 3
    assert SpaceKeys.create(bytes(32)).enc_key(0) == SPACE.enc_key(0)
    assert len(SPACE.space_id) == 32
    with pytest.raises(UnknownEpoch):
        SPACE.enc_key(5)


def test_local_seal_round_trip_and_binding() -> None:
    key = os.urandom(32)
    box = crypto.seal_local(key, b"state", b"n" * 12, b"aad")
    assert crypto.open_local(key, box, b"aad") == b"state"
    with pytest.raises(BadTag):
        crypto.open_local(key, box, b"other aad")


def test_bad_seal_arguments() -> None:
    with pytest.raises(ValueError):
        crypto.seal(device=DEVICE, space=SPACE, seq=0, payload=b"", nonce=b"n" * 12)
    with pytest.raises(ValueError):
        crypto.seal(device=DEVICE, space=SPACE, seq=1, payload=b"", nonce=b"short")
    with pytest.raises(ValueError):
        DeviceKeys.from_seed(b"short")
    with pytest.raises(ValueError):
        SpaceKeys.create(b"short")
