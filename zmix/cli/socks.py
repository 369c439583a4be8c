"""``zmix-socks``: a SOCKS5 proxy whose TCP streams cross the mixnet to an exit (docs/tunnel.md).

It is the client daemon (``zmix-client``) of its client with a ProxyService added: the same
options, the same API socket, the same way of stopping.
"""

from __future__ import annotations

import argparse
import sys

from zmix.cli.client import EXIT_HELP, add_daemon_arguments, address, serve
from zmix.cli.common import EXIT_USAGE, fail
from zmix.errors import ConfigError
from zmix.runtime.daemon import Daemon
from zmix.runtime.services import MixnetPort, Service
from zmix.runtime.tunnel import ProxyService
from zmix.topology_yaml import load_topology

EXAMPLES = """\
example:
  zmix-socks --state zmix-local --as alice --exit dave
  curl --socks5-hostname 127.0.0.1:1080 http://example.org/

Each TCP connection becomes a circuit to the exit service (a zmix-exit client of the network),
carried in anonymous messages with reply blocks: the exit never learns who alice is. What the
exit does learn (destinations, timing, volume) is in docs/tunnel.md.

"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-socks."""
    parser = argparse.ArgumentParser(
        prog="zmix-socks",
        description="Accept SOCKS5 CONNECT (no authentication; IPv4 and domain names) on a "
                    "loopback port and carry each stream through the mixnet to an exit.",
        epilog=EXAMPLES + EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_arguments(parser)
    parser.add_argument("--exit", dest="exit_name", required=True, metavar="SERVICE",
                        help="client name of the exit service (docs/tunnel.md)")
    parser.add_argument("--listen", type=address, default=("127.0.0.1", 1080),
                        metavar="HOST:PORT",
                        help="the SOCKS5 port, on a loopback address (default 127.0.0.1:1080)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run zmix-socks; return its exit status."""
    args = build_parser().parse_args(argv)
    from zmix.runtime.proctitle import set_title
    set_title("zmix-socks", args.name)
    try:
        # A reply block made at t lives until the end of the epoch after t's, plus the grace:
        # at least one epoch length, the lifetime the proxy counts on.
        lifetime = load_topology(args.state / "topology.yaml").epoch.length
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)

    def services(port: MixnetPort) -> list[Service]:
        if not port.is_client(args.exit_name):
            raise ConfigError(str(args.state / "topology.yaml"), "clients",
                              f"--exit {args.exit_name}: no client of that name in the network")
        return [ProxyService(port, args.exit_name, args.listen, block_lifetime=lifetime)]

    def ready(daemon: Daemon) -> str:
        proxy = daemon.services[-1]
        assert isinstance(proxy, ProxyService)
        host, port = proxy.address
        return f" socks={host}:{port}"

    return serve(args, services, ready)



if __name__ == "__main__":
    sys.exit(main())
