"""Helpers for tests that attack a local server, and small real peers for end-to-end tests.

Attacks (each connects to ``addr``: ("127.0.0.1", port) for TCP, or a Unix socket path, and
returns an :class:`Outcome` saying what the server answered and whether it closed):

- :func:`random_bytes_conn`: n random bytes;
- :func:`truncated`: the first bytes of a valid message, then silence;
- :func:`huge_line`: 10 MB of one line, sent without reading, tolerating a reset;
- :func:`many_connections`: hundreds of connections opened and held (a context manager).

Peers: :func:`socks_connect`, a tiny SOCKS5 CONNECT client written from RFC 1928 (it does not
share code with zmix.tunnel.socks5, so it can catch that module's mistakes);
:func:`serve_bytes`, a threaded HTTP server on 127.0.0.1 with a generated body of N bytes and
its sha256; :func:`http_get`, a plain HTTP/1.0 GET over any connected socket; and
:func:`counting_listener`, a TCP port that only counts the connections made to it (to show
that "nothing is connected").

Every wait here is bounded; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import ipaddress
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

Address = tuple[str, int] | str | Path

MEGABYTE = 1000 * 1000
ANSWER_CAP = 1 << 20  # bytes of a server's answer kept in an Outcome
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one hostile connection saw.

    ``sent`` is how many bytes the server accepted from us; ``answer`` what it wrote back (up to
    ANSWER_CAP bytes); ``closed`` whether it closed the connection (EOF or reset) before we gave
    up waiting; ``reset`` whether the close was a reset (ECONNRESET or EPIPE).
    """

    sent: int
    answer: bytes
    closed: bool
    reset: bool


def connect(addr: Address, timeout: float = 5.0) -> socket.socket:
    """Return a socket connected to ``addr`` (TCP (host, port) or a Unix socket path)."""
    if isinstance(addr, tuple):
        return socket.create_connection(addr, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(addr))
    except OSError:
        sock.close()
        raise
    return sock


def read_until_closed(sock: socket.socket, wait: float) -> tuple[bytes, bool, bool]:
    """Read what the server writes for up to ``wait`` seconds or until it closes.

    Returns (answer, closed, reset). It returns as soon as the server closes.
    """
    deadline = time.monotonic() + wait
    answer = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(answer), False, False
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            data = sock.recv(_CHUNK)
        except OSError:  # ECONNRESET mostly; any failure means the connection is gone
            return bytes(answer), True, True
        if not data:
            return bytes(answer), True, False
        answer += data[:max(0, ANSWER_CAP - len(answer))]


def send_then_read(addr: Address, data: bytes, *, wait: float = 2.0,
                   half_close: bool = False) -> Outcome:
    """Send ``data`` (optionally then shut our side), read until closed or ``wait`` s pass."""
    with connect(addr, timeout=wait) as sock:
        sent, reset = _send_all(sock, data, time.monotonic() + wait)
        if reset:
            answer, _, _ = _read_after_reset(sock)
            return Outcome(sent, answer, True, True)
        if half_close:
            with contextlib.suppress(OSError):  # the server may have closed already
                sock.shutdown(socket.SHUT_WR)
        answer, closed, was_reset = read_until_closed(sock, wait)
        return Outcome(sent, answer, closed, was_reset)


def random_bytes_conn(addr: Address, n: int, *, seed: int = 0, wait: float = 2.0,
                      half_close: bool = False) -> Outcome:
    """Connect, send ``n`` random bytes (from ``seed``), read the answer until close or ``wait``."""
    data = random.Random(seed).randbytes(n)
    return send_then_read(addr, data, wait=wait, half_close=half_close)


def truncated(addr: Address, prefix: bytes, *, wait: float = 2.0) -> Outcome:
    """Connect, send only ``prefix`` of a message and stay silent; read until close or ``wait``.

    ``closed`` False means the server was still waiting for the rest after ``wait`` seconds.
    """
    return send_then_read(addr, prefix, wait=wait)


