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
V = wire.WIRE_VERSION


def head(kind: int) -> bytes:
    return bytes([V, kind])


def client_frames(params: SphinxParams) -> st.SearchStrategy[wire.ClientFrame]:
    """Every frame a client sends: its packets, RELAYs, FETCHes with 0 to the most ack ids,
    REGISTERs with names up to the longest."""
    packet = st.binary(min_size=params.packet_length, max_size=params.packet_length)
    ids = st.lists(u64, max_size=wire.fetch_ack_capacity(params)).map(tuple)
    names = st.one_of(texts, st.text(alphabet="a", min_size=wire.MAX_TEXT_BYTES,
                                     max_size=wire.MAX_TEXT_BYTES))
    return st.one_of(
        st.builds(wire.Packet, packet),
        st.builds(wire.Relay, st.binary(min_size=16, max_size=16), packet),
        st.builds(wire.Fetch, u64, ids),
        st.builds(wire.Register, st.binary(min_size=32, max_size=32),
                  st.binary(min_size=32, max_size=32), names),
    )


def frames(params: SphinxParams, slots: int) -> st.SearchStrategy[wire.Frame]:
    items = st.builds(wire.MailboxItem, u64, st.sampled_from(wire.ItemKind),
                      st.binary(min_size=16, max_size=16),
                      st.binary(max_size=wire.slot_length(params) - 29))
    packet = st.binary(min_size=params.packet_length, max_size=params.packet_length)
    return st.one_of(
        client_frames(params),
        st.lists(packet, min_size=2, max_size=wire.MAX_PACKETS_PER_FRAME).map(
            lambda p: wire.Packets(tuple(p))),
        st.just(wire.Heartbeat()),
        st.builds(wire.FetchReply, u64, st.lists(items, max_size=slots).map(tuple),
                  st.integers(0, 2**32 - 1)),
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
        wire.Packet(bytes(P.packet_length)), wire.Packets((bytes(P.packet_length),) * 2),
        wire.Heartbeat(), wire.Relay(bytes(16), bytes(P.packet_length)), wire.Fetch(1, (2, 3)),
        wire.FetchReply(1, (), 0), wire.Register(bytes(32), bytes(32), "alice"),
        wire.Registered("alice"), wire.Error("x", "y"),
    ]
    seen = {wire.encode(f, params=P, slots=SLOTS)[1] for f in examples}
    assert seen == {int(t) for t in wire.FrameType}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([P, SMALL]).flatmap(lambda p: st.tuples(st.just(p), client_frames(p))))
def test_every_frame_a_client_sends_has_one_length(
        case: tuple[SphinxParams, wire.ClientFrame]) -> None:
    params, frame = case
    data = wire.encode_client(frame, params=params)
    assert len(data) == wire.client_frame_length(params)
    assert wire.decode(data, params=params, slots=SLOTS) == frame


def test_a_client_frame_is_as_long_as_a_relay_or_the_longest_register() -> None:
    relay = wire.encode(wire.Relay(bytes(16), bytes(P.packet_length)), params=P, slots=SLOTS)
    assert wire.client_frame_length(P) == len(relay) == 2 + 16 + P.packet_length == 2315
    register = wire.Register(bytes(32), bytes(32), "é" * 128)  # 256 bytes of UTF-8
    assert wire.client_frame_length(SMALL) == 2 + 322 > 2 + 16 + SMALL.packet_length
    assert len(wire.encode(register, params=SMALL, slots=2)) == wire.client_frame_length(SMALL)
    assert wire.fetch_ack_capacity(P) == (2315 - 12) // 8 == 287
    # The smallest geometry a topology allows still acknowledges a whole answer of 64 slots.
    assert wire.fetch_ack_capacity(SphinxParams(max_hops=3, payload_length=512)) == 85


