"""``zmix-up``: launch the nodes of a topology and keep them running until Ctrl-C."""

from __future__ import annotations

import argparse
import filecmp
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from zmix.cli.common import configure_logging, fail
from zmix.errors import ConfigError
from zmix.topology import NodeSpec, Topology, load_topology

LOG = logging.getLogger("zmix.up")

EXAMPLES = """\
examples:
  zmix-up topologies/local.yaml                 keys into ./zmix-local, run every node
  zmix-up topologies/local.yaml --demo          the same, send a few messages, shut down
  zmix-up topologies/local.yaml --state /srv/zmix --only mix-a1 provider-1
                                                run only this host's share of the nodes

Keys are generated on first use (private keys mode 0600). Stop with Ctrl-C (or SIGTERM): every
node is stopped cleanly. While it runs, send and fetch messages with zmix-send and zmix-recv.

exit status:
  0  stopped cleanly by Ctrl-C or SIGTERM (--demo: every demo message was sent and received)
  1  a node did not start (its error and log tail are printed), or a --demo step failed
  2  bad usage or configuration (the topology, a key file, --only, a state directory in use by
     another zmix-up); refused before any node started
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-up."""
    parser = argparse.ArgumentParser(
        prog="zmix-up", description="Launch a zmix mixnet from a YAML topology.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("topology", type=Path, help="the topology YAML file")
    parser.add_argument("--state", type=Path, default=None,
                        help="state directory (default: ./NETWORK-NAME)")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help="run only these nodes (the rest run on other hosts)")
    parser.add_argument("--demo", action="store_true",
                        help="send a few messages between the declared clients, then stop")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def prepare_state(topology_path: Path, state: Path | None) -> tuple[Topology, Path]:
    """Validate the topology, generate missing keys, and return ``(topology, state_dir)``.

    Raises ConfigError (naming file, key and problem) before anything is started.
    """
    from zmix.keys import ensure_keys

    topology = load_topology(topology_path)
    state_dir = (state or Path.cwd() / topology.network).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    generated = ensure_keys(state_dir, topology)
    if generated:
        LOG.info("generated keys for %s", ", ".join(generated))
    copy = state_dir / "topology.yaml"
    if not filecmp.cmp(topology_path, copy, shallow=False):
        # ensure_keys accepted it, so it is the same network; its parameters may have changed.
        tmp = copy.with_suffix(".tmp")
        shutil.copyfile(topology_path, tmp)
        os.replace(tmp, copy)
    return load_topology(copy), state_dir


def select_nodes(topology: Topology, only: list[str] | None) -> list[NodeSpec]:
    """Return the nodes to run here; raises ConfigError for a name not in the topology."""
    if only is None:
        return list(topology.nodes())
    names = {node.name for node in topology.nodes()}
    for name in only:
        if name not in names:
            raise ConfigError(topology.path, "--only", f"no node named {name!r}")
    return [node for node in topology.nodes() if node.name in only]


def main(argv: list[str] | None = None) -> int:
    """Run zmix-up; return its exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from zmix.runtime.launcher import Launcher, LaunchError

    try:
        topology, state_dir = prepare_state(args.topology, args.state)
        nodes = select_nodes(topology, args.only)
    except ConfigError as exc:
        return fail(str(exc), 2)
    stop: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    launcher = Launcher(state_dir, nodes, verbosity=max(1, args.verbose))
    print(f"zmix-up: network {topology.network}, state in {state_dir}", flush=True)
    try:
        launcher.start(lambda spec: print(
            f"  {spec.role.value:<8} {spec.name:<16} up at {spec.endpoint}", flush=True))
        print(f"zmix network {topology.network} ready: {len(nodes)} node(s) running"
              " (Ctrl-C to stop)", flush=True)
        if args.demo:
            status = run_demo(topology, state_dir)
        else:
            status = 0
            while not stop:
                launcher.watch(time.monotonic())
                time.sleep(0.2)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 1
    finally:
        print("zmix-up: stopping every node", flush=True)
        launcher.stop()
    print("zmix-up: stopped", flush=True)
    return status


def run_demo(topology: Topology, state_dir: Path) -> int:
    """Send a few messages between the declared clients with zmix-send, fetch them with zmix-recv.

    Each step prints the command a user would type, then runs it.
    """
    clients = [c.name for c in topology.clients]
    if len(clients) < 2:
        print("demo: the topology declares fewer than two clients; nothing to send")
        return 0
    pairs = [(clients[i], clients[(i + 1) % len(clients)]) for i in range(min(3, len(clients)))]
    status = 0
    for sender, recipient in pairs:
        text = f"hello {recipient}, this is {sender} speaking through the mixnet"
        status |= _demo_step(["zmix-send", "--state", str(state_dir), "--from", sender,
                              "--to", recipient, text, "--timeout", "60"])
    for _, recipient in pairs:
        status |= _demo_step(["zmix-recv", "--state", str(state_dir), "--as", recipient,
                              "--wait", "30"])
    return 1 if status else 0


def _demo_step(argv: list[str]) -> int:
    print(f"$ {' '.join(_quote(a) for a in argv)}", flush=True)
    module = {"zmix-send": "zmix.cli.send", "zmix-recv": "zmix.cli.recv"}[argv[0]]
    return subprocess.run([sys.executable, "-m", module, *argv[1:]], check=False).returncode


def _quote(arg: str) -> str:
    return f"'{arg}'" if " " in arg else arg


if __name__ == "__main__":
    sys.exit(main())
