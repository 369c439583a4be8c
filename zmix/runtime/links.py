"""ZeroMQ plumbing of a node: CURVE on every link, ZAP admission, outbound DEALERs.

Every link is encrypted and authenticated with CURVE. A node's ROUTER is a CURVE server whose ZAP
handler admits only the long-term keys it was told about (the topology's nodes and, on a provider,
its registered clients); every refusal is counted. Outbound, a node keeps one DEALER per next hop,
created on first use, with libzmq's reconnect backoff and ZMTP heartbeats, and without a routing
identity of its own: the receiving ROUTER gives every connection a fresh one, so a re-dialled link
never meets the identity of the connection it replaces (the receiver knows its peer by the CURVE
key, never by the routing identity). A socket monitor on each outbound link tells when its
connection is lost and when the re-dialled one is up; :meth:`Links.statistics` counts both.
Frames wait on a link without a connection for a bounded time only (``hold``, the network's
``loopix.max_delay``): a link down longer than that is closed with what it holds, so a next hop
that comes back is not sent a burst of packets held past any delay the network allows (their
keys may be erased by then, their timing is a give-away); the next packet dials it anew.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from zmix import crypto

LOG = logging.getLogger(__name__)

RECONNECT_MS = 100  # first reconnect attempt after a link drops
RECONNECT_MAX_MS = 5_000  # backoff ceiling
HEARTBEAT_MS = 1_000  # ZMTP PING interval on idle links
HEARTBEAT_TIMEOUT_MS = 5_000  # a link with no traffic for this long is closed and re-dialled
REDIAL_FIRST = 1.0  # seconds after a refused handshake before the link is dialled anew ...
REDIAL_MAX = 30.0  # ... doubling up to this while the peer keeps refusing
# A TCP connect or a CURVE handshake that has not finished in this long is given up and tried
# again (the defaults, about 2 minutes of SYN retries and 30 s, would keep a link down that long
# after a partition heals).
CONNECT_TIMEOUT_MS = HEARTBEAT_TIMEOUT_MS
LINK_HWM = 50_000  # frames queued per link before sends fail (link_send_failed)
LINK_HOLD = 50_000  # packets a link without a connection takes, at most (Links.send_frames)
# frames queued per inbound link before libzmq stops reading its TCP: 100 PACKETS frames of 32
# are 3,200 packets, 7.3 MB at the default geometry
INBOUND_HWM = 100
NODE_LINK_RCVHWM = 16  # frames a next hop sent back wait this many deep to be read and discarded
# What CURVE adds to a frame on the wire, where libzmq checks its size limit: the MESSAGE
# command's name (8 bytes), its nonce (8), a flags byte and the Poly1305 tag (16).
CURVE_FRAME_OVERHEAD = 33
DOOR_BURST = 20  # handshakes of unknown keys an open door admits at once ...
DOOR_RATE = 1.0  # ... and per second after that (a registration needs one)


def user_id(curve_public: bytes) -> str:
    """Return the ZAP User-Id that libzmq attaches to frames from ``curve_public``."""
    return z85.encode(curve_public).decode("ascii")


def curve_key(uid: str) -> bytes:
    """Return the CURVE key whose ZAP User-Id is ``uid`` (the inverse of :func:`user_id`)."""
    return z85.decode(uid)


class KeyGate:
    """The set of CURVE keys a ZAP handler admits, changeable while the node runs.

    The ZAP handler runs in its own thread; the set is replaced as a whole under a lock, so the
    handler always sees a consistent set.
    """

    def __init__(self, keys: dict[bytes, bytes], *, open_door: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``keys`` maps each admitted CURVE key to its peer's id. With ``open_door`` (a provider
        with open registration) other keys pass the handshake too, at most ``DOOR_BURST`` at
        once and ``DOOR_RATE`` a second after that; frames from a key not in the gate are then
        only looked at if they ask to register (see the node loop)."""
        self._lock = threading.Lock()
        self._by_user: dict[str, bytes] = {user_id(k): v for k, v in keys.items()}
        self.open_door = open_door
        self._clock = clock
        self._tokens = float(DOOR_BURST)
        self._refilled = clock()
        self.denied = 0
        self.allowed = 0
        self.unregistered = 0  # handshakes of unknown keys let in by the open door
        self.throttled = 0  # handshakes of unknown keys refused: the door's rate was used up

    def add(self, curve_public: bytes, entity: bytes) -> None:
        """Admit ``curve_public`` from now on, as the peer ``entity``."""
        with self._lock:
            self._by_user = {**self._by_user, user_id(curve_public): entity}

    def replace(self, keys: dict[bytes, bytes]) -> None:
        """Admit exactly ``keys`` (CURVE key -> peer id) from now on, instead of the keys given
        so far (a newer version of the network); links already made stay up."""
        with self._lock:
            self._by_user = {user_id(k): v for k, v in keys.items()}

    def entity(self, uid: str) -> bytes | None:
        """Return the id of the peer whose User-Id is ``uid``, or None."""
        return self._by_user.get(uid)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP credentials callback: ``key`` is the z85 form of the client's CURVE key."""
        with self._lock:
            if key.decode("ascii") in self._by_user:
                self.allowed += 1
                return True
            if not self.open_door:
                self.denied += 1
                LOG.info("refused a CURVE key not in the topology")
                return False
            now = self._clock()
            self._tokens = min(float(DOOR_BURST),
                               self._tokens + (now - self._refilled) * DOOR_RATE)
            self._refilled = now
            if self._tokens < 1.0:
                self.throttled += 1
                return False
            self._tokens -= 1.0
            self.unregistered += 1
            return True


