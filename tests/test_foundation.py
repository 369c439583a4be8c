"""The package imports, its errors behave, and the sans-IO core never pulls in zmq."""

import subprocess
import sys

import pytest

from zmix import crypto
from zmix.errors import DropReason, InvalidPacket, LocalMisuse

CORE_MODULES = [
    "zmix.crypto", "zmix.errors", "zmix.sphinx", "zmix.scheduler", "zmix.replay", "zmix.wire",
    "zmix.topology", "zmix.topology_yaml", "zmix.keys", "zmix.mailbox", "zmix.envelope",
    "zmix.provider", "zmix.mixnode", "zmix.client", "zmix.clientstore", "zmix.stats_schema",
]


def test_invalid_packet_text_does_not_reveal_the_reason() -> None:
    for reason in DropReason:
        err = InvalidPacket(reason)
        assert str(err) == "invalid packet"
        assert err.reason is reason


def test_core_modules_do_not_import_zmq() -> None:
    code = "import sys\n" + "".join(f"import {m}\n" for m in CORE_MODULES)
    code += "assert 'zmq' not in sys.modules, 'a core module imported zmq'\n"
    # The same check sees zmq once a runtime module is imported: it can fail.
    code += "import zmix.runtime.links\nassert 'zmq' in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_crypto_rejects_wrong_lengths() -> None:
    with pytest.raises(LocalMisuse):
        crypto.x25519(bytes(31), crypto.BASE_POINT)
    with pytest.raises(LocalMisuse):
        crypto.xor(b"ab", b"a")


def test_seal_round_trips_and_rejects_tampering() -> None:
    pk, sk = crypto.x25519_keypair()
    ct = crypto.seal(pk, b"hello")
    assert len(ct) == 5 + crypto.SEAL_OVERHEAD
    assert crypto.unseal(pk, sk, ct) == b"hello"
    with pytest.raises(ValueError):
        crypto.unseal(pk, sk, ct[:-1] + bytes([ct[-1] ^ 1]))


def test_x25519_rejects_a_small_order_point() -> None:
    with pytest.raises(ValueError):
        crypto.x25519(crypto.clamp(bytes(range(32))), bytes(32))


def test_box_authenticates_the_sender() -> None:
    alice_pk, alice_sk = crypto.x25519_keypair()
    bob_pk, bob_sk = crypto.x25519_keypair()
    mallory_pk, _ = crypto.x25519_keypair()
    ct = crypto.box(bob_pk, alice_sk, b"hi bob")
    assert len(ct) == 6 + crypto.BOX_OVERHEAD
    assert crypto.unbox(alice_pk, bob_sk, ct) == b"hi bob"
    with pytest.raises(ValueError):
        crypto.unbox(mallory_pk, bob_sk, ct)
