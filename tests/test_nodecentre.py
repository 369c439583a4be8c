"""The node's sans-IO centre: admission table, dispatch, batched commits, shutdown, statistics.

No processes and no sockets: each test builds a :class:`NodeCentre` over a real ``NodeCore`` (and,
for a provider, a real ``ProviderCore`` over a SQLite mailbox), feeds it wire bytes and worker
result frames with ``now`` as an argument, and looks at what it leaves for the runtime.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simnet import SimNet

from zmix import crypto, wire
from zmix.bench.common import make_network
from zmix.dispatch import JOB_BATCH, LOW_WATER, MAX_IN_FLIGHT, WORKER_QUEUE, Dispatcher
from zmix.envelope import ACK_PAYLOAD, DatedSurb, Envelope, encode_envelope
from zmix.errors import DropReason
from zmix.keys import load_directory, load_private
from zmix.mailbox import Mailbox, NewItem, StorageError
from zmix.mixnode import NodeCore
from zmix.network import Network, NetworkView
from zmix.nodecentre import ADMISSION, Handler, NodeCentre, PeerRole
from zmix.provider import ProviderCore
from zmix.sphinx import (
    FinalDelivery,
    ForwardHop,
    Hop,
    SurbReply,
    create_forward_packet,
    create_surb,
    open_surb_reply,
    process_packet,
)
from zmix.stats_schema import STATISTICS
from zmix.topology import Topology
from zmix.workframes import (
    WorkerStats,
    decode_jobs,
    encode_invalid,
    encode_result,
    encode_stats,
    join_results,
    split_results,
)

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}
PID = 7  # the process id the tests give worker 0
STRANGER_KEY = b"\x05" * 32


@dataclass
class World:
    topology: Topology
    state: Path

    def id(self, name: str) -> bytes:
        if name in CLIENTS:
            return self.topology.client(name).id
        return self.topology.node(name).id

    def centre(self, name: str, *, mailbox: Mailbox | None = None, workers: int = 1,
               drain: bool = False, open_door: bool = False) -> NodeCentre:
        """The centre of node ``name`` at time 0; a provider's over ``mailbox`` (or a new one)."""
        topo = self.topology
        spec = topo.node(name)
        view = NetworkView(Network(1, topo, load_directory(self.state, topo)))
        provider = None
        if spec.role.value == "provider":
            mailbox = mailbox or Mailbox(self.state / f"{name}.sqlite", quota=topo.mailbox.quota,
                                         ttl=topo.mailbox.ttl)
            provider = ProviderCore(view, name, mailbox)
        core = NodeCore(view, name, random.Random(1), 0.0, provider=provider)
        centre = NodeCentre(core, topo.sphinx, slots=topo.mailbox.fetch_slots, workers=workers,
                            queue_limit=topo.runtime.queue_limit, drain_on_shutdown=drain,
                            now=0.0, provider=provider, mailbox=mailbox, open_door=open_door,
                            link_key=lambda uid: STRANGER_KEY)
        for index in range(workers):
            centre.dispatch.started(index, PID + index)
            centre.dispatch.keyed(index)
        return centre

    def hop(self, name: str, delay_us: int = 0) -> Hop:
        public = load_directory(self.state, self.topology)[name].public_key
        return Hop(self.id(name), public, delay_us)

    def packet(self, *names: str, recipient: bytes, message: bytes = b"m",
               delay_us: int = 0) -> bytes:
        route = [self.hop(n, delay_us) for n in names]
        return create_forward_packet(self.topology.sphinx, route, recipient, message)

    def process(self, name: str, packet: bytes) -> ForwardHop | FinalDelivery | SurbReply:
        key = load_private(self.state, name).private_key
        return process_packet(self.topology.sphinx, key, packet)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    topology, state = make_network(tmp_path_factory.mktemp("net"), clients=CLIENTS,
                                   mailbox={"quota": 5, "open_registration": True},
                                   loopix={"mix_loop_rate": 0.0})
    return World(topology, state)


def results(*frames: bytes, index: int = 0, pid: int = PID) -> bytes:
    return join_results(index, pid, list(frames))


# ---------------------------------------------------------------------------- admission


