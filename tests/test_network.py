"""The network's description (zmix/network.py): a versioned Network, the NetworkView every core
and runtime consults, and a replaced network taking effect in each of them."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import pytest
from documents import document_for
from simnet import SimNet

from zmix import crypto
from zmix.bench.common import free_ports, make_network
from zmix.client import PacketMaker
from zmix.client.core import ClientCore
from zmix.clientstore import ClientStore
from zmix.contacts import Contact
from zmix.envelope import Envelope, encode_envelope
from zmix.errors import LocalMisuse
from zmix.keys import PublicIdentity, create_private, load_directory, load_private
from zmix.mailbox import Mailbox
from zmix.mixnode import NodeCore
from zmix.network import Network, NetworkView, NoKeyForEpoch
from zmix.provider import ProviderCore
from zmix.sphinx import FinalDelivery, ForwardHop, answer_surb, process_packet
from zmix.topology import ClientSpec, NodeSpec, Role, entity_id
from zmix.wire import Fetch

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}


@pytest.fixture
def net(tmp_path: Path) -> SimNet:
    topology, state = make_network(tmp_path, clients=CLIENTS,
                                   loopix={"mean_delay": 0.001, "mix_loop_rate": 1.0,
                                           "payload_rate": 20.0, "loop_rate": 2.0,
                                           "drop_rate": 2.0, "fetch_interval": 0.1})
    return SimNet(topology, state)


def with_node(network: Network, name: str, layer: int) -> tuple[Network, bytes]:
    """Return the next version of ``network`` with a new mixnode ``name`` in ``layer``, and that
    node's Sphinx private key."""
    topo = network.topology
    node = NodeSpec(name, entity_id(topo.network, name), Role.MIXNODE, layer, "127.0.0.1",
                    free_ports(1)[0], 1, None)
    layers = tuple((*nodes, node) if i == layer else nodes for i, nodes in enumerate(topo.layers))
    public, private = crypto.x25519_keypair()
    curve, _ = crypto.x25519_keypair()
    keys = {**network.keys, name: PublicIdentity(name, node.id, public, curve)}
    # its one Sphinx key stands for every epoch the other nodes have keys for
    epochs = {e for by_epoch in network.epoch_keys.values() for e in by_epoch}
    epoch_keys = {**network.epoch_keys, name: dict.fromkeys(epochs, public)}
    return Network(network.version + 1, dataclasses.replace(topo, layers=layers), keys,
                   epoch_keys), private


def without_node(network: Network, name: str) -> Network:
    """Return the next version of ``network`` without mixnode ``name``."""
    topo = network.topology
    layers = tuple(tuple(n for n in nodes if n.name != name) for nodes in topo.layers)
    keys = {k: v for k, v in network.keys.items() if k != name}
    epoch_keys = {k: v for k, v in network.epoch_keys.items() if k != name}
    return Network(network.version + 1, dataclasses.replace(topo, layers=layers), keys,
                   epoch_keys)


def with_client(network: Network, identity: PublicIdentity, provider: str) -> Network:
    """Return the next version of ``network`` with client ``identity`` at ``provider``."""
    topo = network.topology
    clients = (*topo.clients, ClientSpec(identity.name, identity.id, provider))
    return Network(network.version + 1, dataclasses.replace(topo, clients=clients),
                   {**network.keys, identity.name: identity}, network.epoch_keys)


def visited(net: SimNet, extra: dict[bytes, bytes], first_hop: bytes, packet: bytes) -> list[bytes]:
    """Return the ids of the nodes a packet visits, peeling it with the keys the nodes accept at
    the network's clock (``extra``: the private keys of nodes the network has no centre for)."""

    def peel(hop: bytes, packet: bytes) -> object:
        if hop in extra:
            return process_packet(net.topology.sphinx, extra[hop], packet)
        return net.nodes[hop].process(packet)

    hops, hop = [first_hop], first_hop
    while isinstance(result := peel(hop, packet), ForwardHop):
        hop, packet = result.next_hop, result.packet
        hops.append(hop)
    return hops


# ---------------------------------------------------------------------------- Network, NetworkView


