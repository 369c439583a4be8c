"""What a client must not lose across restarts, in one SQLite file (WAL, synchronous=FULL).

Outgoing messages and the ack state of their fragments (so a restarted client resends what was
never acknowledged), reply packets not yet sent, the keys of the SURBs it handed out (to read
acks and anonymous replies), fragments received but not yet reassembled, finished messages until
they are shown, reply blocks received from anonymous senders, the ids of messages already
delivered (to drop late duplicates) and its loops in flight. docs/client.md lists the tables.

The file holds decrypted mail until it is shown, SURB keys and reply blocks: it and SQLite's side
files (``-wal``, ``-shm``) are readable by their owner only (0600), like a private key; a file
left looser by an older zmix is tightened when it is opened.

Times are the caller's ``now`` (the runtime's monotonic clock); :meth:`ClientStore.rebase` pulls
times from before a clock reset (a reboot) back to the present so that expiry still works.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from zmix.errors import ConfigError

SCHEMA_VERSION = 2  # 2: reply blocks carry their key epoch, replies their expiry
PRIVATE_FILE = 0o600  # the store and its side files: owner only
_SIDE_FILES = ("-wal", "-shm", "-journal")  # what SQLite keeps next to the file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outgoing (message_id BLOB PRIMARY KEY, recipient TEXT NOT NULL,
    fragments INTEGER NOT NULL, failed INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fragments (message_id BLOB NOT NULL, idx INTEGER NOT NULL,
    body BLOB NOT NULL, acked INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, idx));
CREATE TABLE IF NOT EXISTS replies (message_id BLOB PRIMARY KEY, first_hop BLOB NOT NULL,
    packet BLOB NOT NULL, sent INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
    expires REAL NOT NULL DEFAULT 9e999);
CREATE TABLE IF NOT EXISTS surbs (surb_id BLOB PRIMARY KEY, kind INTEGER NOT NULL,
    keys BLOB NOT NULL, message_id BLOB NOT NULL, idx INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS incoming (message_id BLOB NOT NULL, idx INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (message_id, idx));
CREATE TABLE IF NOT EXISTS incoming_meta (message_id BLOB PRIMARY KEY, count INTEGER NOT NULL,
    total INTEGER NOT NULL, sender TEXT, filename TEXT, reply_surbs BLOB NOT NULL,
    first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (message_id BLOB PRIMARY KEY, sender TEXT, filename TEXT,
    data BLOB NOT NULL, received_at REAL NOT NULL, reply_handle BLOB);
CREATE TABLE IF NOT EXISTS reply_blocks (handle BLOB NOT NULL, surb BLOB NOT NULL,
    used INTEGER NOT NULL DEFAULT 0, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS completed (message_id BLOB PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS loops (loop_id BLOB PRIMARY KEY, sent REAL NOT NULL);
"""

# for rebase(): every table's time column
_REBASE = (
    "UPDATE outgoing SET created=?1 WHERE created>?1",
    "UPDATE replies SET created=?1 WHERE created>?1",
    "UPDATE surbs SET created=?1 WHERE created>?1",
    "UPDATE incoming_meta SET first_seen=?1 WHERE first_seen>?1",
    "UPDATE inbox SET received_at=?1 WHERE received_at>?1",
    "UPDATE reply_blocks SET received=?1 WHERE received>?1",
    "UPDATE completed SET at=?1 WHERE at>?1",
    "UPDATE loops SET sent=?1 WHERE sent>?1",
)

_REPLY_EXPIRED = -1  # replies.sent of a reply whose block expired before it left
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
class IncomingMeta:
    """What the fragments of an incoming message received so far say about the whole."""

    count: int
    total: int
    sender: str | None
    filename: str | None
    reply_surbs: bytes


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A finished incoming message."""

    message_id: bytes
    sender: str | None
    filename: str | None
    data: bytes
    received_at: float
    reply_handle: bytes | None


def _make_private(path: str) -> None:
    """Create ``path`` as an owner-only file if it is missing, and tighten it and any side files
    SQLite left next to it to 0600. SQLite creates its side files with the mode of the main file,
    so they stay private from then on."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # an existing file keeps its mode through O_CREAT
    finally:
        os.close(fd)
    for suffix in _SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path + suffix, PRIVATE_FILE)


