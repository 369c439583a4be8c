"""The SQLite mailbox store: quota, TTL, batch fetch and ack, durability across reopen."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from zmix.bench import mailbox as bench
from zmix.errors import ConfigError, LocalMisuse
from zmix.mailbox import Mailbox, Registration, StorageError
from zmix.wire import ItemKind

ALICE, BOB = b"a" * 16, b"b" * 16


def reg(client: bytes, name: str = "", key: int = 1) -> Registration:
    return Registration(client, name or client[:1].decode(), bytes([key]) * 32, b"p" * 32)
NO_SURB = bytes(16)


@pytest.fixture
def box(tmp_path: Path) -> Mailbox:
    return Mailbox(tmp_path / "m.sqlite", quota=5, ttl=100.0)


def fill(box: Mailbox, client: bytes, n: int, now: float = 0.0) -> list[int]:
    ids = [box.store(client, ItemKind.MESSAGE, NO_SURB, f"m{i}".encode(), now) for i in range(n)]
    assert all(i is not None for i in ids)
    return [i for i in ids if i is not None]


def test_the_database_uses_wal_and_full_synchronous_commits(box: Mailbox) -> None:
    other = sqlite3.connect(box.path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    assert box.durability() == {"journal_mode": "wal", "synchronous": "FULL"}


def test_a_stored_item_is_visible_to_another_connection_at_once(box: Mailbox) -> None:
    fill(box, ALICE, 1)
    other = sqlite3.connect(box.path)
    assert other.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 1  # committed, not pending
    other.close()


def test_a_fetch_returns_the_oldest_items_and_deletes_nothing(box: Mailbox) -> None:
    fill(box, ALICE, 4)
    items, remaining = box.fetch(ALICE, 3, 0.0)
    assert [i.payload for i in items] == [b"m0", b"m1", b"m2"] and remaining == 1
    again, _ = box.fetch(ALICE, 3, 0.0)
    assert again == items  # a lost answer loses nothing


def test_batches_of_fetch_and_ack_drain_a_mailbox_in_order(tmp_path: Path) -> None:
    box = Mailbox(tmp_path / "m.sqlite", quota=100, ttl=100.0)
    fill(box, ALICE, 20)
    seen: list[bytes] = []
    while True:
        items, remaining = box.fetch(ALICE, 8, 0.0)
        if not items:
            break
        assert remaining == 20 - len(seen) - len(items)
        seen += [i.payload for i in items]
        assert box.ack(ALICE, [i.item_id for i in items]) == len(items)
    assert seen == [f"m{i}".encode() for i in range(20)]
    assert box.statistics()["acked"] == 20 and box.statistics()["items"] == 0


def test_an_ack_deletes_only_the_acknowledged_items_of_that_client(box: Mailbox) -> None:
    fill(box, ALICE, 3)
    bob_ids = fill(box, BOB, 1)
    items, _ = box.fetch(ALICE, 2, 0.0)
    assert box.ack(ALICE, [items[0].item_id, items[1].item_id, bob_ids[0]]) == 2
    assert [i.payload for i in box.fetch(ALICE, 10, 0.0)[0]] == [b"m2"]
    assert box.count(BOB) == 1 and box.fetch(BOB, 10, 0.0)[0][0].item_id == bob_ids[0]
    assert box.statistics()["foreign_ack_ignored"] == 1


def test_a_repeated_ack_deletes_nothing_and_is_not_taken_for_a_foreign_one(box: Mailbox) -> None:
    ids = fill(box, ALICE, 2)
    assert box.ack(ALICE, ids) == 2
    assert box.ack(ALICE, ids) == 0
    stats = box.statistics()
    assert stats["ack_unknown"] == 2 and stats["foreign_ack_ignored"] == 0


def test_ids_outside_sqlites_range_are_ignored_without_error(box: Mailbox) -> None:
    fill(box, ALICE, 1)
    assert box.ack(ALICE, [0, -1, 2**64 - 1, 2**63]) == 0
    assert box.count(ALICE) == 1 and box.statistics()["ack_unknown"] == 4


def test_an_ack_of_thousands_of_ids_is_split_under_sqlites_parameter_limit(box: Mailbox) -> None:
    ids = fill(box, ALICE, 2)
    assert box.ack(ALICE, list(range(100_000, 140_000)) + ids) == 2


def test_a_full_mailbox_refuses_new_items_and_keeps_the_old(box: Mailbox) -> None:
    fill(box, ALICE, 5)
    assert box.store(ALICE, ItemKind.MESSAGE, NO_SURB, b"one too many", 0.0) is None
    assert [i.payload for i in box.fetch(ALICE, 10, 0.0)[0]] == [f"m{i}".encode() for i in range(5)]
    assert box.statistics()["refused_full"] == 1
    assert box.store(BOB, ItemKind.MESSAGE, NO_SURB, b"bob has room", 0.0) is not None


def test_expired_items_do_not_hold_a_mailbox_full(box: Mailbox) -> None:
    fill(box, ALICE, 5, now=0.0)
    assert box.store(ALICE, ItemKind.MESSAGE, NO_SURB, b"late", 150.0) is not None
    assert box.count(ALICE) == 1 and box.statistics()["expired"] == 5


def test_items_expire_after_their_ttl_and_are_counted(box: Mailbox) -> None:
    fill(box, ALICE, 2, now=0.0)
    fill(box, ALICE, 1, now=50.0)
    items, remaining = box.fetch(ALICE, 10, 120.0)
    assert len(items) == 1 and remaining == 0  # the two old ones are past their TTL
    assert box.fetch(ALICE, 0, 120.0) == ([], 1)
    assert box.expire(120.0) == 2
    assert box.expire(120.0) == 0
    assert box.statistics()["expired"] == 2 and box.count(ALICE) == 1


def test_store_many_commits_a_batch_and_refuses_only_what_overflows(box: Mailbox) -> None:
    fill(box, ALICE, 3)
    batch = [(ALICE, ItemKind.MESSAGE, NO_SURB, b"x%d" % i) for i in range(4)]
    batch.append((BOB, ItemKind.REPLY, b"s" * 16, b"reply"))
    ids = box.store_many(batch, 0.0)
    assert ids[2:4] == [None, None] and all(i is not None for i in ids[:2] + ids[4:])
    assert box.count(ALICE) == 5 and box.count(BOB) == 1
    stats = box.statistics()
    assert stats["stored"] == 6 and stats["refused_full"] == 2


def test_a_commit_that_fails_stores_nothing_and_raises_storage_error(box: Mailbox) -> None:
    fill(box, ALICE, 1)
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count={pages}")  # the disk is now "full"
    with pytest.raises(StorageError):
        box.store_many([(ALICE, ItemKind.MESSAGE, NO_SURB, bytes(50_000))] * 2, 0.0)
    assert box.count(ALICE) == 1 and box.statistics()["stored"] == 1
    assert len(box.fetch(ALICE, 10, 0.0)[0]) == 1


def test_malformed_ids_and_a_negative_limit_are_local_misuse(box: Mailbox) -> None:
    with pytest.raises(LocalMisuse):
        box.store(b"short", ItemKind.MESSAGE, NO_SURB, b"", 0.0)
    with pytest.raises(LocalMisuse):
        box.store(ALICE, ItemKind.REPLY, b"short", b"", 0.0)
    with pytest.raises(LocalMisuse):
        box.fetch(ALICE, -1, 0.0)


def test_items_survive_a_reopen_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    box = Mailbox(path, quota=10, ttl=100.0)
    ids = fill(box, ALICE, 3)
    box.ack(ALICE, ids)  # the newest ids are deleted: a plain rowid would hand them out again
    kept = box.store(ALICE, ItemKind.REPLY, b"s" * 16, b"reply", 0.0)
    box.register(reg(BOB), 0.0)
    box.close()
    box = Mailbox(path, quota=10, ttl=100.0)
    [item], _ = box.fetch(ALICE, 10, 0.0)
    assert item.item_id == kept and kept is not None and kept > max(ids)
    assert item.kind is ItemKind.REPLY and item.surb_id == b"s" * 16
    assert box.count(ALICE) == 1 and box.registered() == [BOB]
    assert box.registrations() == [reg(BOB)] and box.registration_of("b") == reg(BOB)
    box.ack(ALICE, [kept])
    box.close()
    box = Mailbox(path, quota=10, ttl=100.0)
    new = box.store(ALICE, ItemKind.MESSAGE, NO_SURB, b"after", 0.0)
    assert new is not None and new > kept


def test_a_version_1_file_is_migrated_and_keeps_its_items_and_clients(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('schema', 1);
        CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, client BLOB NOT NULL,
            kind INTEGER NOT NULL, surb_id BLOB NOT NULL, payload BLOB NOT NULL,
            stored_at REAL NOT NULL);
        CREATE INDEX items_by_client ON items (client, id);
        CREATE TABLE clients (id BLOB PRIMARY KEY, registered_at REAL NOT NULL);
    """)
    db.execute("INSERT INTO items VALUES (7, ?, 1, ?, x'6869', 0.0)", (ALICE, NO_SURB))
    db.execute("INSERT INTO clients VALUES (?, 3.0)", (BOB,))
    db.commit()
    db.close()
    box = Mailbox(path, quota=10, ttl=100.0)
    assert [(i.item_id, i.payload) for i in box.fetch(ALICE, 10, 0.0)[0]] == [(7, b"hi")]
    assert box.registered() == [BOB]
    assert box.registrations() == []  # a version 1 row has no keys: mail, but no link
    box.register(reg(ALICE), 0.0)
    assert sorted(box.registered()) == [ALICE, BOB] and box.registrations() == [reg(ALICE)]