def huge_line(addr: Address, size: int = 10 * MEGABYTE, *, byte: bytes = b"a",
              wait: float = 5.0) -> Outcome:
    """Connect and send ``size`` bytes with no newline as fast as the server takes them.

    Nothing is read while sending (a server that answers and closes part-way makes the send fail
    with a reset, which is tolerated); sending stops if the server takes nothing for ``wait``
    seconds. Then the answer is read until close or ``wait``.
    """
    with connect(addr, timeout=wait) as sock:
        sent = 0
        block = byte * _CHUNK
        while sent < size:
            chunk = min(_CHUNK, size - sent)
            count, reset = _send_all(sock, block[:chunk], time.monotonic() + wait)
            sent += count
            if reset:
                answer, _, _ = _read_after_reset(sock)
                return Outcome(sent, answer, True, True)
            if count < chunk:
                break  # the server took nothing for `wait` seconds
        answer, closed, was_reset = read_until_closed(sock, wait)
        return Outcome(sent, answer, closed, was_reset)


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> tuple[int, bool]:
    """Send as much of ``data`` as the peer takes before ``deadline``; return (sent, reset)."""
    view = memoryview(data)
    sent = 0
    while sent < len(data):
        left = deadline - time.monotonic()
        if left <= 0:
            return sent, False
        _, writable, _ = select.select([], [sock], [], left)
        if not writable:
            continue
        try:
            sent += sock.send(view[sent:sent + _CHUNK], socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:  # ECONNRESET or EPIPE: the server closed while we were sending
            return sent, True
    return sent, False


def _read_after_reset(sock: socket.socket) -> tuple[bytes, bool, bool]:
    """Read whatever is still buffered after a failed send (often nothing)."""
    try:
        return read_until_closed(sock, 0.5)
    except OSError:
        return b"", True, True


class HeldConnections:
    """Connections opened to one server and held open until :meth:`close` (or ``with`` exit)."""

    def __init__(self, addr: Address, count: int, timeout: float) -> None:
        self.sockets: list[socket.socket] = []
        self.failed = 0  # connections the server (or the kernel's backlog) did not accept
        for _ in range(count):
            try:
                self.sockets.append(connect(addr, timeout=timeout))
            except OSError:
                self.failed += 1
        self.answers = [b""] * len(self.sockets)  # what the server wrote on each, so far
        self._closed = [False] * len(self.sockets)

    def __enter__(self) -> HeldConnections:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def closed_by_server(self) -> int:
        """Return how many held connections the server has closed (EOF or reset) by now.

        Reads (without waiting) what the server wrote on each into :attr:`answers`.
        """
        for index, sock in enumerate(self.sockets):
            if not self._closed[index]:
                data, self._closed[index] = _read_ready(sock)
                self.answers[index] += data[:max(0, ANSWER_CAP - len(self.answers[index]))]
        return sum(self._closed)

    def close(self) -> None:
        """Close every held connection."""
        for sock in self.sockets:
            sock.close()


def many_connections(addr: Address, count: int = 300, *, timeout: float = 5.0
                     ) -> HeldConnections:
    """Open ``count`` connections to ``addr`` and hold them; use in ``with`` to close them.

    ``.sockets`` are the ones that connected, ``.failed`` counts the others,
    ``.closed_by_server()`` how many the server has since closed (and ``.answers`` what it
    wrote on each).
    """
    return HeldConnections(addr, count, timeout)


def _read_ready(sock: socket.socket) -> tuple[bytes, bool]:
    """Read what ``sock`` holds now without waiting; return (data, the peer has closed)."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)  # a socket with a timeout would wait for data before reading
    data = bytearray()
    try:
        while chunk := sock.recv(_CHUNK):
            data += chunk
    except (BlockingIOError, InterruptedError):
        return bytes(data), False
    except OSError:
        return bytes(data), True
    finally:
        sock.settimeout(timeout)
    return bytes(data), True


class SocksRefused(AssertionError):
    """The proxy did not speak SOCKS5 to us (no reply, a wrong version, no acceptable method)."""


def socks_connect(proxy_addr: Address, host: str, port: int, timeout: float = 10.0
                  ) -> tuple[int, socket.socket]:
    """Ask a SOCKS5 proxy (no auth) to CONNECT to ``host``:``port``.

    An IPv4 or IPv6 literal is sent as an address (ATYP 1 or 4), anything else as a name
    (ATYP 3, resolved by the proxy's side). Returns (the reply code, the socket): on 0 the socket
    carries the stream; otherwise the proxy should close it and the caller must. Raises
    SocksRefused if the proxy's answers are not SOCKS5, TimeoutError after ``timeout`` seconds.
    """
    sock = connect(proxy_addr, timeout=timeout)
    try:
        sock.sendall(b"\x05\x01\x00")
        chosen = _recv_exactly(sock, 2)
        if chosen != b"\x05\x00":
            raise SocksRefused(f"the proxy chose method {chosen.hex()}, not 0500")
        sock.sendall(b"\x05\x01\x00" + _socks_address(host) + struct.pack(">H", port))
        head = _recv_exactly(sock, 4)
        if head[0] != 5 or head[2] != 0:
            raise SocksRefused(f"the proxy's reply starts {head.hex()}")
        _recv_exactly(sock, _bound_length(sock, head[3]))
        return head[1], sock
    except BaseException:
        sock.close()
        raise


def _socks_address(host: str) -> bytes:
    """ATYP and DST.ADDR for ``host``."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("ascii")
        return b"\x03" + bytes((len(name),)) + name
    return (b"\x01" if address.version == 4 else b"\x04") + address.packed


def _bound_length(sock: socket.socket, address_type: int) -> int:
    """The length of BND.ADDR + BND.PORT in a reply with this ATYP."""
    if address_type == 1:
        return 4 + 2
    if address_type == 4:
        return 16 + 2
    if address_type == 3:
        return _recv_exactly(sock, 1)[0] + 2
    raise SocksRefused(f"the proxy's reply has address type {address_type}")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes; SocksRefused if the peer closes first."""
    data = bytearray()
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise SocksRefused(f"the proxy closed after {bytes(data).hex() or 'nothing'}")
        data += chunk
    return bytes(data)


def http_get(sock: socket.socket, host: str, path: str = "/", *, timeout: float = 30.0
             ) -> tuple[int, bytes]:
    """Send an HTTP/1.0 GET on a connected socket and return (status, body) read to EOF."""
    sock.settimeout(timeout)
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    response = bytearray()
    while chunk := sock.recv(_CHUNK):
        response += chunk
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


class _BytesHandler(http.server.BaseHTTPRequestHandler):
    """Serves the server's ``body`` for any GET."""

    server: _BytesServer

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read results, not access logs."""


class _BytesServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    body = b""
    accepted = 0

    def get_request(self) -> tuple[socket.socket, object]:
        request = super().get_request()
        self.accepted += 1
        return request


def serve_bytes(size: int, *, seed: int = 0) -> tuple[int, str, Callable[[], int]]:
    """Serve a generated body of ``size`` bytes over HTTP on 127.0.0.1 (any path, GET).

    Returns (port, the body's sha256 hex, stop); stop() shuts the server down and returns how
    many TCP connections it accepted.
    """
    server = _BytesServer(("127.0.0.1", 0), _BytesHandler)
    server.body = random.Random(seed).randbytes(size)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="serve_bytes", daemon=True)
    thread.start()

    def stop() -> int:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        return server.accepted

    return server.server_address[1], hashlib.sha256(server.body).hexdigest(), stop


class CountingListener:
    """A TCP port on 127.0.0.1 that accepts connections, counts them and closes them."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._count = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counting_listener", daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> int:
        """Return how many connections were made to the port so far."""
        return self._count

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._count += 1
            conn.close()

    def close(self) -> None:
        """Stop accepting and close the port."""
        self._stopping.set()
        self._thread.join(timeout=10)
        self._sock.close()


@contextlib.contextmanager
def counting_listener() -> Iterator[CountingListener]:
    """A port that counts connections: ``with counting_listener() as l: ... l.accepted``."""
    listener = CountingListener()
    try:
        yield listener
    finally:
        listener.close()
