"""The web view's HTTP server: a read-only ThreadingHTTPServer on fixed routes, fed by a poller
thread (docs/monitoring.md, "The web view").

A *source* is any callable that returns the network's latest report (the object of
``zmix-status --json``); the poller calls it every ``interval`` seconds and publishes the result.
Each viewer of ``/events`` has its own thread and only ever waits for the newest report, so a slow
viewer falls behind alone: it skips reports instead of queueing them, the poller never writes to a
socket, and a viewer that stops reading is dropped after ``WRITE_TIMEOUT``.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zmix.web.pages import host_allowed, sse_event, sse_keepalive, sse_preamble, url_of

if TYPE_CHECKING:
    from zmix.topology import Topology

LOG = logging.getLogger("zmix.web")

Source = Callable[[], dict[str, Any]]
WRITE_TIMEOUT = 10.0  # seconds a viewer may take to read a request's worth or accept a write
KEEPALIVE = 15.0  # seconds without a report after which /events sends a comment
MAX_VIEWERS = 32  # concurrent /events streams; more get 503 (each holds a thread)

SECURITY_HEADERS = (
    # Everything comes from this server; no inline script or style, no frames, no forms.
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; "
     "img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
     "frame-ancestors 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
ASSETS = {  # route -> (file in static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
JSON = "application/json"


class Latest:
    """The newest report, encoded once for every reader: as JSON and as a ``status`` event."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.version = 0
        self.json: bytes | None = None
        self.event: bytes | None = None
        self.closed = False

    def publish(self, report: dict[str, Any]) -> None:
        """Make ``report`` the latest and wake every viewer. Raises ValueError (NaN or another
        value JSON cannot carry) without changing anything."""
        encoded = json.dumps(report, separators=(",", ":"), allow_nan=False).encode()
        event = sse_event("status", report)
        with self._changed:
            self.version += 1
            self.json, self.event = encoded, event
            self._changed.notify_all()

    def close(self) -> None:
        """Wake every viewer for good: the server stops."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait_newer(self, seen: int, timeout: float) -> tuple[int, bytes] | None:
        """Return ``(version, event)`` once a report newer than version ``seen`` is there, or
        None after ``timeout`` seconds or once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self.closed or self.version > seen, timeout)
            if self.closed or self.version <= seen or self.event is None:
                return None
            return self.version, self.event