def test_a_network_answers_the_lookups_the_cores_need(net: SimNet) -> None:
    network, topo = net.view.current, net.topology
    keys = load_directory(net.state, topo)
    mix = topo.node("mix-b1")
    assert network.version == 1 and network.network == topo.network
    assert network.node("mix-b1") == mix and network.node_by_id(mix.id) == mix
    assert network.node_by_id(b"\x00" * 16) is None
    assert network.node_ids == {n.id for n in topo.nodes()}
    assert network.layers == topo.layers and network.providers == topo.providers
    assert network.clients_of("provider-1") == {topo.client("alice").id}
    assert network.clients_of("mix-a1") == frozenset()
    assert network.client_name(topo.client("bob").id) == "bob" and network.is_client("bob")
    assert not network.is_client("mix-a1") and network.is_member("mix-a1")
    held = net.nodes[mix.id].publics()
    assert sorted(held) == [0, 1, 2]  # the current epoch and two ahead (EpochParams.ahead)
    assert all(network.node_key("mix-b1", e) == held[e] for e in held)
    with pytest.raises(NoKeyForEpoch, match="'mix-b1' has no Sphinx key for epoch 3"):
        network.node_key("mix-b1", 3)
    assert network.client_key("alice") == keys["alice"].public_key  # its end-to-end key
    with pytest.raises(KeyError):
        network.client_key("mix-b1")  # a node's long-term key is no key for anything here
    assert network.curve_key("mix-b1") == keys["mix-b1"].curve_public
    assert network.is_member_key(keys["alice"].curve_public)
    assert not network.is_member_key(b"\x01" * 32)
    assert network.endpoint(mix.id) == (mix.endpoint, keys["mix-b1"].curve_public)
    assert network.endpoint(topo.client("alice").id) is None  # clients are nobody's next hop
    admitted = network.admitted_keys("provider-1")
    assert admitted[keys["alice"].curve_public] == topo.client("alice").id
    assert keys["bob"].curve_public not in admitted  # another provider's client
    assert keys["provider-1"].curve_public not in admitted  # not itself
    assert keys["alice"].curve_public not in network.admitted_keys("mix-a1")


def test_a_network_needs_the_keys_of_every_member(net: SimNet) -> None:
    keys = dict(net.view.current.keys)
    assert Network(1, net.topology, keys).version == 1
    del keys["mix-c2"]
    with pytest.raises(LocalMisuse, match="no public keys for mix-c2"):
        Network(1, net.topology, keys)


def test_a_clients_network_includes_its_contacts(net: SimNet) -> None:
    topo = net.topology
    carol = Contact("carol", entity_id(topo.network, "carol"), b"\x01" * 32, b"\x02" * 32,
                    "provider-2")
    network = Network.build(topo, load_directory(net.state, topo), [carol], version=3)
    assert network.version == 3 and network.client("carol").provider == "provider-2"
    assert network.client_key("carol") == b"\x01" * 32
    assert network.clients_of("provider-2") == {topo.client("bob").id, carol.id}
    assert not Network.build(topo, load_directory(net.state, topo)).is_client("carol")


def test_an_older_or_equal_version_is_refused_and_a_newer_one_taken(net: SimNet) -> None:
    first = net.view.current
    view = NetworkView(first)
    second = dataclasses.replace(first, version=2)
    assert view.replace(second) is first and view.current is second
    for stale in (1, 2):
        with pytest.raises(LocalMisuse, match=f"network version {stale} is not newer than the "
                                              "current version 2"):
            view.replace(dataclasses.replace(first, version=stale))
        assert view.current is second


def test_another_network_or_packet_geometry_is_refused(net: SimNet) -> None:
    first = net.view.current
    view = NetworkView(first)
    renamed = dataclasses.replace(first.topology, network="other")
    with pytest.raises(LocalMisuse, match="is not this process's network"):
        view.replace(Network(2, renamed, first.keys))
    bigger = dataclasses.replace(first.topology, sphinx=dataclasses.replace(
        first.topology.sphinx, payload_length=4096))
    with pytest.raises(LocalMisuse, match="changes the Sphinx parameters"):
        view.replace(Network(2, bigger, first.keys))
    assert view.current is first
    view.replace(Network(2, first.topology, first.keys))  # the control: the same geometry
    assert view.current.version == 2


