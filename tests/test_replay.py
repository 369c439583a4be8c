"""The replay cache: replays caught, epochs kept apart, memory bounded, false positives as
documented."""

from __future__ import annotations

import math
import random

import pytest

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
