"""Who is on the device list (``roster.resolve``) and the keys envelope (``syncq.epochs``), as
pure rules: any order of the same device lists gives the same answer, removal wins for good, a
removed device's later signatures list nobody, and a box opens only for its recipient."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncq import crypto, epochs, roster
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import BadKeys, EnvelopeRejected
from syncq.roster import Held, Role

SPACE = SpaceKeys.create(bytes(32))
SID = SPACE.space_id
DEVICES = [DeviceKeys.from_seed(bytes([n + 1]) * 64) for n in range(8)]
ROOT = DEVICES[0].public_key


def admit(by: int, who: int, role: Role = Role.MEMBER) -> roster.Entry:
    device = DEVICES[who]
    return roster.admit_entry(DEVICES[by], SID, device.public_key, role, device.exchange_public_key)


def remove(by: int, who: int, cutoff: int = 0) -> roster.Entry:
    return roster.sign_entry(DEVICES[by], SID, DEVICES[who].public_key, Role.REMOVED, cutoff=cutoff)


# A small world: the founder admits 1 and 2, 1 admits 3, 2 admits 4 as a relay. Each "event" is
# one roster envelope: (author, seq, entries after the author's chain).
CHAINS = {0: (), 1: (admit(0, 1),), 2: (admit(0, 2),), 3: (admit(0, 1), admit(1, 3))}
BASE = roster.founding_chain(DEVICES[0], SID)


def held(author: int, seq: int, *entries: roster.Entry) -> Held:
    return Held(author=DEVICES[author].public_key, seq=seq, entries=(*BASE, *CHAINS[author], *entries))


WORLD = [
    held(0, 1),
    held(0, 2, admit(0, 1)),
    held(0, 3, admit(0, 2)),
    held(1, 1),
    held(1, 2, admit(1, 3)),
    held(2, 1),
    held(2, 2, admit(2, 4, Role.RELAY)),
    held(3, 1),
]


def listed(envelopes: list[Held]) -> tuple[frozenset[tuple[bytes, Role]], frozenset[tuple[bytes, int]]]:
    found = roster.resolve(ROOT, envelopes)
    return frozenset(found.roles.items()), frozenset(found.removed.items())


def test_the_world_lists_every_admitted_device_with_its_role() -> None:
    found = roster.resolve(ROOT, WORLD)
    assert found.role(DEVICES[3].public_key) is Role.MEMBER
    assert found.role(DEVICES[4].public_key) is Role.RELAY
    assert found.added_by[DEVICES[3].public_key] == DEVICES[1].public_key
    assert found.exchange_keys[DEVICES[4].public_key] == DEVICES[4].exchange_public_key
    assert not found.admits(DEVICES[4].public_key, 1)  # a relay never writes


EXTRA = st.sampled_from(
    [
        held(0, 4, remove(0, 1, cutoff=2)),  # the founder removes 1 after its seq 2
        held(1, 3, remove(1, 2, cutoff=1)),  # 1 removes 2 (apart from the above)
        held(2, 3, remove(2, 1, cutoff=1)),  # 2 removes 1: mutual with the one above
        held(1, 5, admit(1, 5)),  # 1 admits 5 at its seq 5: after its cutoff of 2
        held(2, 4, admit(2, 1)),  # 2 lists 1 again
        held(3, 2, remove(3, 3, cutoff=1)),  # 3 removes itself
    ]
)


@settings(max_examples=200, deadline=None)
@given(extra=st.lists(EXTRA, max_size=6, unique=True), order=st.randoms(use_true_random=False))
def test_the_same_lists_in_any_order_give_the_same_answer(extra: list[Held], order: object) -> None:
    envelopes = [*WORLD, *extra]
    shuffled = list(envelopes)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    assert listed(envelopes) == listed(shuffled)
    found = roster.resolve(ROOT, envelopes)
    # Removal is for good: whatever else is in the set, a removed device is never listed.
    assert not set(found.roles) & set(found.removed)
    if held(0, 4, remove(0, 1, cutoff=2)) in extra:
        assert found.role(DEVICES[1].public_key) is Role.REMOVED
        assert found.role(DEVICES[5].public_key) is None  # signed after its cutoff: void
        assert found.admits(DEVICES[1].public_key, 2) and not found.admits(DEVICES[1].public_key, 3)
        if held(3, 2, remove(3, 3, cutoff=1)) not in extra:
            assert found.role(DEVICES[3].public_key) is Role.MEMBER  # signed before: still counts


def test_two_devices_removing_each_other_remove_exactly_one() -> None:
    both = [*WORLD, held(1, 3, remove(1, 2, cutoff=1)), held(2, 3, remove(2, 1, cutoff=1))]
    found = roster.resolve(ROOT, both)
    assert len({DEVICES[1].public_key, DEVICES[2].public_key} & set(found.removed)) == 1
    assert listed(both) == listed(list(reversed(both)))


def test_without_a_root_everyone_is_admitted() -> None:
    assert roster.resolve(None, WORLD).admits(DEVICES[7].public_key, 99)


def rotation(recipients: dict[int, bytes], *, excluded: tuple[int, ...] = ()) -> crypto.Envelope:
    data = epochs.seal_rotation(
        device=DEVICES[0],
        space_id=SID,
        seq=9,
        generation=1,
        epoch=12345,
        excluded=[DEVICES[i].public_key for i in excluded],
        recipients={
            DEVICES[i].public_key: (DEVICES[i].exchange_public_key, v) for i, v in recipients.items()
        },
        ephemeral_seed=bytes([42]) * 32,
    )
    return crypto.verify_envelope(data, SID)


def test_a_rotation_opens_for_each_recipient_only() -> None:
    envelope = rotation({1: b"a" * 32, 2: b"b" * 32}, excluded=(3,))
    found = epochs.open_rotation(envelope)
    assert (found.generation, found.epoch, found.excluded) == (1, 12345, {DEVICES[3].public_key})
    assert epochs.my_key(found, DEVICES[1], SID) == b"a" * 32
    assert epochs.my_key(found, DEVICES[2], SID) == b"b" * 32
    assert epochs.my_key(found, DEVICES[3], SID) is None
    # A box moved to another recipient's slot opens for nobody.
    swapped = epochs.Rotation(
        generation=1,
        epoch=12345,
        excluded=frozenset(),
        ephemeral=found.ephemeral,
        boxes={DEVICES[2].public_key: found.boxes[DEVICES[1].public_key]},
    )
    assert epochs.my_key(swapped, DEVICES[2], SID) is None


def test_taint_follows_the_excluded_devices() -> None:
    one, two = DEVICES[1].public_key, DEVICES[2].public_key
    assert epochs.tainted(None, [one])  # epoch 0: everyone ever joined holds it
    assert not epochs.tainted(None, [])
    assert not epochs.tainted(frozenset({one}), [one])
    assert epochs.tainted(frozenset({one}), [one, two])  # a removal it did not know of


@given(payload=st.binary(min_size=16, max_size=400))
def test_a_damaged_keys_envelope_raises_bad_keys_only(payload: bytes) -> None:
    data = crypto.sign_clear(
        device=DEVICES[0], space_id=SID, epoch=5, seq=1, kind=crypto.Kind.KEYS, payload=payload
    )
    with contextlib.suppress(BadKeys):
        epochs.open_rotation(crypto.verify_envelope(data, SID))


def test_a_keys_envelope_whose_header_epoch_differs_is_refused() -> None:
    good = rotation({1: b"a" * 32})
    data = crypto.sign_clear(
        device=DEVICES[0], space_id=SID, epoch=7, seq=1, kind=crypto.Kind.KEYS, payload=good.ciphertext
    )
    with pytest.raises(EnvelopeRejected, match="header"):
        epochs.open_rotation(crypto.verify_envelope(data, SID))
