"""The SQLite mailbox store: quota, TTL, batch fetch and ack, durability across reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from zmix.mailbox import Mailbox
from zmix.wire import ItemKind

ALICE, BOB = b"a" * 16, b"b" * 16
NO_SURB = bytes(16)


@pytest.fixture
def box(tmp_path: Path) -> Mailbox:
    return Mailbox(tmp_path / "m.sqlite", quota=5, ttl=100.0)


def fill(box: Mailbox, client: bytes, n: int, now: float = 0.0) -> list[int]:
    ids = [box.store(client, ItemKind.MESSAGE, NO_SURB, f"m{i}".encode(), now) for i in range(n)]
    assert all(i is not None for i in ids)
    return [i for i in ids if i is not None]


def test_a_fetch_returns_the_oldest_items_and_deletes_nothing(box: Mailbox) -> None:
    fill(box, ALICE, 4)
    items, remaining = box.fetch(ALICE, 3, 0.0)
    assert [i.payload for i in items] == [b"m0", b"m1", b"m2"] and remaining == 1
    again, _ = box.fetch(ALICE, 3, 0.0)
    assert again == items  # a lost answer loses nothing


def test_an_ack_deletes_only_the_acknowledged_items_of_that_client(box: Mailbox) -> None:
    fill(box, ALICE, 3)
    bob_ids = fill(box, BOB, 1)
    items, _ = box.fetch(ALICE, 2, 0.0)
    assert box.ack(ALICE, [items[0].item_id, items[1].item_id, bob_ids[0]]) == 2
    assert [i.payload for i in box.fetch(ALICE, 10, 0.0)[0]] == [b"m2"]
    assert box.count(BOB) == 1
    assert box.statistics()["foreign_ack_ignored"] == 1


def test_a_full_mailbox_refuses_new_items_and_keeps_the_old(box: Mailbox) -> None:
    fill(box, ALICE, 5)
    assert box.store(ALICE, ItemKind.MESSAGE, NO_SURB, b"one too many", 0.0) is None
    assert [i.payload for i in box.fetch(ALICE, 10, 0.0)[0]] == [f"m{i}".encode() for i in range(5)]
    assert box.statistics()["refused_full"] == 1
    assert box.store(BOB, ItemKind.MESSAGE, NO_SURB, b"bob has room", 0.0) is not None


def test_items_expire_after_their_ttl_and_are_counted(box: Mailbox) -> None:
    fill(box, ALICE, 2, now=0.0)
    fill(box, ALICE, 1, now=50.0)
    assert len(box.fetch(ALICE, 10, 120.0)[0]) == 1  # the two old ones are past their TTL
    assert box.expire(120.0) == 2
    assert box.statistics()["expired"] == 2 and box.count(ALICE) == 1


def test_items_survive_a_reopen_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    box = Mailbox(path, quota=10, ttl=100.0)
    ids = fill(box, ALICE, 3)
    box.ack(ALICE, ids)
    kept = box.store(ALICE, ItemKind.REPLY, b"s" * 16, b"reply", 0.0)
    box.close()
    box = Mailbox(path, quota=10, ttl=100.0)
    [item], _ = box.fetch(ALICE, 10, 0.0)
    assert item.item_id == kept and item.item_id > max(ids)
    assert item.kind is ItemKind.REPLY and item.surb_id == b"s" * 16
    assert box.count(ALICE) == 1
