"""Nodes and clients talking to the directory authorities: uploads, documents, a cache file.

:class:`DirectoryClient` keeps one DEALER per authority (CURVE, the server key derived from the
identity key pinned in the topology, docs/pki.md "Protocol") and never blocks: the caller polls
:meth:`DirectoryClient.sockets`, calls :meth:`~DirectoryClient.on_readable` when one is readable
and :meth:`~DirectoryClient.on_timer` at :meth:`~DirectoryClient.next_deadline`. It uploads a
descriptor to every authority until each answered, and asks every authority for the documents it
is told it wants until the signatures it collected over one body make a document that
:func:`zmix.pki.verify_document` accepts (``threshold`` of the pinned keys, the expected network
and epoch, in time). A request without an answer is sent again after 1 s, then 2, 4 ... up to
30 s; a NOT_YET answer is asked again when the authority says. Each authority's document is first
checked alone (its own signature, network, epoch, validity): a refusal is logged as a warning that
names the authority and the reason, and that authority's copy is not used.

:func:`fetch_document` does the same, blocking, for the command-line tools; :func:`save_cached`
and :func:`load_cached` keep the last verified document in a file (verified again when read), so
a node or client keeps working while the authorities are unreachable, until it expires.

Every ``now`` here is unix time (``time.time()``): documents are valid between unix times.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.utils import z85

from zmix import crypto, pki, wire
from zmix.epochs import EpochParams
from zmix.errors import LocalMisuse, WireError, ZmixError
from zmix.pki import WholeSeconds
from zmix.runtime import links
from zmix.topology import Topology

LOG = logging.getLogger(__name__)

RETRY_FIRST = 1.0  # seconds without an answer before a request is sent again ...
RETRY_MAX = 30.0  # ... doubling up to this
NOT_YET_MAX = 60.0  # seconds: the longest wait a NOT_YET answer can impose
ANSWER_HWM = 64  # answers waiting to be read per authority
QUEUED = 4  # requests waiting for a connection per authority


class DirectoryUnavailable(ZmixError):
    """No document the client accepts could be had in time; the message says, authority by
    authority, what happened."""


@dataclass(frozen=True, slots=True)
class AuthorityPeer:
    """An authority as a node or client knows it: its name, endpoint and pinned identity key."""

    name: str
    endpoint: str
    identity_public: bytes


def authority_peers(topology: Topology, state_dir: Path) -> list[AuthorityPeer]:
    """Return the topology's authorities with their identity keys: pinned in the topology, or
    else read from ``STATE/public/NAME.identity.json`` (ConfigError if that file is missing)."""
    from zmix.keys import load_identity_public

    return [AuthorityPeer(a.name, a.endpoint, a.identity_public
                          or load_identity_public(state_dir, a.name))
            for a in topology.authorities]


@dataclass
class _Request:
    """A request to one authority that still waits for a useful answer."""

    frame: wire.Upload | wire.FetchDocument
    due: float  # when to send it (again)
    backoff: float = RETRY_FIRST
    sent_id: int | None = None  # the request id of the copy in flight


@dataclass
class _Authority:
    peer: AuthorityPeer
    sock: zmq.Socket[bytes]
    uploads: dict[bytes, _Request] = field(default_factory=dict)  # blob -> request
    fetches: dict[int, _Request] = field(default_factory=dict)  # epoch -> request
    status: dict[int, str] = field(default_factory=dict)  # epoch -> what it said last


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], peer: AuthorityPeer,
            key: tuple[bytes, bytes]) -> zmq.Socket[bytes]:
    """Return a DEALER dialling ``peer`` over CURVE as the client key ``key`` (public,
    private). A request sent before the connection is up waits for it (so the first answer
    comes as soon as the authority is reachable); at most ``QUEUED`` wait, so the copies resent
    while an authority is down do not pile up (a send beyond that fails and is tried again)."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.maxmsgsize = wire.AUTHORITY_ANSWER_LIMIT + links.CURVE_FRAME_OVERHEAD
    sock.curve_serverkey = z85.encode(crypto.ed25519_public_to_x25519(peer.identity_public))
    sock.curve_publickey = z85.encode(key[0])
    sock.curve_secretkey = z85.encode(key[1])
    sock.reconnect_ivl = links.RECONNECT_MS
    sock.reconnect_ivl_max = links.RECONNECT_MAX_MS
    sock.heartbeat_ivl = links.HEARTBEAT_MS
    sock.heartbeat_timeout = links.HEARTBEAT_TIMEOUT_MS
    sock.connect_timeout = links.CONNECT_TIMEOUT_MS
    sock.handshake_ivl = links.CONNECT_TIMEOUT_MS
    sock.sndhwm = QUEUED
    sock.rcvhwm = ANSWER_HWM
    sock.connect(peer.endpoint)
    return sock


