"""The provider core with real Sphinx packets and a real mailbox."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
from simnet import SimNet

from zmix import crypto
from zmix.bench.common import make_network
from zmix.envelope import ACK_PAYLOAD, DatedSurb, Envelope, encode_envelope
from zmix.keys import PublicIdentity, load_directory
from zmix.mailbox import Mailbox, NewItem, Registration, StorageError
from zmix.network import Network, NetworkView
from zmix.provider import ProviderCore, Send
from zmix.sphinx import (
    FinalDelivery,
    ForwardHop,
    Hop,
    SurbKeys,
    SurbReply,
    create_forward_packet,
    create_surb,
    open_surb_reply,
    process_packet,
)
from zmix.topology import ClientSpec, entity_id
from zmix.wire import Error, Fetch, ItemKind, Register, Registered

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}
SURB_ID = b"\x42" * 16


@pytest.fixture
def net(tmp_path: Path) -> SimNet:
    topology, state = make_network(tmp_path, clients=CLIENTS,
                                   mailbox={"quota": 3, "ttl": 100.0, "fetch_slots": 2})
    return SimNet(topology, state)


def provider_of(net: SimNet, name: str) -> ProviderCore:
    return net.providers[net.topology.node(name).id]


def final_for(net: SimNet, recipient: bytes, message: bytes) -> FinalDelivery:
    """Return what provider-2 gets from a packet that was sent along a full forward route."""
    topo = net.topology
    keys = load_directory(net.state, topo)
    route = [Hop(n.id, keys[n.name].public_key, 0) for n in (
        topo.node("provider-1"), topo.layers[0][1], topo.layers[1][0], topo.layers[2][1],
        topo.node("provider-2"))]
    hop, packet = route[0].node_id, create_forward_packet(topo.sphinx, route, recipient, message)
    while True:
        result = process_packet(topo.sphinx, net.keys[hop], packet)
        if not isinstance(result, ForwardHop):
            break
        hop, packet = result.next_hop, result.packet
    assert isinstance(result, FinalDelivery) and hop == topo.node("provider-2").id
    return result


def ack_surb(net: SimNet) -> tuple[bytes, SurbKeys]:
    """Return an ack SURB for alice (route: the three layers, then her provider) and its keys."""
    topo = net.topology
    keys = load_directory(net.state, topo)
    route = [Hop(n.id, keys[n.name].public_key, 0) for n in (
        topo.layers[0][0], topo.layers[1][0], topo.layers[2][0], topo.node("provider-1"))]
    surb, surb_keys = create_surb(topo.sphinx, route, topo.client("alice").id, SURB_ID)
    return surb.to_bytes(), surb_keys


def message(net: SimNet, body: bytes, surb: bytes | None = None, epoch: int = 1) -> bytes:
    """An envelope for ``body`` with the ack SURB ``surb`` dated ``epoch`` (1: a SURB made in
    epoch 0, where these tests' clock is)."""
    dated = None if surb is None else DatedSurb(epoch, surb)
    return encode_envelope(net.topology.sphinx, Envelope(dated, body))


def follow(net: SimNet, hop: bytes, packet: bytes) -> tuple[bytes, FinalDelivery | SurbReply]:
    while True:
        result = process_packet(net.topology.sphinx, net.keys[hop], packet)
        if not isinstance(result, ForwardHop):
            return hop, result
        hop, packet = result.next_hop, result.packet


def deliver(provider: ProviderCore, now: float, result: FinalDelivery | SurbReply) -> list[Send]:
    """Hand one delivery to ``provider`` and commit it alone; return the acks to send."""
    if isinstance(result, FinalDelivery):
        store = provider.on_final(now, result)
    else:
        store = provider.on_surb_reply(now, result)
    sends = provider.commit(now, [] if store is None else [store])
    return [send for send in sends if send is not None]


def test_a_stored_message_is_acknowledged_through_its_surb(net: SimNet) -> None:
    topo = net.topology
    alice, bob = topo.client("alice"), topo.client("bob")
    surb, surb_keys = ack_surb(net)
    [send] = deliver(provider_of(net, "provider-2"), 0.0, final_for(
        net, bob.id, message(net, b"for bob", surb)))
    assert send.delay == 0.0 and send.next_hop == topo.layers[0][0].id
    [item] = provider_of(net, "provider-2").on_fetch(0.0, bob.id, Fetch(7)).items
    assert item.kind is ItemKind.MESSAGE and item.payload == b"for bob"
    hop, result = follow(net, send.next_hop, send.packet)
    assert isinstance(result, SurbReply) and hop == topo.node("provider-1").id
    assert result.recipient == alice.id and result.surb_id == SURB_ID
    assert open_surb_reply(topo.sphinx, surb_keys, result.payload) == ACK_PAYLOAD
    assert deliver(provider_of(net, "provider-1"), 0.0, result) == []
    [ack] = provider_of(net, "provider-1").on_fetch(0.0, alice.id, Fetch(8)).items
    assert ack.kind is ItemKind.REPLY and ack.surb_id == SURB_ID
    assert open_surb_reply(topo.sphinx, surb_keys, ack.payload) == ACK_PAYLOAD


def test_a_message_without_an_ack_surb_is_stored_and_answered_by_nothing(net: SimNet) -> None:
    bob = net.topology.client("bob")
    provider = provider_of(net, "provider-2")
    assert deliver(provider, 0.0, final_for(net, bob.id, message(net, b"quiet"))) == []
    assert provider.statistics()["messages_stored"] == 1
    assert provider.statistics()["acks_sent"] == 0


def test_a_drop_packet_is_discarded_and_counted(net: SimNet) -> None:
    p2 = net.topology.node("provider-2")
    provider = provider_of(net, "provider-2")
    assert deliver(provider, 0.0, final_for(net, p2.id, crypto.random_bytes(100))) == []
    assert provider.statistics()["drops_received"] == 1
    assert provider.statistics()["messages_stored"] == 0


def test_a_delivery_for_someone_else_is_an_unexpected_delivery(net: SimNet) -> None:
    provider = provider_of(net, "provider-2")
    alice = net.topology.client("alice").id  # provider-1's client, not provider-2's
    surb, _ = ack_surb(net)
    assert deliver(provider, 0.0, final_for(net, alice, message(net, b"x", surb))) == []
    assert deliver(provider, 0.0, SurbReply(alice, SURB_ID, 0, b"p", b"t")) == []
    stats = provider.statistics()
    assert stats["unexpected_delivery"] == 2 and stats["acks_sent"] == 0


def test_a_malformed_envelope_is_counted_and_neither_stored_nor_acknowledged(
        net: SimNet) -> None:
    bob = net.topology.client("bob")
    provider = provider_of(net, "provider-2")
    assert deliver(provider, 0.0, final_for(net, bob.id, b"\x01\x07garbage")) == []
    assert provider.statistics()["bad_envelope"] == 1
    assert provider.on_fetch(0.0, bob.id, Fetch(1)).items == ()


def test_an_unusable_ack_surb_keeps_the_message_and_is_counted(net: SimNet) -> None:
    bob = net.topology.client("bob")
    provider = provider_of(net, "provider-2")
    bogus = bytes(net.topology.sphinx.surb_length)
    assert deliver(provider, 0.0, final_for(net, bob.id, message(net, b"kept", bogus))) == []
    assert provider.statistics()["bad_ack_surb"] == 1
    assert provider.on_fetch(0.0, bob.id, Fetch(1)).items[0].payload == b"kept"


def test_an_expired_ack_surb_is_dropped_and_counted_and_the_message_kept(net: SimNet) -> None:
    bob = net.topology.client("bob")
    provider = provider_of(net, "provider-2")
    epochs = net.topology.epoch
    surb, _ = ack_surb(net)
    expiry = epochs.surb_expiry(0.0)  # made in epoch 0: its keys (epoch 1) go at end(1) + grace
    assert expiry == 2 * epochs.length + epochs.grace
    late = final_for(net, bob.id, message(net, b"late", surb, epoch=1))
    assert deliver(provider, expiry, late) == []
    assert provider.statistics()["ack_surb_expired"] == 1
    assert provider.statistics()["messages_stored"] == 1 and provider.statistics()["acks_sent"] == 0
    # the control: the same SURB a moment before is answered
    surb, _ = ack_surb(net)
    in_time = final_for(net, bob.id, message(net, b"in time", surb, epoch=1))
    assert len(deliver(provider, expiry - 0.001, in_time)) == 1
    # one dated two epochs ahead could not have been made honestly: not answered either
    surb, _ = ack_surb(net)
    ahead = final_for(net, bob.id, message(net, b"ahead", surb, epoch=2))
    assert deliver(provider, 0.0, ahead) == []
    stats = provider.statistics()
    assert stats["bad_ack_surb"] == 1 and stats["acks_sent"] == 1 and stats["ack_surb_expired"] == 1


def test_a_full_mailbox_sends_no_ack_so_the_sender_retries(net: SimNet) -> None:
    bob = net.topology.client("bob")
    provider = provider_of(net, "provider-2")
    for i in range(3):
        deliver(provider, 0.0, final_for(net, bob.id, message(net, b"%d" % i)))
    surb, _ = ack_surb(net)
    assert deliver(provider, 0.0, final_for(net, bob.id, message(net, b"no room", surb))) == []
    assert provider.statistics()["refused_full"] == 1
    assert provider.statistics()["acks_sent"] == 0


class FailingMailbox(Mailbox):
    """A mailbox whose disk is full."""

    def store_many(self, items: Sequence[NewItem], now: float) -> list[int | None]:
        raise StorageError("disk full")


def test_a_message_that_could_not_be_committed_is_not_acknowledged(
        net: SimNet, tmp_path: Path) -> None:
    topo = net.topology
    bob = topo.client("bob")
    box = FailingMailbox(tmp_path / "failing.sqlite", quota=3, ttl=100.0)
    provider = ProviderCore(net.node_view, "provider-2", box)
    surb, _ = ack_surb(net)
    assert deliver(provider, 0.0, final_for(net, bob.id, message(net, b"lost", surb))) == []
    assert provider.statistics()["store_failed"] == 1
    assert provider.statistics()["acks_sent"] == 0


def test_a_client_can_fetch_and_ack_only_its_own_mailbox(net: SimNet) -> None:
    topo = net.topology
    bob, provider = topo.client("bob"), provider_of(net, "provider-2")
    deliver(provider, 0.0, final_for(net, bob.id, message(net, b"secret")))
    alice = topo.client("alice").id
    assert provider.on_fetch(0.0, alice, Fetch(1)).items == ()
    [item] = provider.on_fetch(0.0, bob.id, Fetch(2)).items
    assert provider.on_fetch(0.0, alice, Fetch(3, (item.item_id,))).items == ()
    assert provider.statistics()["fetch_refused"] == 2
    assert provider.on_fetch(0.0, bob.id, Fetch(4)).items == (item,)  # alice deleted nothing
    assert provider.on_fetch(0.0, bob.id, Fetch(5, (item.item_id,))).items == ()


def test_a_fetch_answers_at_most_fetch_slots_items_and_says_how_many_remain(net: SimNet) -> None:
    bob, provider = net.topology.client("bob"), provider_of(net, "provider-2")
    for body in (b"1", b"2", b"3"):
        deliver(provider, 0.0, final_for(net, bob.id, message(net, body)))
    reply = provider.on_fetch(0.0, bob.id, Fetch(9))
    assert reply.request_id == 9 and [i.payload for i in reply.items] == [b"1", b"2"]
    assert reply.remaining == 1
    assert provider.on_fetch(0.0, bob.id, Fetch(10)).items == reply.items  # not yet acked
    # The next FETCH acknowledges them: deleted before its answer is made.
    after = provider.on_fetch(0.0, bob.id, Fetch(11, tuple(i.item_id for i in reply.items)))
    assert after.request_id == 11 and [i.payload for i in after.items] == [b"3"]
    assert after.remaining == 0
    # A repeated acknowledgement deletes nothing more; the unacknowledged item stays.
    again = provider.on_fetch(0.0, bob.id, Fetch(12, tuple(i.item_id for i in reply.items)))
    assert again.items == after.items


class FailingAckMailbox(Mailbox):
    """A mailbox that cannot delete."""

    def ack(self, client: bytes, item_ids: Sequence[int]) -> int:
        raise StorageError("disk full")


def test_an_acknowledgement_that_could_not_be_committed_leaves_the_items_to_fetch_again(
        net: SimNet, tmp_path: Path) -> None:
    topo = net.topology
    bob = topo.client("bob")
    box = FailingAckMailbox(tmp_path / "failing.sqlite", quota=3, ttl=100.0)
    provider = ProviderCore(net.node_view, "provider-2", box)
    deliver(provider, 0.0, final_for(net, bob.id, message(net, b"kept")))
    [item] = provider.on_fetch(0.0, bob.id, Fetch(1)).items
    assert provider.on_fetch(0.0, bob.id, Fetch(2, (item.item_id,))).items == (item,)
    assert provider.statistics()["store_failed"] == 1


def test_a_fetch_deletes_expired_items_first(net: SimNet) -> None:
    bob, provider = net.topology.client("bob"), provider_of(net, "provider-2")
    deliver(provider, 0.0, final_for(net, bob.id, message(net, b"old")))
    deliver(provider, 60.0, final_for(net, bob.id, message(net, b"new")))
    reply = provider.on_fetch(130.0, bob.id, Fetch(1))
    assert [i.payload for i in reply.items] == [b"new"] and reply.remaining == 0
    # Deleted, not only hidden: even a fetch with an earlier clock no longer sees it.
    assert [i.payload for i in provider.on_fetch(0.0, bob.id, Fetch(2)).items] == [b"new"]


def test_a_surb_reply_for_a_client_is_stored_as_a_reply_item(net: SimNet) -> None:
    alice = net.topology.client("alice")
    provider = provider_of(net, "provider-1")
    reply = SurbReply(alice.id, b"\x07" * 16, 0, bytes(net.topology.sphinx.payload_length), b"t")
    deliver(provider, 0.0, reply)
    [item] = provider.on_fetch(0.0, alice.id, Fetch(1)).items
    assert item.kind is ItemKind.REPLY and item.surb_id == b"\x07" * 16
    assert provider.statistics()["replies_stored"] == 1


def _open_provider(net: SimNet, path: Path, **policy: object) -> ProviderCore:
    topo = net.topology
    params = dataclasses.replace(topo.mailbox, **{"open_registration": True, **policy})
    keys = dict(net.view.current.keys)
    keys["alice"] = dataclasses.replace(keys["alice"], curve_public=ALICE_LINK)
    view = NetworkView(Network(1, dataclasses.replace(topo, mailbox=params), keys))
    return ProviderCore(view, "provider-2", Mailbox(path, quota=3, ttl=100.0))


CAROL_LINK, CAROL_KEY = b"\x0c" * 32, b"\x0d" * 32
ALICE_LINK = b"\x0a" * 32  # stands for the link key of a member of the topology


def test_a_registered_client_gets_mail_and_stays_registered_after_a_restart(
        net: SimNet, tmp_path: Path) -> None:
    path = tmp_path / "p2.sqlite"
    provider = _open_provider(net, path)
    carol = entity_id(net.topology.network, "carol")
    assert provider.on_fetch(0.0, carol, Fetch(1)).items == ()
    answer, admitted = provider.on_register(0.0, CAROL_LINK, Register(CAROL_LINK, CAROL_KEY,
                                                                      "carol"))
    assert answer == Registered("carol") and admitted is not None and admitted.id == carol
    deliver(provider, 0.0, final_for(net, carol, message(net, b"welcome")))
    again = _open_provider(net, path)
    assert [i.payload for i in again.on_fetch(0.0, carol, Fetch(2)).items] == [b"welcome"]
    assert again.registrations() == [Registration(carol, "carol", CAROL_LINK, CAROL_KEY)]
    # the answer was lost: the same request is answered the same way, nothing is added
    assert again.on_register(1.0, CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "carol"))[0] == (
        Registered("carol"))
    assert len(again.registrations()) == 1 and again.statistics()["registered"] == 0


