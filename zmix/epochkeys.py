"""A node's Sphinx keys, one X25519 pair per epoch, on disk (docs/pki.md, "Key files").

```
STATE/nodes/NAME/sphinx/           mode 0700
  EPOCH.json                       {"epoch": EPOCH, "public_key": HEX, "private_key": HEX}; 0600
```

``EPOCH`` is the epoch number in decimal (:mod:`zmix.epochs`; negative before the origin). A key
file is written once, atomically (a temporary ``.EPOCH.json.tmp`` written and fsynced, renamed to
its name, the directory fsynced), and never overwritten: the public half may already be published,
so a new key for the same epoch would split the network. A temporary file left by a crash is
erased (as below) when the store is opened; it never held a published key.

Erasure (:meth:`EpochKeyStore.erase`) overwrites the file's bytes with zeros, fsyncs them, unlinks
the file, fsyncs the directory and zeroes the store's own copy of the private key. What that can
and cannot guarantee:

- It guarantees that the key is gone from the store's directory and from the store's memory: a
  later ``zmix-node`` (or anyone reading the file system through its names) cannot get it back,
  and the node itself can no longer process a packet built for that epoch.
- It cannot guarantee that no copy of the bytes survives on the device. Journaling and
  copy-on-write file systems (ext4 with ``data=journal``, btrfs, ZFS) and snapshots may keep old
  blocks; SSDs and flash remap writes (wear levelling), so the zeros may land in other cells than
  the key did; backups of the state directory keep what they copied. Put the state directory on
  an encrypted volume (its key outside the host's backups) for erasure to mean more than this.
- It cannot reach copies outside the store's bytearray: Python's immutable ``bytes`` and ``str``
  objects made while reading the file, generating the key and passing it to the Sphinx workers
  (each worker process holds its own copy until the node hands it the new key set) stay in freed
  memory until reused, and a page of memory may have been written to swap. Use encrypted swap, or
  none, on mix hosts.

Not sans-IO by nature (it is the key files), but it reads no clock: times are arguments.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from zmix import crypto
from zmix.epochs import EpochParams
from zmix.errors import ConfigError
from zmix.keys import hex_field, read_json_object

_KEY_FILE = re.compile(r"(-?[0-9]+)\.json")
_TEMP_FILE = re.compile(r"\.(-?[0-9]+)\.json\.tmp")


def key_directory(state_dir: Path, name: str) -> Path:
    """Return the directory of node ``name``'s epoch keys: ``STATE/nodes/NAME/sphinx``."""
    return state_dir / "nodes" / name / "sphinx"