def test_a_client_packet_carries_the_same_packet_as_a_nodes() -> None:
    packet = bytes(range(256)) * (P.packet_length // 256) + bytes(P.packet_length % 256)
    from_node = wire.encode_packet(packet, params=P)
    from_client = wire.encode_client(wire.Packet(packet), params=P)
    assert len(from_node) == 2 + P.packet_length < len(from_client)
    for data in (from_node, from_client):
        assert wire.decode(data, params=P, slots=SLOTS) == wire.Packet(packet)
        assert wire.packet_of(data, params=P) == packet


def test_a_client_sends_nothing_but_client_frames() -> None:
    for frame in (wire.Heartbeat(), wire.FetchReply(1, (), 0), wire.Registered("a"),
                  wire.Error("c", "t")):
        with pytest.raises(LocalMisuse):
            wire.encode_client(frame, params=P)  # type: ignore[arg-type]


def test_a_client_frame_whose_padding_is_not_zeros_is_refused() -> None:
    frames_: list[wire.ClientFrame] = [
        wire.Packet(bytes(P.packet_length)), wire.Fetch(1, (5,)),
        wire.Register(bytes(32), bytes(32), "bob")]
    for frame in frames_:
        data = bytearray(wire.encode_client(frame, params=P))
        data[-1] = 1
        with pytest.raises(WireError) as err:
            wire.decode(bytes(data), params=P, slots=SLOTS)
        assert err.value.reason is DropReason.BAD_FRAME
        assert wire.packet_of(bytes(data), params=P) is None
    relay = bytearray(wire.encode_client(wire.Relay(bytes(16), bytes(SMALL.packet_length)),
                                         params=SMALL))
    relay[-1] = 1  # SMALL pads a RELAY too (the longest REGISTER is longer)
    with pytest.raises(WireError):
        wire.decode(bytes(relay), params=SMALL, slots=2)


def test_a_client_frame_of_another_length_is_a_wrong_size_error() -> None:
    for kind in (wire.FrameType.RELAY, wire.FrameType.FETCH, wire.FrameType.REGISTER):
        for size in (wire.client_frame_length(P) - 1, wire.client_frame_length(P) + 1):
            with pytest.raises(WireError) as err:
                wire.decode(head(kind) + bytes(size - 2), params=P, slots=SLOTS)
            assert err.value.reason is DropReason.WRONG_SIZE


def test_version_1_fetch_acknowledgements_are_retired() -> None:
    for kind in (0x12, 0x13):
        with pytest.raises(WireError) as err:
            wire.decode(head(kind) + msgpack.packb([1, [2]]), params=P, slots=SLOTS)
        assert err.value.reason is DropReason.BAD_FRAME


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
    types = st.sampled_from([int(t) for t in wire.FrameType] + [0x00, 0x04, 0x12, 0x13, 0xFF])
    versions = st.one_of(st.just(V), st.integers(0, 255))
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
            lambda t: head(0x11) + t[0].to_bytes(8, "big") + bytes([t[1]])
            + t[2].to_bytes(4, "big") + b"".join(t[3]))

    def client_frame(params: SphinxParams) -> st.SearchStrategy[bytes]:
        """A client frame's type, plausible fields (a packet, a count, a name length, maybe
        too large) and a tail that is mostly zeros, to the client frame length."""
        size = wire.client_frame_length(params)
        count = st.integers(0, 2**16 - 1).map(lambda n: n.to_bytes(2, "big"))
        fields = st.one_of(
            st.tuples(u64.map(lambda n: n.to_bytes(8, "big")), count).map(b"".join),
            st.tuples(exact(64), count).map(b"".join),
            exact(16 + params.packet_length), st.binary(max_size=40))
        tail = st.one_of(st.just(b""), st.binary(max_size=3))
        return st.tuples(st.sampled_from([0x01, 0x03, 0x10, 0x20]), fields, tail).map(
            lambda t: (head(t[0]) + t[1] + bytes(size))[:size - len(t[2])] + t[2])

    def framed(params: SphinxParams, slots: int) -> st.SearchStrategy[bytes]:
        lengths = [0, 1, params.packet_length, 16 + params.packet_length,
                   wire.client_frame_length(params) - 2, wire.fetch_reply_length(params, slots),
                   *(n * params.packet_length + d for n in (2, 3, 32, 33) for d in (-1, 0, 1))]
        return st.one_of(
            client_frame(params),
            st.binary(max_size=300),
            st.tuples(versions, types, st.binary(max_size=80)).map(
                lambda t: bytes([t[0], t[1]]) + t[2]),
            st.tuples(versions, types, st.sampled_from(lengths).flatmap(exact)).map(
                lambda t: bytes([t[0], t[1]]) + t[2]),
            fetch_reply(params, slots),
            st.tuples(types, st.one_of(objects, plausible)).map(
                lambda t: head(t[0]) + msgpack.packb(t[1], use_bin_type=True)),
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
def test_the_fast_packet_checks_agree_with_decode_on_any_bytes(
    case: tuple[tuple[SphinxParams, int], bytes],
) -> None:
    (params, slots), data = case
    try:
        frame: wire.Frame | None = wire.decode(data, params=params, slots=slots)
    except WireError:
        frame = None
    expected = frame.packet if isinstance(frame, wire.Packet) else None
    assert wire.packet_of(data, params=params) == expected
    if expected is not None:  # in one of its two forms, exactly
        assert data in (wire.encode_packet(expected, params=params),
                        wire.encode_client(wire.Packet(expected), params=params))
    packets = list(frame.packets) if isinstance(frame, wire.Packets) else None
    count = wire.packets_count(data, params=params)
    assert count == wire.packets_count(memoryview(data), params=params)  # as the node reads it
    assert count == (0 if packets is None else len(packets))
    if packets is not None:  # in its one form, the packets back to back after the head
        assert data == wire.encode_packets(packets, params=params)
        assert data[2:] == b"".join(packets)


def test_a_node_sends_one_packet_as_a_packet_and_more_as_one_packets_frame() -> None:
    packets = [bytes([i]) * P.packet_length for i in range(wire.MAX_PACKETS_PER_FRAME)]
    one = wire.encode_packets(packets[:1], params=P)
    assert one == wire.encode_packet(packets[0], params=P)
    for count in (2, 7, wire.MAX_PACKETS_PER_FRAME):
        data = wire.encode_packets([memoryview(p) for p in packets[:count]], params=P)
        assert data[:2] == bytes([wire.WIRE_VERSION, wire.FrameType.PACKETS])
        assert len(data) == wire.packets_frame_length(P, count) == 2 + count * P.packet_length
        assert wire.decode(data, params=P, slots=SLOTS) == wire.Packets(tuple(packets[:count]))
    for bad in ([], packets + packets[:1], [packets[0], packets[1][:-1]]):
        with pytest.raises(LocalMisuse):
            wire.encode_packets(bad, params=P)
    for bad_frame in (wire.Packets(()), wire.Packets((packets[0],)),
                      wire.Packets((*packets, packets[0]))):
        with pytest.raises(LocalMisuse):
            wire.encode(bad_frame, params=P, slots=SLOTS)


def test_a_packets_frame_of_a_count_out_of_range_or_a_partial_packet_is_a_wrong_size_error(
) -> None:
    for count, extra in ((1, 0), (33, 0), (2, 1), (2, -1), (0, 0)):
        data = head(0x04) + bytes(count * P.packet_length + extra)
        with pytest.raises(WireError) as err:
            wire.decode(data, params=P, slots=SLOTS)
        assert err.value.reason is DropReason.WRONG_SIZE
        assert wire.packets_count(data, params=P) == 0
    assert wire.packets_count(head(0x04) + bytes(2 * P.packet_length), params=P) == 2  # control


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(GEOMETRIES).flatmap(lambda g: st.tuples(st.just(g), frames(*g))))
def test_every_valid_frame_fits_the_size_limit_of_its_receiver(
        case: tuple[tuple[SphinxParams, int], wire.Frame]) -> None:
    (params, slots), frame = case
    data = wire.encode(frame, params=params, slots=slots)
    to_client = isinstance(frame, (wire.FetchReply, wire.Registered, wire.Error))
    limit = (wire.client_frame_limit(params, slots) if to_client
             else wire.node_frame_limit(params))
    assert len(data) <= limit
    if isinstance(frame, wire.Packet):  # the form a client sends fits too
        assert len(wire.encode_client(frame, params=params)) <= limit


