"""The space's device list (roster): who may write, in a form a relay can check
(PROTOCOL.md, "Device list (roster)").

A relay cannot decrypt the log, so the list it checks travels in the clear: public keys and
roles only, no names. Entries travel in envelopes of kind 4 (``crypto.Kind.ROSTER``): a msgpack
list of entries in place of the ciphertext, authenticated by the envelope's signature::

    entry     = [device 32B, role str, signer 32B, signature 64B, exchange 32B | b"", cutoff u64]
    signature = Ed25519(signer, "syncq-roster-v2\\0" || space_id 16B || device || role || "\\0"
                                 || exchange || cutoff u64)

Roles: ``member`` writes envelopes and signs entries, ``relay`` stores and forwards (it never
writes), ``removed`` ends a device for good. A member or relay entry carries the device's
X25519 key (``exchange``), which new key epochs are sealed to (``syncq.epochs``). A removal
carries ``cutoff``: the removed device's highest seq the remover held. Entries of the first
version (four fields, roles ``member`` and ``invite``) are still read.

Every roster envelope is a self-contained chain: each entry is signed by the root (the founder's
key) or by a member an earlier entry of the same envelope lists, so a relay can check one on its
own, whatever order gossip brings them in. Who is on the list is then ``resolve``: a pure
function of the *set* of roster envelopes held, so every replica that holds the same ones agrees:

- a device is listed if a chain of valid entries leads to it from the root;
- removal wins, for good: a removed key is never listed again (a device that is "invited back"
  joins with a new identity);
- a removed device's envelopes after its cutoff are refused, and an entry it signed counts only
  if it appears in its own roster envelope at a seq up to the cutoff: what it signed after it
  was removed, backdated or not, lists nobody;
- two devices that remove each other (apart, at once) cannot both win: removals are applied in
  a fixed order (by signature), and one whose signer has already been removed, past the cutoff,
  is void. So exactly one of the two is removed, the same one everywhere.

Pure: keys and randomness are arguments.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack

from syncq.crypto import NONCE_SIZE, DeviceKeys, Envelope, Kind, sign_clear, verify_signature
from syncq.errors import BadRoster
from syncq.ids import SpaceId

LABEL_V1 = b"syncq-roster-v1\0"
LABEL = b"syncq-roster-v2\0"
KEY_SIZE = 32
SIGNATURE_SIZE = 64
MAX_ENTRIES = 32  # a chain grows by one entry per generation of invitation
MAX_ROLE = 16
MAX_CUTOFF = (1 << 63) - 1
_ROUNDS = 8  # resolving settles in two or three rounds; a bound keeps a hostile set cheap


class Role(enum.StrEnum):
    """What a device on the list may do."""

    MEMBER = "member"  # writes envelopes, signs entries
    RELAY = "relay"  # stores and forwards ciphertext; never writes, never signs
    REMOVED = "removed"  # removed for good: nothing after its cutoff counts
    INVITE = "invite"  # (version 1) a one-time key that signed the entry of the device joining


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One signed line of the device list."""

    device: bytes
    role: Role
    signer: bytes
    signature: bytes
    exchange: bytes = b""  # the device's X25519 key (member and relay entries)
    cutoff: int = 0  # removed entries: the removed device's last seq that counts
    version: int = 2

    def to_wire(self) -> list[object]:
        """The msgpack form (four fields for a version 1 entry, six for version 2)."""
        if self.version == 1:
            return [self.device, self.role.value, self.signer, self.signature]
        return [self.device, self.role.value, self.signer, self.signature, self.exchange, self.cutoff]


def message(
    space_id: SpaceId, device: bytes, role: Role, exchange: bytes = b"", cutoff: int = 0, version: int = 2
) -> bytes:
    """The bytes an entry's signature covers: bound to the space and every field."""
    if version == 1:
        return LABEL_V1 + bytes.fromhex(space_id) + device + role.value.encode()
    return (
        LABEL
        + bytes.fromhex(space_id)
        + device
        + role.value.encode()
        + b"\0"
        + exchange
        + struct.pack(">Q", cutoff)
    )