def frame_bytes(world: World, kind: type[wire.Frame], role: PeerRole) -> bytes:
    """A well-formed frame of ``kind`` as a peer of ``role`` would send it."""
    params, slots = world.topology.sphinx, world.topology.mailbox.fetch_slots
    packet = bytes(params.packet_length)
    examples: dict[type[wire.Frame], wire.Frame] = {
        wire.Packet: wire.Packet(packet),
        wire.Packets: wire.Packets((packet, b"\x01" * len(packet), packet)),
        wire.Heartbeat: wire.Heartbeat(),
        wire.Fetch: wire.Fetch(1),
        wire.Relay: wire.Relay(world.id("mix-a1"), packet),
        wire.Register: wire.Register(STRANGER_KEY, b"\x06" * 32, "newcomer"),
        wire.FetchReply: wire.FetchReply(1, (), 0),
        wire.Registered: wire.Registered("x"),
        wire.Error: wire.Error("closed", "no"),
    }
    frame = examples[kind]
    if role is not PeerRole.NODE and isinstance(frame, wire.Packet | wire.Relay | wire.Fetch
                                                | wire.Register):
        return wire.encode_client(frame, params=params)
    return wire.encode(frame, params=params, slots=slots)


def test_the_admission_table_covers_every_frame_type_from_every_peer_role() -> None:
    kinds = {wire.Packet, wire.Packets, wire.Heartbeat, wire.Relay, wire.Fetch, wire.FetchReply,
             wire.Register, wire.Registered, wire.Error}
    assert set(ADMISSION) == set(itertools.product(kinds, PeerRole))


PEERS = {PeerRole.NODE: "mix-a1", PeerRole.CLIENT: "alice", PeerRole.STRANGER: None}


def _cell(key: tuple[type[wire.Frame], PeerRole]) -> tuple[str, str]:
    return key[0].__name__, key[1].value


@pytest.mark.parametrize(("kind", "role"), sorted(ADMISSION, key=_cell))
def test_each_frame_from_each_peer_role_is_handled_or_dropped_as_the_table_says(
        world: World, kind: type[wire.Frame], role: PeerRole) -> None:
    centre = world.centre("provider-1", open_door=True)
    name = PEERS[role]
    peer = None if name is None else world.id(name)
    assert centre.role(peer) is role
    before = centre.statistics(0.0)
    centre.on_frame(1.0, b"route", peer, "uid", frame_bytes(world, kind, role))
    after = centre.statistics(1.0)
    # a level of peers heard from, not a handling of the frame
    changed = {k for k in after if after[k] != before.get(k)} - {"peers_alive", "in_flight",
                                                                 "clients_online"}
    action = ADMISSION[(kind, role)]
    replies, outbox = centre.take_replies(), centre.take_outbox()
    if isinstance(action, DropReason):
        assert changed - {"client_frames"} == {f"dropped_{action.value}", "dropped_total"}
        assert not centre.dispatch.jobs and not replies and not outbox
        return
    assert after["dropped_total"] == before["dropped_total"]
    if action is Handler.PACKET:
        assert len(centre.dispatch.jobs) == 1 and after["received"] == 1
    elif action is Handler.PACKETS:  # each packet of the frame, in order
        packet = bytes(world.topology.sphinx.packet_length)
        assert [p for _, p in centre.dispatch.jobs] == [packet, b"\x01" * len(packet), packet]
        assert after["received"] == 3 and centre.dispatch.in_flight == 3
    elif action is Handler.HEARTBEAT:
        assert after["heartbeats_received"] == 1 and not replies
    elif action is Handler.RELAY:
        assert outbox == [(world.id("mix-a1"), bytes(world.topology.sphinx.packet_length))]
        assert after["relayed"] == 1
    else:
        [(route, answer)] = replies
        reply = wire.decode(answer, params=world.topology.sphinx,
                            slots=world.topology.mailbox.fetch_slots)
        expected = wire.FetchReply if action is Handler.FETCH else wire.Registered
        assert route == b"route" and isinstance(reply, expected)
    assert after["client_frames"] == before["client_frames"] + (
        role is PeerRole.CLIENT and kind is not wire.Heartbeat and kind is not wire.Packet)


def test_a_registered_stranger_is_let_through_the_gate_and_a_closed_door_drops_it(
        world: World) -> None:
    data = frame_bytes(world, wire.Register, PeerRole.STRANGER)
    open_centre = world.centre("provider-2", open_door=True)
    open_centre.on_frame(0.0, b"r", None, "uid", data)
    [(key, client_id)] = open_centre.admitted
    assert key == STRANGER_KEY and open_centre.role(client_id) is PeerRole.CLIENT
    closed = world.centre("provider-1", mailbox=Mailbox(
        world.state / "closed.sqlite", quota=5, ttl=100.0))
    closed.on_frame(0.0, b"r", None, "uid", data)
    assert closed.statistics(0.0)["dropped_unknown_peer"] == 1 and not closed.take_replies()


