"""Deterministic v1 test vectors: ``python -m zmix.sphinx.vectors > tests/vectors/zmix_v1.json``.

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
from zmix.sphinx.params import SphinxParams

SEED = bytes(range(32))


class SeededRandom:
    """A deterministic ``random_bytes``: the ChaCha20 keystream of ``seed``, in order."""

    def __init__(self, seed: bytes, size: int = 1 << 16) -> None:
        self._stream = crypto.chacha20_stream(seed, size)
        self._pos = 0

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


def generate() -> dict[str, Any]:
    """Return the v1 vectors: a 5-hop forward packet, a 3-hop one, and a SURB reply."""
    params = SphinxParams()
    rng = SeededRandom(SEED)
    nodes = _nodes(rng, 5)
    route = [Hop(bytes.fromhex(n["id"]), bytes.fromhex(n["public_key"]), 1000 * (i + 1))
             for i, n in enumerate(nodes)]
    recipient = bytes([0xAA]) * 16
    message = b"zmix v1 test vector: forward"
    forward = create_forward_packet(params, route, recipient, message, rng)
    short = create_forward_packet(params, route[:3], recipient, message, rng)
    surb, keys = create_surb(params, route[1:4], recipient, bytes([0xBB]) * 16, rng)
    first, reply = answer_surb(params, surb, b"zmix v1 test vector: reply")
    return {
        "profile": "v1", "max_hops": params.max_hops, "payload_length": params.payload_length,
        "seed": SEED.hex(), "nodes": nodes, "recipient": recipient.hex(),
        "message": message.hex(),
        "forward_5": {"route_delays_us": [h.delay_us for h in route], "hops":
                      _walk(params, nodes, route[0].node_id, forward)},
        "forward_3": {"hops": _walk(params, nodes, route[0].node_id, short)},
        "surb": {"surb": surb.to_bytes().hex(), "keys": keys.to_bytes().hex(),
                 "reply": b"zmix v1 test vector: reply".hex(),
                 "hops": _walk(params, nodes, first, reply)},
    }


if __name__ == "__main__":
    json.dump(generate(), sys.stdout, indent=1)
    sys.stdout.write("\n")
