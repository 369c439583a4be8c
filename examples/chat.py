"""Chat through a local zmix network, one terminal per side (docs/apps.md, "A chat").

    zmix-client --state net --as alice          # each side needs its own daemon running
    python examples/chat.py --state net --as alice --to bob

Type a line to send it to the other side. ``/anon TEXT`` sends TEXT anonymously with 2 reply
blocks; ``/reply HANDLE TEXT`` answers an anonymous message through its handle (the one shown in
brackets). "(delivered)" follows once the other side's provider acknowledged a message, "(sent)"
once a reply left. At the end of stdin (Ctrl-D, or a pipe's end) it exits once everything it sent
was delivered (and, with --expect N, once N messages arrived), or after --timeout seconds with
exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from zmix.api import (
    AcknowledgedEvent,
    ApiError,
    AsyncClient,
    DaemonGone,
    FailedEvent,
    MessageEvent,
    SentEvent,
)

T = TypeVar("T")


class Chat:
    """One side of the chat: what it sent and has not seen delivered, and the handles shown."""

    def __init__(self, client: AsyncClient, to: str) -> None:
        self.client = client
        self.to = to
        self.handles: dict[str, bytes] = {}  # short handle shown -> reply handle
        self.waiting: set[bytes] = set()  # ids of what we sent, until delivered or failed
        self.settled: set[bytes] = set()  # ids whose final event came (it may beat the answer)
        self.failed = 0
        self.received = 0
        self.changed = asyncio.Event()

    async def show_events(self) -> None:
        """Print messages (then ack them: shown, so never shown again) and deliveries."""
        async for event in self.client.events():
            if isinstance(event, MessageEvent):
                message = event.message
                who = message.sender or "anonymous"  # also a reply through our reply blocks
                if message.sender is None and message.reply_handle:
                    short = message.reply_handle.hex()[:8]  # shown, to /reply through
                    self.handles[short] = message.reply_handle
                    who = f"anonymous [{short}]"
                text = message.text if message.text is not None else f"<{len(message.data)} bytes>"
                print(f"{who}: {text}", flush=True)
                await self.client.ack(message.message_id)
                self.received += 1
                self.changed.set()
            elif isinstance(event, AcknowledgedEvent | SentEvent | FailedEvent):
                failed = isinstance(event, FailedEvent)
                self.failed += failed
                word = "failed" if failed else "sent" if isinstance(event, SentEvent) else \
                    "delivered"
                print(f"({word})", flush=True)
                self.settled.add(event.message_id)
                self.changed.set()

    async def say(self, line: str) -> None:
        """Send one typed line: a message, /anon TEXT, or /reply HANDLE TEXT."""
        if line.startswith("/reply "):
            short, _, text = line[len("/reply "):].partition(" ")
            handle = self.handles.get(short) or bytes.fromhex(short)
            self.waiting.add(await self.client.reply(handle, text))
        elif line.startswith("/anon "):
            sent = await self.client.send(self.to, line[6:], anonymous=True, reply_blocks=2)
            self.waiting.add(sent.message_id)
        elif line:
            self.waiting.add((await self.client.send(self.to, line)).message_id)

    async def finished(self, expect: int) -> None:
        """Return once every message sent was delivered (or failed) and ``expect`` arrived."""
        while not (self.waiting <= self.settled and self.received >= expect):
            self.changed.clear()
            await self.changed.wait()


def read_lines(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Hand stdin's lines to the event loop, then None (a thread: reading a terminal blocks)."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
    loop.call_soon_threadsafe(lines.put_nowait, None)


async def first(waiting: Awaitable[T], shower: asyncio.Task[None]) -> T:
    """Return what ``waiting`` gives, unless the event task ends first: the daemon went away
    (raise its DaemonGone)."""
    task = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait({task, shower}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            shower.result()
        return task.result()
    finally:
        task.cancel()


async def main(state: Path, name: str, to: str, timeout: float, expect: int) -> int:
    """Chat until the end of stdin; return the exit status."""
    try:
        client = await AsyncClient.connect(state=state, name=name)
    except DaemonGone as error:
        print(f"chat: {error}\n(is `zmix-client --state {state} --as {name}` running?)",
              file=sys.stderr)
        return 2
    async with client:
        chat = Chat(client, to)
        await client.subscribe()
        shower = asyncio.create_task(chat.show_events())
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=read_lines, args=(asyncio.get_running_loop(), lines),
                         daemon=True).start()
        print(f"chatting as {name} with {to}: /anon TEXT, /reply HANDLE TEXT, Ctrl-D ends",
              flush=True)
        try:
            while (line := await first(lines.get(), shower)) is not None:
                try:
                    await chat.say(line)
                except (ApiError, ValueError) as error:  # e.g. no_reply_block, a bad handle
                    print(f"(not sent: {error})", flush=True)
            await asyncio.wait_for(first(chat.finished(expect), shower), timeout)
        except DaemonGone as error:
            print(f"chat: {error}", file=sys.stderr)
            return 3
        except TimeoutError:
            print(f"chat: {len(chat.waiting - chat.settled)} not delivered and {chat.received} "
                  f"of {expect} expected received after {timeout} s", file=sys.stderr)
            return 1
        finally:
            shower.cancel()
    return 1 if chat.failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", type=Path, required=True, help="the network's state folder")
    parser.add_argument("--as", dest="name", required=True, help="this side's client name")
    parser.add_argument("--to", required=True, help="the other side's client name")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait at the end of stdin (default 60)")
    parser.add_argument("--expect", type=int, default=0,
                        help="at the end of stdin, also wait until this many messages arrived")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.state, arguments.name, arguments.to, arguments.timeout,
                              arguments.expect)))
