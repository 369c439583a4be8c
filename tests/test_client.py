"""The Loopix client core over the in-memory network: streams, routes, fragments, acks, retries.

``SimNet`` (tests/simnet.py) plays the mixnodes and the providers: it runs every node's sans-IO
centre (replay, delay and next-hop checks included; providers over real SQLite mailboxes) on a
virtual clock, and a packet sent at ``now`` has arrived when ``send`` returns.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simnet import SimNet

from zmix import crypto, wire
from zmix.bench.common import make_network
from zmix.client import (
    FETCH_RETRY,
    LOOP_SLACK,
    MAX_ATTEMPTS,
    Ack,
    AckTimers,
    ClientCore,
    FetchSchedule,
    LoopRoutes,
    Outgoing,
    PacketMaker,
    PoissonStreams,
    Receiver,
    Return,
    Sender,
    SendProgress,
    Stream,
    TakenIn,
)
from zmix.clientstore import SURB_ACK, SURB_REPLY, ClientStore, StoredSurb
from zmix.envelope import ACK_PAYLOAD
from zmix.errors import LocalMisuse
from zmix.fragment import encode_fragment, seal_signed
from zmix.keys import load_private
from zmix.looploss import LOOP_WINDOW, fit
from zmix.sphinx import FinalDelivery, ForwardHop, SphinxParams, answer_surb
from zmix.stats_schema import (
    CLIENT_BY_NAME,
    CLIENT_TABLE_HEADER,
    ClientPart,
    client_markdown_table,
    client_names,
)
from zmix.wire import Fetch, FetchReply, ItemKind, MailboxItem

CLIENTS = {"alice": "provider-1", "bob": "provider-2", "carol": "provider-1"}
QUIET = {"loop_rate": 0.0, "drop_rate": 0.0}  # only the payload stream runs
CLIENT_DOC = Path(__file__).resolve().parent.parent / "docs" / "client.md"


def make_net(directory: Path, *, sphinx: dict[str, int] | None = None, quiet: bool = False,
             **loopix: float) -> SimNet:
    """A network of three layers of two mixnodes, two providers, three clients."""
    rates = {"payload_rate": 20.0, "loop_rate": 2.0, "drop_rate": 2.0, "mean_delay": 0.01,
             "fetch_interval": 0.1, **(QUIET if quiet else {}), **loopix}
    topology, state = make_network(directory, clients=CLIENTS, loopix=rates, sphinx=sphinx)
    return SimNet(topology, state)


@pytest.fixture
def net(tmp_path: Path) -> SimNet:
    return make_net(tmp_path)


def walk(net: SimNet, out: Outgoing) -> tuple[list[bytes], FinalDelivery]:
    """Return the node ids a packet visits and what its last hop delivers."""
    hops, hop, packet = [], out.first_hop, out.packet
    while True:
        hops.append(hop)
        result = net.nodes[hop].process(packet)  # the keys the node accepts at the clock
        if isinstance(result, FinalDelivery):
            return hops, result
        assert isinstance(result, ForwardHop)
        assert result.delay_us <= net.topology.loopix.max_delay * 1_000_000
        hop, packet = result.next_hop, result.packet


def first_item(message_id: bytes, index: int, count: int, total: int, data: bytes,
               sender_key: bytes, sender_id: bytes, recipient_key: bytes) -> MailboxItem:
    fragment = encode_fragment(message_id, index, count, total, data,
                               b"\x00\x00" if index == 0 else None)
    sealed = seal_signed(recipient_key, sender_id, sender_key, fragment)
    return MailboxItem(1, ItemKind.MESSAGE, bytes(16), sealed)


# ---------------------------------------------------------------------------- streams


def test_each_poisson_stream_keeps_its_rate_within_five_percent_over_ten_thousand_events() -> None:
    rates = {Stream.PAYLOAD: 10.0, Stream.LOOP: 4.0, Stream.DROP: 2.5}
    streams = PoissonStreams(rates, random.Random(1), 0.0)
    events: list[Stream] = []
    for step in range(1, 4001):  # 4000 s of fake time, polled every second
        events += streams.due(float(step))
    for stream, rate in rates.items():
        assert events.count(stream) == pytest.approx(rate * 4000, rel=0.05)
    assert len(events) > 10_000


def test_the_gaps_between_events_are_exponential() -> None:
    streams = PoissonStreams({Stream.LOOP: 1.0}, random.Random(2), 0.0, stall_reset=1e9)
    times: list[float] = []
    while len(times) < 10_000:
        t = streams.next_due()
        assert streams.due(t) == [Stream.LOOP]
        times.append(t)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(gaps) / len(gaps) == pytest.approx(1.0, rel=0.05)
    assert sum(g < 1.0 for g in gaps) / len(gaps) == pytest.approx(0.632, abs=0.02)  # 1 - 1/e


def test_a_stalled_stream_sends_one_packet_instead_of_its_backlog() -> None:
    streams = PoissonStreams({Stream.PAYLOAD: 10.0}, random.Random(3), 0.0)
    assert len(streams.due(100.0)) == 1
    assert streams.next_due() > 100.0


def test_a_stream_with_rate_zero_never_fires() -> None:
    streams = PoissonStreams({Stream.DROP: 0.0}, random.Random(4), 0.0)
    assert streams.due(1e6) == [] and streams.next_due() == float("inf")


def test_the_client_sends_its_three_streams_at_the_configured_rates(tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=12.0, loop_rate=5.0, drop_rate=3.0)
    alice = net.client("alice", seed=5)
    sent = [o for t in range(1, 201) for o in alice.poll(t * 0.5)]  # 100 s of fake time
    stats = alice.statistics()
    assert stats["loops_sent"] == pytest.approx(500, rel=0.1)
    assert stats["drops_sent"] == pytest.approx(1200 + 300, rel=0.1)  # payload + drop streams
    assert len(sent) == stats["drops_sent"] + stats["loops_sent"] and stats["real_sent"] == 0
    assert alice.next_wakeup() > 100.0


# ---------------------------------------------------------------------------- routes


def test_every_packet_has_the_network_size_and_takes_a_stratified_route(net: SimNet) -> None:
    alice = net.client("alice", seed=6)
    alice.submit(0.0, "bob", b"hi")
    out = alice.poll(2.0)
    topo = net.topology
    own, providers = topo.node("provider-1").id, {p.id for p in topo.providers}
    ids = {c.name: c.id for c in topo.clients}
    kinds = {"real": 0, "loop": 0, "drop": 0}
    for o in out:
        assert len(o.packet) == topo.sphinx.packet_length and o.first_hop == own
        hops, final = walk(net, o)
        assert hops[0] == own and hops[-1] in providers
        assert all(hop in {n.id for n in layer} for hop, layer in zip(hops[1:-1], topo.layers,
                                                                       strict=True))
        assert len(hops) == len(topo.layers) + 2
        if final.recipient == ids["bob"]:
            kinds["real"] += 1
            assert hops[-1] == topo.node("provider-2").id
        elif final.recipient == ids["alice"]:
            kinds["loop"] += 1
            assert hops[-1] == own
        else:
            kinds["drop"] += 1
            assert final.recipient == hops[-1]  # a drop is addressed to its last provider
    stats = alice.statistics()
    assert kinds == {"real": stats["real_sent"], "loop": stats["loops_sent"],
                     "drop": stats["drops_sent"]}
    assert kinds["real"] == 1 and kinds["loop"] and kinds["drop"]


def test_with_nothing_queued_the_payload_stream_sends_drops(tmp_path: Path) -> None:
    net = make_net(tmp_path, quiet=True)
    alice = net.client("alice", seed=7)
    out = [o for step in range(1, 51) for o in alice.poll(step * 0.1)]
    assert len(out) == alice.statistics()["drops_sent"] > 50
    assert alice.statistics()["real_sent"] == 0
    final = walk(net, out[0])[1]
    assert final.recipient in {p.id for p in net.topology.providers}


# ---------------------------------------------------------------------------- messages


def test_a_message_arrives_once_with_its_sender_and_is_acknowledged(net: SimNet) -> None:
    alice, bob = net.client("alice", 8), net.client("bob", 9)
    message_id = alice.submit(0.0, "bob", b"hello bob", filename="note.txt")
    assert alice.progress(message_id).acked == 0
    got = net.run({"alice": alice, "bob": bob}, 0.0, 2.0)
    assert [(name, m.sender, m.data, m.filename) for name, m in got] == [
        ("bob", "alice", b"hello bob", "note.txt")]
    assert alice.progress(message_id) == type(alice.progress(message_id))(1, 1, False)
    assert alice.statistics()["acks_received"] == 1
    assert [m.data for m in bob.inbox()] == [b"hello bob"]
    bob.mark_delivered(message_id)
    assert bob.inbox() == []


def test_loops_come_back_and_are_counted(net: SimNet) -> None:
    alice = net.client("alice", 10)
    net.run({"alice": alice}, 0.0, 5.0)
    stats = alice.statistics()
    assert stats["loops_sent"] > 3 and stats["loops_returned"] == stats["loops_sent"]
    net.lost = {n.id for n in net.topology.layers[2]}
    net.run({"alice": alice}, 5.0, 10.0)
    stats = alice.statistics()
    assert stats["loops_returned"] < stats["loops_sent"]


def test_a_three_mebibyte_message_is_reassembled_from_shuffled_duplicated_fragments(
        tmp_path: Path) -> None:
    # 16 KiB packets keep this test fast; the 2 KiB geometry is split the same way (test_fragment)
    net = make_net(tmp_path, sphinx={"payload_length": 16384, "max_hops": 5}, payload_rate=1000.0,
                   quiet=True)
    alice, bob = net.client("alice", 11), net.client("bob", 12)
    data = os.urandom(3 * 1024 * 1024)
    message_id = alice.submit(0.0, "bob", data, filename="big.bin")
    fragments = alice.progress(message_id).fragments
    out = alice.poll(1.0)  # about 1000 packets: every fragment once, drops after them
    assert fragments > 150 and alice.statistics()["real_sent"] == fragments
    assert alice.statistics()["drops_sent"] == len(out) - fragments
    duplicates = out[:3]  # only the payload stream runs: the fragments went out first
    random.Random(13).shuffle(out)
    net.send(alice, out + duplicates, 1.0)
    got = net.fetch(bob, "bob", 1.0)
    assert [(m.data == data, m.filename, m.sender) for m in got] == [(True, "big.bin", "alice")]
    # the copies are replays: the first hop drops them (a resent fragment is a new packet, and
    # the recipient drops the second copy: test_an_unacknowledged_fragment_is_resent_...)
    assert net.statistics("provider-1")["dropped_replay"] == 3
    assert bob.statistics()["duplicates_dropped"] == 0
    assert bob.statistics()["messages_received"] == 1
    net.fetch(alice, "alice", 1.0)
    assert alice.progress(message_id).acked == fragments  # duplicates were acked, not counted


def test_an_anonymous_message_has_no_sender(net: SimNet) -> None:
    alice, bob = net.client("alice", 14), net.client("bob", 15)
    alice.submit(0.0, "bob", b"guess who", anonymous=True)
    [(_, message)] = net.run({"alice": alice, "bob": bob}, 0.0, 2.0)
    assert (message.sender, message.data, message.reply_handle) == (None, b"guess who", None)


def test_an_anonymous_message_can_be_answered_through_its_reply_blocks(net: SimNet) -> None:
    alice, bob = net.client("alice", 16), net.client("bob", 17)
    alice.submit(0.0, "bob", b"guess who", anonymous=True, reply_blocks=2)
    [(_, message)] = net.run({"alice": alice, "bob": bob}, 0.0, 2.0)
    assert message.sender is None and message.reply_handle is not None
    first = bob.reply(2.0, message.reply_handle, b"no idea")
    bob.reply(2.0, message.reply_handle, b"still none")
    got = net.run({"alice": alice, "bob": bob}, 2.0, 4.0)
    assert sorted((n, m.sender, m.data) for n, m in got) == [
        ("alice", None, b"no idea"), ("alice", None, b"still none")]
    assert bob.progress(first).acked == 1 and bob.statistics()["replies_sent"] == 2
    with pytest.raises(LocalMisuse, match="no unused reply block"):
        bob.reply(4.0, message.reply_handle, b"the blocks are used up")


def test_a_reply_packet_starts_at_the_first_layer_not_at_a_provider(net: SimNet) -> None:
    alice, bob = net.client("alice", 18), net.client("bob", 19)
    alice.submit(0.0, "bob", b"?", reply_blocks=1)
    [(_, message)] = net.run({"alice": alice, "bob": bob}, 0.0, 2.0)
    assert message.reply_handle is not None
    bob.reply(2.0, message.reply_handle, b"!")
    [reply] = [o for o in bob.poll(4.0) if o.first_hop != net.topology.node("provider-2").id]
    assert reply.first_hop in {n.id for n in net.topology.layers[0]}


def test_an_oversized_reply_and_an_unknown_recipient_are_local_misuse(net: SimNet) -> None:
    alice = net.client("alice", 20)
    with pytest.raises(LocalMisuse, match="no client named"):
        alice.submit(0.0, "mallory", b"x")
    with pytest.raises(LocalMisuse, match="a reply holds at most"):
        alice.reply(0.0, b"\x00" * 16, bytes(net.topology.sphinx.max_reply_length))
    with pytest.raises(LocalMisuse, match="reply_blocks"):
        alice.submit(0.0, "bob", b"x", reply_blocks=9)


# ---------------------------------------------------------------------------- acks and retries


def test_an_unacknowledged_fragment_is_resent_after_its_timeout_and_delivered_once(
        tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=50.0, quiet=True)
    alice, bob = net.client("alice", 21), net.client("bob", 22)
    message_id = alice.submit(0.0, "bob", b"persist")
    first = [o for o in alice.poll(0.5) if walk(net, o)[1].recipient == bob_id(net)]
    assert len(first) == 1  # sent once; its ack never arrives: nobody forwarded it
    # the ack timeout: 4 x (5 forward + 4 ack hops) x mean_delay + 2 fetch intervals + 1 s
    deadline = 0.5 + 4 * 9 * 0.01 + 2 * 0.1 + 1.0
    alice.poll(deadline - 0.01)
    assert alice.statistics()["retransmissions"] == 0
    again = [o for o in alice.poll(deadline + 0.5) if walk(net, o)[1].recipient == bob_id(net)]
    assert len(again) == 1 and alice.statistics()["retransmissions"] == 1
    net.send(alice, first + again, deadline + 0.5)
    got = net.fetch(bob, "bob", deadline + 0.5)
    assert [m.data for m in got] == [b"persist"]
    assert bob.statistics()["duplicates_dropped"] == 1
    net.fetch(alice, "alice", deadline + 0.5)
    assert alice.progress(message_id).acked == 1
    assert alice.statistics()["acks_received"] == 2  # both copies were stored and acknowledged
    assert alice.statistics()["duplicate_acks"] == 1


def bob_id(net: SimNet) -> bytes:
    return net.topology.client("bob").id


def test_a_message_fails_when_every_retry_is_lost(tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=2.0, quiet=True)
    alice = net.client("alice", 23)
    message_id = alice.submit(0.0, "bob", b"doomed")
    net.lost = {n.id for n in net.topology.layers[0]}
    net.run({"alice": alice}, 0.0, 2000.0, step=5.0)
    assert alice.progress(message_id).failed
    stats = alice.statistics()
    assert stats["real_sent"] == MAX_ATTEMPTS and stats["messages_failed"] == 1
    assert stats["in_flight"] == 0


def test_fragments_that_disagree_with_their_message_are_dropped(net: SimNet) -> None:
    bob = net.client("bob", 24)
    alice_key = load_private(net.state, "alice").private_key
    carol_key = load_private(net.state, "carol").private_key
    ids = {c.name: c.id for c in net.topology.clients}
    bob_pk = load_private(net.state, "bob").public_key
    message_id = os.urandom(16)
    items = [first_item(message_id, 0, 2, 8, b"abcd", alice_key, ids["alice"], bob_pk),
             first_item(message_id, 1, 2, 8, b"EFGH", carol_key, ids["carol"], bob_pk),
             first_item(message_id, 1, 3, 8, b"EFGH", alice_key, ids["alice"], bob_pk),
             first_item(message_id, 1, 2, 8, b"efgh", alice_key, ids["alice"], bob_pk)]
    got = bob.on_fetched(1.0, items)
    assert [(m.sender, m.data) for m in got] == [("alice", b"abcdefgh")]
    assert bob.statistics()["inconsistent_fragments"] == 2


def test_garbage_items_are_counted_not_raised(net: SimNet) -> None:
    bob = net.client("bob", 25)
    items = [MailboxItem(1, ItemKind.MESSAGE, bytes(16), os.urandom(300)),
             MailboxItem(2, ItemKind.REPLY, os.urandom(16), os.urandom(100))]
    assert bob.on_fetched(0.0, items) == []
    assert bob.statistics()["undecryptable"] == 1 and bob.statistics()["unknown_surb"] == 1


# ---------------------------------------------------------------------------- restarts


def test_a_restarted_sender_resumes_its_retransmissions(net: SimNet, tmp_path: Path) -> None:
    path = tmp_path / "alice.sqlite"
    alice = net.client("alice", 26, ClientStore(path))
    message_id = alice.submit(0.0, "bob", b"survives a restart")
    net.lost = {n.id for n in net.topology.layers[1]}
    net.run({"alice": alice}, 0.0, 1.0)
    assert alice.statistics()["real_sent"] == 1
    net.lost = set()
    alice = net.client("alice", 27, ClientStore(path), now=1.0)  # the process was killed
    assert alice.progress(message_id) == type(alice.progress(message_id))(1, 0, False)
    bob = net.client("bob", 28)
    got = net.run({"alice": alice, "bob": bob}, 1.0, 3.0)
    assert [m.data for _, m in got] == [b"survives a restart"]
    assert alice.progress(message_id).acked == 1
    assert alice.statistics()["retransmissions"] == 1  # the attempt count survived


def test_a_restarted_recipient_keeps_a_partial_message(tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=100.0, quiet=True)
    alice = net.client("alice", 29)
    data = os.urandom(10_000)
    alice.submit(0.0, "bob", data)
    out = alice.poll(1.0)
    assert len(out) > 3
    path = tmp_path / "bob.sqlite"
    bob = net.client("bob", 30, ClientStore(path))
    net.send(alice, out[:2], 1.0)
    assert net.fetch(bob, "bob", 1.0) == []
    bob = net.client("bob", 31, ClientStore(path), now=2.0)
    net.send(alice, out[2:], 2.0)
    assert [m.data for m in net.fetch(bob, "bob", 2.0)] == [data]


def test_a_reply_written_before_a_restart_is_still_sent(net: SimNet, tmp_path: Path) -> None:
    alice = net.client("alice", 32)
    path = tmp_path / "bob.sqlite"
    bob = net.client("bob", 33, ClientStore(path))
    alice.submit(0.0, "bob", b"?", anonymous=True, reply_blocks=1)
    [(_, message)] = net.run({"alice": alice, "bob": bob}, 0.0, 2.0)
    assert message.reply_handle is not None
    bob.reply(2.0, message.reply_handle, b"answer")  # queued, then the process dies
    bob = net.client("bob", 34, ClientStore(path), now=2.0)
    assert bob.inbox()[0].reply_handle == message.reply_handle
    got = net.run({"alice": alice, "bob": bob}, 2.0, 4.0)
    assert [(n, m.data) for n, m in got] == [("alice", b"answer")]


def test_stale_ack_keys_and_lost_loops_are_forgotten(tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=1.0, loop_rate=1.0, drop_rate=0.0)
    store = ClientStore(":memory:")
    alice: ClientCore = net.client("alice", 35, store)
    alice.submit(0.0, "bob", b"x")
    net.lost = {n.id for n in net.topology.layers[0]}
    net.run({"alice": alice}, 0.0, 10.0, step=1.0)
    early_loops = alice.statistics()["loops_sent"]
    assert store.surb_count() >= 1 and early_loops > 0
    net.run({"alice": alice}, 10.0, 10.0 + 3 * 86_400, step=3600.0)
    assert store.surb_count() == 0  # the message failed long ago; its ack keys are useless
    assert alice.statistics()["expired"] >= early_loops + 1


# ---------------------------------------------------------------------------- loops' routes


def loop_path(net: SimNet, out: Outgoing) -> tuple[tuple[str, ...], float]:
    """Return the names of the nodes a loop packet visits and the seconds of delay its hops
    were given (every hop's, the last one's too)."""
    names = {n.id: n.name for n in net.topology.nodes()}
    visited, delays, hop, packet = [], 0, out.first_hop, out.packet
    while True:
        visited.append(names[hop])
        result = net.nodes[hop].process(packet)
        assert isinstance(result, ForwardHop | FinalDelivery)
        delays += result.delay_us
        if isinstance(result, FinalDelivery):
            return tuple(visited), delays / 1_000_000
        hop, packet = result.next_hop, result.packet


def test_a_loop_through_a_node_that_drops_everything_is_lost_on_its_route_after_the_deadline(
        tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=1e-9, drop_rate=0.0, loop_rate=5.0)
    alice = net.client("alice", 41)
    dead = net.topology.layers[1][0].name
    net.lost = {net.topology.layers[1][0].id}
    net.run({"alice": alice}, 0.0, 20.0)
    assert alice.loops.in_flight() > 0  # the last loops through the dead node: not yet due
    early_lost = sum(lost for _, lost in alice.loop_routes(20.0).values())
    routes = alice.loop_routes(30.0)  # every deadline has passed
    through = {r: c for r, c in routes.items() if dead in r}
    around = {r: c for r, c in routes.items() if dead not in r}
    assert through and around
    assert all(returned == 0 and lost > 0 for returned, lost in through.values()), through
    assert all(returned > 0 and lost == 0 for returned, lost in around.values()), around
    for route in routes:  # the client, its provider, one mixnode per layer, back to the client
        assert len(route) == 7 and route[0] == route[-1] == "alice"
        assert route[1] == route[-2] == "provider-1"
    stats = alice.statistics()
    lost = sum(lost for _, lost in routes.values())
    assert early_lost < lost == stats["loops_lost"]
    assert sum(returned for returned, _ in routes.values()) == stats["loops_returned"]
    assert stats["loops_sent"] == stats["loops_returned"] + stats["loops_lost"] > 50
    # The client's routes alone single out the dead node.
    losses = {name: segment.loss for name, segment in fit(routes).nodes.items()}
    assert losses.pop(dead) == 1.0 and set(losses.values()) == {0.0}


def test_a_loop_is_lost_only_once_its_delays_a_fetch_interval_and_the_slack_have_passed(
        tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=1e-9, drop_rate=0.0, loop_rate=0.0)
    store = ClientStore(":memory:")
    alice = net.client("alice", 42, store)
    assert alice.loops.next_deadline() == math.inf  # nothing in flight
    with store:
        out = alice.sender.emit(Stream.LOOP, 1.0)
    visited, delays = loop_path(net, out)
    route = ("alice", *visited, "alice")
    deadline = 1.0 + delays + net.topology.loopix.fetch_interval + LOOP_SLACK
    assert alice.next_wakeup() == pytest.approx(deadline)  # the core wakes to count it
    assert alice.poll(deadline - 0.001) == [] and alice.loop_routes(deadline - 0.001) == {}
    assert alice.statistics()["loops_lost"] == 0  # positive control: not yet
    alice.poll(deadline)
    assert alice.statistics()["loops_lost"] == 1 and alice.loops.next_deadline() == math.inf
    assert alice.loop_routes(deadline + 1.0) == {route: (0, 1)}
    # It comes back after all: late, not returned, and still lost on its route.
    net.send(alice, [out], deadline + 1.0)
    net.fetch(alice, "alice", deadline + 1.0)
    stats = alice.statistics()
    assert (stats["loops_late"], stats["loops_returned"], stats["loops_lost"]) == (1, 0, 1)
    assert alice.loop_routes(deadline + 1.0) == {route: (0, 1)}


def test_a_loop_back_in_time_is_returned_on_the_route_it_took(tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=1e-9, drop_rate=0.0, loop_rate=0.0)
    store = ClientStore(":memory:")
    alice = net.client("alice", 43, store)
    with store:
        out = alice.sender.emit(Stream.LOOP, 1.0)
    visited, _ = loop_path(net, out)
    net.send(alice, [out], 1.0)
    net.fetch(alice, "alice", 1.0)
    assert alice.loop_routes(100.0) == {("alice", *visited, "alice"): (1, 0)}
    stats = alice.statistics()
    assert (stats["loops_returned"], stats["loops_lost"], stats["loops_late"]) == (1, 0, 0)


def test_a_loop_sent_before_a_restart_counts_as_returned_in_no_route(tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=1e-9, drop_rate=0.0, loop_rate=0.0)
    store = ClientStore(tmp_path / "alice.sqlite")
    before = net.client("alice", 44, store)
    with store:
        out = before.sender.emit(Stream.LOOP, 1.0)
    after = net.client("alice", 45, store, now=1.5)  # the same store, a new run
    net.send(after, [out], 1.5)
    net.fetch(after, "alice", 1.5)
    stats = after.statistics()
    assert (stats["loops_returned"], stats["unknown_loops"], stats["loops_lost"]) == (1, 0, 0)
    assert after.loop_routes(100.0) == {}
    # Positive control: a loop of alice's that this store never held is unknown.
    elsewhere = ClientStore(":memory:")
    other = net.client("alice", 46, elsewhere, now=2.0)
    with elsewhere:
        stranger = other.sender.emit(Stream.LOOP, 2.0)
    net.send(after, [stranger], 2.0)
    net.fetch(after, "alice", 2.0)
    assert after.statistics()["unknown_loops"] == 1


def test_loop_routes_count_the_loops_resolved_in_the_last_two_minutes() -> None:
    loops, route = LoopRoutes(), ("c", "p", "m", "p", "c")
    loops.sent(b"1", route, 0.0, 3.0)
    loops.sent(b"2", route, 0.0, 3.0)
    assert loops.next_deadline() == 3.0
    assert loops.returned(b"1", 1.0) is Return.IN_TIME
    assert loops.routes(2.9) == {route: (1, 0)}  # the other is out, not yet due
    assert loops.routes(3.0) == {route: (1, 1)}
    assert loops.routes(1.0 + LOOP_WINDOW) == {route: (1, 1)}
    assert loops.routes(1.1 + LOOP_WINDOW) == {route: (0, 1)}
    assert loops.routes(3.1 + LOOP_WINDOW) == {}
    assert loops.returned(b"2", 200.0) is Return.LATE
    assert loops.returned(b"2", 200.0) is Return.UNTRACKED  # reported once
    assert loops.statistics() == {"loops_lost": 1}


def test_a_loop_back_after_its_deadline_but_before_any_expiry_is_late() -> None:
    loops, route = LoopRoutes(), ("c", "p", "m", "p", "c")
    loops.sent(b"1", route, 0.0, 3.0)
    assert loops.returned(b"1", 3.5) is Return.LATE
    assert loops.routes(4.0) == {route: (0, 1)} and loops.statistics() == {"loops_lost": 1}


def test_past_ten_thousand_loops_in_flight_the_oldest_counts_as_lost() -> None:
    loops, route = LoopRoutes(), ("c", "p", "m", "p", "c")
    for i in range(10_001):
        loops.sent(i.to_bytes(4, "big"), route, 0.0, 1e9)
    assert loops.in_flight() == 10_000 and loops.statistics() == {"loops_lost": 1}
    assert loops.returned((0).to_bytes(4, "big"), 1.0) is Return.LATE
    assert loops.returned((1).to_bytes(4, "big"), 1.0) is Return.IN_TIME


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(list(ItemKind)), st.binary(min_size=16, max_size=16),
                          st.binary(max_size=2200)), max_size=4))
def test_any_fetched_items_are_taken_in_without_an_exception(
        net: SimNet, items: list[tuple[ItemKind, bytes, bytes]]) -> None:
    bob = net.client("bob", 36)
    fetched = [MailboxItem(i, kind, surb_id, payload)
               for i, (kind, surb_id, payload) in enumerate(items)]
    assert bob.on_fetched(0.0, fetched) == []
    stats = bob.statistics()
    assert stats["undecryptable"] + stats["unknown_surb"] == len(items)


# ---------------------------------------------------------------------- fetching


def answer(fetch: Fetch, ids: range | list[int], remaining: int = 0) -> FetchReply:
    items = tuple(MailboxItem(i, ItemKind.MESSAGE, bytes(16), b"x") for i in ids)
    return FetchReply(fetch.request_id, items, remaining)


def sends_after_an_answer(held: int) -> list[tuple[float, int, tuple[int, ...]]]:
    """What a client sends in the 2 s after an answer of ``held`` items: (time, frame length,
    acknowledged ids) of every frame."""
    params = SphinxParams()
    schedule = FetchSchedule(0.5, capacity=wire.fetch_ack_capacity(params), first_request_id=7)
    first = schedule.poll(0.0)
    assert first is not None and schedule.poll(0.0) is None
    reply = answer(first, range(100, 100 + held))
    assert schedule.awaits(reply)
    schedule.taken_in(0.01, reply)
    sent = []
    for step in range(1, 201):
        now = 0.01 * step
        fetch = schedule.poll(now)
        if fetch is not None:
            sent.append((now, len(wire.encode_client(fetch, params=params)), fetch.ack_ids))
            schedule.taken_in(now, answer(fetch, []))
    return sent


def test_what_a_client_sends_after_a_fetch_does_not_depend_on_its_mail() -> None:
    runs = {held: sends_after_an_answer(held) for held in (0, 1, 12)}
    shapes = {held: [(round(t, 6), n) for t, n, _ in sent] for held, sent in runs.items()}
    assert shapes[0] == shapes[1] == shapes[12]  # same frames at the same times
    assert [t for t, _ in shapes[0]] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # on its timer
    # ... and the first of them acknowledges what the answer held.
    assert [ids for _, _, ids in runs[12]] == [tuple(range(100, 112)), (), (), ()]
    assert [ids for _, _, ids in runs[0]] == [(), (), (), ()]


def test_each_fetch_acknowledges_what_came_since_the_last_answered_one() -> None:
    schedule = FetchSchedule(1.0, capacity=10, first_request_id=2**64 - 1)
    first = schedule.poll(0.0)
    assert first == Fetch(0, ())  # the request id wraps
    schedule.taken_in(0.1, answer(first, [1, 2]))
    second = schedule.poll(1.0)
    assert second is not None and second.ack_ids == (1, 2)
    # Unanswered: sent again after the retry time, with the same ids and a fresh request id.
    assert schedule.poll(1.0 + FETCH_RETRY - 0.01) is None
    again = schedule.poll(1.0 + FETCH_RETRY)
    assert again is not None and again.ack_ids == (1, 2) and again.request_id != second.request_id
    late = answer(second, [3])
    assert not schedule.awaits(late)  # an answer to the first try is ignored ...
    schedule.taken_in(3.1, answer(again, [2, 3]))  # ... item 2 came back (not deleted yet)
    third = schedule.poll(4.0)
    assert third is not None and third.ack_ids == (2, 3)
    assert schedule.unacknowledged == (2, 3)


def test_ids_beyond_what_one_fetch_holds_wait_for_the_next() -> None:
    schedule = FetchSchedule(1.0, capacity=2, first_request_id=0)
    fetch = schedule.poll(0.0)
    assert fetch is not None
    schedule.taken_in(0.0, answer(fetch, [1, 2, 3, 4, 5]))
    carried = []
    for t in (1.0, 2.0, 3.0, 4.0):
        fetch = schedule.poll(t)
        assert fetch is not None
        carried.append(fetch.ack_ids)
        schedule.taken_in(t, answer(fetch, []))
    assert carried == [(1, 2), (3, 4), (5,), ()]


def test_going_offline_sends_one_last_fetch_whatever_the_client_holds() -> None:
    for held in ([], [9]):
        schedule = FetchSchedule(1.0, capacity=4, first_request_id=0)
        fetch = schedule.poll(0.0)
        assert fetch is not None
        schedule.taken_in(0.0, answer(fetch, held))
        last = schedule.last()
        assert last.ack_ids == tuple(held) and schedule.sent == 2
        assert not schedule.pending  # its answer is not awaited


def test_a_draining_client_fetches_again_at_once_while_more_mail_waits() -> None:
    schedule = FetchSchedule(5.0, capacity=8, first_request_id=0, drain=True)
    fetch = schedule.poll(0.0)
    assert fetch is not None and schedule.pending
    schedule.taken_in(0.2, answer(fetch, [1, 2], remaining=3))
    assert schedule.pending and schedule.next_due() == 0.2
    fetch = schedule.poll(0.2)
    assert fetch is not None and fetch.ack_ids == (1, 2)
    schedule.taken_in(0.3, answer(fetch, [3, 4, 5]))
    assert not schedule.pending and schedule.next_due() == pytest.approx(5.2)
    schedule.fetch_now()
    assert schedule.poll(0.4) == Fetch(3, (3, 4, 5))


def test_a_fetch_awaiting_its_answer_sets_the_next_wakeup_to_its_retry() -> None:
    schedule = FetchSchedule(0.05, capacity=8, first_request_id=0)
    assert schedule.poll(1.0) is not None
    assert schedule.next_due() == 1.0 + FETCH_RETRY  # not 1.05: no busy wait for the answer


# ---------------------------------------------------------------------- reproducibility


def counter_bytes(seed: int) -> Callable[[int], bytes]:
    """A deterministic stand-in for crypto.random_bytes: BLAKE2b of a seed and a counter."""
    counter = itertools.count()

    def random_bytes(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.blake2b(f"{seed}/{next(counter)}".encode()).digest()
        return out[:n]
    return random_bytes


def run_seeded(net: SimNet, seed: int, byte_seed: int) -> list[object]:
    """Everything one client hands out in a short run: ids, packets, what it received, its
    counters."""
    alice = net.client("alice", seed, random_bytes=counter_bytes(byte_seed))
    bob = net.client("bob", 40)
    made: list[object] = [alice.submit(0.0, "bob", b"x" * 4000, reply_blocks=1),
                          alice.submit(0.0, "carol", b"y", anonymous=True)]
    now = 0.0
    while now < 3.0:
        now += 0.1
        out = alice.poll(now)
        made += [(o.first_hop, o.packet) for o in out]
        net.send(alice, out, now)
        net.send(bob, bob.poll(now), now)
        for message in net.fetch(bob, "bob", now):
            if message.reply_handle is not None:
                bob.reply(now, message.reply_handle, b"answer")
        made += [(m.data, m.sender) for m in net.fetch(alice, "alice", now)]
    return [*made, alice.statistics()]


def test_a_seeded_rng_and_deterministic_random_bytes_give_identical_output_twice(
        net: SimNet) -> None:
    # Every run needs a network as fresh as the first's (empty mailboxes, replay filters that
    # have not seen its packets) with the same keys: a copy of the state as it is now.
    pristine = shutil.copytree(net.state, net.state.parent / "pristine")

    def fresh() -> SimNet:
        copy = net.state.parent / f"run-{len(list(net.state.parent.glob('run-*')))}"
        return SimNet(net.topology, shutil.copytree(pristine, copy))

    first = run_seeded(fresh(), seed=41, byte_seed=1)
    assert first == run_seeded(fresh(), seed=41, byte_seed=1)
    assert (b"answer", None) in first  # the run did something: the reply came back
    stats = first[-1]
    assert isinstance(stats, dict) and stats["real_sent"] >= 4 and stats["acks_received"] >= 4
    # positive controls: other bytes alone, or another seed alone, change the output
    assert run_seeded(fresh(), seed=41, byte_seed=2) != first
    assert run_seeded(fresh(), seed=42, byte_seed=1) != first


def test_seal_takes_its_ephemeral_key_from_random_bytes_and_libsodium_opens_it() -> None:
    pk, sk = crypto.x25519_keypair()
    one = crypto.seal(pk, b"hello", counter_bytes(3))
    assert one == crypto.seal(pk, b"hello", counter_bytes(3))
    assert one != crypto.seal(pk, b"hello", counter_bytes(4))
    assert crypto.unseal(pk, sk, one) == b"hello"  # crypto_box_seal_open
    other_pk, _ = crypto.x25519_keypair()
    with pytest.raises(ValueError):
        crypto.unseal(other_pk, sk, crypto.seal(other_pk, b"hello"))  # not for this key
    assert crypto.box(pk, sk, b"m", counter_bytes(5)) == crypto.box(pk, sk, b"m", counter_bytes(5))


# ---------------------------------------------------------------------- the core's parts


def test_ack_timers_double_the_timeout_per_send_up_to_the_cap() -> None:
    timers = AckTimers(base_timeout=2.0, backoff_cap=10.0)
    assert [timers.timeout(k) for k in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    key = (b"m" * 16, 0)
    assert timers.sent(key, 0.0) == 1 and timers.next_deadline() == 2.0
    assert timers.pop_due(1.9) is None and timers.awaiting() == 1
    assert timers.pop_due(2.0) == (key, 1)
    assert timers.awaiting() == 0 and timers.next_deadline() == math.inf  # waits in the queue
    assert timers.sent(key, 3.0) == 2 and timers.next_deadline() == 7.0


def test_ack_timers_forget_acked_and_failed_fragments_and_skip_their_stale_deadlines() -> None:
    timers = AckTimers(base_timeout=1.0, backoff_cap=100.0)
    a, b, c = (b"a" * 16, 0), (b"a" * 16, 1), (b"c" * 16, 0)
    for key in (a, b, c):
        timers.sent(key, 0.0)
    timers.acked(a)
    timers.forget(b"a" * 16)
    assert timers.awaiting() == 1
    assert timers.pop_due(5.0) == (c, 1) and timers.pop_due(5.0) is None
    timers.resumed(a, 3)  # an earlier run sent it three times
    assert timers.pop_due(1e9) is None and timers.sent(a, 10.0) == 4


@dataclass
class Parts:
    """A client's sending and receiving parts, made on their own over one store."""

    store: ClientStore
    sender: Sender
    receiver: Receiver


