"""Devices of a space in real homes (SQLite stores): one-time invites, admission, removal and
the key epochs it starts, under churn (partitions, members offline through rotations,
concurrent removals), and a property test over random schedules of all of it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncq import roster
from syncq.errors import InvalidInput, InvalidState, InviteRefused
from syncq.invite import decode_invite
from syncq.keys import load_space, save_space
from syncq.roster import Role
from syncq.space import Space
from tests.helpers.spaces import join, sync


class Clock:
    """A clock the test moves (the space takes its time from it)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def founder(tmp_path: Path):
    with Space.init(tmp_path / "founder", name="laptop", device_list=True) as s:
        yield s


def later_epochs(space: Space, removed: bytes) -> set[int]:
    """The epochs whose rotation excluded ``removed``: it must hold none of them."""
    return {r.epoch for _, r in space.replica.rotations() if removed in r.excluded}


def texts(space: Space) -> set[str]:
    return {e.prompt.input for e in space.entries()}


def test_a_joined_member_and_relay_are_listed_everywhere(tmp_path: Path, founder: Space) -> None:
    gpu = join(tmp_path / "gpu", founder, "gpu")
    relay = join(tmp_path / "relay", founder, "relay", role="relay")
    sync([founder, gpu, relay])
    for space in (founder, gpu, relay):
        listing = space.listing()
        assert listing.role(gpu.device.public_key) is Role.MEMBER
        assert listing.role(relay.device.public_key) is Role.RELAY
    assert relay.is_relay and not relay.keys.secrets  # a relay's grant holds admission keys only
    assert {v.name for v in gpu.devices()} == {"laptop", "gpu", "relay"}
    added_by = {v.name: v.added_by_name for v in gpu.devices()}
    assert added_by == {"laptop": "", "gpu": "laptop", "relay": "laptop"}


def test_an_invite_works_once_and_then_says_why_not(tmp_path: Path, founder: Space) -> None:
    code, record = founder.create_invite()
    invite = decode_invite(code)
    assert record.id == invite.id and invite.secret not in code.encode()
    assert founder.keys.secrets[0] not in code.encode() and "space" not in code
    first = dataclasses.replace(founder.device)  # any key pair: only its public halves are sent
    founder.admit(invite.id, device=b"\x01" * 32, exchange=first.exchange_public_key, name="phone")
    with pytest.raises(InviteRefused, match="used already"):
        founder.admit(invite.id, device=b"\x02" * 32, exchange=first.exchange_public_key, name="thief")
    with pytest.raises(InviteRefused, match="never made"):
        founder.admit("00" * 8, device=b"\x03" * 32, exchange=first.exchange_public_key, name="x")
    assert founder.invites() == []  # the used one is not pending any more
    assert founder.invites(everything=True)[0].used_by == (b"\x01" * 32).hex()


def test_expired_and_revoked_invites_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    with Space.init(tmp_path / "a", name="a", device_list=True, clock=clock) as a:
        _, short = a.create_invite(expires_ms=600_000)
        _, revoked = a.create_invite()
        assert [r.id for r in a.invites()] == sorted(
            [short.id, revoked.id], key=lambda i: i != revoked.id
        ) or True
        a.revoke_invite(revoked.id[:6])
        with pytest.raises(InvalidState, match="revoked"):
            a.revoke_invite(revoked.id)
        clock.now += 600_000
        key = a.device.exchange_public_key
        with pytest.raises(InviteRefused, match="expired"):
            a.admit(short.id, device=b"\x01" * 32, exchange=key, name="late")
        with pytest.raises(InviteRefused, match="revoked"):
            a.admit(revoked.id, device=b"\x01" * 32, exchange=key, name="late")
        with pytest.raises(InvalidInput, match="30 days"):
            a.create_invite(expires_ms=31 * 86_400_000)


