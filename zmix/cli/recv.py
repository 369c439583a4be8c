"""``zmix-recv``: fetch a client's mailbox from its provider and show what arrived."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path

from zmix.cli.common import configure_logging, fail
from zmix.client import ReceivedMessage
from zmix.errors import ConfigError
from zmix.runtime.client import ClientBusy, ClientRuntime

EXAMPLES = """\
examples:
  zmix-recv --state zmix-local --as bob
  zmix-recv --state zmix-local --as bob --wait 30 --out ~/Downloads
  zmix-recv --state zmix-local --as bob --json | jq .text

Text messages are printed with their sender's name (or "anonymous"); files are written into --out
(default: the current directory) under their original names. A message is marked as delivered
only after it was printed or written, so an interrupted zmix-recv shows it again next time.
"""


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
    """Run zmix-recv; return its exit status (0 even when the mailbox was empty)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.wait < 0:
        parser.error("--wait must be 0 or more seconds")
    if not args.out.is_dir():
        parser.error(f"--out {args.out} is not a directory")
    configure_logging(args.verbose)
    try:
        runtime = ClientRuntime(args.state, args.name, drain=True)
    except ConfigError as exc:
        return fail(str(exc), 2)
    try:
        with runtime:
            return _receive(runtime, args)
    except ClientBusy as exc:
        return fail(str(exc))


def _receive(runtime: ClientRuntime, args: argparse.Namespace) -> int:
    # One full fetch of the mailbox always; then keep going while --wait allows and nothing came.
    start = time.monotonic()
    runtime.fetch_now()
    fetched_once = runtime.fetches

    def drained() -> bool:
        return runtime.fetches > fetched_once and not runtime.fetch_pending

    runtime.run_until(drained, timeout=max(args.wait, 10.0))
    while not runtime.core.inbox() and time.monotonic() - start < args.wait:
        runtime.step(time.monotonic() + 0.1)
    shown = 0
    for message in runtime.core.inbox():
        _show(message, args)
        runtime.core.mark_delivered(message.message_id)
        shown += 1
    if shown == 0 and not args.json:
        print(f"no messages for {args.name}")
    return 0


def _show(message: ReceivedMessage, args: argparse.Namespace) -> None:
    sender = message.sender or "anonymous"
    path = _write_file(message, args.out) if message.filename else None
    if args.json:
        record: dict[str, object] = {"id": message.message_id.hex(), "from": message.sender,
                                     "bytes": len(message.data)}
        if path is not None:
            record["file"] = str(path)
        else:
            try:
                record["text"] = message.data.decode()
            except UnicodeDecodeError:
                record["base64"] = base64.b64encode(message.data).decode()
        if message.reply_handle is not None:
            record["reply_handle"] = message.reply_handle.hex()
        print(json.dumps(record), flush=True)
    elif path is not None:
        print(f"from {sender}: file {message.filename} ({len(message.data)} bytes) -> {path}")
    else:
        print(f"from {sender}: {message.data.decode(errors='replace')}", flush=True)


def _write_file(message: ReceivedMessage, out: Path) -> Path:
    """Write a received file under its own name (never outside ``out``, never over a file)."""
    name = os.path.basename(message.filename or "") or message.message_id.hex()
    target = out / name
    stem, suffix, n = target.stem, target.suffix, 1
    while target.exists():
        target = out / f"{stem} ({n}){suffix}"
        n += 1
    tmp = out / f".{name}.{message.message_id.hex()}.part"
    with open(tmp, "wb") as fh:
        fh.write(message.data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    sys.exit(main())
