"""Key files in the state directory: one public and one private JSON file per node and client.

Every node and client has two X25519 key pairs: ``public_key`` (Sphinx on nodes, end-to-end
``crypto_box`` on clients) and ``curve_public`` (the ZeroMQ CURVE key of its links); keeping them
apart means a link key compromise does not open packets and the other way round.

```
STATE/public/NAME.json    {"name", "role", "id", "public_key", "curve_public"}        (hex)
STATE/private/NAME.json   the same plus "private_key" and "curve_private"; mode 0600, dir 0700
```
Files are written atomically (temporary file, fsync, rename) and never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmix import crypto
from zmix.errors import ConfigError
from zmix.topology import Topology, entity_id


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """What everybody may know about a node or client."""

    name: str
    id: bytes
    public_key: bytes
    curve_public: bytes


@dataclass(frozen=True, slots=True)
class PrivateIdentity:
    """A node's or client's own keys."""

    name: str
    id: bytes
    public_key: bytes
    private_key: bytes
    curve_public: bytes
    curve_private: bytes

    def public(self) -> PublicIdentity:
        """Return the public half."""
        return PublicIdentity(self.name, self.id, self.public_key, self.curve_public)


def _write_new(path: Path, data: dict[str, str], mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _generate(network: str, name: str, role: str) -> tuple[dict[str, str], dict[str, str]]:
    pk, sk = crypto.x25519_keypair()
    cpk, csk = crypto.x25519_keypair()
    public = {"name": name, "role": role, "id": entity_id(network, name).hex(),
              "public_key": pk.hex(), "curve_public": cpk.hex()}
    return public, {**public, "private_key": sk.hex(), "curve_private": csk.hex()}


def ensure_keys(state_dir: Path, topology: Topology,
                only: Collection[str] | None = None) -> list[str]:
    """Generate the keys of the members in scope that have none; return their names.

    In scope are every node and client of ``topology``, or, with ``only`` (``zmix-up --only``),
    just the nodes named there. A member whose public file exists but whose private file does
    not has its keys on another host: nothing is generated for it, and no existing key file is
    ever replaced. A public file lost while its private file survived (a crash between the two
    writes, a careless ``rm``) is written again from the private file, which keeps the identity.
    Copies the topology file to ``state_dir/topology.yaml`` if there is none. Raises ConfigError
    if the state directory holds another network's topology (before writing anything).
    """
    public_dir, private_dir = state_dir / "public", state_dir / "private"
    state_dir.mkdir(parents=True, exist_ok=True)
    _check_or_copy_topology(state_dir, topology)
    public_dir.mkdir(exist_ok=True)
    private_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private_dir, 0o700)
    members = [(n.name, n.role.value) for n in topology.nodes()]
    members += [(c.name, "client") for c in topology.clients]
    generated = []
    for name, role in members:
        if only is not None and name not in only:
            continue
        public, private = public_dir / f"{name}.json", private_dir / f"{name}.json"
        if private.exists():
            if not public.exists():
                _restore_public(state_dir, topology.network, name, role)
            continue
        if public.exists():  # generated elsewhere: new keys here would split the network
            continue
        public_data, private_data = _generate(topology.network, name, role)
        _write_new(private, private_data, 0o600)
        _write_new(public, public_data, 0o644)
        generated.append(name)
    return generated


def create_private(state_dir: Path, network: str, name: str, role: str) -> PrivateIdentity:
    """Generate and write the keys of a member that no topology declares (a client registering
    at run time); only the private file is written. Raises FileExistsError if it exists."""
    private_dir = state_dir / "private"
    private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = private_dir / f"{name}.json"
    if path.exists():
        raise FileExistsError(path)
    _, private = _generate(network, name, role)
    _write_new(path, private, 0o600)
    return load_private(state_dir, name)


def _restore_public(state_dir: Path, network: str, name: str, role: str) -> None:
    own = load_private(state_dir, name)
    check_id(state_dir / "private" / f"{name}.json", name, network, own.id)
    public = {"name": name, "role": role, "id": own.id.hex(), "public_key": own.public_key.hex(),
              "curve_public": own.curve_public.hex()}
    _write_new(state_dir / "public" / f"{name}.json", public, 0o644)


def _check_or_copy_topology(state_dir: Path, topology: Topology) -> None:
    copy = state_dir / "topology.yaml"
    if not copy.exists():
        tmp = copy.with_name(".topology.yaml.tmp")
        shutil.copyfile(topology.path, tmp)
        os.replace(tmp, copy)
        return
    if Path(topology.path).resolve() == copy.resolve():
        return
    # Imported here: the key directory's types (used by zmix.network) need no YAML reader.
    from zmix.topology_yaml import load_topology
    existing = load_topology(copy)
    if existing.network != topology.network:
        raise ConfigError(topology.path, "network", f"the state directory {state_dir} belongs to "
                          f"network {existing.network!r}, not {topology.network!r}; use --state")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """Return the JSON object in ``path`` (a ``what``, for the messages); ConfigError if the
    file is missing, unreadable or holds something else."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "(file)", f"no {what}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), "(file)", f"unreadable {what}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "(file)", f"a {what} must hold a JSON object")
    return data


