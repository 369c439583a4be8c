"""The sans-IO core of a provider: deliveries into mailboxes, acks, fetches.

A provider is a mixnode that is also its clients' entry and exit. The node runtime hands this core
the final deliveries and SURB replies that its workers produced and the fetch frames of its
clients; the core stores, refuses or discards, and returns the packets to send (acknowledgements).
An acknowledgement is built only after the message it acknowledges is committed to disk, so a
sender that got an ack can forget the fragment; a message that could not be stored (mailbox full,
disk failure) gets no acknowledgement, so its sender sends it again later.

A client's own loop comes back as a FinalDelivery addressed to it (an envelope like any message);
acknowledgements and anonymous replies come back as SurbReplies. Both are stored for the client.
A client that is not one of this provider's gets nothing from a fetch: an empty FetchReply (the
runtime pads it to the same size as any other), not an error frame, so a probe cannot tell an
unknown client from an empty mailbox.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from zmix.envelope import ACK_PAYLOAD, decode_envelope
from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.mailbox import Mailbox, StorageError
from zmix.sphinx import FinalDelivery, SphinxParams, Surb, SurbReply, answer_surb
from zmix.topology import MailboxParams
from zmix.wire import Fetch, FetchAck, FetchAcked, FetchReply, ItemKind


@dataclass(frozen=True, slots=True)
class Send:
    """A packet to send to ``next_hop`` after ``delay`` seconds."""

    next_hop: bytes
    packet: bytes
    delay: float


UNEXPECTED = DropReason.UNEXPECTED_DELIVERY.value
_COUNTERS = ("drops_received", UNEXPECTED, "bad_envelope", "refused_full", "store_failed",
             "messages_stored", "replies_stored", "acks_sent", "bad_ack_surb", "fetches",
             "fetch_refused")


class ProviderCore:
    """Mailbox logic of one provider; the mailbox is its only state besides counters."""

    def __init__(self, params: SphinxParams, provider_id: bytes, clients: set[bytes],
                 mailbox: Mailbox, mailbox_params: MailboxParams) -> None:
        self._params = params
        self._id = provider_id
        self._clients = set(clients) | set(mailbox.registered())
        self._mailbox = mailbox
        self._slots = mailbox_params.fetch_slots
        self._counts: Counter[str] = Counter()

    def on_final(self, now: float, result: FinalDelivery) -> list[Send]:
        """Handle a final delivery and return the acknowledgement to send, if any.

        Addressed to this provider: a drop (cover) packet, discarded. Addressed to one of its
        clients: the envelope's body is stored, and only once it is committed the envelope's ack
        SURB is answered with ACK_PAYLOAD (``delay`` 0: the SURB's hops add their own delays).
        Anything else (unknown recipient, malformed envelope, full mailbox, storage failure) is
        counted and returns no packet. Never raises on what a peer sent.
        """
        if result.recipient == self._id:
            self._counts["drops_received"] += 1
            return []
        if result.recipient not in self._clients:
            self._counts[UNEXPECTED] += 1
            return []
        try:
            envelope = decode_envelope(self._params, result.message)
        except InvalidPacket:
            self._counts["bad_envelope"] += 1
            return []
        if not self._store(result.recipient, ItemKind.MESSAGE, bytes(16), envelope.body, now):
            return []  # no ack: the sender retransmits later
        self._counts["messages_stored"] += 1
        if envelope.ack_surb is None:
            return []
        return self._ack(envelope.ack_surb)

    def _store(self, client: bytes, kind: ItemKind, surb_id: bytes, payload: bytes,
               now: float) -> bool:
        try:
            stored = self._mailbox.store(client, kind, surb_id, payload, now)
        except StorageError:
            self._counts["store_failed"] += 1
            return False
        if stored is None:
            self._counts["refused_full"] += 1
            return False
        return True

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
        """Store a SURB reply (an ack or an anonymous reply) for its client; return no packets.

        A reply for anyone but one of this provider's clients, a full mailbox or a storage
        failure is counted and the reply discarded.
        """
        if result.recipient not in self._clients:
            self._counts[UNEXPECTED] += 1
            return []
        if self._store(result.recipient, ItemKind.REPLY, result.surb_id, result.payload, now):
            self._counts["replies_stored"] += 1
        return []

    def on_fetch(self, now: float, client_id: bytes, frame: Fetch) -> FetchReply:
        """Return up to ``fetch_slots`` of the client's oldest items and how many remain.

        Expired items are deleted first. A client that is not this provider's gets an empty
        answer (counted as ``fetch_refused``); nothing is deleted until :meth:`on_fetch_ack`.
        """
        if client_id not in self._clients:
            self._counts["fetch_refused"] += 1
            return FetchReply(frame.request_id, (), 0)
        try:
            self._mailbox.expire(now)
        except StorageError:  # expired items are filtered out by fetch; deleted next time
            self._counts["store_failed"] += 1
        items, remaining = self._mailbox.fetch(client_id, self._slots, now)
        self._counts["fetches"] += 1
        return FetchReply(frame.request_id, tuple(items), remaining)

    def on_fetch_ack(self, now: float, client_id: bytes, frame: FetchAck) -> FetchAcked:
        """Delete the acknowledged items of ``client_id`` (only its own); return how many.

        A client that is not this provider's deletes nothing (``fetch_refused``); a storage
        failure deletes nothing either, and the client's next fetch returns the items again.
        """
        if client_id not in self._clients:
            self._counts["fetch_refused"] += 1
            return FetchAcked(frame.request_id, 0)
        try:
            deleted = self._mailbox.ack(client_id, frame.item_ids)
        except StorageError:
            self._counts["store_failed"] += 1
            deleted = 0
        return FetchAcked(frame.request_id, deleted)

    def register(self, client_id: bytes) -> None:
        """Admit a client at run time (open registration); it is remembered in the mailbox file.

        Raises StorageError if that could not be committed (the client is then not admitted),
        LocalMisuse on an id that is not 16 bytes.
        """
        self._mailbox.register(client_id)
        self._clients.add(client_id)

    def statistics(self) -> dict[str, int]:
        """Return the provider's counters (the mailbox keeps its own, see Mailbox.statistics).

        drops_received, unexpected_delivery, bad_envelope, refused_full, store_failed,
        messages_stored, replies_stored, acks_sent, bad_ack_surb, fetches, fetch_refused.
        """
        return {name: self._counts[name] for name in _COUNTERS}