class EpochKeyStore:
    """The Sphinx key pairs of one node, by epoch, kept in one directory.

    Opening the store creates the directory (0700) if needed, erases leftover temporary files and
    loads every key file; raises ConfigError naming the file if one is corrupt, readable by other
    users or holds a private key that does not match its public key.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._public: dict[int, bytes] = {}
        self._private: dict[int, bytearray] = {}
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # mkdir's mode is cut by the umask, and may be older
        try:
            self._load()
        except ConfigError:  # leave no key of a store that will not exist in memory
            for key in self._private.values():
                key[:] = bytes(len(key))
            raise

    # ------------------------------------------------------------------ reading

    def epochs(self) -> list[int]:
        """Return the epochs whose keys the store holds, in increasing order."""
        return sorted(self._public)

    def public_keys(self) -> dict[int, bytes]:
        """Return the public key of every epoch held, by epoch (increasing)."""
        return {epoch: self._public[epoch] for epoch in self.epochs()}

    def private(self, epoch: int) -> bytes:
        """Return the private key of ``epoch`` (a copy the store cannot erase later); KeyError if
        the store holds none (never made, or erased)."""
        return bytes(self._private[epoch])

    def accepted(self, params: EpochParams, now: float) -> list[tuple[int, bytes]]:
        """Return ``(epoch, private key)`` for the epochs a node tries at ``now``
        (:meth:`EpochParams.accepted`, in its order), leaving out those the store does not hold."""
        return [(e, self.private(e)) for e in params.accepted(now) if e in self._private]

    # ------------------------------------------------------------------ writing

    def ensure(self, epochs: Iterable[int]) -> list[int]:
        """Generate and write a key pair for every epoch in ``epochs`` that has none; return
        those epochs, in increasing order. An existing key is never replaced."""
        made = []
        for epoch in sorted(set(epochs)):
            if epoch in self._public:
                continue
            public, private = crypto.x25519_keypair()
            self._write(epoch, public, private)
            self._public[epoch] = public
            self._private[epoch] = bytearray(private)
            made.append(epoch)
        return made

    def erase(self, epoch: int) -> None:
        """Erase the key of ``epoch``: zero the file's bytes on disk, unlink it, zero the store's
        copy in memory (the module docstring says what this guarantees). Does nothing if the
        store holds no such key."""
        key = self._private.pop(epoch, None)
        self._public.pop(epoch, None)
        if key is not None:
            key[:] = bytes(len(key))
        path = self._path(epoch)
        if path.exists():
            _shred(path)
            _fsync_directory(self.directory)

    def erase_expired(self, params: EpochParams, now: float) -> list[int]:
        """Erase every key that must be gone at ``now`` (:meth:`EpochParams.expired`); return
        their epochs, in increasing order."""
        expired = [e for e in self.epochs() if params.expired(e, now)]
        for epoch in expired:
            self.erase(epoch)
        return expired

    # ------------------------------------------------------------------ files

    def _path(self, epoch: int) -> Path:
        return self.directory / f"{epoch}.json"

    def _write(self, epoch: int, public: bytes, private: bytes) -> None:
        path = self._path(epoch)
        if path.exists():  # another process writes here: the node lock should have stopped it
            raise ConfigError(str(path), "(file)", "appeared while the node was making it; is "
                              "another process using this state directory?")
        tmp = self.directory / f".{epoch}.json.tmp"
        if tmp.exists():
            _shred(tmp)
        data = {"epoch": epoch, "public_key": public.hex(), "private_key": private.hex()}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_directory(self.directory)

    def _load(self) -> None:
        for path in sorted(self.directory.iterdir()):
            if _TEMP_FILE.fullmatch(path.name):  # a crash between write and rename
                _shred(path)
                _fsync_directory(self.directory)
                continue
            match = _KEY_FILE.fullmatch(path.name)
            if match is None or not path.is_file():
                raise ConfigError(str(path), "(file)", "not an epoch key file (EPOCH.json); "
                                  "move it out of the key directory")
            epoch, public, private = _read_key_file(path, int(match.group(1)))
            self._public[epoch] = public
            self._private[epoch] = bytearray(private)


def _read_key_file(path: Path, epoch: int) -> tuple[int, bytes, bytes]:
    """Return ``(epoch, public, private)`` from key file ``path``; ConfigError naming the file
    and the field if anything is wrong."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(str(path), "(file)", f"readable by other users (mode "
                          f"{stat.S_IMODE(mode):o}); run: chmod 600 {path}")
    data = read_json_object(path, "epoch key file")
    named = data.get("epoch")
    if isinstance(named, bool) or named != epoch:
        raise ConfigError(str(path), "epoch", f"must be {epoch}, the number in the file name, "
                          f"got {named!r}")
    public = hex_field(path, data, "public_key", 32)
    private = hex_field(path, data, "private_key", 32)
    if crypto.x25519_base(private) != public:
        raise ConfigError(str(path), "private_key", "does not match public_key")
    unknown = sorted(set(data) - {"epoch", "public_key", "private_key"})
    if unknown:
        raise ConfigError(str(path), unknown[0], "unknown key (known here: epoch, private_key, "
                          "public_key)")
    return epoch, public, private


def _shred(path: Path) -> None:
    """Overwrite ``path``'s bytes with zeros, fsync them, and unlink it."""
    fd = os.open(path, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        written = 0
        while written < size:
            written += os.write(fd, bytes(min(size - written, 1 << 16)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def _fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