def test_a_known_peers_malformed_frame_is_dropped_with_the_wire_reason(world: World) -> None:
    centre = world.centre("mix-a1")
    centre.on_frame(0.0, b"r", world.id("provider-1"), "uid", b"\x09\x01")
    centre.on_frame(0.0, b"r", world.id("provider-1"), "uid", bytes([wire.WIRE_VERSION, 2]) + b"x")
    centre.on_frame(0.0, b"r", world.id("provider-1"), "uid", wire.encode(
        wire.Heartbeat(), params=world.topology.sphinx, slots=1))  # control: admitted
    stats = centre.statistics(0.0)
    assert stats["dropped_bad_version"] == 1 and stats["dropped_wrong_size"] == 1
    assert stats["heartbeats_received"] == 1 and stats["peers_alive"] == 1
    assert centre.statistics(10.0)["peers_alive"] == 0  # heard from 10 s ago: not alive


def test_a_frame_read_as_a_view_of_the_message_is_handled_as_its_bytes(world: World) -> None:
    # The node loop hands the centre a memoryview of each message it reads (zero-copy).
    params = world.topology.sphinx
    packets = [bytes([i]) * params.packet_length for i in range(1, 4)]
    frames = [wire.encode_packets(packets, params=params),
              wire.encode_packets(packets[:1], params=params),
              wire.encode(wire.Heartbeat(), params=params, slots=1),
              bytes([wire.WIRE_VERSION, 0x04]) + packets[0] + packets[1][:-1]]  # cut short
    for centre_of, wrap in ((world.centre("mix-a1"), bytes), (world.centre("mix-a1"), memoryview)):
        for data in frames:
            centre_of.on_frame(0.0, b"r", world.id("provider-1"), "uid", wrap(data))
        stats = centre_of.statistics(0.0)
        assert [p for _, p in centre_of.dispatch.jobs] == [*packets, packets[0]]
        assert all(type(p) is bytes for _, p in centre_of.dispatch.jobs)
        assert stats["received"] == 4 and stats["heartbeats_received"] == 1
        assert stats["dropped_wrong_size"] == 1


def test_a_client_may_not_send_a_packets_frame(world: World) -> None:
    centre = world.centre("provider-1")
    params = world.topology.sphinx
    data = wire.encode_packets([bytes(params.packet_length)] * 2, params=params)
    centre.on_frame(0.0, b"r", world.id("alice"), "uid", memoryview(data))
    centre.on_frame(0.0, b"r", world.id("mix-a1"), "uid", memoryview(data))  # control: a node
    stats = centre.statistics(0.0)
    assert stats["dropped_bad_frame"] == 1 and stats["received"] == 2
    assert len(centre.dispatch.jobs) == 2


# ---------------------------------------------------------------------------- dispatch


def sender(accept: Sequence[int] | None = None, length: int = 100,
           ) -> tuple[list[tuple[int, int]], Callable[[int, bytes], bool]]:
    """A ``send`` for Dispatcher.dispatch that records (worker, jobs) and takes only ``accept``
    (the packets are ``length`` bytes)."""
    sent: list[tuple[int, int]] = []

    def send(index: int, message: bytes) -> bool:
        if accept is not None and index not in accept:
            return False
        sent.append((index, len(decode_jobs(message, length))))
        return True
    return sent, send


def keyed(workers: int) -> Dispatcher:
    """A dispatcher whose workers all hold the key set."""
    dispatch = Dispatcher(workers)
    for index in range(workers):
        dispatch.started(index, PID + index)
        dispatch.keyed(index)
    return dispatch


def test_a_batch_goes_to_the_least_loaded_worker() -> None:
    dispatch = keyed(3)
    dispatch.outstanding[:] = [5, 1, 3]
    dispatch.add(0.0, bytes(100))
    sent, send = sender()
    assert dispatch.dispatch(send) == 1
    assert sent == [(1, 1)] and dispatch.outstanding == [5, 2, 3] and not dispatch.jobs


def test_packets_are_cut_into_batches_that_fit_what_each_worker_may_hold() -> None:
    dispatch = keyed(2)
    total = 2 * WORKER_QUEUE + 72  # more than the two may hold
    for _ in range(total):
        dispatch.add(0.0, bytes(100))
    sent, send = sender()
    handed = dispatch.dispatch(send)
    assert all(size == JOB_BATCH for _, size in sent)
    assert dispatch.outstanding == [WORKER_QUEUE, WORKER_QUEUE] and handed == 2 * WORKER_QUEUE
    assert len(dispatch.jobs) == total - handed == 72 and dispatch.in_flight == total


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30),
       st.lists(st.integers(0, 2), max_size=40))
