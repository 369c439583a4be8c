"""Process titles: each zmix process names itself for ps and top (docs/monitoring.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain import child_pids, read_until_ready, stop_process

from zmix.bench.common import make_network
from zmix.runtime import metrics
from zmix.runtime.authority import query

NETWORK = "zmix-titles"
NODES = ("provider-1", "mix-a")


def title(pid: int) -> str:
    """The process's command line as ps shows it (its arguments joined by spaces)."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0")
    return raw.replace(b"\0", b" ").decode()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start(argv: list[str], ready: str) -> subprocess.Popen[str]:
    """Start a zmix command and return once it printed a line containing ``ready``."""
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    read_until_ready(proc, ready)
    return proc


@dataclass
class Running:
    state: Path
    up: subprocess.Popen[str]

    def node_pid(self, name: str) -> int:
        stats = metrics.statistics(self.state, name)
        assert stats is not None, f"{name} does not answer on its control socket"
        return int(stats["pid"])


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """zmix-up running a provider and a mixnode (two workers each) and one authority."""
    tmp = tmp_path_factory.mktemp("titles")
    _, state = make_network(tmp, layers=(("mix-a",),), providers=("provider-1",),
                            clients={"alice": "provider-1", "bob": "provider-1",
                                     "carol": "provider-1"}, workers=2, network=NETWORK)
    up = start(["zmix.cli.up", str(tmp / "topology.yaml"), "--state", str(state)], "ready")
    try:
        yield Running(state, up)
    finally:
        assert stop_process(up) == 0


def test_zmix_up_is_titled_with_its_network(running: Running) -> None:
    assert title(running.up.pid) == f"zmix-up {NETWORK}"
    assert comm(running.up.pid) == "zmix-up"


def test_each_node_process_is_titled_zmix_node_and_its_name(running: Running) -> None:
    for name in NODES:
        pid = running.node_pid(name)
        assert title(pid) == f"zmix-node {name}"
        assert comm(pid) == name
        assert pid in child_pids(running.up.pid)


def test_each_worker_is_titled_with_its_node_and_its_index(running: Running) -> None:
    for name in NODES:
        node = running.node_pid(name)
        wanted = {f"zmix-worker {name}/0", f"zmix-worker {name}/1"}
        wait_for(lambda n=node, w=wanted: {title(p) for p in child_pids(n)} == w,
                 f"the two workers of {name} to be titled {sorted(wanted)}")
        assert sorted(comm(p) for p in child_pids(node)) == [f"{name}/0", f"{name}/1"]


def test_the_authority_is_titled_zmix_authority_and_its_name(running: Running) -> None:
    answer = query(running.state, "authority-1")
    assert answer is not None, "authority-1 does not answer on its control socket"
    pid = int(json.loads(answer)["pid"])
    assert title(pid) == "zmix-authority authority-1"
    assert comm(pid) == "authority-1"


@pytest.mark.parametrize(("program", "name", "extra"), [
    ("client", "alice", []),
    ("exit", "bob", ["--allow", "127.0.0.1:9"]),
    ("socks", "carol", ["--exit", "bob", "--listen", "127.0.0.1:0"]),
])
def test_a_client_daemon_is_titled_with_its_command_and_its_name(
        running: Running, program: str, name: str, extra: list[str]) -> None:
    daemon = start([f"zmix.cli.{program}", "--state", str(running.state), "--as", name, *extra],
                   "ready api=")
    try:
        assert title(daemon.pid) == f"zmix-{program} {name}"
        assert comm(daemon.pid) == name
    finally:
        assert stop_process(daemon) == 0


@pytest.mark.skipif(shutil.which("ps") is None, reason="ps is not installed")
def test_ps_shows_the_titles(running: Running) -> None:
    pids = {running.node_pid(name): f"zmix-node {name}" for name in NODES}
    pids[running.up.pid] = f"zmix-up {NETWORK}"
    out = subprocess.run(["ps", "-o", "pid=,args=", "-p", ",".join(map(str, pids))],
                         capture_output=True, text=True, check=True).stdout
    shown = {int(pid): args.strip() for pid, args in
             (line.strip().split(None, 1) for line in out.splitlines())}
    assert shown == pids


def test_a_long_name_is_cut_to_fifteen_bytes_in_the_short_name_only() -> None:
    script = ("from pathlib import Path; from zmix.runtime.proctitle import set_title; "
              "before = Path('/proc/self/comm').read_text().strip(); "
              "set_title('zmix-node', 'provider-with-a-long-name'); "
              "print(before); print(Path('/proc/self/comm').read_text().strip()); "
              "print(Path('/proc/self/cmdline').read_bytes().rstrip(b'\\0').decode())")
    before, short, full = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                         text=True, check=True).stdout.splitlines()
    assert before != short  # the positive control: the interpreter's own name was replaced
    assert short == "provider-with-a-long-name"[:15]
    assert full == "zmix-node provider-with-a-long-name"
