"""The replay cache's persistence, measured in one process: file-backed filters against in-memory
ones, and the cost of a flush.

:func:`measure` is called by ``zmix-bench node``; ``python3 -m zmix.bench.replay`` prints its
figures as JSON. Lookups are timed in rounds that alternate between the two caches, so a noisy
neighbour slows both alike, and the medians are reported.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zmix.errors import LocalMisuse
from zmix.replay import DEFAULT_CAPACITY, ReplayCache

_EPOCH = 1  # the epoch the rounds fill; the filter-creation timings use the next ones


def _lookups_per_s(cache: ReplayCache, tags: list[bytes]) -> float:
    seen_or_add = cache.seen_or_add
    start = time.perf_counter()
    for tag in tags:
        seen_or_add(tag, _EPOCH)
    return len(tags) / (time.perf_counter() - start)


def _ms(action: Any) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1e3


def measure(count: int = 100_000, *, rounds: int = 5, capacity: int = DEFAULT_CAPACITY,
            directory: Path | None = None) -> dict[str, Any]:
    """Time ``count`` lookups of fresh tags (the common case: each sets bits) in each cache, in
    ``rounds`` alternating rounds, and the file-backed cache's flushes and filter creation.

    The file-backed filters live in a temporary directory under ``directory`` (default: the
    system's temporary directory; give one on the node's real state disk, since a flush on tmpfs
    costs nothing). ``count`` must stay below ``capacity`` (no rollover during the rounds).

    Returns a dict of:

    - ``lookups``: tags looked up per cache; ``filter_bytes``: one filter's bit array;
    - ``memory_lookups_per_s``, ``file_lookups_per_s``: median over the rounds of
      ``seen_or_add`` calls per second, in-memory and file-backed (mmap) caches;
    - ``file_to_memory_ratio``: file-backed lookups/s over in-memory lookups/s (1.0: no cost);
    - ``flush_ms``: median duration of one ``flush()`` after a round, in milliseconds; a round
      of ``count / rounds`` tags dirties nearly every page, so it writes the whole filter;
    - ``flush_clean_ms``: a ``flush()`` right after another (nothing dirty: the fixed cost);
    - ``create_memory_ms``, ``create_file_ms``: making a new epoch's filter (what a rollover
      costs the node loop), in memory and as a file (create, allocate, fsync, map);
    - ``load_ms``: opening the directory again (two filters: map them, estimate their counts)
      and closing it: what a node's restart pays for its replay files.

    Raises :class:`~zmix.errors.LocalMisuse` if ``count`` reaches ``capacity`` or ``rounds`` is
    below 1.
    """
    if not 1 <= rounds <= count < capacity:
        raise LocalMisuse("need 1 <= rounds <= count < capacity")
    per_round = count // rounds
    batches = [[os.urandom(32) for _ in range(per_round)] for _ in range(2 * rounds)]
    with tempfile.TemporaryDirectory(dir=directory, prefix="zmix-bench-replay-") as tmp:
        memory = ReplayCache(capacity)
        memory.rotate(_EPOCH)
        memory.prepare(_EPOCH)
        filter_bytes = memory.statistics()["bytes"]
        with ReplayCache(capacity, directory=Path(tmp)) as filed:
            filed.prepare(_EPOCH)
            in_memory, in_file, flushes, clean = [], [], [], []
            for i in range(rounds):
                in_memory.append(_lookups_per_s(memory, batches[2 * i]))
                in_file.append(_lookups_per_s(filed, batches[2 * i + 1]))
                flushes.append(_ms(filed.flush))
                clean.append(_ms(filed.flush))
            create_file = _ms(lambda: filed.prepare(_EPOCH + 1))
        load = _ms(lambda: ReplayCache(capacity, directory=Path(tmp)).close())
        create_memory = _ms(lambda: memory.prepare(_EPOCH + 1))
        memory.close()
    mem, fil = statistics.median(in_memory), statistics.median(in_file)
    return {
        "lookups": per_round * rounds,
        "filter_bytes": filter_bytes,
        "memory_lookups_per_s": round(mem),
        "file_lookups_per_s": round(fil),
        "file_to_memory_ratio": round(fil / mem, 3),
        "flush_ms": round(statistics.median(flushes), 3),
        "flush_clean_ms": round(statistics.median(clean), 3),
        "create_memory_ms": round(create_memory, 3),
        "create_file_ms": round(create_file, 3),
        "load_ms": round(load, 3),
    }


def main(argv: list[str]) -> int:
    """Print :func:`measure`'s figures as JSON; an optional argument is the directory."""
    directory = Path(argv[0]) if argv else None
    print(json.dumps(measure(directory=directory), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
