"""Link frames between nodes and between clients and providers (docs/protocol.md).

A frame is one ZeroMQ message part: ``version (0x03) || type (1 byte) || body``. Every frame a
client sends (PACKET, RELAY, FETCH, REGISTER) is exactly :func:`client_frame_length` bytes, its
content followed by zero padding, so that a watcher of the encrypted link cannot tell them apart;
nodes send each other PACKETs of ``2 + packet_length`` bytes, PACKETS frames of 2 to
:data:`MAX_PACKETS_PER_FRAME` packets back to back (what a node sends one next hop at once), and
HEARTBEATs. The directory authorities' frames (below) keep their own version, 0x02.
FETCH_REPLY has one length whatever it holds. Only the provider's answers to a registration
(REGISTERED, ERROR) carry msgpack bodies of bounded size. This is the only module that
imports msgpack.

``decode`` checks the length, the version and the type before anything else, unpacks msgpack
with strict limits, checks every field's type and range, and turns every failure, msgpack's
included, into one :class:`WireError` whatever the bytes. ``encode`` refuses, with
:class:`LocalMisuse`, any frame that ``decode`` would refuse, so our own bugs fail at the sender.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from zmix import crypto
from zmix.errors import DropReason, LocalMisuse, WireError

# 2: one length for every client frame, acknowledgements inside FETCH; 3: PACKETS between nodes
WIRE_VERSION = 3
Buffer = bytes | bytearray | memoryview  # a message as read (a memoryview: without a copy)
AUTHORITY_VERSION = 2  # the authority frames' first byte (docs/pki.md); they did not change
# The most Sphinx packets one PACKETS frame carries: 73.5 KB at the default geometry (78.6 on
# kem1); a saturated node fills them (31.8 packets a frame in zmix-bench node; docs/protocol.md).
MAX_PACKETS_PER_FRAME = 32
ID_BYTES = 16  # node, client and SURB ids
KEY_BYTES = 32  # X25519 and CURVE public keys
MAX_TEXT_BYTES = 256  # UTF-8 bytes of a name, an error code or an error text
MAX_SLOTS = 255  # a FETCH_REPLY's item count is one byte
# The largest msgpack body: an ERROR of two 256-byte texts is 1 + 2 * (3 + 256) = 519 bytes.
MAX_CONTROL_BODY = 1024
# The longest REGISTER body: two keys, a u16 name length and a name of MAX_TEXT_BYTES.
MAX_REGISTER_BODY = 2 * KEY_BYTES + 2 + MAX_TEXT_BYTES
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
    PACKETS = 0x04  # version 3
    FETCH = 0x10
    FETCH_REPLY = 0x11
    # 0x12 and 0x13 were version 1's FETCH_ACK and FETCH_ACKED: retired, never reused.
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
class Packets:
    """Node to node: 2 to :data:`MAX_PACKETS_PER_FRAME` Sphinx packets for the receiving node to
    process, each exactly ``packet_length`` bytes, in the order they were sent."""

    packets: tuple[bytes, ...]


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
    """Client to its provider: delete the items ``ack_ids`` (they are safe with me), then send
    me the oldest items of my mailbox."""

    request_id: int
    ack_ids: tuple[int, ...] = ()


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


Frame = (Packet | Packets | Heartbeat | Relay | Fetch | FetchReply | Register | Registered
         | Error)
ClientFrame = Packet | Relay | Fetch | Register  # what a client sends: one length on the wire

_PACKET_HEAD = bytes([WIRE_VERSION, FrameType.PACKET])
_HEARTBEAT = bytes([WIRE_VERSION, FrameType.HEARTBEAT])
_RELAY_HEAD = bytes([WIRE_VERSION, FrameType.RELAY])
_PACKETS_HEAD = bytes([WIRE_VERSION, FrameType.PACKETS])
_FETCH_HEAD = bytes([WIRE_VERSION, FrameType.FETCH])
_REGISTER_HEAD = bytes([WIRE_VERSION, FrameType.REGISTER])
_FETCH_REPLY_HEAD = bytes([WIRE_VERSION, FrameType.FETCH_REPLY])
_FETCH_FIELDS = struct.Struct(">QH")  # request_id u64, ack count u16
_ACK_ID = struct.Struct(">Q")
_REGISTER_FIELDS = struct.Struct(">32s32sH")  # curve_public, public_key, name length u16
_REPLY_HEAD = struct.Struct(">QBI")  # request_id u64, count u8, remaining u32
_SLOT_HEAD = struct.Struct(">QB16sI")  # item_id u64, kind u8, surb_id 16, payload length u32
_NO_SURB = bytes(ID_BYTES)
_PACKET, _HEARTBEAT_TYPE, _PACKETS, _FETCH_REPLY = 0x01, 0x02, 0x04, 0x11  # plain ints: fast tests


def slot_length(params: Geometry) -> int:
    """Return the bytes one fetch-answer slot takes: a 29-byte header and room for the largest
    item, a message body (``max_message_length``) or a stored SURB reply (the whole encrypted
    Sphinx payload, ``payload_length`` bytes)."""
    largest = max(params.max_message_length, params.max_reply_length, params.payload_length)
    return _SLOT_HEAD.size + largest


def client_frame_length(params: Geometry) -> int:
    """Return the length of every frame a client sends (PACKET, RELAY, FETCH, REGISTER): that of
    the longest, a RELAY (first hop and packet) or, for tiny packets, a REGISTER of the longest
    name. Every shorter one is padded to it, so a watcher of the link learns nothing from sizes."""
    return 2 + max(ID_BYTES + params.packet_length, MAX_REGISTER_BODY)


def fetch_ack_capacity(params: Geometry) -> int:
    """Return how many item ids one FETCH can acknowledge (287 at the default geometry, at least
    85 in any topology)."""
    return (client_frame_length(params) - 2 - _FETCH_FIELDS.size) // _ACK_ID.size


def node_frame_limit(params: Geometry) -> int:
    """Return the length of the longest frame a node accepts (a PACKETS frame of
    :data:`MAX_PACKETS_PER_FRAME` packets; a client frame if the packets are tiny): libzmq drops
    a connection that announces a longer one before reading it, so no peer can make a node
    buffer more."""
    return max(client_frame_length(params), packets_frame_length(params, MAX_PACKETS_PER_FRAME))


def packets_frame_length(params: Geometry, count: int) -> int:
    """Return the length of a PACKETS frame of ``count`` packets."""
    return 2 + count * params.packet_length


def client_frame_limit(params: Geometry, slots: int) -> int:
    """Return the length of the longest frame a client accepts from its provider (a fetch
    answer, or a control frame of the largest body)."""
    return max(fetch_reply_length(params, slots), 2 + MAX_CONTROL_BODY)


def fetch_reply_length(params: Geometry, slots: int) -> int:
    """Return the exact length of every FETCH_REPLY frame for this geometry and slot count."""
    return 2 + _REPLY_HEAD.size + slots * slot_length(params)


# ---------------------------------------------------------------------------- encoding


def encode(frame: Frame, *, params: Geometry, slots: int) -> bytes:
    """Return the bytes of ``frame``; a Packet in the form nodes send each other
    (``2 + packet_length`` bytes; a client uses :func:`encode_client`).

    Raises :class:`LocalMisuse` if the frame breaks a size or range rule of docs/protocol.md
    (a packet of the wrong length, too many ack ids, an over-long name ...).
    """
    if isinstance(frame, Packet):
        return encode_packet(frame.packet, params=params)
    if isinstance(frame, Packets):
        _need(2 <= len(frame.packets) <= MAX_PACKETS_PER_FRAME,
              f"a PACKETS frame carries 2 to {MAX_PACKETS_PER_FRAME} packets")
        return encode_packets(list(frame.packets), params=params)
    if isinstance(frame, Heartbeat):
        return _HEARTBEAT
    if isinstance(frame, (Relay, Fetch, Register)):
        return encode_client(frame, params=params)
    if isinstance(frame, FetchReply):
        return _encode_fetch_reply(frame, params, slots)
    kind, body = _control_body(frame)
    try:
        packed: bytes = msgpack.packb(body, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise LocalMisuse(f"cannot encode {type(frame).__name__}: {exc}") from None
    return bytes([WIRE_VERSION, kind]) + packed


def encode_packet(packet: bytes, *, params: Geometry) -> bytes:
    """Return the PACKET frame of ``packet`` as nodes send it to each other: ``encode(Packet(
    packet))`` for the node loop's hot path, which has a packet and no frame object. Raises
    :class:`LocalMisuse` for a packet of the wrong length."""
    if len(packet) != params.packet_length:
        raise LocalMisuse(f"a packet is {params.packet_length} bytes, got {len(packet)}")
    return _PACKET_HEAD + packet


def encode_packets(packets: Sequence[Buffer], *, params: Geometry) -> bytes:
    """Return the one frame that carries ``packets`` (1 to :data:`MAX_PACKETS_PER_FRAME`, each
    ``packet_length`` bytes) from a node to another: a PACKET for one, a PACKETS frame for more.
    The node loop's hot path; the packets may be any bytes-like objects. Raises
    :class:`LocalMisuse` for a count out of range or a packet of the wrong length."""
    length = params.packet_length
    # A memoryview's len() is its bytes only if it is one of bytes: the views the node sends
    # are (memoryview.nbytes would be right for any); others are refused by the join below.
    if not 1 <= len(packets) <= MAX_PACKETS_PER_FRAME or set(map(len, packets)) != {length}:
        raise LocalMisuse(f"a frame carries 1 to {MAX_PACKETS_PER_FRAME} packets of {length} "
                          "bytes")
    head = _PACKET_HEAD if len(packets) == 1 else _PACKETS_HEAD
    frame = head + b"".join(packets)
    if len(frame) != 2 + len(packets) * length:  # a view of items wider than a byte
        raise LocalMisuse(f"a frame carries packets of {length} bytes")
    return frame


def encode_client(frame: ClientFrame, *, params: Geometry) -> bytes:
    """Return the bytes of a frame a client sends to its provider: always exactly
    :func:`client_frame_length` bytes, the content followed by zeros.

    Raises :class:`LocalMisuse` for a frame a client does not send (a heartbeat, an answer) and
    for any size or range rule the frame breaks (more ack ids than :func:`fetch_ack_capacity`,
    a name over 256 bytes of UTF-8 ...).
    """
    if isinstance(frame, Packet):
        content = [encode_packet(frame.packet, params=params)]
    elif isinstance(frame, Relay):
        _need(len(frame.first_hop) == ID_BYTES, "a relay's first hop is a 16-byte id")
        _need(len(frame.packet) == params.packet_length, "a relayed packet has the wrong length")
        content = [_RELAY_HEAD, frame.first_hop, frame.packet]
    elif isinstance(frame, Fetch):
        content = _fetch_content(frame, params)
    elif isinstance(frame, Register):
        content = _register_content(frame)
    else:
        raise LocalMisuse(f"a client does not send {type(frame).__name__}")
    used = sum(len(part) for part in content)
    return b"".join(content) + bytes(client_frame_length(params) - used)


def _fetch_content(frame: Fetch, params: Geometry) -> list[bytes]:
    capacity = fetch_ack_capacity(params)
    _need(len(frame.ack_ids) <= capacity, f"a FETCH acknowledges at most {capacity} items")
    ids = [_ACK_ID.pack(_check_u64(i, "item_id")) for i in frame.ack_ids]
    head = _FETCH_FIELDS.pack(_check_u64(frame.request_id, "request_id"), len(ids))
    return [_FETCH_HEAD, head, *ids]


def _register_content(frame: Register) -> list[bytes]:
    name = _check_text(frame.name, "name").encode("utf-8")
    fields = _REGISTER_FIELDS.pack(_check_key(frame.curve_public, "curve_public"),
                                   _check_key(frame.public_key, "public_key"), len(name))
    return [_REGISTER_HEAD, fields, name]


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
    at the two head bytes, the length and a client's padding, exactly as :func:`decode` does,
    and builds no frame object."""
    end = 2 + params.packet_length
    if len(data) == end and data[:2] == _PACKET_HEAD:  # from a node: no padding
        return data[2:]
    if (data[:2] == _PACKET_HEAD and len(data) == client_frame_length(params)
            and data.count(0, end) == len(data) - end):  # from a client: zeros after the packet
        return data[2:end]
    return None


