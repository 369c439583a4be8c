"""The directory authority: its frames, its sans-IO core on a fake clock, the zmix-authority
process with real sockets (uploads, frozen documents, several authorities, the allowlist commands,
restarts, malformed frames), and what a node or client logs when something is refused."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st
from zmq.utils import z85

from zmix import crypto, pki, wire
from zmix.authority import (
    KEEP_EPOCHS,
    AuthorityCore,
    DocumentParams,
    format_allowlist,
    parse_allowlist,
)
from zmix.bench.common import make_network
from zmix.cli import authority as cli
from zmix.epochs import EpochParams
from zmix.errors import ConfigError, LocalMisuse, WireError
from zmix.keys import IdentityKey, ensure_authority_keys, load_identity, load_private
from zmix.runtime.authority import ALLOWLIST, DOCUMENTS, authority_dir, query
from zmix.runtime.directory import (
    AuthorityPeer,
    DirectoryClient,
    DirectoryUnavailable,
    authority_peers,
    fetch_document,
    load_cached,
    save_cached,
)
from zmix.sphinx import SphinxParams
from zmix.topology import LoopixParams, Topology, entity_id
from zmix.topology_yaml import load_topology

LENGTH = 6  # seconds per epoch in the process tests: vote time 3 s before each epoch starts
EPOCH = {"length": LENGTH, "grace": 1}
LOOPIX = {"max_delay": 0.5}  # the topology's rule: length >= 2 * max_hops * max_delay
NODES = ("provider-1", "mix-a")

# ---------------------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def make(tmp_path: Path, authorities: Sequence[str] = ("authority-1",),
         threshold: int | None = None, allowed: Sequence[str] = NODES,
         length: int = LENGTH) -> tuple[Topology, Path]:
    """A provider and one mixnode, short epochs, the authorities' keys and allowlists."""
    topology, state = make_network(tmp_path, layers=(("mix-a",),), providers=("provider-1",),
                                   loopix=LOOPIX, epoch={**EPOCH, "length": length},
                                   authorities=authorities, authority_threshold=threshold)
    ensure_authority_keys(state, authorities)
    keys = {load_identity(state, n).public: n for n in allowed}
    for name in authorities:
        path = authority_dir(state, name) / ALLOWLIST
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(format_allowlist(keys))
    return topology, state


def descriptor(state: Path, topology: Topology, name: str, first: int, *,
               network: str | None = None) -> bytes:
    """Node ``name``'s signed descriptor with Sphinx keys for epochs ``first`` to ``first + 5``."""
    spec = topology.node(name)
    net = network or topology.network
    identity = load_identity(state, name)
    keys = tuple((e, crypto.x25519_keypair()[0]) for e in range(first, first + 6))
    d = pki.Descriptor(net, name, entity_id(net, name), spec.role.value, spec.layer, spec.host,
                       spec.port, load_private(state, name).curve_public, identity.public, keys,
                       first)
    return pki.sign_descriptor(d, identity.secret)


def soon(topology: Topology) -> int:
    """Return the epoch a test works with: the current one, or the next one in the last 2.5 s of
    an epoch (a document not made before its epoch ends is never made; an authority waits up to
    a quarter epoch, 1.5 s, for missing nodes)."""
    return topology.epoch.epoch_at(time.time() + 2.5)


def forged(blob: bytes) -> bytes:
    """``blob`` with one bit of its signature flipped."""
    return blob[:-1] + bytes([blob[-1] ^ 1])


@contextmanager
def running(state: Path, name: str = "authority-1") -> Iterator[subprocess.Popen[bytes]]:
    """Run zmix-authority as a process until the block ends; it must then stop with status 0."""
    log_path = authority_dir(state, name) / "test.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "zmix.cli.authority", "--state",
                                 str(state), "--name", name, "-v"], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or query(state, name, "ping", 0.2) == "pong",
                 f"authority {name} to answer")
        assert proc.poll() is None, log_path.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert status == 0, log_path.read_text()


def stats(state: Path, name: str = "authority-1") -> dict[str, float]:
    answer = query(state, name, "stats")
    assert answer is not None, f"{name} does not answer on its control socket"
    value = json.loads(answer)
    assert isinstance(value, dict)
    return value


