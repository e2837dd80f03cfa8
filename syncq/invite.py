"""Invite codes, the grant a joining device receives, and peer addresses (PROTOCOL.md,
"Invites").

An invite code carries no key of the space. It names a one-time invite: a fresh random secret
whose hash is recorded, with its role and expiry, in the space's encrypted log by the member that
made it (``syncq.devices``). To join, the new device connects to a member, proves it holds the
secret (the join handshake is keyed by ``auth_key``), and the member, if the invite is still
pending, lists the device, marks the invite used and sends back a ``Grant``: the space's keys
sealed to the new device's X25519 key. So a code seen after it was used, or after it expired,
opens nothing; a code seen before that is as good as the device it was meant for, which is why
it expires (default 24 h) and the CLI says to pass it only to that device::

    code = "syncq1-" base64url( msgpack [3, space_id 16B, role str, invite_secret 32B,
                                         expires_at ms, [url...], root 32B] )

Codes of versions 1 and 2 carried the space secret itself and are refused with a message.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgpack

from syncq.crypto import SECRET_SIZE, hkdf
from syncq.errors import BadRoster, InvalidInput
from syncq.frames import whole
from syncq.ids import SpaceId
from syncq.roster import KEY_SIZE, MAX_ENTRIES, Entry, Role, entries_from_wire

PREFIX = "syncq1-"
VERSION = 3
DEFAULT_PORT = 7330
MAX_CODE = 4096
MAX_ADDRESSES = 16
MAX_ADDRESS = 255  # characters of one address (a host name is at most 253)
MAX_GRANT = 1024 * 1024  # the join handshake's limit on a JOIN_GRANT (syncq.joining)
MAX_GRANT_LISTS = 512 * 1024  # of which the device lists and keys envelopes it carries
MAX_EPOCHS = 256
ROLES = (Role.MEMBER, Role.RELAY)


@dataclass(frozen=True, slots=True)
class Invite:
    """What an invite code carries."""

    space_id: SpaceId
    role: Role
    secret: bytes
    expires_at: int  # ms since the epoch (the member's own record is what counts)
    addresses: tuple[str, ...]
    root: bytes

    @property
    def id(self) -> str:
        """The invite's id (16 hex digits): what the log records and `--revoke` takes."""
        return invite_id(self.secret)

    @property
    def auth_key(self) -> bytes:
        """The key the join handshake is keyed by."""
        return invite_auth_key(self.secret)


def invite_id(secret: bytes) -> str:
    """The id of the invite with ``secret``."""
    return hkdf(secret, "invite id", 8).hex()


def invite_auth_key(secret: bytes) -> bytes:
    """The join handshake's key for the invite with ``secret``."""
    return hkdf(secret, "invite auth")


def invite_mdns_tag(secret: bytes) -> str:
    """What a member advertises on the LAN while the invite is pending: only a holder of the
    code can tie it to anything."""
    return hkdf(secret, "invite mdns", 8).hex()


def encode_invite(invite: Invite) -> str:
    """The code of ``invite``."""
    body = [
        VERSION,
        bytes.fromhex(invite.space_id),
        invite.role.value,
        invite.secret,
        invite.expires_at,
        [peer_url(a) for a in invite.addresses][:MAX_ADDRESSES],
        invite.root,
    ]
    return PREFIX + base64.urlsafe_b64encode(msgpack.packb(body, use_bin_type=True)).decode().rstrip("=")


