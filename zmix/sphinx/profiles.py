"""What differs between the Sphinx profiles: key derivation, routing commands, payload bodies.

The construction itself (shared secrets, filler, nested MACs, LIONESS layers, SURBs) lives once in
:mod:`zmix.sphinx.packet`; it asks a :class:`Profile` object for the parts below. ``v1`` and
``smc0`` chain one blinded alpha through the route; ``kem1`` gives each hop a fresh ephemeral key
whose public half travels in the previous hop's routing slot.

``v1`` derives every per-hop key from the shared secret with keyed BLAKE2b and its own versioned
label, so no two purposes share key material (smc0's payload key is its header keystream).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from zmix import crypto
from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.sphinx.lioness import KEY_BYTES as LIONESS_KEY_BYTES
from zmix.sphinx.params import (
    ALPHA_BYTES,
    GAMMA_BYTES,
    ID_BYTES,
    KEM1_SLOT_BYTES,
    SMC0_K,
    TAG_BYTES,
    V1_LENGTH_BYTES,
    V1_SLOT_BYTES,
    Profile,
    SphinxParams,
)

RandomBytes = Callable[[int], bytes]

V1_VERSION = 0x01
KEM1_VERSION = 0x02

# v1 routing commands (first byte of a slot)
CMD_FORWARD = 0x01
CMD_DELIVER = 0x02
CMD_SURB_REPLY = 0x03

# v1 key-derivation labels: BLAKE2b(key = shared secret, data = label [|| alpha])
LABEL_STREAM = b"zmix-v1 header stream"
LABEL_MAC = b"zmix-v1 header mac"
LABEL_PAYLOAD = b"zmix-v1 payload"
LABEL_BLIND = b"zmix-v1 blinding"
LABEL_TAG = b"zmix-v1 replay tag"

# kem1's one key-derivation label: BLAKE2b-512(key = shared secret, data = label) = mu || rho
KEM1_LABEL_KEYS = b"zmix-kem1 hop keys"
# Where kem1's header stream starts in the stream of rho: after the payload key and the tag.
KEM1_STREAM_OFFSET = LIONESS_KEY_BYTES + 32

_V1_SLOT = struct.Struct(">B16sI16s3x")  # command, id, delay_us, gamma or SURB id
_KEM1_SLOT = struct.Struct(">B16sI16s32s3x")  # the same, then the next hop's alpha
_ZERO_TAG = bytes(TAG_BYTES)
_ZERO_ID = bytes(ID_BYTES)
_ZERO_ALPHA = bytes(ALPHA_BYTES)


@dataclass(frozen=True, slots=True)
class Routing:
    """One hop's decoded routing command."""

    command: int  # CMD_FORWARD, CMD_DELIVER or CMD_SURB_REPLY
    node_id: bytes  # next hop (forward) or recipient (deliver, reply)
    delay_us: int
    extra: bytes  # next gamma (forward) or SURB id (reply); empty otherwise
    next_alpha: bytes = b""  # kem1 forward: the next hop's alpha, carried in the slot


