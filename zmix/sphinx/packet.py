"""The Sphinx construction, written once for every profile: create, process, SURBs.

Notation follows the Sphinx paper: a route of v hops (v <= r), the sender's ephemeral scalar x, at
hop i the group element alpha_i, the shared secret s_i and the blinding factor b_i; beta is the
encrypted routing information, gamma its MAC, delta the LIONESS-encrypted payload. kem1 replaces
the one scalar x and the blinding chain by a fresh scalar e_i per hop: alpha_i = X(e_i, G), and
hop i's routing slot carries alpha_{i+1}. docs/sphinx.md gives the v1 and kem1 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zmix import crypto
from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.sphinx import lioness
from zmix.sphinx.lioness import KEY_BYTES as LIONESS_KEY_BYTES
from zmix.sphinx.params import ALPHA_BYTES, GAMMA_BYTES, ID_BYTES, KEY_BYTES, Profile, SphinxParams
from zmix.sphinx.profiles import (
    CMD_DELIVER,
    CMD_FORWARD,
    CMD_SURB_REPLY,
    KEM1,
    KEM1_STREAM_OFFSET,
    KEM1_VERSION,
    V1_VERSION,
    ProfileImpl,
    RandomBytes,
    Routing,
    implementation,
    kem1_slot,
)

MAX_DELAY_US = 2**32 - 1  # a delay travels as a u32 of microseconds (about 71 minutes)


@dataclass(frozen=True, slots=True)
class Hop:
    """One hop of a route: the node's id, its Sphinx public key, how long it holds the packet."""

    node_id: bytes
    public_key: bytes
    delay_us: int = 0


@dataclass(frozen=True, slots=True)
class ForwardHop:
    """Send ``packet`` to ``next_hop`` after ``delay_us``."""

    next_hop: bytes
    delay_us: int
    packet: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True)
class FinalDelivery:
    """This node is the last hop: deliver ``message`` to ``recipient`` after ``delay_us``."""

    recipient: bytes
    delay_us: int
    message: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True)
class SurbReply:
    """A reply through a SURB: hand ``payload`` (still encrypted) to ``recipient``."""

    recipient: bytes
    surb_id: bytes
    delay_us: int
    payload: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True)
class Surb:
    """A single-use reply block: what a replier needs to send a packet back to its creator."""

    first_hop: bytes
    header: bytes
    ktilde: bytes

    def to_bytes(self) -> bytes:
        """Return ``first_hop || header || ktilde`` (``params.surb_length`` bytes)."""
        return self.first_hop + self.header + self.ktilde

    @classmethod
    def from_bytes(cls, params: SphinxParams, data: bytes) -> Surb:
        """Parse a bytes-like SURB; raises InvalidPacket if the length or the version is wrong."""
        data = _as_bytes("a SURB", data)
        if len(data) != params.surb_length:
            raise InvalidPacket(DropReason.WRONG_SIZE)
        header = data[ID_BYTES:ID_BYTES + params.header_length]
        version = _VERSIONS[params.profile]
        if version and header[0] != version[0]:
            raise InvalidPacket(DropReason.BAD_VERSION)
        return cls(data[:ID_BYTES], header, data[ID_BYTES + params.header_length:])


@dataclass(frozen=True, slots=True)
class SurbKeys:
    """What the creator of a SURB keeps to read the reply: ktilde and the hops' secrets."""

    ktilde: bytes
    secrets: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        """Return ``count (1) || ktilde || secrets``."""
        return bytes([len(self.secrets)]) + self.ktilde + b"".join(self.secrets)

    @classmethod
    def from_bytes(cls, data: bytes) -> SurbKeys:
        """Parse bytes-like stored SURB keys; raises InvalidPacket if malformed."""
        data = _as_bytes("SURB keys", data)
        if not data or len(data) != 1 + KEY_BYTES * (1 + data[0]):
            raise InvalidPacket(DropReason.WRONG_SIZE)
        secrets = tuple(data[1 + KEY_BYTES * (i + 1):1 + KEY_BYTES * (i + 2)]
                        for i in range(data[0]))
        return cls(data[1:1 + KEY_BYTES], secrets)


# ---------------------------------------------------------------------------- creating headers


