"""End to end with real processes: zmix-up runs the network, zmix-send and zmix-recv use it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from chain import alive, stop_process
from test_launch import start_up

from zmix.bench.common import make_network
from zmix.runtime import metrics
from zmix.sphinx import Profile
from zmix.topology_yaml import load_topology

CLIENTS = {"alice": "provider-1", "bob": "provider-2", "carol": "provider-1"}


@dataclass
class Network:
    topology_path: Path
    state: Path
    up: subprocess.Popen[str]

    def cli(self, command: str, *args: str, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        module = {"send": "zmix.cli.send", "recv": "zmix.cli.recv"}[command]
        return subprocess.run([sys.executable, "-m", module, "--state", str(self.state), *args],
                              capture_output=True, text=True, timeout=timeout, input=stdin,
                              check=False)

    def cli_bytes(self, command: str, *args: str, stdin: bytes = b"",
                  timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        module = {"send": "zmix.cli.send", "recv": "zmix.cli.recv"}[command]
        return subprocess.run([sys.executable, "-m", module, "--state", str(self.state), *args],
                              capture_output=True, timeout=timeout, input=stdin, check=False)

    def recv_json(self, name: str, *args: str) -> list[dict[str, Any]]:
        done = self.cli("recv", "--as", name, "--json", *args)
        got = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        assert done.returncode == (0 if got else 3), done.stderr  # 3: no message shown
        return got


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    make_network(tmp_path, clients=CLIENTS,
                 loopix={"payload_rate": 50.0, "mean_delay": 0.002, "fetch_interval": 0.05})
    up = start_up(tmp_path / "topology.yaml", tmp_path / "state")
    try:
        yield Network(tmp_path / "topology.yaml", tmp_path / "state", up)
    finally:
        stop_process(up)


def test_a_text_reaches_a_recipient_who_was_offline(network: Network) -> None:
    sent = network.cli("send", "--from", "alice", "--to", "bob", "hello bob")
    assert sent.returncode == 0, sent.stderr
    got = network.recv_json("bob", "--wait", "20")
    assert [(m["from"], m["text"]) for m in got] == [("alice", "hello bob")]
    assert network.recv_json("bob") == []  # delivered once, acknowledged, gone


def test_a_message_from_stdin_and_a_plain_listing(network: Network) -> None:
    sent = network.cli("send", "--from", "carol", "--to", "bob", stdin="through a pipe\n")
    assert sent.returncode == 0, sent.stderr
    done = network.cli("recv", "--as", "bob", "--wait", "20")
    assert done.returncode == 0
    assert "from carol: through a pipe" in done.stdout


def test_an_anonymous_message_can_be_answered_without_knowing_the_sender(network: Network) -> None:
    sent = network.cli("send", "--from", "alice", "--to", "bob", "--anonymous",
                       "--reply-blocks", "1", "who am I")
    assert sent.returncode == 0, sent.stderr
    [message] = network.recv_json("bob", "--wait", "20")
    assert message["from"] is None and message["text"] == "who am I"
    replied = network.cli("send", "--from", "bob", "--reply", message["reply_handle"],
                          "an answer to nobody in particular")
    assert replied.returncode == 0, replied.stderr
    # Nothing acknowledges a reply, and zmix-send says so rather than claim an acknowledgement.
    assert "acknowledged by" not in replied.stdout and "not acknowledged" in replied.stdout
    assert "acknowledged by the recipient's provider" in sent.stdout  # the message itself was
    [answer] = network.recv_json("alice", "--wait", "20")
    assert answer["text"] == "an answer to nobody in particular"
    assert answer["from"] is None


@pytest.mark.slow
def test_a_multi_mebibyte_file_arrives_intact(network: Network, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 12345)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    sent = network.cli("send", "--from", "alice", "--to", "bob", "--file", str(path),
                       timeout=600)
    assert sent.returncode == 0, sent.stderr
    out = tmp_path / "downloads"
    out.mkdir()
    [message] = network.recv_json("bob", "--wait", "60", "--out", str(out))
    assert Path(message["file"]) == out / "blob.bin"
    assert (out / "blob.bin").read_bytes() == data


def test_binary_messages_and_control_characters_are_written_to_files_byte_for_byte(
        network: Network, tmp_path: Path) -> None:
    archive = bytes(range(256)) * 8 + b"\xff\xfe not UTF-8 \x00"  # as from `tar c notes/ |`
    escapes = b"looks like text \x1b[2J\x1b[31m but clears the screen"
    for data in (archive, escapes, "plain text, printed: é ✓".encode()):
        sent = network.cli_bytes("send", "--from", "alice", "--to", "bob", stdin=data)
        assert sent.returncode == 0, sent.stderr
    out = tmp_path / "inbox"
    out.mkdir()
    shown = b""
    deadline = time.monotonic() + 60
    while shown.count(b"from alice:") < 3 and time.monotonic() < deadline:
        done = network.cli_bytes("recv", "--as", "bob", "--wait", "20", "--out", str(out))
        assert done.returncode in (0, 3), done.stderr
        shown += done.stdout
    assert "from alice: plain text, printed: é ✓\n".encode() in shown  # text is still printed
    assert b"\x1b" not in shown and b"\xff" not in shown and b"\xef\xbf\xbd" not in shown
    files = {path.read_bytes() for path in out.iterdir()}
    assert files == {archive, escapes}  # every byte, in files that the output names
    assert all(f"-> {path}".encode() in shown for path in out.iterdir())
    assert all(path.name.startswith("message-") and path.suffix == ".bin"
               for path in out.iterdir())


def test_zmix_recv_exits_3_when_nothing_arrived_and_0_when_a_message_was_shown(
        network: Network) -> None:
    empty = network.cli("recv", "--as", "carol", "--wait", "1")
    assert empty.returncode == 3, empty.stderr
    assert "no messages for carol" in empty.stdout
    quiet = network.cli("recv", "--as", "carol", "--json")
    assert quiet.returncode == 3 and quiet.stdout == ""
    sent = network.cli("send", "--from", "alice", "--to", "carol", "something")
    assert sent.returncode == 0, sent.stderr
    got = network.cli("recv", "--as", "carol", "--wait", "20")
    assert got.returncode == 0 and "from alice: something" in got.stdout


def test_a_message_that_could_not_be_shown_stays_for_the_next_zmix_recv(network: Network) -> None:
    sent = network.cli("send", "--from", "alice", "--to", "carol", "read me twice")
    assert sent.returncode == 0, sent.stderr
    reader = subprocess.Popen(
        [sys.executable, "-m", "zmix.cli.recv", "--state", str(network.state), "--as", "carol",
         "--wait", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # the output goes nowhere: `zmix-recv | true`
    assert reader.wait(60) == 1
    assert "stays in carol's inbox" in reader.stderr.read()
    again = network.cli("recv", "--as", "carol", "--wait", "20")
    assert again.returncode == 0 and "from alice: read me twice" in again.stdout


def test_a_message_survives_a_mixnode_killed_mid_transfer(network: Network) -> None:
    data = os.urandom(120_000)  # enough fragments to be in flight when the node dies
    sender = subprocess.Popen(
        [sys.executable, "-m", "zmix.cli.send", "--state", str(network.state), "--from", "alice",
         "--to", "bob", "--timeout", "240"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sender.stdin is not None
    sender.stdin.write(data)
    sender.stdin.close()
    deadline = time.monotonic() + 60  # the transfer is under way: some fragments arrived
    while (metrics.statistics(network.state, "provider-2") or {}).get(
            "provider_messages_stored", 0) < 5:
        assert sender.poll() is None, "zmix-send exited before 5 fragments were stored"
        assert time.monotonic() < deadline, "provider-2 stored no 5 fragments in 60 s"
        time.sleep(0.05)
    assert sender.poll() is None, "the transfer was over before the kill"
    pid = int((metrics.statistics(network.state, "mix-b1") or {})["pid"])
    os.kill(pid, signal.SIGKILL)  # zmix-up starts it again after a pause
    assert sender.wait(300) == 0, sender.stderr.read() if sender.stderr else ""
    got = network.recv_json("bob", "--wait", "30")
    assert len(got) == 1 and got[0]["bytes"] == len(data)


def test_zmix_up_stops_every_process_on_sigterm(tmp_path: Path) -> None:
    make_network(tmp_path, clients=CLIENTS)
    up = start_up(tmp_path / "topology.yaml", tmp_path / "state")
    nodes = [n.name for n in _topology_nodes(tmp_path)]
    pids = [int((metrics.statistics(tmp_path / "state", n) or {})["pid"]) for n in nodes]
    pids += _descendants_of(pids)  # the workers
    assert len(pids) == 2 * len(nodes)
    assert all(alive(p) for p in pids)
    assert stop_process(up) == 0
    deadline = time.monotonic() + 5  # zmix-up reaped the nodes; their workers follow them
    while survivors := [p for p in pids if alive(p)]:
        assert time.monotonic() < deadline, f"still running 5 s after zmix-up stopped: {survivors}"
        time.sleep(0.05)


def test_a_bad_topology_starts_nothing_and_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    make_network(tmp_path, clients=CLIENTS)
    bad.write_text((tmp_path / "topology.yaml").read_text().replace(
        "mean_delay: 0.001", "mean_delay: -1"))
    done = subprocess.run([sys.executable, "-m", "zmix.cli.up", str(bad), "--state",
                           str(tmp_path / "other")], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    assert str(bad) in done.stderr and "loopix.mean_delay" in done.stderr
    assert not (tmp_path / "other" / "nodes").exists()


def _topology_nodes(directory: Path) -> list[Any]:
    from zmix.topology import load_topology

    return list(load_topology(directory / "state" / "topology.yaml").nodes())


def _descendants_of(pids: list[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in pids:
                found.append(int(entry))
    return found


def test_the_readme_demo_sends_messages_and_shuts_down(tmp_path: Path) -> None:
    topology = Path(__file__).parent.parent / "topologies" / "local.yaml"
    done = subprocess.run([sys.executable, "-m", "zmix.cli.up", str(topology), "--demo",
                           "--state", str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ready" in done.stdout
    assert "from alice: hello bob, this is alice speaking through the mixnet" in done.stdout
    assert "zmix-up: stopped" in done.stdout


@pytest.mark.slow  # about 35 s: the demo waits for a key epoch
def test_the_readme_demo_runs_on_a_kem1_network_across_a_key_epoch(tmp_path: Path) -> None:
    spec = yaml.safe_load((Path(__file__).parent.parent / "topologies" / "local.yaml")
                          .read_text())
    spec["sphinx"]["profile"] = "kem1"  # one scalar multiplication per hop (docs/sphinx.md)
    topology = tmp_path / "kem1.yaml"
    topology.write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "zmix.cli.up", str(topology), "--demo",
                           "--state", str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "from alice: hello bob, this is alice speaking through the mixnet" in done.stdout
    assert "this is alice again, in key epoch" in done.stdout  # under the next epoch's keys
    assert load_topology(tmp_path / "demo" / "topology.yaml").sphinx.profile is Profile.KEM1
