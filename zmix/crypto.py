"""Named, fixed-size cryptographic operations: the only module that imports pysodium or PyNaCl.

Every function checks the lengths of its arguments and raises :class:`LocalMisuse` on a wrong one,
so a slicing bug elsewhere fails loudly instead of producing weak keys. BLAKE2b comes from
``hashlib`` (the same primitive as libsodium's ``crypto_generichash``, and about twice as fast
through CPython's C binding as through ctypes).
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
from collections.abc import Callable

from zmix.errors import LocalMisuse, ZmixError


class LibsodiumMissing(ZmixError):
    """libsodium could not be loaded."""


class LowOrderPoint(ZmixError, ValueError):
    """X25519 gave the all-zero result: the point has small order (the identity, the points of
    order 2, 4 or 8, or a non-canonical encoding of one). No secret can be derived from it.

    Not a :class:`LocalMisuse`: whether it is our mistake (a bad public key in a route) or a peer's
    (a bad alpha in a packet) is for the caller to say.
    """


try:
    import pysodium as _na
except (OSError, ValueError, AttributeError, ImportError) as _exc:  # pragma: no cover
    raise LibsodiumMissing(
        "zmix needs the libsodium shared library: install it with "
        "'apt-get install libsodium23' (Debian/Ubuntu), 'dnf install libsodium' (Fedora) "
        f"or 'brew install libsodium' (macOS), then try again ({_exc})"
    ) from None

try:
    from nacl.bindings import crypto_scalarmult_base as _nacl_scalarmult_base
except ImportError as _exc:  # pragma: no cover
    raise LibsodiumMissing(
        "zmix needs PyNaCl, one of its dependencies: reinstall zmix with "
        f"'python3 -m pip install .' in its clone ({_exc})") from None


def _initialise(library: object) -> int:
    """Call libsodium's ``sodium_init`` once; raise :class:`LibsodiumMissing` if it fails.

    pysodium never calls it, and libsodium picks its fastest implementations for this CPU there:
    until then X25519 runs the portable ref10 code instead of the AVX one (sandy2x) and ChaCha20
    the portable code instead of the AVX2 one, 2.2 times slower on a 2 KiB payload here (the
    section "X25519: which libsodium" of docs/performance.md has the figures; it is also why
    :func:`x25519_base` goes through PyNaCl). Results do not change: every implementation computes
    the same function. Returns 0 on the first call, 1 if the library was already initialised (by
    another binding in the same process).
    """
    status = int(library.sodium_init())  # type: ignore[attr-defined]
    if status < 0:
        raise LibsodiumMissing("libsodium failed to initialise (sodium_init returned -1)")
    return status


_initialise(_na.sodium)


def _chacha20_binding() -> Callable[..., int]:
    """libsodium's ``crypto_stream_chacha20_xor`` with its argument types declared once, on a
    handle of its own (pysodium declares none on its handle, so ctypes works each argument's
    conversion out on every call): about 0.15 us less a call, three calls a hop."""
    handle = ctypes.CDLL(_na.sodium._name)
    function = handle.crypto_stream_chacha20_xor
    function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p,
                         ctypes.c_char_p]
    function.restype = ctypes.c_int
    return function


_chacha20_xor = _chacha20_binding()
_buffer = ctypes.create_string_buffer

X25519_BYTES = 32  # group element and scalar length, bytes
CHACHA20_KEY_BYTES = 32
CHACHA20_NONCE_BYTES = 8  # original ChaCha20 (64-bit nonce), as in sphinxmixcrypto
BLAKE2B_MAX_KEY_BYTES = 64
BLAKE2B_MAX_DIGEST_BYTES = 64
SEAL_OVERHEAD = 48  # crypto_box_seal: ephemeral public key (32) + Poly1305 tag (16)
BOX_NONCE_BYTES = 24
BOX_OVERHEAD = 40  # crypto_box: random nonce (24) + Poly1305 tag (16)
ED25519_PUBLIC_BYTES = 32
ED25519_SEED_BYTES = 32
ED25519_SECRET_BYTES = 64  # libsodium's form: the 32-byte seed followed by the public key
SIGNATURE_BYTES = 64

_ZERO_NONCE = bytes(CHACHA20_NONCE_BYTES)
BASE_POINT = b"\x09" + bytes(31)

# The encodings of every point of small order, top bit cleared (X25519 ignores it): 0 (order 2 on
# the curve, also the identity's image), 1, the two points of order 8, and the non-canonical
# p - 1, p, p + 1. The list libsodium's X25519 checks against (has_small_order in
# crypto_scalarmult/curve25519/ref10/x25519_ref10.c).
_SMALL_ORDER = frozenset(bytes.fromhex(h) for h in (
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
))


def _check(name: str, value: bytes | bytearray, size: int) -> None:
    if len(value) != size:
        raise LocalMisuse(f"{name} must be {size} bytes, got {len(value)}")


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the operating system's CSPRNG (libsodium ``randombytes``)."""
    if n < 0:
        raise LocalMisuse("random_bytes: n must be >= 0")
    return bytes(_na.randombytes(n)) if n else b""


