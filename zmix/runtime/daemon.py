"""The client daemon: one client online for as long as it runs, serving the local API.

:class:`Daemon` runs one poll loop over the client runtime's ZeroMQ sockets (its provider, the
directory authorities) and the plain descriptors of its services: the API server
(:mod:`zmix.runtime.api`, docs/api.md) and, for ``zmix-socks`` and ``zmix-exit``, a tunnel
service (docs/tunnel.md). The Loopix streams run as in any online client; every message that
arrives is offered to the services first (a tunnel's own messages), then kept in the inbox and
pushed to API subscribers until a caller acknowledges it. Requests that change the store (send,
reply, ack) are answered once the change is committed, so what the daemon acknowledged survives
its death (it resumes unacknowledged fragments and unsent replies at its next start).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from zmix.api.protocol import (
    API_VERSION,
    EVENTS,
    MAX_FRAME,
    SOCKET_FILE,
    TOKEN_FILE,
    ApiError,
    b64decode,
    b64encode,
)
from zmix.client import ReceivedMessage
from zmix.client.results import SendProgress
from zmix.client.sending import fragment_capacity
from zmix.envelope import dated_surb_length
from zmix.errors import LocalMisuse
from zmix.fragment import (
    HEADER_BYTES,
    MAX_FILENAME_BYTES,
    MAX_REPLY_BLOCKS,
    encode_metadata,
    reply_blocks_that_fit,
)
from zmix.looploss import route_label
from zmix.runtime.api import MAX_CONNECTIONS, ApiServer, Connection
from zmix.runtime.client import ClientRuntime, NetworkExpired
from zmix.runtime.services import MixnetPort, Service

LOG = logging.getLogger(__name__)

INLINE_BYTES = 8 * 1024 * 1024  # message bytes an event or an inbox answer carries (docs/api.md)
BACKLOG_INLINE_BYTES = 32 * 1024 * 1024  # inline bytes of a subscription's backlog, in all
OFFLINE_RETRY = 0.5  # seconds between attempts while the network document is expired
POLL_CAP = 0.5  # seconds: the loop wakes at least this often (to see a stop request)

ServiceFactory = Callable[[MixnetPort], list[Service]]


def api_token(client_dir: Path) -> str:
    """Return the client's API token from ``api.token`` (0600), made at the first call."""
    path = client_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text().strip()
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            os.chmod(path, 0o600)
            return text
        path.unlink()  # damaged: a new one (callers read it again)
        return api_token(client_dir)
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return token


