"""``zmix-tune``: the Loopix rates and delay that meet an anonymity and latency target for the
least bandwidth per client, judged by simulations of the topology (docs/tune.md)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from zmix.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    number,
    positive_float,
    positive_int,
)
from zmix.errors import ConfigError, LocalMisuse
from zmix.sim import tune
from zmix.sim.engine import SimParams
from zmix.sim.sweep import Evaluate, default_evaluate, longest_mean_delay
from zmix.sim.tune import PROFILES, Outcome, Space, Target, TuneResult
from zmix.topology import Topology
from zmix.topology_yaml import load_topology
from zmix.yamlfile import read_yaml_file

WARMUP = 5.0  # simulated seconds before measuring (the pools fill)
MESSAGES = 200  # messages the default duration aims to measure

EXAMPLES = """\
examples:
  zmix-tune topologies/sim.yaml --profile chat
  zmix-tune topologies/sim.yaml --entropy 6 --latency 3 --clients 200 --out loopix.yaml
  zmix-tune topologies/sim.yaml --profile files --max-runs 40 -v

Each candidate is one simulation of the topology with --clients generated clients, judged by
the global passive adversary of zmix-sim (docs/privacy.md); docs/tune.md explains the search.
profiles:
""" + "".join(f"  {p.name:<14} sender entropy >= {p.entropy:g} bits, median latency <= "
              f"{p.latency:g} s;\n  {'':<14} {p.about}\n" for p in PROFILES.values()) + """
