"""What a watcher of a client's link sees: one frame length, whatever the client does.

Real node processes, a real client runtime, real messages, an anonymous reply through a reply
block, loops, fetches of 0 and of several items and their acknowledgements. The client reaches its
provider through a recording TCP relay in this test, which parses ZMTP 3 (the greeting, then every
frame) and records the length of every command the client sends. After the CURVE handshake every
frame on the wire is a CURVE MESSAGE command of ``33 + n`` bytes for a ZeroMQ message of ``n``
bytes (name 8, nonce 8, Poly1305 tag 16, flags 1), encrypted, so its length is all a watcher
learns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zmix import wire
from zmix.bench.common import make_network, network_launcher
from zmix.pki import Document
from zmix.runtime import metrics
from zmix.runtime.client import ClientRuntime
from zmix.runtime.directory import authority_peers, fetch_document
from zmix.topology import Topology
from zmix.wire import MailboxItem

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}
CURVE_MESSAGE_OVERHEAD = 33  # "\x07MESSAGE" 8, nonce 8, tag 16, flags 1
# libzmq's own ZMTP heartbeats, inside CURVE MESSAGE commands: PING is "\x04PING" and a 2-byte
# TTL, PONG "\x04PONG" (no context). Each side sends a PING every heartbeat interval and answers
# the other's, on a timer, whatever the client does: they are not zmix frames.
ZMTP_HEARTBEATS = {CURVE_MESSAGE_OVERHEAD + 7, CURVE_MESSAGE_OVERHEAD + 5}
GREETING = 64  # ZMTP 3: signature 10, version 2, mechanism 20, as-server 1, filler 31


@dataclass
class ZmtpStream:
    """One direction of one ZMTP 3 connection, parsed as its bytes pass: every frame's
    (command name, body length); "" is a frame that is no command."""

    buffer: bytearray = field(default_factory=bytearray)
    mechanism: bytes | None = None
    frames: list[tuple[str, int]] = field(default_factory=list)

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if self.mechanism is None:
            if len(self.buffer) < GREETING:
                return
            assert self.buffer[0] == 0xFF and self.buffer[9] == 0x7F, "not a ZMTP 3 greeting"
            assert self.buffer[10] == 3, "not ZMTP 3"
            self.mechanism = bytes(self.buffer[12:32]).rstrip(b"\0")
            del self.buffer[:GREETING]
        while len(self.buffer) >= 2:
            flags = self.buffer[0]
            head = 9 if flags & 0x02 else 2  # long frames have an 8-byte size
            if len(self.buffer) < head:
                return
            size = int.from_bytes(self.buffer[1:head], "big")
            if len(self.buffer) < head + size:
                return
            body = bytes(self.buffer[head:head + size])
            del self.buffer[:head + size]
            # libzmq sends a CURVE MESSAGE command in a frame without the command flag.
            command = flags & 0x04 or body.startswith(b"\x07MESSAGE")
            name = body[1:1 + body[0]].decode("ascii", "replace") if command else ""
            self.frames.append((name, size))

    def message_lengths(self) -> list[int]:
        """The body lengths of the MESSAGE commands (everything after the CURVE handshake)."""
        return [size for name, size in self.frames if name == "MESSAGE"]


class LinkRecorder:
    """A TCP relay on 127.0.0.1: forwards every connection to ``target_port`` both ways and
    parses each direction's ZMTP framing."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections: list[tuple[ZmtpStream, ZmtpStream]] = []  # (to provider, to client)
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener.settimeout(0.1)  # to notice stop(): close() does not wake accept()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self._target))
            up, down = ZmtpStream(), ZmtpStream()
            with self._lock:
                self.connections.append((up, down))
                self._sockets += [client, upstream]
                for src, dst, stream in ((client, upstream, up), (upstream, client, down)):
                    pump = threading.Thread(target=_pump, args=(src, dst, stream, self._lock),
                                            daemon=True)
                    self._threads.append(pump)
                    pump.start()

    def stop(self) -> None:
        self._stopped.set()
        self._accepting.join(5)
        self._listener.close()
        with self._lock:
            threads, sockets = list(self._threads), list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()


