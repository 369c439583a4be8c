"""A directory authority's sans-IO core: descriptors in, one frozen signed document per epoch out.

The authority keeps the latest valid descriptor of each node identity (an upload is refused, with
a reason, if it does not open, is of another network or its identity key is not on the
allowlist). The document of epoch ``E`` is *frozen* (built with :func:`zmix.pki.build_document`,
signed, handed to the runtime to persist) at ``vote(E) = start(E) - length / 2`` as soon as every
allowlisted identity has a descriptor with a Sphinx key for ``E``, and at the latest ``wait =
min(length / 4, 30 s)`` after ``max(vote(E), the authority's start)`` with whatever it has. Once
frozen a document never changes; the runtime persists it and gives it back to a restarted core,
which serves the same bytes. docs/pki.md, "Schedule", says why these times.

The allowlist (:func:`parse_allowlist`) can be replaced at any time; it only matters to documents
frozen after the change, so an admitted node carries traffic from the next epoch on and an evicted
one is left out of the next document.

Sans-IO: every method takes ``now`` (unix seconds); nothing here reads a clock or a file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from zmix import pki, wire
from zmix.epochs import EpochParams
from zmix.errors import ConfigError
from zmix.keys import IdentityKey
from zmix.pki import WholeSeconds
from zmix.sphinx import SphinxParams
from zmix.topology import LoopixParams

MAX_WAIT = 30.0  # seconds an authority waits for missing descriptors after the vote time
KEEP_EPOCHS = 3  # documents of this many past epochs are kept (and served) besides the current
RETRY_MIN = 0.1  # seconds: the shortest "ask again" an authority gives
RETRY_MAX = 1.0  # seconds: how often to ask while a document may freeze at any moment
MAX_ASIDE = 256  # valid descriptors of identity keys not on the allowlist kept, at most

# Why an upload was refused; the value is the reason's first word and the counter's suffix.
REFUSE_INVALID = "invalid"  # does not open: malformed, or the signature does not verify
REFUSE_NETWORK = "other_network"
REFUSE_NOT_ALLOWED = "not_allowed"
REFUSALS = (REFUSE_INVALID, REFUSE_NETWORK, REFUSE_NOT_ALLOWED)

_HEX_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class DocumentParams:
    """What an authority puts in every document besides the nodes: the topology's schedule (whole
    seconds), Sphinx geometry and Loopix parameters (as floats)."""

    timing: WholeSeconds
    sphinx: SphinxParams
    loopix: LoopixParams

    @staticmethod
    def of(epochs: EpochParams, sphinx: SphinxParams, loopix: LoopixParams) -> DocumentParams:
        """Return the parameters of a topology's sections; LocalMisuse as
        :meth:`WholeSeconds.of`."""
        floats = LoopixParams(**{f.name: float(getattr(loopix, f.name))
                                 for f in fields(LoopixParams)})
        return DocumentParams(WholeSeconds.of(epochs), sphinx, floats)


@dataclass(frozen=True, slots=True)
class UploadResult:
    """What became of an upload: accepted, or refused with ``reason`` (a REFUSALS word, a colon
    and the details) for the node to log."""

    accepted: bool
    reason: str = ""
    name: str = "?"  # the descriptor's node name, if it opened
    stored: bytes | None = None  # the identity key it is now kept under (to persist), if any


@dataclass(frozen=True, slots=True)
class Frozen:
    """A document frozen by :meth:`AuthorityCore.on_timer`: persist ``blob`` (the encoded
    :class:`zmix.pki.SignedDocument`) as the document of ``epoch``; ``left_out`` names the
    descriptors it does not carry and why."""

    epoch: int
    blob: bytes
    nodes: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The answer to a FETCH_DOCUMENT (see :class:`zmix.wire.DocumentAnswer`)."""

    status: wire.DocumentStatus
    blob: bytes = b""
    retry_after: float = 0.0  # seconds


