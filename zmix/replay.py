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

When a filter holds ``capacity`` tags, its epoch starts a fresh one (the next *generation*) and
keeps the full one as "previous"; a tag found in either is a replay. So a lookup meets at most two
filters (p <= 5.7e-7 at the default capacity), and a tag is remembered for at least ``capacity``
later tags of its epoch, at most ``2 * capacity``. A replay older than that window is not caught:
size the capacity above the packets a node processes in one key epoch
(``statistics()["rollovers"]`` shows when it was not); then the replay window is the key's whole
lifetime. At most ``epochs`` epochs are kept (three: the previous key in its grace period, the
current one and the next), so the bound is ``epochs * 2 * capacity * 64 / 8`` bytes: 48 MB at the
defaults (3 epochs x 2 generations x 8 MB), 8 MB per epoch until its first rollover.

Each epoch's filters share one hash key, drawn at random when the epoch's first filter is made:
a tag's block and bits come from one keyed BLAKE2b digest (a 64-bit word picks the block, k
16-bit words give the bits in it, 9 bits of each), computed once per lookup for both filters. The
key is secret because the sender of a packet knows its tag and could otherwise choose which bits
its packets set.

**Files.** Given a ``directory``, every filter is the file ``DIRECTORY/EPOCH-GENERATION.bloom``
(0600, directory 0700), mapped with ``mmap`` (``MAP_SHARED``): a bit is in the kernel's page cache
the moment it is set, so a process killed with SIGKILL loses nothing. A file is one page of header
(:data:`HEADER_BYTES`: magic, format version, epoch, generation, geometry, the hash key and a
checksum of these) then the bit array; on disk, each filter costs its memory plus 4 KiB (48 MB at
the defaults). A file is made under a temporary name, its header written, its space allocated
(``posix_fallocate``: a full disk fails here, not later as a SIGBUS on a mapped write), fsynced,
renamed into place and the directory fsynced, all before it is used. The header is never written
again and bits are only ever set, so a power loss loses at most the bits set since the last
:meth:`ReplayCache.flush` (``msync``), never older ones; the caller flushes periodically and at
shutdown. A file whose header is wrong or truncated raises :class:`ReplayFileError` naming it:
the cache never silently starts empty. Opening a directory loads its filters; a loaded filter's
tag count (which only decides when it rolls over) is estimated from the bits set in each block,
``n_b = ln(1 - x_b / B) / (k ln(1 - 1/B))`` summed over blocks (the classic estimate applied per
block; it counts tags that set a new bit, as the live count does). One process at a time holds a
directory (an ``flock`` on ``DIRECTORY/lock``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import math
import mmap
import os
import re
import struct
from pathlib import Path

from zmix import crypto
from zmix.errors import LocalMisuse, ZmixError

BITS_PER_TAG = 64  # m / n: filter bits per tag of capacity
HASHES = 8  # k: bits per tag, all in one block
BLOCK_BITS = 512  # B: one 64-byte cache line
DEFAULT_CAPACITY = 1_000_000  # n: tags per filter before it rolls over
DEFAULT_EPOCHS = 3  # key epochs accepted at once: previous (in grace), current, next
MAX_BLOCKS = 2**32
HEADER_BYTES = 4096  # a filter file's header: one page, so the bit array is mapped page-aligned
FORMAT_VERSION = 1
_MAGIC = b"ZMIXRPLY"
# magic, version, hashes (k), bits per tag, epoch, generation, capacity (n), blocks, hash key
_HEADER = struct.Struct("<8sHHIqQQQ32s")
_CHECKSUM_BYTES = 16  # BLAKE2b of the packed fields, after them
_FILE_NAME = re.compile(r"^(\d+)-(\d+)\.bloom$")
_BLOCK_BYTES = BLOCK_BITS // 8
_BIT = tuple(1 << i for i in range(BLOCK_BITS))  # a bit of a block, as an int mask
_WORDS = 1 << 16  # a hash word is 16 bits, of which the low 9 pick a bit of the block
# Tables indexed by a whole hash word, so a lookup skips masking it to 9 bits: the word's bit as
# a block mask (512 KiB of references to the 512 masks above), and its byte in the block and bit
# in that byte (the block is a little-endian int: bit p is bit p % 8 of byte p // 8).
_WORD_BIT = _BIT * (_WORDS // BLOCK_BITS)
_WORD_BYTE = bytes((w % BLOCK_BITS) >> 3 for w in range(_WORDS))
_WORD_BIT_IN_BYTE = bytes(1 << (w & 7) for w in range(_WORDS))
_from_bytes = int.from_bytes  # bound once: ``int.from_bytes`` binds the classmethod per call
_HASH_KEY_BYTES = 32
_PAGE = 4096  # bytes in a memory page (a smaller step than the real page size is as good)


class ReplayFileError(ZmixError):
    """A replay filter file (or its directory) cannot be used; the message names the file."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


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


def estimated_items(array: bytes | bytearray | mmap.mmap, hashes: int) -> int:
    """Return the number of items a blocked filter's bit array probably holds, from the bits set
    in each block (the module docstring's per-block estimate)."""
    per_bit = hashes * math.log(1.0 - 1.0 / BLOCK_BITS)
    ones = collections.Counter(
        int.from_bytes(array[o:o + _BLOCK_BYTES], "little").bit_count()
        for o in range(0, len(array), _BLOCK_BYTES))
    total = 0.0
    for x, blocks in ones.items():
        x_f = min(x, BLOCK_BITS - 0.5)  # a full block: as full as the estimate can say
        total += blocks * math.log(1.0 - x_f / BLOCK_BITS) / per_bit
    return round(total)


class BloomFilter:
    """A fixed-size blocked Bloom filter over byte strings (see the module docstring).

    :meth:`locate` hashes an item once; filters of the same size and key share locations, so a
    cache looks a tag up in two filters for the price of one hash (:meth:`check_and_add` does
    that whole lookup in one call: the cache's per-packet path). The bit array is in memory, or
    a shared file mapping given as ``array`` (see :class:`ReplayCache`).
    """

    def __init__(self, capacity: int, bits_per_item: int = BITS_PER_TAG, hashes: int = HASHES,
                 *, key: bytes | None = None, array: mmap.mmap | None = None) -> None:
        """Raises :class:`LocalMisuse` for a capacity below 1, ``hashes`` outside 1..16, a
        filter that would need more than 2**32 blocks, or an ``array`` of the wrong size."""
        blocks = filter_blocks(capacity, bits_per_item, hashes)
        self.capacity = capacity
        self.bits_per_item = bits_per_item
        self.blocks = blocks
        self.bits = blocks * BLOCK_BITS
        self.hashes = hashes
        self.key = crypto.random_bytes(_HASH_KEY_BYTES) if key is None else key
        self.count = 0  # items added that set at least one new bit
        # Copying a keyed hasher skips hashing the key block again: faster than a new keyed
        # blake2b per item (about 330 against 470 ns here).
        self._copy_hasher = hashlib.blake2b(digest_size=8 + 2 * hashes, key=self.key).copy
        self._unpack = struct.Struct(f"<Q{hashes}H").unpack
        self._unrolled = hashes == 8  # check_and_add spells out eight words (the default k)
        self._array: bytearray | mmap.mmap
        if array is None:
            self._array = bytearray(blocks * _BLOCK_BYTES)
            # The zeroed memory is only mapped when first written; write a byte of every page
            # now, so the memory is held from the start and the first packets pay no page faults.
            self._array[::_PAGE] = bytes(len(range(0, len(self._array), _PAGE)))
        elif len(array) != blocks * _BLOCK_BYTES:
            raise LocalMisuse(f"a filter of {blocks} blocks needs {blocks * _BLOCK_BYTES} bytes")
        else:
            self._array = array

    def locate(self, item: bytes) -> tuple[int, int]:
        """Return where ``item`` lives in this filter: its block's byte offset and its bits in
        the block, as an int mask."""
        h = self._copy_hasher()
        h.update(item)
        block, *words = self._unpack(h.digest())
        mask = 0
        for word in words:
            mask |= _WORD_BIT[word]
        return block % self.blocks * _BLOCK_BYTES, mask

    def check_and_add(self, item: bytes, older: BloomFilter | None = None) -> bool:
        """Return True if ``item`` is (probably) in ``older`` or already in this filter, setting
        nothing; otherwise add it to this filter and return False.

        The answer, the bits set and the count are those of ``older.has(where) or
        self.put(where)`` with ``where = self.locate(item)``; ``older`` must locate items as
        this filter does (:meth:`same_hashing`), as an epoch's generations do. This is the
        replay cache's per-packet path, so it is spelled out: one hash, no location tuple, and
        the older filter's block read only when the tag's first bit is set there (most fresh
        tags miss it: a full filter has about one bit in nine set).
        """
        h = self._copy_hasher()
        h.update(item)
        if self._unrolled:
            block, first, w1, w2, w3, w4, w5, w6, w7 = self._unpack(h.digest())
            bit = _WORD_BIT
            mask = (bit[first] | bit[w1] | bit[w2] | bit[w3] | bit[w4] | bit[w5] | bit[w6]
                    | bit[w7])
        else:
            block, first, *words = self._unpack(h.digest())
            mask = _WORD_BIT[first]
            for word in words:
                mask |= _WORD_BIT[word]
        offset = block % self.blocks * _BLOCK_BYTES
        end = offset + _BLOCK_BYTES
        if older is not None:
            array = older._array
            if (array[offset + _WORD_BYTE[first]] & _WORD_BIT_IN_BYTE[first]
                    and _from_bytes(array[offset:end], "little") & mask == mask):
                return True
        array = self._array
        held = _from_bytes(array[offset:end], "little")
        merged = held | mask
        if merged == held:
            return True
        array[offset:end] = merged.to_bytes(_BLOCK_BYTES, "little")
        self.count += 1
        return False

    def has(self, where: tuple[int, int]) -> bool:
        """Return True if every bit of ``where`` is set (the item is probably present)."""
        offset, mask = where
        block = _from_bytes(self._array[offset:offset + _BLOCK_BYTES], "little")
        return block & mask == mask

    def put(self, where: tuple[int, int]) -> bool:
        """Set the bits of ``where``; return True if they all were already set."""
        offset, mask = where
        array = self._array
        block = _from_bytes(array[offset:offset + _BLOCK_BYTES], "little")
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

    def same_hashing(self, other: BloomFilter) -> bool:
        """Return True if ``other`` locates every item where this filter does."""
        return (self.blocks, self.hashes, self.key) == (other.blocks, other.hashes, other.key)

    def flush(self) -> bool:
        """Write a file-backed filter's set bits to disk (``msync``) and return True; return
        False for an in-memory filter (nothing to write)."""
        if isinstance(self._array, mmap.mmap):
            self._array.flush()
            return True
        return False

    def close(self) -> None:
        """Release the bit array (unmap a file-backed one, without syncing: see :meth:`flush`).
        The filter is unusable afterwards."""
        if isinstance(self._array, mmap.mmap):
            self._array.close()
        self._array = bytearray()

    @property
    def size_bytes(self) -> int:
        """Memory held by the bit array."""
        return len(self._array)


def filter_blocks(capacity: int, bits_per_item: int, hashes: int) -> int:
    """Return the blocks of a filter of this geometry. Raises :class:`LocalMisuse` for a capacity
    or ``bits_per_item`` below 1, ``hashes`` outside 1..16, or more than 2**32 blocks."""
    if capacity < 1 or bits_per_item < 1 or not 1 <= hashes <= 16:
        raise LocalMisuse("need capacity >= 1, bits_per_item >= 1 and 1 <= hashes <= 16")
    blocks = -(-capacity * bits_per_item // BLOCK_BITS)
    if blocks > MAX_BLOCKS:
        raise LocalMisuse(f"a filter holds at most {MAX_BLOCKS} blocks, {blocks} asked")
    return blocks


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """What a filter file's header fixes: the geometry and the hash key."""

    capacity: int
    bits_per_item: int
    hashes: int
    key: bytes

    @classmethod
    def of(cls, bloom: BloomFilter) -> _Shape:
        return cls(bloom.capacity, bloom.bits_per_item, bloom.hashes, bloom.key)

    @property
    def blocks(self) -> int:
        return filter_blocks(self.capacity, self.bits_per_item, self.hashes)

    def filter(self, array: mmap.mmap | None = None) -> BloomFilter:
        """Return a filter of this shape on ``array`` (or in memory)."""
        return BloomFilter(self.capacity, self.bits_per_item, self.hashes, key=self.key,
                           array=array)


def _pack_header(epoch: int, generation: int, shape: _Shape) -> bytes:
    fields = _HEADER.pack(_MAGIC, FORMAT_VERSION, shape.hashes, shape.bits_per_item, epoch,
                          generation, shape.capacity, shape.blocks, shape.key)
    checksum = hashlib.blake2b(fields, digest_size=_CHECKSUM_BYTES).digest()
    return (fields + checksum).ljust(HEADER_BYTES, b"\0")


def _map(fd: int, length: int) -> mmap.mmap:
    """Map a filter file's bit array, shared, its pages read in now (the first packets then
    pay no major faults)."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, length, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                     offset=HEADER_BYTES)


class _Store:
    """A directory of filter files (see the module docstring): create, load, delete, lock."""

    def __init__(self, directory: Path) -> None:
        """Raises :class:`ReplayFileError` if the directory cannot be made or another process
        holds it."""
        self.directory = directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)  # the files hold hash keys: owner only, whatever the umask
            fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ReplayFileError(directory, f"cannot use the replay directory: {exc}") from exc
        self._lock = os.fdopen(fd, "rb+")  # a file object: closed, hence unlocked, if dropped
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock.close()
            raise ReplayFileError(directory, "held by another process (its lock file is "
                                             "locked)") from exc

    def path(self, epoch: int, generation: int) -> Path:
        """Return the file of ``epoch``'s filter ``generation``."""
        return self.directory / f"{epoch}-{generation}.bloom"

    def create(self, epoch: int, generation: int, shape: _Shape) -> BloomFilter:
        """Write a new, empty file for a filter of ``shape``, crash-safely (module docstring),
        and return the filter mapped on it."""
        final = self.path(epoch, generation)
        temporary = final.with_name(f".{final.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()  # left by a crash while making it: never used
        size = shape.blocks * _BLOCK_BYTES
        try:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise ReplayFileError(final, f"cannot create the filter file: {exc}") from exc
        try:
            os.pwrite(fd, _pack_header(epoch, generation, shape), 0)
            os.posix_fallocate(fd, 0, HEADER_BYTES + size)
            os.fsync(fd)
            os.rename(temporary, final)
            self.sync_directory()
            array = _map(fd, size)
        except OSError as exc:
            raise ReplayFileError(final, f"cannot create the filter file: {exc}") from exc
        finally:
            os.close(fd)
        return shape.filter(array)

    def open(self, path: Path, epoch: int, generation: int) -> BloomFilter:
        """Return the filter of an existing file, its count estimated from its bits. Raises
        :class:`ReplayFileError` if its header is wrong or the file is truncated."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise ReplayFileError(path, f"cannot open the filter file: {exc}") from exc
        try:
            shape = self._check(path, os.pread(fd, HEADER_BYTES, 0), os.fstat(fd).st_size,
                                epoch, generation)
            array = _map(fd, shape.blocks * _BLOCK_BYTES)
        except OSError as exc:
            raise ReplayFileError(path, f"cannot map the filter file: {exc}") from exc
        finally:
            os.close(fd)
        loaded = shape.filter(array)
        loaded.count = estimated_items(array, loaded.hashes)
        return loaded

    @staticmethod
    def _check(path: Path, header: bytes, size: int, epoch: int, generation: int) -> _Shape:
        """Return the header's shape, or raise :class:`ReplayFileError` saying what is wrong."""
        need = _HEADER.size + _CHECKSUM_BYTES
        if len(header) < need:
            raise ReplayFileError(path, f"truncated header ({len(header)} bytes)")
        fields, checksum = header[:_HEADER.size], header[_HEADER.size:need]
        magic, version, hashes, bits_per_item, h_epoch, h_gen, capacity, blocks, key = \
            _HEADER.unpack(fields)
        if magic != _MAGIC:
            raise ReplayFileError(path, "not a zmix replay filter (wrong magic)")
        if version != FORMAT_VERSION:
            raise ReplayFileError(path, f"format version {version}, this zmix reads "
                                        f"{FORMAT_VERSION}")
        if hashlib.blake2b(fields, digest_size=_CHECKSUM_BYTES).digest() != checksum:
            raise ReplayFileError(path, "header checksum mismatch (the header is corrupt)")
        if (h_epoch, h_gen) != (epoch, generation):
            raise ReplayFileError(path, f"header says epoch {h_epoch} generation {h_gen}")
        try:
            if filter_blocks(capacity, bits_per_item, hashes) != blocks:
                raise LocalMisuse("blocks disagree with the capacity")
        except LocalMisuse as exc:
            raise ReplayFileError(path, f"impossible geometry in the header: {exc}") from exc
        if size != HEADER_BYTES + blocks * _BLOCK_BYTES:
            raise ReplayFileError(path, f"{size} bytes, a filter of {blocks} blocks has "
                                        f"{HEADER_BYTES + blocks * _BLOCK_BYTES} (truncated?)")
        return _Shape(capacity, bits_per_item, hashes, key)

    def listing(self) -> dict[int, list[int]]:
        """Return the generations on disk by epoch, oldest first; drop leftover temporaries."""
        found: dict[int, list[int]] = collections.defaultdict(list)
        for entry in self.directory.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".bloom.tmp"):
                entry.unlink()  # a crash while making a file: it was never used
            elif (match := _FILE_NAME.match(entry.name)) is not None:
                found[int(match[1])].append(int(match[2]))
        return {epoch: sorted(gens) for epoch, gens in found.items()}

    def delete(self, epoch: int, generation: int) -> None:
        """Delete a filter's file (the filter must be closed)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(epoch, generation).unlink()
        self.sync_directory()

    def sync_directory(self) -> None:
        """fsync the directory, so a file made, renamed or deleted stays so after a power loss."""
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # some file systems cannot sync a directory
                raise
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the directory's lock."""
        self._lock.close()


class _EpochTags:
    """The filters of one key epoch: the one being filled and the last full one."""

    __slots__ = ("current", "generation", "previous")

    def __init__(self, current: BloomFilter, generation: int = 0,
                 previous: BloomFilter | None = None) -> None:
        self.current = current
        self.generation = generation  # the current filter's; the previous one's is one less
        self.previous = previous

    def filters(self) -> list[tuple[int, BloomFilter]]:
        """Return (generation, filter) of the epoch's filters."""
        held = [(self.generation, self.current)]
        if self.previous is not None:
            held.append((self.generation - 1, self.previous))
        return held

    def count(self) -> int:
        return sum(bloom.count for _, bloom in self.filters())

    def size_bytes(self) -> int:
        return sum(bloom.size_bytes for _, bloom in self.filters())


class ReplayCache:
    """Replay tags seen per key epoch, in bounded memory, optionally in files that survive the
    process (see the module docstring)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, epochs: int = DEFAULT_EPOCHS,
                 directory: Path | None = None, bits_per_tag: int = BITS_PER_TAG,
                 hashes: int = HASHES) -> None:
        """Keep tags in memory, or with ``directory`` in its filter files, loading those there.

        Raises :class:`LocalMisuse` for ``epochs`` below 1 or a filter geometry that
        :class:`BloomFilter` refuses, :class:`ReplayFileError` for a directory held by another
        process or holding a file that cannot be loaded.
        """
        if epochs < 1:
            raise LocalMisuse("a replay cache keeps at least one epoch")
        filter_blocks(capacity, bits_per_tag, hashes)  # refuse a bad geometry now
        self._capacity = capacity
        self._max_epochs = epochs
        self._geometry = (bits_per_tag, hashes)
        self._epochs: dict[int, _EpochTags] = {}
        self._floor = 0  # epochs below this were forgotten
        self._dropped: set[int] = set()  # epochs at or above the floor forgotten by drop()
        self._checked = 0  # apart from the other counts: it is counted for every packet
        self._counts = {"replays": 0, "stale_epoch": 0, "rollovers": 0, "flushes": 0}
        self._store = None if directory is None else _Store(directory)
        if self._store is None:
            self._tags(0)  # allocate now: the memory a node needs shows at start, not under load
        else:
            try:
                self._load()
            except BaseException:
                self.close()
                raise

    def _load(self) -> None:
        """Load the directory's filters: per epoch the newest two generations (a crash during a
        rollover can leave an older third: deleted), the newest ``epochs`` epochs."""
        assert self._store is not None
        listing = self._store.listing()
        for epoch in sorted(listing)[:-self._max_epochs]:
            for generation in listing.pop(epoch):
                self._store.delete(epoch, generation)
            self._floor = epoch + 1
        for epoch, generations in listing.items():
            for generation in generations[:-2]:
                self._store.delete(epoch, generation)
            loaded = [self._store.open(self._store.path(epoch, g), epoch, g)
                      for g in generations[-2:]]
            tags = _EpochTags(loaded[-1], generations[-1])
            self._epochs[epoch] = tags  # held now, so close() releases it if the next fails
            if len(loaded) == 2:
                if generations[-2] != generations[-1] - 1 or not loaded[0].same_hashing(loaded[1]):
                    loaded[0].close()
                    raise ReplayFileError(self._store.path(epoch, generations[-2]),
                                          f"does not pair with generation {generations[-1]} "
                                          "(generation, geometry or hash key differ)")
                tags.previous = loaded[0]

    def _make(self, epoch: int, generation: int, shape: _Shape) -> BloomFilter:
        if self._store is None:
            return shape.filter()
        return self._store.create(epoch, generation, shape)

    def _tags(self, epoch: int) -> _EpochTags:
        tags = self._epochs.get(epoch)
        if tags is None:
            # A fresh key per epoch: a filter's file then never holds another epoch's key.
            shape = _Shape(self._capacity, *self._geometry, crypto.random_bytes(_HASH_KEY_BYTES))
            tags = self._epochs[epoch] = _EpochTags(self._make(epoch, 0, shape))
            if len(self._epochs) > self._max_epochs:
                oldest = min(self._epochs)
                self._forget(oldest)
                self._floor = max(self._floor, oldest + 1)
        return tags

    def _forget(self, epoch: int) -> None:
        """Release ``epoch``'s filters and delete their files."""
        for generation, bloom in self._epochs.pop(epoch).filters():
            bloom.close()
            if self._store is not None:
                self._store.delete(epoch, generation)

    def seen_or_add(self, tag: bytes, epoch: int = 0) -> bool:
        """Return True if ``tag`` was seen before in ``epoch`` (a replay: drop the packet);
        otherwise remember it and return False.

        A tag of an epoch already forgotten (older than the last :meth:`rotate`, dropped by
        :meth:`drop`, or pushed out by newer epochs) also returns True: without its memory the
        cache cannot vouch for it, and a node no longer holds that epoch's key anyway.
        """
        tags = self._epochs.get(epoch)  # a held epoch is never below the floor nor dropped
        if tags is None:
            tags = self._unheld(epoch)
            if tags is None:
                return True
        self._checked += 1
        current = tags.current
        if current.check_and_add(tag, tags.previous):  # an epoch's filters share key and size
            self._counts["replays"] += 1
            return True
        if current.count >= current.capacity:
            self._roll_over(epoch, tags)
        return False

    def _unheld(self, epoch: int) -> _EpochTags | None:
        """Return the filters of an epoch not held, made now; or count a tag of a forgotten
        epoch as checked and stale and return None."""
        if epoch < self._floor or epoch in self._dropped:
            self._checked += 1
            self._counts["stale_epoch"] += 1
            return None
        try:
            return self._tags(epoch)
        except BaseException:
            self._checked += 1  # as when the tag is checked after the filter is made
            raise

    def _roll_over(self, epoch: int, tags: _EpochTags) -> None:
        """Start ``epoch``'s next generation; the new file exists before the oldest is deleted,
        so a crash in between leaves three generations (the load keeps the newest two)."""
        fresh = self._make(epoch, tags.generation + 1, _Shape.of(tags.current))
        oldest = tags.previous
        tags.previous, tags.current = tags.current, fresh
        tags.generation += 1
        self._counts["rollovers"] += 1
        if oldest is not None:
            oldest.close()
            if self._store is not None:
                self._store.delete(epoch, tags.generation - 2)

    def prepare(self, epoch: int) -> None:
        """Make ``epoch``'s filter now (its memory and file), before its first tag: call it when
        the epoch's key becomes accepted. Nothing happens for an epoch forgotten or held."""
        if epoch >= self._floor and epoch not in self._dropped:
            self._tags(epoch)

    def rotate(self, epoch: int) -> None:
        """Forget every epoch older than ``epoch`` and delete their files: their keys are
        retired, so their packets can no longer be processed, and tags from them are refused as
        stale from now on."""
        for old in [e for e in self._epochs if e < epoch]:
            self._forget(old)
        self._floor = max(self._floor, epoch)
        self._dropped = {e for e in self._dropped if e >= self._floor}

    def drop(self, epoch: int) -> None:
        """Forget exactly ``epoch`` (its key was erased) and delete its files; its tags are
        refused as stale from now on, other epochs are untouched."""
        if epoch in self._epochs:
            self._forget(epoch)
        if epoch >= self._floor:
            self._dropped.add(epoch)

    def epochs(self) -> list[int]:
        """Return the epochs whose tags are held, oldest first."""
        return sorted(self._epochs)

    def flush(self) -> None:
        """Write every file-backed filter's set bits to disk (``msync``), so they survive a power
        loss; nothing to do in memory. Call it periodically and at shutdown: bits set since the
        last flush are lost on power loss (not on a crash of the process)."""
        if self._store is None:
            return
        for tags in self._epochs.values():
            for _, bloom in tags.filters():
                bloom.flush()
        self._counts["flushes"] += 1

    def close(self) -> None:
        """Flush, release the filters and the directory; the cache is unusable afterwards."""
        if self._store is not None:
            self.flush()
        for tags in self._epochs.values():
            for _, bloom in tags.filters():
                bloom.close()
        self._epochs.clear()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> ReplayCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> dict[str, int]:
        """Return tags checked, replays detected, stale-epoch refusals, filter rollovers,
        flushes to disk, tags held, live epochs and memory held in bytes (for file-backed
        filters: mapped, and the same on disk plus one header page per filter)."""
        stats = {"checked": self._checked, **self._counts}
        stats["tags"] = sum(t.count() for t in self._epochs.values())
        stats["epochs"] = len(self._epochs)
        stats["bytes"] = sum(t.size_bytes() for t in self._epochs.values())
        return stats
