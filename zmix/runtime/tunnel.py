"""The tunnel's SOCKS5 side (docs/tunnel.md): :class:`ProxyService`, with its sockets.

:class:`ProxyService` listens for SOCKS5 clients, opens one circuit per connection to the exit
client ``exit_name`` through anonymous mixnet messages that carry reply blocks, and relays. The
exit's side is :class:`zmix.runtime.tunnel_exit.ExitService` (re-exported here, so that
``from zmix.runtime.tunnel import ProxyService, ExitService`` gives both). Both are
:class:`zmix.runtime.services.Service`\\ s: they never block and never sleep; the daemon's poll
loop calls them. The protocol logic is in :mod:`zmix.tunnel.stream` and
:mod:`zmix.tunnel.frames`.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import socket
from dataclasses import dataclass, field

from zmix import crypto
from zmix.client import ReceivedMessage
from zmix.errors import ZmixError
from zmix.runtime.services import MixnetPort
from zmix.runtime.tunnel_exit import EXIT_STATISTICS, EXIT_STREAM, ExitService
from zmix.runtime.tunnel_relay import (
    KEEPALIVE,
    MAX_BLOCKS,
    POLLIN,
    POLLOUT,
    RECV_CHUNK,
    Broken,
    Pipe,
    Pump,
    Tombstones,
    close_socket,
    decode_message,
    named_statistics,
    ordered,
    tick,
)
from zmix.tunnel import frames, socks5
from zmix.tunnel.frames import (
    FLAG_ANSWER,
    FLAG_RESULT_SEEN,
    Data,
    Fin,
    Message,
    Open,
    OpenResult,
    Reset,
    ResetReason,
    Segment,
)
from zmix.tunnel.stream import BlockLedger, Counters, Stream, StreamConfig

__all__ = ["EXIT_STATISTICS", "EXIT_STREAM", "PROXY_STATISTICS", "PROXY_STREAM", "ExitService",
           "ProxyService"]

log = logging.getLogger(__name__)

NUDGE_MIN = 2.0  # first wait (s) before asking a silent exit for an answer, doubling to KEEPALIVE
PROGRESS_CHECK = 1.0  # seconds between the proxy's checks of its messages' progress
CREDIT_RESERVE = 2  # blocks the proxy keeps at the exit while a circuit is open
CREDIT_MAX = 64  # blocks the proxy grants beyond the reserve, at most (and at most its window)
CREDIT_BURST = 8  # blocks beyond what the exit's usage asks for, while the circuit is busy
CREDIT_HORIZON = 4.0  # seconds of the exit's recent block usage the proxy keeps granted ahead
GRANT_BATCH = MAX_BLOCKS  # a message only for blocks waits until this many are wanted
CLOSE_GRACE = 10.0  # seconds a refused client has to read its answer (after the time-outs)
ACCEPT_PAUSE = 0.5  # seconds the listener rests after accept failed (out of descriptors)

PROXY_STREAM = StreamConfig(resend_data=False)

PROXY_STATISTICS = (
    "socks_accepted", "socks_refused", "accept_errors", "socks_errors", *socks5.REASONS,
    "handshake_abandoned", "handshake_timeouts", "connections",
    "circuits", "circuits_opened", "circuits_connected", "circuits_refused", "circuits_closed",
    "circuits_reset", "open_timeouts", "send_failures", "messages_sent", "messages_received",
    "malformed", "unknown_circuit", "blocks_granted", "nudges", "bytes_up", "bytes_down",
    "segments_sent", "retransmissions", "duplicates", "out_of_window", "bad_acks", "probes",
    "gave_up",
)


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
    pipe: Pipe | None = None
    ledger: BlockLedger | None = None
    open_sent: bool = False
    busy_at: float = 0.0  # the last time data moved either way (or the circuit opened)
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

    statistics_prefix = "proxy_"  # in the daemon's statistics (the API's status)

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
        self._tombstones = Tombstones()
        self._pump_turn: Pump[_ProxyConn] = Pump()
        self._check_at = math.inf
        self._listen_again = -math.inf  # the listener is not polled before this time

    @property
    def address(self) -> tuple[str, int]:
        """Return the (host, port) the proxy listens on."""
        host, port = self._listener.getsockname()[:2]
        return host, port

    # ---- Service --------------------------------------------------------------------------------

    def poll_items(self) -> list[tuple[int, int]]:
        """Return the listener and every connection with the events it waits for."""
        listening = self._pump_turn.last_turn >= self._listen_again
        items = [(self._listener.fileno(), POLLIN)] if listening else []
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
            return POLLIN  # not while OPENING: later bytes wait in the socket until the reply
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
        decoded = decode_message(self.counters, message, from_exit=True)
        if decoded is None:
            return True
        conn = self._circuits.get(decoded.circuit)
        if conn is None:
            self._on_unknown(now, decoded)
            return True
        assert conn.ledger is not None and conn.stream is not None
        conn.ledger.report(now, decoded.used)
        if any(isinstance(s, (Data, Fin)) for s in decoded.segments):
            conn.busy_at = now
            conn.nudge_wait = max(NUDGE_MIN, 2 * conn.stream.rto)
        conn.nudge_at = now + conn.nudge_wait
        for segment in ordered(decoded.segments):
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
            elif conn.state is _ProxyState.CLOSING and now >= self._closing_deadline(conn):
                self._drop(conn, keep_circuit=conn.reset is not None)  # it does not read
            elif conn.stream is not None and conn.state is _ProxyState.OPEN:
                conn.stream.on_timer(now)
                self._settle(now, conn)
        if now >= self._check_at:
            self._check_progress(now)
        self._pump(now)

    def next_deadline(self) -> float:
        """Return the earliest time something is due (never before the next payload tick after
        the last turn: what is due but waits for the client's queue is tried then)."""
        times = [self._pump_turn.retry_at, self._check_at]
        if self._listen_again > self._pump_turn.last_turn:
            times.append(self._listen_again)
        for conn in self._conns.values():
            if conn.state is _ProxyState.HANDSHAKE:
                times.append(conn.accepted_at + self.handshake_timeout)
            elif conn.state is _ProxyState.OPENING:
                times.extend((conn.open_deadline, conn.probe_at))
            elif conn.state is _ProxyState.CLOSING:
                times.append(self._closing_deadline(conn))
            elif conn.state is _ProxyState.OPEN and conn.stream and conn.ledger:
                times.extend((conn.stream.next_deadline(), conn.last_sent + KEEPALIVE,
                              conn.ledger.next_stale(self._pump_turn.last_turn), conn.nudge_at))
        return max(min(times), self._pump_turn.last_turn + tick(self.port))

    def _closing_deadline(self, conn: _ProxyConn) -> float:
        """Return when a connection still writing its last SOCKS answer is closed anyway (only
        connections that never opened get there: by the handshake and open time-outs)."""
        return conn.accepted_at + self.handshake_timeout + self.open_timeout + CLOSE_GRACE

    def statistics(self) -> dict[str, int]:
        """Return the proxy's statistics (docs/tunnel.md's table)."""
        self.counters["connections"] = len(self._conns)
        self.counters["circuits"] = len(self._circuits)
        return named_statistics(self.counters, PROXY_STATISTICS)

    def close(self) -> None:
        """Close the listener and every connection (their circuits end at the exit by time)."""
        for conn in list(self._conns.values()):
            close_socket(conn.sock)
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
            except OSError:  # out of descriptors: rest, rather than spin on a readable listener
                self.counters["accept_errors"] += 1
                self._listen_again = now + ACCEPT_PAUSE
                return
            if len(self._conns) >= self.max_connections:
                self.counters["socks_refused"] += 1
                close_socket(sock, abort=True)
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
        except Broken:
            self._abort(conn, ResetReason.ABORTED)

    def _flush(self, conn: _ProxyConn) -> None:
        """Write SOCKS answers; close once the last one is out if the connection is ending."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            raise Broken() from None
        del conn.out[:sent]
        if not conn.out and conn.state is _ProxyState.CLOSING:
            self._drop(conn, keep_circuit=conn.reset is not None)

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
        conn.pipe = Pipe(conn.sock, conn.stream)
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
            self._take_early_data(conn)
            conn.state = _ProxyState.OPEN
            conn.busy_at = now
            conn.probe_at = math.inf
            conn.nudge_at = now + conn.nudge_wait
        else:
            self.counters["circuits_refused"] += 1
            self._end(conn)
            conn.state = _ProxyState.CLOSING

    def _take_early_data(self, conn: _ProxyConn) -> None:
        """Put what the client sent together with its request (at most one read, less than the
        stream's send buffer) into the stream; the rest waited in the socket."""
        assert conn.stream is not None
        self.counters["bytes_up"] += conn.stream.write(conn.handshake.leftover)

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
            close_socket(conn.sock, abort=abort)
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
        self._pump_turn.run(
            now, self.port, lambda: list(self._circuits.values()),
            lambda conn: conn.circuit in self._circuits,
            lambda conn: self._send_one(now, conn),
            lambda order: any(self._due(now, conn) for conn in order))

    def _wanted_blocks(self, now: float, conn: _ProxyConn) -> int:
        """Return how many reply blocks the exit should get now (0..MAX_BLOCKS)."""
        assert conn.stream is not None and conn.ledger is not None
        if conn.state is not _ProxyState.OPEN:
            return 0
        if conn.stream.eof:
            target = 1 if conn.stream.unacknowledged else 0  # only its acks are still to come
        else:
            rate = conn.ledger.rate(now)
            busy = now - conn.busy_at < conn.ledger.usage_window
            demand = math.ceil(rate * CREDIT_HORIZON) + (CREDIT_BURST if busy else 0)
            target = CREDIT_RESERVE + min(CREDIT_MAX, conn.stream.window_free(), demand)
        fresh = conn.ledger.fresh(now)
        want = target - fresh
        if want >= GRANT_BATCH:
            return min(MAX_BLOCKS, want)
        if fresh < min(target, CREDIT_RESERVE) and want > 0:
            # A message goes for the reserve anyway: fill it with blocks unless data needs the
            # room, so that an idle circuit refreshes its blocks in fewer messages.
            return min(MAX_BLOCKS, want) if conn.stream.unsent else MAX_BLOCKS
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
        carries_data = any(isinstance(s, (Data, Fin)) for s in batch.segments)
        if carries_data:
            conn.busy_at = now
        return self._send_tracked(now, conn, message, blocks, carries_data)

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
            if conn.state is _ProxyState.OPENING:  # e.g. the exit is not a client of the network
                self._end(conn)
                conn.out += socks5.reply(socks5.GENERAL_FAILURE)
                conn.state = _ProxyState.CLOSING
            else:
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
