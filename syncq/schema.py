"""The tables of ``syncq.db`` and the steps that upgrade an older database in place.

``SqliteStore`` creates a new database at ``SCHEMA_VERSION`` and runs ``upgrade`` on every
open: each step is one ``BEGIN IMMEDIATE`` transaction that re-reads ``user_version`` inside it,
so two processes opening an old home at once upgrade it once.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 5

_VIEW = """
-- The local view (syncq.view): each prompt's records sealed on their own, so that reading a
-- few prompts need not load the Doc. A cache of the Doc: meta "view.state" says what it covers.
CREATE TABLE IF NOT EXISTS view (
    id     TEXT PRIMARY KEY,             -- the prompt id (its time and randomness: no content)
    status BLOB NOT NULL,                -- a keyed tag of its status (syncq.view)
    data   BLOB NOT NULL                 -- its records, sealed with a local key
);
CREATE INDEX IF NOT EXISTS view_status ON view (status, id);
-- How many rows have each status tag, kept by triggers: `syncq status` reads a few rows, not
-- an index of every prompt.
CREATE TABLE IF NOT EXISTS view_counts (
    status BLOB PRIMARY KEY,
    n      INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS view_added AFTER INSERT ON view BEGIN
    INSERT INTO view_counts (status, n) VALUES (new.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS view_removed AFTER DELETE ON view BEGIN
    UPDATE view_counts SET n = n - 1 WHERE status = old.status;
END;
CREATE TRIGGER IF NOT EXISTS view_moved AFTER UPDATE OF status ON view
    WHEN old.status != new.status BEGIN
    UPDATE view_counts SET n = n - 1 WHERE status = old.status;
    INSERT INTO view_counts (status, n) VALUES (new.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
"""

_SNAPSHOTS = """
-- Snapshots held (syncq.snapshots): an antichain, none covering all another covers. What they
-- cover is the floor of this device's HAVE: envelopes at or below it need not be stored.
CREATE TABLE IF NOT EXISTS snapshots (
    digest    BLOB    PRIMARY KEY,       -- SHA-256 of data
    author    BLOB    NOT NULL,
    count     INTEGER NOT NULL,          -- how many envelopes it covers
    head      BLOB    NOT NULL,          -- its first bytes: author, epoch, vector (in the clear)
    data      BLOB,                      -- the snapshot as signed; NULL: in snapshots/<digest hex>
    stored_at INTEGER NOT NULL           -- ms since the epoch
);
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS envelopes (
    pos    INTEGER PRIMARY KEY,          -- arrival order on this device
    author BLOB    NOT NULL,             -- 32-byte Ed25519 public key
    seq    INTEGER NOT NULL,             -- per author, gapless from 1
    data   BLOB    NOT NULL,             -- the sealed envelope, exactly as signed
    UNIQUE (author, seq)
);
-- The device list and the key epochs (envelope kinds 3 and 4) are read whole on open: few rows
-- among many, found through this partial index without a scan.
CREATE INDEX IF NOT EXISTS envelopes_control ON envelopes (author, seq)
    WHERE substr(data, 4, 1) IN (x'03', x'04');
CREATE TABLE IF NOT EXISTS checkpoint (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    vv     TEXT    NOT NULL,             -- JSON {author hex: seq} covered by the state
    data   BLOB    NOT NULL              -- the Doc state, sealed with a local key
);
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    url       TEXT PRIMARY KEY,          -- ws://host:port, or "inbound:<node id>"
    source    TEXT NOT NULL,             -- config | invite | mdns | inbound
    node_id   TEXT,
    name      TEXT,
    connected INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER,                   -- ms since the epoch
    behind    INTEGER,                   -- envelopes we hold that the peer lacks
    error     TEXT
);
CREATE TABLE IF NOT EXISTS rejections (
    reason     TEXT PRIMARY KEY,         -- malformed, bad-tag, forged ... (PROTOCOL.md)
    count      INTEGER NOT NULL,
    first_seen INTEGER,                  -- ms since the epoch (NULL: counted before schema 2)
    last_seen  INTEGER,
    detail     TEXT NOT NULL             -- the last one's message, escaped and truncated
);
CREATE TABLE IF NOT EXISTS quarantine (
    author BLOB    NOT NULL,             -- an envelope of ``envelopes`` that is never applied
    seq    INTEGER NOT NULL,
    reason TEXT    NOT NULL,             -- why; "unknown-epoch" is held, not given up
    PRIMARY KEY (author, seq)
);
"""
    + _VIEW
    + _SNAPSHOTS
)

# Schema 1 kept one row per rejection: a peer sending garbage grew the table without bound.
_TO_2 = """
ALTER TABLE rejections RENAME TO rejections_1;
CREATE TABLE rejections (
    reason     TEXT PRIMARY KEY,
    count      INTEGER NOT NULL,
    first_seen INTEGER,
    last_seen  INTEGER,
    detail     TEXT NOT NULL
);
INSERT INTO rejections (reason, count, detail)
    SELECT reason, COUNT(*), '' FROM rejections_1 GROUP BY reason;
DROP TABLE rejections_1;
CREATE TABLE IF NOT EXISTS quarantine (
    author BLOB    NOT NULL,
    seq    INTEGER NOT NULL,
    reason TEXT    NOT NULL,
    PRIMARY KEY (author, seq)
);
"""

_TO_3 = """
CREATE INDEX IF NOT EXISTS envelopes_control ON envelopes (author, seq)
    WHERE substr(data, 4, 1) IN (x'03', x'04');
"""

_TO_4 = _VIEW

_TO_5 = _SNAPSHOTS

_STEPS = {1: _TO_2, 2: _TO_3, 3: _TO_4, 4: _TO_5}  # from version: the statements that bring it to version + 1


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring the database up to ``SCHEMA_VERSION``, step by step. Raises ``sqlite3.Error``."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                conn.execute("COMMIT")
                return
            for statement in _statements(_STEPS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    """The statements of ``script``, split where SQLite says one ends (a trigger's body holds
    semicolons of its own)."""
    found, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                found.append(pending)
            pending = ""
    return found
