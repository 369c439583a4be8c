"""The crypto module checks its own arguments: each refusal beside the same call that works."""

from __future__ import annotations

import pytest

from zmix import crypto
from zmix.errors import LocalMisuse


def test_random_bytes_gives_what_is_asked_and_refuses_a_negative_count() -> None:
    assert crypto.random_bytes(0) == b""
    assert len(crypto.random_bytes(17)) == 17
    assert crypto.random_bytes(32) != crypto.random_bytes(32)
    with pytest.raises(LocalMisuse):
        crypto.random_bytes(-1)


def test_blake2b_takes_digest_sizes_1_to_64_and_keys_up_to_64_bytes_only() -> None:
    assert len(crypto.blake2b(b"x", size=1)) == 1
    assert len(crypto.blake2b(b"x", size=64, key=bytes(64))) == 64
    assert crypto.blake2b(b"x", size=32, key=b"k") != crypto.blake2b(b"x", size=32)
    for size in (0, 65):
        with pytest.raises(LocalMisuse):
            crypto.blake2b(b"x", size=size)
    with pytest.raises(LocalMisuse):
        crypto.blake2b(b"x", size=32, key=bytes(65))


def test_unbox_refuses_a_ciphertext_shorter_than_the_box_overhead() -> None:
    alice_pk, alice_sk = crypto.x25519_keypair()
    bob_pk, bob_sk = crypto.x25519_keypair()
    empty = crypto.box(bob_pk, alice_sk, b"")
    assert len(empty) == crypto.BOX_OVERHEAD and crypto.unbox(alice_pk, bob_sk, empty) == b""
    with pytest.raises(ValueError, match="too short"):
        crypto.unbox(alice_pk, bob_sk, empty[:-1])
