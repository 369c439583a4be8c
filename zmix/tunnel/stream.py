"""One circuit's byte stream, sans-IO (docs/tunnel.md, "Reliability and flow control").

:class:`Stream` is one end of a circuit: it cuts the bytes its TCP side wrote into numbered DATA
segments, sends them within the peer's window, retransmits what was not acknowledged in time, and
puts the peer's segments back in order, dropping duplicates; FIN takes the sequence number after
the last DATA. Acks are cumulative plus selective ranges; the window is in segments. Time is an
argument.

The two ends differ in one thing: what the exit sends travels through reply blocks that nothing
acknowledges, so the exit retransmits (``resend_data``); what the proxy sends is a mixnet message
that the proxy's client core retransmits until the exit's provider has it, so the proxy never sends
a segment twice and, when an ack is late, only asks for one (``probe``, the ANSWER flag).

:class:`BlockLedger` (the proxy) and :class:`BlockPurse` (the exit) account for the reply blocks
the exit needs to speak at all.
"""

from __future__ import annotations

import collections
import math
from collections import deque
from dataclasses import dataclass, field

from zmix.tunnel.frames import (
    DATA_OVERHEAD,
    FIN_BYTES,
    MAX_RANGES,
    Ack,
    Data,
    Fin,
    Segment,
    ack_bytes,
)

Counters = collections.Counter[str]


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """The numbers of one stream end (docs/tunnel.md, "The numbers")."""

    window: int = 128  # segments the receiver holds: it accepts seq < consumed + window
    send_buffer: int = 128 * 1024  # bytes taken from the TCP side and not yet cut into segments
    resend_data: bool = True  # False: never resend a segment, probe for an ack instead
    rto_initial: float = 4.0  # seconds before the first retransmission, until an RTT is measured
    rto_min: float = 1.0
    rto_max: float = 30.0
    max_retries: int = 8  # sends of one segment (or probes) without an ack before giving up
    idle_timeout: float = 120.0  # seconds without any ack while something is unacknowledged
    ack_delay: float = 0.2  # seconds an ack of in-order data may wait for more data
    ack_every: int = 8  # segments received that make an ack due at once


@dataclass(slots=True)
class _Sent:
    """A segment sent and not yet acknowledged."""

    payload: bytes | None  # None: the FIN
    last_sent: float
    tries: int = 1


@dataclass(frozen=True, slots=True)
class Batch:
    """What one message of a stream carries: its segments, and whether it asks for an answer."""

    segments: tuple[Segment, ...]
    answer: bool = False


@dataclass(slots=True)
class _Receiver:
    """The receiving half: reordering, the in-order data not yet taken, the FIN."""

    next: int = 0  # the next sequence number expected in order
    consumed: int = 0  # segments (and the FIN) handed to the TCP side completely
    ready: deque[bytes] = field(default_factory=deque)  # in-order payloads not yet taken
    offset: int = 0  # bytes of ready[0] already taken
    early: dict[int, bytes | None] = field(default_factory=dict)  # out of order; None = FIN
    fin_seq: int | None = None  # the FIN's sequence number, once it arrived (in order or not)
    fin: bool = False  # the FIN arrived in order: nothing more comes


