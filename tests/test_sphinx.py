"""The Sphinx core on both wire profiles (v1, kem1): round trips, tamper detection, SURBs,
padding, arbitrary input. kem1's own parts (its slot, vectors, properties) are in
test_sphinx_kem1.py."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import crypto
from zmix.errors import DropReason, InvalidPacket, LocalMisuse
from zmix.sphinx import (
    MAX_DELAY_US,
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
    process_packet_keys,
)
from zmix.sphinx import packet as packet_module
from zmix.sphinx.profiles import (
    CMD_DELIVER,
    CMD_FORWARD,
    CMD_SURB_REPLY,
    SMC0,
    V1,
    Routing,
    implementation,
)

KEYS = [crypto.x25519_keypair() for _ in range(8)]
# The tests about packets run on both wire profiles.
WIRE = pytest.mark.parametrize("profile", [Profile.V1, Profile.KEM1], ids=["v1", "kem1"])
# Each wire profile's version byte is the other's bad_version: 0x01 v1, 0x02 kem1.
OTHER_VERSION = {Profile.V1: b"\x02", Profile.KEM1: b"\x01"}
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
@WIRE
def test_a_forward_packet_reaches_its_recipient_over_any_route_length(
        profile: Profile, hops: int, payload: int) -> None:
    params = SphinxParams(profile=profile, max_hops=5, payload_length=payload)
    message = crypto.random_bytes(params.max_message_length)
    packet = create_forward_packet(params, route(hops, 100), RECIPIENT, message)
    assert len(packet) == params.packet_length
    forwards, final = walk(params, route(hops)[0].node_id, packet)
    assert [f.delay_us for f in forwards] == [100 + i for i in range(hops - 1)]
    assert all(len(f.packet) == params.packet_length for f in forwards)
    assert isinstance(final, FinalDelivery)
    assert final.message == message and final.recipient == RECIPIENT
    assert final.delay_us == 100 + hops - 1


@WIRE
def test_geometry_with_more_hops_works_too(profile: Profile) -> None:
    params = SphinxParams(profile=profile, max_hops=8, payload_length=1024)
    packet = create_forward_packet(params, route(8), RECIPIENT, b"eight hops")
    _, final = walk(params, route(8)[0].node_id, packet)
    assert isinstance(final, FinalDelivery) and final.message == b"eight hops"


@WIRE
def test_every_header_bit_is_covered_by_the_mac_at_the_first_hop(profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    packet = create_forward_packet(params, route(3), RECIPIENT, b"m")
    for bit in range(8, params.header_length * 8):  # every bit after the version byte
        tampered = bytearray(packet)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(InvalidPacket) as err:
            process_packet(params, private(route(3)[0].node_id), bytes(tampered))
        assert err.value.reason in (DropReason.BAD_MAC, DropReason.BAD_POINT)


@WIRE
def test_a_tampered_payload_is_caught_by_the_tag_at_the_exit(profile: Profile) -> None:
    params = SphinxParams(profile=profile)
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


@WIRE
def test_wrong_size_version_and_key_are_rejected_with_their_reasons(profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    packet = create_forward_packet(params, route(2), RECIPIENT, b"m")
    cases = [(packet[:-1], DropReason.WRONG_SIZE), (OTHER_VERSION[profile] + packet[1:],
                                                          DropReason.BAD_VERSION),
             (packet[:1] + bytes(32) + packet[33:], DropReason.BAD_POINT)]
    for data, reason in cases:
        with pytest.raises(InvalidPacket) as err:
            process_packet(params, KEYS[0][1], data)
        assert err.value.reason is reason and str(err.value) == "invalid packet"
    with pytest.raises(InvalidPacket) as err:
        process_packet(params, KEYS[5][1], packet)  # not this node's packet
    assert err.value.reason is DropReason.BAD_MAC


@WIRE
def test_the_same_packet_has_the_same_replay_tag_and_different_packets_do_not(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    a = create_forward_packet(params, route(2), RECIPIENT, b"m")
    b = create_forward_packet(params, route(2), RECIPIENT, b"m")
    tag = process_packet(params, KEYS[0][1], a).replay_tag
    assert process_packet(params, KEYS[0][1], a).replay_tag == tag
    assert process_packet(params, KEYS[0][1], b).replay_tag != tag


@WIRE
def test_a_surb_reply_travels_back_and_only_its_keys_open_it(profile: Profile) -> None:
    params = SphinxParams(profile=profile)
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


@WIRE
def test_unused_header_space_of_a_short_route_looks_random(profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    packet = create_forward_packet(params, route(1), RECIPIENT, b"m")
    result = process_packet(params, KEYS[0][1], packet)
    assert isinstance(result, FinalDelivery)
    beta = packet[33:33 + params.beta_length]
    assert beta.count(0) < len(beta) // 16  # not zero padding
    again = create_forward_packet(params, route(1), RECIPIENT, b"m")
    assert again[33:33 + params.beta_length] != beta


@WIRE
def test_misuse_is_refused_before_anything_is_built(profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    with pytest.raises(LocalMisuse):
        create_forward_packet(params, route(6) if params.max_hops < 6 else [], RECIPIENT, b"m")
    with pytest.raises(LocalMisuse):
        create_forward_packet(params, route(2), RECIPIENT, bytes(params.max_message_length + 1))
    with pytest.raises(LocalMisuse):
        create_forward_packet(params, [Hop(b"x", KEYS[0][0])], RECIPIENT, b"m")
    with pytest.raises(LocalMisuse):
        SphinxParams(profile=profile, max_hops=0)


@WIRE
def test_surbs_and_surb_keys_from_garbage_are_invalid_packets(profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    with pytest.raises(InvalidPacket):
        Surb.from_bytes(params, b"short")
    with pytest.raises(InvalidPacket):
        Surb.from_bytes(params, bytes(params.surb_length))  # version 0
    with pytest.raises(InvalidPacket):
        SurbKeys.from_bytes(b"\x05" + bytes(10))


SMALLS = {p: SphinxParams(max_hops=3, payload_length=128, profile=p)
          for p in (Profile.V1, Profile.KEM1)}


def _as_buffer(kind: str, data: bytes) -> bytes | bytearray | memoryview:
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    return memoryview(b"\xff" + data + b"\xff")[1:-1]  # a view into a larger buffer


_VALID_SMALL = {p: create_forward_packet(params, route(2), RECIPIENT, b"property")
                for p, params in SMALLS.items()}
_KINDS = st.sampled_from(["bytes", "bytearray", "memoryview", "slice"])


def _candidates(profile: Profile) -> st.SearchStrategy[bytes]:
    """Any bytes; bytes of the right length behind the profile's version byte; and the valid
    packet with one byte set to anything."""
    small, valid = SMALLS[profile], _VALID_SMALL[profile]
    return st.one_of(
        st.binary(max_size=small.packet_length + 8),
        st.binary(min_size=small.packet_length, max_size=small.packet_length),
        st.binary(min_size=small.packet_length - 1,
                  max_size=small.packet_length - 1).map(lambda b: valid[:1] + b),
        st.tuples(st.integers(0, small.packet_length - 1), st.integers(0, 255)).map(
            lambda c: valid[:c[0]] + bytes([c[1]]) + valid[c[0] + 1:]))


@WIRE
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_bytes_bytearray_or_memoryview_gives_a_result_or_invalid_packet(
        profile: Profile, data: st.DataObject) -> None:
    small, valid = SMALLS[profile], _VALID_SMALL[profile]
    raw, kind = data.draw(_candidates(profile)), data.draw(_KINDS)
    try:
        result = process_packet(small, KEYS[0][1], _as_buffer(kind, raw))
    except InvalidPacket:
        assert raw != valid
        return
    assert isinstance(result, ForwardHop | FinalDelivery | SurbReply)
    assert result == process_packet(small, KEYS[0][1], raw)


@WIRE
@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0, max_value=SMALLS[Profile.KEM1].packet_length - 1),
       flip=st.integers(1, 255))
def test_any_single_byte_change_is_rejected_somewhere_on_the_route(
        profile: Profile, position: int, flip: int) -> None:
    small = SMALLS[profile]
    packet = bytearray(create_forward_packet(small, route(3), RECIPIENT, b"payload"))
    packet[position % small.packet_length] ^= flip
    with pytest.raises(InvalidPacket):
        walk(small, route(3)[0].node_id, bytes(packet))


@WIRE
@settings(max_examples=60, deadline=None)
@given(max_hops=st.integers(1, 5), payload=st.sampled_from([64, 100, 512, 2048]),
       data=st.data())
def test_packets_and_surbs_round_trip_over_random_routes_delays_and_lengths(
        profile: Profile, max_hops: int, payload: int, data: st.DataObject) -> None:
    params = SphinxParams(max_hops=max_hops, payload_length=payload, profile=profile)
    hops = data.draw(st.integers(1, max_hops))
    order = data.draw(st.permutations(range(6)))[:hops]
    delays = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=hops, max_size=hops))
    path = [Hop(bytes([i + 1]) * 16, KEYS[i][0], d) for i, d in zip(order, delays, strict=True)]
    message = data.draw(st.binary(max_size=params.max_message_length))
    forwards, final = walk(params, path[0].node_id,
                           create_forward_packet(params, path, RECIPIENT, message))
    assert [f.next_hop for f in forwards] == [h.node_id for h in path[1:]]
    assert [f.delay_us for f in forwards] == delays[:-1]
    assert isinstance(final, FinalDelivery)
    assert (final.message, final.delay_us) == (message, delays[-1])
    surb, keys = create_surb(params, path, RECIPIENT, b"\x77" * 16)
    reply = data.draw(st.binary(max_size=params.max_reply_length))
    _, back = walk(params, *answer_surb(params, surb, reply))
    assert isinstance(back, SurbReply) and back.delay_us == delays[-1]
    assert open_surb_reply(params, keys, back.payload) == reply


# ---------------------------------------------------------------------------- API edges

# Every X25519 point of small order and its encoding with the (ignored) top bit set: the identity,
# 1, the two points of order 8, and p - 1, p, p + 1 (non-canonical). X25519 with any gives zeros.
_LOW_ORDER = [bytes.fromhex(h) for h in (
    "00" * 32, "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f", "ed" + "ff" * 30 + "7f", "ee" + "ff" * 30 + "7f")]
LOW_ORDER_POINTS = _LOW_ORDER + [p[:31] + bytes([p[31] | 0x80]) for p in _LOW_ORDER]


class CountingRandom:
    """A random_bytes that counts its calls, to show a refusal came before any work."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return crypto.random_bytes(n)


