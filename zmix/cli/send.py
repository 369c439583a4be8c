"""``zmix-send``: send a message or a file through the mixnet as one of the network's clients."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zmix.api.client import Client, client_folder
from zmix.api.protocol import ApiError
from zmix.api.types import DaemonGone
from zmix.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    configure_logging,
    exit_status_help,
    fail,
    positive_float,
    running_daemon,
)
from zmix.client.sending import fragment_capacity
from zmix.envelope import dated_surb_length
from zmix.errors import ConfigError, LocalMisuse, ZmixError
from zmix.fragment import MAX_REPLY_BLOCKS, reply_blocks_that_fit
from zmix.runtime.client import ClientBusy, ClientRuntime, NetworkExpired
from zmix.sphinx import SphinxParams
from zmix.topology_yaml import load_topology

INLINE_SEND = 8 * 1024 * 1024  # bytes zmix-send hands a daemon in a frame (its limit: 16 MiB)

EXAMPLES = """\
examples:
  zmix-send --state zmix-local --from alice --to bob "meet at noon"
  zmix-send --state zmix-local --from alice --to bob --file report.pdf
  tar c notes/ | zmix-send --state zmix-local --from alice --to bob
  zmix-send --state zmix-local --from alice --to bob --anonymous --reply-blocks 2 "guess who"
  zmix-send --state zmix-local --from bob --reply 5f1c...e0 "I have no idea"

The message rides in alice's Poisson stream among her cover packets; bytes from a file or a pipe
arrive exactly as sent. --reply-blocks N is at most 4, and fewer when the network's packets are
small: zmix-send says how many fit. A reply (--reply) is one packet through one of the sender's
reply blocks; nothing acknowledges it, so zmix-send reports only that it left.

