"""The web view's server (zmix/web): routes, headers, the Host guard, server-sent events, the
``web:`` topology key and zmix-up's --web, all against a fake source (no network running)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from zmix.bench.common import free_ports
from zmix.errors import ConfigError, LocalMisuse
from zmix.observe import stratified_links
from zmix.topology import Topology, WebParams
from zmix.topology_yaml import parse_topology
from zmix.web.pages import (
    host_allowed,
    network_graph,
    parse_web_address,
    split_host,
    sse_event,
    url_of,
)
from zmix.web.server import ASSETS, SECURITY_HEADERS, WebServer, read_assets

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "zmix" / "web" / "static"


def topology_of(**extra: Any) -> Topology:
    """A two-layer network with two providers and three clients, parsed from a mapping."""
    data = {"network": "webtest", "providers": ["provider-1", "provider-2"],
            "layers": [["mix-a1", "mix-a2"], ["mix-b1"]], "authorities": ["authority-1"],
            "clients": [{"name": "alice", "provider": "provider-1"},
                        {"name": "carol", "provider": "provider-1"},
                        {"name": "bob", "provider": "provider-2"}], **extra}
    return parse_topology(data, "web.yaml")


def fake_report(topology: Topology, tick: int, down: tuple[str, ...] = ()) -> dict[str, Any]:
    """A report of the contract's shape whose figures move with ``tick``."""
    nodes = [{"name": n.name, "role": n.role.value, "layer": n.layer,
              "address": f"{n.host}:{n.port}", "up": n.name not in down,
              "source": "control", "error": None, "age": float(tick),
              "packets_in_per_s": float(tick), "packets_out_per_s": float(tick), "drops": {},
              "dropped_total": 0, "queue": tick, "workers": 1, "loops_sent": tick,
              "loops_returned": tick, "loops_lost": 0, "mailbox_items": None,
              "clients_online": None, "loop_loss": 0.0, "loop_samples": tick,
              "stats": {"received": tick}} for n in topology.nodes()]
    links = [{"from": a, "to": b, "packets_per_s": float(tick), "loop_loss": None,
              "loop_samples": 0} for a, b in stratified_links(topology)]
    return {"network": topology.network, "time": 1e9 + tick, "interval": 1.0, "window": 120,
            "nodes": nodes, "links": links, "loops": {"returned": tick, "lost": 0},
            "down": list(down)}


class Counting:
    """A source whose n-th call returns the fake report of tick n."""

    def __init__(self, topology: Topology, payload: int = 0) -> None:
        self.topology, self.calls, self.payload = topology, 0, payload

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        report = fake_report(self.topology, self.calls)
        if self.payload:
            report["padding"] = "x" * self.payload
        return report


@pytest.fixture
def serve() -> Iterator[Callable[..., WebServer]]:
    """Start WebServers on a free loopback port; close them all at the end."""
    servers: list[WebServer] = []

    def start(source: Callable[[], dict[str, Any]] | None = None, **options: Any) -> WebServer:
        topology = topology_of()
        web = WebServer("127.0.0.1", 0, network_graph(topology), source or Counting(topology),
                        **{"interval": 0.05, **options})
        web.start()
        servers.append(web)
        return web

    yield start
    for web in servers:
        web.close()