def test_frames_cut_into_batches_reach_the_workers_whole_in_order_and_counted(
        frames: list[int], answers: list[int]) -> None:
    # A frame's packets wait as one group; batches cut groups at packet ends. Whatever the
    # frames and whatever the workers answer meanwhile, every packet goes out once, in order.
    dispatch = keyed(3)
    packets = [bytes([n % 251]) * 100 for n in range(sum(frames))]
    at = 0
    for count in frames:
        dispatch.add_frame(float(count), memoryview(b"".join(packets[at:at + count])), count)
        at += count
    out: list[bytes] = []

    def send(index: int, message: bytes) -> bool:
        out.extend(packet for _, packet in decode_jobs(message, 100))
        return True
    for worker in [*answers, *[0, 1, 2] * 200]:  # then each in turn, until none waits
        dispatch.returned(worker, PID + worker, dispatch.outstanding[worker])  # it answered all
        dispatch.dispatch(send)
        assert dispatch.waiting == len(packets) - len(out) == len(dispatch.jobs)
        if not dispatch.waiting:
            break
    assert out == packets and dispatch.waiting == 0 and not dispatch.jobs


def test_a_busy_worker_gets_only_whole_batches_and_one_running_low_gets_what_waits() -> None:
    dispatch = keyed(2)
    dispatch.outstanding[:] = [LOW_WATER, LOW_WATER]  # both busy for a while yet
    for _ in range(JOB_BATCH - 1):
        dispatch.add(0.0, bytes(100))
    sent, send = sender()
    assert dispatch.dispatch(send) == 0 and not sent  # less than a batch: it waits
    dispatch.add(0.0, bytes(100))  # a whole batch now: it goes to one worker at once
    assert dispatch.dispatch(send) == JOB_BATCH and sent == [(0, JOB_BATCH)]
    for _ in range(5):
        dispatch.add(0.0, bytes(100))
    assert dispatch.dispatch(send) == 0  # control: both busy, five wait ...
    dispatch.returned(1, PID + 1, 1)  # ... until one runs low: it takes them all
    assert dispatch.dispatch(send) == 5 and sent[-1] == (1, 5) and not dispatch.jobs


def test_waiting_packets_are_shared_evenly_between_idle_workers_in_one_message_each() -> None:
    dispatch = keyed(2)
    for _ in range(10):
        dispatch.add(0.0, bytes(100))
    sent, send = sender()
    assert dispatch.dispatch(send) == 10 and sorted(sent) == [(0, 5), (1, 5)]


def test_a_batch_the_chosen_worker_cannot_take_goes_to_another_and_else_waits() -> None:
    dispatch = keyed(2)
    dispatch.add(0.0, bytes(100))
    sent, send = sender(accept=[1])
    assert dispatch.dispatch(send) == 1 and sent == [(1, 1)]
    dispatch.add(0.0, bytes(100))
    _, refuse = sender(accept=[])
    assert dispatch.dispatch(refuse) == 0 and len(dispatch.jobs) == 1


def test_a_dead_workers_packets_are_written_off_and_its_late_results_not_credited(
        world: World) -> None:
    centre = world.centre("mix-a1", workers=2)
    for _ in range(10):
        centre.on_frame(0.0, b"r", world.id("provider-1"), "uid",
                        wire.encode_packet(bytes(world.topology.sphinx.packet_length),
                                           params=world.topology.sphinx))
    _, send = sender(length=world.topology.sphinx.packet_length)
    centre.dispatch.dispatch(send)
    held = centre.dispatch.outstanding[:]
    assert sum(held) == 10 and centre.dispatch.in_flight == 10
    assert centre.worker_replaced(0, PID + 100) == held[0]
    stats = centre.statistics(0.0)
    assert stats["dropped_worker_lost"] == held[0] and stats["worker_restarts"] == 1
    assert stats["in_flight"] == held[1]
    invalid = encode_invalid(0.0, DropReason.BAD_MAC)
    centre.on_results(0.0, results(invalid, index=0, pid=PID))  # the dead one's: not credited
    assert centre.dispatch.in_flight == held[1]
    centre.on_results(0.0, results(invalid, index=1, pid=PID + 1))  # control: credited
    assert centre.dispatch.in_flight == held[1] - 1
    assert centre.statistics(0.0)["dropped_bad_mac"] == 2  # both results were still used


def test_the_node_stops_accepting_at_max_in_flight_and_resumes_as_results_return() -> None:
    dispatch = Dispatcher(1)
    dispatch.started(0, PID)
    for _ in range(MAX_IN_FLIGHT - 1):
        dispatch.add(0.0, b"p")
    assert dispatch.accepting()
    dispatch.add(0.0, b"p")
    assert not dispatch.accepting() and dispatch.in_flight == MAX_IN_FLIGHT
    dispatch.returned(0, PID, 1)
    assert dispatch.accepting()


