"""Other Python Sphinx libraries, timed a hop at a time beside zmix (``zmix-bench sphinx --peers``).

Each peer runs in its own interpreter, as a child process that stays up for the whole bench: the
peers' dependencies conflict with zmix's and with each other's, so each may live in a virtual
environment of its own. The child builds one packet at startup and then answers each request line
``N`` with the time of N unwraps of it, so the bench can interleave peers and zmix in rounds.

The child speaks one JSON object a line on its stdout: first ``{"ready": VERSION}`` (or
``{"missing": MODULE}`` when the library is not installed there), then ``{"hop_seconds": S}`` per
request. :func:`parse_reply` reads those lines; everything else here starts and stops the children.
"""

from __future__ import annotations

import enum
import json
import math
import os
import select
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from zmix.errors import ZmixError

READY_SECONDS = 60.0  # a child's imports and its first packet: well under a second here
MIN_REPLY_SECONDS = 60.0  # a round of unwraps, or 10 ms a hop if that is longer
MAX_LINE_BYTES = 4096  # a reply line is a few dozen bytes; more means the child is not ours


class PeerOutputError(ZmixError):
    """A peer's child printed something that is not one of the replies it should print."""


@dataclass(frozen=True, slots=True)
class Peer:
    """One third-party library: how to find it, how to install it, how to time its hop."""

    key: str
    """The name given to ``--peer-python NAME=PATH``."""
    module: str
    """The module the child imports; its absence means "not installed"."""
    distribution: str
    """The package's name in the registry."""
    version: str
    """The release these timings were written for."""
    construction: str
    """What a hop does, for the table."""
    install: str = field(repr=False)
    """How to install it, printed when it is not installed."""
    setup: str = field(repr=False)
    """Python run in the child after the common prelude: defines ``unwrap()`` for one hop."""


# Run in the child (its own Python, maybe another version): argv is payload bytes and route length.
_PRELUDE = r'''
import importlib, importlib.metadata, json, os, sys, time
def _say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
try:
    importlib.import_module(MODULE)
except ModuleNotFoundError as exc:
    if exc.name != MODULE:
        raise
    _say({"missing": MODULE})
    sys.exit(0)
PAYLOAD, HOPS = int(sys.argv[1]), int(sys.argv[2])
'''

_SERVE = r'''
_say({"ready": importlib.metadata.version(DISTRIBUTION)})
for _line in sys.stdin:
    _n = int(_line)
    _start = time.perf_counter()
    for _ in range(_n):
        unwrap()
    _say({"hop_seconds": (time.perf_counter() - _start) / _n})
'''

_SMC_SETUP = r'''
import zope.interface
import sphinxmixcrypto as smc

class _Random:
    def read(self, n):
        return os.urandom(n)

@zope.interface.implementer(smc.IKeyState)
class _Keys:
    def __init__(self, private):
        self.private = private
    def get_private_key(self):
        return self.private
    def get_public_key(self):
        raise NotImplementedError  # an unwrap only needs the private key

@zope.interface.implementer(smc.IMixPKI)
class _Directory:
    def __init__(self, keys):
        self.keys = keys
    def get(self, node_id):
        return self.keys[node_id]
    def identities(self):
        return list(self.keys)
    def set(self, *args):
        raise NotImplementedError
    def set_client_addr(self, *args):
        raise NotImplementedError
    def get_client_addr(self, *args):
        raise NotImplementedError
    def get_mix_addr(self, *args):
        raise NotImplementedError
    def rotate(self, *args):
        raise NotImplementedError

_group = smc.GroupCurve25519()
_params = smc.SphinxParams(max(5, HOPS), PAYLOAD)
# Its ids are prefix-free codes: a mix's starts with 0xff. (With another first byte the hop reads
# the next id as a client's and skips the blinding, half the X25519 of a forward hop.)
_route = [b"\xff" + bytes([i + 1]) * 15 for i in range(HOPS)]
_private = {node: _group.gensecret(_Random()) for node in _route}
_public = {node: _group.expon(_group.generator, key) for node, key in _private.items()}
_raw = smc.SphinxPacket.forward_message(_params, _route, _Directory(_public), b"\xaa" * 16,
                                        b"bench", _Random()).get_raw_bytes()
_first = _Keys(_private[_route[0]])

def unwrap():
    # From the bytes, as a node receives it; a fresh replay cache so the same packet passes.
    packet = smc.SphinxPacket.from_raw_bytes(_params, _raw)
    return smc.sphinx_packet_unwrap(_params, smc.PacketReplayCacheDict(), _first, packet)

if unwrap().next_hop is None:
    raise SystemExit("the first hop is not a forward hop to the next mix")
'''