def parts(net: SimNet, name: str, seed: int) -> Parts:
    me = load_private(net.state, name)
    store = ClientStore(":memory:")
    maker = PacketMaker(net.view, me, random.Random(seed), counter_bytes(seed))
    return Parts(store, Sender(net.view, store, maker), Receiver(net.view, me, store))


def fetch_items(net: SimNet, name: str) -> list[MailboxItem]:
    """Take every item from ``name``'s mailbox (acknowledged at once)."""
    provider = net.providers[net.topology.node(net.topology.client(name).provider).id]
    me = net.topology.client(name).id
    items = list(provider.on_fetch(0.0, me, Fetch(1, ())).items)
    provider.on_fetch(0.0, me, Fetch(2, tuple(i.item_id for i in items)))
    return items


def test_the_sender_fills_payload_events_from_its_queue_and_sends_drops_otherwise(
        net: SimNet) -> None:
    alice = parts(net, "alice", 43)
    sender = alice.sender
    sender.emit(Stream.PAYLOAD, 0.0)
    assert sender.statistics()["drops_sent"] == 1  # nothing queued
    with alice.store:
        message_id = sender.submit(0.0, "bob", b"z" * 5000, filename=None, anonymous=False,
                                   reply_blocks=0)
    assert sender.statistics()["queued"] == 4
    with alice.store:
        outs = [sender.emit(Stream.PAYLOAD, 1.0) for _ in range(5)]
        sender.emit(Stream.DROP, 1.0)
    assert all(walk(net, o)[1].recipient == bob_id(net) for o in outs[:4])
    stats = sender.statistics()
    assert stats["real_sent"] == 4 and stats["drops_sent"] == 3 and stats["in_flight"] == 4
    assert sender.progress(message_id) == SendProgress(4, 0, False)


