"""The node loop <-> worker messages (batches of jobs, key sets, batches of results survive the
round trip) and a real worker process that takes its Sphinx keys from the node, not from a file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from chain import start_chain
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import crypto, wire
from zmix.bench.common import fetch_network, hops_at, make_network, play_node, start_authorities
from zmix.errors import DropReason, LocalMisuse
from zmix.keys import load_directory, load_private
from zmix.network import Network
from zmix.runtime import links, metrics
from zmix.sphinx import (
    FinalDelivery,
    ForwardHop,
    Hop,
    SphinxParams,
    SurbReply,
    create_forward_packet,
)
from zmix.workframes import (
    WorkerStats,
    decode_forward,
    decode_jobs,
    decode_keys,
    decode_result,
    encode_groups,
    encode_invalid,
    encode_jobs,
    encode_keys,
    encode_result,
    encode_stats,
    invalid_parts,
    is_forward,
    is_keys,
    join_results,
    result_parts,
    results_head,
    split_results,
)

PACKET = 64  # the framing does not care about the Sphinx geometry, only that it is fixed

arrivals = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200)
@given(st.lists(st.tuples(arrivals, st.binary(min_size=PACKET, max_size=PACKET)), min_size=1,
                max_size=40))
def test_a_job_batch_round_trips(jobs: list[tuple[float, bytes]]) -> None:
    assert decode_jobs(encode_jobs(jobs), PACKET) == jobs


GROUP_HEAD = 10  # arrival f64, count u16


def _group(count: int, packets: int | None = None) -> bytes:
    """A group head saying ``count`` packets, followed by ``packets`` (default: as many)."""
    return bytes(8) + count.to_bytes(2, "little") + bytes(PACKET * (
        count if packets is None else packets))


@pytest.mark.parametrize("body", [
    b"", b"\0" * (GROUP_HEAD - 1),  # no group, a group's head cut short
    _group(0),  # a group of no packet
    _group(2, 1), _group(1) + _group(3, 2),  # packets missing
    _group(1) + b"\0" * 5,  # bytes after the last group: not a whole head
])
def test_a_job_message_that_is_not_whole_groups_of_jobs_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        decode_jobs(b"J" + body, PACKET)
    assert decode_jobs(b"J" + _group(2) + _group(1), PACKET) == [(0.0, bytes(PACKET))] * 3


@settings(max_examples=200)
@given(st.lists(st.tuples(arrivals, st.lists(st.binary(min_size=PACKET, max_size=PACKET),
                                            min_size=1, max_size=40)), min_size=1, max_size=8))
def test_groups_of_packets_read_back_as_one_job_per_packet_in_order(
        groups: list[tuple[float, list[bytes]]]) -> None:
    # The node hands a frame's packets on as one group (a view of the frame), arrival once.
    message = encode_groups([(arrival, memoryview(b"".join(packets)), len(packets))
                             for arrival, packets in groups])
    assert decode_jobs(memoryview(message), PACKET) == [
        (arrival, packet) for arrival, packets in groups for packet in packets]


@settings(max_examples=300)
@given(st.binary(max_size=3 * (PACKET + GROUP_HEAD)))
def test_any_job_message_reads_as_jobs_or_a_value_error(body: bytes) -> None:
    try:
        jobs = decode_jobs(b"J" + body, PACKET)
    except ValueError:
        return
    assert jobs and all(len(packet) == PACKET for _, packet in jobs)


def test_a_work_message_says_whether_it_carries_jobs_or_keys() -> None:
    jobs = encode_jobs([(1.0, bytes(PACKET))])
    keys = encode_keys([(7, bytes(32))])
    assert jobs[:1] == b"J" and keys[:1] == b"K"
    assert not is_keys(jobs) and is_keys(keys) and is_keys(memoryview(keys))
    with pytest.raises(ValueError):
        decode_jobs(bytes(keys) + bytes(PACKET + 8 - 36), PACKET)  # a key set is not jobs
    with pytest.raises(ValueError):
        decode_keys(jobs)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32)),
                max_size=4))
def test_a_key_set_round_trips_in_its_order_each_key_in_a_bytearray(
        keys: list[tuple[int, bytes]]) -> None:
    decoded = decode_keys(encode_keys(keys))
    assert [(epoch, bytes(key)) for epoch, key in decoded] == keys
    assert all(type(key) is bytearray for _, key in decoded)


@pytest.mark.parametrize("bad", [[(1, bytes(31))], [(-1, bytes(32))], [(2**32, bytes(32))]])
def test_a_key_set_with_a_malformed_key_or_epoch_is_local_misuse(
        bad: list[tuple[int, bytes]]) -> None:
    with pytest.raises(LocalMisuse):
        encode_keys(bad)
    assert encode_keys([(2**32 - 1, bytes(32))])[1:5] == b"\xff" * 4  # the control


def _results() -> st.SearchStrategy[bytes]:
    ids, tags = st.binary(min_size=16, max_size=16), st.binary(min_size=0, max_size=64)
    delays, bodies = st.integers(0, 2**64 - 1), st.binary(max_size=300)
    forward = st.builds(ForwardHop, ids, delays, bodies, tags)
    final = st.builds(FinalDelivery, ids, delays, bodies, tags)
    reply = st.builds(SurbReply, ids, ids, delays, bodies, tags)
    epochs = st.integers(0, 2**32 - 1)
    return st.tuples(arrivals, epochs, forward | final | reply).map(lambda ar: encode_result(*ar))


@settings(max_examples=200)
@given(st.lists(_results() | st.sampled_from(list(DropReason)).map(
    lambda r: encode_invalid(1.5, r)), max_size=20))
def test_a_result_batch_round_trips(results: list[bytes]) -> None:
    assert split_results(join_results(3, 4242, results)) == (3, 4242, results)


def test_each_kind_of_result_decodes_to_what_was_encoded() -> None:
    tag, body, who = os.urandom(32), os.urandom(100), os.urandom(16)
    values = [ForwardHop(who, 7, body, tag), FinalDelivery(who, 0, body, tag),
              SurbReply(who, os.urandom(16), 9, body, tag)]
    message = join_results(1, 1234, [encode_result(2.5, 40 + i, v) for i, v in enumerate(values)]
                           + [encode_invalid(3.5, DropReason.BAD_MAC),
                              encode_stats(WorkerStats(1, 0.25, 10, 1234, 0.125))])
    index, pid, results = split_results(message)
    assert (index, pid) == (1, 1234)
    decoded = [decode_result(r) for r in results]
    assert decoded == [(2.5, 40 + i, v) for i, v in enumerate(values)] + [
        (3.5, 0, DropReason.BAD_MAC), (0.0, 0, WorkerStats(1, 0.25, 10, 1234, 0.125))]


def test_a_forward_result_reads_the_same_by_the_fast_path() -> None:
    hop = ForwardHop(os.urandom(16), 7, os.urandom(100), os.urandom(32))
    frame = encode_result(2.5, 2**32 - 1, hop)
    assert is_forward(frame)
    assert decode_forward(frame) == (2.5, 2**32 - 1, hop.next_hop, 7, hop.replay_tag, hop.packet)
    assert decode_result(frame) == (2.5, 2**32 - 1, hop)
    others = [encode_result(1.0, 0, FinalDelivery(bytes(16), 0, b"m", bytes(32))),
              encode_invalid(1.0, DropReason.BAD_MAC),
              encode_stats(WorkerStats(0, 0.0, 0, 1, 0.0))]
    assert not any(is_forward(other) for other in others)


@settings(max_examples=200)
@given(st.lists(st.tuples(arrivals, st.integers(0, 2**32 - 1), st.builds(
    ForwardHop, st.binary(min_size=16, max_size=16), st.integers(0, 2**64 - 1),
    st.binary(max_size=300), st.binary(max_size=64)) | st.builds(
    SurbReply, st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
    st.integers(0, 2**64 - 1), st.binary(max_size=300), st.binary(max_size=64))), max_size=20))
def test_a_result_message_joined_from_parts_is_the_one_join_results_makes(
        results: list[tuple[float, int, ForwardHop | SurbReply]]) -> None:
    # The worker joins each result's parts straight into the message (one copy of a packet).
    parts = [results_head(2, 99)]
    for arrival, epoch, value in results:
        parts += result_parts(arrival, epoch, value)
    assert b"".join(parts) == join_results(2, 99, [encode_result(*r) for r in results])


def test_results_and_jobs_read_from_a_view_of_the_message_as_from_its_bytes() -> None:
    # The node and the workers read their messages without a copy (memoryviews of libzmq's).
    hop = ForwardHop(os.urandom(16), 7, os.urandom(100), os.urandom(32))
    message = join_results(1, 5, [encode_result(2.5, 3, hop), encode_invalid(1.0,
                                                                             DropReason.BAD_MAC)])
    assert message == b"".join([results_head(1, 5), *result_parts(2.5, 3, hop),
                                *invalid_parts(1.0, DropReason.BAD_MAC)])
    index, pid, results = split_results(memoryview(message))
    assert (index, pid) == (1, 5) and all(type(r) is memoryview for r in results)
    arrival, epoch, next_hop, delay_us, tag, packet = decode_forward(results[0])
    assert (arrival, epoch, next_hop, delay_us, tag) == (2.5, 3, hop.next_hop, 7, hop.replay_tag)
    assert type(tag) is bytes and type(packet) is memoryview and packet == hop.packet
    assert decode_forward(bytes(results[0]))[5] == hop.packet  # and from bytes, as bytes
    jobs = [(1.5, os.urandom(PACKET)), (2.5, os.urandom(PACKET))]
    decoded = decode_jobs(memoryview(encode_jobs(jobs)), PACKET)
    assert decoded == jobs and all(type(p) is bytes for _, p in decoded)


@pytest.mark.parametrize("body", [b"\x05", b"\x05\0\0\0abcd", b"\x01\0\0\0a\xff\xff\xff\xff"])
def test_a_result_message_with_a_length_past_its_end_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        split_results(b"\0" * 8 + body)


def test_a_result_message_without_its_sender_is_refused() -> None:
    with pytest.raises(ValueError):
        split_results(b"\0" * 7)


# ---------------------------------------------------------------------------- a real worker


class WorkerUnderTest:
    """One ``python -m zmix.runtime.workers`` process on sockets of this test, as a node has."""

    def __init__(self, state: Path, ipc: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.work, self.results = self.ctx.socket(zmq.PUSH), self.ctx.socket(zmq.PULL)
        for sock in (self.work, self.results):
            sock.linger = 0
        self.work.bind(f"ipc://{ipc}/work-0")
        self.results.bind(f"ipc://{ipc}/results")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zmix.runtime.workers", "--state", str(state), "--name",
             "mix-a1", "--work", f"ipc://{ipc}/work-0", "--results", f"ipc://{ipc}/results",
             "--index", "0", "--parent", str(os.getpid())], stdin=subprocess.DEVNULL)

    def next_results(self, count: int, timeout: float = 20.0) -> list[tuple[int, object]]:
        """Return the next ``count`` packet results as ``(epoch, value)``, statistics skipped."""
        got: list[tuple[int, object]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self.results.poll(int(left * 1000)):
                raise AssertionError(f"the worker answered {len(got)} of {count} packets")
            for frame in split_results(self.results.recv())[2]:
                _, epoch, value = decode_result(frame)
                if not isinstance(value, WorkerStats):
                    got.append((epoch, value))
        return got

    def wait_up(self, timeout: float = 20.0) -> WorkerStats:
        """Return the worker's first statistics report: it says the worker is up."""
        if not self.results.poll(int(timeout * 1000)):
            raise AssertionError("the worker never reported")
        _, _, value = decode_result(split_results(self.results.recv())[2][0])
        assert isinstance(value, WorkerStats)
        return value

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.work.close()
        self.results.close()
        self.ctx.term()


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[WorkerUnderTest, SphinxParams]]:
    topology, state = make_network(tmp_path, layers=(("mix-a1",), ("mix-b1",)),
                                   providers=("provider-1",), loopix={"mix_loop_rate": 0.0})
    shutil.rmtree(state / "private")  # the worker must not need a private key file
    ipc = tempfile.mkdtemp(prefix="zmix-")  # ipc paths are length-limited: not under tmp_path
    under_test = WorkerUnderTest(state, ipc)
    try:
        yield under_test, topology.sphinx
    finally:
        under_test.close()
        shutil.rmtree(ipc, ignore_errors=True)


