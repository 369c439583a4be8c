"""What the client core hands out: packets to send, messages received, a message's progress."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A packet for the own provider: sent in a PACKET frame if ``first_hop`` is the provider,
    otherwise in a RELAY frame (an anonymous reply, whose SURB starts at a first-layer mixnode)."""

    first_hop: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A whole message that arrived."""

    message_id: bytes
    sender: str | None  # None: sent anonymously, or a reply through one of our SURBs
    data: bytes
    filename: str | None
    received_at: float
    reply_handle: bytes | None  # pass to ClientCore.reply to answer through the sender's SURBs


@dataclass(frozen=True, slots=True)
class SendProgress:
    """How far an outgoing message got."""

    fragments: int
    acked: int
    failed: bool  # a fragment used up its retries; the message will not complete
