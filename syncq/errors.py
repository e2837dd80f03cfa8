"""Every error syncq raises on purpose.

The whole tree, so a caller can see at a glance what to catch::

    SyncqError                      base: everything raised on purpose
    ├── UserError                   the user asked for something impossible; message fit to print
    │   ├── NotInitialized          no space in this home yet (run `syncq init`)
    │   ├── AlreadyInitialized      `syncq init` on a home that has a space
    │   ├── HomeError               the home is missing, unreadable or not a directory
    │   ├── InsecureKeyFile         a key file others can read; refuses, says how to fix
    │   ├── InvalidInput            an empty prompt, a bad --param, a bad priority ...
    │   ├── UnknownId               no prompt starts with that id prefix
    │   ├── AmbiguousId             several prompts start with it (carries the candidates)
    │   ├── InvalidState            e.g. cancelling a prompt that is already done
    │   ├── WaitTimeout             gave up waiting for a result; the prompt stays queued
    │   ├── NodeRunning             a second `syncq node` in a home whose node runs
    │   ├── RelayOnly               a relay's home holds only ciphertext: it cannot read or write
    │   ├── InviteRefused           an invite code that was used, expired, revoked or never made
    │   └── ExportRefused           `syncq export` into a folder, an unwritable or foreign file
    ├── EnvelopeRejected            an envelope that must never be applied (counted, reported)
    │   ├── MalformedEnvelope       bytes that do not decode as an envelope
    │   ├── WrongSpace              sealed for another space
    │   ├── UnknownEpoch            sealed under a key epoch this device does not hold
    │   ├── BadSignature            the author's Ed25519 signature does not verify
    │   ├── BadTag                  the AEAD tag does not verify (tampered or wrong key)
    │   ├── SeqConflict             a second, different envelope for one (author, seq)
    │   ├── Unlisted                (at a relay) an author not on the space's device list
    │   │   (the three below are kept as "quarantined" at a member: signed, never applied)
    │   ├── BadRoster               a device-list envelope whose entries do not chain to the root
    │   ├── BadKeys                 a keys envelope (a new key epoch) that is malformed
    │   ├── BadUpdate               the authenticated payload is not a Yjs update we can read
    │   └── ForgedRecord            a record in it names another actor than its author
    ├── MalformedRecord             a record in the log has the wrong shape (skipped by queries)
    ├── StoreError                  local storage
    │   ├── StoreClosed             used after close() (a bug in the caller)
    │   ├── StoreBroken             the database is corrupt, foreign or unwritable
    │   └── DiskFull                no room for a write: nothing half-written, retry once freed
    └── LocalProtocolError          this program misused an API (a bug, not a user mistake)

Rejections of remote data carry a short machine-readable ``reason`` (``bad-tag``,
``bad-signature``, ...) so they can be counted per kind. User errors carry a message fit to print
as is; the CLI maps every ``SyncqError`` to exit code 1 and never prints a traceback for one.
"""

from __future__ import annotations

from collections.abc import Sequence


class SyncqError(Exception):
    """Base of every error syncq raises on purpose."""


class UserError(SyncqError):
    """The user asked for something that cannot be done; ``str(err)`` is fit to print."""


class NotInitialized(UserError):
    """The home holds no space yet."""


class AlreadyInitialized(UserError):
    """The home already holds a space."""


class HomeError(UserError):
    """The home directory is missing, unreadable or not a directory."""


class InsecureKeyFile(UserError):
    """A key file is readable or writable by other users."""


class InvalidInput(UserError):
    """A value given by the user is not acceptable (empty prompt, bad parameter, ...)."""


class UnknownId(UserError):
    """No prompt id starts with the given prefix."""


class AmbiguousId(UserError):
    """Several prompt ids start with the given prefix."""

    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        self.prefix = prefix
        self.candidates = tuple(candidates)
        shown = ", ".join(self.candidates[:10])
        more = f" and {len(self.candidates) - 10} more" if len(self.candidates) > 10 else ""
        super().__init__(f"id prefix {prefix!r} is ambiguous: it matches {shown}{more}; type more characters")


class InvalidState(UserError):
    """The operation does not apply to the prompt in its current status."""


class WaitTimeout(UserError):
    """Waiting for a prompt's result took longer than the caller allowed; the prompt itself
    is untouched (still queued or running)."""


class NodeRunning(UserError):
    """A node already runs in this home: two would run prompts twice and fight over the store."""


class RelayOnly(UserError):
    """This home is a relay: it stores and forwards ciphertext and can never read it."""


class InviteRefused(UserError):
    """An invite code a member will not admit: used, expired, revoked, or never made here."""


class ExportRefused(UserError):
    """The file named for an export cannot take it: a folder, not writable, not SQLite, or a
    database that is not a syncq export (or is one of another space)."""


class EnvelopeRejected(SyncqError):
    """An envelope that must never be stored or applied.

    ``reason`` is a short stable code used to count rejections by kind.
    """

    reason = "rejected"


class MalformedEnvelope(EnvelopeRejected):
    """The bytes do not decode as an envelope (truncated, bad version, bad kind ...)."""

    reason = "malformed"


class WrongSpace(EnvelopeRejected):
    """The envelope belongs to another space."""

    reason = "wrong-space"


class UnknownEpoch(EnvelopeRejected):
    """The envelope is sealed under a key epoch this device does not hold."""

    reason = "unknown-epoch"


class BadSignature(EnvelopeRejected):
    """The author's signature does not verify."""

    reason = "bad-signature"


class BadTag(EnvelopeRejected):
    """The AEAD tag does not verify: the ciphertext or header was changed, or the key is wrong."""

    reason = "bad-tag"


class SeqConflict(EnvelopeRejected):
    """A different envelope already exists for the same (author, seq)."""

    reason = "seq-conflict"


class BadRoster(EnvelopeRejected):
    """A roster envelope (device list) that is malformed, does not chain to the space's root,
    or does not list its own author (PROTOCOL.md, "Device list")."""

    reason = "bad-roster"


class BadKeys(EnvelopeRejected):
    """A keys envelope (the start of a key epoch) that is malformed."""

    reason = "bad-keys"


class Unlisted(EnvelopeRejected):
    """A relay refuses an envelope whose author is not on the space's device list."""

    reason = "unlisted"


class BadUpdate(MalformedEnvelope):
    """The authenticated payload is not a Yjs update (a broken or hostile member wrote it)."""

    reason = "bad-update"


class ForgedRecord(EnvelopeRejected):
    """A record in the payload names another node or device than the envelope's author."""

    reason = "forged"


class MalformedRecord(SyncqError):
    """A record in the log does not have the expected shape (a newer or broken device wrote it)."""


class StoreError(SyncqError):
    """Local storage failed."""


class StoreClosed(StoreError):
    """The store was used after it was closed."""


class StoreBroken(StoreError):
    """The database cannot be used: corrupt, not a syncq database, or read-only."""


class DiskFull(StoreError):
    """A write found no room on the disk: it was rolled back whole (what was saved before it is
    kept), and the same write works once space is freed."""


class LocalProtocolError(SyncqError):
    """This program used an API wrongly (a bug in the caller, not a user mistake)."""


class BlobError(SyncqError):
    """An attachment could not be stored, fetched or saved; the message says why."""


class BlobUnavailable(BlobError, UserError):
    """An attachment is not on this device and could not be fetched (no peer has it, no node)."""
