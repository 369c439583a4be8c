"""Key files: generated once per node and client, private ones kept private, and every malformed
or foreign file refused with a ConfigError that names it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmix import crypto
from zmix.errors import ConfigError
from zmix.keys import (
    PublicIdentity,
    ensure_authority_keys,
    ensure_keys,
    load_directory,
    load_identity,
    load_identity_public,
    load_private,
)
from zmix.topology import Topology, entity_id, load_topology

TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"
PUBLIC_FIELDS = {"name", "role", "id", "public_key", "curve_public"}


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def topology(tmp_path: Path) -> Topology:
    path = tmp_path / "net.yaml"
    path.write_text("network: keytest\nproviders: [p1, p2]\nlayers: [[a1], [b1, b2]]\n"
                    "authorities: [auth]\n"
                    "clients: [{name: alice, provider: p1}, {name: bob, provider: p2}]\n")
    return load_topology(path)


@pytest.fixture
def state(tmp_path: Path, topology: Topology) -> Path:
    state_dir = tmp_path / "state"
    ensure_keys(state_dir, topology)
    return state_dir


MEMBERS = ["p1", "p2", "a1", "b1", "b2", "alice", "bob"]
NODES = ["p1", "p2", "a1", "b1", "b2"]  # the members with an identity key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(state_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(state_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(state_dir.rglob("*")) if p.is_file()}


def edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------- generation


def test_ensure_keys_generates_a_pair_of_files_for_every_node_and_client(
        tmp_path: Path, topology: Topology) -> None:
    state_dir = tmp_path / "state"
    assert ensure_keys(state_dir, topology) == MEMBERS
    for name in MEMBERS:
        assert (state_dir / "public" / f"{name}.json").is_file()
        assert (state_dir / "private" / f"{name}.json").is_file()
    assert sorted(p.name for p in (state_dir / "public").iterdir()) == \
        sorted([f"{n}.json" for n in MEMBERS] + [f"{n}.identity.json" for n in NODES])
    assert (state_dir / "topology.yaml").read_bytes() == Path(topology.path).read_bytes()


def test_ensure_keys_a_second_time_generates_nothing_and_changes_no_file(
        state: Path, topology: Topology) -> None:
    before = snapshot(state)
    # every key file is there, the nodes' identity files and the topology
    assert len(before) == 2 * len(MEMBERS) + 2 * len(NODES) + 1
    assert ensure_keys(state, topology) == []
    assert snapshot(state) == before
    (state / "private" / "a1.json").unlink()  # the same call generates what is missing
    (state / "public" / "a1.json").unlink()
    assert ensure_keys(state, topology) == ["a1"]


def test_ensure_keys_only_generates_what_is_missing(state: Path, topology: Topology) -> None:
    (state / "private" / "b2.json").unlink()
    (state / "public" / "b2.json").unlink()
    kept = (state / "private" / "a1.json").read_bytes()
    assert ensure_keys(state, topology) == ["b2"]
    assert (state / "private" / "a1.json").read_bytes() == kept


def test_private_files_are_0600_in_a_0700_directory_and_public_files_0644(state: Path) -> None:
    assert mode(state / "private") == 0o700
    for name in MEMBERS:
        assert mode(state / "private" / f"{name}.json") == 0o600
        assert mode(state / "public" / f"{name}.json") == 0o644


def test_an_existing_private_directory_is_tightened_to_0700(
        tmp_path: Path, topology: Topology) -> None:
    state_dir = tmp_path / "state"
    (state_dir / "private").mkdir(parents=True, mode=0o755)
    os.chmod(state_dir / "private", 0o755)
    ensure_keys(state_dir, topology)
    assert mode(state_dir / "private") == 0o700


def test_public_files_hold_no_private_fields(state: Path, topology: Topology) -> None:
    roles = {"p1": "provider", "a1": "mixnode", "alice": "client"}
    for name in MEMBERS:
        public = json.loads((state / "public" / f"{name}.json").read_text())
        private = json.loads((state / "private" / f"{name}.json").read_text())
        assert set(public) == PUBLIC_FIELDS
        assert set(private) == PUBLIC_FIELDS | {"private_key", "curve_private"}
        assert {k: private[k] for k in PUBLIC_FIELDS} == public
        assert public["id"] == entity_id(topology.network, name).hex()
        if name in roles:
            assert public["role"] == roles[name]


def test_every_member_gets_its_own_fresh_keys(state: Path) -> None:
    keys = []
    for name in MEMBERS:
        public = json.loads((state / "public" / f"{name}.json").read_text())
        keys += [public["public_key"], public["curve_public"]]
    assert len(set(keys)) == 2 * len(MEMBERS)


# ---------------------------------------------------------------------------- loading


def test_load_private_round_trips_the_private_file(state: Path, topology: Topology) -> None:
    for name in MEMBERS:
        raw = json.loads((state / "private" / f"{name}.json").read_text())
        ident = load_private(state, name)
        assert ident.name == name
        assert ident.id == entity_id(topology.network, name)
        assert ident.public_key.hex() == raw["public_key"]
        assert ident.private_key.hex() == raw["private_key"]
        assert ident.curve_public.hex() == raw["curve_public"]
        assert ident.curve_private.hex() == raw["curve_private"]
        assert crypto.x25519_base(ident.private_key) == ident.public_key
        assert crypto.x25519_base(ident.curve_private) == ident.curve_public


def test_load_directory_returns_every_public_identity(state: Path, topology: Topology) -> None:
    directory = load_directory(state, topology)
    assert sorted(directory) == sorted(MEMBERS)
    for name in MEMBERS:
        assert isinstance(directory[name], PublicIdentity)
        assert directory[name] == load_private(state, name).public()


def test_a_private_file_readable_by_others_is_refused_with_a_chmod_hint(state: Path) -> None:
    path = state / "private" / "a1.json"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as info:
        load_private(state, "a1")
    assert (info.value.path, info.value.key) == (str(path), "(file)")
    assert "readable by other users (mode 644)" in info.value.problem
    assert f"chmod 600 {path}" in info.value.problem


def test_a_group_readable_private_file_is_refused_too(state: Path) -> None:
    os.chmod(state / "private" / "a1.json", 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private(state, "a1")


def test_a_missing_private_file_is_a_config_error(state: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_private(state, "nobody")
    assert info.value.path == str(state / "private" / "nobody.json")
    assert "no private key file for 'nobody'" in info.value.problem


def test_corrupted_private_json_names_the_file(state: Path) -> None:
    path = state / "private" / "bob.json"
    path.write_text('{"name": "bob", ')
    with pytest.raises(ConfigError) as info:
        load_private(state, "bob")
    assert (info.value.path, info.value.key) == (str(path), "(file)")
    assert "unreadable key file" in info.value.problem


def test_a_key_file_that_is_not_a_json_object_names_the_file(state: Path) -> None:
    path = state / "private" / "bob.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError) as info:
        load_private(state, "bob")
    assert info.value.path == str(path)
    assert "JSON object" in info.value.problem


def test_corrupted_public_json_names_the_file(state: Path, topology: Topology) -> None:
    path = state / "public" / "b1.json"
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(ConfigError) as info:
        load_directory(state, topology)
    assert (info.value.path, info.value.key) == (str(path), "(file)")


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("private_key", "00" * 31, "must be 32 bytes, got 31"),
    ("public_key", "00" * 33, "must be 32 bytes, got 33"),
    ("curve_private", "zz" * 32, "missing or not hexadecimal"),
    ("id", "00" * 32, "must be 16 bytes, got 32"),
    ("curve_public", 7, "missing or not hexadecimal"),
])
def test_a_wrong_private_value_names_the_file_and_the_field(
        state: Path, field: str, value: object, problem: str) -> None:
    path = state / "private" / "alice.json"
    edit(path, **{field: value})
    with pytest.raises(ConfigError) as info:
        load_private(state, "alice")
    assert (info.value.path, info.value.key, info.value.problem) == (str(path), field, problem)


def test_a_missing_private_field_is_named(state: Path) -> None:
    path = state / "private" / "alice.json"
    data = json.loads(path.read_text())
    del data["curve_private"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_private(state, "alice")
    assert info.value.key == "curve_private"


def test_a_private_key_that_does_not_match_its_public_key_is_refused(state: Path) -> None:
    other = json.loads((state / "private" / "bob.json").read_text())
    edit(state / "private" / "alice.json", private_key=other["private_key"])
    with pytest.raises(ConfigError) as info:
        load_private(state, "alice")
    assert (info.value.key, info.value.problem) == ("private_key", "does not match public_key")


def test_a_curve_key_that_does_not_match_is_refused(state: Path) -> None:
    other = json.loads((state / "private" / "bob.json").read_text())
    edit(state / "private" / "alice.json", curve_private=other["curve_private"])
    with pytest.raises(ConfigError) as info:
        load_private(state, "alice")
    assert info.value.key == "curve_private"


def test_a_wrong_length_public_key_names_the_public_file(state: Path, topology: Topology) -> None:
    path = state / "public" / "p2.json"
    edit(path, public_key="ab" * 16)
    with pytest.raises(ConfigError) as info:
        load_directory(state, topology)
    assert (info.value.path, info.value.key) == (str(path), "public_key")
    assert info.value.problem == "must be 32 bytes, got 16"


def test_load_directory_refuses_a_public_file_with_another_id(
        state: Path, topology: Topology) -> None:
    path = state / "public" / "b2.json"
    edit(path, id=entity_id(topology.network, "b1").hex())
    with pytest.raises(ConfigError) as info:
        load_directory(state, topology)
    assert (info.value.path, info.value.key) == (str(path), "id")
    assert info.value.problem == "is not the id of 'b2' in network 'keytest'"


def test_load_directory_refuses_keys_from_another_network(
        tmp_path: Path, state: Path, topology: Topology) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(Path(topology.path).read_text().replace("keytest", "elsewhere"))
    with pytest.raises(ConfigError) as info:
        load_directory(state, load_topology(other))
    assert info.value.key == "id"


def test_load_directory_reports_a_missing_public_file(state: Path, topology: Topology) -> None:
    (state / "public" / "alice.json").unlink()
    with pytest.raises(ConfigError) as info:
        load_directory(state, topology)
    assert info.value.path == str(state / "public" / "alice.json")
    assert "no key file for 'alice'" in info.value.problem


# ---------------------------------------------------------------------------- the network check


def test_ensure_keys_refuses_a_state_directory_of_another_network(
        tmp_path: Path, state: Path, topology: Topology) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(Path(topology.path).read_text().replace("keytest", "elsewhere"))
    before = snapshot(state)
    with pytest.raises(ConfigError) as info:
        ensure_keys(state, load_topology(other))
    assert (info.value.path, info.value.key) == (str(other), "network")
    assert "belongs to network 'keytest', not 'elsewhere'" in info.value.problem
    assert snapshot(state) == before


def test_ensure_keys_accepts_another_copy_of_the_same_network(
        tmp_path: Path, state: Path, topology: Topology) -> None:
    copy_path = tmp_path / "copy.yaml"
    copy_path.write_text(Path(topology.path).read_text() + "# a comment\n")
    assert ensure_keys(state, load_topology(copy_path)) == []


def test_ensure_keys_accepts_the_state_directorys_own_copy(state: Path) -> None:
    assert ensure_keys(state, load_topology(state / "topology.yaml")) == []


def test_ensure_keys_restores_a_missing_public_file(state: Path, topology: Topology) -> None:
    (state / "public" / "a1.json").unlink()
    ensure_keys(state, topology)
    assert load_directory(state, topology)["a1"] == load_private(state, "a1").public()


def test_shipped_local_topology_gets_keys_for_all_twelve_members(tmp_path: Path) -> None:
    topo = load_topology(TOPOLOGIES / "local.yaml")
    generated = ensure_keys(tmp_path / "state", topo)
    assert len(generated) == 12
    assert len(load_directory(tmp_path / "state", topo)) == 12


# ---------------------------------------------------------------------------- several hosts


def host_with(tmp_path: Path, state: Path, names: list[str]) -> Path:
    """A second host's state directory: the topology, public/ whole, and the private files of
    ``names`` only (docs/topology.md, "Running on several hosts")."""
    other = tmp_path / "other-host"
    (other / "private").mkdir(parents=True, mode=0o700)
    (other / "public").mkdir()
    (other / "topology.yaml").write_bytes((state / "topology.yaml").read_bytes())
    for path in (state / "public").iterdir():
        (other / "public" / path.name).write_bytes(path.read_bytes())
    for name in names:
        target = other / "private" / f"{name}.json"
        target.write_bytes((state / "private" / f"{name}.json").read_bytes())
        os.chmod(target, 0o600)
    return other


def test_ensure_keys_for_some_nodes_never_creates_or_replaces_another_members_keys(
        tmp_path: Path, state: Path, topology: Topology) -> None:
    other = host_with(tmp_path, state, ["b1"])
    before = snapshot(other)
    assert ensure_keys(other, topology, only=["b1"]) == []
    assert snapshot(other) == before
    assert load_directory(other, topology) == load_directory(state, topology)
    # A member in scope with no keys at all gets them; nobody else does.
    (other / "public" / "b2.json").unlink()
    assert ensure_keys(other, topology, only=["b1", "b2"]) == ["b2"]
    assert sorted(p.name for p in (other / "private").iterdir()) == ["b1.json", "b2.json"]


def test_ensure_keys_for_every_member_keeps_public_files_made_elsewhere(
        tmp_path: Path, state: Path, topology: Topology) -> None:
    other = host_with(tmp_path, state, ["b1"])
    before = snapshot(other)
    assert ensure_keys(other, topology) == []  # keys of the other members exist, elsewhere
    assert snapshot(other) == before


def test_a_missing_public_file_says_which_file_to_copy(state: Path, topology: Topology) -> None:
    (state / "public" / "b2.json").unlink()
    with pytest.raises(ConfigError) as info:
        load_directory(state, topology)
    assert str(info.value) == (f"{state / 'public' / 'b2.json'}: (file): no key file for 'b2'; "
                               "copy public/b2.json from the state directory where the keys "
                               "were made")


# ---------------------------------------------------------------------------- identity keys


def identity_files(state_dir: Path, name: str) -> tuple[Path, Path]:
    return (state_dir / "public" / f"{name}.identity.json",
            state_dir / "private" / f"{name}.identity.json")


def test_every_node_gets_an_ed25519_identity_key_and_no_client_does(state: Path) -> None:
    for name in NODES:
        public, private = identity_files(state, name)
        assert json.loads(public.read_text()).keys() == {"name", "identity_public"}
        assert json.loads(private.read_text()).keys() == {"name", "identity_public",
                                                          "identity_secret"}
        assert mode(private) == 0o600 and mode(public) == 0o644
        key = load_identity(state, name)
        assert load_identity_public(state, name) == key.public
        assert crypto.verify(key.public, b"m", crypto.sign(key.secret, b"m"))
    for name in ("alice", "bob"):
        assert not any(p.exists() for p in identity_files(state, name))
    assert len({load_identity_public(state, n) for n in NODES}) == len(NODES)


def test_ensure_keys_adds_identity_keys_to_a_state_directory_made_before_them(
        state: Path, topology: Topology) -> None:
    for name in NODES:
        for path in identity_files(state, name):
            path.unlink()
    old_keys = {n: (state / "private" / f"{n}.json").read_bytes() for n in MEMBERS}
    assert ensure_keys(state, topology) == []  # no member got new Sphinx or CURVE keys
    assert {n: (state / "private" / f"{n}.json").read_bytes() for n in MEMBERS} == old_keys
    for name in NODES:
        assert load_identity(state, name).public == load_identity_public(state, name)


def test_an_identity_key_is_never_replaced_and_a_lost_public_file_is_restored(
        state: Path, topology: Topology) -> None:
    public, private = identity_files(state, "a1")
    kept = private.read_bytes()
    original = load_identity_public(state, "a1")
    public.unlink()
    ensure_keys(state, topology)
    assert private.read_bytes() == kept
    assert load_identity_public(state, "a1") == original


def test_a_node_whose_keys_live_elsewhere_gets_no_identity_key_here(
        tmp_path: Path, state: Path, topology: Topology) -> None:
    other = host_with(tmp_path, state, ["b1"])
    (other / "private" / "b1.identity.json").write_bytes(
        (state / "private" / "b1.identity.json").read_bytes())
    os.chmod(other / "private" / "b1.identity.json", 0o600)
    before = snapshot(other)
    assert ensure_keys(other, topology) == []
    assert snapshot(other) == before
    assert load_identity(other, "b1") == load_identity(state, "b1")
    with pytest.raises(ConfigError, match="no private key file for 'b2'"):
        load_identity(other, "b2")  # positive control above: b1's copy loads


def test_load_identity_refuses_an_open_mode_a_mismatched_secret_and_another_name(
        state: Path) -> None:
    _, private = identity_files(state, "a1")
    load_identity(state, "a1")
    os.chmod(private, 0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        load_identity(state, "a1")
    os.chmod(private, 0o600)
    other_secret = crypto.ed25519_keypair()[1]
    saved = private.read_text()
    edit(private, identity_secret=other_secret.hex())
    with pytest.raises(ConfigError) as info:
        load_identity(state, "a1")
    assert str(info.value) == f"{private}: identity_secret: does not match identity_public"
    private.write_text(saved)
    edit(private, identity_secret="00" * 63)
    with pytest.raises(ConfigError, match="identity_secret: must be 64 bytes, got 63"):
        load_identity(state, "a1")
    private.write_text(saved)
    edit(private, name="b1")
    with pytest.raises(ConfigError, match="name: is 'b1', not 'a1'"):
        load_identity(state, "a1")


def test_load_identity_public_names_the_file_to_copy_when_it_is_missing(state: Path) -> None:
    public, _ = identity_files(state, "b2")
    assert len(load_identity_public(state, "b2")) == 32
    public.unlink()
    with pytest.raises(ConfigError) as info:
        load_identity_public(state, "b2")
    assert str(info.value) == (f"{public}: (file): no identity key file for 'b2'; copy "
                               "public/b2.identity.json from the state directory where the keys "
                               "were made")


def test_ensure_authority_keys_makes_each_authority_one_identity_key_once(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    assert ensure_authority_keys(state_dir, ["auth1", "auth2"]) == ["auth1", "auth2"]
    assert mode(state_dir / "private") == 0o700
    first = {n: load_identity(state_dir, n) for n in ("auth1", "auth2")}
    assert first["auth1"].public != first["auth2"].public
    assert ensure_authority_keys(state_dir, ["auth1", "auth2", "auth3"]) == ["auth3"]
    assert {n: load_identity(state_dir, n) for n in ("auth1", "auth2")} == first
    assert load_identity_public(state_dir, "auth3") == load_identity(state_dir, "auth3").public
    assert not (state_dir / "public" / "auth1.json").exists()  # an identity key and nothing else


def test_names_ending_in_identity_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reserved for the identity key files"):
        ensure_authority_keys(tmp_path / "a", ["auth1", "p1.identity"])
    assert not (tmp_path / "a" / "private" / "auth1.identity.json").exists()
    with pytest.raises(ConfigError, match="not a valid name"):
        ensure_authority_keys(tmp_path / "b", ["../x"])
    path = tmp_path / "net.yaml"
    path.write_text("network: keytest\nproviders: [p1]\nlayers: [[a1]]\nauthorities: [auth]\n"
                    "clients: [{name: p1.identity, provider: p1}]\n")
    with pytest.raises(ConfigError, match="reserved"):
        ensure_keys(tmp_path / "c", load_topology(path))
    assert not (tmp_path / "c").exists()
    assert ensure_authority_keys(tmp_path / "d", ["p1"]) == ["p1"]  # positive control


def test_a_node_whose_public_file_is_missing_gets_no_new_identity_key(
        state: Path, topology: Topology) -> None:
    for path in identity_files(state, "a1") + identity_files(state, "b1"):
        path.unlink()
    (state / "public" / "a1.json").unlink()  # public/ not (yet) copied in for a1
    ensure_keys(state, topology)
    assert not any(p.exists() for p in identity_files(state, "a1"))
    assert all(p.exists() for p in identity_files(state, "b1"))  # positive control
