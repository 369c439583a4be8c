"""``zmix-testbed``: a topology's hosts as network namespaces on this machine, and their faults.

``up`` makes one network namespace per host address of the topology (198.51.100.0/24 only),
exports the hosts' and clients' folders with ``zmix-up --export-hosts`` and starts each host's
share in its namespace; ``down`` stops everything and removes the namespaces. In between,
``exec`` runs a command in a host, ``link`` pulls or puts back a host's cable, ``crash`` kills
every process of a host with SIGKILL, ``start`` starts a host's share again, and ``netem`` delays
or loses its traffic where the kernel can. docs/deploy.md, "The test bed", has the walk-through.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from zmix.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, configure_logging, fail
from zmix.errors import ConfigError
from zmix.runtime import testbed
from zmix.topology_yaml import load_topology

DEFAULT_DIR = Path("zmix-testbed")

EXAMPLES = """\
examples:
  zmix-testbed up topologies/testbed.yaml     # 4 hosts, 198.51.100.1-4, folder ./zmix-testbed
  zmix-testbed status                         # hosts, their cables, their processes
  zmix-testbed exec h1 -- zmix-status --state zmix-testbed/bundles/hosts/198.51.100.1
  zmix-testbed exec h4 -- zmix-recv --state zmix-testbed/bundles/clients/bob --as bob
  zmix-testbed link h3 down                   # pull mix-b1's host's cable (and: up)
  zmix-testbed crash provider-2               # SIGKILL every process of provider-2's host
  zmix-testbed start provider-2               # start that host's share again
  zmix-testbed netem h4 --delay 50 --loss 5   # where the kernel has netem
  zmix-testbed down                           # stop everything, remove the namespaces

A HOST is a host's short name (h1, h2 ... in the order of the topology file), its address or
the name of a node or authority it runs. Needs root and iproute2. The folder holds the keys,
the exported folders (bundles/hosts/ADDRESS, bundles/clients/NAME) and a log per host
(logs/hN.log); keep its path short: a client daemon's socket path must fit in 108 bytes.