def packets_count(data: Buffer, *, params: Geometry) -> int:
    """Return how many Sphinx packets ``data`` carries if it is a well-formed PACKETS frame
    (they are ``data[2:]``, back to back), else 0 (then :func:`decode` says why it is refused).
    The node loop's hot path, as :func:`packet_of`: it looks at the head and the length only,
    so the node hands the packets on as a view of the message, copying none of them."""
    count, rest = divmod(len(data) - 2, params.packet_length)
    if rest or not 2 <= count <= MAX_PACKETS_PER_FRAME or data[:2] != _PACKETS_HEAD:
        return 0
    return count


def decode(data: bytes, *, params: Geometry, slots: int) -> Frame:
    """Parse one frame; raises :class:`WireError` (and nothing else) if ``data`` is not a valid
    frame: reason BAD_VERSION for another version, WRONG_SIZE for a frame of the wrong length,
    BAD_FRAME for anything else (a client frame's padding that is not zeros included)."""
    if len(data) < 2:
        raise WireError(DropReason.BAD_FRAME)
    if data[0] != WIRE_VERSION:
        raise WireError(DropReason.BAD_VERSION)
    kind = data[1]
    if kind == _PACKET:  # the hot path first
        return _decode_packet(data, params)
    if kind == _PACKETS:
        return Packets(tuple(_packets(data, params)))
    if kind == _HEARTBEAT_TYPE:
        if len(data) != 2:
            raise WireError(DropReason.WRONG_SIZE)
        return Heartbeat()
    if kind == _FETCH_REPLY:
        return _decode_fetch_reply(data, params, slots)
    client = _CLIENT.get(kind)
    if client is not None:
        if len(data) != client_frame_length(params):
            raise WireError(DropReason.WRONG_SIZE)
        return client(data, params)
    parse = _CONTROL.get(kind)
    if parse is None:
        raise WireError(DropReason.BAD_FRAME)
    if len(data) - 2 > MAX_CONTROL_BODY:
        raise WireError(DropReason.WRONG_SIZE)
    return parse(_unpack(data[2:]))


