"""The replay cache: replays caught, memory bounded, false positives as documented."""

from __future__ import annotations

import os

from zmix.replay import BloomFilter, ReplayCache, false_positive_rate


def test_a_replayed_tag_is_detected_and_a_fresh_one_is_not() -> None:
    cache = ReplayCache(capacity=10_000)
    tags = [os.urandom(32) for _ in range(1000)]
    assert not any(cache.seen_or_add(t) for t in tags)
    assert all(cache.seen_or_add(t) for t in tags)
    assert cache.statistics()["replays"] == 1000


def test_memory_stays_bounded_past_capacity() -> None:
    cache = ReplayCache(capacity=1_000)
    size = cache.statistics()["bytes"]
    for _ in range(5_000):
        cache.seen_or_add(os.urandom(32))
    stats = cache.statistics()
    assert stats["bytes"] <= 2 * size
    assert stats["rollovers"] >= 4


def test_a_tag_from_before_a_rollover_is_still_a_replay() -> None:
    cache = ReplayCache(capacity=1_000)
    first = os.urandom(32)
    cache.seen_or_add(first)
    for _ in range(1_000):
        cache.seen_or_add(os.urandom(32))
    assert cache.seen_or_add(first)


def test_a_new_key_epoch_forgets_old_tags() -> None:
    cache = ReplayCache(capacity=1_000)
    tag = os.urandom(32)
    cache.seen_or_add(tag, epoch=1)
    assert not cache.seen_or_add(tag, epoch=2)


def test_the_false_positive_rate_is_near_the_documented_one() -> None:
    # A deliberately small filter (8 bits per item, 5 hashes) so that false positives show up.
    n = 20_000
    bloom = BloomFilter(n, bits_per_item=8, hashes=5)
    for _ in range(n):
        bloom.add(os.urandom(16))
    trials = 100_000
    hits = sum(os.urandom(16) in bloom for _ in range(trials))
    expected = false_positive_rate(bloom.bits, 5, n)
    assert expected / 2 < hits / trials < expected * 2


def test_the_default_filter_matches_its_documentation() -> None:
    bloom = BloomFilter(1_000_000)
    assert bloom.size_bytes == 7_250_000
    assert false_positive_rate(bloom.bits, bloom.hashes, 1_000_000) < 3e-7
