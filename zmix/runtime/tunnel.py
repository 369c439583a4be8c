"""The tunnel's two services (docs/tunnel.md): the SOCKS5 proxy and the exit, with their sockets.

:class:`ProxyService` listens for SOCKS5 clients, opens one circuit per connection to the exit
client ``exit_name`` through anonymous mixnet messages that carry reply blocks, and relays.
:class:`ExitService` takes those messages, connects to the destination (if its policy allows it)
and answers only through the reply blocks. Both are :class:`zmix.runtime.services.Service`\\ s:
they never block and never sleep; the daemon's poll loop calls them. The protocol logic is in
:mod:`zmix.tunnel.stream` and :mod:`zmix.tunnel.frames`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import enum
import errno
import logging
import math
import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from zmix import crypto
from zmix.client import ReceivedMessage
from zmix.errors import LocalMisuse, ZmixError
from zmix.runtime.services import MixnetPort
from zmix.tunnel import frames, socks5
from zmix.tunnel.frames import (
    FLAG_ANSWER,
    FLAG_FROM_EXIT,
    FLAG_RESULT_SEEN,
    Ack,
    Data,
    Fin,
    FrameError,
    Message,
    Open,
    OpenResult,
    Reset,
    ResetReason,
    Segment,
)
from zmix.tunnel.policy import ExitPolicy
from zmix.tunnel.stream import BlockLedger, BlockPurse, Counters, Stream, StreamConfig

log = logging.getLogger(__name__)

POLLIN = 1  # zmq.POLLIN
POLLOUT = 2  # zmq.POLLOUT
POLLERR = 4  # zmq.POLLERR

MAX_BLOCKS = 4  # reply blocks one proxy message carries at most (the client's limit)
QUEUE_SECONDS = 0.25  # keep the client's payload queue under this many seconds of lambda_P
RECV_CHUNK = 16 * 1024
TOMBSTONE_SECONDS = 120.0  # how long an ended circuit's last word is repeated to late messages
MAX_TOMBSTONES = 4096
KEEPALIVE = 60.0  # the proxy sends at least one message per circuit this often
NUDGE_MIN = 2.0  # first wait (s) before asking a silent exit for an answer, doubling to KEEPALIVE
PROGRESS_CHECK = 1.0  # seconds between the proxy's checks of its messages' progress
CREDIT_RESERVE = 2  # blocks the proxy keeps at the exit while a circuit is open
CREDIT_MAX = 64  # blocks the proxy grants beyond the reserve, at most (and at most its window)
CREDIT_BURST = 8  # blocks beyond what the exit's usage asks for, while the circuit is busy
CREDIT_HORIZON = 4.0  # seconds of the exit's recent block usage the proxy keeps granted ahead
GRANT_BATCH = MAX_BLOCKS  # a message only for blocks waits until this many are wanted

PROXY_STREAM = StreamConfig(resend_data=False)
EXIT_STREAM = StreamConfig(resend_data=True)

PROXY_STATISTICS = (
    "socks_accepted", "socks_refused", "socks_errors", *socks5.REASONS, "handshake_abandoned",
    "handshake_timeouts", "connections",
    "circuits", "circuits_opened", "circuits_connected", "circuits_refused", "circuits_closed",
    "circuits_reset", "open_timeouts", "send_failures", "messages_sent", "messages_received",
    "malformed", "unknown_circuit", "blocks_granted", "nudges", "bytes_up", "bytes_down",
    "segments_sent", "retransmissions", "duplicates", "out_of_window", "bad_acks", "probes",
    "gave_up",
)
EXIT_STATISTICS = (
    "circuits", "circuits_opened", "circuits_connected", "circuits_not_allowed",
    "circuits_failed", "circuits_over_limit", "circuits_closed", "circuits_reset",
    "circuits_idle", "messages_sent", "messages_received", "malformed", "unknown_circuit",
    "blocks_received", "blocks_used", "blocks_expired", "blocks_dropped", "blocks_held",
    "no_block", "bytes_up", "bytes_down", "segments_sent", "retransmissions", "duplicates",
    "out_of_window", "bad_acks", "probes", "gave_up",
)


class _Broken(Exception):
    """The TCP side of a circuit failed (reset, error)."""


@dataclass(slots=True)
class _Pipe:
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
        """Move bytes both ways. Raises _Broken if the socket failed."""
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
            raise _Broken() from None
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
                raise _Broken() from None
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


def _close(sock: socket.socket | None, *, abort: bool = False) -> None:
    """Close ``sock``; with ``abort`` the peer sees a TCP reset rather than an end."""
    if sock is None:
        return
    if abort:
        with contextlib.suppress(OSError):  # linger on, 0 s: close sends RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _queue_limit(port: MixnetPort) -> int:
    """Return how many packets the client's payload queue may hold before the tunnel waits."""
    return max(2, math.ceil(port.payload_rate() * QUEUE_SECONDS))


def _tick(port: MixnetPort) -> float:
    """Return the shortest wait between two turns of a service: one payload-stream interval
    (at most 0.5 s), so that a service with something due but a full queue does not spin."""
    return min(0.5, 1.0 / max(port.payload_rate(), 2.0))


class _Tombstones:
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


def _decode(counters: Counters, message: ReceivedMessage, from_exit: bool) -> Message | None:
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


def _ordered(segments: tuple[Segment, ...]) -> list[Segment]:
    """Return ``segments`` with OPEN_RESULT first and RESET last (the order they take effect)."""
    def rank(segment: Segment) -> int:
        return 0 if isinstance(segment, OpenResult) else 2 if isinstance(segment, Reset) else 1
    return sorted(segments, key=rank)