def request(web: WebServer, method: str, path: str,
            host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Return (status, headers, body) of one request, with ``host`` as the Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{web.port}")
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Viewer:
    """A raw /events client on a socket: reads and splits the stream into its blocks."""

    def __init__(self, web: WebServer, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", web.port))
        self.sock.settimeout(5)
        self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{web.port}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.buffer = b""

    def blocks(self, count: int) -> list[str]:
        """Return the next ``count`` blocks (events, comments, the retry hint) after the
        response head."""
        while self.buffer.count(b"\n\n") < count + 1 or b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"stream ended: {self.buffer[-200:]!r}")
            self.buffer += data
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        parts = rest.split(b"\n\n")
        self.buffer = head + b"\r\n\r\n" + b"\n\n".join(parts[count:])
        return [p.decode() for p in parts[:count]]

    def head(self) -> str:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        return self.buffer.partition(b"\r\n\r\n")[0].decode()

    def close(self) -> None:
        self.sock.close()


def event_report(block: str) -> dict[str, Any]:
    lines = block.split("\n")
    assert lines[0] == "event: status" and len(lines) == 2, block[:200]
    assert lines[1].startswith("data: ")
    report: dict[str, Any] = json.loads(lines[1][len("data: "):])
    return report


# ---------------------------------------------------------------------------- the pure parts


def test_the_links_are_every_link_of_the_stratified_topology() -> None:
    links = stratified_links(topology_of())
    providers, first, last = ("provider-1", "provider-2"), ("mix-a1", "mix-a2"), ("mix-b1",)
    expected = ([(p, m) for p in providers for m in first] + [(m, "mix-b1") for m in first]
                + [(m, p) for m in last for p in providers])
    assert links == expected


def test_the_network_graph_names_layers_providers_nodes_links_and_clients() -> None:
    graph = network_graph(topology_of())
    assert graph["network"] == "webtest"
    assert graph["providers"] == ["provider-1", "provider-2"]
    assert graph["layers"] == [["mix-a1", "mix-a2"], ["mix-b1"]]
    assert [n["name"] for n in graph["nodes"]] == ["provider-1", "provider-2", "mix-a1",
                                                   "mix-a2", "mix-b1"]
    assert graph["nodes"][2] == {"name": "mix-a1", "role": "mixnode", "layer": 0,
                                 "address": "127.0.0.1:31002"}
    assert len(graph["links"]) == 2 * 2 + 2 + 2
    assert graph["clients"] == {"provider-1": ["alice", "carol"], "provider-2": ["bob"]}


def test_an_event_is_one_named_block_with_one_data_line_of_json() -> None:
    data = {"text": "two\nlines", "n": 1}
    framed = sse_event("status", data).decode()
    assert framed.endswith("\n\n") and framed.count("\n") == 3
    name, line = framed[:-2].split("\n")
    assert name == "event: status"
    assert json.loads(line.removeprefix("data: ")) == data


@pytest.mark.parametrize(("header", "bound", "allowed"), [
    ("127.0.0.1:8470", "127.0.0.1", True),
    ("127.0.0.1", "127.0.0.1", True),
    ("localhost:8470", "127.0.0.1", True),
    ("LOCALHOST:9000", "127.0.0.1", True),  # an SSH forward may use another local port
    ("[::1]:8470", "::1", True),
    ("localhost:8470", "::1", True),
    ("127.0.0.2:8470", "localhost", True),
    ("10.1.2.3:8470", "0.0.0.0", True),
    ("localhost:8470", "0.0.0.0", True),
    ("monitor.example:8470", "monitor.example", True),
    ("evil.example:8470", "127.0.0.1", False),  # a DNS-rebinding page's own name
    ("127.0.0.1.evil.example", "127.0.0.1", False),
    ("10.1.2.3:8470", "127.0.0.1", False),
    ("localhost:8470", "10.1.2.3", False),
    ("evil.example", "0.0.0.0", False),
    ("127.0.0.1:notaport", "127.0.0.1", False),
    ("[::1", "::1", False),
    ("", "127.0.0.1", False),
    (None, "127.0.0.1", False),
])
def test_the_host_header_must_name_the_bound_address(header: str | None, bound: str,
                                                      allowed: bool) -> None:
    assert host_allowed(header, bound) is allowed


@given(st.text(max_size=80))
def test_any_host_header_splits_to_a_host_or_none(header: str) -> None:
    result = split_host(header)
    assert result is None or isinstance(result, str)
    assert isinstance(host_allowed(header, "127.0.0.1"), bool)


@pytest.mark.parametrize(("text", "expected"), [
    ("8470", ("127.0.0.1", 8470)),
    ("0.0.0.0:8470", ("0.0.0.0", 8470)),
    ("localhost:1", ("localhost", 1)),
    ("[::1]:65535", ("::1", 65535)),
])
def test_a_web_address_is_port_or_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_web_address(text) == expected


@pytest.mark.parametrize("text", ["", "0", "65536", "host:", ":8470", "::1:8470", "[::1]",
                                  "[]:80", "a b:80", "port", "-1", "8470x"])
def test_a_bad_web_address_is_refused(text: str) -> None:
    with pytest.raises(LocalMisuse):
        parse_web_address(text)


@given(st.text(max_size=40))
def test_any_web_address_text_gives_an_address_or_local_misuse(text: str) -> None:
    try:
        host, port = parse_web_address(text)
    except LocalMisuse:
        return
    assert 1 <= port <= 65535 and host


def test_the_url_shows_a_wildcard_bind_as_loopback_and_brackets_ipv6() -> None:
    assert url_of("127.0.0.1", 8470) == "http://127.0.0.1:8470/"
    assert url_of("0.0.0.0", 8470) == "http://127.0.0.1:8470/"
    assert url_of("::", 8470) == "http://[::1]:8470/"
    assert url_of("::1", 8470) == "http://[::1]:8470/"


# ---------------------------------------------------------------------------- the assets


def test_the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() -> None:
    html = (STATIC / "index.html").read_text()
    every = "".join((STATIC / name).read_text() for name, _ in ASSETS.values())
    assert "https://" not in every and "//cdn" not in every and "@import" not in every
    # The only http:// is the SVG namespace name, which is never fetched.
    assert every.replace("http://www.w3.org/2000/svg", "").count("http://") == 0
    scripts = html.split("<script")[1:]
    assert scripts and all(s.split(">")[0].strip().startswith('src="/') for s in scripts)
    assert " style=" not in html and " onload=" not in html and " onclick=" not in html


def test_the_installed_package_holds_every_asset() -> None:
    assets = read_assets()
    assert set(assets) == set(ASSETS)
    assert all(body for body, _ in assets.values())
    assert assets["/app.js"][0] == (STATIC / "app.js").read_bytes()


# ---------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(("path", "kind"), [
    ("/", "text/html; charset=utf-8"),
    ("/app.js", "text/javascript; charset=utf-8"),
    ("/style.css", "text/css; charset=utf-8"),
    ("/favicon.svg", "image/svg+xml"),
    ("/api/network", "application/json"),
    ("/api/status", "application/json"),
    ("/api/status?since=3", "application/json"),
])
def test_every_route_answers_with_its_type_and_the_security_headers(
        serve: Callable[..., WebServer], path: str, kind: str) -> None:
    web = serve()
    wait_for(lambda: web.latest.json is not None, "the first report")
    status, headers, body = request(web, "GET", path)
    assert status == 200 and headers["Content-Type"] == kind and body
    assert int(headers["Content-Length"]) == len(body)
    for name, value in SECURITY_HEADERS:
        assert headers[name] == value
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert not any(h.lower().startswith("access-control-") for h in headers)
    head_status, head_headers, head_body = request(web, "HEAD", path)
    assert head_status == 200 and head_body == b""
    assert head_headers["Content-Length"] == headers["Content-Length"]


