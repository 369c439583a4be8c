"""The I/O of the client daemon's local API (docs/api.md): listeners, connections, frames.

:class:`ApiServer` is a :class:`zmix.runtime.services.Service` of the daemon's poll loop: it
accepts on a Unix socket (and optionally on loopback TCP), reads frames without blocking, hands
each request to the daemon's ``handle`` and queues the answer, and queues events for subscribers.
It never waits on a caller: a connection that does not read its answers is closed once they pass
:data:`MAX_UNREAD`. What is refused (another user, a wrong token, too many connections, a bad
frame) is answered with its error code and counted; nothing a caller sends can stop the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import logging
import math
import os
import socket
import stat
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from zmix.api.protocol import (
    CLOSING_ERRORS,
    MAX_FRAME,
    ApiError,
    FrameReader,
    decode_object,
    encode,
    error_answer,
)
from zmix.client import ReceivedMessage

LOG = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # callers at once (--api-max-connections)
MAX_UNREAD = 64 * 1024 * 1024  # bytes of answers and events a caller may leave unread
READ_CHUNK = 256 * 1024  # bytes read from one connection per turn of the loop
_UCRED = struct.Struct("3i")  # pid, uid, gid (Linux SO_PEERCRED)

Handler = Callable[["Connection", dict[str, Any]], dict[str, Any]]


class Connection:
    """One caller: its frames in, its answers and events out, what it subscribed to."""

    def __init__(self, sock: socket.socket, *, needs_token: bool, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.reader = FrameReader(MAX_FRAME)
        self.out = bytearray()
        self.tcp = needs_token  # a loopback TCP caller (else the Unix socket's)
        self.needs_token = needs_token  # TCP: nothing but hello with the token until it came
        self.events: frozenset[str] = frozenset()  # subscribed events (empty: none)
        self.closing = False  # close once ``out`` is written
        self.after_answer: list[dict[str, Any]] = []  # frames that follow the current answer

    def queue(self, obj: dict[str, Any]) -> None:
        """Queue one frame for the caller."""
        self.out += encode(obj)


class ApiServer:
    """The listeners and connections of the API; ``handle`` answers each request."""

    statistics_prefix = ""  # its names start with api_ already

    def __init__(self, unix_path: Path, handle: Handler, *, tcp: tuple[str, int] | None = None,
                 token: str | None = None, max_connections: int = MAX_CONNECTIONS) -> None:
        """Listen on ``unix_path`` (made 0600; a stale socket file there is replaced) and, with
        ``tcp``, on that loopback address, where callers must first say hello with ``token``.
        Raises OSError if an address cannot be bound."""
        self._handle = handle
        self._token = token
        self._max = max_connections
        self._counts: Counter[str] = Counter()
        self._connections: dict[int, Connection] = {}
        self.unix_path = unix_path
        self._listeners: dict[int, tuple[socket.socket, bool]] = {}  # fd -> (socket, is_tcp)
        self._listen_unix(unix_path)
        if tcp is not None:
            if token is None:
                raise ValueError("a TCP listener needs a token")
            try:
                self._listen_tcp(tcp)
            except BaseException:
                self.close()
                raise

    def _listen_unix(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # left by a daemon that was killed; our lock says none runs
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: no window where others connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self._listeners[sock.fileno()] = (sock, False)

    def _listen_tcp(self, address: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        sock.listen(64)
        sock.setblocking(False)
        self._listeners[sock.fileno()] = (sock, True)

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """Return the TCP listener's address (its port, if 0 was asked), None without one."""
        for sock, is_tcp in self._listeners.values():
            if is_tcp:
                host, port = sock.getsockname()[:2]
                return str(host), int(port)
        return None

    # ------------------------------------------------------------------ the Service seam

    def poll_items(self) -> list[tuple[int, int]]:
        """Return the listeners and connections to wait on, with POLLOUT where output waits."""
        items: list[tuple[int, int]] = [(fd, zmq.POLLIN) for fd in self._listeners]
        for fd, conn in self._connections.items():
            mask = 0 if conn.closing else zmq.POLLIN
            if conn.out:
                mask |= zmq.POLLOUT
            items.append((fd, mask))
        return items

    def on_ready(self, now: float, ready: dict[int, int]) -> None:
        """Accept, read and write what ``ready`` says can be."""
        for fd, events in ready.items():
            if fd in self._listeners:
                self._accept(*self._listeners[fd])
                continue
            conn = self._connections.get(fd)
            if conn is None:
                continue
            if events & zmq.POLLIN and not conn.closing:
                self._read(conn)
            if fd in self._connections and (conn.out or conn.closing):
                self._write(conn)

    def on_message(self, now: float, message: ReceivedMessage) -> bool:
        """The API consumes no message: the daemon pushes them to subscribers itself."""
        return False

    def on_timer(self, now: float) -> None:
        """The API has no timers."""

    def next_deadline(self) -> float:
        """The API has no timers."""
        return math.inf

    def statistics(self) -> dict[str, int]:
        """Return the API's counters (docs/api.md, "The daemon's statistics")."""
        names = ("api_connections", "api_requests", "api_errors", "api_refused",
                 "api_bad_frames", "api_slow_closed", "events_sent")
        stats = {name: self._counts[name] for name in names}
        stats["api_connections_open"] = len(self._connections)
        stats["subscribers"] = self.subscribers()
        return stats

    def close(self) -> None:
        """Close every connection and listener and remove the socket file."""
        for conn in list(self._connections.values()):
            self._drop(conn)
        for sock, _ in self._listeners.values():
            sock.close()
        self._listeners.clear()
        with contextlib.suppress(FileNotFoundError):
            self.unix_path.unlink()

    # ------------------------------------------------------------------ events

    def subscribers(self, event: str | None = None) -> int:
        """Return how many connections subscribed (to ``event``, if given)."""
        return sum(1 for c in self._connections.values()
                   if c.events and (event is None or event in c.events))

    def publish(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (an object with "event") for every connection subscribed to it."""
        frame = encode(event)
        for conn in list(self._connections.values()):
            if event["event"] in conn.events and not conn.closing:
                conn.out += frame
                self._counts["events_sent"] += 1
                self._check_unread(conn)

    def connections(self) -> int:
        """Return how many connections are open."""
        return len(self._connections)

    # ------------------------------------------------------------------ connections

    def _accept(self, listener: socket.socket, is_tcp: bool) -> None:
        while True:
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: refuse for now, keep serving the rest
                LOG.warning("API accept failed: %s", exc)
                self._counts["api_refused"] += 1
                return
            sock.setblocking(False)
            conn = Connection(sock, needs_token=is_tcp,
                              peer=f"{address[0]}:{address[1]}" if is_tcp else "unix")
            self._connections[sock.fileno()] = conn
            self._counts["api_connections"] += 1
            if len(self._connections) > self._max:
                self._refuse(conn, ApiError("busy", f"the daemon serves at most {self._max} "
                                                    "API connections at once"))
            elif not is_tcp and not self._same_user(sock):
                self._refuse(conn, ApiError("unauthorized", "the API socket serves only the "
                                                            "daemon's own user"))

    @staticmethod
    def _same_user(sock: socket.socket) -> bool:
        """Return True if the Unix peer runs as our user or as root (the file mode already
        keeps others out; this holds if the mode was loosened by hand)."""
        try:
            _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      _UCRED.size))
        except (OSError, AttributeError):  # no SO_PEERCRED here: the file mode is the gate
            return True
        return uid in (os.getuid(), 0)

    def _refuse(self, conn: Connection, error: ApiError) -> None:
        self._counts["api_refused"] += 1
        LOG.info("API caller %s refused: %s", conn.peer, error.message)
        conn.queue(error_answer(None, error))
        conn.closing = True
        self._write(conn)

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:  # the caller closed its side: answers it did not wait for are not sent
            self._drop(conn)
            return
        try:
            bodies = conn.reader.feed(data)
        except ApiError as exc:  # the stream cannot be read on
            self._counts["api_bad_frames"] += 1
            self._answer_error(conn, None, exc)
            return
        for body in bodies:
            self._request(conn, body)
            if conn.closing or conn.sock.fileno() not in self._connections:
                return

    def _request(self, conn: Connection, body: bytes) -> None:
        try:
            request = decode_object(body)
        except ApiError as exc:
            self._counts["api_bad_frames"] += 1
            self._answer_error(conn, None, exc)
            return
        self._counts["api_requests"] += 1
        request_id = request.get("id")
        if conn.needs_token and not self._hello_with_token(request):
            self._counts["api_refused"] += 1
            self._answer_error(conn, request_id, ApiError(
                "unauthorized", "a TCP caller must first send hello with the daemon's token"))
            return
        if conn.needs_token:
            conn.needs_token = False
        try:
            answer = self._handle(conn, request)
        except ApiError as exc:
            self._answer_error(conn, request_id, exc)
            return
        try:
            conn.queue({"id": request_id, "ok": True, **answer})
        except ApiError as exc:  # an answer over the frame limit: said, not sent
            conn.after_answer.clear()
            self._answer_error(conn, request_id, exc)
            return
        for frame in conn.after_answer:  # a subscription's backlog comes after its answer
            conn.queue(frame)
            self._counts["events_sent"] += 1
        conn.after_answer.clear()
        self._check_unread(conn)

    def _hello_with_token(self, request: dict[str, Any]) -> bool:
        token = request.get("token")
        return (request.get("op") == "hello" and isinstance(token, str)
                and self._token is not None
                and hmac.compare_digest(token.encode(), self._token.encode()))

    def _answer_error(self, conn: Connection, request_id: Any, error: ApiError) -> None:
        self._counts["api_errors"] += 1
        conn.queue(error_answer(request_id, error))
        if error.code in CLOSING_ERRORS:
            conn.closing = True
            self._write(conn)

    def _check_unread(self, conn: Connection) -> None:
        if len(conn.out) > MAX_UNREAD:
            self._counts["api_slow_closed"] += 1
            LOG.warning("API caller %s left over %d bytes unread; closed", conn.peer, MAX_UNREAD)
            self._drop(conn)

    def _write(self, conn: Connection) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out[:READ_CHUNK])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    LOG.info("API caller %s: %s", conn.peer, exc)
                self._drop(conn)
                return
            del conn.out[:sent]
        if conn.closing:
            self._drop(conn, gracefully=True)

    def _drop(self, conn: Connection, *, gracefully: bool = False) -> None:
        fd = conn.sock.fileno()
        self._connections.pop(fd, None)
        if gracefully:
            # A TCP socket closed with unread input sends a reset, which can destroy the
            # refusal just written before the caller reads it: read what waits (one read, so
            # a caller that keeps sending cannot hold the loop), then close our side first.
            with contextlib.suppress(OSError):
                conn.sock.recv(READ_CHUNK)
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
        conn.sock.close()