class V1:
    """The zmix wire profile (docs/sphinx.md)."""

    profile = Profile.V1

    @staticmethod
    def stream_key(s: bytes) -> bytes:
        return crypto.blake2b(LABEL_STREAM, size=32, key=s)

    @staticmethod
    def header_stream(s: bytes, n: int) -> bytes:
        """The first ``n`` bytes of the keystream that encrypts beta."""
        return crypto.chacha20_stream(V1.stream_key(s), n)

    @staticmethod
    def mac_key(s: bytes) -> bytes:
        return crypto.blake2b(LABEL_MAC, size=32, key=s)

    @staticmethod
    def payload_key(s: bytes) -> bytes:
        return crypto.chacha20_stream(crypto.blake2b(LABEL_PAYLOAD, size=32, key=s),
                                      LIONESS_KEY_BYTES)

    @staticmethod
    def blinding(alpha: bytes, s: bytes) -> bytes:
        return crypto.clamp(crypto.blake2b(LABEL_BLIND + alpha, size=32, key=s))

    @staticmethod
    def replay_tag(s: bytes) -> bytes:
        return crypto.blake2b(LABEL_TAG, size=32, key=s)

    @staticmethod
    def mac(key: bytes, header_without_gamma: bytes) -> bytes:
        return crypto.blake2b(header_without_gamma, size=GAMMA_BYTES, key=key)

    @staticmethod
    def forward_slot(next_id: bytes, delay_us: int, gamma: bytes,
                     next_alpha: bytes = b"") -> bytes:
        """The slot of a hop that forwards; ``next_alpha`` is kem1's only (v1 blinds)."""
        return _V1_SLOT.pack(CMD_FORWARD, next_id, delay_us, gamma)

    @staticmethod
    def final_region(params: SphinxParams, hops: int, routing: Routing,
                     random_bytes: RandomBytes) -> bytes:
        """The last hop's command followed by random bytes up to the end of its beta window."""
        slot = _V1_SLOT.pack(routing.command, routing.node_id, routing.delay_us,
                             routing.extra or bytes(ID_BYTES))
        return slot + random_bytes(params.beta_length - hops * params.slot_length)

    @staticmethod
    def parse(params: SphinxParams, b: bytes) -> Routing:
        """Decode the slot at the start of ``b``; raises InvalidPacket (bad_command) for an
        unknown command, non-zero reserved bytes, or a deliver command whose 16-byte field (where
        forward carries gamma and SURB reply its id) is not zero."""
        command, node_id, delay_us, extra = _V1_SLOT.unpack_from(b)
        if command not in (CMD_FORWARD, CMD_DELIVER, CMD_SURB_REPLY):
            raise InvalidPacket(DropReason.BAD_COMMAND)
        if b[V1_SLOT_BYTES - 3:V1_SLOT_BYTES] != b"\0\0\0":
            raise InvalidPacket(DropReason.BAD_COMMAND)
        if command == CMD_DELIVER:
            if extra != _ZERO_ID:
                raise InvalidPacket(DropReason.BAD_COMMAND)
            extra = b""
        return Routing(command, node_id, delay_us, extra)

    @staticmethod
    def forward_body(params: SphinxParams, recipient: bytes, message: bytes) -> bytes:
        return V1.reply_body(params, message)

    @staticmethod
    def open_final(params: SphinxParams, routing: Routing, body: bytes) -> tuple[bytes, bytes]:
        return routing.node_id, V1.open_reply(params, body)

    @staticmethod
    def reply_body(params: SphinxParams, message: bytes) -> bytes:
        head = _ZERO_TAG + len(message).to_bytes(V1_LENGTH_BYTES, "big")
        return head + message + bytes(params.payload_length - len(head) - len(message))

    @staticmethod
    def open_reply(params: SphinxParams, body: bytes) -> bytes:
        """Return the message in a decrypted body ``tag || u32 length || message || zeros``.

        Raises InvalidPacket (bad_tag) if the tag is not zero, the length is more than
        ``P - 20``, or a byte after the message is not zero: one encoding per message, so a body
        this code did not write is refused whatever part of it is wrong.
        """
        if not crypto.equal(body[:TAG_BYTES], _ZERO_TAG):
            raise InvalidPacket(DropReason.BAD_TAG)
        start = TAG_BYTES + V1_LENGTH_BYTES
        length = int.from_bytes(body[TAG_BYTES:start], "big")
        if length > params.max_reply_length:
            raise InvalidPacket(DropReason.BAD_TAG)
        end = start + length
        if body.count(0, end) != len(body) - end:
            raise InvalidPacket(DropReason.BAD_TAG)
        return body[start:end]


