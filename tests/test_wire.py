"""Link frames: round trips, constant-size fetch answers, and nothing but WireError on garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import wire
from zmix.errors import DropReason, WireError
from zmix.sphinx import SphinxParams

P = SphinxParams()
SLOTS = 8


def roundtrip(frame: wire.Frame) -> wire.Frame:
    return wire.decode(wire.encode(frame, params=P, slots=SLOTS), params=P, slots=SLOTS)


items = st.builds(wire.MailboxItem, st.integers(0, 2**64 - 1), st.sampled_from(wire.ItemKind),
                  st.binary(min_size=16, max_size=16), st.binary(max_size=P.payload_length))
u64 = st.integers(0, 2**64 - 1)
frames = st.one_of(
    st.builds(wire.Packet, st.binary(min_size=P.packet_length, max_size=P.packet_length)),
    st.just(wire.Heartbeat()),
    st.builds(wire.Relay, st.binary(min_size=16, max_size=16),
              st.binary(min_size=P.packet_length, max_size=P.packet_length)),
    st.builds(wire.Fetch, u64),
    st.builds(wire.FetchReply, u64, st.lists(items, max_size=SLOTS).map(tuple),
              st.integers(0, 2**32 - 1)),
    st.builds(wire.FetchAck, u64, st.lists(u64, max_size=50).map(tuple)),
    st.builds(wire.FetchAcked, u64, u64),
    st.builds(wire.Register, st.text(max_size=40), st.binary(min_size=32, max_size=32),
              st.binary(min_size=32, max_size=32)),
    st.builds(wire.Registered, st.text(max_size=40)),
    st.builds(wire.Error, st.text(max_size=40), st.text(max_size=100)),
)


@settings(max_examples=200, deadline=None)
@given(frames)
def test_every_frame_round_trips(frame: wire.Frame) -> None:
    assert roundtrip(frame) == frame


@settings(max_examples=50, deadline=None)
@given(st.lists(items, max_size=SLOTS))
def test_a_fetch_answer_has_the_same_size_whatever_it_holds(batch: list[wire.MailboxItem]) -> None:
    data = wire.encode(wire.FetchReply(1, tuple(batch), 0), params=P, slots=SLOTS)
    assert len(data) == wire.fetch_reply_length(P, SLOTS)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(lambda b: b"\x01" + b),
                 st.sampled_from(list(wire.FrameType)).flatmap(
                     lambda t: st.binary(max_size=60).map(lambda b: bytes([1, t]) + b))))
def test_arbitrary_bytes_decode_to_a_frame_or_wire_error(data: bytes) -> None:
    try:
        frame = wire.decode(data, params=P, slots=SLOTS)
    except WireError:
        return
    assert roundtrip(frame) == frame


def test_a_packet_of_the_wrong_size_is_a_wrong_size_error() -> None:
    with pytest.raises(WireError) as err:
        wire.decode(b"\x01\x01" + bytes(P.packet_length - 1), params=P, slots=SLOTS)
    assert err.value.reason is DropReason.WRONG_SIZE


def test_an_unknown_version_is_a_bad_version_error() -> None:
    with pytest.raises(WireError) as err:
        wire.decode(b"\x02\x02", params=P, slots=SLOTS)
    assert err.value.reason is DropReason.BAD_VERSION


def test_an_ack_with_too_many_ids_is_refused() -> None:
    frame = wire.FetchAck(1, tuple(range(wire.MAX_ACK_IDS + 1)))
    with pytest.raises(WireError):
        roundtrip(frame)


def test_control_fields_are_type_checked() -> None:
    import msgpack

    for body in ([-1], ["x"], [1, 2], [True]):
        with pytest.raises(WireError):
            wire.decode(b"\x01\x10" + msgpack.packb(body), params=P, slots=SLOTS)