class Stream:
    """One end of a circuit's reliable byte stream."""

    def __init__(self, config: StreamConfig, now: float, counters: Counters | None = None) -> None:
        self.config = config
        self.counters = counters if counters is not None else collections.Counter()
        # sending
        self._pending = bytearray()
        self._finish = False
        self._fin_seq: int | None = None
        self._next_seq = 0
        self._flight: dict[int, _Sent] = {}
        self._peer_edge = config.window  # the peer's window until its first ack says otherwise
        self._rack = -math.inf  # when the latest segment acked on its first send was sent
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = config.rto_initial
        self._last_progress = now
        self._probes = 0
        self._probe_at = math.inf
        self.failed = False
        # receiving
        self._rx = _Receiver()
        self._ack_at = math.inf
        self._ack_owed = False
        self._unacked_rx = 0
        self._advertised = config.window

    # ---- the TCP side --------------------------------------------------------------------------

    def send_room(self) -> int:
        """Return how many more bytes :meth:`write` takes now (0 once finished)."""
        if self._finish or self.failed:
            return 0
        return max(0, self.config.send_buffer - len(self._pending))

    def write(self, data: bytes) -> int:
        """Take up to :meth:`send_room` bytes of ``data``; return how many were taken."""
        taken = data[:self.send_room()]
        self._pending += taken
        return len(taken)

    def finish(self) -> None:
        """The TCP side ended: send FIN after the data taken so far."""
        self._finish = True

    def readable(self) -> bytes:
        """Return the in-order data not yet taken (a prefix of it; b"" if none)."""
        rx = self._rx
        return rx.ready[0][rx.offset:] if rx.ready else b""

    def consume(self, count: int, now: float) -> None:
        """The TCP side took ``count`` bytes of :meth:`readable`; free their window."""
        rx = self._rx
        rx.offset += count
        while rx.ready and rx.offset >= len(rx.ready[0]):
            rx.offset -= len(rx.ready.popleft())
            rx.consumed += 1
        self._consume_fin()
        if self._edge() - self._advertised >= max(1, self.config.window // 4):
            self._ack_now(now)  # the peer may be waiting for this window

    def _consume_fin(self) -> None:
        """Count the FIN as taken once every byte before it was."""
        rx = self._rx
        if rx.fin and not rx.ready and rx.consumed == rx.next - 1:
            rx.consumed = rx.next

    @property
    def eof(self) -> bool:
        """Return True once the peer's FIN arrived and every byte before it was taken."""
        return self._rx.fin and not self._rx.ready

    @property
    def fin_acked(self) -> bool:
        """Return True once our FIN was acknowledged."""
        return self._fin_seq is not None and not self._flight and not self._pending

    @property
    def done(self) -> bool:
        """Return True once both directions ended: our FIN acknowledged and the peer's taken."""
        return self.fin_acked and self.eof

    @property
    def unsent(self) -> bool:
        """Return True if bytes (or the FIN) wait to be cut into segments and sent."""
        return bool(self._pending) or (self._finish and self._fin_seq is None)

    @property
    def ack_owed(self) -> bool:
        """Return True if something arrived that our last ack did not cover."""
        return self._ack_owed

    @property
    def unacknowledged(self) -> bool:
        """Return True if something sent or to send waits for its ack."""
        return bool(self._flight or self._pending) or (self._finish and self._fin_seq is None)

    def peer_finished(self) -> bool:
        """The peer says the circuit ended normally (RESET(CLOSED)): it had our FIN, so what we
        sent needs no more acks. Return True if that is consistent (we sent our FIN and have the
        peer's in order), else False (the caller resets)."""
        if self._fin_seq is None or not self._rx.fin:
            return False
        self._flight.clear()
        self._probe_at = math.inf
        return True

    # ---- segments from the peer ---------------------------------------------------------------

    def receive(self, now: float, segment: Segment) -> None:
        """Take one DATA, FIN or ACK from the peer (other segments are the circuit's business)."""
        if isinstance(segment, Ack):
            self._on_ack(now, segment)
        elif isinstance(segment, Data):
            self._on_segment(now, segment.seq, segment.payload)
        elif isinstance(segment, Fin):
            self._on_segment(now, segment.seq, None)

    def request_ack(self, now: float) -> None:
        """The peer asked for an answer: an ack is due now."""
        self._ack_now(now)

    def _on_segment(self, now: float, seq: int, payload: bytes | None) -> None:
        """File a DATA (payload) or FIN (None) segment."""
        rx = self._rx
        if seq < rx.next or seq in rx.early:
            self.counters["duplicates"] += 1
            self._ack_now(now)  # the peer resent it: our ack was lost or late
            return
        if seq >= self._edge() or not self._fits_fin(seq, payload is None):
            self.counters["out_of_window"] += 1
            self._ack_now(now)
            return
        rx.early[seq] = payload
        if payload is None:
            rx.fin_seq = seq
        while rx.next in rx.early and not rx.fin:
            piece = rx.early.pop(rx.next)
            rx.next += 1
            if piece is None:
                rx.fin = True
                rx.early.clear()  # nothing can follow the FIN
            else:
                rx.ready.append(piece)
        self._consume_fin()
        self._unacked_rx += 1
        # Out of order waits like in order: mix delays reorder most segments, and every ack
        # costs a packet (and, from the exit, a reply block); the selective ranges tell the rest.
        if rx.fin or self._unacked_rx >= self.config.ack_every:
            self._ack_now(now)
        else:
            self._ack_owed = True
            self._ack_at = min(self._ack_at, now + self.config.ack_delay)

    def _fits_fin(self, seq: int, is_fin: bool) -> bool:
        """Return False for a segment after the peer's FIN, or a FIN before segments held."""
        fin_seq = self._rx.fin_seq
        if fin_seq is not None:
            return seq < fin_seq
        return not is_fin or all(other < seq for other in self._rx.early)

    def _edge(self) -> int:
        """Return the first sequence number the peer may not send."""
        return self._rx.consumed + self.config.window

    def _ack_now(self, now: float) -> None:
        """Make an ack due at once."""
        self._ack_owed = True
        self._ack_at = now

    def _on_ack(self, now: float, ack: Ack) -> None:
        """Drop what ``ack`` covers, take an RTT sample, widen the peer's window."""
        if ack.cumulative > self._next_seq or any(end > self._next_seq for _, end in ack.ranges):
            self.counters["bad_acks"] += 1  # it acknowledges what was never sent
            return
        self._peer_edge = max(self._peer_edge, ack.edge)
        covered = [seq for seq in self._flight if seq < ack.cumulative]
        for start, end in ack.ranges:
            covered.extend(seq for seq in range(start, end) if seq in self._flight)
        for seq in covered:
            sent = self._flight.pop(seq)
            if sent.tries == 1:
                self._sample(now - sent.last_sent)
                self._rack = max(self._rack, sent.last_sent)
        if covered:
            self._last_progress = now
            self._probes = 0
            self._probe_at = now + self._rto if self._flight and not self.config.resend_data \
                else math.inf

    def _sample(self, rtt: float) -> None:
        """Update the smoothed RTT and the retransmission timeout (RFC 6298)."""
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._rto = min(self.config.rto_max, max(self.config.rto_min,
                                                 self._srtt + 4 * self._rttvar))

    def window_free(self) -> int:
        """Return how many more segments the peer may send now (our receive window)."""
        return max(0, self._edge() - self._rx.next)

    def probe_due(self, now: float) -> bool:
        """Return True if the next :meth:`take` asks for an answer (a late ack, proxy only)."""
        return self._probe_at <= now

    @property
    def rto(self) -> float:
        """Return the current retransmission timeout in seconds."""
        return self._rto

    # ---- segments to the peer -----------------------------------------------------------------

    def _retry_due(self, sent: _Sent) -> float:
        """Return when a segment sent ``sent.tries`` times is due again (exponential backoff)."""
        return sent.last_sent + min(self.config.rto_max, self._rto * 2.0 ** (sent.tries - 1))

    def _resends(self, now: float) -> list[int]:
        """Return the sequence numbers due for retransmission now, oldest first: those whose
        timeout passed, and those sent a reordering window before a segment already acked
        (RACK, RFC 8985: a loss shows after one round trip, not after a timeout)."""
        if not self.config.resend_data:
            return []
        return sorted(seq for seq, sent in self._flight.items() if self._lost(now, sent))

    def _lost(self, now: float, sent: _Sent) -> bool:
        """Return True if ``sent`` is due again: its timeout passed, or RACK says it is lost."""
        reorder = max(0.01, (self._srtt or self._rto) / 2, 2 * self._rttvar)
        return self._retry_due(sent) <= now or sent.last_sent + reorder < self._rack

    def _can_send_new(self) -> bool:
        """Return True if a new DATA or the FIN may go now (window and something to send)."""
        if self._next_seq >= self._peer_edge or self._fin_seq is not None:
            return False
        return bool(self._pending) or self._finish

    def wants_to_send(self, now: float) -> bool:
        """Return True if a message of this stream is due now (data, FIN, retransmission, ack
        or probe)."""
        if self.failed:
            return False
        return (self._ack_at <= now or self._can_send_new() or self._probe_at <= now
                or (self.config.resend_data
                    and any(self._lost(now, sent) for sent in self._flight.values())))

    def take(self, now: float, room: int, *, force_ack: bool = False) -> Batch:
        """Return the segments for one message of at most ``room`` bytes: an ack if one is owed
        (always with ``force_ack``), retransmissions due, then new data and the FIN within the
        peer's window. Marks them sent."""
        segments: list[Segment] = []
        if self._ack_owed or force_ack or self._ack_at <= now:
            ack = self.ack()
            if ack_bytes(ack) <= room:
                segments.append(ack)
                room -= ack_bytes(ack)
                self._acked_sent()
        for seq in self._resends(now):
            room = self._resend(now, seq, room, segments)
        while self._can_send_new() and room > DATA_OVERHEAD:
            room = self._send_new(now, room, segments)
            if room < 0:
                break
        answer = self._probe_at <= now
        if answer:
            self._probes += 1
            self.counters["probes"] += 1
            self._probe_at = now + min(self.config.rto_max, self._rto * 2.0 ** self._probes)
        return Batch(tuple(segments), answer)

    def ack(self) -> Ack:
        """Return the ack describing what arrived (cumulative, window edge, selective ranges)."""
        return Ack(self._rx.next, self._edge(), self._ranges())

    def _acked_sent(self) -> None:
        """An ack left: nothing is owed until more arrives."""
        self._ack_owed = False
        self._ack_at = math.inf
        self._unacked_rx = 0
        self._advertised = self._edge()

    def _ranges(self) -> tuple[tuple[int, int], ...]:
        """Return the out-of-order segments held as [start, end) ranges, lowest first."""
        ranges: list[tuple[int, int]] = []
        for seq in sorted(self._rx.early):
            if ranges and ranges[-1][1] == seq:
                ranges[-1] = (ranges[-1][0], seq + 1)
            elif len(ranges) == MAX_RANGES:
                break
            else:
                ranges.append((seq, seq + 1))
        return tuple(ranges)

    def _resend(self, now: float, seq: int, room: int, segments: list[Segment]) -> int:
        """Put segment ``seq`` in ``segments`` again if it fits; return the room left."""
        sent = self._flight[seq]
        size = FIN_BYTES if sent.payload is None else DATA_OVERHEAD + len(sent.payload)
        if size > room:
            return room
        if sent.tries >= self.config.max_retries:
            self.failed = True  # the caller resets the circuit
            self.counters["gave_up"] += 1
            return room
        sent.tries += 1
        sent.last_sent = now
        self.counters["retransmissions"] += 1
        segments.append(Fin(seq) if sent.payload is None else Data(seq, sent.payload))
        return room - size

    def _send_new(self, now: float, room: int, segments: list[Segment]) -> int:
        """Cut the next DATA (or make the FIN) into ``segments``; return the room left, or -1
        if nothing fitted."""
        seq = self._next_seq
        if self._pending:
            size = min(len(self._pending), room - DATA_OVERHEAD)
            payload = bytes(self._pending[:size])
            del self._pending[:size]
            segments.append(Data(seq, payload))
            room -= DATA_OVERHEAD + size
        elif room >= FIN_BYTES:
            payload = None
            self._fin_seq = seq
            segments.append(Fin(seq))
            room -= FIN_BYTES
        else:
            return -1
        if not self._flight:
            self._last_progress = now  # the idle timeout runs while something is unacknowledged
        self._flight[seq] = _Sent(payload, now)
        self._next_seq += 1
        self.counters["segments_sent"] += 1
        if not self.config.resend_data and self._probe_at == math.inf:
            self._probe_at = now + self._rto
        return room

    # ---- time -----------------------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        """Give up after the idle timeout, or after ``max_retries`` unanswered probes (proxy)."""
        if self.failed or not self._flight:
            return
        if now - self._last_progress >= self.config.idle_timeout or (
                not self.config.resend_data and self._probes >= self.config.max_retries
                and self._probe_at <= now):
            self.failed = True
            self.counters["gave_up"] += 1

    def next_deadline(self) -> float:
        """Return when :meth:`on_timer` or :meth:`take` next has work (math.inf for none)."""
        if self.failed:
            return math.inf
        times = [self._ack_at, self._probe_at]
        if self._flight:
            times.append(self._last_progress + self.config.idle_timeout)
            if self.config.resend_data:
                times.extend(self._retry_due(sent) for sent in self._flight.values())
        return min(times)


class BlockLedger:
    """The proxy's account of the reply blocks it gave the exit for one circuit.

    The exit spends blocks in the order they reached it (about the order they were sent) and
    reports, in every message, how many it used so far. A block is counted fresh for half of
    ``lifetime`` (the shortest life a reply block has: one key epoch), after which the proxy
    sends new ones rather than trust it."""

    def __init__(self, lifetime: float, usage_window: float = 4.0) -> None:
        self.lifetime = lifetime
        self.usage_window = usage_window
        self._grants: deque[tuple[float, int]] = deque()  # (time sent, blocks), oldest first
        self._reports: deque[tuple[float, int]] = deque()  # (time, used): the recent reports
        self.granted = 0
        self.used = 0

    def grant(self, now: float, blocks: int) -> None:
        """``blocks`` reply blocks left for the exit at ``now``."""
        if blocks > 0:
            self._grants.append((now, blocks))
            self.granted += blocks

    def report(self, now: float, used: int) -> None:
        """The exit said at ``now`` it used ``used`` blocks so far (reports may arrive out of
        order: the largest counts)."""
        self.used = min(self.granted, max(self.used, used))
        self._reports.append((now, self.used))
        while now - self._reports[0][0] > self.usage_window:
            self._reports.popleft()

    def rate(self, now: float) -> float:
        """Return the blocks per second the exit used over the last ``usage_window`` seconds."""
        while self._reports and now - self._reports[0][0] > self.usage_window:
            self._reports.popleft()
        if not self._reports:
            return 0.0
        return (self.used - self._reports[0][1]) / self.usage_window

    def fresh(self, now: float) -> int:
        """Return how many blocks the exit should hold that are not used and not near expiry."""
        outstanding = self.granted - self.used
        fresh = 0
        for sent, blocks in reversed(self._grants):
            if outstanding <= 0:
                break
            take = min(blocks, outstanding)
            outstanding -= take
            if now - sent < self.lifetime / 2:
                fresh += take
        while self._grants and now - self._grants[0][0] >= self.lifetime:
            self._grants.popleft()  # expired at the exit whatever happened to them
        return fresh

    def next_stale(self, now: float) -> float:
        """Return when the next grant stops counting as fresh, after ``now`` (math.inf if
        none)."""
        for sent, _ in self._grants:
            if sent + self.lifetime / 2 > now:
                return sent + self.lifetime / 2
        return math.inf


@dataclass(slots=True)
class _Handle:
    """A reply handle and how many of its blocks are still unused."""

    handle: bytes
    left: int


class BlockPurse:
    """The exit's reply handles for one circuit, oldest first, with their unused block counts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._handles: deque[_Handle] = deque()
        self.used = 0  # blocks used or found unusable, cumulative
        self.held = 0

    def add(self, handle: bytes, blocks: int) -> int:
        """Keep ``blocks`` blocks reachable through ``handle``; return how many of the oldest
        were dropped to stay within the limit."""
        if blocks <= 0:
            return 0
        self._handles.append(_Handle(handle, blocks))
        self.held += blocks
        dropped = 0
        while self.held > self.limit:
            dropped += self._drop_oldest()
        return dropped

    def first(self) -> bytes | None:
        """Return the handle to spend the next block of (None: no block held)."""
        return self._handles[0].handle if self._handles else None

    def spent(self) -> None:
        """One block of :meth:`first`'s handle was used."""
        entry = self._handles[0]
        entry.left -= 1
        self.used += 1
        self.held -= 1
        if entry.left == 0:
            self._handles.popleft()

    def unusable(self) -> int:
        """:meth:`first`'s handle has no usable block left (expired); drop it, return how many
        blocks that was."""
        return self._drop_oldest()

    def _drop_oldest(self) -> int:
        """Drop the oldest handle; return its blocks."""
        count = self._handles.popleft().left
        self.used += count
        self.held -= count
        return count
