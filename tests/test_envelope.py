"""Envelopes and dated SURBs: round trips at capacity, misuse refused, garbage rejected with
InvalidPacket, a SURB's lifetime from its key epoch."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import crypto
from zmix.envelope import (
    DatedSurb,
    Envelope,
    SurbState,
    dated_surb_length,
    decode_envelope,
    encode_envelope,
    envelope_capacity,
)
from zmix.epochs import EpochParams
from zmix.errors import InvalidPacket, LocalMisuse
from zmix.sphinx import SphinxParams

P = SphinxParams()
D = dated_surb_length(P)  # 4 + 297
# Inputs that reach every branch: short garbage, and both flag values followed by lengths around
# the dated SURB and the length field, where an off-by-one in the parser would show.
_tail = st.binary(min_size=D - 8, max_size=D + 12)
GARBAGE = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=P.max_message_length + 8),
    _tail.map(lambda b: b"\x02\x01" + b),
    st.binary(max_size=40).map(lambda b: b"\x02\x00" + b),
    st.tuples(st.binary(min_size=D, max_size=D),
              st.binary(max_size=40)).map(
        lambda t: b"\x02\x01" + t[0] + len(t[1]).to_bytes(4, "big") + t[1]),
)


def dated(surb: bytes, epoch: int = 7) -> DatedSurb:
    return DatedSurb(epoch, surb)


@pytest.mark.parametrize("with_ack", [True, False])
def test_an_envelope_at_capacity_round_trips_and_fills_a_packet(with_ack: bool) -> None:
    surb = dated(crypto.random_bytes(P.surb_length), 2**32 - 1) if with_ack else None
    env = Envelope(surb, crypto.random_bytes(envelope_capacity(P, with_ack)))
    data = encode_envelope(P, env)
    assert len(data) == P.max_message_length
    assert decode_envelope(P, data) == env
    if surb is not None:  # the layout of docs/client.md: version 2, flag, epoch, SURB, length
        assert data[:6] == b"\x02\x01\xff\xff\xff\xff" and data[6:6 + P.surb_length] == surb.surb


def test_a_surb_epoch_outside_a_u32_is_local_misuse() -> None:
    for epoch in (-1, 2**32):
        with pytest.raises(LocalMisuse, match="u32"):
            encode_envelope(P, Envelope(dated(bytes(P.surb_length), epoch), b"x"))
    encode_envelope(P, Envelope(dated(bytes(P.surb_length), 0), b"x"))  # the control


@pytest.mark.parametrize("with_ack", [True, False])
def test_a_body_over_capacity_is_local_misuse(with_ack: bool) -> None:
    surb = dated(bytes(P.surb_length)) if with_ack else None
    with pytest.raises(LocalMisuse):
        encode_envelope(P, Envelope(surb, bytes(envelope_capacity(P, with_ack) + 1)))


def test_an_ack_surb_of_the_wrong_length_is_local_misuse() -> None:
    with pytest.raises(LocalMisuse):
        encode_envelope(P, Envelope(dated(bytes(P.surb_length - 1)), b"body"))


def test_an_empty_body_round_trips() -> None:
    assert decode_envelope(P, encode_envelope(P, Envelope(None, b""))) == Envelope(None, b"")


@pytest.mark.parametrize("data", [
    b"", b"\x02\x00\x00\x00\x00", b"\x01\x00\x00\x00\x00\x00", b"\x02\x02\x00\x00\x00\x00",
    b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x00x",
    b"\x02\x01" + bytes(D) + b"\x00\x00",  # SURB present, length field cut short
    b"\x02\x01" + bytes(P.surb_length) + bytes(4),  # a SURB without its epoch (version 1)
])
def test_malformed_envelopes_are_invalid_packets(data: bytes) -> None:
    with pytest.raises(InvalidPacket):
        decode_envelope(P, data)


def test_an_envelope_longer_than_a_packet_message_is_an_invalid_packet() -> None:
    body = bytes(P.max_message_length)
    with pytest.raises(InvalidPacket):
        decode_envelope(P, b"\x02\x00" + len(body).to_bytes(4, "big") + body)


@settings(max_examples=500, deadline=None)
@given(GARBAGE)
def test_any_bytes_decode_to_an_envelope_or_invalid_packet(data: bytes) -> None:
    try:
        env = decode_envelope(P, data)
    except InvalidPacket:
        return
    assert encode_envelope(P, env) == data  # only what encode produces is accepted


@settings(max_examples=100, deadline=None)
@given(st.booleans(), st.data())
def test_every_body_up_to_capacity_round_trips(with_ack: bool, data: st.DataObject) -> None:
    body = data.draw(st.binary(max_size=envelope_capacity(P, with_ack)))
    surb = None
    if with_ack:
        surb = dated(data.draw(st.binary(min_size=P.surb_length, max_size=P.surb_length)),
                     data.draw(st.integers(0, 2**32 - 1)))
    assert decode_envelope(P, encode_envelope(P, Envelope(surb, body))) == Envelope(surb, body)


def test_the_empty_envelope_is_the_documented_six_bytes() -> None:
    assert encode_envelope(P, Envelope(None, b"")) == b"\x02\x00\x00\x00\x00\x00"
    assert decode_envelope(P, b"\x02\x00\x00\x00\x00\x00") == Envelope(None, b"")


# ---------------------------------------------------------------------------- a SURB's lifetime

SCHEDULE = EpochParams(length=4.0, grace=1.0)  # epoch e: [4e, 4e + 4)


def test_a_surb_made_in_an_epoch_lives_until_the_end_of_the_next_plus_the_grace() -> None:
    for made in (40.0, 41.5, 43.99):  # anywhere in epoch 10: one to two epochs of life
        surb = DatedSurb(SCHEDULE.surb_epoch(made), bytes(P.surb_length))
        assert surb.epoch == 11 and surb.expires_at(SCHEDULE) == 4 * 12 + 1.0
        assert surb.state(SCHEDULE, made) is SurbState.USABLE
        assert surb.state(SCHEDULE, 48.99) is SurbState.USABLE  # in the grace after epoch 11
        assert surb.state(SCHEDULE, 49.0) is SurbState.EXPIRED  # its keys are erased now


def test_a_surb_dated_after_the_next_epoch_could_not_be_made_honestly() -> None:
    assert DatedSurb(12, b"").state(SCHEDULE, 43.0) is SurbState.TOO_EARLY  # now: epoch 10
    assert DatedSurb(11, b"").state(SCHEDULE, 43.0) is SurbState.USABLE  # the control
    assert DatedSurb(12, b"").state(SCHEDULE, 44.0) is SurbState.USABLE  # a moment later


def test_a_dated_surb_of_the_wrong_length_is_an_invalid_packet() -> None:
    good = DatedSurb(5, bytes(P.surb_length)).to_bytes()
    assert len(good) == D == 4 + P.surb_length and good[:4] == b"\x00\x00\x00\x05"
    assert DatedSurb.from_bytes(P, good) == DatedSurb(5, bytes(P.surb_length))
    for bad in (good[:-1], good + b"x", good[4:]):
        with pytest.raises(InvalidPacket):
            DatedSurb.from_bytes(P, bad)
