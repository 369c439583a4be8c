"""What a client must not lose across restarts, in one SQLite file (WAL, synchronous=FULL).

Outgoing messages and the ack state of their fragments (so a restarted client resends what was
never acknowledged), the keys of the SURBs it handed out (to read acks and anonymous replies),
fragments received but not yet reassembled, finished messages until they are shown, reply blocks
received from anonymous senders, the ids of messages already delivered (to drop late duplicates)
and its loops in flight.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outgoing (message_id BLOB PRIMARY KEY, recipient TEXT NOT NULL,
    fragments INTEGER NOT NULL, failed INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fragments (message_id BLOB NOT NULL, idx INTEGER NOT NULL,
    body BLOB NOT NULL, acked INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, idx));
CREATE TABLE IF NOT EXISTS surbs (surb_id BLOB PRIMARY KEY, kind INTEGER NOT NULL,
    keys BLOB NOT NULL, message_id BLOB NOT NULL, idx INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS incoming (message_id BLOB NOT NULL, idx INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (message_id, idx));
CREATE TABLE IF NOT EXISTS incoming_meta (message_id BLOB PRIMARY KEY, count INTEGER NOT NULL,
    total INTEGER NOT NULL, sender TEXT, filename TEXT, reply_surbs BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (message_id BLOB PRIMARY KEY, sender TEXT, filename TEXT,
    data BLOB NOT NULL, received_at REAL NOT NULL, reply_handle BLOB,
    delivered INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS reply_blocks (handle BLOB NOT NULL, surb BLOB NOT NULL,
    used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS completed (message_id BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS loops (loop_id BLOB PRIMARY KEY, sent REAL NOT NULL);
"""

SURB_ACK = 1  # answers say "fragment stored"
SURB_REPLY = 2  # answers are anonymous replies to a message we sent


