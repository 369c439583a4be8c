"""``zmix-up``: launch the authorities and nodes of a topology, keep them running until Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import filecmp
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import TYPE_CHECKING

from zmix.cli.common import configure_logging, fail
from zmix.errors import ConfigError
from zmix.topology import AuthoritySpec, NodeSpec, Topology
from zmix.topology_yaml import load_topology

if TYPE_CHECKING:
    from zmix.runtime.directory import AuthorityPeer
    from zmix.web.server import WebServer

LOG = logging.getLogger("zmix.up")
DEMO_EPOCH_WAIT = 60.0  # seconds: with epochs at most this long, --demo crosses a boundary

EXAMPLES = """\
examples:
  zmix-up topologies/local.yaml                 keys into ./zmix-local, run every node
  zmix-up topologies/local.yaml --demo          the same, send a few messages, shut down
  zmix-up topologies/local.yaml --web 8470      the same, with a live web view of the network
                                                at http://127.0.0.1:8470/
  zmix-up topologies/local.yaml --keys-only     make the keys of every member, start nothing
  zmix-up topologies/medium.yaml --export-monitoring monitoring
                                                write Prometheus and Grafana files, start nothing
  zmix-up topologies/local.yaml --state /srv/zmix --only authority-1 mix-a1 provider-1
                                                run only this host's share of the network
  zmix-up net.yaml --state net --export-hosts bundles
                                                write a folder per host (its keys only, systemd
                                                units, compose.yaml) and per client, start
                                                nothing (docs/deploy.md)

