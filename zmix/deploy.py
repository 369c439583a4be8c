"""Deployment bundles: ``zmix-up TOPOLOGY --export-hosts DIR`` writes one folder per host.

``DIR/hosts/HOST/`` is a ready state folder for the host ``HOST`` (a ``host`` string of the
topology, as written): the topology copy, ``public/`` whole, ``private/`` with the key files of
that host's nodes and authorities only, each of its authorities' allowlist, and the files that
run them there: systemd units (``systemd/``), the ``sysusers.d`` file that makes their user, a
``Dockerfile`` and a ``compose.yaml``. ``DIR/clients/NAME/`` is a state folder for one client.
docs/deploy.md walks an operator through it.

:func:`plan` is the pure part: a topology in, what goes into each folder out (the service files
as text). :func:`write_bundles` is the writer: it copies the key files from a state folder and
writes the plan, each folder whole or not at all, never over an existing one.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from zmix import __version__
from zmix.errors import ConfigError, LocalMisuse, ZmixError
from zmix.keys import IDENTITY_SUFFIX
from zmix.topology import Role, Topology

DEFAULT_ZMIX_BIN = PurePosixPath("/opt/zmix/bin")  # where docs/deploy.md installs zmix
STATE_ROOT = PurePosixPath("/var/lib/zmix")  # a host's state folder: /var/lib/zmix/NETWORK
RUN_DIR = PurePosixPath("/run/zmix")  # TMPDIR of the services: their ipc sockets live here
USER = "zmix"  # the dedicated user of the services (systemd and container)
CONTAINER_UID = 10001  # the user's uid and gid in the image: the state folder's owner
IMAGE = f"zmix:{__version__}"
BASE_IMAGE = "python:3.11-slim-bookworm"
HOSTS, CLIENTS = "hosts", "clients"
SYSTEMD_DIR = "systemd"
SYSUSERS_FILE = "sysusers.d/zmix.conf"
DOCKERFILE = "Dockerfile"
COMPOSE_FILE = "compose.yaml"
TOPOLOGY_FILE = "topology.yaml"
ALLOWLIST = "allowlist"  # STATE/authorities/NAME/allowlist (zmix.runtime.authority.ALLOWLIST)


class ExportRefused(ZmixError):
    """The bundles cannot be written as asked (a folder of an earlier export is in the way)."""


class Kind(enum.Enum):
    """What a member of a host runs."""

    NODE = "zmix-node"
    AUTHORITY = "zmix-authority"


@dataclass(frozen=True, slots=True)
class Member:
    """One node or directory authority of a host."""

    name: str
    kind: Kind
    what: str  # for humans: "provider", "mixnode (layer 1)", "directory authority"

    @property
    def private_files(self) -> tuple[str, ...]:
        """Return the names of its files in ``private/`` (an authority has its identity only)."""
        identity = f"{self.name}{IDENTITY_SUFFIX}.json"
        return (identity,) if self.kind is Kind.AUTHORITY else (f"{self.name}.json", identity)


@dataclass(frozen=True, slots=True)
class HostBundle:
    """What goes into ``DIR/hosts/HOST/`` besides the topology copy and ``public/``."""

    host: str
    members: tuple[Member, ...]
    files: tuple[tuple[str, str], ...]  # (path relative to the folder, text): service files

    @property
    def private_files(self) -> tuple[str, ...]:
        """Return the names of the private key files this host gets, and no other."""
        return tuple(f for member in self.members for f in member.private_files)

    @property
    def authorities(self) -> tuple[str, ...]:
        """Return the names of the directory authorities on this host."""
        return tuple(m.name for m in self.members if m.kind is Kind.AUTHORITY)


@dataclass(frozen=True, slots=True)
class ClientBundle:
    """What goes into ``DIR/clients/NAME/``: the topology copy, ``public/`` and its own key."""

    name: str

    @property
    def private_files(self) -> tuple[str, ...]:
        """Return the name of the client's one private file (clients have no identity key)."""
        return (f"{self.name}.json",)


@dataclass(frozen=True, slots=True)
class Plan:
    """Every folder of one export."""

    network: str
    hosts: tuple[HostBundle, ...]
    clients: tuple[ClientBundle, ...]

    def folders(self) -> tuple[PurePosixPath, ...]:
        """Return the folders the export makes, relative to DIR."""
        return (tuple(PurePosixPath(HOSTS, h.host) for h in self.hosts)
                + tuple(PurePosixPath(CLIENTS, c.name) for c in self.clients))

    def loopback_hosts(self) -> tuple[str, ...]:
        """Return the hosts that no other machine can reach (:func:`is_loopback`)."""
        return tuple(h.host for h in self.hosts if is_loopback(h.host))


