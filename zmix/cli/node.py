"""``zmix-node``: run one node (mixnode or provider) of a topology in this process."""

from __future__ import annotations

import argparse
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

exit status:
  0  stopped cleanly by SIGTERM or SIGINT
  1  it failed while starting or running (e.g. its address is in use)
  2  bad usage or configuration (the topology, its key file, a name not in the topology);
     refused before it started
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
    """Run zmix-node; return its exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from zmix.runtime.node import NodeProcess

    try:
        node = NodeProcess(args.state, args.name, workers=args.workers)
    except ConfigError as exc:
        return fail(str(exc))
    except KeyError:
        return fail(f"no node named {args.name!r} in {args.state / 'topology.yaml'}")
    return node.run()


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