def _decode_packet(data: bytes, params: Geometry) -> Packet:
    end = 2 + params.packet_length
    if len(data) == end:
        return Packet(data[2:])
    if len(data) != client_frame_length(params):
        raise WireError(DropReason.WRONG_SIZE)
    return Packet(_padded(data, end)[2:])


def _packets(data: bytes, params: Geometry) -> list[bytes]:
    length = params.packet_length
    count, rest = divmod(len(data) - 2, length)
    if rest or not 2 <= count <= MAX_PACKETS_PER_FRAME:
        raise WireError(DropReason.WRONG_SIZE)
    return [data[at:at + length] for at in range(2, len(data), length)]


def _padded(data: bytes, end: int) -> bytes:
    """Return ``data[:end]`` if every byte after it is zero (a client frame's padding); raise
    BAD_FRAME otherwise."""
    if end > len(data) or data.count(0, end) != len(data) - end:
        raise WireError(DropReason.BAD_FRAME)
    return data[:end]


def _decode_relay(data: bytes, params: Geometry) -> Relay:
    body = _padded(data, 2 + ID_BYTES + params.packet_length)
    return Relay(body[2:2 + ID_BYTES], body[2 + ID_BYTES:])


def _decode_fetch(data: bytes, params: Geometry) -> Fetch:
    request_id, count = _FETCH_FIELDS.unpack_from(data, 2)
    start = 2 + _FETCH_FIELDS.size
    if count > fetch_ack_capacity(params):
        raise WireError(DropReason.BAD_FRAME)
    body = _padded(data, start + count * _ACK_ID.size)
    ids = tuple(i for (i,) in _ACK_ID.iter_unpack(body[start:]))
    return Fetch(request_id, ids)