def _stats(counters: Counters, names: tuple[str, ...]) -> dict[str, int]:
    """Return every documented statistic (zero if never counted)."""
    return {name: counters[name] for name in names}


# ==== the proxy ==================================================================================


class _ProxyState(enum.Enum):
    HANDSHAKE = "handshake"  # reading the SOCKS5 greeting and request
    OPENING = "opening"  # OPEN sent (or to send), waiting for OPEN_RESULT
    OPEN = "open"  # relaying
    CLOSING = "closing"  # writing a last answer to the SOCKS client, then closing


@dataclass(slots=True)
class _ProxyConn:
    """One SOCKS client connection and, once it asked, its circuit."""

    sock: socket.socket
    fd: int
    accepted_at: float
    handshake: socks5.SocksHandshake = field(default_factory=socks5.SocksHandshake)
    state: _ProxyState = _ProxyState.HANDSHAKE
    out: bytearray = field(default_factory=bytearray)  # SOCKS answers not yet written
    circuit: bytes = b""
    request: socks5.ConnectRequest | None = None
    stream: Stream | None = None
    pipe: _Pipe | None = None
    ledger: BlockLedger | None = None
    open_sent: bool = False
    opened_at: float = 0.0
    open_deadline: float = math.inf
    probe_at: float = math.inf  # next ask for the OPEN_RESULT
    probe_wait: float = 0.0
    last_sent: float = 0.0
    nudge_at: float = math.inf  # when to ask a silent exit for an answer (with a block)
    nudge_wait: float = NUDGE_MIN
    pending_ids: list[bytes] = field(default_factory=list)  # messages whose failure ends it
    reset: ResetReason | None = None  # a RESET to send, then forget the circuit


