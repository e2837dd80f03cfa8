"""Who may write what: every record names the node or device that wrote it, and that must be
the envelope's author (PROTOCOL.md, "CRDT schema").

Node ids and device ids are one thing, the hex of the device's Ed25519 key, which is also the
envelope's ``author`` field: so a member can sign only records that name itself. The rule is on
the record's own fields, not its map or key, because an update that overwrites an existing key
names neither (``syncq.yjs_read``). Per record, the field that names its writer:

=========  ==============================  ======================================
map        field                           rule
=========  ==============================  ======================================
prompts    ``author``                      the author
cancels    ``by``                          the author
retries    ``by``                          the author
claims     ``node``                        the author
results    ``observer`` when set, else     the author; a result with an observer
           ``node``                        (a lease expiry) is ``failed``
nodes      ``node`` (and the key, when     the author
           the update names it)
devices    ``added_by``                    the author
=========  ==============================  ======================================

A record that names no writer at all is refused too: every record we write names one, so such
a value can only be a forgery of a record whose writer field was left out. Values that are not
JSON objects are not records (every reader skips them as malformed) and are let through.
"""

from __future__ import annotations

import json

from syncq.errors import BadUpdate, ForgedRecord
from syncq.yjs_read import inserted_values

_WRITER_FIELDS = ("author", "by", "node", "added_by")  # the one each record type carries


def check_update(update: bytes, author: str) -> None:
    """Check every record ``update`` inserts against the envelope's ``author`` (hex).

    Raises ``BadUpdate`` if the update cannot be read, ``ForgedRecord`` if a record names
    another writer than ``author``.
    """
    for inserted in inserted_values(update):
        if not isinstance(inserted.value, str) or not inserted.value.startswith("{"):
            continue  # no record: ``records.decode`` refuses it by the same rule
        try:
            record = json.loads(inserted.value)
        except ValueError:
            continue  # not a record: readers skip it as malformed
        except RecursionError:
            # Nested past the interpreter's stack: refused, not let through as "no record", since
            # whether json.loads manages it depends on how deep the reader's stack already is.
            raise BadUpdate("a record nests too deep to read") from None
        if not isinstance(record, dict):
            continue
        check_record(record, author)
        if inserted.root == "nodes" and inserted.key != author:
            raise ForgedRecord(f"presence of node {_short(inserted.key)} written by {_short(author)}")


def check_record(record: dict[str, object], author: str) -> None:
    """Check one decoded record against ``author``. Raises ``ForgedRecord``."""
    observer = record.get("observer")
    if observer:
        # A lease expiry: the observer writes a failed run of another node's claim.
        if observer != author or record.get("status") != "failed":
            raise ForgedRecord(f"an expiry seen by {_short(observer)} written by {_short(author)}")
        return
    named = [record[f] for f in _WRITER_FIELDS if f in record]
    if not named:
        raise ForgedRecord(f"a record naming no writer, written by {_short(author)}")
    for writer in named:
        if writer != author:
            raise ForgedRecord(f"a record naming {_short(writer)} written by {_short(author)}")


def _short(value: object) -> str:
    return repr(value)[:20]
