"""``zmix-status``: one table of every node of a network, its traffic, drops, queue and loop loss.

Reads each node where it can (zmix.observe: the control sockets of the nodes run from the state
folder, the Prometheus pages of the others), twice an interval apart so that rates can be
given, and prints the table, or the report as JSON (docs/monitoring.md, "zmix-status").
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from zmix import observe
from zmix.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, fail, positive_float
from zmix.errors import ConfigError
from zmix.topology import Topology
from zmix.topology_yaml import load_topology

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: --watch on a terminal redraws in place

EXAMPLES = """\
examples:
  zmix-status --state zmix-local                 # one table, rates over 1 s
  zmix-status --state zmix-local --watch         # redrawn every second until Ctrl-C
  zmix-status --state zmix-local --json | jq .down    # the nodes that did not answer
  zmix-status --state /srv/zmix --topology net.yaml --watch 5 --timeout 1

Nodes whose private key is in the state folder are read on their control socket; the others,
and local ones that do not answer there, on http://HOST:METRICS_PORT/metrics if the topology
gives them a metrics_port. A node with neither is "unknown": shown, not counted as down.
With --watch, each refresh takes its rates from the one before; --json prints the report
(one line per refresh). docs/monitoring.md describes every column and field.

exit status:
  0  every node that can be read from here answered (nodes "unknown" from here do not count);
     with --watch, stopped by Ctrl-C or SIGTERM and every such node answered at the last refresh
  1  some node did not answer (it is shown as down); with --watch, so at the last refresh
  2  bad usage or configuration: the state folder or topology cannot be read, or no node of the
     topology can be read from here (none is local and none has a metrics_port)
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-status."""
    parser = argparse.ArgumentParser(
        prog="zmix-status", description="Show every node of a zmix network: up or down, "
        "traffic, drops, queue, loops and loop loss.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, required=True,
                        help="the state folder (the --state of zmix-up)")
    parser.add_argument("--topology", type=Path, default=None,
                        help="the topology file (default: STATE/topology.yaml)")
    parser.add_argument("--watch", type=positive_float, nargs="?", const=0.0, default=None,
                        metavar="SECONDS",
                        help="refresh every SECONDS (default: --interval) until Ctrl-C")
    parser.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                        help="seconds between the two samples the rates come from "
                             "(default: 1)")
    parser.add_argument("--timeout", type=positive_float, default=2.0, metavar="SECONDS",
                        help="how long to wait for each node's answer (default: 2)")
    parser.add_argument("--loss-threshold", type=float, default=5.0, metavar="PERCENT",
                        help="list the links whose loop loss is above this (default: 5)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as one JSON object (one line per refresh)")
    return parser


# ==================================================================== the table (pure)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def age(seconds: float | None) -> str:
    """Return an uptime as ``42s``, ``5m03s``, ``2h14m`` or ``3d04h`` ("-" for None)."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def per_second(value: float | None) -> str:
    """Return a rate with one decimal ("-" for None: no rate this round)."""
    return "-" if value is None else f"{value:.1f}"


def loss(value: float | None, samples: int) -> str:
    """Return a loop loss as ``12.5% of 40`` (the loops it is estimated from), "-" for none."""
    return "-" if value is None else f"{100 * value:.1f}% of {samples}"


def drops(entry: dict[str, Any]) -> str:
    """Return a node's non-zero drops as ``replay:3 queue_full:1`` ("-" for none)."""
    shown = [f"{reason}:{count}" for reason, count in entry["drops"].items() if count]
    return " ".join(shown) or "-"


def role(entry: dict[str, Any]) -> str:
    """Return ``provider`` or ``mix L<layer>``."""
    return "provider" if entry["role"] == "provider" else f"mix L{entry['layer']}"


def loops(entry: dict[str, Any]) -> str:
    """Return the node's own mix loops as ``sent/returned/lost``."""
    if entry["loops_sent"] is None:
        return "-"
    return "/".join(_dash(entry[k]) for k in ("loops_sent", "loops_returned", "loops_lost"))


HEADER = ("NODE", "ROLE", "STATE", "AGE", "IN/s", "OUT/s", "QUEUE", "WORKERS", "LOOPS s/r/l",
          "MAILBOX", "CLIENTS", "LOOP LOSS", "DROPS")