def _packet_for(params: SphinxParams, public_key: bytes) -> bytes:
    _, other = crypto.x25519_keypair()
    route = [Hop(b"\x01" * 16, public_key), Hop(b"\x02" * 16, crypto.x25519_base(other))]
    return create_forward_packet(params, route, b"\x03" * 16, b"m")


def test_a_worker_opens_packets_with_the_key_set_the_node_sends_and_drops_a_replaced_set(
        worker: tuple[WorkerUnderTest, SphinxParams]) -> None:
    under_test, params = worker
    assert under_test.wait_up().pid == under_test.proc.pid
    (pub5, key5), (pub6, key6) = crypto.x25519_keypair(), crypto.x25519_keypair()
    for5, for6, stranger = (_packet_for(params, pub5), _packet_for(params, pub6),
                            _packet_for(params, crypto.x25519_keypair()[0]))
    under_test.work.send(encode_keys([(6, key6), (5, key5)]))
    under_test.work.send(encode_jobs([(1.0, for5), (2.0, for6), (3.0, stranger)]))
    got = under_test.next_results(3)
    assert [epoch for epoch, _ in got[:2]] == [5, 6]
    assert all(isinstance(value, ForwardHop) for _, value in got[:2])
    assert got[2] == (0, DropReason.BAD_MAC)
    under_test.work.send(encode_keys([(6, key6)]))  # epoch 5's key is retired
    under_test.work.send(encode_jobs([(4.0, for5), (5.0, for6)]))
    got = under_test.next_results(2)
    assert got[0] == (0, DropReason.BAD_MAC)
    assert got[1][0] == 6 and isinstance(got[1][1], ForwardHop)
    under_test.proc.terminate()  # SIGTERM leaves through the worker's cleanup (keys zeroed)
    assert under_test.proc.wait(10) == 0