class ProxyService:
    """The SOCKS5 side of the tunnel: a service of the client daemon (docs/tunnel.md)."""

    def __init__(self, port: MixnetPort, exit_name: str, listen: tuple[str, int] = ("127.0.0.1",
                 1080), *, max_connections: int = 256, handshake_timeout: float = 10.0,
                 open_timeout: float = 60.0, block_lifetime: float = 20.0,
                 stream_config: StreamConfig = PROXY_STREAM) -> None:
        self.port = port
        self.exit_name = exit_name
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.open_timeout = open_timeout
        self.block_lifetime = block_lifetime
        self.stream_config = stream_config
        self.counters: Counters = collections.Counter()
        self._listener = socket.create_server(listen, backlog=128)
        self._listener.setblocking(False)
        self._conns: dict[int, _ProxyConn] = {}  # by file descriptor
        self._circuits: dict[bytes, _ProxyConn] = {}
        self._tombstones = _Tombstones()
        self._turn = 0
        self._retry_at = math.inf  # when the pump tries again after the queue was full
        self._check_at = math.inf
        self._last_turn = -math.inf

    @property
    def address(self) -> tuple[str, int]:
        """Return the (host, port) the proxy listens on."""
        host, port = self._listener.getsockname()[:2]
        return host, port

    # ---- Service --------------------------------------------------------------------------------

    def poll_items(self) -> list[tuple[int, int]]:
        """Return the listener and every connection with the events it waits for."""
        items = [(self._listener.fileno(), POLLIN)]
        for fd, conn in self._conns.items():
            mask = self._mask(conn)
            if mask:
                items.append((fd, mask))
        return items

    def _mask(self, conn: _ProxyConn) -> int:
        """Return the events ``conn`` waits for."""
        if conn.out:
            return POLLOUT
        if conn.state is _ProxyState.HANDSHAKE:
            return POLLIN
        if conn.state is _ProxyState.OPEN and conn.pipe is not None:
            return conn.pipe.mask()
        return 0

    def on_ready(self, now: float, ready: dict[int, int]) -> None:
        """Accept new clients, move bytes, then send what became due."""
        for fd, events in ready.items():
            if fd == self._listener.fileno():
                self._accept(now)
            elif fd in self._conns:
                self._on_conn(now, self._conns[fd], events)
        self._pump(now)

    def on_message(self, now: float, message: ReceivedMessage) -> bool:
        """Take a tunnel message from the exit; return False for any other message."""
        if not frames.is_tunnel(message.data):
            return False
        decoded = _decode(self.counters, message, from_exit=True)
        if decoded is None:
            return True
        conn = self._circuits.get(decoded.circuit)
        if conn is None:
            self._on_unknown(now, decoded)
            return True
        assert conn.ledger is not None and conn.stream is not None
        conn.ledger.report(now, decoded.used)
        if any(isinstance(s, (Data, Fin)) for s in decoded.segments):
            conn.nudge_wait = max(NUDGE_MIN, 2 * conn.stream.rto)
        conn.nudge_at = now + conn.nudge_wait
        for segment in _ordered(decoded.segments):
            if conn.circuit not in self._circuits:
                break
            self._on_segment(now, conn, segment)
        self._settle(now, conn)
        self._pump(now)
        return True

    def on_timer(self, now: float) -> None:
        """Time out handshakes and opens, check messages' progress, give up stuck streams."""
        for conn in list(self._conns.values()):
            if conn.state is _ProxyState.HANDSHAKE and \
                    now - conn.accepted_at >= self.handshake_timeout:
                self.counters["handshake_timeouts"] += 1
                self._drop(conn)
            elif conn.state is _ProxyState.OPENING and now >= conn.open_deadline:
                self.counters["open_timeouts"] += 1
                self._answer_and_close(conn, socks5.TTL_EXPIRED, ResetReason.TIMEOUT)
            elif conn.stream is not None and conn.state is _ProxyState.OPEN:
                conn.stream.on_timer(now)
                self._settle(now, conn)
        if now >= self._check_at:
            self._check_progress(now)
        self._pump(now)

    def next_deadline(self) -> float:
        """Return the earliest time something is due (never before the next payload tick after
        the last turn: what is due but waits for the client's queue is tried then)."""
        times = [self._retry_at, self._check_at]
        for conn in self._conns.values():
            if conn.state is _ProxyState.HANDSHAKE:
                times.append(conn.accepted_at + self.handshake_timeout)
            elif conn.state is _ProxyState.OPENING:
                times.extend((conn.open_deadline, conn.probe_at))
            elif conn.state is _ProxyState.OPEN and conn.stream and conn.ledger:
                times.extend((conn.stream.next_deadline(), conn.last_sent + KEEPALIVE,
                              conn.ledger.next_stale(self._last_turn), conn.nudge_at))
        return max(min(times), self._last_turn + _tick(self.port))

    def statistics(self) -> dict[str, int]:
        """Return the proxy's statistics (docs/tunnel.md's table)."""
        self.counters["connections"] = len(self._conns)
        self.counters["circuits"] = len(self._circuits)
        return _stats(self.counters, PROXY_STATISTICS)

    def close(self) -> None:
        """Close the listener and every connection (their circuits end at the exit by time)."""
        for conn in list(self._conns.values()):
            _close(conn.sock)
        self._conns.clear()
        self._circuits.clear()
        self._listener.close()

    # ---- SOCKS clients --------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        """Accept waiting clients; one over the limit is closed at once."""
        for _ in range(64):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. out of descriptors: the listener stays, the client waits or goes
            if len(self._conns) >= self.max_connections:
                self.counters["socks_refused"] += 1
                _close(sock, abort=True)
                continue
            sock.setblocking(False)
            self.counters["socks_accepted"] += 1
            self._conns[sock.fileno()] = _ProxyConn(sock, sock.fileno(), now)

    def _on_conn(self, now: float, conn: _ProxyConn, events: int) -> None:
        """Handle one connection's readiness."""
        try:
            if conn.out:
                self._flush(conn)
                self._settle(now, conn)
            elif conn.state is _ProxyState.HANDSHAKE:
                self._read_handshake(now, conn)
            elif conn.state is _ProxyState.OPEN and conn.pipe is not None:
                conn.pipe.on_ready(now, events, self.counters, "bytes_up", "bytes_down")
                self._settle(now, conn)
        except _Broken:
            self._abort(conn, ResetReason.ABORTED)

    def _flush(self, conn: _ProxyConn) -> None:
        """Write SOCKS answers; close once the last one is out if the connection is ending."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            raise _Broken() from None
        del conn.out[:sent]
        if not conn.out and conn.state is _ProxyState.CLOSING:
            self._drop(conn)

    def _read_handshake(self, now: float, conn: _ProxyConn) -> None:
        """Feed the client's bytes to the SOCKS5 handshake; start the circuit once asked."""
        try:
            data = conn.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.counters["handshake_abandoned"] += 1
            self._drop(conn)
            return
        try:
            answer, request = conn.handshake.receive(data)
        except socks5.SocksProtocolError as error:
            self.counters["socks_errors"] += 1
            self.counters[error.reason] += 1
            conn.out += error.answer
            conn.state = _ProxyState.CLOSING
            if not conn.out:
                self._drop(conn)
            return
        conn.out += answer
        if request is not None:
            self._start_circuit(now, conn, request)

    def _start_circuit(self, now: float, conn: _ProxyConn, request: socks5.ConnectRequest) -> None:
        """Make the circuit of a complete request; its OPEN leaves with the next pump."""
        conn.request = request
        conn.circuit = crypto.random_bytes(frames.CIRCUIT_ID_BYTES)
        conn.stream = Stream(self.stream_config, now, self.counters)
        conn.stream.write(conn.handshake.leftover)
        conn.pipe = _Pipe(conn.sock, conn.stream)
        conn.ledger = BlockLedger(self.block_lifetime)
        conn.state = _ProxyState.OPENING
        conn.open_deadline = now + self.open_timeout
        self._circuits[conn.circuit] = conn

    # ---- messages from the exit -----------------------------------------------------------------

    def _on_segment(self, now: float, conn: _ProxyConn, segment: Segment) -> None:
        """Apply one segment from the exit."""
        assert conn.stream is not None
        if isinstance(segment, OpenResult):
            if conn.state is _ProxyState.OPENING:
                self._on_result(now, conn, segment.code)
        elif isinstance(segment, Reset):
            self._on_reset(conn, segment.reason)
        elif conn.state is _ProxyState.OPEN:
            conn.stream.receive(now, segment)

    def _on_result(self, now: float, conn: _ProxyConn, code: int) -> None:
        """The exit answered the OPEN: tell the SOCKS client."""
        conn.out += socks5.reply(code)
        if code == socks5.REPLY_SUCCEEDED:
            self.counters["circuits_connected"] += 1
            conn.state = _ProxyState.OPEN
            conn.opened_at = now
            conn.probe_at = math.inf
            conn.nudge_at = now + conn.nudge_wait
        else:
            self.counters["circuits_refused"] += 1
            self._end(conn)
            conn.state = _ProxyState.CLOSING

    def _on_reset(self, conn: _ProxyConn, reason: ResetReason) -> None:
        """The exit ended the circuit."""
        assert conn.stream is not None
        if reason is ResetReason.CLOSED and conn.stream.peer_finished():
            return  # the exit ended normally after our FIN; the last bytes may still be written

        self.counters["circuits_reset"] += 1
        if conn.state is _ProxyState.OPENING:
            self._end(conn)
            conn.out += socks5.reply(socks5.GENERAL_FAILURE)
            conn.state = _ProxyState.CLOSING
        else:
            self._end(conn)
            self._drop(conn, abort=True)

    def _on_unknown(self, now: float, message: Message) -> None:
        """A message for a circuit the proxy does not have: repeat its last ack if it ended."""
        self.counters["unknown_circuit"] += 1
        last = self._tombstones.get(now, message.circuit)
        wants_ack = any(isinstance(s, (Data, Fin)) for s in message.segments)
        if last is not None and wants_ack:
            self._send(now, Message(message.circuit, FLAG_RESULT_SEEN, segments=last), 0)

    def _settle(self, now: float, conn: _ProxyConn) -> None:
        """End the circuit if its stream finished or failed."""
        stream = conn.stream
        if stream is None or conn.circuit not in self._circuits:
            return
        if conn.out and not stream.failed:
            return  # the SOCKS reply goes out first; _on_conn settles again after it
        if conn.pipe is not None and conn.state is _ProxyState.OPEN:
            conn.pipe.shut_if_done()
        if stream.failed:
            self._abort(conn, ResetReason.TIMEOUT)
        elif stream.done:
            last = stream.ack()
            if stream.ack_owed:  # the exit waits for this ack of its FIN: send it before going
                self._send(now, Message(conn.circuit, FLAG_RESULT_SEEN, segments=(last,)), 0)
            self._finish(conn)
            self._tombstones.add(now, conn.circuit, (last,))

    def _finish(self, conn: _ProxyConn) -> None:
        """Both directions ended normally: close the connection."""
        self.counters["circuits_closed"] += 1
        self._end(conn)
        self._drop(conn)

    def _abort(self, conn: _ProxyConn, reason: ResetReason) -> None:
        """End the circuit abruptly: reset the SOCKS client, tell the exit."""
        self.counters["circuits_reset"] += 1
        if conn.circuit in self._circuits and conn.open_sent:
            conn.reset = reason  # the pump sends the RESET, then forgets the circuit
            conn.state = _ProxyState.CLOSING
        else:
            self._end(conn)
        conn.out.clear()
        self._drop(conn, abort=True, keep_circuit=conn.reset is not None)

    def _answer_and_close(self, conn: _ProxyConn, code: int, reason: ResetReason) -> None:
        """Give the SOCKS client ``code``, close it, and reset the circuit at the exit."""
        conn.out += socks5.reply(code)
        conn.state = _ProxyState.CLOSING
        if conn.open_sent:
            conn.reset = reason
        else:
            self._end(conn)

    def _end(self, conn: _ProxyConn) -> None:
        """Forget the circuit (the connection may stay to write a last answer)."""
        self._circuits.pop(conn.circuit, None)

    def _drop(self, conn: _ProxyConn, *, abort: bool = False, keep_circuit: bool = False) -> None:
        """Close the client connection (its circuit too unless a RESET is still to go)."""
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
            _close(conn.sock, abort=abort)
        if not keep_circuit:
            self._end(conn)

    def _check_progress(self, now: float) -> None:
        """Reset circuits one of whose messages the mixnet gave up on."""
        self._check_at = math.inf
        for conn in list(self._circuits.values()):
            if conn.pending_ids:
                self._check_at = now + PROGRESS_CHECK
            still = []
            for message_id in conn.pending_ids:
                try:
                    progress = self.port.progress(message_id)
                except ZmixError:
                    continue
                if progress.failed:
                    self.counters["send_failures"] += 1
                    self._abort(conn, ResetReason.SEND_FAILED)
                    break
                if progress.acked < progress.fragments:
                    still.append(message_id)
            conn.pending_ids = still

    # ---- sending --------------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Send due messages, round robin over circuits, while the client's queue is short."""
        self._retry_at = math.inf
        self._last_turn = now
        limit = _queue_limit(self.port)
        while True:
            order = list(self._circuits.values())
            if not order:
                return
            self._turn = (self._turn + 1) % len(order)
            order = order[self._turn:] + order[:self._turn]
            sent = False
            for conn in order:
                if self.port.queued() >= limit:
                    if any(self._due(now, c) for c in order):
                        self._retry_at = now + 1.0 / max(self.port.payload_rate(), 0.01)
                    return
                if conn.circuit in self._circuits and self._send_one(now, conn):
                    sent = True
            if not sent:
                return

    def _wanted_blocks(self, now: float, conn: _ProxyConn) -> int:
        """Return how many reply blocks the exit should get now (0..MAX_BLOCKS)."""
        assert conn.stream is not None and conn.ledger is not None
        if conn.state is not _ProxyState.OPEN:
            return 0
        if conn.stream.eof:
            target = 1 if conn.stream.unacknowledged else 0  # only its acks are still to come
        else:
            rate = conn.ledger.rate(now)
            busy = rate > 0 or now - conn.opened_at < conn.ledger.usage_window
            demand = math.ceil(rate * CREDIT_HORIZON) + (CREDIT_BURST if busy else 0)
            target = CREDIT_RESERVE + min(CREDIT_MAX, conn.stream.window_free(), demand)
        fresh = conn.ledger.fresh(now)
        want = target - fresh
        if want >= GRANT_BATCH or (fresh < min(target, CREDIT_RESERVE) and want > 0):
            return min(MAX_BLOCKS, want)
        return 0

    def _due(self, now: float, conn: _ProxyConn) -> bool:
        """Return True if ``conn`` has a message to send now."""
        if conn.reset is not None or (conn.state is _ProxyState.OPENING and
                                      (not conn.open_sent or conn.probe_at <= now)):
            return True
        if conn.state is not _ProxyState.OPEN or conn.stream is None:
            return False
        return (conn.stream.wants_to_send(now) or self._wanted_blocks(now, conn) > 0
                or now >= conn.last_sent + KEEPALIVE or self._nudge_due(now, conn))

    def _nudge_due(self, now: float, conn: _ProxyConn) -> bool:
        """Return True if the exit was silent too long while it may still send: it may have
        lost its blocks (or the reports of their use), so ask it to answer, with a block."""
        assert conn.stream is not None
        return now >= conn.nudge_at and not conn.stream.eof

    def _send_one(self, now: float, conn: _ProxyConn) -> bool:
        """Send ``conn``'s next message if one is due; return True if one was sent."""
        if not self._due(now, conn):
            return False
        if conn.reset is not None:
            self._send(now, Message(conn.circuit, segments=(Reset(conn.reset),)), 0)
            conn.reset = None
            self._end(conn)
            return True
        if conn.state is _ProxyState.OPENING:
            return self._send_open(now, conn)
        assert conn.stream is not None and conn.ledger is not None
        blocks = self._wanted_blocks(now, conn)
        nudge = self._nudge_due(now, conn)
        if nudge:
            self.counters["nudges"] += 1
            conn.nudge_wait = min(2 * conn.nudge_wait, KEEPALIVE)
            conn.nudge_at = now + conn.nudge_wait
        if conn.stream.probe_due(now) or nudge:
            blocks = max(blocks, 1)
        room = self.port.forward_capacity(blocks) - frames.HEADER_BYTES
        batch = conn.stream.take(now, room)
        if not batch.segments and not blocks and now < conn.last_sent + KEEPALIVE:
            return False
        flags = FLAG_RESULT_SEEN | (FLAG_ANSWER if batch.answer or nudge else 0)
        message = Message(conn.circuit, flags, blocks, segments=batch.segments)
        return self._send_tracked(now, conn, message, blocks,
                                  any(isinstance(s, (Data, Fin)) for s in batch.segments))

    def _send_open(self, now: float, conn: _ProxyConn) -> bool:
        """Send the OPEN, or ask again for its result."""
        assert conn.request is not None
        if conn.open_sent:
            message = Message(conn.circuit, FLAG_ANSWER, 1)
            conn.probe_wait = min(conn.probe_wait * 2, 30.0)
            conn.probe_at = now + conn.probe_wait
            self.counters["probes"] += 1
            return self._send_tracked(now, conn, message, 1, False)
        conn.open_sent = True
        conn.probe_wait = max(4.0, self.stream_config.rto_initial)
        conn.probe_at = now + conn.probe_wait
        self.counters["circuits_opened"] += 1
        message = Message(conn.circuit, 0, 0, segments=(Open(conn.request.host,
                                                              conn.request.port),))
        size = len(frames.encode(message))
        # As many blocks as fit beside the OPEN (4 at the default geometry, even with a
        # 255-byte host name), at least one: without a block the exit cannot answer.
        blocks = max([n for n in range(1, MAX_BLOCKS + 1)
                      if self.port.forward_capacity(n) >= size] or [1])
        message = Message(conn.circuit, 0, blocks, segments=message.segments)
        return self._send_tracked(now, conn, message, blocks, True)

    def _send_tracked(self, now: float, conn: _ProxyConn, message: Message, blocks: int,
                      track: bool) -> bool:
        """Send a circuit's message; watch it if its loss would lose data. A send that fails
        locally resets the circuit (its segments are gone)."""
        message_id = self._send(now, message, blocks)
        if message_id is None:
            self.counters["send_failures"] += 1
            self._abort(conn, ResetReason.SEND_FAILED)
            return False
        assert conn.ledger is not None
        conn.ledger.grant(now, blocks)
        conn.last_sent = now
        if track:
            conn.pending_ids.append(message_id)
            self._check_at = min(self._check_at, now + PROGRESS_CHECK)
        return True

    def _send(self, now: float, message: Message, blocks: int) -> bytes | None:
        """Send ``message`` to the exit anonymously with ``blocks`` reply blocks; return its id,
        or None if the client refused it."""
        try:
            message_id = self.port.send(now, self.exit_name, frames.encode(message),
                                        anonymous=True, reply_blocks=blocks)
        except ZmixError as error:
            log.warning("tunnel: a message to %s was not sent: %s", self.exit_name, error)
            return None
        self.counters["messages_sent"] += 1
        self.counters["blocks_granted"] += blocks
        return message_id


