"""The devices of a space, from one member's side: one-time invites, admitting the device that
holds one, listing, renaming and removing devices, and the key rotation a removal starts
(PROTOCOL.md, "Invites", "Device list", "Key epochs").

Each function takes the ``Space`` and works under its lock; ``Space`` exposes them as methods.
The rules live in the pure modules (``roster`` decides who is listed, ``epochs`` seals keys,
``invite`` holds the codes); this module writes what they decide.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncq import epochs, roster
from syncq.crypto import SECRET_SIZE, DeviceKeys, SpaceKeys, hkdf, space_id_for
from syncq.device_records import DeviceName, InviteRecord, InviteState
from syncq.errors import AmbiguousId, BadRoster, InvalidInput, InvalidState, InviteRefused, UnknownId
from syncq.ids import DeviceId
from syncq.invite import (
    MAX_GRANT_LISTS,
    Grant,
    Invite,
    encode_invite,
    invite_auth_key,
    invite_id,
    invite_mdns_tag,
    pack_keys,
    unpack_keys,
)
from syncq.keys import save_space
from syncq.roster import Role

if TYPE_CHECKING:
    from syncq.space import Space

DAY_MS = 86_400_000
MAX_EXPIRY_MS = 30 * DAY_MS
MAX_NAME = 64
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceView:
    """One device of the space, as `syncq devices` shows it."""

    id: DeviceId
    name: str
    role: str  # member | relay | removed
    added_by: str  # device id ("" for the founder)
    added_by_name: str
    added_at: int | None  # ms (as the device itself recorded it), None if unknown
    last_seen: int | None  # ms, None if never seen
    this: bool
    removed_by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Removal:
    """What ``remove_device`` did, and what the removed device still holds."""

    device: DeviceId
    name: str
    cutoff: int  # its last envelope that still counts
    epoch: int  # the new key epoch
    prompts: int  # prompts written before the removal: the removed device may hold them all
    revoked_invites: int
    left_out: tuple[str, ...]  # members with no exchange key (made by an older syncq)


# -- invites ------------------------------------------------------------------------------------


def create_invite(
    space: Space, *, role: str, expires_ms: int, addresses: tuple[str, ...]
) -> tuple[str, InviteRecord]:
    """A fresh one-time invite code for a ``role`` (member or relay) device, valid for
    ``expires_ms``, naming ``addresses``; the invite is recorded in the log (any member can then
    admit its holder, once). Raises ``InvalidInput`` or ``InvalidState``."""
    root = _root(space)
    if role not in (Role.MEMBER, Role.RELAY):
        raise InvalidInput("an invite is for a member or a relay")
    if not 0 < expires_ms <= MAX_EXPIRY_MS:
        raise InvalidInput("an invite expires after at most 30 days")
    with space.lock:
        secret = space.entropy(SECRET_SIZE)
        now = space.clock()
        record = InviteRecord(
            id=invite_id(secret),
            role=role,
            auth=invite_auth_key(secret).hex(),
            mdns=invite_mdns_tag(secret),
            expires_at=now + expires_ms,
            created_at=now,
            created_by=space.device_id,
            by=space.device_id,
            at=now,
        )
        space.write(lambda log: log.put_invite(record))
    invite = Invite(
        space_id=space.keys.space_id,
        role=Role(role),
        secret=secret,
        expires_at=record.expires_at,
        addresses=addresses,
        root=root,
    )
    return encode_invite(invite), record


def invites(space: Space, *, everything: bool = False) -> list[InviteRecord]:
    """The pending invites (``everything``: every invite ever made), newest first."""
    now = space.clock()
    found = space.log.invites()
    return found if everything else [r for r in found if r.pending(now)]


def revoke_invite(space: Space, prefix: str) -> InviteRecord:
    """Revoke a pending invite by its id (or a prefix of it). Raises ``UnknownId``,
    ``AmbiguousId`` or ``InvalidState``."""
    with space.lock:
        record = _one_invite(space, prefix)
        if not record.pending(space.clock()):
            raise InvalidState(f"invite {record.id} {_state(record, space.clock())}: nothing to revoke")
        revoked = record.moved(InviteState.REVOKED, by=space.device_id, at=space.clock())
        space.write(lambda log: log.put_invite(revoked))
        return revoked


def invite_auth_keys(space: Space) -> dict[str, bytes]:
    """Invite id -> the join handshake's key, for every invite ever made (so that the holder of
    a used or expired one is told so, not that its code is forged)."""
    return {r.id: bytes.fromhex(r.auth) for r in space.log.invites()}


def admit(space: Space, invite: str, *, device: bytes, exchange: bytes, name: str) -> Grant:
    """Admit the device that proved it holds invite ``invite``: list it (signed by this
    member), mark the invite used, and seal the space's keys to its X25519 key ``exchange``.
    Raises ``InviteRefused`` with a one-line reason."""
    root = _root(space)
    if len(device) != 32 or len(exchange) != 32 or not epochs.usable(exchange):
        # Listed with a key no box can be sealed to, it would make every rotation fail.
        raise InviteRefused("a joining device sends 32-byte keys, and a usable X25519 key")
    with space.lock:
        record = next((r for r in space.log.invites() if r.id == invite), None)
        now = space.clock()
        if record is None:
            raise InviteRefused("this invite code was never made in this space")
        if not record.pending(now):
            raise InviteRefused(f"this invite code {_state(record, now)}")
        if space.replica.listing().role(device) is not None:
            raise InviteRefused(
                "this device is on the device list already (or was removed: join from a new home)"
            )
        role = Role(record.role)
        entry = roster.admit_entry(space.device, space.keys.space_id, device, role, exchange)
        chain = roster.extend(space.replica.own_chain(), entry)
        space.replica.write_roster(space.device, [entry])
        used = record.moved(InviteState.USED, by=space.device_id, at=now, used_by=device.hex())
        given = DeviceName(device=device.hex(), name=_clean_name(name, role), by=space.device_id, at=now)
        space.write(lambda log: (log.put_invite(used), log.put_name(given)))
        keys = space.keys
        values = dict(keys.secrets) if role is Role.MEMBER else {e: keys.auth_key(e) for e in keys.known()}
        seed = space.entropy(32)
        sealed = epochs.box(
            seed, exchange, space_id=keys.space_id, epoch=0, recipient=device, value=pack_keys(values)
        )
        return Grant(
            space_id=keys.space_id,
            role=role,
            root=root,
            chain=chain,
            generations=dict(keys.generations),
            ephemeral=epochs.public_of(seed),
            sealed_keys=sealed,
            admitter_name=space.name,
            lists=_lists(space),
        )


def granted_keys(grant: Grant, device: DeviceKeys) -> SpaceKeys:
    """The keys a grant sealed to ``device``. Raises ``InvalidInput``."""
    opened = epochs.unbox(device, grant.ephemeral, grant.sealed_keys, space_id=grant.space_id, epoch=0)
    if opened is None:
        raise InvalidInput("the member's grant was not sealed to this device")
    values = unpack_keys(opened)
    generations = {e: g for e, g in grant.generations.items() if e in values and g}
    if any(g > epochs.MAX_GENERATION for g in generations.values()):
        # A generation no rotation could follow would leave this device unable to rotate.
        raise InvalidInput("the member's grant is damaged (generations)")
    try:
        listed = roster.check_chain(grant.chain, grant.space_id, grant.root)
    except BadRoster as exc:
        raise InvalidInput(f"the member's grant is damaged ({exc})") from exc
    if listed.get(device.public_key) is not grant.role:
        raise InvalidInput("the member's grant does not list this device")
    if grant.role is Role.RELAY:
        return SpaceKeys(space_id=grant.space_id, secrets={}, relay_auth=values, generations=generations)
    if space_id_for(values[0]) != grant.space_id:
        raise InvalidInput("the member's grant holds the keys of another space")
    return SpaceKeys(space_id=grant.space_id, secrets=values, generations=generations)


# -- the device list ------------------------------------------------------------------------------


def peer_refusal(space: Space, device: bytes) -> str | None:
    """Why a peer with this device key may not sync with this node, or None if it may."""
    listing = space.replica.listing()
    if listing.root is None:
        return None  # a space from before device lists: the admission key is all there is
    role = listing.role(device)
    if role is Role.REMOVED:
        return "this device was removed from the space"
    if role is None:
        return "this device is not on the space's device list (yet): ask a member to invite it"
    return None


def void_devices(space: Space) -> frozenset[str]:
    """The devices whose claims are void: removed ones."""
    return frozenset(d.hex() for d in space.replica.listing().removed)


def devices(space: Space) -> list[DeviceView]:
    """Every device of the space: listed, then removed, each by name."""
    listing = space.replica.listing()
    log = space.log
    named = log.names()
    records = {d.id: d for d in log.devices()}
    seen: dict[str, int] = {}
    for info in log.nodes():
        seen[info.id] = max(seen.get(info.id, 0), info.last_seen)
    peers = space.store.peers()
    for peer in peers:
        if peer.node_id and peer.last_seen:
            seen[peer.node_id] = max(seen.get(peer.node_id, 0), peer.last_seen)
    peer_names = {p.node_id: p.name for p in peers if p.node_id and p.name}

    def name_of(device: str) -> str:
        record = records.get(DeviceId(device))
        return named.get(device) or (record.name if record else "") or peer_names.get(device) or ""

    views = []
    for device in [*listing.roles, *listing.removed]:
        hex_id = device.hex()
        signer = listing.added_by.get(device, b"")
        record = records.get(DeviceId(hex_id))
        views.append(
            DeviceView(
                id=DeviceId(hex_id),
                name=name_of(hex_id),
                role=(listing.role(device) or Role.MEMBER).value,
                added_by="" if device == listing.root else signer.hex(),
                added_by_name="" if device == listing.root else name_of(signer.hex()),
                added_at=record.added_at if record else None,
                last_seen=seen.get(hex_id),
                this=device == space.device.public_key,
                removed_by=listing.removed_by.get(device, b"").hex(),
            )
        )
    return sorted(views, key=lambda v: (v.role == Role.REMOVED, v.name, v.id))


def find_device(space: Space, target: str) -> DeviceView:
    """The device named ``target``, or whose id starts with it. Raises ``UnknownId`` or
    ``AmbiguousId``."""
    views = devices(space)
    text = target.strip()
    by_name = [v for v in views if v.name == text]
    if len(by_name) == 1:
        return by_name[0]
    by_id = [v for v in views if len(text) >= 4 and v.id.startswith(text.lower())]
    found = by_name or by_id
    if not found:
        raise UnknownId(f"no device is named {text!r} or has an id starting with it (see `syncq devices`)")
    if len(found) > 1:
        raise AmbiguousId(f"{text!r} names several devices: give more of the id", [v.id for v in found])
    return found[0]


def rename_device(space: Space, old: str, new: str) -> DeviceView:
    """Give a device a new name (seen by every member). Raises ``InvalidInput``."""
    name = new.strip()
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"a device name is 1 to {MAX_NAME} printable characters")
    with space.lock:
        view = find_device(space, old)
        if any(v.name == name and v.id != view.id for v in devices(space)):
            raise InvalidInput(f"another device is named {name!r} already")
        space.write(
            lambda log: log.put_name(
                DeviceName(device=view.id, name=name, by=space.device_id, at=space.clock())
            )
        )
        return find_device(space, view.id)


def remove_device(space: Space, target: str) -> Removal:
    """Remove a device for good: list it as removed (its envelopes after the last one held here
    no longer count anywhere), revoke every pending invite (it could read them), and start a new
    key epoch sealed to every remaining device. Raises ``UnknownId``, ``AmbiguousId``,
    ``InvalidInput`` or ``InvalidState``."""
    _root(space)
    with space.lock:
        view = find_device(space, target)
        device = bytes.fromhex(view.id)
        if view.this:
            raise InvalidInput("that is this device: remove it from another member (or delete this home)")
        if view.role == Role.REMOVED:
            raise InvalidState(f"{view.name or view.id[:12]} was removed already")
        # Invites first: killed after the removal but before this, the home would hold pending
        # invites whose join keys the removed device read in the log, and nothing would revoke
        # them. Killed before the removal, the invites are revoked and removing again is safe.
        now = space.clock()
        pending = [r for r in space.log.invites() if r.pending(now)]
        if pending:
            space.write(
                lambda log: [
                    log.put_invite(r.moved(InviteState.REVOKED, by=space.device_id, at=now)) for r in pending
                ]
            )
        # What this device holds of it: stored, or covered by a snapshot taken (whose envelopes
        # are not here): a cutoff below what a snapshot covers would void that snapshot.
        tops = space.store.tops()
        cutoff = max(tops.get(device, 0), space.replica.version_vector().get(device, 0))
        removal = roster.sign_entry(space.device, space.keys.space_id, device, Role.REMOVED, cutoff=cutoff)
        chain = roster.extend(space.replica.own_chain(), removal)
        # The removal and the new epoch in one transaction: a node of this home (or a peer) that
        # saw the removal alone would find its epoch tainted and rotate a second time.
        me = space.device.public_key
        listed = space.replica.listing([roster.Held(author=me, seq=tops.get(me, 0) + 1, entries=chain)])
        seal_keys, epoch, left_out = _rotation(space, listed)
        space.replica.write_control(
            space.device, [lambda seq: space.replica.seal_roster(space.device, seq, chain), seal_keys]
        )
        learn_keys(space)
        return Removal(
            device=view.id,
            name=view.name,
            cutoff=cutoff,
            epoch=epoch,
            prompts=len(space.log),
            revoked_invites=len(pending),
            left_out=left_out,
        )


# -- key epochs -----------------------------------------------------------------------------------


def rotate(space: Space, *, above: int = 0) -> tuple[int, tuple[str, ...]]:
    """Start a new key epoch: a fresh secret, sealed to every listed member (and its admission
    key to every listed relay) in a keys envelope, then learnt here. Returns the epoch and the
    devices left out for want of an exchange key. Its generation is past every one known here,
    and past ``above``."""
    with space.lock:
        seal, epoch, left_out = _rotation(space, space.replica.listing(), above=above)
        space.replica.write_control(space.device, [seal])
        learn_keys(space)
        return epoch, left_out


def _rotation(
    space: Space, listing: roster.Listing, *, above: int = 0
) -> tuple[Callable[[int], bytes], int, tuple[str, ...]]:
    """The seal of a keys envelope starting a new epoch for the devices ``listing`` lists, the
    epoch, and the devices left out for want of an exchange key."""
    keys = space.keys
    epoch = 0
    while epoch == 0 or epoch in keys.known():
        epoch = int.from_bytes(space.entropy(4), "big")
    generation = max(above, *(keys.generation(e) for e in keys.known())) + 1
    secret = space.entropy(SECRET_SIZE)
    auth = hkdf(secret, f"auth {epoch}")
    recipients: dict[bytes, tuple[bytes, bytes]] = {}
    left_out = []
    for device in [*listing.members(), *listing.relays()]:
        exchange = listing.exchange_keys.get(device)
        if exchange is None or not epochs.usable(exchange):
            left_out.append(device.hex())
            continue
        recipients[device] = (exchange, secret if listing.roles[device] is Role.MEMBER else auth)
    recipients[space.device.public_key] = (space.device.exchange_public_key, secret)
    seed = space.entropy(32)

    def seal(seq: int) -> bytes:
        return epochs.seal_rotation(
            device=space.device,
            space_id=keys.space_id,
            seq=seq,
            generation=generation,
            epoch=epoch,
            excluded=listing.removed,
            recipients=recipients,
            ephemeral_seed=seed,
        )

    return seal, epoch, tuple(left_out)


def learn_keys(space: Space) -> bool:
    """Take every key epoch sealed to this device in a keys envelope held here and not known yet
    (written to space.key, so envelopes held for them are applied); whether any was new."""
    with space.lock:
        keys = space.keys
        top = max(keys.generation(e) for e in keys.known())
        # Oldest first, and never more than one generation past the newest known here: a
        # generation only orders epochs, and one a hostile member inflated (up to the largest a
        # keys envelope may carry) would otherwise leave no room for the rotation that removes
        # it (keyhive#218: nobody can rotate any more).
        held = sorted(space.replica.rotations(), key=lambda r: (r[1].generation, r[1].epoch))
        for author, rotation in held:
            if rotation.epoch in keys.known():
                continue
            value = epochs.my_key(rotation, space.device, keys.space_id)
            if value is None:
                continue
            own = author == space.device.public_key  # ``rotate`` chose it: it is past ``above``
            generation = rotation.generation if own else min(rotation.generation, top + 1)
            top = max(top, generation)
            if keys.is_relay:
                keys = keys.with_epoch(rotation.epoch, generation, auth=value)
            else:
                keys = keys.with_epoch(rotation.epoch, generation, secret=value)
        if keys is space.keys:
            return False
        save_space(space.paths, keys)
        space.keys = keys
        space.replica.catch_up()
        return True


def rotate_if_needed(space: Space) -> bool:
    """Rotate if a device removed now may hold the newest epoch (PROTOCOL.md, "Key epochs"):
    what heals two removals made apart, each sealed to the device the other removed."""
    if space.is_relay or space.replica.root is None:
        return False
    with space.lock:
        removed = space.replica.listing().removed
        if not removed or space.device.public_key in removed:
            return False  # nothing to do; or this device is removed: nobody reads what it seals
        learn_keys(space)
        listing, keys = space.replica.listing(), space.keys
        top = max(keys.generation(e) for e in keys.known())
        # An epoch as new as ours that a member sealed without us (we were admitted on the other
        # side of a partition): it may be the newest elsewhere, and we could read nothing written
        # under it. One more rotation, past it and sealed to every member listed here, heals it.
        unsealed = [
            min(r.generation, top + 1)
            for author, r in space.replica.rotations()
            if r.epoch not in keys.known() and listing.role(author) is Role.MEMBER
        ]
        # (Not if no rotation can be sealed to us: listed by a version 1 entry, with no X25519
        # key, we would rotate for ever, in turn with any other such member.)
        sealable = space.device.public_key in listing.exchange_keys
        if sealable and unsealed and max(unsealed) >= keys.generation(keys.epoch):
            rotate(space, above=max(unsealed))
            return True
        newest = keys.epoch
        if newest == 0:
            excluded = None
        else:
            found = [(a, r) for a, r in space.replica.rotations() if r.epoch == newest]
            if not found:
                return False  # its keys envelope has not come yet: judged when it does
            # The device that made an epoch holds it: once removed, the epoch is tainted
            # whatever its ``excluded`` says (a thief may list itself there).
            if any(author in removed for author, _ in found):
                rotate(space)
                return True
            excluded = found[0][1].excluded
        if not epochs.tainted(excluded, removed):
            return False
        if _rotation_coming(space, set(removed) - (excluded or set())):
            return False  # the remover's own rotation is on its way: judged when it comes
        rotate(space)
        return True


def _rotation_coming(space: Space, devices: set[bytes]) -> bool:
    """Whether a member that removed one of ``devices`` wrote its keys envelope right after the
    removal (``remove_device`` writes both at once) and that envelope has not come yet: a
    batch may end between the two, and rotating then would only add an epoch."""
    for held in space.replica.lists():
        if any(
            e.role is Role.REMOVED and e.signer == held.author and e.device in devices for e in held.entries
        ):
            following = next(iter(space.store.rows(held.author, held.seq)), None)
            if following is None or following.seq != held.seq + 1:
                return True
    return False


# -- helpers --------------------------------------------------------------------------------------


def _root(space: Space) -> bytes:
    space.require_member()
    root = space.replica.root
    if root is None:
        raise InvalidState(
            "this space has no device list (it was made by an older syncq): invites and removal "
            "need one; make a new space with `syncq init` and move your devices to it"
        )
    return root


def _one_invite(space: Space, prefix: str) -> InviteRecord:
    text = prefix.strip().lower()
    found = [r for r in space.log.invites() if text and r.id.startswith(text)]
    if not found:
        raise UnknownId(f"no invite has an id starting with {prefix!r} (see `syncq invite --list`)")
    if len(found) > 1:
        raise AmbiguousId(f"{prefix!r} names several invites: give more of the id", [r.id for r in found])
    return found[0]


def _lists(space: Space) -> tuple[bytes, ...]:
    """The device-list and keys envelopes held here, oldest first, up to what a grant carries."""
    found, size = [], 0
    for row in space.replica.control():
        size += len(row.data)
        if size > MAX_GRANT_LISTS:
            break  # a space this large: the new device learns the rest when it syncs
        found.append(row.data)
    return tuple(found)


def _clean_name(name: str, role: Role) -> str:
    """The joiner's own name for itself, made printable (it is untrusted text)."""
    cleaned = "".join(c for c in name if c.isprintable()).strip()[:MAX_NAME]
    return cleaned or role.value


def _state(record: InviteRecord, now: int) -> str:
    if record.state is InviteState.USED:
        return "was used already"
    if record.state is InviteState.REVOKED:
        return "was revoked"
    if now >= record.expires_at:
        return "has expired"
    return "is pending"
