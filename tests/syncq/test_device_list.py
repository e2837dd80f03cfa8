"""Device lists in real homes (SQLite stores): a relay with a root stores only what listed
members wrote; a joined device is listed from its first envelope; a failed build leaves no home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncq import crypto, roster
from syncq.crypto import DeviceKeys, Kind
from syncq.errors import HomeError
from syncq.space import Space
from tests.helpers.spaces import join


def forged(space: Space, author: DeviceKeys, seq: int = 1) -> bytes:
    """What a relay-code holder can make: its own key as author, garbage as ciphertext."""
    return crypto.sign_clear(
        device=author,
        space_id=space.keys.space_id,
        epoch=0,
        seq=seq,
        kind=Kind.UPDATE,
        payload=os.urandom(300),
    )


@pytest.fixture
def founder(tmp_path: Path):
    with Space.init(tmp_path / "founder", name="founder", device_list=True) as s:
        yield s


def invited(tmp_path: Path, founder: Space, name: str) -> Space:
    return join(tmp_path / name, founder, name)


def relay_of(tmp_path: Path, founder: Space, *, rooted: bool = True) -> Space:
    root = founder.replica.root if rooted else None
    return Space.init_relay(tmp_path / "relay", name="relay", keys=founder.keys.for_relay(), root=root)


def test_the_founder_and_invited_members_write_their_list_first(tmp_path: Path, founder: Space) -> None:
    assert founder.replica.root == founder.device.public_key
    with invited(tmp_path, founder, "gpu") as gpu:
        first = next(gpu.store.rows(gpu.device.public_key))
        envelope = crypto.verify_envelope(first.data, gpu.keys.space_id)
        assert first.seq == 1 and envelope.kind is Kind.ROSTER
        entries = roster.open_roster(envelope, gpu.keys.space_id, founder.device.public_key)
        listed = roster.check_chain(entries, gpu.keys.space_id, founder.device.public_key)
        assert set(listed) == {founder.device.public_key, gpu.device.public_key}
        assert gpu.replica.root == founder.replica.root


def test_a_rooted_relay_stores_members_and_refuses_everyone_else(tmp_path: Path, founder: Space) -> None:
    founder.add("from the founder", model="echo")
    with invited(tmp_path, founder, "gpu") as gpu, relay_of(tmp_path, founder) as relay:
        gpu.add("the gpu's first prompt", model="echo")
        assert relay.receive(founder.envelopes()).added == founder.store.count()
        got = relay.receive(gpu.envelopes())
        # The gpu's own three (list, device, prompt) and the founder's lists from its grant.
        assert got.added + got.duplicates == gpu.store.count() and got.added >= 3 and not got.rejected

        before = relay.store.count()
        attacker = DeviceKeys.from_seed(os.urandom(64))
        self_listed = roster.seal_roster(
            device=attacker,
            space_id=relay.keys.space_id,
            epoch=0,
            seq=1,
            entries=roster.founding_chain(attacker, relay.keys.space_id),
        )
        report = relay.receive([self_listed, forged(relay, attacker, 2)])
        assert report.added == 0 and not report.rejected  # the batch is not failed ...
        assert report.refused == {"bad-roster": 1, "unlisted": 1}  # ... but nothing is stored
        assert relay.store.count() == before
        assert relay.status().rejected == {"bad-roster": 1, "unlisted": 1}

        # What the relay holds reaches a new member whole, and reads.
        with invited(tmp_path, founder, "phone") as phone:
            phone.receive(relay.envelopes(phone.version_vector()))
            texts = {e.prompt.input for e in phone.entries(limit=None)}
            assert texts == {"from the founder", "the gpu's first prompt"}


def test_a_relay_from_an_old_code_stores_from_anyone(tmp_path: Path, founder: Space) -> None:
    with relay_of(tmp_path, founder, rooted=False) as relay:
        report = relay.receive([forged(relay, DeviceKeys.from_seed(os.urandom(64)))])
        assert report.added == 1  # as before device lists: it cannot tell (and warns at start)


def test_a_rooted_member_refuses_a_list_that_does_not_chain_to_the_root(
    tmp_path: Path, founder: Space
) -> None:
    attacker = DeviceKeys.from_seed(os.urandom(64))
    bogus = roster.seal_roster(
        device=attacker,
        space_id=founder.keys.space_id,
        epoch=0,
        seq=1,
        entries=roster.founding_chain(attacker, founder.keys.space_id),
    )
    report = founder.receive([bogus])
    # Counted, never stored, and not towards closing the session of whoever passed it on.
    assert (report.rejected, report.quarantined, report.refused) == ({}, {}, {"bad-roster": 1})
    assert founder.replica.listed(attacker.public_key) is False


def test_a_rooted_member_stores_nothing_a_relay_code_holder_signs(tmp_path: Path, founder: Space) -> None:
    # A relay code holds the admission key, so its holder can dial members directly: what it
    # signs with a key of its own (garbage, or "sealed" under an epoch nobody holds, which a
    # member would otherwise keep for a key to come) must not be stored, or it would pile up
    # and be gossiped to every member.
    stranger = DeviceKeys.from_seed(os.urandom(64))
    later_epoch = crypto.sign_clear(
        device=stranger, space_id=founder.keys.space_id, epoch=7, seq=1, kind=Kind.UPDATE, payload=b"x" * 64
    )
    before = founder.store.count()
    report = founder.receive([forged(founder, stranger, seq=2), later_epoch])
    assert report.refused == {"unlisted": 2} and report.added == 0
    assert founder.store.count() == before
    with invited(tmp_path, founder, "gpu") as gpu:  # a listed member's envelopes still land
        gpu.add("from the gpu", model="echo")
        landed = founder.receive(gpu.envelopes(founder.version_vector()))
        assert landed.added > 0 and (landed.refused, landed.rejected) == ({}, {})
    assert [e.prompt.input for e in founder.entries()] == ["from the gpu"]


def test_a_failed_init_leaves_no_half_built_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "identity.key").mkdir(parents=True)  # the identity cannot be written
    (home / "config.toml").write_text("[node]\n")
    with pytest.raises(HomeError):
        Space.init(home, name="x", device_list=True)
    assert sorted(p.name for p in home.iterdir()) == ["config.toml", "identity.key"]
    (home / "identity.key").rmdir()
    with Space.init(home, name="x", device_list=True) as space:  # and a second try works
        assert space.replica.root == space.device.public_key


def test_a_device_invited_by_a_joined_member_is_listed_at_the_relay(tmp_path: Path, founder: Space) -> None:
    with (
        invited(tmp_path, founder, "gpu") as gpu,
        relay_of(tmp_path, founder) as relay,
        join(tmp_path / "phone", gpu, "phone") as phone,
    ):
        phone.add("from the phone", model="echo")
        report = relay.receive(phone.envelopes())
        assert report.added == phone.store.count() and not report.refused  # its own and its grant's
        assert len(phone.replica.own_chain()) == 3
