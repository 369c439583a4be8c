"""``zmix-node``: run one node (mixnode or provider) of a topology in this process."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from zmix.cli.common import configure_logging, fail, positive_int
from zmix.errors import ConfigError

EXAMPLES = """\
examples:
  zmix-node --state zmix-local --name mix-a1
  zmix-node --state /srv/zmix --name provider-1 --workers 4 -v

The state directory is the one zmix-up created (topology.yaml, public/, and this node's file in
private/). To run a node on another host, copy topology.yaml, public/ and private/NAME.json there.

The node holds STATE/nodes/NAME/lock while it runs, so a second run of the same node is refused.

exit status:
  0  stopped cleanly by SIGTERM or SIGINT
  1  it failed unexpectedly while starting or running (see the traceback in its log)
  2  refused to start: bad usage or configuration (the topology, its key files, a name not in
     the topology), the node already running, or its address or metrics port in use
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-node."""
    parser = argparse.ArgumentParser(
        prog="zmix-node", description="Run one zmix node until SIGTERM or SIGINT.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", required=True, type=Path, help="the network's state directory")
    parser.add_argument("--name", required=True, help="the node's name in the topology")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="Sphinx worker processes (default: the topology's value)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run zmix-node; return its exit status: 0 after SIGTERM or SIGINT, 2 if it refused to
    start (a bad topology or key file, no such node, the node already running, its address
    taken), with one line on stderr saying why."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from zmix.runtime.proctitle import set_title
    set_title("zmix-node", args.name)  # before the slow start: ps names the node from the outset
    import zmq

    from zmix.runtime import metrics
    from zmix.runtime.launcher import StartRefused, check_addresses, lock_node
    from zmix.runtime.node import NodeProcess

    try:
        node = NodeProcess(args.state, args.name, workers=args.workers)
        lock = lock_node(args.state, args.name)
    except ConfigError as exc:
        return fail(str(exc), 2)
    except KeyError:
        return fail(f"no node named {args.name!r} in {args.state / 'topology.yaml'}", 2)
    except StartRefused as exc:
        return fail(str(exc), 2)
    try:
        check_addresses([node.spec])
    except StartRefused as exc:
        lock.release()
        return fail(str(exc), 2)
    # The node is ours now: a control file left by a killed run names a dead endpoint.
    metrics.control_path(args.state, args.name).unlink(missing_ok=True)
    try:
        return node.run()
    except OSError as exc:  # the probe passed, but another process bound the port meanwhile
        if exc.errno != errno.EADDRINUSE:
            raise
        return fail(f"node {args.name} cannot serve metrics on http://{node.spec.host}:"
                    f"{node.spec.metrics_port}: address already in use", 2)
    except zmq.ZMQError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        return fail(f"node {args.name} cannot listen on {node.spec.endpoint}: address already "
                    "in use", 2)
    finally:
        lock.release()


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