def test_the_size_limits_are_those_of_the_longest_frames() -> None:
    for params in (P, SMALL, SphinxParams(payload_length=32 * 1024)):
        longest = wire.Packets((bytes(params.packet_length),) * wire.MAX_PACKETS_PER_FRAME)
        assert wire.node_frame_limit(params) == len(wire.encode(longest, params=params, slots=1))
        assert wire.node_frame_limit(params) > wire.client_frame_length(params)
    assert wire.node_frame_limit(P) == 2 + 32 * 2297 == 73_506
    assert wire.client_frame_limit(P, SLOTS) == wire.fetch_reply_length(P, SLOTS)
    assert wire.client_frame_limit(SMALL, 0) == 2 + wire.MAX_CONTROL_BODY


def test_a_packet_of_the_wrong_size_is_a_wrong_size_error() -> None:
    for size in (0, P.packet_length - 1, P.packet_length + 1):
        with pytest.raises(WireError) as err:
            wire.decode(head(0x01) + bytes(size), params=P, slots=SLOTS)
        assert err.value.reason is DropReason.WRONG_SIZE


def test_a_fetch_answer_of_the_wrong_size_is_a_wrong_size_error() -> None:
    data = wire.encode(wire.FetchReply(1, (), 0), params=P, slots=SLOTS)
    for bad in (data[:-1], data + b"\x00"):
        with pytest.raises(WireError) as err:
            wire.decode(bad, params=P, slots=SLOTS)
        assert err.value.reason is DropReason.WRONG_SIZE


