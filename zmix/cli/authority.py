"""``zmix-authority``: run a directory authority, or admit and evict nodes on its allowlist."""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import re
import sys
from pathlib import Path

from zmix.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    configure_logging,
    exit_status_help,
    fail,
)
from zmix.errors import ConfigError

EXAMPLES = """\
examples:
  zmix-authority --state zmix-local --name authority-1          run it (as zmix-up does)
  zmix-authority --state zmix-local allow mix-d1                 admit node mix-d1
  zmix-authority --state zmix-local evict mix-d1                 evict it again
  zmix-authority --state zmix-local allow 3d40...660c --name authority-1
                                                                 admit a key, at one authority

The state directory is the one zmix-up created. The authority keeps its allowlist, documents and
lock in STATE/authorities/NAME/; it logs to stderr and stops on SIGTERM or SIGINT. allow and evict
edit the allowlist of every authority whose private identity key is in this state directory (or
only of --name); a running authority reads it again within a second, and the change applies to the
documents it freezes from then on: a node admitted now carries traffic from the next epoch on, an
evicted one is left out of the next document.

"""

RUN_STATUS = exit_status_help(
    (EXIT_OK, "run: stopped cleanly by SIGTERM or SIGINT; allow, evict: every allowlist named "
              "holds (or no longer holds) the key"),
    (EXIT_FAILURE, "run: it failed unexpectedly (a traceback in its log); allow, evict: an "
                   "allowlist could not be written"),
    usage="bad usage or configuration (the topology, a key file, no such authority or node, not "
          "an identity key), the authority already running or its address in use; nothing was "
          "started or changed")

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-authority."""
    parser = argparse.ArgumentParser(
        prog="zmix-authority", description="Run a zmix directory authority, or edit the "
        "allowlists of this state directory's authorities.", epilog=EXAMPLES + RUN_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", required=True, type=Path, help="the network's state directory")
    parser.add_argument("--name", default=None,
                        help="the authority to run (or, with allow and evict, to edit alone)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    commands = parser.add_subparsers(dest="command", metavar="{allow,evict}")
    for command, what in (("allow", "admit a node"), ("evict", "evict a node")):
        sub = commands.add_parser(command, help=f"{what}: edit the allowlist(s)")
        sub.add_argument("node", metavar="NODE|KEY",
                         help="a node's name (its key is read from STATE/public/NODE.identity."
                              "json) or its identity key, 64 hexadecimal digits")
        sub.add_argument("--name", default=argparse.SUPPRESS,
                         help="edit only this authority's allowlist")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run zmix-authority; return its exit status (0, 1 or 2, as the epilog says)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.command is None:
        if args.name is None:
            return fail("give --name AUTHORITY to run one, or a command: allow, evict", EXIT_USAGE)
        return run(args.state, args.name)
    try:
        return edit(args.state, args.command, args.node, args.name)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)


def run(state: Path, name: str) -> int:
    """Run authority ``name`` until SIGTERM or SIGINT; return the exit status."""
    from zmix.runtime.proctitle import set_title
    set_title("zmix-authority", name)
    import zmq

    from zmix.runtime.authority import LOCK, AuthorityProcess, authority_dir
    from zmix.runtime.launcher import Lock, StartRefused, holder

    try:
        process = AuthorityProcess(state, name)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    except KeyError:
        return fail(f"no authority named {name!r} in {state / 'topology.yaml'}", EXIT_USAGE)
    path = authority_dir(state, name) / LOCK
    try:
        lock = Lock(path)
    except StartRefused:
        return fail(f"authority {name} is already running from {state} ({holder(path)})",
                    EXIT_USAGE)
    try:
        return process.run()
    except zmq.ZMQError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        return fail(f"authority {name} cannot listen on {process.spec.endpoint}: address "
                    "already in use", EXIT_USAGE)
    finally:
        lock.release()


def _resolve(state: Path, node: str) -> tuple[bytes, str]:
    """Return the identity key and name that ``node`` (a name or a key) stands for."""
    from zmix.keys import load_identity_public

    if _HEX_KEY.fullmatch(node):
        return bytes.fromhex(node), ""
    return load_identity_public(state, node), node


def _authorities(state: Path, only: str | None) -> list[str]:
    """Return the authorities whose allowlists to edit: ``only``, or every authority of the
    topology whose private identity key is in ``state``. ConfigError if there is none."""
    from zmix.keys import IDENTITY_SUFFIX
    from zmix.topology_yaml import load_topology

    topology = load_topology(state / "topology.yaml")
    names = [a.name for a in topology.authorities]
    if only is not None:
        if only not in names:
            raise ConfigError(topology.path, "authorities", f"no authority named {only!r}")
        return [only]
    here = [n for n in names if (state / "private" / f"{n}{IDENTITY_SUFFIX}.json").exists()]
    if not here:
        raise ConfigError(str(state / "private"), "(directory)", "no authority of the topology "
                          "has its identity key in this state directory; use --name")
    return here


def edit(state: Path, command: str, node: str, only: str | None) -> int:
    """Admit (``allow``) or evict ``node`` on the allowlists; return the exit status."""
    if command == "evict" and not _HEX_KEY.fullmatch(node):
        key, name = _key_of_name(state, node)
    else:
        key, name = _resolve(state, node)
    status = EXIT_OK
    for authority in _authorities(state, only):
        try:
            changed = edit_allowlist(state, authority, command, key, name)
        except OSError as exc:
            status = fail(f"authority {authority}: the allowlist could not be written: {exc}")
            continue
        verb = {"allow": "allowed", "evict": "evicted"}[command]
        note = "" if changed else f" (it was {'already' if command == 'allow' else 'not'} there)"
        what = f"{name} ({key.hex()})" if name and key else name or key.hex()
        print(f"{authority}: {verb} {what}{note}", flush=True)
    return status


def _key_of_name(state: Path, node: str) -> tuple[bytes, str]:
    """Return the key and name of node ``node`` for an eviction: the key from its public
    identity file or, if that is gone, no key (the allowlists are then searched by name)."""
    try:
        return _resolve(state, node)
    except ConfigError:
        return b"", node


def edit_allowlist(state: Path, authority: str, command: str, key: bytes, name: str) -> bool:
    """Add (``allow``) or remove (``evict``) ``key`` (with an empty ``key``: every entry named
    ``name``) in ``authority``'s allowlist, under a lock and atomically; return True if the
    file changed. Raises ConfigError if the file does not parse, OSError if it cannot be
    written."""
    from zmix.authority import format_allowlist
    from zmix.runtime.authority import ALLOWLIST, authority_dir, read_allowlist, write_atomically

    directory = authority_dir(state, authority)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{ALLOWLIST}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two edits at once would lose one
        keys = read_allowlist(directory / ALLOWLIST)
        before = dict(keys)
        if command == "allow":
            keys[key] = keys.get(key) or name
        else:
            keys = {k: n for k, n in keys.items() if k != key and (key or n != name)}
        if keys == before:
            return False
        write_atomically(directory / ALLOWLIST, format_allowlist(keys).encode())
    return True


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