# ==================================================================== the plan (pure)


def is_loopback(host: str) -> bool:
    """Return True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``, and an
    IPv4-mapped ``::ffff:127.x.y.z``), brackets or not."""
    bare = host.strip("[]").lower().rstrip(".")
    if bare == "localhost" or bare.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def folder_problem(host: str) -> str | None:
    """Return why ``host`` cannot name a folder of its own under ``DIR/hosts/`` (None if it
    can): the topology allows any host without spaces, a folder name is narrower."""
    if host in ("", ".", ".."):
        return "is not a folder name"
    if "/" in host or "\\" in host:
        return "holds a slash"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in host):
        return "holds a control character"
    return None


def zmix_bin_problem(folder: str) -> str | None:
    """Return why ``folder`` cannot be the zmix commands' folder of the units (None if it can):
    it must be absolute, and free of what systemd reads specially in ExecStart= (white space and
    quotes split or join words, ``%`` starts a specifier, ``$`` a variable, ``\\`` an escape)."""
    if not folder.startswith("/"):
        return "must be absolute"
    if any(c.isspace() or c in "\"'%$\\" or ord(c) < 0x20 for c in folder):
        return "must hold no white space, quotes, '%', '$' or backslashes"
    return None


def members_by_host(topology: Topology) -> dict[str, list[Member]]:
    """Return the nodes and authorities of each host (a ``host`` string as written), hosts in
    the order they first appear, members in the topology's order (nodes, then authorities)."""
    hosts: dict[str, list[Member]] = {}
    for node in topology.nodes():
        what = "provider" if node.role is Role.PROVIDER else f"mixnode (layer {node.layer})"
        hosts.setdefault(node.host, []).append(Member(node.name, Kind.NODE, what))
    for authority in topology.authorities:
        hosts.setdefault(authority.host, []).append(
            Member(authority.name, Kind.AUTHORITY, "directory authority"))
    return hosts


def plan(topology: Topology, zmix_bin: PurePosixPath = DEFAULT_ZMIX_BIN) -> Plan:
    """Return what an export of ``topology`` writes; the systemd units run the commands in
    ``zmix_bin``, an absolute folder on the hosts (LocalMisuse if it is relative). Raises
    ConfigError (naming the topology) for a host that cannot name a folder."""
    problem = zmix_bin_problem(str(zmix_bin))
    if problem is not None:
        raise LocalMisuse(f"the folder of the zmix commands {problem}, not {zmix_bin}")
    hosts = []
    for host, members in members_by_host(topology).items():
        problem = folder_problem(host)
        if problem is not None:
            raise ConfigError(topology.path, "host", f"{host!r} (of {members[0].name}) "
                              f"{problem}, so --export-hosts cannot give it a folder")
        hosts.append(HostBundle(host, tuple(members),
                                service_files(topology.network, host, members, zmix_bin)))
    return Plan(topology.network, tuple(hosts),
                tuple(ClientBundle(c.name) for c in topology.clients))


def service_files(network: str, host: str, members: Sequence[Member],
                  zmix_bin: PurePosixPath) -> tuple[tuple[str, str], ...]:
    """Return the service files of one host: a unit per member and their target, the
    sysusers.d file, the Dockerfile and compose.yaml, as (relative path, text)."""
    units = [(f"{SYSTEMD_DIR}/{unit_name(network, m.name)}",
              service_unit(network, host, m, zmix_bin)) for m in members]
    return (*units,
            (f"{SYSTEMD_DIR}/{target_name(network)}", host_target(network, host, members)),
            (SYSUSERS_FILE, sysusers()),
            (DOCKERFILE, dockerfile(network, host)),
            (COMPOSE_FILE, compose(network, host, members)))


def unit_name(network: str, name: str) -> str:
    """Return the systemd unit of member ``name``: ``zmix-NETWORK-NAME.service``."""
    return f"zmix-{network}-{name}.service"


def target_name(network: str) -> str:
    """Return the target grouping a host's units: ``zmix-NETWORK.target``."""
    return f"zmix-{network}.target"


def state_path(network: str) -> PurePosixPath:
    """Return the state folder on a host: ``/var/lib/zmix/NETWORK``."""
    return STATE_ROOT / network


def command(member: Member, network: str, zmix_bin: PurePosixPath) -> list[str]:
    """Return the command line that runs ``member`` from the host's state folder."""
    return [str(zmix_bin / member.kind.value), "--state", str(state_path(network)),
            "--name", member.name]