exit status:
  0  a candidate met the target: its rates are printed (and written with --out)
  1  no candidate met the target (the best reached is said), --out could not be written,
     or interrupted
  2  bad usage or configuration: a bad option or topology; nothing was simulated
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-tune."""
    p = argparse.ArgumentParser(
        prog="zmix-tune", description="Search the Loopix rates and mean delay that give a "
        "sender anonymity and a median latency for the least bandwidth per client.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("topology", type=Path, help="the topology file (its loopix: is replaced)")
    p.add_argument("--profile", choices=sorted(PROFILES),
                   help="a named target and workload (listed below)")
    p.add_argument("--entropy", type=_bits, metavar="BITS",
                   help="sender entropy to reach, median over messages (overrides the "
                        "profile's)")
    p.add_argument("--latency", type=positive_float, metavar="SECONDS",
                   help="median message latency not to exceed (overrides the profile's)")
    p.add_argument("--clients", type=_clients, default=200, metavar="N",
                   help="clients in each simulation (default: 200)")
    p.add_argument("--duration", type=positive_float, metavar="SECONDS",
                   help="simulated seconds per candidate (default: W + 5 + max(10, 3 x "
                        "latency), W the time the clients take to submit 200 messages, "
                        "within 20..120 s)")
    p.add_argument("--seed", type=int, default=0, help="the simulations' seed (default: 0)")
    p.add_argument("--message-rate", type=positive_float, metavar="PER_SECOND",
                   help="messages each client sends per second (default: the profile's, "
                        "else 0.1)")
    p.add_argument("--message-bytes", type=positive_int, metavar="BYTES",
                   help="size of each message (default: the profile's, else 1000)")
    p.add_argument("--loop-share", type=_share, default=0.25, metavar="FRACTION",
                   help="loops' share of a client's packets, lambda_L / (lambda_P + "
                        "lambda_L + lambda_D) (default: 0.25)")
    p.add_argument("--drop-share", type=_share, default=0.0, metavar="FRACTION",
                   help="drops' share of a client's packets (default: 0)")
    p.add_argument("--mix-loop-rates", type=_ladder, default=(0.0, 0.5, 2.0), metavar="LIST",
                   help="mix loop rates lambda_M to try, comma-separated (default: 0,0.5,2)")
    p.add_argument("--min-rate", type=positive_float, default=0.1, metavar="PER_SECOND",
                   help="least client rate lambda_P + lambda_L + lambda_D to try "
                        "(default: 0.1)")
    p.add_argument("--max-rate", type=positive_float, default=20.0, metavar="PER_SECOND",
                   help="greatest client rate to try (default: 20)")
    p.add_argument("--max-runs", type=positive_int, default=120, metavar="N",
                   help="simulations at most (default: 120); then the best so far")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write the chosen loopix: section to FILE (YAML)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print each candidate on stderr as it is judged")
    return p


def _bits(text: str) -> float:
    value = number(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of bits >= 0")
    return value


def _clients(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a simulation needs at least 2 clients")
    return value


def _share(text: str) -> float:
    value = number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a fraction in [0, 1)")
    return value


def _ladder(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "numbers") from None
    if any(not (v >= 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every rate must be a number >= 0")
    return values


def settings(args: argparse.Namespace) -> tuple[Target, SimParams, float, Space]:
    """Return the target, the simulation parameters, the settle time and the search space the
    options ask for. Raises :class:`LocalMisuse` for a combination that cannot work."""
    profile = PROFILES.get(args.profile) if args.profile else None
    entropy: float | None = args.entropy
    latency: float | None = args.latency
    if profile is not None:
        entropy = profile.entropy if entropy is None else entropy
        latency = profile.latency if latency is None else latency
    if entropy is None or latency is None:
        raise LocalMisuse("give a target: --profile, or both --entropy and --latency")
    target = Target(float(entropy), float(latency))
    settle = max(10.0, 3 * target.latency)
    rate = args.message_rate or (profile.message_rate if profile else 0.1)
    size = args.message_bytes or (profile.message_bytes if profile else 1000)
    duration = args.duration if args.duration is not None else \
        measured_window(args.clients, rate) + WARMUP + settle
    if duration <= WARMUP + settle:
        raise LocalMisuse(f"--duration must be longer than {WARMUP + settle:g} s: {WARMUP:g} s "
                          f"of warm-up and {settle:g} s for the last messages to arrive "
                          f"(3 x the latency target, at least 10 s)")
    params = SimParams(clients=args.clients, duration=duration, seed=args.seed,
                       message_rate=rate, message_bytes=size, warmup=WARMUP)
    space = Space(loop_share=args.loop_share, drop_share=args.drop_share,
                  min_rate=args.min_rate, max_rate=args.max_rate,
                  mix_loop_rates=args.mix_loop_rates, max_runs=args.max_runs)
    return target, params, settle, space


def measured_window(clients: int, message_rate: float) -> float:
    """Seconds of submitted messages to measure by default: enough for about
    :data:`MESSAGES` messages (a steady median), at least 20 s and at most 120 s."""
    return min(120.0, max(20.0, MESSAGES / (clients * message_rate)))


def describe(outcome: Outcome) -> str:
    """Return the lines that show a candidate's rates and what they gave."""
    r = outcome.rates
    return "\n".join([
        f"  payload_rate   lambda_P  {r.payload_rate:g} /s",
        f"  loop_rate      lambda_L  {r.loop_rate:g} /s",
        f"  drop_rate      lambda_D  {r.drop_rate:g} /s",
        f"  mix_loop_rate  lambda_M  {r.mix_loop_rate:g} /s per node",
        f"  mean_delay     1/mu      {r.mean_delay:g} s",
        f"bandwidth per client:  {outcome.bandwidth:,.0f} B/s (sends "
        f"{outcome.client_bytes_per_s:,.0f}, plus {outcome.mix_loop_bytes_per_client:,.0f} "
        f"of mix loops per client)",
        f"median latency:        {outcome.latency_median:.3f} s (p95 "
        f"{outcome.latency_p95:.3f} s, {outcome.messages} messages, "
        f"{100 * outcome.loss:.1f}% lost)",
        f"sender entropy:        {outcome.sender_median:.2f} bits median (mean "
        f"{outcome.sender_mean:.2f}; at most {outcome.max_bits:.2f})",
        f"receiver entropy:      {outcome.receiver_median:.2f} bits median",
        f"busiest node:          {outcome.busiest_node} {outcome.busiest_node_per_s:.0f} "
        f"packets/s in",
    ])


