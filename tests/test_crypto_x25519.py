"""zmix.crypto initialises libsodium, which changes how X25519 and ChaCha20 are computed (the
AVX and AVX2 code instead of the portable one), and takes fixed-base X25519 from PyNaCl's newer
libsodium, but never what they compute: RFC 7748's and RFC 7539's vectors, and the same results
as the system's libsodium before and after sodium_init on random and edge inputs, with
small-order points still refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zmix import crypto

ROOT = Path(__file__).resolve().parent.parent
P = 2**255 - 19

# RFC 7748 section 5.2 (https://www.rfc-editor.org/rfc/rfc7748#section-5.2): scalar, u, result.
# The second u has its top bit set, which X25519 must ignore.
RFC7748_VECTORS = [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
]
# RFC 7748 section 5.2, the iterated test: k = u = 9, then (k, u) = (X25519(k, u), k).
RFC7748_AFTER_1 = "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
RFC7748_AFTER_1000 = "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"
# RFC 7748 section 6.1: Alice's and Bob's key pairs and their shared secret.
ALICE_SK = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PK = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_SK = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PK = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
# RFC 7539 appendix A.1, test vector 1: ChaCha20 with the zero key and nonce, block counter 0.
CHACHA20_ZERO_BLOCK = (
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586")

# Runs in a fresh interpreter that loads libsodium through ctypes without zmix: every X25519 and
# ChaCha20 input from stdin is computed before sodium_init (the portable code) and after it (the
# code libsodium picks for this CPU), in the same process.
_CHILD = r"""
import ctypes, ctypes.util, json, sys
lib = ctypes.CDLL(ctypes.util.find_library("sodium"))
job = json.load(sys.stdin)

def x25519_all():
    out = []
    for scalar, point in job["x25519"]:
        q = ctypes.create_string_buffer(32)
        rc = lib.crypto_scalarmult_curve25519(q, bytes.fromhex(scalar), bytes.fromhex(point))
        out.append(q.raw.hex() if rc == 0 else None)
    return out

def base_all():
    out = []
    for scalar in job["base"]:
        q = ctypes.create_string_buffer(32)
        assert lib.crypto_scalarmult_curve25519_base(q, bytes.fromhex(scalar)) == 0
        out.append(q.raw.hex())
    return out

def chacha_all():
    out = []
    for key, length in job["chacha20"]:
        c = ctypes.create_string_buffer(max(length, 1))
        lib.crypto_stream_chacha20(c, ctypes.c_ulonglong(length), bytes(8), bytes.fromhex(key))
        out.append(c.raw[:length].hex())
    return out

before = {"x25519": x25519_all(), "base": base_all(), "chacha20": chacha_all()}
first_init = lib.sodium_init()
after = {"x25519": x25519_all(), "base": base_all(), "chacha20": chacha_all()}
json.dump({"before": before, "after": after, "first_init": first_init,
           "avx": lib.sodium_runtime_has_avx(), "avx2": lib.sodium_runtime_has_avx2()}, sys.stdout)
