"""``zmix-exit``: the exit of SOCKS5 tunnels, connecting to allowed destinations (docs/tunnel.md).

It is the client daemon (``zmix-client``) of its client with an ExitService added: the same
options, the same API socket, the same way of stopping.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zmix.cli.client import EXIT_HELP, add_daemon_arguments, serve
from zmix.cli.common import EXIT_USAGE, fail, positive_float
from zmix.errors import ConfigError
from zmix.runtime.services import MixnetPort, Service
from zmix.runtime.tunnel import ExitService
from zmix.tunnel.policy import ExitPolicy

EXAMPLES = """\
examples:
  zmix-exit --state zmix-local --as dave --allow '*.example.org:443' --allow '127.0.0.1:8080'
  zmix-exit --state zmix-local --as dave --policy exit-policy.yaml

Nothing is allowed by default. A destination named by a domain is resolved by the exit; an address
that is loopback, private, link-local or multicast is reached only when an address pattern allows
it explicitly (docs/tunnel.md, "The exit's allowlist").

"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-exit."""
    parser = argparse.ArgumentParser(
        prog="zmix-exit",
        description="Serve as the exit of zmix-socks tunnels: open TCP connections to "
                    "allowlisted destinations and answer through the proxies' reply blocks.",
        epilog=EXAMPLES + EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_arguments(parser)
    rules = parser.add_mutually_exclusive_group(required=True)
    rules.add_argument("--allow", action="append", metavar="HOST:PORT",
                       help="a destination pattern the exit connects to (repeatable)")
    rules.add_argument("--policy", type=Path, metavar="FILE",
                       help="a YAML file 'allow: [HOST:PORT, ...]'")
    parser.add_argument("--connect-timeout", type=positive_float, default=10.0,
                        metavar="SECONDS", help="give up connecting after this long (default 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run zmix-exit; return its exit status."""
    args = build_parser().parse_args(argv)
    from zmix.runtime.proctitle import set_title
    set_title("zmix-exit", args.name)
    try:
        policy = (ExitPolicy.load(args.policy) if args.policy is not None
                  else ExitPolicy.from_patterns(args.allow))
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)

    def services(port: MixnetPort) -> list[Service]:
        return [ExitService(port, policy, connect_timeout=args.connect_timeout)]

    return serve(args, services)


if __name__ == "__main__":
    sys.exit(main())