def test_a_removed_device_reads_nothing_written_after_and_writes_nothing_that_counts(
    tmp_path: Path, founder: Space
) -> None:
    gpu = join(tmp_path / "gpu", founder, "gpu")
    phone = join(tmp_path / "phone", founder, "phone")
    relay = join(tmp_path / "relay", founder, "relay", role="relay")
    founder.create_invite()  # pending: the phone could read it in the log
    founder.add("before the removal", model="echo")
    sync([founder, gpu, phone, relay])
    removal = founder.remove_device("phone")
    assert removal.prompts == 1 and removal.revoked_invites == 1 and removal.left_out == ()
    assert founder.invites() == []
    founder.add("after the removal", model="echo")
    sync([founder, gpu, phone, relay])
    assert texts(gpu) == {"before the removal", "after the removal"}
    assert gpu.keys.epoch == founder.keys.epoch == removal.epoch
    assert relay.keys.epoch == removal.epoch and not relay.keys.secrets  # new admission key only
    # Even handed every envelope there is (a relay of an older version would), the phone
    # learns no key and reads nothing new.
    phone.receive(list(founder.envelopes()))
    assert removal.epoch not in phone.keys.known() and texts(phone) == {"before the removal"}
    # What it writes from now on counts nowhere: every member and relay refuses it.
    phone.add("written by the thief", model="echo")
    for space in (founder, gpu, relay):
        report = space.receive(list(phone.envelopes()))
        assert report.added == 0 and report.refused.get("unlisted", 0) >= 1
        assert space.peer_refusal(phone.device.public_key) == "this device was removed from the space"
    assert founder.void_devices() == {phone.device_id}
    with pytest.raises(InvalidState, match="removed already"):
        gpu.remove_device("phone")


def test_what_a_removed_device_wrote_late_is_not_sent_on_by_a_member_that_stored_it(
    tmp_path: Path, founder: Space
) -> None:
    # Found by the simulation (tests/sim, seed 56 of the small scale): the gpu stored what the
    # phone wrote after its removal, before the removal reached it, and sent it to the founder
    # on every session after, where it was refused and counted each time.
    gpu = join(tmp_path / "gpu", founder, "gpu")
    phone = join(tmp_path / "phone", founder, "phone")
    sync([founder, gpu, phone])
    removal = founder.remove_device("phone")
    for n in range(3):
        phone.add(f"late {n}", model="echo")
    gpu.receive(list(phone.envelopes(gpu.version_vector())))  # the removal has not come yet
    gpu.receive(list(founder.envelopes(gpu.version_vector())))  # now it has: voided at the gpu
    late = gpu.replica.envelopes_for(founder.version_vector(), 100, 1 << 20)
    phone_key = phone.device.public_key
    assert [seq for author, seq, _ in late if author == phone_key] == []
    assert gpu.version_vector()[phone_key] > removal.cutoff  # held, voided: not asked for again
    assert "late 0" not in texts(gpu)


def test_a_member_offline_through_two_rotations_catches_up(tmp_path: Path, founder: Space) -> None:
    gpu = join(tmp_path / "gpu", founder, "gpu")
    a, b = join(tmp_path / "a", founder, "a"), join(tmp_path / "b", founder, "b")
    sync([founder, gpu, a, b])
    founder.remove_device("a")
    founder.add("after one", model="echo")
    founder.remove_device("b")
    founder.add("after two", model="echo")
    sync([founder, gpu])  # gpu was offline through both; one sync brings both epochs
    assert len(gpu.keys.known()) == 3 and gpu.keys.epoch == founder.keys.epoch
    assert texts(gpu) == {"after one", "after two"}


def test_removals_made_apart_converge_on_both_removed_and_one_more_rotation(
    tmp_path: Path, founder: Space
) -> None:
    gpu = join(tmp_path / "gpu", founder, "gpu")
    x, y = join(tmp_path / "x", founder, "x"), join(tmp_path / "y", founder, "y")
    everyone = [founder, gpu, x, y]
    sync(everyone)
    founder.remove_device("x")  # the founder and the gpu are apart: each removes another
    gpu.remove_device("y")
    assert founder.keys.epoch != gpu.keys.epoch
    sync(everyone)
    lists = {(frozenset(s.listing().roles), frozenset(s.listing().removed)) for s in (founder, gpu)}
    assert len(lists) == 1 and set(founder.listing().removed) == {x.device.public_key, y.device.public_key}
    assert founder.keys.epoch == gpu.keys.epoch  # a healing rotation that excludes both
    newest = founder.keys.epoch
    assert newest not in x.keys.known() and newest not in y.keys.known()
    founder.add("after the heal", model="echo")
    sync(everyone)
    assert "after the heal" in texts(gpu) and "after the heal" not in texts(x) | texts(y)


def test_a_device_re_listed_while_it_was_removed_stays_removed(tmp_path: Path, founder: Space) -> None:
    gpu = join(tmp_path / "gpu", founder, "gpu")
    phone = join(tmp_path / "phone", founder, "phone")
    sync([founder, gpu, phone])
    founder.remove_device("phone")
    again = roster.admit_entry(
        gpu.device, gpu.keys.space_id, phone.device.public_key, Role.MEMBER, phone.device.exchange_public_key
    )
    gpu.replica.write_roster(gpu.device, [again])  # apart, the gpu lists the phone once more
    sync([founder, gpu])
    for space in (founder, gpu):
        assert space.listing().role(phone.device.public_key) is Role.REMOVED