Keys are generated on first use (private keys mode 0600); with --only, only the named nodes' and
authorities' keys are, and every other member's public file must be there already. The directory
authorities start first (each gets an allowlist of every node's identity key if it has none), then
the nodes. Stop with Ctrl-C (or SIGTERM): every node is stopped cleanly, then the authorities.
While it runs, send and fetch messages with zmix-send and zmix-recv.

exit status:
  0  stopped cleanly by Ctrl-C or SIGTERM (--demo: every demo message was sent and received;
     --keys-only: the keys were made; --export-monitoring, --export-hosts: the files were
     written)
  1  a node or authority did not start (its error and log tail are printed), or a --demo step
     failed
  2  refused before anything started: bad usage or configuration (the topology, a key file,
     --only), the state directory, a node or an authority in use by another run, an address that
     cannot be bound (the --web port included; --export-monitoring: the topology, or a DIR that
     cannot be written; --export-hosts: also a folder of DIR that exists already)
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-up."""
    parser = argparse.ArgumentParser(
        prog="zmix-up", description="Launch a zmix mixnet from a YAML topology.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("topology", type=Path, help="the topology YAML file")
    parser.add_argument("--state", type=Path, default=None,
                        help="state directory (default: ./NETWORK-NAME)")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help="run only these nodes and authorities (the rest run on other "
                             "hosts)")
    parser.add_argument("--keys-only", action="store_true",
                        help="generate the missing keys (of the --only nodes and authorities, or "
                             "of every node, authority and client), then exit without starting "
                             "anything")
    parser.add_argument("--export-monitoring", type=Path, default=None, metavar="DIR",
                        help="write a Prometheus configuration (prometheus.yml, zmix-rules.yml) "
                             "and a Grafana dashboard (grafana-dashboard.json) for the "
                             "topology's metrics ports into DIR, then exit without starting "
                             "anything (docs/monitoring.md)")
    parser.add_argument("--export-hosts", type=Path, default=None, metavar="DIR",
                        help="write DIR/hosts/HOST/ for each host of the topology (a state "
                             "folder with that host's private keys only, systemd units, a "
                             "Dockerfile and compose.yaml) and DIR/clients/NAME/ for each "
                             "client, from the keys in --state (made there if missing), then "
                             "exit without starting anything (docs/deploy.md)")
    parser.add_argument("--zmix-bin", type=absolute_folder, default=None, metavar="DIR",
                        help="with --export-hosts: the folder of the zmix commands on the "
                             "hosts, for the systemd units (default: /opt/zmix/bin)")
    parser.add_argument("--demo", action="store_true",
                        help="send a few messages between the declared clients, then stop")
    parser.add_argument("--web", metavar="[HOST:]PORT", type=web_address, default=None,
                        help="serve the live web view at http://HOST:PORT/ (HOST: 127.0.0.1 "
                             "unless given; instead of the topology's web: key)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def absolute_folder(text: str) -> PurePosixPath:
    """argparse type of --zmix-bin: an absolute folder that a systemd unit can name as is."""
    from zmix.deploy import zmix_bin_problem

    problem = zmix_bin_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return PurePosixPath(text)


def web_address(text: str) -> tuple[str, int]:
    """argparse type of --web: ``(host, port)`` from ``[HOST:]PORT``."""
    from zmix.errors import LocalMisuse
    from zmix.web.pages import parse_web_address

    try:
        return parse_web_address(text)
    except LocalMisuse as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def open_web(topology: Topology, state_dir: Path,
             address: tuple[str, int] | None) -> WebServer | None:
    """Bind the web view's port (``address``, else the topology's ``web:``; None if neither)
    without serving yet; raises StartRefused if it cannot be bound or a node or authority of the
    topology has that address."""
    from zmix.runtime.launcher import StartRefused
    from zmix.web.pages import network_graph, url_of
    from zmix.web.server import WebServer, report_source

    if address is None and topology.web is not None:
        address = (topology.web.host, topology.web.port)
    if address is None:
        return None
    host, port = address
    members: list[tuple[str, int | None, str]] = [(n.host, n.port, f"node {n.name}")
                                                  for n in topology.nodes()]
    members += [(n.host, n.metrics_port, f"node {n.name} (metrics)") for n in topology.nodes()]
    members += [(a.host, a.port, f"authority {a.name}") for a in topology.authorities]
    for member_host, member_port, who in members:
        if (member_host, member_port) == (host, port):
            raise StartRefused(f"the web view cannot listen on {url_of(host, port)}: {who} "
                               "listens there")
    try:
        return WebServer(host, port, network_graph(topology),
                         report_source(topology, state_dir))
    except OSError as exc:
        problem = "address already in use" if exc.errno == errno.EADDRINUSE else (
            exc.strerror or str(exc))
        raise StartRefused(f"the web view cannot listen on {url_of(host, port)}: "
                           f"{problem}") from None


def state_dir_of(topology: Topology, state: Path | None) -> Path:
    """Return the state directory: ``state``, or ``./NETWORK`` (absolute)."""
    return (state or Path.cwd() / topology.network).resolve()


def prepare_state(topology: Topology, state_dir: Path,
                  only: list[str] | None = None) -> tuple[Topology, list[str]]:
    """Generate the missing keys (with ``only``, of those nodes and authorities only; never of an
    authority whose key the topology pins: its key files are copied from where it was made),
    refresh the state directory's topology copy; return the topology read from that copy and the
    names of the members whose keys were generated.

    Raises ConfigError (naming file, key and problem): the state directory is another network's.
    """
    from zmix.keys import ensure_authority_keys, ensure_keys

    generated = ensure_keys(state_dir, topology, only=only)
    generated += ensure_authority_keys(state_dir, [
        a.name for a in select_authorities(topology, only) if a.identity_public is None])
    if generated:
        LOG.info("generated keys for %s", ", ".join(generated))
    copy = state_dir / "topology.yaml"
    if not filecmp.cmp(topology.path, copy, shallow=False):
        # ensure_keys accepted it, so it is the same network; its parameters may have changed.
        tmp = copy.with_suffix(".tmp")
        shutil.copyfile(topology.path, tmp)
        os.replace(tmp, copy)
    return load_topology(copy), generated


def check_keys(state_dir: Path, topology: Topology, nodes: list[NodeSpec],
               authorities: list[AuthoritySpec] | None = None) -> None:
    """Raise ConfigError unless every public file is there and sound, each node of ``nodes``
    has a private file that is private, sound and matches its public file, and each authority of
    ``authorities`` has a sound private identity key that is the one the topology pins, if it
    pins one."""
    from zmix.keys import load_directory, load_identity, load_private

    directory = load_directory(state_dir, topology)
    for spec in nodes:
        own = load_private(state_dir, spec.name)
        if own.public() != directory[spec.name]:
            raise ConfigError(str(state_dir / "public" / f"{spec.name}.json"), "public_key",
                              f"does not match private/{spec.name}.json: the two files come "
                              "from different key generations; copy the matching pair")
    for authority in authorities or []:
        key = load_identity(state_dir, authority.name)
        if authority.identity_public not in (None, key.public):
            raise ConfigError(topology.path, f"authorities.{authority.name}.identity_public",
                              f"is not the key in private/{authority.name}.identity.json")


def select_nodes(topology: Topology, only: list[str] | None) -> list[NodeSpec]:
    """Return the nodes to run here; raises ConfigError for a name in ``only`` that is neither a
    node nor an authority of the topology."""
    if only is None:
        return list(topology.nodes())
    names = {node.name for node in topology.nodes()} | {a.name for a in topology.authorities}
    for name in only:
        if name not in names:
            raise ConfigError(topology.path, "--only", f"no node or authority named {name!r}")
    return [node for node in topology.nodes() if node.name in only]


def select_authorities(topology: Topology, only: list[str] | None) -> list[AuthoritySpec]:
    """Return the directory authorities to run here: every one, or those named in ``only``."""
    return [a for a in topology.authorities if only is None or a.name in only]


def write_allowlists(state_dir: Path, topology: Topology,
                     authorities: list[AuthoritySpec]) -> list[str]:
    """Give each authority of ``authorities`` that has no allowlist one holding the identity key
    of every node of the topology; return the names of those written. Raises ConfigError if a
    node's public identity file is missing."""
    from zmix.authority import format_allowlist
    from zmix.keys import load_identity_public
    from zmix.runtime.authority import ALLOWLIST, authority_dir, write_atomically

    written = []
    for authority in authorities:
        path = authority_dir(state_dir, authority.name) / ALLOWLIST
        if path.exists():
            continue
        keys = {load_identity_public(state_dir, n.name): n.name for n in topology.nodes()}
        write_atomically(path, format_allowlist(keys).encode())
        written.append(authority.name)
    return written


