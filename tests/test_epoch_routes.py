"""Routes and reply blocks across key epochs, on SimNet's virtual clock with 4-second epochs.

Every node holds one Sphinx key per epoch and erases it one grace second after its epoch ends
(tests/simnet.py follows :class:`zmix.epochs.EpochParams` as a node process does); clients build
each hop with the key of the epoch it will be processed in, and SURBs with the next epoch's keys.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from simnet import SimNet

from zmix import crypto
from zmix.bench.common import make_network
from zmix.client import PacketMaker
from zmix.epochs import EpochParams
from zmix.errors import LocalMisuse
from zmix.keys import load_private

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}
SHORT = EpochParams(length=4.0, grace=1.0)  # epoch e: [4e, 4e + 4); key e erased at 4e + 5


def short_net(directory: Path, **loopix: float) -> SimNet:
    """Three layers of two mixnodes, two providers, alice and bob; 4 s epochs, 1 s grace."""
    rates = {"payload_rate": 5.0, "loop_rate": 1.0, "drop_rate": 1.0, "mean_delay": 0.2,
             "fetch_interval": 0.1, **loopix}
    topology, state = make_network(directory, clients=CLIENTS, loopix=rates)
    return SimNet(dataclasses.replace(topology, epoch=SHORT), state)


def test_a_message_sent_across_two_epoch_boundaries_arrives_once_with_every_ack(
        tmp_path: Path) -> None:
    net = short_net(tmp_path)
    alice, bob = net.client("alice", 1), net.client("bob", 2)
    fragments = 45  # at 5 real packets a second: from epoch 0 into epoch 2 and beyond
    data = crypto.random_bytes(alice.fragment_capacity() * fragments - 2000)
    message_id = alice.submit(0.0, "bob", data)
    got = net.run({"alice": alice, "bob": bob}, 0.0, 14.0, settle=False)
    assert [(name, m.data) for name, m in got] == [("bob", data)]  # once, whole
    progress = alice.progress(message_id)
    assert progress.fragments == progress.acked == alice.statistics()["acks_received"] >= 40
    assert not progress.failed and alice.statistics()["messages_failed"] == 0
    # Packets were opened with the keys of at least three epochs, and none failed at a MAC.
    opened = {e for node in net.nodes.values() for e in node.opened}
    assert {0, 1, 2, 3} <= opened
    assert all(net.statistics(n.name)["dropped_bad_mac"] == 0 for n in net.topology.nodes())
    # The keys of epochs 0 to 2 are gone from every node (erased at 5, 9 and 13 s).
    assert all(min(node.keys) == 3 for node in net.nodes.values())


def test_a_reply_block_used_after_its_expiry_is_dropped_by_its_holder_with_a_clear_error(
        tmp_path: Path) -> None:
    net = short_net(tmp_path)
    alice, bob = net.client("alice", 3), net.client("bob", 4)
    for _ in range(2):
        alice.submit(0.0, "bob", b"answer me", reply_blocks=1)  # blocks of epoch 1: until 9 s
    got = net.run({"alice": alice, "bob": bob}, 0.0, 3.0, settle=False)
    handles = [m.reply_handle for _, m in got]
    assert len(handles) == 2 and None not in handles
    # The control: one block used in time; its reply comes back to alice.
    bob.reply(7.0, handles[0], b"in time")  # type: ignore[arg-type]
    back = net.run({"alice": alice, "bob": bob}, 7.0, 8.9, settle=False)
    assert [(name, m.data) for name, m in back] == [("alice", b"in time")]
    # The other one at 9 s: its keys are erased; bob is told, nothing is sent.
    with pytest.raises(LocalMisuse, match=r"reply blocks of that message expired .*unix time "
                                          r"9, the end of key epoch 1 plus the 1 s grace"):
        bob.reply(9.0, handles[1], b"too late")  # type: ignore[arg-type]
    assert bob.statistics()["reply_blocks_expired"] == 1
    assert bob.statistics()["replies_sent"] == 1


def test_a_queued_reply_whose_block_expires_before_it_leaves_fails_and_is_not_sent(
        tmp_path: Path) -> None:
    net = short_net(tmp_path, payload_rate=1.0)
    alice, bob = net.client("alice", 5), net.client("bob", 6)
    alice.submit(0.0, "bob", b"answer me", reply_blocks=1)
    [(_, message)] = net.run({"alice": alice, "bob": bob}, 0.0, 3.0, settle=False)
    reply_id = bob.reply(8.99, message.reply_handle, b"queued")  # type: ignore[arg-type]
    net.at(20.0)
    out = bob.poll(20.0)  # the payload stream's next turn: after the block's 9 s
    relays = [o for o in out if o.first_hop != net.topology.node("provider-2").id]
    assert relays == []  # the reply would have gone to a first-layer mixnode
    assert bob.progress(reply_id).failed and bob.statistics()["reply_blocks_expired"] == 1
    assert bob.statistics()["replies_sent"] == 0


def test_a_packet_built_with_the_keys_of_an_erased_epoch_is_dropped_at_its_mac(
        tmp_path: Path) -> None:
    net = short_net(tmp_path, mean_delay=0.001)
    maker = PacketMaker(net.view, load_private(net.state, "alice"), random.Random(7),
                        crypto.random_bytes)
    provider = net.topology.node("provider-1")
    in_grace = maker.loop(0.0).out  # every hop with epoch 0's keys
    too_late = maker.loop(0.0).out
    # The control: in the grace after epoch 0 (4 s to 5 s) its key is still accepted.
    net.walk(in_grace.first_hop, in_grace.packet, 4.5)
    assert net.statistics("provider-1")["dropped_bad_mac"] == 0
    assert net.nodes[provider.id].opened[0] >= 1
    net.advance(5.0)  # end(0) + grace: key 0 is erased
    assert 0 not in net.nodes[provider.id].keys
    net.walk(too_late.first_hop, too_late.packet, 5.0)
    assert net.statistics("provider-1")["dropped_bad_mac"] == 1
