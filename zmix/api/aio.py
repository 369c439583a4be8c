"""An asyncio client of the client daemon's local API (docs/api.md, docs/apps.md).

    client = await AsyncClient.connect(state=Path("net"), name="alice")
    await client.subscribe()
    async for event in client.events():
        ...

The same API as :class:`zmix.api.client.Client`, with coroutines. One reader task takes every
frame the daemon sends: answers go to the futures of their requests (matched by ``id``, so several
tasks may wait on requests at once), events to a queue that :meth:`AsyncClient.next_event` and
:meth:`AsyncClient.events` read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from zmix.api.client import READ_PIECE, message_hex, not_running, payload, send_fields, where
from zmix.api.session import FINAL_EVENTS, Answer, Session, subscription
from zmix.api.types import (
    DaemonGone,
    Event,
    Hello,
    Message,
    MessageEvent,
    Piece,
    Progress,
    Sent,
    Status,
    next_offset,
    whole,
)

_READ = 1 << 16  # bytes asked of the stream at once


class _Protocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, except that a failed write does not lose what is left to read.

    A daemon that refuses a connection (``busy``) says so and closes. The first request's write
    may then fail, and the stock transport would close the socket and make the reader raise that
    error at once, dropping the refusal still unread. Here the rest is read first, then the
    stream simply ends.
    """

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        self._reader = reader
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, BrokenPipeError | ConnectionResetError):
            self._read_rest()
            exc = None
        super().connection_lost(exc)

    def _read_rest(self) -> None:
        """Feed the reader what the socket still holds (it is closed right after this)."""
        held = None if self._transport is None else self._transport.get_extra_info("socket")
        if held is None:
            return
        with socket.socket(fileno=os.dup(held.fileno())) as sock:
            sock.setblocking(False)
            while True:
                try:
                    data = sock.recv(_READ)
                except OSError:
                    return
                if not data:
                    return
                self._reader.feed_data(data)