# ---------------------------------------------------------------------------- in a running node


def _workers_of(node_pid: int) -> list[int]:
    children = Path(f"/proc/{node_pid}/task/{node_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_workers_a_node_restarts_are_sent_its_keys_again_before_any_packet(
        tmp_path: Path) -> None:
    with start_chain(tmp_path) as chain:
        for i in range(4):  # both first workers were keyed: packets flow
            chain.send(chain.packet(f"warm {i}".encode()))
        assert len(chain.receive(4)) == 4
        node_pid = chain.launcher.pids()["mix-a"]
        old = _workers_of(node_pid)
        assert len(old) == 2
        for pid in old:  # every worker that held the key dies: only new ones can open packets
            os.kill(pid, signal.SIGKILL)
        chain.wait_stats("mix-a", lambda s: s["worker_restarts"] >= 2, "both workers restarted")
        for i in range(20):
            chain.send(chain.packet(f"after {i}".encode()))
        assert len(chain.receive(20)) == 20
        stats = chain.stats("mix-a")
        assert stats["dropped_bad_mac"] == 0 and stats["dropped_worker_lost"] == 0
        assert not set(_workers_of(node_pid)) & set(old)


# The node under test, in a child process: NodeProcess itself, whose key set changes when the test
# creates a file (the loop reads ``stopping`` at every turn, so the change happens mid-run, as the
# epoch key store will make it).
_NODE_WITH_NEW_KEYS = """
import sys
from pathlib import Path
from zmix.runtime.node import NodeProcess

class Node(NodeProcess):
    @property
    def stopping(self):
        flag = Path(sys.argv[3])
        if flag.exists() and not self.sphinx_keys_version > 1:  # 1: the key store's set at start
            # The store's keys stay; a key of an epoch the store never makes comes last.
            extra = max(epoch for epoch, _ in self.sphinx_keys) + 2
            self.set_sphinx_keys([*self.sphinx_keys, (extra, bytes.fromhex(sys.argv[4]))])
        return self._stop_signal is not None

sys.exit(Node(Path(sys.argv[1]), sys.argv[2]).run())
"""


