"""Contacts: clients that the topology does not declare, admitted by a provider at run time.

A client registered with ``zmix-register`` (open registration, docs/protocol.md) is in no
topology file, so other clients learn of it from its *contact*: its public identity plus the
provider that keeps its mail, one JSON file per client in ``STATE/contacts/NAME.json``::

    {"name", "role": "client", "id", "public_key", "curve_public", "provider"}      (keys in hex)

``zmix-register`` writes the file in its own state directory; copy it into another state
directory's ``contacts/`` to let that directory's clients write to it (and check the messages it
signs). A contact holds nothing secret.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from zmix.errors import ConfigError
from zmix.keys import PublicIdentity, check_id, hex_field, read_json_object
from zmix.topology import ClientSpec, Topology, valid_name


@dataclass(frozen=True, slots=True)
class Contact:
    """A registered client: who it is, its public keys and its provider."""

    name: str
    id: bytes
    public_key: bytes
    curve_public: bytes
    provider: str

    def spec(self) -> ClientSpec:
        """Return the contact as a client of the topology."""
        return ClientSpec(self.name, self.id, self.provider)

    def identity(self) -> PublicIdentity:
        """Return the contact's public identity."""
        return PublicIdentity(self.name, self.id, self.public_key, self.curve_public)


def contact_path(state_dir: Path, name: str) -> Path:
    """Return where the contact of client ``name`` is kept."""
    return state_dir / "contacts" / f"{name}.json"


def write_contact(state_dir: Path, contact: Contact) -> Path:
    """Write ``contact`` atomically (temporary file, fsync, rename); return its path."""
    path = contact_path(state_dir, contact.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"name": contact.name, "role": "client", "id": contact.id.hex(),
            "public_key": contact.public_key.hex(), "curve_public": contact.curve_public.hex(),
            "provider": contact.provider}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_contacts(state_dir: Path, topology: Topology,
                  problems: list[ConfigError] | None = None) -> list[Contact]:
    """Return every contact in ``state_dir/contacts``, sorted by name.

    A contact that is not valid JSON, lacks a field, names a member of the topology, has another
    network's id or a provider that is not one of the topology's is a ConfigError naming the
    file, the key and the problem: raised, or with ``problems`` given, appended there and the
    contact skipped (one bad file must not stop every client of a state directory).
    """
    folder = state_dir / "contacts"
    if not folder.is_dir():
        return []
    reserved = set(topology.names())
    providers = {p.name for p in topology.providers}
    contacts = []
    for path in sorted(folder.glob("*.json")):
        try:
            contact = read_contact(path, topology.network)
            if contact.name in reserved:
                raise ConfigError(str(path), "name", f"{contact.name!r} is already a member of "
                                  "the topology")
            if contact.provider not in providers:
                raise ConfigError(str(path), "provider", f"{contact.provider!r} is not a "
                                  f"provider of network {topology.network!r}")
        except ConfigError as exc:
            if problems is None:
                raise
            problems.append(exc)
            continue
        contacts.append(contact)
    return contacts


def with_contacts(topology: Topology, directory: dict[str, PublicIdentity],
                  contacts: list[Contact]) -> tuple[Topology, dict[str, PublicIdentity]]:
    """Return the topology and key directory extended by ``contacts``, as a client sees them."""
    extended = dataclasses.replace(
        topology, clients=topology.clients + tuple(c.spec() for c in contacts))
    return extended, {**directory, **{c.name: c.identity() for c in contacts}}


def read_contact(path: Path, network: str) -> Contact:
    """Return the contact in ``path``; ConfigError naming the file, key and problem if it is
    unreadable, lacks a field or has another network's id."""
    data = read_json_object(path, "contact")
    name, provider = data.get("name"), data.get("provider")
    if not isinstance(name, str) or not valid_name(name) or path.name != f"{name}.json":
        raise ConfigError(str(path), "name", f"must be a valid client name matching the file "
                          f"name, got {name!r}")
    if data.get("role") != "client":
        raise ConfigError(str(path), "role", f"must be 'client', got {data.get('role')!r}")
    if not isinstance(provider, str):
        raise ConfigError(str(path), "provider", "missing or not a name")
    ident = hex_field(path, data, "id", 16)
    check_id(path, name, network, ident)
    return Contact(name, ident, hex_field(path, data, "public_key", 32),
                   hex_field(path, data, "curve_public", 32), provider)