class AsyncClient:
    """An asyncio connection to a client daemon (see the module's docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        """Wrap connected streams and start the reader task; use :meth:`connect`."""
        self._reader = reader
        self._writer = writer
        self.timeout = timeout
        self._session = Session()
        self._futures: dict[int, asyncio.Future[Answer]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()  # None: the end
        self._changed = asyncio.Event()  # set by the reader task after each read
        self._failure: Exception | None = None  # why reading ended, until someone is told
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self.info: Hello | None = None

    @classmethod
    async def connect(cls, path: Path | str | None = None, *, state: Path | str | None = None,
                      name: str | None = None, tcp: tuple[str, int] | None = None,
                      token: str | None = None, timeout: float = 30.0) -> AsyncClient:
        """Return a client connected to the daemon, after its ``hello`` (kept in ``info``);
        the arguments and errors are :meth:`zmix.api.client.Client.connect`'s."""
        unix, token = where(path, state, name, tcp, token)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ, loop=loop)
        protocol = _Protocol(reader, loop=loop)
        try:
            if unix is not None:
                opening = loop.create_unix_connection(lambda: protocol, unix)
            else:
                assert tcp is not None
                opening = loop.create_connection(lambda: protocol, *tcp)
            transport, _ = await asyncio.wait_for(opening, timeout)
        except (OSError, TimeoutError) as error:
            raise not_running(unix or f"{tcp}", OSError(str(error))) from None
        client = cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop), timeout)
        try:
            await client.hello(token)
        except BaseException:
            await client.close()
            raise
        return client

    async def hello(self, token: str | None = None) -> Hello:
        """Return the daemon's :class:`Hello` (``token``: the TCP token)."""
        info: Hello = await self._call("hello", {} if token is None else {"token": token})
        self.info = info
        return info

    async def send(self, to: str, data: bytes | str | Path, *, filename: str | None = None,
                   anonymous: bool = False, reply_blocks: int = 0) -> Sent:
        """Send ``data`` to client ``to``; see :meth:`zmix.api.client.Client.send`."""
        sent: Sent = await self._call("send", send_fields(to, data, filename, anonymous,
                                                          reply_blocks))
        return sent

    async def reply(self, handle: bytes | str, data: bytes | str) -> bytes:
        """Answer through a reply handle; return the reply's message id."""
        reply_id: bytes = await self._call("reply", {"handle": message_hex(handle),
                                                     **payload(data)})
        return reply_id

    async def progress(self, message_id: bytes | str) -> Progress:
        """Return how far a sent message or reply got. Raises ApiError("unknown_message")."""
        progress: Progress = await self._call("progress",
                                              {"message_id": message_hex(message_id)})
        return progress

    async def status(self) -> Status:
        """Return the daemon's :class:`Status`."""
        status: Status = await self._call("status", {})
        return status

    async def inbox(self) -> list[Message]:
        """Return every received message not yet acked, oldest first (the data of messages
        the daemon did not send inline read with :meth:`read`)."""
        messages: list[Message] = await self._call("inbox", {})
        return [await self._complete(message) for message in messages]

    async def read(self, message_id: bytes | str, offset: int = 0, length: int = READ_PIECE
                   ) -> Piece:
        """Return up to ``length`` bytes of an inbox message's data from ``offset``. Raises
        ApiError("unknown_message") if it is not in the inbox."""
        piece: Piece = await self._call("read", {"message_id": message_hex(message_id),
                                                 "offset": offset, "length": length})
        return piece

    async def _complete(self, message: Message) -> Message:
        """Return ``message`` with its data, reading it if the daemon did not send it inline."""
        pieces: list[Piece] = []
        while (offset := next_offset(message, pieces)) is not None:
            pieces.append(await self.read(message.message_id, offset))
        return message if message.complete else whole(message, pieces)

    async def ack(self, message_id: bytes | str) -> None:
        """Say that a received message was shown (no caller sees it again)."""
        await self._call("ack", {"message_id": message_hex(message_id)})

    async def subscribe(self, events: Iterable[str] | None = None) -> None:
        """Ask for events of the kinds ``events`` names (None: all)."""
        await self._call("subscribe", {"events": sorted(subscription(events))})

    async def unsubscribe(self) -> None:
        """Ask for no more events."""
        await self._call("unsubscribe", {})

    async def next_event(self, timeout: float | None = None) -> Event | None:
        """Return the next event, waiting at most ``timeout`` seconds (None: without end);
        None if none came. Raises DaemonGone when the connection is over."""
        try:
            event = await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            return None
        if event is None:
            self._events.put_nowait(None)  # for the next reader too
            raise self._told()
        if isinstance(event, MessageEvent) and not event.message.complete:
            return MessageEvent(await self._complete(event.message))
        return event

    async def events(self) -> AsyncIterator[Event]:
        """Yield events as they come, without end. Raises DaemonGone when the connection ends."""
        while True:
            event = await self.next_event()
            if event is not None:
                yield event

    async def wait_done(self, message_id: bytes | str, timeout: float) -> Progress:
        """Return the progress of a sent message once it is done or failed (a reply: once it
        left); see :meth:`zmix.api.client.Client.wait_done`. Raises TimeoutError."""
        key = bytes.fromhex(message_hex(message_id))
        self._session.watch(key)
        try:
            async with asyncio.timeout(timeout) as scope:
                kinds = self._session.needs(frozenset(FINAL_EVENTS))
                if kinds is not None:
                    await self._call("subscribe", {"events": sorted(kinds)}, by_caller=False)
                progress = await self.progress(key)
                while not (progress.done or progress.failed):
                    if self._session.final_event(key) is not None:
                        return await self.progress(key)
                    if self._task.done():
                        raise self._told()
                    self._changed.clear()
                    await self._changed.wait()
                return progress
        except TimeoutError:
            if not scope.expired():
                raise
            raise TimeoutError(f"message {key.hex()} was not done after {timeout} s") from None
        finally:
            self._session.unwatch(key)

    async def close(self) -> None:
        """Close the connection and stop the reader task."""
        self._session.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def _call(self, op: str, fields: dict[str, Any], *,
                    by_caller: bool = True) -> Any:
        """Send a request and return its answer's value (:data:`zmix.api.session.PARSERS`).
        Raises ApiError if the daemon said an error, ProtocolViolation for a bad answer,
        TimeoutError after ``timeout`` seconds, DaemonGone if the connection ended."""
        request_id, frame = self._session.request(op, fields, by_caller=by_caller)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        try:
            # The daemon may have closed after saying why (busy): the reader task reports it.
            with contextlib.suppress(OSError):
                self._writer.write(frame)
                await self._writer.drain()
            try:
                answer = await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                raise TimeoutError(f"the daemon did not answer {op!r} within "
                                   f"{self.timeout} s") from None
        finally:
            self._futures.pop(request_id, None)
            self._session.abandon(request_id)  # no-op once answered
        if answer.error is not None:
            raise answer.error
        return answer.value

    def _told(self) -> Exception:
        """Return why the connection ended: the first to ask gets the reason reading stopped
        (a ProtocolViolation, a closing error), later ones DaemonGone."""
        failure, self._failure = self._failure, None
        return failure if failure is not None else self._session.end_of_stream()

    async def _read_loop(self) -> None:
        """Take every frame the daemon sends, until the end of the stream or a violation."""
        failure: Exception
        try:
            while True:
                data = await self._reader.read(_READ)
                if not data:
                    failure = self._session.end_of_stream()
                    break
                for item in self._session.receive(data):
                    if isinstance(item, Answer):
                        future = self._futures.get(item.request_id)
                        if future is not None and not future.done():
                            future.set_result(item)
                    else:
                        self._events.put_nowait(item)
                self._changed.set()
        except OSError as error:
            failure = DaemonGone(f"the connection to the daemon broke: {error}")
            self._session.end_of_stream()
        except Exception as error:  # a ProtocolViolation: the session is closed
            failure = error
        self._failure = failure
        for future in self._futures.values():
            if not future.done():
                future.set_exception(self._told())
        self._events.put_nowait(None)
        self._changed.set()
        self._writer.close()
