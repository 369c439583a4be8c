"""The replay cache: replays caught, epochs kept apart, memory bounded, false positives as
documented."""

from __future__ import annotations

import hashlib
import math
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix.errors import LocalMisuse
from zmix.replay import (
    BITS_PER_TAG,
    BLOCK_BITS,
    HASHES,
    MAX_BLOCKS,
    BloomFilter,
    ReplayCache,
    false_positive_rate,
)


def tags(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def test_a_replayed_tag_is_detected_and_a_fresh_one_is_not() -> None:
    cache = ReplayCache(capacity=10_000)
    batch = tags(1000, 1)
    assert not any(cache.seen_or_add(t) for t in batch)
    assert all(cache.seen_or_add(t) for t in batch)
    stats = cache.statistics()
    assert stats["replays"] == 1000 and stats["checked"] == 2000 and stats["tags"] == 1000


def test_memory_stays_bounded_however_many_tags_and_epochs_arrive() -> None:
    cache = ReplayCache(capacity=1_000, epochs=2)
    one_filter = cache.statistics()["bytes"]
    bound = 2 * 2 * one_filter  # epochs * (current + previous)
    for epoch in range(6):
        for i, tag in enumerate(tags(3_500, epoch)):
            cache.seen_or_add(tag, epoch)
            if i % 250 == 0:
                assert cache.statistics()["bytes"] <= bound
        stats = cache.statistics()
        assert stats["bytes"] <= bound and stats["epochs"] <= 2
    assert cache.statistics()["rollovers"] >= 6 * 3


def test_a_tag_from_before_a_rollover_is_still_a_replay() -> None:
    cache = ReplayCache(capacity=1_000)
    first = tags(1, 99)[0]
    cache.seen_or_add(first)
    for tag in tags(1_000, 2):
        cache.seen_or_add(tag)
    assert cache.statistics()["rollovers"] == 1
    assert cache.seen_or_add(first)


def test_a_tag_is_forgotten_after_two_capacities_of_later_tags_as_documented() -> None:
    cache = ReplayCache(capacity=1_000)
    first = tags(1, 99)[0]
    cache.seen_or_add(first)
    later = tags(2_000, 3)
    for tag in later:
        cache.seen_or_add(tag)
    assert cache.statistics()["rollovers"] == 2
    assert not cache.seen_or_add(first)
    assert cache.seen_or_add(later[-1])  # a tag of the last capacity is still remembered


def test_interleaved_epochs_keep_their_own_tags() -> None:
    cache = ReplayCache(capacity=1_000)
    a, b = tags(2, 4)
    assert not cache.seen_or_add(a, epoch=1)
    assert not cache.seen_or_add(b, epoch=2)
    assert not cache.seen_or_add(a, epoch=2)  # the same tag under another key is not a replay
    assert cache.seen_or_add(a, epoch=1)  # epoch 2 did not wipe epoch 1
    assert cache.seen_or_add(b, epoch=2)


def test_rotating_forgets_older_epochs_and_refuses_their_tags() -> None:
    cache = ReplayCache(capacity=1_000)
    old, new = tags(2, 5)
    cache.seen_or_add(old, epoch=1)
    cache.seen_or_add(new, epoch=2)
    cache.rotate(2)
    assert cache.statistics()["epochs"] == 1
    assert cache.seen_or_add(new, epoch=2)
    assert cache.seen_or_add(tags(1, 6)[0], epoch=1)  # fresh, but its epoch is gone
    assert cache.statistics()["stale_epoch"] == 1


def test_a_newer_epoch_pushes_out_the_oldest_beyond_the_limit() -> None:
    cache = ReplayCache(capacity=1_000, epochs=2)
    tag = tags(1, 7)[0]
    for epoch in (1, 2, 3):
        cache.seen_or_add(tag, epoch)
    assert cache.statistics()["epochs"] == 2
    assert cache.seen_or_add(tag, epoch=3)
    assert cache.seen_or_add(tags(1, 8)[0], epoch=1)  # epoch 1 was pushed out: stale
    assert cache.statistics()["stale_epoch"] == 1


def test_the_measured_false_positive_rate_is_within_twice_the_formula() -> None:
    # A deliberately small filter (8 bits per tag, 5 hashes, p about 2.3%) so that false
    # positives show up in 100,000 probes; the hashing is the same as at the default geometry.
    n = 200_000
    bloom = BloomFilter(n, bits_per_item=8, hashes=5, key=bytes(32))
    for tag in tags(n, 10):
        bloom.add(tag)
    probes = tags(100_000, 11)
    hits = sum(tag in bloom for tag in probes)
    expected = false_positive_rate(bloom.bits, 5, bloom.count)
    assert expected / 2 < hits / len(probes) < expected * 2


def test_the_default_geometry_matches_its_documentation() -> None:
    bloom = BloomFilter(1_000_000)
    assert (bloom.bits, bloom.hashes) == (BITS_PER_TAG * 1_000_000, HASHES)
    assert bloom.size_bytes == 8_000_000
    assert 2.8e-7 < false_positive_rate(bloom.bits, bloom.hashes, 1_000_000) < 2.9e-7
    assert ReplayCache().statistics()["bytes"] == 8_000_000  # one epoch, no rollover yet


def test_the_blocked_formula_is_near_the_classic_one_for_evenly_filled_blocks() -> None:
    # With blocks of the whole filter's size there is one block: the classic formula.
    bits, k, n = 4096, 4, 300
    classic = (1 - math.exp(-k * n / bits)) ** k
    assert false_positive_rate(bits, k, n, block_bits=bits) == pytest.approx(classic, rel=0.02)
    # Blocks of 512 bits fill unevenly: worse than classic, but within the same order.
    classic = (1 - math.exp(-8 / 64)) ** 8
    assert classic < false_positive_rate(64 * 10**6, 8, 10**6) < 10 * classic


def test_every_bit_of_a_tag_lies_in_one_block() -> None:
    bloom = BloomFilter(1_000, key=bytes(32))
    for tag in tags(200, 12):
        offset, mask = bloom.locate(tag)
        assert offset % (BLOCK_BITS // 8) == 0 and 0 <= offset < bloom.size_bytes
        assert 0 < mask < 2**BLOCK_BITS and bin(mask).count("1") <= HASHES


def test_a_filter_too_large_for_32_bit_block_numbers_is_refused() -> None:
    with pytest.raises(LocalMisuse):
        BloomFilter(MAX_BLOCKS * BLOCK_BITS // BITS_PER_TAG + 1)
    with pytest.raises(LocalMisuse):
        ReplayCache(epochs=0)


def test_by_default_three_epochs_are_kept_the_previous_current_and_next() -> None:
    cache = ReplayCache(capacity=1_000)
    cache.rotate(10)
    tag = tags(1, 13)[0]
    for epoch in (10, 11, 12):
        assert not cache.seen_or_add(tag, epoch)
    assert cache.epochs() == [10, 11, 12]
    assert all(cache.seen_or_add(tag, epoch) for epoch in (10, 11, 12))
    cache.prepare(13)  # a fourth pushes out the oldest
    assert cache.epochs() == [11, 12, 13]


def test_dropping_an_epoch_forgets_exactly_it_and_refuses_its_tags() -> None:
    cache = ReplayCache(capacity=1_000)
    a, b = tags(2, 14)
    cache.seen_or_add(a, epoch=1)
    cache.seen_or_add(b, epoch=2)
    cache.drop(1)
    assert cache.epochs() == [0, 2]
    assert cache.seen_or_add(tags(1, 15)[0], epoch=1)  # fresh, but its key was erased
    assert cache.statistics()["stale_epoch"] == 1
    assert cache.epochs() == [0, 2]  # not made again
    assert cache.seen_or_add(b, epoch=2)
    assert not cache.seen_or_add(tags(1, 15)[0], epoch=0)  # control: other epochs take tags


def test_each_epoch_hashes_with_its_own_key() -> None:
    cache = ReplayCache(capacity=1_000)
    cache.prepare(1)
    stats = cache.statistics()
    assert stats["epochs"] == 2 and stats["flushes"] == 0
    cache.flush()  # in memory: nothing to write, nothing counted
    assert cache.statistics()["flushes"] == 0
    keys = {bloom.key for tags_ in cache._epochs.values() for _, bloom in tags_.filters()}
    assert len(keys) == 2


def documented_location(key: bytes, blocks: int, hashes: int, tag: bytes) -> tuple[int, int]:
    """A tag's block offset and bit mask by the module docstring's formula: one BLAKE2b digest
    of 8 + 2k bytes keyed by the filter's key; its first little-endian 64-bit word modulo the
    blocks picks the block, each of the k 16-bit words after it one bit, by its low 9 bits."""
    digest = hashlib.blake2b(tag, digest_size=8 + 2 * hashes, key=key).digest()
    block = int.from_bytes(digest[:8], "little") % blocks
    words = struct.unpack(f"<{hashes}H", digest[8:])
    mask = 0
    for word in words:
        mask |= 1 << (word % 512)
    return block * 64, mask


PINNED_KEY = bytes(range(32))
PINNED_TAGS = [b"", b"zmix replay tag", bytes(32), bytes(range(255, 0, -1))]


@pytest.mark.parametrize("capacity", [1_000, 1_000_000])
@pytest.mark.parametrize("hashes", [HASHES, 5])
def test_a_tags_block_and_bits_are_those_of_the_documented_formula(capacity: int,
                                                                   hashes: int) -> None:
    bloom = BloomFilter(capacity, hashes=hashes, key=PINNED_KEY)
    fast = BloomFilter(capacity, hashes=hashes, key=PINNED_KEY)
    for tag in PINNED_TAGS:
        offset, mask = documented_location(PINNED_KEY, bloom.blocks, hashes, tag)
        assert bloom.locate(tag) == (offset, mask)
        assert not fast.check_and_add(tag)
        block = fast._array[offset:offset + 64]
        # bit p of the block is bit p % 8 of its byte p // 8 (little-endian), so a file's bits
        # read the same whichever way they are tested
        assert all(block[p // 8] >> (p % 8) & 1 for p in range(512) if mask >> p & 1)
    set_bits = sum(bin(byte).count("1") for byte in fast._array)
    assert set_bits == sum(bin(documented_location(PINNED_KEY, bloom.blocks, hashes, t)[1])
                           .count("1") for t in PINNED_TAGS)  # nothing else was set


def test_pinned_locations_are_those_of_the_release_before_the_fast_path() -> None:
    # Computed by zmix.replay.BloomFilter.locate at commit 9900038 (locate, has, put only):
    # filters written by that release must answer identically.
    bloom = BloomFilter(1_000_000, key=PINNED_KEY)
    assert bloom.locate(b"zmix replay tag") == (2449280, int(
        "8000400000000000000000000000100000000001408000000000000000000000000000000000000000"
        "00000000400000000000001000000", 16))
    assert bloom.locate(b"") == (2540160, int(
        "8000000000040000000000000010000008000000000000000000000000000080000000000000000000"
        "000000000048080000000000000000", 16))


def reference_check_and_add(bloom: BloomFilter, older: BloomFilter | None, tag: bytes) -> bool:
    """What BloomFilter.check_and_add promises: locate, then has in the older filter or put."""
    where = bloom.locate(tag)
    return (older is not None and older.has(where)) or bloom.put(where)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 40), hashes=st.sampled_from([HASHES, HASHES, 1, 5, 16]),
       key=st.binary(min_size=32, max_size=32),
       pool=st.lists(st.binary(max_size=40), min_size=1, max_size=30, unique=True),
       older_tags=st.lists(st.integers(0, 29), max_size=40),
       sequence=st.lists(st.integers(0, 29), max_size=120), with_older=st.booleans())
def test_the_fast_path_agrees_with_locate_has_and_put_on_any_tag_sequence(
        capacity: int, hashes: int, key: bytes, pool: list[bytes], older_tags: list[int],
        sequence: list[int], with_older: bool) -> None:
    # Small filters (down to one block) fill up, so "all bits already set" is common too.
    fast, ref = (BloomFilter(capacity, hashes=hashes, key=key) for _ in range(2))
    fast_older, ref_older = (BloomFilter(capacity, hashes=hashes, key=key) for _ in range(2))
    for i in older_tags:
        assert fast_older.add(pool[i % len(pool)]) == ref_older.add(pool[i % len(pool)])
    for i in sequence:
        tag = pool[i % len(pool)]
        expected = reference_check_and_add(ref, ref_older if with_older else None, tag)
        assert fast.check_and_add(tag, fast_older if with_older else None) == expected
        assert fast.count == ref.count
    assert bytes(fast._array) == bytes(ref._array)
    assert bytes(fast_older._array) == bytes(ref_older._array)  # the older one is only read


def test_the_fast_path_finds_a_tag_held_only_by_the_older_filter() -> None:
    older, current = (BloomFilter(1_000, key=PINNED_KEY) for _ in range(2))
    tag, other = tags(2, 16)
    older.add(tag)
    assert current.check_and_add(tag, older)
    assert current.count == 0 and not any(current._array)  # a replay sets nothing
    assert not current.check_and_add(other, older)  # control: a tag the older one lacks
    assert current.count == 1 and other in current
