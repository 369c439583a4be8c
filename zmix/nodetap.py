"""A node's tap: what crossed its links, for measuring a real network's anonymity (sans-IO).

When the topology says ``node: {taps: true}``, every node writes one JSON line per event to
``STATE/taps/NAME.jsonl`` (docs/privacy.md, "Node taps"), which ``zmix-sim --from-taps`` merges
into the records the adversary's analysis reads:

- ``in``: a packet from one of this provider's clients arrived;
- ``out``: a packet left for a node (or, in a fetch answer, a mailbox item for a client), with the
  hash of the packet it came from (``parent``; null for a packet this node made: an ack, a mix
  loop);
- ``end``: a packet this node received left it without a transmission (discarded, dropped, a
  loop home, stored and not yet fetched does not count: it leaves in a fetch).

A packet is named by ``h``, the first 16 bytes of BLAKE2b of its bytes, which both ends of a link
compute alike. The tap follows a packet through the node: the centre tells it which packets it
handed to which worker (in order: a worker answers its jobs in the order it got them), which
result came back for which of them, and which packet it sends for which result. This undoes the
node's mixing for whoever reads the file: a tap is a measurement tool, never for a network
people rely on.

Nothing here reads a clock or opens a file: times come in, lines go out through ``write``.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence

from zmix.provider import mailbox_payload
from zmix.sphinx import FinalDelivery, SphinxParams, SurbReply
from zmix.wire import Buffer

Write = Callable[[str], None]


def packet_hash(data: bytes) -> str:
    """Return the tap's name of a packet: the first 16 bytes of BLAKE2b-512 of its bytes, as
    32 lowercase hex digits."""
    return hashlib.blake2b(data).digest()[:16].hex()


class NodeTap:
    """The tap of one node: call its methods as packets come, go and end; it writes the lines.

    ``write`` takes one line (no newline); ``names`` gives a member's name from its id (None for
    an id that is no member: such packets are left out); ``wall`` turns the node's ``now`` into
    unix time. ``params`` is the network's Sphinx geometry (to read a delivery's mailbox item).
    """

    def __init__(self, write: Write, names: Callable[[bytes], str | None],
                 wall: Callable[[float], float], params: SphinxParams) -> None:
        self._write = write
        self._names = names
        self._wall = wall
        self._params = params
        self._by_worker: dict[int, collections.deque[str]] = collections.defaultdict(
            collections.deque)
        self._parents: dict[bytes, str] = {}  # a packet waiting to leave -> what it came from
        self._stored: dict[bytes, str] = {}  # a mailbox item's payload -> what brought it
        self.lines = 0
        self.unmatched = 0  # results with no packet of theirs on record (a replaced worker)

    def _line(self, now: float, ev: str, **fields: object) -> None:
        self._write(json.dumps({"t": self._wall(now), "ev": ev, **fields},
                               separators=(",", ":")))
        self.lines += 1

    # ------------------------------------------------------------------ packets in

    def arrived_from_client(self, now: float, client: bytes, packet: bytes) -> str:
        """Note a packet from a client (its first hop here); return its hash."""
        h = packet_hash(packet)
        name = self._names(client)
        if name is not None:
            self._line(now, "in", peer=name, h=h)
        return h

    def relayed(self, packet: bytes, parent: str) -> None:
        """A client's SURB answer (hashed ``parent`` as it came in) goes on as ``packet``."""
        self._parents[packet] = parent

    def handed_to_worker(self, index: int, packets: Iterable[bytes]) -> None:
        """Worker ``index`` was given ``packets``, in this order."""
        self._by_worker[index].extend(packet_hash(p) for p in packets)

    def worker_replaced(self, index: int) -> None:
        """Worker ``index`` died: what it held will never come back."""
        self._by_worker.pop(index, None)

    def result(self, index: int) -> str | None:
        """Return the hash of the packet whose result worker ``index`` just returned (its
        oldest job), or None if none is on record."""
        queue = self._by_worker.get(index)
        if not queue:
            self.unmatched += 1
            return None
        return queue.popleft()

    # ------------------------------------------------------------------ what became of them

    def forwarded(self, packet: bytes, parent: str | None) -> None:
        """The result of the packet ``parent`` is ``packet``, to be sent when due."""
        if parent is not None:
            self._parents[packet] = parent

    def delivered(self, result: FinalDelivery | SurbReply, parent: str | None) -> None:
        """``parent``'s result is an item for a client's mailbox (a fetch hands it out)."""
        payload = mailbox_payload(self._params, result)
        if parent is not None and payload is not None:
            self._stored[payload] = parent

    def ended(self, now: float, parent: str | None) -> None:
        """The packet ``parent`` left this node without a transmission."""
        if parent is not None:
            self._line(now, "end", h=parent)

    # ------------------------------------------------------------------ packets out

    def sent(self, now: float, sends: Sequence[tuple[bytes, Buffer]]) -> None:
        """``(next hop id, packet)`` pairs leave now (a packet may be a view)."""
        for next_hop, view in sends:
            packet = bytes(view)
            name = self._names(next_hop)
            parent = self._parents.pop(packet, None)
            if name is not None:
                self._line(now, "out", peer=name, h=packet_hash(packet), parent=parent)

    def dropped(self, now: float, packets: Iterable[bytes]) -> None:
        """Packets waiting to leave were dropped instead (shutdown, a full queue)."""
        for packet in packets:
            self.ended(now, self._parents.pop(packet, None))

    def fetched(self, now: float, client: bytes, payloads: Iterable[bytes]) -> None:
        """A fetch answer hands these mailbox items to ``client``: each an ``out`` with a fresh
        hash and, as parent, the packet that brought it (items a second answer repeats, because
        the first was not acknowledged, are written once)."""
        name = self._names(client)
        for payload in payloads:
            parent = self._stored.pop(payload, None)
            if name is not None and parent is not None:
                self._line(now, "out", peer=name, h=packet_hash(parent.encode() + payload),
                           parent=parent)
