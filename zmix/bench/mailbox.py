"""``zmix-bench mailbox``: the provider's SQLite mailbox with production durability settings.

WAL journal, ``synchronous=FULL``, one commit per stored message (a provider acknowledges a
message only after its commit), on a real file. Reports stored messages/s, fetched messages/s
(fetch a batch of ``fetch_slots`` items, then acknowledge it, as clients do) and the latency of
one full-batch fetch.
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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``zmix-bench mailbox``."""
    parser = argparse.ArgumentParser(prog="zmix-bench mailbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="messages to store")
    parser.add_argument("--clients", type=int, default=10, help="mailboxes to spread them over")
    parser.add_argument("--batch", type=int, default=8, help="items per fetch (fetch_slots)")
    parser.add_argument("--size", type=int, default=2048, help="bytes per message")
    parser.add_argument("--dir", type=Path, default=None,
                        help="directory for the database (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """Measure and return the figures."""
    box = Mailbox(directory / "bench-mailbox.sqlite", quota=args.messages + 1, ttl=3600.0)
    clients = [os.urandom(16) for _ in range(args.clients)]
    payload = os.urandom(args.size)
    now = time.time()
    start = time.perf_counter()
    for i in range(args.messages):
        box.store(clients[i % len(clients)], ItemKind.MESSAGE, bytes(16), payload, now)
    store_seconds = time.perf_counter() - start
    latencies: list[float] = []
    fetched = 0
    start = time.perf_counter()
    for client in clients:
        while True:
            t0 = time.perf_counter()
            items, _ = box.fetch(client, args.batch, now)
            if len(items) == args.batch:
                latencies.append(time.perf_counter() - t0)
            if not items:
                break
            box.ack(client, [item.item_id for item in items])
            fetched += len(items)
    fetch_seconds = time.perf_counter() - start
    box.close()
    ordered = sorted(latencies)
    return {"messages": args.messages, "size": args.size, "batch": args.batch,
            "stored_per_second": args.messages / store_seconds,
            "fetched_per_second": fetched / fetch_seconds,
            "fetch_latency_median": statistics.median(ordered) if ordered else None,
            "fetch_latency_p99": ordered[int(0.99 * (len(ordered) - 1))] if ordered else None,
            "durability": "WAL, synchronous=FULL, one commit per store and per ack"}


def main(argv: list[str]) -> int:
    """Run ``zmix-bench mailbox``; print the figures; return 0."""
    args = build_parser().parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.dir)
        (args.dir / "bench-mailbox.sqlite").unlink(missing_ok=True)
    else:
        with tempfile.TemporaryDirectory(prefix="zmix-bench-mailbox-", dir=".") as tmp:
            result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"zmix-bench mailbox: {result['messages']} messages of {result['size']} bytes, "
          f"{result['durability']}")
    print(f"  stored                {result['stored_per_second']:10.0f} messages/s")
    print(f"  fetched (+ acked)     {result['fetched_per_second']:10.0f} messages/s "
          f"in batches of {result['batch']}")
    if result["fetch_latency_median"] is not None:
        print(f"  full-batch fetch      {result['fetch_latency_median'] * 1e3:10.3f} ms median, "
              f"{result['fetch_latency_p99'] * 1e3:.3f} ms p99")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