# ---------------------------------------------------------------------------- results and commits


def delivery(world: World, body: bytes, surb_id: bytes) -> tuple[bytes, object]:
    """A result frame of provider-2: a message for bob carrying an ack SURB back to alice."""
    topo = world.topology
    route = [world.hop(n) for n in ("mix-a1", "mix-b1", "mix-c1", "provider-1")]
    surb, keys = create_surb(topo.sphinx, route, world.id("alice"), surb_id)
    message = encode_envelope(topo.sphinx, Envelope(DatedSurb(1, surb.to_bytes()), body))
    final = world.process("provider-2", world.packet("provider-2", recipient=world.id("bob"),
                                                     message=message, delay_us=500_000))
    assert isinstance(final, FinalDelivery)
    return encode_result(1.0, 0, final), keys


class CountingMailbox(Mailbox):
    """A mailbox that counts its transactions of stores, or fails them all."""

    fail = False
    commits = 0

    def store_many(self, items: Sequence[NewItem], now: float) -> list[int | None]:
        if self.fail:
            raise StorageError("disk full")
        self.commits += 1
        return super().store_many(items, now)


def test_a_provider_commits_a_batch_in_one_transaction_and_acks_only_after_it(
        world: World, tmp_path: Path) -> None:
    box = CountingMailbox(tmp_path / "box.sqlite", quota=5, ttl=100.0)
    centre = world.centre("provider-2", mailbox=box)
    frames, keys = zip(*(delivery(world, b"m%d" % i, bytes([i]) * 16) for i in range(3)),
                       strict=True)
    centre.on_results(1.0, results(*frames))
    assert box.count(world.id("bob")) == 0 and box.commits == 0  # nothing stored yet ...
    assert len(centre.queue) == 0 and not centre.outbox  # ... so nothing acknowledged
    assert centre.statistics(1.0)["delivered"] == 3
    centre.commit(1.2)
    assert box.commits == 1 and box.count(world.id("bob")) == 3
    assert len(centre.queue) == 3 and not centre.outbox  # each ack waits for its hop's delay
    centre.pop_due(1.5)
    acks = centre.take_outbox()
    assert len(acks) == 3 and all(hop == world.id("mix-a1") for hop, _ in acks)
    stats = centre.statistics(1.5)
    assert stats["provider_messages_stored"] == 3 and stats["provider_acks_sent"] == 3
    for (_, packet), surb_keys in zip(acks, keys, strict=True):  # the acks are real
        hop, result = "mix-a1", world.process("mix-a1", packet)
        for hop in ("mix-b1", "mix-c1", "provider-1"):
            assert isinstance(result, ForwardHop)
            result = world.process(hop, result.packet)
        assert isinstance(result, SurbReply)
        assert open_surb_reply(world.topology.sphinx, surb_keys, result.payload) == ACK_PAYLOAD


def test_a_failed_commit_stores_nothing_sends_no_ack_and_counts_every_message(
        world: World, tmp_path: Path) -> None:
    box = CountingMailbox(tmp_path / "box.sqlite", quota=5, ttl=100.0)
    centre = world.centre("provider-2", mailbox=box)
    box.fail = True
    centre.on_results(1.0, results(*(delivery(world, b"x%d" % i, bytes([i]) * 16)[0]
                                     for i in range(2))))
    centre.commit(1.0)
    assert box.count(world.id("bob")) == 0 and len(centre.queue) == 0 and not centre.outbox
    assert centre.statistics(1.0)["provider_store_failed"] == 2
    box.fail = False  # control: the same centre acknowledges what it could commit
    centre.on_results(1.0, results(delivery(world, b"y", b"\x09" * 16)[0]))
    centre.commit(1.0)
    assert box.count(world.id("bob")) == 1 and len(centre.queue) == 1


def test_a_full_mailbox_refuses_its_part_of_a_batch_and_acks_the_rest(
        world: World, tmp_path: Path) -> None:
    box = CountingMailbox(tmp_path / "box.sqlite", quota=2, ttl=100.0)
    centre = world.centre("provider-2", mailbox=box)
    centre.on_results(1.0, results(*(delivery(world, b"z%d" % i, bytes([i]) * 16)[0]
                                     for i in range(3))))
    centre.commit(1.0)
    stats = centre.statistics(1.0)
    assert box.commits == 1 and stats["provider_refused_full"] == 1
    assert stats["dropped_mailbox_full"] == 1 and stats["provider_acks_sent"] == 2
    assert len(centre.queue) == 2