exit status:
  0  done
  1  the test bed could not be made or changed (not root, ip failed, a host did not start,
     netem not available); the message says why
  2  bad usage: an unknown command, host or topology, or no test bed in the folder
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-testbed."""
    parser = argparse.ArgumentParser(
        prog="zmix-testbed", description="Run a zmix topology on network namespaces of this "
        "machine, one per host, and inject faults.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="the folder of the test bed (default: ./zmix-testbed)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="make the hosts and start every host's share")
    up.add_argument("topology", type=Path, help="the topology (every host in 198.51.100.0/24)")
    up.add_argument("--prefix", default=testbed.PREFIX,
                    help=f"names of the namespaces: PREFIX-sw, PREFIX-1 ... "
                         f"(default {testbed.PREFIX})")
    commands.add_parser("down", help="stop everything and remove the namespaces")
    commands.add_parser("status", help="the hosts, their cables and processes")
    run = commands.add_parser("exec", help="run a command in a host: exec HOST -- COMMAND...")
    run.add_argument("host")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    link = commands.add_parser("link", help="pull (down) or put back (up) a host's cable")
    link.add_argument("host")
    link.add_argument("state", choices=("up", "down"))
    crash = commands.add_parser("crash", help="kill every process of a host with SIGKILL")
    crash.add_argument("host")
    start = commands.add_parser("start", help="start a host's share again (after crash)")
    start.add_argument("host")
    netem = commands.add_parser("netem", help="delay and lose what a host receives")
    netem.add_argument("host")
    netem.add_argument("--delay", type=float, default=0.0, metavar="MS")
    netem.add_argument("--loss", type=float, default=0.0, metavar="PERCENT")
    netem.add_argument("--clear", action="store_true", help="remove delay and loss")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run zmix-testbed; return its exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        if args.command == "up":
            return up(args.topology, args.dir, args.prefix)
        if args.command == "down":
            return down(args.dir)
        net = testbed.TestbedNetwork.load(args.dir)
        if args.command == "status":
            return show(net)
        host = net.bed.host(args.host)
    except (ConfigError, FileNotFoundError) as exc:
        return fail(str(exc), EXIT_USAGE)
    except testbed.TestbedError as exc:
        status = EXIT_USAGE if "no test bed here" in str(exc) or "no host" in str(exc) else (
            EXIT_FAILURE)
        return fail(str(exc), status)
    try:
        if args.command == "exec":
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not command:
                return fail("exec HOST -- COMMAND...: no command given", EXIT_USAGE)
            # the operator's own command, in the host: exec replaces this process with it
            os.execvp("ip", net.bed.command(host, command))  # noqa: S606
        if args.command == "link":
            net.bed.set_link(host, args.state == "up")
            print(f"{host.name} ({host.address}): cable {'in' if args.state == 'up' else 'out'}")
        elif args.command == "crash":
            net.crash(host)
            print(f"{host.name} ({host.address}): every process killed (SIGKILL)")
        elif args.command == "start":
            if net.bed.pids(host):
                return fail(f"{host.name} ({host.address}) still runs processes "
                            f"{net.bed.pids(host)}; crash it first", EXIT_USAGE)
            net.start(host)
            print(f"{host.name} ({host.address}): {', '.join(host.members)} started")
        elif args.command == "netem":
            if args.clear:
                net.bed.clear_netem(host)
                print(f"{host.name} ({host.address}): no delay, no loss")
            else:
                net.bed.netem(host, args.delay, args.loss)
                print(f"{host.name} ({host.address}): delay {args.delay:g} ms, "
                      f"loss {args.loss:g} %")
    except testbed.TestbedError as exc:
        return fail(str(exc), EXIT_FAILURE)
    return EXIT_OK


def up(topology_file: Path, directory: Path, prefix: str) -> int:
    """Make the test bed of ``topology_file`` in ``directory`` and start every host."""
    try:
        topology = load_topology(topology_file)
        net = testbed.TestbedNetwork(topology, directory, prefix)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    except testbed.TestbedError as exc:
        return fail(str(exc), EXIT_USAGE)
    if (directory / testbed.STATE_FILE).exists() and any(
            h.netns in testbed.namespaces() for h in net.hosts):
        return fail(f"a test bed runs from {directory} already; zmix-testbed --dir {directory} "
                    "down first", EXIT_USAGE)
    try:
        net.create()
        net.start_all()
    except (testbed.TestbedError, KeyboardInterrupt) as exc:
        net.destroy()
        return fail(str(exc) or "interrupted; the test bed was removed", EXIT_FAILURE)
    print(f"zmix-testbed: network {topology.network} on {len(net.hosts)} hosts, folder "
          f"{net.directory}")
    for host in net.hosts:
        print(f"  {host.name}  {host.address:<15} {', '.join(host.members)}")
    print(f"clients' folders: {net.directory / 'bundles' / 'clients'}/NAME; logs: "
          f"{net.directory / 'logs'}/hN.log")
    return EXIT_OK


def down(directory: Path) -> int:
    """Stop the test bed recorded in ``directory`` and remove its namespaces."""
    try:
        net = testbed.TestbedNetwork.load(directory)
    except testbed.TestbedError as exc:
        return fail(str(exc), EXIT_USAGE)
    except ConfigError as exc:  # its topology is unreadable now: remove the namespaces anyway
        prefix = json.loads((directory / testbed.STATE_FILE).read_text())["prefix"]
        removed = testbed.remove(prefix)
        print(f"zmix-testbed: {exc}; removed namespaces {', '.join(removed) or 'none'}")
        return EXIT_OK
    try:
        net.destroy()
    except testbed.TestbedError as exc:
        return fail(str(exc), EXIT_FAILURE)
    print(f"zmix-testbed: stopped; namespaces {net.bed.prefix}-* removed ({directory} kept)")
    return EXIT_OK


def show(net: testbed.TestbedNetwork) -> int:
    """Print each host: address, cable, processes, members."""
    present = testbed.namespaces()
    print(f"zmix-testbed: network {net.topology.network}, folder {net.directory}")
    print("HOST  ADDRESS          CABLE  PROCESSES  MEMBERS")
    for host in net.hosts:
        if host.netns not in present:
            cable, processes = "-", "-"
        else:
            cable = "in" if net.bed.link_is_up(host) else "OUT"
            processes = str(len(net.bed.pids(host)))
        print(f"{host.name:<5} {host.address:<16} {cable:<6} {processes:<10} "
              f"{', '.join(host.members)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
