"""The replay cache: a node forwards each Sphinx packet at most once per key epoch.

A replay tag is a hash of the hop's shared secret, so the same packet always has the same tag at
the same node. The cache is a Bloom filter per epoch: memory is fixed however long the node runs,
at the price of a small false-positive rate (a fresh packet wrongly taken for a replay and dropped;
the sender's retransmission covers it). With m bits, k hash functions and n tags inserted, the
false-positive rate is about ``(1 - exp(-k n / m)) ** k``. zmix uses m = 58 bits per tag of
capacity and k = 7 (fewer hashes than the memory-optimal 40, because every hash costs CPU time on
the node loop's hot path): at the default capacity of 1,000,000 tags that is 7.3 MB and a rate of
about 2.6e-7 when full. Past ``capacity`` the node starts a fresh filter and keeps the previous one
(a tag in either is a replay), so memory stays at most twice that.
"""

from __future__ import annotations

import hashlib
import math
import struct

BITS_PER_TAG = 58
HASHES = 7


def false_positive_rate(bits: int, hashes: int, items: int) -> float:
    """Return the expected false-positive rate of a Bloom filter."""
    return (1.0 - math.exp(-hashes * items / bits)) ** hashes


class BloomFilter:
    """A fixed-size Bloom filter over byte strings (up to 2**32 bits)."""

    def __init__(self, capacity: int, bits_per_item: int = BITS_PER_TAG,
                 hashes: int = HASHES) -> None:
        if capacity < 1 or bits_per_item < 1 or not 1 <= hashes <= 16:
            raise ValueError("capacity >= 1, bits_per_item >= 1, 1 <= hashes <= 16")
        self.bits = min(2**32, max(64, capacity * bits_per_item))
        self.hashes = hashes
        self._unpack = struct.Struct(f"<{hashes}I").unpack
        self._array = bytearray((self.bits + 7) // 8)
        self.count = 0

    def _indexes(self, item: bytes) -> list[int]:
        m = self.bits
        digest = hashlib.blake2b(item, digest_size=4 * self.hashes).digest()
        return [i % m for i in self._unpack(digest)]

    def __contains__(self, item: bytes) -> bool:
        array = self._array
        return all(array[i >> 3] & (1 << (i & 7)) for i in self._indexes(item))

    def add(self, item: bytes) -> bool:
        """Add ``item``; return True if it was (probably) already there."""
        array = self._array
        present = True
        for i in self._indexes(item):
            byte, bit = i >> 3, 1 << (i & 7)
            if not array[byte] & bit:
                present = False
                array[byte] |= bit
        if not present:
            self.count += 1
        return present

    @property
    def size_bytes(self) -> int:
        """Memory held by the bit array."""
        return len(self._array)


class ReplayCache:
    """Replay tags seen in the current key epoch, in bounded memory."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self._capacity = capacity
        self._epoch = 0
        self._current = BloomFilter(capacity)
        self._previous: BloomFilter | None = None
        self._replays = self._rollovers = 0

    def seen_or_add(self, tag: bytes, epoch: int = 0) -> bool:
        """Return True if ``tag`` was seen in this epoch (a replay); otherwise remember it."""
        if epoch != self._epoch:
            self.rotate(epoch)
        if self._previous is not None and tag in self._previous:
            self._replays += 1
            return True
        if self._current.add(tag):
            self._replays += 1
            return True
        if self._current.count >= self._capacity:
            self._previous, self._current = self._current, BloomFilter(self._capacity)
            self._rollovers += 1
        return False

    def rotate(self, epoch: int) -> None:
        """Start key epoch ``epoch``: tags of older epochs cannot be replayed under the new key."""
        self._epoch = epoch
        self._current = BloomFilter(self._capacity)
        self._previous = None

    def statistics(self) -> dict[str, int]:
        """Return tags held, replays detected, filter rollovers and memory in bytes."""
        previous = self._previous.size_bytes if self._previous else 0
        return {"tags": self._current.count, "replays": self._replays,
                "rollovers": self._rollovers, "bytes": self._current.size_bytes + previous}