def test_a_replayed_result_is_dropped_before_it_is_stored(world: World, tmp_path: Path) -> None:
    box = CountingMailbox(tmp_path / "box.sqlite", quota=5, ttl=100.0)
    centre = world.centre("provider-2", mailbox=box)
    frame, _ = delivery(world, b"once", b"\x01" * 16)
    centre.on_results(1.0, results(frame, frame))
    centre.commit(1.0)
    assert box.count(world.id("bob")) == 1 and centre.statistics(1.0)["dropped_replay"] == 1


def test_a_forward_hop_is_due_after_its_delay_and_leaves_in_due_order(world: World) -> None:
    centre = world.centre("mix-a1")
    late = world.process("mix-a1", world.packet("mix-a1", "mix-b1", recipient=b"\x00" * 16,
                                                delay_us=300_000))
    soon = world.process("mix-a1", world.packet("mix-a1", "mix-b2", recipient=b"\x00" * 16,
                                                delay_us=100_000))
    assert isinstance(late, ForwardHop) and isinstance(soon, ForwardHop)
    centre.on_results(0.0, results(encode_result(0.0, 0, late), encode_result(0.0, 0, soon)))
    assert not centre.outbox and centre.timeout_ms(0.0, 1000) == 100
    centre.pop_due(0.2)
    assert [hop for hop, _ in centre.take_outbox()] == [world.id("mix-b2")]
    centre.pop_due(0.3)
    assert [hop for hop, _ in centre.take_outbox()] == [world.id("mix-b1")]


@pytest.mark.parametrize("name", ["mix-a1", "provider-2"])
def test_the_replay_check_uses_the_epoch_of_the_key_that_opened_the_packet(
        world: World, name: str) -> None:
    centre = world.centre(name)
    names = (name, "mix-b1") if name == "mix-a1" else (name,)
    result = world.process(name, world.packet(*names, recipient=world.id("bob")))
    assert isinstance(result, ForwardHop if name == "mix-a1" else FinalDelivery)
    centre.on_results(0.0, results(encode_result(0.0, 3, result)))
    centre.on_results(0.0, results(encode_result(0.0, 4, result)))  # the tag under another key
    assert centre.statistics(0.0)["dropped_replay"] == 0
    centre.on_results(0.0, results(encode_result(0.0, 3, result)))  # again under the same key
    assert centre.statistics(0.0)["dropped_replay"] == 1


def test_a_worker_gets_no_job_until_it_reported_and_was_sent_the_key_set(world: World) -> None:
    centre = world.centre("mix-a1", workers=2)
    for index in range(2):
        centre.dispatch.started(index, PID + index)  # started again: no keys yet
    for _ in range(3):
        centre.on_frame(0.0, b"r", world.id("provider-1"), "uid",
                        wire.encode_packet(bytes(world.topology.sphinx.packet_length),
                                           params=world.topology.sphinx))
    sent, send = sender(length=world.topology.sphinx.packet_length)
    assert centre.dispatch.dispatch(send) == 0 and not sent
    report = encode_stats(WorkerStats(1, 0.0, 0, PID + 1, 0.0))
    stale = encode_stats(WorkerStats(0, 0.0, 0, PID + 50, 0.0))  # not the process at index 0
    centre.on_results(0.0, results(report, index=1, pid=PID + 1))
    centre.on_results(0.0, results(stale, index=0, pid=PID + 50))
    assert centre.take_key_requests() == [1] and centre.take_key_requests() == []
    centre.dispatch.keyed(1)
    assert centre.dispatch.dispatch(send) == 3 and {index for index, _ in sent} == {1}
    centre.on_results(0.0, results(report, index=1, pid=PID + 1))
    assert centre.take_key_requests() == []  # keyed already: asked once
    centre.worker_replaced(1, PID + 2)  # a new process at index 1 needs the keys again
    centre.on_results(0.0, results(encode_stats(WorkerStats(1, 0.0, 0, PID + 2, 0.0)),
                                   index=1, pid=PID + 2))
    assert centre.take_key_requests() == [1]


def test_a_worker_that_could_not_take_a_new_key_set_gets_no_jobs_until_it_has() -> None:
    dispatch = keyed(2)
    dispatch.keyed(0, False)
    for _ in range(4):
        dispatch.add(0.0, bytes(100))
    sent, send = sender()
    assert dispatch.dispatch(send) == 4 and {index for index, _ in sent} == {1}
    assert dispatch.wants_keys(0, PID) and not dispatch.wants_keys(1, PID + 1)


# ---------------------------------------------------------------------------- shutdown and timers