def clamp(scalar: bytes) -> bytes:
    """Return the X25519-clamped form of a 32-byte scalar."""
    _check("scalar", scalar, X25519_BYTES)
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def x25519(scalar: bytes | bytearray, point: bytes) -> bytes:
    """Return X25519(scalar, point); libsodium clamps the scalar.

    A ``bytearray`` scalar is handed to libsodium in place (bytes would be a copy nobody can
    zero), so a private key kept in one can be wiped by its owner.

    Raises :class:`LowOrderPoint` if the result is the all-zero point (``point`` has small order)
    and :class:`LocalMisuse` if a length is wrong.
    """
    _check("scalar", scalar, X25519_BYTES)
    _check("point", point, X25519_BYTES)
    lent: object = scalar
    if isinstance(scalar, bytearray):  # a private key its owner zeroes later: lend, do not copy
        lent = (ctypes.c_char * X25519_BYTES).from_buffer(scalar)
    try:
        return bytes(_na.crypto_scalarmult_curve25519(lent, point))
    except ValueError:  # pysodium's only failure here: libsodium refused an all-zero result
        raise LowOrderPoint("X25519 with a small-order point") from None


def has_small_order(point: bytes) -> bool:
    """Return whether X25519 with ``point`` gives all zeros whatever the scalar (see
    :class:`LowOrderPoint`), checked against the list of such encodings without any arithmetic."""
    _check("point", point, X25519_BYTES)
    return point[:31] + bytes([point[31] & 0x7F]) in _SMALL_ORDER


def x25519_base(scalar: bytes) -> bytes:
    """Return the public key X25519(scalar, 9) for a 32-byte private scalar.

    Computed by PyNaCl's libsodium (1.0.20), not the system's: once initialised, libsodium 1.0.18
    (Debian 12 and 13) computes it with the general AVX ladder, 29 us here, where 1.0.20 keeps the
    precomputed-table code, 13 us; the result is the same.
    """
    _check("scalar", scalar, X25519_BYTES)
    return _nacl_scalarmult_base(bytes(scalar))


def x25519_keypair() -> tuple[bytes, bytes]:
    """Return a fresh ``(public_key, private_key)`` pair; the private key is stored clamped."""
    sk = clamp(random_bytes(X25519_BYTES))
    return x25519_base(sk), sk


def chacha20_stream(key: bytes, length: int) -> bytes:
    """Return ``length`` bytes of ChaCha20 keystream (64-bit zero nonce, counter 0)."""
    return _chacha20(key, bytes(length))


def chacha20_xor(key: bytes, data: bytes) -> bytes:
    """Return ``data`` XORed with the ChaCha20 keystream of ``key`` (zero nonce)."""
    return _chacha20(key, data)


