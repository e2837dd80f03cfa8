"""The space's device list (roster): who may write, in a form a relay can check
(PROTOCOL.md, "Device list (roster)").

A relay cannot decrypt the log, so the list it checks travels in the clear: public keys and
roles only, no names. Each entry is signed by the space's root (the Ed25519 key of the device
that ran ``syncq init``) or by a device an earlier entry of the same envelope lists::

    entry     = [device 32B, role str, signer 32B, signature 64B]
    signature = Ed25519(signer, "syncq-roster-v1\\0" || space_id 16B || device || role)

Entries travel in envelopes of kind 4 (``crypto.Kind.ROSTER``): a msgpack list of entries in
place of the ciphertext, authenticated by the envelope's signature. Every roster envelope is a
self-contained chain from the root, so it can be checked on its own, whatever order gossip
brings envelopes in. A device writes one as its first envelope (seq 1): the founder lists
itself; a joining device writes its inviter's chain, the one-time invite key's entry and its own
entry signed by that key.

Roles: ``member`` may write and sign entries; ``invite`` (a key carried by a member invite code)
may only sign ``member`` entries and never writes. Any other role is refused (``bad-roster``)
rather than ignored, so that a relay of this version never silently skips an entry a later one
relies on (the next one adds ``removed``). Pure: keys and randomness are arguments.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgpack

from syncq.crypto import NONCE_SIZE, DeviceKeys, Envelope, Kind, sign_clear, verify_signature
from syncq.errors import BadRoster, InvalidInput
from syncq.ids import SpaceId

LABEL = b"syncq-roster-v1\0"
KEY_SIZE = 32
SIGNATURE_SIZE = 64
MAX_ENTRIES = 32  # a chain grows by two entries per generation of invitation
MAX_ROLE = 16


class Role(enum.StrEnum):
    """What a device on the list may do."""

    MEMBER = "member"  # writes envelopes, signs entries
    INVITE = "invite"  # a one-time invite key: signs the entry of the device that joins with it


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One signed line of the device list."""

    device: bytes
    role: Role
    signer: bytes
    signature: bytes

    def to_wire(self) -> list[object]:
        """The msgpack form: ``[device, role, signer, signature]``."""
        return [self.device, self.role.value, self.signer, self.signature]


def message(space_id: SpaceId, device: bytes, role: Role) -> bytes:
    """The bytes an entry's signature covers: bound to the space, the device and its role."""
    return LABEL + bytes.fromhex(space_id) + device + role.value.encode()


def sign_entry(signer: DeviceKeys, space_id: SpaceId, device: bytes, role: Role) -> Entry:
    """An entry listing ``device`` with ``role``, signed by ``signer``."""
    return Entry(
        device=device,
        role=role,
        signer=signer.public_key,
        signature=signer.sign(message(space_id, device, role)),
    )


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """The msgpack list of entries (a roster envelope's payload; also kept in the home)."""
    packed: bytes = msgpack.packb([e.to_wire() for e in entries], use_bin_type=True)
    return packed


def entries_from_wire(items: object) -> tuple[Entry, ...]:
    """Entries from their msgpack form (already unpacked). Raises ``BadRoster``."""
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ENTRIES:
        raise BadRoster(f"a device list holds 1 to {MAX_ENTRIES} entries")
    return tuple(_entry(item) for item in items)


