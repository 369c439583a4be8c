"""Envelopes: round trips at capacity, misuse refused, garbage rejected with InvalidPacket."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import crypto
from zmix.envelope import Envelope, decode_envelope, encode_envelope, envelope_capacity
from zmix.errors import InvalidPacket, LocalMisuse
from zmix.sphinx import SphinxParams

P = SphinxParams()
# Inputs that reach every branch: short garbage, and both flag values followed by lengths around
# the SURB and the length field, where an off-by-one in the parser would show.
_tail = st.binary(min_size=P.surb_length - 8, max_size=P.surb_length + 12)
GARBAGE = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=P.max_message_length + 8),
    _tail.map(lambda b: b"\x01\x01" + b),
    st.binary(max_size=40).map(lambda b: b"\x01\x00" + b),
    st.tuples(st.binary(min_size=P.surb_length, max_size=P.surb_length),
              st.binary(max_size=40)).map(
        lambda t: b"\x01\x01" + t[0] + len(t[1]).to_bytes(4, "big") + t[1]),
)


@pytest.mark.parametrize("with_ack", [True, False])
def test_an_envelope_at_capacity_round_trips_and_fills_a_packet(with_ack: bool) -> None:
    surb = crypto.random_bytes(P.surb_length) if with_ack else None
    env = Envelope(surb, crypto.random_bytes(envelope_capacity(P, with_ack)))
    data = encode_envelope(P, env)
    assert len(data) == P.max_message_length
    assert decode_envelope(P, data) == env


@pytest.mark.parametrize("with_ack", [True, False])
def test_a_body_over_capacity_is_local_misuse(with_ack: bool) -> None:
    surb = bytes(P.surb_length) if with_ack else None
    with pytest.raises(LocalMisuse):
        encode_envelope(P, Envelope(surb, bytes(envelope_capacity(P, with_ack) + 1)))


def test_an_ack_surb_of_the_wrong_length_is_local_misuse() -> None:
    with pytest.raises(LocalMisuse):
        encode_envelope(P, Envelope(bytes(P.surb_length - 1), b"body"))


def test_an_empty_body_round_trips() -> None:
    assert decode_envelope(P, encode_envelope(P, Envelope(None, b""))) == Envelope(None, b"")


@pytest.mark.parametrize("data", [
    b"", b"\x01\x00\x00\x00\x00", b"\x02\x00\x00\x00\x00\x00", b"\x01\x02\x00\x00\x00\x00",
    b"\x01\x00\x00\x00\x00\x01", b"\x01\x00\x00\x00\x00\x00x",
    b"\x01\x01" + bytes(P.surb_length) + b"\x00\x00",  # SURB present, length field cut short
])
def test_malformed_envelopes_are_invalid_packets(data: bytes) -> None:
    with pytest.raises(InvalidPacket):
        decode_envelope(P, data)


def test_an_envelope_longer_than_a_packet_message_is_an_invalid_packet() -> None:
    body = bytes(P.max_message_length)
    with pytest.raises(InvalidPacket):
        decode_envelope(P, b"\x01\x00" + len(body).to_bytes(4, "big") + body)


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
        surb = data.draw(st.binary(min_size=P.surb_length, max_size=P.surb_length))
    assert decode_envelope(P, encode_envelope(P, Envelope(surb, body))) == Envelope(surb, body)