@dataclass(frozen=True, slots=True)
class StoredSurb:
    """A SURB we handed out: what it is for and the keys that open its answer."""

    kind: int
    keys: bytes
    message_id: bytes
    index: int


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A finished incoming message."""

    message_id: bytes
    sender: str | None
    filename: str | None
    data: bytes
    received_at: float
    reply_handle: bytes | None


class ClientStore:
    """The client's SQLite file (``":memory:"`` for tests)."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._depth = 0

    def __enter__(self) -> ClientStore:
        """Group the following changes in one transaction (one fsync); nests."""
        if self._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # ------------------------------------------------------------------ outgoing

    def add_outgoing(self, message_id: bytes, recipient: str, bodies: list[bytes],
                     now: float) -> None:
        """Remember a new outgoing message and its fragment bodies."""
        with self:
            self._db.execute("INSERT INTO outgoing VALUES (?,?,?,0,?)",
                             (message_id, recipient, len(bodies), now))
            self._db.executemany("INSERT INTO fragments (message_id, idx, body) VALUES (?,?,?)",
                                 [(message_id, i, b) for i, b in enumerate(bodies)])

    def recipient_of(self, message_id: bytes) -> str:
        """Return the recipient of outgoing message ``message_id``."""
        row = self._db.execute("SELECT recipient FROM outgoing WHERE message_id=?",
                               (message_id,)).fetchone()
        return str(row[0])

    def fragment_body(self, message_id: bytes, index: int) -> bytes | None:
        """Return a fragment's body, or None."""
        row = self._db.execute("SELECT body FROM fragments WHERE message_id=? AND idx=?",
                               (message_id, index)).fetchone()
        return row[0] if row else None

    def pending_fragments(self) -> list[tuple[bytes, int, int]]:
        """Return (message id, index, attempts) of unacknowledged fragments of live messages."""
        return self._db.execute(
            "SELECT f.message_id, f.idx, f.attempts FROM fragments f JOIN outgoing o "
            "USING (message_id) WHERE f.acked=0 AND o.failed=0 ORDER BY o.created, f.idx"
        ).fetchall()

    def outgoing_progress(self) -> dict[bytes, tuple[int, int, bool]]:
        """Return message id -> (fragments, acked, failed) for every outgoing message."""
        rows = self._db.execute(
            "SELECT o.message_id, o.fragments, COALESCE(SUM(f.acked), 0), o.failed "
            "FROM outgoing o LEFT JOIN fragments f USING (message_id) GROUP BY o.message_id")
        return {r[0]: (r[1], r[2], bool(r[3])) for r in rows}

    def record_attempt(self, message_id: bytes, index: int, attempts: int) -> None:
        """Persist how often a fragment was sent."""
        self._db.execute("UPDATE fragments SET attempts=? WHERE message_id=? AND idx=?",
                         (attempts, message_id, index))

    def mark_acked(self, message_id: bytes, index: int) -> bool:
        """Mark a fragment acknowledged; return False if it already was (a duplicate ack)."""
        cursor = self._db.execute(
            "UPDATE fragments SET acked=1, body=x'' WHERE message_id=? AND idx=? AND acked=0",
            (message_id, index))
        return cursor.rowcount == 1

    def mark_failed(self, message_id: bytes) -> None:
        """Give up on a message."""
        self._db.execute("UPDATE outgoing SET failed=1 WHERE message_id=?", (message_id,))

    # ------------------------------------------------------------------ SURBs and loops

    def add_surb(self, surb_id: bytes, surb: StoredSurb, now: float) -> None:
        """Remember a SURB we handed out."""
        self._db.execute("INSERT INTO surbs VALUES (?,?,?,?,?,?)",
                         (surb_id, surb.kind, surb.keys, surb.message_id, surb.index, now))

    def take_surb(self, surb_id: bytes) -> StoredSurb | None:
        """Return and forget the SURB ``surb_id`` (single use), or None."""
        row = self._db.execute("SELECT kind, keys, message_id, idx FROM surbs WHERE surb_id=?",
                               (surb_id,)).fetchone()
        if row is None:
            return None
        self._db.execute("DELETE FROM surbs WHERE surb_id=?", (surb_id,))
        return StoredSurb(row[0], row[1], row[2], row[3])

    def add_loop(self, loop_id: bytes, now: float) -> None:
        """Remember a loop in flight."""
        self._db.execute("INSERT INTO loops VALUES (?,?)", (loop_id, now))

    def take_loop(self, loop_id: bytes) -> float | None:
        """Return when loop ``loop_id`` was sent and forget it, or None if unknown."""
        row = self._db.execute("SELECT sent FROM loops WHERE loop_id=?", (loop_id,)).fetchone()
        if row is None:
            return None
        self._db.execute("DELETE FROM loops WHERE loop_id=?", (loop_id,))
        return float(row[0])

    def forget_old(self, before: float) -> None:
        """Drop SURB keys and loops older than ``before`` (their answers will not come)."""
        self._db.execute("DELETE FROM surbs WHERE created<? AND kind=?", (before, SURB_ACK))
        self._db.execute("DELETE FROM loops WHERE sent<?", (before,))

    # ------------------------------------------------------------------ incoming

    def is_completed(self, message_id: bytes) -> bool:
        """True if ``message_id`` was already reassembled."""
        return self._db.execute("SELECT 1 FROM completed WHERE message_id=?",
                                (message_id,)).fetchone() is not None

    def add_fragment(self, message_id: bytes, index: int, data: bytes) -> bool:
        """Store an incoming fragment; return False if it was already there."""
        cursor = self._db.execute("INSERT OR IGNORE INTO incoming VALUES (?,?,?)",
                                  (message_id, index, data))
        return cursor.rowcount == 1

    def set_meta(self, message_id: bytes, count: int, total: int, sender: str | None,
                 filename: str | None, reply_surbs: bytes) -> None:
        """Store what fragment 0 (or any fragment) says about the whole message."""
        self._db.execute(
            "INSERT INTO incoming_meta VALUES (?,?,?,?,?,?) ON CONFLICT(message_id) DO UPDATE "
            "SET filename=COALESCE(excluded.filename, filename), reply_surbs=CASE WHEN "
            "length(excluded.reply_surbs)>0 THEN excluded.reply_surbs ELSE reply_surbs END",
            (message_id, count, total, sender, filename, reply_surbs))

    def fragment_count(self, message_id: bytes) -> int:
        """Return how many fragments of ``message_id`` are stored."""
        row = self._db.execute("SELECT COUNT(*) FROM incoming WHERE message_id=?",
                               (message_id,)).fetchone()
        return int(row[0])

    def meta(self, message_id: bytes) -> tuple[int, int, str | None, str | None, bytes] | None:
        """Return (count, total, sender, filename, reply SURBs) of an incoming message."""
        row = self._db.execute("SELECT count, total, sender, filename, reply_surbs FROM "
                               "incoming_meta WHERE message_id=?", (message_id,)).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    def assemble(self, message_id: bytes) -> bytes:
        """Return the stored fragments of ``message_id`` joined in order."""
        rows = self._db.execute("SELECT data FROM incoming WHERE message_id=? ORDER BY idx",
                                (message_id,))
        return b"".join(r[0] for r in rows)

    def complete(self, entry: InboxEntry, reply_surbs: Iterable[bytes]) -> None:
        """Move a reassembled message into the inbox and drop its fragments."""
        self._db.execute("INSERT INTO inbox VALUES (?,?,?,?,?,?,0)",
                         (entry.message_id, entry.sender, entry.filename, entry.data,
                          entry.received_at, entry.reply_handle))
        self._db.executemany("INSERT INTO reply_blocks (handle, surb) VALUES (?,?)",
                             [(entry.message_id, s) for s in reply_surbs])
        self._db.execute("INSERT OR IGNORE INTO completed VALUES (?)", (entry.message_id,))
        self._db.execute("DELETE FROM incoming WHERE message_id=?", (entry.message_id,))
        self._db.execute("DELETE FROM incoming_meta WHERE message_id=?", (entry.message_id,))

    def inbox(self) -> list[InboxEntry]:
        """Return finished messages not yet marked delivered, oldest first."""
        rows = self._db.execute("SELECT message_id, sender, filename, data, received_at, "
                                "reply_handle FROM inbox WHERE delivered=0 ORDER BY rowid")
        return [InboxEntry(*r) for r in rows]

    def mark_delivered(self, message_id: bytes) -> None:
        """Drop a shown message's data from the inbox (its id stays, to drop duplicates)."""
        self._db.execute("DELETE FROM inbox WHERE message_id=?", (message_id,))

    def take_reply_block(self, handle: bytes) -> bytes | None:
        """Return an unused reply SURB for ``handle`` and mark it used, or None."""
        row = self._db.execute("SELECT rowid, surb FROM reply_blocks WHERE handle=? AND used=0 "
                               "LIMIT 1", (handle,)).fetchone()
        if row is None:
            return None
        self._db.execute("UPDATE reply_blocks SET used=1 WHERE rowid=?", (row[0],))
        return bytes(row[1])
