"""The replay cache: a node forwards each Sphinx packet at most once per key epoch.

A replay tag is a hash of the hop's shared secret, so the same packet always has the same tag at
the same node, and a tag is only meaningful under the key (epoch) that produced it.

Design: one Bloom filter per epoch and generation, so memory is fixed however long a node runs.
A Bloom filter of m bits with k hash functions, holding n tags, wrongly reports a fresh tag as
seen (a false positive: a good packet dropped as a replay; the sender's retransmission covers it)
with probability about

    p = (1 - exp(-k * n / m)) ** k.

zmix uses m = 58 bits per tag of capacity and k = 7, fewer hashes than the memory-optimal
k = m/n * ln 2 = 40 because each one costs time on the node loop. At the default capacity of
1,000,000 tags one filter is 7.25 MB and, when full, p = 2.46e-7.

When a filter holds ``capacity`` tags, its epoch starts a fresh one and keeps the full one as
"previous"; a tag found in either is a replay. So a lookup meets at most two filters (p <= 4.9e-7
at the default capacity), and a tag is remembered for at least ``capacity`` later tags of its
epoch, at most ``2 * capacity``. A replay older than that window is not caught: size the capacity
above the packets a node processes in one key epoch (``statistics()["rollovers"]`` shows when it
was not). At most ``epochs`` epochs are kept (two: the current key and the one it replaced), so
the memory bound is ``epochs * 2 * capacity * 58 / 8`` bytes (29 MB at the defaults, 14.5 MB while
a single epoch is in use).

Filter positions come from one keyed BLAKE2b digest per tag, cut into k 32-bit words. The key is
random per cache because the sender of a packet knows its tag and could otherwise choose which
bits its packets set.
"""

from __future__ import annotations

import hashlib
import math
import struct

from zmix import crypto
from zmix.errors import LocalMisuse

BITS_PER_TAG = 58  # m / n: filter bits per tag of capacity
HASHES = 7  # k: bit positions per tag
DEFAULT_CAPACITY = 1_000_000  # n: tags per filter before it rolls over
MAX_BITS = 2**32  # positions are 32-bit words
_HASH_KEY_BYTES = 32


def false_positive_rate(bits: int, hashes: int, items: int) -> float:
    """Return the expected false-positive rate of a Bloom filter of ``bits`` bits and
    ``hashes`` positions per item, holding ``items`` items: ``(1 - exp(-k n / m)) ** k``."""
    return (1.0 - math.exp(-hashes * items / bits)) ** hashes


