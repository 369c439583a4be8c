"""Start, watch and stop the node processes of a topology (what ``zmix-up`` does).

Each node runs as its own ``python -m zmix.cli.node`` process with its log in
``STATE/nodes/NAME/node.log``. A node counts as up once its control socket answers ``ping``. A node
that exits while the network runs is started again (with a pause that doubles up to a minute), so
one crash does not take the network down; stopping sends SIGTERM to every node, waits, and kills
whatever is left.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zmix.runtime import metrics
from zmix.topology import NodeSpec

LOG = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds a node may take to answer ping
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
RESTART_PAUSE_MAX = 60.0


class LaunchError(Exception):
    """A node did not come up; the message says which and why (with its log's last lines)."""


@dataclass
class _Child:
    spec: NodeSpec
    proc: subprocess.Popen[bytes]
    restarts: int = 0
    restart_at: float | None = None
    log_lines: list[str] = field(default_factory=list)


def node_command(state_dir: Path, name: str, verbosity: int = 1) -> list[str]:
    """Return the command line that runs node ``name`` from ``state_dir``."""
    cmd = [sys.executable, "-m", "zmix.cli.node", "--state", str(state_dir), "--name", name]
    return cmd + ["-v"] * verbosity


class Launcher:
    """The node processes of this host."""

    def __init__(self, state_dir: Path, nodes: Sequence[NodeSpec], verbosity: int = 1) -> None:
        self.state_dir = state_dir
        self.nodes = list(nodes)
        self.verbosity = verbosity
        self.children: dict[str, _Child] = {}

    def start(self, on_up: Callable[[NodeSpec], None] = lambda spec: None) -> None:
        """Start every node and wait until each answers; raise LaunchError if one does not."""
        for spec in self.nodes:
            self.children[spec.name] = _Child(spec, self._spawn(spec))
        pending = {spec.name for spec in self.nodes}
        deadline = time.monotonic() + START_TIMEOUT
        while pending:
            for name in sorted(pending):
                child = self.children[name]
                if child.proc.poll() is not None:
                    raise LaunchError(f"node {name} exited with status {child.proc.returncode}"
                                      f" while starting; {self._log_tail(name)}")
                if metrics.query(self.state_dir, name, "ping", timeout=0.2) == "pong":
                    pending.discard(name)
                    on_up(child.spec)
            if pending and time.monotonic() > deadline:
                raise LaunchError(f"node(s) {', '.join(sorted(pending))} did not answer within "
                                  f"{START_TIMEOUT:.0f} s; {self._log_tail(sorted(pending)[0])}")
            if pending:
                time.sleep(0.05)

    def watch(self, now: float) -> list[str]:
        """Restart nodes that died; return the names of nodes found dead by this call."""
        dead = []
        for name, child in self.children.items():
            if child.restart_at is None and child.proc.poll() is not None:
                dead.append(name)
                pause = min(RESTART_PAUSE_MAX, 2.0 ** child.restarts)
                child.restart_at = now + pause
                LOG.warning("node %s exited with status %s; restarting in %.0f s",
                            name, child.proc.returncode, pause)
            elif child.restart_at is not None and now >= child.restart_at:
                child.proc = self._spawn(child.spec)
                child.restarts += 1
                child.restart_at = None
        return dead

    def stop(self) -> None:
        """SIGTERM every node, wait up to STOP_TIMEOUT, SIGKILL the rest, reap them all."""
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in self.children.values():
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOG.warning("node %s did not stop in time; killing it", child.spec.name)
                child.proc.kill()
                child.proc.wait()

    def pids(self) -> dict[str, int]:
        """Return the process id of each node."""
        return {name: child.proc.pid for name, child in self.children.items()}

    def _spawn(self, spec: NodeSpec) -> subprocess.Popen[bytes]:
        node_dir = self.state_dir / "nodes" / spec.name
        node_dir.mkdir(parents=True, exist_ok=True)
        metrics.control_path(self.state_dir, spec.name).unlink(missing_ok=True)
        with open(node_dir / "node.log", "ab") as log:
            return subprocess.Popen(
                node_command(self.state_dir, spec.name, self.verbosity),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to zmix-up, which stops nodes in order
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def _log_tail(self, name: str, lines: int = 5) -> str:
        path = self.state_dir / "nodes" / name / "node.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"no log at {path}"
        return f"last lines of {path}:\n  " + "\n  ".join(tail)
