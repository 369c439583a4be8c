"""The hostile-input helpers (tests/hostile.py), checked against small servers made here.

Each helper is run against a server that reacts (answers, closes, stops reading) and one that
does not, so a helper that always reported the same outcome would fail here.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import hostile
import pytest

from zmix.tunnel import socks5
from zmix.tunnel.policy import ExitPolicy


class LineHandler(socketserver.BaseRequestHandler):
    """Answers "PING" lines with "PONG"; closes (after an "ERR ..." line) on a line over
    ``limit`` bytes, a byte that is not printable ASCII, ``idle`` seconds of silence, or when
    more than ``max_connections`` are open. With ``deaf`` set it never reads at all."""

    server: LineServer

    def handle(self) -> None:
        server = self.server
        with server.lock:
            server.open_now += 1
            crowded = server.open_now > server.max_connections
        try:
            if crowded:
                self.request.sendall(b"ERR busy\n")
            elif server.deaf:
                server.stop.wait(30)
            else:
                self._serve_lines()
        except OSError:
            pass
        finally:
            with server.lock:
                server.open_now -= 1

    def _serve_lines(self) -> None:
        server = self.server
        self.request.settimeout(server.idle)
        buffer = b""
        while not server.stop.is_set():
            try:
                data = self.request.recv(4096)
            except TimeoutError:
                self.request.sendall(b"ERR idle\n")
                return
            if not data:
                return
            buffer += data
            if any(byte not in range(0x20, 0x7F) and byte != 0x0A for byte in buffer):
                self.request.sendall(b"ERR bad byte\n")
                return
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                self.request.sendall(b"PONG\n" if line == b"PING" else b"ERR unknown\n")
            if len(buffer) > server.limit:
                self.request.sendall(b"ERR too long\n")
                return


class LineServer(socketserver.ThreadingMixIn, socketserver.BaseServer):
    """Mixin holder: the real classes below add TCP or Unix sockets."""

    daemon_threads = True
    limit = 1024
    idle: float | None = None
    deaf = False
    max_connections = 10_000

    def setup_state(self) -> None:
        self.lock = threading.Lock()
        self.open_now = 0
        self.stop = threading.Event()


class TCPLineServer(LineServer, socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 512


class UnixLineServer(LineServer, socketserver.UnixStreamServer):
    request_queue_size = 512


@contextlib.contextmanager
def line_server(unix_path: Path | None = None, **settings: object
                ) -> Iterator[hostile.Address]:
    """Run a LineServer with ``settings`` on 127.0.0.1 (or a Unix path); yield its address."""
    server: LineServer
    if unix_path is None:
        server = TCPLineServer(("127.0.0.1", 0), LineHandler)
    else:
        server = UnixLineServer(str(unix_path), LineHandler)
    server.setup_state()
    for name, value in settings.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_address if unix_path is None else unix_path
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true; fail loudly after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_random_bytes_get_the_servers_error_and_close() -> None:
    with line_server() as addr:
        seen = hostile.random_bytes_conn(addr, 4096, seed=1)
    assert seen.closed and seen.answer == b"ERR bad byte\n"
    assert seen.sent == 4096


def test_random_bytes_to_a_server_that_does_not_read_see_no_answer_and_no_close() -> None:
    with line_server(deaf=True) as addr:
        seen = hostile.random_bytes_conn(addr, 4096, seed=1, wait=0.5)
    assert (seen.closed, seen.answer) == (False, b"")


def test_random_bytes_over_a_unix_socket(tmp_path: Path) -> None:
    with line_server(tmp_path / "line.sock") as addr:
        seen = hostile.random_bytes_conn(addr, 100, seed=2)
    assert seen.closed and seen.answer == b"ERR bad byte\n"


def test_random_bytes_are_the_same_for_the_same_seed() -> None:
    with line_server() as addr:
        first = hostile.random_bytes_conn(addr, 50, seed=3)
        again = hostile.random_bytes_conn(addr, 50, seed=3)
    assert first == again


def test_a_truncated_message_is_closed_by_a_server_with_an_idle_timeout() -> None:
    with line_server(idle=0.2) as addr:
        seen = hostile.truncated(addr, b"PI", wait=3.0)
    assert seen.closed and seen.answer == b"ERR idle\n"


def test_a_truncated_message_is_held_by_a_server_without_one() -> None:
    with line_server() as addr:
        seen = hostile.truncated(addr, b"PI", wait=0.5)
        complete = hostile.send_then_read(addr, b"PING\n", wait=0.3)
    assert (seen.closed, seen.answer) == (False, b"")
    assert complete.answer == b"PONG\n"  # positive control: the whole line is answered


def test_a_huge_line_is_refused_by_a_server_with_a_line_limit() -> None:
    with line_server(limit=1024) as addr:
        seen = hostile.huge_line(addr)
    assert seen.closed
    assert seen.sent < 10 * hostile.MEGABYTE
    assert seen.reset or seen.answer == b"ERR too long\n"


def test_a_huge_line_is_taken_whole_by_a_server_without_a_limit() -> None:
    with line_server(limit=1 << 30) as addr:
        seen = hostile.huge_line(addr, 2 * hostile.MEGABYTE, wait=1.0)
    assert (seen.sent, seen.closed) == (2 * hostile.MEGABYTE, False)


def test_a_huge_line_to_a_server_that_stops_reading_stops_sending() -> None:
    with line_server(deaf=True) as addr:
        seen = hostile.huge_line(addr, wait=0.3)
    assert 0 < seen.sent < 10 * hostile.MEGABYTE
    assert not seen.closed


def test_many_connections_are_held_by_a_server_that_accepts_them(tmp_path: Path) -> None:
    for where in (None, tmp_path / "many.sock"):
        with line_server(where) as addr, hostile.many_connections(addr, 300) as held:
            assert (len(held.sockets), held.failed) == (300, 0)
            assert hostile.send_then_read(addr, b"PING\n", wait=0.5).answer == b"PONG\n"
            assert held.closed_by_server() == 0
        assert all(sock.fileno() == -1 for sock in held.sockets)


def test_many_connections_see_a_server_close_the_ones_over_its_limit() -> None:
    with line_server(max_connections=50) as addr, hostile.many_connections(addr, 300) as held:
        eventually(lambda: held.closed_by_server() >= 250)
        assert held.closed_by_server() == 250
        assert sorted(set(held.answers)) == [b"", b"ERR busy\n"]
        assert held.answers.count(b"ERR busy\n") == 250


def test_many_connections_count_the_ones_nobody_accepts() -> None:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    address = port.getsockname()
    port.close()  # nothing listens there now
    with hostile.many_connections(address, 5, timeout=1.0) as held:
        assert (len(held.sockets), held.failed) == (0, 5)


class SocksHandler(socketserver.BaseRequestHandler):
    """A minimal SOCKS5 proxy built on zmix.tunnel.socks5 and ExitPolicy (no mixnet)."""

    server: SocksServer

    def handle(self) -> None:
        handshake = socks5.SocksHandshake()
        request = None
        self.request.settimeout(5)
        try:
            while request is None:
                data = self.request.recv(4096)
                if not data:
                    return
                written, request = handshake.receive(data)
                self.request.sendall(written)
        except socks5.SocksProtocolError as error:
            self.request.sendall(error.answer)
            return
        except OSError:  # the handshake timed out, or the client went away
            return
        self._connect(request, handshake.leftover)

    def _connect(self, request: socks5.ConnectRequest, leftover: bytes) -> None:
        policy = self.server.policy
        address = socket.getaddrinfo(request.host, request.port, socket.AF_INET)[0][4][0]
        if not (policy.allows_name(request.host, request.port)
                and policy.allows_address(address, request.port, requested=request.host)):
            self.request.sendall(socks5.reply(socks5.NOT_ALLOWED))
            return
        try:
            upstream = socket.create_connection((address, request.port), timeout=5)
        except ConnectionRefusedError:
            self.request.sendall(socks5.reply(socks5.CONNECTION_REFUSED))
            return
        with upstream:
            self.request.sendall(socks5.reply(socks5.REPLY_SUCCEEDED))
            upstream.sendall(leftover)
            pump = threading.Thread(target=relay, args=(self.request, upstream), daemon=True)
            pump.start()
            relay(upstream, self.request)
            pump.join(timeout=10)


def relay(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until EOF, then half-close ``sink``."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


class SocksServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512
    policy = ExitPolicy()


@contextlib.contextmanager
def socks_proxy(*patterns: str) -> Iterator[tuple[str, int]]:
    """Run the minimal proxy with an exit policy of ``patterns``; yield its address."""
    server = SocksServer(("127.0.0.1", 0), SocksHandler)
    server.policy = ExitPolicy.from_patterns(list(patterns))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_serve_bytes_serves_its_body_with_the_returned_sha256() -> None:
    port, digest, stop = hostile.serve_bytes(100_000, seed=5)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            status, body = hostile.http_get(sock, "127.0.0.1")
    finally:
        accepted = stop()
    assert (status, len(body)) == (200, 100_000)
    assert hashlib.sha256(body).hexdigest() == digest
    assert accepted == 1
    other_port, other_digest, other_stop = hostile.serve_bytes(100_000, seed=6)
    other_stop()
    assert other_digest != digest and other_port > 0


def test_socks_connect_fetches_a_body_through_a_proxy_by_name_and_by_address() -> None:
    port, digest, stop = hostile.serve_bytes(1 << 20)
    try:
        with socks_proxy(f"127.0.0.1:{port}", f"localhost:{port}") as proxy:
            for host in ("127.0.0.1", "localhost"):
                code, sock = hostile.socks_connect(proxy, host, port, timeout=5)
                with sock:
                    assert code == socks5.REPLY_SUCCEEDED
                    status, body = hostile.http_get(sock, host)
                assert status == 200
                assert hashlib.sha256(body).hexdigest() == digest
    finally:
        assert stop() == 2


def test_socks_connect_reports_not_allowed_and_nothing_is_connected() -> None:
    with hostile.counting_listener() as target, socks_proxy("example.com:80") as proxy:
        code, sock = hostile.socks_connect(proxy, "127.0.0.1", target.port, timeout=5)
        sock.close()
        assert code == socks5.NOT_ALLOWED
        assert target.accepted == 0
    with hostile.counting_listener() as target, socks_proxy(f"127.0.0.1:{target.port}") as proxy:
        code, sock = hostile.socks_connect(proxy, "127.0.0.1", target.port, timeout=5)
        sock.close()
        assert code == socks5.REPLY_SUCCEEDED  # positive control: allowed, and connected
        eventually(lambda: target.accepted == 1)


def test_socks_connect_reports_a_refused_connection() -> None:
    with hostile.counting_listener() as target:
        closed_port = target.port
    with socks_proxy(f"127.0.0.1:{closed_port}") as proxy:
        code, sock = hostile.socks_connect(proxy, "127.0.0.1", closed_port, timeout=5)
        sock.close()
    assert code == socks5.CONNECTION_REFUSED


def test_socks_connect_refuses_a_server_that_is_not_socks5() -> None:
    with line_server() as addr, pytest.raises(hostile.SocksRefused):
        hostile.socks_connect(addr, "example.com", 80, timeout=2)


def test_hostile_input_to_the_minimal_proxy_is_answered_as_the_docs_say() -> None:
    with socks_proxy("example.com:80") as proxy:
        noise = hostile.random_bytes_conn(proxy, 1000, seed=7)
        bind = hostile.send_then_read(proxy, b"\x05\x01\x00\x05\x02\x00\x01" + bytes(6))
        half = hostile.truncated(proxy, b"\x05\x01\x00\x05\x01", wait=0.5)
        with hostile.many_connections(proxy, 100) as held:
            assert held.failed == 0
        code, sock = hostile.socks_connect(proxy, "127.0.0.1", 9, timeout=5)
        sock.close()
    assert noise.closed and noise.answer in (b"", b"\x05\xff")
    assert bind.closed and bind.answer == b"\x05\x00" + socks5.reply(socks5.COMMAND_NOT_SUPPORTED)
    assert (half.closed, half.answer) == (False, b"\x05\x00")
    assert code == socks5.NOT_ALLOWED  # still serving after all of it


def test_half_close_lets_a_server_that_reads_to_eof_finish() -> None:
    with line_server() as addr:
        finished = hostile.send_then_read(addr, b"PING\n", half_close=True, wait=2.0)
        open_ended = hostile.send_then_read(addr, b"PING\n", wait=0.3)
    assert (finished.answer, finished.closed) == (b"PONG\n", True)
    assert (open_ended.answer, open_ended.closed) == (b"PONG\n", False)
