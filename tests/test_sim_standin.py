"""The simulator's Sphinx stand-in (zmix.sim.standin): sizes, routes, delays, tags and keys as
the real construction has them, and never mistaken for a real packet either way."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import crypto
from zmix.errors import InvalidPacket, LocalMisuse
from zmix.sim import standin
from zmix.sim.standin import STANDIN
from zmix.sphinx import (
    WIRE_PROFILES,
    FinalDelivery,
    ForwardHop,
    Hop,
    Profile,
    SphinxParams,
    Surb,
    SurbKeys,
    SurbReply,
    create_forward_packet,
    process_packet_keys,
)
from zmix.sphinx.ops import SPHINX

RNG = random.Random(7)


def fast_bytes(n: int) -> bytes:
    return RNG.randbytes(n)


def route(count: int, delays: list[int] | None = None) -> tuple[list[Hop], list[bytes]]:
    privates = [crypto.random_bytes(32) for _ in range(count)]
    delays = delays or [1000 * (i + 1) for i in range(count)]
    hops = [Hop(bytes([i + 1]) * 16, crypto.x25519_base(k), d)
            for i, (k, d) in enumerate(zip(privates, delays, strict=True))]
    return hops, privates


@pytest.mark.parametrize("profile", WIRE_PROFILES)
def test_a_standin_packet_visits_each_hop_in_order_with_its_delay_and_delivers_the_message(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    hops, privates = route(5, [11, 22, 33, 44, 55])
    packet = STANDIN.create_forward_packet(params, hops, b"R" * 16, b"hello", fast_bytes)
    real = create_forward_packet(params, hops, b"R" * 16, b"hello")
    assert len(packet) == len(real) == params.packet_length
    tags = set()
    for i, key in enumerate(privates):
        epoch, result = STANDIN.process_packet_keys(params, [(9, bytes(32)), (i, key)], packet)
        assert epoch == i  # the first key is not the hop's: the second opens it
        assert result.delay_us == hops[i].delay_us
        tags.add(result.replay_tag)
        if i < 4:
            assert isinstance(result, ForwardHop)
            assert result.next_hop == hops[i + 1].node_id
            assert len(result.packet) == params.packet_length
            packet = result.packet
        else:
            assert result == FinalDelivery(b"R" * 16, 55, b"hello", result.replay_tag)
    assert len(tags) == 5


def test_a_standin_packet_opens_only_under_the_key_the_sender_used() -> None:
    params = SphinxParams()
    hops, privates = route(3)
    packet = STANDIN.create_forward_packet(params, hops, b"R" * 16, b"x", fast_bytes)
    with pytest.raises(InvalidPacket) as caught:
        STANDIN.process_packet_keys(params, [(0, privates[1])], packet)
    assert caught.value.reason.value == "bad_mac"
    assert STANDIN.process_packet_keys(params, [(0, privates[0])], packet)[0] == 0  # control


def test_real_nodes_refuse_standin_packets_and_the_standin_refuses_real_ones() -> None:
    params = SphinxParams()
    hops, privates = route(3)
    fake = STANDIN.create_forward_packet(params, hops, b"R" * 16, b"x", fast_bytes)
    real = create_forward_packet(params, hops, b"R" * 16, b"x")
    with pytest.raises(InvalidPacket):
        process_packet_keys(params, [(0, privates[0])], fake)
    with pytest.raises(InvalidPacket) as caught:
        STANDIN.process_packet_keys(params, [(0, privates[0])], real)
    assert caught.value.reason.value == "bad_version"
    assert isinstance(SPHINX.process_packet_keys(params, [(0, privates[0])], real)[1], ForwardHop)


def test_a_standin_surb_carries_a_reply_that_only_its_keys_open() -> None:
    params = SphinxParams()
    hops, privates = route(4)
    surb, keys = STANDIN.create_surb(params, hops, b"C" * 16, b"S" * 16, fast_bytes)
    assert len(surb.to_bytes()) == params.surb_length
    parsed = Surb.from_bytes(params, surb.to_bytes())  # the real parser takes it
    first, packet = STANDIN.answer_surb(params, parsed, b"ack!")
    assert first == hops[0].node_id and len(packet) == params.packet_length
    for key in privates:
        result = STANDIN.process_packet_keys(params, [(0, key)], packet)[1]
        packet = result.packet if isinstance(result, ForwardHop) else b""
    assert isinstance(result, SurbReply)
    assert (result.recipient, result.surb_id) == (b"C" * 16, b"S" * 16)
    stored = SurbKeys.from_bytes(keys.to_bytes())  # as the client store keeps them
    assert STANDIN.open_surb_reply(params, stored, result.payload) == b"ack!"
    _, other = STANDIN.create_surb(params, hops, b"C" * 16, b"T" * 16, fast_bytes)
    with pytest.raises(InvalidPacket):
        STANDIN.open_surb_reply(params, other, result.payload)


def test_the_standin_refuses_what_the_real_construction_refuses() -> None:
    params = SphinxParams(max_hops=3)
    hops, _ = route(4)
    with pytest.raises(LocalMisuse):
        STANDIN.create_forward_packet(params, hops, b"R" * 16, b"x", fast_bytes)
    with pytest.raises(LocalMisuse):
        STANDIN.create_forward_packet(params, hops[:3], b"R" * 16,
                                      bytes(params.max_message_length + 1), fast_bytes)
    assert standin.create_forward_packet(params, hops[:3], b"R" * 16,
                                         bytes(params.max_message_length), fast_bytes)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=3000), st.booleans())
def test_any_bytes_give_a_result_or_invalid_packet(data: bytes, sized: bool) -> None:
    params = SphinxParams()
    _hops, privates = route(1)
    if sized:
        data = (standin._prefix(params) + data).ljust(params.packet_length, b"\x00")[
            :params.packet_length]
    with contextlib.suppress(InvalidPacket):
        STANDIN.process_packet_keys(params, [(0, privates[0])], data)
