"""A test double of the client daemon's local API: a real Unix-socket or TCP server in a thread.

It speaks docs/api.md's framing and answers from a small model of a daemon (clients alice and
bob, an inbox, sent messages and their progress), unless a test scripts what it says to the next
request of an op: answers, events, raw bytes (bad frames), or closing the connection. That is how
tests make the thin clients meet every error and every way a daemon can misbehave.

    with FakeDaemon(unix_path=tmp_path / "api.sock") as daemon:
        daemon.script("send", {"event": "network", "epoch": 9}, {"ok": True, ...})
        ...
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections import deque
from pathlib import Path
from typing import Any

from zmix.api.protocol import ApiError, FrameReader, b64encode, decode_object, encode
from zmix.bench.common import free_ports

CLOSE = object()  # a script item: close the connection here
HOLD = object()  # a script item (alone): answer nothing to this request

Item = Any  # dict (an answer if it has "ok": its "id" is filled in; else sent as it is),
# bytes (written raw), CLOSE, or a callable(request) -> one of those

HELLO = {"api": 1, "client": "alice", "network": "zmix-fake", "provider": "provider-1",
         "max_frame": 16777216, "reply_limit": 1994, "max_reply_blocks": 4}
STATUS = {"client": "alice", "provider": "provider-1", "online": True,
          "online_since": 1790000000.5, "epoch": 123, "document_epoch": 123,
          "document_valid_until": 1790000040.0, "inbox": 0, "subscribers": 0,
          "connections": 1, "statistics": {"queued": 0, "loops_sent": 4},
          "loop_routes": {"alice>provider-1>mix-a1>provider-1>alice": [3, 1]}}


def message_object(message_id: bytes, data: bytes, sender: str | None = "bob",
                   reply_handle: bytes | None = None, filename: str | None = None) -> dict[
                       str, Any]:
    """Return the MESSAGE object (docs/api.md) of a received message."""
    obj: dict[str, Any] = {"message_id": message_id.hex(), "from": sender, "bytes": len(data),
                           "data": b64encode(data), "filename": filename,
                           "received_at": 1790000001.25,
                           "reply_handle": None if reply_handle is None else reply_handle.hex()}
    with contextlib.suppress(UnicodeDecodeError):
        obj["text"] = data.decode("utf-8")
    return obj


class _Connection:
    """One caller's connection, served by its own thread."""

    def __init__(self, sock: socket.socket, needs_token: bool) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.kinds: frozenset[str] = frozenset()
        self.greeted = not needs_token
        self.open = True

    def write(self, data: bytes) -> None:
        """Write ``data`` whole, unless the connection is gone."""
        with self.lock:
            if self.open:
                try:
                    self.sock.sendall(data)
                except OSError:
                    self.open = False

    def close(self) -> None:
        """Close the connection (the caller reads the end of the stream)."""
        with self.lock:
            self.open = False
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


