"""Topology files: the shipped ones load, ports and ids are deterministic, and every broken
document is refused with a ConfigError naming the file, the key path and the problem."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmix.epochs import EpochParams
from zmix.errors import ConfigError, LocalMisuse
from zmix.sphinx import Profile, SphinxParams
from zmix.topology import (
    AuthoritySpec,
    LoopixParams,
    MailboxParams,
    NodeParams,
    Role,
    Topology,
    entity_id,
    load_topology,
    parse_topology,
)

TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"
LOCAL = TOPOLOGIES / "local.yaml"
MEDIUM = TOPOLOGIES / "medium.yaml"

HEAD = "network: t\nauthorities: [auth]\n"  # the first lines of a valid file
MINIMAL = HEAD + "providers: [p]\nlayers: [[a]]\n"


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- shipped files


def test_local_topology_has_three_layers_of_two_two_providers_and_four_clients() -> None:
    topo = load_topology(LOCAL)
    assert topo.network == "zmix-local"
    assert topo.path == str(LOCAL)
    assert [len(layer) for layer in topo.layers] == [2, 2, 2]
    assert [p.name for p in topo.providers] == ["provider-1", "provider-2"]
    assert [c.name for c in topo.clients] == ["alice", "bob", "carol", "dave"]
    assert len(topo.nodes()) == 8
    assert topo.sphinx.max_hops == 5 and topo.sphinx.payload_length == 2048
    assert topo.loopix == LoopixParams(mean_delay=0.02, payload_rate=20, loop_rate=2,
                                       drop_rate=2, mix_loop_rate=1, fetch_interval=0.2,
                                       max_delay=2)
    assert topo.mailbox == MailboxParams(quota=10_000, ttl=604_800, fetch_slots=8)
    assert topo.runtime == NodeParams()  # no node: section, so the defaults
    assert all(n.workers == 1 and n.host == "127.0.0.1" for n in topo.nodes())


def test_medium_topology_has_three_layers_of_three_three_providers_and_nine_clients() -> None:
    topo = load_topology(MEDIUM)
    assert topo.network == "zmix-medium"
    assert [len(layer) for layer in topo.layers] == [3, 3, 3]
    assert len(topo.providers) == 3
    assert len(topo.clients) == 9
    assert topo.mailbox == MailboxParams(quota=50_000, ttl=1_209_600, open_registration=False,
                                         fetch_slots=16)
    assert topo.runtime == NodeParams(queue_limit=200_000, drain_on_shutdown=False,
                                      replay_capacity=2_000_000)
    assert all(n.workers == 2 for n in topo.nodes())
    assert topo.node("provider-2").metrics_port == 9102
    assert topo.node("mix-b1").metrics_port == 9121
    assert topo.node("mix-b2").metrics_port is None


def test_local_ports_count_up_from_base_port_providers_first_then_layers() -> None:
    topo = load_topology(LOCAL)
    assert [(n.name, n.port) for n in topo.nodes()] == [
        ("provider-1", 31000), ("provider-2", 31001), ("mix-a1", 31002), ("mix-a2", 31003),
        ("mix-b1", 31004), ("mix-b2", 31005), ("mix-c1", 31006), ("mix-c2", 31007)]
    assert topo.node("mix-a1").endpoint == "tcp://127.0.0.1:31002"


def test_medium_ports_count_up_from_its_own_base_port() -> None:
    topo = load_topology(MEDIUM)
    assert [n.port for n in topo.nodes()] == list(range(32000, 32012))
    assert topo.nodes()[0].name == "provider-1" and topo.nodes()[3].name == "mix-a1"


def test_assigned_ports_skip_explicit_ports_and_metrics_ports_on_the_same_host(
        tmp_path: Path) -> None:
    path = write(tmp_path, """
network: t
authorities: [auth]
defaults: {base_port: 5000}
providers: [p1, {name: p2, port: 5001}, {name: far, host: 10.0.0.2, port: 5006}]
layers:
  - [a1, {name: a2, port: 5003}]
  - [{name: b1, metrics_port: 5004}, b2]