def decode_invite(code: str) -> Invite:
    """Parse an invite code. Raises ``InvalidInput`` for anything that is not a valid code."""
    text = "".join(code.split())
    if not text.startswith(PREFIX) or len(text) > MAX_CODE:
        raise InvalidInput("not a syncq invite code (it starts with 'syncq1-'); ask for a new one")
    try:
        raw = base64.urlsafe_b64decode(text[len(PREFIX) :] + "=" * (-len(text) % 4))
        body = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=False,
            max_bin_len=64,
            max_str_len=MAX_ADDRESS,
            max_array_len=MAX_ENTRIES,
            max_map_len=64,
        )
    except (binascii.Error, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise InvalidInput("the invite code is damaged (was it copied whole?)") from exc
    if not isinstance(body, list) or not body or not whole(body[0]):
        raise InvalidInput("the invite code is damaged (was it copied whole?)")
    if body[0] in (1, 2):
        raise InvalidInput(
            "this invite code is from an older syncq and carries the space's key: "
            "ask for a new one (`syncq invite` on a member)"
        )
    if body[0] != VERSION:
        raise InvalidInput("this invite code is from a newer syncq: upgrade first")
    if len(body) != 7:
        raise InvalidInput("the invite code is damaged (wrong number of fields)")
    _, space_id, role, secret, expires_at, addresses, root = body
    if not isinstance(space_id, bytes) or len(space_id) != 16:
        raise InvalidInput("the invite code is damaged (bad space id)")
    if role not in [r.value for r in ROLES]:
        raise InvalidInput("the invite code is damaged (bad role)")
    if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
        raise InvalidInput("the invite code is damaged (bad invite secret)")
    if not whole(expires_at) or expires_at >= 1 << 53:
        raise InvalidInput("the invite code is damaged (bad expiry)")
    if not isinstance(root, bytes) or len(root) != KEY_SIZE:
        raise InvalidInput("the invite code is damaged (bad root key)")
    return Invite(
        space_id=SpaceId(space_id.hex()),
        role=Role(role),
        secret=secret,
        expires_at=expires_at,
        addresses=_addresses(addresses),
        root=root,
    )


def _addresses(addresses: object) -> tuple[str, ...]:
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise InvalidInput("the invite code is damaged (bad addresses)")
    if len(addresses) > MAX_ADDRESSES or any(len(a) > MAX_ADDRESS for a in addresses):
        raise InvalidInput(
            f"the invite code is damaged (at most {MAX_ADDRESSES} addresses of {MAX_ADDRESS} characters)"
        )
    return tuple(peer_url(a) for a in addresses)


# -- the grant: what the admitting member sends back -----------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """A joining device's way in: its role, the space's root, its own chain of device-list
    entries (the admitter's, then the one listing it), the generation of every epoch, and the
    keys of every epoch (a member's secrets, a relay's admission keys) in one box sealed to its
    X25519 key (``epochs.box``, epoch 0): only the device that asked can open them."""

    space_id: SpaceId
    role: Role
    root: bytes
    chain: tuple[Entry, ...]
    generations: Mapping[int, int]
    ephemeral: bytes
    sealed_keys: bytes
    admitter_name: str = ""
    # Every device-list and keys envelope the admitter holds (up to ``MAX_GRANT_LISTS``): the
    # new device knows the whole list (its relays, say) from the start, not only its own chain.
    lists: tuple[bytes, ...] = ()


def pack_keys(keys: Mapping[int, bytes]) -> bytes:
    """The msgpack map of epoch -> key that a grant's box holds."""
    packed: bytes = msgpack.packb(dict(sorted(keys.items())), use_bin_type=True)
    return packed


def unpack_keys(data: bytes) -> dict[int, bytes]:
    """What ``pack_keys`` packed. Raises ``InvalidInput``."""
    try:
        keys = msgpack.unpackb(data, raw=False, strict_map_key=False, max_bin_len=64, max_map_len=MAX_EPOCHS)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise InvalidInput("the grant's keys are damaged") from exc
    if not isinstance(keys, dict) or 0 not in keys:
        raise InvalidInput("the grant's keys are damaged (no epoch 0)")
    for epoch, key in keys.items():
        if not whole(epoch) or epoch >= 1 << 32 or not isinstance(key, bytes) or len(key) != SECRET_SIZE:
            raise InvalidInput("the grant's keys are damaged")
    return keys


def grant_to_wire(grant: Grant) -> bytes:
    """The grant's msgpack form."""
    body = [
        1,
        bytes.fromhex(grant.space_id),
        grant.role.value,
        grant.root,
        [e.to_wire() for e in grant.chain],
        dict(sorted(grant.generations.items())),
        grant.ephemeral,
        grant.sealed_keys,
        grant.admitter_name[:64],
        list(grant.lists),
    ]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def grant_from_wire(data: bytes) -> Grant:
    """A grant from its msgpack form, size- and shape-checked. Raises ``InvalidInput``."""
    if not isinstance(data, bytes) or len(data) > MAX_GRANT:
        raise InvalidInput("the member's grant is too large")
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_bin_len=MAX_GRANT_LISTS,
            max_str_len=64,
            max_array_len=4096,
            max_map_len=MAX_EPOCHS,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise InvalidInput("the member's grant is damaged") from exc
    if not isinstance(body, list) or len(body) != 10 or body[0] != 1:
        raise InvalidInput("the member's grant is damaged (wrong shape)")
    _, space_id, role, root, chain, generations, ephemeral, sealed, name, lists = body
    if not isinstance(lists, list) or not all(isinstance(e, bytes) for e in lists):
        raise InvalidInput("the member's grant is damaged (device lists)")
    if not isinstance(space_id, bytes) or len(space_id) != 16 or role not in [r.value for r in ROLES]:
        raise InvalidInput("the member's grant is damaged (space or role)")
    if not all(isinstance(v, bytes) and len(v) == KEY_SIZE for v in (root, ephemeral)):
        raise InvalidInput("the member's grant is damaged (keys)")
    if not isinstance(sealed, bytes) or not isinstance(name, str) or not isinstance(generations, dict):
        raise InvalidInput("the member's grant is damaged")
    if not all(whole(e) and whole(g) for e, g in generations.items()):
        raise InvalidInput("the member's grant is damaged (generations)")
    try:
        entries = entries_from_wire(chain)
    except BadRoster as exc:
        raise InvalidInput(f"the member's grant is damaged ({exc})") from exc
    return Grant(
        space_id=SpaceId(space_id.hex()),
        role=Role(role),
        root=root,
        chain=entries,
        generations=generations,
        ephemeral=ephemeral,
        sealed_keys=sealed,
        admitter_name=name,
        lists=tuple(lists),
    )


def peer_url(text: str) -> str:
    """Normalise a peer address to ``ws://host:port`` (``wss://`` kept; port defaults to 7330).

    Accepts ``host``, ``host:port`` and full URLs. Raises ``InvalidInput``.
    """
    candidate = text.strip()
    if "://" not in candidate:
        candidate = "ws://" + candidate
    try:
        parts = urlsplit(candidate)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise InvalidInput(f"{text!r} is not a peer address (try ws://host:7330)") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.path not in ("", "/"):
        raise InvalidInput(f"{text!r} is not a peer address (try ws://host:7330)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"
