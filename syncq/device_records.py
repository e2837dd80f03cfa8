"""The log's records of the device list's human side: invites and device names
(PROTOCOL.md, "CRDT schema").

The device list itself (who may write) travels in the clear for relays (``syncq.roster``); what
only members should see lives here, in the encrypted log:

- ``invites[id]``: one per invite made, so that any member can admit its holder, once. It
  keeps the invite's handshake key: a member can do anything the holder of a code could, so
  that costs nothing, and a removal revokes every pending invite (the removed device could read
  them). Rewritten whole by whoever changes its state (``by``, the writer, is checked).
- ``names[device]``: a name given to a device by any member (`syncq devices rename`); the
  newest one wins over the name the device gave itself when it joined.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from syncq.errors import MalformedRecord
from syncq.ids import DeviceId
from syncq.records import Wire, _int, _mapping, _str


class InviteState(enum.StrEnum):
    """Where an invite stands."""

    PENDING = "pending"
    USED = "used"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True, kw_only=True)
class InviteRecord:
    """One invite (``invites[id]``)."""

    id: str
    role: str  # member | relay
    auth: str  # hex of the join handshake's key
    mdns: str  # the tag a member advertises while it is pending
    expires_at: int
    created_at: int
    created_by: DeviceId
    state: InviteState = InviteState.PENDING
    used_by: str = ""  # the device that joined with it
    by: DeviceId  # who wrote this version of the record
    at: int  # when

    def pending(self, now_ms: int) -> bool:
        """Whether a device may still join with it."""
        return self.state is InviteState.PENDING and now_ms < self.expires_at

    def moved(self, state: InviteState, *, by: DeviceId, at: int, used_by: str = "") -> InviteRecord:
        """This invite in ``state``, as written by ``by``."""
        return replace(self, state=state, by=by, at=at, used_by=used_by)

    def to_wire(self) -> Wire:
        """The dict stored under ``invites[id]``."""
        return {
            "role": self.role,
            "auth": self.auth,
            "mdns": self.mdns,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "state": self.state.value,
            "used_by": self.used_by,
            "by": self.by,
            "at": self.at,
        }

    @classmethod
    def from_wire(cls, key: str, wire: object) -> InviteRecord:
        """Check and convert a stored dict. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        state = _str(w, "state")
        if state not in InviteState._value2member_map_:
            raise MalformedRecord(f"unknown invite state {state[:20]!r}")
        auth = _str(w, "auth")
        if len(auth) != 64:
            raise MalformedRecord("an invite's key is 32 bytes")
        return cls(
            id=key,
            role=_str(w, "role"),
            auth=auth,
            mdns=_str(w, "mdns"),
            expires_at=_int(w, "expires_at"),
            created_at=_int(w, "created_at"),
            created_by=DeviceId(_str(w, "created_by")),
            state=InviteState(state),
            used_by=_str(w, "used_by"),
            by=DeviceId(_str(w, "by")),
            at=_int(w, "at"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceName:
    """A name a member gave a device (``names[device]``)."""

    device: str
    name: str
    by: DeviceId
    at: int

    def to_wire(self) -> Wire:
        """The dict stored under ``names[device]``."""
        return {"name": self.name, "by": self.by, "at": self.at}

    @classmethod
    def from_wire(cls, key: str, wire: object) -> DeviceName:
        """Check and convert a stored dict. Raises ``MalformedRecord``."""
        w = _mapping(wire)
        return cls(device=key, name=_str(w, "name"), by=DeviceId(_str(w, "by")), at=_int(w, "at"))
