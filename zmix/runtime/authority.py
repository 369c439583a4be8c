"""The directory authority process: one CURVE ROUTER, the sans-IO core, files in its directory.

``AuthorityProcess(state_dir, name).run()`` is what ``zmix-authority --state S --name NAME`` runs.
Everything it decides is :class:`zmix.authority.AuthorityCore`'s; this module owns the socket, the
clock, the signals and the files of ``STATE/authorities/NAME/``:

- ``allowlist``: the identity keys admitted (:func:`zmix.authority.parse_allowlist`), read again
  when its modification time changes (looked at every second) or on SIGHUP;
- ``documents/EPOCH``: each frozen signed document, written atomically (temporary file, fsync,
  rename, fsync of the directory) before it is served, so a restarted authority serves the same
  bytes; old ones are deleted;
- ``descriptors/IDENTITY``: the descriptor kept for each identity key (hex), written atomically
  too, so a restarted authority builds its next documents from what the nodes uploaded before;
- ``control``: the local endpoint answering ``ping`` and ``stats`` (as a node's);
- ``lock``: held while it runs, so a second run of the same authority is refused.

The ROUTER's CURVE key pair is the identity key converted to X25519; it admits any CURVE client
(no ZAP handler): what it serves is public and signed. A frame that does not parse, or a message of
several parts, is dropped and counted as ``malformed``. SIGTERM and SIGINT stop it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType

import zmq
from zmq.utils import z85

from zmix import crypto, wire
from zmix.authority import AuthorityCore, DocumentParams, FetchResult, Frozen, parse_allowlist
from zmix.errors import ConfigError, LocalMisuse, WireError
from zmix.keys import load_identity
from zmix.runtime import links, metrics
from zmix.topology import AuthoritySpec
from zmix.topology_yaml import load_topology

LOG = logging.getLogger(__name__)

BATCH = 256  # requests read before the timers are looked at again
POLL_CAP = 1.0  # seconds: the loop wakes at least this often (signals, the allowlist's mtime)
ALLOWLIST = "allowlist"
DOCUMENTS = "documents"
DESCRIPTORS = "descriptors"
CONTROL = "control"
LOCK = "lock"


def authority_dir(state_dir: Path, name: str) -> Path:
    """Return the directory of authority ``name``: ``STATE/authorities/NAME``."""
    return state_dir / "authorities" / name


def load_documents(directory: Path) -> dict[int, bytes]:
    """Return the documents persisted in ``directory`` (epoch -> signed blob); files whose name
    is not an epoch number (a temporary file of an interrupted write) are skipped."""
    documents = {}
    if directory.is_dir():
        for path in directory.iterdir():
            with contextlib.suppress(ValueError):
                documents[int(path.name)] = path.read_bytes()
    return documents


def _blobs(directory: Path) -> list[bytes]:
    """Return the contents of the files in ``directory`` (none if it does not exist), skipping
    the temporary files of interrupted writes."""
    if not directory.is_dir():
        return []
    return [p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.startswith(".")]


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old content or the new, never a
    mix: a temporary file, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_allowlist(path: Path) -> dict[bytes, str]:
    """Return the allowlist in ``path`` (key -> name); an empty one if the file does not exist.
    Raises ConfigError for a line that is not a key."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "(file)", f"unreadable allowlist: {exc}") from None
    return parse_allowlist(text, str(path))


