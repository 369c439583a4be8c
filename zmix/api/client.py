"""A blocking Python client of the client daemon's local API (docs/api.md, docs/apps.md).

    with Client.connect(state=Path("net"), name="alice") as client:
        sent = client.send("bob", "hello")
        client.wait_done(sent.message_id, timeout=60)

One connection, one request at a time; events that arrive while a request waits for its answer
are queued for :meth:`Client.next_event`, never lost. The protocol work is
:class:`zmix.api.session.Session`'s; this module only moves its bytes over a socket.
"""

from __future__ import annotations

import collections
import contextlib
import re
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from zmix.api.protocol import SOCKET_FILE, TOKEN_FILE, b64encode
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
from zmix.errors import LocalMisuse

_READ = 1 << 16  # bytes asked of the socket at once
READ_PIECE = 8 * 1024 * 1024  # bytes of a large message's data one read asks for (the most)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


def client_folder(state: Path | str, name: str) -> Path:
    """Return the folder of client ``name`` in the state folder ``state``."""
    return Path(state) / "clients" / name


def socket_path(state: Path | str, name: str) -> Path:
    """Return where the daemon of client ``name`` listens: ``STATE/clients/NAME/api.sock``."""
    return client_folder(state, name) / SOCKET_FILE


def read_token(state: Path | str, name: str) -> str:
    """Return the TCP token of client ``name``'s daemon (``STATE/clients/NAME/api.token``).
    Raises DaemonGone if it is not there."""
    path = client_folder(state, name) / TOKEN_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise DaemonGone(f"cannot read the API token {path}: {error} (it is made when the "
                         f"daemon first starts with --api-tcp)") from None


def message_hex(message_id: bytes | str) -> str:
    """Return a message id (or reply handle), bytes or hexadecimal text, as the hexadecimal text
    the API carries. Raises LocalMisuse for text that is not hexadecimal."""
    if isinstance(message_id, bytes | bytearray | memoryview):
        return bytes(message_id).hex()
    if isinstance(message_id, str) and _HEX.fullmatch(message_id):
        return message_id.lower()
    raise LocalMisuse(f"a message id or handle is bytes or hexadecimal text, not {message_id!r}")


def send_fields(to: str, data: bytes | str | Path, filename: str | None, anonymous: bool,
                reply_blocks: int) -> Any:
    """Return the fields of a ``send`` request (text goes as ``text``, bytes as ``data``, a
    path as ``file``: the daemon reads it, docs/api.md)."""
    content = ({"file": str(Path(data).resolve())} if isinstance(data, Path)
               else payload(data))
    fields: dict[str, Any] = {"to": to, **content, "anonymous": anonymous,
                              "reply_blocks": reply_blocks}
    if filename is not None:
        fields["filename"] = filename
    return fields


def payload(data: bytes | str) -> dict[str, str]:
    """Return ``data`` as the ``text`` or ``data`` field of a send or reply."""
    if isinstance(data, str):
        return {"text": data}
    if isinstance(data, bytes | bytearray | memoryview):
        return {"data": b64encode(bytes(data))}
    raise LocalMisuse(f"data is bytes or str, not {type(data).__name__}")


def where(path: Path | str | None, state: Path | str | None, name: str | None,
          tcp: tuple[str, int] | None, token: str | None) -> tuple[str | None, str | None]:
    """Return the Unix socket path (None for TCP) and the token to send, from connect()'s
    arguments. Raises LocalMisuse when they do not say where the daemon is."""
    if tcp is not None:
        if token is None:
            if state is None or name is None:
                raise LocalMisuse("a TCP connection needs token=, or state= and name= to read "
                                  "STATE/clients/NAME/api.token")
            token = read_token(state, name)
        return None, token
    if path is None:
        if state is None or name is None:
            raise LocalMisuse("say where the daemon is: a socket path, state= and name=, "
                              "or tcp=")
        path = socket_path(state, name)
    return str(path), token


def not_running(target: str, error: OSError) -> DaemonGone:
    """Return the error for a daemon that could not be reached at ``target``."""
    return DaemonGone(f"no client daemon answers at {target} ({error.strerror or error}); "
                      f"start it with `zmix-client --state DIR --as NAME`")


