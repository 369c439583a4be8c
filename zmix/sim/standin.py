"""The simulator's stand-in for Sphinx: the same sizes, routes, delays and replay tags, no crypto.

A simulation of a thousand clients makes millions of packets; real Sphinx costs a few hundred
microseconds to make one and about fifty to a hundred to strip a layer, which would make a run
of minutes take hours. :data:`STANDIN` implements the five operations of
:class:`zmix.sphinx.ops.SphinxOps` with plain byte layouts instead, so zmix's own client, node and
provider cores run unchanged. What it keeps exact, and what a test checks for each:

- every packet is ``params.packet_length`` bytes, every SURB ``params.surb_length`` and every
  reply the same, so every byte count of a simulation is the real network's;
- a packet visits the hops of its route in order, each hop holds it for the delay the sender drew
  for it, and the last hop delivers the message or SURB reply the sender put in;
- each hop sees a replay tag of its own (16 bytes the sender drew), so the nodes' replay filters
  work as on the wire: a packet sent twice is dropped as a replay;
- a hop opens a packet only with the private key whose public key the sender used (a 4-byte
  fingerprint of it travels), so key epochs are tried in order as a worker tries them;
- a SURB reply opens only with the keys its creator kept.

What it does not keep: confidentiality and integrity. Anyone can read and change a stand-in
packet; nothing on the wire may ever carry one. The first byte is the profile's version byte (so
``Surb.from_bytes`` parses a stand-in SURB) and the next four are ``ZSIM``, which a real node
refuses (its MAC fails), and a stand-in refuses anything else.

Layout of the header (``params.header_length`` bytes, zero-padded; ``r`` hops left)::

    version (1) || "ZSIM" (4) || r (1) || command (1) || recipient (16) || surb id (16)
    || r times: node id (16) || delay_us (4, big-endian) || key fingerprint (4) || tag (16)

The first hop record is the hop reading the packet; it strips it. 39 + 40 r bytes fit in every
profile's header (v1's is 49 + 40 r). The payload (``params.payload_length`` bytes) is a
forward message as ``length (4) || message || zeros``, or a SURB reply as
``ktilde[:16] || length (4) || message || zeros``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from zmix import crypto
from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.sphinx.ops import RandomBytes, Result, SphinxOps
from zmix.sphinx.packet import FinalDelivery, ForwardHop, Hop, Surb, SurbKeys, SurbReply
from zmix.sphinx.params import ID_BYTES, KEY_BYTES, TAG_BYTES, Profile, SphinxParams
from zmix.sphinx.profiles import CMD_DELIVER, CMD_SURB_REPLY, KEM1_VERSION, V1_VERSION

MAGIC = b"ZSIM"
_VERSION = {Profile.V1: V1_VERSION, Profile.KEM1: KEM1_VERSION, Profile.SMC0: 0}
_HEAD = 1 + len(MAGIC) + 1 + 1 + 2 * ID_BYTES  # 39 bytes before the hop records
_RECORD = ID_BYTES + 4 + 4 + TAG_BYTES  # 40 bytes a hop
_FP = 4  # bytes of a public key's fingerprint


def fingerprint(public_key: bytes) -> bytes:
    """Return the 4 bytes of a hop's public key that a stand-in packet carries for that hop."""
    return bytes(public_key[:_FP])


@functools.lru_cache(maxsize=4096)
def _private_fingerprint(private_key: bytes) -> bytes:
    """The fingerprint of the public key of ``private_key`` (one X25519 per key, cached: a node
    holds a handful of keys for the whole simulation)."""
    return fingerprint(crypto.x25519_base(private_key))


_PREFIXES = {profile: bytes([version]) + MAGIC for profile, version in _VERSION.items()}


def _prefix(params: SphinxParams) -> bytes:
    return _PREFIXES[params.profile]


def _route(params: SphinxParams, route: Sequence[Hop]) -> None:
    if not 1 <= len(route) <= params.max_hops:
        raise LocalMisuse(f"a route has 1..{params.max_hops} hops, got {len(route)}")


def _header(params: SphinxParams, route: Sequence[Hop], command: int, recipient: bytes,
            surb_id: bytes, random_bytes: RandomBytes) -> bytes:
    if len(recipient) != ID_BYTES or len(surb_id) != ID_BYTES:
        raise LocalMisuse(f"recipient and SURB ids are {ID_BYTES} bytes")
    _route(params, route)
    records = b"".join(hop.node_id + hop.delay_us.to_bytes(4, "big") + fingerprint(hop.public_key)
                       + random_bytes(TAG_BYTES) for hop in route)
    head = _prefix(params) + bytes([len(route), command]) + recipient + surb_id + records
    return head.ljust(params.header_length, b"\x00")


def _body(params: SphinxParams, message: bytes, limit: int, lead: bytes = b"") -> bytes:
    message = bytes(message)
    if len(message) > limit:
        raise LocalMisuse(f"a message holds at most {limit} bytes, got {len(message)}")
    return (lead + len(message).to_bytes(4, "big") + message).ljust(params.payload_length,
                                                                    b"\x00")


def _message(payload: bytes, start: int) -> bytes:
    length = int.from_bytes(payload[start:start + 4], "big")
    if start + 4 + length > len(payload):
        raise InvalidPacket(DropReason.BAD_TAG)
    return payload[start + 4:start + 4 + length]