class _Port:
    """The MixnetPort of a daemon's client (zmix/runtime/services.py)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    @property
    def name(self) -> str:
        return self._daemon.runtime.spec.name

    def send(self, now: float, recipient: str, data: bytes, *, anonymous: bool,
             reply_blocks: int) -> bytes:
        self._daemon.check_online()
        message_id = self._daemon.runtime.core.submit(now, recipient, data, anonymous=anonymous,
                                                      reply_blocks=reply_blocks)
        self._daemon.track(message_id, reply=False)
        return message_id

    def reply(self, now: float, handle: bytes, data: bytes) -> bytes:
        self._daemon.check_online()
        message_id = self._daemon.runtime.core.reply(now, handle, data)
        self._daemon.track(message_id, reply=True)
        return message_id

    def progress(self, message_id: bytes) -> SendProgress:
        return self._daemon.runtime.core.progress(message_id)

    def queued(self) -> int:
        return self._daemon.runtime.core.queued()

    def forward_capacity(self, reply_blocks: int) -> int:
        params = self._daemon.runtime.topology.sphinx
        metadata = encode_metadata(None, [bytes(dated_surb_length(params))] * reply_blocks)
        return fragment_capacity(params) - HEADER_BYTES - len(metadata)

    def reply_capacity(self) -> int:
        return self._daemon.reply_limit()

    def payload_rate(self) -> float:
        return self._daemon.runtime.topology.loopix.payload_rate

    def is_client(self, name: str) -> bool:
        return self._daemon.runtime.view.current.is_client(name)


class Daemon:
    """Client ``name`` of the network in ``state_dir``, online and serving the API."""

    def __init__(self, state_dir: Path, name: str, *, api_tcp: tuple[str, int] | None = None,
                 max_connections: int = MAX_CONNECTIONS,
                 services: ServiceFactory | None = None) -> None:
        """Go online (the network document, the client's lock: ClientRuntime's errors and
        ClientBusy) and listen (OSError if an API address is taken)."""
        self.runtime = ClientRuntime(state_dir, name)
        self.runtime.__enter__()
        try:
            client_dir = self.runtime.client_dir
            token = api_token(client_dir) if api_tcp is not None else None
            self.api = ApiServer(client_dir / SOCKET_FILE, self._handle, tcp=api_tcp,
                                 token=token, max_connections=max_connections)
        except BaseException:
            self.runtime.__exit__(None, None, None)
            raise
        self.port = _Port(self)
        self.services: list[Service] = [self.api]
        self._tracked: dict[bytes, tuple[int, bool]] = {}  # id -> (acked reported, is a reply)
        self._counts: Counter[str] = Counter()
        self.offline: str | None = None  # why nothing can be sent now (an expired document)
        self._epoch = self.runtime.view.current.version
        self._poller = zmq.Poller()
        self._registered: dict[int, int] = {}  # fd -> mask in the poller
        for sock in self.runtime.sockets():  # the same while online
            self._poller.register(sock, zmq.POLLIN)
        try:
            extra = services(self.port) if services is not None else []
        except BaseException:
            self.close()
            raise
        self.services.extend(extra)
        pending_replies = {row[0] for row in self._store_pending_replies()}
        for message_id in self.runtime.core.unfinished():
            self.track(message_id, reply=message_id in pending_replies)
        self._offer_inbox(time.time())

    def _store_pending_replies(self) -> list[tuple[bytes, bytes, bytes, float]]:
        store = self.runtime.store
        return store.pending_replies() if store is not None else []

    # ------------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Close the services and the API, then take the client offline (its last FETCH)."""
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.close()
        self.runtime.__exit__(None, None, None)

    def run(self, stop: Callable[[], bool]) -> None:
        """Serve until ``stop()`` is true (checked at least every POLL_CAP seconds)."""
        while not stop():
            self.turn(time.time() + POLL_CAP)

    def turn(self, until: float) -> None:
        """One turn of the loop: what is due, then wait for input until ``until`` at most."""
        now = time.time()
        self._on_timer(now)
        wake = min(until, self._next_deadline(now))
        owners = self._sync_poller()
        timeout = max(0, math.ceil((wake - time.time()) * 1000))
        ready = self._poller.poll(timeout)
        now = time.time()
        zmq_ready = False
        per_service: dict[int, dict[int, int]] = {}
        for item, events in ready:
            if isinstance(item, int):
                owner = owners.get(item)
                if owner is not None:
                    per_service.setdefault(owner, {})[item] = events
            else:
                zmq_ready = True
        if zmq_ready:
            for message in self.runtime.on_readable(now):
                self._arrived(now, message)
        for index, fds in per_service.items():
            self.services[index].on_ready(now, fds)
        self._report_progress()

    def _on_timer(self, now: float) -> None:
        try:
            self.runtime.on_timer(now)
        except NetworkExpired as exc:
            if self.offline is None:
                LOG.warning("%s", exc)
            self.offline = str(exc)
        else:
            self.offline = None
        if self.runtime.view.current.version != self._epoch:
            self._epoch = self.runtime.view.current.version
            self.api.publish({"event": "network", "epoch": self._epoch})
        for service in self.services:
            service.on_timer(now)
        self._report_progress()

    def _next_deadline(self, now: float) -> float:
        deadline = min(service.next_deadline() for service in self.services)
        if self.offline is not None:
            return min(deadline, now + OFFLINE_RETRY)
        return min(deadline, self.runtime.next_deadline())

    def _sync_poller(self) -> dict[int, int]:
        """Register every service's descriptors as it wants them now; return fd -> the index
        of the service that owns it."""
        wanted: dict[int, int] = {}
        owners: dict[int, int] = {}
        for index, service in enumerate(self.services):
            for fd, mask in service.poll_items():
                wanted[fd] = wanted.get(fd, 0) | mask
                owners[fd] = index
        for fd in [fd for fd in self._registered if fd not in wanted]:
            self._poller.unregister(fd)
            del self._registered[fd]
        for fd, mask in wanted.items():
            if self._registered.get(fd) != mask:
                self._poller.register(fd, mask)  # registers or changes the mask
                self._registered[fd] = mask
        return owners

    # ------------------------------------------------------------------ messages and progress

    def _offer_inbox(self, now: float) -> None:
        """Offer the messages a previous run left in the inbox to the services."""
        for message in self.runtime.core.inbox():
            self._offer(now, message)

    def _arrived(self, now: float, message: ReceivedMessage) -> None:
        if not self._offer(now, message):
            self._counts["messages_for_callers"] += 1
            inline = len(message.data) <= INLINE_BYTES
            self.api.publish({"event": "message", **message_object(message, inline)})

    def _offer(self, now: float, message: ReceivedMessage) -> bool:
        """Return True if a service took ``message`` (it is then marked delivered)."""
        for service in self.services[1:]:
            if service.on_message(now, message):
                self.runtime.core.mark_delivered(message.message_id)
                return True
        return False

    def track(self, message_id: bytes, *, reply: bool) -> None:
        """Report the progress of ``message_id`` as events until it is done or failed."""
        self._tracked[message_id] = (0, reply)

    def _report_progress(self) -> None:
        if not self._tracked:
            return
        core = self.runtime.core
        for message_id, (shown, reply) in list(self._tracked.items()):
            progress = core.progress(message_id)
            if progress.acked == shown and not progress.failed:
                continue
            hex_id = message_id.hex()
            if progress.failed:
                del self._tracked[message_id]
                self.api.publish({"event": "failed", "message_id": hex_id,
                                  "fragments": progress.fragments, "acked": progress.acked})
                continue
            if reply:
                del self._tracked[message_id]
                self.api.publish({"event": "sent", "message_id": hex_id})
                continue
            self.api.publish({"event": "progress", "message_id": hex_id,
                              "fragments": progress.fragments, "acked": progress.acked})
            if progress.acked >= progress.fragments:
                del self._tracked[message_id]
                self.api.publish({"event": "acknowledged", "message_id": hex_id,
                                  "fragments": progress.fragments})
            else:
                self._tracked[message_id] = (progress.acked, reply)

    def check_online(self) -> None:
        """Raise NetworkExpired if nothing can be sent now."""
        if self.offline is not None:
            raise NetworkExpired(self.offline)

    def reply_limit(self) -> int:
        """Return the most bytes one reply carries."""
        return self.runtime.topology.sphinx.max_reply_length - HEADER_BYTES

    def statistics(self) -> dict[str, int]:
        """Return the client's statistics, the daemon's and every service's."""
        stats = self.runtime.statistics()
        stats["inbox"] = self.runtime.core.inbox_count()
        stats["messages_for_callers"] = self._counts["messages_for_callers"]
        for service in self.services:
            prefix = service.statistics_prefix
            stats.update((prefix + name, value) for name, value in service.statistics().items())
        return stats

    # ------------------------------------------------------------------ the API's requests

    def _handle(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise ApiError("unknown_op", f"unknown op {op!r}; the ops are "
                                         f"{', '.join(sorted(_OPS))}")
        return handler(self, conn, request)

    def _op_hello(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        runtime = self.runtime
        return {"api": API_VERSION, "client": runtime.spec.name,
                "network": runtime.topology.network, "provider": runtime.provider.name,
                "max_frame": MAX_FRAME, "reply_limit": self.reply_limit(),
                "max_reply_blocks": MAX_REPLY_BLOCKS}

    def _op_send(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        to = _string(request, "to")
        data = _data(request, files=not conn.tcp)
        filename = _string(request, "filename", required=False)
        anonymous = _flag(request, "anonymous")
        blocks = _integer(request, "reply_blocks", 0, MAX_REPLY_BLOCKS)
        if not self.runtime.view.current.is_client(to):
            raise ApiError("unknown_recipient", f"no client named {to!r} in the network")
        if filename is not None and len(filename.encode()) > MAX_FILENAME_BYTES:
            raise ApiError("too_long", f"a filename is at most {MAX_FILENAME_BYTES} UTF-8 bytes")
        params = self.runtime.topology.sphinx
        fit = reply_blocks_that_fit(fragment_capacity(params), dated_surb_length(params),
                                    filename)
        if blocks > fit:
            raise ApiError("bad_request", f"'reply_blocks': at most {fit} fit in a message of "
                                          "this network beside this filename")
        now = time.time()
        try:
            self.check_online()
            message_id = self.runtime.core.submit(now, to, data, filename=filename,
                                                  anonymous=anonymous, reply_blocks=blocks)
        except NetworkExpired as exc:
            raise ApiError("offline", str(exc)) from None
        except LocalMisuse as exc:
            raise ApiError("bad_request", str(exc)) from None
        self.track(message_id, reply=False)
        return {"message_id": message_id.hex(),
                "fragments": self.runtime.core.progress(message_id).fragments}

    def _op_reply(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        handle = _hex(request, "handle")
        data = _data(request)
        if len(data) > self.reply_limit():
            raise ApiError("too_long", f"a reply holds at most {self.reply_limit()} bytes, got "
                                       f"{len(data)}; send a longer answer as several replies")
        try:
            self.check_online()
            message_id = self.runtime.core.reply(time.time(), handle, data)
        except NetworkExpired as exc:
            raise ApiError("offline", str(exc)) from None
        except LocalMisuse as exc:
            raise ApiError("no_reply_block", str(exc)) from None
        self.track(message_id, reply=True)
        return {"message_id": message_id.hex()}

    def _op_progress(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        message_id = _hex(request, "message_id", length=16)
        progress = self.runtime.core.progress(message_id)
        if progress.fragments == 0:
            raise ApiError("unknown_message", f"no message {message_id.hex()} in this client's "
                                              "store")
        return {"message_id": message_id.hex(), "fragments": progress.fragments,
                "acked": progress.acked, "failed": progress.failed,
                "done": progress.acked >= progress.fragments and not progress.failed}

    def _op_status(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        runtime, now = self.runtime, time.time()
        network = runtime.view.current
        # First: it counts the loops overdue by now as lost, which statistics() then shows too.
        loop_routes = runtime.core.loop_routes(now)
        stats = self.statistics()
        return {"client": runtime.spec.name, "provider": runtime.provider.name,
                "online": self.offline is None, "online_since": runtime.online_since,
                "epoch": network.epochs.epoch_at(now), "document_epoch": network.version,
                "document_valid_until": network.valid_until, "inbox": stats["inbox"],
                "subscribers": self.api.subscribers(), "connections": self.api.connections(),
                "statistics": stats, "loop_routes": {
                    route_label(route): [returned, lost]
                    for route, (returned, lost) in loop_routes.items()}}

    def _op_inbox(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        return {"messages": _inlined(self.runtime.core.inbox(), INLINE_BYTES)}

    def _op_read(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        message_id = _hex(request, "message_id", length=16)
        offset = _integer(request, "offset", 0, 2**53)
        length = _integer(request, "length", 1, INLINE_BYTES)
        message = self.runtime.core.inbox_message(message_id)
        if message is None:
            raise ApiError("unknown_message", f"no message {message_id.hex()} in the inbox "
                                              "(acknowledged already, or never received)")
        if offset > len(message.data):
            raise ApiError("bad_request", f"'offset' {offset} is past the message's "
                                          f"{len(message.data)} bytes")
        return {"message_id": message_id.hex(), "offset": offset, "bytes": len(message.data),
                "data": b64encode(message.data[offset:offset + length])}

    def _op_ack(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        message_id = _hex(request, "message_id", length=16)
        if self.runtime.core.inbox_message(message_id) is None:
            raise ApiError("unknown_message", f"no message {message_id.hex()} in the inbox "
                                              "(acknowledged already, or never received)")
        self.runtime.core.mark_delivered(message_id)
        return {}

    def _op_subscribe(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        events = request.get("events", list(EVENTS))
        if (not isinstance(events, list) or not events
                or not all(isinstance(e, str) and e in EVENTS for e in events)):
            raise ApiError("bad_request", f"'events' must be a non-empty list of "
                                          f"{', '.join(EVENTS)}")
        conn.events = frozenset(events)
        if "message" in conn.events:  # the backlog, queued after the answer
            conn.after_answer.extend(
                {"event": "message", **obj}
                for obj in _inlined(self.runtime.core.inbox(), BACKLOG_INLINE_BYTES))
        return {}

    def _op_unsubscribe(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        conn.events = frozenset()
        return {}


_OPS: dict[str, Callable[[Daemon, Connection, dict[str, Any]], dict[str, Any]]] = {
    "hello": Daemon._op_hello, "send": Daemon._op_send, "reply": Daemon._op_reply,
    "progress": Daemon._op_progress, "status": Daemon._op_status, "inbox": Daemon._op_inbox,
    "ack": Daemon._op_ack, "read": Daemon._op_read, "subscribe": Daemon._op_subscribe,
    "unsubscribe": Daemon._op_unsubscribe,
}


def message_object(message: ReceivedMessage, inline: bool = True) -> dict[str, Any]:
    """Return a received message as docs/api.md's MESSAGE object, with its data (and text)
    if ``inline``, else with "data" null (the caller reads it with the read op)."""
    obj: dict[str, Any] = {
        "message_id": message.message_id.hex(), "from": message.sender,
        "bytes": len(message.data), "data": b64encode(message.data) if inline else None,
        "filename": message.filename, "received_at": message.received_at,
        "reply_handle": None if message.reply_handle is None else message.reply_handle.hex()}
    if inline:
        with contextlib.suppress(UnicodeDecodeError):
            obj["text"] = message.data.decode("utf-8")
    return obj


def _inlined(messages: list[ReceivedMessage], budget: int) -> list[dict[str, Any]]:
    """Return MESSAGE objects of ``messages``, in order, with the data of each one that fits
    in what is left of ``budget`` bytes (so no frame passes the frame limit)."""
    objects = []
    for message in messages:
        inline = len(message.data) <= min(budget, INLINE_BYTES)
        if inline:
            budget -= len(message.data)
        objects.append(message_object(message, inline))
    return objects


# ---------------------------------------------------------------------- request fields

def _string(request: dict[str, Any], key: str, *, required: bool = True) -> Any:
    value = request.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError("bad_request", f"{key!r} must be a non-empty string")
    return value


def _flag(request: dict[str, Any], key: str) -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise ApiError("bad_request", f"{key!r} must be true or false")
    return value


def _integer(request: dict[str, Any], key: str, low: int, high: int) -> int:
    value = request.get(key, low)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError("bad_request", f"{key!r} must be an integer from {low} to {high}")
    return value


def _data(request: dict[str, Any], *, files: bool = False) -> bytes:
    """Return the request's "data" (base64) or "text", or with ``files`` the bytes of its
    "file" (an absolute path the daemon reads); exactly one must be given."""
    data, text, path = request.get("data"), request.get("text"), request.get("file")
    given = [key for key, value in (("data", data), ("text", text), ("file", path))
             if value is not None]
    if path is not None and not files:
        raise ApiError("bad_request", "'file' goes with send, from a caller on the Unix "
                                      "socket; give the bytes as 'data'")
    if len(given) != 1:
        names = "'data' (base64), 'text' or 'file'" if files else "'data' (base64) and 'text'"
        raise ApiError("bad_request", f"give exactly one of {names}")
    if path is not None:
        return _file(path)
    if text is not None:
        if not isinstance(text, str):
            raise ApiError("bad_request", "'text' must be a string")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape
            raise ApiError("bad_request", "'text' is not valid Unicode") from None
    if not isinstance(data, str):
        raise ApiError("bad_request", "'data' must be a base64 string")
    return b64decode(data, "data")


def _file(path: object) -> bytes:
    """Return the bytes of the file at absolute path ``path`` (read as the daemon's user, who
    is the caller's: the Unix socket admits no one else)."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ApiError("bad_request", "'file' must be an absolute path")
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ApiError("bad_request", f"cannot read 'file' {path}: "
                                      f"{exc.strerror or exc}") from None


def _hex(request: dict[str, Any], key: str, *, length: int | None = None) -> bytes:
    value = request.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or not raw or len(raw) > 64 or (length is not None and len(raw) != length):
        size = f"{2 * length} hexadecimal characters" if length else "hexadecimal"
        raise ApiError("bad_request", f"{key!r} must be {size}")
    return raw
