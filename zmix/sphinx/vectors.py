"""Deterministic test vectors of the wire profiles:
``python -m zmix.sphinx.vectors > tests/vectors/zmix_v1.json`` and
``python -m zmix.sphinx.vectors kem1 > tests/vectors/zmix_kem1.json``.

Every random byte comes from :class:`SeededRandom`, a ChaCha20 keystream of a 32-byte seed with
the zero nonce, consumed in order (the same convention as the sphinxmixcrypto vectors), so any
implementation of docs/sphinx.md can reproduce the output byte for byte.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from zmix import crypto
from zmix.sphinx.packet import (
    ForwardHop,
    Hop,
    SurbReply,
    answer_surb,
    create_forward_packet,
    create_surb,
    process_packet,
)
from zmix.sphinx.params import WIRE_PROFILES, Profile, SphinxParams

SEED = bytes(range(32))


class SeededRandom:
    """A deterministic ``random_bytes``: the ChaCha20 keystream of ``seed``, in order."""

    def __init__(self, seed: bytes, size: int = 1 << 16) -> None:
        self._stream = crypto.chacha20_stream(seed, size)
        self._pos = 0

    @property
    def position(self) -> int:
        """How many bytes have been drawn so far."""
        return self._pos

    def __call__(self, n: int) -> bytes:
        if self._pos + n > len(self._stream):
            raise RuntimeError("SeededRandom ran out of keystream")
        out = self._stream[self._pos:self._pos + n]
        self._pos += n
        return out


def _nodes(rng: SeededRandom, count: int) -> list[dict[str, str]]:
    nodes = []
    for i in range(count):
        private = crypto.clamp(rng(32))
        nodes.append({"id": (bytes([0x10 + i]) * 16).hex(), "private_key": private.hex(),
                      "public_key": crypto.x25519_base(private).hex()})
    return nodes


def _walk(params: SphinxParams, nodes: list[dict[str, str]], first: bytes,
          packet: bytes) -> list[dict[str, Any]]:
    keys = {bytes.fromhex(n["id"]): bytes.fromhex(n["private_key"]) for n in nodes}
    hops, hop = [], first
    while True:
        result = process_packet(params, keys[hop], packet)
        entry: dict[str, Any] = {"node": hop.hex(), "packet": packet.hex(),
                                 "replay_tag": result.replay_tag.hex(),
                                 "delay_us": result.delay_us}
        hops.append(entry)
        if not isinstance(result, ForwardHop):
            entry["result"] = type(result).__name__
            if isinstance(result, SurbReply):
                entry["payload"] = result.payload.hex()
            return hops
        hop, packet = result.next_hop, result.packet


RNG_TEXT = ("every random byte is the next one of the ChaCha20 keystream (64-bit zero nonce, "
            "counter 0) of seed, 65536 bytes, consumed in order: the nodes' private keys first, "
            "then forward_5, forward_3 and surb; rng_offset is where a case starts drawing")


def _inputs(route: list[Hop], recipient: bytes, offset: int) -> dict[str, Any]:
    """What a case was built from, so another implementation can rebuild it from the JSON."""
    return {"rng_offset": offset, "route": [h.node_id.hex() for h in route],
            "route_delays_us": [h.delay_us for h in route], "recipient": recipient.hex()}



def generate(profile: Profile = Profile.V1) -> dict[str, Any]:
    """Return the vectors of ``profile`` (v1 or kem1): a 5-hop forward packet, a 3-hop one, and
    a SURB reply.

    Each case carries its inputs (route, delays, recipient, message or SURB id and reply, and
    where in the seeded stream it starts), then the packet arriving at every hop. Both profiles
    use the same seed, so their nodes are the same.
    """
    params = SphinxParams(profile=profile)
    rng = SeededRandom(SEED)
    nodes = _nodes(rng, 5)
    route = [Hop(bytes.fromhex(n["id"]), bytes.fromhex(n["public_key"]), 1000 * (i + 1))
             for i, n in enumerate(nodes)]
    recipient, surb_id = bytes([0xAA]) * 16, bytes([0xBB]) * 16
    label = profile.value.encode()
    message = b"zmix " + label + b" test vector: forward"
    reply_message = b"zmix " + label + b" test vector: reply"
    cases: dict[str, Any] = {}
    for name, hops in (("forward_5", route), ("forward_3", route[:3])):
        cases[name] = _inputs(hops, recipient, rng.position) | {"message": message.hex()}
        packet = create_forward_packet(params, hops, recipient, message, rng)
        cases[name]["hops"] = _walk(params, nodes, hops[0].node_id, packet)
    cases["surb"] = _inputs(route[1:4], recipient, rng.position) | {"surb_id": surb_id.hex()}
    surb, keys = create_surb(params, route[1:4], recipient, surb_id, rng)
    first, reply = answer_surb(params, surb, reply_message)
    cases["surb"] |= {"surb": surb.to_bytes().hex(), "keys": keys.to_bytes().hex(),
                      "reply": reply_message.hex(), "hops": _walk(params, nodes, first, reply)}
    head: dict[str, Any] = {
        "profile": profile.value, "max_hops": params.max_hops,
        "payload_length": params.payload_length, "seed": SEED.hex(), "rng": RNG_TEXT,
        "nodes": nodes,
    }
    if profile is Profile.V1:  # forward_5's, as in the first version of zmix_v1.json
        head |= {"recipient": recipient.hex(), "message": message.hex()}
    return head | cases


def main(argv: list[str]) -> int:
    """Print the vectors of the profile named in ``argv`` (v1 when none is)."""
    names = [p.value for p in WIRE_PROFILES]
    if len(argv) > 1 or (argv and argv[0] not in names):
        sys.stderr.write(f"usage: python -m zmix.sphinx.vectors [{' | '.join(names)}]\n")
        return 2
    json.dump(generate(Profile(argv[0]) if argv else Profile.V1), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
