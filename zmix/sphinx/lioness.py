"""LIONESS-BLAKE2b-ChaCha20: the wide-block cipher that protects Sphinx payloads.

The layout is the one of the LIONESS vector shared by pylioness, go-lioness and the ``lioness``
Rust crate (tests/vectors): a 192-byte key ``k1 (32) || k2 (64) || k3 (32) || k4 (64)``, the block
split into ``L`` (32 bytes) and ``R`` (the rest), four rounds alternating a ChaCha20 stream keyed by
``L ^ k`` over ``R`` and a keyed BLAKE2b-256 of ``R`` into ``L``. A change anywhere in a ciphertext
block scrambles the whole plaintext block, which is what lets a 16-byte zero tag authenticate it.
"""

from __future__ import annotations

from zmix import crypto
from zmix.errors import LocalMisuse

KEY_BYTES = 192
L_BYTES = 32  # the left half: one ChaCha20 key, one BLAKE2b-256 digest
MIN_BLOCK = L_BYTES + 1


def _split(key: bytes, block: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    if len(key) != KEY_BYTES:
        raise LocalMisuse(f"LIONESS key must be {KEY_BYTES} bytes, got {len(key)}")
    if len(block) < MIN_BLOCK:
        raise LocalMisuse(f"LIONESS block must be at least {MIN_BLOCK} bytes, got {len(block)}")
    return key[0:32], key[32:96], key[96:128], key[128:192]


_from_bytes = int.from_bytes  # bound once: a hop calls it eight times


def _xor32(a: bytes, b: bytes) -> bytes:
    return (_from_bytes(a, "little") ^ _from_bytes(b, "little")).to_bytes(32, "little")


def encrypt(key: bytes, block: bytes) -> bytes:
    """Return the LIONESS encryption of ``block`` (>= 33 bytes) under a 192-byte ``key``."""
    k1, k2, k3, k4 = _split(key, block)
    left, right = block[:L_BYTES], block[L_BYTES:]
    right = crypto.chacha20_xor(_xor32(left, k1), right)
    left = _xor32(left, crypto.blake2b_keyed(right, 32, k2))
    right = crypto.chacha20_xor(_xor32(left, k3), right)
    left = _xor32(left, crypto.blake2b_keyed(right, 32, k4))
    return left + right


def decrypt(key: bytes, block: bytes) -> bytes:
    """Return the LIONESS decryption of ``block`` under ``key`` (the inverse of :func:`encrypt`)."""
    k1, k2, k3, k4 = _split(key, block)
    left, right = block[:L_BYTES], block[L_BYTES:]
    left = _xor32(left, crypto.blake2b_keyed(right, 32, k4))
    right = crypto.chacha20_xor(_xor32(left, k3), right)
    left = _xor32(left, crypto.blake2b_keyed(right, 32, k2))
    right = crypto.chacha20_xor(_xor32(left, k1), right)
    return left + right