def _as_bytes(name: str, value: object) -> bytes:
    """Return ``value`` as bytes if it is bytes-like (bytes, bytearray, memoryview, ...).

    Raises LocalMisuse for anything else; ``bytes(value)`` would turn an int into zeros.
    """
    if type(value) is bytes:
        return value
    try:
        return memoryview(value).tobytes()  # type: ignore[arg-type]
    except TypeError:
        raise LocalMisuse(f"{name} must be bytes-like, got {type(value).__name__}") from None


def _sized(name: str, value: object, size: int) -> bytes:
    """Return bytes-like ``value`` as bytes; raises LocalMisuse unless it is ``size`` bytes."""
    data = _as_bytes(name, value)
    if len(data) != size:
        raise LocalMisuse(f"{name} must be {size} bytes, got {len(data)}")
    return data


def _check_route(params: SphinxParams, route: Sequence[Hop]) -> list[Hop]:
    """Return ``route`` with its ids and keys as bytes; raises LocalMisuse if a hop is malformed
    or its public key has small order (X25519 with it would give all zeros)."""
    if not 1 <= len(route) <= params.max_hops:
        raise LocalMisuse(f"a route has 1..{params.max_hops} hops, got {len(route)}")
    checked = []
    for hop in route:
        delay = hop.delay_us
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_US:
            raise LocalMisuse(f"a hop delay must be an integer 0..{MAX_DELAY_US} us, got {delay!r}")
        node_id = _sized("a node id", hop.node_id, ID_BYTES)
        public_key = _sized("a public key", hop.public_key, crypto.X25519_BYTES)
        if crypto.has_small_order(public_key):
            raise _small_order(node_id)
        checked.append(Hop(node_id, public_key, delay))
    return checked


def _small_order(node_id: bytes) -> LocalMisuse:
    return LocalMisuse(f"the public key of hop {node_id.hex()} has small order "
                       "(X25519 with it gives all zeros)")


def _check_recipient(params: SphinxParams, recipient: object, *, surb: bool = False) -> bytes:
    """Return the recipient id as bytes; raises LocalMisuse if it cannot be carried as it is.

    v1 and kem1 carry exactly 16 bytes. smc0 (tests only) carries the vectors' ids: a forward
    recipient of 1..16 bytes (max_message_length counts 16), a SURB recipient as a length byte n
    and n bytes (n <= 31: with 16-byte k, the last hop's slot of a full route holds 48 bytes, 16
    for the id).
    """
    if params.profile is not Profile.SMC0:
        return _sized("a recipient id", recipient, ID_BYTES)
    data = _as_bytes("a recipient id", recipient)
    if surb and not (data and data[0] <= 31 and len(data) == data[0] + 1):
        raise LocalMisuse("an smc0 SURB recipient is a length byte n <= 31 and n bytes")
    if not surb and not 1 <= len(data) <= ID_BYTES:
        raise LocalMisuse(f"an smc0 recipient id is 1..{ID_BYTES} bytes, got {len(data)}")
    return data


def _secrets(impl: ProfileImpl, route: Sequence[Hop], x: bytes) -> tuple[list[bytes], list[bytes]]:
    """Return (alphas, shared secrets) along ``route`` for the sender's scalar ``x``."""
    alpha = crypto.x25519_base(x)
    blinds: list[bytes] = []
    alphas, secrets = [], []
    for hop in route:
        try:
            s = crypto.x25519(x, hop.public_key)
        except crypto.LowOrderPoint:  # not on _check_route's list (none is known): still ours
            raise _small_order(hop.node_id) from None
        for b in blinds:
            s = crypto.x25519(b, s)
        alphas.append(alpha)
        secrets.append(s)
        b_i = impl.blinding(alpha, s)
        blinds.append(b_i)
        alpha = crypto.x25519(b_i, alpha)
    return alphas, secrets


def _kem_secrets(route: Sequence[Hop], scalars: Sequence[bytes],
                 ) -> tuple[list[bytes], list[bytes]]:
    """kem1: return (alphas, shared secrets), ``alpha_i = X(e_i, G)`` and ``s_i = X(e_i, y_i)``
    for the fresh scalar ``e_i`` of each hop; no hop's secret depends on another's."""
    alphas, secrets = [], []
    for e, hop in zip(scalars, route, strict=True):
        try:
            secrets.append(crypto.x25519(e, hop.public_key))
        except crypto.LowOrderPoint:  # as in _secrets
            raise _small_order(hop.node_id) from None
        alphas.append(crypto.x25519_base(e))
    return alphas, secrets