class BloomFilter:
    """A fixed-size Bloom filter over byte strings (at most 2**32 bits).

    ``positions`` hashes an item once; filters of the same size and key share positions, so a
    cache looks a tag up in two filters for the price of one hash.
    """

    def __init__(self, capacity: int, bits_per_item: int = BITS_PER_TAG, hashes: int = HASHES,
                 *, key: bytes | None = None) -> None:
        """Raises :class:`LocalMisuse` for a capacity below 1, ``hashes`` outside 1..16, or a
        filter that would need more than 2**32 bits."""
        if capacity < 1 or bits_per_item < 1 or not 1 <= hashes <= 16:
            raise LocalMisuse("need capacity >= 1, bits_per_item >= 1 and 1 <= hashes <= 16")
        bits = -(-max(64, capacity * bits_per_item) // 8) * 8  # a whole number of bytes
        if bits > MAX_BITS:
            raise LocalMisuse(f"a filter holds at most {MAX_BITS} bits, {bits} asked")
        self.bits = bits
        self.hashes = hashes
        self.key = crypto.random_bytes(_HASH_KEY_BYTES) if key is None else key
        self.count = 0  # items added that set at least one new bit
        self._hasher = hashlib.blake2b(digest_size=4 * hashes, key=self.key)
        self._unpack = struct.Struct(f"<{hashes}I").unpack
        self._array = bytearray(bits // 8)

    def positions(self, item: bytes) -> list[int]:
        """Return the bit positions of ``item`` in this filter."""
        h = self._hasher.copy()
        h.update(item)
        m = self.bits
        return [word % m for word in self._unpack(h.digest())]

    def has(self, positions: list[int]) -> bool:
        """Return True if every bit of ``positions`` is set (the item is probably present)."""
        array = self._array
        return all(array[i >> 3] >> (i & 7) & 1 for i in positions)

    def put(self, positions: list[int]) -> bool:
        """Set the bits of ``positions``; return True if they all were already set."""
        array = self._array
        present = True
        for i in positions:
            byte, bit = i >> 3, 1 << (i & 7)
            if not array[byte] & bit:
                present = False
                array[byte] |= bit
        if not present:
            self.count += 1
        return present

    def __contains__(self, item: bytes) -> bool:
        return self.has(self.positions(item))

    def add(self, item: bytes) -> bool:
        """Add ``item``; return True if it was (probably) already there."""
        return self.put(self.positions(item))

    @property
    def size_bytes(self) -> int:
        """Memory held by the bit array."""
        return len(self._array)


class _EpochTags:
    """The filters of one key epoch: the one being filled and the last full one."""

    __slots__ = ("current", "previous")

    def __init__(self, current: BloomFilter) -> None:
        self.current = current
        self.previous: BloomFilter | None = None

    def count(self) -> int:
        return self.current.count + (self.previous.count if self.previous else 0)

    def size_bytes(self) -> int:
        return self.current.size_bytes + (self.previous.size_bytes if self.previous else 0)


class ReplayCache:
    """Replay tags seen per key epoch, in bounded memory (see the module docstring)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, epochs: int = 2,
                 bits_per_tag: int = BITS_PER_TAG, hashes: int = HASHES) -> None:
        """Raises :class:`LocalMisuse` for ``epochs`` below 1 or a filter geometry that
        :class:`BloomFilter` refuses."""
        if epochs < 1:
            raise LocalMisuse("a replay cache keeps at least one epoch")
        self._capacity = capacity
        self._max_epochs = epochs
        self._geometry = (bits_per_tag, hashes)
        self._key = crypto.random_bytes(_HASH_KEY_BYTES)
        self._epochs: dict[int, _EpochTags] = {}
        self._floor = 0  # epochs below this were forgotten
        self._counts = {"checked": 0, "replays": 0, "stale_epoch": 0, "rollovers": 0}
        self._tags(0)  # allocate now: the memory a node needs shows at start, not under load

    def _new_filter(self) -> BloomFilter:
        return BloomFilter(self._capacity, *self._geometry, key=self._key)

    def _tags(self, epoch: int) -> _EpochTags:
        tags = self._epochs.get(epoch)
        if tags is None:
            tags = self._epochs[epoch] = _EpochTags(self._new_filter())
            if len(self._epochs) > self._max_epochs:
                oldest = min(self._epochs)
                del self._epochs[oldest]
                self._floor = max(self._floor, oldest + 1)
        return tags

    def seen_or_add(self, tag: bytes, epoch: int = 0) -> bool:
        """Return True if ``tag`` was seen before in ``epoch`` (a replay: drop the packet);
        otherwise remember it and return False.

        A tag of an epoch already forgotten (older than the last :meth:`rotate`, or pushed out
        by newer epochs) also returns True: without its memory the cache cannot vouch for it,
        and a node no longer holds that epoch's key anyway.
        """
        self._counts["checked"] += 1
        if epoch < self._floor:
            self._counts["stale_epoch"] += 1
            return True
        tags = self._tags(epoch)
        positions = tags.current.positions(tag)  # every filter of the cache shares the key
        if (tags.previous is not None and tags.previous.has(positions)) or tags.current.put(
                positions):
            self._counts["replays"] += 1
            return True
        if tags.current.count >= self._capacity:
            tags.previous, tags.current = tags.current, self._new_filter()
            self._counts["rollovers"] += 1
        return False

    def rotate(self, epoch: int) -> None:
        """Forget every epoch older than ``epoch``: their keys are retired, so their packets
        can no longer be processed, and tags from them are refused as stale from now on."""
        for old in [e for e in self._epochs if e < epoch]:
            del self._epochs[old]
        self._floor = max(self._floor, epoch)

    def statistics(self) -> dict[str, int]:
        """Return tags checked, replays detected, stale-epoch refusals, filter rollovers,
        tags held, live epochs and memory held in bytes."""
        stats = dict(self._counts)
        stats["tags"] = sum(t.count() for t in self._epochs.values())
        stats["epochs"] = len(self._epochs)
        stats["bytes"] = sum(t.size_bytes() for t in self._epochs.values())
        return stats
