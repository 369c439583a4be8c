"""Starting a network: everything is checked before the first node starts, a second run on a
running state directory changes nothing, the documented several-hosts steps work, and nothing on
a node's own timers can kill it."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from chain import alive, read_until_ready, stop_process

from zmix.bench.common import (
    HOST,
    authorities_running,
    free_ports,
    make_network,
    play_node,
)
from zmix.keys import load_directory
from zmix.mixnode import NodeCore
from zmix.network import Network, NetworkView
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
    read_until_ready(up)
    return up


def node_pid(state: Path, name: str) -> int:
    stats = metrics.statistics(state, name)
    assert stats is not None, f"{name} does not answer on its control socket"
    return int(stats["pid"])


def wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def running_state(state: Path) -> dict[str, object]:
    """What a second run must not change: control files, the running pids, and the logs' start
    lines (the running nodes go on logging their key schedule and documents, on their own)."""
    nodes = state / "nodes"
    return {"control": {n: metrics.control_path(state, n).read_text() for n in NODES},
            "logs": {n: _starts((nodes / n / "node.log").read_text()) for n in NODES},
            "pids": {n: node_pid(state, n) for n in NODES}}


def _starts(log: str) -> list[str]:
    """The lines of a node's log that a start of the node writes (and a refused one might)."""
    return [line for line in log.splitlines()
            if "listening on" in line or "error" in line.lower() or "refused" in line]


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
        assert stop_process(up) == 0


# ---------------------------------------------------------------------------- a second run


def test_a_second_zmix_up_on_a_running_state_directory_is_refused_and_changes_nothing(
        running: tuple[Path, Path, int]) -> None:
    path, state, up_pid = running
    before = running_state(state)
    for extra in ((), ("--only", "mix-a")):
        done = run_up(path, state, *extra)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr == (f"error: another zmix-up (process {up_pid}) is running on "
                               f"{state.resolve()}; stop it first, or use another --state\n")
        assert running_state(state) == before  # the running nodes still answer, as before


def test_a_node_started_by_hand_on_a_running_name_is_refused_and_changes_nothing(
        running: tuple[Path, Path, int]) -> None:
    _, state, _ = running
    before = running_state(state)
    done = subprocess.run([sys.executable, "-m", "zmix.cli.node", "--state", str(state),
                           "--name", "mix-a"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    assert done.stderr == (f"error: node mix-a is already running from {state} "
                           f"(process {before['pids']['mix-a']})\n")  # type: ignore[index]
    assert running_state(state) == before


def test_after_zmix_up_is_killed_its_orphans_are_named_and_a_new_run_starts_once_they_stop(
        small: tuple[Topology, Path, Path]) -> None:
    _, path, state = small
    up = start_up(path, state)
    pids = {n: node_pid(state, n) for n in NODES}
    from zmix.runtime.authority import query
    pids["authority-1"] = int(json.loads(query(state, "authority-1") or "{}")["pid"])
    try:
        up.kill()  # its nodes run on, in their own sessions; its flock went with it
        up.wait(10)
        done = run_up(path, state)
        assert done.returncode == 2
        assert done.stderr.startswith(f"error: already running from {state.resolve()}: "
                                      f"provider-1 (process {pids['provider-1']}), "
                                      f"mix-a (process {pids['mix-a']}), "
                                      f"authority-1 (process {pids['authority-1']}); "
                                      "stop them first")
        assert {n: node_pid(state, n) for n in NODES} == {n: pids[n] for n in NODES}
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not any(alive(p) for p in pids.values()), "the nodes to stop")
    again = start_up(path, state)  # the lock file left behind does not block
    assert stop_process(again) == 0


# ---------------------------------------------------------------------------- checks first


def started_nodes(state: Path) -> list[str]:
    nodes = state / "nodes"
    return sorted(p.parent.name for p in nodes.glob("*/node.log")) if nodes.exists() else []


def test_a_port_in_use_is_one_line_naming_node_and_address_and_starts_nothing(
        small: tuple[Topology, Path, Path]) -> None:
    topology, path, state = small
    port = topology.node("mix-a").port
    with socket.socket() as busy:
        busy.bind((HOST, port))
        busy.listen()
        done = run_up(path, state)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: node mix-a cannot listen on tcp://{HOST}:{port}: address "
                           "already in use\n")
    assert started_nodes(state) == []
    up = start_up(path, state)  # the port is free again: the same command works
    assert stop_process(up) == 0


def test_a_node_on_a_host_name_whose_port_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    # A host name is not probed before the start (that would cost a DNS lookup): the node's
    # own bind fails, and it must say so as plainly, not with a traceback.
    topology, state = make_network(tmp_path, **SMALL)  # type: ignore[arg-type]
    text = (state / "topology.yaml").read_text().replace(f"host: {HOST}", "host: localhost")
    (state / "topology.yaml").write_text(text)
    port = topology.node("mix-a").port
    with socket.socket() as busy:
        busy.bind((HOST, port))
        busy.listen()
        done = subprocess.run([sys.executable, "-m", "zmix.cli.node", "--state", str(state),
                               "--name", "mix-a"], capture_output=True, text=True, timeout=60,
                              check=False)
    assert done.returncode == 2
    assert done.stderr == (f"error: node mix-a cannot listen on tcp://localhost:{port}: address "
                           "already in use\n")


