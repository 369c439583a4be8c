"""``zmix-recv``: fetch a client's mailbox from its provider and show what arrived."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from zmix.api.client import Client
from zmix.api.protocol import ApiError
from zmix.api.types import DaemonGone, MessageEvent
from zmix.cli.common import (
    EXIT_FAILURE,
    EXIT_NOTHING,
    EXIT_OK,
    configure_logging,
    exit_status_help,
    fail,
    running_daemon,
)
from zmix.client import ReceivedMessage
from zmix.errors import ConfigError, ZmixError
from zmix.runtime.client import ClientBusy, ClientRuntime, NetworkExpired

EXAMPLES = """\
examples:
  zmix-recv --state zmix-local --as bob
  zmix-recv --state zmix-local --as bob --wait 30 --out ~/Downloads
  zmix-recv --state zmix-local --as bob --json | jq .text

Text messages are printed with their sender's name (or "anonymous"). Files are written into --out
(default: the current directory) under their original names, and so is any message that is not
printable text (binary data, control characters), as message-ID.bin: nothing is printed that the
terminal would alter. A message is marked as delivered only after it was printed or written, so
an interrupted zmix-recv shows it again next time.

""" + exit_status_help(
    (EXIT_OK, "at least one message was shown"),
    (EXIT_FAILURE, "a message could not be written or printed (it stays for the next run), "
                   "the client is in use by another zmix process, or there is no valid network "
                   "document (none from the authorities, the cached one expired)"),
    (EXIT_NOTHING, "no message was shown: the mailbox was empty (also after --wait)"),
    usage="bad usage or configuration (an unknown client, --out not a directory); nothing was "
          "fetched")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-recv."""
    parser = argparse.ArgumentParser(
        prog="zmix-recv", description="Fetch and show a zmix client's messages.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", required=True, type=Path, help="the network's state directory")
    parser.add_argument("--as", dest="name", required=True, help="the client whose mail to fetch")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="keep fetching until a message arrives or SECONDS pass")
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for received files")
    parser.add_argument("--json", action="store_true", help="print one JSON object per message")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run zmix-recv; return its exit status: 0 if it showed a message, 3 if there was none,
    1 on a failure, 2 on bad usage or configuration."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.wait < 0:
        parser.error("--wait must be 0 or more seconds")
    if not args.out.is_dir():
        parser.error(f"--out {args.out} is not a directory")
    configure_logging(args.verbose)
    daemon = running_daemon(args.state, args.name)
    if daemon is not None:  # the client is online in its daemon: take its inbox from it
        with daemon:
            return _receive_via_daemon(daemon, args)
    try:
        runtime = ClientRuntime(args.state, args.name, drain=True)
    except ConfigError as exc:
        return fail(str(exc), 2)
    except ZmixError as exc:  # no network document: the authorities' answers are in the text
        return fail(str(exc))
    try:
        with runtime:
            return _receive(runtime, args)
    except (ClientBusy, NetworkExpired) as exc:
        return fail(str(exc))


def _receive(runtime: ClientRuntime, args: argparse.Namespace) -> int:
    # One full fetch of the mailbox always; then keep going while --wait allows and nothing came.
    start = time.time()
    runtime.fetch_now()
    fetched_once = runtime.fetches

    def drained() -> bool:
        return runtime.fetches > fetched_once and not runtime.fetch_pending

    runtime.run_until(drained, timeout=max(args.wait, 10.0))
    while not runtime.core.inbox() and time.time() - start < args.wait:
        runtime.step(time.time() + 0.1)
    return _show_all(runtime.core.inbox(), runtime.core.mark_delivered, args)


def _receive_via_daemon(daemon: Client, args: argparse.Namespace) -> int:
    """Show the daemon's inbox (waiting up to --wait for a first message), acknowledging each
    message to the daemon once it is out."""
    try:
        daemon.subscribe(["message"])  # the inbox comes first, as message events
        messages: list[ReceivedMessage] = []
        deadline = time.monotonic() + args.wait
        while True:
            event = daemon.next_event(0.5 if not messages else 0.2)
            if isinstance(event, MessageEvent):
                m = event.message
                messages.append(ReceivedMessage(m.message_id, m.sender, m.data, m.filename,
                                                m.received_at, m.reply_handle))
            elif event is None and (messages or time.monotonic() >= deadline):
                break
        return _show_all(messages, daemon.ack, args)
    except (DaemonGone, TimeoutError, ApiError) as exc:
        return fail(f"the daemon of {args.name} stopped answering: {exc}")


def _show_all(messages: list[ReceivedMessage], delivered: Callable[[bytes], None],
              args: argparse.Namespace) -> int:
    """Show ``messages``, calling ``delivered`` with each one's id once it is out, whole."""
    shown = 0
    for message in messages:
        try:
            _show(message, args)
        except OSError as exc:
            _quiet_broken_stdout(exc)
            return fail(f"could not show message {message.message_id.hex()}: {exc}; it stays "
                        f"in {args.name}'s inbox for the next zmix-recv")
        delivered(message.message_id)
        shown += 1
    if shown == 0:
        if not args.json:
            print(f"no messages for {args.name}")
        return EXIT_NOTHING
    return EXIT_OK


# C0 and C1 control characters and DEL, except tab and newline: printed, they would let a
# message alter the terminal (or redraw the "from ..." line), so such a message goes to a file.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable_text(data: bytes) -> str | None:
    """Return ``data`` as text if printing it shows it exactly: UTF-8 without control
    characters other than tab and newline. Return None for anything else (binary data)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(text) else text


def _show(message: ReceivedMessage, args: argparse.Namespace) -> None:
    """Print or write one message; raises OSError if it could not (then it is not delivered)."""
    if args.json:
        _show_json(message, args.out)
        return
    sender = message.sender or "anonymous"
    text = None if message.filename else printable_text(message.data)
    if text is not None:
        print(f"from {sender}: {text}", flush=True)
        return
    path = _write_file(message, args.out)
    what = (f"file {message.filename}" if message.filename
            else "a message that is not printable text")
    print(f"from {sender}: {what} ({len(message.data)} bytes) -> {path}", flush=True)


def _show_json(message: ReceivedMessage, out: Path) -> None:
    record: dict[str, object] = {"id": message.message_id.hex(), "from": message.sender,
                                 "bytes": len(message.data)}
    if message.filename:
        record["file"] = str(_write_file(message, out))
    else:
        try:
            record["text"] = message.data.decode()
        except UnicodeDecodeError:
            record["base64"] = base64.b64encode(message.data).decode()
    if message.reply_handle is not None:
        record["reply_handle"] = message.reply_handle.hex()
    print(json.dumps(record), flush=True)


def _write_file(message: ReceivedMessage, out: Path) -> Path:
    """Write a received message's bytes into ``out`` (never outside it, never over a file), under
    its own file name, or as ``message-ID.bin`` if it has none; return the path."""
    name = (os.path.basename(message.filename or "")
            or f"message-{message.message_id.hex()}.bin")
    target = out / name
    stem, suffix, n = target.stem, target.suffix, 1
    while target.exists():
        target = out / f"{stem} ({n}){suffix}"
        n += 1
    tmp = out / f".{name}.{message.message_id.hex()}.part"
    try:
        with open(tmp, "wb") as fh:
            fh.write(message.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves no partial file behind
        raise
    return target


def _quiet_broken_stdout(exc: OSError) -> None:
    """After a closed stdout (``zmix-recv | head``), point it at /dev/null so that Python's
    final flush does not print a second error."""
    if isinstance(exc, BrokenPipeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