def row(entry: dict[str, Any]) -> tuple[str, ...]:
    """Return one node's row of the table (the columns of :data:`HEADER`)."""
    return (entry["name"], role(entry), entry["state"].upper() if entry["state"] == "down"
            else entry["state"], age(entry["age"]), per_second(entry["packets_in_per_s"]),
            per_second(entry["packets_out_per_s"]), _dash(entry["queue"]),
            _dash(entry["workers"]), loops(entry), _dash(entry["mailbox_items"]),
            _dash(entry["clients_online"]), loss(entry["loop_loss"], entry["loop_samples"]),
            drops(entry))


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Return ``rows`` as lines of left-aligned columns two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def summary(report: dict[str, Any]) -> str:
    """Return the table's first line: the network, how many nodes are up, the loops counted."""
    nodes = report["nodes"]
    ups = sum(n["state"] == "up" for n in nodes)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["time"]))
    rates = (f"rates over {report['interval']:.1f} s" if report["interval"] else "no rates yet")
    return (f"{report['network']}  {when}  {len(nodes)} nodes: {ups} up, "
            f"{len(report['down'])} down, {len(report['unknown'])} unknown  {rates}  "
            f"loops in the last {report['window']} s: {report['loops']['returned']} returned, "
            f"{report['loops']['lost']} lost")


def link_lines(report: dict[str, Any], threshold: float) -> list[str]:
    """Return the links part: the links whose loop loss is above ``threshold`` (percent), or
    one line saying none is."""
    links = report["links"]
    lossy = [link for link in links if link["loop_loss"] is not None
             and 100 * link["loop_loss"] > threshold]
    measured = sum(link["loop_samples"] > 0 for link in links)
    if not lossy:
        return [f"links: {len(links)}, {measured} with loop samples, none with loop loss above "
                f"{threshold:g}%"]
    rows = [("LINK", "LOOP LOSS", "PKTS/s")] + [
        (f"{link['from']} -> {link['to']}", loss(link["loop_loss"], link["loop_samples"]),
         per_second(link["packets_per_s"])) for link in lossy]
    return [f"links with loop loss above {threshold:g}% ({len(lossy)} of {len(links)}, "
            f"{measured} with loop samples):", *("  " + line for line in columns(rows))]


def render(report: dict[str, Any], threshold: float = 5.0) -> str:
    """Return the whole text zmix-status prints for ``report``."""
    lines = [summary(report), "", *columns([HEADER, *(row(n) for n in report["nodes"])]), ""]
    lines += link_lines(report, threshold)
    unseen = [n for n in report["nodes"] if n["state"] != "up"]
    if unseen:
        lines += ["", *(f"{n['name']}: {n['state']}: {n['error']}" for n in unseen)]
    return "\n".join(lines) + "\n"


def exit_status(report: dict[str, Any]) -> int:
    """Return 1 if a node is down (one that should answer did not), else 0."""
    return EXIT_FAILURE if report["down"] else EXIT_OK


# ==================================================================== the command


def load(args: argparse.Namespace) -> Topology:
    """Return the topology to observe. Raises ConfigError for a state folder or topology that
    cannot be read, or a network no node of which can be read from here."""
    state: Path = args.state
    if not state.is_dir():
        raise ConfigError(str(state), "--state", "is not a directory (the state folder "
                          "zmix-up made)")
    path: Path = args.topology or state / "topology.yaml"
    if not path.is_file():
        raise ConfigError(str(path), "topology", "no such file (zmix-up copies the topology "
                          "into the state folder; or give --topology FILE)")
    topology = load_topology(path)
    if not observe.observable(topology, state):
        raise ConfigError(str(path), "nodes", f"none can be read from here: no node's private "
                          f"key is in {state}/private and none has a metrics_port")
    return topology


def show(report: dict[str, Any], args: argparse.Namespace, watching: bool) -> None:
    """Print one refresh: the JSON line, or the table (redrawn in place on a terminal)."""
    if args.json:
        text = json.dumps(report, sort_keys=True) + "\n"
    else:
        text = render(report, args.loss_threshold)
        if watching:
            text = (CLEAR if sys.stdout.isatty() else "\n") + text
    sys.stdout.write(text)
    sys.stdout.flush()


def run(topology: Topology, args: argparse.Namespace,
        stop: threading.Event | None = None) -> int:
    """Sample, wait, sample and show; with --watch again every interval until ``stop`` is set
    (by SIGINT or SIGTERM). Return the exit status of the last refresh shown (0 if none was)."""
    stop = stop or threading.Event()
    watching = args.watch is not None
    interval = args.watch or args.interval if watching else args.interval
    status = EXIT_OK
    previous = observe.collect(topology, args.state, timeout=args.timeout)
    # A signal sets the flag and the loop ends at its next check: raising from the handler
    # could interrupt the reads' thread pool while it holds a lock, and never exit.
    while not stop.wait(max(0.0, previous.time + interval - time.time())):
        current = observe.collect(topology, args.state, timeout=args.timeout)
        if stop.is_set():  # stopped during the reads: the refresh is not shown
            break
        report = observe.report(topology, previous, current)
        show(report, args, watching)
        status = exit_status(report)
        if not watching:
            break
        previous = current
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run zmix-status; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        topology = load(args)
    except ConfigError as error:
        return fail(str(error), EXIT_USAGE)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run(topology, args, stop)


if __name__ == "__main__":
    sys.exit(main())
