"""The v1 Sphinx core: round trips, tamper detection, SURBs, padding, arbitrary input."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import crypto
from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.sphinx import (
    FinalDelivery,
    ForwardHop,
    Hop,
    SphinxParams,
    Surb,
    SurbKeys,
    SurbReply,
    answer_surb,
    create_forward_packet,
    create_surb,
    open_surb_reply,
    process_packet,
)

KEYS = [crypto.x25519_keypair() for _ in range(8)]
RECIPIENT = b"\xaa" * 16


def route(n: int, delay_us: int = 0) -> list[Hop]:
    return [Hop(bytes([i + 1]) * 16, KEYS[i][0], delay_us + i) for i in range(n)]


def private(node_id: bytes) -> bytes:
    return KEYS[node_id[0] - 1][1]


def walk(params: SphinxParams, first: bytes, packet: bytes) -> tuple[list[ForwardHop], object]:
    hops, hop = [], first
    while True:
        result = process_packet(params, private(hop), packet)
        if not isinstance(result, ForwardHop):
            return hops, result
        hops.append(result)
        hop, packet = result.next_hop, result.packet


@pytest.mark.parametrize(("hops", "payload"), list(itertools.product([1, 2, 3, 4, 5], [512, 2048])))
def test_a_forward_packet_reaches_its_recipient_over_any_route_length(hops: int,
                                                                      payload: int) -> None:
    params = SphinxParams(max_hops=5, payload_length=payload)
    message = crypto.random_bytes(params.max_message_length)
    packet = create_forward_packet(params, route(hops, 100), RECIPIENT, message)
    assert len(packet) == params.packet_length
    forwards, final = walk(params, route(hops)[0].node_id, packet)
    assert [f.delay_us for f in forwards] == [100 + i for i in range(hops - 1)]
    assert all(len(f.packet) == params.packet_length for f in forwards)
    assert isinstance(final, FinalDelivery)
    assert final.message == message and final.recipient == RECIPIENT
    assert final.delay_us == 100 + hops - 1


def test_geometry_with_more_hops_works_too() -> None:
    params = SphinxParams(max_hops=8, payload_length=1024)
    packet = create_forward_packet(params, route(8), RECIPIENT, b"eight hops")
    _, final = walk(params, route(8)[0].node_id, packet)
    assert isinstance(final, FinalDelivery) and final.message == b"eight hops"


def test_every_header_bit_is_covered_by_the_mac_at_the_first_hop() -> None:
    params = SphinxParams()
    packet = create_forward_packet(params, route(3), RECIPIENT, b"m")
    for bit in range(8, params.header_length * 8):  # every bit after the version byte
        tampered = bytearray(packet)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(InvalidPacket) as err:
            process_packet(params, private(route(3)[0].node_id), bytes(tampered))
        assert err.value.reason in (DropReason.BAD_MAC, DropReason.BAD_POINT)


def test_a_tampered_payload_is_caught_by_the_tag_at_the_exit() -> None:
    params = SphinxParams()
    packet = create_forward_packet(params, route(3), RECIPIENT, b"m")
    for byte in (0, 31, 32, 1000, params.payload_length - 1):
        tampered = bytearray(packet)
        tampered[params.header_length + byte] ^= 0x01
        first, second = process_packet(params, KEYS[0][1], bytes(tampered)), None
        assert isinstance(first, ForwardHop)
        second = process_packet(params, KEYS[1][1], first.packet)
        assert isinstance(second, ForwardHop)
        with pytest.raises(InvalidPacket) as err:
            process_packet(params, KEYS[2][1], second.packet)
        assert err.value.reason is DropReason.BAD_TAG


def test_wrong_size_version_and_key_are_rejected_with_their_reasons() -> None:
    params = SphinxParams()
    packet = create_forward_packet(params, route(2), RECIPIENT, b"m")
    cases = [(packet[:-1], DropReason.WRONG_SIZE), (b"\x02" + packet[1:], DropReason.BAD_VERSION),
             (packet[:1] + bytes(32) + packet[33:], DropReason.BAD_POINT)]
    for data, reason in cases:
        with pytest.raises(InvalidPacket) as err:
            process_packet(params, KEYS[0][1], data)
        assert err.value.reason is reason and str(err.value) == "invalid packet"
    with pytest.raises(InvalidPacket) as err:
        process_packet(params, KEYS[5][1], packet)  # not this node's packet
    assert err.value.reason is DropReason.BAD_MAC


def test_the_same_packet_has_the_same_replay_tag_and_different_packets_do_not() -> None:
    params = SphinxParams()
    a = create_forward_packet(params, route(2), RECIPIENT, b"m")
    b = create_forward_packet(params, route(2), RECIPIENT, b"m")
    tag = process_packet(params, KEYS[0][1], a).replay_tag
    assert process_packet(params, KEYS[0][1], a).replay_tag == tag
    assert process_packet(params, KEYS[0][1], b).replay_tag != tag


def test_a_surb_reply_travels_back_and_only_its_keys_open_it() -> None:
    params = SphinxParams()
    surb, keys = create_surb(params, route(4, 7), RECIPIENT, b"\x55" * 16)
    assert len(surb.to_bytes()) == params.surb_length
    surb = Surb.from_bytes(params, surb.to_bytes())
    keys = SurbKeys.from_bytes(keys.to_bytes())
    message = crypto.random_bytes(params.max_reply_length)
    first, packet = answer_surb(params, surb, message)
    forward = create_forward_packet(params, route(4), RECIPIENT, b"x")
    assert len(packet) == len(forward) == params.packet_length
    _, final = walk(params, first, packet)
    assert isinstance(final, SurbReply)
    assert final.surb_id == b"\x55" * 16 and final.recipient == RECIPIENT and final.delay_us == 10
    assert open_surb_reply(params, keys, final.payload) == message
    _, other_keys = create_surb(params, route(4), RECIPIENT, b"\x66" * 16)
    with pytest.raises(InvalidPacket):
        open_surb_reply(params, other_keys, final.payload)
    tampered = bytes([final.payload[0] ^ 1]) + final.payload[1:]
    with pytest.raises(InvalidPacket):
        open_surb_reply(params, keys, tampered)


def test_unused_header_space_of_a_short_route_looks_random() -> None:
    params = SphinxParams()
    packet = create_forward_packet(params, route(1), RECIPIENT, b"m")
    result = process_packet(params, KEYS[0][1], packet)
    assert isinstance(result, FinalDelivery)
    beta = packet[33:33 + params.beta_length]
    assert beta.count(0) < len(beta) // 16  # not zero padding
    again = create_forward_packet(params, route(1), RECIPIENT, b"m")
    assert again[33:33 + params.beta_length] != beta


def test_misuse_is_refused_before_anything_is_built() -> None:
    params = SphinxParams()
    with pytest.raises(LocalMisuse):
        create_forward_packet(params, route(6) if params.max_hops < 6 else [], RECIPIENT, b"m")
    with pytest.raises(LocalMisuse):
        create_forward_packet(params, route(2), RECIPIENT, bytes(params.max_message_length + 1))
    with pytest.raises(LocalMisuse):
        create_forward_packet(params, [Hop(b"x", KEYS[0][0])], RECIPIENT, b"m")
    with pytest.raises(LocalMisuse):
        SphinxParams(max_hops=0)


def test_surbs_and_surb_keys_from_garbage_are_invalid_packets() -> None:
    params = SphinxParams()
    with pytest.raises(InvalidPacket):
        Surb.from_bytes(params, b"short")
    with pytest.raises(InvalidPacket):
        Surb.from_bytes(params, bytes(params.surb_length))  # version 0
    with pytest.raises(InvalidPacket):
        SurbKeys.from_bytes(b"\x05" + bytes(10))


SMALL = SphinxParams(max_hops=3, payload_length=128)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=SMALL.packet_length + 8),
                 st.binary(min_size=SMALL.packet_length, max_size=SMALL.packet_length),
                 st.binary(min_size=SMALL.packet_length - 1,
                           max_size=SMALL.packet_length - 1).map(lambda b: b"\x01" + b)))
def test_arbitrary_bytes_give_a_result_or_invalid_packet(data: bytes) -> None:
    try:
        result = process_packet(SMALL, KEYS[0][1], data)
    except InvalidPacket:
        return
    assert isinstance(result, ForwardHop | FinalDelivery | SurbReply)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=SMALL.packet_length - 1), st.integers(1, 255))
def test_any_single_byte_change_is_rejected_somewhere_on_the_route(position: int,
                                                                   flip: int) -> None:
    packet = bytearray(create_forward_packet(SMALL, route(3), RECIPIENT, b"payload"))
    packet[position] ^= flip
    with pytest.raises(InvalidPacket):
        walk(SMALL, route(3)[0].node_id, bytes(packet))