""")
    ports = {n.name: (n.host, n.port) for n in load_topology(path).nodes()}
    assert ports == {"p1": ("127.0.0.1", 5000), "p2": ("127.0.0.1", 5001),
                     "far": ("10.0.0.2", 5006), "a1": ("127.0.0.1", 5002),
                     "a2": ("127.0.0.1", 5003), "b1": ("127.0.0.1", 5005),
                     "b2": ("127.0.0.1", 5006)}


def test_port_assignment_does_not_depend_on_anything_but_the_file(tmp_path: Path) -> None:
    first = load_topology(LOCAL)
    copy_path = write(tmp_path, LOCAL.read_text(), "elsewhere.yaml")
    second = load_topology(copy_path)
    assert [(n.name, n.host, n.port, n.id) for n in first.nodes()] == \
        [(n.name, n.host, n.port, n.id) for n in second.nodes()]


def test_nodes_get_their_role_and_layer() -> None:
    topo = load_topology(LOCAL)
    assert all(p.role is Role.PROVIDER and p.layer is None for p in topo.providers)
    for index, layer in enumerate(topo.layers):
        assert all(n.role is Role.MIXNODE and n.layer == index for n in layer)


def test_defaults_apply_when_sections_are_left_out(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, MINIMAL))
    assert topo.sphinx == SphinxParams() and topo.sphinx.profile is Profile.V1
    assert topo.loopix == LoopixParams()
    assert topo.mailbox == MailboxParams()
    assert topo.runtime == NodeParams()
    assert topo.clients == ()
    assert topo.node("p").port == 31000 and topo.node("a").port == 31001
    assert topo.node("a").host == "127.0.0.1"


@pytest.mark.parametrize(("line", "profile"), [("sphinx: {profile: v1}\n", Profile.V1),
                                               ("sphinx: {profile: kem1}\n", Profile.KEM1),
                                               ("sphinx: {profile: null}\n", Profile.V1),
                                               ("sphinx: {max_hops: 6}\n", Profile.V1)])
def test_sphinx_profile_selects_the_packet_format_and_defaults_to_v1(
        tmp_path: Path, line: str, profile: Profile) -> None:
    topo = load_topology(write(tmp_path, MINIMAL + line))
    assert topo.sphinx.profile is profile
    hops = 6 if "max_hops" in line else 5
    assert topo.sphinx == SphinxParams(max_hops=hops, profile=profile)
    # the geometry follows the profile: a kem1 header is 32 bytes a hop longer
    assert topo.sphinx.header_length == 1 + 32 + (72 if profile is Profile.KEM1 else 40) * hops + 16


# ---------------------------------------------------------------------------- ids


def test_entity_id_is_keyed_blake2b_128_over_network_nul_name() -> None:
    expected = hashlib.blake2b(b"zmix-local\x00alice", digest_size=16,
                               key=b"zmix-id-v1").digest()
    assert entity_id("zmix-local", "alice") == expected
    assert len(expected) == 16


def test_entity_id_is_stable_and_differs_per_network_and_name() -> None:
    assert entity_id("n", "alice") == entity_id("n", "alice")
    assert entity_id("n", "alice") != entity_id("m", "alice")
    assert entity_id("n", "alice") != entity_id("n", "bob")
    # the separator keeps ("ab", "c") and ("a", "bc") apart
    assert entity_id("ab", "c") != entity_id("a", "bc")


def test_topology_ids_come_from_entity_id_and_are_unique() -> None:
    topo = load_topology(LOCAL)
    ids = [n.id for n in topo.nodes()] + [c.id for c in topo.clients]
    assert len(set(ids)) == len(ids) == 12
    assert topo.node("mix-b2").id == entity_id("zmix-local", "mix-b2")
    assert topo.client("carol").id == entity_id("zmix-local", "carol")


def test_the_same_names_in_two_networks_get_different_ids() -> None:
    local, medium = load_topology(LOCAL), load_topology(MEDIUM)
    assert local.node("provider-1").id != medium.node("provider-1").id
    assert local.client("alice").id != medium.client("alice").id


# ---------------------------------------------------------------------------- lookups


def test_node_and_client_look_up_by_name_or_raise_key_error() -> None:
    topo = load_topology(LOCAL)
    assert topo.node("mix-c1").layer == 2
    assert topo.node("provider-2").role is Role.PROVIDER
    assert topo.client("bob").provider == "provider-2"
    with pytest.raises(KeyError):
        topo.node("alice")  # a client, not a node
    with pytest.raises(KeyError):
        topo.client("mix-a1")  # a node, not a client
    with pytest.raises(KeyError):
        topo.node("nobody")


def test_by_id_finds_nodes_and_clients_and_returns_none_for_strangers() -> None:
    topo = load_topology(LOCAL)
    for node in topo.nodes():
        assert topo.by_id(node.id) is node
    for client in topo.clients:
        assert topo.by_id(client.id) is client
    assert topo.by_id(entity_id("zmix-medium", "alice")) is None
    assert topo.by_id(bytes(16)) is None


def test_clients_of_lists_a_providers_clients_in_file_order() -> None:
    topo = load_topology(LOCAL)
    assert [c.name for c in topo.clients_of("provider-1")] == ["alice", "carol"]
    assert [c.name for c in topo.clients_of("provider-2")] == ["bob", "dave"]
    assert topo.clients_of("mix-a1") == ()


def test_nodes_lists_providers_then_layers_in_order() -> None:
    topo = load_topology(MEDIUM)
    names = [n.name for n in topo.nodes()]
    assert names[:3] == ["provider-1", "provider-2", "provider-3"]
    assert names[3:] == [f"mix-{layer}{i}" for layer in "abc" for i in (1, 2, 3)]


# ---------------------------------------------------------------------------- broken files

BROKEN: list[tuple[str, str, str, str]] = [
    # (id, YAML text, key, fragment of the problem)
    ("unknown-top-level-key", MINIMAL + "netwrok: x\n", "netwrok", "unknown key"),
    ("unknown-loopix-key", MINIMAL + "loopix: {mean_dealy: 1}\n", "loopix.mean_dealy",
     "unknown key"),
    ("negative-mean-delay", MINIMAL + "loopix: {mean_delay: -0.5}\n", "loopix.mean_delay",
     "must be a number >= 0, got -0.5"),
    ("zero-payload-rate", MINIMAL + "loopix: {payload_rate: 0}\n", "loopix.payload_rate",
     "must be a number > 0, got 0"),
    ("max-delay-below-mean", MINIMAL + "loopix: {mean_delay: 2, max_delay: 1}\n",
     "loopix.max_delay", "must be at least loopix.mean_delay (2.0)"),
    ("max-delay-beyond-the-wire", MINIMAL + "loopix: {mean_delay: 1000, max_delay: 10000}\n",
     "loopix.max_delay", "must be a number <= 4294.967295 (the longest delay a packet can "
     "carry: 2^32-1 microseconds), got 10000"),
    ("mean-delay-beyond-the-wire", MINIMAL + "loopix: {mean_delay: 5000, max_delay: 4000}\n",
     "loopix.mean_delay", "must be a number <= 4294.967295 (the longest delay"),
    ("mix-loop-rate-too-high", MINIMAL + "loopix: {mix_loop_rate: 20000}\n",
     "loopix.mix_loop_rate", "must be a number <= 10000, got 20000"),
    ("payload-rate-too-high", MINIMAL + "loopix: {payload_rate: 1.0e+12}\n",
     "loopix.payload_rate", "must be a number <= 10000"),
    ("string-for-number", MINIMAL + "loopix: {loop_rate: fast}\n", "loopix.loop_rate",
     "must be a number, got 'fast'"),
    ("nan-for-number", MINIMAL + "loopix: {drop_rate: .nan}\n", "loopix.drop_rate",
     "must be a number"),
    ("bool-for-int", MINIMAL + "mailbox: {quota: true}\n", "mailbox.quota",
     "must be an integer from 1 to 1000000000, got True"),
    ("float-for-int", MINIMAL + "node: {queue_limit: 1.5}\n", "node.queue_limit",
     "must be an integer"),
    ("string-for-bool", MINIMAL + "mailbox: {open_registration: maybe}\n",
     "mailbox.open_registration", "must be true or false"),
    ("duplicate-node-name", HEAD + "providers: [p]\nlayers: [[a], [a]]\n",
     "layers[1][0].name", "duplicate name 'a' (also at layers[0][0].name)"),
    ("provider-named-like-mixnode", HEAD + "providers: [a]\nlayers: [[a]]\n",
     "layers[0][0].name", "duplicate name 'a'"),
    ("client-named-like-node", MINIMAL + "clients: [{name: a, provider: p}]\n",
     "clients[0].name", "'a' is already a node's name"),
    ("duplicate-client-name",
     MINIMAL + "clients: [{name: c, provider: p}, {name: c, provider: p}]\n",
     "clients[1].name", "duplicate name 'c'"),
    ("duplicate-host-port",
     HEAD + "providers: [{name: p, port: 4000}]\nlayers: [[{name: a, port: 4000}]]\n",
     "layers[0][0].port", "duplicate address '127.0.0.1:4000' (also at providers[0].port)"),
    ("metrics-port-on-a-node-port",
     HEAD + "providers: [{name: p, port: 4000}]\n"
     "layers: [[{name: a, port: 4001, metrics_port: 4000}]]\n",
     "layers[0][0].metrics_port", "duplicate address '127.0.0.1:4000'"),
    ("port-zero", HEAD + "providers: [{name: p, port: 0}]\nlayers: [[a]]\n",
     "providers[0].port", "must be an integer from 1 to 65535, got 0"),
    ("port-70000", HEAD + "providers: [p]\nlayers: [[a], [{name: b, port: 70000}]]\n",
     "layers[1][0].port", "must be an integer from 1 to 65535, got 70000"),
    ("ports-run-out", HEAD + "defaults: {base_port: 65535}\nproviders: [p]\n"
     "layers: [[a]]\n", "defaults.base_port", "ran out of ports"),
    ("client-without-provider", MINIMAL + "clients: [{name: c}]\n", "clients[0].provider",
     "is required"),
    ("client-with-unknown-provider", MINIMAL + "clients: [{name: c, provider: a}]\n",
     "clients[0].provider", "no provider named 'a' (providers: p)"),
    ("client-not-a-mapping", MINIMAL + "clients: [c]\n", "clients[0]",
     "must be a mapping, got a string"),
    ("empty-layers", HEAD + "providers: [p]\nlayers: []\n", "layers",
     "needs at least one layer"),
    ("empty-providers", HEAD + "providers: []\nlayers: [[a]]\n", "providers",
     "needs at least one provider"),
    ("too-many-layers", HEAD + "sphinx: {max_hops: 4}\nproviders: [p]\n"
     "layers: [[a], [b], [c]]\n", "layers",
     "3 layers make routes of 5 hops, more than sphinx.max_hops (4)"),
    ("max-hops-too-small", MINIMAL + "sphinx: {max_hops: 2}\n", "sphinx.max_hops",
     "must be an integer from 3 to 16"),
    ("unknown-sphinx-profile", MINIMAL + "sphinx: {profile: v2}\n", "sphinx.profile",
     "must be one of v1, kem1, got 'v2'"),
    ("tests-only-sphinx-profile", MINIMAL + "sphinx: {profile: smc0}\n", "sphinx.profile",
     "must be one of v1, kem1, got 'smc0'"),
    ("sphinx-profile-in-capitals", MINIMAL + "sphinx: {profile: KEM1}\n", "sphinx.profile",
     "must be one of v1, kem1, got 'KEM1'"),
    ("sphinx-profile-a-number", MINIMAL + "sphinx: {profile: 1}\n", "sphinx.profile",
     "must be one of v1, kem1, got 1"),
    ("bad-node-name", HEAD + "providers: ['p 1']\nlayers: [[a]]\n", "providers[0].name",
     "must be a name of 1-64 letters, digits"),
    ("bad-network-name", "network: zmix/evil\nproviders: [p]\nlayers: [[a]]\n", "network",
     "must be a name"),
    ("name-too-long", HEAD + f"providers: [{'p' * 65}]\nlayers: [[a]]\n",
     "providers[0].name", "must be a name"),
    ("parent-folder-node-name", HEAD + "providers: ['..']\nlayers: [[a]]\n",
     "providers[0].name", "(not . or ..), got '..'"),
    ("dot-network-name", "network: '.'\nproviders: [p]\nlayers: [[a]]\n", "network",
     "(not . or ..), got '.'"),
    ("parent-folder-client-name", MINIMAL + "clients: [{name: '..', provider: p}]\n",
     "clients[0].name", "(not . or ..), got '..'"),
    ("missing-network", "providers: [p]\nlayers: [[a]]\n", "network", "is required"),
    ("layers-not-a-list", HEAD + "providers: [p]\nlayers: a\n", "layers",
     "must be a list, got a string"),
    ("empty-layer", HEAD + "providers: [p]\nlayers: [[a], []]\n", "layers[1]",
     "must be a non-empty list of nodes"),
    ("layer-not-a-list", HEAD + "providers: [p]\nlayers: [a]\n", "layers[0]",
     "must be a non-empty list of nodes"),
    ("unknown-node-key", HEAD + "providers: [{name: p, prot: 1}]\nlayers: [[a]]\n",
     "providers[0].prot", "unknown key"),
    ("zero-workers", MINIMAL + "defaults: {workers: 0}\n", "defaults.workers",
     "must be an integer from 1 to 256"),
    ("host-with-space", MINIMAL + "defaults: {host: 'a b'}\n", "defaults.host",
     "must be a host name or address"),
    ("section-not-a-mapping", MINIMAL + "mailbox: [1]\n", "mailbox",
     "must be a mapping, got a list"),
    ("yaml-syntax-error", "network: [t\nproviders: [p]\n", "(yaml)", "not valid YAML"),
    ("top-level-list", "- network\n- t\n", "(top level)", "must be a mapping, got a list"),
    ("empty-file", "", "(top level)", "must be a mapping, got nothing"),
    # epochs
    ("epoch-too-short", MINIMAL + "epoch: {length: 0.5, grace: 0}\n", "epoch.length",
     "must be a number >= 1, got 0.5"),
    ("epoch-grace-half-the-length", MINIMAL + "epoch: {length: 1000, grace: 500}\n",
     "epoch.grace", "must be under half of epoch.length (500 s), got 500"),
    ("epoch-negative-grace", MINIMAL + "epoch: {grace: -1}\n", "epoch.grace",
     "must be a number >= 0"),
    ("epoch-ahead-zero", MINIMAL + "epoch: {ahead: 0}\n", "epoch.ahead",
     "must be an integer from 1 to 16, got 0"),
    ("epoch-ahead-float", MINIMAL + "epoch: {ahead: 2.0}\n", "epoch.ahead",
     "must be an integer"),
    ("epoch-negative-origin", MINIMAL + "epoch: {origin: -5}\n", "epoch.origin",
     "must be a number >= 0"),
    ("epoch-unknown-key", MINIMAL + "epoch: {lenght: 60}\n", "epoch.lenght",
     "unknown key (known here: ahead, grace, length, origin)"),
    ("epoch-shorter-than-the-delays", MINIMAL + "epoch: {length: 599, grace: 10}\n",
     "epoch.length", "must be at least 2 * sphinx.max_hops * loopix.max_delay = 2 * 5 * 60 = "
     "600 s"),
    ("epoch-not-a-mapping", MINIMAL + "epoch: 60\n", "epoch", "must be a mapping"),
    # authorities
    ("no-authorities", "network: t\nproviders: [p]\nlayers: [[a]]\n", "authorities",
     "is required: every network runs at least one directory authority"),
    ("empty-authorities", "network: t\nproviders: [p]\nlayers: [[a]]\nauthorities: []\n",
     "authorities", "add for example 'authorities: [{name: authority-1, port: 30999}]'"),
    ("authorities-a-mapping", "network: t\nproviders: [p]\nlayers: [[a]]\n"
     "authorities: {threshold: 1}\n", "authorities", "must be a list, got a mapping"),
    ("authority-named-like-a-node", "network: t\nproviders: [p]\nlayers: [[a]]\n"
     "authorities: [a]\n", "authorities[0].name", "duplicate name 'a' (also at "
     "layers[0][0].name)"),
    ("authority-named-twice", "network: t\nproviders: [p]\nlayers: [[a]]\n"
     "authorities: [x, y, x]\n", "authorities[2].name", "duplicate name 'x'"),
    ("client-named-like-an-authority", MINIMAL + "clients: [{name: auth, provider: p}]\n",
     "clients[0].name", "'auth' is already an authority's name"),
    ("authority-bad-name", "network: t\nproviders: [p]\nlayers: [[a]]\n"
     "authorities: ['x/y']\n", "authorities[0].name", "must be a name"),
    ("authority-port-of-a-node", "network: t\nproviders: [{name: p, port: 4000}]\n"
     "layers: [[a]]\nauthorities: [{name: x, port: 4000}]\n", "authorities[0].port",
     "duplicate address '127.0.0.1:4000' (also at providers[0].port)"),
    ("authority-port-of-a-metrics-port", "network: t\nproviders: [{name: p, "
     "metrics_port: 4000}]\nlayers: [[a]]\nauthorities: [{name: x, port: 4000}]\n",
     "providers[0].metrics_port", "duplicate address '127.0.0.1:4000' (also at "
     "authorities[0].port)"),
    ("authority-unknown-key", "network: t\nproviders: [p]\nlayers: [[a]]\n"
     "authorities: [{name: x, workers: 2}]\n", "authorities[0].workers",
     "unknown key (known here: host, identity_public, name, port)"),
    ("authority-short-key", "network: t\nproviders: [p]\nlayers: [[a]]\n"
     f"authorities: [{{name: x, identity_public: '{'ab' * 31}'}}]\n",
     "authorities[0].identity_public", "must be an Ed25519 public key as 64 hex digits"),
    ("authority-key-not-hex", "network: t\nproviders: [p]\nlayers: [[a]]\n"
     f"authorities: [{{name: x, identity_public: '{'zz' * 32}'}}]\n",
     "authorities[0].identity_public", "must be an Ed25519 public key as 64 hex digits"),
    ("authority-key-unquoted-digits", "network: t\nproviders: [p]\nlayers: [[a]]\n"
     f"authorities: [{{name: x, identity_public: {'1' * 64}}}]\n",
     "authorities[0].identity_public", "(in quotes)"),
    ("authority-key-pinned-twice", "network: t\nproviders: [p]\nlayers: [[a]]\n"
     f"authorities: [{{name: x, identity_public: '{'ab' * 32}'}}, "
     f"{{name: y, identity_public: '{'AB' * 32}'}}]\n", "authorities[1].identity_public",
     "duplicate identity key"),
    ("threshold-above-the-authorities", MINIMAL + "authority_threshold: 2\n",
     "authority_threshold", "must be at most the number of authorities (1), got 2"),
    ("threshold-zero", MINIMAL + "authority_threshold: 0\n", "authority_threshold",
     "must be an integer from 1 to 1000, got 0"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), [case[1:] for case in BROKEN],
                         ids=[case[0] for case in BROKEN])
def test_broken_topology_is_refused_with_file_key_and_problem(
        tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    err = info.value
    assert (err.path, err.key) == (str(path), key)
    assert fragment in err.problem
    assert str(err) == f"{path}: {key}: {err.problem}"


def test_the_broken_table_starts_from_a_valid_document(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, MINIMAL))
    assert [n.name for n in topo.nodes()] == ["p", "a"]


def test_a_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "providers: [p]\nlayers: [[a]\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert info.value.key == "(yaml)"
    assert info.value.problem.startswith("line ")


def test_a_missing_file_is_a_config_error_on_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert (info.value.path, info.value.key, info.value.problem) == (str(path), "(file)",
                                                                     "no such file")


def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(("# caf\u00e9\n" + MINIMAL).encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert (info.value.path, info.value.key, info.value.problem) == (
        str(path), "(file)", "not UTF-8 text (byte 0xe9 at offset 5)")
    path.write_bytes(("# caf\u00e9\n" + MINIMAL).encode())
    assert load_topology(path).network == "t"  # the same text in UTF-8 is read


def test_the_longest_delay_a_packet_can_carry_is_accepted(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, MINIMAL + "loopix: {mean_delay: 4294.967295, "
                                                   "max_delay: 4294.967295}\n"
                                                   "epoch: {length: 42950}\n"))
    assert int(topo.loopix.max_delay * 1_000_000) == 2**32 - 1
    assert load_topology(write(tmp_path, MINIMAL + "loopix: {mix_loop_rate: 10000}\n"))


def test_an_unknown_key_error_lists_the_known_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology(write(tmp_path, MINIMAL + "loopix: {mean_dealy: 1}\n"))
    assert "mean_delay" in info.value.problem and "payload_rate" in info.value.problem


# ------------------------------------------------------- edge cases an earlier version missed


def test_a_huge_integer_for_a_number_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology(write(tmp_path, MINIMAL + f"loopix: {{mean_delay: 1{'0' * 400}}}\n"))
    assert info.value.key == "loopix.mean_delay"


def test_a_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology(write(tmp_path, 'network: "t\\n"\nproviders: [p]\nlayers: [[a]]\n'))
    assert info.value.key == "network"


@pytest.mark.parametrize("section", ["loopix", "sphinx", "mailbox", "node", "defaults"])
def test_an_empty_list_for_a_section_is_refused(tmp_path: Path, section: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology(write(tmp_path, MINIMAL + f"{section}: []\n"))
    assert info.value.key == section


# ---------------------------------------------------------------------------- properties

KEYS = ["network", "sphinx", "loopix", "mailbox", "node", "defaults", "providers", "layers",
        "clients", "name", "host", "port", "workers", "metrics_port", "provider", "max_hops",
        "payload_length", "profile", "mean_delay", "payload_rate", "max_delay", "quota",
        "base_port"]

# Integers reach beyond float range, where float() raises OverflowError.
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.integers(10**308, 10**400) | st.floats()
           | st.text(max_size=12) | st.sampled_from(["p", "a", "mix-a1", "provider-1", "t"]))
ANY_DATA = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(0, 3), inner,
                      max_size=5),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(ANY_DATA)
def test_any_parsed_yaml_gives_a_topology_or_a_config_error(data: object) -> None:
    try:
        result = parse_topology(data, "x.yaml")
    except ConfigError as exc:
        assert exc.path == "x.yaml"
        assert exc.key and exc.problem
    else:
        assert isinstance(result, Topology)


VALID: dict[str, Any] = yaml.safe_load(LOCAL.read_text())


def _paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths += _paths(value, (*prefix, index))
    return paths


VALID_PATHS = _paths(VALID)


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    where = draw(st.sampled_from(VALID_PATHS))
    parent = doc
    for step in where[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[where[-1]]
    else:
        parent[where[-1]] = draw(ANY_DATA)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_a_valid_document_with_one_value_changed_gives_a_topology_or_a_config_error(
        doc: dict[str, Any]) -> None:
    try:
        result = parse_topology(doc, "x.yaml")
    except ConfigError as exc:
        assert exc.path == "x.yaml"
    else:
        assert isinstance(result, Topology)
        assert result.network == doc["network"]


def test_the_unmutated_document_parses() -> None:
    assert parse_topology(copy.deepcopy(VALID), "x.yaml").network == "zmix-local"


# ---------------------------------------------------------------------------- epochs


def test_the_epoch_section_gives_the_key_schedule(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, MINIMAL + "epoch: {length: 1200, origin: 1700000000, "
                                                   "grace: 30, ahead: 3}\n"))
    assert topo.epoch == EpochParams(length=1200.0, origin=1_700_000_000.0, grace=30.0, ahead=3)


def test_without_an_epoch_section_epochs_last_an_hour_from_time_zero(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, MINIMAL))
    assert topo.epoch == EpochParams(length=3600.0, origin=0.0, grace=60.0, ahead=2)


def test_an_epoch_exactly_twice_the_longest_route_delay_is_accepted(tmp_path: Path) -> None:
    # sphinx.max_hops 5 and loopix.max_delay 60 (the defaults): 2 * 5 * 60 = 600 s.
    assert load_topology(write(tmp_path, MINIMAL + "epoch: {length: 600}\n")).epoch.length == 600
    with pytest.raises(ConfigError) as info:  # one second less is refused
        load_topology(write(tmp_path, MINIMAL + "epoch: {length: 599}\n"))
    assert info.value.key == "epoch.length"
    # A shorter epoch is fine once the longest delay shrinks with it.
    topo = load_topology(write(tmp_path, MINIMAL + "sphinx: {max_hops: 3}\n"
                                                   "loopix: {mean_delay: 0.01, max_delay: 0.5}\n"
                                                   "epoch: {length: 3, grace: 1}\n"))
    assert (topo.epoch.length, topo.epoch.grace) == (3.0, 1.0)


def test_the_grace_may_come_just_under_half_an_epoch(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, MINIMAL + "epoch: {length: 1000, grace: 499}\n"))
    assert topo.epoch.grace == 499
    with pytest.raises(ConfigError) as info:
        load_topology(write(tmp_path, MINIMAL + "epoch: {length: 1000, grace: 500}\n"))
    assert info.value.key == "epoch.grace"


@pytest.mark.parametrize("key", ["length", "origin", "grace"])
def test_epoch_times_are_whole_seconds_as_the_documents_carry_them(tmp_path: Path,
                                                                   key: str) -> None:
    whole = load_topology(write(tmp_path, MINIMAL + f"epoch: {{{key}: 1000.0}}\n"
                                if key == "length" else
                                MINIMAL + f"epoch: {{length: 3000, {key}: 20.0}}\n"))
    assert whole.epoch.length in (1000.0, 3000.0)  # positive control: 1000.0 is whole
    text = (f"epoch: {{{key}: 1000.5}}\n" if key == "length"
            else f"epoch: {{length: 3000, {key}: 20.5}}\n")
    with pytest.raises(ConfigError, match="whole number of seconds") as info:
        load_topology(write(tmp_path, MINIMAL + text))
    assert info.value.key == f"epoch.{key}"


def test_the_shipped_topologies_keep_the_epoch_rule_and_local_rotates_within_the_demo() -> None:
    local, medium = load_topology(LOCAL), load_topology(MEDIUM)
    for topo in (local, medium):
        assert topo.epoch.length >= 2 * topo.sphinx.max_hops * topo.loopix.max_delay
    assert local.epoch.length <= 30  # --demo crosses a boundary in under a minute
    assert medium.epoch == EpochParams(length=600.0, grace=60.0, ahead=2)


# ---------------------------------------------------------------------------- authorities


def test_authorities_get_host_and_port_like_nodes_after_them(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, """
network: t
defaults: {base_port: 5000}
providers: [p]
layers: [[a], [{name: b, port: 5003}]]
authorities:
  - auth-1
  - {name: auth-2, host: 10.0.0.9, port: 7000}
  - {name: auth-3, identity_public: '""" + "0f" * 32 + """'}
