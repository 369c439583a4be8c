"""Link frames: round trips, constant-size fetch answers, and nothing but WireError on garbage."""

from __future__ import annotations

import msgpack  # only to craft hostile control bodies; zmix itself uses msgpack in wire.py only
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from zmix import wire
from zmix.errors import DropReason, LocalMisuse, WireError
from zmix.sphinx import SphinxParams

P = SphinxParams()  # the default network geometry
SMALL = SphinxParams(max_hops=1, payload_length=64)  # small enough for exact-length garbage
SLOTS = 8
GEOMETRIES = [(P, SLOTS), (SMALL, 2), (SMALL, 0)]

u64 = st.integers(0, 2**64 - 1)
texts = st.text(max_size=60)  # at most 240 bytes of UTF-8


def frames(params: SphinxParams, slots: int) -> st.SearchStrategy[wire.Frame]:
    items = st.builds(wire.MailboxItem, u64, st.sampled_from(wire.ItemKind),
                      st.binary(min_size=16, max_size=16),
                      st.binary(max_size=wire.slot_length(params) - 29))
    packet = st.binary(min_size=params.packet_length, max_size=params.packet_length)
    return st.one_of(
        st.builds(wire.Packet, packet),
        st.just(wire.Heartbeat()),
        st.builds(wire.Relay, st.binary(min_size=16, max_size=16), packet),
        st.builds(wire.Fetch, u64),
        st.builds(wire.FetchReply, u64, st.lists(items, max_size=slots).map(tuple),
                  st.integers(0, 2**32 - 1)),
        st.builds(wire.FetchAck, u64, st.lists(u64, max_size=wire.MAX_ACK_IDS).map(tuple)),
        st.builds(wire.FetchAcked, u64, u64),
        st.builds(wire.Register, st.binary(min_size=32, max_size=32),
                  st.binary(min_size=32, max_size=32), texts),
        st.builds(wire.Registered, texts),
        st.builds(wire.Error, texts, texts),
    )


def roundtrip(frame: wire.Frame, params: SphinxParams = P, slots: int = SLOTS) -> wire.Frame:
    data = wire.encode(frame, params=params, slots=slots)
    return wire.decode(data, params=params, slots=slots)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(GEOMETRIES).flatmap(lambda g: st.tuples(st.just(g), frames(*g))))
def test_every_frame_round_trips(case: tuple[tuple[SphinxParams, int], wire.Frame]) -> None:
    (params, slots), frame = case
    assert roundtrip(frame, params, slots) == frame


def test_every_frame_type_is_covered_by_a_frame_class() -> None:
    examples: list[wire.Frame] = [
        wire.Packet(bytes(P.packet_length)), wire.Heartbeat(),
        wire.Relay(bytes(16), bytes(P.packet_length)), wire.Fetch(1),
        wire.FetchReply(1, (), 0), wire.FetchAck(1, (2,)), wire.FetchAcked(1, 1),
        wire.Register(bytes(32), bytes(32), "alice"), wire.Registered("alice"),
        wire.Error("x", "y"),
    ]
    seen = {wire.encode(f, params=P, slots=SLOTS)[1] for f in examples}
    assert seen == {int(t) for t in wire.FrameType}


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(GEOMETRIES[:2]).flatmap(
    lambda g: st.tuples(st.just(g), st.data())))
def test_a_fetch_answer_has_the_same_size_whatever_it_holds(
    case: tuple[tuple[SphinxParams, int], st.DataObject],
) -> None:
    (params, slots), data = case
    room = wire.slot_length(params) - 29
    item = st.builds(wire.MailboxItem, u64, st.sampled_from(wire.ItemKind),
                     st.binary(min_size=16, max_size=16), st.binary(max_size=room))
    sizes = set()
    for count in range(slots + 1):
        batch = data.draw(st.lists(item, min_size=count, max_size=count))
        frame = wire.FetchReply(data.draw(u64), tuple(batch), data.draw(st.integers(0, 2**32 - 1)))
        sizes.add(len(wire.encode(frame, params=params, slots=slots)))
    assert sizes == {wire.fetch_reply_length(params, slots)}


def test_the_largest_items_fit_a_fetch_slot() -> None:
    for params in (P, SMALL):
        room = wire.slot_length(params) - 29
        assert room >= max(params.max_message_length, params.max_reply_length,
                           params.payload_length)
        full = wire.MailboxItem(1, wire.ItemKind.REPLY, bytes(16), bytes(params.payload_length))
        assert roundtrip(wire.FetchReply(7, (full,), 0), params, 1) == wire.FetchReply(
            7, (full,), 0)


def test_empty_fetch_slots_are_random_not_zeros() -> None:
    a = wire.encode(wire.FetchReply(1, (), 0), params=P, slots=SLOTS)
    b = wire.encode(wire.FetchReply(1, (), 0), params=P, slots=SLOTS)
    header = 2 + 13
    assert a[:header] == b[:header]
    assert a[header:] != b[header:] and a[header:] != bytes(len(a) - header)


