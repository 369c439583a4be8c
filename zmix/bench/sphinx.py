"""``zmix-bench sphinx``: the Sphinx core against the crypto floor, measured in one process.

The floor is what no implementation of the construction can avoid at a hop: two X25519 scalar
multiplications (the shared secret and the blinding of alpha) and one LIONESS decryption of the
payload. Per-hop processing is reported as a ratio to that floor, both measured in the same run,
interleaved in rounds so that a noisy neighbour slows both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from zmix import crypto
from zmix.sphinx import (
    Hop,
    SphinxParams,
    create_forward_packet,
    create_surb,
    lioness,
    process_packet,
)

ROUNDS = 7


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``zmix-bench sphinx``."""
    parser = argparse.ArgumentParser(prog="zmix-bench sphinx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=400, help="operations per round")
    parser.add_argument("--payload", type=int, default=2048, help="Sphinx payload bytes")
    parser.add_argument("--hops", type=int, default=5, help="route length for creation")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def _per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def run(iterations: int, payload: int, hops: int) -> dict[str, Any]:
    """Measure and return the figures (seconds per operation, medians over rounds)."""
    params = SphinxParams(max_hops=max(5, hops), payload_length=payload)
    keys = [crypto.x25519_keypair() for _ in range(hops)]
    route = [Hop(bytes([i + 1]) * 16, pk, 1000) for i, (pk, _) in enumerate(keys)]
    packet = create_forward_packet(params, route, b"\xaa" * 16, b"bench")
    alpha = packet[1:33]
    lioness_key = crypto.random_bytes(lioness.KEY_BYTES)
    block = packet[params.header_length:]
    private = keys[0][1]

    def floor() -> None:
        crypto.x25519(private, alpha)
        crypto.x25519(private, alpha)
        lioness.decrypt(lioness_key, block)

    samples: dict[str, list[float]] = {"process": [], "floor": [], "create": [], "surb": []}
    slow = max(1, iterations // 10)
    for _ in range(ROUNDS):
        samples["process"].append(_per_call(lambda: process_packet(params, private, packet),
                                            iterations))
        samples["floor"].append(_per_call(floor, iterations))
        samples["create"].append(_per_call(
            lambda: create_forward_packet(params, route, b"\xaa" * 16, b"bench"), slow))
        samples["surb"].append(_per_call(
            lambda: create_surb(params, route, b"\xaa" * 16, b"\xbb" * 16), slow))
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = [p / f for p, f in zip(samples["process"], samples["floor"], strict=True)]
    return {"payload_bytes": payload, "packet_bytes": params.packet_length, "hops": hops,
            "per_hop_seconds": med["process"], "floor_seconds": med["floor"],
            "ratio": statistics.median(ratios), "create_seconds": med["create"],
            "surb_seconds": med["surb"], "rounds": ROUNDS, "iterations": iterations}


def main(argv: list[str]) -> int:
    """Run ``zmix-bench sphinx``; print the figures; return 0."""
    args = build_parser().parse_args(argv)
    result = run(args.iterations, args.payload, args.hops)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    us = 1e6
    print(f"zmix-bench sphinx: v1, {result['payload_bytes']}-byte payload "
          f"({result['packet_bytes']}-byte packets), medians of {ROUNDS} rounds")
    print(f"  per-hop processing        {result['per_hop_seconds'] * us:8.1f} us")
    print(f"  crypto floor (2 X25519 + LIONESS) {result['floor_seconds'] * us:8.1f} us")
    print(f"  ratio processing / floor  {result['ratio']:8.3f}  (target <= 1.25)")
    print(f"  {args.hops}-hop packet creation    {result['create_seconds'] * us:8.1f} us")
    print(f"  {args.hops}-hop SURB creation      {result['surb_seconds'] * us:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