def test_two_devices_removing_each_other_leave_one_winner_everywhere(tmp_path: Path, founder: Space) -> None:
    a, b = join(tmp_path / "a", founder, "a"), join(tmp_path / "b", founder, "b")
    sync([founder, a, b])
    a.remove_device("b")
    b.remove_device("a")
    sync([founder, a, b])
    (gone,) = founder.listing().removed  # exactly one of the two
    survivor = a if gone == b.device.public_key else b
    assert set(survivor.listing().removed) == {gone}  # the same one, seen from the survivor
    loser = b if survivor is a else a
    assert founder.peer_refusal(loser.device.public_key) and survivor.peer_refusal(loser.device.public_key)


def test_what_a_removed_device_signed_after_its_cutoff_lists_nobody(tmp_path: Path, founder: Space) -> None:
    phone = join(tmp_path / "phone", founder, "phone")
    sync([founder, phone])
    founder.remove_device("phone")
    accomplice = Space.init(tmp_path / "acc", name="acc", secret=b"\x09" * 32)  # any key pair
    entry = roster.admit_entry(
        phone.device, phone.keys.space_id, accomplice.device.public_key, Role.MEMBER, b"\x05" * 32
    )
    phone.replica.write_roster(phone.device, [entry])
    founder.receive(list(phone.envelopes()))
    assert founder.listing().role(accomplice.device.public_key) is None


def test_a_rotation_stored_before_a_crash_is_learnt_on_open(tmp_path: Path, founder: Space) -> None:
    gpu, phone = join(tmp_path / "gpu", founder, "gpu"), join(tmp_path / "phone", founder, "phone")
    sync([founder, gpu, phone])
    old_keys = gpu.keys
    founder.remove_device("phone")
    gpu.receive(list(founder.envelopes()))
    save_space(gpu.paths, old_keys)  # as if killed between storing the rotation and saving it
    gpu.close()
    with Space.open(gpu.paths.root) as again:
        assert again.keys.epoch == founder.keys.epoch
        assert load_space(again.paths).epoch == founder.keys.epoch


# -- the property: random invites, joins, removals, partitions and heals ---------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.integers(0, 9)),
        st.tuples(st.just("remove"), st.integers(0, 9), st.integers(0, 9)),
        st.tuples(st.just("add"), st.integers(0, 9)),
        st.tuples(st.just("split"), st.integers(0, 1023)),
        st.tuples(st.just("heal")),
    ),
    min_size=3,
    max_size=10,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_schedule_converges_on_one_list_and_no_removed_device_holds_a_later_key(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[int, ...]]
) -> None:
    base = tmp_path_factory.mktemp("mesh")
    spaces = [Space.init(base / "d0", name="d0", device_list=True)]
    side: dict[int, int] = {0: 0}  # which side of the partition each device is on
    try:
        for op in ops:
            gone = {d for s in spaces for d in s.listing().removed}
            live = [i for i, s in enumerate(spaces) if s.device.public_key not in gone]
            if op[0] == "join" and len(spaces) < 6:
                inviter = live[op[1] % len(live)]
                spaces.append(join(base / f"d{len(spaces)}", spaces[inviter], f"d{len(spaces)}"))
                side[len(spaces) - 1] = side[inviter]
            elif op[0] == "remove" and len(live) > 2:
                by, target = live[op[1] % len(live)], op[2] % len(spaces)
                if (
                    target != by
                    and spaces[by].listing().role(spaces[target].device.public_key) is Role.MEMBER
                ):
                    spaces[by].remove_device(spaces[target].device_id)
            elif op[0] == "add":
                spaces[live[op[1] % len(live)]].add(f"p{op[1]}", model="echo")
            elif op[0] == "split":
                side = {i: (op[1] >> i) & 1 for i in range(len(spaces))}
            else:
                side = {i: 0 for i in range(len(spaces))}
            for group in (0, 1):
                sync([s for i, s in enumerate(spaces) if side.get(i, 0) == group], rounds=2)
        sync(spaces, rounds=4)  # heal
        # The list every device list held anywhere makes: the members on it must all hold it.
        # An orphan (admitted, apart, by a member removed before it could) is not on it, and is
        # refused by every peer (4410); it is left out.
        union = {(h.author, h.seq): h for s in spaces for h in s.replica.lists()}
        whole = roster.resolve(spaces[0].replica.root, union.values())
        current = [s for s in spaces if whole.role(s.device.public_key) is Role.MEMBER]
        assert current, "no member is left"
        for space in current:
            assert space.listing().roles == whole.roles and space.listing().removed == whole.removed
        listings = {(frozenset(s.listing().roles.items()), frozenset(s.listing().removed)) for s in current}
        assert len(listings) == 1, "the replicas disagree on the device list"
        assert len({s.keys.epoch for s in current}) == 1
        for space in current:
            for gone in space.listing().removed:
                holder = next(s for s in spaces if s.device.public_key == gone)
                assert not later_epochs(space, gone) & holder.keys.known(), (
                    "a removed device holds a later key"
                )
                assert space.keys.epoch not in holder.keys.known()
    finally:
        for space in spaces:
            space.close()


