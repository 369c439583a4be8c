"""What a client puts in an envelope body: end-to-end encrypted content around message fragments.

A message of any size is split into fragments that each fit one forward packet. Every fragment
is encrypted end to end to the recipient client, so the exit provider (which reads the envelope)
learns neither the sender nor the content. docs/client.md has the byte layouts.

Content (what the provider stores and the recipient unseals)::

    crypto.seal(recipient key, kind (1) | id (16) | rest)
      SIGNED     id = sender's client id, rest = crypto.box(fragment) from the sender's static key
      ANONYMOUS  id = 16 zero bytes,      rest = fragment
      LOOP       id = loop id,            rest = empty   (a client's own loop coming home)

The outer seal hides the sender's id from everyone but the recipient; the inner box proves it.

Fragment (big-endian)::

    version (1) = 0x02 | flags (1) | message id (16) | index (u32) | count (u32) | total (u64)
    [fragment 0 with flag META: name length (1) | file name (UTF-8) | n (1) | n reply blocks]
    data

A reply block is a dated SURB (:class:`zmix.envelope.DatedSurb`: the SURB's key epoch, u32, then
the SURB); this module only cuts them out at the length the caller gives.

An anonymous reply travels through a SURB as a single fragment (count 1) with no content layer:
the SURB's own layered encryption already keeps it readable only by the SURB's creator.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zmix import crypto
from zmix.errors import DropReason, InvalidPacket, LocalMisuse

FRAGMENT_VERSION = 0x02  # 0x01 carried reply blocks without their key epoch
FLAG_META = 0x01  # fragment 0 carries the file name and the reply SURBs
_HEADER = struct.Struct(">BB16sIIQ")  # version, flags, message id, index, count, total length
HEADER_BYTES = _HEADER.size  # 34
ID_BYTES = 16
MAX_FILENAME_BYTES = 255  # UTF-8 bytes; the length travels in one byte
MAX_REPLY_BLOCKS = 4  # SURBs one message may carry (each about 300 bytes of fragment 0)
MAX_FRAGMENTS = 1 << 24  # a parser bound: about 27 GB at the default packet size

_KIND = struct.Struct(">B16s")
CONTENT_OVERHEAD = crypto.SEAL_OVERHEAD + _KIND.size + crypto.BOX_OVERHEAD  # 105 bytes
_NO_ID = bytes(ID_BYTES)
RandomBytes = Callable[[int], bytes]


class ContentKind(enum.IntEnum):
    """What the end-to-end layer of an envelope body holds."""

    SIGNED = 0x01  # a fragment from a named sender (box inside the seal)
    ANONYMOUS = 0x02  # a fragment without a sender
    LOOP = 0x03  # one of the recipient's own loop packets


@dataclass(frozen=True, slots=True)
class Content:
    """An unsealed envelope body: its kind, the sender or loop id, and the rest."""

    kind: ContentKind
    ident: bytes
    rest: bytes


@dataclass(frozen=True, slots=True)
class Fragment:
    """One piece of a message, as parsed by the recipient."""

    message_id: bytes
    index: int
    count: int
    total: int  # length of the whole message, bytes
    filename: str | None  # only in fragment 0
    reply_surbs: tuple[bytes, ...]  # only in fragment 0
    data: bytes


# ---------------------------------------------------------------------------- content layer


def seal_signed(recipient_key: bytes, sender_id: bytes, sender_private_key: bytes,
                fragment: bytes, random_bytes: RandomBytes = crypto.random_bytes) -> bytes:
    """Return ``fragment`` boxed from the sender's key and sealed, with the sender's id, to the
    recipient; ``len(fragment) + CONTENT_OVERHEAD`` bytes. Nonce and ephemeral key come from
    ``random_bytes`` (as in every ``seal_`` function)."""
    boxed = crypto.box(recipient_key, sender_private_key, fragment, random_bytes)
    return crypto.seal(recipient_key, _KIND.pack(ContentKind.SIGNED, sender_id) + boxed,
                       random_bytes)


def seal_anonymous(recipient_key: bytes, fragment: bytes,
                   random_bytes: RandomBytes = crypto.random_bytes) -> bytes:
    """Return ``fragment`` sealed to the recipient without any sender identity."""
    return crypto.seal(recipient_key, _KIND.pack(ContentKind.ANONYMOUS, _NO_ID) + fragment,
                       random_bytes)


def seal_loop(own_key: bytes, loop_id: bytes,
              random_bytes: RandomBytes = crypto.random_bytes) -> bytes:
    """Return a loop marker sealed to the client itself: only it can recognise the loop."""
    return crypto.seal(own_key, _KIND.pack(ContentKind.LOOP, loop_id), random_bytes)


def open_content(public_key: bytes, private_key: bytes, data: bytes) -> Content:
    """Unseal an envelope body addressed to us.

    Raises InvalidPacket(BAD_TAG) if it was not sealed to our key, BAD_COMMAND if the kind is
    unknown.
    """
    try:
        inner = crypto.unseal(public_key, private_key, data)
    except ValueError:
        raise InvalidPacket(DropReason.BAD_TAG) from None
    if len(inner) < _KIND.size:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    kind, ident = _KIND.unpack_from(inner)
    try:
        return Content(ContentKind(kind), ident, inner[_KIND.size:])
    except ValueError:
        raise InvalidPacket(DropReason.BAD_COMMAND) from None


def verify_signed(sender_key: bytes, private_key: bytes, rest: bytes) -> bytes:
    """Return the fragment inside a SIGNED content's box; InvalidPacket(BAD_MAC) if the named
    sender's key did not make it."""
    try:
        return crypto.unbox(sender_key, private_key, rest)
    except ValueError:
        raise InvalidPacket(DropReason.BAD_MAC) from None


