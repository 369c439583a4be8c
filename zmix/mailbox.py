"""Provider mailboxes in SQLite on disk: store, fetch a batch, delete only what was acknowledged.

One database file per provider, in WAL mode with ``synchronous=FULL``: :meth:`Mailbox.store`
returns only after the item is committed, so an acknowledgement sent after it never covers a
message a crash could lose. Fetching never deletes; the acknowledgement in the client's next
FETCH does, so a fetch answer lost on the way loses nothing and the next fetch returns the same
items. Each client has a quota (a full mailbox refuses new items, it never drops old ones) and
items expire after a TTL.

The same file remembers the clients a provider admitted at run time (open registration, see
docs/protocol.md) with their keys, so they are admitted again after a restart.

Item ids come from ``AUTOINCREMENT``, so an id is never handed out twice, even after the newest
items were deleted: a client's late acknowledgement can never delete a newer item by mistake.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmix.errors import ConfigError, LocalMisuse, ZmixError
from zmix.wire import ItemKind, MailboxItem

SCHEMA_VERSION = 3
ID_BYTES = 16  # client ids and SURB ids
_MAX_ROW_ID = 2**63 - 1  # SQLite's largest integer; a larger id cannot name an item
_ACK_CHUNK = 500  # ids per statement, well under SQLite's host-parameter limit

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE items (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        client BLOB NOT NULL,
        kind INTEGER NOT NULL,
        surb_id BLOB NOT NULL,
        payload BLOB NOT NULL,
        stored_at REAL NOT NULL)""",
    """CREATE TABLE clients (
        id BLOB PRIMARY KEY,
        name TEXT,
        curve_public BLOB,
        public_key BLOB,
        registered_at REAL)""",
)
# Ensured at every open, so a file keeps up with the queries of this version.
_INDEXES = (
    # a client's items in order: fetch
    "CREATE INDEX IF NOT EXISTS items_by_client ON items (client, id)",
    # everyone's expired items: expire
    "CREATE INDEX IF NOT EXISTS items_by_age ON items (stored_at)",
    # one client's expired items: fetch's remaining count without reading the whole mailbox
    "CREATE INDEX IF NOT EXISTS items_by_client_age ON items (client, stored_at)",
    # one name, one key per registered client
    "CREATE UNIQUE INDEX IF NOT EXISTS clients_by_name ON clients (name)",
    "CREATE UNIQUE INDEX IF NOT EXISTS clients_by_key ON clients (curve_public)",
)
# Version 1 kept a registration time per client and had no index for expiry.
_FROM_V1 = (
    "CREATE TABLE clients_v2 (id BLOB PRIMARY KEY)",
    "INSERT INTO clients_v2 SELECT id FROM clients",
    "DROP TABLE clients",
    "ALTER TABLE clients_v2 RENAME TO clients",
)
# Version 2 kept only the ids of registered clients; version 3 keeps their names and keys too.
# Rows from version 2 keep NULLs there: the runtime of that version never registered anyone (only
# its tests did), and a keyless row is never handed to a newcomer of the same name.
_FROM_V2 = (
    "ALTER TABLE clients ADD COLUMN name TEXT",
    "ALTER TABLE clients ADD COLUMN curve_public BLOB",
    "ALTER TABLE clients ADD COLUMN public_key BLOB",
    "ALTER TABLE clients ADD COLUMN registered_at REAL",
)

NewItem = tuple[bytes, ItemKind, bytes, bytes]
"""``(client, kind, surb_id, payload)``: one item for :meth:`Mailbox.store_many`."""

_COUNTERS = ("stored", "refused_full", "fetched", "acked", "expired", "foreign_ack_ignored",
             "ack_unknown")


@dataclass(frozen=True, slots=True)
class Registration:
    """A client a provider admitted at run time: its id, name and public keys."""

    id: bytes
    name: str
    curve_public: bytes
    public_key: bytes


class StorageError(ZmixError):
    """SQLite could not commit (disk full, I/O error): nothing of the operation was kept."""


