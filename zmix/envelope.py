"""What a forward Sphinx message carries to the exit provider: an optional ack SURB and a body;
and how a SURB travels with the key epoch it was made for (a *dated SURB*).

Envelope::

    version (1) = 0x02 | flags (1): bit 0 = an ack SURB follows | [dated SURB]
    | body length (u32, big-endian) | body

Dated SURB (``4 + surb_length`` bytes; also how reply blocks travel in fragments)::

    key epoch (u32, big-endian) | SURB (first hop id | header | ktilde, surb_length bytes)

The provider stores the body for the recipient and, once it is on disk, answers the SURB with
:data:`ACK_PAYLOAD`. The body is opaque to the provider (the client encrypts it end to end).

Every hop of a SURB uses its node's key of one epoch (:meth:`zmix.epochs.EpochParams.surb_epoch`:
the epoch after the one it was made in), so its holder knows, from the epoch alone, until when it
can be used: until that key is erased, at the epoch's end plus the grace. A holder drops an
expired SURB (:meth:`DatedSurb.state`) instead of sending a packet every hop would refuse.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from zmix.epochs import EpochParams
from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.sphinx import SphinxParams

ENVELOPE_VERSION = 0x02  # 0x01 carried the SURB without its key epoch
FLAG_ACK = 0x01
_HEAD = 2
_LENGTH = 4
ACK_PAYLOAD = b"zmix-ack-v1"
SURB_EPOCH_BYTES = 4  # the key epoch before each SURB, a u32
MAX_SURB_EPOCH = 2**32 - 1


class SurbState(enum.Enum):
    """Whether a dated SURB can be used now (:meth:`DatedSurb.state`)."""

    USABLE = "usable"
    EXPIRED = "expired"  # its keys are erased: every hop would refuse the packet
    TOO_EARLY = "too_early"  # made for an epoch after the next one: no honest client does that


@dataclass(frozen=True, slots=True)
class DatedSurb:
    """A SURB (``Surb.to_bytes()``) and the key epoch every one of its hops uses."""

    epoch: int
    surb: bytes

    def to_bytes(self) -> bytes:
        """Return ``epoch (u32, big-endian) || surb``; LocalMisuse if the epoch does not fit."""
        if not 0 <= self.epoch <= MAX_SURB_EPOCH:
            raise LocalMisuse(f"a SURB's key epoch travels as a u32, not {self.epoch}")
        return self.epoch.to_bytes(SURB_EPOCH_BYTES, "big") + self.surb

    @classmethod
    def from_bytes(cls, params: SphinxParams, data: bytes) -> DatedSurb:
        """Parse a dated SURB; InvalidPacket(BAD_COMMAND) if it is not
        :func:`dated_surb_length` bytes (the SURB itself is parsed when it is used)."""
        if len(data) != dated_surb_length(params):
            raise InvalidPacket(DropReason.BAD_COMMAND)
        return cls(int.from_bytes(data[:SURB_EPOCH_BYTES], "big"),
                   bytes(data[SURB_EPOCH_BYTES:]))

    def expires_at(self, epochs: EpochParams) -> float:
        """Return the time from which the SURB cannot be used: its keys' erasure."""
        return epochs.erase_at(self.epoch)

    def state(self, epochs: EpochParams, now: float) -> SurbState:
        """Return whether the SURB can be used at ``now``: EXPIRED from :meth:`expires_at` on,
        TOO_EARLY if its epoch is after the one following the current epoch."""
        if now >= self.expires_at(epochs):
            return SurbState.EXPIRED
        if self.epoch > epochs.epoch_at(now) + 1:
            return SurbState.TOO_EARLY
        return SurbState.USABLE


def dated_surb_length(params: SphinxParams) -> int:
    """Return the bytes of a dated SURB: the key epoch and ``params.surb_length``."""
    return SURB_EPOCH_BYTES + params.surb_length


@dataclass(frozen=True, slots=True)
class Envelope:
    """An ack SURB or None, and the body for the recipient."""

    ack_surb: DatedSurb | None
    body: bytes


def envelope_capacity(params: SphinxParams, with_ack: bool) -> int:
    """Return the largest body an envelope can carry in one forward packet."""
    surb = dated_surb_length(params) if with_ack else 0
    return params.max_message_length - _HEAD - surb - _LENGTH


def encode_envelope(params: SphinxParams, envelope: Envelope) -> bytes:
    """Return the envelope's bytes; LocalMisuse if the body or the SURB does not fit."""
    with_ack = envelope.ack_surb is not None
    if len(envelope.body) > envelope_capacity(params, with_ack):
        raise LocalMisuse(f"an envelope body holds at most {envelope_capacity(params, with_ack)} "
                          f"bytes, got {len(envelope.body)}")
    head = bytes([ENVELOPE_VERSION, FLAG_ACK if with_ack else 0])
    if envelope.ack_surb is not None:
        if len(envelope.ack_surb.surb) != params.surb_length:
            raise LocalMisuse(f"an ack SURB is {params.surb_length} bytes")
        head += envelope.ack_surb.to_bytes()
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
    surb_length = dated_surb_length(params) if data[1] & FLAG_ACK else 0
    offset = _HEAD + surb_length
    if len(data) < offset + _LENGTH:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    length = int.from_bytes(data[offset:offset + _LENGTH], "big")
    body = data[offset + _LENGTH:]
    if len(body) != length:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    ack = DatedSurb.from_bytes(params, data[_HEAD:offset]) if surb_length else None
    return Envelope(ack, body)
