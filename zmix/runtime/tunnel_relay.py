"""What the tunnel's two services share (docs/tunnel.md): a TCP socket joined to a circuit's
stream, the tombstones of ended circuits, pacing against the client's payload queue, and the
decoding of tunnel messages with its counters. The services are in :mod:`zmix.runtime.tunnel`
(the proxy) and :mod:`zmix.runtime.tunnel_exit` (the exit).
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from zmix.client import ReceivedMessage
from zmix.runtime.services import MixnetPort
from zmix.tunnel import frames
from zmix.tunnel.frames import FrameError, Message, OpenResult, Reset, Segment
from zmix.tunnel.stream import Counters, Stream

POLLIN = 1  # zmq.POLLIN
POLLOUT = 2  # zmq.POLLOUT
POLLERR = 4  # zmq.POLLERR

MAX_BLOCKS = 4  # reply blocks one proxy message carries at most (the client's limit)
QUEUE_SECONDS = 0.25  # keep the client's payload queue under this many seconds of lambda_P
RECV_CHUNK = 16 * 1024
TOMBSTONE_SECONDS = 120.0  # how long an ended circuit's last word is repeated to late messages
MAX_TOMBSTONES = 4096
KEEPALIVE = 60.0  # the proxy sends at least one message per circuit this often


class Broken(Exception):
    """The TCP side of a circuit failed (reset, error)."""


@dataclass(slots=True)
class Pipe:
    """A TCP socket joined to a stream: reads into it while it has room, writes what arrived,
    and passes each side's end on (FIN -> shutdown(SHUT_WR); EOF -> FIN)."""

    sock: socket.socket
    stream: Stream
    read_eof: bool = False
    write_shut: bool = False

    def mask(self) -> int:
        """Return the poll events this pipe waits for now."""
        mask = 0
        if not self.read_eof and self.stream.send_room() > 0:
            mask |= POLLIN
        if self.stream.readable():
            mask |= POLLOUT
        return mask

    def on_ready(self, now: float, events: int, counters: Counters, read_key: str,
                 write_key: str) -> None:
        """Move bytes both ways. Raises Broken if the socket failed."""
        if events & (POLLIN | POLLERR) and not self.read_eof:
            self._read(counters, read_key)
        if events & (POLLOUT | POLLERR):
            self._write(now, counters, write_key)
        self.shut_if_done()

    def _read(self, counters: Counters, key: str) -> None:
        """Read what fits in the stream's send buffer."""
        room = self.stream.send_room()
        if room <= 0:
            return
        try:
            data = self.sock.recv(min(room, RECV_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            raise Broken() from None
        if not data:
            self.read_eof = True
            self.stream.finish()
            return
        self.stream.write(data)
        counters[key] += len(data)

    def _write(self, now: float, counters: Counters, key: str) -> None:
        """Write what arrived in order, as much as the socket takes."""
        while data := self.stream.readable():
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                raise Broken() from None
            self.stream.consume(sent, now)
            counters[key] += sent
            if sent < len(data):
                return

    def shut_if_done(self) -> None:
        """Half-close the socket's sending side once the peer's FIN was written out."""
        if self.stream.eof and not self.write_shut:
            self.write_shut = True
            with contextlib.suppress(OSError):  # the peer may be gone already
                self.sock.shutdown(socket.SHUT_WR)


def close_socket(sock: socket.socket | None, *, abort: bool = False) -> None:
    """Close ``sock``; with ``abort`` the peer sees a TCP reset rather than an end."""
    if sock is None:
        return
    if abort:
        with contextlib.suppress(OSError):  # linger on, 0 s: close sends RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def queue_limit(port: MixnetPort) -> int:
    """Return how many packets the client's payload queue may hold before the tunnel waits."""
    return max(2, math.ceil(port.payload_rate() * QUEUE_SECONDS))


def tick(port: MixnetPort) -> float:
    """Return the shortest wait between two turns of a service: one payload-stream interval
    (at most 0.5 s), so that a service with something due but a full queue does not spin."""
    return min(0.5, 1.0 / max(port.payload_rate(), 2.0))


C = TypeVar("C")


class Pump(Generic[C]):
    """A service's sending turn: round robin over its circuits, one message each per round,
    while the client's payload queue is short (:func:`queue_limit`). It remembers where the
    last round began (so no circuit always goes first), when the last turn ran, and when to try
    again after the queue was full."""

    def __init__(self) -> None:
        self.turn = 0
        self.retry_at = math.inf  # when to try again after the queue was full
        self.last_turn = -math.inf

    def run(self, now: float, port: MixnetPort, candidates: Callable[[], list[C]],
            live: Callable[[C], bool], send_one: Callable[[C], bool],
            waiting: Callable[[list[C]], bool]) -> None:
        """Send rounds until no circuit of ``candidates()`` sends (``send_one``; a circuit
        that ended during the round, not ``live``, is skipped) or the queue is full; then, if
        ``waiting(order)`` says a circuit still has something due, ask to be run again after
        one payload-stream interval."""
        self.retry_at = math.inf
        self.last_turn = now
        limit = queue_limit(port)
        while True:
            order = candidates()
            if not order:
                return
            self.turn = (self.turn + 1) % len(order)
            order = order[self.turn:] + order[:self.turn]
            sent = False
            for circuit in order:
                if port.queued() >= limit:
                    if waiting(order):
                        self.retry_at = now + 1.0 / max(port.payload_rate(), 0.01)
                    return
                if live(circuit) and send_one(circuit):
                    sent = True
            if not sent:
                return


class Tombstones:
    """Ended circuits and their last word, repeated to messages that arrive late."""

    def __init__(self) -> None:
        self._entries: OrderedDict[bytes, tuple[float, tuple[Segment, ...]]] = OrderedDict()

    def add(self, now: float, circuit: bytes, segments: tuple[Segment, ...]) -> None:
        """Remember ``segments`` as the answer for ``circuit``."""
        self._entries[circuit] = (now, segments)
        self._entries.move_to_end(circuit)
        while len(self._entries) > MAX_TOMBSTONES:
            self._entries.popitem(last=False)

    def get(self, now: float, circuit: bytes) -> tuple[Segment, ...] | None:
        """Return the answer for an ended ``circuit``, or None."""
        while self._entries:
            oldest, (when, _) = next(iter(self._entries.items()))
            if now - when < TOMBSTONE_SECONDS:
                break
            del self._entries[oldest]
        entry = self._entries.get(circuit)
        return entry[1] if entry else None


def decode_message(counters: Counters, message: ReceivedMessage, from_exit: bool) -> Message | None:
    """Return the tunnel message in ``message`` if it is a well-formed one sent the right way;
    count and return None otherwise."""
    try:
        decoded = frames.decode(message.data)
    except FrameError:
        counters["malformed"] += 1
        return None
    if decoded.from_exit != from_exit:
        counters["malformed"] += 1
        return None
    counters["messages_received"] += 1
    return decoded


def ordered(segments: tuple[Segment, ...]) -> list[Segment]:
    """Return ``segments`` with OPEN_RESULT first and RESET last (the order they take effect)."""
    def rank(segment: Segment) -> int:
        return 0 if isinstance(segment, OpenResult) else 2 if isinstance(segment, Reset) else 1
    return sorted(segments, key=rank)


def named_statistics(counters: Counters, names: tuple[str, ...]) -> dict[str, int]:
    """Return every documented statistic (zero if never counted)."""
    return {name: counters[name] for name in names}