def drive(clients: Sequence[DirectoryClient], done: Callable[[], bool], what: str,
          timeout: float = 15.0) -> None:
    """Run the clients' sockets and timers until ``done()``; fail loudly after ``timeout``."""
    poller = zmq.Poller()
    for client in clients:
        for sock in client.sockets():
            poller.register(sock, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        poller.poll(50)
        for client in clients:
            client.on_readable(time.time())
            client.on_timer(time.time())


@contextmanager
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def upload(ctx: zmq.Context[zmq.Socket[bytes]], topology: Topology, state: Path,
           blobs: Sequence[bytes], peers: Sequence[AuthorityPeer] | None = None,
           expect: int | None = None) -> list[DirectoryClient]:
    """Upload each blob from its own client (as its node would); return the clients once
    ``expect`` authorities (default: all) answered each."""
    peers = list(peers or authority_peers(topology, state))
    clients = []
    for blob in blobs:
        client = DirectoryClient(ctx, peers, 1, topology.network, topology.epoch)
        client.upload(blob, time.time())
        clients.append(client)
    count = len(peers) if expect is None else expect
    drive(clients, lambda: all(len(c.upload_results) >= count for c in clients), "answers")
    return clients


def names(doc: pki.Document) -> set[str]:
    return {n.name for n in doc.nodes}


# ---------------------------------------------------------------------------- frames


FRAMES = [wire.Upload(1, b"d" * 100), wire.UploadAnswer(2, True),
          wire.UploadAnswer(3, False, "not_allowed: no"), wire.FetchDocument(4, 2**40),
          wire.FetchDocument(2**64 - 1, -7),
          wire.DocumentAnswer(5, 9, wire.DocumentStatus.DOCUMENT, b"x" * 5000),
          wire.DocumentAnswer(6, 9, wire.DocumentStatus.NOT_YET, retry_after_ms=1500),
          wire.DocumentAnswer(7, 9, wire.DocumentStatus.UNKNOWN_EPOCH)]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_every_authority_frame_decodes_to_what_was_encoded(frame: wire.AuthorityFrame) -> None:
    assert wire.decode_authority(wire.encode_authority(frame)) == frame


def test_the_documented_example_bytes_are_what_the_encoder_writes() -> None:
    assert wire.encode_authority(wire.FetchDocument(7, 500)).hex(" ") == "02 32 92 07 cd 01 f4"
    answer = wire.DocumentAnswer(7, 500, wire.DocumentStatus.NOT_YET, retry_after_ms=1000)
    assert wire.encode_authority(answer).hex(" ") == "02 33 95 07 cd 01 f4 01 c4 00 cd 03 e8"


@pytest.mark.parametrize("frame", [
    wire.Upload(1, b""), wire.Upload(1, b"d" * (wire.MAX_DESCRIPTOR_BYTES + 1)),
    wire.UploadAnswer(1, False), wire.UploadAnswer(1, True, "but why"),
    wire.FetchDocument(-1, 0), wire.FetchDocument(1, 2**63),
    wire.DocumentAnswer(1, 0, wire.DocumentStatus.DOCUMENT),
    wire.DocumentAnswer(1, 0, wire.DocumentStatus.UNKNOWN_EPOCH, b"x"),
    wire.DocumentAnswer(1, 0, wire.DocumentStatus.DOCUMENT, b"x", retry_after_ms=5)])
def test_a_frame_the_decoder_would_refuse_is_not_encoded(frame: wire.AuthorityFrame) -> None:
    with pytest.raises(LocalMisuse):
        wire.encode_authority(frame)


@pytest.mark.parametrize("data", [
    b"", b"\x02", b"\x01\x32\x92\x07\x00", b"\x02\x99\x90", b"\x02\x32\xc1",
    b"\x02\x32\x93\x07\x00\x00", b"\x02\x32\x92\x07\xca\x00\x00\x00\x00",  # a float epoch
    b"\x02\x31\x93\x07\xc3\xa1x",  # accepted with a reason
    b"\x02\x33\x95\x07\x01\x00\xc4\x00\x00",  # DOCUMENT without a document
    b"\x02\x33\x95\x07\x01\xcb\x00\x00\x00\x00\x00\x00\x00\x00\xc4\x00\x00",  # a float status
])
def test_malformed_authority_frames_raise_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        wire.decode_authority(data)


@given(st.binary(max_size=64), st.sampled_from([0x30, 0x31, 0x32, 0x33]))
def test_any_bytes_give_an_authority_frame_or_wire_error(tail: bytes, kind: int) -> None:
    for data in (tail, bytes([wire.WIRE_VERSION, kind]) + tail):
        with suppress(WireError):
            wire.decode_authority(data)


def test_the_link_bounds_fit_the_longest_blobs_zmix_pki_makes() -> None:
    assert wire.MAX_DESCRIPTOR_BYTES == pki.MAX_DESCRIPTOR_BYTES
    longest = 9 + pki.MAX_DOCUMENT_BYTES + pki.MAX_SIGNATURES * 96
    assert longest == wire.MAX_DOCUMENT_BYTES
    upload = wire.encode_authority(wire.Upload(2**64 - 1, b"d" * pki.MAX_DESCRIPTOR_BYTES))
    assert len(upload) <= wire.AUTHORITY_REQUEST_LIMIT


# ---------------------------------------------------------------------------- the core


SCHEDULE = EpochParams(length=600, grace=30)
T0 = 600 * 1000.0  # the start of epoch 1000


class Node:
    """An in-memory node identity for the core's tests."""

    def __init__(self, name: str, network: str = "net") -> None:
        self.name, self.network = name, network
        self.public, self.secret = crypto.ed25519_keypair()

    def blob(self, first: int, count: int = 3, published: int | None = None) -> bytes:
        keys = tuple((e, crypto.x25519_keypair()[0]) for e in range(first, first + count))
        d = pki.Descriptor(self.network, self.name, entity_id(self.network, self.name),
                           "provider", None, "127.0.0.1", 1000, bytes(range(32)), self.public,
                           keys, first if published is None else published)
        return pki.sign_descriptor(d, self.secret)


def core(allowed: Sequence[Node], now: float, frozen: dict[int, bytes] | None = None,
         identity: IdentityKey | None = None) -> AuthorityCore:
    if identity is None:
        public, secret = crypto.ed25519_keypair()
        identity = IdentityKey("auth", public, secret)
    params = DocumentParams.of(SCHEDULE, SphinxParams(), LoopixParams())
    return AuthorityCore("net", SCHEDULE, params, identity, [n.public for n in allowed], now,
                         frozen)


def opened(blob: bytes) -> pki.Document:
    return pki.decode_document(pki.SignedDocument.decode(blob).body)


def test_the_next_document_freezes_at_the_vote_time_once_every_allowed_node_uploaded() -> None:
    a, b = Node("a"), Node("b")
    c = core([a, b], T0)
    c.on_timer(T0)  # the current epoch: frozen at a cold start once complete, see below
    for node in (a, b):
        assert c.upload(node.blob(1000), T0).accepted
    made, _ = c.on_timer(T0 + 1)
    assert [f.epoch for f in made] == [1000]  # complete: no need to wait
    vote = T0 + 300  # half an epoch before epoch 1001
    assert c.on_timer(vote - 0.001) == ([], [])
    assert c.next_deadline(T0 + 1) == vote
    made, _ = c.on_timer(vote)
    assert [f.epoch for f in made] == [1001]
    assert names(opened(made[0].blob)) == {"a", "b"}
    assert c.statistics()["documents_frozen"] == 2


def test_a_missing_node_delays_the_document_by_the_bounded_wait_and_is_left_out() -> None:
    a, b = Node("a"), Node("b")
    c = core([a, b], T0 - 10_000)
    assert c.upload(a.blob(1000), T0).accepted
    made, _ = c.on_timer(T0)  # the current epoch's wait ran out long ago
    assert [f.epoch for f in made] == [1000]
    vote = T0 + 300
    assert c.wait == 30.0  # min(600 / 4, 30)
    assert c.on_timer(vote) == ([], [])
    assert c.on_timer(vote + 29.9) == ([], [])
    made, _ = c.on_timer(vote + 30)
    assert [f.epoch for f in made] == [1001]
    assert names(opened(made[0].blob)) == {"a"}  # positive control: a is in, b never uploaded


def test_a_frozen_document_never_changes_and_a_restarted_core_serves_the_same_bytes() -> None:
    a, b = Node("a"), Node("b")
    public, secret = crypto.ed25519_keypair()
    identity = IdentityKey("auth", public, secret)
    c = core([a], T0, identity=identity)
    c.upload(a.blob(1000), T0)
    made, _ = c.on_timer(T0)
    blob = c.fetch(1000, T0).blob
    assert made[0].blob == blob and names(opened(blob)) == {"a"}
    c.set_allowlist([a.public, b.public])
    assert not c.upload(Node("x").blob(1000), T0).accepted
    assert c.upload(b.blob(1000), T0).accepted
    c.on_timer(T0 + 1)
    assert c.fetch(1000, T0 + 1).blob == blob  # the change is for later documents only
    again = core([a, b], T0 + 2, frozen={1000: blob}, identity=identity)
    again.upload(a.blob(1000), T0 + 2)
    again.upload(b.blob(1000), T0 + 2)
    made, _ = again.on_timer(T0 + 2)
    assert made == [] and again.fetch(1000, T0 + 2).blob == blob


def test_fetch_says_not_yet_until_the_vote_time_and_unknown_two_epochs_past_the_next() -> None:
    a = Node("a")
    c = core([a], T0)
    c.upload(a.blob(1000), T0)
    c.on_timer(T0)
    assert c.fetch(1000, T0).status is wire.DocumentStatus.DOCUMENT
    ahead = c.fetch(1001, T0 + 100)
    assert ahead.status is wire.DocumentStatus.NOT_YET and ahead.retry_after == 200
    after_next = c.fetch(1002, T0)  # an asker whose clock is ahead of ours
    assert after_next.status is wire.DocumentStatus.NOT_YET and after_next.retry_after == 900
    assert c.fetch(1003, T0).status is wire.DocumentStatus.UNKNOWN_EPOCH
    assert c.fetch(999, T0).status is wire.DocumentStatus.UNKNOWN_EPOCH  # never made


def test_documents_older_than_the_kept_epochs_are_forgotten() -> None:
    a = Node("a")
    c = core([a], T0)
    c.upload(a.blob(1000, count=8), T0)
    c.on_timer(T0)
    _, forget = c.on_timer(T0 + 600 * KEEP_EPOCHS + 1)
    assert forget == []  # epoch 1000 is still among the kept ones
    _, forget = c.on_timer(T0 + 600 * (KEEP_EPOCHS + 1) + 1)
    assert forget == [1000]
    assert c.fetch(1000, T0 + 600 * (KEEP_EPOCHS + 1) + 1).status is (
        wire.DocumentStatus.UNKNOWN_EPOCH)


def test_uploads_are_refused_with_a_reason_and_counted() -> None:
    a, stranger, other = Node("a"), Node("s"), Node("o", network="elsewhere")
    c = core([a, other], T0)
    bad = c.upload(forged(a.blob(1000)), T0)
    assert not bad.accepted and bad.reason.startswith("invalid: ")
    assert "signature does not verify" in bad.reason
    assert c.upload(other.blob(1000), T0).reason.startswith("other_network: ")
    assert c.upload(stranger.blob(1000), T0).reason.startswith("not_allowed: ")
    assert c.upload(a.blob(1000, published=1001), T0).accepted
    assert c.upload(a.blob(1000), T0).reason.startswith("invalid: ")  # older than the one kept
    counts = c.statistics()
    assert (counts["uploads_accepted"], counts["uploads_refused_invalid"],
            counts["uploads_refused_other_network"],
            counts["uploads_refused_not_allowed"]) == (1, 2, 1, 1)


def test_the_allowlist_file_reads_keys_with_names_and_refuses_anything_else() -> None:
    a, b = Node("a"), Node("b")
    text = format_allowlist({a.public: "a", b.public: ""})
    assert parse_allowlist(text + "\n# a comment\n", "f") == {a.public: "a", b.public: ""}
    with pytest.raises(ConfigError, match="f: line 2: not an identity key"):
        parse_allowlist(a.public.hex() + "\nmix-a\n", "f")


# ---------------------------------------------------------------------------- the process


def test_an_authority_process_freezes_the_uploaded_nodes_and_serves_the_persisted_bytes(
        tmp_path: Path) -> None:
    topology, state = make(tmp_path)
    epoch = soon(topology)
    with running(state), context() as ctx:
        clients = upload(ctx, topology, state, [descriptor(state, topology, n, epoch)
                                                for n in NODES])
        assert [c.upload_results for c in clients] == [{"authority-1": "accepted"}] * 2
        fetcher = clients[0]
        fetcher.want(epoch, time.time())
        drive([fetcher], lambda: fetcher.document(epoch) is not None, "the document")
        doc = fetcher.document(epoch)
        assert doc is not None and names(doc) == set(NODES)
        signed = fetcher.signed_document(epoch)
        assert signed is not None
        path = authority_dir(state, "authority-1") / DOCUMENTS / str(epoch)
        assert path.read_bytes() == signed.encode()
        counted = stats(state)
        assert counted["uploads_accepted"] == 2 and counted["documents_frozen"] >= 1
    log = (authority_dir(state, "authority-1") / "test.log").read_text()
    assert f"froze the document of epoch {epoch}: 2 node(s) (mix-a, provider-1)" in log


def test_a_descriptor_with_a_bad_signature_is_refused_in_the_nodes_log_and_left_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topology, state = make(tmp_path)
    epoch = soon(topology)
    caplog.set_level(logging.INFO, logger="zmix.runtime.directory")
    with running(state), context() as ctx:
        good = descriptor(state, topology, "provider-1", epoch)
        clients = upload(ctx, topology, state, [good, forged(descriptor(
            state, topology, "mix-a", epoch))])
        assert clients[0].upload_results == {"authority-1": "accepted"}
        reason = clients[1].upload_results["authority-1"]
        assert reason == "invalid: descriptor of 'mix-a': the signature does not verify"
        assert f"authority authority-1 refused our descriptor: {reason}" in caplog.text
        # mix-a never gave a valid descriptor: the document waits min(6 / 4, 30) s for it
        doc = fetch_document(authority_peers(topology, state), 1, topology.network,
                             topology.epoch, epoch, timeout=10)
        assert names(doc) == {"provider-1"}
        assert stats(state)["uploads_refused_invalid"] == 1


def test_three_authorities_with_threshold_two_still_give_a_document_with_one_stopped(
        tmp_path: Path) -> None:
    names3 = ("authority-1", "authority-2", "authority-3")
    topology, state = make(tmp_path, authorities=names3, threshold=2, length=30)
    assert topology.authority_threshold == 2
    epoch = soon(topology)
    peers = authority_peers(topology, state)
    with running(state, "authority-3"):
        pass  # started, then stopped: it does not answer from now on
    with running(state, "authority-1"), context() as ctx:
        with running(state, "authority-2"):
            clients = upload(ctx, topology, state, [descriptor(state, topology, n, epoch)
                                                    for n in NODES], expect=2)
            assert all(set(c.upload_results) == {"authority-1", "authority-2"}
                       for c in clients)
            client = DirectoryClient(ctx, peers, 2, topology.network, topology.epoch)
            client.want(epoch, time.time())
            drive([client], lambda: client.document(epoch) is not None, "the document")
            signed = client.signed_document(epoch)
            assert signed is not None
            assert {k for k, _ in signed.signatures} == {p.identity_public for p in peers[:2]}
            assert client.status(epoch)["authority-3"] == "no answer"
        # The negative side: with authority-2 stopped as well, one signature is not enough.
        with pytest.raises(DirectoryUnavailable, match=(
                rf"no document of epoch {epoch} signed by 2 of 3 authorities within 3 s "
                r"\(authority-1: document, authority-2: no answer, authority-3: no answer\)")):
            fetch_document(peers, 2, topology.network, topology.epoch, epoch, timeout=3)


def test_a_forged_document_is_refused_by_the_client_with_a_line_naming_the_authority(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topology, state = make(tmp_path)
    epoch = soon(topology)
    auth = load_identity(state, "authority-1")
    blobs = [descriptor(state, topology, n, epoch) for n in NODES]
    params = DocumentParams.of(topology.epoch, topology.sphinx, topology.loopix)
    documents = authority_dir(state, "authority-1") / DOCUMENTS
    documents.mkdir(parents=True)
    for e, secret in ((epoch, crypto.ed25519_keypair()[1]), (epoch + 1, auth.secret)):
        doc, _ = pki.build_document(topology.network, e, blobs, [load_identity(
            state, n).public for n in NODES], timing=params.timing, sphinx=params.sphinx,
            loopix=params.loopix)
        body = pki.encode_document(doc)
        signed = pki.SignedDocument.of(body, [(auth.public, pki.sign_document(body, secret))])
        (documents / str(e)).write_bytes(signed.encode())  # a restarted authority serves them
    caplog.set_level(logging.INFO, logger="zmix.runtime.directory")
    peers = authority_peers(topology, state)
    with running(state):
        with pytest.raises(DirectoryUnavailable):
            fetch_document(peers, 1, topology.network, topology.epoch, epoch, timeout=3)
        assert (f"refused the document of epoch {epoch} from authority authority-1: forged "
                f"signature by authority {auth.public.hex()}") in caplog.text
        good = fetch_document(peers, 1, topology.network, topology.epoch, epoch + 1, timeout=5)
        assert names(good) == set(NODES)  # positive control: signed by the authority's key


def test_a_restarted_authority_serves_the_same_bytes_and_keeps_the_descriptors(
        tmp_path: Path) -> None:
    topology, state = make(tmp_path, length=30)  # the document must still be valid at the end
    epoch = soon(topology)
    peers = authority_peers(topology, state)
    path = authority_dir(state, "authority-1") / DOCUMENTS / str(epoch)
    with running(state), context() as ctx:
        upload(ctx, topology, state, [descriptor(state, topology, n, epoch) for n in NODES])
        first = fetch_document(peers, 1, topology.network, topology.epoch, epoch, timeout=10)
        before = path.read_bytes()
    with running(state), context() as ctx:
        assert stats(state)["descriptors"] == 2  # kept on disk, taken back
        client = DirectoryClient(ctx, peers, 1, topology.network, topology.epoch)
        client.want(epoch, time.time())
        drive([client], lambda: client.document(epoch) is not None, "the document")
        signed = client.signed_document(epoch)
        assert signed is not None and signed.encode() == before == path.read_bytes()
        assert client.document(epoch) == first
        cache = tmp_path / "cache" / "document"
        save_cached(cache, signed)
        loaded = load_cached(cache, [p.identity_public for p in peers], 1, topology.network,
                             topology.epoch, time.time())
        assert loaded is not None and loaded[0] == first


def test_malformed_frames_are_dropped_and_counted_and_the_authority_answers_the_next(
        tmp_path: Path) -> None:
    topology, state = make(tmp_path)
    (peer,) = authority_peers(topology, state)
    bad = [b"", b"\x02", b"\x01\x32\x92\x07\x00", b"\x02\x99\x90", b"\x02\x32\xc1",
           wire.encode_authority(wire.UploadAnswer(1, True))]
    with running(state), context() as ctx:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        client_public, client_secret = crypto.x25519_keypair()
        sock.curve_serverkey = z85.encode(crypto.ed25519_public_to_x25519(peer.identity_public))
        sock.curve_publickey, sock.curve_secretkey = z85.encode(client_public), z85.encode(
            client_secret)
        sock.connect(peer.endpoint)
        for data in bad:
            sock.send(data)
        sock.send_multipart([wire.encode_authority(wire.FetchDocument(1, 0)), b"more"])
        sock.send(wire.encode_authority(wire.FetchDocument(99, 0)))
        assert sock.poll(10_000), "no answer after the malformed frames"
        answer = wire.decode_authority(sock.recv())
        assert answer == wire.DocumentAnswer(99, 0, wire.DocumentStatus.UNKNOWN_EPOCH)
        assert stats(state)["malformed"] == len(bad) + 1
        assert not sock.poll(200)  # nothing else was answered


def test_a_second_run_of_the_same_authority_is_refused_with_exit_status_2(
        tmp_path: Path) -> None:
    _, state = make(tmp_path)
    with running(state) as proc:
        done = subprocess.run([sys.executable, "-m", "zmix.cli.authority", "--state", str(state),
                               "--name", "authority-1"], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 2
        assert done.stderr == (f"error: authority authority-1 is already running from {state} "
                               f"(process {proc.pid})\n")
    done = subprocess.run([sys.executable, "-m", "zmix.cli.authority", "--state", str(state),
                           "--name", "nobody"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stderr) == (
        2, f"error: no authority named 'nobody' in {state / 'topology.yaml'}\n")


# ---------------------------------------------------------------------------- allow and evict


def test_allow_and_evict_edit_every_allowlist_and_say_what_changed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, state = make(tmp_path, authorities=("authority-1", "authority-2"),
                    allowed=("provider-1",))
    key = load_identity(state, "mix-a").public
    lists = [authority_dir(state, a) / ALLOWLIST for a in ("authority-1", "authority-2")]
    assert cli.main(["--state", str(state), "allow", "mix-a"]) == 0
    assert capsys.readouterr().out == "".join(
        f"{a}: allowed mix-a ({key.hex()})\n" for a in ("authority-1", "authority-2"))
    assert all(parse_allowlist(p.read_text(), "")[key] == "mix-a" for p in lists)
    assert cli.main(["--state", str(state), "allow", "mix-a", "--name", "authority-2"]) == 0
    assert capsys.readouterr().out.endswith("(it was already there)\n")
    assert cli.main(["--state", str(state), "evict", key.hex(), "--name", "authority-1"]) == 0
    assert key not in parse_allowlist(lists[0].read_text(), "")
    assert key in parse_allowlist(lists[1].read_text(), "")  # only the named one changed
    assert len(parse_allowlist(lists[0].read_text(), "")) == 1  # provider-1 stays
    capsys.readouterr()
    assert cli.main(["--state", str(state), "evict", "mix-a"]) == 0
    assert capsys.readouterr().out == (f"authority-1: evicted mix-a ({key.hex()}) (it was not "
                                       f"there)\nauthority-2: evicted mix-a ({key.hex()})\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["allow", "nobody"], "no identity key file for 'nobody'"),
    (["allow", "provider-1", "--name", "authority-9"], "no authority named 'authority-9'"),
    ([], "give --name AUTHORITY to run one, or a command: allow, evict")])
def test_allow_refuses_what_it_cannot_resolve_with_exit_status_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        message: str) -> None:
    _, state = make(tmp_path)
    before = (authority_dir(state, "authority-1") / ALLOWLIST).read_text()
    assert cli.main(["--state", str(state), *argv]) == 2
    assert message in capsys.readouterr().err
    assert (authority_dir(state, "authority-1") / ALLOWLIST).read_text() == before


def test_the_help_lists_the_exit_statuses() -> None:
    text = cli.build_parser().format_help()
    assert "exit status:\n  0  run: stopped cleanly" in text
    assert "\n  1  run: it failed unexpectedly" in text and "\n  2  bad usage" in text


@pytest.mark.slow
def test_a_node_allowed_by_the_command_is_in_the_next_document_and_an_evicted_one_leaves(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topology, state = make(tmp_path, allowed=("provider-1",))
    schedule = topology.epoch
    first = soon(topology)  # (the current epoch could end before the authority is up)
    peers = authority_peers(topology, state)
    caplog.set_level(logging.INFO, logger="zmix.runtime.directory")

    def document(epoch: int) -> pki.Document:
        return fetch_document(peers, 1, topology.network, schedule, epoch, timeout=LENGTH + 5)

    def command(*argv: str) -> None:
        done = subprocess.run([sys.executable, "-m", "zmix.cli.authority", "--state", str(state),
                               *argv], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr

    with running(state), context() as ctx:
        clients = upload(ctx, topology, state, [descriptor(state, topology, n, first)
                                                for n in NODES])
        assert clients[1].upload_results["authority-1"].startswith("not_allowed: ")
        assert "authority authority-1 refused our descriptor: not_allowed: " in caplog.text
        assert names(document(first)) == {"provider-1"}
        # Just after an epoch starts, its successor's vote time is half an epoch away.
        wait_for(lambda: time.time() - schedule.start(schedule.epoch_at(time.time())) < 1.0,
                 "an epoch's first second", timeout=LENGTH + 2)
        now_epoch = schedule.epoch_at(time.time())
        command("allow", "mix-a")
        wait_for(lambda: stats(state)["allowlisted"] == 2, "the allowlist to be reread", 3)
        assert names(document(now_epoch)) == {"provider-1"}  # frozen before the change
        assert names(document(now_epoch + 1)) == set(NODES)  # no new upload was needed
        command("evict", "mix-a")
        wait_for(lambda: stats(state)["allowlisted"] == 1, "the allowlist to be reread", 3)
        assert names(document(now_epoch + 1)) == set(NODES)  # frozen already: it stays
        wait_for(lambda: schedule.epoch_at(time.time()) > now_epoch, "the next epoch",
                 timeout=LENGTH + 2)
        assert names(document(now_epoch + 2)) == {"provider-1"}


def test_the_authority_core_imports_no_zmq() -> None:
    code = ("import sys\nimport zmix.authority\n"
            "assert 'zmq' not in sys.modules, 'zmix.authority imported zmq'\n"
            "import zmix.runtime.directory\nassert 'zmq' in sys.modules\n")  # the check can fail
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_identity_key_converts_to_the_curve_key_pair_the_authority_serves_with() -> None:
    public, secret = crypto.ed25519_keypair()
    curve_public = crypto.ed25519_public_to_x25519(public)
    assert crypto.x25519_base(crypto.ed25519_secret_to_x25519(secret)) == curve_public
    other, _ = crypto.ed25519_keypair()
    assert crypto.ed25519_public_to_x25519(other) != curve_public
    with pytest.raises(LocalMisuse):
        crypto.ed25519_public_to_x25519(bytes(32))  # a small-order point converts to nothing


def test_sighup_rereads_an_allowlist_whose_change_the_modification_time_does_not_show(
        tmp_path: Path) -> None:
    _, state = make(tmp_path, allowed=("provider-1",))
    path = authority_dir(state, "authority-1") / ALLOWLIST
    with running(state) as proc:
        assert stats(state)["allowlisted"] == 1
        before = path.stat()
        with open(path, "r+") as fh:  # the same inode and length, the old modification time
            fh.write(format_allowlist({load_identity(state, "mix-a").public: "provider-x"}))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        log = authority_dir(state, "authority-1") / "test.log"
        time.sleep(1.5)  # the authority looks at the file every second: it must not see this
        assert "allowlist reloaded" not in log.read_text()
        key = next(iter(parse_allowlist(path.read_text(), "")))
        assert key == load_identity(state, "mix-a").public
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "allowlist reloaded: 1 identity key(s) (provider-x)" in log.read_text(),
                 "the reload", 5)


def test_a_client_started_before_its_authority_gets_the_document_once_the_authority_is_up(
        tmp_path: Path) -> None:
    topology, state = make(tmp_path, allowed=("provider-1",))
    epoch = soon(topology)
    with context() as ctx:
        client = DirectoryClient(ctx, authority_peers(topology, state), 1, topology.network,
                                 topology.epoch)
        client.upload(descriptor(state, topology, "provider-1", epoch), time.time())
        client.want(epoch, time.time())
        quiet_until = time.monotonic() + 1.0
        while time.monotonic() < quiet_until:  # the requests go nowhere for a second
            client.on_timer(time.time())
            time.sleep(0.1)
        assert client.upload_results == {} and client.document(epoch) is None
        with running(state):
            drive([client], lambda: client.document(epoch) is not None, "the document")
        assert client.upload_results == {"authority-1": "accepted"}
        doc = client.document(epoch)
        assert doc is not None and names(doc) == {"provider-1"}


def test_restored_descriptors_count_as_kept_not_as_uploads() -> None:
    a, stranger = Node("a"), Node("s")
    c = core([a], T0)
    assert c.restore([a.blob(1000), stranger.blob(1000), forged(a.blob(1000))], T0) == 2
    assert c.statistics()["uploads_accepted"] == 0
    assert (c.statistics()["descriptors"], c.statistics()["descriptors_aside"]) == (1, 1)


def test_an_epoch_length_with_a_fraction_is_refused_when_the_authority_starts(
        tmp_path: Path) -> None:
    # The topology's loader refuses it, naming the key (the authority's own check of the
    # document's whole seconds stays behind it, for a Topology built by hand).
    _, state = make(tmp_path, length=6)
    copy = state / "topology.yaml"
    copy.write_text(copy.read_text().replace("length: 6", "length: 6.5"))
    done = subprocess.run([sys.executable, "-m", "zmix.cli.authority", "--state", str(state),
                           "--name", "authority-1"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {copy}: epoch.length: must be a whole number of "
                                  "seconds"), done.stderr
    copy.write_text(copy.read_text().replace("length: 6.5", "length: 6"))  # positive control
    assert load_topology(copy).epoch.length == 6