@pytest.mark.parametrize(("link", "frame", "code"), [
    (CAROL_LINK, Register(b"\x0e" * 32, CAROL_KEY, "carol"), "bad_request"),  # not its link key
    (CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "carol\n"), "bad_request"),
    (CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, ""), "bad_request"),
    (CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "alice"), "name_taken"),  # a topology client
    (CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "mix-a1"), "name_taken"),  # a node
    (b"\x0e" * 32, Register(b"\x0e" * 32, CAROL_KEY, "dave"), "name_taken"),  # dave is taken
    (b"\x0f" * 32, Register(b"\x0f" * 32, CAROL_KEY, "dave"), "name_taken"),
    (b"\x10" * 32, Register(b"\x10" * 32, b"\x11" * 32, "dave"), "name_taken"),
    (CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "erin"), "key_taken"),  # carol's key, new name
    (ALICE_LINK, Register(ALICE_LINK, CAROL_KEY, "erin"), "key_taken"),  # a member's key
])
def test_registration_refusals_are_answered_with_a_code_and_counted(
        net: SimNet, tmp_path: Path, link: bytes, frame: Register, code: str) -> None:
    provider = _open_provider(net, tmp_path / "p2.sqlite")
    provider.on_register(0.0, CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "carol"))
    provider.on_register(0.0, b"\x0e" * 32, Register(b"\x0e" * 32, b"\x12" * 32, "dave"))
    answer, admitted = provider.on_register(0.0, link, frame)
    assert isinstance(answer, Error) and answer.code == code and admitted is None
    assert provider.statistics()["registration_refused"] == 1
    assert len(provider.registrations()) == 2