def _chacha20(key: bytes, data: bytes) -> bytes:
    if len(key) != CHACHA20_KEY_BYTES:
        raise LocalMisuse(f"key must be {CHACHA20_KEY_BYTES} bytes, got {len(key)}")
    out = _buffer(len(data))
    try:
        failed = _chacha20_xor(out, data, len(data), _ZERO_NONCE, key)
    except ctypes.ArgumentError:  # a bytearray or a view: the binding takes bytes
        failed = _chacha20_xor(out, bytes(data), len(data), _ZERO_NONCE, bytes(key))
    if failed:  # pragma: no cover - libsodium's ChaCha20 has no failure for these lengths
        raise LocalMisuse("libsodium's ChaCha20 refused its input")
    return out.raw


def blake2b(data: bytes, *, size: int, key: bytes = b"") -> bytes:
    """Return the ``size``-byte BLAKE2b digest of ``data``, keyed with ``key`` if given."""
    if not 1 <= size <= BLAKE2B_MAX_DIGEST_BYTES:
        raise LocalMisuse(f"blake2b: size must be 1..64, got {size}")
    if len(key) > BLAKE2B_MAX_KEY_BYTES:
        raise LocalMisuse(f"blake2b: key must be at most 64 bytes, got {len(key)}")
    return hashlib.blake2b(data, digest_size=size, key=key).digest()


def blake2b_keyed(data: bytes, size: int, key: bytes) -> bytes:
    """Return the ``size``-byte BLAKE2b digest of ``data`` keyed with ``key``: :func:`blake2b`
    without its argument checks, for the hop's hot path, whose sizes and keys are fixed by
    construction (LIONESS's rounds, kem1's hop keys and MAC). hashlib's ValueError for a size
    or key out of range is not turned into LocalMisuse."""
    return _blake2b(data, digest_size=size, key=key).digest()


_blake2b = hashlib.blake2b


def xor(a: bytes, b: bytes) -> bytes:
    """Return the bytewise XOR of two equal-length byte strings."""
    if len(a) != len(b):
        raise LocalMisuse(f"xor: lengths differ ({len(a)} != {len(b)})")
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(n, "little")


def equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in constant time."""
    return hmac.compare_digest(a, b)


def seal(recipient_public_key: bytes, message: bytes,
         random_bytes: Callable[[int], bytes] = random_bytes) -> bytes:
    """Encrypt ``message`` anonymously to an X25519 public key (libsodium ``crypto_box_seal``).

    The result is ``len(message) + SEAL_OVERHEAD`` bytes. It is libsodium's sealed box, built
    from its parts so that the ephemeral key comes from ``random_bytes`` (a client core's injected
    source, for reproducible tests): an ephemeral key pair (32 random bytes), nonce =
    BLAKE2b-192(ephemeral public key || recipient key), ``crypto_box`` from the ephemeral key;
    ``crypto_box_seal_open`` (:func:`unseal`) opens it.
    """
    _check("public key", recipient_public_key, X25519_BYTES)
    esk = random_bytes(X25519_BYTES)  # as crypto_box_keypair makes it: random bytes, no hash
    epk = x25519_base(esk)
    nonce = hashlib.blake2b(epk + recipient_public_key, digest_size=BOX_NONCE_BYTES).digest()
    return epk + bytes(_na.crypto_box(message, nonce, recipient_public_key, esk))


def unseal(public_key: bytes, private_key: bytes, ciphertext: bytes) -> bytes:
    """Decrypt a :func:`seal` ciphertext; raises :class:`ValueError` if it does not authenticate."""
    _check("public key", public_key, X25519_BYTES)
    _check("private key", private_key, X25519_BYTES)
    if len(ciphertext) < SEAL_OVERHEAD:
        raise ValueError("ciphertext too short")
    return bytes(_na.crypto_box_seal_open(ciphertext, public_key, private_key))


def box(recipient_public_key: bytes, sender_private_key: bytes, message: bytes,
        random_bytes: Callable[[int], bytes] = random_bytes) -> bytes:
    """Encrypt and authenticate ``message`` from a sender's static key to a recipient's.

    Returns ``nonce || ciphertext`` (libsodium ``crypto_box`` with a 24-byte nonce from
    ``random_bytes``), ``len(message) + BOX_OVERHEAD`` bytes. Only the holder of either private
    key can read it, and the recipient learns that the holder of the sender's key wrote it.
    """
    _check("public key", recipient_public_key, X25519_BYTES)
    _check("private key", sender_private_key, X25519_BYTES)
    nonce = random_bytes(BOX_NONCE_BYTES)
    return nonce + bytes(_na.crypto_box(message, nonce, recipient_public_key, sender_private_key))


def unbox(sender_public_key: bytes, recipient_private_key: bytes, data: bytes) -> bytes:
    """Decrypt a :func:`box` result; raises :class:`ValueError` if it does not authenticate."""
    _check("public key", sender_public_key, X25519_BYTES)
    _check("private key", recipient_private_key, X25519_BYTES)
    if len(data) < BOX_OVERHEAD:
        raise ValueError("ciphertext too short")
    nonce, ciphertext = data[:BOX_NONCE_BYTES], data[BOX_NONCE_BYTES:]
    return bytes(_na.crypto_box_open(ciphertext, nonce, sender_public_key, recipient_private_key))


def ed25519_seed_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """Return the Ed25519 ``(public 32, secret 64)`` pair derived from a 32-byte seed (RFC 8032's
    "private key"); the secret is libsodium's form, seed followed by public key."""
    _check("seed", seed, ED25519_SEED_BYTES)
    pk, sk = _na.crypto_sign_seed_keypair(seed)
    return bytes(pk), bytes(sk)