_SPHINXMIX_SETUP = r'''
from sphinxmix.SphinxClient import Nenc, PFdecode, Relay_flag, create_forward_message
from sphinxmix.SphinxNode import sphinx_process
from sphinxmix.SphinxParams import SphinxParams

# 192 header bytes hold the library's default of 5 hops; longer routes need a longer header.
_params = SphinxParams(header_len=max(192, 40 * HOPS), body_len=PAYLOAD)
_group = _params.group
_route = [bytes([i + 1]) * 16 for i in range(HOPS)]
_private = {node: _group.gensecret() for node in _route}
_public = [_group.expon(_group.g, [_private[node]]) for node in _route]
_header, _body = create_forward_message(_params, [Nenc(n) for n in _route], _public, b"\xaa" * 16,
                                        b"bench")
_first = _private[_route[0]]

def unwrap():
    # The library takes a parsed header (its packets travel as msgpack of the tuple).
    return sphinx_process(_params, _first, _header, _body)

if PFdecode(_params, unwrap()[1])[0] != Relay_flag:
    raise SystemExit("the first hop is not a forward hop to the next mix")
'''

SMC_INSTALL = ("a venv with sphinxmixcrypto==0.0.4 and pylioness==0.0.1 installed --no-deps, "
               "pynacl, pycryptodome, zope.interface and a pyblake2 shim: docs/performance.md, "
               "'Against other Python Sphinx libraries'; then --peer-python smc=VENV/bin/python")
SPHINXMIX_INSTALL = ("python3 -m venv VENV && VENV/bin/pip install sphinxmix==0.0.7; then "
                     "--peer-python sphinxmix=VENV/bin/python")

PEERS: tuple[Peer, ...] = (
    Peer("smc", "sphinxmixcrypto", "sphinxmixcrypto", "0.0.4",
         "X25519 via PyNaCl, ChaCha20/BLAKE2b LIONESS", SMC_INSTALL, _SMC_SETUP),
    Peer("sphinxmix", "sphinxmix", "sphinxmix", "0.0.7",
         "NIST P-224 via petlib, AES LIONESS", SPHINXMIX_INSTALL, _SPHINXMIX_SETUP),
)
PEER_KEYS = tuple(peer.key for peer in PEERS)


def child_source(peer: Peer) -> str:
    """Return the Python source a peer's child runs (``python -c SOURCE PAYLOAD HOPS``)."""
    names = f"MODULE = {peer.module!r}\nDISTRIBUTION = {peer.distribution!r}\n"
    return names + _PRELUDE + peer.setup + _SERVE


@dataclass(frozen=True, slots=True)
class Ready:
    """The child is set up; ``version`` is the installed release."""

    version: str


@dataclass(frozen=True, slots=True)
class Missing:
    """The library is not importable in the child's interpreter."""

    module: str


@dataclass(frozen=True, slots=True)
class Timing:
    """One round: seconds per unwrap."""

    hop_seconds: float


Reply = Ready | Missing | Timing


def parse_reply(line: bytes) -> Reply:
    """Return what one line of a child's stdout says; raise :class:`PeerOutputError` otherwise."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PeerOutputError(f"not a JSON line: {line[:80]!r}") from exc
    if not isinstance(obj, dict) or len(obj) != 1:
        raise PeerOutputError(f"not a reply: {line[:80]!r}")
    (kind, value), = obj.items()
    if kind == "hop_seconds":
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not (math.isfinite(value) and value > 0):
            raise PeerOutputError(f"not a time in seconds: {value!r}")
        return Timing(float(value))
    if kind in ("ready", "missing") and isinstance(value, str) and value:
        return Ready(value) if kind == "ready" else Missing(value)
    raise PeerOutputError(f"not a reply: {line[:80]!r}")


def parse_peer_python(text: str) -> tuple[str, str]:
    """Return (peer key, interpreter path) from ``NAME=PATH``; raise ``ValueError`` otherwise."""
    key, sep, path = text.partition("=")
    if not sep or key not in PEER_KEYS or not path:
        raise ValueError(f"expected NAME=PATH with NAME one of {', '.join(PEER_KEYS)}, "
                         f"got {text!r}")
    return key, path


class PeerState(enum.Enum):
    """What became of a peer in one bench run."""

    MEASURED = "measured"
    NOT_INSTALLED = "not installed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PeerResult:
    """One peer's outcome: its per-round seconds per hop, or why there are none."""

    peer: Peer
    python: str
    state: PeerState
    version: str = ""
    samples: tuple[float, ...] = ()
    error: str = ""

    @property
    def per_hop_seconds(self) -> float:
        """The median of the rounds (only for a measured peer)."""
        return statistics.median(self.samples)


def ratios(peer_samples: Sequence[float], zmix_samples: Mapping[str, Sequence[float]]
           ) -> dict[str, float]:
    """Return the peer's per-hop time over each zmix profile's, the median of per-round ratios.

    Rounds are paired: a round's ratio compares runs a few seconds apart, which a noisy machine
    disturbs less than the ratio of two medians would.
    """
    return {name: statistics.median(p / z for p, z in zip(peer_samples, samples, strict=True))
            for name, samples in zmix_samples.items()}