class FakeDaemon:
    """A scripted stand-in for ``zmix-client``'s API (see the module's docstring)."""

    def __init__(self, *, unix_path: Path | None = None, tcp: bool = False,
                 token: str | None = None, on_accept: list[Item] | None = None,
                 auto_ack: bool = False) -> None:
        self.unix_path = unix_path
        self.token = token
        self.on_accept = on_accept or []  # items sent to each new connection first
        self.auto_ack = auto_ack  # every send is acknowledged (event) right after its answer
        self.requests: list[dict[str, Any]] = []  # every request, in the order received
        self.inbox: list[dict[str, Any]] = []  # MESSAGE objects not yet acked
        self.sent: dict[str, dict[str, Any]] = {}  # message id -> its progress fields
        self._scripts: dict[str, deque[list[Item]]] = {}
        self._connections: list[_Connection] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        if tcp:
            self.listener = socket.create_server(("127.0.0.1", free_ports(1)[0]))
            self.address: Any = self.listener.getsockname()[:2]
        else:
            assert unix_path is not None
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(unix_path))
            self.listener.listen()
            self.address = str(unix_path)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> FakeDaemon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening and close every connection."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for connection in list(self._connections):
            connection.close()
        self._thread.join(5)

    def script(self, op: str, *items: Item) -> None:
        """Make the next request of ``op`` (after those scripted before) get ``items``."""
        with self._lock:
            self._scripts.setdefault(op, deque()).append(list(items))

    def push(self, *items: Item) -> None:
        """Send ``items`` to every open connection now."""
        for connection in list(self._connections):
            self._play(connection, {"id": None}, list(items))

    def deliver(self, message_id: bytes, data: bytes, **fields: Any) -> dict[str, Any]:
        """Put a received message in the inbox and send its event to the subscribers."""
        obj = message_object(message_id, data, **fields)
        self.inbox.append(obj)
        self._publish("message", {"event": "message", **obj})
        return obj

    def acknowledge(self, message_id: str) -> None:
        """Mark a sent message acknowledged and send the subscribers its events."""
        progress = self.sent[message_id]
        progress.update(acked=progress["fragments"], done=True)
        self._publish("progress", {"event": "progress", "message_id": message_id,
                                   "fragments": progress["fragments"],
                                   "acked": progress["fragments"]})
        self._publish("acknowledged", {"event": "acknowledged", "message_id": message_id,
                                       "fragments": progress["fragments"]})

    def _publish(self, kind: str, event: dict[str, Any]) -> None:
        """Send ``event`` to the connections subscribed to ``kind``."""
        for connection in list(self._connections):
            if kind in connection.kinds:
                connection.write(encode(event))

    def _accept_loop(self) -> None:
        """Accept connections until stopped, each served by a thread of its own."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            connection = _Connection(sock, needs_token=self.token is not None)
            self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: _Connection) -> None:
        """Read requests and answer them, as docs/api.md says, until the connection ends."""
        self._play(connection, {"id": None}, list(self.on_accept))
        reader = FrameReader()
        while connection.open:
            try:
                data = connection.sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            try:
                bodies = reader.feed(data)
            except ApiError as error:
                self._play(connection, {"id": None}, [self._error(error.code, error.message),
                                                      CLOSE])
                break
            for body in bodies:
                try:
                    request = decode_object(body)
                except ApiError as error:
                    self._play(connection, {"id": None}, [self._error(error.code, "bad")])
                    continue
                self.requests.append(request)
                self._play(connection, request, self._reaction(connection, request))
        connection.close()

    def _reaction(self, connection: _Connection, request: dict[str, Any]) -> list[Item]:
        """Return the script for ``request``, or the model's answer."""
        op = request.get("op")
        with self._lock:
            scripted = self._scripts.get(op) if isinstance(op, str) else None
            if scripted:
                return scripted.popleft()
        if not connection.greeted:
            if op == "hello" and request.get("token") == self.token:
                connection.greeted = True
                return [{"ok": True, **HELLO}]
            return [self._error("unauthorized", "send hello with the token first"), CLOSE]
        try:
            return self._model(connection, request)
        except ApiError as error:
            return [self._error(error.code, error.message)]

    @staticmethod
    def _error(code: str, message: str) -> dict[str, Any]:
        """Return an error answer."""
        return {"ok": False, "error": code, "message": message}

    def _model(self, connection: _Connection, request: dict[str, Any]) -> list[Item]:
        """Return what a daemon with clients alice and bob answers ``request``."""
        op = request.get("op")
        if op == "hello":
            return [{"ok": True, **HELLO}]
        if op == "send":
            if request.get("to") not in ("alice", "bob"):
                raise ApiError("unknown_recipient", f"no client {request.get('to')!r}")
            message_id = f"{next(self._ids):032x}"
            self.sent[message_id] = {"fragments": 1, "acked": 0, "failed": False,
                                     "done": False}
            items: list[Item] = [{"ok": True, "message_id": message_id, "fragments": 1}]
            if self.auto_ack:
                items.append(lambda _request: self.acknowledge(message_id))
            return items
        if op == "reply":
            message_id = f"{next(self._ids):032x}"
            self.sent[message_id] = {"fragments": 1, "acked": 1, "failed": False, "done": True}
            return [{"ok": True, "message_id": message_id},
                    {"event": "sent", "message_id": message_id} if "sent" in connection.kinds
                    else b""]
        if op == "progress":
            progress = self.sent.get(request.get("message_id"))  # type: ignore[arg-type]
            if progress is None:
                raise ApiError("unknown_message", "no such message")
            return [{"ok": True, "message_id": request["message_id"], **progress}]
        if op == "status":
            return [{"ok": True, **STATUS, "inbox": len(self.inbox)}]
        if op == "inbox":
            return [{"ok": True, "messages": list(self.inbox)}]
        if op == "ack":
            kept = [m for m in self.inbox if m["message_id"] != request.get("message_id")]
            if len(kept) == len(self.inbox):
                raise ApiError("unknown_message", "no such message")
            self.inbox[:] = kept
            return [{"ok": True}]
        if op == "subscribe":
            connection.kinds = frozenset(request.get("events") or ("message", "progress",
                                                                   "acknowledged", "failed",
                                                                   "sent", "network"))
            replay = [{"event": "message", **m} for m in self.inbox] \
                if "message" in connection.kinds else []
            return [{"ok": True}, *replay]
        if op == "unsubscribe":
            connection.kinds = frozenset()
            return [{"ok": True}]
        raise ApiError("unknown_op", f"no op {op!r}")

    def _play(self, connection: _Connection, request: dict[str, Any],
              items: list[Item]) -> None:
        """Send ``items`` in answer to ``request`` (see :data:`Item`)."""
        if items == [HOLD]:
            return
        for item in items:
            while callable(item):
                item = item(request)
            if item is CLOSE:
                connection.close()
                return
            if isinstance(item, bytes):
                connection.write(item)
            elif isinstance(item, dict):
                if "ok" in item and "id" not in item:
                    item = {"id": request.get("id"), **item}
                connection.write(encode(item))