def test_the_api_answers_the_graph_and_the_latest_report(serve: Callable[..., WebServer]) -> None:
    source = Counting(topology_of())
    web = serve(source)
    wait_for(lambda: source.calls >= 3, "three refreshes")
    _, _, network = request(web, "GET", "/api/network")
    assert json.loads(network) == network_graph(topology_of())
    _, _, status = request(web, "GET", "/api/status")
    report = json.loads(status)
    assert report["network"] == "webtest" and report["loops"]["returned"] >= 3


@pytest.mark.parametrize("path", ["/nope", "/static/app.js", "/index.html", "/../setup.cfg",
                                  "/api", "/api/status/", "/app.js/", "/events/x",
                                  "http://127.0.0.1/app.js", "/app.js#x"])
def test_a_path_that_is_not_a_route_is_not_found(serve: Callable[..., WebServer],
                                                 path: str) -> None:
    web = serve()
    assert request(web, "GET", "/app.js")[0] == 200  # the positive control
    status, headers, _ = request(web, "GET", path)
    assert status == 404
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                    "CONNECT", "PROPFIND", "FOO"])
def test_every_method_but_get_and_head_is_not_allowed(serve: Callable[..., WebServer],
                                                      method: str) -> None:
    web = serve()
    status, headers, _ = request(web, method, "/api/status")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert "Access-Control-Allow-Origin" not in headers


def test_a_request_for_another_host_name_is_refused(serve: Callable[..., WebServer]) -> None:
    web = serve()
    wait_for(lambda: web.latest.json is not None, "the first report")
    assert request(web, "GET", "/api/status", f"localhost:{web.port}")[0] == 200
    for path in ("/", "/api/status", "/api/network", "/events", "/nope"):
        status, _, body = request(web, "GET", path, f"rebind.evil.example:{web.port}")
        assert status == 403 and b"rebinding" in body


def test_a_request_without_a_host_header_is_refused(serve: Callable[..., WebServer]) -> None:
    web = serve()
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
        sock.sendall(b"GET /api/network HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 403 ")
    assert request(web, "GET", "/api/network")[0] == 200  # the positive control


def test_a_request_with_two_host_headers_is_refused(serve: Callable[..., WebServer]) -> None:
    web = serve()
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
        sock.sendall(f"GET /api/network HTTP/1.0\r\nHost: 127.0.0.1:{web.port}\r\n"
                     "Host: rebind.evil.example\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 403 ")


