"""The provider core with real Sphinx packets and a real mailbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from simnet import SimNet

from zmix import crypto
from zmix.bench.common import make_network
from zmix.envelope import ACK_PAYLOAD, Envelope, encode_envelope
from zmix.keys import load_directory
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
from zmix.wire import Fetch, FetchAck, ItemKind

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}


@pytest.fixture
def net(tmp_path: Path) -> SimNet:
    topology, state = make_network(tmp_path, clients=CLIENTS, mailbox={"quota": 3})
    return SimNet(topology, state)


def final_for(net: SimNet, recipient: bytes, message: bytes) -> FinalDelivery:
    topo = net.topology
    keys = load_directory(net.state, topo)
    p2 = topo.node("provider-2")
    packet = create_forward_packet(topo.sphinx, [Hop(p2.id, keys["provider-2"].public_key)],
                                   recipient, message)
    result = process_packet(topo.sphinx, net.keys[p2.id], packet)
    assert isinstance(result, FinalDelivery)
    return result


def ack_surb(net: SimNet) -> tuple[bytes, object]:
    topo = net.topology
    keys = load_directory(net.state, topo)
    route = [Hop(n.id, keys[n.name].public_key) for n in (topo.layers[0][0], topo.layers[1][0],
                                                           topo.layers[2][0],
                                                           topo.node("provider-1"))]
    surb, surb_keys = create_surb(topo.sphinx, route, topo.client("alice").id, b"\x42" * 16)
    return surb.to_bytes(), surb_keys


def test_a_stored_message_is_acknowledged_through_its_surb(net: SimNet) -> None:
    topo = net.topology
    bob, provider = topo.client("bob"), net.providers[topo.node("provider-2").id]
    surb, surb_keys = ack_surb(net)
    message = encode_envelope(topo.sphinx, Envelope(surb, b"for bob"))
    [send] = provider.on_final(0.0, final_for(net, bob.id, message))
    assert provider.on_fetch(0.0, bob.id, Fetch(7)).items[0].payload == b"for bob"
    hop, packet = send.next_hop, send.packet
    while True:
        result = process_packet(topo.sphinx, net.keys[hop], packet)
        if not isinstance(result, ForwardHop):
            break
        hop, packet = result.next_hop, result.packet
    assert isinstance(result, SurbReply) and hop == topo.node("provider-1").id
    assert open_surb_reply(topo.sphinx, surb_keys, result.payload) == ACK_PAYLOAD  # type: ignore[arg-type]


def test_a_drop_packet_is_discarded_and_counted(net: SimNet) -> None:
    topo = net.topology
    p2 = topo.node("provider-2")
    provider = net.providers[p2.id]
    assert provider.on_final(0.0, final_for(net, p2.id, crypto.random_bytes(100))) == []
    assert provider.statistics()["drops_received"] == 1
    assert provider.statistics()["messages_stored"] == 0


def test_a_full_mailbox_sends_no_ack_so_the_sender_retries(net: SimNet) -> None:
    topo = net.topology
    bob, provider = topo.client("bob"), net.providers[topo.node("provider-2").id]
    for i in range(3):
        provider.on_final(0.0, final_for(net, bob.id, encode_envelope(
            topo.sphinx, Envelope(None, b"%d" % i))))
    surb, _ = ack_surb(net)
    full = encode_envelope(topo.sphinx, Envelope(surb, b"no room"))
    assert provider.on_final(0.0, final_for(net, bob.id, full)) == []
    assert provider.statistics()["refused_full"] == 1


def test_a_client_can_fetch_and_ack_only_its_own_mailbox(net: SimNet) -> None:
    topo = net.topology
    bob, provider = topo.client("bob"), net.providers[topo.node("provider-2").id]
    provider.on_final(0.0, final_for(net, bob.id, encode_envelope(topo.sphinx,
                                                                 Envelope(None, b"secret"))))
    alice = topo.client("alice").id
    assert provider.on_fetch(0.0, alice, Fetch(1)).items == ()
    [item] = provider.on_fetch(0.0, bob.id, Fetch(2)).items
    assert provider.on_fetch_ack(0.0, alice, FetchAck(3, (item.item_id,))).deleted == 0
    assert provider.statistics()["fetch_refused"] == 2
    assert provider.on_fetch_ack(0.0, bob.id, FetchAck(4, (item.item_id,))).deleted == 1


def test_a_surb_reply_for_a_client_is_stored_as_a_reply_item(net: SimNet) -> None:
    topo = net.topology
    alice = topo.client("alice")
    provider = net.providers[topo.node("provider-1").id]
    reply = SurbReply(alice.id, b"\x07" * 16, 0, bytes(topo.sphinx.payload_length), b"t")
    provider.on_surb_reply(0.0, reply)
    [item] = provider.on_fetch(0.0, alice.id, Fetch(1)).items
    assert item.kind is ItemKind.REPLY and item.surb_id == b"\x07" * 16
