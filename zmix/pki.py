"""Signed descriptors and signed network documents: the directory authority's pure core.

A node describes itself in a :class:`Descriptor` signed with its long-term Ed25519 identity key
(:func:`sign_descriptor`, :func:`open_descriptor`). An authority builds one deterministic
:class:`Document` per epoch from the valid, allowlisted descriptors (:func:`build_document`) and
signs its canonical bytes (:func:`sign_document`); signatures of several authorities over the same
bytes are collected in a :class:`SignedDocument` (:func:`merge_signatures`), and a client or node
accepts it if at least ``threshold`` of the authority keys it pins signed it, for the epoch it
expects, in time (:func:`verify_document`). docs/pki.md gives every format byte for byte.

No sockets, files or clocks here: the runtime passes the bytes, the allowlist and ``now`` in.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from zmix import crypto
from zmix.epochs import EpochParams
from zmix.errors import LocalMisuse, ZmixError
from zmix.sphinx import WIRE_PROFILES, Profile, SphinxParams
from zmix.topology import MAX_DELAY, MAX_RATE, LoopixParams, entity_id, valid_name

__all__ = [
    "DESCRIPTOR_CONTEXT",
    "DOCUMENT_CONTEXT",
    "KEY_EPOCHS",
    "SIGNED_DOCUMENT_MAGIC",
    "Descriptor",
    "Document",
    "DocumentRefused",
    "EpochTiming",
    "InvalidDocument",
    "NodeEntry",
    "SignedDocument",
    "WholeSeconds",
    "build_document",
    "canonical_json",
    "decode_document",
    "default_threshold",
    "document_problem",
    "encode_descriptor",
    "encode_document",
    "merge_signatures",
    "open_descriptor",
    "sign_descriptor",
    "sign_document",
    "verify_document",
]

# Signatures cover a context string, a zero byte and the body, so that a signature made for one
# purpose can never be taken for another (a descriptor for a document, or for what a later version
# signs with the same identity key).
DESCRIPTOR_CONTEXT = b"zmix-descriptor-v1"
DOCUMENT_CONTEXT = b"zmix-document-v1"
SIGNED_DOCUMENT_MAGIC = b"ZSD1"
KEY_EPOCHS = 3  # a document carries each node's Sphinx keys for its epoch and the next two

MAX_DESCRIPTOR_BYTES = 16 * 1024
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
MAX_SIGNATURES = 255  # the count is one byte
MAX_SPHINX_KEYS = 8  # per descriptor: the node publishes `ahead` + 1 of them (normally 3)
MAX_EPOCH = 2**48  # bounds every epoch number and unix time, far beyond any real one
MAX_HOST = 253
_SIGNATURE_RECORD = crypto.ED25519_PUBLIC_BYTES + crypto.SIGNATURE_BYTES
ROLES = ("mixnode", "provider")


class InvalidDocument(ZmixError):
    """A descriptor or document is malformed or its signature is wrong; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DocumentRefused(ZmixError):
    """A signed network document was refused. ``kind`` names the check for counters (malformed,
    forged, threshold, network, epoch, params, not_yet_valid, expired); ``reason`` and the
    message say what is wrong in words."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


class EpochTiming(Protocol):
    """What a document needs of the epoch schedule (zmix.epochs.EpochParams fits)."""

    @property
    def length(self) -> int: ...
    @property
    def origin(self) -> int: ...
    @property
    def grace(self) -> int: ...


@dataclass(frozen=True, slots=True)
class WholeSeconds:
    """An epoch schedule in whole seconds, as documents carry it (an :class:`EpochTiming`)."""

    length: int
    origin: int
    grace: int

    @staticmethod
    def of(epochs: EpochParams) -> WholeSeconds:
        """Return ``epochs`` in whole seconds; LocalMisuse if the length, origin or grace has a
        fraction (a document could not carry it)."""
        timing = (epochs.length, epochs.origin, epochs.grace)
        if any(float(v) != math.floor(v) for v in timing):
            raise LocalMisuse("network documents need the epoch length, origin and grace in "
                              f"whole seconds, got {timing}")
        return WholeSeconds(int(epochs.length), int(epochs.origin), int(epochs.grace))

    @staticmethod
    def of_document(doc: Document) -> WholeSeconds:
        """Return the schedule ``doc`` carries."""
        return WholeSeconds(doc.epoch_length, doc.epoch_origin, doc.epoch_grace)


# ---------------------------------------------------------------------------- canonical JSON


def canonical_json(value: object) -> bytes:
    """Return the canonical encoding of ``value``: JSON, keys sorted, no spaces, ASCII only
    (other characters as \\uXXXX escapes), no NaN or infinity. Raises LocalMisuse otherwise."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LocalMisuse(f"not encodable canonically: {exc}") from None
    return text.encode("ascii")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice")
    return result