def start_authenticator(ctx: zmq.Context[zmq.Socket[bytes]], gate: KeyGate,
                        domain: str) -> ThreadAuthenticator:
    """Start the ZAP handler thread of ``ctx`` admitting the keys of ``gate`` on ``domain``.

    The domain is the network's name, set on every ROUTER of the network (``bind_router``).
    """
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("zmix.zap"))
    auth.start()
    auth.configure_curve_callback(domain=domain, credentials_provider=gate)
    return auth


def _unpredictable_routing_ids() -> None:
    """Seed the C library's ``rand()`` from the OS (before a ROUTER is made).

    A ROUTER numbers the connections it gives an identity to from a ``rand()`` value taken when
    the socket is made; unseeded, that is the same in every process running the same code (in a
    bare one the first connection gets ``00 6b 8b 45 67``, the next one more). A peer may claim
    an identity of that form for its own connection, and when libzmq (4.3.5) later makes the
    same identity for another connection it aborts the whole process (an assertion). Seeded,
    the numbers cannot be known in advance: a peer holding N claimed identities hits the next
    one made with odds of N in 2**32."""
    libc = ctypes.CDLL(None)
    libc.srand(ctypes.c_uint(int.from_bytes(crypto.random_bytes(4), "big")))


def bind_router(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, curve_public: bytes, curve_private: bytes,
    domain: str, *, max_frame: int,
) -> zmq.Socket[bytes]:
    """Return the node's inbound ROUTER, a CURVE server bound on ``endpoint``.

    A peer that sends a message part longer than ``max_frame`` bytes is disconnected by libzmq
    before the part is read (``wire.node_frame_limit``): the inbound queue holds at most
    ``INBOUND_HWM`` frames per link, and this bounds their size too."""
    _unpredictable_routing_ids()  # before the socket is made: it draws its first number then
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.maxmsgsize = max_frame + CURVE_FRAME_OVERHEAD
    sock.curve_server = True
    sock.curve_publickey = z85.encode(curve_public)
    sock.curve_secretkey = z85.encode(curve_private)
    sock.zap_domain = domain.encode()
    # No ROUTER_HANDOVER: zmix's DEALERs bring no routing identity, so libzmq gives every
    # connection a new one and there is nothing to hand over; a peer claiming an identity that
    # is in use is ignored rather than given another's connection.
    sock.rcvhwm = INBOUND_HWM
    sock.sndhwm = LINK_HWM
    sock.heartbeat_ivl = HEARTBEAT_MS
    sock.heartbeat_timeout = HEARTBEAT_TIMEOUT_MS
    try:
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close()  # an open socket would keep Context.term() waiting forever
        raise
    return sock