def test_the_status_is_unavailable_until_the_first_report(
        serve: Callable[..., WebServer]) -> None:
    release = threading.Event()
    topology = topology_of()

    def slow() -> dict[str, Any]:
        release.wait(5)
        return fake_report(topology, 1)

    web = serve(slow)
    status, headers, _ = request(web, "GET", "/api/status")
    assert status == 503 and headers["Retry-After"] == "1"
    release.set()
    wait_for(lambda: request(web, "GET", "/api/status")[0] == 200, "the first report")


def test_a_failing_source_does_not_stop_the_poller(serve: Callable[..., WebServer]) -> None:
    topology = topology_of()
    calls: list[int] = []

    def flaky() -> dict[str, Any]:
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("a node answered nonsense")
        return fake_report(topology, len(calls))

    web = serve(flaky)
    wait_for(lambda: len(calls) >= 6, "six refreshes")
    assert web.latest.version >= 2


def test_a_port_in_use_is_refused_when_the_server_is_made() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            WebServer("127.0.0.1", taken.getsockname()[1], {}, lambda: {})
    port = free_ports(1)[0]
    WebServer("127.0.0.1", port, {}, lambda: {}).close()  # the positive control


# ---------------------------------------------------------------------------- events


def test_events_start_with_a_retry_hint_then_stream_each_refresh(
        serve: Callable[..., WebServer]) -> None:
    web = serve()
    viewer = Viewer(web)
    try:
        head = viewer.head()
        assert head.startswith("HTTP/1.0 200") and "Content-Type: text/event-stream" in head
        assert "Content-Security-Policy:" in head and "Content-Length" not in head
        retry, *events = viewer.blocks(4)
        assert retry == "retry: 2000"
        ticks = [event_report(e)["loops"]["returned"] for e in events]
        assert ticks == sorted(ticks) and len(set(ticks)) == 3
    finally:
        viewer.close()


def test_head_on_events_answers_the_stream_headers_only_and_frees_its_place(
        serve: Callable[..., WebServer]) -> None:
    web = serve(max_viewers=1)
    for _ in range(3):  # each HEAD gives its one place back
        status, headers, body = request(web, "HEAD", "/events")
        assert status == 200 and body == b""
        assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    viewer = Viewer(web)
    try:
        viewer.blocks(2)
        assert request(web, "HEAD", "/events")[0] == 503  # the positive control: it is taken
    finally:
        viewer.close()


def test_a_quiet_stream_sends_keep_alive_comments(serve: Callable[..., WebServer]) -> None:
    web = serve(interval=60.0, keepalive=0.1)
    viewer = Viewer(web)
    try:
        _, first, quiet, again = viewer.blocks(4)
        assert event_report(first)["network"] == "webtest"
        assert quiet == ": keep-alive" and again == ": keep-alive"
    finally:
        viewer.close()


def test_several_viewers_each_get_every_refresh(serve: Callable[..., WebServer]) -> None:
    web = serve()
    viewers = [Viewer(web) for _ in range(4)]
    try:
        for viewer in viewers:
            events = [event_report(b) for b in viewer.blocks(4)[1:]]
            assert all(e["network"] == "webtest" for e in events)
    finally:
        for viewer in viewers:
            viewer.close()


def test_a_viewer_that_does_not_read_blocks_neither_the_poller_nor_other_viewers(
        serve: Callable[..., WebServer]) -> None:
    source = Counting(topology_of(), payload=256 * 1024)  # reports larger than socket buffers
    web = serve(source, write_timeout=60.0)
    stuck = Viewer(web, receive_buffer=4096)
    try:
        stuck.head()
        calls = source.calls
        wait_for(lambda: source.calls >= calls + 20, "20 refreshes while one viewer is stuck")
        reader = Viewer(web)
        try:
            seen = [event_report(b)["loops"]["returned"] for b in reader.blocks(6)[1:]]
            assert len(set(seen)) == 5
        finally:
            reader.close()
    finally:
        stuck.close()


def test_a_viewer_that_stops_reading_is_dropped_and_frees_its_place(
        serve: Callable[..., WebServer]) -> None:
    source = Counting(topology_of(), payload=256 * 1024)
    web = serve(source, write_timeout=0.5, max_viewers=1)
    stuck = Viewer(web, receive_buffer=4096)
    try:
        stuck.head()
        assert request(web, "GET", "/events")[0] == 503  # the one place is taken
        wait_for(lambda: web.viewers.acquire(blocking=False), "the stuck viewer dropped")
        web.viewers.release()
        reader = Viewer(web)
        try:
            assert event_report(reader.blocks(2)[1])["network"] == "webtest"
        finally:
            reader.close()
    finally:
        stuck.close()


