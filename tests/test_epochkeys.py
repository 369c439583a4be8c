"""A node's per-epoch Sphinx keys on disk (zmix/epochkeys.py): made ahead, never overwritten,
reloaded after a restart, erased (file and memory) when they expire, corrupt files refused."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmix import crypto
from zmix.epochkeys import EpochKeyStore, key_directory
from zmix.epochs import EpochParams
from zmix.errors import ConfigError

P = EpochParams(length=100.0, origin=1000.0, grace=10.0, ahead=2)


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """Modes must come from the store, not from a strict umask of the test runner."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return key_directory(tmp_path / "state", "mix-a1")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_directory_of_a_node_is_under_its_node_directory(tmp_path: Path) -> None:
    assert key_directory(tmp_path, "mix-a1") == tmp_path / "nodes" / "mix-a1" / "sphinx"


def test_ensure_writes_one_private_file_per_missing_epoch(directory: Path) -> None:
    store = EpochKeyStore(directory)
    assert store.ensure(P.wanted(1250.0)) == [2, 3, 4]
    assert mode(directory) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["2.json", "3.json", "4.json"]
    for epoch in (2, 3, 4):
        path = directory / f"{epoch}.json"
        assert mode(path) == 0o600
        data = json.loads(path.read_text())
        assert data.keys() == {"epoch", "public_key", "private_key"}
        assert data["epoch"] == epoch
        private = store.private(epoch)
        assert bytes.fromhex(data["private_key"]) == private
        assert crypto.x25519_base(private) == bytes.fromhex(data["public_key"])
    assert store.epochs() == [2, 3, 4]
    assert len(set(store.public_keys().values())) == 3  # a fresh pair per epoch


def test_ensure_never_overwrites_a_key_it_holds(directory: Path) -> None:
    store = EpochKeyStore(directory)
    store.ensure([5, 6])
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    keys = store.public_keys()
    assert store.ensure([4, 5, 6, 7]) == [4, 7]  # only the missing ones
    assert store.public_keys()[5] == keys[5] and store.public_keys()[6] == keys[6]
    assert {n: (directory / n).read_bytes() for n in before} == before
    assert store.ensure([4, 5, 6, 7]) == []  # and a second call makes nothing


def test_ensure_never_overwrites_a_key_file_that_another_store_wrote(directory: Path) -> None:
    first = EpochKeyStore(directory)
    second = EpochKeyStore(directory)  # opened before the file existed
    first.ensure([3])
    kept = (directory / "3.json").read_bytes()
    with pytest.raises(ConfigError) as info:
        second.ensure([3])
    assert info.value.path == str(directory / "3.json")
    assert (directory / "3.json").read_bytes() == kept
    assert second.ensure([4]) == [4]  # the positive control: a missing epoch is made


def test_reopening_the_directory_gives_the_same_keys(directory: Path) -> None:
    store = EpochKeyStore(directory)
    store.ensure(range(-1, 3))
    again = EpochKeyStore(directory)  # a restart
    assert again.epochs() == [-1, 0, 1, 2]
    assert again.public_keys() == store.public_keys()
    for epoch in again.epochs():
        assert again.private(epoch) == store.private(epoch)


def test_a_missing_epoch_is_a_key_error(directory: Path) -> None:
    store = EpochKeyStore(directory)
    store.ensure([1])
    assert len(store.private(1)) == 32
    with pytest.raises(KeyError):
        store.private(2)


def test_expired_keys_are_erased_from_disk_and_memory(directory: Path) -> None:
    store = EpochKeyStore(directory)
    store.ensure([0, 1, 2, 3])
    held = store._private[1]  # the store's own copy, to see it zeroed
    assert any(held)
    # Epoch 1 ends at 1200 and its key goes at 1210 (end plus grace).
    assert store.erase_expired(P, 1209.999) == [0]
    assert store.epochs() == [1, 2, 3]
    assert store.erase_expired(P, 1210.0) == [1]
    assert held == bytearray(32)
    assert not (directory / "1.json").exists() and not (directory / "0.json").exists()
    assert sorted(p.name for p in directory.iterdir()) == ["2.json", "3.json"]
    with pytest.raises(KeyError):
        store.private(1)
    assert 1 not in store.public_keys()
    assert EpochKeyStore(directory).epochs() == [2, 3]  # gone after a restart too