# Hardening of every unit. The services need the network (INET, INET6; NETLINK for the
# resolver), their ipc sockets (UNIX), their state folder and /run/zmix; nothing else.
HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
CapabilityBoundingSet=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
"""


def service_unit(network: str, host: str, member: Member, zmix_bin: PurePosixPath) -> str:
    """Return the systemd unit that runs ``member`` as the dedicated user."""
    state = state_path(network)
    return f"""\
# zmix network {network}, host {host}: {member.what} {member.name}.
# Written by zmix-up --export-hosts; install into /etc/systemd/system/ (docs/deploy.md).
[Unit]
Description=zmix {member.what} {member.name} of network {network}
After=network-online.target
Wants=network-online.target
PartOf={target_name(network)}

[Service]
Type=exec
User={USER}
Group={USER}
ExecStart={" ".join(command(member, network, zmix_bin))}
# {state}, made and given to the user by systemd; ProtectSystem=strict leaves it writable.
StateDirectory=zmix/{network}
StateDirectoryMode=0750
# The control and worker sockets are made under TMPDIR: in /run/zmix (kept while any unit of
# the network runs) rather than the private /tmp, so that zmix-status on this host reaches them.
RuntimeDirectory=zmix
RuntimeDirectoryMode=0750
RuntimeDirectoryPreserve=yes
Environment=TMPDIR={RUN_DIR}
UMask=0077
# SIGTERM stops it cleanly; the process stops its own workers, so only it gets the signal.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=30s
Restart=on-failure
RestartSec=5s
LimitNOFILE=65536
{HARDENING}
[Install]
WantedBy={target_name(network)}
"""


def host_target(network: str, host: str, members: Sequence[Member]) -> str:
    """Return the target that starts and stops every unit of one host together."""
    units = " ".join(unit_name(network, m.name) for m in members)
    return f"""\
# zmix network {network}, host {host}: every node and authority of this host.
# Written by zmix-up --export-hosts; install into /etc/systemd/system/ (docs/deploy.md).
[Unit]
Description=zmix network {network}: the nodes and authorities of this host
Wants={units}

[Install]
WantedBy=multi-user.target
"""


def sysusers() -> str:
    """Return the sysusers.d file that makes the services' user and group."""
    return f"""\
# The user of the zmix services. Install as /etc/sysusers.d/zmix.conf, then run
# systemd-sysusers (or, without it: useradd --system --user-group --home-dir {STATE_ROOT}
# --shell /usr/sbin/nologin {USER}).
u {USER} - "zmix mixnet" {STATE_ROOT} /usr/sbin/nologin
"""


def dockerfile(network: str, host: str) -> str:
    """Return the Dockerfile of the image that compose.yaml runs: zmix built from a source
    checkout (the build context), run as the unprivileged user."""
    return f"""\
# zmix network {network}, host {host}: the image compose.yaml runs. Written by
# zmix-up --export-hosts (docs/deploy.md). No package registry holds zmix: the build context is
# a zmix source checkout. In this folder:
#   docker build -t {IMAGE} -f {DOCKERFILE} /path/to/zmix
FROM {BASE_IMAGE} AS build
COPY . /src
RUN python3 -m venv {DEFAULT_ZMIX_BIN.parent} \\
    && {DEFAULT_ZMIX_BIN}/pip install --no-cache-dir /src

FROM {BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends libsodium23 \\
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid {CONTAINER_UID} {USER} \\
    && useradd --system --uid {CONTAINER_UID} --gid {USER} --home-dir {STATE_ROOT} \\
       --shell /usr/sbin/nologin {USER} \\
    && install -d -o {USER} -g {USER} -m 0750 {RUN_DIR} {STATE_ROOT}
COPY --from=build {DEFAULT_ZMIX_BIN.parent} {DEFAULT_ZMIX_BIN.parent}
ENV PATH={DEFAULT_ZMIX_BIN}:$PATH TMPDIR={RUN_DIR}
USER {USER}
STOPSIGNAL SIGTERM
"""


# The container's health: the member answers "ping" on its control socket (named in the file
# given as the argument), as zmix-status asks it.
HEALTH_PROBE = ("import pathlib, sys; from zmix.runtime.metrics import query_control; "
                "sys.exit(query_control(pathlib.Path(sys.argv[1]), 'ping', 5.0) != 'pong')")