class DirectoryClient:
    """A node's or client's link to every directory authority of its network."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], authorities: Sequence[AuthorityPeer],
                 threshold: int, network: str, epochs: EpochParams, *,
                 client_key: tuple[bytes, bytes] | None = None) -> None:
        """``client_key`` is the CURVE key pair (public, private) to dial with; an ephemeral
        one by default. Raises LocalMisuse if ``threshold`` is not 1..len(authorities) or the
        epochs are not whole seconds."""
        if not 1 <= threshold <= len(authorities):
            raise LocalMisuse(f"the threshold must be 1..{len(authorities)}, got {threshold}")
        self.threshold = threshold
        self.network = network
        self.epochs = epochs
        self.timing = WholeSeconds.of(epochs)
        self.pinned = [a.identity_public for a in authorities]
        key = client_key or crypto.x25519_keypair()
        self._authorities = [_Authority(a, _dealer(ctx, a, key)) for a in authorities]
        self._by_socket = {a.sock: a for a in self._authorities}
        self._ids = itertools.count(1)
        self._copies: dict[int, dict[str, pki.SignedDocument]] = {}  # epoch -> name -> copy
        self._documents: dict[int, tuple[pki.Document, pki.SignedDocument]] = {}
        self.upload_results: dict[str, str] = {}  # authority -> "accepted" or its refusal

    # ------------------------------------------------------------------ the caller's requests

    def close(self) -> None:
        """Close the sockets (linger 0); the client is not used after this."""
        for a in self._authorities:
            a.sock.close(linger=0)

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """Return the sockets to poll for reading."""
        return [a.sock for a in self._authorities]

    def upload(self, blob: bytes, now: float) -> None:
        """Give the signed descriptor ``blob`` to every authority (replacing any upload not yet
        answered); see :attr:`upload_results` for the answers."""
        for a in self._authorities:
            a.uploads = {blob: _Request(wire.Upload(0, blob), now)}
            self._send_due(a, now)

    def want(self, epoch: int, now: float) -> None:
        """Fetch the document of ``epoch`` (unless it is had or asked for already)."""
        if epoch in self._documents:
            return
        self._copies.setdefault(epoch, {})
        for a in self._authorities:
            if epoch not in a.fetches and a.status.get(epoch) not in ("unknown epoch", "refused"):
                a.fetches[epoch] = _Request(wire.FetchDocument(0, epoch), now)
                self._send_due(a, now)

    def forget(self, epoch: int) -> None:
        """Stop fetching ``epoch`` and drop what was had of it."""
        self._copies.pop(epoch, None)
        self._documents.pop(epoch, None)
        for a in self._authorities:
            a.fetches.pop(epoch, None)
            a.status.pop(epoch, None)

    def document(self, epoch: int) -> pki.Document | None:
        """Return the verified document of ``epoch``, or None if there is none yet. It was
        verified when it arrived: whether it is still valid when used is the caller's question
        (``valid_until``)."""
        had = self._documents.get(epoch)
        return had[0] if had is not None else None

    def signed_document(self, epoch: int) -> pki.SignedDocument | None:
        """Return the signed document of ``epoch`` with every signature collected for it."""
        had = self._documents.get(epoch)
        return had[1] if had is not None else None

    def status(self, epoch: int) -> dict[str, str]:
        """Return, authority by authority, the last thing known of ``epoch``'s document."""
        return {a.peer.name: a.status.get(epoch, "no answer") for a in self._authorities}

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """Return when :meth:`on_timer` has work next (a request to send again), or None."""
        dues = [r.due for a in self._authorities
                for r in (*a.uploads.values(), *a.fetches.values())]
        return min(dues, default=None)

    def on_timer(self, now: float) -> None:
        """Send every request that is due (again)."""
        for a in self._authorities:
            self._send_due(a, now)

    def _send_due(self, a: _Authority, now: float) -> None:
        for request in (*a.uploads.values(), *a.fetches.values()):
            if request.due > now:
                continue
            request.sent_id = next(self._ids)
            frame = request.frame
            if isinstance(frame, wire.Upload):
                data = wire.encode_authority(wire.Upload(request.sent_id, frame.descriptor))
            else:
                data = wire.encode_authority(wire.FetchDocument(request.sent_id, frame.epoch))
            with contextlib.suppress(zmq.Again):  # QUEUED copies wait already: again later
                a.sock.send(data, zmq.NOBLOCK)
            request.due = now + request.backoff
            request.backoff = min(RETRY_MAX, request.backoff * 2)

    # ------------------------------------------------------------------ answers

    def on_readable(self, now: float) -> None:
        """Read every answer waiting on every socket."""
        for a in self._authorities:
            while True:
                try:
                    parts = a.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    frame = wire.decode_authority(parts[0]) if len(parts) == 1 else None
                except WireError:
                    frame = None
                if frame is None:
                    LOG.warning("authority %s sent a frame that does not parse", a.peer.name)
                elif isinstance(frame, wire.UploadAnswer):
                    self._on_upload_answer(a, frame)
                elif isinstance(frame, wire.DocumentAnswer):
                    self._on_document_answer(a, frame, now)

    def _on_upload_answer(self, a: _Authority, frame: wire.UploadAnswer) -> None:
        for blob, request in list(a.uploads.items()):
            if request.sent_id == frame.request_id:
                del a.uploads[blob]
                if frame.accepted:
                    self.upload_results[a.peer.name] = "accepted"
                    LOG.debug("authority %s accepted our descriptor", a.peer.name)
                else:
                    self.upload_results[a.peer.name] = frame.reason
                    LOG.warning("authority %s refused our descriptor: %s", a.peer.name,
                                frame.reason)

    def _on_document_answer(self, a: _Authority, frame: wire.DocumentAnswer, now: float) -> None:
        request = a.fetches.get(frame.epoch)
        if request is None or request.sent_id != frame.request_id:
            return  # an answer to a copy we sent before, or to nothing we asked
        if frame.status is wire.DocumentStatus.NOT_YET:
            a.status[frame.epoch] = "not yet"
            request.due = now + min(NOT_YET_MAX, frame.retry_after_ms / 1000)
            request.backoff = RETRY_FIRST
            return
        del a.fetches[frame.epoch]
        if frame.status is wire.DocumentStatus.UNKNOWN_EPOCH:
            a.status[frame.epoch] = "unknown epoch"
            LOG.info("authority %s has no document of epoch %d (unknown epoch)", a.peer.name,
                     frame.epoch)
            return
        self._on_copy(a, frame.epoch, frame.document, now)

    def _on_copy(self, a: _Authority, epoch: int, blob: bytes, now: float) -> None:
        """Check one authority's copy alone, then try the signatures of every copy of the same
        body together."""
        try:
            signed = pki.SignedDocument.decode(blob)
            own = pki.SignedDocument.of(signed.body, [
                s for s in signed.signatures if s[0] == a.peer.identity_public])
            pki.verify_document(own, [a.peer.identity_public], 1, epoch, now,
                                network=self.network, timing=self.timing)
        except (pki.InvalidDocument, pki.DocumentRefused, LocalMisuse) as exc:
            a.status[epoch] = "refused"
            LOG.warning("refused the document of epoch %d from authority %s: %s", epoch,
                        a.peer.name, exc)
            return
        a.status[epoch] = "document"
        copies = self._copies.setdefault(epoch, {})
        copies[a.peer.name] = own
        self._combine(epoch, own.body, now)

    def _combine(self, epoch: int, body: bytes, now: float) -> None:
        same = [c for c in self._copies[epoch].values() if c.body == body]
        merged = same[0]
        for copy in same[1:]:
            merged = pki.merge_signatures(merged, copy)
        try:
            doc = pki.verify_document(merged, self.pinned, self.threshold, epoch, now,
                                      network=self.network, timing=self.timing)
        except pki.DocumentRefused as exc:
            if exc.kind != "threshold":
                LOG.warning("refused the document of epoch %d: %s", epoch, exc)
            elif not any(epoch in a.fetches for a in self._authorities):
                LOG.warning("no document of epoch %d: the authorities' copies differ or too few "
                            "answered (%s)", epoch, exc)
            return
        self._documents[epoch] = (doc, merged)
        for a in self._authorities:  # enough signatures: stop asking
            a.fetches.pop(epoch, None)
        LOG.info("document of epoch %d: %d node(s), signed by %d authorities", epoch,
                 len(doc.nodes), len(merged.signatures))


