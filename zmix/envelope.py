"""What a forward Sphinx message carries to the exit provider: an optional ack SURB and a body.

```
version (1) = 0x01 | flags (1): bit 0 = an ack SURB follows | [SURB, surb_length bytes]
| body length (u32, big-endian) | body
```
The provider stores the body for the recipient and, once it is on disk, answers the SURB with
:data:`ACK_PAYLOAD`. The body is opaque to the provider (the client encrypts it end to end).
"""

from __future__ import annotations

from dataclasses import dataclass

from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.sphinx import SphinxParams

ENVELOPE_VERSION = 0x01
FLAG_ACK = 0x01
_HEAD = 2
_LENGTH = 4
ACK_PAYLOAD = b"zmix-ack-v1"


@dataclass(frozen=True, slots=True)
class Envelope:
    """An ack SURB (``Surb.to_bytes()``) or None, and the body for the recipient."""

    ack_surb: bytes | None
    body: bytes


def envelope_capacity(params: SphinxParams, with_ack: bool) -> int:
    """Return the largest body an envelope can carry in one forward packet."""
    surb = params.surb_length if with_ack else 0
    return params.max_message_length - _HEAD - surb - _LENGTH


def encode_envelope(params: SphinxParams, envelope: Envelope) -> bytes:
    """Return the envelope's bytes; LocalMisuse if the body or the SURB does not fit."""
    with_ack = envelope.ack_surb is not None
    if len(envelope.body) > envelope_capacity(params, with_ack):
        raise LocalMisuse(f"an envelope body holds at most {envelope_capacity(params, with_ack)} "
                          f"bytes, got {len(envelope.body)}")
    head = bytes([ENVELOPE_VERSION, FLAG_ACK if with_ack else 0])
    if envelope.ack_surb is not None:
        if len(envelope.ack_surb) != params.surb_length:
            raise LocalMisuse(f"an ack SURB is {params.surb_length} bytes")
        head += envelope.ack_surb
    return head + len(envelope.body).to_bytes(_LENGTH, "big") + envelope.body


def decode_envelope(params: SphinxParams, data: bytes) -> Envelope:
    """Parse an envelope; raises InvalidPacket(BAD_COMMAND) if it is malformed.

    Exactly the envelopes :func:`encode_envelope` produces are accepted (no trailing bytes, no
    unknown flag, nothing longer than ``params.max_message_length``).
    """
    if not _HEAD + _LENGTH <= len(data) <= params.max_message_length:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    if data[0] != ENVELOPE_VERSION or data[1] & ~FLAG_ACK:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    surb_length = params.surb_length if data[1] & FLAG_ACK else 0
    offset = _HEAD + surb_length
    if len(data) < offset + _LENGTH:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    length = int.from_bytes(data[offset:offset + _LENGTH], "big")
    body = data[offset + _LENGTH:]
    if len(body) != length:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    return Envelope(data[_HEAD:offset] if surb_length else None, body)
