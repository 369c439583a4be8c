"""The sans-IO core of a provider: deliveries into mailboxes, acks, fetches.

A provider is a mixnode that is also its clients' entry and exit. The node hands this core the
final deliveries and SURB replies that its workers produced and the fetch frames of its clients.
A delivery returns what to store (a :class:`Store`) or nothing (a drop packet, a stranger's
message: counted); the node collects the stores of a batch of results and hands them to
:meth:`ProviderCore.commit`, which writes them in one transaction (one disk sync for the batch)
and only then returns the acknowledgements, so a sender that got an ack can forget the fragment.
A message that could not be stored (mailbox full, failed commit) gets no acknowledgement, so its
sender sends it again later.

A client's FETCH acknowledges the items of the answers it took in before (they are committed to
its own store): the core deletes those, and only then picks the items of the new answer. Nothing
in a mailbox is deleted without such an acknowledgement, except expired items.

A client's own loop comes back as a FinalDelivery addressed to it (an envelope like any message);
acknowledgements and anonymous replies come back as SurbReplies. Both are stored for the client.
A client that is not one of this provider's gets nothing from a fetch: an empty FetchReply (the
runtime pads it to the same size as any other), not an error frame, so a probe cannot tell an
unknown client from an empty mailbox.

With ``mailbox.open_registration`` a provider also admits clients that the topology does not
declare (:meth:`ProviderCore.on_register`); they are kept in the mailbox file with their keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zmix.envelope import ACK_PAYLOAD, DatedSurb, SurbState, decode_envelope
from zmix.epochs import same_clock
from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.mailbox import Mailbox, Registration, StorageError
from zmix.network import NetworkView
from zmix.sphinx import FinalDelivery, SphinxParams, Surb, SurbReply
from zmix.sphinx.ops import SPHINX, SphinxOps
from zmix.topology import entity_id, valid_name
from zmix.wire import Error, Fetch, FetchReply, ItemKind, Register, Registered


@dataclass(frozen=True, slots=True)
class Send:
    """A packet to send to ``next_hop`` after ``delay`` seconds."""

    next_hop: bytes
    packet: bytes
    delay: float


@dataclass(frozen=True, slots=True)
class Store:
    """What a delivery asks the provider to store: an item for ``client``'s mailbox and, for a
    message, the ack SURB to answer once the item is committed (:meth:`ProviderCore.commit`)."""

    client: bytes
    kind: ItemKind
    surb_id: bytes
    payload: bytes
    ack_surb: DatedSurb | None


UNEXPECTED = DropReason.UNEXPECTED_DELIVERY.value
_COUNTERS = ("drops_received", UNEXPECTED, "bad_envelope", "refused_full", "store_failed",
             "messages_stored", "replies_stored", "acks_sent", "bad_ack_surb",
             "ack_surb_expired", "fetches",
             "fetch_refused", "registered", "registration_refused")


def mailbox_payload(params: SphinxParams, result: FinalDelivery | SurbReply) -> bytes | None:
    """Return the payload a provider stores in a mailbox for the delivery ``result`` (what a
    fetch hands back): a SURB reply's payload, a message's envelope body; None for a message
    whose envelope does not parse (:meth:`ProviderCore.on_final` stores nothing for it). For
    those who follow a delivery to its fetch: the simulator and the node taps."""
    if isinstance(result, SurbReply):
        return result.payload
    try:
        return decode_envelope(params, result.message).body
    except InvalidPacket:
        return None


class ProviderCore:
    """Mailbox logic of one provider; the mailbox is its only state besides counters."""

    def __init__(self, view: NetworkView, name: str, mailbox: Mailbox, *,
                 wall: Callable[[float], float] = same_clock, sphinx: SphinxOps = SPHINX) -> None:
        """Provider ``name`` of the network ``view`` holds (:mod:`zmix.network`): its declared
        clients, its mailbox policy and the names and keys open registration must not give away
        are read from the current version when they are needed. ``wall`` turns the ``now`` the
        core is given into unix time, which says whether an ack SURB's keys are still live (the
        node loop's ``now`` is its monotonic clock); ``sphinx`` answers ack SURBs
        (:mod:`zmix.sphinx.ops`). Raises KeyError if ``name`` is not a node
        of the current network."""
        network = view.current
        self._view = view
        self._wall = wall
        self._sphinx = sphinx  # answers ack SURBs
        self._name = name
        self._id = network.node(name).id
        # Fixed for the life of the process: the packet geometry (NetworkView.replace keeps it)
        # and the fetch answer's size (the wire's frame limits follow it).
        self._params = network.topology.sphinx
        self._slots = network.topology.mailbox.fetch_slots
        self._mailbox = mailbox
        # A registration whose name or key the topology has since given to a member is void:
        # its key would share the member's id.
        kept = mailbox.registrations()
        self.shadowed = [r for r in kept if network.is_member(r.name)
                         or network.is_member_key(r.curve_public)]
        self._registered = [r for r in kept if r not in self.shadowed]
        self._registered_ids = {r.id for r in self._registered}
        self._counts: Counter[str] = Counter()

    def serves(self, client_id: bytes) -> bool:
        """Return True if ``client_id`` is one of this provider's clients: declared in the
        current network, or registered."""
        return (client_id in self._view.current.clients_of(self._name)
                or client_id in self._registered_ids)

    def on_final(self, now: float, result: FinalDelivery) -> Store | None:
        """Return what a final delivery asks to store, or None.

        Addressed to this provider: a drop (cover) packet, discarded. Addressed to one of its
        clients: the envelope's body, to be stored with :meth:`commit` (which answers its ack
        SURB once it is committed). Anything else (unknown recipient, malformed envelope) is
        counted and returns None. Never raises on what a peer sent.
        """
        if result.recipient == self._id:
            self._counts["drops_received"] += 1
            return None
        if not self.serves(result.recipient):
            self._counts[UNEXPECTED] += 1
            return None
        try:
            envelope = decode_envelope(self._params, result.message)
        except InvalidPacket:
            self._counts["bad_envelope"] += 1
            return None
        return Store(result.recipient, ItemKind.MESSAGE, bytes(16), envelope.body,
                     envelope.ack_surb)

    def on_surb_reply(self, now: float, result: SurbReply) -> Store | None:
        """Return what a SURB reply (an ack or an anonymous reply) asks to store for its
        client, or None (counted) for a reply to anyone but one of this provider's clients."""
        if not self.serves(result.recipient):
            self._counts[UNEXPECTED] += 1
            return None
        return Store(result.recipient, ItemKind.REPLY, result.surb_id, result.payload, None)

    def commit(self, now: float, stores: Sequence[Store]) -> list[Send | None]:
        """Store ``stores`` in one transaction (one disk sync); return, for each in order, the
        acknowledgement to send now that it is committed, or None.

        Only a message that was committed and carries an ack SURB gets one (answered with
        ACK_PAYLOAD, ``delay`` 0: the SURB's hops add their own delays). An item whose mailbox
        is full is refused (``refused_full``); if the commit fails nothing is stored and every
        item counts in ``store_failed``: no ack, so each sender sends again later.
        """
        if not stores:
            return []
        try:
            ids = self._mailbox.store_many(
                [(s.client, s.kind, s.surb_id, s.payload) for s in stores], now)
        except StorageError:
            self._counts["store_failed"] += len(stores)
            return [None] * len(stores)
        return [self._stored(now, store, item_id)
                for store, item_id in zip(stores, ids, strict=True)]

    def _stored(self, now: float, store: Store, item_id: int | None) -> Send | None:
        """Count one item of a committed batch; return its ack if it is a stored message."""
        if item_id is None:
            self._counts["refused_full"] += 1
            return None
        if store.kind is ItemKind.REPLY:
            self._counts["replies_stored"] += 1
            return None
        self._counts["messages_stored"] += 1
        return None if store.ack_surb is None else self._ack(now, store.ack_surb)

    def _ack(self, now: float, dated: DatedSurb) -> Send | None:
        # An expired SURB's keys are erased: every hop would refuse the ack (docs/client.md).
        state = dated.state(self._view.current.epochs, self._wall(now))
        if state is not SurbState.USABLE:
            self._counts["ack_surb_expired" if state is SurbState.EXPIRED
                         else "bad_ack_surb"] += 1
            return None
        try:
            surb = Surb.from_bytes(self._params, dated.surb)
            first_hop, packet = self._sphinx.answer_surb(self._params, surb, ACK_PAYLOAD)
        except (InvalidPacket, LocalMisuse):
            self._counts["bad_ack_surb"] += 1
            return None
        self._counts["acks_sent"] += 1
        return Send(first_hop, packet, 0.0)

    def on_fetch(self, now: float, client_id: bytes, frame: Fetch) -> FetchReply:
        """Delete the items the FETCH acknowledges, then return up to ``fetch_slots`` of the
        client's oldest items and how many remain.

        Only the client's own acknowledged items are deleted (the mailbox counts the others);
        a storage failure deletes nothing (``store_failed``) and the items come back in a later
        answer. Expired items are deleted too; nothing else is deleted. A client that is not
        this provider's deletes nothing and gets an empty answer (``fetch_refused``).
        """
        if not self.serves(client_id):
            self._counts["fetch_refused"] += 1
            return FetchReply(frame.request_id, (), 0)
        if frame.ack_ids:
            try:
                self._mailbox.ack(client_id, frame.ack_ids)
            except StorageError:  # the items come back in an answer and are acked again
                self._counts["store_failed"] += 1
        try:
            self._mailbox.expire(now)
        except StorageError:  # expired items are filtered out by fetch; deleted next time
            self._counts["store_failed"] += 1
        items, remaining = self._mailbox.fetch(client_id, self._slots, now)
        self._counts["fetches"] += 1
        return FetchReply(frame.request_id, tuple(items), remaining)

    def registrations(self) -> list[Registration]:
        """Return the clients admitted at run time, with their keys (for the link gate); not
        those in :attr:`shadowed`, whose names or keys now belong to members of the topology."""
        return list(self._registered)

    def on_register(self, now: float, link_key: bytes, frame: Register
                    ) -> tuple[Registered | Error, Registration | None]:
        """Admit a client that the topology does not declare, if the policy allows it.

        ``link_key`` is the CURVE key its link authenticated; the frame must name that key.
        Returns the answer for the client and, when it is admitted, its registration (the
        runtime then lets its key through the link gate). Asking again with the same name and
        keys is answered REGISTERED again, so a client whose answer was lost can simply retry.
        The refusal codes are in docs/protocol.md; each refusal is counted.
        """
        try:
            answer, client = self._register(now, link_key, frame)
        except StorageError:
            self._counts["store_failed"] += 1
            return Error("unavailable", "try again later"), None
        if isinstance(answer, Error):
            self._counts["registration_refused"] += 1
        return answer, client

    def _register(self, now: float, link_key: bytes, frame: Register
                  ) -> tuple[Registered | Error, Registration | None]:
        network = self._view.current
        policy = network.topology.mailbox
        if not policy.open_registration:
            return Error("closed", "this provider does not admit new clients"), None
        if frame.curve_public != link_key:
            return Error("bad_request", "the key must be the one of this link"), None
        if not valid_name(frame.name):
            return Error("bad_request",
                         "a name is 1-64 letters, digits, '_', '.' or '-', not . or .."), None
        if network.is_member(frame.name):
            return Error("name_taken", "that name is taken"), None
        if network.is_member_key(link_key):
            return Error("key_taken", "this key belongs to a member of the network"), None
        existing = self._mailbox.registration_of(frame.name)
        if existing is not None and (existing.curve_public, existing.public_key) == (
                link_key, frame.public_key):
            return Registered(frame.name), existing  # the same client again
        # A full provider says so before anything else: a stranger learns no more names.
        if self._mailbox.registration_count() >= policy.registration_limit:
            return Error("full", "this provider admits no more clients"), None
        if existing is not None:
            return Error("name_taken", "that name is taken"), None
        if self._mailbox.registration_by_key(link_key) is not None:
            return Error("key_taken", "this key is registered under another name"), None
        client = Registration(entity_id(network.network, frame.name), frame.name, link_key,
                              frame.public_key)
        try:
            self._mailbox.register(client, now)
        except LocalMisuse:  # the id is taken by a row without keys (a version 2 file)
            return Error("name_taken", "that name is taken"), None
        self._registered.append(client)
        self._registered_ids.add(client.id)
        self._counts["registered"] += 1
        return Registered(frame.name), client

    def drops(self) -> dict[DropReason, int]:
        """Return the deliveries (messages and SURB replies) this core refused, as drops of the
        node by reason: a full mailbox (``mailbox_full``), a recipient that is not one of this
        provider's clients (``unexpected_delivery``). These are the events ``refused_full`` and
        ``unexpected_delivery`` of :meth:`statistics` count; the node adds them to its
        ``dropped_<reason>`` statistics, so that ``dropped_total`` holds every packet lost."""
        return {DropReason.MAILBOX_FULL: self._counts["refused_full"],
                DropReason.UNEXPECTED_DELIVERY: self._counts[UNEXPECTED]}

    def statistics(self) -> dict[str, int]:
        """Return the provider's counters (the mailbox keeps its own, see Mailbox.statistics).

        drops_received, unexpected_delivery, bad_envelope, refused_full, store_failed,
        messages_stored, replies_stored, acks_sent, bad_ack_surb, ack_surb_expired, fetches,
        fetch_refused,
        registered, registration_refused.
        """
        return {name: self._counts[name] for name in _COUNTERS}
