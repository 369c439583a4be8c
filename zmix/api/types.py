"""What the local API's answers and events hold (docs/api.md), as typed values.

Every ``parse_*`` function takes the JSON object the daemon sent and returns a frozen value, or
raises :class:`ProtocolViolation` (an :class:`~zmix.api.protocol.ApiError` with the code
``bad_json``) when a field is missing or of the wrong type: a thin client never lets the daemon's
mistakes surface as ``KeyError`` or ``TypeError``. Fields the page does not name are ignored, so a
newer daemon that adds some does not break an older client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from zmix.api.protocol import ApiError, b64decode
from zmix.errors import ZmixError
from zmix.looploss import RouteError, parse_route

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


class ProtocolViolation(ApiError):
    """The daemon sent something docs/api.md does not allow: a frame that is not UTF-8 JSON, a
    bad length prefix, an answer to no request, a field missing or of the wrong type. ``code`` is
    ``bad_json``, ``bad_frame`` or ``too_large``; the client closes the connection after it."""


class DaemonGone(ZmixError, ConnectionError):
    """The connection to the daemon is closed (or was never made): the daemon stopped, is not
    running, or closed this connection (see the message, and the preceding ApiError if any)."""


@dataclass(frozen=True, slots=True)
class Hello:
    """The answer to ``hello``: who the daemon is and its limits."""

    api: int
    client: str
    network: str
    provider: str
    max_frame: int
    reply_limit: int  # the most bytes of data one reply holds
    max_reply_blocks: int


@dataclass(frozen=True, slots=True)
class Sent:
    """The answer to ``send``: the message is sealed and in the client's store on disk."""

    message_id: bytes
    fragments: int


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a sent message (or a reply) got."""

    message_id: bytes
    fragments: int
    acked: int
    failed: bool  # a fragment used up its retries: the message will not complete
    done: bool  # every fragment acknowledged by the recipient's provider (a reply: it left)


@dataclass(frozen=True, slots=True)
class Message:
    """A whole message that arrived, in the inbox until some caller acks it."""

    message_id: bytes
    sender: str | None  # None: sent anonymously, or a reply through one of this client's blocks
    data: bytes
    text: str | None  # ``data`` decoded, when it is UTF-8
    filename: str | None
    received_at: float  # unix time
    reply_handle: bytes | None  # pass to reply() to answer through the sender's reply blocks
    # False only inside the clients: the daemon sent no data (over 8 MiB, docs/api.md "read");
    # the clients read it before they hand the message out.
    complete: bool = True


@dataclass(frozen=True, slots=True)
class Status:
    """The answer to ``status``. The epochs and times are None while the daemon has no network
    document (docs/api.md does not say; the client accepts null there)."""

    client: str
    provider: str
    online: bool
    online_since: float | None
    epoch: int | None
    document_epoch: int | None
    document_valid_until: float | None
    inbox: int
    subscribers: int
    connections: int
    statistics: dict[str, int]
    # this run's loops of the last 120 s per route (names from the client back to it):
    # (returned, lost); docs/client.md, Loops and their routes
    loop_routes: dict[tuple[str, ...], tuple[int, int]]


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A whole message arrived (it stays in the inbox until acked)."""

    message: Message


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """More fragments of a sent message were acknowledged."""

    message_id: bytes
    fragments: int
    acked: int


@dataclass(frozen=True, slots=True)
class AcknowledgedEvent:
    """Every fragment of a sent message was acknowledged."""

    message_id: bytes
    fragments: int


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """A fragment of a sent message used up its retries."""

    message_id: bytes
    fragments: int
    acked: int


@dataclass(frozen=True, slots=True)
class SentEvent:
    """A reply left for the provider (nothing acknowledges a reply)."""

    message_id: bytes


@dataclass(frozen=True, slots=True)
class NetworkEvent:
    """The client changed to the network document of a new epoch."""

    epoch: int


Event = (MessageEvent | ProgressEvent | AcknowledgedEvent | FailedEvent | SentEvent
         | NetworkEvent)


def _bad(what: str, key: str, problem: str) -> ProtocolViolation:
    """Return the error for a field of the daemon's ``what`` that is missing or wrong."""
    return ProtocolViolation("bad_json", f"the daemon's {what}: {key!r} {problem}")


def _field(obj: dict[str, Any], what: str, key: str, kinds: tuple[type, ...],
           optional: bool = False) -> Any:
    """Return ``obj[key]`` if it is one of ``kinds`` (or None when ``optional``)."""
    if key not in obj:
        raise _bad(what, key, "is missing")
    value = obj[key]
    if value is None and optional:
        return None
    # bool is an int in Python, but true is no count in JSON
    if isinstance(value, bool) and bool not in kinds:
        raise _bad(what, key, "is a boolean")
    if not isinstance(value, kinds):
        raise _bad(what, key, f"is not {' or '.join(kind.__name__ for kind in kinds)}")
    return value