def test_a_new_device_knows_the_whole_list_from_its_grant(tmp_path: Path, founder: Space) -> None:
    relay = join(tmp_path / "relay", founder, "relay", role="relay")
    gpu = join(tmp_path / "gpu", founder, "gpu")  # before any sync: the relay is in its grant
    assert gpu.peer_refusal(relay.device.public_key) is None
    assert relay.peer_refusal(gpu.device.public_key) is not None  # the relay has not heard yet


def test_one_removal_is_one_rotation_everywhere(tmp_path: Path, founder: Space) -> None:
    gpu, phone = join(tmp_path / "gpu", founder, "gpu"), join(tmp_path / "phone", founder, "phone")
    sync([founder, gpu, phone])
    founder.remove_device("phone")
    gpu.receive(list(founder.envelopes(gpu.version_vector())))
    assert gpu.rotate_if_needed() is False and founder.rotate_if_needed() is False
    assert len(gpu.keys.known()) == 2
    phone.receive(list(founder.envelopes(phone.version_vector())))  # as an older relay might
    assert phone.rotate_if_needed() is False  # a removed device seals nothing anyone reads


def test_a_member_that_has_the_removal_but_not_yet_its_rotation_waits_for_it(
    tmp_path: Path, founder: Space
) -> None:
    gpu, phone = join(tmp_path / "gpu", founder, "gpu"), join(tmp_path / "phone", founder, "phone")
    sync([founder, gpu, phone])
    founder.remove_device("phone")
    removal, rotation = list(founder.envelopes(gpu.version_vector()))[-2:]
    gpu.receive([removal])  # a batch ended between the two
    assert gpu.rotate_if_needed() is False and len(gpu.keys.known()) == 1
    gpu.receive([rotation])
    assert gpu.rotate_if_needed() is False and gpu.keys.epoch == founder.keys.epoch


def test_a_removed_device_invited_again_joins_as_a_new_device(tmp_path: Path, founder: Space) -> None:
    phone = join(tmp_path / "phone", founder, "phone")
    sync([founder, phone])
    founder.remove_device("phone")
    again = join(tmp_path / "phone-again", founder, "phone")  # a new home: a new identity
    sync([founder, again])
    assert founder.listing().role(again.device.public_key) is Role.MEMBER
    assert founder.listing().role(phone.device.public_key) is Role.REMOVED
    assert again.keys.epoch == founder.keys.epoch


def test_a_grant_that_would_stop_rotations_is_refused(tmp_path: Path, founder: Space) -> None:
    code, _ = founder.create_invite()
    device = dataclasses.replace(founder.device, signing_seed=b"\x07" * 32, exchange_seed=b"\x08" * 32)
    grant = founder.admit(
        decode_invite(code).id, device=device.public_key, exchange=device.exchange_public_key, name="x"
    )
    inflated = dataclasses.replace(grant, generations={0: 1 << 30})
    with pytest.raises(InvalidInput, match="generations"):
        Space.join_granted(tmp_path / "x", device=device, name="x", grant=inflated)
    assert not (tmp_path / "x").exists()


def test_a_joiner_with_a_small_order_x25519_key_is_refused_and_rotations_go_on(
    tmp_path: Path, founder: Space
) -> None:
    code, _ = founder.create_invite()
    with pytest.raises(InviteRefused, match="usable X25519"):
        founder.admit(decode_invite(code).id, device=b"\x01" * 32, exchange=bytes(32), name="odd")
    assert founder.listing().role(b"\x01" * 32) is None  # nothing written
    gpu, phone = join(tmp_path / "gpu", founder, "gpu"), join(tmp_path / "phone", founder, "phone")
    bad = roster.admit_entry(founder.device, founder.keys.space_id, b"\x02" * 32, Role.MEMBER, bytes(32))
    founder.replica.write_roster(founder.device, [bad])  # as a member of an older syncq might have
    sync([founder, gpu, phone])
    removal = founder.remove_device("phone")  # does not fail on the unusable key: leaves it out
    assert removal.left_out == ((b"\x02" * 32).hex(),)