def test_an_unknown_version_is_a_bad_version_error() -> None:
    for data in (b"\x01\x02", b"\x00\x01" + bytes(P.packet_length),
                 b"\x01\x01" + bytes(P.packet_length),  # version 1 is gone
                 b"\x02\x01" + bytes(P.packet_length)):  # and version 2 (no PACKETS)
        with pytest.raises(WireError) as err:
            wire.decode(data, params=P, slots=SLOTS)
        assert err.value.reason is DropReason.BAD_VERSION


def test_an_oversized_control_body_is_refused_before_msgpack_sees_it() -> None:
    body = msgpack.packb([1, "x" * (wire.MAX_CONTROL_BODY + 1)])
    with pytest.raises(WireError) as err:
        wire.decode(head(0x7F) + body, params=P, slots=SLOTS)
    assert err.value.reason is DropReason.WRONG_SIZE


def test_a_fetch_with_more_ack_ids_than_fit_is_refused_by_both_sides() -> None:
    capacity = wire.fetch_ack_capacity(P)
    ids = tuple(range(capacity + 1))
    with pytest.raises(LocalMisuse):
        wire.encode_client(wire.Fetch(1, ids), params=P)
    claims_more = bytearray(wire.encode_client(wire.Fetch(1, ids[:-1]), params=P))
    claims_more[10:12] = (capacity + 1).to_bytes(2, "big")  # the count field
    with pytest.raises(WireError) as err:
        wire.decode(bytes(claims_more), params=P, slots=SLOTS)
    assert err.value.reason is DropReason.BAD_FRAME
    assert roundtrip(wire.Fetch(1, ids[:-1])) == wire.Fetch(1, ids[:-1])


def test_a_registers_name_is_length_and_utf8_checked() -> None:
    size = wire.client_frame_length(P)
    keys = bytes(64)
    for length, name in ((wire.MAX_TEXT_BYTES + 1, b"a" * 257), (2, b"\xff\xfe")):
        data = head(0x20) + keys + length.to_bytes(2, "big") + name
        with pytest.raises(WireError) as err:
            wire.decode(data + bytes(size - len(data)), params=P, slots=SLOTS)
        assert err.value.reason is DropReason.BAD_FRAME
    good = head(0x20) + keys + (3).to_bytes(2, "big") + b"bob"
    assert wire.decode(good + bytes(size - len(good)), params=P, slots=SLOTS) == wire.Register(
        bytes(32), bytes(32), "bob")


def test_control_fields_are_type_and_range_checked() -> None:
    bodies = {
        0x21: ([5], [b"n"], ["a", "b"], [], {"a": 1}, ["n" * (wire.MAX_TEXT_BYTES + 1)]),
        0x7F: (["c"], ["c", b"t"], ["c", "t" * (wire.MAX_TEXT_BYTES + 1)]),
    }
    for kind, cases in bodies.items():
        for body in cases:
            with pytest.raises(WireError) as err:
                wire.decode(head(kind) + msgpack.packb(body, use_bin_type=True),
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
        wire.Fetch(1, (-5,)),
        wire.Fetch(1, (2**64,)),
        wire.Register(bytes(32), bytes(31), "n"),
        wire.Register(bytes(32), bytes(32), "a" * 257),
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