def _filler(params: SphinxParams, impl: ProfileImpl, secrets: Sequence[bytes]) -> bytes:
    c, total = params.slot_length, params.stream_length
    phi = b""
    for i in range(1, len(secrets)):
        stream = impl.header_stream(secrets[i - 1], total)
        phi = crypto.xor(phi + bytes(c), stream[total - i * c:])
    return phi


def _header(params: SphinxParams, route: Sequence[Hop], final: Routing,
            random_bytes: RandomBytes) -> tuple[bytes, list[bytes]]:
    """Return (header, shared secrets) for ``route`` ending with the routing command ``final``.

    ``route`` has been checked by _check_route.
    """
    impl = implementation(params)
    kem1 = params.profile is Profile.KEM1  # kem1: one scalar per hop, drawn in route order
    scalars = [crypto.clamp(random_bytes(32)) for _ in (route if kem1 else route[:1])]
    region = impl.final_region(params, len(route), final, random_bytes)
    alphas, secrets = (_kem_secrets(route, scalars) if kem1
                       else _secrets(impl, route, scalars[0]))
    v, c, beta_len = len(route), params.slot_length, params.beta_length
    last_stream = impl.header_stream(secrets[-1], params.stream_length)
    beta = crypto.xor(region, last_stream[:len(region)]) + _filler(params, impl, secrets)
    prefix = _VERSIONS[params.profile]
    gamma = impl.mac(impl.mac_key(secrets[-1]), prefix + alphas[-1] + beta)
    for i in range(v - 2, -1, -1):
        slot = impl.forward_slot(route[i + 1].node_id, route[i].delay_us, gamma, alphas[i + 1])
        stream = impl.header_stream(secrets[i], beta_len)
        beta = crypto.xor(slot + beta[:beta_len - c], stream)
        gamma = impl.mac(impl.mac_key(secrets[i]), prefix + alphas[i] + beta)
    return prefix + alphas[0] + beta + gamma, secrets


# The version byte that starts a header (smc0 has none).
_VERSIONS = {Profile.V1: bytes([V1_VERSION]), Profile.KEM1: bytes([KEM1_VERSION]),
             Profile.SMC0: b""}


def _encrypt_payload(impl: ProfileImpl, secrets: Sequence[bytes], body: bytes) -> bytes:
    for s in reversed(secrets):
        body = lioness.encrypt(impl.payload_key(s), body)
    return body


def create_forward_packet(params: SphinxParams, route: Sequence[Hop], recipient: bytes,
                          message: bytes, random_bytes: RandomBytes = crypto.random_bytes) -> bytes:
    """Return a packet that ``route[-1]`` delivers to ``recipient``; send it to ``route[0]``.

    Bytes-like arguments are accepted. Raises LocalMisuse if the route, the recipient or the
    message does not fit the geometry, or a hop's public key has small order.
    """
    message = _as_bytes("a message", message)
    if len(message) > params.max_message_length:
        raise LocalMisuse(f"a message holds at most {params.max_message_length} bytes, "
                          f"got {len(message)}")
    recipient = _check_recipient(params, recipient)
    route = _check_route(params, route)
    impl = implementation(params)
    final = Routing(CMD_DELIVER, recipient, route[-1].delay_us, b"")
    header, secrets = _header(params, route, final, random_bytes)
    return header + _encrypt_payload(impl, secrets, impl.forward_body(params, recipient, message))


def create_surb(params: SphinxParams, route: Sequence[Hop], recipient: bytes, surb_id: bytes,
                random_bytes: RandomBytes = crypto.random_bytes) -> tuple[Surb, SurbKeys]:
    """Return a SURB whose replies ``route[-1]`` hands to ``recipient`` tagged with ``surb_id``,
    and the keys its creator keeps to read them.

    Raises LocalMisuse as :func:`create_forward_packet` does, or if ``surb_id`` is not 16 bytes.
    """
    surb_id = _sized("a SURB id", surb_id, ID_BYTES)
    recipient = _check_recipient(params, recipient, surb=True)
    route = _check_route(params, route)
    final = Routing(CMD_SURB_REPLY, recipient, route[-1].delay_us, surb_id)
    header, secrets = _header(params, route, final, random_bytes)
    ktilde = random_bytes(KEY_BYTES)
    return Surb(route[0].node_id, header, ktilde), SurbKeys(ktilde, tuple(secrets))