# ---------------------------------------------------------------------------- fragments


def encode_metadata(filename: str | None, reply_surbs: Sequence[bytes]) -> bytes:
    """Return fragment 0's metadata block; LocalMisuse for a too long name or too many SURBs."""
    name = (filename or "").encode()
    if len(name) > MAX_FILENAME_BYTES:
        raise LocalMisuse(f"a file name is at most {MAX_FILENAME_BYTES} UTF-8 bytes, "
                          f"got {len(name)}")
    if len(reply_surbs) > MAX_REPLY_BLOCKS:
        raise LocalMisuse(f"at most {MAX_REPLY_BLOCKS} reply blocks per message")
    return bytes([len(name)]) + name + bytes([len(reply_surbs)]) + b"".join(reply_surbs)


def reply_blocks_that_fit(capacity: int, surb_length: int, filename: str | None = None) -> int:
    """Return how many reply SURBs of ``surb_length`` bytes fragment 0 of ``capacity`` bytes
    carries beside ``filename`` and at least one byte of data: at most MAX_REPLY_BLOCKS, 0 if
    none fits. Raises LocalMisuse for a file name over MAX_FILENAME_BYTES."""
    if surb_length < 1:
        raise LocalMisuse(f"a reply block is at least 1 byte, got {surb_length}")
    room = capacity - HEADER_BYTES - len(encode_metadata(filename, ())) - 1
    return max(0, min(MAX_REPLY_BLOCKS, room // surb_length))


def encode_fragment(message_id: bytes, index: int, count: int, total: int, data: bytes,
                    metadata: bytes | None = None) -> bytes:
    """Return one fragment's bytes (``metadata`` from :func:`encode_metadata`, fragment 0 only)."""
    if len(message_id) != ID_BYTES or not 0 <= index < count <= MAX_FRAGMENTS:
        raise LocalMisuse("bad fragment id, index or count")
    flags = FLAG_META if metadata is not None else 0
    head = _HEADER.pack(FRAGMENT_VERSION, flags, message_id, index, count, total)
    return head + (metadata or b"") + data


def split_message(message_id: bytes, data: bytes, capacity: int, *, filename: str | None = None,
                  reply_surbs: Sequence[bytes] = ()) -> list[bytes]:
    """Split ``data`` into encoded fragments of at most ``capacity`` bytes each.

    Fragment 0 always carries the metadata block, so the recipient learns the file name and the
    reply SURBs however small the message. Raises LocalMisuse if fragment 0's metadata leaves no
    room for data.
    """
    metadata = encode_metadata(filename, reply_surbs)
    first = capacity - HEADER_BYTES - len(metadata)
    rest = capacity - HEADER_BYTES
    if first < 1:
        raise LocalMisuse(_no_room(capacity, filename, reply_surbs))
    chunks = [data[:first]] + [data[i:i + rest] for i in range(first, len(data), rest)]
    count = len(chunks)
    if count > MAX_FRAGMENTS:
        raise LocalMisuse(f"a message is at most {MAX_FRAGMENTS} fragments")
    return [encode_fragment(message_id, i, count, len(data), chunk, metadata if i == 0 else None)
            for i, chunk in enumerate(chunks)]


def _no_room(capacity: int, filename: str | None, reply_surbs: Sequence[bytes]) -> str:
    """Say what left fragment 0 without room for data, naming only what the message has."""
    name = f" beside a file name of {len((filename or '').encode())} bytes" if filename else ""
    if not reply_surbs:
        return f"a fragment of {capacity} bytes has no room for data{name}"
    size = len(reply_surbs[0])
    fit = reply_blocks_that_fit(capacity, size, filename)
    return (f"{len(reply_surbs)} reply blocks of {size} bytes do not fit in a fragment of "
            f"{capacity} bytes{name}: at most {fit} fit")


def parse_fragment(data: bytes, surb_length: int) -> Fragment:
    """Parse a fragment; raises InvalidPacket(BAD_COMMAND) if it is malformed."""
    if len(data) < HEADER_BYTES:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    version, flags, message_id, index, count, total = _HEADER.unpack_from(data)
    if (version != FRAGMENT_VERSION or flags & ~FLAG_META or not index < count <= MAX_FRAGMENTS
            or (flags & FLAG_META and index != 0)):
        raise InvalidPacket(DropReason.BAD_COMMAND)
    rest = data[HEADER_BYTES:]
    filename: str | None = None
    surbs: tuple[bytes, ...] = ()
    if flags & FLAG_META:
        filename, surbs, rest = _parse_metadata(rest, surb_length)
    return Fragment(message_id, index, count, total, filename, surbs, rest)


def _parse_metadata(data: bytes, surb_length: int) -> tuple[str | None, tuple[bytes, ...], bytes]:
    if not data:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    end = 1 + data[0]
    if len(data) <= end or data[end] > MAX_REPLY_BLOCKS:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    try:
        filename = data[1:end].decode() or None
    except UnicodeDecodeError:
        raise InvalidPacket(DropReason.BAD_COMMAND) from None
    count, offset = data[end], end + 1
    surbs = tuple(data[offset + i * surb_length:offset + (i + 1) * surb_length]
                  for i in range(count))
    if any(len(s) != surb_length for s in surbs):
        raise InvalidPacket(DropReason.BAD_COMMAND)
    return filename, surbs, data[offset + count * surb_length:]