@pytest.mark.parametrize("drain", [True, False])
def test_queued_packets_are_sent_or_dropped_at_shutdown_as_drain_on_shutdown_says(
        world: World, drain: bool) -> None:
    centre = world.centre("mix-a1", drain=drain)
    hops = [world.process("mix-a1", world.packet("mix-a1", "mix-b1", recipient=b"\x00" * 16,
                                                 delay_us=5_000_000)) for _ in range(3)]
    centre.on_results(0.0, results(*(encode_result(0.0, 0, h) for h in hops)))
    assert len(centre.queue) == 3 and not centre.outbox
    assert centre.drain() == 3 and len(centre.queue) == 0
    assert len(centre.take_outbox()) == (3 if drain else 0)
    assert centre.statistics(0.0)["dropped_shutdown"] == (0 if drain else 3)


def test_a_failing_timer_step_is_counted_and_runs_again_only_at_its_pace(world: World) -> None:
    centre = world.centre("mix-a1")
    calls: list[float] = []

    def boom(now: float) -> None:
        calls.append(now)
        raise RuntimeError("a bug")
    centre.guarded("test step", boom, 0.0)
    assert centre.statistics(0.0)["internal_errors"] == 1 and calls == [0.0]
    assert centre.on_timer(0.0).heartbeats and not centre.on_timer(0.5).heartbeats
    assert centre.on_timer(1.0).heartbeats
    assert centre.idle_links(2.0, [b"a", b"b"], {b"a": 1.5}) == [b"b"]


# ---------------------------------------------------------------------------- statistics, purity


RUNTIME_ONLY = {"workers", "worker_utilisation", "worker_processed", "cpu_seconds_workers",
                "cpu_seconds_workers_sphinx", "cpu_seconds_node", "auth_denied",
                "auth_unregistered", "auth_throttled", "uptime_seconds", "pid", "links_down",
                "link_handshakes", "link_handshakes_failed", "link_disconnects",
                "link_queued_while_down", "dropped_link_down", "link_frames_discarded",
                # the key schedule and the documents: the runtime's directory side
                "epoch", "document_epoch", "document_valid_seconds", "sphinx_keys_accepted",
                "sphinx_keys_made", "sphinx_keys_erased"}


def test_the_centre_reports_every_schema_statistic_but_what_only_the_runtime_measures(
        world: World) -> None:
    stats = world.centre("provider-1").statistics(0.0)
    declared = {s.name for s in STATISTICS}
    assert set(stats) <= declared
    missing = declared - set(stats) - RUNTIME_ONLY
    assert missing <= {"loop_rtt_us_median", "loop_per_hop_us_median"}  # after a loop returned
    assert not RUNTIME_ONLY - declared  # the runtime's list names real statistics


def test_the_centre_and_its_parts_never_import_zmq() -> None:
    code = ("import sys\nimport zmix.nodecentre, zmix.dispatch, zmix.workframes\n"
            "assert 'zmq' not in sys.modules, sorted(m for m in sys.modules if 'zmq' in m)\n"
            "import zmix.runtime.node\nassert 'zmq' in sys.modules\n")  # control: it can
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_worker_result_frames_round_trip_through_split_results() -> None:
    frames = [encode_invalid(1.5, DropReason.BAD_MAC), crypto.random_bytes(40)]
    assert split_results(results(*frames, index=3, pid=9)) == (3, 9, frames)


# ---------------------------------------------------------------------------- the in-memory network


def test_simnet_runs_node_cores_so_mix_loops_return_and_replays_are_dropped(
        tmp_path: Path) -> None:
    topology, state = make_network(tmp_path, clients=CLIENTS,
                                   loopix={"mix_loop_rate": 2.0, "mean_delay": 0.01})
    net = SimNet(topology, state, mix_loops=True)
    net.advance(5.0)
    net.settle(5.0)
    stats = net.statistics("mix-a1")
    assert stats["loops_sent"] > 3 and stats["loops_returned"] == stats["loops_sent"]
    assert stats["loop_rtt_us_median"] > 0  # the hops held the loops for their delays
    keys = net.view.current  # the nodes' keys of the clock's epoch
    route = [Hop(n.id, keys.node_key(n.name, topology.epoch.epoch_at(net.clock)), 0)
             for n in (topology.node("mix-a1"), topology.node("mix-b1"))]
    packet = create_forward_packet(topology.sphinx, route, b"\x00" * 16, b"m")
    frame = wire.encode_packet(packet, params=topology.sphinx)
    for _ in range(2):
        net.frame(topology.node("mix-a1").id, topology.node("provider-1").id, frame)
    net.settle(net.clock)
    assert net.statistics("mix-a1")["dropped_replay"] == 1


