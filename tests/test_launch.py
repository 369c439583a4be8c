"""Starting a network: everything is checked before the first node starts, a second run on a
running state directory changes nothing, the documented several-hosts steps work, and nothing on
a node's own timers can kill it."""

from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmix.bench.common import make_network
from zmix.keys import load_directory
from zmix.mixnode import NodeCore
from zmix.runtime import metrics
from zmix.sphinx import MAX_DELAY_US
from zmix.topology import LoopixParams, Topology

SMALL = {"layers": (("mix-a",),), "providers": ("provider-1",)}
NODES = ("provider-1", "mix-a")


def up_command(topology: Path, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "zmix.cli.up", str(topology), "--state", str(state), *extra]


def run_up(topology: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run a zmix-up that is expected to end by itself (a refusal, --keys-only)."""
    return subprocess.run(up_command(topology, state, *extra), capture_output=True, text=True,
                          timeout=60, check=False)


def start_up(topology: Path, state: Path, *extra: str) -> subprocess.Popen[str]:
    """Start zmix-up and return once it printed its ready line (fail loudly otherwise)."""
    up = subprocess.Popen(up_command(topology, state, *extra), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    assert up.stdout is not None
    lines = []
    for line in up.stdout:  # ends when zmix-up exits; it gives up on a node after 30 s
        lines.append(line)
        if "ready" in line:
            return up
    up.wait(30)
    raise AssertionError("zmix-up did not get ready:\n" + "".join(lines))


def stop_up(up: subprocess.Popen[str]) -> int:
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
    try:
        return up.wait(30)
    finally:
        if up.poll() is None:
            up.kill()


def node_pid(state: Path, name: str) -> int:
    stats = metrics.statistics(state, name)
    assert stats is not None, f"{name} does not answer on its control socket"
    return int(stats["pid"])


def wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def running_state(state: Path) -> dict[str, object]:
    """What a second run must not change: control files, logs, the running pids."""
    nodes = state / "nodes"
    return {"control": {n: metrics.control_path(state, n).read_text() for n in NODES},
            "logs": {n: (nodes / n / "node.log").read_bytes() for n in NODES},
            "pids": {n: node_pid(state, n) for n in NODES}}


@pytest.fixture
def small(tmp_path: Path) -> tuple[Topology, Path, Path]:
    topology, state = make_network(tmp_path, **SMALL)  # type: ignore[arg-type]
    return topology, tmp_path / "topology.yaml", state


@pytest.fixture
def running(small: tuple[Topology, Path, Path]) -> Iterator[tuple[Path, Path, int]]:
    _, path, state = small
    up = start_up(path, state)
    try:
        yield path, state, up.pid
    finally:
        assert stop_up(up) == 0


def test_a_delay_longer_than_a_packet_can_carry_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text("network: slow\nproviders: [p]\nlayers: [[a]]\n"
                    "loopix: {mean_delay: 1000, max_delay: 10000}\n")
    done = run_up(path, tmp_path / "state")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {path}: loopix.max_delay: must be a number <= "
                                  "4294.967295 (the longest delay a packet can carry")
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------------------- a node's timers


def loopy(small: tuple[Topology, Path, Path], **loopix: float) -> NodeCore:
    """A NodeCore of mix-a whose topology was changed after validation."""
    topology, _, state = small
    changed = dataclasses.replace(topology, loopix=LoopixParams(**loopix))  # type: ignore[arg-type]
    return NodeCore(changed, changed.node("mix-a"), load_directory(state, topology),
                    random.Random(7), now=0.0)


def test_mix_loops_never_carry_a_delay_beyond_the_wire_even_from_an_unchecked_topology(
        small: tuple[Topology, Path, Path]) -> None:
    core = loopy(small, mean_delay=1000.0, max_delay=10_000.0, mix_loop_rate=50.0)
    hops = [core._hop(node) for node in core.loop_route() * 200]
    assert max(h.delay_us for h in hops) == MAX_DELAY_US  # the cap is reached, and held
    loops = core.poll_loops(10.0)  # before the clamp: LocalMisuse, the node's crash loop
    assert len(loops) > 100


def test_a_mix_loop_that_cannot_be_made_costs_that_loop_and_not_the_next(
        small: tuple[Topology, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    core = loopy(small, mix_loop_rate=1.0)
    first = core.next_loop_due()
    assert first is not None
    monkeypatch.setattr(core, "_make_loop", lambda now: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        core.poll_loops(first)
    after = core.next_loop_due()
    assert after is not None and after > first  # not due again at once: no busy loop
    monkeypatch.undo()
    assert len(core.poll_loops(after)) == 1


INJECT = """
import sys
import zmix.mailbox, zmix.mixnode
def boom(*args, **kwargs):
    raise RuntimeError("injected fault")
zmix.mixnode.NodeCore._make_loop = boom
zmix.mailbox.Mailbox.expire = boom
from zmix.cli.node import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_timer_that_raises_is_logged_and_counted_and_the_node_keeps_running(
        tmp_path: Path) -> None:
    # A provider whose mix loops and mailbox expiry raise on every round: before the guard, the
    # first one took the whole node down (and zmix-up restarted it into the same fault).
    _, state = make_network(tmp_path, **SMALL, loopix={"mix_loop_rate": 10.0})  # type: ignore[arg-type]
    with (tmp_path / "node.log").open("wb") as log:
        node = subprocess.Popen([sys.executable, "-c", INJECT, "--state", str(state), "--name",
                                 "provider-1"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: (metrics.statistics(state, "provider-1", 0.5) or {}).get(
                "internal_errors", 0) >= 10, "ten failed timer rounds to be counted")
            time.sleep(1.0)
            stats = metrics.statistics(state, "provider-1")
            assert node.poll() is None and stats is not None and stats["pid"] == node.pid
            # Each failing timer keeps its own pace (10 loops a second, one expiry), instead of
            # failing again on every wake-up of the loop.
            assert stats["internal_errors"] <= 3 * 10 * stats["uptime_seconds"] + 2
        finally:
            node.send_signal(signal.SIGTERM)
            status = node.wait(30)
    assert status == 0
    text = (tmp_path / "node.log").read_text()
    assert "error in the node's mix loop; skipped this time" in text
    assert "RuntimeError: injected fault" in text
    assert "error in the node's mailbox expiry; skipped this time" in text