def answer_surb(params: SphinxParams, surb: Surb, message: bytes) -> tuple[bytes, bytes]:
    """Return ``(first hop id, packet)`` carrying ``message`` back through ``surb``.

    Raises LocalMisuse if ``message`` is longer than ``params.max_reply_length``.
    """
    message = _as_bytes("a reply", message)
    if len(message) > params.max_reply_length:
        raise LocalMisuse(f"a reply holds at most {params.max_reply_length} bytes, "
                          f"got {len(message)}")
    impl = implementation(params)
    body = impl.reply_body(params, message)
    return surb.first_hop, surb.header + lioness.encrypt(impl.payload_key(surb.ktilde), body)


def open_surb_reply(params: SphinxParams, keys: SurbKeys, payload: bytes) -> bytes:
    """Return the reply message in a (bytes-like) SurbReply payload.

    Raises InvalidPacket if the payload was altered or is malformed (docs/sphinx.md, "SURBs").
    """
    payload = _as_bytes("a reply payload", payload)
    if len(payload) != params.payload_length:
        raise InvalidPacket(DropReason.WRONG_SIZE)
    impl = implementation(params)
    for s in reversed(keys.secrets):
        payload = lioness.encrypt(impl.payload_key(s), payload)
    body = lioness.decrypt(impl.payload_key(keys.ktilde), payload)
    return impl.open_reply(params, body)


# ---------------------------------------------------------------------------- processing


def process_packet(params: SphinxParams, private_key: bytes, packet: bytes,
                   ) -> ForwardHop | FinalDelivery | SurbReply:
    """Strip one layer with this node's ``private_key``; return what to do with the packet.

    Order: size, version, shared secret, MAC (constant time), replay tag, then decryption.
    ``packet`` may be any bytes-like object. For a bad packet this raises InvalidPacket (one opaque
    error; the reason is in ``.reason``) and nothing else; our own misuse (a private key that is
    not 32 bytes, a packet that is not bytes-like) raises LocalMisuse.
    """
    return process_packet_keys(params, ((0, private_key),), packet)[1]


def process_packet_keys(params: SphinxParams, keys: Sequence[tuple[int, bytes | bytearray]],
                        packet: bytes,
                        ) -> tuple[int, ForwardHop | FinalDelivery | SurbReply]:
    """Strip one layer with the first of ``keys`` (``(epoch, private key)`` pairs, in the order
    to try them) under which the packet's MAC holds; return ``(that key's epoch, result)``.

    The checks that do not depend on the key (size, version) run once. A MAC that fails under
    one key moves on to the next: a miss costs one X25519, the MAC key and the MAC. A packet
    whose MAC fails under every key is ``bad_mac``; a small-order alpha (``bad_point``) fails
    under any key, so it stops at once, as do the checks after the MAC (``bad_command``,
    ``bad_tag``: the packet was built that way for this key). Errors as for
    :func:`process_packet`; no keys at all, or a key that is not 32 bytes, is LocalMisuse. A key
    given as a ``bytearray`` is used in place, never copied (its owner can zero it).
    """
    keys = _checked_keys(keys)
    if type(packet) is not bytes:  # one copy here, so the slices below are bytes for libsodium
        packet = _as_bytes("a packet", packet)
    if len(packet) != params.packet_length:
        raise InvalidPacket(DropReason.WRONG_SIZE)
    version = _VERSIONS[params.profile]
    start = len(version)
    if start and packet[0] != version[0]:
        raise InvalidPacket(DropReason.BAD_VERSION)
    impl = implementation(params)
    beta_end = start + ALPHA_BYTES + params.beta_length
    alpha = packet[start:start + ALPHA_BYTES]
    header, gamma = packet[:beta_end], packet[beta_end:beta_end + GAMMA_BYTES]
    kem1 = impl is KEM1
    for epoch, key in keys:
        try:
            s = crypto.x25519(key, alpha)
        except crypto.LowOrderPoint:  # all zeros under every key: the sender's doing
            raise InvalidPacket(DropReason.BAD_POINT) from None
        if kem1:  # mu and rho come out of one BLAKE2b: keep rho for the unwrap
            hop_keys = KEM1.hop_keys(s)
            if crypto.equal(KEM1.mac(hop_keys[:32], header), gamma):
                return epoch, _unwrap_kem1(params, packet, hop_keys[32:])
        elif crypto.equal(impl.mac(impl.mac_key(s), header), gamma):
            return epoch, _unwrap(params, impl, packet, start, alpha, s)
    raise InvalidPacket(DropReason.BAD_MAC)