def test_a_fragment_acked_while_queued_for_retransmission_is_not_sent_again(
        net: SimNet) -> None:
    alice = parts(net, "alice", 47)
    with alice.store:
        message_id = alice.sender.submit(0.0, "bob", b"late ack", filename=None,
                                         anonymous=False, reply_blocks=0)
        sent = alice.sender.emit(Stream.PAYLOAD, 0.0)
        net.walk(sent.first_hop, sent.packet, 0.0)
        alice.sender.retransmit(1e6)  # its ack is overdue: queued again
    assert alice.sender.statistics()["queued"] == 1
    net.advance(1e6)  # the network's keys of that time
    with alice.store:
        taken = alice.receiver.take_in(1e6, fetch_items(net, "alice"))
        for ack in taken.acks:
            alice.sender.acknowledged(ack.message_id, ack.index)
        out = alice.sender.emit(Stream.PAYLOAD, 1e6)  # skips the acked fragment
    assert walk(net, out)[1].recipient != bob_id(net)
    stats = alice.sender.statistics()
    assert stats["retransmissions"] == 0 and stats["drops_sent"] == 1 and stats["queued"] == 0
    assert alice.sender.progress(message_id) == SendProgress(1, 1, False)


def test_the_receiver_returns_acks_for_the_sender_and_counts_what_it_drops(net: SimNet) -> None:
    alice = parts(net, "alice", 44)
    with alice.store:
        alice.sender.submit(0.0, "bob", b"hi", filename=None, anonymous=False, reply_blocks=0)
        sent = alice.sender.emit(Stream.PAYLOAD, 0.0)
        net.walk(sent.first_hop, sent.packet, 0.0)
    acks = [i for i in fetch_items(net, "alice") if i.kind is ItemKind.REPLY]
    assert len(acks) == 1  # bob's provider stored the fragment and answered its ack SURB
    with alice.store:
        taken = alice.receiver.take_in(1.0, [*acks, *acks])
    assert taken.messages == [] and len(taken.acks) == 1  # the second copy's SURB was used up
    assert alice.receiver.statistics()["unknown_surb"] == 1
    assert alice.sender.statistics()["acks_received"] == 0  # the core hands acks over, not this


