"""``zmix-client``: keep one client online and serve the local API (docs/api.md).

``zmix-socks`` and ``zmix-exit`` are this daemon with a tunnel service added (docs/tunnel.md);
they share its options, its start-up and its way of stopping.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from zmix.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    configure_logging,
    exit_status_help,
    fail,
    positive_int,
)
from zmix.errors import ConfigError, ZmixError
from zmix.runtime.api import MAX_CONNECTIONS
from zmix.runtime.client import ClientBusy
from zmix.runtime.daemon import Daemon, ServiceFactory

EXIT_HELP = exit_status_help(
    (EXIT_OK, "stopped by SIGTERM or SIGINT (Ctrl-C) after taking the client offline cleanly"),
    (EXIT_FAILURE, "the client is in use by another zmix process, or there is no valid network "
                   "document (none from the authorities, the cached one expired)"),
    usage="bad usage or configuration (an unknown client, a bad or non-loopback --api-tcp, an "
          "address already in use); nothing was started")


def address(text: str) -> tuple[str, int]:
    """argparse type: HOST:PORT (an IPv6 host in brackets), HOST a loopback address."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP:PORT") from None
    if not sep or not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP:PORT")
    if not loopback:
        raise argparse.ArgumentTypeError(
            f"{host} is not a loopback address: the API and the SOCKS port are for programs of "
            "this machine (127.0.0.0/8 or ::1)")
    return host, port


def add_daemon_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options every daemon command shares."""
    parser.add_argument("--state", required=True, type=Path, help="the network's state directory")
    parser.add_argument("--as", dest="name", required=True, help="the client's name")
    parser.add_argument("--api-tcp", type=address, default=None, metavar="HOST:PORT",
                        help="also serve the API on this loopback address (callers send the "
                             "token of STATE/clients/NAME/api.token first)")
    parser.add_argument("--api-max-connections", type=positive_int, default=MAX_CONNECTIONS,
                        metavar="N", help=f"API callers at once (default {MAX_CONNECTIONS})")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-client."""
    parser = argparse.ArgumentParser(
        prog="zmix-client",
        description="Keep a zmix client online (its Loopix streams, its mailbox) and serve the "
                    "local API of docs/api.md on STATE/clients/NAME/api.sock.",
        epilog="example:\n  zmix-client --state zmix-local --as alice\n\n" + EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_arguments(parser)
    return parser


def serve(args: argparse.Namespace, services: ServiceFactory | None = None,
          ready: Callable[[Daemon], str] | None = None) -> int:
    """Run the daemon of ``args`` until SIGTERM or SIGINT; return the exit status.

    Prints ``ready api=PATH`` (and what ``ready`` adds) on stdout once online and serving."""
    configure_logging(args.verbose)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        daemon = Daemon(args.state, args.name, api_tcp=args.api_tcp,
                        max_connections=args.api_max_connections, services=services)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    except ClientBusy as exc:
        return fail(f"{exc}: its daemon serves {args.state / 'clients' / args.name / 'api.sock'}")
    except OSError as exc:
        return fail(f"cannot listen: {exc.strerror or exc}", EXIT_USAGE)
    except ZmixError as exc:  # no network document: the authorities' answers are in the text
        return fail(str(exc))
    try:
        line = f"ready api={daemon.api.unix_path}"
        tcp = daemon.api.tcp_address
        if tcp is not None:
            line += f" tcp={tcp[0]}:{tcp[1]}"
        if ready is not None:
            line += ready(daemon)
        print(line, flush=True)
        daemon.run(lambda: stopping)
    finally:
        daemon.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run zmix-client; return its exit status."""
    args = build_parser().parse_args(argv)
    from zmix.runtime.proctitle import set_title
    set_title("zmix-client", args.name)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