def hostile_frames() -> st.SearchStrategy[tuple[tuple[SphinxParams, int], bytes]]:
    """Raw bytes, framed garbage, exact-length binary bodies, fetch answers with a plausible
    header and garbage slots, and well-formed msgpack of any shape behind every frame type."""
    types = st.sampled_from([int(t) for t in wire.FrameType] + [0x00, 0x04, 0x14, 0xFF])
    versions = st.one_of(st.just(1), st.integers(0, 255))
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                        st.floats(), st.text(max_size=20), st.binary(max_size=40))
    objects = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
        max_leaves=12)
    plausible = st.one_of(st.lists(scalars, min_size=1, max_size=3),
                          st.tuples(u64, st.lists(st.one_of(u64, scalars), max_size=4)).map(list))

    def exact(n: int) -> st.SearchStrategy[bytes]:
        return st.binary(min_size=n, max_size=n)

    def fetch_reply(params: SphinxParams, slots: int) -> st.SearchStrategy[bytes]:
        size = wire.slot_length(params)
        slot = st.tuples(u64, st.integers(0, 3), exact(16), st.integers(0, size + 3),
                         exact(size - 29)).map(
            lambda t: t[0].to_bytes(8, "big") + bytes([t[1]]) + t[2] + t[3].to_bytes(4, "big")
            + t[4])
        return st.tuples(u64, st.integers(0, slots + 1), st.integers(0, 2**32 - 1),
                         st.lists(slot, min_size=slots, max_size=slots)).map(
            lambda t: b"\x01\x11" + t[0].to_bytes(8, "big") + bytes([t[1]])
            + t[2].to_bytes(4, "big") + b"".join(t[3]))

    def framed(params: SphinxParams, slots: int) -> st.SearchStrategy[bytes]:
        lengths = [0, 1, params.packet_length, 16 + params.packet_length,
                   wire.fetch_reply_length(params, slots)]
        return st.one_of(
            st.binary(max_size=300),
            st.tuples(versions, types, st.binary(max_size=80)).map(
                lambda t: bytes([t[0], t[1]]) + t[2]),
            st.tuples(versions, types, st.sampled_from(lengths).flatmap(exact)).map(
                lambda t: bytes([t[0], t[1]]) + t[2]),
            fetch_reply(params, slots),
            st.tuples(types, st.one_of(objects, plausible)).map(
                lambda t: bytes([1, t[0]]) + msgpack.packb(t[1], use_bin_type=True)),
        )

    return st.sampled_from([(SMALL, 2), (SMALL, 0)]).flatmap(
        lambda g: st.tuples(st.just(g), framed(*g)))


@settings(max_examples=1500, deadline=None)
@given(hostile_frames())
def test_arbitrary_bytes_decode_to_a_frame_or_wire_error(
    case: tuple[tuple[SphinxParams, int], bytes],
) -> None:
    (params, slots), data = case
    try:
        frame = wire.decode(data, params=params, slots=slots)
    except WireError as err:
        event(f"refused: {err.reason.value}")
        assert err.reason in (DropReason.BAD_FRAME, DropReason.BAD_VERSION, DropReason.WRONG_SIZE)
        assert str(err) == "invalid frame"
        return
    event(f"decoded: {type(frame).__name__}")
    assert roundtrip(frame, params, slots) == frame  # whatever decodes is a valid frame


@settings(max_examples=1500, deadline=None)
@given(hostile_frames())
def test_the_fast_packet_check_agrees_with_decode_on_any_bytes(
    case: tuple[tuple[SphinxParams, int], bytes],
) -> None:
    (params, slots), data = case
    try:
        frame: wire.Frame | None = wire.decode(data, params=params, slots=slots)
    except WireError:
        frame = None
    expected = frame.packet if isinstance(frame, wire.Packet) else None
    assert wire.packet_of(data, params=params) == expected
    if expected is not None:
        assert wire.encode_packet(expected, params=params) == data


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(GEOMETRIES).flatmap(lambda g: st.tuples(st.just(g), frames(*g))))
def test_every_valid_frame_fits_the_size_limit_of_its_receiver(
        case: tuple[tuple[SphinxParams, int], wire.Frame]) -> None:
    (params, slots), frame = case
    data = wire.encode(frame, params=params, slots=slots)
    to_client = isinstance(frame, (wire.FetchReply, wire.FetchAcked, wire.Registered,
                                   wire.Error))
    limit = (wire.client_frame_limit(params, slots) if to_client
             else wire.node_frame_limit(params))
    assert len(data) <= limit


def test_the_size_limits_are_those_of_the_longest_frames() -> None:
    assert wire.node_frame_limit(P) == 2 + wire.MAX_CONTROL_BODY  # 16 KiB beats a RELAY here
    big = SphinxParams(payload_length=32 * 1024)
    relay = wire.encode(wire.Relay(bytes(16), bytes(big.packet_length)), params=big, slots=1)
    assert wire.node_frame_limit(big) == len(relay)
    assert wire.client_frame_limit(P, SLOTS) == wire.fetch_reply_length(P, SLOTS)