"""))
    assert [(a.name, a.host, a.port) for a in topo.authorities] == [
        ("auth-1", "127.0.0.1", 5002), ("auth-2", "10.0.0.9", 7000),
        ("auth-3", "127.0.0.1", 5004)]
    assert topo.authorities[0].identity_public is None
    assert topo.authorities[2].identity_public == bytes([0x0F]) * 32
    assert topo.authority("auth-2").endpoint == "tcp://10.0.0.9:7000"
    assert [n.port for n in topo.nodes()] == [5000, 5001, 5003]  # nodes keep their ports
    with pytest.raises(KeyError):
        topo.authority("p")  # a node, not an authority
    assert "auth-1" not in topo.names()  # names() lists the nodes and clients only


@pytest.mark.parametrize(("count", "majority"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_the_threshold_defaults_to_a_majority_of_the_authorities(
        tmp_path: Path, count: int, majority: int) -> None:
    names = ", ".join(f"auth-{i}" for i in range(count))
    topo = load_topology(write(tmp_path, "network: t\nproviders: [p]\nlayers: [[a]]\n"
                                         f"authorities: [{names}]\n"))
    assert len(topo.authorities) == count
    assert topo.authority_threshold == majority


def test_an_explicit_threshold_from_one_to_all_is_kept(tmp_path: Path) -> None:
    base = "network: t\nproviders: [p]\nlayers: [[a]]\nauthorities: [x, y, z]\n"
    for threshold in (1, 2, 3):
        topo = load_topology(write(tmp_path, base + f"authority_threshold: {threshold}\n"))
        assert topo.authority_threshold == threshold
    with pytest.raises(ConfigError):
        load_topology(write(tmp_path, base + "authority_threshold: 4\n"))


def test_the_shipped_topologies_declare_their_authorities() -> None:
    local, medium = load_topology(LOCAL), load_topology(MEDIUM)
    assert [(a.name, a.port) for a in local.authorities] == [("authority-1", 31008)]
    assert local.authority_threshold == 1
    assert [a.name for a in medium.authorities] == ["authority-1", "authority-2", "authority-3"]
    assert medium.authority_threshold == 2


def test_a_topology_built_by_hand_needs_no_authorities_but_never_a_zero_threshold() -> None:
    topo = load_topology(LOCAL)
    fields = (topo.path, topo.network, topo.sphinx, topo.layers, topo.providers, topo.clients,
              topo.loopix, topo.mailbox, topo.runtime)
    bare = Topology(*fields)
    assert (bare.authorities, bare.authority_threshold) == ((), 1)
    assert bare.epoch == EpochParams()
    auth = AuthoritySpec("x", "127.0.0.1", 9000)
    assert Topology(*fields, authorities=(auth,), authority_threshold=1).authorities == (auth,)
    for threshold in (0, 2, True):
        with pytest.raises(LocalMisuse):
            Topology(*fields, authorities=(auth,), authority_threshold=threshold)
