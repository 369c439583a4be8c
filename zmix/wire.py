"""Link frames between nodes and between clients and providers (docs/protocol.md).

A frame is one ZeroMQ message part: ``version (0x01) || type (1 byte) || body``. PACKET, RELAY
and FETCH_REPLY bodies are fixed binary layouts (the hot path, and a fetch answer whose size must
not depend on how much mail waited); the small control frames carry msgpack bodies of bounded
size. This is the only module that imports msgpack.

``decode`` checks the length, the version and the type before anything else, unpacks msgpack
with strict limits, checks every field's type and range, and turns every failure, msgpack's
included, into one :class:`WireError` whatever the bytes. ``encode`` refuses, with
:class:`LocalMisuse`, any frame that ``decode`` would refuse, so our own bugs fail at the sender.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from zmix import crypto
from zmix.errors import DropReason, LocalMisuse, WireError

WIRE_VERSION = 1
ID_BYTES = 16  # node, client and SURB ids
KEY_BYTES = 32  # X25519 and CURVE public keys
MAX_ACK_IDS = 1024  # item ids in one FETCH_ACK
MAX_TEXT_BYTES = 256  # UTF-8 bytes of a name, an error code or an error text
MAX_SLOTS = 255  # a FETCH_REPLY's item count is one byte
# The largest control body: a FETCH_ACK of MAX_ACK_IDS ids is 1 + 9 + 3 + 1024 * 9 = 9,229 bytes.
MAX_CONTROL_BODY = 16 * 1024
_U32 = 2**32
_U64 = 2**64


class Geometry(Protocol):
    """The Sphinx lengths the wire needs (``zmix.sphinx.SphinxParams`` has them)."""

    @property
    def packet_length(self) -> int: ...
    @property
    def payload_length(self) -> int: ...
    @property
    def max_message_length(self) -> int: ...
    @property
    def max_reply_length(self) -> int: ...


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
    REPLY = 2  # a SURB reply: the Sphinx payload, still encrypted for the SURB's creator


@dataclass(frozen=True, slots=True)
class Packet:
    """A Sphinx packet for the receiving node to process; exactly ``packet_length`` bytes."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing but proof of life (any frame counts as one)."""


@dataclass(frozen=True, slots=True)
class Relay:
    """Client to its provider: pass ``packet`` unchanged to ``first_hop`` (a SURB answer whose
    first hop is a mixnode, which does not admit clients)."""

    first_hop: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    """Client to its provider: send me the oldest items of my mailbox."""

    request_id: int


@dataclass(frozen=True, slots=True)
class MailboxItem:
    """One stored item as a client fetches it; ``surb_id`` is 16 zero bytes for a MESSAGE."""

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

    curve_public: bytes
    public_key: bytes
    name: str


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

_PACKET_HEAD = bytes([WIRE_VERSION, FrameType.PACKET])
_HEARTBEAT = bytes([WIRE_VERSION, FrameType.HEARTBEAT])
_RELAY_HEAD = bytes([WIRE_VERSION, FrameType.RELAY])
_FETCH_REPLY_HEAD = bytes([WIRE_VERSION, FrameType.FETCH_REPLY])
_REPLY_HEAD = struct.Struct(">QBI")  # request_id u64, count u8, remaining u32
_SLOT_HEAD = struct.Struct(">QB16sI")  # item_id u64, kind u8, surb_id 16, payload length u32
_NO_SURB = bytes(ID_BYTES)
_PACKET, _HEARTBEAT_TYPE, _RELAY, _FETCH_REPLY = 0x01, 0x02, 0x03, 0x11  # plain ints: fast tests


def slot_length(params: Geometry) -> int:
    """Return the bytes one fetch-answer slot takes: a 29-byte header and room for the largest
    item, a message body (``max_message_length``) or a stored SURB reply (the whole encrypted
    Sphinx payload, ``payload_length`` bytes)."""
    largest = max(params.max_message_length, params.max_reply_length, params.payload_length)
    return _SLOT_HEAD.size + largest


def node_frame_limit(params: Geometry) -> int:
    """Return the length of the longest frame a node accepts (a RELAY, or a control frame of
    the largest body): libzmq drops a connection that announces a longer one before reading it,
    so no peer can make a node buffer more."""
    return 2 + max(ID_BYTES + params.packet_length, MAX_CONTROL_BODY)


def client_frame_limit(params: Geometry, slots: int) -> int:
    """Return the length of the longest frame a client accepts from its provider (a fetch
    answer, or a control frame of the largest body)."""
    return max(fetch_reply_length(params, slots), 2 + MAX_CONTROL_BODY)