def _pump(src: socket.socket, dst: socket.socket, stream: ZmtpStream,
          lock: threading.Lock) -> None:
    """Copy ``src`` to ``dst`` until either closes, feeding every chunk to ``stream``."""
    try:
        while data := src.recv(65536):
            with lock:
                stream.feed(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@dataclass
class Net:
    topology: Topology
    state: Path
    alice_state: Path  # alice's own state directory (her client files apart from bob's)
    alice_document: Document  # alice's view: her provider's address is the recorder's
    recorder: LinkRecorder


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    topology, state = make_network(tmp_path, clients=CLIENTS, layers=(("mix-a",), ("mix-b",),
                                                                      ("mix-c",)), loopix={
        "payload_rate": 50.0, "loop_rate": 5.0, "drop_rate": 2.0, "mean_delay": 0.002,
        "fetch_interval": 0.05})
    launcher = network_launcher(state, topology)  # the authority first, then every node
    launcher.start()
    recorder = LinkRecorder(topology.node("provider-1").port)
    try:
        yield Net(topology, state, _client_side(state, tmp_path / "alice"),
                  _document_through(state, topology, recorder.port), recorder)
    finally:
        recorder.stop()
        launcher.stop()


def _client_side(state: Path, view: Path) -> Path:
    """Copy the state directory's client side (the topology, the key files)."""
    view.mkdir()
    for part in ("public", "private"):
        shutil.copytree(state / part, view / part)
    shutil.copy(state / "topology.yaml", view / "topology.yaml")
    return view


def _document_through(state: Path, topology: Topology, port: int) -> Document:
    """The authority's document of this epoch, with provider-1 listening on ``port``: what
    alice's client is given, so her link goes through the recorder."""
    document = fetch_document(authority_peers(topology, state), topology.authority_threshold,
                              topology.network, topology.epoch,
                              topology.epoch.epoch_at(time.time()), 30.0)
    return dataclasses.replace(document, nodes=tuple(
        dataclasses.replace(e, port=port) if e.name == "provider-1" else e
        for e in document.nodes))


@dataclass
class Session:
    """What one run of a client runtime did: the item count of every fetch answer it took in,
    the ids of those items, and the frames it sent (packets, FETCHes)."""

    answers: list[int] = field(default_factory=list)
    item_ids: set[int] = field(default_factory=set)
    packets: int = 0
    fetches_sent: int = 0


def _watch(runtime: ClientRuntime, session: Session) -> None:
    """Record every fetch answer the core takes in (a spy on the core's public entry point)."""
    core = runtime.core
    take_in = core.on_fetched

    def spy(now: float, items: list[MailboxItem]) -> object:
        session.answers.append(len(items))
        session.item_ids.update(item.item_id for item in items)
        return take_in(now, items)

    core.on_fetched = spy  # type: ignore[method-assign]


def _close(runtime: ClientRuntime, session: Session) -> None:
    stats = runtime.core.statistics()
    session.packets = sum(stats[k] for k in ("real_sent", "loops_sent", "drops_sent",
                                             "replies_sent"))
    session.fetches_sent = runtime.fetches_sent


def _stat(net: Net, node: str, name: str) -> float:
    return (metrics.statistics(net.state, node) or {}).get(name, 0)


def _wait_stat(net: Net, node: str, name: str, ok: Callable[[float], bool],
               timeout: float = 15.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = _stat(net, node, name)
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{node} {name} stayed at {value}"
        time.sleep(0.1)


def test_a_capture_of_the_clients_link_shows_one_frame_length(net: Net) -> None:
    rng = random.Random(11)
    acked_before = _stat(net, "provider-1", "mailbox_acked")
    relayed_before = _stat(net, "provider-1", "relayed")
    sessions: list[Session] = []

    # 1. alice online with an empty mailbox: a fetch of 0 items, loops and drops.
    first = Session()
    sessions.append(first)
    with ClientRuntime(net.alice_state, "alice", drain=True, rng=rng,
                       document=net.alice_document) as alice:
        _watch(alice, first)
        alice.fetch_now()
        assert alice.run_until(lambda: alice.fetches >= 1 and not alice.fetch_pending, 20)
        alice.run_until(lambda: False, 0.5)  # some loops and drops, a few more empty fetches
    _close(alice, first)  # offline now: its last FETCH counted too
    assert first.answers[0] == 0

    # 2. bob writes to alice: an anonymous question with a reply block, and a long letter.
    letter = random.Random(5).randbytes(20_000)  # 13 fragments: more than one answer holds
    with ClientRuntime(net.state, "bob") as bob:
        question = bob.core.submit(time.time(), "alice", b"who are you?", anonymous=True,
                                   reply_blocks=1)
        long_one = bob.core.submit(time.time(), "alice", letter)
        assert bob.run_until(lambda: all(bob.core.progress(m).acked == bob.core.progress(m)
                                         .fragments for m in (question, long_one)), 60)

    # 3. alice fetches it all (several items per answer), answers through the reply block
    #    (a RELAY) and writes to bob (PACKETs, whose acks she fetches).
    second = Session()
    sessions.append(second)
    with ClientRuntime(net.alice_state, "alice", drain=True, rng=rng,
                       document=net.alice_document) as alice:
        _watch(alice, second)
        alice.fetch_now()
        assert alice.run_until(lambda: len(alice.core.inbox()) == 2, 60)
        [asked] = [m for m in alice.core.inbox() if m.reply_handle is not None]
        reply = alice.core.reply(time.time(), asked.reply_handle, b"a friend")
        hello = alice.core.submit(time.time(), "bob", b"hello bob")
        assert alice.run_until(lambda: alice.core.progress(reply).acked == 1
                               and alice.core.progress(hello).acked == 1, 60)
    _close(alice, second)

    # bob got the answer that went through the RELAY, and the letter.
    with ClientRuntime(net.state, "bob", drain=True) as bob:
        bob.fetch_now()
        assert bob.run_until(lambda: len(bob.core.inbox()) == 2, 60)
        assert sorted(m.data for m in bob.core.inbox()) == [b"a friend", b"hello bob"]

    # Every item alice took in was acknowledged, though nothing answered a fetch answer.
    fetched = len(first.item_ids | second.item_ids)
    _wait_stat(net, "provider-1", "mailbox_acked", lambda v: v - acked_before >= fetched)
    assert _wait_stat(net, "provider-1", "relayed", lambda v: v > relayed_before)
    net.recorder.stop()

    # Positive control: the capture holds both sessions, parsed in step with the stream.
    assert len(net.recorder.connections) == 2
    answers = first.answers + second.answers
    assert 0 in answers and max(answers) >= 2, answers
    lengths: set[int] = set()
    answer_lengths: set[int] = set()
    for (up, down), session in zip(net.recorder.connections, sessions, strict=True):
        assert up.mechanism == down.mechanism == b"CURVE"
        assert [name for name, _ in up.frames[:2]] == ["HELLO", "INITIATE"]
        assert all(name == "MESSAGE" for name, _ in up.frames[2:]), set(up.frames)
        data = [n for n in up.message_lengths() if n not in ZMTP_HEARTBEATS]
        lengths.update(data)
        # The one length, for every frame a client sends: packets, RELAY, FETCH (with acks)
        assert len(lengths) == 1, sorted(lengths)
        # ... and nothing else was sent: every frame is one of the packets or FETCHes.
        assert len(data) == session.packets + session.fetches_sent
        assert session.packets > 0 and session.fetches_sent > len(session.answers)
        answer_lengths.update(n for n in down.message_lengths() if n not in ZMTP_HEARTBEATS)
    params = net.topology.sphinx
    assert lengths == {CURVE_MESSAGE_OVERHEAD + wire.client_frame_length(params)}
    # The provider's side shows one length too: fetch answers, and nothing after them.
    slots = net.topology.mailbox.fetch_slots
    assert answer_lengths == {CURVE_MESSAGE_OVERHEAD + wire.fetch_reply_length(params, slots)}
    assert sessions[1].packets >= 3  # the reply, hello bob, loops
