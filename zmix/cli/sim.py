"""``zmix-sim``: simulate a zmix network on a virtual clock and measure the anonymity it gives.

Runs zmix's own client, node and provider cores for ``--duration`` simulated seconds with
``--clients`` generated clients (docs/privacy.md), then prints latency, loss, bandwidth, node
load and what a global passive adversary learns (sender and receiver anonymity in bits).
``--from-taps DIR`` runs the same analysis on the taps a real network recorded instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from zmix.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    exit_status_help,
    fail,
    number,
    positive_float,
    positive_int,
)
from zmix.errors import ConfigError, LocalMisuse, ZmixError

EXAMPLES = """examples:
  zmix-sim topologies/sim.yaml                           # 100 clients, 60 simulated seconds
  zmix-sim topologies/sim.yaml --clients 1000 --duration 600 --out run1
  zmix-sim topologies/sim.yaml --no-cover --message-rate 0.5   # Loopix without cover traffic
  zmix-sim topologies/sim.yaml --corrupted 0.1 --taps --out run2  # 10% of mixnodes corrupted
  zmix-sim topologies/local.yaml --from-taps STATE/taps      # a real network's taps
  zmix-sim topologies/sim.yaml --sweep mean_delay=0.01,0.05,0.2 --out sweeps   # a table, a plot
"""


def _fraction(text: str) -> float:
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = number(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _sweep(text: str) -> tuple[str, list[float]]:
    from zmix.sim.sweep import PARAMETERS

    name, sep, values = text.partition("=")
    if not sep or name not in PARAMETERS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give PARAMETER=V1,V2,... with PARAMETER one of {', '.join(PARAMETERS)}")
    try:
        numbers = [float(v) for v in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the values must be numbers") from None
    return name, numbers


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``zmix-sim``."""
    parser = argparse.ArgumentParser(
        prog="zmix-sim", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES + "\n" + exit_status_help(
            (EXIT_OK, "the simulation (or the analysis of taps) ran and printed its report"),
            (EXIT_FAILURE, "it could not run: the output folder could not be written, or the "
                           "taps could not be read"),
            usage="bad usage or a bad topology file (the message names the file and key), "
                  "--taps without --out, or a --from-taps folder with no tap of a node of the "
                  "topology; nothing ran"))
    parser.add_argument("topology", type=Path, help="the network's YAML file")
    parser.add_argument("--clients", type=positive_int, default=100,
                        help="generated clients, spread over the providers (default 100)")
    parser.add_argument("--duration", type=positive_float, default=60.0,
                        help="simulated seconds (default 60)")
    parser.add_argument("--warmup", type=_non_negative, default=None,
                        help="simulated seconds at the start not measured (default: 5, or a "
                             "tenth of --duration if that is shorter)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="seed of every random draw: a seed gives the same report (default 0)")
    parser.add_argument("--message-rate", type=_non_negative, default=0.1,
                        help="real messages each client submits per second, to random other "
                             "clients (default 0.1)")
    parser.add_argument("--message-bytes", type=positive_int, default=1000,
                        help="bytes per message (default 1000)")
    parser.add_argument("--no-cover", action="store_true",
                        help="Loopix without cover traffic: no loops, drops or mix loops, and "
                             "nothing sent when no real packet is queued")
    parser.add_argument("--link-latency", type=_non_negative, default=0.0,
                        help="seconds a packet takes to cross any link (default 0)")
    parser.add_argument("--corrupted", type=_fraction, default=0.0,
                        help="fraction of mixnodes that reveal their mapping to the adversary "
                             "(default 0)")
    parser.add_argument("--no-privacy", action="store_true",
                        help="skip the adversary's analysis (faster)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for report.json and report.txt (made if missing)")
    parser.add_argument("--taps", action="store_true",
                        help="also write every record the adversary saw to OUT/taps.jsonl "
                             "(needs --out; large: about 100 bytes a link crossing)")
    parser.add_argument("--from-taps", type=Path, default=None, metavar="DIR",
                        help="analyse the node taps a real network of TOPOLOGY recorded in DIR "
                             "(one NODE.jsonl each) instead of simulating")
    parser.add_argument("--sweep", type=_sweep, default=None, metavar="PARAMETER=V1,V2,...",
                        help="run one simulation per value of PARAMETER (payload_rate, "
                             "loop_rate, drop_rate, mix_loop_rate, mean_delay, cover_scale, "
                             "clients, corrupted) and print a table; with --out also "
                             "OUT/sweep-PARAMETER.md, .json and .png")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="with --sweep: runs per value, with seeds SEED, SEED+1, ... "
                             "(default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``zmix-sim``; return its exit status (0 done, 1 failed, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    if args.taps and args.out is None:
        return fail("--taps needs --out (the folder to write taps.jsonl in)", EXIT_USAGE)
    from zmix.topology_yaml import load_topology  # after argparse: --help stays quick

    try:
        topology = load_topology(args.topology)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    try:
        if args.from_taps is not None:
            return _from_taps(args, topology)
        if args.sweep is not None:
            return _sweep_run(args, topology)
        return _simulate(args, topology)
    except LocalMisuse as exc:
        return fail(str(exc), EXIT_USAGE)
    except (ZmixError, OSError) as exc:
        return fail(str(exc), EXIT_FAILURE)


def _params(args: argparse.Namespace) -> Any:
    from zmix.sim.engine import SimParams

    warmup = args.warmup if args.warmup is not None else min(5.0, args.duration / 10)
    return SimParams(clients=args.clients, duration=args.duration, seed=args.seed,
                     message_rate=args.message_rate, message_bytes=args.message_bytes,
                     cover=not args.no_cover, link_latency=args.link_latency, warmup=warmup)


def _simulate(args: argparse.Namespace, topology: Any) -> int:
    from zmix.sim import report as sim_report

    params = _params(args)
    observers = []
    taps = None
    if args.taps:
        from zmix.sim.taps import RecordWriter

        args.out.mkdir(parents=True, exist_ok=True)
        taps = RecordWriter(args.out / "taps.jsonl")
        observers.append(taps.write)
    bar = _progress_bar(args, params.duration)
    try:
        if args.no_privacy:
            _, result = sim_report.simulate(topology, params, observers=observers,
                                            progress=bar)
        else:
            _, result = sim_report.measure(topology, params, corrupted=args.corrupted,
                                           observers=observers, progress=bar)
    finally:
        if taps is not None:
            taps.close()
        if bar is not None:
            bar.close()
    print(result.text(), end="")
    if args.out is not None:
        path = sim_report.write_report(args.out, result)
        print(f"report written to {path}")
    return EXIT_OK


class _Bar:
    """A tqdm progress bar in simulated seconds, fed by Simulation.run's progress calls."""

    def __init__(self, total: float) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=round(total, 3), unit="sim s", file=sys.stderr,
                         bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim s "
                                    "[{elapsed}<{remaining}]")
        self._done = 0.0

    def __call__(self, done: float) -> None:
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        self._bar.close()


