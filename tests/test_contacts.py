"""Contact files: written and read back, and every kind of broken one named by file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from documents import document_for

from zmix.bench.common import make_network
from zmix.contacts import Contact, contact_path, load_contacts, with_contacts, write_contact
from zmix.errors import ConfigError
from zmix.keys import load_directory
from zmix.topology import Topology, entity_id


@pytest.fixture
def net(tmp_path: Path) -> tuple[Topology, Path]:
    return make_network(tmp_path, layers=(("mix-a",),), clients={"alice": "provider-1"})


def dave(topology: Topology) -> Contact:
    return Contact("dave", entity_id(topology.network, "dave"), b"\x01" * 32, b"\x02" * 32,
                   "provider-2")


def test_a_contact_round_trips_and_extends_what_a_client_sees(net: tuple[Topology, Path]) -> None:
    topology, state = net
    path = write_contact(state, dave(topology))
    assert path == contact_path(state, "dave")
    assert load_contacts(state, topology) == [dave(topology)]
    extended, directory = with_contacts(topology, load_directory(state, topology),
                                        load_contacts(state, topology))
    assert extended.client("dave").provider == "provider-2"
    assert extended.by_id(dave(topology).id) == dave(topology).spec()
    assert directory["dave"].public_key == b"\x01" * 32 and "alice" in directory
    assert topology.clients == extended.clients[:len(topology.clients)]


def test_no_contacts_folder_means_no_contacts(net: tuple[Topology, Path]) -> None:
    topology, state = net
    assert load_contacts(state, topology) == []
    write_contact(state, dave(topology))  # the same call finds one once the folder has one
    assert load_contacts(state, topology) == [dave(topology)]


@pytest.mark.parametrize(("change", "key"), [
    ({"name": "carol"}, "name"),  # does not match the file name
    ({"role": "provider"}, "role"),
    ({"provider": "mix-a"}, "provider"),  # a mixnode
    ({"provider": 7}, "provider"),
    ({"id": "00" * 16}, "id"),  # another network's id
    ({"public_key": "zz"}, "public_key"),
    ({"curve_public": "00" * 31}, "curve_public"),
])
def test_a_broken_contact_is_a_config_error_naming_file_and_key(
        net: tuple[Topology, Path], change: dict[str, object], key: str) -> None:
    topology, state = net
    path = write_contact(state, dave(topology))
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ConfigError) as info:
        load_contacts(state, topology)
    assert (info.value.path, info.value.key) == (str(path), key)


def test_a_contact_may_not_take_a_member_s_name(net: tuple[Topology, Path]) -> None:
    topology, state = net
    alice = Contact("alice", entity_id(topology.network, "alice"), b"\x01" * 32, b"\x02" * 32,
                    "provider-1")
    write_contact(state, alice)
    with pytest.raises(ConfigError, match="already a member"):
        load_contacts(state, topology)


@pytest.mark.parametrize("text", ["", "[]", "{not json"])
def test_an_unreadable_contact_is_a_config_error(net: tuple[Topology, Path], text: str) -> None:
    topology, state = net
    (state / "contacts").mkdir()
    (state / "contacts" / "dave.json").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_contacts(state, topology)
    assert info.value.key == "(file)"


def test_a_bad_contact_is_skipped_with_a_warning_and_stops_no_other_client(
        net: tuple[Topology, Path], caplog: pytest.LogCaptureFixture) -> None:
    from zmix.runtime.client import ClientRuntime

    topology, state = net
    (state / "contacts").mkdir()
    (state / "contacts" / "junk.json").write_text("{}")
    problems: list[ConfigError] = []
    assert load_contacts(state, topology, problems) == []
    assert [p.path for p in problems] == [str(state / "contacts" / "junk.json")]
    with caplog.at_level("WARNING"):
        runtime = ClientRuntime(state, "alice", document=document_for(topology, state))
    assert runtime.spec.name == "alice" and "junk.json" in caplog.text


def test_a_client_whose_own_contact_is_broken_or_foreign_does_not_start(
        net: tuple[Topology, Path]) -> None:
    from zmix.keys import create_private
    from zmix.runtime.client import ClientRuntime

    topology, state = net
    mine = create_private(state, topology.network, "dave", "client")
    path = write_contact(state, Contact("dave", mine.id, mine.public_key, mine.curve_public,
                                        "provider-2"))
    document = document_for(topology, state)
    assert ClientRuntime(state, "dave", document=document).spec.provider == "provider-2"
    write_contact(state, dave(topology))  # someone else's keys under dave's name
    with pytest.raises(ConfigError) as info:
        ClientRuntime(state, "dave", document=document_for(topology, state))
    assert (info.value.path, info.value.key) == (str(path), "public_key")
    path.write_text("{}")
    with pytest.raises(ConfigError) as info:
        ClientRuntime(state, "dave", document=document_for(topology, state))
    assert info.value.path == str(path)
