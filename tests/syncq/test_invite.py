"""Invite codes and grants (syncq.invite): round trips, no key of the space in a code, and the
range of every field checked on decoding."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncq import epochs, roster
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import InvalidInput
from syncq.invite import (
    MAX_ADDRESSES,
    PREFIX,
    Grant,
    Invite,
    decode_invite,
    encode_invite,
    grant_from_wire,
    grant_to_wire,
    pack_keys,
    unpack_keys,
)
from syncq.roster import Role

SPACE = SpaceKeys.create(bytes(range(32)))
FOUNDER = DeviceKeys.from_seed(bytes([3]) * 64)
ROOT = FOUNDER.public_key
INVITE = Invite(
    space_id=SPACE.space_id,
    role=Role.MEMBER,
    secret=bytes([9]) * 32,
    expires_at=1_700_000_000_000,
    addresses=("ws://127.0.0.1:7330",),
    root=ROOT,
)


def code_of(body: list[object]) -> str:
    return PREFIX + base64.urlsafe_b64encode(msgpack.packb(body, use_bin_type=True)).decode().rstrip("=")


def body(**changes: object) -> list[object]:
    fields: dict[str, object] = {
        "version": 3,
        "space_id": bytes.fromhex(SPACE.space_id),
        "role": "member",
        "secret": INVITE.secret,
        "expires_at": INVITE.expires_at,
        "urls": list(INVITE.addresses),
        "root": ROOT,
    }
    fields.update(changes)
    return list(fields.values())


def test_a_code_round_trips_and_carries_no_key_of_the_space() -> None:
    code = encode_invite(INVITE)
    assert decode_invite(code) == INVITE
    raw = base64.urlsafe_b64decode(code[len(PREFIX) :] + "=" * (-len(code) % 4))
    for secret in (SPACE.secrets[0], SPACE.auth_key(0), SPACE.enc_key(0)):
        assert secret not in raw
    fresh = dataclasses.replace(INVITE, secret=os.urandom(32))
    assert decode_invite(encode_invite(fresh)).id == fresh.id != INVITE.id


def test_codes_of_older_versions_say_to_ask_for_a_new_one() -> None:
    for version in (1, 2):
        with pytest.raises(InvalidInput, match="older syncq"):
            decode_invite(code_of([version, bytes(16), {0: bytes(32)}, {}, []]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role": "owner"}, "role"),
        ({"secret": bytes(31)}, "invite secret"),
        ({"expires_at": -1}, "expiry"),
        ({"expires_at": True}, "expiry"),
        ({"urls": ["ws://h:1"] * (MAX_ADDRESSES + 1)}, "at most|damaged"),
        ({"urls": [7]}, "bad addresses"),
        ({"root": bytes(31)}, "root"),
        ({"space_id": bytes(15)}, "space id"),
        ({"version": 4}, "newer"),
    ],
)
def test_every_field_is_range_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_invite(code_of(body(**changes)))


@given(data=st.binary(max_size=300))
def test_decoding_arbitrary_bytes_raises_invalid_input_only(data: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        decode_invite(PREFIX + base64.urlsafe_b64encode(data).decode())


@given(
    data=st.lists(
        st.one_of(
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.binary(max_size=40),
            st.text(max_size=10),
            st.lists(st.text(max_size=10), max_size=3),
        ),
        max_size=8,
    )
)
def test_decoding_arbitrary_msgpack_raises_invalid_input_only(data: list[object]) -> None:
    with contextlib.suppress(InvalidInput):
        decode_invite(code_of(data))


def grant_for(joiner: DeviceKeys) -> Grant:
    seed = bytes([7]) * 32
    entry = roster.admit_entry(
        FOUNDER, SPACE.space_id, joiner.public_key, Role.MEMBER, joiner.exchange_public_key
    )
    return Grant(
        space_id=SPACE.space_id,
        role=Role.MEMBER,
        root=ROOT,
        chain=(*roster.founding_chain(FOUNDER, SPACE.space_id), entry),
        generations={},
        ephemeral=epochs.public_of(seed),
        sealed_keys=epochs.box(
            seed,
            joiner.exchange_public_key,
            space_id=SPACE.space_id,
            epoch=0,
            recipient=joiner.public_key,
            value=pack_keys(SPACE.secrets),
        ),
        admitter_name="laptop",
    )


def test_a_grant_round_trips_and_opens_only_for_its_device() -> None:
    joiner, other = DeviceKeys.from_seed(bytes([5]) * 64), DeviceKeys.from_seed(bytes([6]) * 64)
    grant = grant_for(joiner)
    again = grant_from_wire(grant_to_wire(grant))
    assert again == grant
    opened = epochs.unbox(joiner, again.ephemeral, again.sealed_keys, space_id=SPACE.space_id, epoch=0)
    assert opened is not None and unpack_keys(opened) == dict(SPACE.secrets)
    assert epochs.unbox(other, again.ephemeral, again.sealed_keys, space_id=SPACE.space_id, epoch=0) is None


@given(data=st.binary(max_size=400))
def test_a_damaged_grant_raises_invalid_input_only(data: bytes) -> None:
    good = grant_to_wire(grant_for(DeviceKeys.from_seed(bytes([5]) * 64)))
    for candidate in (data, good[: len(data) % len(good)], data + good):
        with contextlib.suppress(InvalidInput):
            grant_from_wire(candidate)