def compose(network: str, host: str, members: Sequence[Member]) -> str:
    """Return compose.yaml: one service per member of the host, on the host's network (the
    members bind the host's own address), this folder mounted as the state folder."""
    state = state_path(network)
    services = {}
    for member in members:
        control = state / ("nodes" if member.kind is Kind.NODE else "authorities") / \
            member.name / "control"
        services[member.name] = {
            "image": IMAGE,
            "command": command(member, network, DEFAULT_ZMIX_BIN),
            "network_mode": "host",
            "user": f"{CONTAINER_UID}:{CONTAINER_UID}",
            "init": True,
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "restart": "unless-stopped",
            "stop_signal": "SIGTERM",
            "stop_grace_period": "30s",
            "environment": {"TMPDIR": str(RUN_DIR)},
            "volumes": [f".:{state}", f"zmix-run:{RUN_DIR}"],
            "healthcheck": {"test": ["CMD", str(DEFAULT_ZMIX_BIN / "python3"), "-c",
                                     HEALTH_PROBE, str(control)],
                            "interval": "30s", "timeout": "10s", "retries": 3,
                            "start_period": "90s"},
        }
    header = (f"# zmix network {network}, host {host}: one service per node and authority of "
              "this host.\n# Written by zmix-up --export-hosts (docs/deploy.md). This folder is "
              f"the host's state folder,\n# mounted at {state}; chown -R "
              f"{CONTAINER_UID}:{CONTAINER_UID} it. Build the image first:\n"
              f"#   docker build -t {IMAGE} -f {DOCKERFILE} /path/to/zmix\n"
              "# then: docker compose up -d\n")
    body = {"services": services, "volumes": {"zmix-run": {}}}
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=100)


# ==================================================================== the writer


def check_free(bundles: Plan, directory: Path) -> None:
    """Raise ExportRefused naming the first folder of the export that ``directory`` holds
    already: keys of two generations must never mix in one folder."""
    for folder in bundles.folders():
        path = directory / folder
        if path.exists() or path.is_symlink():
            raise ExportRefused(f"{path} exists already (an earlier export?): move it away "
                                "first, so that key files of two exports never mix")


def write_bundles(bundles: Plan, state_dir: Path, directory: Path,
                  allowlists: Callable[[Path, HostBundle], object]) -> list[Path]:
    """Write every folder of ``bundles`` into ``directory`` from the state folder ``state_dir``
    (which holds every key: zmix-up made or checked them); return the folders written.

    Each folder is assembled in a private temporary folder in ``directory`` and renamed into
    place whole. A host's authorities get the allowlist that ``state_dir`` holds for them, or
    else the one ``allowlists(folder, host)`` writes into the folder. Raises ExportRefused if a
    folder exists already (nothing is written), OSError if something cannot be read or written
    (no folder is left half written; those moved into place before stay).
    """
    check_free(bundles, directory)
    directory.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".zmix-export-", dir=directory))  # mode 0700
    try:
        for host in bundles.hosts:
            folder = work / HOSTS / host.host
            _state_folder(state_dir, folder, host.private_files)
            _allowlists(state_dir, folder, host)
            allowlists(folder, host)
            for relative, text in host.files:
                _write_new(folder / relative, text.encode(), 0o644)
        for client in bundles.clients:
            _state_folder(state_dir, work / CLIENTS / client.name, client.private_files)
        written = []
        for folder_name in bundles.folders():
            (directory / folder_name).parent.mkdir(exist_ok=True)
            os.rename(work / folder_name, directory / folder_name)
            written.append(directory / folder_name)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _state_folder(state_dir: Path, folder: Path, private_files: Sequence[str]) -> None:
    """Make ``folder`` a state folder: the topology copy, public/ whole, and of private/ only
    ``private_files`` (folder 0700, files 0600)."""
    folder.mkdir(parents=True)
    _write_new(folder / TOPOLOGY_FILE, (state_dir / TOPOLOGY_FILE).read_bytes(), 0o644)
    (folder / "public").mkdir()
    for path in sorted((state_dir / "public").iterdir()):
        if path.is_file() and not path.name.startswith("."):  # not an interrupted write
            _write_new(folder / "public" / path.name, path.read_bytes(), 0o644)
    (folder / "private").mkdir(mode=0o700)
    os.chmod(folder / "private", 0o700)  # whatever the umask
    for name in private_files:
        _write_new(folder / "private" / name, (state_dir / "private" / name).read_bytes(), 0o600)


def _allowlists(state_dir: Path, folder: Path, host: HostBundle) -> None:
    """Copy the allowlist ``state_dir`` holds for each authority of ``host``, if it has one
    (edited with zmix-authority allow and evict, it is the one in force)."""
    for name in host.authorities:
        source = state_dir / "authorities" / name / ALLOWLIST
        if source.is_file():
            (folder / "authorities" / name).mkdir(parents=True, exist_ok=True)
            _write_new(folder / "authorities" / name / ALLOWLIST, source.read_bytes(), 0o644)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to the new file ``path`` with ``mode``: a temporary file, fsync, then a
    hard link, which fails rather than replace a file that exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # whatever the umask
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