def read_assets(directory: Path | None = None) -> dict[str, tuple[bytes, str]]:
    """Return every asset route's ``(body, content type)``, read once from ``directory`` or the
    package's ``static/`` (package data, so an installed zmix has them)."""
    if directory is not None:
        return {route: ((directory / name).read_bytes(), kind)
                for route, (name, kind) in ASSETS.items()}
    static = resources.files("zmix.web") / "static"
    return {route: ((static / name).read_bytes(), kind) for route, (name, kind) in ASSETS.items()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, web: WebServer) -> None:
        self.web = web
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn): slow offline, and unused.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class WebServer:
    """The web view of one network: bound when made, serving once :meth:`start` is called.

    Raises OSError if ``host:port`` cannot be bound (port 0 picks a free one: see ``port``).
    """

    def __init__(self, host: str, port: int, network: dict[str, Any], source: Source, *,
                 interval: float = 1.0, keepalive: float = KEEPALIVE,
                 max_viewers: int = MAX_VIEWERS, write_timeout: float = WRITE_TIMEOUT,
                 assets: Path | None = None) -> None:
        self.host, self.write_timeout = host, write_timeout
        self.network_json = json.dumps(network, separators=(",", ":")).encode()
        self.source, self.interval, self.keepalive = source, interval, keepalive
        self.assets = read_assets(assets)
        self.latest = Latest()
        self.viewers = threading.BoundedSemaphore(max_viewers)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http = _Server(host, port, self)
        self.port: int = self._http.server_address[1]

    @property
    def url(self) -> str:
        """The address to open in a browser."""
        return url_of(self.host, self.port)

    def start(self) -> None:
        """Start the poller and the HTTP server, each in a daemon thread."""
        for target, name in ((self._poll, "zmix-web-poller"),
                             (self._http.serve_forever, "zmix-web")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop polling and serving, end every /events stream, release the port."""
        self._stop.set()
        self.latest.close()
        if self._threads:
            self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=5.0)

    def _poll(self) -> None:
        """Publish the source's report every ``interval`` seconds until closed. A source that
        fails is logged and tried again at the next tick: the page then shows "stale"."""
        while not self._stop.is_set():
            try:
                self.latest.publish(self.source())
            except Exception:  # the poller outlives any one bad refresh
                LOG.exception("the web view's status refresh failed")
            self._stop.wait(self.interval)


class _Handler(BaseHTTPRequestHandler):
    """One request: GET or HEAD on a fixed route; every other method is 405."""

    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "zmix-web"

    def setup(self) -> None:
        # A viewer that sends its request or takes its bytes slower than this is dropped.
        super().setup()
        self.connection.settimeout(self.server.web.write_timeout)

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler answers 501 to a method it has no do_METHOD for; a read-only
        # server answers 405 to every method but GET and HEAD instead.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)

    def _not_allowed(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: only GET and HEAD\n",
                    "text/plain; charset=utf-8", body=self.command != "HEAD",
                    extra=(("Allow", "GET, HEAD"),))

    def _serve(self, body: bool) -> None:
        web = self.server.web
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or not host_allowed(hosts[0], web.host):
            self._reply(HTTPStatus.FORBIDDEN, b"this Host is not served (DNS rebinding guard)\n",
                        "text/plain; charset=utf-8", body)
            return
        path = self.path.partition("?")[0]  # the query, if any, is ignored
        if path in web.assets:
            content, kind = web.assets[path]
            self._reply(HTTPStatus.OK, content, kind, body)
        elif path == "/api/network":
            self._reply(HTTPStatus.OK, web.network_json, JSON, body)
        elif path == "/api/status":
            latest = web.latest.json
            if latest is None:
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b'{"error":"no report yet"}', JSON,
                            body, extra=(("Retry-After", "1"),))
            else:
                self._reply(HTTPStatus.OK, latest, JSON, body)
        elif path == "/events":
            self._events(body)
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", body)

    def _reply(self, status: HTTPStatus, content: bytes, kind: str, body: bool,
               extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self._headers(kind, extra)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def _headers(self, kind: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_header("Content-Type", kind)
        for name, value in (*SECURITY_HEADERS, *extra):
            self.send_header(name, value)

    def _events(self, body: bool) -> None:
        """Stream every new report as a ``status`` event until the viewer leaves or the server
        stops; a comment after ``keepalive`` seconds of silence."""
        web = self.server.web
        if not web.viewers.acquire(blocking=False):
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"too many viewers\n",
                        "text/plain; charset=utf-8", body, extra=(("Retry-After", "5"),))
            return
        if not body:  # HEAD: what a GET would get now, and no place held once it has its answer
            web.viewers.release()
            self.send_response(HTTPStatus.OK)
            self._headers("text/event-stream; charset=utf-8")
            self.end_headers()
            return
        try:
            self.send_response(HTTPStatus.OK)
            self._headers("text/event-stream; charset=utf-8")
            self.end_headers()
            self._stream(web)
        except OSError:  # the viewer left, or did not read for WRITE_TIMEOUT
            LOG.debug("viewer %s left", self.address_string())
        finally:
            web.viewers.release()

    def _stream(self, web: WebServer) -> None:
        self.wfile.write(sse_preamble())
        seen = 0
        while not web.latest.closed:
            got = web.latest.wait_newer(seen, web.keepalive)
            if got is not None:
                seen, event = got
                self.wfile.write(event)
            elif not web.latest.closed:
                self.wfile.write(sse_keepalive())


def report_source(topology: Topology, state_dir: Path, timeout: float = 0.5) -> Source:
    """Return a source for :class:`WebServer` that samples the network with
    :func:`zmix.observe.collect` and reports the rates since the previous sample."""
    from zmix import observe

    previous: list[Any] = []

    def source() -> dict[str, Any]:
        current = observe.collect(topology, state_dir, timeout=timeout)
        report = observe.report(topology, previous[-1] if previous else None, current)
        previous[:] = [current]
        return report

    return source
