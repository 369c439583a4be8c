"""The Loopix client core over the in-memory network: streams, fragments, acks, retries."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from simnet import SimNet

from zmix.bench.common import make_network
from zmix.clientstore import ClientStore
from zmix.errors import LocalMisuse
from zmix.sphinx import ForwardHop, process_packet

CLIENTS = {"alice": "provider-1", "bob": "provider-2", "carol": "provider-1"}


def make_net(directory: Path, **loopix: float) -> SimNet:
    rates = {"payload_rate": 20.0, "loop_rate": 2.0, "drop_rate": 2.0, "mean_delay": 0.01,
             "fetch_interval": 0.1, **loopix}
    topology, state = make_network(directory, clients=CLIENTS, loopix=rates)
    return SimNet(topology, state)


@pytest.fixture
def net(tmp_path: Path) -> SimNet:
    return make_net(tmp_path)


def test_the_streams_are_poisson_at_their_configured_rates(tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=10.0, loop_rate=5.0, drop_rate=3.0)
    alice = net.client("alice", seed=1)
    count = sum(len(alice.poll(t * 0.5)) for t in range(1, 201))  # 100 s on a fake clock
    stats = alice.statistics()
    assert stats["loops_sent"] == pytest.approx(500, rel=0.2)
    assert stats["drops_sent"] == pytest.approx(100 * 10 + 300, rel=0.12)
    assert count == stats["drops_sent"] + stats["loops_sent"]


def test_every_packet_has_the_network_size_and_enters_at_the_own_provider(net: SimNet) -> None:
    alice = net.client("alice", seed=2)
    alice.submit(0.0, "bob", b"hi")
    out = alice.poll(3.0)
    provider = net.topology.node("provider-1").id
    assert out and all(o.first_hop == provider for o in out)
    assert {len(o.packet) for o in out} == {net.topology.sphinx.packet_length}
    layers = [{n.id for n in layer} for layer in net.topology.layers]
    for o in out[:10]:
        result = process_packet(net.topology.sphinx, net.keys[provider], o.packet)
        assert isinstance(result, ForwardHop) and result.next_hop in layers[0]


def test_a_message_arrives_once_with_its_sender(net: SimNet) -> None:
    alice, bob = net.client("alice", 3), net.client("bob", 4)
    message_id = alice.submit(0.0, "bob", b"hello bob")
    got = net.run({"alice": alice, "bob": bob}, 0.0, 2.0)
    assert [(name, m.sender, m.data) for name, m in got] == [("bob", "alice", b"hello bob")]
    progress = alice.progress(message_id)
    assert progress.acked == progress.fragments == 1
    assert alice.statistics()["loops_returned"] > 0


def test_a_large_message_is_split_and_reassembled_in_any_order(net: SimNet) -> None:
    alice, bob = net.client("alice", 5), net.client("bob", 6)
    data = os.urandom(3 * 1024 * 1024)
    message_id = alice.submit(0.0, "bob", data, filename="big.bin")
    out = [o for t in range(1, 301) for o in alice.poll(t * 0.5)]  # 150 s at lambda_P = 20
    fragments = alice.progress(message_id).fragments
    # No acks came back during those 150 s, so some fragments were sent more than once.
    assert fragments > 1000 and alice.statistics()["real_sent"] > fragments
    random.Random(7).shuffle(out)
    net.send(alice, out + out[:50], 0.0)  # shuffled, with duplicates
    got = net.fetch(bob, "bob", 0.0)
    assert [(m.data == data, m.filename) for m in got] == [(True, "big.bin")]
    assert bob.statistics()["duplicates_dropped"] >= 1


def test_an_anonymous_message_can_be_answered_through_its_reply_block(net: SimNet) -> None:
    alice, bob = net.client("alice", 8), net.client("bob", 9)
    alice.submit(0.0, "bob", b"guess who", anonymous=True, reply_blocks=1)
    [(_, message)] = net.run({"alice": alice, "bob": bob}, 0.0, 2.0)
    assert message.sender is None and message.reply_handle is not None
    bob.reply(2.0, message.reply_handle, b"no idea")
    got = net.run({"alice": alice, "bob": bob}, 2.0, 4.0)
    assert [(n, m.sender, m.data) for n, m in got] == [("alice", None, b"no idea")]
    with pytest.raises(LocalMisuse):
        bob.reply(4.0, message.reply_handle, b"the block is used up")


def test_a_lost_fragment_is_sent_again_and_delivered_once(net: SimNet) -> None:
    alice, bob = net.client("alice", 10), net.client("bob", 11)
    message_id = alice.submit(0.0, "bob", b"persist")
    net.lost = {n.id for n in net.topology.layers[1]}  # the whole middle layer is down
    assert net.run({"alice": alice, "bob": bob}, 0.0, 1.0) == []
    net.lost = set()
    got = net.run({"alice": alice, "bob": bob}, 1.0, 30.0)
    assert [m.data for _, m in got] == [b"persist"]
    assert alice.statistics()["retransmissions"] >= 1
    assert alice.progress(message_id).acked == 1


def test_a_message_fails_when_every_retry_is_lost(tmp_path: Path) -> None:
    net = make_net(tmp_path, payload_rate=0.5, loop_rate=0.0, drop_rate=0.0)
    alice = net.client("alice", 12)
    message_id = alice.submit(0.0, "bob", b"doomed")
    net.lost = {n.id for n in net.topology.layers[0]}
    net.run({"alice": alice}, 0.0, 2000.0, step=1.0)
    assert alice.progress(message_id).failed


def test_a_restarted_client_resumes_unacknowledged_fragments(net: SimNet,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "alice.sqlite"
    alice = net.client("alice", 13, ClientStore(path))
    message_id = alice.submit(0.0, "bob", b"survives a restart")
    del alice  # crashed before anything was sent
    alice = net.client("alice", 14, ClientStore(path))
    bob = net.client("bob", 15)
    got = net.run({"alice": alice, "bob": bob}, 0.0, 3.0)
    assert [m.data for _, m in got] == [b"survives a restart"]
    assert alice.progress(message_id).acked == 1


def test_unknown_recipients_and_oversized_replies_are_local_misuse(net: SimNet) -> None:
    alice = net.client("alice", 16)
    with pytest.raises(LocalMisuse):
        alice.submit(0.0, "mallory", b"x")
    with pytest.raises(LocalMisuse):
        alice.reply(0.0, b"\x00" * 16, bytes(net.topology.sphinx.max_reply_length))
