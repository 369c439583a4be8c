"""SOCKS5 through a real local mixnet: zmix-socks (alice), the mixnet, zmix-exit, 127.0.0.1."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemonnet import DaemonProcess, LocalNet, Raw, local_net, start_daemon
from hostile import (
    CountingListener,
    huge_line,
    many_connections,
    random_bytes_conn,
    serve_bytes,
    socks_connect,
    truncated,
)

from zmix.bench.common import free_ports
from zmix.tunnel import socks5

MIB = 1024 * 1024


@dataclass
class Tunnel:
    net: LocalNet
    proxy: DaemonProcess
    exit: DaemonProcess
    socks: tuple[str, int]
    http_port: int
    body_sha256: str
    refused_port: int  # allowed, and nothing listens there
    forbidden: CountingListener  # listens, and is not allowed
    echo_port: int  # allowed: answers the sha256 of what it read up to the client's FIN


def _echo_sha256_server() -> tuple[socket.socket, int]:
    """A TCP server on 127.0.0.1 that reads until the client's FIN, answers the sha256 hex of
    what it read, and closes (a test of upload and half-close)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                digest = hashlib.sha256()
                while chunk := conn.recv(65536):
                    digest.update(chunk)
                conn.sendall(digest.hexdigest().encode())

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def response_start(sock: socket.socket, size: int = 64 * 1024) -> bytes:
    """GET / on a tunnelled socket; return the response's first ``size`` bytes (headers
    included): enough to know the destination answers, at a fraction of the body's time."""
    sock.settimeout(120)
    sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while len(data) < size:
        chunk = sock.recv(65536)
        assert chunk, f"the response ended after {len(data)} bytes"
        data += chunk
    return data


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnel]:
    http_port, sha, stop_http = serve_bytes(MIB)
    echo, echo_port = _echo_sha256_server()
    forbidden = CountingListener()
    [refused_port] = free_ports(1)
    try:
        with local_net(tmp_path_factory.mktemp("tunnel")) as net:
            exit_ = start_daemon(net, "exit", "--allow", f"127.0.0.1:{http_port}",
                                 "--allow", f"127.0.0.1:{refused_port}",
                                 "--allow", f"127.0.0.1:{echo_port}", command="exit")
            try:
                proxy = start_daemon(net, "alice", "--exit", "exit", "--listen", "127.0.0.1:0",
                                     command="socks")
                try:
                    host, port = proxy.field("socks").rsplit(":", 1)
                    yield Tunnel(net, proxy, exit_, (host, int(port)), http_port, sha,
                                 refused_port, forbidden, echo_port)
                finally:
                    assert proxy.stop() == 0, "".join(proxy.log)
            finally:
                assert exit_.stop() == 0, "".join(exit_.log)
    finally:
        forbidden.close()
        echo.close()
        stop_http()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/run "
                                                         "installs it)")
def test_curl_fetches_a_mebibyte_through_the_mixnet_intact(tunnel: Tunnel, tmp_path: Path
                                                           ) -> None:
    out = tmp_path / "body"
    host, port = tunnel.socks
    started = time.monotonic()
    done = subprocess.run(["curl", "--silent", "--show-error", "--fail", "--max-time", "180",
                           "--socks5-hostname", f"{host}:{port}", "-o", str(out),
                           f"http://127.0.0.1:{tunnel.http_port}/big"],
                          capture_output=True, text=True, timeout=200, check=False)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size == MIB
    assert hashlib.sha256(out.read_bytes()).hexdigest() == tunnel.body_sha256
    assert time.monotonic() - started < 180


def test_a_destination_off_the_allowlist_is_refused_and_nothing_connects(tunnel: Tunnel
                                                                         ) -> None:
    code, sock = socks_connect(tunnel.socks, "127.0.0.1", tunnel.forbidden.port, timeout=60)
    sock.close()
    assert code == socks5.NOT_ALLOWED
    code, sock = socks_connect(tunnel.socks, "localhost", tunnel.forbidden.port, timeout=60)
    sock.close()
    assert code == socks5.NOT_ALLOWED  # a name is no way around it
    assert tunnel.forbidden.accepted == 0
    code, sock = socks_connect(tunnel.socks, "127.0.0.1", tunnel.http_port, timeout=60)
    with sock:  # positive control: an allowed destination answers
        assert code == socks5.REPLY_SUCCEEDED
        assert response_start(sock).startswith(b"HTTP/1.0 200")


def test_a_refused_destination_gets_connection_refused(tunnel: Tunnel) -> None:
    code, sock = socks_connect(tunnel.socks, "127.0.0.1", tunnel.refused_port, timeout=60)
    sock.close()
    assert code == socks5.CONNECTION_REFUSED


def test_an_upload_and_its_half_close_cross_the_mixnet(tunnel: Tunnel) -> None:
    data = bytes(range(256)) * 800  # 200 KiB
    code, sock = socks_connect(tunnel.socks, "127.0.0.1", tunnel.echo_port, timeout=60)
    with sock:
        assert code == socks5.REPLY_SUCCEEDED
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # our FIN travels too: the server answers only then
        sock.settimeout(120)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.decode() == hashlib.sha256(data).hexdigest()


def test_hostile_socks_input_leaves_the_proxy_serving(tunnel: Tunnel) -> None:
    for seed in range(10):
        random_bytes_conn(tunnel.socks, 2048, seed=seed)
    truncated(tunnel.socks, b"\x05\x01\x00\x05\x01\x00\x03\x20short")
    truncated(tunnel.socks, b"\x05\x02")
    huge_line(tunnel.socks)
    with many_connections(tunnel.socks, count=300) as held:
        assert held.failed == 0 and held.closed_by_server() <= 300
    deadline = time.monotonic() + 30
    while True:  # the proxy notices the held connections close (300 is over its 256)
        with Raw(tunnel.proxy.field("api")) as api:
            if api.ok("status")["statistics"]["proxy_connections"] == 0:
                break
        assert time.monotonic() < deadline, "the proxy still holds the closed connections"
        time.sleep(0.1)
    code, sock = socks_connect(tunnel.socks, "127.0.0.1", tunnel.http_port, timeout=60)
    with sock:
        assert code == socks5.REPLY_SUCCEEDED
        assert response_start(sock).startswith(b"HTTP/1.0 200")
    with Raw(tunnel.proxy.field("api")) as api:
        stats = api.ok("status")["statistics"]
    assert stats["proxy_socks_errors"] >= 10 and stats["proxy_not_socks5"] >= 1, stats
    assert stats["proxy_socks_accepted"] + stats["proxy_socks_refused"] >= 300