def _count(obj: dict[str, Any], what: str, key: str) -> int:
    """Return ``obj[key]``, a whole number >= 0."""
    value: int = _field(obj, what, key, (int,))
    if value < 0:
        raise _bad(what, key, "is negative")
    return value


def _time(obj: dict[str, Any], what: str, key: str, optional: bool = False) -> float | None:
    """Return ``obj[key]``, a number of seconds (unix time), or None when ``optional``."""
    value = _field(obj, what, key, (int, float), optional)
    return None if value is None else float(value)


def _hex(obj: dict[str, Any], what: str, key: str, optional: bool = False) -> bytes | None:
    """Return the bytes of ``obj[key]``, hexadecimal text, or None when ``optional``."""
    value = _field(obj, what, key, (str,), optional)
    if value is None:
        return None
    if not _HEX.fullmatch(value):
        raise _bad(what, key, "is not hexadecimal")
    return bytes.fromhex(value)


def _message_id(obj: dict[str, Any], what: str) -> bytes:
    """Return the ``message_id`` of ``obj``."""
    value = _hex(obj, what, "message_id")
    assert value is not None  # not optional
    return value


def parse_hello(obj: dict[str, Any]) -> Hello:
    """Return the :class:`Hello` in an answer to ``hello``. Raises ProtocolViolation."""
    what = "hello answer"
    return Hello(api=_count(obj, what, "api"), client=_field(obj, what, "client", (str,)),
                 network=_field(obj, what, "network", (str,)),
                 provider=_field(obj, what, "provider", (str,)),
                 max_frame=_count(obj, what, "max_frame"),
                 reply_limit=_count(obj, what, "reply_limit"),
                 max_reply_blocks=_count(obj, what, "max_reply_blocks"))


def parse_sent(obj: dict[str, Any]) -> Sent:
    """Return the :class:`Sent` in an answer to ``send``. Raises ProtocolViolation."""
    return Sent(_message_id(obj, "send answer"), _count(obj, "send answer", "fragments"))


def parse_reply(obj: dict[str, Any]) -> bytes:
    """Return the message id in an answer to ``reply``. Raises ProtocolViolation."""
    return _message_id(obj, "reply answer")


def parse_progress(obj: dict[str, Any]) -> Progress:
    """Return the :class:`Progress` in an answer to ``progress``. Raises ProtocolViolation."""
    what = "progress answer"
    return Progress(_message_id(obj, what), _count(obj, what, "fragments"),
                    _count(obj, what, "acked"), _field(obj, what, "failed", (bool,)),
                    _field(obj, what, "done", (bool,)))


def _statistics(obj: dict[str, Any], what: str) -> dict[str, int]:
    """Return ``obj["statistics"]``, an object of counters."""
    value: dict[str, Any] = _field(obj, what, "statistics", (dict,))
    for name, count in value.items():
        if isinstance(count, bool) or not isinstance(count, int):
            raise _bad(what, "statistics", f"holds {name!r} that is not a whole number")
    return dict(value)


def parse_status(obj: dict[str, Any]) -> Status:
    """Return the :class:`Status` in an answer to ``status``. Raises ProtocolViolation."""
    what = "status answer"
    return Status(
        client=_field(obj, what, "client", (str,)), provider=_field(obj, what, "provider", (str,)),
        online=_field(obj, what, "online", (bool,)),
        online_since=_time(obj, what, "online_since", optional=True),
        epoch=_field(obj, what, "epoch", (int,), optional=True),
        document_epoch=_field(obj, what, "document_epoch", (int,), optional=True),
        document_valid_until=_time(obj, what, "document_valid_until", optional=True),
        inbox=_count(obj, what, "inbox"), subscribers=_count(obj, what, "subscribers"),
        connections=_count(obj, what, "connections"), statistics=_statistics(obj, what),
        loop_routes=_loop_routes(obj, what))


def _loop_routes(obj: dict[str, Any], what: str) -> dict[tuple[str, ...], tuple[int, int]]:
    """Return ``obj["loop_routes"]``: route labels -> [returned, lost], as route tuples."""
    value: dict[str, Any] = _field(obj, what, "loop_routes", (dict,))
    routes: dict[tuple[str, ...], tuple[int, int]] = {}
    for label, pair in value.items():
        try:
            route = parse_route(label)
        except RouteError as exc:
            raise _bad(what, "loop_routes", f"holds {label!r}, not a route: {exc}") from None
        if not (isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair)):
            raise _bad(what, "loop_routes", f"gives {label!r} no [returned, lost] counts")
        routes[route] = (pair[0], pair[1])
    return routes


