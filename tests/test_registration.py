"""Open registration with real processes: a client that no topology declares joins the network."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from chain import stop_process
from test_launch import start_up

from zmix import wire
from zmix.bench.common import free_ports, make_network
from zmix.keys import load_directory
from zmix.runtime import links, metrics
from zmix.topology import Topology

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}


def cli(state: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"zmix.cli.{module}", "--state", str(state),
                           *args], capture_output=True, text=True, timeout=120, check=False)


def recv_json(state: Path, name: str, *args: str) -> list[dict[str, Any]]:
    done = cli(state, "recv", "--as", name, "--json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@pytest.fixture
def open_network(tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    topology, state = make_network(
        tmp_path, layers=(("mix-a",), ("mix-b",)), clients=CLIENTS,
        loopix={"payload_rate": 50.0, "mean_delay": 0.002, "fetch_interval": 0.05},
        mailbox={"open_registration": True, "registration_limit": 5})
    up = start_up(tmp_path / "topology.yaml", state)
    try:
        yield topology, state
    finally:
        stop_process(up)


def test_a_registered_client_mails_and_is_mailed_and_survives_a_provider_restart(
        open_network: tuple[Topology, Path]) -> None:
    _, state = open_network
    done = cli(state, "register", "--name", "dave", "--provider", "provider-2")
    assert done.returncode == 0, done.stderr
    assert "registered dave with provider-2" in done.stdout
    assert json.loads((state / "contacts" / "dave.json").read_text())["provider"] == "provider-2"

    sent = cli(state, "send", "--from", "alice", "--to", "dave", "welcome, dave")
    assert sent.returncode == 0, sent.stderr
    assert [(m["from"], m["text"]) for m in recv_json(state, "dave", "--wait", "20")] == [
        ("alice", "welcome, dave")]
    sent = cli(state, "send", "--from", "dave", "--to", "bob", "signed by a newcomer")
    assert sent.returncode == 0, sent.stderr
    assert [(m["from"], m["text"]) for m in recv_json(state, "bob", "--wait", "20")] == [
        ("dave", "signed by a newcomer")]

    # Asking again (say the first answer was lost) is answered the same way.
    again = cli(state, "register", "--name", "dave", "--provider", "provider-2")
    assert again.returncode == 0, again.stderr

    # The provider keeps the registration on disk: killed and restarted by zmix-up, it still
    # admits dave's key and keeps dave's mail.
    stats = metrics.statistics(state, "provider-2")
    assert stats is not None
    old_pid = stats["pid"]
    os.kill(int(old_pid), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        stats = metrics.statistics(state, "provider-2", timeout=0.3)
        if stats is not None and stats["pid"] != old_pid:
            break
        assert time.monotonic() < deadline, "provider-2 did not come back"
        time.sleep(0.2)
    sent = cli(state, "send", "--from", "alice", "--to", "dave", "after the restart")
    assert sent.returncode == 0, sent.stderr
    assert [m["text"] for m in recv_json(state, "dave", "--wait", "20")] == ["after the restart"]


def test_a_taken_name_is_refused_by_the_provider(open_network: tuple[Topology, Path],
                                                 tmp_path: Path) -> None:
    _, state = open_network
    assert cli(state, "register", "--name", "erin", "--provider", "provider-1").returncode == 0
    # Another state directory of the same network, with other keys, wants the same name.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(state / "topology.yaml", other / "topology.yaml")
    shutil.copytree(state / "public", other / "public")
    done = cli(other, "register", "--name", "erin", "--provider", "provider-1")
    assert done.returncode == 1 and "name_taken" in done.stderr
    # A member of the topology is refused before anything is sent.
    done = cli(state, "register", "--name", "alice", "--provider", "provider-1")
    assert done.returncode == 2 and "already a member" in done.stderr


def test_an_unregistered_key_gets_through_the_handshake_but_nothing_else(
        open_network: tuple[Topology, Path]) -> None:
    topology, state = open_network
    provider = topology.node("provider-1")
    server_key = load_directory(state, topology)["provider-1"].curve_public
    public, secret = zmq.curve_keypair()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = links.connect_dealer(ctx, provider.endpoint, server_key,
                                zmq.utils.z85.decode(public), zmq.utils.z85.decode(secret),
                                max_frame=wire.client_frame_limit(
                                    topology.sphinx, topology.mailbox.fetch_slots))
    try:
        before = metrics.statistics(state, "provider-1")
        assert before is not None
        geometry = {"params": topology.sphinx, "slots": topology.mailbox.fetch_slots}
        for _ in range(3):
            sock.send(wire.encode(wire.Fetch(7), **geometry))
        deadline = time.monotonic() + 10
        while True:
            after = metrics.statistics(state, "provider-1")
            assert after is not None
            if after["dropped_unknown_peer"] - before["dropped_unknown_peer"] >= 3:
                break
            assert time.monotonic() < deadline, f"3 FETCHes not dropped in 10 s: {after}"
            time.sleep(0.05)
        assert after["dropped_unknown_peer"] - before["dropped_unknown_peer"] == 3
        assert after["auth_unregistered"] >= 1
        assert not sock.poll(300), "a stranger's FETCH was answered"
        # The one frame the door lets through, on the same link, is answered (here refused: a
        # name with a space is no name).
        sock.send(wire.encode(wire.Register(zmq.utils.z85.decode(public), bytes(32),
                                            "not a name"), **geometry))
        assert sock.poll(10_000), "the stranger's REGISTER was not answered"
        answer = wire.decode(sock.recv(), **geometry)
        assert isinstance(answer, wire.Error) and answer.code == "bad_request"
    finally:
        sock.close(linger=0)
        ctx.term()


def test_register_refuses_when_the_network_is_closed(tmp_path: Path) -> None:
    _, state = make_network(tmp_path, layers=(("mix-a",),), clients=CLIENTS)
    done = cli(state, "register", "--name", "dave", "--provider", "provider-1")
    assert done.returncode == 2 and "mailbox.open_registration" in done.stderr
    assert not (state / "private" / "dave.json").exists()


def test_a_stranger_claiming_a_node_s_id_cannot_take_its_link_over() -> None:
    # Through an open door any key completes the handshake. A node's link carries no routing
    # identity of its own (the ROUTER gives its connection one), and the ROUTER hands no identity
    # over: a newcomer claiming the very identity the node's connection holds is ignored.
    from zmq.utils import z85

    server, node, stranger, newcomer = ([z85.decode(k) for k in zmq.curve_keypair()]
                                        for _ in range(4))
    node_id = b"N" * 16
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gate = links.KeyGate({node[0]: node_id}, open_door=True)
    auth = links.start_authenticator(ctx, gate, "net")
    port = free_ports(1)[0]
    limit = 64 * 1024
    router = links.bind_router(ctx, f"tcp://127.0.0.1:{port}", *server, "net", max_frame=limit)
    out = links.Links(ctx, *node, lambda _: (f"tcp://127.0.0.1:{port}", server[0]),
                      max_frame=limit)
    intruder: zmq.Socket[bytes] | None = None
    monitor: zmq.Socket[bytes] | None = None
    control: zmq.Socket[bytes] | None = None
    try:
        routes: set[bytes] = set()
        others: list[tuple[str, bytes]] = []  # (User-Id, frame) of everyone but the node

        def delivered(count: int) -> int:
            """Send ``count`` frames on the node's link; return how many arrived from it."""
            for i in range(count):
                assert out.send(b"peer", f"frame {i}".encode(), time.monotonic())
            got, deadline = 0, time.monotonic() + 3
            while got < count and time.monotonic() < deadline:
                if router.poll(100):
                    frames = router.recv_multipart(copy=False)
                    if str(frames[1].get("User-Id")) == links.user_id(node[0]):
                        got += 1
                        routes.add(frames[0].bytes)
                    else:
                        others.append((str(frames[1].get("User-Id")), frames[1].bytes))
            return got

        assert delivered(5) == 5  # the node's link is up; now the intruder comes
        assert len(routes) == 1
        intruder = ctx.socket(zmq.DEALER)
        intruder.routing_id = routes.pop()  # the identity the node's connection holds
        intruder.curve_serverkey = z85.encode(server[0])
        intruder.curve_publickey, intruder.curve_secretkey = map(z85.encode, stranger)
        monitor = intruder.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        intruder.connect(f"tcp://127.0.0.1:{port}")
        intruder.send(b"hello")
        assert monitor.poll(5_000), "the open door did not let the intruder's key in"
        # A stranger claiming no identity, through the same door, is heard: the ROUTER reads
        # strangers, so not hearing the intruder below means something.
        control = ctx.socket(zmq.DEALER)
        control.curve_serverkey = z85.encode(server[0])
        control.curve_publickey, control.curve_secretkey = map(z85.encode, newcomer)
        control.connect(f"tcp://127.0.0.1:{port}")
        control.send(b"hello too")
        assert delivered(20) == 20
        deadline = time.monotonic() + 5
        while (links.user_id(newcomer[0]), b"hello too") not in others:
            assert time.monotonic() < deadline, f"the newcomer was not heard: {others}"
            if router.poll(100):
                frames = router.recv_multipart(copy=False)
                others.append((str(frames[1].get("User-Id")), frames[1].bytes))
        assert (links.user_id(stranger[0]), b"hello") not in others  # the claimer was not
    finally:
        if monitor is not None:
            monitor.close(linger=0)
        if intruder is not None:
            intruder.close(linger=0)
        if control is not None:
            control.close(linger=0)
        router.close(linger=0)
        out.close()
        auth.stop()
        ctx.term()


