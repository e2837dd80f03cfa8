"""Invite codes and peer addresses (PROTOCOL.md, "Invite codes").

A member invite carries the space secrets: whoever holds it can read every prompt, so the CLI
says to treat it like a password. A relay invite carries only the admission key: its holder can
store and forward envelopes and can never decrypt one. Both carry the inviting node's addresses
and the space's root (the founder's public key, which a relay checks the device list against);
a member code also carries the chain of device-list entries up to a fresh one-time invite key,
and that key (``syncq.roster``).

    code = "syncq1-" base64url( msgpack [2, space_id 16B, {epoch: secret}, {epoch: auth_key}, [url...],
                                         root 32B, [entry...], invite_seed 32B or empty] )

Version 1 codes (the first five fields, from before device lists) are still read: they carry
no root, and a space joined with one has no device list.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgpack

from syncq.crypto import SECRET_SIZE, SpaceKeys, space_id_for
from syncq.errors import BadRoster, InvalidInput
from syncq.ids import SpaceId
from syncq.roster import KEY_SIZE, MAX_ENTRIES, Entry, Invitation, Role, check_chain, entries_from_wire

PREFIX = "syncq1-"
VERSION = 2
DEFAULT_PORT = 7330
MAX_CODE = 8192  # a chain of 32 entries (about 4.4 KB) fits, base64 and all
MAX_ADDRESSES = 16
MAX_ADDRESS = 255  # characters of one address (a host name is at most 253)
# Epochs count key rotations (one per device removal): a million is far beyond any real space
# and keeps every derived label and the envelope header's u32 safe.
MAX_EPOCH = 1 << 20
MAX_EPOCHS = 64


@dataclass(frozen=True, slots=True)
class Invite:
    """What an invite code carries."""

    keys: SpaceKeys
    addresses: tuple[str, ...]
    root: bytes | None = None  # None: a code from before device lists
    invitation: Invitation | None = None  # member codes with a root


def encode_invite(
    keys: SpaceKeys,
    addresses: Sequence[str],
    *,
    root: bytes | None = None,
    invitation: Invitation | None = None,
) -> str:
    """An invite code for ``keys`` (member keys, or ``keys.for_relay()``). A space with a root
    gives it (and, for a member code, an ``invitation``); without one, a version 1 code."""
    body: list[object] = [
        1,
        bytes.fromhex(keys.space_id),
        dict(keys.secrets),
        dict(keys.relay_auth),
        [peer_url(a) for a in addresses][:MAX_ADDRESSES],
    ]
    if root is not None:
        chain = [e.to_wire() for e in invitation.chain] if invitation is not None else []
        body[0] = VERSION
        body += [root, chain, invitation.invite_seed if invitation is not None else b""]
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
            max_str_len=512,
            max_array_len=MAX_ENTRIES + 8,
            max_map_len=MAX_EPOCHS,
        )
    except (binascii.Error, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise InvalidInput("the invite code is damaged (was it copied whole?)") from exc
    if not isinstance(body, list) or not body or not isinstance(body[0], int) or isinstance(body[0], bool):
        raise InvalidInput("the invite code is damaged (was it copied whole?)")
    if body[0] not in (1, VERSION):
        raise InvalidInput("this invite code is from a newer syncq: upgrade first")
    if len(body) != (5 if body[0] == 1 else 8):
        raise InvalidInput("the invite code is damaged (wrong number of fields)")
    _, space_id, secrets, relay_auth, addresses = body[:5]
    keys = _keys(space_id, secrets, relay_auth)
    root, invitation = _roster(body[5:], keys) if body[0] == VERSION else (None, None)
    return Invite(keys=keys, addresses=_addresses(addresses), root=root, invitation=invitation)


def _addresses(addresses: object) -> tuple[str, ...]:
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise InvalidInput("the invite code is damaged (bad addresses)")
    if len(addresses) > MAX_ADDRESSES or any(len(a) > MAX_ADDRESS for a in addresses):
        raise InvalidInput(
            f"the invite code is damaged (at most {MAX_ADDRESSES} addresses of {MAX_ADDRESS} characters)"
        )
    return tuple(peer_url(a) for a in addresses)


def _roster(fields: list[object], keys: SpaceKeys) -> tuple[bytes, Invitation | None]:
    root, chain, seed = fields
    if not isinstance(root, bytes) or len(root) != KEY_SIZE:
        raise InvalidInput("the invite code is damaged (bad root key)")
    if keys.is_relay:
        if chain != [] or seed != b"":
            raise InvalidInput("the invite code is damaged (a relay code carries no invite key)")
        return root, None
    if not isinstance(seed, bytes) or len(seed) != KEY_SIZE:
        raise InvalidInput("the invite code is damaged (bad invite key)")
    try:
        entries: tuple[Entry, ...] = entries_from_wire(chain)
        listed = check_chain(entries, keys.space_id, root)
    except BadRoster as exc:
        raise InvalidInput(f"the invite code is damaged ({exc})") from exc
    if len(entries) >= MAX_ENTRIES:
        raise InvalidInput("the invite code is damaged (its device list is too long)")
    invitation = Invitation(root=root, chain=entries, invite_seed=seed)
    if listed.get(invitation.invite_key.public_key) is not Role.INVITE:
        raise InvalidInput("the invite code is damaged (its device list does not list its invite key)")
    return root, invitation


def _keys(space_id: object, secrets: object, relay_auth: object) -> SpaceKeys:
    if not isinstance(space_id, bytes) or len(space_id) != 16:
        raise InvalidInput("the invite code is damaged (bad space id)")
    if not isinstance(secrets, dict) or not isinstance(relay_auth, dict):
        raise InvalidInput("the invite code is damaged (bad keys)")
    if bool(secrets) == bool(relay_auth):
        raise InvalidInput("the invite code is damaged (it must carry either secrets or admission keys)")
    for table in (secrets, relay_auth):
        for epoch, key in table.items():
            if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= MAX_EPOCH:
                raise InvalidInput(f"the invite code is damaged (key epochs run from 0 to {MAX_EPOCH})")
            if not isinstance(key, bytes) or len(key) != SECRET_SIZE:
                raise InvalidInput(f"the invite code is damaged (a key is {SECRET_SIZE} bytes)")
        if table and 0 not in table:
            raise InvalidInput("the invite code is damaged (it lacks the keys of epoch 0)")
    if secrets and space_id_for(secrets.get(0, b"")) != space_id.hex():
        raise InvalidInput("the invite code is damaged (its secret does not match its space)")
    return SpaceKeys(space_id=SpaceId(space_id.hex()), secrets=secrets, relay_auth=relay_auth)


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
