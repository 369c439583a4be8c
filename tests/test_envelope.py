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


@pytest.mark.parametrize("with_ack", [True, False])
def test_an_envelope_at_capacity_round_trips_and_fits_a_packet(with_ack: bool) -> None:
    surb = crypto.random_bytes(P.surb_length) if with_ack else None
    env = Envelope(surb, crypto.random_bytes(envelope_capacity(P, with_ack)))
    data = encode_envelope(P, env)
    assert len(data) == P.max_message_length
    assert decode_envelope(P, data) == env


def test_a_body_over_capacity_is_local_misuse() -> None:
    with pytest.raises(LocalMisuse):
        encode_envelope(P, Envelope(None, bytes(envelope_capacity(P, False) + 1)))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.binary(max_size=400).map(lambda b: b"\x01\x01" + b),
                 st.binary(max_size=400).map(lambda b: b"\x01\x00" + b)))
def test_any_bytes_decode_to_an_envelope_or_invalid_packet(data: bytes) -> None:
    try:
        env = decode_envelope(P, data)
    except InvalidPacket:
        return
    assert encode_envelope(P, env) == data