def test_register_refuses_a_name_known_here_only_as_a_contact(tmp_path: Path) -> None:
    topology, state = make_network(tmp_path, layers=(("mix-a",),), clients=CLIENTS,
                                   mailbox={"open_registration": True})
    from zmix.contacts import Contact, write_contact
    from zmix.topology import entity_id

    write_contact(state, Contact("dave", entity_id(topology.network, "dave"), b"\x01" * 32,
                                 b"\x02" * 32, "provider-1"))
    done = cli(state, "register", "--name", "dave", "--provider", "provider-1")
    assert done.returncode == 2 and "without its private keys" in done.stderr
    assert not (state / "private" / "dave.json").exists()


def test_the_open_door_admits_unknown_keys_at_a_bounded_rate() -> None:
    now = [100.0]
    member = b"\x01" * 32
    gate = links.KeyGate({member: b"m" * 16}, open_door=True, clock=lambda: now[0])

    def knock(key: bytes) -> bool:
        return gate.callback("net", links.user_id(key).encode())

    strangers = [bytes([2, i]) + bytes(30) for i in range(links.DOOR_BURST + 5)]
    assert [knock(k) for k in strangers] == [True] * links.DOOR_BURST + [False] * 5
    assert knock(member)  # members are never throttled
    now[0] += 2.0 / links.DOOR_RATE  # two more tokens
    assert [knock(k) for k in strangers[:3]] == [True, True, False]
    assert (gate.unregistered, gate.throttled, gate.allowed) == (links.DOOR_BURST + 2, 6, 1)
    closed = links.KeyGate({member: b"m" * 16})
    assert not closed.callback("net", links.user_id(strangers[0]).encode())
    assert closed.denied == 1