def _decode_register(data: bytes, params: Geometry) -> Register:
    curve_public, public_key, length = _REGISTER_FIELDS.unpack_from(data, 2)
    start = 2 + _REGISTER_FIELDS.size
    if length > MAX_TEXT_BYTES:
        raise WireError(DropReason.BAD_FRAME)
    body = _padded(data, start + length)
    try:
        name = body[start:].decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(DropReason.BAD_FRAME) from None
    return Register(curve_public, public_key, name)


def _unpack(body: bytes) -> object:
    """Unpack a control body with limits no valid frame reaches; any failure is BAD_FRAME."""
    try:
        return msgpack.unpackb(
            body, raw=False, use_list=True, strict_map_key=True, max_str_len=MAX_TEXT_BYTES,
            max_bin_len=0, max_array_len=2, max_map_len=0, max_ext_len=0)
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


def _text(value: object) -> str:
    # msgpack's max_str_len already bounds the UTF-8 length.
    if not isinstance(value, str):
        raise WireError(DropReason.BAD_FRAME)
    return value


def _registered(value: object) -> Registered:
    return Registered(_text(_fields(value, 1)[0]))


def _error(value: object) -> Error:
    code, text = _fields(value, 2)
    return Error(_text(code), _text(text))


# Client frames: exactly client_frame_length bytes, checked before these run.
_CLIENT: dict[int, Callable[[bytes, Geometry], Frame]] = {
    FrameType.RELAY: _decode_relay, FrameType.FETCH: _decode_fetch,
    FrameType.REGISTER: _decode_register,
}
_CONTROL: dict[int, Callable[[object], Frame]] = {
    FrameType.REGISTERED: _registered, FrameType.ERROR: _error,
}