"""


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _in_bare_libsodium(job: dict[str, object]) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(job), env=_child_env(),
                          capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _zmix_x25519(scalar: bytes, point: bytes) -> str | None:
    try:
        return crypto.x25519(scalar, point).hex()
    except crypto.LowOrderPoint:
        return None


def _small_order_encodings() -> list[bytes]:
    """The seven small-order encodings zmix.crypto lists, each with the top bit clear and set."""
    base = sorted(crypto._SMALL_ORDER)
    return base + [p[:31] + bytes([p[31] | 0x80]) for p in base]


def _edge_points() -> list[bytes]:
    """Non-canonical encodings (p + k, which X25519 must treat as k) and the top bit set on them
    and on the base point: the inputs where two implementations could most plausibly differ."""
    points = [(P + k).to_bytes(32, "little") for k in range(2, 19)]
    points += [(P + k + 2**255).to_bytes(32, "little") for k in range(2, 19)]
    points.append(bytes([9]) + bytes(30) + b"\x80")
    points.append((2**256 - 1).to_bytes(32, "little"))
    return points


def test_x25519_reproduces_the_rfc7748_vectors_and_diffie_hellman() -> None:
    for scalar, point, expected in RFC7748_VECTORS:
        assert crypto.x25519(bytes.fromhex(scalar), bytes.fromhex(point)).hex() == expected
    k = u = crypto.BASE_POINT
    for i in range(1000):
        k, u = crypto.x25519(k, u), k
        if i == 0:
            assert k.hex() == RFC7748_AFTER_1
    assert k.hex() == RFC7748_AFTER_1000
    assert crypto.x25519_base(bytes.fromhex(ALICE_SK)).hex() == ALICE_PK
    assert crypto.x25519_base(bytes.fromhex(BOB_SK)).hex() == BOB_PK
    assert crypto.x25519(bytes.fromhex(ALICE_SK), bytes.fromhex(BOB_PK)).hex() == SHARED
    assert crypto.x25519(bytes.fromhex(BOB_SK), bytes.fromhex(ALICE_PK)).hex() == SHARED
    assert crypto.x25519(bytearray.fromhex(BOB_SK), bytes.fromhex(ALICE_PK)).hex() == SHARED


def test_importing_zmix_crypto_initialises_libsodium_which_a_bare_load_does_not() -> None:
    probe = ("import ctypes, ctypes.util\n{imp}\n"
             "print(ctypes.CDLL(ctypes.util.find_library('sodium')).sodium_init())")
    outputs = {}
    for name, imp in (("bare", ""), ("zmix", "import zmix.crypto")):
        done = subprocess.run([sys.executable, "-c", probe.format(imp=imp)], env=_child_env(),
                              capture_output=True, text=True, timeout=60, check=True)
        outputs[name] = done.stdout.strip()
    assert outputs == {"bare": "0", "zmix": "1"}  # 0: initialised now; 1: it already was


def test_zmix_computes_what_the_uninitialised_system_libsodium_does_on_random_and_edge_inputs(
) -> None:
    rfc = [(bytes.fromhex(s), bytes.fromhex(p)) for s, p, _ in RFC7748_VECTORS]
    rfc.append((bytes.fromhex(ALICE_SK), bytes.fromhex(BOB_PK)))
    randoms = [(os.urandom(32), os.urandom(32)) for _ in range(300)]
    edges = [(os.urandom(32), point) for point in _edge_points()]
    small = [(os.urandom(32), point) for point in _small_order_encodings()]
    cases = rfc + randoms + edges + small
    lengths = [0, 1, 63, 64, 65, 255, 256, 257, 511, 512, 513, 2048, 2049, 4096]
    streams = [(os.urandom(32).hex(), n) for n in lengths] + [(bytes(32).hex(), 64)]
    scalars = [bytes.fromhex(ALICE_SK), bytes.fromhex(BOB_SK), bytes(32), b"\xff" * 32]
    scalars += [os.urandom(32) for _ in range(100)]
    job = {"x25519": [(s.hex(), p.hex()) for s, p in cases], "base": [k.hex() for k in scalars],
           "chacha20": streams}

    child = _in_bare_libsodium(job)

    assert child["first_init"] == 0, "the child's libsodium was initialised before it measured"
    mine = {"x25519": [_zmix_x25519(s, p) for s, p in cases],
            "base": [crypto.x25519_base(k).hex() for k in scalars],
            "chacha20": [crypto.chacha20_stream(bytes.fromhex(k), n).hex() for k, n in streams]}
    cpu = f"AVX {child['avx']}, AVX2 {child['avx2']}"
    assert child["before"] == child["after"] == mine, cpu
    assert mine["chacha20"][-1] == CHACHA20_ZERO_BLOCK
    assert mine["base"][:2] == [ALICE_PK, BOB_PK]
    results = mine["x25519"]
    assert results[:len(rfc)] == [e for _, _, e in RFC7748_VECTORS] + [SHARED]
    assert None not in results[:len(rfc) + len(randoms) + len(edges)]  # control: these all work
    assert results[len(rfc) + len(randoms) + len(edges):] == [None] * len(small)


@pytest.mark.parametrize("point", _small_order_encodings(),
                         ids=lambda p: p.hex()[:8] + ".." + p.hex()[-2:])
def test_x25519_still_refuses_every_small_order_point(point: bytes) -> None:
    scalar = crypto.x25519_keypair()[1]
    assert crypto.has_small_order(point)
    with pytest.raises(crypto.LowOrderPoint):
        crypto.x25519(scalar, point)
    with pytest.raises(crypto.LowOrderPoint):
        crypto.x25519(bytearray(scalar), point)
    works = crypto.x25519_keypair()[0]  # control: the same scalar with an ordinary point
    assert not crypto.has_small_order(works)
    assert len(crypto.x25519(scalar, works)) == crypto.X25519_BYTES