def test_a_closed_or_full_provider_admits_nobody(net: SimNet, tmp_path: Path) -> None:
    closed = _open_provider(net, tmp_path / "a.sqlite", open_registration=False)
    assert closed.on_register(0.0, CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "carol"))[0] == (
        Error("closed", "this provider does not admit new clients"))
    full = _open_provider(net, tmp_path / "b.sqlite", registration_limit=1)
    assert isinstance(full.on_register(0.0, CAROL_LINK, Register(CAROL_LINK, CAROL_KEY,
                                                                 "carol"))[0], Registered)
    answer, _ = full.on_register(0.0, b"\x0e" * 32, Register(b"\x0e" * 32, CAROL_KEY, "dave"))
    assert isinstance(answer, Error) and answer.code == "full"
    assert [r.name for r in full.registrations()] == ["carol"]


def test_a_full_provider_tells_a_stranger_nothing_about_its_names(net: SimNet,
                                                                  tmp_path: Path) -> None:
    provider = _open_provider(net, tmp_path / "p2.sqlite", registration_limit=1)
    provider.on_register(0.0, CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "carol"))
    other = b"\x0e" * 32
    for name in ("carol", "nobody"):  # a taken name and a free one get the same answer
        answer, _ = provider.on_register(0.0, other, Register(other, b"\x12" * 32, name))
        assert isinstance(answer, Error) and answer.code == "full"
    assert provider.on_register(1.0, CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "carol"))[0] == (
        Registered("carol"))  # carol herself is still answered