class ClientStore:
    """The client's SQLite file (``":memory:"`` for tests).

    Raises ConfigError if the file was written by an incompatible version of zmix.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            _make_private(self.path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, SCHEMA_VERSION):
            self._db.close()
            raise ConfigError(self.path, "user_version",
                              f"client store schema {version}, this zmix reads {SCHEMA_VERSION}")
        self._db.executescript(_SCHEMA)
        if version == 1:  # replies gain their expiry (unknown: never); old reply blocks, kept
            # without their key epoch, no longer parse and are counted when met
            self._db.execute("ALTER TABLE replies ADD COLUMN expires REAL NOT NULL "
                             "DEFAULT 9e999")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
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

    def rebase(self, now: float) -> None:
        """Pull every stored time later than ``now`` back to ``now`` (the clock was reset)."""
        with self:
            for sql in _REBASE:
                self._db.execute(sql, (now,))

    def expire(self, short_before: float, long_before: float) -> int:
        """Forget what can no longer be answered; return the number of rows removed.

        ``short_before``: ack SURB keys and loops sent before it (their answers are long overdue).
        ``long_before``: reply SURB keys, received reply blocks, partial incoming messages and the
        ids of completed messages (kept to drop late duplicates) older than it.
        """
        statements = [
            ("DELETE FROM surbs WHERE kind=? AND created<?", (SURB_ACK, short_before)),
            ("DELETE FROM loops WHERE sent<?", (short_before,)),
            ("DELETE FROM surbs WHERE kind=? AND created<?", (SURB_REPLY, long_before)),
            ("DELETE FROM reply_blocks WHERE received<?", (long_before,)),
            ("DELETE FROM incoming WHERE message_id IN (SELECT message_id FROM incoming_meta "
             "WHERE first_seen<?)", (long_before,)),
            ("DELETE FROM incoming_meta WHERE first_seen<?", (long_before,)),
            ("DELETE FROM completed WHERE at<?", (long_before,)),
        ]
        removed = 0
        with self:
            for sql, args in statements:
                removed += self._db.execute(sql, args).rowcount
        return removed

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
        """Return the recipient of outgoing message ``message_id``; KeyError if unknown."""
        row = self._db.execute("SELECT recipient FROM outgoing WHERE message_id=?",
                               (message_id,)).fetchone()
        if row is None:
            raise KeyError(message_id)
        return str(row[0])

    def fragment_body(self, message_id: bytes, index: int) -> bytes | None:
        """Return an unacknowledged fragment's body, or None (acked, failed or unknown)."""
        row = self._db.execute("SELECT body FROM fragments WHERE message_id=? AND idx=? AND "
                               "acked=0", (message_id, index)).fetchone()
        return bytes(row[0]) if row and row[0] else None

    def pending_fragments(self) -> list[tuple[bytes, int, int]]:
        """Return (message id, index, attempts) of unacknowledged fragments of live messages,
        oldest message first."""
        return self._db.execute(
            "SELECT f.message_id, f.idx, f.attempts FROM fragments f JOIN outgoing o "
            "USING (message_id) WHERE f.acked=0 AND o.failed=0 ORDER BY o.created, f.idx"
        ).fetchall()

    def outgoing_progress(self) -> dict[bytes, tuple[int, int, bool]]:
        """Return message id -> (fragments, acked, failed) for every outgoing message."""
        rows = self._db.execute(
            "SELECT o.message_id, o.fragments, COALESCE(SUM(f.acked), 0), o.failed "
            "FROM outgoing o LEFT JOIN fragments f USING (message_id) GROUP BY o.message_id")
        progress = {r[0]: (r[1], r[2], bool(r[3])) for r in rows}
        for message_id, sent in self._db.execute("SELECT message_id, sent FROM replies"):
            progress[message_id] = (1, int(sent == 1), sent == _REPLY_EXPIRED)
        return progress

    def record_attempt(self, message_id: bytes, index: int, attempts: int) -> None:
        """Persist how often a fragment was sent."""
        self._db.execute("UPDATE fragments SET attempts=? WHERE message_id=? AND idx=?",
                         (attempts, message_id, index))

    def mark_acked(self, message_id: bytes, index: int) -> bool:
        """Mark a fragment acknowledged and drop its body; False if it already was acked."""
        cursor = self._db.execute(
            "UPDATE fragments SET acked=1, body=x'' WHERE message_id=? AND idx=? AND acked=0",
            (message_id, index))
        return cursor.rowcount == 1

    def mark_failed(self, message_id: bytes) -> None:
        """Give up on a message and drop the bodies of its unacknowledged fragments."""
        with self:
            self._db.execute("UPDATE outgoing SET failed=1 WHERE message_id=?", (message_id,))
            self._db.execute("UPDATE fragments SET body=x'' WHERE message_id=?", (message_id,))

    def add_reply(self, message_id: bytes, first_hop: bytes, packet: bytes, now: float,
                  expires: float = math.inf) -> None:
        """Remember a reply packet until it is sent; ``expires`` is when its reply block's keys
        are erased (unix seconds)."""
        self._db.execute("INSERT INTO replies VALUES (?,?,?,0,?,?)",
                         (message_id, first_hop, packet, now, expires))

    def pending_replies(self) -> list[tuple[bytes, bytes, bytes, float]]:
        """Return (message id, first hop, packet, expiry) of reply packets not yet sent, oldest
        first."""
        return self._db.execute("SELECT message_id, first_hop, packet, expires FROM replies "
                                "WHERE sent=0 ORDER BY rowid").fetchall()

    def reply_expired(self, message_id: bytes) -> None:
        """Mark a reply failed: its reply block expired before it could be sent."""
        self._db.execute("UPDATE replies SET sent=?, packet=x'' WHERE message_id=?",
                         (_REPLY_EXPIRED, message_id))

    def reply_sent(self, message_id: bytes) -> None:
        """Mark a reply packet sent (a reply has no ack: once out, it is done)."""
        self._db.execute("UPDATE replies SET sent=1, packet=x'' WHERE message_id=?",
                         (message_id,))

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
        return StoredSurb(row[0], bytes(row[1]), bytes(row[2]), row[3])

    def surb_count(self) -> int:
        """Return how many SURB keys are kept."""
        return int(self._db.execute("SELECT COUNT(*) FROM surbs").fetchone()[0])

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

    # ------------------------------------------------------------------ incoming

    def is_completed(self, message_id: bytes) -> bool:
        """True if ``message_id`` was already reassembled."""
        return self._db.execute("SELECT 1 FROM completed WHERE message_id=?",
                                (message_id,)).fetchone() is not None

    def meta(self, message_id: bytes) -> IncomingMeta | None:
        """Return what is known about incoming message ``message_id``, or None."""
        row = self._db.execute("SELECT count, total, sender, filename, reply_surbs FROM "
                               "incoming_meta WHERE message_id=?", (message_id,)).fetchone()
        return None if row is None else IncomingMeta(row[0], row[1], row[2], row[3],
                                                     bytes(row[4]))

    def start_incoming(self, message_id: bytes, meta: IncomingMeta, now: float) -> None:
        """Record the first fragment's view of a new incoming message."""
        self._db.execute("INSERT INTO incoming_meta VALUES (?,?,?,?,?,?,?)",
                         (message_id, meta.count, meta.total, meta.sender, meta.filename,
                          meta.reply_surbs, now))

    def set_first_fragment_meta(self, message_id: bytes, filename: str | None,
                                reply_surbs: bytes) -> None:
        """Record what only fragment 0 carries: the file name and the reply SURBs."""
        self._db.execute("UPDATE incoming_meta SET filename=?, reply_surbs=? WHERE message_id=?",
                         (filename, reply_surbs, message_id))

    def add_fragment(self, message_id: bytes, index: int, data: bytes) -> bool:
        """Store an incoming fragment; return False if it was already there."""
        cursor = self._db.execute("INSERT OR IGNORE INTO incoming VALUES (?,?,?)",
                                  (message_id, index, data))
        return cursor.rowcount == 1

    def fragment_count(self, message_id: bytes) -> int:
        """Return how many fragments of ``message_id`` are stored."""
        row = self._db.execute("SELECT COUNT(*) FROM incoming WHERE message_id=?",
                               (message_id,)).fetchone()
        return int(row[0])

    def assemble(self, message_id: bytes) -> bytes:
        """Return the stored fragments of ``message_id`` joined in index order."""
        rows = self._db.execute("SELECT data FROM incoming WHERE message_id=? ORDER BY idx",
                                (message_id,))
        return b"".join(r[0] for r in rows)

    def complete(self, entry: InboxEntry, reply_surbs: Iterable[bytes]) -> None:
        """Move a reassembled message into the inbox and drop its fragments."""
        mid = entry.message_id
        with self:
            self._db.execute("INSERT INTO inbox VALUES (?,?,?,?,?,?)",
                             (mid, entry.sender, entry.filename, entry.data, entry.received_at,
                              entry.reply_handle))
            self._db.executemany("INSERT INTO reply_blocks (handle, surb, received) "
                                 "VALUES (?,?,?)",
                                 [(mid, s, entry.received_at) for s in reply_surbs])
            self._db.execute("INSERT OR IGNORE INTO completed VALUES (?,?)",
                             (mid, entry.received_at))
            self._db.execute("DELETE FROM incoming WHERE message_id=?", (mid,))
            self._db.execute("DELETE FROM incoming_meta WHERE message_id=?", (mid,))

    def discard_incoming(self, message_id: bytes) -> None:
        """Drop a partial incoming message whose fragments do not add up."""
        with self:
            self._db.execute("DELETE FROM incoming WHERE message_id=?", (message_id,))
            self._db.execute("DELETE FROM incoming_meta WHERE message_id=?", (message_id,))

    def inbox(self) -> list[InboxEntry]:
        """Return finished messages not yet marked delivered, oldest first."""
        rows = self._db.execute("SELECT message_id, sender, filename, data, received_at, "
                                "reply_handle FROM inbox ORDER BY rowid")
        return [InboxEntry(bytes(r[0]), r[1], r[2], bytes(r[3]), r[4],
                           None if r[5] is None else bytes(r[5])) for r in rows]

    def inbox_entry(self, message_id: bytes) -> InboxEntry | None:
        """Return the finished, undelivered message ``message_id``, or None."""
        r = self._db.execute("SELECT message_id, sender, filename, data, received_at, "
                             "reply_handle FROM inbox WHERE message_id=?", (message_id,)
                             ).fetchone()
        return None if r is None else InboxEntry(bytes(r[0]), r[1], r[2], bytes(r[3]), r[4],
                                                 None if r[5] is None else bytes(r[5]))

    def inbox_count(self) -> int:
        """Return how many finished messages are not yet marked delivered."""
        return int(self._db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0])

    def mark_delivered(self, message_id: bytes) -> None:
        """Drop a shown message's data from the inbox (its id stays, to drop duplicates)."""
        self._db.execute("DELETE FROM inbox WHERE message_id=?", (message_id,))

    def take_reply_block(self, handle: bytes) -> bytes | None:
        """Return an unused reply SURB for ``handle`` and mark it used, or None."""
        row = self._db.execute("SELECT rowid, surb FROM reply_blocks WHERE handle=? AND used=0 "
                               "LIMIT 1", (handle,)).fetchone()
        if row is None:
            return None
        self._db.execute("UPDATE reply_blocks SET used=1, surb=x'' WHERE rowid=?", (row[0],))
        return bytes(row[1])