class Mailbox:
    """The mailboxes of one provider's clients, in one SQLite file."""

    def __init__(self, path: Path, *, quota: int, ttl: float) -> None:
        """Open (or create) the database at ``path``.

        Raises ConfigError if the file has a schema this version cannot read, LocalMisuse on a
        quota below 1 or a TTL that is not positive.
        """
        if quota < 1 or not ttl > 0:
            raise LocalMisuse(f"mailbox quota must be >= 1 and ttl > 0, got {quota}, {ttl}")
        self.path = path
        self.quota = quota
        self.ttl = ttl
        # isolation_level=None: this class issues BEGIN/COMMIT itself, so a store is on disk when
        # it returns and not whenever the sqlite3 module decides to commit.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._open_schema()
        except BaseException:
            self._db.close()
            raise
        self._counts: Counter[str] = Counter()
        self._sizes: dict[bytes, int] = {
            bytes(client): int(n) for client, n in
            self._db.execute("SELECT client, COUNT(*) FROM items GROUP BY client")}

    def _open_schema(self) -> None:
        with self._transaction():
            has_meta = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            if not has_meta:
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            else:
                self._upgrade()
            for statement in _INDEXES:
                self._db.execute(statement)

    def _upgrade(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        version = row[0] if row else None
        if version in (1, 2):
            for statement in (_FROM_V1 if version == 1 else ()) + _FROM_V2:
                self._db.execute(statement)
            self._db.execute("UPDATE meta SET value=? WHERE key='schema'", (SCHEMA_VERSION,))
        elif version != SCHEMA_VERSION:
            raise ConfigError(str(self.path), "meta.schema",
                              f"mailbox schema {version}, this zmix reads 1..{SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Run the block in one write transaction; StorageError if SQLite cannot commit it."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise StorageError(f"{self.path}: {exc}") from exc
            raise

    def store(self, client: bytes, kind: ItemKind, surb_id: bytes, payload: bytes,
              now: float) -> int | None:
        """Commit one item to ``client``'s mailbox and return its id; None if the box is full.

        Raises StorageError if the commit failed (nothing was stored), LocalMisuse on an id that
        is not 16 bytes.
        """
        return self.store_many([(client, kind, surb_id, payload)], now)[0]

    def store_many(self, items: Sequence[NewItem], now: float) -> list[int | None]:
        """Commit several items in one transaction (one disk sync) and return their ids in order.

        An item whose client's mailbox is full gets None; the others are stored. Raises
        StorageError if the commit failed (none was stored), LocalMisuse on a malformed item.
        """
        for client, kind, surb_id, _ in items:
            _check_item(client, kind, surb_id)
        wanted = Counter(item[0] for item in items)
        if any(self.count(c) + n > self.quota for c, n in wanted.items()):
            self.expire(now)  # expired items still on disk must not hold a mailbox full
        ids: list[int | None] = []
        added: Counter[bytes] = Counter()
        with self._transaction():
            for client, kind, surb_id, payload in items:
                if self.count(client) + added[client] >= self.quota:
                    ids.append(None)
                    continue
                ids.append(self._insert(client, kind, surb_id, payload, now))
                added[client] += 1
        for client, n in added.items():  # only after the commit succeeded
            self._adjust(client, n)
        self._counts["stored"] += sum(added.values())
        self._counts["refused_full"] += len(ids) - sum(added.values())
        return ids

    def _insert(self, client: bytes, kind: ItemKind, surb_id: bytes, payload: bytes,
                now: float) -> int:
        cursor = self._db.execute(
            "INSERT INTO items (client, kind, surb_id, payload, stored_at) VALUES (?,?,?,?,?)",
            (client, int(kind), surb_id, payload, now))
        if cursor.lastrowid is None:  # pragma: no cover - an INSERT always sets it
            raise StorageError(f"{self.path}: no row id after INSERT")
        return cursor.lastrowid

    def fetch(self, client: bytes, limit: int, now: float) -> tuple[list[MailboxItem], int]:
        """Return up to ``limit`` of ``client``'s oldest unexpired items and how many follow them.

        Nothing is deleted: the same items come back until they are acknowledged. LocalMisuse if
        ``limit`` is negative.
        """
        if limit < 0:
            raise LocalMisuse(f"fetch limit must be >= 0, got {limit}")
        cutoff = now - self.ttl
        rows = self._db.execute(
            # Walk the client's items in id order and stop after ``limit``: the planner would
            # otherwise pick the age index and sort the whole mailbox on every fetch.
            "SELECT id, kind, surb_id, payload FROM items INDEXED BY items_by_client "
            "WHERE client=? AND stored_at>=? ORDER BY id LIMIT ?",
            (client, cutoff, limit)).fetchall()
        items = [MailboxItem(r[0], ItemKind(r[1]), r[2], r[3]) for r in rows]
        # The items returned are the oldest unexpired ones, so the unexpired ones after them are
        # all held items minus the expired minus those; counting only the expired ones keeps this
        # cheap in a mailbox of thousands (expire() normally leaves none).
        (expired,) = self._db.execute("SELECT COUNT(*) FROM items WHERE client=? AND stored_at<?",
                                      (client, cutoff)).fetchone()
        self._counts["fetched"] += len(items)
        return items, max(0, self.count(client) - int(expired) - len(items))

    def ack(self, client: bytes, item_ids: Sequence[int]) -> int:
        """Delete ``client``'s items among ``item_ids`` and return how many were deleted.

        Ids of other clients' items are left alone and counted (``foreign_ack_ignored``); ids of
        no item (already deleted or expired: a repeated ack) are counted as ``ack_unknown``.
        Raises StorageError if the deletion could not be committed (nothing was deleted).
        """
        unique = set(item_ids)
        valid = sorted(i for i in unique if 0 < i <= _MAX_ROW_ID)
        deleted = foreign = 0
        if valid:
            with self._transaction():
                for start in range(0, len(valid), _ACK_CHUNK):
                    chunk = valid[start:start + _ACK_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    (others,) = self._db.execute(
                        f"SELECT COUNT(*) FROM items WHERE client!=? AND id IN ({marks})",  # noqa: S608 - placeholders only
                        (client, *chunk)).fetchone()
                    cursor = self._db.execute(
                        f"DELETE FROM items WHERE client=? AND id IN ({marks})",  # noqa: S608 - placeholders only
                        (client, *chunk))
                    foreign += others
                    deleted += cursor.rowcount
        self._adjust(client, -deleted)
        self._counts["acked"] += deleted
        self._counts["foreign_ack_ignored"] += foreign
        self._counts["ack_unknown"] += len(unique) - deleted - foreign
        return deleted

    def expire(self, now: float) -> int:
        """Delete every item stored more than ``ttl`` seconds before ``now``; return how many.

        Raises StorageError if the deletion could not be committed.
        """
        cutoff = now - self.ttl
        # The cheap indexed probe keeps the common case (nothing to expire) free of a write.
        if self._db.execute("SELECT 1 FROM items WHERE stored_at<? LIMIT 1",
                            (cutoff,)).fetchone() is None:
            return 0
        with self._transaction():
            victims = self._db.execute("SELECT client, COUNT(*) FROM items WHERE stored_at<? "
                                       "GROUP BY client", (cutoff,)).fetchall()
            self._db.execute("DELETE FROM items WHERE stored_at<?", (cutoff,))
        for client, n in victims:
            self._adjust(client, -n)
        total = sum(int(n) for _, n in victims)
        self._counts["expired"] += total
        return total

    def _adjust(self, client: bytes, delta: int) -> None:
        size = self.count(client) + delta
        if size > 0:
            self._sizes[client] = size
        else:  # forget empty mailboxes so the cache does not grow with every client ever seen
            self._sizes.pop(client, None)

    def count(self, client: bytes) -> int:
        """Return how many items ``client``'s mailbox holds (expired ones until expire() runs)."""
        return self._sizes.get(client, 0)

    def register(self, client: Registration, now: float) -> None:
        """Remember a client admitted at run time (open registration). StorageError on failure,
        LocalMisuse if its id, name or link key is already in the table (the caller answers a
        repeated registration itself, see ProviderCore.on_register)."""
        _check_id("client id", client.id)
        for key in (client.curve_public, client.public_key):
            if len(key) != 32:
                raise LocalMisuse("registration keys are 32 bytes")
        with self._transaction():
            try:
                self._db.execute("INSERT INTO clients VALUES (?, ?, ?, ?, ?)", (
                    client.id, client.name, client.curve_public, client.public_key, now))
            except sqlite3.IntegrityError:
                raise LocalMisuse("that id, name or key is registered already") from None

    def registered(self) -> list[bytes]:
        """Return the ids of the clients admitted at run time (rows of version 2 files, which
        have no keys, included)."""
        return [bytes(row[0]) for row in self._read("SELECT id FROM clients")]

    def registration_count(self) -> int:
        """Return how many clients were admitted at run time with their keys."""
        [(count,)] = self._read("SELECT COUNT(*) FROM clients WHERE curve_public IS NOT NULL")
        return int(count)

    def registrations(self) -> list[Registration]:
        """Return the clients admitted at run time whose keys are known, oldest first."""
        return _registrations(self._read(
            "SELECT id, name, curve_public, public_key FROM clients WHERE curve_public IS NOT NULL"
            " ORDER BY registered_at, id"))

    def registration_of(self, name: str) -> Registration | None:
        """Return the registration of ``name``, or None."""
        found = _registrations(self._read(
            "SELECT id, name, curve_public, public_key FROM clients "
            "WHERE name = ? AND curve_public IS NOT NULL", (name,)))
        return found[0] if found else None

    def registration_by_key(self, curve_public: bytes) -> Registration | None:
        """Return the registration whose link key is ``curve_public``, or None."""
        found = _registrations(self._read(
            "SELECT id, name, curve_public, public_key FROM clients WHERE curve_public = ?",
            (curve_public,)))
        return found[0] if found else None

    def _read(self, query: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query; StorageError if SQLite fails (a disk error, a locked file)."""
        try:
            return self._db.execute(query, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the mailbox: {exc}") from None

    def durability(self) -> dict[str, str]:
        """Return the settings in force: ``journal_mode`` (wal) and ``synchronous`` (FULL)."""
        (journal,) = self._db.execute("PRAGMA journal_mode").fetchone()
        (level,) = self._db.execute("PRAGMA synchronous").fetchone()
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return {"journal_mode": str(journal), "synchronous": names.get(level, str(level))}

    def statistics(self) -> dict[str, int]:
        """Return the counters since opening and ``items``, the number of items held now.

        Counters: stored, refused_full, fetched, acked, expired, foreign_ack_ignored, ack_unknown.
        """
        stats = {name: self._counts[name] for name in _COUNTERS}
        stats["items"] = sum(self._sizes.values())
        return stats

    def close(self) -> None:
        """Close the database (every store was already committed)."""
        self._db.close()


def _registrations(rows: list[tuple[Any, ...]]) -> list[Registration]:
    """Return the registrations in rows of (id, name, curve_public, public_key)."""
    return [Registration(bytes(i), n, bytes(c), bytes(p)) for i, n, c, p in rows]


def _check_id(name: str, value: bytes) -> None:
    if len(value) != ID_BYTES:
        raise LocalMisuse(f"a {name} is {ID_BYTES} bytes, got {len(value)}")


def _check_item(client: bytes, kind: ItemKind, surb_id: bytes) -> None:
    _check_id("client id", client)
    _check_id("SURB id", surb_id)
    if not isinstance(kind, ItemKind):
        raise LocalMisuse(f"kind must be an ItemKind, got {kind!r}")