def test_the_data_model_reads_no_files() -> None:
    code = ("import sys\nimport zmix.topology, zmix.network\n"
            "assert 'yaml' not in sys.modules, 'the data model imported yaml'\n"
            "from zmix.topology import load_topology\n"
            "assert 'yaml' in sys.modules and load_topology.__module__ == 'zmix.topology_yaml'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- the cores


def test_a_node_added_to_a_layer_is_used_by_new_client_routes(net: SimNet) -> None:
    maker = PacketMaker(net.view, load_private(net.state, "alice"), random.Random(1),
                        crypto.random_bytes)
    before = [visited(net, {}, *dataclasses.astuple(maker.drop(0.0))) for _ in range(20)]
    assert all(len(hops) == 5 for hops in before)
    newer, private = with_node(net.view.current, "mix-b3", 1)
    net.replace_network(newer)
    new_id = newer.node("mix-b3").id
    extra = {new_id: private}
    loops = [visited(net, extra, *dataclasses.astuple(maker.loop(0.0).out)) for _ in range(60)]
    surbs = [visited(net, extra, *answer_surb(net.topology.sphinx, maker.surb(0.0).surb, b"r"))
             for _ in range(60)]
    # One of three in layer 1: about 20 of 60 each.
    assert sum(hops[2] == new_id for hops in loops) > 5
    assert sum(hops[1] == new_id for hops in surbs) > 5  # a SURB's route starts at layer 0
    assert not any(new_id in hops for hops in before)


def test_a_node_added_to_a_layer_is_used_by_new_mix_loops(net: SimNet) -> None:
    view = NetworkView(net.view.current)  # SimNet's nodes make no mix loops: this one does
    core = NodeCore(view, "mix-a1", random.Random(2), 0.0)
    assert all(len(core.loop_route()) == 4 for _ in range(10))  # L1, L2, a provider, itself
    newer, private = with_node(view.current, "mix-c3", 2)
    view.replace(newer)
    new_id = newer.node("mix-c3").id
    routes = [[n.id for n in core.loop_route()] for _ in range(30)]
    assert sum(route[1] == new_id for route in routes) > 5  # layer 2 follows mix-a1's layer 1
    loops = core.poll_loops(1_000.0)  # every loop missed since 0: made from the new version
    assert len(loops) > 100
    paths = [visited(net, {new_id: private}, loop.next_hop, loop.packet) for loop in loops]
    assert any(new_id in path for path in paths)
    assert all(path[-1] == net.topology.node("mix-a1").id for path in paths)


def test_a_node_removed_is_no_longer_a_valid_next_hop(net: SimNet) -> None:
    core = NodeCore(net.node_view, "mix-a1", random.Random(3), 0.0)
    gone, kept = net.topology.node("mix-b2").id, net.topology.node("mix-b1").id
    assert core.on_forward(0.0, gone, 1_000, b"tag-1") == 0.001
    net.node_view.replace(without_node(net.node_view.current, "mix-b2"))
    assert core.on_forward(0.0, gone, 1_000, b"tag-2") is None
    assert core.on_forward(0.0, kept, 1_000, b"tag-3") == 0.001  # the control
    stats = core.statistics()
    assert stats["dropped_unknown_next_hop"] == 1 and stats["forwarded"] == 2
    assert all(gone not in [n.id for n in core.loop_route()] for _ in range(30))


def test_a_client_added_to_a_provider_is_served(net: SimNet, tmp_path: Path) -> None:
    topo = net.topology
    provider = ProviderCore(net.node_view, "provider-2",
                            Mailbox(tmp_path / "p2.sqlite", quota=10, ttl=100.0))
    dave = PublicIdentity("dave", entity_id(topo.network, "dave"), b"\x03" * 32, b"\x04" * 32)
    body = encode_envelope(topo.sphinx, Envelope(None, b"for dave"))
    assert not provider.serves(dave.id)
    assert provider.on_final(0.0, FinalDelivery(dave.id, 0, body, b"t1")) is None
    assert provider.on_fetch(0.0, dave.id, Fetch(1)).items == ()
    net.node_view.replace(with_client(net.node_view.current, dave, "provider-2"))
    assert provider.serves(dave.id) and provider.serves(topo.client("bob").id)
    store = provider.on_final(0.0, FinalDelivery(dave.id, 0, body, b"t2"))
    assert store is not None and provider.commit(0.0, [store]) == [None]  # no ack SURB
    [item] = provider.on_fetch(0.0, dave.id, Fetch(2)).items
    assert item.payload == b"for dave"
    stats = provider.statistics()
    assert stats["unexpected_delivery"] == 1 and stats["fetch_refused"] == 1
    assert stats["messages_stored"] == 1


def test_a_client_added_at_run_time_gets_mail_through_every_node(net: SimNet) -> None:
    """The in-memory network: alice's core and every node's centre take the new version."""
    topo = net.topology
    dave = create_private(net.state, topo.network, "dave", "client")
    alice = net.client("alice", 4)
    with pytest.raises(LocalMisuse, match="no client named 'dave'"):
        alice.submit(0.0, "dave", b"too early")
    net.replace_network(with_client(net.view.current, dave.public(), "provider-2"))
    dave_core = net.client("dave", 5)
    message_id = alice.submit(0.0, "dave", b"welcome, dave")
    got = net.run({"alice": alice, "dave": dave_core}, 0.0, 2.0)
    assert [(name, m.sender, m.data) for name, m in got] == [
        ("dave", "alice", b"welcome, dave")]
    assert alice.progress(message_id).acked == 1



# ---------------------------------------------------------------------------- the runtimes


def test_the_node_runtime_resolves_and_admits_the_current_network(net: SimNet) -> None:
    from zmix.runtime.links import user_id
    from zmix.runtime.node import NodeProcess

    # The network a running node takes from the authorities' documents, given here directly.
    node = NodeProcess(net.state, "provider-1", workers=1, network=net.view.current)
    node._make_centre(0.0)
    try:
        gate = node._make_gate()
        old = node.view.current
        gone = old.node("mix-b2")
        assert node._resolve(gone.id) == (gone.endpoint, old.curve_key("mix-b2"))
        assert gate.entity(user_id(old.curve_key("mix-b2"))) == gone.id
        added, _ = with_node(without_node(old, "mix-b2"), "mix-b3", 1)
        dave = PublicIdentity("dave", entity_id(old.network, "dave"), b"\x03" * 32, b"\x04" * 32)
        newer = with_client(added, dave, "provider-1")
        node.replace_network(newer)
        new = newer.node("mix-b3")
        assert node._resolve(gone.id) is None
        assert node._resolve(new.id) == (new.endpoint, newer.curve_key("mix-b3"))
        assert gate.entity(user_id(old.curve_key("mix-b2"))) is None
        assert gate.entity(user_id(newer.curve_key("mix-b3"))) == new.id
        assert gate.entity(user_id(dave.curve_public)) == dave.id
        assert gate.entity(user_id(old.curve_key("alice"))) == old.client("alice").id
        assert node.provider is not None and node.provider.serves(dave.id)
        with pytest.raises(LocalMisuse, match="not newer"):
            node.replace_network(old)
        assert node.view.current is newer
    finally:
        assert node.mailbox is not None
        node.mailbox.close()


def test_the_client_runtime_takes_a_newer_network_only(net: SimNet) -> None:
    from zmix.runtime.client import ClientRuntime

    runtime = ClientRuntime(net.state, "alice",
                            document=document_for(net.view.current.topology, net.state))
    first = runtime.view.current
    with pytest.raises(LocalMisuse, match="not newer"):
        runtime.replace_network(first)
    newer, _ = with_node(first, "mix-b3", 1)
    runtime.replace_network(newer)
    assert runtime.view.current is newer and runtime.topology is newer.topology


def test_the_nodes_epoch_keys_are_a_checked_read_only_copy(net: SimNet) -> None:
    first = net.view.current
    given = {"mix-a1": {7: b"\x05" * 32}}
    network = Network(2, first.topology, first.keys, given, valid_until=123.0)
    given["mix-a1"][8] = b"\x06" * 32  # the caller's dict changes afterwards: the network not
    assert network.node_key("mix-a1", 7) == b"\x05" * 32 and network.valid_until == 123.0
    with pytest.raises(NoKeyForEpoch):
        network.node_key("mix-a1", 8)
    with pytest.raises(TypeError):
        network.epoch_keys["mix-a1"][9] = b"\x07" * 32  # type: ignore[index]
    assert network.epochs == first.topology.epoch
    with pytest.raises(LocalMisuse, match="'alice', which is not a node"):
        Network(2, first.topology, first.keys, {"alice": {7: b"\x05" * 32}})
    with pytest.raises(LocalMisuse, match="epoch 7 is not 32 bytes"):
        Network(2, first.topology, first.keys, {"mix-a1": {7: b"\x05" * 31}})


# ---------------------------------------------------------------------------- nodes short of keys


def short_of_keys(network: Network, names: list[str], epochs: list[int]) -> Network:
    """Return the next version of ``network`` in which nodes ``names`` have keys for ``epochs``
    only: a node cut off from the authorities, whose last descriptor's keys run out while the
    document still lists it."""
    epoch_keys = {name: ({e: k for e, k in by_epoch.items() if e in epochs}
                         if name in names else by_epoch)
                  for name, by_epoch in network.epoch_keys.items()}
    return Network(network.version + 1, network.topology, network.keys, epoch_keys)


def test_a_node_without_a_key_for_an_epoch_a_route_may_meet_is_left_out_of_the_draw(
        net: SimNet) -> None:
    network = net.view.current
    epochs = network.epochs
    now = epochs.start(epochs.epoch_at(1_000.0))
    current = epochs.epoch_at(now)
    names = ["mix-a1", "mix-b1"]
    view = NetworkView(short_of_keys(network, names, [current]))
    maker = PacketMaker(view, load_private(net.state, "alice"), random.Random(5),
                        crypto.random_bytes)
    cut = {network.node(name).id for name in names}
    # Early in the epoch every hop of a packet falls in it: the two nodes are drawn (control).
    early = [maker.loop(now).route for _ in range(40)]
    assert {"mix-a1", "mix-b1"} <= {name for route in early for name in route}
    # Near its end a hop may fall in the next epoch, for which they have no key; a SURB always
    # uses the next epoch's keys.
    late = epochs.end(current) - 1.0
    assert not {"mix-a1", "mix-b1"} & {name for _ in range(40)
                                       for name in maker.loop(late).route}
    firsts = {answer_surb(network.topology.sphinx, maker.surb(now).surb, b"r")[0]
              for _ in range(40)}
    assert not firsts & cut and len(firsts) == 1  # only mix-a2 of layer 0 is left
    assert maker.drop(late).first_hop == network.node("provider-1").id  # built, not raised


def test_a_client_whose_network_has_no_keyed_node_in_a_layer_sends_nothing_and_keeps_its_fragment(
        net: SimNet) -> None:
    network = net.view.current
    epochs = network.epochs
    now = epochs.start(epochs.epoch_at(1_000.0))
    layer1 = [n.name for n in network.topology.layers[1]]
    view = NetworkView(short_of_keys(network, layer1, [epochs.epoch_at(now)]))
    core = ClientCore(view, load_private(net.state, "alice"), ClientStore(":memory:"),
                      random.Random(6), now)
    core.submit(now, "bob", b"wait for the keys")
    core.poll(now + 60)  # loops and drops go (this epoch's keys); the fragment's ack SURB
    stats = core.statistics()  # needs the next epoch's keys, which layer 1 lacks
    assert stats["packets_unbuilt"] > 0 and stats["real_sent"] == 0
    assert core.queued() == 1  # the fragment waits, first in line
    view.replace(Network(view.current.version + 1, network.topology, network.keys,
                         network.epoch_keys))  # the keys come (a newer document)
    assert core.poll(now + 120) and core.statistics()["real_sent"] == 1