def test_a_private_key_readable_by_others_is_refused_before_any_node_starts(
        small: tuple[Topology, Path, Path]) -> None:
    _, path, state = small
    key = state / "private" / "mix-a.json"  # provider-1 comes first in the start order
    os.chmod(key, 0o644)
    done = run_up(path, state)
    assert done.returncode == 2
    assert done.stderr == (f"error: {key.resolve()}: (file): readable by other users (mode 644); "
                           f"run: chmod 600 {key.resolve()}\n")
    assert started_nodes(state) == []
    os.chmod(key, 0o600)
    assert run_up(path, state, "--keys-only").returncode == 0  # and now nothing is refused


def test_a_topology_that_is_not_utf8_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    text = "# caf\u00e9\nnetwork: cafe\nproviders: [p]\nlayers: [[a]]\nauthorities: [auth]\n"
    path.write_bytes(text.encode("latin-1"))
    done = run_up(path, tmp_path / "state")
    assert done.returncode == 2
    assert done.stderr == f"error: {path}: (file): not UTF-8 text (byte 0xe9 at offset 5)\n"
    assert not (tmp_path / "state").exists()
    path.write_bytes(text.encode())
    assert run_up(path, tmp_path / "state", "--keys-only").returncode == 0


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
    keys = load_directory(state, topology)
    # Every node's key for the first epochs (a loop's hops may come after a boundary).
    epoch_keys = {n.name: dict.fromkeys(range(3), keys[n.name].public_key)
                  for n in topology.nodes()}
    view = NetworkView(Network(1, changed, keys, epoch_keys))
    return NodeCore(view, "mix-a", random.Random(7), now=0.0)


def test_mix_loops_never_carry_a_delay_beyond_the_wire_even_from_an_unchecked_topology(
        small: tuple[Topology, Path, Path]) -> None:
    core = loopy(small, mean_delay=1000.0, max_delay=10_000.0, mix_loop_rate=50.0)
    hops = [core._hop(node, 0.0) for node in core.loop_route() * 200]
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
    topology, state = make_network(tmp_path, **SMALL, loopix={"mix_loop_rate": 10.0})  # type: ignore[arg-type]
    with (authorities_running(state, topology, allow=["provider-1", "mix-a"]),
          (tmp_path / "node.log").open("wb") as log):
        play_node(state, topology, "mix-a")  # the document needs a mixnode in its one layer
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


# ---------------------------------------------------------------------------- several hosts


def two_host_topology(path: Path) -> None:
    """Host A runs provider-1, mix-a1 and mix-c1; host B runs provider-2 and mix-b1. Both are
    127.0.0.1 here; on real hosts each node's ``host`` is its own host's address."""
    ports = iter(free_ports(6))

    def node(name: str) -> dict[str, object]:
        return {"name": name, "host": HOST, "port": next(ports)}

    path.write_text(yaml.safe_dump({
        "network": "two-hosts",
        "loopix": {"mean_delay": 0.002, "payload_rate": 50.0, "fetch_interval": 0.05,
                   "mix_loop_rate": 0.5},
        "defaults": {"workers": 1},
        "providers": [node("provider-1"), node("provider-2")],
        "layers": [[node("mix-a1")], [node("mix-b1")], [node("mix-c1")]],
        "clients": [{"name": "alice", "provider": "provider-1"},
                    {"name": "bob", "provider": "provider-2"}],
        "authorities": [node("authority-1")],
    }, sort_keys=False))


