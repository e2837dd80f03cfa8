"""Spaces joined and synced in one process, through the same calls the node makes: a member's
``admit`` answers what the join handshake carries, and ``sync`` exchanges envelopes only between
two homes that would admit each other at AUTH (``Space.peer_refusal``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from syncq.crypto import DeviceKeys
from syncq.invite import decode_invite
from syncq.space import Space


def join(home: Path, member: Space, name: str, role: str = "member") -> Space:
    """A new device in ``home``, admitted by ``member`` with a fresh invite."""
    code, _ = member.create_invite(role=role)
    invite = decode_invite(code)
    device = DeviceKeys.from_seed(os.urandom(64))
    grant = member.admit(invite.id, device=device.public_key, exchange=device.exchange_public_key, name=name)
    return Space.join_granted(home, device=device, name=name, grant=grant)


def admits(a: Space, b: Space) -> bool:
    """Whether a session between the two would pass AUTH on both sides."""
    return a.peer_refusal(b.device.public_key) is None and b.peer_refusal(a.device.public_key) is None


def sync(spaces: Sequence[Space], rounds: int = 3) -> None:
    """Exchange everything between every pair that admits each other, ``rounds`` times (what
    a mesh of sessions reaches once quiet), each member rotating when a removal asks it to."""
    for _ in range(rounds):
        for a in spaces:
            for b in spaces:
                if a is not b and admits(a, b):
                    b.receive(list(a.envelopes(b.version_vector())))
        for space in spaces:
            space.rotate_if_needed()