def hex_field(path: Path, data: dict[str, Any], key: str, size: int) -> bytes:
    """Return field ``key`` of ``data`` (read from ``path``), ``size`` bytes in hexadecimal."""
    try:
        value = bytes.fromhex(data[key])
    except (KeyError, ValueError, TypeError):
        raise ConfigError(str(path), key, "missing or not hexadecimal") from None
    if len(value) != size:
        raise ConfigError(str(path), key, f"must be {size} bytes, got {len(value)}")
    return value


def check_id(path: Path, name: str, network: str, ident: bytes) -> None:
    """Raise ConfigError (naming ``path``) unless ``ident`` is the id of ``name`` in ``network``."""
    if ident != entity_id(network, name):
        raise ConfigError(str(path), "id", f"is not the id of {name!r} in network {network!r}")


def load_private(state_dir: Path, name: str) -> PrivateIdentity:
    """Return ``name``'s own keys; ConfigError if missing, malformed or readable by others."""
    path = state_dir / "private" / f"{name}.json"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(str(path), "(file)", f"no private key file for {name!r}; copy private/"
                          f"{name}.json (mode 0600) from the state directory where the keys were "
                          "made") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(str(path), "(file)", f"readable by other users (mode "
                          f"{stat.S_IMODE(mode):o}); run: chmod 600 {path}")
    data = read_json_object(path, f"key file for {name!r}")
    identity = PrivateIdentity(name, hex_field(path, data, "id", 16),
                               hex_field(path, data, "public_key", 32),
                               hex_field(path, data, "private_key", 32),
                               hex_field(path, data, "curve_public", 32),
                               hex_field(path, data, "curve_private", 32))
    if crypto.x25519_base(identity.private_key) != identity.public_key:
        raise ConfigError(str(path), "private_key", "does not match public_key")
    if crypto.x25519_base(identity.curve_private) != identity.curve_public:
        raise ConfigError(str(path), "curve_private", "does not match curve_public")
    return identity


def load_directory(state_dir: Path, topology: Topology) -> dict[str, PublicIdentity]:
    """Return the public keys of every node and client; ConfigError if one is missing or wrong
    (a missing one names the file to copy from the host where that member's keys were made)."""
    directory = {}
    for name in topology.names():
        path = state_dir / "public" / f"{name}.json"
        if not path.exists():
            raise ConfigError(str(path), "(file)", f"no key file for {name!r}; copy public/"
                              f"{name}.json from the state directory where the keys were made")
        data = read_json_object(path, f"key file for {name!r}")
        ident = PublicIdentity(name, hex_field(path, data, "id", 16),
                               hex_field(path, data, "public_key", 32),
                               hex_field(path, data, "curve_public", 32))
        check_id(path, name, topology.network, ident.id)
        directory[name] = ident
    return directory