def fetch_reply_length(params: Geometry, slots: int) -> int:
    """Return the exact length of every FETCH_REPLY frame for this geometry and slot count."""
    return 2 + _REPLY_HEAD.size + slots * slot_length(params)


# ---------------------------------------------------------------------------- encoding


def encode(frame: Frame, *, params: Geometry, slots: int) -> bytes:
    """Return the bytes of ``frame``.

    Raises :class:`LocalMisuse` if the frame breaks a size or range rule of docs/protocol.md
    (a packet of the wrong length, too many ack ids, an over-long name ...).
    """
    if isinstance(frame, Packet):
        return encode_packet(frame.packet, params=params)
    if isinstance(frame, Heartbeat):
        return _HEARTBEAT
    if isinstance(frame, Relay):
        _need(len(frame.first_hop) == ID_BYTES, "a relay's first hop is a 16-byte id")
        _need(len(frame.packet) == params.packet_length, "a relayed packet has the wrong length")
        return _RELAY_HEAD + frame.first_hop + frame.packet
    if isinstance(frame, FetchReply):
        return _encode_fetch_reply(frame, params, slots)
    kind, body = _control_body(frame)
    try:
        packed: bytes = msgpack.packb(body, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise LocalMisuse(f"cannot encode {type(frame).__name__}: {exc}") from None
    return bytes([WIRE_VERSION, kind]) + packed


def encode_packet(packet: bytes, *, params: Geometry) -> bytes:
    """Return the PACKET frame of ``packet``: ``encode(Packet(packet))`` for the node loop's hot
    path, which has a packet and no frame object. Raises :class:`LocalMisuse` for a packet of
    the wrong length."""
    if len(packet) != params.packet_length:
        raise LocalMisuse(f"a packet is {params.packet_length} bytes, got {len(packet)}")
    return _PACKET_HEAD + packet


def _need(condition: bool, problem: str) -> None:
    if not condition:
        raise LocalMisuse(problem)


def _check_u64(value: int, name: str) -> int:
    _need(not isinstance(value, bool) and isinstance(value, int) and 0 <= value < _U64,
          f"{name} must be an integer in 0..2**64-1")
    return value


def _check_text(value: str, name: str) -> str:
    try:
        size = len(value.encode("utf-8"))
    except (AttributeError, UnicodeError):
        raise LocalMisuse(f"{name} must be a UTF-8 encodable str") from None
    _need(size <= MAX_TEXT_BYTES, f"{name} is at most {MAX_TEXT_BYTES} bytes of UTF-8")
    return value


def _check_key(value: bytes, name: str) -> bytes:
    _need(isinstance(value, bytes) and len(value) == KEY_BYTES, f"{name} must be 32 bytes")
    return value


def _control_body(frame: Frame) -> tuple[FrameType, list[Any]]:
    if isinstance(frame, Fetch):
        return FrameType.FETCH, [_check_u64(frame.request_id, "request_id")]
    if isinstance(frame, FetchAck):
        _need(len(frame.item_ids) <= MAX_ACK_IDS, f"an ack holds at most {MAX_ACK_IDS} ids")
        ids = [_check_u64(i, "item_id") for i in frame.item_ids]
        return FrameType.FETCH_ACK, [_check_u64(frame.request_id, "request_id"), ids]
    if isinstance(frame, FetchAcked):
        return FrameType.FETCH_ACKED, [_check_u64(frame.request_id, "request_id"),
                                       _check_u64(frame.deleted, "deleted")]
    if isinstance(frame, Register):
        return FrameType.REGISTER, [_check_key(frame.curve_public, "curve_public"),
                                    _check_key(frame.public_key, "public_key"),
                                    _check_text(frame.name, "name")]
    if isinstance(frame, Registered):
        return FrameType.REGISTERED, [_check_text(frame.name, "name")]
    if isinstance(frame, Error):
        return FrameType.ERROR, [_check_text(frame.code, "code"), _check_text(frame.text, "text")]
    raise LocalMisuse(f"not a frame: {frame!r}")


def _encode_fetch_reply(frame: FetchReply, params: Geometry, slots: int) -> bytes:
    _need(0 <= slots <= MAX_SLOTS, f"slots must be 0..{MAX_SLOTS}")
    _need(len(frame.items) <= slots, f"a fetch answer holds at most {slots} items")
    _need(0 <= frame.remaining < _U32, "remaining must fit 32 bits")
    size = slot_length(params)
    parts = [_FETCH_REPLY_HEAD, _REPLY_HEAD.pack(_check_u64(frame.request_id, "request_id"),
                                                 len(frame.items), frame.remaining)]
    for item in frame.items:
        _need(len(item.surb_id) in (0, ID_BYTES), "a surb_id is 16 bytes (or empty: zeros)")
        _need(item.kind in (ItemKind.MESSAGE, ItemKind.REPLY), "unknown item kind")
        _need(len(item.payload) <= size - _SLOT_HEAD.size, "a mailbox item does not fit a slot")
        head = _SLOT_HEAD.pack(_check_u64(item.item_id, "item_id"), item.kind,
                               item.surb_id or _NO_SURB, len(item.payload))
        parts += (head, item.payload)
        parts.append(crypto.random_bytes(size - len(head) - len(item.payload)))
    # Empty slots are random bytes too: inside CURVE they look like any other slot.
    parts.append(crypto.random_bytes(size * (slots - len(frame.items))))
    return b"".join(parts)


# ---------------------------------------------------------------------------- decoding


def packet_of(data: bytes, *, params: Geometry) -> bytes | None:
    """Return the Sphinx packet if ``data`` is a well-formed PACKET frame, else None (then
    :func:`decode` says what it is, or why it is refused). The node loop's hot path: it looks
    at the two head bytes and the length, exactly as :func:`decode` does, and builds no frame
    object."""
    if len(data) == 2 + params.packet_length and data[:2] == _PACKET_HEAD:
        return data[2:]
    return None


def decode(data: bytes, *, params: Geometry, slots: int) -> Frame:
    """Parse one frame; raises :class:`WireError` (and nothing else) if ``data`` is not a valid
    frame: reason BAD_VERSION for another version, WRONG_SIZE for a body of the wrong length,
    BAD_FRAME for anything else."""
    if len(data) < 2:
        raise WireError(DropReason.BAD_FRAME)
    if data[0] != WIRE_VERSION:
        raise WireError(DropReason.BAD_VERSION)
    kind = data[1]
    if kind == _PACKET:  # the hot path first
        if len(data) != 2 + params.packet_length:
            raise WireError(DropReason.WRONG_SIZE)
        return Packet(data[2:])
    if kind == _HEARTBEAT_TYPE:
        if len(data) != 2:
            raise WireError(DropReason.WRONG_SIZE)
        return Heartbeat()
    if kind == _RELAY:
        if len(data) != 2 + ID_BYTES + params.packet_length:
            raise WireError(DropReason.WRONG_SIZE)
        return Relay(data[2:2 + ID_BYTES], data[2 + ID_BYTES:])
    if kind == _FETCH_REPLY:
        return _decode_fetch_reply(data, params, slots)
    parse = _CONTROL.get(kind)
    if parse is None:
        raise WireError(DropReason.BAD_FRAME)
    if len(data) - 2 > MAX_CONTROL_BODY:
        raise WireError(DropReason.WRONG_SIZE)
    return parse(_unpack(data[2:]))


def _unpack(body: bytes) -> object:
    """Unpack a control body with limits no valid frame reaches; any failure is BAD_FRAME."""
    try:
        return msgpack.unpackb(
            body, raw=False, use_list=True, strict_map_key=True, max_str_len=MAX_TEXT_BYTES,
            max_bin_len=KEY_BYTES, max_array_len=MAX_ACK_IDS, max_map_len=0, max_ext_len=0)
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
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _U64:
        raise WireError(DropReason.BAD_FRAME)
    return value


def _key(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != KEY_BYTES:
        raise WireError(DropReason.BAD_FRAME)
    return value


def _text(value: object) -> str:
    # msgpack's max_str_len already bounds the UTF-8 length.
    if not isinstance(value, str):
        raise WireError(DropReason.BAD_FRAME)
    return value


def _fetch(value: object) -> Fetch:
    return Fetch(_u64(_fields(value, 1)[0]))


def _fetch_ack(value: object) -> FetchAck:
    request_id, ids = _fields(value, 2)
    if not isinstance(ids, list):  # max_array_len bounds its length
        raise WireError(DropReason.BAD_FRAME)
    return FetchAck(_u64(request_id), tuple(_u64(i) for i in ids))


def _fetch_acked(value: object) -> FetchAcked:
    request_id, deleted = _fields(value, 2)
    return FetchAcked(_u64(request_id), _u64(deleted))


def _register(value: object) -> Register:
    curve_public, public_key, name = _fields(value, 3)
    return Register(_key(curve_public), _key(public_key), _text(name))


def _registered(value: object) -> Registered:
    return Registered(_text(_fields(value, 1)[0]))


def _error(value: object) -> Error:
    code, text = _fields(value, 2)
    return Error(_text(code), _text(text))


_CONTROL: dict[int, Callable[[object], Frame]] = {
    FrameType.FETCH: _fetch, FrameType.FETCH_ACK: _fetch_ack, FrameType.FETCH_ACKED: _fetch_acked,
    FrameType.REGISTER: _register, FrameType.REGISTERED: _registered, FrameType.ERROR: _error,
}