def parse_message(obj: dict[str, Any]) -> Message:
    """Return the :class:`Message` in a MESSAGE object (docs/api.md). Raises ProtocolViolation,
    also when ``bytes`` or ``text`` disagree with ``data``."""
    what = "message"
    size = _count(obj, what, "bytes")
    encoded = _field(obj, what, "data", (str,), optional=True)
    if encoded is None:  # too large to travel inline: read with the read op
        if "text" in obj:
            raise _bad(what, "text", "is given without the data")
        return _message(obj, what, b"", None, complete=size == 0)
    try:
        data = b64decode(encoded, "data")
    except ApiError:
        raise _bad(what, "data", "is not standard base64") from None
    if size != len(data):
        raise _bad(what, "bytes", f"is not the length of its data ({len(data)})")
    text = obj.get("text")
    if text is not None and (not isinstance(text, str) or text.encode("utf-8", "surrogatepass")
                             != data):
        raise _bad(what, "text", "is not its data")
    return _message(obj, what, data, text, complete=True)


def _message(obj: dict[str, Any], what: str, data: bytes, text: str | None, *,
             complete: bool) -> Message:
    received_at = _time(obj, what, "received_at")
    assert received_at is not None  # not optional
    return Message(message_id=_message_id(obj, what),
                   sender=_field(obj, what, "from", (str,), optional=True), data=data,
                   text=text, filename=_field(obj, what, "filename", (str,), optional=True),
                   received_at=received_at,
                   reply_handle=_hex(obj, what, "reply_handle", optional=True),
                   complete=complete)


@dataclass(frozen=True, slots=True)
class Piece:
    """The answer to ``read``: ``data`` from ``offset`` of a message of ``size`` bytes."""

    offset: int
    size: int
    data: bytes


def parse_read(obj: dict[str, Any]) -> Piece:
    """Return the :class:`Piece` in an answer to ``read``. Raises ProtocolViolation."""
    what = "read"
    try:
        data = b64decode(_field(obj, what, "data", (str,)), "data")
    except ApiError:
        raise _bad(what, "data", "is not standard base64") from None
    offset, size = _count(obj, what, "offset"), _count(obj, what, "bytes")
    if offset + len(data) > size:
        raise _bad(what, "data", "runs past the message's size")
    return Piece(offset, size, data)


def next_offset(message: Message, pieces: list[Piece]) -> int | None:
    """Return the offset of ``message``'s data to read next after ``pieces``, or None when
    nothing more is to be read: the message came whole, the pieces reach its size, or the
    last piece was not the one asked for or brought nothing (then :func:`whole` refuses)."""
    if message.complete:
        return None
    offset = sum(len(piece.data) for piece in pieces)
    if pieces and (offset >= pieces[0].size or not pieces[-1].data
                   or pieces[-1].offset != offset - len(pieces[-1].data)):
        return None
    return offset


def whole(message: Message, pieces: list[Piece]) -> Message:
    """Return ``message`` with the data read in ``pieces`` (in order, from offset 0, adding up to
    the size). Raises ProtocolViolation if they do not."""
    data = b"".join(piece.data for piece in pieces)
    if not pieces or len(data) != pieces[0].size or any(
            piece.offset != sum(len(p.data) for p in pieces[:i]) for i, piece in
            enumerate(pieces)):
        raise _bad("read", "data", "the pieces read do not make up the message")
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return replace(message, data=data, text=text, complete=True)


def parse_inbox(obj: dict[str, Any]) -> list[Message]:
    """Return the messages in an answer to ``inbox``, oldest first. Raises ProtocolViolation."""
    messages: list[Any] = _field(obj, "inbox answer", "messages", (list,))
    if not all(isinstance(message, dict) for message in messages):
        raise _bad("inbox answer", "messages", "holds something that is not an object")
    return [parse_message(message) for message in messages]


def parse_event(obj: dict[str, Any]) -> Event | None:
    """Return the event in an event object, or None for an event this client does not know (a
    newer daemon's). Raises ProtocolViolation when a known event's fields are wrong."""
    kind = obj.get("event")
    what = f"{kind} event"
    if kind == "message":
        return MessageEvent(parse_message(obj))
    if kind == "progress":
        return ProgressEvent(_message_id(obj, what), _count(obj, what, "fragments"),
                             _count(obj, what, "acked"))
    if kind == "acknowledged":
        return AcknowledgedEvent(_message_id(obj, what), _count(obj, what, "fragments"))
    if kind == "failed":
        return FailedEvent(_message_id(obj, what), _count(obj, what, "fragments"),
                           _count(obj, what, "acked"))
    if kind == "sent":
        return SentEvent(_message_id(obj, what))
    if kind == "network":
        return NetworkEvent(_count(obj, what, "epoch"))
    if not isinstance(kind, str):
        raise _bad("event", "event", "is not a string")
    return None


def event_kind(event: Event) -> str:
    """Return the name docs/api.md gives ``event``'s kind (what ``subscribe`` lists)."""
    return _KINDS[type(event)]


_KINDS: dict[type, str] = {MessageEvent: "message", ProgressEvent: "progress",
                           AcknowledgedEvent: "acknowledged", FailedEvent: "failed",
                           SentEvent: "sent", NetworkEvent: "network"}