class KEM1:
    """The KEM wire profile (docs/sphinx.md, "Profile kem1"): v1's bodies and commands, each
    slot 32 bytes longer to carry the next hop's alpha, its own version byte and labels.

    One BLAKE2b-512 of the shared secret gives ``mu || rho``; one ChaCha20 stream keyed by
    ``rho`` gives, in order, the payload key (192 bytes), the replay tag (32) and the header
    stream. A hop so makes two BLAKE2b calls (the keys, the MAC) and one keystream call before
    LIONESS, where v1 makes six and two.
    """

    profile = Profile.KEM1

    @staticmethod
    def hop_keys(s: bytes) -> bytes:
        """``mu || rho`` (64 bytes): ``BLAKE2b-512(key = s, input = "zmix-kem1 hop keys")``
        (``s`` is an X25519 output: 32 bytes, a valid key, so no checks)."""
        return crypto.blake2b_keyed(KEM1_LABEL_KEYS, 64, s)

    @staticmethod
    def stream_key(s: bytes) -> bytes:
        return KEM1.hop_keys(s)[32:]

    @staticmethod
    def header_stream(s: bytes, n: int) -> bytes:
        """``n`` bytes of header stream: ``CS(rho, 224 + n)[224:]``."""
        return crypto.chacha20_stream(KEM1.stream_key(s), KEM1_STREAM_OFFSET + n
                                      )[KEM1_STREAM_OFFSET:]

    @staticmethod
    def mac_key(s: bytes) -> bytes:
        return KEM1.hop_keys(s)[:32]

    @staticmethod
    def payload_key(s: bytes) -> bytes:
        """``CS(rho, 192)``: the first bytes of the stream, never used on the header."""
        return crypto.chacha20_stream(KEM1.stream_key(s), LIONESS_KEY_BYTES)

    @staticmethod
    def blinding(alpha: bytes, s: bytes) -> bytes:
        """kem1 blinds nothing; only here so that every profile answers the same calls."""
        raise LocalMisuse("kem1 has no blinding factor")

    @staticmethod
    def replay_tag(s: bytes) -> bytes:
        """``CS(rho, 224)[192:224]``, between the payload key and the header stream."""
        return crypto.chacha20_stream(KEM1.stream_key(s), KEM1_STREAM_OFFSET)[LIONESS_KEY_BYTES:]

    @staticmethod
    def mac(key: bytes, header_without_gamma: bytes) -> bytes:
        """``BLAKE2b-128(key = mu, input = header without gamma)`` (``mu`` is 32 bytes)."""
        return crypto.blake2b_keyed(header_without_gamma, GAMMA_BYTES, key)

    @staticmethod
    def forward_slot(next_id: bytes, delay_us: int, gamma: bytes, next_alpha: bytes) -> bytes:
        return _KEM1_SLOT.pack(CMD_FORWARD, next_id, delay_us, gamma, next_alpha)

    @staticmethod
    def final_region(params: SphinxParams, hops: int, routing: Routing,
                     random_bytes: RandomBytes) -> bytes:
        """The last hop's command (its alpha field zero) and random bytes to the end of beta."""
        slot = _KEM1_SLOT.pack(routing.command, routing.node_id, routing.delay_us,
                               routing.extra or _ZERO_ID, _ZERO_ALPHA)
        return slot + random_bytes(params.beta_length - hops * params.slot_length)

    @staticmethod
    def parse(params: SphinxParams, b: bytes) -> Routing:
        """Decode the slot at the start of ``b`` (see :func:`kem1_slot`)."""
        return Routing(*kem1_slot(b))

    # The payload is v1's, byte for byte: only the header differs.
    forward_body = staticmethod(V1.forward_body)
    open_final = staticmethod(V1.open_final)
    reply_body = staticmethod(V1.reply_body)
    open_reply = staticmethod(V1.open_reply)


def kem1_slot(b: bytes) -> tuple[int, bytes, int, bytes, bytes]:
    """Decode the kem1 slot at the start of ``b`` as ``(command, id, delay_us, extra,
    next_alpha)``, the fields of :class:`Routing` (a tuple: the hop's hot path builds no object).

    Raises InvalidPacket (bad_command) as v1's parse does, and also for a final command whose
    alpha field is not zero, or a forward command whose next alpha has small order (the next hop
    would refuse it as bad_point, so this one does not send it)."""
    command, node_id, delay_us, extra, next_alpha = _KEM1_SLOT.unpack_from(b)
    if b[KEM1_SLOT_BYTES - 3:KEM1_SLOT_BYTES] != b"\0\0\0":
        raise InvalidPacket(DropReason.BAD_COMMAND)
    if command == CMD_FORWARD:
        if crypto.has_small_order(next_alpha):
            raise InvalidPacket(DropReason.BAD_COMMAND)
        return command, node_id, delay_us, extra, next_alpha
    if command not in (CMD_DELIVER, CMD_SURB_REPLY) or next_alpha != _ZERO_ALPHA:
        raise InvalidPacket(DropReason.BAD_COMMAND)
    if command == CMD_DELIVER:
        if extra != _ZERO_ID:
            raise InvalidPacket(DropReason.BAD_COMMAND)
        extra = b""
    return command, node_id, delay_us, extra, b""


def _h(data: bytes, size: int = 32) -> bytes:
    return crypto.blake2b(data, size=size)


