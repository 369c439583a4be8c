"""Key files in the state directory: one public and one private JSON file per node and client.

Every node and client has two X25519 key pairs: ``public_key`` (Sphinx on nodes, end-to-end
``crypto_box`` on clients) and ``curve_public`` (the ZeroMQ CURVE key of its links); keeping them
apart means a link key compromise does not open packets and the other way round.

```
STATE/public/NAME.json    {"name", "role", "id", "public_key", "curve_public"}        (hex)
STATE/private/NAME.json   the same plus "private_key" and "curve_private"; mode 0600, dir 0700
```
Every node and every directory authority also has a long-term Ed25519 identity key (it signs
descriptors and network documents, docs/pki.md), in files of its own beside those (clients have
none):
```
STATE/public/NAME.identity.json    {"name", "identity_public"}                       (hex)
STATE/private/NAME.identity.json   the same plus "identity_secret" (64 bytes); mode 0600
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
from zmix.topology import Topology, entity_id, valid_name


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


@dataclass(frozen=True, slots=True)
class IdentityKey:
    """A node's or authority's long-term Ed25519 identity key pair (``secret`` is libsodium's
    64-byte form: seed, then public key)."""

    name: str
    public: bytes
    secret: bytes


IDENTITY_SUFFIX = ".identity"  # NAME.identity.json beside NAME.json


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
    Nodes get an Ed25519 identity key (``NAME.identity.json``) with their keys; a node with both
    key files here but no identity file (a state directory made before identity keys) gets one.
    Copies the topology file to ``state_dir/topology.yaml`` if there is none. Raises ConfigError
    if the state directory holds another network's topology (before writing anything).
    """
    _check_no_identity_names(topology.path, topology.names())
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
                # public/ is being copied in, not complete: leave the identity key alone too,
                # or a host would make a second identity for a node the first host gave one
                _restore_public(state_dir, topology.network, name, role)
            elif role != "client":  # keys made before identity keys existed get one now
                _ensure_identity(state_dir, name)
            continue
        if public.exists():  # generated elsewhere: new keys here would split the network
            continue
        public_data, private_data = _generate(topology.network, name, role)
        _write_new(private, private_data, 0o600)
        _write_new(public, public_data, 0o644)
        if role != "client":
            _ensure_identity(state_dir, name)
        generated.append(name)
    return generated


def ensure_authority_keys(state_dir: Path, names: Collection[str]) -> list[str]:
    """Generate the identity key files of the directory authorities ``names`` that have none;
    return the names of those generated.

    The same rules as :func:`ensure_keys`: an authority whose public identity file exists but
    whose private one does not has its key on another host and gets nothing here; a lost public
    file is written again from the private one; no existing file is replaced. Raises ConfigError
    for a name that is not valid (docs/topology.md) or ends in ``.identity``.
    """
    for name in names:
        if not valid_name(name):
            raise ConfigError(str(state_dir), "authorities", f"{name!r} is not a valid name")
    _check_no_identity_names(str(state_dir), names)
    (state_dir / "public").mkdir(parents=True, exist_ok=True)
    private_dir = state_dir / "private"
    private_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private_dir, 0o700)
    return [name for name in names if _ensure_identity(state_dir, name)]


def _check_no_identity_names(path: str, names: Collection[str]) -> None:
    # A member called "x.identity" would have its key file at x.identity.json, where member x's
    # identity key lives: refuse it before anything is written.
    for name in names:
        if name.endswith(IDENTITY_SUFFIX):
            raise ConfigError(path, "name", f"{name!r}: names ending in {IDENTITY_SUFFIX!r} are "
                              "reserved for the identity key files")


def _identity_paths(state_dir: Path, name: str) -> tuple[Path, Path]:
    """Return the (public, private) identity key files of ``name``."""
    file = f"{name}{IDENTITY_SUFFIX}.json"
    return state_dir / "public" / file, state_dir / "private" / file


def _ensure_identity(state_dir: Path, name: str) -> bool:
    """Make ``name``'s identity key files if neither exists (True), restore a lost public file
    from the private one, and leave a key made on another host alone (public file only)."""
    public, private = _identity_paths(state_dir, name)
    if private.exists():
        if not public.exists():
            own = load_identity(state_dir, name)
            _write_new(public, {"name": name, "identity_public": own.public.hex()}, 0o644)
        return False
    if public.exists():  # made elsewhere: a new key here would be a second identity
        return False
    pk, sk = crypto.ed25519_keypair()
    _write_new(private, {"name": name, "identity_public": pk.hex(),
                         "identity_secret": sk.hex()}, 0o600)
    _write_new(public, {"name": name, "identity_public": pk.hex()}, 0o644)
    return True


def load_identity(state_dir: Path, name: str) -> IdentityKey:
    """Return ``name``'s own identity key pair; ConfigError if the file is missing, malformed,
    readable by others, names another member, or its secret does not match its public key."""
    _, path = _identity_paths(state_dir, name)
    _check_private_mode(path, name, f"private/{name}{IDENTITY_SUFFIX}.json")
    data = read_json_object(path, f"identity key file for {name!r}")
    _check_name(path, data, name)
    key = IdentityKey(name, hex_field(path, data, "identity_public", crypto.ED25519_PUBLIC_BYTES),
                      hex_field(path, data, "identity_secret", crypto.ED25519_SECRET_BYTES))
    if crypto.ed25519_public(key.secret) != key.public or key.secret[32:] != key.public:
        raise ConfigError(str(path), "identity_secret", "does not match identity_public")
    return key


def load_identity_public(state_dir: Path, name: str) -> bytes:
    """Return ``name``'s public identity key (32 bytes) from its public file; ConfigError if the
    file is missing (naming the file to copy), malformed or names another member."""
    path, _ = _identity_paths(state_dir, name)
    if not path.exists():
        raise ConfigError(str(path), "(file)", f"no identity key file for {name!r}; copy public/"
                          f"{name}{IDENTITY_SUFFIX}.json from the state directory where the keys "
                          "were made")
    data = read_json_object(path, f"identity key file for {name!r}")
    _check_name(path, data, name)
    return hex_field(path, data, "identity_public", crypto.ED25519_PUBLIC_BYTES)


def _check_name(path: Path, data: dict[str, Any], name: str) -> None:
    if data.get("name") != name:
        raise ConfigError(str(path), "name", f"is {data.get('name')!r}, not {name!r}")


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
    _check_private_mode(path, name, f"private/{name}.json")
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


def _check_private_mode(path: Path, name: str, relative: str) -> None:
    """Raise ConfigError if the private file ``path`` is missing or readable by others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(str(path), "(file)", f"no private key file for {name!r}; copy "
                          f"{relative} (mode 0600) from the state directory where the keys were "
                          "made") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(str(path), "(file)", f"readable by other users (mode "
                          f"{stat.S_IMODE(mode):o}); run: chmod 600 {path}")


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