def decode_entries(payload: bytes) -> tuple[Entry, ...]:
    """Entries from a roster payload. Raises ``BadRoster``."""
    try:
        items = msgpack.unpackb(
            payload, raw=False, max_bin_len=64, max_str_len=MAX_ROLE, max_array_len=MAX_ENTRIES
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BadRoster("the device list is not msgpack") from exc
    return entries_from_wire(items)


def _entry(item: object) -> Entry:
    if not isinstance(item, list) or len(item) != 4:
        raise BadRoster("a device-list entry is [device, role, signer, signature]")
    device, role, signer, signature = item
    sizes = ((device, KEY_SIZE), (signer, KEY_SIZE), (signature, SIGNATURE_SIZE))
    if not all(isinstance(v, bytes) and len(v) == n for v, n in sizes):
        raise BadRoster("a device-list entry has a field of the wrong size")
    if role not in Role._value2member_map_:
        raise BadRoster(f"unknown device-list role {str(role)[:MAX_ROLE]!r}")
    return Entry(device=device, role=Role(role), signer=signer, signature=signature)


def check_chain(entries: Sequence[Entry], space_id: SpaceId, root: bytes) -> dict[bytes, Role]:
    """The devices the entries list, once every entry is checked in order: its signer is the
    root or a device listed by an earlier entry (an ``invite`` signs ``member`` entries only),
    its signature verifies, and no device is listed twice. Raises ``BadRoster``."""
    listed: dict[bytes, Role] = {}
    for index, entry in enumerate(entries):
        if entry.device in listed:
            raise BadRoster(f"entry {index} lists a device twice")
        if entry.signer != root:
            signer_role = listed.get(entry.signer)
            if signer_role is None:
                raise BadRoster(f"entry {index} is signed by a device not listed before it")
            if signer_role is Role.INVITE and entry.role is not Role.MEMBER:
                raise BadRoster(f"entry {index}: an invite key signs member entries only")
        if not verify_signature(entry.signer, entry.signature, message(space_id, entry.device, entry.role)):
            raise BadRoster(f"entry {index} has a bad signature")
        listed[entry.device] = entry.role
    return listed


def open_roster(envelope: Envelope, space_id: SpaceId, root: bytes | None) -> dict[bytes, Role]:
    """The devices a verified roster envelope lists. With a ``root``, the entries must chain to
    it and list the envelope's author as a member; without one (a space from before device
    lists) only their form is checked. Raises ``BadRoster``."""
    if envelope.kind is not Kind.ROSTER or envelope.nonce != bytes(NONCE_SIZE):
        raise BadRoster("not a roster envelope")
    entries = decode_entries(envelope.ciphertext)
    if root is None:
        return {e.device: e.role for e in entries}
    listed = check_chain(entries, space_id, root)
    if listed.get(envelope.author) is not Role.MEMBER:
        raise BadRoster(f"the device list of {envelope.author.hex()[:12]} does not list its author")
    return listed


def seal_roster(
    *, device: DeviceKeys, space_id: SpaceId, epoch: int, seq: int, entries: Sequence[Entry]
) -> bytes:
    """Envelope ``seq`` of ``device`` carrying ``entries`` in the clear."""
    return sign_clear(
        device=device,
        space_id=space_id,
        epoch=epoch,
        seq=seq,
        kind=Kind.ROSTER,
        payload=encode_entries(entries),
    )


# -- founding and inviting ---------------------------------------------------------------------


def founding_chain(founder: DeviceKeys, space_id: SpaceId) -> tuple[Entry, ...]:
    """The founder's chain: its own entry, signed by itself (it is the root)."""
    return (sign_entry(founder, space_id, founder.public_key, Role.MEMBER),)


@dataclass(frozen=True, slots=True, kw_only=True)
class Invitation:
    """What a member invite code carries besides the keys: the root, the chain up to the
    invite key, and the invite key's private seed (the new device signs in with it)."""

    root: bytes
    chain: tuple[Entry, ...]
    invite_seed: bytes

    @property
    def invite_key(self) -> DeviceKeys:
        """The invite key pair (only its Ed25519 half is used)."""
        return DeviceKeys(signing_seed=self.invite_seed, exchange_seed=bytes(KEY_SIZE))


def invite(
    inviter: DeviceKeys, space_id: SpaceId, root: bytes, own_chain: Sequence[Entry], invite_seed: bytes
) -> Invitation:
    """An invitation from ``inviter`` (whose chain is ``own_chain``) for a fresh invite key made
    from the 32 random bytes ``invite_seed``. Raises ``InvalidInput`` if the chain would be too
    long for the new device to extend (ask a device nearer the founder to invite)."""
    if len(invite_seed) != KEY_SIZE:
        raise ValueError("an invite seed is 32 bytes")
    key = DeviceKeys(signing_seed=invite_seed, exchange_seed=bytes(KEY_SIZE))
    chain = (*own_chain, sign_entry(inviter, space_id, key.public_key, Role.INVITE))
    if len(chain) + 1 > MAX_ENTRIES:
        raise InvalidInput(
            f"this device is {len(own_chain)} entries away from the founder: "
            "invite from a device nearer to it"
        )
    return Invitation(root=root, chain=chain, invite_seed=invite_seed)


def joining_chain(invitation: Invitation, device: bytes, space_id: SpaceId) -> tuple[Entry, ...]:
    """The chain a device that joins with ``invitation`` writes: the invitation's, then its own
    entry signed by the invite key."""
    return (*invitation.chain, sign_entry(invitation.invite_key, space_id, device, Role.MEMBER))


def listed_members(listed: Mapping[bytes, Role]) -> list[bytes]:
    """The devices that may write (role ``member``), of what ``check_chain`` returned."""
    return [device for device, role in listed.items() if role is Role.MEMBER]