def test_erase_overwrites_the_files_bytes_before_unlinking_it(directory: Path) -> None:
    store = EpochKeyStore(directory)
    store.ensure([7])
    path = directory / "7.json"
    size = path.stat().st_size
    alias = directory.parent / "alias"  # a second name for the same inode sees its bytes
    os.link(path, alias)
    store.erase(7)
    assert not path.exists()
    assert alias.read_bytes() == bytes(size)


def test_erase_is_idempotent_and_erasing_a_key_never_held_does_nothing(directory: Path) -> None:
    store = EpochKeyStore(directory)
    store.ensure([1, 2])
    store.erase(1)
    store.erase(1)
    store.erase(99)
    assert store.epochs() == [2]
    assert [p.name for p in directory.iterdir()] == ["2.json"]


def test_accepted_gives_the_keys_to_try_in_the_schedules_order(directory: Path) -> None:
    store = EpochKeyStore(directory)
    store.ensure([1, 2, 3])
    assert [e for e, _ in store.accepted(P, 1205.0)] == [2, 3, 1]
    assert [e for e, _ in store.accepted(P, 1250.0)] == [2, 3]
    assert dict(store.accepted(P, 1205.0))[1] == store.private(1)
    store.erase(3)
    assert [e for e, _ in store.accepted(P, 1250.0)] == [2]  # a missing key is left out


def test_a_temporary_file_left_by_a_crash_is_erased_on_open(directory: Path) -> None:
    store = EpochKeyStore(directory)
    store.ensure([1])
    (directory / ".2.json.tmp").write_text('{"epoch": 2, "private_key": "')
    again = EpochKeyStore(directory)
    assert again.epochs() == [1]
    assert not (directory / ".2.json.tmp").exists()
    assert again.ensure([2]) == [2]


def test_a_looser_directory_is_tightened_to_0700(directory: Path) -> None:
    directory.mkdir(parents=True, mode=0o755)
    os.chmod(directory, 0o755)
    EpochKeyStore(directory)
    assert mode(directory) == 0o700


def corrupt(directory: Path, change: dict[str, object] | None = None, text: str | None = None,
            epoch: int = 3) -> Path:
    """Write keys for ``epoch``, then spoil its file; return the file's path."""
    EpochKeyStore(directory).ensure([epoch])
    path = directory / f"{epoch}.json"
    if text is None:
        text = json.dumps({**json.loads(path.read_text()), **(change or {})})
    path.write_text(text)
    return path


@pytest.mark.parametrize(("case", "key", "fragment"), [
    ({"text": '{"epoch": 3, '}, "(file)", "unreadable epoch key file"),
    ({"text": "[3]"}, "(file)", "must hold a JSON object"),
    ({"change": {"epoch": 4}}, "epoch", "must be 3, the number in the file name, got 4"),
    ({"change": {"epoch": "3"}}, "epoch", "got '3'"),
    ({"change": {"private_key": "zz"}}, "private_key", "missing or not hexadecimal"),
    ({"change": {"public_key": "00" * 31}}, "public_key", "must be 32 bytes, got 31"),
    ({"change": {"private_key": crypto.x25519_keypair()[1].hex()}}, "private_key",
     "does not match public_key"),
    ({"change": {"note": 1}}, "note", "unknown key"),
])
def test_a_corrupt_key_file_is_refused_naming_the_file_and_field(
        directory: Path, case: dict[str, object], key: str, fragment: str) -> None:
    path = corrupt(directory, **case)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        EpochKeyStore(directory)
    assert (info.value.path, info.value.key) == (str(path), key)
    assert fragment in info.value.problem


def test_an_intact_key_file_with_the_same_steps_loads(directory: Path) -> None:
    path = corrupt(directory, change={})  # the positive control of the corrupt files
    assert EpochKeyStore(directory).epochs() == [3]
    assert path.exists()


def test_a_key_file_readable_by_others_is_refused(directory: Path) -> None:
    EpochKeyStore(directory).ensure([3])
    path = directory / "3.json"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as info:
        EpochKeyStore(directory)
    assert info.value.problem == f"readable by other users (mode 644); run: chmod 600 {path}"
    os.chmod(path, 0o600)
    assert EpochKeyStore(directory).epochs() == [3]


def test_a_stray_file_in_the_key_directory_is_refused(directory: Path) -> None:
    EpochKeyStore(directory)
    (directory / "notes.txt").write_text("x")
    with pytest.raises(ConfigError) as info:
        EpochKeyStore(directory)
    assert info.value.path == str(directory / "notes.txt")
    assert "not an epoch key file" in info.value.problem