def test_a_registration_whose_name_the_topology_took_since_is_void(net: SimNet,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "p2.sqlite"
    provider = _open_provider(net, path)
    provider.on_register(0.0, CAROL_LINK, Register(CAROL_LINK, CAROL_KEY, "carol"))
    carol = entity_id(net.topology.network, "carol")
    deliver(provider, 0.0, final_for(net, carol, message(net, b"for the registered carol")))
    # The operator adds a client "carol" to the topology (at another provider): the old
    # registration's key must not share the new member's id.
    topo = net.topology
    added = dataclasses.replace(topo, clients=(*topo.clients,
                                               ClientSpec("carol", carol, "provider-1")),
                                mailbox=dataclasses.replace(topo.mailbox, open_registration=True))
    keys = {**net.view.current.keys, "carol": PublicIdentity("carol", carol, b"\x0e" * 32,
                                                             b"\x0f" * 32)}
    after = ProviderCore(NetworkView(Network(1, added, keys)), "provider-2",
                         Mailbox(path, quota=3, ttl=100.0))
    assert after.registrations() == [] and [r.name for r in after.shadowed] == ["carol"]
    assert not after.serves(carol)
    assert after.on_fetch(0.0, carol, Fetch(1)).items == ()


@pytest.mark.parametrize("failing", ["register", "registration_of"])  # a write, a read
def test_a_registration_the_mailbox_cannot_handle_is_answered_unavailable(
        net: SimNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    provider = _open_provider(net, tmp_path / "p2.sqlite")

    def fail(*_: object) -> None:
        raise StorageError("disk I/O error")

    monkeypatch.setattr(Mailbox, failing, fail)
    answer, admitted = provider.on_register(0.0, CAROL_LINK, Register(CAROL_LINK, CAROL_KEY,
                                                                      "carol"))
    assert answer == Error("unavailable", "try again later") and admitted is None
    assert provider.statistics()["store_failed"] == 1
    carol = entity_id(net.topology.network, "carol")
    assert provider.on_fetch(0.0, carol, Fetch(1)).items == ()  # not admitted
    assert provider.statistics()["fetch_refused"] == 1