# ---------------------------------------------------------------------------- directory authority
#
# Nodes and clients talk to a directory authority (docs/pki.md, "Protocol") over their own CURVE
# link, with frames of the same head (version, type) and a msgpack array body. Unlike the link
# frames above they are not padded: everything they carry is public and signed.

# The longest signed descriptor and signed document (zmix.pki's bounds: a descriptor of 16 KiB; a
# document body of 8 MiB, its 9 bytes of framing and 255 signatures of 96 bytes). In practice a
# descriptor is under 1 KiB and a document about 500 bytes per node.
MAX_DESCRIPTOR_BYTES = 16 * 1024
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024 + 9 + 255 * 96
_I64 = 2**63
# The longest frame an authority accepts (an UPLOAD of the longest descriptor: the array head,
# a u64 and a bin32 head take at most 15 bytes) and the longest a node or client accepts from one
# (a DOCUMENT answer of the longest document, plus at most 24 bytes of heads and numbers).
AUTHORITY_REQUEST_LIMIT = 2 + 32 + MAX_DESCRIPTOR_BYTES
AUTHORITY_ANSWER_LIMIT = 2 + 64 + MAX_DOCUMENT_BYTES


class AuthorityType(enum.IntEnum):
    """The second byte of an authority frame (0x30-0x3F; the link frames use none of them)."""

    UPLOAD = 0x30
    UPLOAD_ANSWER = 0x31
    FETCH_DOCUMENT = 0x32
    DOCUMENT_ANSWER = 0x33


