"""The tunnel's messages (docs/tunnel.md, "Messages"), pure: encode and decode, nothing else.

Every tunnel message is the data of one mixnet message of one packet: a fixed header naming the
circuit and the reply-block accounting, then segments (OPEN, OPEN_RESULT, DATA, ACK, FIN, RESET),
each ``type (1) | length (u16) | body``. :func:`decode` checks everything it reads and raises
:class:`FrameError`, the module's one error, for anything that is not a well-formed message.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from zmix.errors import ZmixError

MAGIC = b"ZMXT"
VERSION = 1
CIRCUIT_ID_BYTES = 16
MAX_RANGES = 16  # selective-ack ranges one ACK carries
MAX_HOST_BYTES = 255

FLAG_FROM_EXIT = 0x01  # the exit sent it (through a reply block); else the proxy
FLAG_ANSWER = 0x02  # the sender asks for an answer (an ACK) even if nothing new arrived
FLAG_RESULT_SEEN = 0x04  # proxy -> exit: the proxy has the OPEN_RESULT; stop repeating it
_KNOWN_FLAGS = FLAG_FROM_EXIT | FLAG_ANSWER | FLAG_RESULT_SEEN

# magic (4) | version (1) | flags (1) | circuit (16) | blocks (1) | used (u32) | held (u16)
_HEADER = struct.Struct(">4sBB16sBIH")
HEADER_BYTES = _HEADER.size  # 29
_SEGMENT = struct.Struct(">BH")
SEGMENT_OVERHEAD = _SEGMENT.size  # 3: type and length of every segment
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
DATA_OVERHEAD = SEGMENT_OVERHEAD + 4  # type, length, seq
MAX_DATA = 0xFFFF - 4  # bytes of payload one DATA segment can carry
OPEN_RESULT_BYTES = SEGMENT_OVERHEAD + 1
FIN_BYTES = SEGMENT_OVERHEAD + 4
RESET_BYTES = SEGMENT_OVERHEAD + 1
MAX_SOCKS_CODE = 8


class FrameError(ZmixError):
    """Bytes that carry the tunnel's magic but are not a well-formed tunnel message."""


class SegmentType(enum.IntEnum):
    """The type byte of a segment."""

    OPEN = 1
    OPEN_RESULT = 2
    DATA = 3
    ACK = 4
    FIN = 5
    RESET = 6


class ResetReason(enum.IntEnum):
    """Why a circuit was reset (the RESET segment's byte)."""

    CLOSED = 0  # the circuit ended normally; everything was delivered both ways
    PROTOCOL = 1  # the peer sent something that breaks the protocol
    TIMEOUT = 2  # retransmissions or waiting gave up
    UNKNOWN_CIRCUIT = 3  # no such circuit (never opened, or forgotten)
    ABORTED = 4  # the TCP side closed abruptly (reset, error)
    SEND_FAILED = 5  # the mixnet gave up on one of the circuit's messages
    OVERLOADED = 6  # too many circuits
    SHUTDOWN = 7  # the service is stopping


@dataclass(frozen=True, slots=True)
class Open:
    """Proxy -> exit: connect to ``host`` (a domain name or dotted IPv4) port ``port``."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class OpenResult:
    """Exit -> proxy: the SOCKS5 reply code of the connection attempt (0 = connected)."""

    code: int


@dataclass(frozen=True, slots=True)
class Data:
    """Segment ``seq`` of a stream, carrying ``payload`` (1 byte or more)."""

    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """Every segment below ``cumulative`` arrived, and those in ``ranges`` ([start, end) pairs,
    ascending, above ``cumulative``); the sender may send segments below ``edge``."""

    cumulative: int
    edge: int
    ranges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Fin:
    """The sender's last segment: nothing follows ``seq`` (it takes a sequence number itself)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The circuit is over at once, for ``reason``."""

    reason: ResetReason


Segment = Open | OpenResult | Data | Ack | Fin | Reset


@dataclass(frozen=True, slots=True)
class Message:
    """One tunnel message. ``blocks``: proxy -> exit, the reply blocks the mixnet message
    carries. ``used`` / ``held``: exit -> proxy, the blocks of this circuit the exit has used
    (or found unusable) so far, this message's included, and those it still holds."""

    circuit: bytes
    flags: int = 0
    blocks: int = 0
    used: int = 0
    held: int = 0
    segments: tuple[Segment, ...] = ()

    @property
    def from_exit(self) -> bool:
        """Return True if the exit sent this message."""
        return bool(self.flags & FLAG_FROM_EXIT)


def is_tunnel(data: bytes) -> bool:
    """Return True if ``data`` starts with the tunnel's magic (a tunnel message or a broken one)."""
    return data[:len(MAGIC)] == MAGIC


def ack_bytes(ack: Ack) -> int:
    """Return how many bytes ``ack`` takes in a message."""
    return SEGMENT_OVERHEAD + 8 + 8 * len(ack.ranges)


def encode(message: Message) -> bytes:
    """Return ``message`` as bytes. Raises FrameError if a field is out of range."""
    if len(message.circuit) != CIRCUIT_ID_BYTES or message.flags & ~_KNOWN_FLAGS:
        raise FrameError("bad circuit id or flags")
    try:
        parts = [_HEADER.pack(MAGIC, VERSION, message.flags, message.circuit, message.blocks,
                              message.used, message.held)]
        parts.extend(_encode_segment(segment) for segment in message.segments)
    except struct.error:
        raise FrameError("a field is out of range") from None
    return b"".join(parts)


