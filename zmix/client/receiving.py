"""The client's receiving side: fetched items in, acks, replies, reassembled messages out (sans-IO).

:class:`Receiver` opens every fetched mailbox item: an answer to one of the client's SURBs (an ack
of one of its fragments, or a reply to one of its messages), one of its own loops coming home, or
a fragment of a message to it. It reassembles messages in the store and keeps the inbox. Acks are
returned to the caller, which hands them to the sending side; the caller holds the store's
transaction around :meth:`Receiver.take_in`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from zmix import crypto
from zmix.client.results import ReceivedMessage
from zmix.clientstore import SURB_ACK, ClientStore, InboxEntry, IncomingMeta, StoredSurb
from zmix.envelope import ACK_PAYLOAD, dated_surb_length
from zmix.errors import InvalidPacket
from zmix.fragment import ContentKind, Fragment, open_content, parse_fragment, verify_signed
from zmix.keys import PrivateIdentity
from zmix.looptrack import LoopRoutes, Return
from zmix.network import NetworkView
from zmix.sphinx import SurbKeys
from zmix.sphinx.ops import SPHINX, SphinxOps
from zmix.wire import ItemKind, MailboxItem

STATISTICS = ("loops_returned", "loops_late", "unknown_loops", "messages_received",
              "duplicates_dropped", "inconsistent_fragments", "undecryptable", "unknown_sender",
              "unknown_surb", "bad_reassembly")


@dataclass(frozen=True, slots=True)
class Ack:
    """A valid ack of fragment ``index`` of the client's message ``message_id``."""

    message_id: bytes
    index: int


@dataclass(slots=True)
class TakenIn:
    """What a batch of fetched items gave: the messages they completed and the acks they held."""

    messages: list[ReceivedMessage] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)