# ---------------------------------------------------------------------------- blocking use


def fetch_document(authorities: Sequence[AuthorityPeer], threshold: int, network: str,
                   epochs: EpochParams, epoch: int, timeout: float) -> pki.Document:
    """Return the verified document of ``epoch``, waiting up to ``timeout`` seconds; raise
    DirectoryUnavailable, saying what each authority answered, if there is none by then."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        client = DirectoryClient(ctx, authorities, threshold, network, epochs)
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        for sock in client.sockets():
            poller.register(sock, zmq.POLLIN)
        client.want(epoch, time.time())
        while (doc := client.document(epoch)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                said = ", ".join(f"{n}: {s}" for n, s in client.status(epoch).items())
                raise DirectoryUnavailable(f"no document of epoch {epoch} signed by {threshold} "
                                           f"of {len(authorities)} authorities within "
                                           f"{timeout:g} s ({said})")
            due = client.next_deadline()
            wait = left if due is None else min(left, max(0.0, due - time.time()))
            if poller.poll(int(wait * 1000) + 1):
                client.on_readable(time.time())
            client.on_timer(time.time())
        return doc
    finally:
        ctx.destroy(linger=0)


def ping(peer: AuthorityPeer, timeout: float) -> bool:
    """Return True if the authority ``peer`` answered a request within ``timeout`` seconds over
    CURVE with its pinned key (any answer: it is up and holds its identity key)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = _dealer(ctx, peer, crypto.x25519_keypair())
        sock.send(wire.encode_authority(wire.FetchDocument(1, 0)))
        if not sock.poll(int(timeout * 1000)):
            return False
        try:
            return isinstance(wire.decode_authority(sock.recv()), wire.DocumentAnswer)
        except WireError:
            return False
    finally:
        ctx.destroy(linger=0)


# ---------------------------------------------------------------------------- the cache file


def save_cached(path: Path, signed: pki.SignedDocument) -> None:
    """Write ``signed`` to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(signed.encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_cached(path: Path, pinned: Sequence[bytes], threshold: int, network: str,
                epochs: EpochParams, now: float) -> tuple[pki.Document, pki.SignedDocument] | None:
    """Return the document cached in ``path`` and its signed form if it is still acceptable at
    ``now`` (verified again, as if just fetched, for the epoch it names); None if there is no
    file, and None with a warning saying why if it is refused (expired, say)."""
    try:
        signed = pki.SignedDocument.decode(path.read_bytes())
        epoch = pki.decode_document(signed.body).epoch
        doc = pki.verify_document(signed, pinned, threshold, epoch, now, network=network,
                                  timing=WholeSeconds.of(epochs))
    except FileNotFoundError:
        return None
    except (OSError, pki.InvalidDocument, pki.DocumentRefused) as exc:
        # An expired one is the normal end of a cached document; anything else is not.
        expired = isinstance(exc, pki.DocumentRefused) and exc.kind == "expired"
        LOG.log(logging.DEBUG if expired else logging.WARNING,
                "the cached document in %s is not used: %s", path, exc)
        return None
    return doc, signed