def main(argv: list[str] | None = None) -> int:
    """Run zmix-up; return its exit status (0, 1 or 2, as the epilog says)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.zmix_bin is not None and args.export_hosts is None:
        return fail("--zmix-bin goes with --export-hosts", 2)
    if args.export_monitoring is not None:
        given = [option for option, value in (("--state", args.state), ("--only", args.only),
                                              ("--keys-only", args.keys_only),
                                              ("--demo", args.demo), ("--web", args.web),
                                              ("--export-hosts", args.export_hosts))
                 if value]
        if given:  # it starts nothing and reads only the topology: these would mean nothing
            return fail(f"--export-monitoring writes files and starts nothing: it takes no "
                        f"{', '.join(given)}", 2)
        return export_monitoring(args.topology, args.export_monitoring)
    if args.export_hosts is not None:
        given = [option for option, value in (("--only", args.only),
                                              ("--keys-only", args.keys_only),
                                              ("--demo", args.demo), ("--web", args.web))
                 if value]
        if given:  # it exports every host and client and starts nothing
            return fail(f"--export-hosts writes files and starts nothing: it takes no "
                        f"{', '.join(given)}", 2)
        return export_hosts(args.topology, args.state, args.export_hosts, args.zmix_bin)
    from zmix.runtime.launcher import StartRefused, check_addresses, check_nodes_free, lock_state

    # Everything that can refuse runs before the first node starts, and nothing that a running
    # network uses is written before the lock is ours.
    try:
        topology = load_topology(args.topology)
        from zmix.runtime.proctitle import set_title
        set_title("zmix-up", topology.network, "zmix-up")
        nodes = select_nodes(topology, args.only)
        authorities = select_authorities(topology, args.only)
        state_dir = state_dir_of(topology, args.state)
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_state(state_dir)
    except (ConfigError, StartRefused) as exc:
        return fail(str(exc), 2)
    except OSError as exc:  # the state directory cannot be made or locked
        return fail(f"{exc.filename or args.state}: {exc.strerror or exc}", 2)
    web: WebServer | None = None
    try:
        try:
            check_nodes_free(state_dir, nodes, authorities)
            topology, generated = prepare_state(topology, state_dir, args.only)
            if args.keys_only:
                print(f"zmix-up: keys of network {topology.network} are in {state_dir} "
                      f"(generated now: {', '.join(generated) or 'none'})", flush=True)
                return 0
            nodes = select_nodes(topology, args.only)
            authorities = select_authorities(topology, args.only)
            check_keys(state_dir, topology, nodes, authorities)
            check_addresses([*authorities, *nodes])
            web = open_web(topology, state_dir, args.web)
            written = write_allowlists(state_dir, topology, authorities)
            if written:
                LOG.info("wrote the allowlists of %s", ", ".join(written))
            from zmix.runtime.directory import authority_peers
            peers = [p for p in authority_peers(topology, state_dir)
                     if p.name in {a.name for a in authorities}]
        except (ConfigError, StartRefused) as exc:
            return fail(str(exc), 2)
        except OSError as exc:  # a key file or the topology copy cannot be written
            return fail(f"{exc.filename or state_dir}: {exc.strerror or exc}", 2)
        return run(topology, state_dir, nodes, demo=args.demo, verbose=args.verbose,
                   authorities=peers, web=web)
    finally:
        if web is not None:
            web.close()
        lock.release()


def run(topology: Topology, state_dir: Path, nodes: list[NodeSpec], *, demo: bool,
        verbose: int, authorities: Sequence[AuthorityPeer] = (),
        web: WebServer | None = None) -> int:
    """Start serving ``web`` (if given), then start ``authorities``, then ``nodes``, then run
    the demo or wait for a signal; stop them all (the authorities last); return the exit status
    (0, or 1 if a process did not start or the demo failed)."""
    from zmix.runtime.launcher import Launcher, LaunchError

    stop: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    launcher = Launcher(state_dir, nodes, verbosity=max(1, verbose), authorities=authorities)
    print(f"zmix-up: network {topology.network}, state in {state_dir}", flush=True)
    if web is not None:
        web.start()
        print(f"zmix-up: web view at {web.url}", flush=True)
    try:
        launcher.start(lambda spec: print(
            f"  {spec.role.value:<9} {spec.name:<16} up at {spec.endpoint}", flush=True),
            lambda peer: print(f"  {'authority':<9} {peer.name:<16} up at {peer.endpoint}",
                               flush=True))
        print(f"zmix network {topology.network} ready: {len(authorities)} authority(ies) and "
              f"{len(nodes)} node(s) running (Ctrl-C to stop)", flush=True)
        if demo:
            status = run_demo(topology, state_dir)
        else:
            status = 0
            while not stop:
                launcher.watch(time.monotonic())
                time.sleep(0.2)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 1
    finally:
        print("zmix-up: stopping every node, then the authorities", flush=True)
        launcher.stop()
    print("zmix-up: stopped", flush=True)
    return status


def run_demo(topology: Topology, state_dir: Path) -> int:
    """Send a few messages between the declared clients with zmix-send, fetch them with zmix-recv.

    Each step prints the command a user would type, then runs it.
    """
    clients = [c.name for c in topology.clients]
    if len(clients) < 2:
        print("demo: the topology declares fewer than two clients; nothing to send")
        return 0
    pairs = [(clients[i], clients[(i + 1) % len(clients)]) for i in range(min(3, len(clients)))]
    status = 0
    for sender, recipient in pairs:
        text = f"hello {recipient}, this is {sender} speaking through the mixnet"
        status |= _demo_step(["zmix-send", "--state", str(state_dir), "--from", sender,
                              "--to", recipient, text, "--timeout", "60"])
    for _, recipient in pairs:
        status |= _demo_step(["zmix-recv", "--state", str(state_dir), "--as", recipient,
                              "--wait", "30"])
    if topology.epoch.length <= DEMO_EPOCH_WAIT:
        status |= _demo_next_epoch(topology, state_dir, *pairs[0])
    return 1 if status else 0


def _demo_next_epoch(topology: Topology, state_dir: Path, sender: str, recipient: str) -> int:
    """Wait for the next key epoch, then send one more message: under the nodes' new Sphinx
    keys, and the network document of the new epoch."""
    epochs = topology.epoch
    following = epochs.epoch_at(time.time()) + 1
    wait = max(0.0, epochs.start(following) - time.time())
    print(f"demo: waiting {wait:.0f} s for key epoch {following}, when every node starts using "
          "its next Sphinx key and the authorities' next network document", flush=True)
    time.sleep(wait + 0.5)
    text = f"hello {recipient}, this is {sender} again, in key epoch {following}"
    return (_demo_step(["zmix-send", "--state", str(state_dir), "--from", sender,
                        "--to", recipient, text, "--timeout", "60"])
            | _demo_step(["zmix-recv", "--state", str(state_dir), "--as", recipient,
                          "--wait", "30"]))


def _demo_step(argv: list[str]) -> int:
    print(f"$ {' '.join(_quote(a) for a in argv)}", flush=True)
    module = {"zmix-send": "zmix.cli.send", "zmix-recv": "zmix.cli.recv"}[argv[0]]
    return subprocess.run([sys.executable, "-m", module, *argv[1:]], check=False).returncode


def _quote(arg: str) -> str:
    return f"'{arg}'" if " " in arg else arg


def export_monitoring(topology_file: Path, directory: Path) -> int:
    """Write the Prometheus and Grafana files of the topology into ``directory`` (made if
    missing); return 0, or 2 with one line on stderr if the topology is bad or a file cannot be
    written. Reads nothing but the topology file, starts nothing."""
    from zmix import monitoring

    try:
        topology = load_topology(topology_file)
    except ConfigError as exc:
        return fail(str(exc), 2)
    written = monitoring.files(topology)
    if directory.exists() and not directory.is_dir():
        return fail(f"cannot write into {directory}: it is not a directory", 2)
    path = directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in written.items():
            path = directory / name
            tmp = directory / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except OSError as exc:
        return fail(f"cannot write {exc.filename or path}: {exc.strerror or exc}", 2)
    print(f"zmix-up: wrote {', '.join(written)} for network "
          f"{topology.network} in {directory}", flush=True)
    missing = monitoring.unscraped(topology)
    if missing:
        print(f"zmix-up: no metrics_port, not scraped: {', '.join(n.name for n in missing)}",
              flush=True)
    return 0


def export_hosts(topology_file: Path, state: Path | None, directory: Path,
                 zmix_bin: PurePosixPath | None) -> int:
    """Write the deployment bundles of the topology into ``directory`` (docs/deploy.md) from the
    keys in the state folder, made there first if missing, as --keys-only makes them, under
    zmix-up's lock; return 0, or 2 with one line on stderr (the topology, a key file, the lock,
    a folder of ``directory`` that exists already, a file that cannot be written)."""
    from zmix import deploy
    from zmix.keys import load_private
    from zmix.runtime.launcher import StartRefused, lock_state

    try:
        topology = load_topology(topology_file)
        deploy.check_free(deploy.plan(topology, zmix_bin or deploy.DEFAULT_ZMIX_BIN), directory)
        state_dir = state_dir_of(topology, state)
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_state(state_dir)
    except (ConfigError, StartRefused, deploy.ExportRefused) as exc:
        return fail(str(exc), 2)
    except OSError as exc:  # the state directory cannot be made or locked
        return fail(f"{exc.filename or state}: {exc.strerror or exc}", 2)
    try:
        topology, generated = prepare_state(topology, state_dir)
        check_keys(state_dir, topology, list(topology.nodes()), list(topology.authorities))
        for client in topology.clients:
            load_private(state_dir, client.name)
        bundles = deploy.plan(topology, zmix_bin or deploy.DEFAULT_ZMIX_BIN)
        written = deploy.write_bundles(bundles, state_dir, directory, lambda folder, host: (
            write_allowlists(folder, topology, [topology.authority(n) for n in host.authorities])))
    except (ConfigError, deploy.ExportRefused) as exc:
        return fail(str(exc), 2)
    except OSError as exc:
        return fail(f"cannot write {exc.filename or directory}: {exc.strerror or exc}", 2)
    finally:
        lock.release()
    for loopback in bundles.loopback_hosts():
        print(f"warning: host {loopback} is a loopback address: its nodes and authorities "
              "cannot be reached from another machine", file=sys.stderr)
    print(f"zmix-up: keys of network {topology.network} are in {state_dir} (generated now: "
          f"{', '.join(generated) or 'none'})", flush=True)
    for bundle in bundles.hosts:
        print(f"  host {bundle.host:<16} {' '.join(m.name for m in bundle.members)} -> "
              f"{directory / deploy.HOSTS / bundle.host}", flush=True)
    for name in (c.name for c in bundles.clients):
        print(f"  client {name:<14} -> {directory / deploy.CLIENTS / name}", flush=True)
    print(f"zmix-up: wrote {len(written)} folder(s); the private keys are still in "
          f"{state_dir / 'private'}: delete them once the folders are on their hosts",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