""" + exit_status_help(
    (EXIT_OK, "sent: every fragment was acknowledged by the recipient's provider (--reply: "
              "the reply was handed to the link to the own provider)"),
    (EXIT_FAILURE, "not every fragment was acknowledged within --timeout seconds or after every "
                   "retry, the client is in use by another zmix process, or there is no valid "
                   "network document (none from the authorities, the cached one expired)"),
    usage="bad usage or configuration (an unknown client, more reply blocks than fit, a reply "
          "too long or without a reply block left); nothing was sent")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-send."""
    parser = argparse.ArgumentParser(
        prog="zmix-send", description="Send a message through a zmix mixnet.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", required=True, type=Path, help="the network's state directory")
    parser.add_argument("--from", dest="sender", required=True, help="the sending client's name")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", dest="recipient", help="the recipient's name")
    target.add_argument("--reply", metavar="HANDLE",
                        help="answer an anonymous message through its reply blocks (the "
                             "reply_handle that zmix-recv --json printed)")
    parser.add_argument("text", nargs="?", default=None, help="the message (default: stdin)")
    parser.add_argument("--file", type=Path, default=None, help="send this file instead")
    parser.add_argument("--anonymous", action="store_true",
                        help="do not tell the recipient who sent it")
    parser.add_argument("--reply-blocks", type=int, default=0, metavar="N",
                        help=f"attach N single-use reply blocks so the recipient can answer "
                             f"(at most {MAX_REPLY_BLOCKS}, fewer if the network's packets are "
                             "small)")
    parser.add_argument("--timeout", type=positive_float, default=120.0,
                        help="seconds to wait for every acknowledgement (default 120)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def _read_input(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[bytes, str | None]:
    if args.text is not None and args.file is not None:
        parser.error("give either TEXT or --file, not both")
    if args.reply_blocks < 0:
        parser.error("--reply-blocks must be 0 or more")
    if args.reply is not None and (args.anonymous or args.reply_blocks):
        parser.error("--anonymous and --reply-blocks go with --to: a reply is always anonymous "
                     "and carries no reply blocks")
    if args.file is not None:
        try:
            return args.file.read_bytes(), args.file.name
        except OSError as exc:
            parser.error(f"cannot read {args.file}: {exc.strerror}")
    if args.text is not None:
        return args.text.encode(), None
    if sys.stdin.isatty():
        parser.error("no message: give TEXT, --file PATH, or pipe it on stdin")
    return sys.stdin.buffer.read(), None


def main(argv: list[str] | None = None) -> int:
    """Run zmix-send; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    data, filename = _read_input(parser, args)

    handle = _parse_handle(parser, args.reply)
    # What the topology alone can refuse is refused before the authorities are asked.
    try:
        local = load_topology(args.state / "topology.yaml")
        too_many = (None if handle is not None
                    else _too_many_reply_blocks(local.sphinx, args.reply_blocks, filename))
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    except LocalMisuse as exc:
        return fail(str(exc), EXIT_USAGE)
    if too_many is not None:
        return fail(too_many, EXIT_USAGE)
    daemon = running_daemon(args.state, args.sender)
    if daemon is not None:  # the client is online in its daemon: send through it
        with daemon:
            return _send_via_daemon(daemon, args, data, filename, handle)
    try:
        runtime = ClientRuntime(args.state, args.sender)
        if args.recipient is not None:
            runtime.topology.client(args.recipient)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    except KeyError:
        return fail(f"no client named {args.recipient!r} in {args.state / 'topology.yaml'}",
                    EXIT_USAGE)
    except ZmixError as exc:  # no network document: the authorities' answers are in the text
        return fail(str(exc))
    try:
        with runtime:
            now = time.time()
            try:
                if handle is not None:
                    message_id = runtime.core.reply(now, handle, data)
                    return _wait_for_reply(runtime, message_id, args.timeout)
                message_id = runtime.core.submit(
                    now, args.recipient, data, filename=filename,
                    anonymous=args.anonymous, reply_blocks=args.reply_blocks)
            except LocalMisuse as exc:
                return fail(str(exc), EXIT_USAGE)
            return _wait_for_acks(runtime, message_id, args.timeout, len(data))
    except (ClientBusy, NetworkExpired) as exc:
        return fail(str(exc))


def _send_via_daemon(daemon: Client, args: argparse.Namespace, data: bytes,
                     filename: str | None, handle: bytes | None) -> int:
    """Send through the client's daemon and wait as the command does alone (same lines, same
    statuses); what is not acknowledged in time the daemon keeps sending."""
    try:
        daemon.subscribe(["progress", "acknowledged", "failed", "sent"])
        if handle is not None:
            message_id = daemon.reply(handle, data)
        else:
            message_id = _daemon_send(daemon, args, data, filename)
        progress = daemon.progress(message_id)
        bar = None if handle is not None else _progress_bar(progress.fragments, len(data))
        shown, deadline = 0, time.monotonic() + args.timeout
        while not (progress.done or progress.failed) and time.monotonic() < deadline:
            daemon.next_event(min(1.0, max(0.0, deadline - time.monotonic())))
            progress = daemon.progress(message_id)
            if bar is not None and progress.acked > shown:
                bar.update(progress.acked - shown)
                shown = progress.acked
        if bar is not None:
            bar.close()
    except ApiError as exc:
        return fail(exc.message, EXIT_FAILURE if exc.code == "offline" else EXIT_USAGE)
    except (DaemonGone, TimeoutError) as exc:
        return fail(f"the daemon of {args.sender} stopped answering: {exc}")
    if handle is not None:
        if not progress.done:
            return fail(f"timed out after {args.timeout:g} s before the reply left; the daemon "
                        "sends it as soon as it can")
        provider = daemon.info.provider if daemon.info is not None else "the provider"
        print(f"reply sent: handed to the link to {provider}, on its way through one of the "
              "message's reply blocks; a reply is not acknowledged, so whether it arrives is not "
              "known here")
        return EXIT_OK
    return _outcome(progress.fragments, progress.acked, progress.failed, progress.done,
                    args.timeout, f"the daemon of {args.sender} keeps sending the rest")


def _daemon_send(daemon: Client, args: argparse.Namespace, data: bytes,
                 filename: str | None) -> bytes:
    """Send through the daemon: a --file by its path, which the daemon reads (no frame limit),
    other data inline up to INLINE_SEND bytes and through a private temporary file beyond."""
    options = {"filename": filename, "anonymous": args.anonymous,
               "reply_blocks": args.reply_blocks}
    if args.file is not None:
        return daemon.send(args.recipient, args.file, **options).message_id
    if len(data) <= INLINE_SEND:
        return daemon.send(args.recipient, data, **options).message_id
    folder = client_folder(args.state, args.sender)  # 0700, the client's own
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".send-") as fh:
        fh.write(data)
        fh.flush()
        return daemon.send(args.recipient, Path(fh.name), **options).message_id


def _parse_handle(parser: argparse.ArgumentParser, text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        parser.error("--reply takes the hexadecimal reply_handle printed by zmix-recv --json")
    return None


def _too_many_reply_blocks(params: SphinxParams, wanted: int, filename: str | None
                           ) -> str | None:
    """Return why ``wanted`` reply blocks do not fit in the message's first packet, naming the
    most that fit in a network of packets ``params`` (None if they fit). Raises LocalMisuse for
    a too long name."""
    block = dated_surb_length(params)
    fit = reply_blocks_that_fit(fragment_capacity(params), block, filename)
    if wanted <= fit:
        return None
    if fit == MAX_REPLY_BLOCKS:
        return f"--reply-blocks {wanted}: a message carries at most {MAX_REPLY_BLOCKS}"
    beside = (f", beside the file name {filename!r} ({len(filename.encode())} bytes)"
              if filename else "")
    return (f"--reply-blocks {wanted}: at most {fit} fit in a message of this network{beside} "
            f"(a reply block takes {block} of the {params.payload_length} bytes "
            f"of a packet's payload: sphinx.payload_length {params.payload_length}, "
            f"max_hops {params.max_hops})")


def _wait_for_reply(runtime: ClientRuntime, message_id: bytes, timeout: float) -> int:
    """Wait until the reply's one packet left for the own provider; say only that, since
    nothing acknowledges a reply through a reply block."""
    left = runtime.run_until(lambda: runtime.core.progress(message_id).acked >= 1, timeout)
    if not left:
        return fail(f"timed out after {timeout:g} s before the reply left; it is sent the next "
                    "time this client is online")
    print(f"reply sent: handed to the link to {runtime.provider.name}, on its way through one of "
          "the message's reply blocks; a reply is not acknowledged, so whether it arrives is not "
          "known here")
    return EXIT_OK


def _wait_for_acks(runtime: ClientRuntime, message_id: bytes, timeout: float, size: int) -> int:
    progress = runtime.core.progress(message_id)
    bar = _progress_bar(progress.fragments, size)
    shown = 0

    def done() -> bool:
        nonlocal shown, progress
        progress = runtime.core.progress(message_id)
        if bar is not None and progress.acked > shown:
            bar.update(progress.acked - shown)
            shown = progress.acked
        return progress.acked >= progress.fragments or progress.failed

    finished = runtime.run_until(done, timeout)
    if bar is not None:
        bar.close()
    return _outcome(progress.fragments, progress.acked, progress.failed,
                    finished and not progress.failed, timeout,
                    "the rest will be resent the next time this client is online")


def _outcome(fragments: int, acked: int, failed: bool, done: bool, timeout: float,
             later: str) -> int:
    """Say how the send ended and return its exit status."""
    if done:
        print(f"sent: {fragments} fragment(s), every one acknowledged by the "
              "recipient's provider")
        return EXIT_OK
    if failed:
        return fail(f"gave up: {fragments - acked} of {fragments} "
                    "fragment(s) were never acknowledged after every retry")
    return fail(f"timed out after {timeout:g} s: {acked} of {fragments} "
                f"fragment(s) acknowledged; {later}")


def _progress_bar(fragments: int, size: int) -> Any:
    if fragments < 4 or not sys.stdout.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=fragments, unit="frag", desc=f"sending {size} bytes")


if __name__ == "__main__":
    sys.exit(main())
