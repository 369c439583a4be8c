"""The client's SQLite store: what survives a restart, single use, expiry, transactions."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from documents import document_for

from zmix.bench.common import make_network
from zmix.clientstore import (
    SURB_ACK,
    SURB_REPLY,
    ClientStore,
    InboxEntry,
    IncomingMeta,
    StoredSurb,
)
from zmix.errors import ConfigError
from zmix.runtime.client import ClientRuntime
from zmix.topology_yaml import load_topology

M1, M2 = b"\x01" * 16, b"\x02" * 16


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual umask (022): files are world-readable unless made otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_the_store_and_its_side_files_are_readable_by_their_owner_only(
        tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "client.sqlite"
    store = ClientStore(path)
    store.complete(InboxEntry(M1, "bob", None, b"decrypted mail", 1.0, None), [])
    side = [Path(f"{path}-wal"), Path(f"{path}-shm")]
    assert all(p.exists() for p in side)  # WAL mode, open: the positive control
    assert {p.name: mode(p) for p in (path, *side)} == {p.name: 0o600 for p in (path, *side)}
    (tmp_path / "other.txt").write_text("x")  # the umask really is loose
    assert mode(tmp_path / "other.txt") == 0o644
    store.close()


def test_an_older_stores_loose_files_are_tightened_when_opened(
        tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "client.sqlite"
    older = sqlite3.connect(path)  # as an older zmix left it: 0644, with its side files
    older.execute("PRAGMA journal_mode=WAL")
    older.execute("CREATE TABLE t (x)")
    older.execute("INSERT INTO t VALUES (1)")
    older.commit()
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    assert [mode(p) for p in files] == [0o644] * 3
    store = ClientStore(path)
    assert [mode(p) for p in files] == [0o600] * 3
    store.close()
    older.close()


def test_a_clients_directory_is_private_even_if_an_older_zmix_made_it(
        tmp_path: Path, loose_umask: None) -> None:
    _, state = make_network(tmp_path, clients={"alice": "provider-1"})
    directory = state / "clients" / "alice"
    directory.mkdir(parents=True)  # as an older zmix made it
    assert mode(directory) == 0o755
    topology = load_topology(state / "topology.yaml")
    with ClientRuntime(state, "alice", document=document_for(topology, state)):
        pass  # no node runs: nothing is sent, the store and its lock are made
    assert mode(directory) == 0o700
    assert mode(directory / "client.sqlite") == 0o600


def test_a_file_store_uses_wal_and_full_synchronous_commits(tmp_path: Path) -> None:
    store = ClientStore(tmp_path / "c.sqlite")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_outgoing_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    store = ClientStore(path)
    store.add_outgoing(M1, "bob", [b"f0", b"f1", b"f2"], 1.0)
    store.record_attempt(M1, 1, 3)
    assert store.mark_acked(M1, 0)
    store.add_surb(b"s" * 16, StoredSurb(SURB_ACK, b"keys", M1, 2), 1.0)
    store.add_loop(b"L" * 16, 1.0)
    store.close()
    store = ClientStore(path)
    assert store.pending_fragments() == [(M1, 1, 3), (M1, 2, 0)]
    assert store.outgoing_progress() == {M1: (3, 1, False)}
    assert store.recipient_of(M1) == "bob"
    assert store.fragment_body(M1, 0) is None and store.fragment_body(M1, 2) == b"f2"
    assert store.take_surb(b"s" * 16) == StoredSurb(SURB_ACK, b"keys", M1, 2)
    assert store.take_loop(b"L" * 16) == 1.0


def test_a_second_ack_of_a_fragment_is_reported_as_a_duplicate() -> None:
    store = ClientStore(":memory:")
    store.add_outgoing(M1, "bob", [b"f0"], 0.0)
    assert store.mark_acked(M1, 0) and not store.mark_acked(M1, 0)


def test_a_failed_message_leaves_the_pending_list_and_drops_its_bodies() -> None:
    store = ClientStore(":memory:")
    store.add_outgoing(M1, "bob", [b"f0", b"f1"], 0.0)
    store.add_outgoing(M2, "bob", [b"g0"], 1.0)
    store.mark_failed(M1)
    assert store.pending_fragments() == [(M2, 0, 0)]
    assert store.fragment_body(M1, 0) is None
    assert store.outgoing_progress()[M1] == (2, 0, True)


def test_surbs_loops_and_reply_blocks_are_single_use() -> None:
    store = ClientStore(":memory:")
    store.add_surb(b"s" * 16, StoredSurb(SURB_REPLY, b"k", M1, 0), 0.0)
    store.add_loop(b"L" * 16, 0.0)
    entry = InboxEntry(M1, None, None, b"data", 0.0, M1)
    store.complete(entry, [b"surb-1", b"surb-2"])
    assert store.take_surb(b"s" * 16) is not None and store.take_surb(b"s" * 16) is None
    assert store.take_loop(b"L" * 16) == 0.0 and store.take_loop(b"L" * 16) is None
    assert {store.take_reply_block(M1), store.take_reply_block(M1)} == {b"surb-1", b"surb-2"}
    assert store.take_reply_block(M1) is None


def test_a_completed_message_moves_from_reassembly_to_the_inbox() -> None:
    store = ClientStore(":memory:")
    store.start_incoming(M1, IncomingMeta(2, 6, "alice", None, b""), 0.0)
    assert store.add_fragment(M1, 1, b"def") and not store.add_fragment(M1, 1, b"def")
    store.add_fragment(M1, 0, b"abc")
    store.set_first_fragment_meta(M1, "f.txt", b"")
    assert store.meta(M1) == IncomingMeta(2, 6, "alice", "f.txt", b"")
    assert store.fragment_count(M1) == 2 and store.assemble(M1) == b"abcdef"
    store.complete(InboxEntry(M1, "alice", "f.txt", b"abcdef", 1.0, None), [])
    assert store.is_completed(M1) and store.meta(M1) is None and store.fragment_count(M1) == 0
    assert [e.data for e in store.inbox()] == [b"abcdef"]
    entry = store.inbox_entry(M1)
    assert entry is not None and (entry.data, entry.filename) == (b"abcdef", "f.txt")
    assert store.inbox_count() == 1
    store.mark_delivered(M1)
    assert store.inbox() == [] and store.is_completed(M1)
    assert store.inbox_entry(M1) is None and store.inbox_count() == 0


def test_a_reply_stays_pending_until_sent() -> None:
    store = ClientStore(":memory:")
    store.add_reply(M1, b"h" * 16, b"packet", 0.0, 49.0)
    assert store.pending_replies() == [(M1, b"h" * 16, b"packet", 49.0)]
    assert store.outgoing_progress()[M1] == (1, 0, False)
    store.reply_sent(M1)
    assert store.pending_replies() == [] and store.outgoing_progress()[M1] == (1, 1, False)


def test_a_reply_whose_block_expired_is_failed_and_no_longer_pending() -> None:
    store = ClientStore(":memory:")
    store.add_reply(M1, b"h" * 16, b"packet", 0.0, 49.0)
    store.add_reply(M2, b"h" * 16, b"packet", 0.0)  # expiry unknown: never
    assert store.pending_replies()[1][3] == float("inf")
    store.reply_expired(M1)
    assert store.pending_replies() == [(M2, b"h" * 16, b"packet", float("inf"))]
    assert store.outgoing_progress()[M1] == (1, 0, True)
    assert store.outgoing_progress()[M2] == (1, 0, False)  # the control


def test_a_version_1_store_gains_the_replies_expiry_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE replies (message_id BLOB PRIMARY KEY, first_hop BLOB NOT NULL, "
               "packet BLOB NOT NULL, sent INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL)")
    db.execute("INSERT INTO replies VALUES (?,?,?,0,1.0)", (M1, b"h" * 16, b"old packet"))
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = ClientStore(path)
    assert store.pending_replies() == [(M1, b"h" * 16, b"old packet", float("inf"))]
    store.add_reply(M2, b"h" * 16, b"new", 2.0, 49.0)
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_expiry_forgets_short_lived_and_long_lived_state_separately() -> None:
    store = ClientStore(":memory:")
    store.add_surb(b"a" * 16, StoredSurb(SURB_ACK, b"k", M1, 0), 10.0)
    store.add_surb(b"r" * 16, StoredSurb(SURB_REPLY, b"k", M1, 0), 10.0)
    store.add_loop(b"L" * 16, 10.0)
    store.start_incoming(M2, IncomingMeta(3, 9, None, None, b""), 10.0)
    store.add_fragment(M2, 0, b"abc")
    assert store.expire(short_before=11.0, long_before=5.0) == 2  # the ack SURB and the loop
    assert store.surb_count() == 1 and store.fragment_count(M2) == 1
    assert store.expire(short_before=11.0, long_before=11.0) == 3
    assert store.surb_count() == 0 and store.meta(M2) is None and store.fragment_count(M2) == 0


def test_rebase_pulls_times_from_before_a_clock_reset_back_to_now() -> None:
    store = ClientStore(":memory:")
    store.add_loop(b"L" * 16, 5000.0)  # written before a reboot reset the monotonic clock
    store.rebase(20.0)
    assert store.expire(short_before=19.0, long_before=0.0) == 0
    assert store.take_loop(b"L" * 16) == 20.0


def test_a_failed_transaction_changes_nothing() -> None:
    store = ClientStore(":memory:")
    with pytest.raises(RuntimeError), store:
        store.add_loop(b"L" * 16, 0.0)
        raise RuntimeError("crash in the middle")
    assert store.take_loop(b"L" * 16) is None
    with store:  # the same write in a transaction that ends well is kept
        store.add_loop(b"L" * 16, 0.0)
    assert store.take_loop(b"L" * 16) == 0.0


def test_a_store_from_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(ConfigError, match="schema 99"):
        ClientStore(path)
