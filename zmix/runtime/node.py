"""The node process: one ROUTER in, one DEALER per next hop out, a worker pool, a delay heap.

``NodeProcess(state_dir, name).run()`` is what ``zmix-node`` runs. This module is the node's I/O
only: sockets, polling, the clock, signals and processes. Every decision (which peer may send which
frame, which worker gets which batch, what to schedule, store, acknowledge or drop, and every
counter) is the sans-IO :class:`~zmix.nodecentre.NodeCentre`'s. The loop, in one thread:

1. read frames from the ROUTER (while fewer than ``MAX_IN_FLIGHT`` packets are with the workers,
   so an overloaded node pushes back on its upstream links instead of growing without bound) and
   hand each to the centre; send the answers it leaves for clients;
2. send the job batches the centre's dispatcher makes to the workers it picks; PULL the workers'
   results and hand them to the centre; send what it made due at once, and on a provider let it
   commit the round's deliveries in one transaction (their acks are scheduled only then);
3. send the centre's queued packets on their next hop's DEALER when they are due; the poll timeout
   is the centre's (the next due time);
4. send the node's own mix loops, heartbeats on idle links, replace dead workers, refresh the
   statistics served on the control socket and the Prometheus endpoint, when the centre says so.

SIGTERM and SIGINT stop the loop; queued packets are then sent at once or dropped (and counted)
as the topology's ``node.drain_on_shutdown`` says, sockets close with linger 0 and workers are
reaped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import resource
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TextIO

import zmq

from zmix import pki, wire
from zmix.directory import network_from_document
from zmix.dispatch import MAX_IN_FLIGHT
from zmix.epochkeys import EpochKeyStore, key_directory
from zmix.errors import LocalMisuse
from zmix.keys import load_directory, load_identity, load_private
from zmix.mailbox import Mailbox
from zmix.mixnode import NodeCore
from zmix.network import Network, NetworkView
from zmix.nodecentre import NodeCentre
from zmix.nodekeys import KeyUpdate, NodeKeys
from zmix.nodetap import NodeTap
from zmix.provider import ProviderCore
from zmix.replay import ReplayCache
from zmix.runtime import links, metrics
from zmix.runtime.keeper import NetworkKeeper
from zmix.runtime.workers import WorkerPool
from zmix.topology import NodeSpec, Role, Topology
from zmix.topology_yaml import load_topology
from zmix.workframes import encode_keys

LOG = logging.getLogger(__name__)

__all__ = ["MAX_IN_FLIGHT", "NodeProcess"]

BATCH = 512  # frames read from one socket before looking at the others
POLL_CAP_MS = 100  # the loop wakes at least this often (signals, timers)
IPC_RECORD = "ipc-dir"  # in the node's directory: where this run's local sockets are
WAIT_NOTE_INTERVAL = 10.0  # seconds between "waits for a document" lines at start
REPLAY_FLUSH_INTERVAL = 1.0  # seconds between msyncs of the replay filters (power loss)


def _wall_clock(_now: float) -> float:
    """Unix time now: what picks the key epochs of the node's own mix loops (the loop's
    ``now`` is its monotonic clock)."""
    return time.time()


class NodeProcess:
    """Everything one node process owns. Build it, call :meth:`run`, it returns on a signal."""

    def __init__(self, state_dir: Path, name: str, *, workers: int | None = None,
                 network: Network | None = None) -> None:
        """Read the node's configuration and keys; nothing is started or locked yet.

        The network comes from the directory authorities' documents when :meth:`run` starts
        (docs/pki.md); ``network`` gives one instead (tests of the runtime's parts)."""
        self.state_dir = state_dir
        # The node's own topology: its address, role, layer and workers, the policies, the
        # clients, the authorities and the key schedule. The network's members come from the
        # documents.
        self.local = load_topology(state_dir / "topology.yaml")
        self.spec: NodeSpec = self.local.node(name)
        self.identity = load_private(state_dir, name)  # the CURVE keys of the node's links
        self.signing = load_identity(state_dir, name)  # signs the node's descriptors
        # Everything below reads self.view.current when it decides (replace_network brings a
        # newer one).
        self._view = NetworkView(network) if network is not None else None
        self.worker_count = workers or self.spec.workers
        self.node_dir = state_dir / "nodes" / name
        self.node_dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.SystemRandom()
        self.started = time.monotonic()
        self._stop_signal: int | None = None
        self.mailbox: Mailbox | None = None
        self.provider: ProviderCore | None = None
        self.snapshot = metrics.Snapshot(name)
        self.gate: links.KeyGate | None = None  # made by run()
        # (epoch, private key) in trial order: the key store's buffers, zeroed at erasure
        self.sphinx_keys: list[tuple[int, bytes | bytearray]] = []
        self.sphinx_keys_version = 0  # bumped by set_sphinx_keys: the loop sends the new set
        self.keeper: NetworkKeeper | None = None  # made by run()
        self.replay: ReplayCache | None = None  # made by run(), once the node is locked
        self.tap_file: TextIO | None = None  # the tap's file (topology node.taps), or None
        self.keys: NodeKeys | None = None
        self.keys_made = self.keys_erased = 0  # Sphinx keys made and erased by this process
        self.next_key_update = 0.0  # unix time of the next change of the key schedule

    @property
    def view(self) -> NetworkView:
        """The node's network (LocalMisuse before the first document came)."""
        if self._view is None:
            raise LocalMisuse("the node has no network yet (no document came)")
        return self._view

    def set_sphinx_keys(self, keys: list[tuple[int, bytes | bytearray]]) -> None:
        """Make ``keys`` (``(epoch, X25519 private key)`` pairs, in the order the workers try
        them) the Sphinx keys of this node: the loop sends the set to every worker at its next
        turn, and to every worker it starts or restarts before any job (docs/sphinx.md, "Keys
        per epoch"). The node keeps the pairs it is given, not copies: their owner (the key
        store) zeroes them. Raises LocalMisuse for an empty set, a key that is not 32 bytes or
        an epoch outside 0..2**32-1 (and nothing changes)."""
        if not keys:
            raise LocalMisuse("a node needs at least one Sphinx key")
        message = encode_keys(keys)  # checks every pair
        message[:] = bytes(len(message))
        self.sphinx_keys = list(keys)
        self.sphinx_keys_version += 1
        LOG.info("Sphinx keys of epochs %s (in trial order)",
                 ", ".join(str(epoch) for epoch, _ in keys))

    @property
    def topology(self) -> Topology:
        """The current network's topology (the node's own until the first document came)."""
        return self._view.current.topology if self._view is not None else self.local

    def replace_network(self, newer: Network) -> None:
        """Make ``newer`` the network this node works with (:meth:`NetworkView.replace`: it must
        be a newer version of the same network; LocalMisuse otherwise, and nothing changes).

        The cores read it at their next decision; the link gate admits the new network's keys
        (and the registered clients) from now on, so a removed member's next handshake is
        refused. Links already made stay up until they drop."""
        self.view.replace(newer)
        if self.gate is not None:
            self.gate.replace(self._admitted_keys())

    # ------------------------------------------------------------------ set-up and tear-down

    def _admitted_keys(self) -> dict[bytes, bytes]:
        """The CURVE keys the link gate admits now: the current network's (other nodes, a
        provider's declared clients) and the clients registered at run time."""
        keys = self.view.current.admitted_keys(self.spec.name)
        if self.keeper is not None:
            # Every node of every document still valid: the next epoch's members can dial in
            # before the change to it, the last epoch's during its grace (links are never
            # refused at a rollover).
            wall = time.time()
            for doc in self.keeper.held.values():
                if wall <= doc.valid_until:
                    keys.update((e.curve_public, e.id) for e in doc.nodes
                                if e.name != self.spec.name)
        if self.provider is not None:
            keys.update((c.curve_public, c.id) for c in self.provider.registrations())
        return keys

    def _make_gate(self) -> links.KeyGate:
        """Make the link gate (after the centre: a provider's registered clients come along);
        :meth:`replace_network` keeps it up to date."""
        self.gate = links.KeyGate(self._admitted_keys(), open_door=self._open_door())
        return self.gate

    def _resolve(self, node_id: bytes) -> tuple[str, bytes] | None:
        """The endpoint and CURVE key of next hop ``node_id`` in the current network, or None
        (no such node, or this node itself)."""
        if node_id == self.spec.id:
            return None
        return self.view.current.endpoint(node_id)

    def _name(self, node_id: bytes) -> str:
        spec = self.view.current.node_by_id(node_id)
        return spec.name if spec is not None else node_id.hex()

    def _make_centre(self, now: float) -> NodeCentre:
        core = self._make_core(now)
        return NodeCentre(
            core, self.topology.sphinx, slots=self.topology.mailbox.fetch_slots,
            workers=self.worker_count, queue_limit=self.topology.runtime.queue_limit,
            drain_on_shutdown=self.topology.runtime.drain_on_shutdown, now=now,
            provider=self.provider, mailbox=self.mailbox, open_door=self._open_door(),
            link_key=links.curve_key, tap=self._make_tap())

    def _make_tap(self) -> NodeTap | None:
        """The node's tap when the topology asks for taps: lines appended to
        STATE/taps/NAME.jsonl (docs/privacy.md, "Node taps")."""
        if not self.topology.runtime.taps:
            return None
        folder = self.state_dir / "taps"
        folder.mkdir(mode=0o700, exist_ok=True)
        self.tap_file = open(folder / f"{self.spec.name}.jsonl", "a",  # noqa: SIM115
                             encoding="utf-8")
        LOG.warning("node %s writes taps to %s: for measurement networks only (the file undoes "
                    "this node's mixing)", self.spec.name, folder)
        write = self.tap_file.write

        def line(text: str) -> None:
            write(text + "\n")

        def name(member: bytes) -> str | None:
            spec = self.view.current.topology.by_id(member)
            return None if spec is None else spec.name

        return NodeTap(line, name, _wall_clock, self.topology.sphinx)

    def _open_door(self) -> bool:
        return self.spec.role is Role.PROVIDER and self.topology.mailbox.open_registration

    def _make_core(self, now: float) -> NodeCore:
        if self.spec.role is Role.PROVIDER:
            self.mailbox = Mailbox(self.node_dir / "mailbox.sqlite",
                                   quota=self.topology.mailbox.quota, ttl=self.topology.mailbox.ttl)
            self.provider = ProviderCore(self.view, self.spec.name, self.mailbox,
                                         wall=_wall_clock)
        return NodeCore(self.view, self.spec.name, self.rng, now, provider=self.provider,
                        replay=self.replay, wall=_wall_clock)

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self._stop_signal = signum
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self) -> int:
        """Run the node until SIGTERM/SIGINT; return the process exit status (0).

        First the key schedule: the node's Sphinx keys of this epoch and those ahead are made
        (the expired ones erased), its descriptor goes to every authority, and it waits for a
        document that lists it (docs/pki.md, "Schedule"); a stop signal while it waits ends it
        there."""
        self._install_signals()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # A node that cannot listen says so at once, not after its document came: its address
        # is tried now (bound and released). It is bound for good once the network is known,
        # so that no peer's handshake meets a gate that does not know it yet (a refused
        # handshake is not tried again by libzmq; a refused connection is).
        try:
            _try_to_bind(ctx, self.spec.endpoint)
            if not self._start_epochs(ctx):
                self._close_epochs()
                ctx.destroy(linger=0)
                LOG.info("node %s stopped before it had a network (signal %s)", self.spec.name,
                         self._stop_signal)
                return 0
        except BaseException:
            self._close_epochs()
            ctx.destroy(linger=0)
            raise
        centre = self._make_centre(time.monotonic())  # a provider's registered clients come along
        ipc_dir = Path(tempfile.mkdtemp(prefix="zmix-"))  # short path: ipc names are length-limited
        gate = self._make_gate()
        if self.provider is not None:
            for client in self.provider.shadowed:
                LOG.warning("registered client %s is void: the topology now gives its name or "
                            "key to a member", client.name)
        auth = links.start_authenticator(ctx, gate, self.topology.network)
        pool: WorkerPool | None = None
        sockets: list[zmq.Socket[bytes]] = []
        out: links.Links | None = None
        try:
            max_frame = wire.node_frame_limit(self.topology.sphinx)
            router = links.bind_router(ctx, self.spec.endpoint, self.identity.curve_public,
                                       self.identity.curve_private, self.topology.network,
                                       max_frame=max_frame)
            # The port is ours, so no other run of this node is alive: the socket directory that
            # a killed run left behind can go.
            _replace_ipc_record(self.node_dir / IPC_RECORD, ipc_dir)
            work = [ctx.socket(zmq.PUSH) for _ in range(self.worker_count)]
            results, control = ctx.socket(zmq.PULL), ctx.socket(zmq.REP)
            sockets = [router, *work, results, control]
            for sock in (*work, results, control):
                sock.linger = 0
            for index, sock in enumerate(work):
                sock.sndhwm = MAX_IN_FLIGHT
                sock.bind(f"ipc://{ipc_dir}/work-{index}")
            results.bind(f"ipc://{ipc_dir}/results")
            control.bind(f"ipc://{ipc_dir}/control")
            _write_atomically(metrics.control_path(self.state_dir, self.spec.name),
                              f"ipc://{ipc_dir}/control\n")
            pool = WorkerPool(self.state_dir, self.spec.name, self.worker_count,
                              f"ipc://{ipc_dir}/work-{{}}", f"ipc://{ipc_dir}/results")
            pool.start()
            out = links.Links(ctx, self.identity.curve_public, self.identity.curve_private,
                              self._resolve, max_frame=max_frame, name=self._name,
                              hold=self.topology.loopix.max_delay)
            if self.spec.metrics_port is not None:
                metrics.serve_prometheus(self.snapshot, self.spec.host, self.spec.metrics_port)
            LOG.info("node %s listening on %s with %d workers", self.spec.name,
                     self.spec.endpoint, self.worker_count)
            _Loop(self, centre, gate, pool, out, router, work, results, control,
                  _Directory(self)).run()
        finally:
            self._shutdown(out, pool, sockets, auth, ctx, ipc_dir)
        LOG.info("node %s stopped (signal %s)", self.spec.name, self._stop_signal)
        return 0

    # ------------------------------------------------------------------ keys and documents

    def _start_epochs(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> bool:
        """Open the key store and the replay filters, make this epoch's keys, send the
        descriptor and wait for a network; False if a stop signal came first."""
        wall = time.time()
        self.replay = ReplayCache(self.local.runtime.replay_capacity,
                                  directory=self.node_dir / "replay")
        self.keys = NodeKeys(self.local.epoch, EpochKeyStore(key_directory(self.state_dir,
                                                                           self.spec.name)),
                             self.replay)
        self.update_keys(wall)
        self.keeper = NetworkKeeper(ctx, self.local, self.state_dir, self.node_dir / "documents",
                                    self.network_of,
                                    client_key=(self.identity.curve_public,
                                                self.identity.curve_private))
        self.keeper.upload(self.descriptor(wall), wall)
        if self._view is None:
            network = self._wait_for_network(self.keeper)
            if network is None:
                return False
            self._view = NetworkView(network)
        return True

    def _close_epochs(self) -> None:
        """Flush and close the replay filters and the links to the authorities."""
        if self.replay is not None:
            self.replay.close()
        if self.keeper is not None:
            self.keeper.close()

    def update_keys(self, wall: float) -> KeyUpdate:
        """Bring the node's Sphinx keys in line with the schedule at unix time ``wall``: make
        those missing, erase the expired ones with their replay filters, give the workers the
        new set to try, and make the accepted epochs' replay filters ahead of their packets."""
        assert self.keys is not None and self.replay is not None
        update = self.keys.update(wall)
        for epoch in update.erased:
            LOG.info("Sphinx key of epoch %d erased (its epoch ended %g s ago)", epoch,
                     wall - self.local.epoch.end(epoch))
        if update.changed:
            self.set_sphinx_keys(list(update.accepted))
        if update.accepted:
            # Filters of epochs older than every key tried are of no use (a restart after a
            # crash between a key's erasure and its filters' deletion leaves such files).
            self.replay.rotate(min(epoch for epoch, _ in update.accepted))
        for epoch, _ in update.accepted:
            self.replay.prepare(epoch)
        self.keys_made += len(update.made)
        self.keys_erased += len(update.erased)
        self.next_key_update = self.keys.next_update(wall)
        return update

    def keys_on_schedule(self, wall: float) -> None:
        """Update the keys if the schedule changed since the last update (:meth:`update_keys`),
        and send the new descriptor: a new key or an erased one changes it, and sent at every
        change of the schedule it also reaches an authority that restarted and forgot it."""
        if wall < self.next_key_update:
            return
        self.update_keys(wall)
        assert self.keeper is not None
        self.keeper.upload(self.descriptor(wall), wall)

    def descriptor(self, wall: float) -> bytes:
        """Return this node's descriptor, signed with its identity key, with the public Sphinx
        keys it holds at unix time ``wall`` (docs/pki.md)."""
        assert self.keys is not None
        spec = self.spec
        described = pki.Descriptor(
            self.local.network, spec.name, spec.id, spec.role.value, spec.layer, spec.host,
            spec.port, self.identity.curve_public, self.signing.public,
            tuple(sorted(self.keys.public_keys().items())), self.local.epoch.epoch_at(wall))
        return pki.sign_descriptor(described, self.signing.secret)

    def network_of(self, document: pki.Document) -> Network:
        """Return the network of ``document`` for this node (its clients' keys from the state
        directory); UnusableDocument if it does not fit the node's topology."""
        return network_from_document(document, self.local,
                                     load_directory(self.state_dir, self.local,
                                                    clients_only=True))

    def _wait_for_network(self, keeper: NetworkKeeper) -> Network | None:
        """Wait until the authorities give a document that lists this node, and return its
        network; None if a stop signal came first. Says every 10 s what it waits for."""
        poller = zmq.Poller()
        for sock in keeper.sockets():
            poller.register(sock, zmq.POLLIN)
        next_note = time.monotonic() + WAIT_NOTE_INTERVAL
        while not self.stopping:
            wall = time.time()
            # The schedule moves while the node waits (for its admission, say): the keys and the
            # descriptor follow it, or the node would start with the keys of the epoch it began
            # waiting in and, after `ahead` epochs, publish no key for the epochs voted on.
            self.keys_on_schedule(wall)
            keeper.on_timer(wall)
            network = keeper.newer_network(wall, -1)
            if network is not None:
                if network.is_member(self.spec.name):
                    LOG.info("network document of epoch %d: %d nodes", network.version,
                             len(network.topology.nodes()))
                    return network
                LOG.warning("the network document of epoch %d does not list node %s (not on "
                            "the authorities' allowlist yet?); waiting for the next epoch's",
                            network.version, self.spec.name)
            if time.monotonic() >= next_note:
                next_note = time.monotonic() + WAIT_NOTE_INTERVAL
                LOG.info("node %s waits for a network document from the authorities (%s)",
                         self.spec.name, keeper.status(wall))
            wait = min(max(0.0, keeper.next_deadline(wall) - wall),
                       max(0.0, self.next_key_update - wall), POLL_CAP_MS / 1000)
            if poller.poll(int(wait * 1000) + 1):
                keeper.on_readable(time.time())
        return None

    def _shutdown(self, out: links.Links | None, pool: WorkerPool | None,
                  sockets: list[zmq.Socket[bytes]], auth: object,
                  ctx: zmq.Context[zmq.Socket[bytes]], ipc_dir: Path) -> None:
        if out is not None:
            out.close(linger_ms=1_000 if self.topology.runtime.drain_on_shutdown else 0)
        if pool is not None:
            pool.stop()
        for sock in sockets:
            sock.close(linger=0)
        auth.stop()  # type: ignore[attr-defined]
        self._close_epochs()
        ctx.destroy(linger=0)  # closes any socket a failed start left open, then terminates
        if self.mailbox is not None:
            self.mailbox.close()
        if self.tap_file is not None:
            self.tap_file.close()
        metrics.control_path(self.state_dir, self.spec.name).unlink(missing_ok=True)
        shutil.rmtree(ipc_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            if (self.node_dir / IPC_RECORD).read_text().strip() == str(ipc_dir):
                (self.node_dir / IPC_RECORD).unlink()

    @property
    def stopping(self) -> bool:
        """True once a stop signal arrived."""
        return self._stop_signal is not None


class _Loop:
    """The node loop proper: reads sockets, hands what arrived to the centre, sends what the
    centre leaves in its output lists."""

    def __init__(self, node: NodeProcess, centre: NodeCentre, gate: links.KeyGate,
                 pool: WorkerPool, out: links.Links, router: zmq.Socket[bytes],
                 work: list[zmq.Socket[bytes]], results: zmq.Socket[bytes],
                 control: zmq.Socket[bytes], directory: _Directory) -> None:
        self.n = node
        self.directory = directory
        self.centre = centre
        self.gate = gate
        self.pool = pool
        self.out = out
        self.router, self.work, self.results, self.control = router, work, results, control
        self.params = node.topology.sphinx
        self._util_prev: dict[int, tuple[float, float]] = {}
        self._keys_version = node.sphinx_keys_version  # the key set the workers were sent
        for index in range(len(work)):
            centre.dispatch.started(index, pool.pid(index))
        self._job_sender = centre.jobs_sender(self._send_jobs)

    def run(self) -> None:
        # While MAX_IN_FLIGHT packets are with the workers the ROUTER is not read, so it must not
        # be polled either: a readable socket that is never read makes every poll return at once.
        reading, busy = zmq.Poller(), zmq.Poller()
        for poller in (reading, busy):
            poller.register(self.results, zmq.POLLIN)
            poller.register(self.control, zmq.POLLIN)
        reading.register(self.router, zmq.POLLIN)
        directory = self.directory.sockets()
        for poller in (reading, busy):
            for sock in directory:
                poller.register(sock, zmq.POLLIN)
        centre, dispatch = self.centre, self.centre.dispatch
        # The control endpoint is already published: the first request must find every statistic.
        now = time.monotonic()
        self.n.snapshot.update(self.statistics(now), self.labelled(now))
        while not self.n.stopping:
            now = time.monotonic()
            poller = reading if dispatch.accepting() else busy
            ready = dict(poller.poll(centre.timeout_ms(now, POLL_CAP_MS)))
            centre.woke()
            self.out.on_events(ready)  # link states first: sends below are counted against them
            if self.results in ready:
                self._read_results()
            if self.router in ready and dispatch.accepting():
                self._read_router()
            if self.control in ready:
                metrics.answer_control(self.control, self.n.snapshot)
            if any(sock in ready for sock in directory):
                centre.guarded("directory", self.directory.on_readable, time.time())
            if self.n.sphinx_keys_version != self._keys_version:
                self._send_new_keys()
            if dispatch.waiting:  # left over when no worker could take them
                dispatch.dispatch(self._job_sender)
            now = time.monotonic()
            centre.pop_due(now)
            self._timers(now)
            for sock in self.out.redial(now):  # links closed (refused, or down too long)
                reading.unregister(sock)
                busy.unregister(sock)
            for sock in self.out.take_new_sockets():  # links made since the last poll
                reading.register(sock, zmq.POLLIN)
                busy.register(sock, zmq.POLLIN)
        self._drain_on_stop()

    # ------------------------------------------------------------------ inbound

    def _read_router(self) -> None:
        # Two recv calls, not recv_multipart: that costs 2-5 us more per frame in pyzmq (a
        # getsockopt(RCVMORE) per part, measured), and the node reads one frame per packet.
        recv, on_frame, entity = self.router.recv, self.centre.on_frame, self.gate.entity
        accepting = self.centre.dispatch.accepting
        for _ in range(BATCH):
            try:
                route = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            # A ROUTER message is the routing id and at least one part, delivered whole.
            part = recv(zmq.NOBLOCK, copy=False)
            if part.more:
                self._discard_rest()
                self.centre.on_multipart()
            else:  # a view of the message: a PACKETS frame's packets go on as a view of it
                uid = str(part.get("User-Id"))
                on_frame(time.monotonic(), route, entity(uid), uid, part.buffer)
            if not accepting():
                break
        self._send_replies()
        if self.centre.dispatch.waiting:
            self.centre.dispatch.dispatch(self._job_sender)
        self._send_outbox(time.monotonic())  # relayed packets

    def _discard_rest(self) -> None:
        """Read and forget the remaining parts of a multipart message (no frame has them)."""
        while self.router.recv(zmq.NOBLOCK, copy=False).more:
            pass

    def _send_replies(self) -> None:
        """Send the centre's answers to clients, and let newly registered keys through ZAP."""
        for curve_public, entity in self.centre.admitted:
            self.gate.add(curve_public, entity)
        self.centre.admitted.clear()
        for route, data in self.centre.take_replies():
            self.router.send_multipart([route, data], zmq.NOBLOCK)

    def _send_jobs(self, index: int, message: bytes) -> bool:
        """Send a job message to worker ``index``; False if that worker cannot take it now."""
        try:
            self.work[index].send(message, zmq.NOBLOCK)
        except zmq.Again:  # that worker is gone (no peer) or full
            return False
        return True

    def _send_keys(self, index: int) -> bool:
        """Send the node's Sphinx key set to worker ``index``; False if its socket cannot take
        it now (no worker connected yet: it asks again with its next report). The message is
        zeroed once libzmq has its copy."""
        message = encode_keys(self.n.sphinx_keys)
        try:
            self.work[index].send(message, zmq.NOBLOCK)
        except zmq.Again:
            return False
        finally:
            message[:] = bytes(len(message))
        return True

    def _send_new_keys(self) -> None:
        """Send a key set that replaced the last one to every worker that holds the last one;
        one that cannot take it now gets no jobs until it has it (at its next report)."""
        self._keys_version = self.n.sphinx_keys_version
        dispatch = self.centre.dispatch
        for index, keyed in enumerate(dispatch.has_keys):
            if keyed:
                dispatch.keyed(index, self._send_keys(index))

    def _read_results(self) -> None:
        centre = self.centre
        for _ in range(BATCH):
            try:  # a view of the message: a packet due now is copied once, into its frame
                message = self.results.recv(zmq.NOBLOCK, copy=False).buffer
            except zmq.Again:
                break
            centre.on_results(time.monotonic(), message)
        # What this round of results made due goes out together (see _send_outbox).
        self._send_outbox(time.monotonic())
        for report in centre.reports:
            self.pool.record(report)
        centre.reports.clear()
        for index in centre.take_key_requests():  # workers up and without keys: keys first
            if self._send_keys(index):
                centre.dispatch.keyed(index)
        # A provider's deliveries of this round, in one transaction; acks are scheduled after it.
        centre.commit(time.monotonic())

    # ------------------------------------------------------------------ outbound and timers

    def _send_outbox(self, now: float) -> None:
        """Send what the centre made due, grouped by next hop, in frames of up to
        ``MAX_PACKETS_PER_FRAME`` packets (docs/protocol.md, "PACKETS").

        Sent one at a time, between the results, each packet found the link's I/O thread idle
        and woke it (a system call on each side, and a TCP write of one packet); sent together,
        one wake-up and one write carry several packets, and in one frame they cost the node,
        its I/O thread and the next hop one message instead of one each. Packets for one next
        hop keep their order; the links to different next hops are independent sockets."""
        if not self.centre.outbox:
            return
        encode, params, most = wire.encode_packets, self.params, wire.MAX_PACKETS_PER_FRAME
        outbox = self.centre.take_outbox(now)
        by_hop: dict[bytes, list[wire.Buffer]] = {}
        for next_hop, packet in outbox:
            packets = by_hop.get(next_hop)
            if packets is None:
                packets = by_hop[next_hop] = []
            packets.append(packet)
        per_peer: dict[bytes, int] = {}
        for next_hop, packets in by_hop.items():
            sizes = [min(most, len(packets) - at) for at in range(0, len(packets), most)]
            frames = [encode(packets[at:at + most], params=params)
                      for at in range(0, len(packets), most)]
            taken = sum(sizes[:self.out.send_frames(next_hop, frames, now, sizes=sizes)])
            if taken:
                per_peer[next_hop] = taken
        sent = sum(per_peer.values())
        self.centre.count_sent(sent, len(outbox) - sent, per_peer)

    def _timers(self, now: float) -> None:
        """Run what the centre says is due: its own timers (mix loops, mailbox expiry), then
        heartbeats, worker checks and statistics, each guarded by the centre."""
        due = self.centre.on_timer(now)
        self._send_outbox(now)  # due packets and mix loops first: a link they use is not idle
        wall = time.time()  # the key schedule and the documents run on unix time
        if self.directory.due(wall):
            self.centre.guarded("directory", self.directory.on_timer, wall)
        if due.heartbeats:
            self.centre.guarded("heartbeats", self._heartbeats, now)
        if due.housekeeping:
            if self.n.tap_file is not None:
                self.n.tap_file.flush()
            self.centre.guarded("worker check", self._check_workers, now)
            self.centre.guarded("statistics", self._refresh_statistics, now)

    def _check_workers(self, _now: float) -> None:
        for index in self.pool.check():
            lost = self.centre.worker_replaced(index, self.pool.pid(index))
            if lost:
                LOG.warning("worker %d died holding %d packets; they are lost", index, lost)

    def _refresh_statistics(self, now: float) -> None:
        self.n.snapshot.update(self.statistics(now), self.labelled(now))

    def _heartbeats(self, now: float) -> None:
        beat = self.centre.heartbeat()
        for peer in self.centre.idle_links(now, self.out.peers(), self.out.last_sent):
            self.out.send(peer, beat, now, packet=False)

    def _drain_on_stop(self) -> None:
        pending = self.centre.drain()
        self._send_outbox(time.monotonic())
        if pending:
            LOG.info("shutdown: %d queued packets %s", pending,
                     "sent" if self.n.topology.runtime.drain_on_shutdown else "dropped")

    # ------------------------------------------------------------------ statistics

    def statistics(self, now: float) -> dict[str, float]:
        """Return every counter and level of this node as one flat mapping: the centre's and
        what only the runtime can measure (processes, CPU time, links, the ZAP gate, uptime).
        Each name, its kind and its meaning are declared in :mod:`zmix.stats_schema`
        (tests/test_metrics.py checks that a running node reports exactly those)."""
        stats = self.centre.statistics(now)
        stats["workers"] = len(self.pool.pids())
        stats["worker_utilisation"] = self._worker_utilisation(now)
        stats["worker_processed"] = self.pool.processed()
        stats["cpu_seconds_workers"] = self.pool.cpu_seconds()
        stats["cpu_seconds_workers_sphinx"] = self.pool.sphinx_seconds()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats["cpu_seconds_node"] = usage.ru_utime + usage.ru_stime
        stats.update(self.out.statistics())
        stats["dropped_total"] += stats["dropped_link_down"]  # a drop the links count
        stats["auth_denied"] = self.gate.denied
        stats["auth_unregistered"] = self.gate.unregistered
        stats["auth_throttled"] = self.gate.throttled
        stats.update(self.directory.statistics(time.time()))
        stats["uptime_seconds"] = now - self.n.started
        stats["pid"] = os.getpid()
        return stats

    def labelled(self, now: float) -> dict[str, dict[str, float]]:
        """Return the labelled statistics (:data:`zmix.stats_schema.LABELLED_STATISTICS`), next
        hops named as the current network names them."""
        network = self.n.view.current

        def name(node_id: bytes) -> str:
            node = network.node_by_id(node_id)
            return node.name if node is not None else node_id.hex()

        return self.centre.labelled_statistics(now, name)

    def _worker_utilisation(self, now: float) -> float:
        busy = 0.0
        for index, report in self.pool.stats.items():
            prev = self._util_prev.get(index)
            if prev is not None and now > prev[0] and report.cpu_seconds >= prev[1]:
                busy += (report.cpu_seconds - prev[1]) / (now - prev[0])
            self._util_prev[index] = (now, report.cpu_seconds)
        workers = max(1, len(self.pool.stats))
        return min(1.0, busy / workers)


class _Directory:
    """The node's side of the key schedule and of the directory authorities, run by the loop:
    the authorities' answers, the key updates at each change of the schedule (with a new
    descriptor), the change to a newer network, and the replay filters' flushes. Its times
    are unix times (documents and epochs are)."""

    def __init__(self, node: NodeProcess) -> None:
        assert node.keeper is not None and node.keys is not None and node.replay is not None
        self.n = node
        self.keeper = node.keeper
        self.keys, self.replay = node.keys, node.replay
        wall = time.time()
        self._next_fetch = wall
        self._next_flush = wall + REPLAY_FLUSH_INTERVAL
        self._held = {e for e, doc in self.keeper.held.items() if wall <= doc.valid_until}
        self._left_out: int | None = None  # the last epoch whose document did not list the node

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """The sockets to the authorities, to poll for reading."""
        return self.keeper.sockets()

    def due(self, wall: float) -> bool:
        """True if :meth:`on_timer` has something to do at ``wall``."""
        return wall >= min(self.n.next_key_update, self._next_fetch, self._next_flush)

    def on_readable(self, wall: float) -> None:
        """Read the authorities' answers; change networks if a newer one is due."""
        self.keeper.on_readable(wall)
        self._next_fetch = min(self._next_fetch, self.keeper.next_deadline(wall))
        self._follow(wall)

    def on_timer(self, wall: float) -> None:
        """Update the keys, fetch documents, flush the replay filters: whatever is due."""
        self.n.keys_on_schedule(wall)
        if wall >= self._next_fetch:
            self.keeper.on_timer(wall)
            self._next_fetch = self.keeper.next_deadline(wall)
        if wall >= self._next_flush:
            self.replay.flush()
            self._next_flush = wall + REPLAY_FLUSH_INTERVAL
        self._follow(wall)

    def _follow(self, wall: float) -> None:
        """Change to a newer network if one is due; let the link gate admit the nodes of every
        document held when that set changed."""
        newer = self.keeper.newer_network(wall, self.n.view.current.version)
        if newer is not None:
            if newer.is_member(self.n.spec.name):
                self.n.replace_network(newer)
                LOG.info("network of epoch %d in use: %d nodes", newer.version,
                         len(newer.topology.nodes()))
            elif self._left_out != newer.version:
                self._left_out = newer.version
                LOG.warning("the network document of epoch %d does not list node %s (evicted "
                            "from the authorities' allowlist?): no node sends it traffic, and "
                            "it keeps the network of epoch %d", newer.version, self.n.spec.name,
                            self.n.view.current.version)
        # The documents still valid, not merely held: one that expired (an evicted node's last)
        # stops admitting its nodes' new links now, not at the next document fetched.
        held = {e for e, doc in self.keeper.held.items() if wall <= doc.valid_until}
        if held != self._held and self.n.gate is not None:
            self._held = held
            self.n.gate.replace(self.n._admitted_keys())

    def statistics(self, wall: float) -> dict[str, float]:
        """The key schedule's and the document's statistics (zmix.stats_schema)."""
        current = self.n.view.current
        return {
            "epoch": self.keys.params.epoch_at(wall),
            "document_epoch": current.version,
            "document_valid_seconds": (current.valid_until - wall
                                       if current.valid_until is not None else 0.0),
            "sphinx_keys_accepted": len(self.keys.accepted_epochs),
            "sphinx_keys_made": self.n.keys_made,
            "sphinx_keys_erased": self.n.keys_erased,
        }


def _try_to_bind(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
    """Bind a plain socket on ``endpoint`` and release it at once: raises the ZMQError the
    node's own bind would (an address in use, a host that is not this one's)."""
    probe = ctx.socket(zmq.ROUTER)
    try:
        probe.bind(endpoint)
        probe.unbind(endpoint)
    finally:
        probe.close(linger=0)


def _replace_ipc_record(record: Path, current: Path) -> None:
    """Remove the socket directory named in ``record`` (a run killed before it could clean up)
    and name ``current`` there instead."""
    try:
        old = Path(record.read_text().strip())
    except OSError:
        old = None
    if old is not None and old != current and old.parent == current.parent and (
            old.name.startswith("zmix-")):
        shutil.rmtree(old, ignore_errors=True)
    _write_atomically(record, f"{current}\n")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