class Client:
    """A blocking connection to a client daemon (see the module's docstring)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        """Wrap a connected socket; use :meth:`connect`."""
        self._sock = sock
        self.timeout = timeout
        self._session = Session()
        self._answers: dict[int, Answer] = {}
        self._events: collections.deque[Event] = collections.deque()
        self.info: Hello | None = None  # the daemon's answer to hello, once connected

    @classmethod
    def connect(cls, path: Path | str | None = None, *, state: Path | str | None = None,
                name: str | None = None, tcp: tuple[str, int] | None = None,
                token: str | None = None, timeout: float = 30.0) -> Client:
        """Return a client connected to the daemon, after its ``hello`` (kept in ``info``).

        The daemon is at the Unix socket ``path``, or ``STATE/clients/NAME/api.sock`` given
        ``state`` and ``name``, or at loopback TCP ``tcp`` (host, port) with ``token`` (read
        from ``STATE/clients/NAME/api.token`` when not given). ``timeout`` bounds each wait for
        an answer. Raises DaemonGone if no daemon answers, ApiError (``unauthorized``,
        ``busy``) if it refuses, LocalMisuse for arguments that do not say where it is.
        """
        unix, token = where(path, state, name, tcp, token)
        target = unix if unix is not None else f"{tcp}"
        try:
            if unix is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(unix)
            else:
                assert tcp is not None
                sock = socket.create_connection(tcp, timeout=timeout)
        except OSError as error:
            raise not_running(target, error) from None
        client = cls(sock, timeout)
        try:
            client.hello(token)
        except BaseException:
            client.close()
            raise
        return client

    def hello(self, token: str | None = None) -> Hello:
        """Return the daemon's :class:`Hello` (``token``: the TCP token)."""
        fields = {} if token is None else {"token": token}
        info: Hello = self._call("hello", fields)
        self.info = info
        return info

    def send(self, to: str, data: bytes | str | Path, *, filename: str | None = None,
             anonymous: bool = False, reply_blocks: int = 0) -> Sent:
        """Send ``data`` (str goes as text; a Path's file is read by the daemon, any size, over
        the Unix socket only) to client ``to``; return once it is sealed and in the client's
        store on disk. Raises ApiError (unknown_recipient, bad_request, too_long, too_large
        for bytes over about 12 MiB: give a Path, offline, ...)."""
        sent: Sent = self._call("send", send_fields(to, data, filename, anonymous, reply_blocks))
        return sent

    def reply(self, handle: bytes | str, data: bytes | str) -> bytes:
        """Send ``data`` anonymously through a received message's reply handle; return the
        reply's message id. Raises ApiError (no_reply_block, too_long, ...)."""
        reply_id: bytes = self._call("reply", {"handle": message_hex(handle), **payload(data)})
        return reply_id

    def progress(self, message_id: bytes | str) -> Progress:
        """Return how far a sent message or reply got. Raises ApiError("unknown_message")."""
        progress: Progress = self._call("progress", {"message_id": message_hex(message_id)})
        return progress

    def status(self) -> Status:
        """Return the daemon's :class:`Status`."""
        status: Status = self._call("status", {})
        return status

    def inbox(self) -> list[Message]:
        """Return every received message not yet acked, oldest first (the data of messages
        the daemon did not send inline read with :meth:`read`)."""
        messages: list[Message] = self._call("inbox", {})
        return [self._complete(message) for message in messages]

    def read(self, message_id: bytes | str, offset: int = 0, length: int = READ_PIECE
             ) -> Piece:
        """Return up to ``length`` bytes of an inbox message's data from ``offset``. Raises
        ApiError("unknown_message") if it is not in the inbox."""
        piece: Piece = self._call("read", {"message_id": message_hex(message_id),
                                           "offset": offset, "length": length})
        return piece

    def _complete(self, message: Message) -> Message:
        """Return ``message`` with its data, reading it if the daemon did not send it inline."""
        pieces: list[Piece] = []
        while (offset := next_offset(message, pieces)) is not None:
            pieces.append(self.read(message.message_id, offset))
        return message if message.complete else whole(message, pieces)

    def ack(self, message_id: bytes | str) -> None:
        """Say that a received message was shown: the daemon forgets its data and no caller sees
        it again. Raises ApiError("unknown_message")."""
        self._call("ack", {"message_id": message_hex(message_id)})

    def subscribe(self, events: Iterable[str] | None = None) -> None:
        """Ask for events of the kinds ``events`` names (None: all); a ``message`` event for
        each message already in the inbox comes first."""
        self._call("subscribe", {"events": sorted(subscription(events))})

    def unsubscribe(self) -> None:
        """Ask for no more events (those already queued are still handed out)."""
        self._call("unsubscribe", {})

    def next_event(self, timeout: float | None = None) -> Event | None:
        """Return the next event, waiting at most ``timeout`` seconds (None: without end);
        None if none came. Raises DaemonGone when the connection is over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            if not self._pump(deadline):
                return None
        event = self._events.popleft()
        if isinstance(event, MessageEvent) and not event.message.complete:
            return MessageEvent(self._complete(event.message))
        return event

    def events(self) -> Iterator[Event]:
        """Yield events as they come, without end. Raises DaemonGone when the connection ends."""
        while True:
            event = self.next_event()
            if event is not None:
                yield event

    def wait_done(self, message_id: bytes | str, timeout: float) -> Progress:
        """Return the progress of a sent message once it is done or failed (a reply: once it
        left), watching its events (it subscribes to them if this connection does not get
        them yet; those the caller did not subscribe to are not handed out). Raises TimeoutError
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        key = bytes.fromhex(message_hex(message_id))
        self._session.watch(key)
        try:
            kinds = self._session.needs(frozenset(FINAL_EVENTS))
            if kinds is not None:
                self._call("subscribe", {"events": sorted(kinds)}, by_caller=False)
            progress = self.progress(key)
            while not (progress.done or progress.failed):
                if self._session.final_event(key) is not None:
                    return self.progress(key)
                if not self._pump(deadline):
                    raise TimeoutError(f"message {key.hex()} was not done after {timeout} s")
            return progress
        finally:
            self._session.unwatch(key)

    def close(self) -> None:
        """Close the connection (queued events are dropped with it)."""
        self._session.close()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _call(self, op: str, fields: dict[str, Any], *, by_caller: bool = True) -> Any:
        """Send a request and return its answer's value (:data:`zmix.api.session.PARSERS`).
        Raises ApiError if the daemon said an error, ProtocolViolation for a bad answer,
        TimeoutError after ``timeout`` seconds, DaemonGone if the connection ended."""
        request_id, frame = self._session.request(op, fields, by_caller=by_caller)
        # The daemon may have closed after saying why (busy, unauthorized): read that below.
        with contextlib.suppress(OSError):
            self._sock.sendall(frame)
        deadline = time.monotonic() + self.timeout
        try:
            while request_id not in self._answers:
                if not self._pump(deadline):
                    raise TimeoutError(f"the daemon did not answer {op!r} within "
                                       f"{self.timeout} s")
        finally:
            self._session.abandon(request_id)  # no-op once answered
        answer = self._answers.pop(request_id)
        if answer.error is not None:
            raise answer.error
        return answer.value

    def _pump(self, deadline: float | None) -> bool:
        """Read once and file what came; return False if ``deadline`` passed first. Raises
        DaemonGone at the end of the stream, ProtocolViolation for what breaks the protocol."""
        if self._sock.fileno() == -1:
            raise self._session.end_of_stream()
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(_READ)
        except TimeoutError:
            return False
        except OSError as error:
            self._sock.close()
            self._session.end_of_stream()
            raise DaemonGone(f"the connection to the daemon broke: {error}") from None
        if not data:
            self._sock.close()
            raise self._session.end_of_stream()
        try:
            items = self._session.receive(data)
        except Exception:
            self._sock.close()
            raise
        for item in items:
            if isinstance(item, Answer):
                self._answers[item.request_id] = item
            else:
                self._events.append(item)
        return True
