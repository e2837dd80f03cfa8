"""The device-list entries (syncq.roster): chains from the root, forged signatures, wrong space,
entries out of order, unlisted authors. Pure: keys from fixed or generated seeds. Who is listed
once removals come (``roster.resolve``) is tests/syncq/test_resolve.py."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncq import crypto, roster
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import BadRoster, BadSignature
from syncq.roster import Entry, Role

SPACE = SpaceKeys.create(bytes(32))
OTHER_SPACE = SpaceKeys.create(b"\x01" * 32)
SID = SPACE.space_id


def device(n: int) -> DeviceKeys:
    return DeviceKeys.from_seed(bytes([n]) * 64)


FOUNDER = device(1)
ROOT = FOUNDER.public_key


def chain_of(depth: int) -> tuple[tuple[Entry, ...], DeviceKeys]:
    """A chain of ``depth`` admissions from the founder, and the last device on it."""
    chain = roster.founding_chain(FOUNDER, SID)
    last = FOUNDER
    for n in range(depth):
        joiner = device(10 + n)
        chain = roster.extend(
            chain, roster.admit_entry(last, SID, joiner.public_key, Role.MEMBER, joiner.exchange_public_key)
        )
        last = joiner
    return chain, last


def envelope(author: DeviceKeys, entries: tuple[Entry, ...], space: SpaceKeys = SPACE) -> crypto.Envelope:
    data = roster.seal_roster(device=author, space_id=space.space_id, epoch=0, seq=1, entries=entries)
    return crypto.verify_envelope(data, space.space_id)


@settings(max_examples=25, deadline=None)
@given(depth=st.integers(min_value=0, max_value=6))
def test_every_device_of_an_invitation_chain_is_listed(depth: int) -> None:
    chain, last = chain_of(depth)
    entries = roster.open_roster(envelope(last, chain), SID, ROOT)
    listed = roster.check_chain(entries, SID, ROOT)
    assert listed[last.public_key] is Role.MEMBER
    assert len(listed) == depth + 1  # the founder and each joiner
    assert all(e.exchange for e in entries)  # every member can be sealed a new epoch


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(min_value=0, max_value=4), data=st.data())
def test_a_forged_signature_anywhere_is_refused(depth: int, data: st.DataObject) -> None:
    chain, last = chain_of(depth)
    index = data.draw(st.integers(min_value=0, max_value=len(chain) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=511))
    sig = bytearray(chain[index].signature)
    sig[bit // 8] ^= 1 << (bit % 8)
    forged = list(chain)
    forged[index] = dataclasses.replace(chain[index], signature=bytes(sig))
    with pytest.raises(BadRoster):
        roster.open_roster(envelope(last, tuple(forged)), SID, ROOT)


@settings(max_examples=25, deadline=None)
@given(depth=st.integers(min_value=1, max_value=4), data=st.data())
def test_entries_out_of_order_are_refused(depth: int, data: st.DataObject) -> None:
    chain, last = chain_of(depth)
    order = data.draw(st.permutations(range(len(chain))))
    shuffled = tuple(chain[i] for i in order)
    signer_first = all(
        e.signer == ROOT or any(p.device == e.signer for p in shuffled[:i]) for i, e in enumerate(shuffled)
    )
    if signer_first:
        assert roster.open_roster(envelope(last, shuffled), SID, ROOT)
    else:
        with pytest.raises(BadRoster):
            roster.open_roster(envelope(last, shuffled), SID, ROOT)


@settings(max_examples=25, deadline=None)
@given(seed=st.binary(min_size=64, max_size=64))
def test_a_self_signed_list_is_refused_unless_its_signer_is_the_root(seed: bytes) -> None:
    stranger = DeviceKeys.from_seed(seed)
    own = roster.founding_chain(stranger, SID)  # the attacker lists itself, signed by itself
    if stranger.public_key == ROOT:
        return
    with pytest.raises(BadRoster, match="not listed"):
        roster.open_roster(envelope(stranger, own), SID, ROOT)


def test_entries_signed_for_another_space_are_refused() -> None:
    foreign = roster.founding_chain(FOUNDER, OTHER_SPACE.space_id)
    with pytest.raises(BadRoster, match="bad signature"):
        roster.open_roster(envelope(FOUNDER, foreign), SID, ROOT)


def test_an_author_not_listed_by_its_own_envelope_is_refused() -> None:
    chain, _ = chain_of(1)
    with pytest.raises(BadRoster, match="does not list its author"):
        roster.open_roster(envelope(device(77), chain), SID, ROOT)


def test_version_1_entries_are_read_and_their_invite_keys_sign_members_only() -> None:
    key = device(5)
    v1 = [
        Entry(device=d.public_key, role=r, signer=s.public_key, signature=b"", version=1)
        for d, r, s in ((key, Role.INVITE, FOUNDER), (device(6), Role.MEMBER, key))
    ]
    signed = tuple(
        dataclasses.replace(
            e, signature=(FOUNDER if i == 0 else key).sign(roster.message(SID, e.device, e.role, version=1))
        )
        for i, e in enumerate(v1)
    )
    wire = roster.decode_entries(roster.encode_entries(signed))
    assert wire == signed and roster.check_chain(wire, SID, ROOT)[device(6).public_key] is Role.MEMBER
    with pytest.raises(BadRoster, match="does not list its author"):  # listed, but as an invite
        roster.open_roster(envelope(key, signed[:1]), SID, ROOT)


def test_a_relay_signs_nothing() -> None:
    relay = device(7)
    entry = roster.admit_entry(FOUNDER, SID, relay.public_key, Role.RELAY, relay.exchange_public_key)
    onward = roster.admit_entry(relay, SID, device(8).public_key, Role.MEMBER, device(8).exchange_public_key)
    with pytest.raises(BadRoster, match="not listed as a member"):
        roster.check_chain((entry, onward), SID, ROOT)


def test_a_device_listed_twice_and_unknown_roles_are_refused() -> None:
    founder = roster.founding_chain(FOUNDER, SID)
    with pytest.raises(BadRoster, match="twice"):
        roster.check_chain(founder * 2, SID, ROOT)
    entry = founder[0].to_wire()
    entry[1] = "owner"  # a role of a later version: refused, never silently ignored
    with pytest.raises(BadRoster, match="unknown"):
        roster.entries_from_wire([entry])
    entry[1] = "removed"  # a removal carries no exchange key
    with pytest.raises(BadRoster, match="X25519"):
        roster.entries_from_wire([entry])


def test_without_a_root_only_the_form_is_checked() -> None:
    stranger = device(50)
    entries = roster.open_roster(envelope(stranger, roster.founding_chain(stranger, SID)), SID, None)
    assert [e.device for e in entries] == [stranger.public_key]


def test_an_update_envelope_is_not_a_roster() -> None:
    data = crypto.seal(device=FOUNDER, space=SPACE, seq=1, payload=b"x" * 200, nonce=b"n" * 12)
    with pytest.raises(BadRoster):
        roster.open_roster(crypto.verify_envelope(data, SID), SID, ROOT)


@given(payload=st.binary(max_size=600))
def test_decoding_arbitrary_bytes_raises_bad_roster_only(payload: bytes) -> None:
    try:
        entries = roster.decode_entries(payload)
    except BadRoster:
        return
    assert 1 <= len(entries) <= roster.MAX_ENTRIES


def test_the_roster_envelope_is_signed_and_its_payload_is_in_the_clear() -> None:
    chain = roster.founding_chain(FOUNDER, SID)
    data = roster.seal_roster(device=FOUNDER, space_id=SID, epoch=0, seq=1, entries=chain)
    env = crypto.verify_envelope(data, SID)  # what a relay can check
    assert env.kind is crypto.Kind.ROSTER and env.nonce == bytes(12)
    assert env.ciphertext == roster.encode_entries(chain)
    tampered = bytearray(data)
    tampered[100] ^= 1
    with pytest.raises(BadSignature):
        crypto.verify_envelope(bytes(tampered), SID)


def test_a_chain_too_long_to_extend_is_refused_when_admitting() -> None:
    chain, last = chain_of(roster.MAX_ENTRIES - 1)
    joiner = device(99)
    with pytest.raises(BadRoster, match="nearer"):
        roster.extend(
            chain, roster.admit_entry(last, SID, joiner.public_key, Role.MEMBER, joiner.exchange_public_key)
        )