def _parse_canonical(body: bytes, what: str) -> dict[str, Any]:
    """Return the JSON object in ``body``; InvalidDocument unless it parses and is already in
    canonical form (so each value has exactly one encoding, and one signature)."""
    try:
        value = json.loads(body.decode("ascii"), parse_constant=_refuse_constant,
                           object_pairs_hook=_unique_object)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidDocument(f"{what} is not ASCII JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidDocument(f"{what} is not a JSON object")
    try:
        if canonical_json(value) != body:
            raise InvalidDocument(f"{what} is not in canonical form")
    except LocalMisuse:  # pragma: no cover - parse_constant already refused what could not encode
        raise InvalidDocument(f"{what} is not in canonical form") from None
    return value


# ---------------------------------------------------------------------------- field checks


def _is_int(value: object, low: int = 0, high: int = MAX_EPOCH) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _field(obj: dict[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise InvalidDocument(f"{what}: {key} is missing")
    return obj[key]


def _exact_keys(obj: dict[str, Any], keys: Iterable[str], what: str) -> None:
    extra = sorted(set(obj) - set(keys))
    missing = sorted(set(keys) - set(obj))
    if extra or missing:
        raise InvalidDocument(f"{what}: unexpected fields {extra}, missing fields {missing}")


def _int_field(obj: dict[str, Any], key: str, what: str, low: int = 0,
               high: int = MAX_EPOCH) -> int:
    value = _field(obj, key, what)
    if not _is_int(value, low, high):
        raise InvalidDocument(f"{what}: {key} must be an integer {low}..{high}, got {value!r}")
    return int(value)


def _hex_field(obj: dict[str, Any], key: str, size: int, what: str) -> bytes:
    value = _field(obj, key, what)
    if not isinstance(value, str) or len(value) != 2 * size or value != value.lower():
        raise InvalidDocument(f"{what}: {key} must be {size} bytes in lowercase hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise InvalidDocument(f"{what}: {key} must be {size} bytes in lowercase hex") from None


def _valid_host(host: object) -> bool:
    return (isinstance(host, str) and 0 < len(host) <= MAX_HOST
            and all(33 <= ord(c) <= 126 and c not in '"\\' for c in host))


# ---------------------------------------------------------------------------- descriptors


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What a node says about itself, signed with its identity key (docs/pki.md).

    ``sphinx_keys`` holds ``(epoch, X25519 public key)`` pairs in increasing epoch order;
    ``layer`` is the mixnode's layer (0-based) and None for a provider.
    """

    network: str
    name: str
    id: bytes
    role: str
    layer: int | None
    host: str
    port: int
    curve_public: bytes
    identity_public: bytes
    sphinx_keys: tuple[tuple[int, bytes], ...]
    published_at_epoch: int


def _descriptor_problem(d: Descriptor) -> str | None:
    """Return what is wrong with ``d`` apart from its signature, or None."""
    if not valid_name(d.network) or not valid_name(d.name):
        return ("network and name must be names of 1-64 letters, digits, '_', '.' or '-', "
                "not . or ..")
    if d.id != entity_id(d.network, d.name):
        return f"id is not the id of {d.name!r} in network {d.network!r}"
    if d.role not in ROLES:
        return f"role must be mixnode or provider, got {d.role!r}"
    if d.role == "mixnode" and not _is_int(d.layer, 0, 255):
        return "a mixnode needs a layer (an integer 0..255)"
    if d.role == "provider" and d.layer is not None:
        return "a provider has no layer"
    if not _valid_host(d.host) or not _is_int(d.port, 1, 65535):
        return ("host must be 1-253 printable ASCII characters other than space, '\"' and "
                "'\\', port 1..65535")
    if len(d.curve_public) != 32 or len(d.identity_public) != 32:
        return "curve_public and identity_public must be 32 bytes"
    if not _is_int(d.published_at_epoch):
        return "published_at_epoch must be an integer >= 0"
    return _sphinx_keys_problem(d.sphinx_keys)


def _sphinx_keys_problem(keys: tuple[tuple[int, bytes], ...]) -> str | None:
    if not 1 <= len(keys) <= MAX_SPHINX_KEYS:
        return f"there must be 1..{MAX_SPHINX_KEYS} Sphinx keys, got {len(keys)}"
    epochs = [epoch for epoch, _ in keys]
    if not all(_is_int(e) for e in epochs) or epochs != sorted(set(epochs)):
        return "Sphinx key epochs must be integers >= 0 in increasing order, each once"
    for epoch, key in keys:
        if len(key) != 32 or crypto.has_small_order(key):
            return f"the Sphinx key of epoch {epoch} is not a usable X25519 public key"
    return None


def _descriptor_json(d: Descriptor) -> dict[str, Any]:
    return {"type": "zmix-descriptor", "version": 1, "network": d.network, "name": d.name,
            "id": d.id.hex(), "role": d.role, "layer": d.layer, "host": d.host, "port": d.port,
            "curve_public": d.curve_public.hex(), "identity_public": d.identity_public.hex(),
            "sphinx_keys": [[epoch, key.hex()] for epoch, key in d.sphinx_keys],
            "published_at_epoch": d.published_at_epoch}


def encode_descriptor(d: Descriptor) -> bytes:
    """Return the canonical body of ``d``; LocalMisuse if a field is not valid."""
    problem = _descriptor_problem(d)
    if problem is not None:
        raise LocalMisuse(f"descriptor of {d.name!r}: {problem}")
    return canonical_json(_descriptor_json(d))


def sign_descriptor(d: Descriptor, identity_secret: bytes) -> bytes:
    """Return the signed descriptor blob: canonical body, then the 64-byte Ed25519 signature of
    ``DESCRIPTOR_CONTEXT || 0x00 || body``. LocalMisuse if ``identity_secret`` is not the key
    of ``d.identity_public`` or a field is not valid."""
    if crypto.ed25519_public(identity_secret) != d.identity_public:
        raise LocalMisuse(f"descriptor of {d.name!r}: the secret is not that of identity_public")
    body = encode_descriptor(d)
    return body + crypto.sign(identity_secret, DESCRIPTOR_CONTEXT + b"\0" + body)


def open_descriptor(blob: bytes) -> Descriptor:
    """Return the descriptor in a signed blob. Raises InvalidDocument if the blob is too long or
    short, its body is not canonical JSON of the documented fields, the signature by its own
    identity key does not verify, or its id is not ``entity_id(network, name)``."""
    if not crypto.SIGNATURE_BYTES < len(blob) <= MAX_DESCRIPTOR_BYTES:
        raise InvalidDocument(f"a signed descriptor is 65..{MAX_DESCRIPTOR_BYTES} bytes, "
                              f"got {len(blob)}")
    body, signature = blob[:-crypto.SIGNATURE_BYTES], blob[-crypto.SIGNATURE_BYTES:]
    obj = _parse_canonical(body, "descriptor")
    d = _descriptor_from_json(obj)
    if not crypto.verify(d.identity_public, DESCRIPTOR_CONTEXT + b"\0" + body, signature):
        raise InvalidDocument(f"descriptor of {d.name!r}: the signature does not verify")
    problem = _descriptor_problem(d)
    if problem is not None:
        raise InvalidDocument(f"descriptor of {d.name!r}: {problem}")
    return d


def _descriptor_from_json(obj: dict[str, Any]) -> Descriptor:
    what = "descriptor"
    _exact_keys(obj, _descriptor_json(_PLACEHOLDER).keys(), what)
    if obj["type"] != "zmix-descriptor" or not _is_int(obj["version"], 1, 1):
        raise InvalidDocument("descriptor: not a zmix descriptor of version 1")
    for key in ("network", "name", "role", "host"):
        if not isinstance(obj[key], str):
            raise InvalidDocument(f"{what}: {key} must be a string")
    what = f"descriptor of {obj['name']!r}"
    layer = obj["layer"]
    if layer is not None and not _is_int(layer, 0, 255):
        raise InvalidDocument(f"{what}: layer must be null or an integer 0..255")
    return Descriptor(obj["network"], obj["name"], _hex_field(obj, "id", 16, what), obj["role"],
                      layer, obj["host"], _int_field(obj, "port", what, 1, 65535),
                      _hex_field(obj, "curve_public", 32, what),
                      _hex_field(obj, "identity_public", 32, what),
                      _sphinx_keys_from_json(obj["sphinx_keys"], what),
                      _int_field(obj, "published_at_epoch", what))


def _sphinx_keys_from_json(value: object, what: str) -> tuple[tuple[int, bytes], ...]:
    if not isinstance(value, list) or len(value) > MAX_SPHINX_KEYS:
        raise InvalidDocument(f"{what}: sphinx_keys must be a list of at most "
                              f"{MAX_SPHINX_KEYS} [epoch, key] pairs")
    keys = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2 or not _is_int(pair[0]):
            raise InvalidDocument(f"{what}: sphinx_keys entries must be [epoch, key hex]")
        keys.append((int(pair[0]), _hex_field({"key": pair[1]}, "key", 32, what)))
    return tuple(keys)


# A descriptor whose only use is to list the fields of the JSON form (one list, not two to keep
# in step).
_PLACEHOLDER = Descriptor("n", "n", bytes(16), "provider", None, "h", 1, bytes(32), bytes(32),
                          (), 0)


# ---------------------------------------------------------------------------- documents


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One node of a document: its descriptor's fields, with the Sphinx keys of the document's
    epoch and the next two that the descriptor had (that of the epoch itself always)."""

    name: str
    id: bytes
    role: str
    layer: int | None
    host: str
    port: int
    curve_public: bytes
    identity_public: bytes
    sphinx_keys: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class Document:
    """The network for one epoch, as the authorities publish it (docs/pki.md).

    ``valid_after`` is the start of the epoch and ``valid_until`` its end plus the grace period,
    in unix seconds; ``nodes`` are sorted by name.
    """

    network: str
    epoch: int
    valid_after: int
    valid_until: int
    epoch_length: int
    epoch_origin: int
    epoch_grace: int
    max_hops: int
    payload_length: int
    loopix: LoopixParams
    nodes: tuple[NodeEntry, ...]
    profile: Profile = Profile.V1  # the Sphinx profile (docs/sphinx.md); v1 is not written

    @property
    def sphinx(self) -> SphinxParams:
        """The packet geometry and profile the document gives (LocalMisuse if unusable)."""
        return SphinxParams(self.max_hops, self.payload_length, self.profile)

    def node(self, name: str) -> NodeEntry:
        """Return the entry of node ``name``; KeyError if the document has none."""
        for entry in self.nodes:
            if entry.name == name:
                return entry
        raise KeyError(name)


def _window(epoch: int, timing: EpochTiming) -> tuple[int, int]:
    """Return (valid_after, valid_until) of the document of ``epoch``."""
    start = timing.origin + epoch * timing.length
    return start, start + timing.length + timing.grace


def _timing_problem(length: object, origin: object, grace: object) -> str | None:
    if not _is_int(length, 1) or not _is_int(origin) or not _is_int(grace):
        return "epoch length must be an integer >= 1, origin and grace integers >= 0"
    assert isinstance(length, int) and isinstance(grace, int)  # for mypy: checked above
    if not 2 * grace < length:
        return f"epoch grace ({grace} s) must be less than half the epoch length ({length} s)"
    return None


def _loopix_problem(p: LoopixParams) -> str | None:
    values = {f.name: getattr(p, f.name) for f in fields(LoopixParams)}
    for name, value in values.items():
        if not isinstance(value, float) or not math.isfinite(value) or value < 0:
            return f"loopix {name} must be a finite float >= 0, got {value!r}"
    for name in ("payload_rate", "loop_rate", "drop_rate", "mix_loop_rate"):
        if values[name] > MAX_RATE:
            return f"loopix {name} must be <= {MAX_RATE}"
    for name in ("payload_rate", "fetch_interval", "max_delay"):
        if values[name] <= 0:
            return f"loopix {name} must be > 0"
    if not p.mean_delay <= p.max_delay <= MAX_DELAY:
        return "loopix max_delay must be at least mean_delay and at most the wire's limit"
    return None


def document_problem(doc: Document) -> str | None:
    """Return why ``doc``'s parameters do not hold together, or None: the validity window is not
    that of its epoch, the epoch timing, Sphinx geometry or Loopix parameters are out of range,
    or a node is out of order, twice, or lacks the Sphinx key of the epoch."""
    if not valid_name(doc.network) or not _is_int(doc.epoch):
        return "the network must be a name and the epoch an integer >= 0"
    problem = _timing_problem(doc.epoch_length, doc.epoch_origin, doc.epoch_grace)
    if problem is not None:
        return problem
    if (doc.valid_after, doc.valid_until) != _window(doc.epoch, WholeSeconds.of_document(doc)):
        return (f"valid_after/valid_until ({doc.valid_after}, {doc.valid_until}) are not the "
                f"start of epoch {doc.epoch} and its end plus the grace period")
    if doc.profile not in WIRE_PROFILES:
        return f"sphinx: profile {doc.profile!r} is not a wire profile"
    try:
        doc.sphinx  # noqa: B018 - built to be checked
    except LocalMisuse as exc:
        return f"sphinx: {exc}"
    return _loopix_problem(doc.loopix) or _nodes_problem(doc)


def _nodes_problem(doc: Document) -> str | None:
    names = [n.name for n in doc.nodes]
    if names != sorted(set(names)) or len({n.id for n in doc.nodes}) != len(names):
        return "nodes must be sorted by name, each name and id once"
    if len({n.identity_public for n in doc.nodes}) != len(names):
        return "two nodes have the same identity key"
    wanted = range(doc.epoch, doc.epoch + KEY_EPOCHS)
    for n in doc.nodes:
        d = Descriptor(doc.network, n.name, n.id, n.role, n.layer, n.host, n.port,
                       n.curve_public, n.identity_public, n.sphinx_keys, 0)
        problem = _descriptor_problem(d)
        if problem is None and (not n.sphinx_keys or n.sphinx_keys[0][0] != doc.epoch
                                or any(e not in wanted for e, _ in n.sphinx_keys)):
            problem = f"Sphinx keys must be those of epochs {doc.epoch}..{doc.epoch + 2}, " \
                      f"that of {doc.epoch} at least"
        if problem is not None:
            return f"node {n.name!r}: {problem}"
    return None


def _entry_json(n: NodeEntry) -> dict[str, Any]:
    return {"name": n.name, "id": n.id.hex(), "role": n.role, "layer": n.layer, "host": n.host,
            "port": n.port, "curve_public": n.curve_public.hex(),
            "identity_public": n.identity_public.hex(),
            "sphinx_keys": [[epoch, key.hex()] for epoch, key in n.sphinx_keys]}


def encode_document(doc: Document) -> bytes:
    """Return the canonical bytes of ``doc`` (what authorities sign); LocalMisuse if its
    parameters do not hold together (:func:`document_problem`)."""
    problem = document_problem(doc)
    if problem is not None:
        raise LocalMisuse(f"document for epoch {doc.epoch}: {problem}")
    return canonical_json({
        "type": "zmix-document", "version": 1, "network": doc.network, "epoch": doc.epoch,
        "valid_after": doc.valid_after, "valid_until": doc.valid_until,
        "epoch_params": {"length": doc.epoch_length, "origin": doc.epoch_origin,
                         "grace": doc.epoch_grace},
        "sphinx": _sphinx_json(doc),
        "loopix": {f.name: getattr(doc.loopix, f.name) for f in fields(LoopixParams)},
        "nodes": [_entry_json(n) for n in doc.nodes]})


def _sphinx_json(doc: Document) -> dict[str, Any]:
    """The document's ``sphinx`` object: ``profile`` only when it is not v1, so that a v1
    document is the same bytes as before profiles existed."""
    sphinx: dict[str, Any] = {"max_hops": doc.max_hops, "payload_length": doc.payload_length}
    if doc.profile is not Profile.V1:
        sphinx["profile"] = doc.profile.value
    return sphinx


_DOCUMENT_KEYS = ("type", "version", "network", "epoch", "valid_after", "valid_until",
                  "epoch_params", "sphinx", "loopix", "nodes")


def decode_document(body: bytes) -> Document:
    """Return the document whose canonical bytes are ``body``. Raises InvalidDocument if it is
    too long, not canonical JSON, lacks or adds a field or has one of the wrong type. Whether
    its parameters hold together is :func:`document_problem`'s question."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise InvalidDocument(f"a document is at most {MAX_DOCUMENT_BYTES} bytes")
    obj = _parse_canonical(body, "document")
    _exact_keys(obj, _DOCUMENT_KEYS, "document")
    if obj["type"] != "zmix-document" or not _is_int(obj["version"], 1, 1):
        raise InvalidDocument("document: not a zmix document of version 1")
    if not isinstance(obj["network"], str):
        raise InvalidDocument("document: network must be a string")
    ep, sx, lx = (_object(obj, key) for key in ("epoch_params", "sphinx", "loopix"))
    _exact_keys(ep, ("length", "origin", "grace"), "document epoch_params")
    _exact_keys(sx, ("max_hops", "payload_length", *(("profile",) if "profile" in sx else ())),
                "document sphinx")
    profile = _profile_field(sx)
    _exact_keys(lx, [f.name for f in fields(LoopixParams)], "document loopix")
    if not all(isinstance(v, float) for v in lx.values()):
        raise InvalidDocument("document: loopix values must be numbers with a fraction part")
    nodes = obj["nodes"]
    if not isinstance(nodes, list):
        raise InvalidDocument("document: nodes must be a list")
    return Document(obj["network"], _int_field(obj, "epoch", "document"),
                    _int_field(obj, "valid_after", "document"),
                    _int_field(obj, "valid_until", "document"),
                    _int_field(ep, "length", "document epoch_params"),
                    _int_field(ep, "origin", "document epoch_params"),
                    _int_field(ep, "grace", "document epoch_params"),
                    _int_field(sx, "max_hops", "document sphinx"),
                    _int_field(sx, "payload_length", "document sphinx"),
                    LoopixParams(**lx), tuple(_entry_from_json(n) for n in nodes), profile)


def _profile_field(sx: dict[str, Any]) -> Profile:
    """The profile of a document's ``sphinx`` object: v1 when absent; written only when it is
    another wire profile (canonical: v1 is never written)."""
    if "profile" not in sx:
        return Profile.V1
    value = sx["profile"]
    named = {p.value: p for p in WIRE_PROFILES if p is not Profile.V1}
    if not isinstance(value, str) or value not in named:
        raise InvalidDocument(f"document sphinx: profile must be one of {sorted(named)} "
                              "(v1 is written by leaving it out)")
    return named[value]


def _object(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj[key]
    if not isinstance(value, dict):
        raise InvalidDocument(f"document: {key} must be an object")
    return value


def _entry_from_json(value: object) -> NodeEntry:
    if not isinstance(value, dict):
        raise InvalidDocument("document: every node must be an object")
    _exact_keys(value, _entry_json(_ENTRY_PLACEHOLDER).keys(), "document node")
    for key in ("name", "role", "host"):
        if not isinstance(value[key], str):
            raise InvalidDocument(f"document node: {key} must be a string")
    what = f"document node {value['name']!r}"
    layer = value["layer"]
    if layer is not None and not _is_int(layer, 0, 255):
        raise InvalidDocument(f"{what}: layer must be null or an integer 0..255")
    return NodeEntry(value["name"], _hex_field(value, "id", 16, what), value["role"], layer,
                     value["host"], _int_field(value, "port", what, 1, 65535),
                     _hex_field(value, "curve_public", 32, what),
                     _hex_field(value, "identity_public", 32, what),
                     _sphinx_keys_from_json(value["sphinx_keys"], what))


_ENTRY_PLACEHOLDER = NodeEntry("n", bytes(16), "provider", None, "h", 1, bytes(32), bytes(32), ())


# ---------------------------------------------------------------------------- building


def build_document(network: str, epoch: int, descriptors: Iterable[bytes],
                   allowlist: Iterable[bytes], *, timing: EpochTiming, sphinx: SphinxParams,
                   loopix: LoopixParams) -> tuple[Document, tuple[tuple[str, str], ...]]:
    """Return the document of ``epoch`` built from signed descriptor blobs, and the descriptors
    left out as sorted ``(name, reason)`` pairs (the name is "?" for a blob that did not open).

    The result depends only on the set of blobs, not their order. Left out: a blob that does not
    open (:func:`open_descriptor`), one of another network, one whose identity key is not in
    ``allowlist``, and one without a Sphinx key for ``epoch``. Of several valid descriptors of
    one node (same name, same identity key) the one with the highest ``published_at_epoch``
    wins, then the greatest blob bytes. Then a name claimed by two identity keys, or an identity
    key claimed by two names, leaves every claimant out. Raises LocalMisuse if the parameters do
    not hold together.
    """
    allowed = set(allowlist)
    left_out: list[tuple[str, str]] = []
    latest: dict[tuple[str, bytes], tuple[int, bytes, Descriptor]] = {}
    for blob in set(descriptors):
        try:
            d = open_descriptor(blob)
        except InvalidDocument as exc:
            left_out.append(("?", exc.reason))
            continue
        reason = _admission_problem(d, network, epoch, allowed)
        if reason is not None:
            left_out.append((d.name, reason))
            continue
        key = (d.name, d.identity_public)
        candidate = (d.published_at_epoch, blob, d)
        if key not in latest or candidate[:2] > latest[key][:2]:
            latest[key] = candidate
    chosen = _without_conflicts([entry[2] for entry in latest.values()], left_out)
    start, until = _window(epoch, timing)
    doc = Document(network, epoch, start, until, timing.length, timing.origin, timing.grace,
                   sphinx.max_hops, sphinx.payload_length, loopix,
                   tuple(_entry(d, epoch) for d in sorted(chosen, key=lambda d: d.name)),
                   sphinx.profile)
    encode_document(doc)  # raises LocalMisuse now if the parameters are wrong
    return doc, tuple(sorted(left_out))


def _admission_problem(d: Descriptor, network: str, epoch: int,
                       allowed: set[bytes]) -> str | None:
    if d.network != network:
        return f"descriptor of network {d.network!r}, not {network!r}"
    if d.identity_public not in allowed:
        return f"identity key {d.identity_public.hex()} is not on the allowlist"
    if all(e != epoch for e, _ in d.sphinx_keys):
        return f"no Sphinx key for epoch {epoch}"
    return None


def _without_conflicts(candidates: list[Descriptor],
                       left_out: list[tuple[str, str]]) -> list[Descriptor]:
    """Return the candidates whose name and identity key no other candidate claims; record the
    others in ``left_out``."""
    by_name: dict[str, int] = {}
    by_key: dict[bytes, int] = {}
    for d in candidates:
        by_name[d.name] = by_name.get(d.name, 0) + 1
        by_key[d.identity_public] = by_key.get(d.identity_public, 0) + 1
    kept = []
    for d in candidates:
        if by_name[d.name] > 1:
            left_out.append((d.name, f"name claimed by {by_name[d.name]} identity keys"))
        elif by_key[d.identity_public] > 1:
            left_out.append((d.name, f"identity key {d.identity_public.hex()} claimed by "
                             f"{by_key[d.identity_public]} names"))
        else:
            kept.append(d)
    return kept


def _entry(d: Descriptor, epoch: int) -> NodeEntry:
    keys = tuple((e, k) for e, k in d.sphinx_keys if epoch <= e < epoch + KEY_EPOCHS)
    return NodeEntry(d.name, d.id, d.role, d.layer, d.host, d.port, d.curve_public,
                     d.identity_public, keys)


# ---------------------------------------------------------------------------- signing


def sign_document(body: bytes, authority_secret: bytes) -> bytes:
    """Return an authority's 64-byte signature of a document body: Ed25519 over
    ``DOCUMENT_CONTEXT || 0x00 || body``."""
    return crypto.sign(authority_secret, DOCUMENT_CONTEXT + b"\0" + body)


def _document_signature_ok(public: bytes, body: bytes, signature: bytes) -> bool:
    return crypto.verify(public, DOCUMENT_CONTEXT + b"\0" + body, signature)


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """A document body and the signatures collected for it, ``(authority public key,
    signature)`` pairs sorted by key, one per key."""

    body: bytes
    signatures: tuple[tuple[bytes, bytes], ...]

    def __post_init__(self) -> None:
        keys = [key for key, _ in self.signatures]
        if keys != sorted(set(keys)):
            raise LocalMisuse("signatures must be sorted by authority key, one per key")
        if len(keys) > MAX_SIGNATURES or len(self.body) > MAX_DOCUMENT_BYTES:
            raise LocalMisuse("too many signatures or too long a body")
        for key, signature in self.signatures:
            if len(key) != crypto.ED25519_PUBLIC_BYTES or len(signature) != 64:
                raise LocalMisuse("a signature record is a 32-byte key and 64-byte signature")

    @staticmethod
    def of(body: bytes, signatures: Iterable[tuple[bytes, bytes]]) -> SignedDocument:
        """Return a SignedDocument with ``signatures`` sorted; LocalMisuse if one key has two
        different signatures."""
        merged: dict[bytes, bytes] = {}
        for key, signature in signatures:
            if merged.setdefault(key, signature) != signature:
                raise LocalMisuse(f"two different signatures by authority {key.hex()}")
        return SignedDocument(body, tuple(sorted(merged.items())))

    def encode(self) -> bytes:
        """Return the one-blob form: magic ``ZSD1``, u32 body length (big-endian), body, u8
        signature count, then per signature its 32-byte key and 64-byte signature."""
        records = b"".join(key + sig for key, sig in self.signatures)
        return (SIGNED_DOCUMENT_MAGIC + struct.pack(">I", len(self.body)) + self.body
                + bytes([len(self.signatures)]) + records)

    @staticmethod
    def decode(blob: bytes) -> SignedDocument:
        """Return the SignedDocument in ``blob``; InvalidDocument if the magic, a length or the
        order of the signatures is wrong (the body is not parsed here)."""
        if len(blob) < 9 or blob[:4] != SIGNED_DOCUMENT_MAGIC:
            raise InvalidDocument("not a signed zmix document (magic ZSD1)")
        (size,) = struct.unpack(">I", blob[4:8])
        if size > MAX_DOCUMENT_BYTES or len(blob) < 9 + size:
            raise InvalidDocument("signed document: body length out of range")
        count = blob[8 + size]
        rest = blob[9 + size:]
        if len(rest) != count * _SIGNATURE_RECORD:
            raise InvalidDocument(f"signed document: {count} signatures need "
                                  f"{count * _SIGNATURE_RECORD} bytes, got {len(rest)}")
        records = tuple((rest[i:i + 32], rest[i + 32:i + _SIGNATURE_RECORD])
                        for i in range(0, len(rest), _SIGNATURE_RECORD))
        try:
            return SignedDocument(blob[8:8 + size], records)
        except LocalMisuse as exc:
            raise InvalidDocument(f"signed document: {exc}") from None


def merge_signatures(a: SignedDocument, b: SignedDocument) -> SignedDocument:
    """Return the body of ``a`` and ``b`` with the signatures of both. Raises DocumentRefused
    (kind "malformed") if the bodies differ, and (kind "forged") if one authority key carries
    two different signatures (Ed25519 signatures are deterministic: one of them is forged).
    No signature is verified here: :func:`verify_document` does that."""
    if a.body != b.body:
        raise DocumentRefused("malformed", "cannot merge the signatures of two different "
                              "document bodies")
    try:
        return SignedDocument.of(a.body, a.signatures + b.signatures)
    except LocalMisuse as exc:
        raise DocumentRefused("forged", str(exc)) from None


def default_threshold(n: int) -> int:
    """Return the default number of authority signatures a document needs: a majority of ``n``
    (n // 2 + 1), so two documents for one epoch cannot both be accepted unless an authority
    signed both."""
    if n < 1:
        raise LocalMisuse(f"there must be at least one authority, got {n}")
    return n // 2 + 1


# ---------------------------------------------------------------------------- verifying


def verify_document(signed: SignedDocument, pinned: Sequence[bytes], threshold: int, epoch: int,
                    now: float, *, network: str,
                    timing: EpochTiming | None = None) -> Document:
    """Return the document of ``signed`` if a client or node of ``network`` may use it for
    ``epoch`` at unix time ``now``; raise DocumentRefused naming the problem otherwise.

    In order: every signature by a pinned key must verify (kind "forged"; signatures by other
    keys are ignored, neither counted nor checked); at least ``threshold`` distinct pinned keys
    must have signed ("threshold"); the body must decode ("malformed"); its network and epoch
    must be those expected ("network", "epoch"); its parameters must hold together and, with
    ``timing``, agree with it ("params"); and ``now`` must lie in
    ``[valid_after - epoch_length, valid_until]`` ("not_yet_valid", "expired"): a document is
    fetched up to one epoch ahead. Raises LocalMisuse if a pinned key is not 32 bytes or
    ``threshold`` is not 1..the number of distinct pinned keys.
    """
    keys = set(pinned)
    if any(len(key) != crypto.ED25519_PUBLIC_BYTES for key in keys):
        raise LocalMisuse("every pinned authority key must be 32 bytes")
    if not 1 <= threshold <= len(keys):
        raise LocalMisuse(f"threshold must be 1..{len(keys)} (the pinned keys), got {threshold}")
    good = 0
    for key, signature in signed.signatures:
        if key not in keys:
            continue
        if not _document_signature_ok(key, signed.body, signature):
            raise DocumentRefused("forged", f"forged signature by authority {key.hex()}")
        good += 1
    if good < threshold:
        raise DocumentRefused("threshold", f"signed by {good} of the {len(keys)} pinned "
                              f"authorities, fewer than the threshold of {threshold}")
    try:
        doc = decode_document(signed.body)
    except InvalidDocument as exc:
        raise DocumentRefused("malformed", f"malformed document: {exc.reason}") from None
    _check_expected(doc, network, epoch, timing)
    if now < doc.valid_after - doc.epoch_length:
        raise DocumentRefused("not_yet_valid", f"the document for epoch {doc.epoch} is not "
                              f"valid before {doc.valid_after - doc.epoch_length} (now {now:.3f})")
    if now > doc.valid_until:
        raise DocumentRefused("expired", f"the document for epoch {doc.epoch} expired at "
                              f"{doc.valid_until} (now {now:.3f})")
    return doc


def _check_expected(doc: Document, network: str, epoch: int, timing: EpochTiming | None) -> None:
    if doc.network != network:
        raise DocumentRefused("network", f"the document is for network {doc.network!r}, "
                              f"not {network!r}")
    if doc.epoch != epoch:
        raise DocumentRefused("epoch", f"the document is for epoch {doc.epoch}, not {epoch}")
    problem = document_problem(doc)
    if problem is not None:
        raise DocumentRefused("params", f"inconsistent document for epoch {epoch}: {problem}")
    if timing is not None and (timing.length, timing.origin, timing.grace) != (
            doc.epoch_length, doc.epoch_origin, doc.epoch_grace):
        raise DocumentRefused("params", f"the document's epochs (length {doc.epoch_length}, "
                              f"origin {doc.epoch_origin}, grace {doc.epoch_grace}) are not "
                              f"ours (length {timing.length}, origin {timing.origin}, grace "
                              f"{timing.grace})")
