"""Descriptors and network documents: signed, opened, built deterministically, and refused for
every reason docs/pki.md lists, each refusal beside the same call that succeeds."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import crypto
from zmix.errors import LocalMisuse
from zmix.pki import (
    DESCRIPTOR_CONTEXT,
    DOCUMENT_CONTEXT,
    Descriptor,
    Document,
    DocumentRefused,
    InvalidDocument,
    SignedDocument,
    build_document,
    canonical_json,
    decode_document,
    default_threshold,
    encode_descriptor,
    encode_document,
    merge_signatures,
    open_descriptor,
    sign_descriptor,
    sign_document,
    verify_document,
)
from zmix.sphinx import Profile, SphinxParams
from zmix.topology import LoopixParams, entity_id

NET = "pkitest"
EPOCH = 100


@dataclass(frozen=True)
class Timing:
    length: int = 60
    origin: int = 1_000
    grace: int = 5


TIMING = Timing()
START = TIMING.origin + EPOCH * TIMING.length  # unix time at which EPOCH begins
SPHINX = SphinxParams(max_hops=5, payload_length=1024)
LOOPIX = LoopixParams()


@dataclass(frozen=True)
class Node:
    name: str
    public: bytes
    secret: bytes
    role: str = "mixnode"
    layer: int | None = 0

    def descriptor(self, published: int = EPOCH - 1,
                   epochs: range = range(EPOCH - 1, EPOCH + 2), **changes: object) -> Descriptor:
        d = Descriptor(NET, self.name, entity_id(NET, self.name), self.role, self.layer,
                       "127.0.0.1", 20_000 + len(self.name), crypto.x25519_keypair()[0],
                       self.public, tuple((e, crypto.x25519_keypair()[0]) for e in epochs),
                       published)
        return replace(d, **changes)  # type: ignore[arg-type]

    def signed(self, **kw: object) -> bytes:
        return sign_descriptor(self.descriptor(**kw), self.secret)  # type: ignore[arg-type]


def node(name: str, role: str = "mixnode", layer: int | None = 0) -> Node:
    public, secret = crypto.ed25519_keypair()
    return Node(name, public, secret, role, None if role == "provider" else layer)


@pytest.fixture(scope="module")
def nodes() -> list[Node]:
    return [node("p1", "provider"), node("a1", layer=0), node("b1", layer=1), node("c1", layer=2)]


def build(blobs: list[bytes], allow: list[Node], epoch: int = EPOCH,
          network: str = NET) -> tuple[Document, tuple[tuple[str, str], ...]]:
    return build_document(network, epoch, blobs, {n.public for n in allow}, timing=TIMING,
                          sphinx=SPHINX, loopix=LOOPIX)


def authorities(n: int) -> list[tuple[bytes, bytes]]:
    return [crypto.ed25519_keypair() for _ in range(n)]


def signed_by(body: bytes, keys: list[tuple[bytes, bytes]]) -> SignedDocument:
    return SignedDocument.of(body, [(pk, sign_document(body, sk)) for pk, sk in keys])


def verify(signed: SignedDocument, pinned: list[bytes], threshold: int, now: float = START,
           epoch: int = EPOCH, network: str = NET) -> Document:
    return verify_document(signed, pinned, threshold, epoch, now, network=network, timing=TIMING)


def refused(kind: str, signed: SignedDocument, pinned: list[bytes], threshold: int,
            **kw: object) -> str:
    with pytest.raises(DocumentRefused) as info:
        verify(signed, pinned, threshold, **kw)  # type: ignore[arg-type]
    assert info.value.kind == kind, info.value.reason
    return str(info.value)


# ---------------------------------------------------------------------------- descriptors


def test_a_signed_descriptor_opens_to_the_same_descriptor(nodes: list[Node]) -> None:
    for n in nodes:
        d = n.descriptor()
        blob = sign_descriptor(d, n.secret)
        body = encode_descriptor(d)
        assert blob[:-64] == body and len(blob) == len(body) + 64
        assert open_descriptor(blob) == d
        assert crypto.verify(n.public, DESCRIPTOR_CONTEXT + b"\0" + body, blob[-64:])


def test_the_descriptor_body_is_sorted_json_without_spaces_and_bytes_in_hex(
        nodes: list[Node]) -> None:
    d = nodes[1].descriptor()
    body = encode_descriptor(d)
    obj = json.loads(body)
    assert body == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert obj == {"type": "zmix-descriptor", "version": 1, "network": NET, "name": "a1",
                   "id": entity_id(NET, "a1").hex(), "role": "mixnode", "layer": 0,
                   "host": "127.0.0.1", "port": d.port, "curve_public": d.curve_public.hex(),
                   "identity_public": d.identity_public.hex(),
                   "sphinx_keys": [[e, k.hex()] for e, k in d.sphinx_keys],
                   "published_at_epoch": EPOCH - 1}


def test_a_descriptor_with_a_wrong_signature_does_not_open(nodes: list[Node]) -> None:
    n = nodes[1]
    blob = n.signed()
    open_descriptor(blob)
    forged = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidDocument, match="signature does not verify"):
        open_descriptor(forged)
    other = node("a1")  # the same body signed by a key that is not the one it names
    body = blob[:-64]
    with pytest.raises(InvalidDocument, match="signature does not verify"):
        open_descriptor(body + crypto.sign(other.secret, DESCRIPTOR_CONTEXT + b"\0" + body))
    # A signature over the bare body, without the context, is refused as well.
    with pytest.raises(InvalidDocument, match="signature does not verify"):
        open_descriptor(body + crypto.sign(n.secret, body))


def test_a_descriptor_whose_id_is_not_its_names_does_not_open(nodes: list[Node]) -> None:
    n = nodes[1]
    good = n.descriptor()
    bad = replace(good, id=entity_id(NET, "b1"))
    with pytest.raises(LocalMisuse, match="id is not the id of 'a1'"):
        sign_descriptor(bad, n.secret)
    obj = json.loads(encode_descriptor(good))
    obj["id"] = bad.id.hex()
    body = canonical_json(obj)
    with pytest.raises(InvalidDocument, match="id is not the id of 'a1' in network 'pkitest'"):
        open_descriptor(body + crypto.sign(n.secret, DESCRIPTOR_CONTEXT + b"\0" + body))
    assert open_descriptor(sign_descriptor(good, n.secret)) == good


def resign(n: Node, obj: dict[str, object], raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else canonical_json(obj)
    return body + crypto.sign(n.secret, DESCRIPTOR_CONTEXT + b"\0" + body)


@pytest.mark.parametrize(("change", "message"), [
    ({"layer": None}, "a mixnode needs a layer"),
    ({"role": "gateway"}, "role must be mixnode or provider"),
    ({"port": 0}, "port must be an integer 1..65535"),
    ({"host": "a b"}, "host must be 1-253 printable"),
    ({"host": 'a"b'}, "host must be 1-253 printable"),
    ({"version": 2}, "not a zmix descriptor of version 1"),
    ({"version": True}, "not a zmix descriptor of version 1"),
    ({"sphinx_keys": []}, "1..8 Sphinx keys"),
    ({"sphinx_keys": [[2, "11" * 32], [1, "22" * 32]]}, "increasing order"),
    ({"sphinx_keys": [[1, "00" * 32]]}, "not a usable X25519 public key"),
    ({"sphinx_keys": [[1, "AB" * 32]]}, "lowercase hex"),
    ({"published_at_epoch": -1}, "published_at_epoch must be an integer"),
    ({"extra": 1}, "unexpected fields \\['extra'\\]"),
    ({"curve_public": "00" * 31}, "curve_public must be 32 bytes"),
])
def test_a_malformed_but_well_signed_descriptor_does_not_open(
        nodes: list[Node], change: dict[str, object], message: str) -> None:
    n = nodes[1]
    obj = json.loads(encode_descriptor(n.descriptor()))
    assert open_descriptor(resign(n, obj)).name == "a1"
    with pytest.raises(InvalidDocument, match=message):
        open_descriptor(resign(n, {**obj, **change}))


def test_a_descriptor_that_is_not_canonical_json_does_not_open(nodes: list[Node]) -> None:
    n = nodes[1]
    body = encode_descriptor(n.descriptor())
    assert open_descriptor(resign(n, {}, body)).name == "a1"
    spaced = json.dumps(json.loads(body), sort_keys=True).encode()
    for raw, message in ((spaced, "not in canonical form"), (b"[1]", "not a JSON object"),
                         (b"{\"a\":NaN}", "not ASCII JSON"), (b"\xff", "not ASCII JSON"),
                         (b"{\"a\":1,\"a\":1}", "a key appears twice")):
        with pytest.raises(InvalidDocument, match=message):
            open_descriptor(resign(n, {}, raw))
    with pytest.raises(InvalidDocument, match=r"65\.\.16384 bytes"):
        open_descriptor(b"x" * 64)


def test_sign_descriptor_refuses_a_secret_that_is_not_the_descriptors_key(
        nodes: list[Node]) -> None:
    d = nodes[1].descriptor()
    sign_descriptor(d, nodes[1].secret)
    with pytest.raises(LocalMisuse, match="not that of identity_public"):
        sign_descriptor(d, nodes[2].secret)


# ---------------------------------------------------------------------------- building


def test_build_document_takes_the_valid_descriptors_with_the_keys_of_three_epochs(
        nodes: list[Node]) -> None:
    descs = [n.descriptor(epochs=range(EPOCH - 1, EPOCH + 4)) for n in nodes]
    doc, left_out = build([sign_descriptor(d, n.secret) for d, n in zip(descs, nodes,
                                                                          strict=True)], nodes)
    assert left_out == ()
    assert [e.name for e in doc.nodes] == ["a1", "b1", "c1", "p1"]
    assert (doc.network, doc.epoch) == (NET, EPOCH)
    assert (doc.valid_after, doc.valid_until) == (START, START + 60 + 5)
    assert (doc.epoch_length, doc.epoch_origin, doc.epoch_grace) == (60, 1_000, 5)
    assert (doc.max_hops, doc.payload_length, doc.loopix) == (5, 1024, LOOPIX)
    for d in descs:
        entry = doc.node(d.name)
        assert entry.sphinx_keys == d.sphinx_keys[1:4]  # epochs EPOCH..EPOCH+2 only
        assert (entry.id, entry.role, entry.layer, entry.host, entry.port, entry.curve_public,
                entry.identity_public) == (d.id, d.role, d.layer, d.host, d.port,
                                           d.curve_public, d.identity_public)
    assert decode_document(encode_document(doc)) == doc


def test_build_document_gives_the_same_bytes_whatever_the_order_of_its_input(
        nodes: list[Node]) -> None:
    blobs = [n.signed() for n in nodes] + [nodes[0].signed(published=EPOCH - 5), b"junk" * 20]
    first = encode_document(build(blobs, nodes)[0])
    rng = random.Random(7)
    for _ in range(10):
        shuffled = blobs[:]
        rng.shuffle(shuffled)
        doc, left_out = build(shuffled + shuffled[:2], nodes)
        assert encode_document(doc) == first
        assert left_out == build(blobs, nodes)[1]


def test_a_forged_descriptor_is_left_out_and_reported(nodes: list[Node]) -> None:
    blobs = [n.signed() for n in nodes]
    assert len(build(blobs, nodes)[0].nodes) == 4
    blobs[2] = blobs[2][:-64] + bytes(64)
    doc, left_out = build(blobs, nodes)
    assert [e.name for e in doc.nodes] == ["a1", "c1", "p1"]
    assert left_out == (("?", "descriptor of 'b1': the signature does not verify"),)


def test_only_allowlisted_identity_keys_get_in(nodes: list[Node]) -> None:
    blobs = [n.signed() for n in nodes]
    doc, left_out = build(blobs, nodes[:3])
    assert [e.name for e in doc.nodes] == ["a1", "b1", "p1"]
    assert left_out == (("c1", f"identity key {nodes[3].public.hex()} is not on the "
                                "allowlist"),)
    assert build(blobs, nodes)[1] == ()  # positive control: allowlisted, it is in


def test_descriptors_of_another_network_or_without_a_key_for_the_epoch_are_left_out(
        nodes: list[Node]) -> None:
    p1, a1, b1, c1 = nodes
    foreign = Descriptor("othernet", "b1", entity_id("othernet", "b1"), "mixnode", 1,
                         "127.0.0.1", 1, bytes(range(32)), b1.public,
                         ((EPOCH, crypto.x25519_keypair()[0]),), EPOCH)
    blobs = [p1.signed(), a1.signed(), sign_descriptor(foreign, b1.secret),
             c1.signed(epochs=range(EPOCH + 1, EPOCH + 3))]
    doc, left_out = build(blobs, nodes)
    assert [e.name for e in doc.nodes] == ["a1", "p1"]
    assert left_out == (("b1", "descriptor of network 'othernet', not 'pkitest'"),
                        ("c1", f"no Sphinx key for epoch {EPOCH}"))
    # Positive control: the same c1 is in the next epoch's document.
    assert "c1" in [e.name for e in build(blobs, nodes, epoch=EPOCH + 1)[0].nodes]


def test_a_mixnode_without_a_layer_is_left_out(nodes: list[Node]) -> None:
    a1 = nodes[1]
    obj = json.loads(encode_descriptor(a1.descriptor()))
    doc, left_out = build([resign(a1, {**obj, "layer": None}), resign(a1, obj)], nodes)
    assert [e.name for e in doc.nodes] == ["a1"]  # the good one of the two
    assert left_out == (("?", "descriptor of 'a1': a mixnode needs a layer (an integer "
                         "0..255)"),)


def test_the_latest_descriptor_of_a_node_wins_then_the_greatest_bytes(nodes: list[Node]) -> None:
    a1 = nodes[1]
    # Many versions, so that keeping whichever comes first could not pass by chance.
    versions = [a1.descriptor(published=EPOCH - 16 + i) for i in range(16)]
    blobs = [sign_descriptor(d, a1.secret) for d in versions]
    for order in (blobs, blobs[::-1]):
        doc, left_out = build(order, nodes)
        assert left_out == () and doc.node("a1").curve_public == versions[-1].curve_public
    same_epoch = [a1.signed() for _ in range(16)]  # equally recent: the greatest blob wins
    winner = open_descriptor(max(same_epoch))
    for order in (same_epoch, same_epoch[::-1]):
        assert build(order, nodes)[0].node("a1").curve_public == winner.curve_public


def test_a_name_claimed_by_two_identity_keys_leaves_both_out(nodes: list[Node]) -> None:
    a1 = nodes[1]
    impostor = node("a1")  # allowlisted too, by mistake or malice
    blobs = [a1.signed(), impostor.signed(), nodes[2].signed()]
    doc, left_out = build(blobs, [*nodes, impostor])
    assert [e.name for e in doc.nodes] == ["b1"]
    assert left_out == (("a1", "name claimed by 2 identity keys"),) * 2
    assert [e.name for e in build(blobs, nodes)[0].nodes] == ["a1", "b1"]


def test_one_identity_key_claimed_by_two_names_leaves_both_out(nodes: list[Node]) -> None:
    a1, b1 = nodes[1], nodes[2]
    twin = Node("a2", a1.public, a1.secret)
    doc, left_out = build([a1.signed(), twin.signed(), b1.signed()], nodes)
    assert [e.name for e in doc.nodes] == ["b1"]
    reason = f"identity key {a1.public.hex()} claimed by 2 names"
    assert left_out == (("a1", reason), ("a2", reason))


def test_build_document_refuses_parameters_that_do_not_hold_together(nodes: list[Node]) -> None:
    blobs = [n.signed() for n in nodes]
    build(blobs, nodes)
    with pytest.raises(LocalMisuse, match="grace"):
        build_document(NET, EPOCH, blobs, set(), timing=Timing(length=10, grace=5),
                       sphinx=SPHINX, loopix=LOOPIX)
    with pytest.raises(LocalMisuse, match="max_delay"):
        build_document(NET, EPOCH, blobs, set(), timing=TIMING, sphinx=SPHINX,
                       loopix=LoopixParams(mean_delay=5.0, max_delay=1.0))


# ---------------------------------------------------------------------------- documents


@pytest.fixture(scope="module")
def body(nodes: list[Node]) -> bytes:
    return encode_document(build([n.signed() for n in nodes], nodes)[0])


def test_the_document_body_is_canonical_json_of_the_documented_fields(body: bytes) -> None:
    obj = json.loads(body)
    assert body == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert sorted(obj) == ["epoch", "epoch_params", "loopix", "network", "nodes", "sphinx",
                           "type", "valid_after", "valid_until", "version"]
    assert obj["epoch_params"] == {"length": 60, "origin": 1000, "grace": 5}
    assert obj["sphinx"] == {"max_hops": 5, "payload_length": 1024}
    assert obj["loopix"] == dataclasses.asdict(LOOPIX)
    assert sorted(obj["nodes"][0]) == ["curve_public", "host", "id", "identity_public", "layer",
                                       "name", "port", "role", "sphinx_keys"]


def test_a_kem1_document_names_its_profile_and_a_v1_one_leaves_it_out(nodes: list[Node]
                                                                    ) -> None:
    blobs = [n.signed() for n in nodes]
    kem1 = build_document(NET, EPOCH, blobs, {n.public for n in nodes}, timing=TIMING,
                          sphinx=SphinxParams(5, 1024, Profile.KEM1), loopix=LOOPIX)[0]
    encoded = encode_document(kem1)
    assert json.loads(encoded)["sphinx"] == {"max_hops": 5, "payload_length": 1024,
                                             "profile": "kem1"}
    assert decode_document(encoded) == kem1 and kem1.sphinx.profile is Profile.KEM1
    v1 = build([n.signed() for n in nodes], nodes)[0]  # the control: no profile written
    assert "profile" not in json.loads(encode_document(v1))["sphinx"]
    assert decode_document(encode_document(v1)).profile is Profile.V1
    for written in ("v1", "smc0", "KEM1", 2, None):  # v1 is left out, never written
        obj = json.loads(encoded)
        obj["sphinx"]["profile"] = written
        raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        with pytest.raises(InvalidDocument, match="document sphinx: profile must be one of"):
            decode_document(raw)


def test_a_signed_document_round_trips_through_its_one_blob_form(body: bytes) -> None:
    auths = authorities(3)
    signed = signed_by(body, auths)
    blob = signed.encode()
    assert blob[:4] == b"ZSD1" and int.from_bytes(blob[4:8], "big") == len(body)
    assert blob[8:8 + len(body)] == body and blob[8 + len(body)] == 3
    assert len(blob) == 9 + len(body) + 3 * 96
    assert SignedDocument.decode(blob) == signed
    assert [k for k, _ in signed.signatures] == sorted(pk for pk, _ in auths)
    for key, sig in signed.signatures:
        assert crypto.verify(key, DOCUMENT_CONTEXT + b"\0" + body, sig)


@pytest.mark.parametrize("cut", [
    lambda b: b[:-1], lambda b: b + b"\0", lambda b: b"ZSD2" + b[4:], lambda b: b[:8],
    lambda b: b[:4] + (2**31).to_bytes(4, "big") + b[8:]])
def test_a_signed_document_blob_with_a_wrong_length_or_magic_does_not_decode(
        body: bytes, cut: object) -> None:
    blob = signed_by(body, authorities(2)).encode()
    SignedDocument.decode(blob)
    with pytest.raises(InvalidDocument):
        SignedDocument.decode(cut(blob))  # type: ignore[operator]


def test_a_blob_whose_signatures_are_not_sorted_or_repeat_a_key_does_not_decode(
        body: bytes) -> None:
    signed = signed_by(body, authorities(2))
    records = [k + s for k, s in signed.signatures]
    head = b"ZSD1" + len(body).to_bytes(4, "big") + body + b"\2"
    assert SignedDocument.decode(head + b"".join(records)) == signed
    for bad in (records[::-1], [records[0], records[0]]):
        with pytest.raises(InvalidDocument, match="sorted by authority key, one per key"):
            SignedDocument.decode(head + b"".join(bad))


def test_a_document_with_enough_valid_signatures_is_accepted(body: bytes) -> None:
    auths = authorities(3)
    pinned = [pk for pk, _ in auths]
    doc = verify(signed_by(body, auths[:2]), pinned, default_threshold(3))
    assert encode_document(doc) == body


def test_one_authority_one_signature_is_enough_with_a_threshold_of_one(body: bytes) -> None:
    (auth,) = authorities(1)
    assert default_threshold(1) == 1
    verify(signed_by(body, [auth]), [auth[0]], 1)
    refused("threshold", SignedDocument(body, ()), [auth[0]], 1)


def test_fewer_than_the_threshold_of_pinned_signatures_is_refused(body: bytes) -> None:
    auths = authorities(3)
    pinned = [pk for pk, _ in auths]
    assert default_threshold(3) == 2
    verify(signed_by(body, auths[1:]), pinned, 2)
    message = refused("threshold", signed_by(body, auths[:1]), pinned, 2)
    assert message == "signed by 1 of the 3 pinned authorities, fewer than the threshold of 2"
    # Signatures by keys nobody pinned count for nothing, valid or not.
    strangers = authorities(2)
    refused("threshold", signed_by(body, auths[:1] + strangers), pinned, 2)
    bogus = SignedDocument.of(body, [(strangers[0][0], bytes(64)), *signed_by(
        body, auths[:2]).signatures])
    verify(bogus, pinned, 2)  # an unpinned key's bad signature is ignored, not an error


def test_a_forged_signature_by_a_pinned_authority_is_refused_by_name(body: bytes) -> None:
    auths = authorities(3)
    pinned = [pk for pk, _ in auths]
    good = signed_by(body, auths)
    verify(good, pinned, 2)
    records = dict(good.signatures)
    victim = auths[2][0]
    records[victim] = crypto.sign(crypto.ed25519_keypair()[1], DOCUMENT_CONTEXT + b"\0" + body)
    message = refused("forged", SignedDocument.of(body, records.items()), pinned, 2)
    assert message == f"forged signature by authority {victim.hex()}"
    # A signature made over the body without the context does not verify either.
    records[victim] = crypto.sign(auths[2][1], body)
    refused("forged", SignedDocument.of(body, records.items()), pinned, 2)


def test_a_document_for_another_network_or_epoch_is_refused(nodes: list[Node]) -> None:
    auths = authorities(1)
    pinned = [auths[0][0]]
    other = encode_document(build([n.signed() for n in nodes], nodes, epoch=EPOCH + 1)[0])
    signed = signed_by(other, auths)
    verify(signed, pinned, 1, epoch=EPOCH + 1)
    assert refused("epoch", signed, pinned, 1, epoch=EPOCH) == \
        f"the document is for epoch {EPOCH + 1}, not {EPOCH}"
    assert refused("network", signed, pinned, 1, epoch=EPOCH + 1, network="prod") == \
        "the document is for network 'pkitest', not 'prod'"


def test_a_document_is_usable_from_one_epoch_before_its_own_until_its_grace_ends(
        body: bytes) -> None:
    auths = authorities(1)
    signed, pinned = signed_by(body, auths), [auths[0][0]]
    first, last = START - TIMING.length, START + TIMING.length + TIMING.grace
    verify(signed, pinned, 1, now=first)
    verify(signed, pinned, 1, now=last)
    assert refused("not_yet_valid", signed, pinned, 1, now=first - 0.5) == \
        f"the document for epoch {EPOCH} is not valid before {first} (now {first - 0.5:.3f})"
    assert refused("expired", signed, pinned, 1, now=last + 0.5) == \
        f"the document for epoch {EPOCH} expired at {last} (now {last + 0.5:.3f})"


def doc_signed_after(body: bytes, auths: list[tuple[bytes, bytes]],
                     edit: dict[str, object]) -> SignedDocument:
    obj = json.loads(body)
    for path, value in edit.items():
        target = obj
        *parents, leaf = path.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return signed_by(canonical_json(obj), auths)


@pytest.mark.parametrize(("edit", "message"), [
    ({"valid_after": START + 1}, "are not the start of epoch"),
    ({"valid_until": START + 120}, "are not the start of epoch"),
    ({"epoch_params.grace": 40, "valid_until": START + 100}, "grace"),
    ({"sphinx.max_hops": 99}, "max_hops"),
    ({"loopix.mean_delay": 1e9}, "max_delay must be at least mean_delay"),
    ({"loopix.payload_rate": 0.0}, "payload_rate must be > 0"),
    ({"nodes": []}, None),  # the positive control: an empty document holds together
])
def test_a_document_whose_parameters_do_not_hold_together_is_refused(
        body: bytes, edit: dict[str, object], message: str | None) -> None:
    auths = authorities(1)
    signed = doc_signed_after(body, auths, edit)
    if message is None:
        verify(signed, [auths[0][0]], 1)
        return
    assert message in refused("params", signed, [auths[0][0]], 1)


def test_a_document_for_a_network_that_is_not_a_name_is_refused(body: bytes) -> None:
    auths = authorities(1)
    for network, kind in (("pkitest", None), ("no spaces", "params")):
        signed = doc_signed_after(body, auths, {"network": network, "nodes": []})
        if kind is None:
            verify(signed, [auths[0][0]], 1, network=network)
        else:
            assert "the network must be a name" in refused(kind, signed, [auths[0][0]], 1,
                                                           network=network)


def test_node_entries_out_of_order_or_without_the_epochs_key_are_refused(body: bytes) -> None:
    auths, obj = authorities(1), json.loads(body)
    pinned = [auths[0][0]]
    verify(signed_by(canonical_json(obj), auths), pinned, 1)
    swapped = {**obj, "nodes": obj["nodes"][::-1]}
    assert "sorted by name" in refused("params", signed_by(canonical_json(swapped), auths),
                                       pinned, 1)
    late = [dict(n) for n in obj["nodes"]]
    late[0]["sphinx_keys"] = late[0]["sphinx_keys"][1:]
    assert "that of 100 at least" in refused(
        "params", signed_by(canonical_json({**obj, "nodes": late}), auths), pinned, 1)


def test_a_document_with_epochs_unlike_ours_is_refused(body: bytes) -> None:
    auths = authorities(1)
    signed = signed_by(body, auths)
    verify(signed, [auths[0][0]], 1)
    with pytest.raises(DocumentRefused, match="are not ours") as info:
        verify_document(signed, [auths[0][0]], 1, EPOCH, START, network=NET,
                        timing=Timing(origin=TIMING.origin + 60))
    assert info.value.kind == "params"


def test_a_malformed_body_with_valid_signatures_is_refused_as_malformed(body: bytes) -> None:
    auths = authorities(1)
    verify(signed_by(body, auths), [auths[0][0]], 1)
    for raw in (body.replace(b":", b": ", 1), b"{}", body[:-1]):
        assert "malformed document" in refused("malformed", signed_by(raw, auths),
                                               [auths[0][0]], 1)


def test_verify_document_refuses_a_threshold_it_cannot_meet(body: bytes) -> None:
    auths = authorities(2)
    pinned = [pk for pk, _ in auths]
    verify(signed_by(body, auths), pinned + pinned, 2)  # a key pinned twice counts once
    for threshold in (0, 3):
        with pytest.raises(LocalMisuse, match=r"threshold must be 1\.\.2"):
            verify(signed_by(body, auths), pinned + pinned, threshold)
    with pytest.raises(LocalMisuse, match="must be 32 bytes"):
        verify(signed_by(body, auths), [*pinned, pinned[0].hex().encode()], 2)


# ---------------------------------------------------------------------------- merging


def test_merge_signatures_collects_the_signatures_of_several_authorities(body: bytes) -> None:
    auths = authorities(3)
    pinned = [pk for pk, _ in auths]
    parts = [signed_by(body, [a]) for a in auths]
    refused("threshold", parts[0], pinned, 2)
    merged = merge_signatures(merge_signatures(parts[0], parts[2]), parts[0])
    assert len(merged.signatures) == 2
    assert merged == merge_signatures(parts[2], parts[0])
    verify(merged, pinned, 2)


def test_merge_signatures_refuses_different_bodies_and_two_signatures_by_one_key(
        nodes: list[Node], body: bytes) -> None:
    (auth,) = authorities(1)
    other = encode_document(build([nodes[0].signed()], nodes)[0])
    merge_signatures(signed_by(body, [auth]), signed_by(body, [auth]))
    with pytest.raises(DocumentRefused, match="two different document bodies"):
        merge_signatures(signed_by(body, [auth]), signed_by(other, [auth]))
    with pytest.raises(DocumentRefused, match=f"two different signatures by authority "
                                              f"{auth[0].hex()}") as info:
        merge_signatures(signed_by(body, [auth]), SignedDocument(body, ((auth[0], bytes(64)),)))
    assert info.value.kind == "forged"


def test_default_threshold_is_a_majority() -> None:
    assert [default_threshold(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(LocalMisuse):
        default_threshold(0)


# ---------------------------------------------------------------------------- the docs' examples


def docs_examples() -> dict[str, bytes]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "pki.md").read_text()
    return {m[1]: m[2].encode() for m in re.finditer(r"<!-- example: ([\w-]+) -->\n```\n(.*?)\n```",
                                                     text, re.S)}


def test_the_examples_in_docs_pki_md_are_what_the_code_makes_and_accepts() -> None:
    examples = docs_examples()
    assert sorted(examples) == ["authority", "descriptor", "descriptor-signature", "document",
                                "document-signature"]
    identity, identity_secret = crypto.ed25519_seed_keypair(bytes([1]) * 32)
    d = Descriptor("example", "provider-1", entity_id("example", "provider-1"), "provider",
                   None, "127.0.0.1", 9000, crypto.x25519_base(crypto.clamp(bytes([2]) * 32)),
                   identity, tuple((e, crypto.x25519_base(crypto.clamp(bytes([s]) * 32)))
                                   for e, s in ((7, 3), (8, 4))), 6)
    blob = sign_descriptor(d, identity_secret)
    assert blob == examples["descriptor"] + bytes.fromhex(examples["descriptor-signature"].decode())
    assert open_descriptor(blob) == d
    doc, left_out = build_document("example", 7, [blob], {identity},
                                   timing=Timing(length=3600, origin=0, grace=60),
                                   sphinx=SphinxParams(), loopix=LoopixParams())
    assert left_out == () and encode_document(doc) == examples["document"]
    authority, authority_secret = crypto.ed25519_seed_keypair(bytes([5]) * 32)
    assert authority.hex().encode() == examples["authority"]
    signature = bytes.fromhex(examples["document-signature"].decode())
    assert sign_document(examples["document"], authority_secret) == signature
    signed = SignedDocument(examples["document"], ((authority, signature),))
    assert verify_document(signed, [authority], 1, 7, 7 * 3600, network="example") == doc


# ---------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_byte_flip_in_a_signed_document_never_yields_another_accepted_document(
        data: st.DataObject, body: bytes) -> None:
    auths = _PROPERTY_AUTHS
    pinned = [pk for pk, _ in auths]
    blob = signed_by(body, auths).encode()
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)),
                               min_size=1, max_size=3))
    mutated = bytearray(blob)
    for index, mask in flips:
        mutated[index] ^= mask
    try:
        doc = verify(SignedDocument.decode(bytes(mutated)), pinned, 2)
    except (InvalidDocument, DocumentRefused):
        return
    # Accepted only with the body untouched: a flip in an authority's key makes its signature
    # an unpinned one, ignored, and the other two still meet the threshold.
    assert encode_document(doc) == body


_PROPERTY_AUTHS = authorities(3)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_descriptor_or_invalid_document_never_another_error(raw: bytes) -> None:
    with contextlib.suppress(InvalidDocument):
        open_descriptor(raw)
    with contextlib.suppress(InvalidDocument):
        SignedDocument.decode(raw)


def test_the_pki_core_imports_without_zmq() -> None:
    code = "import sys\nimport zmix.pki\nassert 'zmq' not in sys.modules\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


_PROPERTY_NODE = node("a1")
_PROPERTY_DESCRIPTOR = _PROPERTY_NODE.signed()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_PROPERTY_DESCRIPTOR) - 1), st.integers(1, 255)),
                min_size=1, max_size=3))
def test_a_byte_flip_in_a_signed_descriptor_never_opens_to_another_descriptor(
        flips: list[tuple[int, int]]) -> None:
    original = open_descriptor(_PROPERTY_DESCRIPTOR)
    mutated = bytearray(_PROPERTY_DESCRIPTOR)
    for index, mask in flips:
        mutated[index] ^= mask
    try:
        opened = open_descriptor(bytes(mutated))
    except InvalidDocument:
        return
    assert opened == original