def sign_entry(
    signer: DeviceKeys,
    space_id: SpaceId,
    device: bytes,
    role: Role,
    *,
    exchange: bytes = b"",
    cutoff: int = 0,
) -> Entry:
    """An entry listing ``device`` with ``role``, signed by ``signer``."""
    return Entry(
        device=device,
        role=role,
        signer=signer.public_key,
        signature=signer.sign(message(space_id, device, role, exchange, cutoff)),
        exchange=exchange,
        cutoff=cutoff,
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
    if not isinstance(item, list) or len(item) not in (4, 6):
        raise BadRoster("a device-list entry is [device, role, signer, signature, exchange, cutoff]")
    device, role, signer, signature = item[:4]
    sizes = ((device, KEY_SIZE), (signer, KEY_SIZE), (signature, SIGNATURE_SIZE))
    if not all(isinstance(v, bytes) and len(v) == n for v, n in sizes):
        raise BadRoster("a device-list entry has a field of the wrong size")
    if role not in Role._value2member_map_:
        raise BadRoster(f"unknown device-list role {str(role)[:MAX_ROLE]!r}")
    if len(item) == 4:
        if role not in (Role.MEMBER, Role.INVITE):
            raise BadRoster(f"a version 1 entry cannot have the role {role}")
        return Entry(device=device, role=Role(role), signer=signer, signature=signature, version=1)
    exchange, cutoff = item[4:]
    if role == Role.INVITE:
        raise BadRoster("invite keys are version 1 only")
    if not isinstance(exchange, bytes) or len(exchange) != (0 if role == Role.REMOVED else KEY_SIZE):
        raise BadRoster("a member or relay entry carries an X25519 key, a removal none")
    if not isinstance(cutoff, int) or isinstance(cutoff, bool) or not 0 <= cutoff <= MAX_CUTOFF:
        raise BadRoster("a removal's cutoff is a seq")
    if cutoff and role != Role.REMOVED:
        raise BadRoster("only a removal carries a cutoff")
    return Entry(
        device=device, role=Role(role), signer=signer, signature=signature, exchange=exchange, cutoff=cutoff
    )


def _signed(entry: Entry, space_id: SpaceId) -> bool:
    text = message(space_id, entry.device, entry.role, entry.exchange, entry.cutoff, entry.version)
    return verify_signature(entry.signer, entry.signature, text)


def check_chain(entries: Sequence[Entry], space_id: SpaceId, root: bytes) -> dict[bytes, Role]:
    """The devices the entries list (removals not applied), once every entry is checked in
    order: its signer is the root or a member listed by an earlier entry (a version 1 invite key
    signs member entries only; a relay signs nothing), its signature verifies, and no device is
    listed twice (a removal may name a device listed before it). Raises ``BadRoster``."""
    listed: dict[bytes, Role] = {}
    removed: set[bytes] = set()
    for index, entry in enumerate(entries):
        if entry.role is Role.REMOVED:
            if entry.device in removed:
                raise BadRoster(f"entry {index} removes a device twice")
            removed.add(entry.device)
        elif entry.device in listed:
            raise BadRoster(f"entry {index} lists a device twice")
        if entry.signer != root:
            signer_role = listed.get(entry.signer)
            if signer_role not in (Role.MEMBER, Role.INVITE):
                raise BadRoster(f"entry {index} is signed by a device not listed as a member before it")
            if signer_role is Role.INVITE and entry.role is not Role.MEMBER:
                raise BadRoster(f"entry {index}: an invite key signs member entries only")
        if not _signed(entry, space_id):
            raise BadRoster(f"entry {index} has a bad signature")
        if entry.role is not Role.REMOVED:
            listed[entry.device] = entry.role
    return listed


def open_roster(envelope: Envelope, space_id: SpaceId, root: bytes | None) -> tuple[Entry, ...]:
    """The entries of a verified roster envelope. With a ``root``, they must chain to it and
    list the envelope's author as a member (or the author is the root); without one (a space
    from before device lists) only their form is checked. Raises ``BadRoster``."""
    if envelope.kind is not Kind.ROSTER or envelope.nonce != bytes(NONCE_SIZE):
        raise BadRoster("not a roster envelope")
    entries = decode_entries(envelope.ciphertext)
    if root is None:
        return entries
    listed = check_chain(entries, space_id, root)
    if envelope.author != root and listed.get(envelope.author) is not Role.MEMBER:
        raise BadRoster(f"the device list of {envelope.author.hex()[:12]} does not list its author")
    return entries


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


# -- founding and admitting ---------------------------------------------------------------------


def founding_chain(founder: DeviceKeys, space_id: SpaceId) -> tuple[Entry, ...]:
    """The founder's chain: its own entry, signed by itself (it is the root)."""
    key = founder.public_key
    return (sign_entry(founder, space_id, key, Role.MEMBER, exchange=founder.exchange_public_key),)


def admit_entry(admitter: DeviceKeys, space_id: SpaceId, device: bytes, role: Role, exchange: bytes) -> Entry:
    """The entry a member signs for a device joining with one of its invites."""
    if role not in (Role.MEMBER, Role.RELAY):
        raise ValueError("a device joins as a member or a relay")
    return sign_entry(admitter, space_id, device, role, exchange=exchange)


def extend(chain: Sequence[Entry], *more: Entry) -> tuple[Entry, ...]:
    """``chain`` followed by ``more``. Raises ``BadRoster`` past ``MAX_ENTRIES`` (a device
    that far from the founder should let one nearer to it invite)."""
    if len(chain) + len(more) > MAX_ENTRIES:
        raise BadRoster(
            f"this device is {len(chain)} entries away from the founder: invite from a device nearer to it"
        )
    return (*chain, *more)


# -- who is on the list -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Held:
    """One roster envelope held here: its author, its seq and its (checked) entries."""

    author: bytes
    seq: int
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    """Who is on the device list, as ``resolve`` found it."""

    root: bytes | None
    roles: Mapping[bytes, Role] = field(default_factory=dict)  # listed now: member or relay
    removed: Mapping[bytes, int] = field(default_factory=dict)  # device -> cutoff
    exchange_keys: Mapping[bytes, bytes] = field(default_factory=dict)
    added_by: Mapping[bytes, bytes] = field(default_factory=dict)  # device -> who signed it in
    removed_by: Mapping[bytes, bytes] = field(default_factory=dict)

    def role(self, device: bytes) -> Role | None:
        """The device's role (``REMOVED`` for a removed one), or None if it is not listed."""
        if device in self.removed:
            return Role.REMOVED
        return self.roles.get(device)

    def admits(self, author: bytes, seq: int) -> bool:
        """Whether envelope ``seq`` of ``author`` counts: a member's, or a removed device's up
        to its cutoff; anyone's in a space without a list."""
        if self.root is None:
            return True
        if author in self.removed:
            return seq <= self.removed[author]
        return self.roles.get(author) is Role.MEMBER

    def members(self) -> list[bytes]:
        """The devices that may write now."""
        return sorted(d for d, r in self.roles.items() if r is Role.MEMBER)

    def relays(self) -> list[bytes]:
        """The relays listed now."""
        return sorted(d for d, r in self.roles.items() if r is Role.RELAY)


def resolve(root: bytes | None, held: Iterable[Held]) -> Listing:
    """Who is on the list, from every roster envelope held (their entries already checked by
    ``open_roster``): the same set gives the same answer, in any order (see the module's
    docstring for the rules)."""
    if root is None:
        return Listing(root=None)
    own_at: dict[bytes, int] = {}  # an entry's signature -> lowest seq of its signer that holds it
    unique: dict[bytes, Entry] = {}
    for envelope in held:
        for entry in envelope.entries:
            unique.setdefault(entry.signature, entry)
            if entry.signer == envelope.author:
                seen = own_at.get(entry.signature)
                own_at[entry.signature] = envelope.seq if seen is None else min(seen, envelope.seq)
    entries = sorted(unique.values(), key=lambda e: e.signature)
    adds = [e for e in entries if e.role is not Role.REMOVED]
    removals = [e for e in entries if e.role is Role.REMOVED]

    def counts(entry: Entry, removed: Mapping[bytes, int]) -> bool:
        """An entry of a removed signer counts only from its own envelope, up to its cutoff."""
        cutoff = removed.get(entry.signer)
        return cutoff is None or own_at.get(entry.signature, MAX_CUTOFF + 1) <= cutoff

    removed: dict[bytes, int] = {}
    reach: dict[bytes, Role] = {}
    for _ in range(_ROUNDS):
        reach = _reach(root, adds, removed, counts)
        settled: dict[bytes, int] = {}
        for entry in removals:
            if entry.signer != root and reach.get(entry.signer) is not Role.MEMBER:
                continue
            if not counts(entry, settled):
                continue
            settled[entry.device] = max(settled.get(entry.device, 0), entry.cutoff)
        if settled == removed:
            break
        removed = settled
    roles = {d: r for d, r in reach.items() if d not in removed and r is not Role.INVITE}
    exchange: dict[bytes, bytes] = {}
    added_by: dict[bytes, bytes] = {}
    for entry in adds:  # sorted: of several entries for one device, the same one everywhere
        if entry.device in reach and entry.exchange and counts(entry, removed):
            exchange.setdefault(entry.device, entry.exchange)
        if entry.device in reach and counts(entry, removed):
            added_by.setdefault(entry.device, entry.signer)
    removed_by: dict[bytes, bytes] = {}
    for entry in removals:
        if entry.device in removed:
            removed_by.setdefault(entry.device, entry.signer)
    return Listing(
        root=root,
        roles=roles,
        removed=removed,
        exchange_keys=exchange,
        added_by=added_by,
        removed_by=removed_by,
    )


def _reach(
    root: bytes,
    adds: Sequence[Entry],
    removed: Mapping[bytes, int],
    counts: Callable[[Entry, Mapping[bytes, int]], bool],
) -> dict[bytes, Role]:
    """Every device a chain of counting entries leads to from the root, removed ones included
    (a removed device's earlier signatures still count). A member entry wins over a relay one
    for the same device."""
    reach: dict[bytes, Role] = {root: Role.MEMBER}
    grew = True
    while grew:
        grew = False
        for entry in adds:
            have = reach.get(entry.device)
            if have is Role.MEMBER or (have is not None and entry.role is not Role.MEMBER):
                continue
            signer = reach.get(entry.signer) if entry.signer != root else Role.MEMBER
            if signer is None or signer is Role.RELAY:
                continue
            if signer is Role.INVITE and entry.role is not Role.MEMBER:
                continue
            if entry.signer in removed and not counts(entry, removed):
                continue
            reach[entry.device] = entry.role
            grew = True
    return reach