class AuthorityCore:
    """One authority's descriptors, allowlist and frozen documents."""

    def __init__(self, network: str, epochs: EpochParams, params: DocumentParams,
                 identity: IdentityKey, allowlist: Iterable[bytes], now: float,
                 frozen: Mapping[int, bytes] | None = None) -> None:
        """``frozen`` holds the documents a previous run persisted (epoch -> signed blob); they
        are served as they are and never rebuilt. Raises LocalMisuse if ``params`` cannot make
        a document (found now, not at the first vote time)."""
        p = params
        pki.build_document(network, epochs.epoch_at(now), [], [], timing=p.timing,
                           sphinx=p.sphinx, loopix=p.loopix)
        self.network = network
        self.epochs = epochs
        self.params = params
        self.identity = identity
        self.allowlist = frozenset(allowlist)
        self.started = now
        self.wait = min(epochs.length / 4, MAX_WAIT)
        self.frozen: dict[int, bytes] = dict(frozen or {})
        self.descriptors: dict[bytes, tuple[int, bytes, str]] = {}  # identity -> (pub, blob, name)
        self._keys: dict[bytes, frozenset[int]] = {}  # identity -> epochs it has Sphinx keys for
        self.counters: dict[str, int] = {
            "uploads_accepted": 0, **{f"uploads_refused_{r}": 0 for r in REFUSALS},
            "fetches": 0, "documents_frozen": 0, "malformed": 0}

    # ------------------------------------------------------------------ uploads

    def set_allowlist(self, keys: Iterable[bytes]) -> None:
        """Use ``keys`` for every document frozen from now on (frozen ones stay as they are)."""
        self.allowlist = frozenset(keys)

    def upload(self, blob: bytes, now: float) -> UploadResult:
        """Keep a node's signed descriptor blob if it opens, is of this network and its identity
        key is allowlisted (replacing an older one of that identity: a descriptor published for an
        earlier epoch than the one kept is refused as stale); return what became of it."""
        try:
            d = pki.open_descriptor(blob)
        except pki.InvalidDocument as exc:
            return self._refuse(REFUSE_INVALID, exc.reason)
        if d.network != self.network:
            return self._refuse(REFUSE_NETWORK, f"descriptor of {d.name!r} is for network "
                                f"{d.network!r}, this authority serves {self.network!r}", d.name)
        kept = self.descriptors.get(d.identity_public)
        if kept is not None and d.published_at_epoch < kept[0]:
            return self._refuse(REFUSE_INVALID, f"descriptor of {d.name!r} published for epoch "
                                f"{d.published_at_epoch} is older than the one kept "
                                f"({kept[0]})", d.name)
        allowed = d.identity_public in self.allowlist
        # A valid descriptor of a key not (yet) allowed is kept aside, a bounded number of them,
        # so that admitting the node takes effect at the next document without a new upload.
        stored = None
        if allowed or kept is not None or self._aside() < MAX_ASIDE:
            self.descriptors[d.identity_public] = (d.published_at_epoch, blob, d.name)
            self._keys[d.identity_public] = frozenset(e for e, _ in d.sphinx_keys)
            stored = d.identity_public
        if not allowed:
            refused = self._refuse(REFUSE_NOT_ALLOWED, f"identity key {d.identity_public.hex()} "
                                   f"of {d.name!r} is not on the allowlist", d.name)
            return UploadResult(False, refused.reason, d.name, stored)
        self.counters["uploads_accepted"] += 1
        return UploadResult(True, name=d.name, stored=stored)

    def restore(self, blobs: Iterable[bytes], now: float) -> int:
        """Take back the descriptors a previous run kept (checked again, as uploads, but not
        counted as uploads); return how many were kept."""
        saved = dict(self.counters)
        kept = sum(1 for blob in blobs if self.upload(blob, now).stored is not None)
        self.counters = saved
        return kept

    def _aside(self) -> int:
        return sum(1 for key in self.descriptors if key not in self.allowlist)

    def _refuse(self, kind: str, detail: str, name: str = "?") -> UploadResult:
        self.counters[f"uploads_refused_{kind}"] += 1
        return UploadResult(False, f"{kind}: {detail}"[:wire.MAX_TEXT_BYTES], name)

    def complete(self, epoch: int) -> bool:
        """Return True if every allowlisted identity has a descriptor with a key for ``epoch``."""
        return all(epoch in self._keys.get(key, ()) for key in self.allowlist)

    # ------------------------------------------------------------------ documents

    def vote_time(self, epoch: int) -> float:
        """Return the earliest time the document of ``epoch`` is frozen: half an epoch before
        it starts."""
        return self.epochs.vote_time(epoch)

    def deadline(self, epoch: int) -> float:
        """Return the time the document of ``epoch`` is frozen at the latest."""
        return max(self.vote_time(epoch), self.started) + self.wait

    def _candidates(self, now: float) -> range:
        """The epochs whose documents may be frozen at ``now``: the current and the next."""
        current = self.epochs.epoch_at(now)
        return range(current, current + 2)

    def on_timer(self, now: float) -> tuple[list[Frozen], list[int]]:
        """Freeze every document due at ``now``; return them (to persist) and the epochs whose
        documents are now too old to keep (to delete)."""
        made = []
        for epoch in self._candidates(now):
            if epoch in self.frozen or now < self.vote_time(epoch):
                continue
            if self.complete(epoch) or now >= self.deadline(epoch):
                made.append(self._freeze(epoch))
        oldest = self.epochs.epoch_at(now) - KEEP_EPOCHS
        forget = sorted(e for e in self.frozen if e < oldest)
        for epoch in forget:
            del self.frozen[epoch]
        return made, forget

    def _freeze(self, epoch: int) -> Frozen:
        p = self.params
        doc, left_out = pki.build_document(
            self.network, epoch, [blob for _, blob, _ in self.descriptors.values()],
            self.allowlist, timing=p.timing, sphinx=p.sphinx, loopix=p.loopix)
        body = pki.encode_document(doc)
        signature = pki.sign_document(body, self.identity.secret)
        blob = pki.SignedDocument.of(body, [(self.identity.public, signature)]).encode()
        self.frozen[epoch] = blob
        self.counters["documents_frozen"] += 1
        return Frozen(epoch, blob, tuple(n.name for n in doc.nodes), left_out)

    def next_deadline(self, now: float) -> float:
        """Return the next time :meth:`on_timer` may have work: a vote time, a freeze deadline
        or the next epoch (old documents to forget), whichever comes first after ``now``."""
        times = [self.epochs.end(self.epochs.epoch_at(now))]
        for epoch in self._candidates(now):
            if epoch not in self.frozen:
                times += [t for t in (self.vote_time(epoch), self.deadline(epoch)) if t > now]
        return min(times)

    def fetch(self, epoch: int, now: float) -> FetchResult:
        """Return the answer to a request for the document of ``epoch`` at ``now``."""
        self.counters["fetches"] += 1
        blob = self.frozen.get(epoch)
        if blob is not None:
            return FetchResult(wire.DocumentStatus.DOCUMENT, blob)
        current = self.epochs.epoch_at(now)
        # Deleted, never made (its epoch ended first) or too far ahead. One epoch more than the
        # next is "not yet": an asker whose clock runs a little ahead of ours near a boundary.
        if not current <= epoch <= current + 2:
            return FetchResult(wire.DocumentStatus.UNKNOWN_EPOCH)
        vote = self.vote_time(epoch)
        retry = vote - now if now < vote else min(RETRY_MAX, self.deadline(epoch) - now)
        return FetchResult(wire.DocumentStatus.NOT_YET, retry_after=max(RETRY_MIN, retry))

    def statistics(self) -> dict[str, int]:
        """Return the counters (docs/pki.md, "Operations") and the current levels."""
        return {**self.counters, "descriptors": len(self.descriptors) - self._aside(),
                "descriptors_aside": self._aside(),
                "allowlisted": len(self.allowlist), "documents": len(self.frozen)}


# ---------------------------------------------------------------------------- the allowlist file


def parse_allowlist(text: str, path: str) -> dict[bytes, str]:
    """Return the identity keys of an allowlist file and their names ("" if none): one key in
    lowercase hexadecimal per line, optionally followed by ``# NAME``; blank lines and lines
    starting with ``#`` are ignored. Raises ConfigError naming the line for anything else."""
    keys: dict[bytes, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        entry, _, comment = line.partition("#")
        entry = entry.strip()
        if not entry:
            continue
        if not _HEX_KEY.fullmatch(entry.lower()):
            raise ConfigError(path, f"line {number}", f"not an identity key (64 hexadecimal "
                              f"digits, then optionally '# name'): {line.strip()[:80]!r}")
        keys[bytes.fromhex(entry)] = comment.strip()
    return keys


def format_allowlist(keys: Mapping[bytes, str]) -> str:
    """Return the text of an allowlist file holding ``keys`` (key -> name), sorted by name."""
    rows = sorted(keys.items(), key=lambda item: (item[1], item[0]))
    return "".join(f"{key.hex()}  # {name}\n" if name else f"{key.hex()}\n" for key, name in rows)