class Receiver:
    """The incoming side of one client.

    A signed fragment's sender is named by its id and checked against that client's key in the
    current version of the network ``view`` holds.
    """

    def __init__(self, view: NetworkView, identity: PrivateIdentity, store: ClientStore,
                 loops: LoopRoutes | None = None, sphinx: SphinxOps = SPHINX) -> None:
        self._view = view
        self._params = view.current.topology.sphinx  # fixed: NetworkView.replace keeps it
        self._me = identity
        self._sphinx = sphinx  # opens SURB replies
        self._block_length = dated_surb_length(self._params)  # a reply block in fragment 0
        self._store = store
        self.loops = LoopRoutes() if loops is None else loops  # whose loops come back here
        self._counts: Counter[str] = Counter()

    def take_in(self, now: float, items: Sequence[MailboxItem]) -> TakenIn:
        """Open fetched mailbox items; return the messages they completed and the acks in them.

        Items that are not for us, do not decrypt or duplicate earlier ones are counted and
        dropped, never raised.
        """
        taken = TakenIn()
        for item in items:
            try:
                if item.kind is ItemKind.REPLY:
                    self._on_reply(now, item, taken)
                else:
                    taken.messages.extend(self._on_message(now, item.payload))
            except InvalidPacket:
                self._counts["undecryptable"] += 1
        return taken

    def _on_reply(self, now: float, item: MailboxItem, taken: TakenIn) -> None:
        stored = self._store.take_surb(item.surb_id)
        if stored is None:
            self._counts["unknown_surb"] += 1
            return
        keys = SurbKeys.from_bytes(stored.keys)
        content = self._sphinx.open_surb_reply(self._params, keys, item.payload)
        if stored.kind == SURB_ACK:
            self._on_ack(stored, content, taken)
            return
        fragment = parse_fragment(content, self._block_length)
        if fragment.count != 1:
            self._counts["undecryptable"] += 1
            return
        taken.messages.extend(self._deliver(now, fragment, None))

    def _on_ack(self, stored: StoredSurb, content: bytes, taken: TakenIn) -> None:
        if not crypto.equal(content, ACK_PAYLOAD):
            self._counts["undecryptable"] += 1
            return
        taken.acks.append(Ack(stored.message_id, stored.index))

    def _on_message(self, now: float, payload: bytes) -> list[ReceivedMessage]:
        content = open_content(self._me.public_key, self._me.private_key, payload)
        if content.kind is ContentKind.LOOP:
            self._on_loop(now, content.ident)
            return []
        sender: str | None = None
        plain = content.rest
        if content.kind is ContentKind.SIGNED:
            network = self._view.current
            sender = network.client_name(content.ident)
            if sender is None:
                self._counts["unknown_sender"] += 1
                return []
            plain = verify_signed(network.client_key(sender), self._me.private_key, content.rest)
        return self._deliver(now, parse_fragment(plain, self._block_length), sender)

    def _on_loop(self, now: float, loop_id: bytes) -> None:
        """Count a loop of ours that came back: returned (on its route if this run sent it),
        late (already counted lost), or unknown (not in the store)."""
        if self._store.take_loop(loop_id) is None:
            self._counts["unknown_loops"] += 1
            return
        late = self.loops.returned(loop_id, now) is Return.LATE
        self._counts["loops_late" if late else "loops_returned"] += 1

    def _deliver(self, now: float, f: Fragment, sender: str | None) -> list[ReceivedMessage]:
        """Store a fragment; return the message if it was the last one missing."""
        store = self._store
        if store.is_completed(f.message_id):
            self._counts["duplicates_dropped"] += 1
            return []
        meta = store.meta(f.message_id)
        if meta is None:
            store.start_incoming(f.message_id, IncomingMeta(f.count, f.total, sender, None, b""),
                                 now)
        elif (meta.count, meta.total, meta.sender) != (f.count, f.total, sender):
            self._counts["inconsistent_fragments"] += 1  # not from the same sender and message
            return []
        if not store.add_fragment(f.message_id, f.index, f.data):
            self._counts["duplicates_dropped"] += 1
            return []
        if f.index == 0:
            store.set_first_fragment_meta(f.message_id, f.filename, b"".join(f.reply_surbs))
        if store.fragment_count(f.message_id) < f.count:
            return []
        return self._complete(now, f.message_id, sender)

    def _complete(self, now: float, message_id: bytes, sender: str | None,
                  ) -> list[ReceivedMessage]:
        meta = self._store.meta(message_id)
        data = self._store.assemble(message_id)
        if meta is None or len(data) != meta.total:
            self._counts["bad_reassembly"] += 1
            self._store.discard_incoming(message_id)
            return []
        size = self._block_length
        blocks = [meta.reply_surbs[i:i + size] for i in range(0, len(meta.reply_surbs), size)]
        handle = message_id if blocks else None
        self._store.complete(InboxEntry(message_id, sender, meta.filename, data, now, handle),
                             blocks)
        self._counts["messages_received"] += 1
        return [ReceivedMessage(message_id, sender, data, meta.filename, now, handle)]

    # ------------------------------------------------------------------ inbox

    def inbox(self) -> list[ReceivedMessage]:
        """Return finished messages not yet marked delivered, oldest first."""
        return [ReceivedMessage(e.message_id, e.sender, e.data, e.filename, e.received_at,
                                e.reply_handle) for e in self._store.inbox()]

    def inbox_message(self, message_id: bytes) -> ReceivedMessage | None:
        """Return the undelivered message ``message_id`` of the inbox, or None."""
        e = self._store.inbox_entry(message_id)
        return None if e is None else ReceivedMessage(e.message_id, e.sender, e.data, e.filename,
                                                      e.received_at, e.reply_handle)

    def inbox_count(self) -> int:
        """Return how many messages wait in the inbox."""
        return self._store.inbox_count()

    def mark_delivered(self, message_id: bytes) -> None:
        """Forget a shown message's data (its reply blocks stay usable)."""
        self._store.mark_delivered(message_id)

    def statistics(self) -> dict[str, int]:
        """Return the receiving side's counters."""
        return {name: self._counts[name] for name in STATISTICS}
