"""``zmix-bench mailbox``: the provider's SQLite mailbox with production durability settings.

WAL journal, ``synchronous=FULL``, on a real file on disk (by default a temporary directory under
/var/tmp, which unlike /tmp is not a RAM disk on common systems). Reports:

- stored messages/s with one commit per message, which is what a provider does (it acknowledges a
  message only after its own commit);
- stored messages/s with ``store_many`` batches (one commit per batch), the ceiling a batching
  provider could reach;
- fetched messages/s: fetch a batch of ``--batch`` (fetch_slots) items, then acknowledge it, as a
  client does;
- the latency of one fetch that returns a full batch (median and p99).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zmix.mailbox import Mailbox
from zmix.wire import ItemKind

NO_SURB = bytes(16)
TTL = 3600.0  # seconds; the benchmark runs at a fixed "now", nothing expires


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``zmix-bench mailbox``."""
    parser = argparse.ArgumentParser(prog="zmix-bench mailbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=_positive, default=2000,
                        help="messages to store in each store phase (default 2000)")
    parser.add_argument("--clients", type=_positive, default=10,
                        help="mailboxes to spread them over (default 10)")
    parser.add_argument("--batch", type=_positive, default=8,
                        help="items per fetch, i.e. fetch_slots (default 8)")
    parser.add_argument("--store-batch", type=_positive, default=32,
                        help="items per store_many commit (default 32)")
    parser.add_argument("--size", type=_positive, default=2048,
                        help="bytes per message (default 2048)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="directory for the database (default: a temporary one on disk)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _store_one_by_one(box: Mailbox, clients: list[bytes], payload: bytes, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        if box.store(clients[i % len(clients)], ItemKind.MESSAGE, NO_SURB, payload, 0.0) is None:
            raise RuntimeError("mailbox refused a message: quota too small for the benchmark")
    return n / (time.perf_counter() - start)


def _store_batched(box: Mailbox, clients: list[bytes], payload: bytes, n: int,
                   batch: int) -> float:
    items = [(clients[i % len(clients)], ItemKind.MESSAGE, NO_SURB, payload) for i in range(n)]
    start = time.perf_counter()
    for first in range(0, n, batch):
        if None in box.store_many(items[first:first + batch], 0.0):
            raise RuntimeError("mailbox refused a message: quota too small for the benchmark")
    return n / (time.perf_counter() - start)


def _drain(box: Mailbox, clients: list[bytes], batch: int) -> tuple[float, list[float]]:
    """Fetch and acknowledge every mailbox; return messages/s and full-batch fetch latencies."""
    latencies: list[float] = []
    fetched = 0
    start = time.perf_counter()
    for client in clients:
        while True:
            t0 = time.perf_counter()
            items, _ = box.fetch(client, batch, 0.0)
            if len(items) == batch:
                latencies.append(time.perf_counter() - t0)
            if not items:
                break
            box.ack(client, [item.item_id for item in items])
            fetched += len(items)
    return fetched / (time.perf_counter() - start), latencies


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """Measure on a fresh database in ``directory`` and return the figures."""
    path = directory / "bench-mailbox.sqlite"
    box = Mailbox(path, quota=2 * args.messages + 1, ttl=TTL)
    try:
        clients = [os.urandom(16) for _ in range(args.clients)]
        payload = os.urandom(args.size)
        single = _store_one_by_one(box, clients, payload, args.messages)
        batched = _store_batched(box, clients, payload, args.messages, args.store_batch)
        fetched, latencies = _drain(box, clients, args.batch)
        durability = box.durability()
    finally:
        box.close()
    ordered = sorted(latencies)
    return {
        "messages": args.messages, "size": args.size, "clients": args.clients,
        "batch": args.batch, "store_batch": args.store_batch,
        "stored_per_second": single,
        "stored_per_second_batched": batched,
        "fetched_per_second": fetched,
        "fetch_latency_median_ms": statistics.median(ordered) * 1e3 if ordered else None,
        "fetch_latency_p99_ms": ordered[round(0.99 * (len(ordered) - 1))] * 1e3
        if ordered else None,
        "full_batch_fetches": len(ordered),
        **durability, "directory": str(directory),
    }


def _default_parent() -> str:
    return "/var/tmp" if os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK) \
        else tempfile.gettempdir()


def _print_text(r: dict[str, Any]) -> None:
    print(f"zmix-bench mailbox: {r['messages']} messages of {r['size']} bytes over "
          f"{r['clients']} mailboxes, journal={r['journal_mode']}, synchronous={r['synchronous']}, "
          f"in {r['directory']}")
    print(f"  stored, one commit per message   {r['stored_per_second']:10.0f} messages/s")
    print(f"  stored, {r['store_batch']:4d} per commit          "
          f"{r['stored_per_second_batched']:10.0f} messages/s")
    print(f"  fetched + acked, {r['batch']} per fetch     "
          f"{r['fetched_per_second']:10.0f} messages/s")
    if r["fetch_latency_median_ms"] is not None:
        print(f"  one full-batch fetch             {r['fetch_latency_median_ms']:10.3f} ms median, "
              f"{r['fetch_latency_p99_ms']:.3f} ms p99 ({r['full_batch_fetches']} fetches)")


def main(argv: list[str]) -> int:
    """Run ``zmix-bench mailbox`` with ``argv``; print the figures; return 0."""
    args = build_parser().parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="zmix-bench-mailbox-", dir=args.dir) as tmp:
            result = run(args, Path(tmp))
    else:
        with tempfile.TemporaryDirectory(prefix="zmix-bench-mailbox-",
                                         dir=_default_parent()) as tmp:
            result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_text(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