def _checked_keys(keys: Sequence[tuple[int, bytes | bytearray]],
                  ) -> Sequence[tuple[int, bytes | bytearray]]:
    """Return ``keys`` with every private key 32 bytes of bytes or bytearray (others copied to
    bytes); raises LocalMisuse for an empty sequence or a key of another length."""
    if not keys:
        raise LocalMisuse("process_packet_keys needs at least one private key to try")
    for _, key in keys:  # a loop, not all(): this runs once a packet
        if type(key) not in _KEY_TYPES or len(key) != crypto.X25519_BYTES:
            break
    else:
        return keys
    return [(epoch, key if isinstance(key, bytearray)
             else _sized("a private key", key, crypto.X25519_BYTES)) for epoch, key in keys]


def _unwrap(params: SphinxParams, impl: ProfileImpl, packet: bytes, start: int, alpha: bytes,
            s: bytes) -> ForwardHop | FinalDelivery | SurbReply:
    """Decrypt a packet whose MAC held under the shared secret ``s``: its routing command, its
    payload, and for a forward hop the next packet."""
    tag = impl.replay_tag(s)
    beta_end = start + ALPHA_BYTES + params.beta_length
    stream = crypto.chacha20_stream(impl.stream_key(s), params.stream_length)
    b = crypto.xor(packet[start + ALPHA_BYTES:beta_end] + bytes(params.slot_length), stream)
    routing = impl.parse(params, b)
    payload = lioness.decrypt(impl.payload_key(s), packet[beta_end + GAMMA_BYTES:])
    if routing.command == CMD_FORWARD:
        next_alpha = crypto.x25519(impl.blinding(alpha, s), alpha)
        header = packet[:start] + next_alpha + b[params.slot_length:] + routing.extra
        return ForwardHop(routing.node_id, routing.delay_us, header + payload, tag)
    if routing.command == CMD_SURB_REPLY:
        return SurbReply(routing.node_id, routing.extra, routing.delay_us, payload, tag)
    recipient, message = impl.open_final(params, routing, payload)
    return FinalDelivery(recipient, routing.delay_us, message, tag)


_KEM1_HEAD = bytes(KEM1_STREAM_OFFSET)  # where the payload key and the replay tag come out
_KEY_TYPES = (bytes, bytearray)


def _unwrap_kem1(params: SphinxParams, packet: bytes,
                 rho: bytes) -> ForwardHop | FinalDelivery | SurbReply:
    """kem1's _unwrap, given the hop's stream key ``rho``: one ChaCha20 call over
    ``00*224 || beta || 00*c`` gives the payload key, the replay tag and the decrypted routing
    information at once, and the next alpha comes out of the slot (no blinding, no X25519)."""
    c = params.slot_length
    beta_end = 1 + ALPHA_BYTES + params.beta_length
    out = crypto.chacha20_xor(rho, b"".join((_KEM1_HEAD, packet[1 + ALPHA_BYTES:beta_end],
                                             bytes(c))))
    tag, b = out[LIONESS_KEY_BYTES:KEM1_STREAM_OFFSET], out[KEM1_STREAM_OFFSET:]
    command, node_id, delay_us, extra, next_alpha = kem1_slot(b)
    payload = lioness.decrypt(out[:LIONESS_KEY_BYTES], packet[beta_end + GAMMA_BYTES:])
    if command == CMD_FORWARD:
        return ForwardHop(node_id, delay_us,
                          b"".join((packet[:1], next_alpha, b[c:], extra, payload)), tag)
    if command == CMD_SURB_REPLY:
        return SurbReply(node_id, extra, delay_us, payload, tag)
    return FinalDelivery(node_id, delay_us, KEM1.open_reply(params, payload), tag)
