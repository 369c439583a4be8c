"""Real node processes on loopback: forwarding, delays, garbage, dead workers, restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from chain import Chain, alive, child_pids, start_chain
from zmq.utils.monitor import recv_monitor_message

from zmix import crypto, wire
from zmix.bench.common import authorities_running, free_ports, make_network
from zmix.runtime import links, metrics
from zmix.runtime.launcher import Launcher
from zmix.runtime.node import MAX_IN_FLIGHT


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    with start_chain(tmp_path) as running:
        yield running


def test_packets_cross_a_chain_of_nodes_in_delay_order_not_send_order(chain: Chain) -> None:
    # A node's first packets wait for its workers to start; if that outlasts the delays below,
    # every due time has passed when the results come back and the packets leave in the order
    # they came (about one run in six). One packet through the whole chain first shows it ready.
    chain.send(chain.packet(b"warm-up"))
    assert [m for _, m in chain.receive(1)] == [b"warm-up"]
    # Packet i waits 0.05 * (5 - i) s at mix-a: sent first, it arrives last.
    sent_at = {}
    for i in range(6):
        message = f"packet {i}".encode()
        packet = chain.packet(message, delays=(0.05 * (5 - i), 0.01))
        sent_at[message] = time.monotonic()
        chain.send(packet)
    got = chain.receive(6)
    assert sorted(m for _, m in got) == sorted(sent_at)
    order = [m for _, m in got]
    assert order != sorted(sent_at, key=sent_at.__getitem__)  # mixed, not FIFO
    for arrival, message in got:
        i = int(message.split()[1])
        assert arrival - sent_at[message] >= 0.05 * (5 - i) + 0.01 - 0.005
    assert chain.wait_stats("mix-a", lambda s: s["forwarded"] >= 7,
                       "7 packets forwarded")["forwarded"] == 7


def test_garbage_is_dropped_and_counted_while_good_packets_still_flow(chain: Chain) -> None:
    params = chain.topology.sphinx
    good = chain.packet(b"good")
    chain.send(good)
    chain.send(good)  # a replay
    packet_head = bytes([wire.WIRE_VERSION, wire.FrameType.PACKET])
    chain.outbox.send(packet_head + good[:-1])  # a truncated packet
    # Right size and Sphinx version, junk after: refused at the MAC. (A wholly random packet
    # is refused at its version byte first; the wait below, silent on timeout, hid that.)
    version = good[:1]  # the network's Sphinx version byte (v1 0x01, kem1 0x02)
    chain.outbox.send(packet_head + version + crypto.random_bytes(params.packet_length - 1))
    chain.outbox.send(crypto.random_bytes(100))  # not a frame at all
    chain.outbox.send(b"\x09\x01" + good)  # an unknown wire version
    # A good packet with parts after it, twice: a frame is one part, so both are refused whole.
    framed = wire.encode(wire.Packet(chain.packet(b"multipart")), params=params, slots=8)
    chain.outbox.send_multipart([framed, b"tail"])
    chain.outbox.send_multipart([framed, b"", b"tail"])
    _intruder_sends(chain)
    chain.send(chain.packet(b"after the garbage"))
    got = sorted(m for _, m in chain.receive(2))
    assert got == [b"after the garbage", b"good"]
    assert chain.receive(1, timeout=0.5) == []  # the replay was not forwarded
    stats = chain.wait_stats("mix-a", lambda s: s["dropped_replay"] >= 1
                        and s["auth_denied"] >= 1 and s["dropped_bad_mac"] >= 1,
                        "replay, refused handshake and bad MAC counted")
    assert stats["dropped_wrong_size"] >= 1
    assert stats["dropped_bad_frame"] + stats["dropped_bad_version"] >= 4
    assert stats["dropped_bad_frame"] >= 2  # the multipart messages (the rest: one at most)


def test_a_frame_longer_than_any_valid_one_drops_the_link_before_it_is_read(
        chain: Chain) -> None:
    limit = wire.node_frame_limit(chain.topology.sphinx)
    sock = links.connect_dealer(chain.ctx, chain.topology.node("mix-a").endpoint,
                                chain.directory["mix-a"].curve_public, chain.provider.curve_public,
                                chain.provider.curve_private, max_frame=limit)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    try:
        assert _next_event(monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        before = chain.stats("mix-a")
        # A frame of the longest length allowed (a PACKETS frame's, 32 packets) is read, and
        # refused: it is no FETCH of a client's length.
        fetch_head = bytes([wire.WIRE_VERSION, wire.FrameType.FETCH])
        sock.send(fetch_head + bytes(limit - 2))
        read = chain.wait_stats("mix-a",
                           lambda s: s["dropped_wrong_size"] > before["dropped_wrong_size"],
                           "the longest allowed frame read and dropped")
        assert read["dropped_wrong_size"] == before["dropped_wrong_size"] + 1
        assert _next_event(monitor, timeout=0.5) is None  # still connected
        sock.send(fetch_head + bytes(limit - 1))  # one byte longer than the limit
        assert _next_event(monitor) == zmq.EVENT_DISCONNECTED
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
    chain.send(chain.packet(b"still flowing"))
    assert [m for _, m in chain.receive(1)] == [b"still flowing"]
    after = chain.stats("mix-a")  # the long frame was never read, so never counted
    assert after["dropped_wrong_size"] == read["dropped_wrong_size"]
    assert after["dropped_bad_frame"] == before["dropped_bad_frame"]


def _next_event(monitor: zmq.Socket[bytes], timeout: float = 5.0) -> int | None:
    if not monitor.poll(int(timeout * 1000)):
        return None
    return int(recv_monitor_message(monitor)["event"])


def _intruder_sends(chain: Chain) -> None:
    """A peer with a CURVE key that is not in the topology connects and sends a packet; return
    once mix-a counted its refused handshake."""
    denied = chain.stats("mix-a")["auth_denied"]
    public, private = crypto.x25519_keypair()
    sock = links.connect_dealer(chain.ctx, chain.topology.node("mix-a").endpoint,
                                chain.directory["mix-a"].curve_public, public, private,
                                max_frame=wire.node_frame_limit(chain.topology.sphinx))
    sock.send(wire.encode(wire.Packet(chain.packet(b"intruder")), params=chain.topology.sphinx,
                          slots=8), zmq.NOBLOCK)
    try:
        chain.wait_stats("mix-a", lambda s: s["auth_denied"] > denied, "refused handshake")
    finally:
        sock.close(linger=0)


def test_a_killed_worker_is_replaced_and_the_node_keeps_forwarding(chain: Chain) -> None:
    node_pid = chain.launcher.pids()["mix-a"]
    workers = child_pids(node_pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    chain.wait_stats("mix-a", lambda s: s["worker_restarts"] >= 1, "worker restart")
    for i in range(20):
        chain.send(chain.packet(f"m{i}".encode()))
    assert len(chain.receive(20)) == 20
    assert len(child_pids(node_pid)) == 2


def _worker(node_pid: int, index: int) -> int:
    for pid in child_pids(node_pid):
        # A worker's title is "zmix-worker NODE/INDEX" (docs/monitoring.md, Process titles).
        title = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode()
        if title.endswith(f"/{index}"):
            return pid
    raise AssertionError(f"no worker {index} under {node_pid}")


def test_packets_held_by_a_dead_worker_are_written_off_not_waited_for(chain: Chain) -> None:
    for i in range(4):  # both workers connected and answering
        chain.send(chain.packet(f"warm {i}".encode()))
    assert len(chain.receive(4)) == 4
    chain.wait_stats("mix-a", lambda s: s["worker_processed"] >= 4, "4 packets processed")
    node_pid = chain.launcher.pids()["mix-a"]
    stuck = _worker(node_pid, 0)
    os.kill(stuck, signal.SIGSTOP)  # worker 0 takes packets and never answers
    try:
        for i in range(10):
            chain.send(chain.packet(f"m{i}".encode()))
            time.sleep(0.02)  # pacing, not an event: one packet per batch, so both workers get some
        held = 10 - len(chain.receive(10, timeout=3))
        assert held >= 1
        chain.wait_stats("mix-a", lambda s: s["in_flight"] == held,
                    f"{held} packets in flight")
    finally:
        os.kill(stuck, signal.SIGKILL)
    stats = chain.wait_stats("mix-a", lambda s: s["worker_restarts"] >= 1, "worker restart")
    assert stats["dropped_worker_lost"] == held and stats["in_flight"] == 0
    for i in range(10):
        chain.send(chain.packet(f"after {i}".encode()))
    assert len(chain.receive(10)) == 10


def test_a_node_whose_workers_are_stuck_stops_reading_and_does_not_spin(chain: Chain) -> None:
    node_pid = chain.launcher.pids()["mix-a"]
    stuck = child_pids(node_pid)
    packet = chain.packet(b"again and again")  # processing would drop the copies as replays
    for pid in stuck:
        os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(MAX_IN_FLIGHT + 500):
            chain.send(packet)
        full = chain.wait_stats("mix-a", lambda s: s["in_flight"] >= MAX_IN_FLIGHT,
                           "in_flight at its bound")
        assert full["in_flight"] == MAX_IN_FLIGHT  # the node stopped reading at its bound
        time.sleep(1.0)  # a measuring period, not an event: the wake-ups counted over 1 s
        later = chain.stats("mix-a")
        # The ROUTER is not polled while it is not read: the loop wakes for its timers (every
        # 10 ms while packets wait for a worker), not for every poll of a readable socket.
        assert later["loop_wakeups"] - full["loop_wakeups"] < 1_000
        assert later["received"] == full["received"]
    finally:
        for pid in stuck:
            os.kill(pid, signal.SIGCONT)
    chain.wait_stats("mix-a", lambda s: s["in_flight"] == 0, "in_flight back to 0",
                timeout=20)
    assert chain.stats("mix-a")["dropped_replay"] >= MAX_IN_FLIGHT


def test_a_node_restarted_mid_stream_does_not_take_the_chain_down(chain: Chain) -> None:
    for i in range(5):
        chain.send(chain.packet(f"before {i}".encode()))
    assert len(chain.receive(5)) == 5
    old_sockets = Path((chain.state / "nodes" / "mix-b" / "ipc-dir").read_text().strip())
    chain.launcher.children["mix-b"].proc.kill()
    chain.launcher.children["mix-b"].proc.wait()
    assert old_sockets.is_dir()  # SIGKILL leaves it behind ...
    chain.launcher.watch(time.monotonic())  # notices the death, schedules the restart
    chain.launcher.watch(time.monotonic() + 10)  # restarts it
    deadline = time.monotonic() + 20
    while metrics.query(chain.state, "mix-b", "ping", 0.2) != "pong":
        assert time.monotonic() < deadline, "mix-b did not come back"
    for i in range(5):
        chain.send(chain.packet(f"after {i}".encode()))
    got = {m for _, m in chain.receive(5)}
    assert got >= {f"after {i}".encode() for i in range(5)}
    assert chain.stats("mix-a")["pid"] == chain.launcher.pids()["mix-a"]  # mix-a never restarted
    assert not old_sockets.exists()  # ... and the next run of the node removes it


def test_sigterm_stops_a_node_and_its_workers(chain: Chain) -> None:
    child = chain.launcher.children["mix-a"]
    workers = child_pids(child.proc.pid)
    record = chain.state / "nodes" / "mix-a" / "ipc-dir"
    sockets = Path(record.read_text().strip())
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(10) == 0
    assert not sockets.exists() and not record.exists()
    assert len(workers) == 2  # the node had its workers, and they go with it
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their node's SIGTERM by 5 s"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True


def test_workers_of_a_node_killed_with_sigkill_exit_on_their_own(chain: Chain) -> None:
    child = chain.launcher.children["mix-a"]
    workers = child_pids(child.proc.pid)
    assert len(workers) == 2
    child.proc.kill()
    child.proc.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their node"
        time.sleep(0.1)


def test_a_worker_whose_node_is_already_gone_exits(chain: Chain, tmp_path: Path) -> None:
    # The node's pid is passed down: a worker started just before its node died must not take
    # its new parent for the node. Here the "node" is a pid that is not this worker's parent.
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmix.runtime.workers", "--state", str(chain.state), "--name",
         "mix-a", "--work", f"ipc://{tmp_path}/w", "--results", f"ipc://{tmp_path}/r",
         "--parent", str(chain.launcher.pids()["mix-a"])])
    assert proc.wait(10) == 0


def test_a_node_serves_prometheus_metrics(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    topology, state = make_network(tmp_path, layers=(("mix-a",),), providers=("provider-1",),
                                   loopix={"mix_loop_rate": 0.0},
                                   node_options={"mix-a": {"metrics_port": port}})
    launcher = Launcher(state, [topology.node("mix-a")])
    with authorities_running(state, topology, allow=["mix-a"]):
        launcher.start()
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        finally:
            launcher.stop()
    assert b'zmix_received_total{node="mix-a"}' in body
    assert b"zmix_queue_depth" in body


def test_ports_in_use_are_reported_by_the_launcher(tmp_path: Path) -> None:
    topology, state = make_network(tmp_path, layers=(("mix-a",),), providers=("provider-1",))
    busy = socket.socket()
    busy.bind(("127.0.0.1", topology.node("mix-a").port))
    busy.listen()
    launcher = Launcher(state, [topology.node("mix-a")])
    try:
        from zmix.runtime.launcher import LaunchError

        # The node must exit with the error, not hang in its shutdown (an unclosed socket once
        # kept Context.term() waiting) until the launcher gives up on it. It binds once it has
        # its network from the authority.
        with authorities_running(state, topology, allow=["mix-a"]), pytest.raises(
                LaunchError, match=r"^node mix-a cannot listen on tcp://127\.0\.0\.1:"
                r"\d+: address already in use$"):
            launcher.start()
    finally:
        busy.close()
        launcher.stop()


def test_the_node_benchmark_runs_a_real_node_and_reports_its_figures(
        capsys: pytest.CaptureFixture[str]) -> None:
    from zmix.bench import node as bench

    assert bench.main(["--packets", "300", "--paced-seconds", "0.5", "--workers", "1",
                       "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["saturation_forwarded"] == figures["saturation_sent"] == 299
    assert figures["saturation_rounds"] == len(figures["forwarded_per_second_rounds"]) == 5
    assert all(rate > 0 for rate in figures["forwarded_per_second_rounds"])
    assert figures["paced_sent"] > 0 and figures["workers"] == 1
    # Every forwarded packet went through process_packet in a worker, so the node's CPU per
    # packet cannot be below the Sphinx time (if it is, the accounting lost someone's CPU).
    assert figures["cpu_seconds_per_packet_workers"] > 0
    assert figures["cpu_over_sphinx_ratio"] > 1.0
    # The workers' own Sphinx time is part of their CPU time, never more.
    assert 0 < figures["sphinx_in_workers_seconds"] < figures["cpu_seconds_per_packet_workers"]
    assert figures["cpu_over_sphinx_in_workers_ratio"] > 1.0
    # The CPU of the saturation phase by thread: the node's loop, its workers and the bench's
    # own threads all worked for every packet; the workers' share is what the node reported.
    by_thread = figures["cpu_seconds_per_packet_by_thread"]
    assert set(by_thread) == set(bench.THREAD_GROUPS)
    for where in ("node loop", "node libzmq I/O", "workers", "bench generator", "bench sink",
                  "bench libzmq I/O"):
        assert by_thread[where] > 0, where
    assert figures["cpu_seconds_per_packet_bench"] >= by_thread["bench generator"]
    # The generator sent frames of 32 (the default --batch); the node sent its own, never more.
    assert figures["packets_per_frame_in"] == 32
    assert 1.0 <= figures["packets_per_frame_out"] <= 32.0
    assert len(figures["forwarded_per_second_whole_rounds"]) == 5
    assert figures["forwarded_per_second_whole"] > 0


@pytest.mark.slow  # a node benchmark's network started, then stopped: about 5 s
def test_a_benchmark_stopped_by_sigterm_stops_what_it_started_and_removes_its_folder(
        tmp_path: Path) -> None:
    temporary, out, err = tmp_path / "tmp", tmp_path / "out", tmp_path / "err"
    temporary.mkdir()
    with out.open("w") as stdout, err.open("w") as stderr:  # (pipes would be held by orphans)
        bench = subprocess.Popen(
            [sys.executable, "-m", "zmix.cli.bench", "node", "--packets", "200000",
             "--workers", "1"], env={**os.environ, "TMPDIR": str(temporary)},
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    everything: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while True:  # up to the node under test answering: then it builds its 200,000 packets
            states = list(temporary.glob("zmix-bench-node-*/state"))
            if states and metrics.query(states[0], "mix-0", "ping", 0.2) == "pong":
                break
            assert bench.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        started = child_pids(bench.pid)  # the node under test and the authorities
        everything = started + [pid for child in started for pid in child_pids(child)]
        assert len(started) >= 2 and len(everything) > len(started)  # the node's workers
        bench.send_signal(signal.SIGTERM)
        bench.wait(60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        left = [pid for pid in everything if alive(pid)]
        for pid in left:  # what an unmended benchmark leaves behind
            os.kill(pid, signal.SIGKILL)
    assert bench.returncode == 1, err.read_text()
    assert "error: zmix-bench node: stopped by SIGTERM" in err.read_text()
    assert out.read_text() == "" and left == [] and list(temporary.iterdir()) == []


def test_the_steady_rate_of_a_round_leaves_out_its_fill_and_drain() -> None:
    from zmix.bench.node import _steady

    # 100 packets after 50 counted before the round: a slow start (10 in 1 s), then 80 in 1 s,
    # then a slow end; the steady rate is taken between the marks past 10% and past 90%.
    marks = [(0.0, 50), (1.0, 60), (1.5, 100), (2.0, 140), (5.0, 150)]
    assert _steady(marks, 50, 100) == (80, 1.0)  # 80 packets/s, not 100 in 5 s
    assert _steady(marks[:2], 50, 100) is None  # the round never got past 90%
    assert _steady([(1.0, 60), (1.0, 150)], 50, 100) is None  # no time between the marks


@pytest.mark.slow  # two networks: about 25 s
def test_the_node_benchmark_on_every_profile_takes_turns_and_gives_ratios_to_v1(
        capsys: pytest.CaptureFixture[str]) -> None:
    from zmix.bench import node as bench

    assert bench.main(["--profile", "all", "--packets", "300", "--paced-seconds", "0.5",
                       "--workers", "1", "--rounds", "3", "--json"]) == 0
    v1, kem1 = json.loads(capsys.readouterr().out)
    assert (v1["profile"], kem1["profile"]) == ("v1", "kem1")
    for figures in (v1, kem1):
        assert figures["saturation_forwarded"] == 299 and figures["saturation_rounds"] == 3
    assert "forwarded_ratio_to_v1" not in v1  # v1 is the reference
    rounds = zip(kem1["forwarded_per_second_rounds"], v1["forwarded_per_second_rounds"],
                 strict=True)
    assert kem1["forwarded_ratio_to_v1_rounds"] == pytest.approx([k / v for k, v in rounds])
    assert kem1["forwarded_ratio_to_v1"] == pytest.approx(
        kem1["forwarded_per_second"] / v1["forwarded_per_second"])
    assert kem1["forwarded_ratio_to_v1_whole"] == pytest.approx(
        kem1["forwarded_per_second_whole"] / v1["forwarded_per_second_whole"])
    cpu = [sum(f["cpu_seconds_per_packet_by_thread"].values()) for f in (v1, kem1)]
    assert kem1["cpu_ratio_to_v1"] == pytest.approx(cpu[0] / cpu[1])
