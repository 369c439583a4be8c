"""Link frames between nodes and between clients and providers (docs/protocol.md).

A frame is one ZeroMQ message part: ``version (0x01) || type (1 byte) || body``. PACKET and
FETCH_REPLY bodies are fixed binary layouts (the hot path, and a fetch answer whose size must not
depend on how much mail waited); the small control frames carry msgpack bodies. ``decode`` checks
the length, the version and the type before anything else, and turns every failure, msgpack's
included, into one :class:`WireError`. This is the only module that imports msgpack.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from zmix import crypto
from zmix.errors import DropReason, WireError

WIRE_VERSION = 1
ID_BYTES = 16
MAX_CONTROL_BODY = 64 * 1024  # bytes; control frames are small
MAX_ACK_IDS = 1024  # item ids in one FETCH_ACK
MAX_TEXT = 256  # characters in names and error texts


class Geometry(Protocol):
    """The Sphinx lengths the wire needs (``zmix.sphinx.SphinxParams`` has them)."""

    @property
    def packet_length(self) -> int: ...
    @property
    def max_message_length(self) -> int: ...
    @property
    def max_reply_length(self) -> int: ...
    @property
    def payload_length(self) -> int: ...


class FrameType(enum.IntEnum):
    """The second byte of every frame."""

    PACKET = 0x01
    HEARTBEAT = 0x02
    RELAY = 0x03
    FETCH = 0x10
    FETCH_REPLY = 0x11
    FETCH_ACK = 0x12
    FETCH_ACKED = 0x13
    REGISTER = 0x20
    REGISTERED = 0x21
    ERROR = 0x7F


class ItemKind(enum.IntEnum):
    """What a mailbox item holds."""

    MESSAGE = 1  # the body of a final delivery's envelope
    REPLY = 2  # a SURB reply payload, still encrypted for the SURB's creator


@dataclass(frozen=True, slots=True)
class Packet:
    """A Sphinx packet for the receiving node to process."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing but proof of life (any frame counts as one)."""


@dataclass(frozen=True, slots=True)
class Relay:
    """Client to its provider: pass ``packet`` unchanged to ``first_hop`` (a SURB answer)."""

    first_hop: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    """Client to its provider: send me the oldest items of my mailbox."""

    request_id: int


@dataclass(frozen=True, slots=True)
class MailboxItem:
    """One stored item as a client fetches it."""

    item_id: int
    kind: ItemKind
    surb_id: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class FetchReply:
    """Provider to client: up to ``slots`` items, and how many more wait."""

    request_id: int
    items: tuple[MailboxItem, ...]
    remaining: int


@dataclass(frozen=True, slots=True)
class FetchAck:
    """Client to provider: these items are safe with me; delete them."""

    request_id: int
    item_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FetchAcked:
    """Provider to client: ``deleted`` of the acknowledged items were deleted."""

    request_id: int
    deleted: int


@dataclass(frozen=True, slots=True)
class Register:
    """A new client asks a provider with open registration to admit it."""

    name: str
    public_key: bytes
    curve_public: bytes


@dataclass(frozen=True, slots=True)
class Registered:
    """The provider admitted client ``name``."""

    name: str


@dataclass(frozen=True, slots=True)
class Error:
    """A short refusal; never says more than the peer may know."""

    code: str
    text: str


Frame = (Packet | Heartbeat | Relay | Fetch | FetchReply | FetchAck | FetchAcked | Register
         | Registered | Error)

_HEAD = bytes([WIRE_VERSION])
_REPLY_HEAD = struct.Struct(">QBI")  # request_id, count, remaining
_SLOT_HEAD = struct.Struct(">QB16sI")  # item_id, kind, surb_id, payload length


def slot_length(params: Geometry) -> int:
    """Return the bytes one fetch-answer slot takes: a header and room for a whole payload
    (a SURB reply is stored as the still-encrypted Sphinx payload)."""
    return _SLOT_HEAD.size + max(params.max_message_length, params.payload_length)


def fetch_reply_length(params: Geometry, slots: int) -> int:
    """Return the exact length of every FETCH_REPLY frame for this geometry."""
    return 2 + _REPLY_HEAD.size + slots * slot_length(params)


# ---------------------------------------------------------------------------- encoding


def encode(frame: Frame, *, params: Geometry, slots: int) -> bytes:
    """Return the bytes of ``frame``."""
    if isinstance(frame, Packet):
        return _HEAD + b"\x01" + frame.packet
    if isinstance(frame, Heartbeat):
        return _HEAD + b"\x02"
    if isinstance(frame, Relay):
        return _HEAD + b"\x03" + frame.first_hop + frame.packet
    if isinstance(frame, FetchReply):
        return _encode_fetch_reply(frame, params, slots)
    kind, body = _control_body(frame)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return _HEAD + bytes([kind]) + packed


def _control_body(frame: Frame) -> tuple[FrameType, list[Any]]:
    if isinstance(frame, Fetch):
        return FrameType.FETCH, [frame.request_id]
    if isinstance(frame, FetchAck):
        return FrameType.FETCH_ACK, [frame.request_id, list(frame.item_ids)]
    if isinstance(frame, FetchAcked):
        return FrameType.FETCH_ACKED, [frame.request_id, frame.deleted]
    if isinstance(frame, Register):
        return FrameType.REGISTER, [frame.name, frame.public_key, frame.curve_public]
    if isinstance(frame, Registered):
        return FrameType.REGISTERED, [frame.name]
    if isinstance(frame, Error):
        return FrameType.ERROR, [frame.code, frame.text]
    raise TypeError(f"not a frame: {frame!r}")