def test_closing_the_server_ends_every_stream(serve: Callable[..., WebServer]) -> None:
    web = serve()
    viewer = Viewer(web)
    try:
        viewer.blocks(2)
        web.close()
        deadline = time.monotonic() + 5
        while viewer.sock.recv(65536):
            assert time.monotonic() < deadline, "the stream did not end"
    finally:
        viewer.close()


# ---------------------------------------------------------------------------- configuration


def test_the_web_key_gives_the_address_with_loopback_by_default() -> None:
    assert topology_of().web is None
    assert topology_of(web={"port": 8470}).web == WebParams(8470, "127.0.0.1")
    assert topology_of(web={"port": 8470, "host": "0.0.0.0"},
                       defaults={"host": "10.0.0.1"}).web == WebParams(8470, "0.0.0.0")
    assert topology_of(defaults={"host": "10.0.0.1"}, web={"port": 1}).web == WebParams(1)


@pytest.mark.parametrize(("web", "key", "problem"), [
    ({}, "web.port", "is required"),
    ({"port": 0}, "web.port", "must be an integer from 1 to 65535, got 0"),
    ({"port": "8470"}, "web.port", "must be an integer from 1 to 65535"),
    ({"port": 8470, "host": ""}, "web.host", "must be a host name or address"),
    ({"port": 8470, "bind": "x"}, "web.bind", "unknown key (known here: host, port)"),
    (8470, "web", "must be a mapping, got an integer"),
    ({"port": 31000}, "web.port",
     "duplicate address '127.0.0.1:31000' (also node provider-1's port)"),
])
def test_a_bad_web_key_names_file_key_and_problem(web: object, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        topology_of(web=web)
    assert caught.value.path == "web.yaml" and caught.value.key == key
    assert problem in caught.value.problem


def zmix_up(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmix.cli.up", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def small_network(*ports: int) -> str:
    """A one-mixnode network on the ports given (free ones: consecutive ports from a free
    base_port may be another process's, and then the node's check fails before the web's)."""
    provider, mix, authority = ports
    return yaml.safe_dump({"network": "webtest",
                           "providers": [{"name": "provider-1", "port": provider}],
                           "layers": [[{"name": "mix-a1", "port": mix}]],
                           "authorities": [{"name": "authority-1", "port": authority}],
                           "defaults": {"workers": 1}})


def test_zmix_up_refuses_a_web_port_in_use_before_starting_anything(tmp_path: Path) -> None:
    data = small_network(*free_ports(3))
    (tmp_path / "t.yaml").write_text(data)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = zmix_up(str(tmp_path / "t.yaml"), "--state", str(tmp_path / "s"), "--web",
                       str(port))
    assert done.returncode == 2
    assert done.stderr == (f"error: the web view cannot listen on http://127.0.0.1:{port}/: "
                           "address already in use\n")
    assert "state in" not in done.stdout and not (tmp_path / "s" / "nodes").exists()


def test_zmix_up_refuses_a_web_address_a_node_listens_on(tmp_path: Path) -> None:
    ports = free_ports(3)
    (tmp_path / "t.yaml").write_text(small_network(*ports))
    done = zmix_up(str(tmp_path / "t.yaml"), "--state", str(tmp_path / "s"), "--web",
                   f"127.0.0.1:{ports[1]}")
    assert done.returncode == 2
    assert done.stderr == (f"error: the web view cannot listen on http://127.0.0.1:{ports[1]}/: "
                           "node mix-a1 listens there\n")


@pytest.mark.parametrize("text", ["0", "x:y", "70000"])
def test_zmix_up_refuses_a_malformed_web_address(text: str) -> None:
    done = zmix_up("topologies/local.yaml", "--web", text)
    assert done.returncode == 2
    assert "argument --web: " in done.stderr and repr(text) in done.stderr


def test_zmix_up_export_monitoring_takes_no_web(tmp_path: Path) -> None:
    done = zmix_up("topologies/local.yaml", "--export-monitoring", str(tmp_path / "m"),
                   "--web", "8470")
    assert done.returncode == 2
    assert done.stderr == ("error: --export-monitoring writes files and starts nothing: it "
                           "takes no --web\n")
    assert not (tmp_path / "m").exists()
