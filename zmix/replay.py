"""The replay cache: a node forwards each Sphinx packet at most once per key epoch.

A replay tag is a hash of the hop's shared secret, so the same packet always has the same tag at
the same node, and a tag is only meaningful under the key (epoch) that produced it.

Design: one Bloom filter per epoch and generation, so memory is fixed however long a node runs.
The filters are *blocked* (Putze, Sanders and Singler, "Cache-, hash- and space-efficient bloom
filters", 2007): a tag's k bits all lie in one block of B = 512 bits, one 64-byte cache line, so
a lookup reads one line of memory instead of k lines scattered over megabytes (each a cache and
TLB miss: on the node loop they cost more than the rest of the lookup). The price is a somewhat
higher false-positive rate than a classic filter of the same size, because blocks fill unevenly.
With m bits in m/B blocks, holding n tags, a block holds j tags with the Poisson probability
P(j) of mean n B / m, and a fresh tag is wrongly reported as seen (a false positive: a good
packet dropped as a replay; the sender's retransmission covers it) with probability about

    p = sum over j of P(j) * (1 - (1 - 1/B) ** (k * j)) ** k.

zmix uses m = 64 bits per tag of capacity and k = 8. At the default capacity of 1,000,000 tags one
filter is 8 MB and, when full, p = 2.84e-7 (a classic filter of 58 bits per tag and k = 7 had
2.46e-7 with 7.25 MB).

When a filter holds ``capacity`` tags, its epoch starts a fresh one and keeps the full one as
"previous"; a tag found in either is a replay. So a lookup meets at most two filters (p <= 5.7e-7
at the default capacity), and a tag is remembered for at least ``capacity`` later tags of its
epoch, at most ``2 * capacity``. A replay older than that window is not caught: size the capacity
above the packets a node processes in one key epoch (``statistics()["rollovers"]`` shows when it
was not). At most ``epochs`` epochs are kept (two: the current key and the one it replaced), so
the memory bound is ``epochs * 2 * capacity * 64 / 8`` bytes (32 MB at the defaults, 16 MB while
a single epoch is in use).

A tag's block and bits come from one keyed BLAKE2b digest: a 64-bit word picks the block, k 16-bit
words give the bits in it (9 bits of each). The key is random per cache because the sender of a
packet knows its tag and could otherwise choose which bits its packets set.
"""

from __future__ import annotations

import hashlib
import math
import struct

from zmix import crypto
from zmix.errors import LocalMisuse

BITS_PER_TAG = 64  # m / n: filter bits per tag of capacity
HASHES = 8  # k: bits per tag, all in one block
BLOCK_BITS = 512  # B: one 64-byte cache line
DEFAULT_CAPACITY = 1_000_000  # n: tags per filter before it rolls over
MAX_BLOCKS = 2**32
_BLOCK_BYTES = BLOCK_BITS // 8
_BIT = tuple(1 << i for i in range(BLOCK_BITS))  # a bit of a block, as an int mask
_HASH_KEY_BYTES = 32
_PAGE = 4096  # bytes in a memory page (a smaller step than the real page size is as good)


def false_positive_rate(bits: int, hashes: int, items: int, block_bits: int = BLOCK_BITS) -> float:
    """Return the expected false-positive rate of a blocked Bloom filter of ``bits`` bits in
    blocks of ``block_bits``, ``hashes`` bits per item, holding ``items`` items (the module
    docstring's sum over the Poisson number of items in a block)."""
    mean = items * block_bits / bits
    if mean == 0:
        return 0.0
    spread = int(12 * math.sqrt(mean)) + 30  # the Poisson terms beyond are negligible
    total = 0.0
    for j in range(max(0, int(mean) - spread), int(mean) + spread):
        log_p = j * math.log(mean) - mean - math.lgamma(j + 1)
        total += math.exp(log_p) * (1.0 - (1.0 - 1.0 / block_bits) ** (hashes * j)) ** hashes
    return total


class BloomFilter:
    """A fixed-size blocked Bloom filter over byte strings (see the module docstring).

    :meth:`locate` hashes an item once; filters of the same size and key share locations, so a
    cache looks a tag up in two filters for the price of one hash.
    """

    def __init__(self, capacity: int, bits_per_item: int = BITS_PER_TAG, hashes: int = HASHES,
                 *, key: bytes | None = None) -> None:
        """Raises :class:`LocalMisuse` for a capacity below 1, ``hashes`` outside 1..16, or a
        filter that would need more than 2**32 blocks."""
        if capacity < 1 or bits_per_item < 1 or not 1 <= hashes <= 16:
            raise LocalMisuse("need capacity >= 1, bits_per_item >= 1 and 1 <= hashes <= 16")
        blocks = -(-capacity * bits_per_item // BLOCK_BITS)
        if blocks > MAX_BLOCKS:
            raise LocalMisuse(f"a filter holds at most {MAX_BLOCKS} blocks, {blocks} asked")
        self.blocks = blocks
        self.bits = blocks * BLOCK_BITS
        self.hashes = hashes
        self.key = crypto.random_bytes(_HASH_KEY_BYTES) if key is None else key
        self.count = 0  # items added that set at least one new bit
        self._hasher = hashlib.blake2b(digest_size=8 + 2 * hashes, key=self.key)
        self._unpack = struct.Struct(f"<Q{hashes}H").unpack
        self._array = bytearray(blocks * _BLOCK_BYTES)
        # The zeroed memory is only mapped when first written; write a byte of every page now,
        # so the filter's memory is held from the start and the first packets pay no page faults.
        self._array[::_PAGE] = bytes(len(range(0, len(self._array), _PAGE)))

    def locate(self, item: bytes) -> tuple[int, int]:
        """Return where ``item`` lives in this filter: its block's byte offset and its bits in
        the block, as an int mask."""
        h = self._hasher.copy()
        h.update(item)
        block, *words = self._unpack(h.digest())
        mask = 0
        for word in words:
            mask |= _BIT[word & (BLOCK_BITS - 1)]
        return block % self.blocks * _BLOCK_BYTES, mask

    def has(self, where: tuple[int, int]) -> bool:
        """Return True if every bit of ``where`` is set (the item is probably present)."""
        offset, mask = where
        block = int.from_bytes(self._array[offset:offset + _BLOCK_BYTES], "little")
        return block & mask == mask

    def put(self, where: tuple[int, int]) -> bool:
        """Set the bits of ``where``; return True if they all were already set."""
        offset, mask = where
        array = self._array
        block = int.from_bytes(array[offset:offset + _BLOCK_BYTES], "little")
        if block & mask == mask:
            return True
        array[offset:offset + _BLOCK_BYTES] = (block | mask).to_bytes(_BLOCK_BYTES, "little")
        self.count += 1
        return False

    def __contains__(self, item: bytes) -> bool:
        return self.has(self.locate(item))

    def add(self, item: bytes) -> bool:
        """Add ``item``; return True if it was (probably) already there."""
        return self.put(self.locate(item))

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
        where = tags.current.locate(tag)  # every filter of the cache shares the key and size
        if (tags.previous is not None and tags.previous.has(where)) or tags.current.put(where):
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