def test_a_packet_of_the_wrong_size_is_a_wrong_size_error() -> None:
    for size in (0, P.packet_length - 1, P.packet_length + 1):
        with pytest.raises(WireError) as err:
            wire.decode(b"\x01\x01" + bytes(size), params=P, slots=SLOTS)
        assert err.value.reason is DropReason.WRONG_SIZE


def test_a_fetch_answer_of_the_wrong_size_is_a_wrong_size_error() -> None:
    data = wire.encode(wire.FetchReply(1, (), 0), params=P, slots=SLOTS)
    for bad in (data[:-1], data + b"\x00"):
        with pytest.raises(WireError) as err:
            wire.decode(bad, params=P, slots=SLOTS)
        assert err.value.reason is DropReason.WRONG_SIZE


def test_an_unknown_version_is_a_bad_version_error() -> None:
    for data in (b"\x02\x02", b"\x00\x01" + bytes(P.packet_length)):
        with pytest.raises(WireError) as err:
            wire.decode(data, params=P, slots=SLOTS)
        assert err.value.reason is DropReason.BAD_VERSION


def test_an_oversized_control_body_is_refused_before_msgpack_sees_it() -> None:
    body = msgpack.packb([1, "x" * (wire.MAX_CONTROL_BODY + 1)])
    with pytest.raises(WireError) as err:
        wire.decode(b"\x01\x7f" + body, params=P, slots=SLOTS)
    assert err.value.reason is DropReason.WRONG_SIZE


def test_an_ack_with_too_many_ids_is_refused_by_both_sides() -> None:
    ids = tuple(range(wire.MAX_ACK_IDS + 1))
    with pytest.raises(LocalMisuse):
        wire.encode(wire.FetchAck(1, ids), params=P, slots=SLOTS)
    with pytest.raises(WireError):
        wire.decode(b"\x01\x12" + msgpack.packb([1, list(ids)]), params=P, slots=SLOTS)
    assert roundtrip(wire.FetchAck(1, ids[:-1])) == wire.FetchAck(1, ids[:-1])


def test_control_fields_are_type_and_range_checked() -> None:
    bodies = {
        0x10: ([-1], ["x"], [1, 2], [True], [1.0], [None], [], {"a": 1}, [2**64 - 1, 0]),
        0x12: ([1, [-1]], [1, 5], [1, [True]], [1]),
        0x20: ([bytes(31), bytes(32), "n"], [bytes(32), bytes(32), 5], [bytes(32), "k", "n"]),
        0x7F: (["c"], ["c", b"t"], ["c", "t" * (wire.MAX_TEXT_BYTES + 1)]),
    }
    for kind, cases in bodies.items():
        for body in cases:
            with pytest.raises(WireError) as err:
                wire.decode(bytes([1, kind]) + msgpack.packb(body, use_bin_type=True),
                            params=P, slots=SLOTS)
            assert err.value.reason is DropReason.BAD_FRAME, (kind, body)


def test_a_fetch_answer_claiming_more_items_than_slots_is_refused() -> None:
    data = bytearray(wire.encode(wire.FetchReply(1, (), 0), params=SMALL, slots=2))
    data[2 + 8] = 3  # the count byte
    with pytest.raises(WireError):
        wire.decode(bytes(data), params=SMALL, slots=2)


def test_encoding_refuses_frames_the_peer_would_refuse() -> None:
    item = wire.MailboxItem(1, wire.ItemKind.MESSAGE, bytes(16), b"x")
    bad: list[wire.Frame] = [
        wire.Packet(bytes(P.packet_length - 1)),
        wire.Relay(bytes(15), bytes(P.packet_length)),
        wire.Fetch(-1),
        wire.Fetch(2**64),
        wire.FetchAcked(1, -5),
        wire.Register(bytes(32), bytes(31), "n"),
        wire.Registered("é" * 129),  # 258 bytes of UTF-8
        wire.Error("c", "\ud800"),  # not encodable as UTF-8
        wire.FetchReply(1, (item,) * (SLOTS + 1), 0),
        wire.FetchReply(1, (), 2**32),
        wire.FetchReply(1, (wire.MailboxItem(1, wire.ItemKind.REPLY, bytes(5), b""),), 0),
        wire.FetchReply(1, (wire.MailboxItem(1, wire.ItemKind.MESSAGE, bytes(16),
                                             bytes(wire.slot_length(P))),), 0),
    ]
    for frame in bad:
        with pytest.raises(LocalMisuse):
            wire.encode(frame, params=P, slots=SLOTS)


def test_a_message_item_without_a_surb_id_travels_as_zeros() -> None:
    item = wire.MailboxItem(3, wire.ItemKind.MESSAGE, b"", b"body")
    out = roundtrip(wire.FetchReply(1, (item,), 0))
    assert isinstance(out, wire.FetchReply)
    assert out.items == (wire.MailboxItem(3, wire.ItemKind.MESSAGE, bytes(16), b"body"),)
