"""What every zmix command shares: logging set-up, argument types, one-sentence failures."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zmix.api.client import Client

# Exit statuses shared by every zmix command (docs/usage.md, "Exit statuses"). Like grep, a
# command that worked but found nothing to show has its own status, so scripts can tell
# "nothing yet" from "something broke".
EXIT_OK = 0
EXIT_FAILURE = 1  # it ran and failed: no answer, a timeout, a refusal, a disk error
EXIT_USAGE = 2  # bad usage or configuration, refused before anything was sent or started
EXIT_NOTHING = 3  # zmix-recv: it worked, but no message was shown


def exit_status_help(*rows: tuple[int, str],
                     usage: str = "bad usage or configuration; nothing was sent") -> str:
    """Return the "exit status:" block of a command's --help epilog: ``rows`` of ``(status,
    meaning)``, then status 2 (bad usage or configuration) with ``usage`` as its meaning."""
    lines = sorted([*rows, (EXIT_USAGE, usage)])
    return "exit status:\n" + "".join(
        textwrap.fill(meaning, width=96, initial_indent=f"  {status}  ", subsequent_indent="     ")
        + "\n" for status, meaning in lines)


def configure_logging(verbosity: int) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def fail(message: str, status: int = EXIT_FAILURE) -> int:
    """Print ``message`` as one line on stderr and return ``status``."""
    print(f"error: {message}", file=sys.stderr)
    return status


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def number(text: str) -> float:
    """Return ``text`` as a float; argparse.ArgumentTypeError naming it if it is not a number
    (for the argparse types that add a range)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def running_daemon(state: Path, name: str) -> Client | None:
    """Return a connection to the daemon serving client ``name`` (``zmix-client``, docs/api.md),
    or None if none runs (no socket, or a socket left by a daemon that was killed)."""
    from zmix.api.client import Client, socket_path  # only the commands that ask need it
    from zmix.api.types import DaemonGone

    if not socket_path(state, name).exists():
        return None
    try:
        return Client.connect(state=state, name=name, timeout=60)
    except DaemonGone:
        return None