def _progress_bar(args: argparse.Namespace, total: float) -> _Bar | None:
    if args.quiet or not sys.stderr.isatty():
        return None
    return _Bar(total)


def _sweep_run(args: argparse.Namespace, topology: Any) -> int:
    from zmix.sim.sweep import sweep

    parameter, values = args.sweep
    quiet = args.quiet or not sys.stderr.isatty()

    def progress(point: Any) -> None:
        if not quiet:
            print(f"{parameter} = {point.value:g}: sender median {point.sender_median:.2f} bits, "
                  f"latency median {point.latency_median:.3f} s", file=sys.stderr)

    result = sweep(topology, _params(args), parameter, values, seeds=args.seeds,
                   corrupted=args.corrupted, progress=progress)
    print(result.markdown(), end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"sweep-{parameter}"
        stem.with_suffix(".md").write_text(result.markdown())
        stem.with_suffix(".json").write_text(result.to_json())
        result.plot(stem.with_suffix(".png"))
        print(f"sweep written to {stem}.md, .json and .png")
    return EXIT_OK


def _from_taps(args: argparse.Namespace, topology: Any) -> int:
    from zmix.sim import report as sim_report

    result = sim_report.analyse_taps(topology, args.from_taps, corrupted=args.corrupted,
                                     seed=args.seed)
    print(result.text(), end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "privacy.json"
        path.write_text(result.to_json())
        print(f"report written to {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
