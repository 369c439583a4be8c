"""The test bed itself, without a network in it: hosts from a topology, namespaces made and
removed, cables, a crash, and zmix-testbed's refusals (docs/deploy.md, "The test bed")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmix.bench.common import make_network
from zmix.runtime import testbed
from zmix.topology_yaml import load_topology

TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "testbed.yaml"
root_only = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                               reason="network namespaces need root and iproute2")


def zmix_testbed(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmix.cli.testbed", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_each_host_address_of_the_topology_is_a_host_with_its_members_in_file_order() -> None:
    hosts = testbed.hosts_of(load_topology(TOPOLOGY), prefix="tb")
    assert [(h.name, h.address, h.netns, h.port) for h in hosts] == [
        ("h1", "198.51.100.1", "tb-1", "h1"), ("h2", "198.51.100.2", "tb-2", "h2"),
        ("h3", "198.51.100.3", "tb-3", "h3"), ("h4", "198.51.100.4", "tb-4", "h4")]
    assert hosts[0].members == ("authority-1", "provider-1", "mix-a1", "mix-c1")
    assert hosts[2].members == ("mix-b1",)


def test_a_topology_with_an_address_outside_the_documentation_range_is_refused(
        tmp_path: Path) -> None:
    local, _ = make_network(tmp_path)  # every node on 127.0.0.1
    with pytest.raises(testbed.TestbedError, match=r"198\.51\.100\.0/24"):
        testbed.hosts_of(local)
    done = zmix_testbed("--dir", str(tmp_path / "bed"), "up", local.path)
    assert done.returncode == 2 and "is not a host address of 198.51.100.0/24" in done.stderr
    assert not (tmp_path / "bed").exists()  # nothing made
    assert testbed.hosts_of(load_topology(TOPOLOGY))  # the control: the shipped one is taken


def test_commands_on_a_folder_without_a_test_bed_say_so_and_exit_2(tmp_path: Path) -> None:
    for args in (["status"], ["down"], ["link", "h1", "down"], ["crash", "h1"]):
        done = zmix_testbed("--dir", str(tmp_path), *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "no test bed here (zmix-testbed up makes one)" in done.stderr


@pytest.fixture
def bed() -> Iterator[testbed.Testbed]:
    made = testbed.Testbed(testbed.hosts_of(load_topology(TOPOLOGY), prefix=f"zs{os.getpid()}"),
                           prefix=f"zs{os.getpid()}")
    made.create()
    try:
        yield made
    finally:
        made.destroy()


def _ping(bed: testbed.Testbed, source: testbed.Host, target: testbed.Host) -> bool:
    done = subprocess.run(bed.command(source, [sys.executable, "-c", (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(1)\n"
        f"sys.exit(s.connect_ex(('{target.address}', 9)) not in (111,))")]),
        capture_output=True, timeout=20, check=False)
    return done.returncode == 0  # refused (nobody listens): the host answered


@root_only
def test_hosts_reach_each_other_across_the_bridge_and_not_once_a_cable_is_pulled(
        bed: testbed.Testbed) -> None:
    h1, h3 = bed.host("h1"), bed.host("mix-b1")
    assert _ping(bed, h1, h3) and _ping(bed, h3, h1)  # TCP refused at once: reachable
    bed.set_link(h3, up=False)
    assert not bed.link_is_up(h3) and not _ping(bed, h1, h3)  # no answer within 1 s
    bed.set_link(h3, up=True)
    assert bed.link_is_up(h3) and _ping(bed, h1, h3)
    # The machine's own namespace has no interface or address of the test bed.
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                               check=True).stdout
    assert "198.51.100." not in addresses


@root_only
def test_a_crash_kills_every_process_of_a_host_and_only_of_that_host(
        bed: testbed.Testbed) -> None:
    h2, h4 = bed.host("h2"), bed.host("h4")
    sleepers = [subprocess.Popen(bed.command(h, ["sleep", "600"]), start_new_session=True)
                for h in (h2, h2, h4)]
    try:
        deadline = time.monotonic() + 10
        while len(bed.pids(h2)) < 2 or not bed.pids(h4):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        bed.crash(h2)
        assert bed.pids(h2) == [] and len(bed.pids(h4)) == 1
        assert [s.wait(timeout=10) for s in sleepers[:2]] == [-9, -9]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait(timeout=10)


@root_only
def test_a_test_bed_left_by_a_killed_run_is_removed_by_the_next_one_with_its_prefix() -> None:
    prefix = f"zk{os.getpid()}"
    hosts = testbed.hosts_of(load_topology(TOPOLOGY), prefix=prefix)
    first = testbed.Testbed(hosts, prefix)
    first.create()  # and never destroyed: its run was killed
    stray = subprocess.Popen(first.command(hosts[0], ["sleep", "600"]), start_new_session=True)
    again = testbed.Testbed(hosts, prefix)
    try:
        again.create()  # removes the stale one (and its process), then makes its own
        assert stray.wait(timeout=10) == -9
        assert sorted(n for n in testbed.namespaces() if n.startswith(f"{prefix}-")) == sorted(
            [f"{prefix}-sw", *(h.netns for h in hosts)])
    finally:
        again.destroy()
        stray.kill()
        stray.wait(timeout=10)
    assert not [n for n in testbed.namespaces() if n.startswith(f"{prefix}-")]


@root_only
def test_netem_works_or_says_clearly_why_not(bed: testbed.Testbed) -> None:
    reason = testbed.netem_available()
    if reason is not None:
        with pytest.raises(testbed.NetemUnavailable, match="no netem queueing discipline"):
            bed.netem(bed.host("h3"), delay_ms=10)
        return
    bed.netem(bed.host("h3"), delay_ms=200)
    started = time.monotonic()
    assert _ping(bed, bed.host("h1"), bed.host("h3"))
    assert time.monotonic() - started > 0.2  # the SYN's answer waited in the switch
    bed.clear_netem(bed.host("h3"))