class DocumentStatus(enum.IntEnum):
    """What a DOCUMENT_ANSWER says about the epoch asked for."""

    DOCUMENT = 0  # here is its signed document
    NOT_YET = 1  # not made yet: ask again in retry_after_ms
    UNKNOWN_EPOCH = 2  # too old (deleted) or too far ahead: asking again will not help


@dataclass(frozen=True, slots=True)
class Upload:
    """A node gives an authority its signed descriptor."""

    request_id: int
    descriptor: bytes


@dataclass(frozen=True, slots=True)
class UploadAnswer:
    """The authority kept the descriptor (``accepted``), or refused it for ``reason``."""

    request_id: int
    accepted: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class FetchDocument:
    """A node or client asks for the signed network document of ``epoch``."""

    request_id: int
    epoch: int


@dataclass(frozen=True, slots=True)
class DocumentAnswer:
    """The signed document of ``epoch`` (status DOCUMENT), or why there is none."""

    request_id: int
    epoch: int
    status: DocumentStatus
    document: bytes = b""  # the signed document: only with DOCUMENT
    retry_after_ms: int = 0  # only with NOT_YET: when it should be ready


AuthorityFrame = Upload | UploadAnswer | FetchDocument | DocumentAnswer


def encode_authority(frame: AuthorityFrame) -> bytes:
    """Return the bytes of an authority frame. Raises :class:`LocalMisuse` for a frame that
    :func:`decode_authority` would refuse (a field out of range, a blob too long)."""
    kind, body = _authority_body(frame)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return bytes([AUTHORITY_VERSION, kind]) + packed


def _authority_body(frame: AuthorityFrame) -> tuple[AuthorityType, list[Any]]:
    if isinstance(frame, Upload):
        _need(isinstance(frame.descriptor, bytes)
              and 0 < len(frame.descriptor) <= MAX_DESCRIPTOR_BYTES,
              f"a descriptor is 1 to {MAX_DESCRIPTOR_BYTES} bytes")
        return AuthorityType.UPLOAD, [_check_u64(frame.request_id, "request_id"),
                                      frame.descriptor]
    if isinstance(frame, UploadAnswer):
        _need(isinstance(frame.accepted, bool), "accepted must be a bool")
        _need(frame.accepted == (frame.reason == ""), "a refusal has a reason, an acceptance none")
        return AuthorityType.UPLOAD_ANSWER, [_check_u64(frame.request_id, "request_id"),
                                             frame.accepted, _check_text(frame.reason, "reason")]
    if isinstance(frame, FetchDocument):
        return AuthorityType.FETCH_DOCUMENT, [_check_u64(frame.request_id, "request_id"),
                                              _check_epoch(frame.epoch)]
    if isinstance(frame, DocumentAnswer):
        return AuthorityType.DOCUMENT_ANSWER, _document_answer_body(frame)
    raise LocalMisuse(f"not an authority frame: {frame!r}")


def _document_answer_body(frame: DocumentAnswer) -> list[Any]:
    status = DocumentStatus(frame.status)
    has_document = status is DocumentStatus.DOCUMENT
    _need(isinstance(frame.document, bytes) and (0 < len(frame.document) <= MAX_DOCUMENT_BYTES
                                                 if has_document else frame.document == b""),
          f"a DOCUMENT answer carries 1 to {MAX_DOCUMENT_BYTES} bytes, the others none")
    retry = frame.retry_after_ms
    _need(not isinstance(retry, bool) and isinstance(retry, int) and 0 <= retry < _U32
          and (status is DocumentStatus.NOT_YET or retry == 0),
          "retry_after_ms is a u32, and 0 unless NOT_YET")
    return [_check_u64(frame.request_id, "request_id"), _check_epoch(frame.epoch), int(status),
            frame.document, retry]