def test_a_client_core_reports_exactly_the_schemas_statistics_in_its_order(net: SimNet) -> None:
    stats = net.client("alice", 46).statistics()
    assert tuple(stats) == client_names(runtime=False)
    assert all(CLIENT_BY_NAME[name].part is ClientPart.CORE for name in stats)
    assert set(client_names(runtime=True)) > set(stats)  # the runtime adds its own


def test_the_client_doc_lists_every_client_statistic_as_the_schema_declares_it() -> None:
    lines = CLIENT_DOC.read_text().splitlines()
    assert CLIENT_TABLE_HEADER[0] in lines, f"docs/client.md has no table {CLIENT_TABLE_HEADER}"
    start = lines.index(CLIENT_TABLE_HEADER[0])
    assert lines[start + 1] == CLIENT_TABLE_HEADER[1]
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))
    expected = client_markdown_table().splitlines()[2:]
    assert rows == expected, (
        "docs/client.md's statistics table differs from zmix/stats_schema.py "
        "(python -m zmix.stats_schema client prints it)")


SURB_SEEDS = itertools.count(50)


def answered_surb(net: SimNet, kind: int, content: bytes) -> tuple[TakenIn, dict[str, int]]:
    """Hand out one of alice's SURBs (stored as ``kind``), answer it with ``content`` through the
    network, and return what alice's next fetch holds."""
    topo = net.topology
    me = load_private(net.state, "alice")
    # A SURB of its own each time: the same one answered twice is a replay at its first hop.
    seed = next(SURB_SEEDS)
    maker = PacketMaker(net.view, me, random.Random(seed), counter_bytes(seed))
    store = ClientStore(":memory:")
    new = maker.surb(0.0)
    with store:
        store.add_surb(new.surb_id, StoredSurb(kind, new.keys.to_bytes(), b"m" * 16, 0), 0.0)
    net.walk(*answer_surb(topo.sphinx, new.surb, content), 0.0)
    items = fetch_items(net, "alice")
    receiver = Receiver(net.view, me, store)
    with store:
        taken = receiver.take_in(0.0, items)
    return taken, receiver.statistics()