def client(command: str, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    module = {"zmix-send": "zmix.cli.send", "zmix-recv": "zmix.cli.recv"}[command]
    return subprocess.run([sys.executable, "-m", module, "--state", str(state), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_documented_several_hosts_steps_carry_a_message_between_two_hosts(
        tmp_path: Path) -> None:
    """docs/topology.md, "Running on several hosts", step by step."""
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    host_a.mkdir()
    host_b.mkdir()
    topology = host_a / "two-hosts.yaml"
    two_host_topology(topology)  # step 1
    done = run_up(topology, host_a / "state", "--keys-only")  # step 2
    assert done.returncode == 0, done.stderr
    # Step 3: the topology, public/ whole and host B's own private files go to host B; they
    # leave host A.
    (host_b / "state" / "private").mkdir(parents=True, mode=0o700)
    shutil.copy(topology, host_b / "two-hosts.yaml")
    shutil.copytree(host_a / "state" / "public", host_b / "state" / "public")
    for name in ("provider-2", "mix-b1", "bob"):
        for path in (host_a / "state" / "private").glob(f"{name}.*json"):  # identity too
            shutil.copy(path, host_b / "state" / "private" / path.name)
            path.unlink()
    assert sorted(p.name for p in (host_b / "state" / "private").iterdir()) == [
        "bob.json", "mix-b1.identity.json", "mix-b1.json", "provider-2.identity.json",
        "provider-2.json"]
    public = {p.name: p.read_bytes() for p in (host_a / "state" / "public").iterdir()}
    # Step 4: each host runs its own share; the authority runs on host A. Host B starts first:
    # its nodes wait for the authority's document.
    up_b = subprocess.Popen(up_command(host_b / "two-hosts.yaml", host_b / "state", "--only",
                                       "provider-2", "mix-b1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        up_a = start_up(topology, host_a / "state", "--only", "authority-1", "provider-1",
                        "mix-a1", "mix-c1")
        try:
            assert up_b.stdout is not None
            lines = []
            for line in up_b.stdout:  # ends if zmix-up exits
                lines.append(line)
                if "ready" in line:
                    break
            else:
                raise AssertionError("host B's zmix-up did not get ready:\n" + "".join(lines))
            for host in (host_a, host_b):  # nobody made new keys for the other host's members
                assert {p.name: p.read_bytes()
                        for p in (host / "state" / "public").iterdir()} == public
            sent = client("zmix-send", host_a / "state", "--from", "alice", "--to", "bob",
                          "across two hosts")
            assert sent.returncode == 0, sent.stderr
            got = client("zmix-recv", host_b / "state", "--as", "bob", "--wait", "30")
            assert got.returncode == 0, got.stderr
            assert "from alice: across two hosts" in got.stdout
        finally:
            assert stop_process(up_a) == 0
    finally:
        assert stop_process(up_b) == 0


def test_only_refuses_to_start_without_the_other_members_public_files(tmp_path: Path) -> None:
    topology = tmp_path / "two-hosts.yaml"
    two_host_topology(topology)
    assert run_up(topology, tmp_path / "a", "--keys-only").returncode == 0
    (tmp_path / "b" / "private").mkdir(parents=True, mode=0o700)
    shutil.copy(tmp_path / "a" / "private" / "mix-b1.json", tmp_path / "b" / "private")
    done = run_up(topology, tmp_path / "b", "--only", "mix-b1")
    assert done.returncode == 2
    missing = (tmp_path / "b" / "public" / "provider-1.json").resolve()
    assert done.stderr == (f"error: {missing}: (file): no key file for 'provider-1'; copy "
                           "public/provider-1.json from the state directory where the keys "
                           "were made\n")
    assert sorted(p.name for p in (tmp_path / "b" / "private").iterdir()) == ["mix-b1.json"]
    assert not (tmp_path / "b" / "nodes").exists()


# ---------------------------------------------------------------------------- authorities


def start_up_lines(topology: Path, state: Path, *extra: str) -> tuple[
        subprocess.Popen[str], list[str]]:
    """Start zmix-up; return it and the lines it printed up to its ready line."""
    up = subprocess.Popen(up_command(topology, state, *extra), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    assert up.stdout is not None
    lines = []
    for line in up.stdout:  # ends when zmix-up exits; it gives up on a process after 30 s
        lines.append(line)
        if "ready" in line:
            return up, lines
    up.wait(30)
    raise AssertionError("zmix-up did not get ready:\n" + "".join(lines))


def last_log_time(path: Path, text: str) -> str:
    """Return the timestamp of the last line of log ``path`` that contains ``text``."""
    matching = [line for line in path.read_text().splitlines() if text in line]
    assert matching, f"no line with {text!r} in {path}"
    return matching[-1][:23]  # "YYYY-MM-DD HH:MM:SS,mmm"


def test_zmix_up_starts_the_authority_first_with_an_allowlist_of_every_node_and_stops_it_last(
        small: tuple[Topology, Path, Path]) -> None:
    from zmix.authority import parse_allowlist
    from zmix.keys import load_identity_public
    from zmix.runtime.directory import authority_peers, ping

    topology, path, state = small
    up, lines = start_up_lines(path, state)
    try:
        started = [line.split()[1] for line in lines if " up at " in line]
        assert started[0] == "authority-1" and sorted(started[1:]) == sorted(NODES)
        allowlist = state / "authorities" / "authority-1" / "allowlist"
        keys = parse_allowlist(allowlist.read_text(), str(allowlist))
        assert keys == {load_identity_public(state, n): n for n in NODES}
        (peer,) = authority_peers(topology, state)
        assert ping(peer, timeout=5)
    finally:
        assert stop_process(up) == 0
    stopped = last_log_time(state / "authorities" / "authority-1" / "authority.log",
                            "authority authority-1 stopped")
    for name in NODES:
        assert last_log_time(state / "nodes" / name / "node.log", f"node {name} stopped") <= (
            stopped)
    assert not ping(peer, timeout=0.5)  # positive control above: it answered while running
    allowlist.write_text(f"{load_identity_public(state, 'provider-1').hex()}  # provider-1\n")
    up, lines = start_up_lines(path, state, "--only", "authority-1")
    try:
        assert "ready: 1 authority(ies) and 0 node(s) running" in lines[-1]
        assert [line.split()[1] for line in lines if " up at " in line] == ["authority-1"]
    finally:
        assert stop_process(up) == 0
    assert len(parse_allowlist(allowlist.read_text(), "")) == 1  # an allowlist is never replaced