# ---------------------------------------------------------------------------- bugs and odd input


def test_a_bug_while_handling_a_frame_or_result_costs_that_one_and_is_counted(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    centre = world.centre("provider-1")
    alice = world.id("alice")
    fetch = wire.encode_client(wire.Fetch(1), params=world.topology.sphinx)

    def broken(*_: object) -> None:
        raise RuntimeError("a bug")
    with monkeypatch.context() as patch:
        patch.setattr(ProviderCore, "on_fetch", broken)
        centre.on_frame(0.0, b"r", alice, "uid", fetch)
    centre.on_frame(0.0, b"r", alice, "uid", fetch)  # control: the next one is answered
    assert centre.statistics(0.0)["internal_errors"] == 1 and len(centre.take_replies()) == 1
    forward = world.process("provider-1", world.packet("provider-1", "mix-a1",
                                                       recipient=b"\x00" * 16))
    centre.dispatch.add(0.0, b"p")
    with monkeypatch.context() as patch:
        patch.setattr(NodeCore, "on_forward", broken)
        centre.on_results(0.0, results(encode_result(0.0, 0, forward)))  # type: ignore[arg-type]
    stats = centre.statistics(0.0)
    assert stats["internal_errors"] == 2 and stats["in_flight"] == 0  # the packet is not held


def test_odd_frames_are_dropped_by_reason(world: World) -> None:
    centre = world.centre("provider-1", open_door=True)
    centre.on_multipart()
    centre.on_frame(0.0, b"r", None, "uid", b"\x02\x20garbage")  # a stranger's unparsable frame
    stats = centre.statistics(0.0)
    assert stats["dropped_bad_frame"] == 1 and stats["dropped_unknown_peer"] == 1
    assert stats["dropped_total"] == 2


def test_a_full_delay_queue_drops_and_counts_and_worker_reports_are_kept(
        world: World, tmp_path: Path) -> None:
    topo = world.topology
    core = NodeCore(NetworkView(Network(1, topo, load_directory(world.state, topo))), "mix-a1",
                    random.Random(1), 0.0)
    centre = NodeCentre(core, topo.sphinx, slots=1, workers=1, queue_limit=1,
                        drain_on_shutdown=False, now=0.0, link_key=bytes.fromhex)
    hops = [world.process("mix-a1", world.packet("mix-a1", "mix-b1", recipient=b"\x00" * 16,
                                                 delay_us=1_000_000)) for _ in range(2)]
    stats = WorkerStats(0, 1.5, 2, 42, 1.0)
    centre.on_results(0.0, results(*(encode_result(0.0, 0, h) for h in hops),  # type: ignore[arg-type]
                                   encode_stats(stats), pid=42))
    assert len(centre.queue) == 1 and centre.statistics(0.0)["dropped_queue_full"] == 1
    assert centre.reports == [stats]


def test_the_poll_timeout_follows_the_queue_waiting_jobs_and_the_next_mix_loop(
        world: World) -> None:
    topo = world.topology
    looping = dataclasses.replace(topo, loopix=dataclasses.replace(topo.loopix,
                                                                   mix_loop_rate=1.0))
    directory = load_directory(world.state, topo)
    epoch_keys = {n.name: {0: directory[n.name].public_key} for n in topo.nodes()}
    core = NodeCore(NetworkView(Network(1, looping, directory, epoch_keys)),
                    "mix-a1", random.Random(1), 0.0)
    centre = NodeCentre(core, topo.sphinx, slots=1, workers=1, queue_limit=10,
                        drain_on_shutdown=False, now=0.0, link_key=bytes.fromhex)
    loop_due = core.next_loop_due()
    assert loop_due is not None
    assert centre.timeout_ms(0.0, 10_000) == min(10_000, int(loop_due * 1000) + 1)
    centre.dispatch.add(0.0, b"p")
    assert centre.timeout_ms(0.0, 10_000) <= 10  # packets wait for a worker: try again soon
    centre.on_timer(loop_due)
    [(first_hop, packet)] = centre.take_outbox()  # the mix loop, sent at once
    assert first_hop in {n.id for n in topo.layers[1]} and len(packet) == topo.sphinx.packet_length
    assert wire.decode(centre.heartbeat(), params=topo.sphinx, slots=1) == wire.Heartbeat()
    centre.count_sent(3, 1)
    centre.woke()
    stats = centre.statistics(0.0)
    assert (stats["sent"], stats["link_send_failed"], stats["loop_wakeups"]) == (3, 1, 1)
    assert stats["loops_sent"] == 1
