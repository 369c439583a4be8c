"""The kem1 profile's own parts: geometry, the 72-byte slot, tamper classes with their reasons,
the per-hop keys as docs/sphinx.md writes them, unlinkability of what leaves a hop, properties.

The tests both wire profiles share (round trips, SURBs, misuse, key trial, costs) run on kem1 in
test_sphinx.py, its vectors in test_sphinx_vectors.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from test_sphinx import KEYS, RECIPIENT, route, walk

from zmix import crypto
from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.sphinx import (
    FinalDelivery,
    ForwardHop,
    Hop,
    Profile,
    SphinxParams,
    Surb,
    SurbKeys,
    SurbReply,
    answer_surb,
    create_forward_packet,
    create_surb,
    lioness,
    open_surb_reply,
    process_packet,
)
from zmix.sphinx.profiles import (
    CMD_DELIVER,
    CMD_FORWARD,
    CMD_SURB_REPLY,
    KEM1,
    V1,
    Routing,
    kem1_slot,
)

KEM1_PARAMS = SphinxParams(profile=Profile.KEM1)
SLOT = 72


def reason_at_first_hop(packet: bytes, params: SphinxParams = KEM1_PARAMS) -> DropReason:
    with pytest.raises(InvalidPacket) as err:
        process_packet(params, KEYS[0][1], packet)
    return err.value.reason


def flip(packet: bytes, position: int, mask: int = 0x01) -> bytes:
    return packet[:position] + bytes([packet[position] ^ mask]) + packet[position + 1:]


# ---------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("max_hops", [1, 3, 5, 8, 16, 32])
def test_a_kem1_header_is_a_v1_header_plus_32_bytes_a_hop(max_hops: int) -> None:
    v1 = SphinxParams(max_hops=max_hops)
    kem1 = SphinxParams(max_hops=max_hops, profile=Profile.KEM1)
    assert (kem1.slot_length, v1.slot_length) == (72, 40)
    assert kem1.beta_length == 72 * max_hops
    assert kem1.stream_length == 72 * (max_hops + 1)
    assert kem1.header_length == 1 + 32 + 72 * max_hops + 16 == v1.header_length + 32 * max_hops
    assert kem1.packet_length == kem1.header_length + kem1.payload_length
    assert kem1.max_message_length == kem1.max_reply_length == v1.max_message_length
    assert kem1.surb_length == 16 + kem1.header_length + 32


def test_the_default_kem1_geometry_is_the_one_docs_sphinx_md_tabulates() -> None:
    assert (KEM1_PARAMS.header_length, KEM1_PARAMS.packet_length, KEM1_PARAMS.surb_length) == (
        409, 2457, 457)
    v1 = SphinxParams()
    assert (v1.header_length, v1.packet_length, v1.surb_length) == (249, 2297, 297)


def test_every_kem1_packet_kind_has_one_length_at_every_hop() -> None:
    params = KEM1_PARAMS
    lengths = set()
    for hops in range(1, params.max_hops + 1):
        for message in (b"", b"m" * params.max_message_length):
            packet = create_forward_packet(params, route(hops), RECIPIENT, message)
            forwards, final = walk(params, route(hops)[0].node_id, packet)
            assert isinstance(final, FinalDelivery) and final.message == message
            lengths |= {len(packet)} | {len(f.packet) for f in forwards}
        surb, keys = create_surb(params, route(hops), RECIPIENT, b"\x55" * 16)
        assert len(surb.to_bytes()) == params.surb_length
        first, reply = answer_surb(params, surb, b"r" * params.max_reply_length)
        forwards, final = walk(params, first, reply)
        assert isinstance(final, SurbReply)
        assert open_surb_reply(params, keys, final.payload) == b"r" * params.max_reply_length
        lengths |= {len(reply)} | {len(f.packet) for f in forwards}
    assert lengths == {params.packet_length}


# ---------------------------------------------------------------------------- tamper classes


def test_each_tamper_class_is_dropped_with_its_reason() -> None:
    packet = create_forward_packet(KEM1_PARAMS, route(3), RECIPIENT, b"m")
    assert isinstance(process_packet(KEM1_PARAMS, KEYS[0][1], packet), ForwardHop)  # control
    beta, gamma = 33, 33 + KEM1_PARAMS.beta_length
    # version: v1's byte, and one neither profile uses
    for version in (0x01, 0x03, 0x00, 0xFF):
        assert reason_at_first_hop(bytes([version]) + packet[1:]) is DropReason.BAD_VERSION
    # alpha: any bit (the top bit too, which X25519 ignores but the MAC covers)
    for position, mask in ((1, 0x01), (16, 0x10), (32, 0x80)):
        assert reason_at_first_hop(flip(packet, position, mask)) is DropReason.BAD_MAC
    assert reason_at_first_hop(packet[:1] + bytes(32) + packet[33:]) is DropReason.BAD_POINT
    # beta, every field of hop 0's slot, of the later slots, and of the filler's end
    regions = {"command": 0, "next id": 1, "delay": 17, "next gamma": 21, "next alpha": 37,
               "reserved": 69, "hop 1's slot": SLOT + 5, "hop 2's slot": 2 * SLOT + 40,
               "beta's last byte": KEM1_PARAMS.beta_length - 1}
    for name, offset in regions.items():
        assert reason_at_first_hop(flip(packet, beta + offset)) is DropReason.BAD_MAC, name
    # gamma
    for offset in (0, 15):
        assert reason_at_first_hop(flip(packet, gamma + offset)) is DropReason.BAD_MAC
    # the wrong key, and the wrong size
    with pytest.raises(InvalidPacket) as err:
        process_packet(KEM1_PARAMS, KEYS[5][1], packet)
    assert err.value.reason is DropReason.BAD_MAC
    assert reason_at_first_hop(packet[:-1]) is DropReason.WRONG_SIZE
    assert reason_at_first_hop(packet + b"\0") is DropReason.WRONG_SIZE


def test_a_tampered_payload_passes_the_mixes_and_is_dropped_at_the_exit_as_bad_tag() -> None:
    packet = create_forward_packet(KEM1_PARAMS, route(3), RECIPIENT, b"m")
    for offset in (0, 31, 32, KEM1_PARAMS.payload_length - 1):
        tampered = flip(packet, KEM1_PARAMS.header_length + offset)
        forwards: list[ForwardHop] = []
        with pytest.raises(InvalidPacket) as err:
            forwards, _ = walk(KEM1_PARAMS, route(3)[0].node_id, tampered)
        assert err.value.reason is DropReason.BAD_TAG and forwards == []
        first = process_packet(KEM1_PARAMS, KEYS[0][1], tampered)
        assert isinstance(first, ForwardHop)  # the MAC covers the header only


def test_a_v1_packet_at_a_kem1_node_and_the_reverse_are_refused_by_size() -> None:
    v1 = SphinxParams()
    v1_packet = create_forward_packet(v1, route(2), RECIPIENT, b"m")
    kem1_packet = create_forward_packet(KEM1_PARAMS, route(2), RECIPIENT, b"m")
    assert reason_at_first_hop(v1_packet) is DropReason.WRONG_SIZE
    assert reason_at_first_hop(kem1_packet, v1) is DropReason.WRONG_SIZE
    # same length (a kem1 payload 32 r bytes shorter): the version byte tells them apart
    short = SphinxParams(payload_length=2048 - 160, profile=Profile.KEM1)
    assert short.packet_length == v1.packet_length
    assert reason_at_first_hop(v1_packet, short) is DropReason.BAD_VERSION
    assert reason_at_first_hop(create_forward_packet(short, route(2), RECIPIENT, b"m"),
                               v1) is DropReason.BAD_VERSION


def test_the_same_kem1_packet_has_the_same_replay_tag_at_each_hop_and_others_do_not() -> None:
    packet = create_forward_packet(KEM1_PARAMS, route(3), RECIPIENT, b"m")
    again = create_forward_packet(KEM1_PARAMS, route(3), RECIPIENT, b"m")
    forwards, final = walk(KEM1_PARAMS, route(3)[0].node_id, packet)
    repeated, final_again = walk(KEM1_PARAMS, route(3)[0].node_id, packet)
    assert [f.replay_tag for f in forwards] == [f.replay_tag for f in repeated]
    assert final == final_again
    other, _ = walk(KEM1_PARAMS, route(3)[0].node_id, again)
    tags = {f.replay_tag for f in forwards + other}
    assert len(tags) == 4 and all(len(t) == 32 for t in tags)


# ---------------------------------------------------------------------------- the slot


def _slot(command: int, node_id: bytes, delay_us: int, extra: bytes, alpha: bytes,
          reserved: bytes = b"\0\0\0") -> bytes:
    return struct.pack(">B16sI16s32s", command, node_id, delay_us, extra, alpha) + reserved


def test_the_kem1_slot_decodes_each_command_and_refuses_every_malformed_one() -> None:
    alpha = KEYS[1][0]
    good = {
        _slot(CMD_FORWARD, b"n" * 16, 1234, b"g" * 16, alpha):
            (CMD_FORWARD, b"n" * 16, 1234, b"g" * 16, alpha),
        _slot(CMD_DELIVER, b"r" * 16, 7, bytes(16), bytes(32)):
            (CMD_DELIVER, b"r" * 16, 7, b"", b""),
        _slot(CMD_SURB_REPLY, b"r" * 16, 9, b"s" * 16, bytes(32)):
            (CMD_SURB_REPLY, b"r" * 16, 9, b"s" * 16, b""),
    }
    for slot, fields in good.items():
        assert len(slot) == SLOT and kem1_slot(slot + b"tail") == fields
        assert KEM1.parse(KEM1_PARAMS, slot) == Routing(*fields)
    assert KEM1.forward_slot(b"n" * 16, 1234, b"g" * 16, alpha) == next(iter(good))
    bad = [
        _slot(0x00, b"n" * 16, 0, b"g" * 16, alpha),  # unknown commands
        _slot(0x04, b"n" * 16, 0, b"g" * 16, alpha),
        _slot(0xFF, b"n" * 16, 0, bytes(16), bytes(32)),
        _slot(CMD_FORWARD, b"n" * 16, 0, b"g" * 16, alpha, b"\0\0\1"),  # reserved bytes
        _slot(CMD_DELIVER, b"r" * 16, 0, bytes(16), bytes(32), b"\x80\0\0"),
        _slot(CMD_DELIVER, b"r" * 16, 0, b"\1" + bytes(15), bytes(32)),  # deliver's zero field
        _slot(CMD_DELIVER, b"r" * 16, 0, bytes(16), bytes(31) + b"\1"),  # a final alpha field
        _slot(CMD_SURB_REPLY, b"r" * 16, 0, b"s" * 16, alpha),
        _slot(CMD_FORWARD, b"n" * 16, 0, b"g" * 16, bytes(32)),  # a small-order next alpha
        _slot(CMD_FORWARD, b"n" * 16, 0, b"g" * 16, b"\1" + bytes(31)),
    ]
    for slot in bad:
        with pytest.raises(InvalidPacket) as err:
            kem1_slot(slot)
        assert err.value.reason is DropReason.BAD_COMMAND


def test_a_forward_slot_with_a_small_order_next_alpha_is_dropped_by_the_hop_that_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    good = create_forward_packet(KEM1_PARAMS, route(2), RECIPIENT, b"m")
    assert isinstance(process_packet(KEM1_PARAMS, KEYS[0][1], good), ForwardHop)  # control
    real = KEM1.forward_slot
    monkeypatch.setattr(KEM1, "forward_slot", staticmethod(
        lambda node, delay, gamma, alpha: real(node, delay, gamma, bytes(32))))
    bad = create_forward_packet(KEM1_PARAMS, route(2), RECIPIENT, b"m")
    assert reason_at_first_hop(bad) is DropReason.BAD_COMMAND  # its MAC held: the sender's doing


def test_a_final_slot_with_a_non_zero_alpha_field_is_a_bad_command_at_the_exit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = KEM1.final_region
    for command, extra in ((CMD_DELIVER, b""), (CMD_SURB_REPLY, b"s" * 16)):
        final = Routing(command, RECIPIENT, 0, extra)
        region = real(KEM1_PARAMS, 1, final, crypto.random_bytes)
        assert region[37:69] == bytes(32)  # control: the sender writes zeros
        monkeypatch.setattr(KEM1, "final_region", staticmethod(
            lambda params, hops, routing, rng: (lambda r: r[:37] + b"\1" * 32 + r[69:])(
                real(params, hops, routing, rng))))
        if command == CMD_DELIVER:
            packet = create_forward_packet(KEM1_PARAMS, route(1), RECIPIENT, b"m")
        else:
            packet = answer_surb(KEM1_PARAMS, create_surb(KEM1_PARAMS, route(1), RECIPIENT,
                                                          b"s" * 16)[0], b"r")[1]
        assert reason_at_first_hop(packet) is DropReason.BAD_COMMAND
        monkeypatch.setattr(KEM1, "final_region", real)


# ---------------------------------------------------------------------------- keys, as written


def _kdf(s: bytes, label: bytes, size: int) -> bytes:
    return hashlib.blake2b(label, digest_size=size, key=s).digest()


def _cs(key: bytes, n: int) -> bytes:
    return crypto.chacha20_stream(key, n)


def test_a_hop_processed_from_docs_sphinx_md_alone_gives_what_the_code_gives() -> None:
    """docs/sphinx.md, "Processing at a node (kem1)", step by step with the primitives."""
    params, r = KEM1_PARAMS, KEM1_PARAMS.max_hops
    packet = create_forward_packet(params, route(3, 500), RECIPIENT, b"doc")
    version, alpha = packet[0], packet[1:33]
    beta, gamma = packet[33:33 + 72 * r], packet[33 + 72 * r:49 + 72 * r]
    delta = packet[49 + 72 * r:]
    assert version == 0x02
    s = crypto.x25519(KEYS[0][1], alpha)
    keys = _kdf(s, b"zmix-kem1 hop keys", 64)
    mu, rho = keys[:32], keys[32:]
    assert hashlib.blake2b(packet[:33 + 72 * r], digest_size=16, key=mu).digest() == gamma
    stream = _cs(rho, 224 + 72 * (r + 1))
    pi, tag = stream[:192], stream[192:224]
    b = bytes(x ^ y for x, y in zip(beta + bytes(72), stream[224:], strict=True))
    command, next_id, delay, next_gamma, next_alpha = struct.unpack(">B16sI16s32s", b[:69])
    assert (command, next_id, delay, b[69:72]) == (0x01, b"\2" * 16, 500, bytes(3))
    expected = bytes([0x02]) + next_alpha + b[72:] + next_gamma + lioness.decrypt(pi, delta)
    result = process_packet(params, KEYS[0][1], packet)
    assert isinstance(result, ForwardHop)
    assert (result.next_hop, result.delay_us, result.replay_tag, result.packet) == (
        next_id, 500, tag, expected)
    # the profile's own functions say the same
    assert (KEM1.mac_key(s), KEM1.stream_key(s), KEM1.payload_key(s), KEM1.replay_tag(s)) == (
        mu, rho, pi, tag)
    assert KEM1.header_stream(s, 72 * (r + 1)) == stream[224:]


def _doc_rng(stream: bytes, offset: int) -> Callable[[int], bytes]:
    """docs/sphinx.md's rng: the next bytes of the seed's keystream, from ``offset``."""
    position = [offset]

    def rng(n: int) -> bytes:
        position[0] += n
        return stream[position[0] - n:position[0]]
    return rng


def _doc_header(r: int, route_: list[Hop], final_slot: bytes,
                rng: Callable[[int], bytes]) -> tuple[bytes, list[bytes]]:
    """docs/sphinx.md, "Creating a kem1 header", with the bare primitives."""
    v, c = len(route_), 72
    e = [crypto.clamp(rng(32)) for _ in route_]
    tail = final_slot + rng(c * (r - v))
    alphas = [crypto.x25519_base(x) for x in e]
    secrets = [crypto.x25519(x, hop.public_key) for x, hop in zip(e, route_, strict=True)]
    mu = [_kdf(s, b"zmix-kem1 hop keys", 64)[:32] for s in secrets]
    rho = [_kdf(s, b"zmix-kem1 hop keys", 64)[32:] for s in secrets]

    def stream(i: int, n: int) -> bytes:
        return _cs(rho[i], 224 + n)[224:]

    def xor(a: bytes, b: bytes) -> bytes:
        return bytes(x ^ y for x, y in zip(a, b, strict=True))

    def mac(i: int, data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=16, key=mu[i]).digest()

    phi = b""
    for i in range(1, v):
        phi = xor(phi + bytes(c), stream(i - 1, c * (r + 1))[c * (r + 1) - c * i:])
    beta = xor(tail, stream(v - 1, c * (r + 1))[:len(tail)]) + phi
    gamma = mac(v - 1, b"\x02" + alphas[v - 1] + beta)
    for i in range(v - 2, -1, -1):
        slot = _slot(CMD_FORWARD, route_[i + 1].node_id, route_[i].delay_us, gamma, alphas[i + 1])
        beta = xor(slot + beta[:c * (r - 1)], stream(i, c * r))
        gamma = mac(i, b"\x02" + alphas[i] + beta)
    return b"\x02" + alphas[0] + beta + gamma, secrets


def test_the_kem1_vectors_are_rebuilt_from_docs_sphinx_md_alone() -> None:
    vectors = json.loads((Path(__file__).parent / "vectors" / "zmix_kem1.json").read_text())
    r, size = vectors["max_hops"], vectors["payload_length"]
    stream = crypto.chacha20_stream(bytes.fromhex(vectors["seed"]), 65536)
    public = {n["id"]: bytes.fromhex(n["public_key"]) for n in vectors["nodes"]}
    for name in ("forward_5", "forward_3", "surb"):
        case = vectors[name]
        rng = _doc_rng(stream, case["rng_offset"])
        hops = [Hop(bytes.fromhex(i), public[i], d)
                for i, d in zip(case["route"], case["route_delays_us"], strict=True)]
        recipient = bytes.fromhex(case["recipient"])
        if name == "surb":
            final = _slot(CMD_SURB_REPLY, recipient, hops[-1].delay_us,
                          bytes.fromhex(case["surb_id"]), bytes(32))
            message = bytes.fromhex(case["reply"])
        else:
            final = _slot(CMD_DELIVER, recipient, hops[-1].delay_us, bytes(16), bytes(32))
            message = bytes.fromhex(case["message"])
        header, secrets = _doc_header(r, hops, final, rng)
        body = bytes(16) + len(message).to_bytes(4, "big") + message
        body += bytes(size - len(body))
        if name == "surb":
            ktilde = rng(32)
            assert (hops[0].node_id + header + ktilde).hex() == case["surb"]
            keys = [ktilde]
        else:
            keys = secrets[::-1]
        for key in keys:
            body = lioness.encrypt(_cs(_kdf(key, b"zmix-kem1 hop keys", 64)[32:], 192), body)
        assert (header + body).hex() == case["hops"][0]["packet"], name


def test_kem1_and_v1_share_no_key_for_the_same_shared_secret() -> None:
    s = crypto.random_bytes(32)
    kem1 = {KEM1.mac_key(s), KEM1.stream_key(s), KEM1.replay_tag(s)}
    v1 = {V1.mac_key(s), V1.stream_key(s), V1.replay_tag(s)}
    assert len(kem1) == 3 and len(v1) == 3 and not kem1 & v1
    assert KEM1.payload_key(s) != V1.payload_key(s)
    assert KEM1.header_stream(s, 64) != V1.header_stream(s, 64)
    # kem1's payload key, replay tag and header stream are disjoint parts of one stream
    whole = crypto.chacha20_stream(KEM1.stream_key(s), 224 + 64)
    assert whole == KEM1.payload_key(s) + KEM1.replay_tag(s) + KEM1.header_stream(s, 64)
    with pytest.raises(LocalMisuse, match="no blinding"):
        KEM1.blinding(bytes(32), s)


# ---------------------------------------------------------------------------- unlinkability


def test_what_leaves_a_hop_shares_no_header_bytes_with_what_came_in() -> None:
    params = KEM1_PARAMS
    packet = create_forward_packet(params, route(5), RECIPIENT, b"m")
    forwards, _ = walk(params, route(5)[0].node_id, packet)
    incoming = packet
    for forward in forwards:
        out = forward.packet
        assert out[0] == incoming[0] == 0x02  # the version byte is all they share
        header_out = out[1:params.header_length]
        windows = {header_out[i:i + 8] for i in range(len(header_out) - 7)}
        assert not any(incoming[i:i + 8] in windows for i in range(len(incoming) - 7))
        assert out[1:33] != incoming[1:33] and out[1:33] not in incoming  # a fresh alpha
        incoming = out


def test_every_hop_of_a_route_gets_a_fresh_alpha_and_no_two_packets_share_one() -> None:
    alphas = []
    for _ in range(3):
        packet = create_forward_packet(KEM1_PARAMS, route(4), RECIPIENT, b"m")
        forwards, _ = walk(KEM1_PARAMS, route(4)[0].node_id, packet)
        alphas += [packet[1:33]] + [f.packet[1:33] for f in forwards]
    assert len(set(alphas)) == len(alphas) == 12


# ---------------------------------------------------------------------------- SURBs both ways


def test_a_surb_sent_in_a_forward_packet_carries_the_answer_back() -> None:
    params = KEM1_PARAMS
    alice, bob = b"\xa1" * 16, b"\xb0" * 16
    surb, keys = create_surb(params, route(3)[::-1], alice, b"\x51" * 16)
    packet = create_forward_packet(params, route(3), bob, surb.to_bytes())
    _, delivered = walk(params, route(3)[0].node_id, packet)
    assert isinstance(delivered, FinalDelivery) and delivered.recipient == bob
    received = Surb.from_bytes(params, delivered.message)
    first, reply = answer_surb(params, received, b"the answer")
    assert first == route(3)[-1].node_id
    _, back = walk(params, first, reply)
    assert isinstance(back, SurbReply) and (back.recipient, back.surb_id) == (alice, b"\x51" * 16)
    stored = SurbKeys.from_bytes(keys.to_bytes())
    assert open_surb_reply(params, stored, back.payload) == b"the answer"
    _, other = create_surb(params, route(3)[::-1], alice, b"\x52" * 16)
    with pytest.raises(InvalidPacket) as err:
        open_surb_reply(params, other, back.payload)
    assert err.value.reason is DropReason.BAD_TAG


def test_a_kem1_surb_with_another_version_byte_is_refused() -> None:
    surb, _ = create_surb(KEM1_PARAMS, route(2), RECIPIENT, b"\x55" * 16)
    data = surb.to_bytes()
    assert Surb.from_bytes(KEM1_PARAMS, data) == surb  # control
    for version in (0x01, 0x00):
        with pytest.raises(InvalidPacket) as err:
            Surb.from_bytes(KEM1_PARAMS, data[:16] + bytes([version]) + data[17:])
        assert err.value.reason is DropReason.BAD_VERSION
    with pytest.raises(InvalidPacket) as err:
        Surb.from_bytes(SphinxParams(), data)
    assert err.value.reason is DropReason.WRONG_SIZE
