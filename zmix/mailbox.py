"""Provider mailboxes in SQLite on disk: store, fetch a batch, delete only what was acknowledged.

One database file per provider, in WAL mode with ``synchronous=FULL``: :meth:`Mailbox.store`
returns only after the item is committed, so an acknowledgement sent after it never covers a
message a crash could lose. Fetching never deletes; the client's FETCH_ACK does, so a fetch answer
lost on the way loses nothing and the next fetch returns the same items. Each client has a quota
(a full mailbox refuses new items, it never drops old ones) and items expire after a TTL.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from zmix.wire import ItemKind, MailboxItem

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after deletes
    client BLOB NOT NULL,
    kind INTEGER NOT NULL,
    surb_id BLOB NOT NULL,
    payload BLOB NOT NULL,
    stored_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_client ON items (client, id);
CREATE TABLE IF NOT EXISTS clients (id BLOB PRIMARY KEY, registered_at REAL NOT NULL);
"""


class Mailbox:
    """The mailboxes of one provider's clients."""

    def __init__(self, path: Path, *, quota: int, ttl: float) -> None:
        self.path = path
        self.quota = quota
        self.ttl = ttl
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise RuntimeError(f"{path}: mailbox schema {row[0]}, this zmix reads "
                               f"{SCHEMA_VERSION}")
        self._counts: Counter[str] = Counter()
        self._sizes: dict[bytes, int] = dict(self._db.execute(
            "SELECT client, COUNT(*) FROM items GROUP BY client").fetchall())

    def store(self, client: bytes, kind: ItemKind, surb_id: bytes, payload: bytes,
              now: float) -> int | None:
        """Commit one item to ``client``'s mailbox; return its id, or None if the box is full."""
        if self._sizes.get(client, 0) >= self.quota:
            self._counts["refused_full"] += 1
            return None
        cursor = self._db.execute(
            "INSERT INTO items (client, kind, surb_id, payload, stored_at) VALUES (?,?,?,?,?)",
            (client, int(kind), surb_id, payload, now))
        self._sizes[client] = self._sizes.get(client, 0) + 1
        self._counts["stored"] += 1
        item_id = cursor.lastrowid
        assert item_id is not None
        return item_id

    def fetch(self, client: bytes, limit: int, now: float) -> tuple[list[MailboxItem], int]:
        """Return up to ``limit`` of ``client``'s oldest unexpired items and how many remain."""
        rows = self._db.execute(
            "SELECT id, kind, surb_id, payload FROM items WHERE client=? AND stored_at>=? "
            "ORDER BY id LIMIT ?", (client, now - self.ttl, limit)).fetchall()
        items = [MailboxItem(r[0], ItemKind(r[1]), r[2], r[3]) for r in rows]
        self._counts["fetched"] += len(items)
        remaining = max(0, self._sizes.get(client, 0) - len(items))
        return items, remaining

    def ack(self, client: bytes, item_ids: Sequence[int]) -> int:
        """Delete ``client``'s items among ``item_ids``; return how many were deleted.

        Ids of other clients' items are ignored (and counted).
        """
        if not item_ids:
            return 0
        marks = ",".join("?" * len(item_ids))
        cursor = self._db.execute(f"DELETE FROM items WHERE client=? AND id IN ({marks})",  # noqa: S608 - only placeholders
                                  (client, *item_ids))
        deleted = cursor.rowcount
        self._sizes[client] = max(0, self._sizes.get(client, 0) - deleted)
        self._counts["acked"] += deleted
        self._counts["foreign_ack_ignored"] += len(set(item_ids)) - deleted
        return deleted

    def expire(self, now: float) -> int:
        """Delete every item older than the TTL; return how many."""
        cutoff = now - self.ttl
        victims = self._db.execute("SELECT client, COUNT(*) FROM items WHERE stored_at<? "
                                   "GROUP BY client", (cutoff,)).fetchall()
        if not victims:
            return 0
        self._db.execute("DELETE FROM items WHERE stored_at<?", (cutoff,))
        total = 0
        for client, count in victims:
            self._sizes[client] = max(0, self._sizes.get(client, 0) - count)
            total += count
        self._counts["expired"] += total
        return total

    def count(self, client: bytes) -> int:
        """Return how many items ``client``'s mailbox holds."""
        return self._sizes.get(client, 0)

    def register(self, client: bytes, now: float) -> None:
        """Remember a client admitted at run time (open registration)."""
        self._db.execute("INSERT OR IGNORE INTO clients VALUES (?, ?)", (client, now))

    def registered(self) -> list[bytes]:
        """Return the clients admitted at run time."""
        return [row[0] for row in self._db.execute("SELECT id FROM clients")]

    def statistics(self) -> dict[str, int]:
        """Return stored, refused_full, fetched, acked, expired, foreign_ack_ignored, items."""
        stats = {k: self._counts[k] for k in ("stored", "refused_full", "fetched", "acked",
                                               "expired", "foreign_ack_ignored")}
        stats["items"] = sum(self._sizes.values())
        return stats

    def close(self) -> None:
        """Close the database."""
        self._db.close()