def test_a_version_2_file_is_migrated_and_keeps_its_clients(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('schema', 2);
        CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, client BLOB NOT NULL,
            kind INTEGER NOT NULL, surb_id BLOB NOT NULL, payload BLOB NOT NULL,
            stored_at REAL NOT NULL);
        CREATE TABLE clients (id BLOB PRIMARY KEY);
    """)
    db.execute("INSERT INTO clients VALUES (?)", (BOB,))
    db.commit()
    db.close()
    box = Mailbox(path, quota=10, ttl=100.0)
    assert box.registered() == [BOB] and box.registrations() == []
    box.register(reg(ALICE), 5.0)
    with pytest.raises(LocalMisuse):  # a row without keys is never handed to a newcomer
        box.register(reg(BOB, key=2), 6.0)
    box.close()
    assert Mailbox(path, quota=10, ttl=100.0).registrations() == [reg(ALICE)]


def test_an_id_a_name_and_a_link_key_are_one_client_s(tmp_path: Path) -> None:
    box = Mailbox(tmp_path / "m.sqlite", quota=10, ttl=100.0)
    box.register(reg(ALICE, "alice", key=1), 0.0)
    with pytest.raises(LocalMisuse):  # the same again: ProviderCore answers repeats itself
        box.register(reg(ALICE, "alice", key=1), 9.0)
    with pytest.raises(LocalMisuse):  # the name of another client
        box.register(reg(BOB, "alice", key=2), 0.0)
    with pytest.raises(LocalMisuse):  # the link key of another client
        box.register(reg(BOB, "bob", key=1), 0.0)
    assert box.registrations() == [reg(ALICE, "alice", key=1)]
    assert box.registration_by_key(bytes([1]) * 32) == reg(ALICE, "alice", key=1)
    assert box.registration_of("bob") is None and box.registered() == [ALICE]
    assert box.registration_count() == 1


def test_a_file_from_a_newer_zmix_is_refused_with_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    Mailbox(path, quota=1, ttl=1.0).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=99 WHERE key='schema'")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="schema 99"):
        Mailbox(path, quota=1, ttl=1.0)


class MailboxModel(RuleBasedStateMachine):
    """Random stores, fetches, acks and expiry against a plain in-memory model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="zmix-mailbox-model-"))
        self.box = Mailbox(self.dir / "m.sqlite", quota=4, ttl=10.0)
        self.model: dict[int, tuple[bytes, bytes, float]] = {}  # id -> client, payload, stored_at
        self.now = 0.0
        self.seen_ids: set[int] = set()

    def teardown(self) -> None:
        self.box.close()
        shutil.rmtree(self.dir)

    def held(self, client: bytes) -> list[int]:
        return sorted(i for i, (c, _, _) in self.model.items() if c == client)

    def expire_model(self) -> int:
        old = {i for i, (_, _, t) in self.model.items() if t < self.now - 10.0}
        for i in old:
            del self.model[i]
        return len(old)

    @rule(client=st.sampled_from([ALICE, BOB]), payload=st.binary(max_size=8))
    def store(self, client: bytes, payload: bytes) -> None:
        if len(self.held(client)) >= 4:
            self.expire_model()  # a full mailbox first drops what has expired
        item_id = self.box.store(client, ItemKind.MESSAGE, NO_SURB, payload, self.now)
        if len(self.held(client)) >= 4:
            assert item_id is None
            return
        assert item_id is not None and item_id not in self.seen_ids
        self.seen_ids.add(item_id)
        self.model[item_id] = (client, payload, self.now)

    @rule(client=st.sampled_from([ALICE, BOB]), limit=st.integers(0, 5))
    def fetch(self, client: bytes, limit: int) -> None:
        items, remaining = self.box.fetch(client, limit, self.now)
        live = [i for i in self.held(client) if self.model[i][2] >= self.now - 10.0]
        assert [i.item_id for i in items] == live[:limit]
        assert [i.payload for i in items] == [self.model[i][1] for i in live[:limit]]
        assert remaining == len(live) - len(items)

    @rule(client=st.sampled_from([ALICE, BOB]), data=st.data())
    def ack(self, client: bytes, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.seen_ids) or [1]), max_size=4))
        mine = {i for i in ids if i in self.model and self.model[i][0] == client}
        assert self.box.ack(client, ids) == len(mine)
        for i in mine:
            del self.model[i]

    @rule(step=st.floats(0.0, 6.0))
    def advance(self, step: float) -> None:
        self.now += step

    @rule()
    def expire(self) -> None:
        assert self.box.expire(self.now) == self.expire_model()

    @rule()
    def reopen(self) -> None:
        self.box.close()
        self.box = Mailbox(self.dir / "m.sqlite", quota=4, ttl=10.0)

    @invariant()
    def counts_match(self) -> None:
        for client in (ALICE, BOB):
            assert self.box.count(client) == len(self.held(client))
        assert self.box.statistics()["items"] == len(self.model)


MailboxModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_the_mailbox_behaves_like_its_model = MailboxModel.TestCase


def test_the_benchmark_reports_its_figures_as_json(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--messages", "50", "--json", "--dir", str(tmp_path)]) == 0
    figures = json.loads(capsys.readouterr().out)
    for name in ("stored_per_second", "stored_per_second_batched", "fetched_per_second",
                 "fetch_latency_median_ms", "fetch_latency_p99_ms"):
        assert isinstance(figures[name], float) and figures[name] > 0, name
    assert figures["messages"] == 50 and figures["size"] == 2048
    assert figures["synchronous"] == "FULL" and figures["journal_mode"] == "wal"