def create_forward_packet(params: SphinxParams, route: Sequence[Hop], recipient: bytes,
                          message: bytes, random_bytes: RandomBytes = crypto.random_bytes
                          ) -> bytes:
    """Return a stand-in packet that ``route[-1]`` delivers to ``recipient``; LocalMisuse as
    :func:`zmix.sphinx.create_forward_packet` for a message, route or id that does not fit."""
    body = _body(params, message, params.max_message_length)
    return _header(params, route, CMD_DELIVER, bytes(recipient), bytes(ID_BYTES),
                   random_bytes) + body


def create_surb(params: SphinxParams, route: Sequence[Hop], recipient: bytes, surb_id: bytes,
                random_bytes: RandomBytes = crypto.random_bytes) -> tuple[Surb, SurbKeys]:
    """Return a stand-in SURB to ``recipient`` tagged ``surb_id``, and the keys that open its
    reply (``ktilde`` drawn from ``random_bytes``; the hops' secrets are zeros)."""
    header = _header(params, route, CMD_SURB_REPLY, bytes(recipient), bytes(surb_id),
                     random_bytes)
    ktilde = random_bytes(KEY_BYTES)
    keys = SurbKeys(ktilde, tuple(bytes(KEY_BYTES) for _ in route))
    return Surb(route[0].node_id, header, ktilde), keys


def answer_surb(params: SphinxParams, surb: Surb, message: bytes) -> tuple[bytes, bytes]:
    """Return ``(first hop, packet)`` carrying ``message`` back through a stand-in SURB;
    LocalMisuse if it is longer than ``params.max_reply_length``."""
    body = _body(params, message, params.max_reply_length, surb.ktilde[:TAG_BYTES])
    return surb.first_hop, surb.header + body


def open_surb_reply(params: SphinxParams, keys: SurbKeys, payload: bytes) -> bytes:
    """Return the reply in a stand-in SurbReply payload; InvalidPacket if the payload has the
    wrong size or was made for another SURB (its first 16 bytes are not this one's ktilde's)."""
    payload = bytes(payload)
    if len(payload) != params.payload_length:
        raise InvalidPacket(DropReason.WRONG_SIZE)
    if payload[:TAG_BYTES] != keys.ktilde[:TAG_BYTES]:
        raise InvalidPacket(DropReason.BAD_TAG)
    return _message(payload, TAG_BYTES)


def _opening_epoch(keys: Sequence[tuple[int, bytes | bytearray]], fp: bytes) -> int:
    """The epoch of the first key of ``keys`` whose public key has the fingerprint ``fp``;
    InvalidPacket (bad_mac, as a real hop under no matching key) if none has."""
    for epoch, key in keys:
        if _private_fingerprint(key if type(key) is bytes else bytes(key)) == fp:
            return epoch
    raise InvalidPacket(DropReason.BAD_MAC)


def process_packet_keys(params: SphinxParams, keys: Sequence[tuple[int, bytes | bytearray]],
                        packet: bytes) -> tuple[int, Result]:
    """Strip the first hop record of a stand-in packet with the first of ``keys`` whose public
    key the sender used; return ``(that key's epoch, result)``.

    Raises InvalidPacket (wrong size, not a stand-in packet of this profile, no matching key:
    ``bad_mac`` as a real hop would, or a malformed record) and LocalMisuse for no keys.
    """
    if not keys:
        raise LocalMisuse("process_packet_keys needs at least one private key to try")
    if type(packet) is not bytes:
        packet = bytes(packet)
    if len(packet) != params.packet_length:
        raise InvalidPacket(DropReason.WRONG_SIZE)
    if packet[:5] != _PREFIXES[params.profile]:
        raise InvalidPacket(DropReason.BAD_VERSION)
    left, command = packet[5], packet[6]
    if not 1 <= left <= params.max_hops or command not in (CMD_DELIVER, CMD_SURB_REPLY):
        raise InvalidPacket(DropReason.BAD_COMMAND)
    record = packet[_HEAD:_HEAD + _RECORD]
    fp = record[ID_BYTES + 4:ID_BYTES + 8]
    epoch = _opening_epoch(keys, fp)
    delay_us = int.from_bytes(record[ID_BYTES:ID_BYTES + 4], "big")
    tag = record[ID_BYTES + 8:]
    payload = packet[params.header_length:]
    if left > 1:
        rest = packet[_HEAD + _RECORD:_HEAD + left * _RECORD]
        header = (packet[:5] + bytes([left - 1]) + packet[6:_HEAD] + rest).ljust(
            params.header_length, b"\x00")
        return epoch, ForwardHop(rest[:ID_BYTES], delay_us, header + payload, tag)
    recipient, surb_id = packet[7:7 + ID_BYTES], packet[7 + ID_BYTES:_HEAD]
    if command == CMD_SURB_REPLY:
        return epoch, SurbReply(recipient, surb_id, delay_us, payload, tag)
    return epoch, FinalDelivery(recipient, delay_us, _message(payload, 0), tag)


def final_routing(params: SphinxParams, packet: bytes) -> tuple[int, bytes]:
    """Return the final command (``CMD_DELIVER`` or ``CMD_SURB_REPLY``) and the recipient id of a
    stand-in packet: what the simulation reads to know what kind of packet a core made (ground
    truth for the analysis; a real packet hides both). Raises InvalidPacket if ``packet`` is not
    a stand-in packet of ``params``."""
    if len(packet) != params.packet_length or packet[:5] != _prefix(params):
        raise InvalidPacket(DropReason.BAD_VERSION)
    return packet[6], packet[7:7 + ID_BYTES]


STANDIN = SphinxOps(create_forward_packet, create_surb, answer_surb, open_surb_reply,
                    process_packet_keys)