def test_the_receiver_takes_an_ack_only_if_it_carries_the_ack_payload(net: SimNet) -> None:
    taken, stats = answered_surb(net, SURB_ACK, ACK_PAYLOAD)
    assert taken.acks == [Ack(b"m" * 16, 0)] and stats["undecryptable"] == 0
    taken, stats = answered_surb(net, SURB_ACK, b"zmix-ack-v2")
    assert taken.acks == [] and stats["undecryptable"] == 1


def test_the_receiver_delivers_a_one_fragment_reply_and_refuses_a_longer_one(
        net: SimNet) -> None:
    one = encode_fragment(b"r" * 16, 0, 1, 2, b"ok")
    taken, stats = answered_surb(net, SURB_REPLY, one)
    assert [(m.sender, m.data) for m in taken.messages] == [(None, b"ok")]
    two = encode_fragment(b"r" * 16, 0, 2, 4, b"ok")
    taken, stats = answered_surb(net, SURB_REPLY, two)
    assert taken.messages == [] and stats["undecryptable"] == 1


def test_the_receiver_drops_strangers_late_duplicates_and_messages_of_the_wrong_length(
        net: SimNet) -> None:
    bob = net.client("bob", 51)
    alice_key = load_private(net.state, "alice").private_key
    alice_id = net.topology.client("alice").id
    bob_pk = load_private(net.state, "bob").public_key
    whole = first_item(b"w" * 16, 0, 1, 2, b"ok", alice_key, alice_id, bob_pk)
    stranger = first_item(b"s" * 16, 0, 1, 2, b"ok", alice_key, b"?" * 16, bob_pk)
    short = [first_item(b"b" * 16, i, 2, 8, b"abc", alice_key, alice_id, bob_pk) for i in (0, 1)]
    items = [whole, whole, stranger, short[0], short[0], short[1]]
    assert [m.data for m in bob.on_fetched(0.0, items)] == [b"ok"]
    stats = bob.statistics()
    assert stats["messages_received"] == 1  # the first copy of the whole message
    assert stats["duplicates_dropped"] == 2  # a completed message's copy, a fragment's copy
    assert stats["unknown_sender"] == 1
    assert stats["bad_reassembly"] == 1  # 6 bytes where the first fragment announced 8
