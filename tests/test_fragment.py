"""Fragments and the end-to-end content layer of a client's envelope bodies."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import crypto
from zmix.errors import InvalidPacket, LocalMisuse
from zmix.fragment import (
    CONTENT_OVERHEAD,
    HEADER_BYTES,
    MAX_REPLY_BLOCKS,
    ContentKind,
    encode_fragment,
    encode_metadata,
    open_content,
    parse_fragment,
    reply_blocks_that_fit,
    seal_anonymous,
    seal_loop,
    seal_signed,
    split_message,
    verify_signed,
)

SURB = 301  # a reply block of the default geometry: key epoch (4) and SURB (297)
CAPACITY = 1620


def reassemble(fragments: list[bytes]) -> bytes:
    parsed = sorted((parse_fragment(f, SURB) for f in fragments), key=lambda f: f.index)
    return b"".join(f.data for f in parsed)


def test_a_three_mebibyte_message_splits_into_fitting_fragments_that_rejoin() -> None:
    data = os.urandom(3 * 1024 * 1024)
    fragments = split_message(os.urandom(16), data, CAPACITY, filename="big.bin")
    assert all(len(f) <= CAPACITY for f in fragments)
    random.Random(1).shuffle(fragments)
    assert reassemble(fragments) == data
    first = next(parse_fragment(f, SURB) for f in fragments if parse_fragment(f, SURB).index == 0)
    assert (first.filename, first.count, first.total) == ("big.bin", len(fragments), len(data))


def test_only_fragment_zero_carries_the_name_and_the_reply_blocks() -> None:
    surbs = [os.urandom(SURB) for _ in range(2)]
    fragments = split_message(os.urandom(16), os.urandom(5000), CAPACITY, filename="a.txt",
                              reply_surbs=surbs)
    parsed = [parse_fragment(f, SURB) for f in fragments]
    assert parsed[0].reply_surbs == tuple(surbs) and parsed[0].filename == "a.txt"
    assert all(p.filename is None and p.reply_surbs == () for p in parsed[1:])


def test_an_empty_message_is_one_empty_fragment() -> None:
    [fragment] = split_message(os.urandom(16), b"", CAPACITY)
    parsed = parse_fragment(fragment, SURB)
    assert (parsed.count, parsed.total, parsed.data, parsed.filename) == (1, 0, b"", None)


def test_oversized_names_and_too_many_reply_blocks_are_local_misuse() -> None:
    with pytest.raises(LocalMisuse):
        split_message(os.urandom(16), b"x", CAPACITY, filename="é" * 128)
    with pytest.raises(LocalMisuse):
        split_message(os.urandom(16), b"x", CAPACITY,
                      reply_surbs=[bytes(SURB)] * (MAX_REPLY_BLOCKS + 1))
    with pytest.raises(LocalMisuse):
        split_message(os.urandom(16), b"x", HEADER_BYTES + 2, filename="name")


def test_metadata_on_a_later_fragment_is_rejected() -> None:
    fragment = encode_fragment(os.urandom(16), 1, 2, 10, b"data", metadata=b"\x00\x00")
    with pytest.raises(InvalidPacket):
        parse_fragment(fragment, SURB)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_any_bytes_parse_as_a_fragment_or_raise_invalid_packet(data: bytes) -> None:
    try:
        fragment = parse_fragment(data, 40)
    except InvalidPacket:
        return
    assert fragment.index < fragment.count


@given(st.binary(max_size=5000), st.integers(min_value=HEADER_BYTES + 60, max_value=3000),
       st.one_of(st.none(), st.text(max_size=40)))
def test_split_then_parse_gives_the_message_back(data: bytes, capacity: int,
                                                 filename: str | None) -> None:
    # A name of 40 characters can take 160 bytes of UTF-8: then fragment 0 has no room left for
    # data, and splitting is refused rather than done wrong.
    if HEADER_BYTES + len(encode_metadata(filename, ())) >= capacity:
        with pytest.raises(LocalMisuse, match="no room"):
            split_message(bytes(16), data, capacity, filename=filename)
        return
    fragments = split_message(bytes(16), data, capacity, filename=filename)
    assert reassemble(fragments) == data
    assert parse_fragment(fragments[0], SURB).filename == (filename or None)


def test_signed_content_names_its_sender_and_only_the_recipient_opens_it() -> None:
    alice_pk, alice_sk = crypto.x25519_keypair()
    bob_pk, bob_sk = crypto.x25519_keypair()
    sealed = seal_signed(bob_pk, b"A" * 16, alice_sk, b"fragment")
    assert len(sealed) == len(b"fragment") + CONTENT_OVERHEAD
    content = open_content(bob_pk, bob_sk, sealed)
    assert (content.kind, content.ident) == (ContentKind.SIGNED, b"A" * 16)
    assert verify_signed(alice_pk, bob_sk, content.rest) == b"fragment"
    mallory_pk, _ = crypto.x25519_keypair()
    with pytest.raises(InvalidPacket):
        verify_signed(mallory_pk, bob_sk, content.rest)  # a forged sender name fails
    with pytest.raises(InvalidPacket):
        open_content(alice_pk, alice_sk, sealed)


def test_anonymous_content_and_loops_carry_no_sender() -> None:
    pk, sk = crypto.x25519_keypair()
    anonymous = open_content(pk, sk, seal_anonymous(pk, b"hello"))
    assert (anonymous.kind, anonymous.ident, anonymous.rest) == (ContentKind.ANONYMOUS,
                                                                 bytes(16), b"hello")
    loop = open_content(pk, sk, seal_loop(pk, b"L" * 16))
    assert (loop.kind, loop.ident, loop.rest) == (ContentKind.LOOP, b"L" * 16, b"")


def test_an_unknown_content_kind_is_invalid() -> None:
    pk, sk = crypto.x25519_keypair()
    with pytest.raises(InvalidPacket):
        open_content(pk, sk, crypto.seal(pk, b"\x09" + bytes(16)))
    with pytest.raises(InvalidPacket):
        open_content(pk, sk, crypto.seal(pk, b"\x01"))


def test_fragment_arguments_out_of_range_are_refused_as_our_own_misuse() -> None:
    message_id = bytes(16)
    assert reply_blocks_that_fit(CAPACITY, SURB) >= 1
    with pytest.raises(LocalMisuse):
        reply_blocks_that_fit(CAPACITY, 0)
    assert parse_fragment(encode_fragment(message_id, 1, 2, 3, b"abc"), SURB).data == b"abc"
    too_many = (1 << 24) + 1  # MAX_FRAGMENTS + 1
    for args in ((bytes(15), 0, 1), (message_id, 2, 2), (message_id, 0, too_many)):
        with pytest.raises(LocalMisuse):
            encode_fragment(args[0], args[1], args[2], 3, b"abc")


def test_fragment_0_without_room_names_what_filled_it() -> None:
    # The metadata block: a name length, the name, a reply block count.
    with pytest.raises(LocalMisuse, match=r"^a fragment of 36 bytes has no room for data$"):
        split_message(bytes(16), b"data", HEADER_BYTES + 2)
    assert len(split_message(bytes(16), b"data", HEADER_BYTES + 3)) == 2
    with pytest.raises(LocalMisuse, match=r"no room for data beside a file name of 9 bytes$"):
        split_message(bytes(16), b"data", HEADER_BYTES + 11, filename="notes.txt")
    assert len(split_message(bytes(16), b"data", HEADER_BYTES + 12, filename="notes.txt")) == 2


def test_metadata_that_does_not_parse_is_a_bad_command() -> None:
    good = encode_fragment(bytes(16), 0, 1, 1, b"x", encode_metadata("a.txt", (b"s" * SURB,)))
    parsed = parse_fragment(good, SURB)
    assert (parsed.filename, parsed.reply_surbs, parsed.data) == ("a.txt", (b"s" * SURB,), b"x")
    head = good[:HEADER_BYTES]
    bad = [
        head,  # the metadata flag, and no metadata
        head + bytes([5]) + b"a.txt",  # no reply block count after the name
        head + bytes([5]) + b"a.txt" + bytes([MAX_REPLY_BLOCKS + 1]),  # too many blocks
        head + bytes([2]) + b"\xff\xfe" + bytes([0]),  # a name that is not UTF-8
        head + bytes([0, 1]) + b"s" * (SURB - 1),  # a reply block cut short
        good[:HEADER_BYTES - 1],  # not even a header
    ]
    for data in bad:
        with pytest.raises(InvalidPacket):
            parse_fragment(data, SURB)


def test_fragments_are_version_2_and_a_version_1_fragment_is_refused() -> None:
    # Version 2 carries reply blocks with their key epoch; a version 1 fragment's blocks would be
    # cut 4 bytes short, so it is refused rather than misread.
    fragment = encode_fragment(bytes(16), 0, 1, 1, b"x", encode_metadata(None, (b"s" * SURB,)))
    assert fragment[0] == 0x02 and parse_fragment(fragment, SURB).reply_surbs == (b"s" * SURB,)
    with pytest.raises(InvalidPacket):
        parse_fragment(b"\x01" + fragment[1:], SURB)
