"""The client side of one API connection, sans-IO: what both thin clients share.

:class:`Session` makes request frames, takes the bytes read from the daemon and returns what they
held: answers matched to their requests by ``id``, and the events the caller subscribed to. It
never touches a socket; ``zmix.api.client`` drives it with blocking sockets, ``zmix.api.aio``
with asyncio streams.

Besides matching answers, it keeps two things a caller should not have to: which event kinds the
daemon sends on this connection (``wait_done`` may widen them; events of kinds the caller did not
ask for are not handed out), and which messages were already handed out as events, so that a
subscribe made by ``wait_done`` (which makes the daemon replay the inbox) shows none twice.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from zmix.api.protocol import (
    CLOSING_ERRORS,
    ERRORS,
    EVENTS,
    ApiError,
    FrameReader,
    decode_object,
    encode,
)
from zmix.api.types import (
    AcknowledgedEvent,
    DaemonGone,
    Event,
    FailedEvent,
    MessageEvent,
    ProtocolViolation,
    SentEvent,
    event_kind,
    parse_event,
    parse_hello,
    parse_inbox,
    parse_progress,
    parse_read,
    parse_reply,
    parse_sent,
    parse_status,
)
from zmix.errors import LocalMisuse

# How the answer of each op that returns something becomes its value.
PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "hello": parse_hello, "send": parse_sent, "reply": parse_reply, "progress": parse_progress,
    "status": parse_status, "inbox": parse_inbox, "read": parse_read}

# The events after which a message's progress changes no more.
FINAL_EVENTS = ("acknowledged", "failed", "sent")


@dataclass(frozen=True, slots=True)
class Answer:
    """The daemon's answer to request ``request_id``: its typed value (see :data:`PARSERS`;
    None for the ops that answer nothing but ok), or the error it said."""

    request_id: int
    value: Any
    error: ApiError | None


@dataclass(frozen=True, slots=True)
class _Pending:
    """A request sent and not yet answered."""

    op: str
    fields: dict[str, Any]
    by_caller: bool  # a subscribe the caller asked for (not one made by wait_done)


def subscription(events: Iterable[str] | None) -> frozenset[str]:
    """Return the event kinds ``events`` names (None: all). Raises LocalMisuse for others."""
    kinds = frozenset(EVENTS if events is None else events)
    unknown = kinds - frozenset(EVENTS)
    if unknown or isinstance(events, str):
        raise LocalMisuse(f"events are some of {', '.join(EVENTS)}; not {events!r}")
    return kinds


class Session:
    """One connection's requests, answers and events (see the module's docstring)."""

    def __init__(self) -> None:
        self._reader = FrameReader()
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}  # in the order sent, as answers come
        self._abandoned: set[int] = set()  # requests whose caller stopped waiting
        self._wanted: frozenset[str] = frozenset()  # the kinds the caller subscribed to
        self._daemon_kinds: frozenset[str] = frozenset()  # the kinds the daemon sends
        self._shown: set[bytes] = set()  # messages handed out as events, not yet acked
        self._watched: dict[bytes, Event | None] = {}  # wait_done's ids -> their final event
        self._watchers: collections.Counter[bytes] = collections.Counter()  # wait_done calls
        self.closed: Exception | None = None  # why the connection is over, once it is

    def request(self, op: str, fields: dict[str, Any] | None = None, *,
                by_caller: bool = True) -> tuple[int, bytes]:
        """Return a new request's id and its frame. Raises the reason the connection closed,
        or ApiError("too_large") for a request over the frame limit."""
        if self.closed is not None:
            error = self.closed
            if type(error) is ApiError:  # reported once; then the connection is simply gone
                self.closed = DaemonGone(f"the daemon closed the connection after the error "
                                         f"{error.code}: {error}")
            raise error
        fields = dict(fields or {})
        request_id = self._next_id
        frame = encode({"op": op, "id": request_id, **fields})
        self._next_id += 1
        self._pending[request_id] = _Pending(op, fields, by_caller)
        return request_id, frame

    def abandon(self, request_id: int) -> None:
        """Forget a request whose caller gave up waiting: its answer is dropped when it comes."""
        if self._pending.pop(request_id, None) is not None:
            self._abandoned.add(request_id)

    def needs(self, kinds: frozenset[str]) -> frozenset[str] | None:
        """Return the kinds to subscribe to so that the daemon also sends ``kinds``, or None
        when it already does."""
        return None if kinds <= self._daemon_kinds else self._daemon_kinds | kinds

    def watch(self, message_id: bytes) -> None:
        """Start noting the final event (acknowledged, failed, sent) of ``message_id``."""
        self._watched.setdefault(message_id, None)
        self._watchers[message_id] += 1

    def final_event(self, message_id: bytes) -> Event | None:
        """Return the final event noted for a watched ``message_id``, if it came."""
        return self._watched.get(message_id)

    def unwatch(self, message_id: bytes) -> None:
        """Stop noting ``message_id``'s final event (once every watcher of it stopped)."""
        self._watchers[message_id] -= 1
        if self._watchers[message_id] <= 0:
            del self._watchers[message_id]
            self._watched.pop(message_id, None)

    def receive(self, data: bytes) -> list[Answer | Event]:
        """Take bytes read from the daemon; return the answers and caller's events they
        completed, in order. Raises ProtocolViolation (the connection is then over)."""
        if self.closed is not None:
            return []
        try:
            bodies = self._reader.feed(data)
        except ApiError as error:
            raise self._violated(f"the daemon sent a bad frame: {error.message}",
                                 error.code) from None
        out: list[Answer | Event] = []
        for body in bodies:
            try:
                item = self._take(decode_object(body))
            except ApiError as error:
                raise self._violated(error.message, error.code) from None
            if item is not None:
                out.append(item)
        return out

    def end_of_stream(self) -> Exception:
        """Note that the daemon closed the connection; return the error for its waiters (the
        closing error it sent, if no request took that one yet)."""
        if self.closed is None:
            torn = " in the middle of a frame" if self._reader.buffered else ""
            self.closed = DaemonGone(f"the daemon closed the connection{torn}")
        return self.closed

    def close(self) -> None:
        """Note that this side closed the connection."""
        if self.closed is None:
            self.closed = DaemonGone("the connection to the daemon was closed by this client")

    def _violated(self, message: str, code: str = "bad_json") -> ProtocolViolation:
        """Close the session for a daemon that broke the protocol; return the error."""
        self.closed = DaemonGone(f"the connection was closed: {message}")
        return ProtocolViolation(code, message)

    def _take(self, obj: dict[str, Any]) -> Answer | Event | None:
        """Return what one object from the daemon is for the caller, or None for nothing."""
        if "ok" not in obj and "event" in obj:
            return self._event(obj)
        if obj.get("ok") is True:
            return self._answer(obj, None)
        if obj.get("ok") is False:
            code, message = obj.get("error"), obj.get("message")
            if not isinstance(code, str) or not isinstance(message, str):
                raise ProtocolViolation("bad_json", "the daemon's error answer has no "
                                                    "'error' and 'message' strings")
            if code not in ERRORS:
                message = f"{message} (an error code docs/api.md does not list)"
            return self._answer(obj, ApiError(code, message))
        raise ProtocolViolation("bad_json", "the daemon sent an object that is neither an "
                                            "answer (with \"ok\": true/false) nor an event")

    def _answer(self, obj: dict[str, Any], error: ApiError | None) -> Answer | None:
        """Match an answer to its request (an error without an id: the oldest one, since
        answers come in the order sent) and note what it changes."""
        request_id = obj.get("id")
        closing = error is not None and error.code in CLOSING_ERRORS
        if request_id is None and error is not None:
            if not self._pending:
                if not closing:
                    raise ProtocolViolation("bad_json", f"the daemon sent an error for no "
                                                        f"request: {error.code}: {error}")
                self.closed = error  # before any request (busy): the next one raises it
                return None
            request_id = next(iter(self._pending))
        if closing:  # the daemon closes the connection after it
            assert error is not None
            self.closed = DaemonGone(f"the daemon closed the connection after the error "
                                     f"{error.code}: {error}")
        if isinstance(request_id, int) and request_id in self._abandoned:
            self._abandoned.discard(request_id)
            return None
        if not isinstance(request_id, int) or isinstance(request_id, bool) \
                or request_id not in self._pending:
            raise ProtocolViolation("bad_json", f"the daemon answered a request that was not "
                                                f"sent (id {request_id!r})")
        pending = self._pending.pop(request_id)
        if error is not None:
            return Answer(request_id, None, error)
        parse = PARSERS.get(pending.op)
        value = None if parse is None else parse(obj)
        self._applied(pending)
        return Answer(request_id, value, None)

    def _applied(self, pending: _Pending) -> None:
        """Note the effect of a request the daemon carried out."""
        if pending.op == "subscribe":
            kinds = subscription(pending.fields.get("events"))
            self._daemon_kinds = kinds
            if pending.by_caller:
                self._wanted = kinds
                self._shown.clear()  # the caller asked to see the inbox again
        elif pending.op == "unsubscribe":
            self._daemon_kinds = self._wanted = frozenset()
        elif pending.op == "ack":
            self._shown.discard(bytes.fromhex(pending.fields["message_id"]))

    def _event(self, obj: dict[str, Any]) -> Event | None:
        """Return an event if the caller wants it; note final events of watched messages."""
        event = parse_event(obj)
        if event is None:
            return None  # a kind this client does not know
        if isinstance(event, AcknowledgedEvent | FailedEvent | SentEvent) \
                and event.message_id in self._watched:
            self._watched[event.message_id] = event
        if event_kind(event) not in self._wanted:
            return None
        if isinstance(event, MessageEvent):
            if event.message.message_id in self._shown:
                return None  # replayed by a subscribe the caller did not ask for
            self._shown.add(event.message.message_id)
        return event