# ==== the exit ===================================================================================


class _ExitState(enum.Enum):
    RESOLVING = "resolving"
    CONNECTING = "connecting"
    OPEN = "open"
    ENDING = "ending"  # a last OPEN_RESULT or RESET to send, then forget


@dataclass(slots=True)
class _ExitCircuit:
    """One circuit at the exit."""

    circuit: bytes
    host: str
    port: int
    purse: BlockPurse
    stream: Stream
    last_heard: float
    state: _ExitState = _ExitState.RESOLVING
    sock: socket.socket | None = None
    pipe: _Pipe | None = None
    code: int | None = None  # the OPEN_RESULT, once known
    result_sent: bool = False
    result_seen: bool = False
    answer_owed: bool = False
    reset: ResetReason | None = None
    connect_deadline: float = math.inf
    addresses: list[tuple[int, tuple[str, int]]] = field(default_factory=list)


_CONNECT_ERRORS = {
    errno.ECONNREFUSED: socks5.CONNECTION_REFUSED,
    errno.ENETUNREACH: socks5.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: socks5.HOST_UNREACHABLE,
    errno.EHOSTDOWN: socks5.HOST_UNREACHABLE,
    errno.ETIMEDOUT: socks5.TTL_EXPIRED,
}


class ExitService:
    """The exit side of the tunnel: a service of the client daemon (docs/tunnel.md)."""

    def __init__(self, port: MixnetPort, policy: ExitPolicy, *, connect_timeout: float = 10.0,
                 max_circuits: int = 256, idle_timeout: float = 5 * KEEPALIVE,
                 max_blocks_held: int = 128, resolver_threads: int = 4,
                 stream_config: StreamConfig = EXIT_STREAM) -> None:
        self.port = port
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.max_circuits = max_circuits
        self.idle_timeout = idle_timeout
        self.max_blocks_held = max_blocks_held
        self.stream_config = stream_config
        self.counters: Counters = collections.Counter()
        self._circuits: dict[bytes, _ExitCircuit] = {}
        self._by_fd: dict[int, _ExitCircuit] = {}
        self._tombstones = _Tombstones()
        self._resolver = concurrent.futures.ThreadPoolExecutor(resolver_threads,
                                                               thread_name_prefix="zmix-resolve")
        self._resolving: dict[concurrent.futures.Future[list[tuple[int, tuple[str, int]]]],
                              bytes] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._turn = 0
        self._retry_at = math.inf
        self._last_turn = -math.inf

    # ---- Service --------------------------------------------------------------------------------

    def poll_items(self) -> list[tuple[int, int]]:
        """Return the resolver's wake-up socket and every destination socket with its events."""
        items = [(self._wake_r.fileno(), POLLIN)]
        for fd, circuit in self._by_fd.items():
            if circuit.state is _ExitState.CONNECTING:
                items.append((fd, POLLOUT))
            elif circuit.state is _ExitState.OPEN and circuit.pipe is not None:
                mask = circuit.pipe.mask()
                if mask:
                    items.append((fd, mask))
        return items

    def on_ready(self, now: float, ready: dict[int, int]) -> None:
        """Take finished resolutions and connections, move bytes, send what became due."""
        for fd, events in ready.items():
            if fd == self._wake_r.fileno():
                self._on_resolved(now)
            elif fd in self._by_fd:
                self._on_socket(now, self._by_fd[fd], events)
        self._pump(now)

    def on_message(self, now: float, message: ReceivedMessage) -> bool:
        """Take a tunnel message from a proxy; return False for any other message."""
        if not frames.is_tunnel(message.data):
            return False
        decoded = _decode(self.counters, message, from_exit=False)
        if decoded is None:
            return True
        handle = message.reply_handle if decoded.blocks > 0 else None
        if handle is not None:
            self.counters["blocks_received"] += decoded.blocks
        circuit = self._circuits.get(decoded.circuit)
        if circuit is None:
            circuit = self._first_message(now, decoded, handle)
            if circuit is None:
                return True
        if handle is not None:
            self.counters["blocks_dropped"] += circuit.purse.add(handle, decoded.blocks)
        self._on_proxy_message(now, circuit, decoded)
        self._pump(now)
        return True

    def on_timer(self, now: float) -> None:
        """Time out connects, idle circuits and stuck streams."""
        for circuit in list(self._circuits.values()):
            if circuit.state is _ExitState.CONNECTING and now >= circuit.connect_deadline:
                self._open_failed(circuit, socks5.TTL_EXPIRED)
            elif now - circuit.last_heard >= self.idle_timeout:
                self.counters["circuits_idle"] += 1
                self._forget(now, circuit, ResetReason.TIMEOUT, abort=True)
            elif circuit.state is _ExitState.OPEN:
                circuit.stream.on_timer(now)
                self._settle(now, circuit)
        self._pump(now)

    def next_deadline(self) -> float:
        """Return the earliest time something is due (never before the next payload tick after
        the last turn, as for the proxy)."""
        times = [self._retry_at]
        for circuit in self._circuits.values():
            times.append(circuit.last_heard + self.idle_timeout)
            if circuit.state is _ExitState.CONNECTING:
                times.append(circuit.connect_deadline)
            elif circuit.state is _ExitState.OPEN and circuit.purse.held:
                times.append(circuit.stream.next_deadline())
        return max(min(times), self._last_turn + _tick(self.port))

    def statistics(self) -> dict[str, int]:
        """Return the exit's statistics (docs/tunnel.md's table)."""
        self.counters["circuits"] = len(self._circuits)
        self.counters["blocks_held"] = sum(c.purse.held for c in self._circuits.values())
        return _stats(self.counters, EXIT_STATISTICS)

    def close(self) -> None:
        """Close every destination socket, the wake-up pair, and stop the resolver threads."""
        for circuit in self._circuits.values():
            _close(circuit.sock)
        self._circuits.clear()
        self._by_fd.clear()
        self._resolver.shutdown(wait=False, cancel_futures=True)
        self._wake_r.close()
        self._wake_w.close()

    # ---- messages from the proxy ----------------------------------------------------------------

    def _first_message(self, now: float, message: Message,
                       handle: bytes | None) -> _ExitCircuit | None:
        """Return a new circuit for a message that opens one; answer or drop any other."""
        last = self._tombstones.get(now, message.circuit)
        opening = next((s for s in message.segments if isinstance(s, Open)), None)
        if last is not None or opening is None:
            if last is None:
                self.counters["unknown_circuit"] += 1
                last = (Reset(ResetReason.UNKNOWN_CIRCUIT),)
            if handle is not None and not any(isinstance(s, Reset) for s in message.segments):
                self._reply_once(now, message.circuit, handle, last)
            return None
        circuit = _ExitCircuit(message.circuit, opening.host, opening.port,
                               BlockPurse(self.max_blocks_held),
                               Stream(self.stream_config, now, self.counters), now)
        self._circuits[message.circuit] = circuit
        self.counters["circuits_opened"] += 1
        self._open(now, circuit)
        return circuit

    def _on_proxy_message(self, now: float, circuit: _ExitCircuit, message: Message) -> None:
        """Apply a message of a known circuit."""
        circuit.last_heard = now
        if message.flags & FLAG_RESULT_SEEN:
            circuit.result_seen = True
        if message.flags & FLAG_ANSWER:
            circuit.answer_owed = True
            circuit.stream.request_ack(now)
        for segment in message.segments:
            if isinstance(segment, Reset):
                self.counters["circuits_reset"] += 1
                self._forget(now, circuit, None, abort=True)
                return
            if isinstance(segment, (Data, Fin, Ack)) and circuit.state is _ExitState.OPEN:
                circuit.stream.receive(now, segment)
        self._settle(now, circuit)

    # ---- opening --------------------------------------------------------------------------------

    def _open(self, now: float, circuit: _ExitCircuit) -> None:
        """Check the name against the policy and the circuit limit, then resolve it."""
        if len(self._circuits) > self.max_circuits:
            self.counters["circuits_over_limit"] += 1
            self._open_failed(circuit, socks5.GENERAL_FAILURE, count=False)
            return
        if not self.policy.allows_name(circuit.host, circuit.port):
            self.counters["circuits_not_allowed"] += 1
            self._open_failed(circuit, socks5.NOT_ALLOWED, count=False)
            return
        future = self._resolver.submit(_resolve, circuit.host, circuit.port)
        self._resolving[future] = circuit.circuit
        future.add_done_callback(self._wake)

    def _wake(self, _future: object) -> None:
        """Wake the poll loop (called in a resolver thread)."""
        with contextlib.suppress(OSError):  # already woken (buffer full), or closing
            self._wake_w.send(b"\x00")

    def _on_resolved(self, now: float) -> None:
        """Connect the circuits whose names resolved."""
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        for future in [f for f in self._resolving if f.done()]:
            circuit = self._circuits.get(self._resolving.pop(future))
            if circuit is None or circuit.state is not _ExitState.RESOLVING:
                continue
            try:
                addresses = future.result()
            except (OSError, UnicodeError):
                self._open_failed(circuit, socks5.HOST_UNREACHABLE)
                continue
            allowed = [(family, address) for family, address in addresses
                       if self.policy.allows_address(address[0], circuit.port,
                                                     requested=circuit.host)]
            if not allowed:
                self.counters["circuits_not_allowed"] += 1
                self._open_failed(circuit, socks5.NOT_ALLOWED, count=False)
                continue
            circuit.addresses = allowed
            self._connect(now, circuit)

    def _connect(self, now: float, circuit: _ExitCircuit) -> None:
        """Start a non-blocking connect to the circuit's first allowed address."""
        family, address = circuit.addresses[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        error = sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            self._open_failed(circuit, _CONNECT_ERRORS.get(error, socks5.GENERAL_FAILURE))
            return
        circuit.sock = sock
        circuit.state = _ExitState.CONNECTING
        circuit.connect_deadline = now + self.connect_timeout
        self._by_fd[sock.fileno()] = circuit

    def _on_socket(self, now: float, circuit: _ExitCircuit, events: int) -> None:
        """A destination socket is ready: finish its connect, or move bytes."""
        assert circuit.sock is not None
        if circuit.state is _ExitState.CONNECTING:
            error = circuit.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._open_failed(circuit, _CONNECT_ERRORS.get(error, socks5.GENERAL_FAILURE))
                return
            circuit.state = _ExitState.OPEN
            circuit.code = socks5.REPLY_SUCCEEDED
            circuit.pipe = _Pipe(circuit.sock, circuit.stream)
            self.counters["circuits_connected"] += 1
            return
        if circuit.pipe is None:
            return
        try:
            circuit.pipe.on_ready(now, events, self.counters, "bytes_down", "bytes_up")
        except _Broken:
            self._forget(now, circuit, ResetReason.ABORTED, abort=True)
            return
        self._settle(now, circuit)

    def _open_failed(self, circuit: _ExitCircuit, code: int, *, count: bool = True) -> None:
        """The connection cannot be made: answer ``code`` and forget the circuit."""
        if count:
            self.counters["circuits_failed"] += 1
        self._unregister(circuit)
        _close(circuit.sock)
        circuit.sock = None
        circuit.code = code
        circuit.state = _ExitState.ENDING

    # ---- ending ---------------------------------------------------------------------------------

    def _settle(self, now: float, circuit: _ExitCircuit) -> None:
        """End the circuit if its stream finished or failed."""
        if circuit.state is not _ExitState.OPEN:
            return
        if circuit.pipe is not None:
            circuit.pipe.shut_if_done()
        if circuit.stream.failed:
            self._forget(now, circuit, ResetReason.TIMEOUT, abort=True)
        elif circuit.stream.done:
            if circuit.stream.ack_owed:  # the proxy waits for this ack of its FIN
                self._reply(now, circuit, (circuit.stream.ack(),))
            self.counters["circuits_closed"] += 1
            self._forget(now, circuit, None)
            self._tombstones.add(now, circuit.circuit, (Reset(ResetReason.CLOSED),))

    def _forget(self, now: float, circuit: _ExitCircuit, reason: ResetReason | None, *,
                abort: bool = False) -> None:
        """Close the destination socket; with ``reason``, a RESET still goes to the proxy."""
        self._unregister(circuit)
        _close(circuit.sock, abort=abort)
        circuit.sock = None
        circuit.pipe = None
        if reason is not None and circuit.state is not _ExitState.ENDING:
            self.counters["circuits_reset"] += 1
            circuit.reset = reason
            circuit.state = _ExitState.ENDING
            if circuit.purse.held:
                return
        self._remove(now, circuit)

    def _unregister(self, circuit: _ExitCircuit) -> None:
        """Stop polling the circuit's socket."""
        if circuit.sock is not None:
            self._by_fd.pop(circuit.sock.fileno(), None)

    def _remove(self, now: float, circuit: _ExitCircuit) -> None:
        """Forget the circuit; remember its last word for late messages."""
        self._circuits.pop(circuit.circuit, None)
        last = self._last_word(circuit)
        if last:
            self._tombstones.add(now, circuit.circuit, last)

    def _last_word(self, circuit: _ExitCircuit) -> tuple[Segment, ...]:
        """Return what a late message of an ended circuit is answered with."""
        if circuit.code not in (None, socks5.REPLY_SUCCEEDED):
            assert circuit.code is not None
            return (OpenResult(circuit.code),)
        if circuit.reset is not None:
            return (Reset(circuit.reset),)
        return ()

    # ---- sending --------------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Send due messages, round robin over circuits, while the client's queue is short."""
        self._retry_at = math.inf
        self._last_turn = now
        limit = _queue_limit(self.port)
        while True:
            order = [c for c in self._circuits.values() if self._due(now, c)]
            if not order:
                return
            self._turn = (self._turn + 1) % len(order)
            order = order[self._turn:] + order[:self._turn]
            sent = False
            for circuit in order:
                if self.port.queued() >= limit:
                    self._retry_at = now + 1.0 / max(self.port.payload_rate(), 0.01)
                    return
                if circuit.circuit in self._circuits and self._send_one(now, circuit):
                    sent = True
            if not sent:
                return

    def _due(self, now: float, circuit: _ExitCircuit) -> bool:
        """Return True if ``circuit`` has something to say and a block to say it with."""
        if not circuit.purse.held:
            return False
        if circuit.state is _ExitState.ENDING:
            return True
        if circuit.state is not _ExitState.OPEN:
            return False
        return (circuit.answer_owed or not circuit.result_sent
                or circuit.stream.wants_to_send(now))

    def _send_one(self, now: float, circuit: _ExitCircuit) -> bool:
        """Send ``circuit``'s next message; return True if one left."""
        segments: list[Segment] = []
        if not circuit.result_seen and circuit.code is not None:
            segments.append(OpenResult(circuit.code))
        if circuit.state is _ExitState.ENDING:
            if circuit.reset is not None:
                segments.append(Reset(circuit.reset))
            sent = self._reply(now, circuit, tuple(segments))
            if sent or not circuit.purse.held:
                self._remove(now, circuit)
            return sent
        room = self.port.reply_capacity() - frames.HEADER_BYTES - frames.OPEN_RESULT_BYTES
        # Every exit message carries an ack: replies may be lost, and the next one repairs it.
        batch = circuit.stream.take(now, room, force_ack=True)
        circuit.answer_owed = False
        segments.extend(batch.segments)
        if not segments:
            return False
        if not self._reply(now, circuit, tuple(segments)):
            return False
        circuit.result_sent = True
        return True

    def _reply(self, now: float, circuit: _ExitCircuit, segments: tuple[Segment, ...]) -> bool:
        """Send ``segments`` through the circuit's oldest usable reply block; return True if
        one took it (expired ones are dropped on the way)."""
        while (handle := circuit.purse.first()) is not None:
            message = Message(circuit.circuit, FLAG_FROM_EXIT, 0, circuit.purse.used + 1,
                              circuit.purse.held - 1, segments)
            try:
                self.port.reply(now, handle, frames.encode(message))
            except LocalMisuse:
                self.counters["blocks_expired"] += circuit.purse.unusable()
                continue
            except ZmixError as error:
                log.warning("tunnel: a reply was not sent: %s", error)
                return False
            circuit.purse.spent()
            self.counters["messages_sent"] += 1
            self.counters["blocks_used"] += 1
            return True
        self.counters["no_block"] += 1
        return False

    def _reply_once(self, now: float, circuit: bytes, handle: bytes,
                    segments: tuple[Segment, ...]) -> None:
        """Answer a message of an ended or unknown circuit through its own handle."""
        message = Message(circuit, FLAG_FROM_EXIT, 0, 1, 0, segments)
        try:
            self.port.reply(now, handle, frames.encode(message))
        except ZmixError:
            return
        self.counters["messages_sent"] += 1


def _resolve(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    """Return the (family, (address, port)) pairs ``host`` resolves to (runs in a thread)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, (str(sockaddr[0]), int(sockaddr[1]))) for family, _, _, _, sockaddr in found]
