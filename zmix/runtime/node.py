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

import zmq

from zmix import wire
from zmix.dispatch import MAX_IN_FLIGHT
from zmix.errors import LocalMisuse
from zmix.keys import load_directory, load_private
from zmix.mailbox import Mailbox
from zmix.mixnode import NodeCore
from zmix.network import Network, NetworkView
from zmix.nodecentre import NodeCentre
from zmix.provider import ProviderCore
from zmix.runtime import links, metrics
from zmix.runtime.workers import WorkerPool
from zmix.topology import NodeSpec, Role, Topology
from zmix.topology_yaml import load_topology
from zmix.workframes import encode_keys

LOG = logging.getLogger(__name__)

__all__ = ["MAX_IN_FLIGHT", "NodeProcess"]

BATCH = 512  # frames read from one socket before looking at the others
POLL_CAP_MS = 100  # the loop wakes at least this often (signals, timers)
IPC_RECORD = "ipc-dir"  # in the node's directory: where this run's local sockets are


class NodeProcess:
    """Everything one node process owns. Build it, call :meth:`run`, it returns on a signal."""

    def __init__(self, state_dir: Path, name: str, *, workers: int | None = None) -> None:
        self.state_dir = state_dir
        topology = load_topology(state_dir / "topology.yaml")
        # The network as the state directory describes it at start: version 1. Everything
        # below reads self.view.current when it decides (replace_network brings a newer one).
        self.view = NetworkView(Network.build(topology, load_directory(state_dir, topology)))
        self.spec: NodeSpec = topology.node(name)
        self.identity = load_private(state_dir, name)
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
        self.sphinx_keys: list[tuple[int, bytes]] = []  # (epoch, private key), in trial order
        self.sphinx_keys_version = 0  # bumped by set_sphinx_keys: the loop sends the new set

    def set_sphinx_keys(self, keys: list[tuple[int, bytes]]) -> None:
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
        """The current network's topology."""
        return self.view.current.topology

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
            link_key=links.curve_key)

    def _open_door(self) -> bool:
        return self.spec.role is Role.PROVIDER and self.topology.mailbox.open_registration

    def _make_core(self, now: float) -> NodeCore:
        if self.spec.role is Role.PROVIDER:
            self.mailbox = Mailbox(self.node_dir / "mailbox.sqlite",
                                   quota=self.topology.mailbox.quota, ttl=self.topology.mailbox.ttl)
            self.provider = ProviderCore(self.view, self.spec.name, self.mailbox)
        return NodeCore(self.view, self.spec.name, self.rng, now, provider=self.provider)

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self._stop_signal = signum
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self) -> int:
        """Run the node until SIGTERM/SIGINT; return the process exit status (0)."""
        self._install_signals()
        if not self.sphinx_keys:  # one key for ever until the epoch key store sets them
            self.set_sphinx_keys([(0, self.identity.private_key)])
        centre = self._make_centre(time.monotonic())  # a provider's registered clients come along
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
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
                              self._resolve, max_frame=max_frame, name=self._name)
            if self.spec.metrics_port is not None:
                metrics.serve_prometheus(self.snapshot, self.spec.host, self.spec.metrics_port)
            LOG.info("node %s listening on %s with %d workers", self.spec.name,
                     self.spec.endpoint, self.worker_count)
            _Loop(self, centre, gate, pool, out, router, work, results, control).run()
        finally:
            self._shutdown(out, pool, sockets, auth, ctx, ipc_dir)
        LOG.info("node %s stopped (signal %s)", self.spec.name, self._stop_signal)
        return 0

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
        ctx.destroy(linger=0)  # closes any socket a failed start left open, then terminates
        if self.mailbox is not None:
            self.mailbox.close()
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
                 control: zmq.Socket[bytes]) -> None:
        self.n = node
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

    def run(self) -> None:
        # While MAX_IN_FLIGHT packets are with the workers the ROUTER is not read, so it must not
        # be polled either: a readable socket that is never read makes every poll return at once.
        reading, busy = zmq.Poller(), zmq.Poller()
        for poller in (reading, busy):
            poller.register(self.results, zmq.POLLIN)
            poller.register(self.control, zmq.POLLIN)
        reading.register(self.router, zmq.POLLIN)
        centre, dispatch = self.centre, self.centre.dispatch
        # The control endpoint is already published: the first request must find every statistic.
        self.n.snapshot.update(self.statistics(time.monotonic()))
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
            if self.n.sphinx_keys_version != self._keys_version:
                self._send_new_keys()
            if dispatch.jobs:  # left over when no worker could take them
                dispatch.dispatch(self._send_jobs)
            now = time.monotonic()
            centre.pop_due(now)
            self._timers(now)
            for monitor in self.out.take_new_monitors():  # links made since the last poll
                reading.register(monitor, zmq.POLLIN)
                busy.register(monitor, zmq.POLLIN)
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
            else:
                uid = str(part.get("User-Id"))
                on_frame(time.monotonic(), route, entity(uid), uid, part.bytes)
            if not accepting():
                break
        self._send_replies()
        if self.centre.dispatch.jobs:
            self.centre.dispatch.dispatch(self._send_jobs)
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
            try:
                message = self.results.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            now = time.monotonic()
            centre.on_results(now, message)
            self._send_outbox(now)
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
        """Send what the centre made due, back to back.

        Sent one at a time, between the results, each packet found the link's I/O thread idle
        and woke it (a system call on each side, and a TCP write of one packet); sent together,
        one wake-up and one write carry several packets."""
        if not self.centre.outbox:
            return
        send, encode, params, sent = self.out.send, wire.encode_packet, self.params, 0
        outbox = self.centre.take_outbox()
        for next_hop, packet in outbox:
            if send(next_hop, encode(packet, params=params), now):
                sent += 1
        self.centre.count_sent(sent, len(outbox) - sent)

    def _timers(self, now: float) -> None:
        """Run what the centre says is due: its own timers (mix loops, mailbox expiry), then
        heartbeats, worker checks and statistics, each guarded by the centre."""
        due = self.centre.on_timer(now)
        self._send_outbox(now)  # due packets and mix loops first: a link they use is not idle
        if due.heartbeats:
            self.centre.guarded("heartbeats", self._heartbeats, now)
        if due.housekeeping:
            self.centre.guarded("worker check", self._check_workers, now)
            self.centre.guarded("statistics", self._refresh_statistics, now)

    def _check_workers(self, _now: float) -> None:
        for index in self.pool.check():
            lost = self.centre.worker_replaced(index, self.pool.pid(index))
            if lost:
                LOG.warning("worker %d died holding %d packets; they are lost", index, lost)

    def _refresh_statistics(self, now: float) -> None:
        self.n.snapshot.update(self.statistics(now))

    def _heartbeats(self, now: float) -> None:
        beat = self.centre.heartbeat()
        for peer in self.centre.idle_links(now, self.out.peers(), self.out.last_sent):
            self.out.send(peer, beat, now)

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
        stats["auth_denied"] = self.gate.denied
        stats["auth_unregistered"] = self.gate.unregistered
        stats["auth_throttled"] = self.gate.throttled
        stats["uptime_seconds"] = now - self.n.started
        stats["pid"] = os.getpid()
        return stats

    def _worker_utilisation(self, now: float) -> float:
        busy = 0.0
        for index, report in self.pool.stats.items():
            prev = self._util_prev.get(index)
            if prev is not None and now > prev[0] and report.cpu_seconds >= prev[1]:
                busy += (report.cpu_seconds - prev[1]) / (now - prev[0])
            self._util_prev[index] = (now, report.cpu_seconds)
        workers = max(1, len(self.pool.stats))
        return min(1.0, busy / workers)


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
