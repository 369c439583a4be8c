"""The tunnel's message codec (zmix.tunnel.frames, docs/tunnel.md "Messages")."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix.tunnel import frames
from zmix.tunnel.frames import (
    FLAG_ANSWER,
    FLAG_FROM_EXIT,
    FLAG_RESULT_SEEN,
    Ack,
    Data,
    Fin,
    FrameError,
    Message,
    Open,
    OpenResult,
    Reset,
    ResetReason,
)

CIRCUIT = bytes(range(16))


def test_a_proxy_message_with_every_proxy_segment_round_trips() -> None:
    message = Message(CIRCUIT, FLAG_ANSWER | FLAG_RESULT_SEEN, blocks=4, segments=(
        Open("example.org", 443), Data(0, b"hello"), Ack(3, 67, ((5, 7), (9, 10))), Fin(1),
        Reset(ResetReason.ABORTED)))
    assert frames.decode(frames.encode(message)) == message


def test_an_exit_message_round_trips_with_its_block_accounting() -> None:
    message = Message(CIRCUIT, FLAG_FROM_EXIT, used=70000, held=12, segments=(
        OpenResult(5), Data(2**32 - 1, b"x" * 1900)))
    decoded = frames.decode(frames.encode(message))
    assert decoded == message and decoded.from_exit


def test_the_header_is_29_bytes_laid_out_as_documented() -> None:
    data = frames.encode(Message(CIRCUIT, FLAG_FROM_EXIT, blocks=0, used=3, held=2))
    assert len(data) == frames.HEADER_BYTES == 29
    assert data == b"ZMXT" + bytes([1, 1]) + CIRCUIT + bytes([0]) + struct.pack(">IH", 3, 2)


def test_a_data_segment_is_type_length_seq_payload() -> None:
    data = frames.encode(Message(CIRCUIT, segments=(Data(7, b"ab"),)))
    assert data[29:] == bytes([3]) + struct.pack(">HI", 6, 7) + b"ab"


def test_ack_sizes_match_ack_bytes() -> None:
    ack = Ack(1, 65, ((3, 4), (6, 9)))
    data = frames.encode(Message(CIRCUIT, segments=(ack,)))
    assert len(data) - frames.HEADER_BYTES == frames.ack_bytes(ack) == 3 + 8 + 16


def test_is_tunnel_looks_only_at_the_magic() -> None:
    assert frames.is_tunnel(b"ZMXT\x09garbage")
    assert not frames.is_tunnel(b"hello, bob")
    assert not frames.is_tunnel(b"")


@pytest.mark.parametrize("data", [
    b"ZMXT",  # shorter than the header
    b"ZMXT" + bytes([2, 0]) + CIRCUIT + bytes(7),  # version 2
    b"ZMXT" + bytes([1, 0x80]) + CIRCUIT + bytes(7),  # unknown flag
    b"ZMXT" + bytes([1, 0]) + CIRCUIT + bytes(7) + bytes([3, 0, 4]) + bytes(4),  # DATA, no bytes
    b"ZMXT" + bytes([1, 0]) + CIRCUIT + bytes(7) + bytes([9, 0, 0]),  # unknown segment type
    b"ZMXT" + bytes([1, 0]) + CIRCUIT + bytes(7) + bytes([3, 0, 9, 0]),  # truncated segment
    b"ZMXT" + bytes([1, 1]) + CIRCUIT + bytes(7) + bytes([2, 0, 1, 9]),  # SOCKS code 9
    b"ZMXT" + bytes([1, 0]) + CIRCUIT + bytes(7) + bytes([6, 0, 1, 99]),  # unknown reason
])
def test_malformed_messages_raise_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        frames.decode(data)


def test_segments_sent_the_wrong_way_or_twice_are_refused() -> None:
    good = Message(CIRCUIT, segments=(Open("a.example", 80),))
    frames.decode(frames.encode(good))  # positive control
    wrong_way = frames.encode(good)[:4 + 1] + bytes([FLAG_FROM_EXIT]) + frames.encode(good)[6:]
    with pytest.raises(FrameError):
        frames.decode(wrong_way)
    twice = frames.encode(Message(CIRCUIT, segments=(Fin(1),)))
    with pytest.raises(FrameError):
        frames.decode(twice + twice[29:])


def test_ack_ranges_must_be_ascending_and_above_the_cumulative_ack() -> None:
    frames.encode(Message(CIRCUIT, segments=(Ack(2, 66, ((3, 5),)),)))  # positive control
    for ranges in (((1, 5),), ((3, 5), (4, 8)), ((5, 5),)):
        with pytest.raises(FrameError):
            frames.encode(Message(CIRCUIT, segments=(Ack(2, 66, ranges),)))


def test_out_of_range_fields_do_not_encode() -> None:
    for message in (Message(b"short"), Message(CIRCUIT, blocks=256),
                    Message(CIRCUIT, segments=(Open("", 80),)),
                    Message(CIRCUIT, segments=(Data(0, b""),))):
        with pytest.raises(FrameError):
            frames.encode(message)


_segment = st.one_of(
    st.builds(Data, st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=64)),
    st.builds(Fin, st.integers(0, 2**32 - 1)),
    st.builds(Reset, st.sampled_from(list(ResetReason))),
)


@given(st.lists(_segment, max_size=5), st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_any_well_formed_message_round_trips(segments: list[frames.Segment], blocks: int,
                                             used: int) -> None:
    kinds = [type(segment) for segment in segments]
    if kinds.count(Fin) > 1 or kinds.count(Reset) > 1:
        return
    message = Message(CIRCUIT, FLAG_FROM_EXIT, blocks, used, 3, tuple(segments))
    assert frames.decode(frames.encode(message)) == message


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_message_or_frame_error(data: bytes) -> None:
    for candidate in (data, b"ZMXT\x01" + data, b"ZMXT\x01\x00" + CIRCUIT + bytes(7) + data):
        with contextlib.suppress(FrameError):
            frames.decode(candidate)
