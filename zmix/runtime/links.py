"""ZeroMQ plumbing of a node: CURVE on every link, ZAP admission, outbound DEALERs.

Every link is encrypted and authenticated with CURVE. A node's ROUTER is a CURVE server whose ZAP
handler admits only the long-term keys it was told about (the topology's nodes and, on a provider,
its registered clients); every refusal is counted. Outbound, a node keeps one DEALER per next hop,
created on first use, with libzmq's reconnect backoff and ZMTP heartbeats, and with a random
routing identity (ids are public; the receiver knows its peer by the CURVE key, never by that).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from zmix import crypto

LOG = logging.getLogger(__name__)

RECONNECT_MS = 100  # first reconnect attempt after a link drops
RECONNECT_MAX_MS = 5_000  # backoff ceiling
HEARTBEAT_MS = 1_000  # ZMTP PING interval on idle links
HEARTBEAT_TIMEOUT_MS = 5_000  # a link with no traffic for this long is closed and re-dialled
LINK_HWM = 50_000  # frames queued per link before sends fail (then counted as queue_full)
INBOUND_HWM = 1_000  # frames queued per inbound link before libzmq stops reading its TCP
NODE_LINK_RCVHWM = 16  # a node never reads its outbound links: nothing legitimate comes back
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


def bind_router(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, curve_public: bytes, curve_private: bytes,
    domain: str, *, max_frame: int,
) -> zmq.Socket[bytes]:
    """Return the node's inbound ROUTER, a CURVE server bound on ``endpoint``.

    A peer that sends a message part longer than ``max_frame`` bytes is disconnected by libzmq
    before the part is read (``wire.node_frame_limit``): the inbound queue holds at most
    ``INBOUND_HWM`` frames per link, and this bounds their size too."""
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.maxmsgsize = max_frame + CURVE_FRAME_OVERHEAD
    sock.curve_server = True
    sock.curve_publickey = z85.encode(curve_public)
    sock.curve_secretkey = z85.encode(curve_private)
    sock.zap_domain = domain.encode()
    # No ROUTER_HANDOVER: every connection brings a random routing identity (connect_dealer's
    # callers), so there is nothing to hand over, and a peer claiming another's identity must
    # not take its connection away.
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
    curve_public: bytes, curve_private: bytes, identity: bytes, *, max_frame: int,
    rcvhwm: int = LINK_HWM,
) -> zmq.Socket[bytes]:
    """Return a DEALER connected over CURVE to the ROUTER at ``endpoint``; a message part
    longer than ``max_frame`` bytes from that ROUTER drops the connection, and at most
    ``rcvhwm`` messages from it wait to be read."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.maxmsgsize = max_frame + CURVE_FRAME_OVERHEAD
    sock.routing_id = identity
    sock.curve_serverkey = z85.encode(server_public)
    sock.curve_publickey = z85.encode(curve_public)
    sock.curve_secretkey = z85.encode(curve_private)
    sock.reconnect_ivl = RECONNECT_MS
    sock.reconnect_ivl_max = RECONNECT_MAX_MS
    sock.heartbeat_ivl = HEARTBEAT_MS
    sock.heartbeat_timeout = HEARTBEAT_TIMEOUT_MS
    sock.sndhwm = LINK_HWM
    sock.rcvhwm = rcvhwm
    sock.connect(endpoint)
    return sock


class Links:
    """One DEALER per next hop, created on first use.

    ``resolve(node_id)`` returns ``(endpoint, server_curve_public)`` for a node, or None if the id
    is not a node this one may send to. Nodes send nothing back on these links, so what a
    misbehaving peer sends is bounded (``max_frame`` bytes a part, ``NODE_LINK_RCVHWM`` parts)
    and never read.
    """

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], curve_public: bytes, curve_private: bytes,
        resolve: Callable[[bytes], tuple[str, bytes] | None], *, max_frame: int,
    ) -> None:
        self._ctx = ctx
        self._max_frame = max_frame
        self._keys = (curve_public, curve_private)
        self._resolve = resolve
        self._sockets: dict[bytes, zmq.Socket[bytes]] = {}
        self.last_sent: dict[bytes, float] = {}

    def socket(self, node_id: bytes) -> zmq.Socket[bytes] | None:
        """Return the DEALER to ``node_id``, connecting it now if needed; None if unknown."""
        sock = self._sockets.get(node_id)
        if sock is None:
            target = self._resolve(node_id)
            if target is None:
                return None
            # A random routing identity, not the node's id: ids are public, and a peer that
            # claimed this node's id could otherwise have its frames routed to itself.
            sock = connect_dealer(self._ctx, target[0], target[1], *self._keys,
                                  crypto.random_bytes(16), max_frame=self._max_frame,
                                  rcvhwm=NODE_LINK_RCVHWM)
            self._sockets[node_id] = sock
        return sock

    def send(self, node_id: bytes, frame: bytes, now: float) -> bool:
        """Queue ``frame`` for ``node_id``; return False if the link is unknown or full."""
        sock = self.socket(node_id)
        if sock is None:
            return False
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.last_sent[node_id] = now
        return True

    def peers(self) -> list[bytes]:
        """Return the ids of the nodes this node has links to."""
        return list(self._sockets)

    def close(self, linger_ms: int = 0) -> None:
        """Close every link (``linger_ms`` lets queued frames leave first)."""
        for sock in self._sockets.values():
            sock.close(linger=linger_ms)
        self._sockets.clear()
