"""The replay cache's files: tags survive a new cache and a SIGKILLed process, damaged files are
refused by name, files follow the epochs' filters (rollover, rotate, drop), sizes as documented;
the per-packet fast path answers, counts and writes exactly as locate, has and put do."""

from __future__ import annotations

import gc
import os
import random
import select
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import crypto
from zmix.replay import HEADER_BYTES, ReplayCache, ReplayFileError


def tags(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.bloom"))


def test_tags_are_replays_in_a_new_cache_on_the_directory_without_a_flush(tmp_path: Path) -> None:
    cache = ReplayCache(capacity=10_000, directory=tmp_path)
    seen = tags(2_000, 1)
    assert not any(cache.seen_or_add(t, epoch=7) for t in seen)
    del cache  # no close() or flush(), as in a crash: unmapped unsynced, lock file closed
    gc.collect()
    reopened = ReplayCache(capacity=10_000, directory=tmp_path)
    assert all(reopened.seen_or_add(t, epoch=7) for t in seen)
    assert not any(reopened.seen_or_add(t, epoch=7) for t in tags(2_000, 2))  # control: fresh
    assert not reopened.seen_or_add(seen[0], epoch=8)  # another epoch, another filter
    reopened.close()


CHILD = textwrap.dedent("""
    import random, sys
    from pathlib import Path
    from zmix.replay import ReplayCache
    cache = ReplayCache(capacity=1_000, directory=Path(sys.argv[1]))
    rng = random.Random(3)
    for epoch in (4, 5):
        for _ in range(1_500):
            assert not cache.seen_or_add(rng.randbytes(32), epoch)
    print(cache.statistics()["rollovers"], flush=True)
    sys.stdin.read()  # wait to be killed
""")


def test_tags_added_by_a_process_killed_with_sigkill_are_replays_after(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "the child did not add its tags within 30 s"
        assert child.stdout is not None and child.stdout.readline().strip() == "2"  # rolled over
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
    rng = random.Random(3)
    added = {epoch: [rng.randbytes(32) for _ in range(1_500)] for epoch in (4, 5)}
    with ReplayCache(capacity=1_000, directory=tmp_path) as cache:
        for epoch, batch in added.items():
            assert all(cache.seen_or_add(t, epoch) for t in batch)
            assert not any(cache.seen_or_add(t, epoch) for t in tags(500, epoch))  # control


def test_no_tag_added_is_ever_unseen_after_a_reopen(tmp_path: Path) -> None:
    rng = random.Random(11)
    for round_ in range(8):
        directory = tmp_path / str(round_)
        capacity = rng.randrange(50, 400)
        cache = ReplayCache(capacity=capacity, directory=directory, bits_per_tag=16, hashes=4)
        added: list[tuple[bytes, int]] = []
        for _ in range(rng.randrange(1, 2 * capacity - 1)):  # at most one rollover per epoch
            tag, epoch = rng.randbytes(rng.randrange(1, 64)), rng.randrange(3)
            if not cache.seen_or_add(tag, epoch):
                added.append((tag, epoch))
        if rng.random() < 0.5:
            cache.flush()
        del cache  # no close(), as in a crash
        gc.collect()
        with ReplayCache(capacity=capacity, directory=directory) as reopened:
            assert all(reopened.seen_or_add(tag, epoch) for tag, epoch in added)


def test_a_damaged_file_is_refused_with_its_name(tmp_path: Path) -> None:
    def damaged(how: str) -> Path:
        directory = tmp_path / how
        with ReplayCache(capacity=1_000, directory=directory) as cache:
            cache.prepare(0)
        path = directory / "0-0.bloom"
        data = bytearray(path.read_bytes())
        if how == "flipped":
            data[40] ^= 1  # inside the epoch/generation/geometry fields: checksum fails
        elif how == "magic":
            data[0:8] = b"NOTZMIX!"
        elif how == "short-header":
            data = data[:20]
        elif how == "truncated":
            data = data[:HEADER_BYTES + 1000]
        path.write_bytes(bytes(data))
        return path

    with ReplayCache(capacity=1_000, directory=damaged("intact").parent) as control:
        assert control.epochs() == [0]
    for how, words in [("flipped", "checksum"), ("magic", "magic"),
                       ("short-header", "truncated header"), ("truncated", "truncated")]:
        path = damaged(how)
        with pytest.raises(ReplayFileError, match=words) as caught:
            ReplayCache(capacity=1_000, directory=path.parent)
        assert caught.value.path == path and str(path) in str(caught.value)
        ReplayCache(capacity=1_000, directory=tmp_path / "intact").close()  # lock released


def test_rollover_keeps_the_newest_two_generations_on_disk(tmp_path: Path) -> None:
    cache = ReplayCache(capacity=500, directory=tmp_path)
    cache.rotate(1)
    assert files(tmp_path) == []  # a directory's cache makes no filter before it is needed
    batch = tags(1_600, 4)
    for tag in batch:
        cache.seen_or_add(tag, epoch=1)
    assert cache.statistics()["rollovers"] == 3
    assert files(tmp_path) == ["1-2.bloom", "1-3.bloom"]
    del cache  # no close() or flush(), as in a crash: unmapped unsynced, lock file closed
    gc.collect()
    with ReplayCache(capacity=500, directory=tmp_path) as reopened:
        assert all(reopened.seen_or_add(t, epoch=1) for t in batch[1_000:])
        assert not any(reopened.seen_or_add(t, epoch=1) for t in tags(50, 5))


def test_a_reloaded_filter_rolls_over_when_its_estimated_count_reaches_capacity(
        tmp_path: Path) -> None:
    cache = ReplayCache(capacity=10_000, directory=tmp_path)
    for tag in tags(9_000, 6):
        cache.seen_or_add(tag, epoch=2)
    del cache  # no close() or flush(), as in a crash: unmapped unsynced, lock file closed
    gc.collect()
    with ReplayCache(capacity=10_000, directory=tmp_path) as reopened:
        assert abs(reopened.statistics()["tags"] - 9_000) < 9_000 * 0.02
        for tag in tags(900, 7):
            reopened.seen_or_add(tag, epoch=2)
        assert reopened.statistics()["rollovers"] == 0
        for tag in tags(400, 8):
            reopened.seen_or_add(tag, epoch=2)
        assert reopened.statistics()["rollovers"] == 1
        assert files(tmp_path) == ["2-0.bloom", "2-1.bloom"]


def test_rotate_and_drop_delete_exactly_their_epochs_files(tmp_path: Path) -> None:
    cache = ReplayCache(capacity=1_000, directory=tmp_path, epochs=3)
    for epoch in (3, 4, 5):
        cache.prepare(epoch)
    assert files(tmp_path) == ["3-0.bloom", "4-0.bloom", "5-0.bloom"]
    cache.drop(4)
    assert files(tmp_path) == ["3-0.bloom", "5-0.bloom"]
    assert cache.seen_or_add(tags(1, 9)[0], epoch=4)  # dropped: stale, not recreated
    assert files(tmp_path) == ["3-0.bloom", "5-0.bloom"]
    cache.rotate(5)
    assert files(tmp_path) == ["5-0.bloom"] and cache.epochs() == [5]
    assert not cache.seen_or_add(tags(1, 9)[0], epoch=5)  # control: a live epoch takes tags
    assert cache.statistics()["stale_epoch"] == 1
    cache.prepare(6)
    cache.prepare(7)
    cache.prepare(8)  # a fourth epoch pushes out the oldest, files and all
    assert files(tmp_path) == ["6-0.bloom", "7-0.bloom", "8-0.bloom"]
    cache.close()


def test_a_load_keeps_the_newest_epochs_and_cleans_leftovers(tmp_path: Path) -> None:
    with ReplayCache(capacity=100, directory=tmp_path, epochs=4) as cache:
        for epoch in (1, 3, 4):
            cache.prepare(epoch)
        for tag in tags(150, 10):  # epoch 2: generations 0 and 1
            cache.seen_or_add(tag, epoch=2)
        stray = (tmp_path / "2-0.bloom").read_bytes()
        for tag in tags(100, 11):  # generation 2 made, 0 deleted
            cache.seen_or_add(tag, epoch=2)
    assert files(tmp_path) == ["1-0.bloom", "2-1.bloom", "2-2.bloom", "3-0.bloom", "4-0.bloom"]
    (tmp_path / "2-0.bloom").write_bytes(stray)  # as a crash between making 2-2 and deleting it
    (tmp_path / ".9-0.bloom.tmp").write_bytes(b"half made")  # a crash while making a file
    with ReplayCache(capacity=100, directory=tmp_path, epochs=3) as cache:
        assert cache.epochs() == [2, 3, 4]
        assert cache.seen_or_add(tags(1, 12)[0], epoch=1)  # its file was deleted: stale
        assert all(cache.seen_or_add(tag, epoch=2) for tag in tags(100, 11))
        assert not cache.seen_or_add(tags(1, 12)[0], epoch=3)  # control: a kept epoch is live
    assert files(tmp_path) == ["2-1.bloom", "2-2.bloom", "3-0.bloom", "4-0.bloom"]
    assert not (tmp_path / ".9-0.bloom.tmp").exists()


def test_a_second_cache_on_a_held_directory_is_refused(tmp_path: Path) -> None:
    first = ReplayCache(capacity=1_000, directory=tmp_path)
    with pytest.raises(ReplayFileError, match="another process"):
        ReplayCache(capacity=1_000, directory=tmp_path)
    first.close()
    ReplayCache(capacity=1_000, directory=tmp_path).close()  # control: free once closed


def test_files_are_private_and_sized_as_documented(tmp_path: Path) -> None:
    directory = tmp_path / "replay"
    with ReplayCache(directory=directory) as cache:  # the default capacity: 8 MB filters
        for epoch in (0, 1, 2):
            cache.prepare(epoch)
        stats = cache.statistics()
        assert stats["bytes"] == 3 * 8_000_000 and stats["epochs"] == 3
        cache.flush()
        assert cache.statistics()["flushes"] == 1
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.glob("*.bloom"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_size == HEADER_BYTES + 8_000_000
        assert path.stat().st_blocks * 512 >= 8_000_000  # allocated, not sparse


def test_the_benchmark_reports_both_caches_and_the_flush_cost(tmp_path: Path) -> None:
    from zmix.bench.replay import measure
    figures = measure(2_000, rounds=2, capacity=10_000, directory=tmp_path)
    assert figures["lookups"] == 2_000 and figures["filter_bytes"] == 10_000 * 8
    assert figures["memory_lookups_per_s"] > 0 and figures["file_lookups_per_s"] > 0
    ratio = figures["file_lookups_per_s"] / figures["memory_lookups_per_s"]
    assert figures["file_to_memory_ratio"] == pytest.approx(ratio, abs=1e-3)
    assert figures["flush_ms"] > 0 and figures["create_file_ms"] > 0 and figures["load_ms"] > 0
    assert list(tmp_path.iterdir()) == []  # its temporary directory is gone


class ReferenceCache(ReplayCache):
    """A cache whose seen_or_add is the release's before the fast path (commit 9900038; only
    the "checked" count's home moved): one locate, then has on the previous generation and put
    on the current one."""

    def seen_or_add(self, tag: bytes, epoch: int = 0) -> bool:
        self._checked += 1
        if epoch < self._floor or epoch in self._dropped:
            self._counts["stale_epoch"] += 1
            return True
        tags_ = self._tags(epoch)
        where = tags_.current.locate(tag)
        if (tags_.previous is not None and tags_.previous.has(where)) or tags_.current.put(where):
            self._counts["replays"] += 1
            return True
        if tags_.current.count >= tags_.current.capacity:
            self._roll_over(epoch, tags_)
        return False


def replay_run(kind: type[ReplayCache], ops: list[tuple[Any, ...]], pool: list[bytes],
               capacity: int, directory: Path | None, key_seed: int) -> list[Any]:
    """Run ``ops`` on a fresh cache whose epoch keys come from ``key_seed``; return every answer
    and the statistics after each operation."""
    keys = random.Random(key_seed)
    seen: list[Any] = []
    with mock.patch.object(crypto, "random_bytes", new=keys.randbytes), \
            kind(capacity, epochs=2, directory=directory) as cache:
        for op, arg, epoch in ops:
            if op == "tag":
                seen.append(cache.seen_or_add(pool[arg % len(pool)], epoch))
            elif op == "flush":
                cache.flush()
            else:
                getattr(cache, op)(epoch)
            seen.append(cache.statistics())
    return seen


def directory_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.bloom"))}


OPS = st.lists(st.one_of(
    st.tuples(st.just("tag"), st.integers(0, 29), st.integers(0, 4)),
    st.tuples(st.sampled_from(["rotate", "drop", "prepare", "flush"]), st.just(0),
              st.integers(0, 4))),
    max_size=120)
POOL = st.lists(st.binary(max_size=40), min_size=1, max_size=30, unique=True)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, pool=POOL, capacity=st.integers(1, 12), key_seed=st.integers(0, 2**32))
def test_the_fast_path_answers_and_counts_as_locate_has_and_put_in_memory(
        ops: list[tuple[Any, ...]], pool: list[bytes], capacity: int, key_seed: int) -> None:
    # Tiny capacities roll over every few tags; epochs 0-4 with two held push epochs out.
    assert replay_run(ReplayCache, ops, pool, capacity, None, key_seed) == \
        replay_run(ReferenceCache, ops, pool, capacity, None, key_seed)


@settings(max_examples=30, deadline=None)
@given(ops=OPS, pool=POOL, capacity=st.integers(1, 12), key_seed=st.integers(0, 2**32))
def test_the_fast_path_writes_the_same_files_and_loads_the_reference_files_alike(
        ops: list[tuple[Any, ...]], pool: list[bytes], capacity: int, key_seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fast_dir, ref_dir = Path(tmp) / "fast", Path(tmp) / "reference"
        assert replay_run(ReplayCache, ops, pool, capacity, fast_dir, key_seed) == \
            replay_run(ReferenceCache, ops, pool, capacity, ref_dir, key_seed)
        assert directory_bytes(fast_dir) == directory_bytes(ref_dir)
        # Each kind loads the other's files: every tag answers alike in every epoch.
        lookups = [("tag", i, epoch) for epoch in range(5) for i in range(len(pool))]
        assert replay_run(ReplayCache, lookups, pool, capacity, ref_dir, key_seed + 1) == \
            replay_run(ReferenceCache, lookups, pool, capacity, fast_dir, key_seed + 1)
