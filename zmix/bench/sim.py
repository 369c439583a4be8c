"""``zmix-bench sim``: how fast the simulator runs, at 100 and at 1,000 clients.

Runs ``zmix-sim``'s engine (zmix.sim) on a topology (default topologies/sim.yaml: 3 layers of 10
mixnodes, 10 providers) for ``--duration`` simulated seconds at each client count of
``--clients``, once without and once with the adversary's analysis watching every record, and
reports for each run:

- events per second: the engine's heap events (stream ticks, fetches, mix loops, packets leaving
  a node) handled per second of wall time;
- records per second: link crossings, endings and origins the adversary was given;
- simulated seconds per second of wall time;
- the ratio of each figure to the first run's, measured in the same invocation (these machines
  are shared and noisy: compare ratios, not absolute figures, across runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zmix.cli.common import number
from zmix.sim.engine import SimParams
from zmix.sim.report import measure, simulate
from zmix.topology_yaml import load_topology

DEFAULT_TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "sim.yaml"


def _counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "integers") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: every client count must be at least 2")
    return values


def _duration(text: str) -> float:
    value = number(text)
    if not 2.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 2 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``zmix-bench sim``."""
    parser = argparse.ArgumentParser(prog="zmix-bench sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", type=Path, default=DEFAULT_TOPOLOGY,
                        help="the network to simulate (default topologies/sim.yaml)")
    parser.add_argument("--clients", type=_counts, default=[100, 1000],
                        help="client counts to run, comma-separated (default 100,1000)")
    parser.add_argument("--duration", type=_duration, default=60.0,
                        help="simulated seconds per run (default 60)")
    parser.add_argument("--no-privacy", action="store_true",
                        help="skip the runs with the adversary's analysis")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def run(topology_path: Path, counts: list[int], duration: float,
        privacy: bool) -> list[dict[str, Any]]:
    """Run each client count without (and with) the analysis; return one row per run."""
    topology = load_topology(topology_path)
    rows = []
    for clients in counts:
        params = SimParams(clients=clients, duration=duration, warmup=min(5.0, duration / 10))
        for analysed in ((False, True) if privacy else (False,)):
            run_once = measure if analysed else simulate
            _, report = run_once(topology, params)
            rows.append({"clients": clients, "analysis": analysed, "events": report.events,
                         "records": report.records, "wall_s": report.wall_s,
                         "events_per_s": report.events / report.wall_s,
                         "records_per_s": report.records / report.wall_s,
                         "sim_s_per_s": report.sim_seconds_per_s})
    first = rows[0]
    for row in rows:
        for key in ("events_per_s", "sim_s_per_s"):
            row[f"{key}_ratio"] = row[key] / first[key]
    return rows


def _print_text(rows: list[dict[str, Any]], duration: float) -> None:
    print(f"zmix-bench sim: {duration:g} simulated seconds per run; ratios to the first run")
    print(f"{'clients':>8} {'analysis':>8} {'events':>10} {'events/s':>10} {'records/s':>10} "
          f"{'sim s/s':>8} {'x ev/s':>7} {'x sim/s':>7}")
    for r in rows:
        print(f"{r['clients']:>8} {'yes' if r['analysis'] else 'no':>8} {r['events']:>10} "
              f"{r['events_per_s']:>10.0f} {r['records_per_s']:>10.0f} {r['sim_s_per_s']:>8.2f} "
              f"{r['events_per_s_ratio']:>7.2f} {r['sim_s_per_s_ratio']:>7.3f}")


def main(argv: list[str]) -> int:
    """Run ``zmix-bench sim`` with ``argv``; print the figures; return 0."""
    args = build_parser().parse_args(argv)
    rows = run(args.topology, args.clients, args.duration, not args.no_privacy)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_text(rows, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