def test_a_key_set_installed_in_a_running_node_reaches_its_workers(tmp_path: Path) -> None:
    # Half an hour into an hour-long epoch: the key store's own set changes near a boundary
    # (a minute before it, and at it), replacing the set the test installs; run near the hour,
    # the test failed so (reproduced with a boundary 3.5 s after the start).
    topology, state = make_network(tmp_path, layers=(("mix-0",), ("mix-1",)),
                                   providers=("provider-0",), loopix={"mix_loop_rate": 0.0},
                                   workers=2, epoch={"origin": int(time.time()) - 1800})
    node, nxt = topology.layers[0][0], topology.layers[1][0]
    directory = load_directory(state, topology)
    public7, private7 = crypto.x25519_keypair()
    flag = tmp_path / "new-keys"
    document: list[Network] = []  # the authority's, once the node runs

    def packet(public_key: bytes | None) -> bytes:
        """A packet for the node (with ``public_key``, or its document key of this epoch: the
        control) and on to ``nxt``."""
        route = hops_at(document[0], (node.name, nxt.name), (0.0, 0.0))
        if public_key is not None:
            route[0] = Hop(node.id, public_key)
        frame = wire.Packet(create_forward_packet(topology.sphinx, route, nxt.id, b"m"))
        return wire.encode(frame, params=topology.sphinx, slots=1)

    def wait_stats(ok: Callable[[dict[str, float]], bool], what: str) -> dict[str, float]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = metrics.statistics(state, node.name) or {}
            if stats and ok(stats):
                return stats
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    authorities = start_authorities(state, topology)  # mix-0, and the two the test plays
    for played in ("provider-0", "mix-1"):
        play_node(state, topology, played)
    proc = subprocess.Popen([sys.executable, "-c", _NODE_WITH_NEW_KEYS, str(state), node.name,
                             str(flag), private7.hex()], stdin=subprocess.DEVNULL)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        wait_stats(lambda s: s["workers"] == 2, "the node")
        document.append(fetch_network(state, topology))
        me = load_private(state, "provider-0")
        gen = links.connect_dealer(ctx, node.endpoint, directory[node.name].curve_public,
                                   me.curve_public, me.curve_private,
                                   max_frame=wire.node_frame_limit(topology.sphinx))
        gen.linger = 0
        gen.send(packet(public7))  # epoch 7's key is not installed yet
        gen.send(packet(None))  # the control: the node's key of this epoch
        wait_stats(lambda s: s["dropped_bad_mac"] == 1 and s["forwarded"] == 1, "two packets")
        flag.touch()
        deadline = time.monotonic() + 20
        while wait_stats(lambda s: True, "statistics")["forwarded"] < 2:
            assert time.monotonic() < deadline, "the new key never reached a worker"
            gen.send(packet(public7))
            time.sleep(0.1)  # pacing: one packet per poll of the statistics
        before = wait_stats(lambda s: True, "statistics")
        for _ in range(10):  # once installed, every worker opens the new key's packets, and
            # those of the store's keys
            gen.send(packet(public7))
            gen.send(packet(None))
        stats = wait_stats(lambda s: s["forwarded"] >= before["forwarded"] + 20
                           and s["in_flight"] == 0, "20 more packets")
        assert stats["dropped_bad_mac"] == before["dropped_bad_mac"]
        gen.close()
    finally:
        proc.terminate()
        proc.wait(10)
        ctx.destroy(linger=0)
        authorities.stop()