def _encode_segment(segment: Segment) -> bytes:
    """Return one segment's bytes (type, length, body)."""
    kind, body = _segment_body(segment)
    if len(body) > 0xFFFF:
        raise FrameError("segment too long")
    return _SEGMENT.pack(kind, len(body)) + body


def _segment_body(segment: Segment) -> tuple[int, bytes]:
    """Return a segment's type and body."""
    if isinstance(segment, Open):
        host = segment.host.encode("utf-8")
        if not 1 <= len(host) <= MAX_HOST_BYTES:
            raise FrameError("host of 1 to 255 bytes")
        return SegmentType.OPEN, _U16.pack(segment.port) + host
    if isinstance(segment, OpenResult):
        return SegmentType.OPEN_RESULT, bytes([_socks_code(segment.code)])
    if isinstance(segment, Data):
        if not segment.payload:
            raise FrameError("empty DATA")
        return SegmentType.DATA, _U32.pack(segment.seq) + segment.payload
    if isinstance(segment, Ack):
        _check_ranges(segment)
        body = [struct.pack(">II", segment.cumulative, segment.edge)]
        body.extend(struct.pack(">II", start, end) for start, end in segment.ranges)
        return SegmentType.ACK, b"".join(body)
    if isinstance(segment, Fin):
        return SegmentType.FIN, _U32.pack(segment.seq)
    return SegmentType.RESET, bytes([ResetReason(segment.reason)])


def decode(data: bytes) -> Message:
    """Return the message in ``data``. Raises FrameError for anything malformed: wrong magic,
    version or flags, a truncated or unknown segment, a field out of range, a second OPEN,
    OPEN_RESULT, ACK, FIN or RESET, an OPEN from the exit or an OPEN_RESULT from the proxy."""
    if len(data) < HEADER_BYTES:
        raise FrameError("shorter than the header")
    magic, version, flags, circuit, blocks, used, held = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise FrameError("not a tunnel message of this version")
    if flags & ~_KNOWN_FLAGS:
        raise FrameError("unknown flags")
    segments = _decode_segments(memoryview(data)[HEADER_BYTES:])
    _check_directions(segments, bool(flags & FLAG_FROM_EXIT))
    return Message(circuit, flags, blocks, used, held, segments)


def _decode_segments(view: memoryview) -> tuple[Segment, ...]:
    """Return the segments in ``view`` (everything after the header)."""
    segments: list[Segment] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < SEGMENT_OVERHEAD:
            raise FrameError("truncated segment header")
        kind, length = _SEGMENT.unpack_from(view, offset)
        offset += SEGMENT_OVERHEAD
        if len(view) - offset < length:
            raise FrameError("truncated segment")
        segments.append(_decode_body(kind, bytes(view[offset:offset + length])))
        offset += length
    return tuple(segments)


def _decode_body(kind: int, body: bytes) -> Segment:
    """Return the segment of type ``kind`` whose body is ``body``."""
    if kind == SegmentType.OPEN:
        if len(body) < 3 or len(body) > 2 + MAX_HOST_BYTES:
            raise FrameError("bad OPEN length")
        try:
            host = body[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("OPEN host is not UTF-8") from None
        return Open(host, _U16.unpack_from(body)[0])
    if kind == SegmentType.DATA:
        if len(body) < 5:
            raise FrameError("DATA without payload")
        return Data(_U32.unpack_from(body)[0], body[4:])
    if kind == SegmentType.ACK:
        return _decode_ack(body)
    if kind == SegmentType.FIN:
        if len(body) != 4:
            raise FrameError("bad FIN length")
        return Fin(_U32.unpack_from(body)[0])
    if kind in (SegmentType.OPEN_RESULT, SegmentType.RESET) and len(body) == 1:
        if kind == SegmentType.OPEN_RESULT:
            return OpenResult(_socks_code(body[0]))
        try:
            return Reset(ResetReason(body[0]))
        except ValueError:
            raise FrameError("unknown RESET reason") from None
    raise FrameError("unknown segment type or bad length")


def _decode_ack(body: bytes) -> Ack:
    """Return the ACK whose body is ``body``."""
    if len(body) < 8 or len(body) % 8 or len(body) > 8 + 8 * MAX_RANGES:
        raise FrameError("bad ACK length")
    cumulative, edge = struct.unpack_from(">II", body)
    ranges = tuple(struct.unpack_from(">II", body, offset) for offset in range(8, len(body), 8))
    ack = Ack(cumulative, edge, ranges)
    _check_ranges(ack)
    return ack


def _check_ranges(ack: Ack) -> None:
    """Raise FrameError unless the ranges are ascending, disjoint and above ``cumulative``."""
    if len(ack.ranges) > MAX_RANGES:
        raise FrameError("too many ACK ranges")
    low = ack.cumulative
    for start, end in ack.ranges:
        if not low < start < end:
            raise FrameError("ACK ranges out of order")
        low = end


def _socks_code(code: int) -> int:
    """Return ``code`` if it is a SOCKS5 reply code (0..8), else raise FrameError."""
    if not 0 <= code <= MAX_SOCKS_CODE:
        raise FrameError("not a SOCKS5 reply code")
    return code


_ONCE = (Open, OpenResult, Ack, Fin, Reset)


def _check_directions(segments: tuple[Segment, ...], from_exit: bool) -> None:
    """Raise FrameError for a repeated single segment or one sent the wrong way."""
    for kind in _ONCE:
        if sum(isinstance(segment, kind) for segment in segments) > 1:
            raise FrameError(f"more than one {kind.__name__}")
    for segment in segments:
        if isinstance(segment, Open) and from_exit:
            raise FrameError("OPEN from the exit")
        if isinstance(segment, OpenResult) and not from_exit:
            raise FrameError("OPEN_RESULT from the proxy")
