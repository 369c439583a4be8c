"""``zmix-bench e2e``: a whole local network, real clients, real messages.

Runs a network of real node processes (3 layers of 2 mixnodes, 2 providers) twice, once with
per-hop delays of zero and once with a configured mean delay, with two online clients (alice on
provider-1 sends, bob on provider-2 fetches) running their Loopix streams at the demo rates.
It reports, from one run:

- end-to-end latency of real messages, submit to reassembled at the recipient (median, p99); this
  includes the wait for a payload slot (Exp with mean 1/lambda_P) and for the next fetch;
- the per-hop overhead with zero delays, from the mixnodes' own loops (Loopix lambda_M): each node
  times its loops from creation to return and divides by the hops travelled;
- with a mean delay: the measured mean latency against the expected one: (hops - 1) x mean
  delay (the recipient's provider stores a message as soon as it has processed it; its own hop
  delay holds back only the acknowledgement) + 1/lambda_P + fetch interval / 2;
- goodput of a large file (bytes of the file per second from submit to reassembled).
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

from zmix.bench.common import make_network, network_launcher
from zmix.runtime import metrics
from zmix.runtime.client import ClientRuntime

HOPS = 5  # own provider, three layers, recipient's provider


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``zmix-bench e2e``."""
    parser = argparse.ArgumentParser(prog="zmix-bench e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=40, help="messages per phase")
    parser.add_argument("--mean-delay", type=float, default=0.05,
                        help="per-hop mean delay of the second phase, seconds (default 0.05)")
    parser.add_argument("--payload-rate", type=float, default=20.0,
                        help="lambda_P, real-or-drop packets per second per client (default 20)")
    parser.add_argument("--fetch-interval", type=float, default=0.05,
                        help="seconds between mailbox fetches (default 0.05)")
    parser.add_argument("--mix-loop-rate", type=float, default=5.0,
                        help="lambda_M per mixnode (default 5)")
    parser.add_argument("--file-kib", type=int, default=256, help="size of the goodput file")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _phase(args: argparse.Namespace, mean_delay: float, with_file: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="zmix-bench-e2e-") as tmp:
        topology, state = make_network(
            Path(tmp), clients={"alice": "provider-1", "bob": "provider-2"}, network="zmix-bench",
            loopix={"mean_delay": mean_delay, "payload_rate": args.payload_rate,
                    "loop_rate": 2.0, "drop_rate": 2.0, "mix_loop_rate": args.mix_loop_rate,
                    "fetch_interval": args.fetch_interval, "max_delay": 60.0})
        # The authority first (every node on its allowlist), then every node, as zmix-up does.
        launcher = network_launcher(state, topology, verbosity=0)
        try:  # (started inside: stop() also stops a start cut short by a failure or a signal)
            launcher.start()
            bob_runtime = ClientRuntime(state, "bob", drain=True)
            with ClientRuntime(state, "alice") as alice, bob_runtime as bob:
                latencies = _messages(alice, bob, args.messages)
                goodput = _file(alice, bob, args.file_kib * 1024) if with_file else None
            loops = [metrics.statistics(state, n.name) or {}
                     for layer in topology.layers for n in layer]
        finally:
            launcher.stop()
    per_hop = [s["loop_per_hop_us_median"] / 1e6 for s in loops if "loop_per_hop_us_median" in s]
    return {
        "mean_delay": mean_delay,
        "latency_median": statistics.median(latencies),
        "latency_p99": _pct(latencies, 0.99),
        "latency_mean": statistics.fmean(latencies),
        "expected_mean": ((HOPS - 1) * mean_delay + 1 / args.payload_rate
                          + args.fetch_interval / 2),
        "loop_per_hop_median": statistics.median(per_hop) if per_hop else None,
        "goodput_bytes_per_second": goodput,
    }


def _run_both(alice: ClientRuntime, bob: ClientRuntime, until: float) -> list[Any]:
    got = []
    for runtime in (alice, bob):
        got.extend(runtime.step(min(until, time.time() + 0.005)))
    return got


def _messages(alice: ClientRuntime, bob: ClientRuntime, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        t0 = time.time()
        alice.core.submit(t0, "bob", f"bench message {i}".encode())
        deadline = t0 + 60
        while time.time() < deadline:
            received = _run_both(alice, bob, deadline)
            if received:
                latencies.append(time.time() - t0)
                for message in received:
                    bob.core.mark_delivered(message.message_id)
                break
    if not latencies:
        raise RuntimeError("no message arrived within 60 s")
    return latencies


def _file(alice: ClientRuntime, bob: ClientRuntime, size: int) -> float:
    t0 = time.time()
    alice.core.submit(t0, "bob", os.urandom(size), filename="bench.bin")
    deadline = t0 + 600
    while time.time() < deadline:
        received = _run_both(alice, bob, deadline)
        if any(m.filename == "bench.bin" for m in received):
            return size / (time.time() - t0)
    raise RuntimeError("the goodput file did not arrive within 600 s")


def main(argv: list[str]) -> int:
    """Run ``zmix-bench e2e``; print the figures; return 0."""
    args = build_parser().parse_args(argv)
    zero = _phase(args, 0.0, with_file=True)
    delayed = _phase(args, args.mean_delay, with_file=False)
    result = {"zero_delay": zero, "with_delay": delayed, "hops": HOPS,
              "payload_rate": args.payload_rate, "fetch_interval": args.fetch_interval}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    ms = 1000.0
    print(f"zmix-bench e2e: {HOPS} hops, lambda_P {args.payload_rate}/s, "
          f"fetch every {args.fetch_interval * ms:.0f} ms, {args.messages} messages per phase")
    hop = zero["loop_per_hop_median"]
    print(f"  per-hop overhead (mix loops, zero delay)   "
          f"{'n/a' if hop is None else f'{hop * ms:.2f} ms'} median (target < 2 ms)")
    phases = (("zero delay", zero), (f"mean delay {args.mean_delay * ms:.0f} ms", delayed))
    for label, phase in phases:
        print(f"  latency, {label:<22} median {phase['latency_median'] * ms:7.1f} ms, "
              f"p99 {phase['latency_p99'] * ms:7.1f} ms, mean {phase['latency_mean'] * ms:7.1f} ms"
              f" (expected mean {phase['expected_mean'] * ms:.1f} ms)")
    print(f"  goodput of a {args.file_kib} KiB file          "
          f"{zero['goodput_bytes_per_second'] / 1024:.1f} KiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
