"""Invite codes and peer addresses (PROTOCOL.md, "Invite codes").

A member invite carries the space secrets: whoever holds it can read every prompt, so the CLI
says to treat it like a password. A relay invite carries only the admission key: its holder can
store and forward envelopes and can never decrypt one. Both carry the inviting node's addresses.

    code = "syncq1-" base64url( msgpack [1, space_id 16B, {epoch: secret}, {epoch: auth_key}, [url...]] )
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgpack

from syncq.crypto import SECRET_SIZE, SpaceKeys, space_id_for
from syncq.errors import InvalidInput
from syncq.ids import SpaceId

PREFIX = "syncq1-"
DEFAULT_PORT = 7330
MAX_CODE = 4096
MAX_ADDRESSES = 16


@dataclass(frozen=True, slots=True)
class Invite:
    """What an invite code carries."""

    keys: SpaceKeys
    addresses: tuple[str, ...]


def encode_invite(keys: SpaceKeys, addresses: Sequence[str]) -> str:
    """An invite code for ``keys`` (member keys, or ``keys.for_relay()``)."""
    body = [
        1,
        bytes.fromhex(keys.space_id),
        dict(keys.secrets),
        dict(keys.relay_auth),
        [peer_url(a) for a in addresses][:MAX_ADDRESSES],
    ]
    return PREFIX + base64.urlsafe_b64encode(msgpack.packb(body, use_bin_type=True)).decode().rstrip("=")


def decode_invite(code: str) -> Invite:
    """Parse an invite code. Raises ``InvalidInput`` for anything that is not a valid code."""
    text = "".join(code.split())
    if not text.startswith(PREFIX) or len(text) > MAX_CODE:
        raise InvalidInput("not a syncq invite code (it starts with 'syncq1-'); ask for a new one")
    try:
        raw = base64.urlsafe_b64decode(text[len(PREFIX) :] + "=" * (-len(text) % 4))
        version, space_id, secrets, relay_auth, addresses = msgpack.unpackb(
            raw, raw=False, strict_map_key=False, max_bin_len=64, max_str_len=512, max_array_len=64
        )
    except (binascii.Error, ValueError, TypeError, msgpack.ExtraData) as exc:
        raise InvalidInput("the invite code is damaged (was it copied whole?)") from exc
    if version != 1:
        raise InvalidInput("this invite code is from a newer syncq: upgrade first")
    keys = _keys(space_id, secrets, relay_auth)
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise InvalidInput("the invite code is damaged (bad addresses)")
    return Invite(keys=keys, addresses=tuple(peer_url(a) for a in addresses[:MAX_ADDRESSES]))


def _keys(space_id: object, secrets: object, relay_auth: object) -> SpaceKeys:
    if not isinstance(space_id, bytes) or len(space_id) != 16:
        raise InvalidInput("the invite code is damaged (bad space id)")
    if not isinstance(secrets, dict) or not isinstance(relay_auth, dict):
        raise InvalidInput("the invite code is damaged (bad keys)")
    for table in (secrets, relay_auth):
        for epoch, key in table.items():
            if not isinstance(epoch, int) or not isinstance(key, bytes) or len(key) != SECRET_SIZE:
                raise InvalidInput("the invite code is damaged (bad keys)")
    if not secrets and not relay_auth:
        raise InvalidInput("the invite code carries no keys")
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
