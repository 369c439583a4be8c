"""Start, watch and stop the processes of a topology (what ``zmix-up`` does).

Each directory authority runs as its own ``python -m zmix.cli.authority`` process with its log in
``STATE/authorities/NAME/authority.log``, and each node as its own ``python -m zmix.cli.node``
process with its log in ``STATE/nodes/NAME/node.log``. The authorities start first: an authority
counts as up once it answers a request over CURVE with its pinned key, a node once its control
socket answers ``ping``. A process that exits while the network runs is started again (with a
pause that doubles up to a minute), so one crash does not take the network down; stopping sends
SIGTERM to every node, waits, kills whatever is left, then does the same with the authorities.

Two locks keep two runs apart (``fcntl.flock``, released by the kernel when the holder dies, so
a killed process leaves nothing stale): ``zmix-up`` holds ``STATE/zmix-up.lock`` for its life, and
each node process holds ``STATE/nodes/NAME/lock`` (an authority ``STATE/authorities/NAME/lock``)
for its life. Before anything is started,
:func:`check_nodes_free` and :func:`check_addresses` make sure no node is running already and
that every address can be bound, so a refused start changes nothing of a running network.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zmix.errors import ZmixError
from zmix.runtime import metrics
from zmix.topology import AuthoritySpec, NodeSpec

if TYPE_CHECKING:
    from zmix.runtime.directory import AuthorityPeer

LOG = logging.getLogger(__name__)

# Seconds a node may take to answer ping: it answers once the authorities gave it a document,
# which can take their bounded wait for allowlisted nodes that are not up (30 s) and more.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
RESTART_PAUSE_MAX = 60.0


class LaunchError(Exception):
    """A node did not come up; the message says which and why (with its log's last lines)."""


class StartRefused(ZmixError):
    """Something this start needs is in use (the state directory, a node, an address); nothing
    was started or changed. The message is one line saying what, and by which process."""


STATE_LOCK = "zmix-up.lock"  # in the state directory, held by zmix-up
NODE_LOCK = "lock"  # in STATE/nodes/NAME/, held by the node process


class Lock:
    """An exclusive ``flock`` on a file that names its holder's pid; held until :meth:`release`
    or the process ends (the kernel drops it even after kill -9)."""

    def __init__(self, path: Path) -> None:
        """Take the lock on ``path`` (created if missing); raise StartRefused, naming the
        holder's pid, if another process holds it."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise StartRefused(f"{path} is held by {holder(path)}") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Drop the lock (the file stays: removing it could split a later pair of runs)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder(path: Path) -> str:
    """Return "process PID" for the pid written in lock file ``path``, as well as it is known."""
    try:
        return f"process {int(path.read_text().split()[0])}"
    except (OSError, ValueError, IndexError):
        return "another process"


def lock_state(state_dir: Path) -> Lock:
    """Take zmix-up's lock on ``state_dir``; StartRefused if another zmix-up holds it."""
    try:
        return Lock(state_dir / STATE_LOCK)
    except StartRefused:
        raise StartRefused(f"another zmix-up ({holder(state_dir / STATE_LOCK)}) is running on "
                           f"{state_dir}; stop it first, or use another --state") from None


def lock_node(state_dir: Path, name: str) -> Lock:
    """Take node ``name``'s lock; StartRefused if a process runs that node already."""
    path = state_dir / "nodes" / name / NODE_LOCK
    try:
        return Lock(path)
    except StartRefused:
        raise StartRefused(f"node {name} is already running from {state_dir} "
                           f"({holder(path)})") from None


def check_nodes_free(state_dir: Path, nodes: Sequence[NodeSpec],
                     authorities: Sequence[AuthoritySpec] = ()) -> None:
    """Raise StartRefused naming every node of ``nodes`` and authority of ``authorities`` that a
    process runs already (one left by a zmix-up that was killed, or one started by hand)."""
    locks = [(spec.name, state_dir / "nodes" / spec.name / NODE_LOCK) for spec in nodes]
    locks += [(a.name, state_dir / "authorities" / a.name / NODE_LOCK) for a in authorities]
    running = [f"{name} ({holder(path)})" for name, path in locks if _held(path)]
    if running:
        raise StartRefused(f"already running from {state_dir}: {', '.join(running)}; "
                           "stop them first")


def _held(path: Path) -> bool:
    """Return True if a process holds the lock on ``path`` (creates nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def check_addresses(nodes: Sequence[NodeSpec | AuthoritySpec]) -> None:
    """Raise StartRefused for the first node or authority whose address (or metrics port) cannot
    be bound here: in use, or not an address of this host. Only numeric hosts are tried (a name
    would cost a DNS lookup); the process reports any other failure itself when it binds."""
    for spec in nodes:
        kind = "authority" if isinstance(spec, AuthoritySpec) else "node"
        probes = [(spec.port, f"listen on {spec.endpoint}")]
        metrics_port = None if isinstance(spec, AuthoritySpec) else spec.metrics_port
        if metrics_port is not None:
            probes.append((metrics_port, f"serve metrics on http://{spec.host}:{metrics_port}"))
        for port, what in probes:
            problem = _bind_problem(spec.host, port)
            if problem is not None:
                raise StartRefused(f"{kind} {spec.name} cannot {what}: {problem}")


def _bind_problem(host: str, port: int) -> str | None:
    """Return why ``host:port`` cannot be bound (as libzmq binds: SO_REUSEADDR), or None."""
    try:
        address = ipaddress.ip_address("0.0.0.0" if host == "*" else host)
    except ValueError:
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((str(address), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "address already in use"
            return exc.strerror or str(exc)
    return None


@dataclass
class _Child:
    name: str
    kind: str  # "node" or "authority"
    spec: NodeSpec | AuthorityPeer
    proc: subprocess.Popen[bytes]
    restarts: int = 0
    restart_at: float | None = None
    log_lines: list[str] = field(default_factory=list)


def node_command(state_dir: Path, name: str, verbosity: int = 1) -> list[str]:
    """Return the command line that runs node ``name`` from ``state_dir``."""
    cmd = [sys.executable, "-m", "zmix.cli.node", "--state", str(state_dir), "--name", name]
    return cmd + ["-v"] * verbosity


def authority_command(state_dir: Path, name: str, verbosity: int = 1) -> list[str]:
    """Return the command line that runs directory authority ``name`` from ``state_dir``."""
    cmd = [sys.executable, "-m", "zmix.cli.authority", "--state", str(state_dir), "--name", name]
    return cmd + ["-v"] * verbosity


class Launcher:
    """The authority and node processes of this host."""

    def __init__(self, state_dir: Path, nodes: Sequence[NodeSpec], verbosity: int = 1,
                 authorities: Sequence[AuthorityPeer] = ()) -> None:
        self.state_dir = state_dir
        self.nodes = list(nodes)
        self.authorities = list(authorities)
        self.verbosity = verbosity
        self.children: dict[str, _Child] = {}

    def start(self, on_up: Callable[[NodeSpec], None] = lambda spec: None,
              on_authority_up: Callable[[AuthorityPeer], None] = lambda peer: None) -> None:
        """Start every authority and wait until each answers, then every node, and wait until
        each answers; raise LaunchError if one does not."""
        for peer in self.authorities:
            self.children[peer.name] = _Child(peer.name, "authority", peer,
                                              self._spawn("authority", peer.name))
        self._wait_up([p.name for p in self.authorities])
        for peer in self.authorities:
            on_authority_up(peer)
        for spec in self.nodes:
            self.children[spec.name] = _Child(spec.name, "node", spec,
                                              self._spawn("node", spec.name))
        self._wait_up([s.name for s in self.nodes], on_up)

    def _answers(self, child: _Child) -> bool:
        if child.kind == "node":
            return metrics.query(self.state_dir, child.name, "ping", timeout=0.2) == "pong"
        from zmix.runtime.directory import AuthorityPeer, ping
        assert isinstance(child.spec, AuthorityPeer)
        return ping(child.spec, timeout=0.2)

    def _wait_up(self, names: Sequence[str],
                 on_up: Callable[[NodeSpec], None] = lambda spec: None) -> None:
        pending = set(names)
        deadline = time.monotonic() + START_TIMEOUT
        while pending:
            for name in sorted(pending):
                child = self.children[name]
                if child.proc.poll() is not None:
                    raise LaunchError(self._start_failure(child, child.proc.returncode))
                if self._answers(child):
                    pending.discard(name)
                    if isinstance(child.spec, NodeSpec):
                        on_up(child.spec)
            if pending and time.monotonic() > deadline:
                first = self.children[sorted(pending)[0]]
                raise LaunchError(f"{first.kind}(s) {', '.join(sorted(pending))} did not answer "
                                  f"within {START_TIMEOUT:.0f} s; {self._log_tail(first)}")
            if pending:
                time.sleep(0.05)

    def watch(self, now: float) -> list[str]:
        """Restart processes that died; return the names of those found dead by this call."""
        dead = []
        for name, child in self.children.items():
            if child.restart_at is None and child.proc.poll() is not None:
                dead.append(name)
                pause = min(RESTART_PAUSE_MAX, 2.0 ** child.restarts)
                child.restart_at = now + pause
                LOG.warning("%s %s exited with status %s; restarting in %.0f s",
                            child.kind, name, child.proc.returncode, pause)
            elif child.restart_at is not None and now >= child.restart_at:
                child.proc = self._spawn(child.kind, name)
                child.restarts += 1
                child.restart_at = None
        return dead

    def stop(self) -> None:
        """SIGTERM every node, wait up to STOP_TIMEOUT, SIGKILL the rest, reap them all; then the
        same with the authorities (last: nodes may talk to them until they stop)."""
        for kind in ("node", "authority"):
            children = [c for c in self.children.values() if c.kind == kind]
            for child in children:
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for child in children:
                try:
                    child.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    LOG.warning("%s %s did not stop in time; killing it", kind, child.name)
                    child.proc.kill()
                    child.proc.wait()

    def pids(self) -> dict[str, int]:
        """Return the process id of each node."""
        return {name: child.proc.pid for name, child in self.children.items()}

    def _log_path(self, kind: str, name: str) -> Path:
        if kind == "node":
            return self.state_dir / "nodes" / name / "node.log"
        return self.state_dir / "authorities" / name / "authority.log"

    def _spawn(self, kind: str, name: str) -> subprocess.Popen[bytes]:
        # The stale control file of an earlier run is the node's to remove, once it holds its
        # lock: removed here, it could be a live node's (one started by hand meanwhile).
        log_path = self._log_path(kind, name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = node_command if kind == "node" else authority_command
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                command(self.state_dir, name, self.verbosity),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to zmix-up, which stops them in order
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def _start_failure(self, child: _Child, status: int) -> str:
        """Say why ``child`` exited while starting: its one-line ``error:`` if it printed one
        last (a refusal), else its status and the last lines of its log (a crash)."""
        path = self._log_path(child.kind, child.name)
        try:
            last = path.read_text(errors="replace").rstrip("\n").rsplit("\n", 1)[-1]
        except OSError:
            last = ""
        prefix = f"{child.kind} {child.name} "
        if last.startswith("error: "):
            reason = last.removeprefix("error: ")
            return reason if reason.startswith(prefix) else f"{prefix}did not start: {reason}"
        return f"{prefix}exited with status {status} while starting; {self._log_tail(child)}"

    def _log_tail(self, child: _Child, lines: int = 5) -> str:
        path = self._log_path(child.kind, child.name)
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"no log at {path}"
        return f"last lines of {path}:\n  " + "\n  ".join(tail)
