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


# RFC 8032 section 7.1, "TEST 1" (https://www.rfc-editor.org/rfc/rfc8032#section-7.1): the empty
# message signed with the key whose 32-byte seed is SECRET KEY below.
RFC8032_1_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_1_PUBLIC = bytes.fromhex(
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_1_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
    "d25bf5f0595bbe24655141438e7a100b")


def test_ed25519_reproduces_rfc8032_test_vector_1() -> None:
    public, secret = crypto.ed25519_seed_keypair(RFC8032_1_SEED)
    assert public == RFC8032_1_PUBLIC
    assert secret == RFC8032_1_SEED + RFC8032_1_PUBLIC
    assert crypto.sign(secret, b"") == RFC8032_1_SIGNATURE
    assert crypto.verify(RFC8032_1_PUBLIC, b"", RFC8032_1_SIGNATURE)
    assert not crypto.verify(RFC8032_1_PUBLIC, b"\x00", RFC8032_1_SIGNATURE)


def test_verify_says_no_to_a_flipped_bit_another_key_or_another_message_without_raising() -> None:
    public, secret = crypto.ed25519_keypair()
    other_public, _ = crypto.ed25519_keypair()
    signature = crypto.sign(secret, b"descriptor")
    assert crypto.verify(public, b"descriptor", signature)
    for i in (0, 31, 32, 63):
        flipped = bytearray(signature)
        flipped[i] ^= 0x01
        assert not crypto.verify(public, b"descriptor", bytes(flipped))
    assert not crypto.verify(other_public, b"descriptor", signature)
    assert not crypto.verify(public, b"descriptoR", signature)
    assert not crypto.verify(bytes(32), b"descriptor", signature)  # a small-order key: refused


def test_ed25519_keys_are_fresh_and_their_public_half_is_recomputed_from_the_seed() -> None:
    public, secret = crypto.ed25519_keypair()
    assert (len(public), len(secret)) == (32, 64)
    assert crypto.ed25519_public(secret) == public == secret[32:]
    assert crypto.ed25519_keypair()[0] != public
    mismatched = secret[:32] + crypto.ed25519_keypair()[0]
    assert crypto.ed25519_public(mismatched) == public


def test_ed25519_functions_refuse_wrong_lengths_as_local_misuse() -> None:
    public, secret = crypto.ed25519_keypair()
    signature = crypto.sign(secret, b"m")
    assert crypto.verify(public, b"m", signature)
    with pytest.raises(LocalMisuse):
        crypto.sign(secret[:32], b"m")
    with pytest.raises(LocalMisuse):
        crypto.verify(public[:31], b"m", signature)
    with pytest.raises(LocalMisuse):
        crypto.verify(public, b"m", signature + b"\x00")
    with pytest.raises(LocalMisuse):
        crypto.ed25519_seed_keypair(bytes(31))
    with pytest.raises(LocalMisuse):
        crypto.ed25519_public(secret[:63])


@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 700, 2016])
def test_chacha20_through_its_own_binding_is_libsodiums_through_pysodium(length: int) -> None:
    # zmix calls crypto_stream_chacha20_xor on a handle with its argument types declared;
    # pysodium's own wrapper is the reference, on bytes, bytearrays and views alike.
    import pysodium
    key, data = bytes(range(32)), bytes((7 * i) % 256 for i in range(length))
    expected = pysodium.crypto_stream_chacha20_xor(data, bytes(8), key)
    assert crypto.chacha20_xor(key, data) == expected
    assert crypto.chacha20_xor(bytearray(key), bytearray(data)) == expected
    assert crypto.chacha20_xor(key, memoryview(data)) == expected
    assert crypto.chacha20_stream(key, length) == pysodium.crypto_stream_chacha20_xor(
        bytes(length), bytes(8), key)
    with pytest.raises(LocalMisuse):
        crypto.chacha20_xor(key[:31], data)


def test_the_unchecked_keyed_blake2b_is_the_checked_one() -> None:
    data = bytes(range(200))
    for size in (16, 32, 64):
        for key in (bytes(32), bytes(range(64))):
            assert crypto.blake2b_keyed(data, size, key) == crypto.blake2b(data, size=size, key=key)
