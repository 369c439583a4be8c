"""The sans-IO core of a provider: deliveries into mailboxes, acks, fetches.

A provider is a mixnode that is also its clients' entry and exit. The node runtime hands this core
the final deliveries and SURB replies that its workers produced and the fetch frames of its
clients; the core stores, refuses or discards, and returns the packets to send (acknowledgements).
An acknowledgement is built only after the message it acknowledges is committed to disk, so a
sender that got an ack can forget the fragment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from zmix.envelope import ACK_PAYLOAD, decode_envelope
from zmix.errors import InvalidPacket, LocalMisuse
from zmix.mailbox import Mailbox
from zmix.sphinx import FinalDelivery, SphinxParams, Surb, SurbReply, answer_surb
from zmix.topology import MailboxParams
from zmix.wire import Fetch, FetchAck, FetchAcked, FetchReply, ItemKind


@dataclass(frozen=True, slots=True)
class Send:
    """A packet to send to ``next_hop`` after ``delay`` seconds."""

    next_hop: bytes
    packet: bytes
    delay: float


class ProviderCore:
    """Mailbox logic of one provider."""

    def __init__(self, params: SphinxParams, provider_id: bytes, clients: set[bytes],
                 mailbox: Mailbox, mailbox_params: MailboxParams) -> None:
        self._params = params
        self._id = provider_id
        self._clients = set(clients) | set(mailbox.registered())
        self._mailbox = mailbox
        self._slots = mailbox_params.fetch_slots
        self._counts: Counter[str] = Counter()

    def on_final(self, now: float, result: FinalDelivery) -> list[Send]:
        """Handle a final delivery: discard a drop, store a message, then acknowledge it."""
        if result.recipient == self._id:
            self._counts["drops_received"] += 1
            return []
        if result.recipient not in self._clients:
            self._counts["unknown_recipient"] += 1
            return []
        try:
            envelope = decode_envelope(self._params, result.message)
        except InvalidPacket:
            self._counts["bad_envelope"] += 1
            return []
        stored = self._mailbox.store(result.recipient, ItemKind.MESSAGE, bytes(16), envelope.body,
                                     now)
        if stored is None:  # full: no ack, so the sender tries again later
            self._counts["refused_full"] += 1
            return []
        self._counts["messages_stored"] += 1
        if envelope.ack_surb is None:
            return []
        return self._ack(envelope.ack_surb)

    def _ack(self, surb_bytes: bytes) -> list[Send]:
        try:
            surb = Surb.from_bytes(self._params, surb_bytes)
            first_hop, packet = answer_surb(self._params, surb, ACK_PAYLOAD)
        except (InvalidPacket, LocalMisuse):
            self._counts["bad_ack_surb"] += 1
            return []
        self._counts["acks_sent"] += 1
        return [Send(first_hop, packet, 0.0)]

    def on_surb_reply(self, now: float, result: SurbReply) -> list[Send]:
        """Store a SURB reply (an ack or an anonymous reply) for the client it is meant for."""
        if result.recipient not in self._clients:
            self._counts["unknown_recipient"] += 1
            return []
        if self._mailbox.store(result.recipient, ItemKind.REPLY, result.surb_id, result.payload,
                               now) is None:
            self._counts["refused_full"] += 1
            return []
        self._counts["replies_stored"] += 1
        return []

    def on_fetch(self, now: float, client_id: bytes, frame: Fetch) -> FetchReply:
        """Answer a fetch with up to ``fetch_slots`` items; a stranger gets an empty answer."""
        if client_id not in self._clients:
            self._counts["fetch_refused"] += 1
            return FetchReply(frame.request_id, (), 0)
        items, remaining = self._mailbox.fetch(client_id, self._slots, now)
        self._counts["fetches"] += 1
        return FetchReply(frame.request_id, tuple(items), remaining)

    def on_fetch_ack(self, now: float, client_id: bytes, frame: FetchAck) -> FetchAcked:
        """Delete the acknowledged items of ``client_id`` (only its own)."""
        if client_id not in self._clients:
            self._counts["fetch_refused"] += 1
            return FetchAcked(frame.request_id, 0)
        return FetchAcked(frame.request_id, self._mailbox.ack(client_id, frame.item_ids))

    def register(self, client_id: bytes, now: float) -> None:
        """Admit a client at run time (open registration); it is remembered on disk."""
        self._mailbox.register(client_id, now)
        self._clients.add(client_id)

    def statistics(self) -> dict[str, int]:
        """Return the provider's counters."""
        names = ("drops_received", "unknown_recipient", "bad_envelope", "refused_full",
                 "messages_stored", "replies_stored", "acks_sent", "bad_ack_surb", "fetches",
                 "fetch_refused")
        return {name: self._counts[name] for name in names}