def peer_lines(results: Sequence[PeerResult], zmix_samples: Mapping[str, Sequence[float]]
               ) -> list[str]:
    """Return the lines of the peer table: time per hop and ratio to every zmix profile."""
    names = list(zmix_samples)
    head = f"  {'peer':<24} {'per hop us':>10}" + "".join(f" {'x ' + n:>8}" for n in names)
    lines = [head]
    for result in results:
        label = f"{result.peer.distribution} {result.version or result.peer.version}"
        if result.state is PeerState.MEASURED:
            row = ratios(result.samples, zmix_samples)
            lines.append(f"  {label:<24} {result.per_hop_seconds * 1e6:10.1f}"
                         + "".join(f" {row[n]:8.2f}" for n in names))
            lines.append(f"  {'':<24} ({result.peer.construction})")
        elif result.state is PeerState.NOT_INSTALLED:
            lines.append(f"  {label:<24} {not_installed_text(result)}")
        else:
            lines.append(f"  {label:<24} failed: {result.error}")
    return lines


def not_installed_text(result: PeerResult) -> str:
    """Return the "not installed (how to install)" text of a peer not found."""
    return f"not installed in {result.python} (to install: {result.peer.install})"


def peer_json(result: PeerResult, zmix_samples: Mapping[str, Sequence[float]]
              ) -> dict[str, object]:
    """Return one peer's entry of ``--json``."""
    out: dict[str, object] = {"distribution": result.peer.distribution,
                              "construction": result.peer.construction,
                              "python": result.python, "state": result.state.value}
    if result.state is PeerState.MEASURED:
        out.update(version=result.version, per_hop_seconds=result.per_hop_seconds,
                   ratio_to=ratios(result.samples, zmix_samples))
    elif result.state is PeerState.NOT_INSTALLED:
        out["install"] = result.peer.install
    else:
        out["error"] = result.error
    return out


@dataclass(slots=True)
class PeerProcess:
    """A peer's child process, kept up across the bench's rounds."""

    peer: Peer
    python: str
    proc: subprocess.Popen[bytes] | None = None
    version: str = ""
    samples: list[float] = field(default_factory=list)
    outcome: PeerState | None = None
    error: str = ""
    _buffer: bytes = b""
    _stderr: IO[bytes] | None = None

    def start(self, payload: int, hops: int) -> None:
        """Start the child; its first reply is read by :meth:`wait_ready`."""
        # stderr to a file: a chatty child (deprecation warnings) must not fill a pipe and stall.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the child)
        try:
            self.proc = subprocess.Popen(
                [self.python, "-c", child_source(self.peer), str(payload), str(hops)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as exc:
            self._fail(f"cannot run {self.python}: {exc.strerror or exc}")

    def wait_ready(self) -> None:
        """Read the child's first reply; afterwards :attr:`outcome` is None only when ready."""
        if self.outcome is not None:
            return
        reply = self._reply(time.monotonic() + READY_SECONDS)
        if isinstance(reply, Missing):
            self.outcome = PeerState.NOT_INSTALLED
            self.close()
        elif isinstance(reply, Ready):
            self.version = reply.version
        elif reply is not None:
            self._fail(f"answered {reply!r} before it was ready")

    def measure(self, iterations: int) -> None:
        """Time one round of ``iterations`` unwraps in the child (nothing if it is out)."""
        if self.outcome is not None or self.proc is None or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(f"{iterations}\n".encode())
            self.proc.stdin.flush()
        except OSError:
            self._fail("its process ended")
            return
        reply = self._reply(time.monotonic() + max(MIN_REPLY_SECONDS, iterations * 0.01))
        if isinstance(reply, Timing):
            self.samples.append(reply.hop_seconds)
        elif reply is not None:
            self._fail(f"answered {reply!r} to a round")

    def result(self) -> PeerResult:
        """Return the outcome, once the rounds are done."""
        state = self.outcome or PeerState.MEASURED
        return PeerResult(self.peer, self.python, state, self.version,
                          tuple(self.samples) if state is PeerState.MEASURED else (), self.error)

    def close(self, kill: bool = False) -> None:
        """End the child (closing its stdin ends its loop; ``kill``: at once) and reap it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if kill:
                proc.kill()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _reply(self, deadline: float) -> Reply | None:
        """Return the child's next reply, or None after recording why there is none."""
        line = self._read_line(deadline)
        if line is None:
            return None
        try:
            return parse_reply(line)
        except PeerOutputError as exc:
            self._fail(str(exc))
            return None

    def _read_line(self, deadline: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or len(self._buffer) > MAX_LINE_BYTES:
                self._fail("no answer in time" if left <= 0 else "a line too long")
                return None
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                self._fail(self._stderr_tail() or "its process ended")
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _stderr_tail(self) -> str:
        """Return the last line the child wrote on stderr (the exception of a traceback)."""
        if self.proc is None or self._stderr is None:
            return ""
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def _fail(self, why: str) -> None:
        # Killed: a child that hangs or talks nonsense is not trusted to stop when asked.
        self.outcome, self.error = PeerState.FAILED, why
        self.close(kill=True)