class AuthorityProcess:
    """Everything one authority process owns. Build it, call :meth:`run`; it returns on SIGTERM
    or SIGINT."""

    def __init__(self, state_dir: Path, name: str) -> None:
        """Read the topology, the identity key, the allowlist and the persisted documents.
        Raises ConfigError (a bad file), KeyError (no authority ``name`` in the topology)."""
        self.state_dir = state_dir
        topology = load_topology(state_dir / "topology.yaml")
        self.spec: AuthoritySpec = topology.authority(name)
        self.identity = load_identity(state_dir, name)
        if self.spec.identity_public not in (None, self.identity.public):
            raise ConfigError(topology.path, f"authorities.{name}.identity_public",
                              f"is not the key of private/{name}.identity.json")
        self.dir = authority_dir(state_dir, name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.allowlist_path = self.dir / ALLOWLIST
        self._allowlist_stamp = self._stamp()
        allowlist = read_allowlist(self.allowlist_path)
        if not self.allowlist_path.exists():
            LOG.warning("no allowlist at %s: no node is admitted until one is written",
                        self.allowlist_path)
        try:
            params = DocumentParams.of(topology.epoch, topology.sphinx, topology.loopix)
            self.core = AuthorityCore(topology.network, topology.epoch, params, self.identity,
                                      allowlist, time.time(),
                                      load_documents(self.dir / DOCUMENTS))
        except LocalMisuse as exc:  # a topology the loader accepts, a document cannot carry
            raise ConfigError(topology.path, "(network document)", str(exc)) from None
        restored = self.core.restore(_blobs(self.dir / DESCRIPTORS), time.time())
        if restored:
            LOG.info("took back %d descriptor(s) kept by the last run", restored)
        self.started = time.monotonic()
        self.snapshot = metrics.Snapshot(name)
        self._stop_signal: int | None = None
        self._reload = False

    # ------------------------------------------------------------------ the allowlist

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.allowlist_path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _check_allowlist(self) -> None:
        """Read the allowlist again if SIGHUP asked for it or the file changed; a file that does
        not parse is logged and the allowlist in use kept."""
        stamp = self._stamp()
        if not self._reload and stamp == self._allowlist_stamp:
            return
        self._reload, self._allowlist_stamp = False, stamp
        try:
            keys = read_allowlist(self.allowlist_path)
        except ConfigError as exc:
            LOG.error("allowlist not reloaded, the one in use stays: %s", exc)
            return
        if frozenset(keys) != self.core.allowlist:
            self.core.set_allowlist(keys)
            LOG.info("allowlist reloaded: %d identity key(s) (%s); documents frozen from now on "
                     "use it", len(keys), ", ".join(sorted(n or k.hex()[:16]
                                                          for k, n in keys.items())))

    # ------------------------------------------------------------------ the loop

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self._stop_signal = signum

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self._reload = True
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit status (0). Raises zmq.ZMQError if the
        address cannot be bound."""
        self._install_signals()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        ipc_dir = Path(tempfile.mkdtemp(prefix="zmix-auth-"))
        control_file = self.dir / CONTROL
        try:
            router = self._bind(ctx)
            control = ctx.socket(zmq.REP)
            control.linger = 0
            control.bind(f"ipc://{ipc_dir}/control")
            write_atomically(control_file, f"ipc://{ipc_dir}/control\n".encode())
            LOG.info("authority %s serving network %s on %s (identity %s)", self.spec.name,
                     self.core.network, self.spec.endpoint, self.identity.public.hex())
            self._loop(router, control)
        finally:
            ctx.destroy(linger=0)
            control_file.unlink(missing_ok=True)
            shutil.rmtree(ipc_dir, ignore_errors=True)
        LOG.info("authority %s stopped (signal %s)", self.spec.name, self._stop_signal)
        return 0

    def _bind(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        # A longer message part drops its connection before libzmq reads it.
        sock.maxmsgsize = wire.AUTHORITY_REQUEST_LIMIT + links.CURVE_FRAME_OVERHEAD
        sock.curve_server = True
        sock.curve_publickey = z85.encode(crypto.ed25519_public_to_x25519(self.identity.public))
        sock.curve_secretkey = z85.encode(crypto.ed25519_secret_to_x25519(self.identity.secret))
        sock.rcvhwm = 1_000
        sock.sndhwm = 1_000
        sock.heartbeat_ivl = links.HEARTBEAT_MS
        sock.heartbeat_timeout = links.HEARTBEAT_TIMEOUT_MS
        try:
            sock.bind(self.spec.endpoint)
        except zmq.ZMQError:
            sock.close()
            raise
        return sock

    def _loop(self, router: zmq.Socket[bytes], control: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        self._timers(time.time())
        while self._stop_signal is None:
            now = time.time()
            timeout = min(POLL_CAP, max(0.0, self.core.next_deadline(now) - now))
            ready = dict(poller.poll(int(timeout * 1000) + 1))
            if router in ready:
                self._read(router)
            if control in ready:
                metrics.answer_control(control, self.snapshot)
            self._check_allowlist()
            self._timers(time.time())

    def _timers(self, now: float) -> None:
        made, forget = self.core.on_timer(now)
        for frozen in made:
            self._persist(frozen)
        for epoch in forget:
            (self.dir / DOCUMENTS / str(epoch)).unlink(missing_ok=True)
        stats: dict[str, float] = dict(self.core.statistics())
        stats["uptime_seconds"] = time.monotonic() - self.started
        stats["pid"] = os.getpid()
        self.snapshot.update(stats)

    def _persist(self, frozen: Frozen) -> None:
        try:
            write_atomically(self.dir / DOCUMENTS / str(frozen.epoch), frozen.blob)
        except OSError as exc:  # served anyway; a restart before the disk is fixed rebuilds it
            LOG.error("could not persist the document of epoch %d: %s", frozen.epoch, exc)
        left = "; ".join(f"{name}: {why}" for name, why in frozen.left_out) or "none"
        LOG.info("froze the document of epoch %d: %d node(s) (%s); left out: %s", frozen.epoch,
                 len(frozen.nodes), ", ".join(frozen.nodes), left)

    def _persist_descriptor(self, identity: bytes, blob: bytes) -> None:
        try:
            write_atomically(self.dir / DESCRIPTORS / identity.hex(), blob)
        except OSError as exc:  # kept in memory all the same; a restart needs a new upload
            LOG.error("could not persist the descriptor of %s: %s", identity.hex(), exc)

    def _read(self, router: zmq.Socket[bytes]) -> None:
        for _ in range(BATCH):
            try:
                parts = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            answer = self._answer(parts[1:]) if len(parts) == 2 else None
            if answer is None:
                self.core.counters["malformed"] += 1
                continue
            with contextlib.suppress(zmq.Again):  # the asker's queue is full: it asks again
                router.send_multipart([parts[0], wire.encode_authority(answer)], zmq.NOBLOCK)

    def _answer(self, parts: list[bytes]) -> wire.AuthorityFrame | None:
        """Return the answer to one request, or None if it is not one (then it is dropped)."""
        try:
            frame = wire.decode_authority(parts[0])
        except WireError:
            return None
        now = time.time()
        if isinstance(frame, wire.Upload):
            result = self.core.upload(frame.descriptor, now)
            if not result.accepted:
                LOG.info("refused a descriptor (%s): %s", result.name, result.reason)
            if result.stored is not None:
                self._persist_descriptor(result.stored, frame.descriptor)
            return wire.UploadAnswer(frame.request_id, result.accepted, result.reason)
        if isinstance(frame, wire.FetchDocument):
            return _document_answer(frame, self.core.fetch(frame.epoch, now))
        return None


def _document_answer(frame: wire.FetchDocument, result: FetchResult) -> wire.DocumentAnswer:
    retry = round(result.retry_after * 1000) if result.status is wire.DocumentStatus.NOT_YET else 0
    return wire.DocumentAnswer(frame.request_id, frame.epoch, result.status, result.blob, retry)


def query(state_dir: Path, name: str, request: str = "stats",
          timeout: float = 2.0) -> str | None:
    """Ask running authority ``name`` on its control socket (``ping`` or ``stats``); return its
    answer, or None if it did not answer in ``timeout`` seconds."""
    return metrics.query_control(authority_dir(state_dir, name) / CONTROL, request, timeout)