def _encode_fetch_reply(frame: FetchReply, params: Geometry, slots: int) -> bytes:
    if len(frame.items) > slots:
        raise ValueError(f"a fetch answer holds at most {slots} items")
    size = slot_length(params)
    parts = [_HEAD, b"\x11", _REPLY_HEAD.pack(frame.request_id, len(frame.items), frame.remaining)]
    for item in frame.items:
        slot = _SLOT_HEAD.pack(item.item_id, item.kind, item.surb_id or bytes(ID_BYTES),
                               len(item.payload)) + item.payload
        if len(slot) > size:
            raise ValueError("a mailbox item does not fit a fetch slot")
        parts.append(slot + crypto.random_bytes(size - len(slot)))
    # Empty slots are random bytes: inside CURVE they look like any other slot.
    parts.append(crypto.random_bytes(size * (slots - len(frame.items))))
    return b"".join(parts)


# ---------------------------------------------------------------------------- decoding


def decode(data: bytes, *, params: Geometry, slots: int) -> Frame:
    """Parse one frame; raises WireError (and nothing else) if it is not a valid frame."""
    if len(data) < 2:
        raise WireError(DropReason.BAD_FRAME)
    if data[0] != WIRE_VERSION:
        raise WireError(DropReason.BAD_VERSION)
    kind, body = data[1], data[2:]
    if kind == FrameType.PACKET:
        if len(body) != params.packet_length:
            raise WireError(DropReason.WRONG_SIZE)
        return Packet(body)
    if kind == FrameType.HEARTBEAT:
        if body:
            raise WireError(DropReason.BAD_FRAME)
        return Heartbeat()
    if kind == FrameType.RELAY:
        if len(body) != ID_BYTES + params.packet_length:
            raise WireError(DropReason.WRONG_SIZE)
        return Relay(body[:ID_BYTES], body[ID_BYTES:])
    if kind == FrameType.FETCH_REPLY:
        return _decode_fetch_reply(data, params, slots)
    if kind not in _CONTROL:
        raise WireError(DropReason.BAD_FRAME)
    if len(body) > MAX_CONTROL_BODY:
        raise WireError(DropReason.WRONG_SIZE)
    try:
        fields = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
        frame: Frame = _CONTROL[kind](fields)
        return frame
    except WireError:
        raise
    except Exception:  # msgpack raises many types; a peer's bytes must not choose ours
        raise WireError(DropReason.BAD_FRAME) from None


def _decode_fetch_reply(data: bytes, params: Geometry, slots: int) -> FetchReply:
    if len(data) != fetch_reply_length(params, slots):
        raise WireError(DropReason.WRONG_SIZE)
    request_id, count, remaining = _REPLY_HEAD.unpack_from(data, 2)
    if count > slots:
        raise WireError(DropReason.BAD_FRAME)
    size, offset = slot_length(params), 2 + _REPLY_HEAD.size
    items = []
    for i in range(count):
        start = offset + i * size
        item_id, kind, surb_id, length = _SLOT_HEAD.unpack_from(data, start)
        if kind not in (ItemKind.MESSAGE, ItemKind.REPLY) or length > size - _SLOT_HEAD.size:
            raise WireError(DropReason.BAD_FRAME)
        payload = data[start + _SLOT_HEAD.size:start + _SLOT_HEAD.size + length]
        items.append(MailboxItem(item_id, ItemKind(kind), surb_id, payload))
    return FetchReply(request_id, tuple(items), remaining)


def _fields(value: object, count: int) -> list[Any]:
    if not isinstance(value, list) or len(value) != count:
        raise WireError(DropReason.BAD_FRAME)
    return value


def _u64(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise WireError(DropReason.BAD_FRAME)
    return value


def _key(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise WireError(DropReason.BAD_FRAME)
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise WireError(DropReason.BAD_FRAME)
    return value


def _fetch(value: object) -> Fetch:
    return Fetch(_u64(_fields(value, 1)[0]))


def _fetch_ack(value: object) -> FetchAck:
    request_id, ids = _fields(value, 2)
    if not isinstance(ids, list) or len(ids) > MAX_ACK_IDS:
        raise WireError(DropReason.BAD_FRAME)
    return FetchAck(_u64(request_id), tuple(_u64(i) for i in ids))


def _fetch_acked(value: object) -> FetchAcked:
    request_id, deleted = _fields(value, 2)
    return FetchAcked(_u64(request_id), _u64(deleted))


def _register(value: object) -> Register:
    name, public_key, curve_public = _fields(value, 3)
    return Register(_text(name), _key(public_key), _key(curve_public))


def _registered(value: object) -> Registered:
    return Registered(_text(_fields(value, 1)[0]))


def _error(value: object) -> Error:
    code, text = _fields(value, 2)
    return Error(_text(code), _text(text))


_CONTROL: dict[int, Any] = {
    FrameType.FETCH: _fetch, FrameType.FETCH_ACK: _fetch_ack, FrameType.FETCH_ACKED: _fetch_acked,
    FrameType.REGISTER: _register, FrameType.REGISTERED: _registered, FrameType.ERROR: _error,
}