def ed25519_keypair() -> tuple[bytes, bytes]:
    """Return a fresh Ed25519 ``(public 32, secret 64)`` identity key pair."""
    return ed25519_seed_keypair(random_bytes(ED25519_SEED_BYTES))


def ed25519_public(secret: bytes) -> bytes:
    """Return the public key of a 64-byte Ed25519 secret, recomputed from its seed (not read
    from its second half, so a secret file whose halves disagree is caught)."""
    _check("secret key", secret, ED25519_SECRET_BYTES)
    return ed25519_seed_keypair(secret[:ED25519_SEED_BYTES])[0]


def sign(secret: bytes, message: bytes) -> bytes:
    """Return the 64-byte detached Ed25519 signature of ``message`` (libsodium
    ``crypto_sign_detached``, deterministic as RFC 8032 says)."""
    _check("secret key", secret, ED25519_SECRET_BYTES)
    return bytes(_na.crypto_sign_detached(message, secret))


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``message`` by ``public``.

    A bad signature, or a public key libsodium refuses (small order, non-canonical), gives False,
    never an exception: whatever a peer sends, the caller gets a yes or a no. Only wrong lengths,
    our own slicing mistakes, raise :class:`LocalMisuse`.
    """
    _check("public key", public, ED25519_PUBLIC_BYTES)
    _check("signature", signature, SIGNATURE_BYTES)
    try:
        _na.crypto_sign_verify_detached(signature, message, public)
    except ValueError:  # pysodium's way of saying libsodium returned -1
        return False
    return True


def ed25519_public_to_x25519(public: bytes) -> bytes:
    """Return the X25519 public key of an Ed25519 public key (libsodium
    ``crypto_sign_ed25519_pk_to_curve25519``): a directory authority's CURVE key, so the only key
    anyone pins is its identity key. Raises :class:`LocalMisuse` for a key libsodium refuses (not
    a point of the curve, or of small order)."""
    _check("public key", public, ED25519_PUBLIC_BYTES)
    try:
        return bytes(_na.crypto_sign_pk_to_box_pk(public))
    except ValueError:
        raise LocalMisuse("not an Ed25519 public key that converts to X25519") from None


def ed25519_secret_to_x25519(secret: bytes) -> bytes:
    """Return the X25519 private key of a 64-byte Ed25519 secret (libsodium
    ``crypto_sign_ed25519_sk_to_curve25519``); its public key is
    :func:`ed25519_public_to_x25519` of the Ed25519 public key."""
    _check("secret key", secret, ED25519_SECRET_BYTES)
    return bytes(_na.crypto_sign_sk_to_box_sk(secret))