class SMC0:
    """sphinxmixcrypto's construction, byte for byte (shared/vectors/README.md). Tests only."""

    profile = Profile.SMC0

    @staticmethod
    def stream_key(s: bytes) -> bytes:
        return _h(b"\x22" + s)

    @staticmethod
    def header_stream(s: bytes, n: int) -> bytes:
        return crypto.chacha20_stream(SMC0.stream_key(s), n)

    @staticmethod
    def mac_key(s: bytes) -> bytes:
        return _h(b"\x33" + s, 16)

    @staticmethod
    def payload_key(s: bytes) -> bytes:
        return crypto.chacha20_stream(SMC0.stream_key(s), LIONESS_KEY_BYTES)

    @staticmethod
    def blinding(alpha: bytes, s: bytes) -> bytes:
        return crypto.clamp(_h(b"\x11" + alpha + s))

    @staticmethod
    def replay_tag(s: bytes) -> bytes:
        return _h(b"\x55" + s)

    @staticmethod
    def mac(key: bytes, header_without_gamma: bytes) -> bytes:
        # smc0 MACs beta only: the header passed in is alpha || beta.
        return crypto.blake2b(header_without_gamma[32:], size=GAMMA_BYTES, key=key)

    @staticmethod
    def forward_slot(next_id: bytes, delay_us: int, gamma: bytes,
                     next_alpha: bytes = b"") -> bytes:
        return next_id + gamma

    @staticmethod
    def final_region(params: SphinxParams, hops: int, routing: Routing,
                     random_bytes: RandomBytes) -> bytes:
        if routing.command == CMD_DELIVER:
            dest, id16 = b"\x00", bytes(ID_BYTES)
        else:
            dest, id16 = routing.node_id, routing.extra
        region = params.beta_length - (hops - 1) * params.slot_length
        pad = random_bytes(region - ID_BYTES - len(dest))
        return dest + id16 + pad

    @staticmethod
    def parse(params: SphinxParams, b: bytes) -> Routing:
        first = b[0]
        if first == 0xFF:
            return Routing(CMD_FORWARD, b[:ID_BYTES], 0, b[ID_BYTES:2 * SMC0_K])
        if first == 0x00:
            return Routing(CMD_DELIVER, b"", 0, b"")
        if first <= 127:
            dest = b[:1 + first]  # the length-prefixed client id, as the vectors carry it
            return Routing(CMD_SURB_REPLY, dest, 0, b[1 + first:1 + first + ID_BYTES])
        raise InvalidPacket(DropReason.BAD_COMMAND)

    @staticmethod
    def forward_body(params: SphinxParams, recipient: bytes, message: bytes) -> bytes:
        return _add_padding(_ZERO_TAG + bytes([len(recipient)]) + recipient + message,
                            params.payload_length)

    @staticmethod
    def open_final(params: SphinxParams, routing: Routing, body: bytes) -> tuple[bytes, bytes]:
        if not crypto.equal(body[:TAG_BYTES], _ZERO_TAG):
            raise InvalidPacket(DropReason.BAD_TAG)
        length = body[TAG_BYTES]
        dest = body[TAG_BYTES + 1:TAG_BYTES + 1 + length]
        return dest, _remove_padding(body[TAG_BYTES + 1 + length:])

    @staticmethod
    def reply_body(params: SphinxParams, message: bytes) -> bytes:
        return _add_padding(_ZERO_TAG + message, params.payload_length)

    @staticmethod
    def open_reply(params: SphinxParams, body: bytes) -> bytes:
        if not crypto.equal(body[:TAG_BYTES], _ZERO_TAG):
            raise InvalidPacket(DropReason.BAD_TAG)
        return _remove_padding(body[TAG_BYTES:])


def _add_padding(src: bytes, size: int) -> bytes:
    off = size - len(src)
    return src + bytes(off - 2) + off.to_bytes(2, "little")


def _remove_padding(data: bytes) -> bytes:
    off = int.from_bytes(data[-2:], "little")
    if not 2 <= off <= len(data):
        raise InvalidPacket(DropReason.BAD_TAG)
    return data[:len(data) - off]


ProfileImpl = type[V1] | type[KEM1] | type[SMC0]

_IMPLEMENTATIONS: dict[Profile, ProfileImpl] = {Profile.V1: V1, Profile.KEM1: KEM1,
                                                Profile.SMC0: SMC0}


def implementation(params: SphinxParams) -> ProfileImpl:
    """Return the profile object of ``params``."""
    return _IMPLEMENTATIONS[params.profile]