def _line(outcome: Outcome) -> str:
    r = outcome.rates
    return (f"P {r.payload_rate:g} L {r.loop_rate:g} D {r.drop_rate:g} M {r.mix_loop_rate:g} "
            f"delay {r.mean_delay:g}: {outcome.sender_median:.2f} bits, "
            f"{outcome.latency_median:.3f} s, {outcome.bandwidth:,.0f} B/s")


def _target_text(target: Target, params: SimParams) -> str:
    return (f"sender entropy >= {target.entropy:g} bits, median latency <= {target.latency:g} s "
            f"({params.clients} clients, {params.message_rate:g} messages/s of "
            f"{params.message_bytes} bytes each)")


def run(topology: Topology, path: Path, args: argparse.Namespace,
        evaluate: Evaluate | None = None) -> int:
    """Search with ``evaluate`` (default: :func:`zmix.sim.report.measure`), print the answer
    and write the fragment; return the exit status."""
    target, params, settle, space = settings(args)
    # no delay whose max_delay (20 of them) the epoch cannot hold: clamping would skew them
    space = dataclasses.replace(space, max_delay=min(space.max_delay,
                                                     longest_mean_delay(topology)))
    most = math.log2(params.clients)
    if target.entropy > most:
        return fail(f"no candidate can meet sender entropy >= {target.entropy:g} bits: "
                    f"{params.clients} clients give at most log2({params.clients}) = "
                    f"{most:.2f} bits")
    if evaluate is None:
        try:
            evaluate = default_evaluate()
        except LocalMisuse as exc:
            return fail(str(exc))
    judge = tune.judge_with(topology, params, evaluate, settle=settle)
    if args.verbose:
        inner = judge

        def judge(rates: tune.Rates) -> Outcome:
            outcome = inner(rates)
            print(f"candidate {_line(outcome)}", file=sys.stderr)
            return outcome
    started = time.perf_counter()
    result = tune.search(judge, target, space)
    wall = time.perf_counter() - started
    print(f"target: {_target_text(target, params)}")
    print(f"searched {len(result.history)} candidates ({params.duration:g} simulated s each, "
          f"seed {params.seed}) in {wall:.0f} s"
          + (" (stopped by --max-runs)" if result.exhausted else ""))
    if result.best is None:
        return fail(_infeasible(result))
    print("chosen rates:")
    print(describe(result.best))
    if args.out is not None:
        _write(args.out, path, topology, result.best, _target_text(target, params))
        print(f"wrote the loopix: section to {args.out}")
    return EXIT_OK


def _infeasible(result: TuneResult) -> str:
    t = result.target
    head = (f"no candidate met sender entropy >= {t.entropy:g} bits with median latency <= "
            f"{t.latency:g} s")
    near = result.closest
    if near is None:
        return head + "; no candidate delivered any message"
    return (f"{head}; best reached: {near.sender_median:.2f} bits at {near.latency_median:.3f} s "
            f"median latency ({_line(near)})")


def _write(out: Path, path: Path, topology: Topology, best: Outcome, target: str) -> None:
    text = tune.fragment(best.rates, topology,
                         f"zmix-tune for {path.name}: {target}\n"
                         f"measured: {best.sender_median:.2f} bits, "
                         f"{best.latency_median:.3f} s median latency, "
                         f"{best.bandwidth:,.0f} B/s per client")
    tune.merged_topology(read_yaml_file(path), text, str(path))  # it must load when merged
    out.write_text(text)


def main(argv: Sequence[str] | None = None, *, evaluate: Evaluate | None = None) -> int:
    """Run zmix-tune; return its exit status (docs/tune.md). ``evaluate`` replaces
    :func:`zmix.sim.report.measure` (for tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        topology = load_topology(args.topology)
        settings(args)  # refuse a bad combination before any simulation
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    except LocalMisuse as exc:
        return fail(str(exc), EXIT_USAGE)
    try:
        return run(topology, args.topology, args, evaluate)
    except OSError as exc:
        return fail(f"cannot write {args.out}: {exc.strerror}")
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_FAILURE)


if __name__ == "__main__":
    sys.exit(main())