def _check_epoch(value: int) -> int:
    _need(not isinstance(value, bool) and isinstance(value, int) and -_I64 <= value < _I64,
          "an epoch is a signed 64-bit integer")
    return value


def decode_authority(data: bytes) -> AuthorityFrame:
    """Parse one authority frame; raises :class:`WireError` (and nothing else) for anything
    else: BAD_VERSION for another version, WRONG_SIZE for a frame over
    :data:`AUTHORITY_ANSWER_LIMIT` bytes, BAD_FRAME for any other fault (an unknown type, a body
    that is not the type's msgpack array, a field of the wrong type or out of range)."""
    if len(data) < 2:
        raise WireError(DropReason.BAD_FRAME)
    if data[0] != AUTHORITY_VERSION:
        raise WireError(DropReason.BAD_VERSION)
    if len(data) > AUTHORITY_ANSWER_LIMIT:
        raise WireError(DropReason.WRONG_SIZE)
    parse = _AUTHORITY.get(data[1])
    if parse is None:
        raise WireError(DropReason.BAD_FRAME)
    try:
        body = msgpack.unpackb(
            data[2:], raw=False, use_list=True, strict_map_key=True, max_str_len=MAX_TEXT_BYTES,
            max_bin_len=MAX_DOCUMENT_BYTES, max_array_len=5, max_map_len=0, max_ext_len=0)
    except Exception:  # msgpack raises many types; a peer's bytes must not choose ours
        raise WireError(DropReason.BAD_FRAME) from None
    return parse(body)


def _u64(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _U64:
        raise WireError(DropReason.BAD_FRAME)
    return value


def _epoch(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -_I64 <= value < _I64:
        raise WireError(DropReason.BAD_FRAME)
    return value


def _blob(value: object, limit: int) -> bytes:
    if not isinstance(value, bytes) or len(value) > limit:
        raise WireError(DropReason.BAD_FRAME)
    return value


def _upload(value: object) -> Upload:
    request_id, descriptor = _fields(value, 2)
    blob = _blob(descriptor, MAX_DESCRIPTOR_BYTES)
    if not blob:
        raise WireError(DropReason.BAD_FRAME)
    return Upload(_u64(request_id), blob)


def _upload_answer(value: object) -> UploadAnswer:
    request_id, accepted, reason = _fields(value, 3)
    if not isinstance(accepted, bool) or accepted != (_text(reason) == ""):
        raise WireError(DropReason.BAD_FRAME)
    return UploadAnswer(_u64(request_id), accepted, reason)


def _fetch_document(value: object) -> FetchDocument:
    request_id, epoch = _fields(value, 2)
    return FetchDocument(_u64(request_id), _epoch(epoch))


def _document_answer(value: object) -> DocumentAnswer:
    request_id, epoch, status, document, retry = _fields(value, 5)
    if isinstance(status, bool) or not isinstance(status, int) or status not in tuple(
            DocumentStatus):
        raise WireError(DropReason.BAD_FRAME)
    kind = DocumentStatus(status)
    blob = _blob(document, MAX_DOCUMENT_BYTES)
    if (kind is DocumentStatus.DOCUMENT) != (blob != b""):
        raise WireError(DropReason.BAD_FRAME)
    if (isinstance(retry, bool) or not isinstance(retry, int) or not 0 <= retry < _U32
            or (kind is not DocumentStatus.NOT_YET and retry != 0)):
        raise WireError(DropReason.BAD_FRAME)
    return DocumentAnswer(_u64(request_id), _epoch(epoch), kind, blob, retry)


_AUTHORITY: dict[int, Callable[[object], AuthorityFrame]] = {
    AuthorityType.UPLOAD: _upload, AuthorityType.UPLOAD_ANSWER: _upload_answer,
    AuthorityType.FETCH_DOCUMENT: _fetch_document,
    AuthorityType.DOCUMENT_ANSWER: _document_answer,
}