@WIRE
def test_create_surb_refuses_a_recipient_of_the_wrong_length_like_create_forward(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    for recipient in (b"", b"\xaa" * 15, b"\xaa" * 17, b"\xaa" * 32):
        rng = CountingRandom()
        with pytest.raises(LocalMisuse):
            create_surb(params, route(3), recipient, b"\x55" * 16, rng)
        with pytest.raises(LocalMisuse):
            create_forward_packet(params, route(3), recipient, b"m", rng)
        assert rng.calls == 0
    rng = CountingRandom()  # the same source is drawn from once the arguments are good
    surb, _ = create_surb(params, route(3), RECIPIENT, b"\x55" * 16, rng)
    assert rng.calls > 0
    _, final = walk(params, surb.first_hop, answer_surb(params, surb, b"r")[1])
    assert isinstance(final, SurbReply) and final.recipient == RECIPIENT


@WIRE
def test_every_argument_of_packet_and_surb_creation_is_checked_before_any_work(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    good = route(3)
    bad_routes = [
        [good[0], Hop(b"\x02" * 15, KEYS[1][0]), good[2]],  # node id too short
        [good[0], Hop(b"\x02" * 17, KEYS[1][0]), good[2]],  # node id too long
        [good[0], Hop(good[1].node_id, KEYS[1][0][:31]), good[2]],  # public key too short
        [good[0], Hop(good[1].node_id, KEYS[1][0] + b"\0"), good[2]],  # public key too long
        [good[0], Hop(good[1].node_id, KEYS[1][0], -1), good[2]],
        [good[0], Hop(good[1].node_id, KEYS[1][0], MAX_DELAY_US + 1), good[2]],
        [good[0], Hop(good[1].node_id, KEYS[1][0], 1.5), good[2]],  # type: ignore[arg-type]
        [good[0], Hop(good[1].node_id, KEYS[1][0], True), good[2]],
        [good[0], Hop(16, KEYS[1][0]), good[2]],  # type: ignore[arg-type]  # not bytes(16)
        [], route(params.max_hops + 1) if params.max_hops < 8 else [],
    ]
    for bad in bad_routes:
        rng = CountingRandom()
        with pytest.raises(LocalMisuse):
            create_forward_packet(params, bad, RECIPIENT, b"m", rng)
        with pytest.raises(LocalMisuse):
            create_surb(params, bad, RECIPIENT, b"\x55" * 16, rng)
        assert rng.calls == 0
    rng = CountingRandom()  # the same calls with the good route draw from it
    create_forward_packet(params, good, RECIPIENT, b"m", rng)
    create_surb(params, good, RECIPIENT, b"\x55" * 16, rng)
    assert rng.calls >= 2
    for surb_id in (b"", b"\x55" * 15, b"\x55" * 17, 16):
        with pytest.raises(LocalMisuse):
            create_surb(params, good, RECIPIENT, surb_id)  # type: ignore[arg-type]
    with pytest.raises(LocalMisuse):
        create_forward_packet(params, good, 16, b"m")  # type: ignore[arg-type]
    # Positive control: the extreme delays and bytes-like ids and keys are accepted and carried.
    edge = [Hop(bytearray(good[0].node_id), memoryview(KEYS[0][0]), 0),
            Hop(good[1].node_id, bytearray(KEYS[1][0]), MAX_DELAY_US)]
    packet = create_forward_packet(params, edge, bytearray(RECIPIENT), memoryview(b"m"))
    forwards, final = walk(params, good[0].node_id, packet)
    assert [f.delay_us for f in forwards] == [0] and isinstance(final, FinalDelivery)
    assert final.delay_us == MAX_DELAY_US and final.message == b"m"
    surb, _ = create_surb(params, edge, RECIPIENT, bytearray(b"\x55" * 16))
    _, reply = walk(params, surb.first_hop, answer_surb(params, surb, b"r")[1])
    assert isinstance(reply, SurbReply) and reply.delay_us == MAX_DELAY_US


@WIRE
def test_a_private_key_of_the_wrong_length_is_local_misuse_not_an_invalid_packet(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    packet = create_forward_packet(params, route(2), RECIPIENT, b"m")
    for key in (b"", KEYS[0][1][:31], KEYS[0][1] + b"\0", "k" * 32):
        with pytest.raises(LocalMisuse) as err:
            process_packet(params, key, packet)  # type: ignore[arg-type]
        assert not isinstance(err.value, InvalidPacket)
    assert isinstance(process_packet(params, KEYS[0][1], packet), ForwardHop)
    assert isinstance(process_packet(params, bytearray(KEYS[0][1]), packet), ForwardHop)


@WIRE
def test_a_packet_given_as_bytearray_or_memoryview_is_processed_as_its_bytes(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    forward = create_forward_packet(params, route(2), RECIPIENT, b"m")
    exit_packet = process_packet(params, KEYS[0][1], forward)
    assert isinstance(exit_packet, ForwardHop)
    surb, _ = create_surb(params, route(1), RECIPIENT, b"\x55" * 16)
    reply = answer_surb(params, surb, b"r")[1]
    for key, packet in ((KEYS[0][1], forward), (KEYS[1][1], exit_packet.packet),
                        (KEYS[0][1], reply)):
        expected = process_packet(params, key, packet)
        padded = bytearray(b"xyz" + packet + b"xyz")
        for view in (bytearray(packet), memoryview(packet), memoryview(padded)[3:-3]):
            assert process_packet(params, key, view) == expected
    for data in ("x" * params.packet_length, params.packet_length, None):
        with pytest.raises(LocalMisuse):
            process_packet(params, KEYS[0][1], data)  # type: ignore[arg-type]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
@WIRE
def test_a_hop_public_key_of_small_order_is_refused_as_local_misuse(
        profile: Profile, point: bytes) -> None:
    params = SphinxParams(profile=profile)
    for position in range(3):
        bad = route(3)
        bad[position] = Hop(bad[position].node_id, point)
        rng = CountingRandom()
        with pytest.raises(LocalMisuse, match="small order"):
            create_forward_packet(params, bad, RECIPIENT, b"m", rng)
        with pytest.raises(LocalMisuse, match="small order"):
            create_surb(params, bad, RECIPIENT, b"\x55" * 16, rng)
        assert rng.calls == 0
    rng = CountingRandom()
    assert len(create_forward_packet(params, route(3), RECIPIENT, b"m", rng)) == (
        params.packet_length)
    assert rng.calls > 0


def test_the_small_order_list_is_exactly_the_points_x25519_refuses() -> None:
    for point in LOW_ORDER_POINTS:
        assert crypto.has_small_order(point)
        with pytest.raises(crypto.LowOrderPoint):
            crypto.x25519(KEYS[0][1], point)
    for _ in range(200):  # and no ordinary key is on it
        point = crypto.random_bytes(32)
        assert not crypto.has_small_order(point)
        assert crypto.x25519(KEYS[0][1], point) != bytes(32)


@WIRE
def test_a_small_order_key_missing_from_the_list_is_still_local_misuse(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "has_small_order", lambda point: False)
    bad = [*route(2), Hop(b"\x03" * 16, bytes(32))]
    with pytest.raises(LocalMisuse, match="small order"):
        create_forward_packet(SphinxParams(profile=profile), bad, RECIPIENT, b"m")


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
@WIRE
def test_a_packet_whose_alpha_has_small_order_is_an_invalid_packet(
        profile: Profile, point: bytes) -> None:
    params = SphinxParams(profile=profile)
    packet = create_forward_packet(params, route(2), RECIPIENT, b"m")
    assert isinstance(process_packet(params, KEYS[0][1], packet), ForwardHop)
    with pytest.raises(InvalidPacket) as err:
        process_packet(params, KEYS[0][1], packet[:1] + point + packet[33:])
    assert err.value.reason is DropReason.BAD_POINT


# ---------------------------------------------------------------------------- the exit's checks


def crafted(params: SphinxParams, hops: int, final: Routing, body: bytes) -> bytes:
    """A packet built by the real construction with a final slot and a body of our choosing."""
    checked = packet_module._check_route(params, route(hops))
    header, secrets = packet_module._header(params, checked, final, crypto.random_bytes)
    return header + packet_module._encrypt_payload(implementation(params), secrets, body)


def body(params: SphinxParams, message: bytes, length: int | None = None,
         padding: bytes | None = None) -> bytes:
    """``zero tag || u32 length || message || padding``, the padding zeros unless given."""
    head = bytes(16) + (len(message) if length is None else length).to_bytes(4, "big") + message
    return head + (padding if padding is not None else bytes(params.payload_length - len(head)))


@WIRE
def test_a_deliver_command_whose_16_byte_zero_field_is_not_zero_is_refused(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    good = crafted(params, 2, Routing(CMD_DELIVER, RECIPIENT, 7, b""), body(params, b"m"))
    _, final = walk(params, route(2)[0].node_id, good)
    assert isinstance(final, FinalDelivery) and final.message == b"m" and final.delay_us == 7
    for field in (b"\x01" + bytes(15), bytes(15) + b"\x80", b"\xff" * 16):
        bad = crafted(params, 2, Routing(CMD_DELIVER, RECIPIENT, 7, field), body(params, b"m"))
        with pytest.raises(InvalidPacket) as err:
            walk(params, route(2)[0].node_id, bad)
        assert err.value.reason is DropReason.BAD_COMMAND


@WIRE
def test_the_exit_refuses_a_body_with_a_bad_length_or_a_non_zero_byte_after_the_message(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile, payload_length=512)
    room = params.max_message_length  # P - 20
    full = bytes(range(256)) * 2
    for message in (b"", b"m", full[:room]):  # positive controls, up to the longest message
        _, final = walk(params, route(1)[0].node_id,
                        crafted(params, 1, Routing(CMD_DELIVER, RECIPIENT, 0, b""),
                                body(params, message)))
        assert isinstance(final, FinalDelivery) and final.message == message
    pad = params.payload_length - 21
    bad_bodies = [
        body(params, b"m", padding=b"\x01" + bytes(pad - 1)),  # right after the message
        body(params, b"m", padding=bytes(pad - 1) + b"\x01"),  # the last byte
        body(params, b"m", length=room + 1),  # longer than a payload can hold
        body(params, b"m", length=2**32 - 1),
        b"\x01" + body(params, b"m")[1:],  # the tag
    ]
    for bad in bad_bodies:
        assert len(bad) == params.payload_length
        packet = crafted(params, 1, Routing(CMD_DELIVER, RECIPIENT, 0, b""), bad)
        with pytest.raises(InvalidPacket) as err:
            process_packet(params, KEYS[0][1], packet)
        assert err.value.reason is DropReason.BAD_TAG


@WIRE
def test_a_surb_reply_with_a_non_zero_byte_after_the_message_does_not_open(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile, payload_length=512)
    surb, keys = create_surb(params, route(2), RECIPIENT, b"\x55" * 16)
    pi = implementation(params).payload_key(surb.ktilde)
    for reply_body, expected in ((body(params, b"r"), b"r"),
                                 (body(params, b"r", padding=bytes(490) + b"\x01"), None)):
        packet = surb.header + lioness.encrypt(pi, reply_body)
        _, final = walk(params, surb.first_hop, packet)
        assert isinstance(final, SurbReply)
        if expected is not None:
            assert open_surb_reply(params, keys, final.payload) == expected
            continue
        with pytest.raises(InvalidPacket) as err:
            open_surb_reply(params, keys, final.payload)
        assert err.value.reason is DropReason.BAD_TAG


@pytest.mark.parametrize(("max_hops", "payload_length"),
                         [(1, 64), (32, 64), (1, 1 << 20), (5, 2048)])
@WIRE
def test_geometry_at_the_edges_of_the_allowed_ranges_carries_packets(
        profile: Profile, max_hops: int, payload_length: int) -> None:
    params = SphinxParams(profile=profile, max_hops=max_hops, payload_length=payload_length)
    assert params.max_message_length == payload_length - 20
    keys = [crypto.x25519_keypair() for _ in range(max_hops)]
    hops = [Hop(i.to_bytes(16, "big"), pk, i) for i, (pk, _) in enumerate(keys)]
    by_id = {h.node_id: sk for h, (_, sk) in zip(hops, keys, strict=True)}
    message = crypto.random_bytes(params.max_message_length)
    packet, hop = create_forward_packet(params, hops, RECIPIENT, message), hops[0].node_id
    while isinstance(result := process_packet(params, by_id[hop], packet), ForwardHop):
        assert len(result.packet) == params.packet_length
        hop, packet = result.next_hop, result.packet
    assert isinstance(result, FinalDelivery) and result.message == message


def test_geometry_outside_the_allowed_ranges_is_refused() -> None:
    for kwargs in ({"max_hops": 0}, {"max_hops": 33}, {"max_hops": -1}, {"max_hops": 5.0},
                   {"max_hops": True}, {"payload_length": 63}, {"payload_length": (1 << 20) + 1},
                   {"payload_length": 2048.0}, {"profile": "v1"}):
        with pytest.raises(LocalMisuse):
            SphinxParams(**kwargs)  # type: ignore[arg-type]
    assert SphinxParams(max_hops=32).max_hops == 32  # positive control


@WIRE
def test_every_sphinx_failure_is_one_opaque_invalid_packet_with_the_reason_aside(
        profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    packet = create_forward_packet(params, route(1), RECIPIENT, b"m")
    failures = {
        DropReason.WRONG_SIZE: packet[:-1],
        DropReason.BAD_VERSION: OTHER_VERSION[profile] + packet[1:],
        DropReason.BAD_POINT: packet[:1] + bytes(32) + packet[33:],
        DropReason.BAD_MAC: packet[:40] + bytes([packet[40] ^ 1]) + packet[41:],
        DropReason.BAD_COMMAND: crafted(params, 1, Routing(CMD_DELIVER, RECIPIENT, 0, b"\1" * 16),
                                        body(params, b"m")),
        DropReason.BAD_TAG: packet[:-1] + bytes([packet[-1] ^ 1]),
    }
    texts = set()
    for reason, data in failures.items():
        with pytest.raises(InvalidPacket) as err:
            process_packet(params, KEYS[0][1], data)
        assert type(err.value) is InvalidPacket and err.value.reason is reason
        assert err.value.args == ("invalid packet",) and err.value.__cause__ is None
        texts.add((str(err.value), repr(err.value)))
    assert texts == {("invalid packet", "InvalidPacket('invalid packet')")}


# ---------------------------------------------------------------------------- the cost line


@WIRE
def test_a_hop_costs_what_docs_sphinx_md_says(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    params = SphinxParams(profile=profile)
    packet = create_forward_packet(params, route(2), RECIPIENT, b"m")
    calls = _count_crypto(monkeypatch)
    forward = process_packet(params, KEYS[0][1], packet)
    assert isinstance(forward, ForwardHop)
    assert calls == HOP_COST[profile]
    calls.clear()
    assert isinstance(process_packet(params, KEYS[1][1], forward.packet), FinalDelivery)
    assert calls == EXIT_COST[profile]


# What docs/sphinx.md ("Cost") says a hop costs, in calls of each primitive.
HOP_COST = {
    # v1: 2 X25519; 6 small BLAKE2b and 2 keystreams (240-byte header stream, 192-byte payload
    # key); LIONESS adds 2 BLAKE2b and 2 ChaCha20 over the payload.
    Profile.V1: {"x25519": 2, "blake2b": 6 + 2, "chacha20_stream": 2, "chacha20_xor": 2},
    # kem1: 1 X25519; 2 BLAKE2b (mu || rho, the MAC) and one ChaCha20 over 00*224 || beta || 00*72
    # (payload key, replay tag, decrypted routing information); LIONESS as above.
    Profile.KEM1: {"x25519": 1, "blake2b": 2 + 2, "chacha20_xor": 1 + 2},
}
EXIT_COST = {
    # v1's exit blinds nothing: one X25519 and one BLAKE2b fewer.
    Profile.V1: {"x25519": 1, "blake2b": 5 + 2, "chacha20_stream": 2, "chacha20_xor": 2},
    # kem1's exit costs what its forward hop does.
    Profile.KEM1: HOP_COST[Profile.KEM1],
}


def _count_crypto(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the calls of the primitives a hop costs, from now on, in the returned dict."""
    calls: dict[str, int] = {}
    for name in ("x25519", "blake2b", "blake2b_keyed", "chacha20_stream", "chacha20_xor"):
        def counted(*args: object, _name: str = name.removesuffix("_keyed"),
                    _real: object = getattr(crypto, name), **kwargs: object) -> object:
            calls[_name] = calls.get(_name, 0) + 1  # unchecked or not, a BLAKE2b
            return _real(*args, **kwargs)  # type: ignore[operator]
        monkeypatch.setattr(crypto, name, counted)
    return calls


# ---------------------------------------------------------------------------- keys per epoch

EPOCH_KEYS = [(41, crypto.x25519_keypair()), (40, crypto.x25519_keypair()),
              (42, crypto.x25519_keypair())]  # (epoch, (public, private)), in trial order


def epoch_packet(params: SphinxParams, public_key: bytes) -> bytes:
    """A two-hop packet whose first hop is a node with ``public_key``."""
    return create_forward_packet(params, [Hop(b"\x01" * 16, public_key), route(2)[1]],
                                 RECIPIENT, b"m")


@pytest.mark.parametrize("position", [0, 1, 2])
@WIRE
def test_the_key_that_opens_a_packet_is_found_at_any_position_and_its_epoch_returned(
        profile: Profile, position: int) -> None:
    params = SphinxParams(profile=profile)
    epoch, (public, private_key) = EPOCH_KEYS[position]
    packet = epoch_packet(params, public)
    keys = [(e, k) for e, (_, k) in EPOCH_KEYS]
    found, result = process_packet_keys(params, keys, packet)
    assert found == epoch
    assert result == process_packet(params, private_key, packet)
    assert isinstance(result, ForwardHop) and result.next_hop == route(2)[1].node_id


@WIRE
def test_a_packet_for_a_key_the_node_does_not_hold_is_a_bad_mac_after_trying_every_key(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    params = SphinxParams(profile=profile)
    keys = [(e, k) for e, (_, k) in EPOCH_KEYS]
    stranger = epoch_packet(params, crypto.x25519_keypair()[0])
    calls = _count_crypto(monkeypatch)
    with pytest.raises(InvalidPacket) as err:
        process_packet_keys(params, keys, stranger)
    assert type(err.value) is InvalidPacket and err.value.reason is DropReason.BAD_MAC
    assert err.value.args == ("invalid packet",) and err.value.__cause__ is None
    # Each miss costs one X25519, the MAC key and the MAC: no keystream, no replay tag.
    assert calls == {"x25519": 3, "blake2b": 3 * 2}
    # Positive control: the same keys open a packet made for the last of them.
    assert process_packet_keys(params, keys, epoch_packet(params, EPOCH_KEYS[2][1][0]))[0] == 42


@WIRE
def test_a_miss_costs_one_x25519_and_two_blake2b_on_top_of_the_hop(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    params = SphinxParams(profile=profile)
    keys = [(e, k) for e, (_, k) in EPOCH_KEYS]
    packets = [epoch_packet(params, public) for _, (public, _) in EPOCH_KEYS]
    calls = _count_crypto(monkeypatch)
    process_packet_keys(params, keys, packets[0])
    hit = dict(calls)
    assert hit == HOP_COST[profile]
    for misses, packet in ((1, packets[1]), (2, packets[2])):
        calls.clear()
        process_packet_keys(params, keys, packet)
        assert calls == {**hit, "x25519": hit["x25519"] + misses,
                         "blake2b": hit["blake2b"] + 2 * misses}


@pytest.mark.parametrize("reason", [DropReason.WRONG_SIZE, DropReason.BAD_VERSION,
                                    DropReason.BAD_POINT])
@WIRE
def test_a_failure_that_does_not_depend_on_the_key_stops_before_the_next_key(
        profile: Profile, reason: DropReason, monkeypatch: pytest.MonkeyPatch) -> None:
    params = SphinxParams(profile=profile)
    keys = [(e, k) for e, (_, k) in EPOCH_KEYS]
    packet = epoch_packet(params, EPOCH_KEYS[2][1][0])
    bad = {DropReason.WRONG_SIZE: packet[:-1],
           DropReason.BAD_VERSION: OTHER_VERSION[profile] + packet[1:],
           DropReason.BAD_POINT: packet[:1] + bytes(32) + packet[33:]}[reason]
    calls = _count_crypto(monkeypatch)
    with pytest.raises(InvalidPacket) as err:
        process_packet_keys(params, keys, bad)
    assert err.value.reason is reason
    assert calls.get("x25519", 0) == (1 if reason is DropReason.BAD_POINT else 0)
    assert "blake2b" not in calls
    assert process_packet_keys(params, keys, packet)[0] == 42  # the control


@WIRE
def test_no_keys_or_a_malformed_key_is_local_misuse(profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    packet = epoch_packet(params, EPOCH_KEYS[0][1][0])
    for keys in ([], (), [(41, EPOCH_KEYS[0][1][1]), (40, b"short")]):
        with pytest.raises(LocalMisuse) as err:
            process_packet_keys(params, keys, packet)
        assert not isinstance(err.value, InvalidPacket)
    assert process_packet_keys(params, [(41, memoryview(EPOCH_KEYS[0][1][1]))], packet)[0] == 41


@WIRE
def test_a_bytearray_key_is_used_in_place_so_zeroing_it_retires_it(profile: Profile) -> None:
    params = SphinxParams(profile=profile)
    public, private_key = EPOCH_KEYS[0][1]
    packet = epoch_packet(params, public)
    key = bytearray(private_key)
    assert process_packet_keys(params, [(41, key)], packet)[0] == 41
    key[:] = bytes(len(key))
    with pytest.raises(InvalidPacket) as err:
        process_packet_keys(params, [(41, key)], packet)
    assert err.value.reason is DropReason.BAD_MAC


def test_lioness_refuses_a_key_or_block_of_the_wrong_size_as_our_own_misuse() -> None:
    key, block = bytes(range(192)), bytes(33)  # the shortest block: one byte past L
    assert lioness.decrypt(key, lioness.encrypt(key, block)) == block
    for bad_key, bad_block in ((key[:-1], block), (key + b"k", block), (key, block[:-1])):
        with pytest.raises(LocalMisuse):
            lioness.encrypt(bad_key, bad_block)
        with pytest.raises(LocalMisuse):
            lioness.decrypt(bad_key, bad_block)


def test_a_v1_routing_slot_with_an_unknown_command_or_reserved_bytes_set_is_a_bad_command() -> None:
    params = SphinxParams()
    slot = V1.forward_slot(b"n" * 16, 1234, b"g" * 16)
    assert V1.parse(params, slot) == Routing(CMD_FORWARD, b"n" * 16, 1234, b"g" * 16)
    for bad in (b"\x7f" + slot[1:], slot[:-1] + b"\x01"):
        with pytest.raises(InvalidPacket) as err:
            V1.parse(params, bad)
        assert err.value.reason is DropReason.BAD_COMMAND


def test_the_smc0_routing_byte_and_payload_checks() -> None:
    params = SphinxParams(max_hops=5, payload_length=1024, profile=Profile.SMC0)
    tail = bytes(range(64))
    assert SMC0.parse(params, b"\xff" + tail).command == CMD_FORWARD
    assert SMC0.parse(params, b"\x00" + tail).command == CMD_DELIVER
    assert SMC0.parse(params, b"\x05" + tail).command == CMD_SURB_REPLY
    for first in (0x80, 0xFE):  # neither forward, deliver nor a length-prefixed client id
        with pytest.raises(InvalidPacket):
            SMC0.parse(params, bytes([first]) + tail)
    deliver = Routing(CMD_DELIVER, b"", 0, b"")
    body = SMC0.forward_body(params, b"bob", b"hello")
    assert SMC0.open_final(params, deliver, body) == (b"bob", b"hello")
    reply = SMC0.reply_body(params, b"answer")
    assert SMC0.open_reply(params, reply) == b"answer"
    tampered_tag = [b"\x01" + body[1:], b"\x01" + reply[1:]]
    bad_padding = [body[:-2] + b"\x01\x00", reply[:-2] + (len(reply) + 1).to_bytes(2, "little")]
    for (final, answer), reason in ((tampered_tag, DropReason.BAD_TAG),
                                    (bad_padding, DropReason.BAD_TAG)):
        with pytest.raises(InvalidPacket) as err:
            SMC0.open_final(params, deliver, final)
        assert err.value.reason is reason
        with pytest.raises(InvalidPacket) as err:
            SMC0.open_reply(params, answer)
        assert err.value.reason is reason
