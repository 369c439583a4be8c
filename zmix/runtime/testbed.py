"""A test bed of hosts on one machine: Linux network namespaces joined by a bridge.

Each distinct ``host`` address of a topology's nodes and authorities becomes a *host*: a network
namespace with one interface, ``eth0``, holding that address (/24), plugged by a veth pair into a
bridge. The bridge lives in a namespace of its own (the *switch*), so the machine's own namespace
gets no interface, address or route: nothing the test bed runs can reach or be reached from the
machine's real network. Addresses must lie in 198.51.100.0/24 (TEST-NET-2, RFC 5737: a range for
documentation that no network routes).

Each host runs its share of the topology with ``zmix-up --only`` from its own state folder, a
bundle written by ``zmix-up --export-hosts`` (docs/deploy.md), and the clients' folders from the
same export are where ``zmix-send``, ``zmix-recv`` and ``zmix-client`` run in a host.

Faults: a host's link pulled (its port on the bridge set down: the host keeps its address and
routes, and its packets go nowhere, as when a cable is pulled or a switch port dies) and put back;
a host crashed (every process in its namespace killed with SIGKILL) and started again; and, where
the kernel has the netem queueing discipline, delay and loss on a host's port.

Everything needs root (``CAP_NET_ADMIN`` and ``CAP_SYS_ADMIN``) and iproute2 (``ip``, ``tc``).
The namespaces are named ``PREFIX-sw`` and ``PREFIX-N``; a test bed found with the same prefix
(left by a killed run) is removed before a new one is made. A run's folder holds ``testbed.json``
(the hosts, what to start in each), the keys, the bundles and one ``zmix-up`` log per host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from zmix.errors import ZmixError
from zmix.topology import Topology

LOG = logging.getLogger(__name__)

SUBNET = ipaddress.ip_network("198.51.100.0/24")
PREFIX = "zmixtb"
BRIDGE = "br0"
STATE_FILE = "testbed.json"
READY_TIMEOUT = 120.0  # seconds for a host's zmix-up to say its share is ready
STOP_TIMEOUT = 15.0  # seconds between SIGTERM to a host's zmix-up and SIGKILL of its namespace


class TestbedError(ZmixError):
    """The test bed cannot be made or used; the message says why (one line)."""

    __test__ = False  # not a pytest test class, whatever its name says


class NetemUnavailable(TestbedError):
    """The kernel has no netem queueing discipline (``sch_netem``): no delay or loss."""


@dataclass(frozen=True, slots=True)
class Host:
    """One host of the test bed: its number, address, namespace, the topology members it runs
    and the name of its port (its veth's other end) on the bridge."""

    index: int  # 1, 2, ... in the order of the topology file
    address: str
    netns: str
    port: str
    members: tuple[str, ...]  # the nodes and authorities whose host is ``address``

    @property
    def name(self) -> str:
        """The short name of the host (``h1``, ``h2`` ...), its port's name on the bridge too."""
        return f"h{self.index}"


def hosts_of(topology: Topology, prefix: str = PREFIX) -> list[Host]:
    """Return the test bed's hosts for ``topology``: one per distinct host address of its nodes
    and authorities, numbered in file order (authorities first, as zmix-up starts them).

    Raises TestbedError if an address is not a literal IPv4 address of 198.51.100.0/24."""
    members: dict[str, list[str]] = {}
    for host, name in [*((a.host, a.name) for a in topology.authorities),
                       *((n.host, n.name) for n in topology.nodes())]:
        members.setdefault(host, []).append(name)
    hosts = []
    for index, (address, names) in enumerate(members.items(), start=1):
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise TestbedError(f"{topology.path}: host {address!r} of {names[0]} is not an IP "
                               f"address; the test bed gives each host an address of "
                               f"{SUBNET}") from None
        if parsed not in SUBNET or parsed in (SUBNET.network_address, SUBNET.broadcast_address):
            raise TestbedError(f"{topology.path}: host {address} of {names[0]} is not a host "
                               f"address of {SUBNET}, the only range the test bed uses (it is "
                               "never routed, so nothing leaves the machine)")
        hosts.append(Host(index, address, f"{prefix}-{index}", f"h{index}", tuple(names)))
    return hosts


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; raise TestbedError with ip's own message if it fails and ``check``."""
    return _command(["ip", *args], check=check)


def _command(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        raise TestbedError(f"{argv[0]} is not installed (iproute2 has ip and tc)") from None
    if check and done.returncode != 0:
        raise TestbedError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def namespaces() -> list[str]:
    """Return the names of the machine's named network namespaces."""
    listed = _ip("-json", "netns", "list", check=False)
    if listed.returncode != 0 or not listed.stdout.strip():
        return []
    return [entry["name"] for entry in json.loads(listed.stdout)]


def namespace_pids(netns: str) -> list[int]:
    """Return the pids of every process in the network namespace ``netns``."""
    listed = _ip("netns", "pids", netns, check=False)
    return [int(word) for word in listed.stdout.split()]


def kill_namespace(netns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in ``netns`` until none is left (a process may fork while the
    first ones die); raise TestbedError if some survive ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [pid for pid in namespace_pids(netns) if pid != os.getpid()]
        if not pids:
            return
        if time.monotonic() > deadline:
            raise TestbedError(f"processes {pids} of namespace {netns} survive SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove(prefix: str = PREFIX) -> list[str]:
    """Kill every process in the namespaces named ``PREFIX-...`` and delete them (their veths
    go with them); return the names removed. Safe to call when there are none."""
    removed = []
    for netns in namespaces():
        if netns.startswith(f"{prefix}-"):
            kill_namespace(netns)
            _ip("netns", "delete", netns)
            removed.append(netns)
    return removed


class Testbed:
    """The namespaces, addresses and links of one test bed (no zmix in it: see
    :class:`TestbedNetwork`). Made by :meth:`create`, gone after :meth:`destroy`."""

    __test__ = False

    def __init__(self, hosts: Sequence[Host], prefix: str = PREFIX) -> None:
        self.hosts = list(hosts)
        self.prefix = prefix
        self.switch = f"{prefix}-sw"

    def create(self) -> None:
        """Make the switch, then each host: namespace, veth pair, address, links up. A test
        bed left with the same prefix is removed first; a failure half-way removes what was
        made and raises TestbedError."""
        if os.geteuid() != 0:
            raise TestbedError("the test bed needs root: it makes network namespaces")
        remove(self.prefix)
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", self.switch, "link", "set", BRIDGE, "up")
            for host in self.hosts:
                _ip("netns", "add", host.netns)
                _ip("link", "add", "name", "eth0", "netns", host.netns, "type", "veth",
                    "peer", "name", host.port, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", host.port, "master", BRIDGE)
                _ip("-n", self.switch, "link", "set", host.port, "up")
                _ip("-n", host.netns, "addr", "add", f"{host.address}/{SUBNET.prefixlen}",
                    "dev", "eth0")
                _ip("-n", host.netns, "link", "set", "lo", "up")
                _ip("-n", host.netns, "link", "set", "eth0", "up")
        except BaseException:
            remove(self.prefix)
            raise

    def destroy(self) -> None:
        """Kill every process of every host and delete the namespaces."""
        remove(self.prefix)

    def host(self, which: str) -> Host:
        """Return the host named ``which``: its short name (``h2``), its address or one of its
        members' names; raise TestbedError if none is."""
        for host in self.hosts:
            if which in (host.name, host.address, host.netns, *host.members):
                return host
        known = ", ".join(f"{h.name} ({h.address})" for h in self.hosts)
        raise TestbedError(f"no host {which!r} in the test bed; its hosts are {known}")

    def command(self, host: Host, argv: Sequence[str]) -> list[str]:
        """Return the argv that runs ``argv`` inside ``host``."""
        return ["ip", "netns", "exec", host.netns, *argv]

    def pids(self, host: Host) -> list[int]:
        """Return the pids of the processes running in ``host``."""
        return namespace_pids(host.netns)

    def set_link(self, host: Host, up: bool) -> None:
        """Put ``host``'s port on the bridge up or down (its cable in or out)."""
        _ip("-n", self.switch, "link", "set", host.port, "up" if up else "down")

    def link_is_up(self, host: Host) -> bool:
        """Tell whether ``host``'s port on the bridge is up."""
        shown = _ip("-n", self.switch, "-json", "link", "show", host.port)
        return "UP" in json.loads(shown.stdout)[0].get("flags", [])

    def crash(self, host: Host) -> None:
        """Kill every process of ``host`` with SIGKILL, as a power cut would."""
        kill_namespace(host.netns)

    def netem(self, host: Host, delay_ms: float = 0.0, loss_percent: float = 0.0) -> None:
        """Delay (milliseconds) and lose (percent) what the switch sends to ``host``; raise
        NetemUnavailable where the kernel has no netem."""
        argv = ["tc", "-n", self.switch, "qdisc", "replace", "dev", host.port, "root", "netem"]
        if delay_ms:
            argv += ["delay", f"{delay_ms:g}ms"]
        if loss_percent:
            argv += ["loss", f"{loss_percent:g}%"]
        done = _command(argv, check=False)
        if done.returncode != 0:
            if "unknown" in done.stderr.lower() or "not supported" in done.stderr.lower():
                raise NetemUnavailable(
                    "tc netem is not available here: this kernel has no netem queueing "
                    f"discipline (sch_netem); {' '.join(argv)}: {done.stderr.strip()}")
            raise TestbedError(f"{' '.join(argv)}: {done.stderr.strip()}")

    def clear_netem(self, host: Host) -> None:
        """Remove any netem on ``host``'s port."""
        _command(["tc", "-n", self.switch, "qdisc", "del", "dev", host.port, "root"],
                 check=False)


def netem_available() -> str | None:
    """Return None if netem works here, else the reason it does not (for a skip message). Tries
    it on a namespace of its own, made and removed for the test."""
    probe = Testbed([Host(1, "198.51.100.1", f"zmixnp{os.getpid()}-1", "h1", ())],
                    prefix=f"zmixnp{os.getpid()}")
    try:
        probe.create()
        probe.netem(probe.hosts[0], delay_ms=1)
    except TestbedError as exc:
        return str(exc)
    finally:
        probe.destroy()
    return None


@dataclass(frozen=True, slots=True)
class _Saved:
    prefix: str
    topology: str
    hosts: list[dict[str, object]]


class TestbedNetwork:
    """A topology running in a test bed: keys made in ``DIR/keys``, bundles exported to
    ``DIR/bundles`` (``hosts/ADDRESS/`` per host, ``clients/NAME/`` per client), one
    ``zmix-up --only`` per host in its namespace, logging to ``DIR/logs/hN.log``.

    :meth:`load` finds a running one again from ``DIR/testbed.json`` (the command line's
    ``down``, ``crash`` ... run in processes of their own)."""

    __test__ = False

    def __init__(self, topology: Topology, directory: Path, prefix: str = PREFIX) -> None:
        self.directory = directory.resolve()
        self.topology_file = Path(topology.path).resolve()
        self.topology = topology
        self.bed = Testbed(hosts_of(self.topology, prefix), prefix)
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def load(cls, directory: Path) -> TestbedNetwork:
        """Return the test bed recorded in ``directory/testbed.json``; raise TestbedError if
        there is none."""
        from zmix.topology_yaml import load_topology

        path = directory / STATE_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TestbedError(f"{path}: no test bed here (zmix-testbed up makes one)") from None
        # The copy zmix-up keeps: the file given to `up` may have changed or gone since.
        copy = directory / "keys" / "topology.yaml"
        topology = load_topology(copy if copy.exists() else Path(saved["topology"]))
        return cls(topology, directory, saved["prefix"])

    @property
    def hosts(self) -> list[Host]:
        """The hosts, in order."""
        return self.bed.hosts

    def host_state(self, host: Host) -> Path:
        """The state folder ``host`` runs from (its bundle)."""
        return self.directory / "bundles" / "hosts" / host.address

    def client_state(self, client: str) -> Path:
        """The state folder of client ``client`` (its bundle)."""
        return self.directory / "bundles" / "clients" / client

    def log(self, host: Host) -> Path:
        """The log of ``host``'s zmix-up."""
        return self.directory / "logs" / f"{host.name}.log"

    def create(self) -> None:
        """Export the bundles (keys made in ``DIR/keys``), make the namespaces, record the test
        bed in ``DIR/testbed.json``. Starts nothing."""
        self.directory.mkdir(parents=True, exist_ok=True)
        bundles = self.directory / "bundles"
        if not bundles.exists():
            done = subprocess.run(
                [sys.executable, "-m", "zmix.cli.up", str(self.topology_file), "--state",
                 str(self.directory / "keys"), "--export-hosts", str(bundles)],
                capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise TestbedError(f"zmix-up --export-hosts failed: {done.stderr.strip()}")
        saved = _Saved(self.bed.prefix, str(self.topology_file),
                       [asdict(host) for host in self.hosts])
        (self.directory / "logs").mkdir(exist_ok=True)
        self.bed.create()
        (self.directory / STATE_FILE).write_text(json.dumps(asdict(saved), indent=1) + "\n",
                                                 encoding="utf-8")

    def start(self, host: Host, wait: bool = True) -> None:
        """Start ``host``'s share (``zmix-up --only`` its members) in its namespace; with
        ``wait``, return once it says its share is ready (TestbedError if it exits first or
        READY_TIMEOUT passes, with its log's last lines)."""
        state = self.host_state(host)
        log = self.log(host)
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            child = subprocess.Popen(
                self.bed.command(host, [sys.executable, "-m", "zmix.cli.up",
                                        str(state / "topology.yaml"), "--state", str(state),
                                        "--only", *host.members]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._children[host.name] = child
        if wait:
            self.wait_ready([host], offsets={host.name: offset})

    def start_all(self) -> None:
        """Start every host's share at once (authorities and nodes may come up in any order)
        and wait until every host is ready."""
        offsets = {h.name: self.log(h).stat().st_size if self.log(h).exists() else 0
                   for h in self.hosts}
        for host in self.hosts:
            self.start(host, wait=False)
        self.wait_ready(self.hosts, offsets)

    def wait_ready(self, hosts: Sequence[Host], offsets: dict[str, int]) -> None:
        """Wait until each of ``hosts`` logged its ready line after ``offsets[name]`` bytes."""
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = list(hosts)
        while waiting:
            for host in list(waiting):
                text = self.log(host).read_bytes()[offsets.get(host.name, 0):]
                if b" ready: " in text:
                    waiting.remove(host)
                    continue
                child = self._children.get(host.name)
                if child is not None and child.poll() is not None:
                    raise TestbedError(f"{host.name} ({host.address}): zmix-up exited with "
                                       f"status {child.returncode}: {self._tail(host)}")
            if waiting and time.monotonic() > deadline:
                raise TestbedError(f"not ready after {READY_TIMEOUT:.0f} s: "
                                   + "; ".join(f"{h.name}: {self._tail(h)}" for h in waiting))
            time.sleep(0.2)

    def _tail(self, host: Host, lines: int = 6) -> str:
        text = self.log(host).read_text(encoding="utf-8", errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, host: Host) -> None:
        """Stop ``host``'s share cleanly: SIGTERM to every zmix-up in it (it stops its nodes),
        then SIGKILL whatever is left after STOP_TIMEOUT."""
        for pid in self.bed.pids(host):
            if _is_zmix_up(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and any(_is_zmix_up(p) for p in self.bed.pids(host)):
            time.sleep(0.1)
        self.bed.crash(host)
        self._reap(host)

    def crash(self, host: Host) -> None:
        """Kill every process of ``host`` with SIGKILL (zmix-up, nodes, workers, clients)."""
        self.bed.crash(host)
        self._reap(host)

    def _reap(self, host: Host) -> None:
        child = self._children.pop(host.name, None)
        if child is not None:
            child.wait(timeout=10)

    def run(self, host: Host, argv: Sequence[str], **kwargs: object
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host`` and wait for it (``subprocess.run`` keywords pass on)."""
        return subprocess.run(self.bed.command(host, argv), text=True,  # type: ignore[call-overload,no-any-return]
                              **kwargs)

    def popen(self, host: Host, argv: Sequence[str], **kwargs: object
              ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``host`` (``subprocess.Popen`` keywords pass on)."""
        return subprocess.Popen(self.bed.command(host, argv), **kwargs)  # type: ignore[call-overload,no-any-return]

    def destroy(self) -> None:
        """Stop every host (SIGTERM, then SIGKILL) and delete the namespaces; the folder stays
        (logs, keys, bundles)."""
        for host in self.hosts:
            if host.netns in namespaces():
                self.stop(host)
        self.bed.destroy()
        for host in self.hosts:
            self._reap(host)


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _is_zmix_up(pid: int) -> bool:
    """Tell whether ``pid`` is a zmix-up (by its command line, or by its process title)."""
    words = _command_line(pid)
    return "zmix.cli.up" in words or (bool(words) and words[0].startswith("zmix-up"))
