"""Invite codes (syncq.invite): round trips, and the range of every field checked on decoding."""

from __future__ import annotations

import base64
import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncq import roster
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import InvalidInput
from syncq.invite import MAX_ADDRESSES, PREFIX, decode_invite, encode_invite

SPACE = SpaceKeys.create(bytes(range(32)))
FOUNDER = DeviceKeys.from_seed(bytes([3]) * 64)
ROOT = FOUNDER.public_key
INVITATION = roster.invite(
    FOUNDER, SPACE.space_id, ROOT, roster.founding_chain(FOUNDER, SPACE.space_id), bytes([9]) * 32
)


def code_of(body: list[object]) -> str:
    return PREFIX + base64.urlsafe_b64encode(msgpack.packb(body, use_bin_type=True)).decode().rstrip("=")


def member_body(**changes: object) -> list[object]:
    fields = {
        "version": 2,
        "space_id": bytes.fromhex(SPACE.space_id),
        "secrets": dict(SPACE.secrets),
        "relay_auth": {},
        "urls": ["ws://127.0.0.1:7330"],
        "root": ROOT,
        "chain": [e.to_wire() for e in INVITATION.chain],
        "seed": INVITATION.invite_seed,
    }
    fields.update(changes)
    return list(fields.values())


def test_a_member_code_carries_the_root_and_the_invitation() -> None:
    found = decode_invite(encode_invite(SPACE, ["10.0.0.2"], root=ROOT, invitation=INVITATION))
    assert found.keys == SPACE and found.addresses == ("ws://10.0.0.2:7330",)
    assert found.root == ROOT and found.invitation == INVITATION


def test_a_relay_code_carries_the_root_and_no_invite_key() -> None:
    found = decode_invite(encode_invite(SPACE.for_relay(), ["h"], root=ROOT))
    assert found.keys.is_relay and found.root == ROOT and found.invitation is None


def test_codes_from_before_device_lists_are_still_read() -> None:
    found = decode_invite(encode_invite(SPACE, ["h"]))  # no root: a version 1 code
    assert found.keys == SPACE and found.root is None and found.invitation is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"secrets": {2**40: bytes(32)}}, "epochs"),
        ({"secrets": {-1: bytes(32)}}, "epochs"),
        ({"secrets": {0: SPACE.secrets[0], True: bytes(32)}}, "epochs"),
        ({"secrets": {0: bytes(31)}}, "32 bytes"),
        ({"secrets": {0: bytes(33)}}, "32 bytes"),
        ({"secrets": {1: bytes(32)}}, "epoch 0"),
        ({"relay_auth": {0: bytes(32)}}, "either"),
        ({"secrets": {}}, "either"),
        ({"urls": ["ws://h:1"] * (MAX_ADDRESSES + 1)}, "at most"),
        ({"urls": ["h" * 300]}, "at most"),
        ({"urls": [7]}, "bad addresses"),
        ({"root": bytes(31)}, "root"),
        ({"seed": bytes(16)}, "invite key"),
        ({"chain": []}, "damaged"),
        ({"chain": [[b"x", "member", b"y", b"z"]]}, "damaged"),
        ({"space_id": bytes(15)}, "space id"),
        ({"version": 3}, "newer"),
    ],
)
def test_every_field_is_range_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_invite(code_of(member_body(**changes)))


def test_a_member_code_whose_chain_does_not_reach_its_root_or_its_key_is_refused() -> None:
    stranger = DeviceKeys.from_seed(bytes([4]) * 64)
    with pytest.raises(InvalidInput, match="not listed"):
        decode_invite(code_of(member_body(root=stranger.public_key)))
    with pytest.raises(InvalidInput, match="invite key"):
        decode_invite(code_of(member_body(seed=bytes([8]) * 32)))


def test_a_relay_code_with_an_invite_key_is_refused() -> None:
    body = member_body(secrets={}, relay_auth=dict(SPACE.for_relay().relay_auth))
    with pytest.raises(InvalidInput, match="relay code"):
        decode_invite(code_of(body))


def test_a_version_1_code_with_an_epoch_past_u32_is_refused() -> None:
    # The attack seen in the field: `syncq join` of this printed a struct.error traceback.
    with pytest.raises(InvalidInput, match="epochs"):
        decode_invite(code_of([1, bytes.fromhex(SPACE.space_id), {}, {2**40: bytes(32)}, []]))


@given(body=st.binary(max_size=300))
def test_decoding_arbitrary_bytes_raises_invalid_input_only(body: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        decode_invite(PREFIX + base64.urlsafe_b64encode(body).decode())


@given(
    body=st.lists(
        st.one_of(
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.binary(max_size=40),
            st.text(max_size=10),
            st.dictionaries(
                st.integers(min_value=-(2**63), max_value=2**64 - 1), st.binary(max_size=40), max_size=3
            ),
        ),
        max_size=9,
    )
)
def test_decoding_arbitrary_msgpack_raises_invalid_input_only(body: list[object]) -> None:
    with contextlib.suppress(InvalidInput):
        decode_invite(code_of(body))
