"""The tunnel's exit side (docs/tunnel.md): :class:`ExitService`, with its sockets.

It takes the proxy's tunnel messages, connects to the destination if its policy allows it
(resolving names in a small thread pool whose completions wake the poll loop through a socket
pair), and answers only through the reply blocks the proxy sent. A
:class:`zmix.runtime.services.Service`: it never blocks and never sleeps.
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
from dataclasses import dataclass, field

from zmix.client import ReceivedMessage
from zmix.errors import LocalMisuse, ZmixError
from zmix.runtime.services import MixnetPort
from zmix.runtime.tunnel_relay import (
    KEEPALIVE,
    POLLIN,
    POLLOUT,
    Broken,
    Pipe,
    Pump,
    Tombstones,
    close_socket,
    decode_message,
    named_statistics,
    tick,
)
from zmix.tunnel import frames, socks5
from zmix.tunnel.frames import (
    FLAG_ANSWER,
    FLAG_FROM_EXIT,
    FLAG_RESULT_SEEN,
    Ack,
    Data,
    Fin,
    Message,
    Open,
    OpenResult,
    Reset,
    ResetReason,
    Segment,
)
from zmix.tunnel.policy import ExitPolicy
from zmix.tunnel.stream import BlockPurse, Counters, Stream, StreamConfig

log = logging.getLogger(__name__)

EXIT_STREAM = StreamConfig(resend_data=True)

EXIT_STATISTICS = (
    "circuits", "circuits_opened", "circuits_connected", "circuits_not_allowed",
    "circuits_failed", "circuits_over_limit", "circuits_closed", "circuits_reset",
    "circuits_idle", "messages_sent", "messages_received", "malformed", "unknown_circuit",
    "blocks_received", "blocks_used", "blocks_expired", "blocks_dropped", "blocks_held",
    "no_block", "bytes_up", "bytes_down", "segments_sent", "retransmissions", "duplicates",
    "out_of_window", "bad_acks", "probes", "gave_up",
)


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
    pipe: Pipe | None = None
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

    statistics_prefix = "exit_"  # in the daemon's statistics (the API's status)

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
        self._tombstones = Tombstones()
        self._resolver = concurrent.futures.ThreadPoolExecutor(resolver_threads,
                                                               thread_name_prefix="zmix-resolve")
        self._resolving: dict[concurrent.futures.Future[list[tuple[int, tuple[str, int]]]],
                              bytes] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._pump_turn: Pump[_ExitCircuit] = Pump()

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
        decoded = decode_message(self.counters, message, from_exit=False)
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
        times = [self._pump_turn.retry_at]
        for circuit in self._circuits.values():
            times.append(circuit.last_heard + self.idle_timeout)
            if circuit.state is _ExitState.CONNECTING:
                times.append(circuit.connect_deadline)
            elif circuit.state is _ExitState.OPEN and circuit.purse.held:
                times.append(circuit.stream.next_deadline())
        return max(min(times), self._pump_turn.last_turn + tick(self.port))

    def statistics(self) -> dict[str, int]:
        """Return the exit's statistics (docs/tunnel.md's table)."""
        self.counters["circuits"] = len(self._circuits)
        self.counters["blocks_held"] = sum(c.purse.held for c in self._circuits.values())
        return named_statistics(self.counters, EXIT_STATISTICS)

    def close(self) -> None:
        """Close every destination socket, the wake-up pair, and stop the resolver threads."""
        for circuit in self._circuits.values():
            close_socket(circuit.sock)
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
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors or buffers: this circuit fails, not the exit
            log.warning("tunnel exit: no socket for a connection: %s", exc)
            self._open_failed(circuit, socks5.GENERAL_FAILURE)
            return
        sock.setblocking(False)
        try:
            error = sock.connect_ex(address)
        except OSError as exc:
            error = exc.errno or errno.EINVAL
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
            circuit.pipe = Pipe(circuit.sock, circuit.stream)
            self.counters["circuits_connected"] += 1
            return
        if circuit.pipe is None:
            return
        try:
            circuit.pipe.on_ready(now, events, self.counters, "bytes_down", "bytes_up")
        except Broken:
            self._forget(now, circuit, ResetReason.ABORTED, abort=True)
            return
        self._settle(now, circuit)

    def _open_failed(self, circuit: _ExitCircuit, code: int, *, count: bool = True) -> None:
        """The connection cannot be made: answer ``code`` and forget the circuit."""
        if count:
            self.counters["circuits_failed"] += 1
        self._unregister(circuit)
        close_socket(circuit.sock)
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
        close_socket(circuit.sock, abort=abort)
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
        self._pump_turn.run(
            now, self.port, lambda: [c for c in self._circuits.values() if self._due(now, c)],
            lambda circuit: circuit.circuit in self._circuits,
            lambda circuit: self._send_one(now, circuit),
            lambda _order: True)  # every circuit of the order was due

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