def connect_dealer(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, server_public: bytes,
    curve_public: bytes, curve_private: bytes, *, max_frame: int, rcvhwm: int = LINK_HWM,
) -> zmq.Socket[bytes]:
    """Return a DEALER connected over CURVE to the ROUTER at ``endpoint``; a message part
    longer than ``max_frame`` bytes from that ROUTER drops the connection, and at most
    ``rcvhwm`` messages from it wait to be read.

    The DEALER sets no routing identity, so the ROUTER gives each of its connections a new one.
    One fixed identity, presented again when libzmq re-dials, would be ignored for good by a
    ROUTER that still holds the lost connection under it (it does not hand identities over): a
    link silently dead while its TCP connection stays up. Frames queued while the link is down
    wait (up to ``LINK_HWM``) and go out on the re-dialled connection."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.maxmsgsize = max_frame + CURVE_FRAME_OVERHEAD
    sock.curve_serverkey = z85.encode(server_public)
    sock.curve_publickey = z85.encode(curve_public)
    sock.curve_secretkey = z85.encode(curve_private)
    sock.reconnect_ivl = RECONNECT_MS
    sock.reconnect_ivl_max = RECONNECT_MAX_MS
    sock.heartbeat_ivl = HEARTBEAT_MS
    sock.heartbeat_timeout = HEARTBEAT_TIMEOUT_MS
    sock.connect_timeout = CONNECT_TIMEOUT_MS
    sock.handshake_ivl = CONNECT_TIMEOUT_MS
    sock.sndhwm = LINK_HWM
    sock.rcvhwm = rcvhwm
    sock.connect(endpoint)
    return sock


_LINK_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@dataclass
class _Link:
    """One outbound link: its DEALER, the monitor reporting its connections, and their state."""

    peer: bytes
    sock: zmq.Socket[bytes]
    monitor: zmq.Socket[bytes]
    down_since: float  # monotonic: when it was made, or lost its connection; while not up
    up: bool = False  # a connection completed its handshake and has not been lost since
    lost: bool = False  # the last connection was lost, and no re-dialled one is up yet
    refused_at: float | None = None  # when the peer's gate refused the handshake (not retried)
    held: int = 0  # packets queued since the link was last up (or made)


class Links:
    """One DEALER per next hop, created on first use, each watched by a socket monitor.

    ``resolve(node_id)`` returns ``(endpoint, server_curve_public)`` for a node, or None if the id
    is not a node this one may send to. Nodes send nothing back on these links; what a
    misbehaving peer sends anyway is bounded (``max_frame`` bytes a part, ``NODE_LINK_RCVHWM``
    parts waiting) and read only to be discarded and counted (``link_frames_discarded``):
    left unread, a full queue would stop libzmq reading the connection at all, its heartbeats
    included, and the link would be dropped and re-dialled every heartbeat time-out. The owner
    polls the sockets :meth:`take_new_sockets` hands over once (each link's monitor and DEALER)
    and passes what its poll returned to :meth:`on_events`, so the link states are current when
    frames are counted against them, and calls :meth:`redial` every turn.
    """

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], curve_public: bytes, curve_private: bytes,
        resolve: Callable[[bytes], tuple[str, bytes] | None], *, max_frame: int,
        name: Callable[[bytes], str] = bytes.hex, hold: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``name(node_id)`` is how the log calls a next hop. A link that has had no connection
        for ``hold`` seconds (since it was made or lost it) is closed with the frames it holds
        (:meth:`redial`); ``clock`` is the monotonic clock of ``now`` arguments."""
        self._hold = hold
        self._clock = clock
        self._ctx = ctx
        self._max_frame = max_frame
        self._keys = (curve_public, curve_private)
        self._resolve = resolve
        self._name = name
        self._links: dict[bytes, _Link] = {}
        self._by_monitor: dict[zmq.Socket[bytes], _Link] = {}
        self._by_socket: dict[zmq.Socket[bytes], _Link] = {}
        self._new_sockets: list[zmq.Socket[bytes]] = []
        self._backoff: dict[bytes, float] = {}  # peer -> seconds before the next re-dial
        self._closed_down: set[bytes] = set()  # peers whose link was closed for being down
        self.last_sent: dict[bytes, float] = {}
        self.counts = {"link_handshakes": 0, "link_disconnects": 0, "link_handshakes_failed": 0,
                       "link_queued_while_down": 0, "dropped_link_down": 0,
                       "link_frames_discarded": 0}

    def socket(self, node_id: bytes) -> zmq.Socket[bytes] | None:
        """Return the DEALER to ``node_id``, connecting it now if needed; None if unknown."""
        link = self._link(node_id)
        return None if link is None else link.sock

    def _link(self, node_id: bytes) -> _Link | None:
        link = self._links.get(node_id)
        if link is None:
            target = self._resolve(node_id)
            if target is None:
                return None
            sock = connect_dealer(self._ctx, target[0], target[1], *self._keys,
                                  max_frame=self._max_frame, rcvhwm=NODE_LINK_RCVHWM)
            # Watched before the first connection can complete: no event is missed.
            link = _Link(node_id, sock, sock.get_monitor_socket(_LINK_EVENTS), self._clock())
            self._links[node_id] = link
            self._by_monitor[link.monitor] = link
            self._by_socket[link.sock] = link
            self._new_sockets += [link.monitor, link.sock]
        return link

    def send(self, node_id: bytes, frame: bytes, now: float, packet: bool = True) -> bool:
        """Queue ``frame`` for ``node_id``; return False if the link is unknown or full.
        ``packet`` False: a frame that is not a packet (a HEARTBEAT), not counted as one when
        the link is closed with it."""
        return self.send_frames(node_id, [frame], now, sizes=[1 if packet else 0]) == 1

    def send_frames(self, node_id: bytes, frames: list[bytes], now: float, *,
                    sizes: list[int] | None = None) -> int:
        """Queue ``frames`` for ``node_id`` in order, back to back; return how many the link
        took (it stops at the first it refuses: full; 0 if the link is unknown). ``sizes``
        gives the packets in each frame (None: one each; 0 for a frame that is not a packet, a
        HEARTBEAT, not counted as one when the link is closed with it).

        While the link has no connection it takes at most ``LINK_HOLD`` packets (since it was
        made or lost its connection); the frame that would pass that is refused, as a full
        link's is. The node loop's hot path sends what a round of results made due this way,
        a few dozen packets for a few next hops, with the link looked up once."""
        link = self._link(node_id)
        if link is None:
            return 0
        if sizes is None:
            sizes = [1] * len(frames)
        send, flags, taken, frames_taken, queued = link.sock.send, zmq.NOBLOCK, 0, 0, 0
        up = link.up
        for frame, size in zip(frames, sizes, strict=True):
            if not up and link.held + taken + size > LINK_HOLD:
                break
            try:
                send(frame, flags)
            except zmq.Again:
                break
            taken += size
            queued += size or 1  # a HEARTBEAT counts as one
            frames_taken += 1
        if frames_taken:
            if not up:
                link.held += taken
            if link.lost:
                self.counts["link_queued_while_down"] += queued
            self.last_sent[node_id] = now
        return frames_taken

    def take_new_sockets(self) -> list[zmq.Socket[bytes]]:
        """Return the sockets of the links created since the last call, to be polled for
        input: each link's monitor and its DEALER."""
        new, self._new_sockets = self._new_sockets, []
        return new

    def on_events(self, ready: dict[zmq.Socket[bytes], int]) -> None:
        """Read the events of every monitor in ``ready`` (a poll's result; others are ignored),
        and discard what a next hop sent back on a link in it."""
        for sock in ready:  # a few sockets a turn, however many links there are
            link = self._by_monitor.get(sock)
            if link is not None:
                self._drain(link)
            elif sock in self._by_socket:
                self._discard(sock)

    def _discard(self, sock: zmq.Socket[bytes]) -> None:
        # At most a queue's worth a turn: a peer that keeps talking cannot hold the loop here.
        for _ in range(NODE_LINK_RCVHWM):
            try:
                sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.counts["link_frames_discarded"] += 1

    def _drain(self, link: _Link) -> None:
        while True:
            try:
                message = link.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_event(link, int(parse_monitor_message(message)["event"]))

    def _on_event(self, link: _Link, event: int) -> None:
        """Move ``link`` along on one monitor event and count it."""
        name = self._name(link.peer)
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.counts["link_handshakes"] += 1
            self._backoff.pop(link.peer, None)
            if link.lost:
                LOG.info("link to node %s is up again", name)
            link.up, link.lost, link.held = True, False, 0
            self._closed_down.discard(link.peer)
        elif event == zmq.EVENT_DISCONNECTED and link.up:  # not a failed attempt: a lost link
            self.counts["link_disconnects"] += 1
            LOG.warning("link to node %s lost; re-dialling (frames in flight on it may be lost)",
                        name)
            link.up, link.lost, link.down_since = False, True, self._clock()
        elif event & _HANDSHAKE_FAILED:
            self.counts["link_handshakes_failed"] += 1
            LOG.info("handshake on the link to node %s failed (event %#x)", name, event)
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and link.refused_at is None:
                # libzmq does not try a refused handshake again: :meth:`redial` will.
                link.refused_at = time.monotonic()

    def redial(self, now: float) -> list[zmq.Socket[bytes]]:
        """Close every link whose handshake the peer refused (its gate did not know this node:
        at an epoch's change, the peer may get the document that lists it later) once its
        backoff passed (1 s, doubling to 30 s while refusals go on), and every link that has
        had no connection for ``hold`` seconds, with the packets it holds (counted as
        ``dropped_link_down``); the next frame for that peer dials it anew, resolved in the
        network of the moment. ``now`` is monotonic time. Return the closed links' sockets
        (monitor and DEALER) that were handed over: the owner stops polling them."""
        closed = []
        for peer, link in list(self._links.items()):
            if link.refused_at is not None:
                wait = self._backoff.get(peer, REDIAL_FIRST)
                if now < link.refused_at + wait:
                    continue
                self._backoff[peer] = min(wait * 2, REDIAL_MAX)
                LOG.info("link to node %s was refused by its gate; dialling it anew",
                         self._name(peer))
            elif link.up or now < link.down_since + self._hold:
                continue
            else:  # a warning once per outage, then info lines while it goes on
                log = LOG.info if peer in self._closed_down else LOG.warning
                log("link to node %s has had no connection for %.3g s; %d packet(s) held on it "
                    "dropped, dialling it anew with the next one", self._name(peer),
                    now - link.down_since, link.held)
                self._closed_down.add(peer)
            self.counts["dropped_link_down"] += link.held
            for sock in (link.monitor, link.sock):
                if sock in self._new_sockets:  # never handed over: nobody polls it
                    self._new_sockets.remove(sock)
                else:
                    closed.append(sock)
            self._drop(peer, link)
        return closed

    def _drop(self, peer: bytes, link: _Link) -> None:
        del self._links[peer]
        del self._by_monitor[link.monitor]
        del self._by_socket[link.sock]
        link.sock.disable_monitor()
        link.monitor.close(linger=0)
        link.sock.close(linger=0)

    def statistics(self) -> dict[str, int]:
        """Return the link counters and ``links_down`` (links without a live connection now)."""
        return {**self.counts, "links_down": sum(1 for link in self._links.values()
                                                 if not link.up)}

    def peers(self) -> list[bytes]:
        """Return the ids of the nodes this node has links to."""
        return list(self._links)

    def close(self, linger_ms: int = 0) -> None:
        """Close every link (``linger_ms`` lets queued frames leave first)."""
        for link in self._links.values():
            link.sock.disable_monitor()
            link.monitor.close(linger=0)
            link.sock.close(linger=linger_ms)
        self._links.clear()
        self._by_monitor.clear()
        self._by_socket.clear()
