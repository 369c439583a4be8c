"""The node process: one ROUTER in, one DEALER per next hop out, a worker pool, a delay heap.

``NodeProcess(state_dir, name).run()`` is what ``zmix-node`` runs. The loop, in one thread:

1. read frames from the ROUTER (while fewer than ``MAX_IN_FLIGHT`` packets are with the workers,
   so an overloaded node pushes back on its upstream links instead of growing without bound);
2. PUSH the packets to the workers, in batches of what one read brought (at most ``JOB_BATCH``
   per message, spread over the workers); PULL their results and hand them to the :class:`NodeCore`,
   which checks replay tags and delays and returns what to schedule;
3. keep scheduled packets in the :class:`DelayQueue` (absolute due times) and send each on its
   next hop's DEALER when it is due; the poll timeout follows the next due time;
4. on a provider, answer its clients' fetch and ack frames from the mailbox;
5. send the node's own mix loops, heartbeats on idle links, replace dead workers, refresh the
   statistics served on the control socket and the Prometheus endpoint.

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
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import zmq

from zmix import wire
from zmix.errors import DropReason, WireError
from zmix.keys import load_directory, load_private
from zmix.mailbox import Mailbox
from zmix.mixnode import NodeCore, Scheduled
from zmix.provider import ProviderCore
from zmix.runtime import links, metrics
from zmix.runtime.workers import (
    WorkerPool,
    WorkerStats,
    decode_forward,
    decode_result,
    encode_jobs,
    is_forward,
    split_results,
)
from zmix.scheduler import DelayQueue
from zmix.topology import NodeSpec, Role, Topology, load_topology

LOG = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4_096  # packets handed to workers and not yet back
BATCH = 512  # frames read from one socket before looking at the others
JOB_BATCH = 32  # packets in one message to a worker, at most
WORKER_QUEUE = 64  # packets given to one worker and not yet answered, at most
POLL_CAP_MS = 100  # the loop wakes at least this often (signals, timers)
HOUSEKEEPING_INTERVAL = 0.25  # seconds between statistics refreshes and worker checks
HEARTBEAT_INTERVAL = 1.0  # an outbound link idle this long gets a HEARTBEAT frame
PEER_ALIVE = 5.0  # a peer heard from within this many seconds counts as alive
EXPIRE_INTERVAL = 60.0  # seconds between mailbox expiry runs on a provider
IPC_RECORD = "ipc-dir"  # in the node's directory: where this run's local sockets are


class NodeProcess:
    """Everything one node process owns. Build it, call :meth:`run`, it returns on a signal."""

    def __init__(self, state_dir: Path, name: str, *, workers: int | None = None) -> None:
        self.state_dir = state_dir
        self.topology: Topology = load_topology(state_dir / "topology.yaml")
        self.spec: NodeSpec = self.topology.node(name)
        self.identity = load_private(state_dir, name)
        self.directory = load_directory(state_dir, self.topology)
        self.worker_count = workers or self.spec.workers
        self.node_dir = state_dir / "nodes" / name
        self.node_dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.SystemRandom()
        self.started = time.monotonic()
        self._stop_signal: int | None = None
        self._counts = {"received": 0, "sent": 0, "heartbeats_received": 0, "relayed": 0,
                        "client_frames": 0, "link_send_failed": 0, "worker_restarts": 0,
                        "internal_errors": 0, "loop_wakeups": 0}
        self._frame_drops = {r.value: 0 for r in DropReason}
        self._last_seen: dict[bytes, float] = {}
        self._util_prev: dict[int, tuple[float, float]] = {}
        self._utilisation = 0.0
        self._in_flight = 0
        self._slots = self.topology.mailbox.fetch_slots
        self.mailbox: Mailbox | None = None
        self.provider: ProviderCore | None = None
        self.queue: DelayQueue[Scheduled] = DelayQueue(self.topology.runtime.queue_limit)
        self.snapshot = metrics.Snapshot(name)

    # ------------------------------------------------------------------ set-up and tear-down

    def _admitted_keys(self) -> dict[bytes, bytes]:
        keys = {self.directory[n.name].curve_public: n.id for n in self.topology.nodes()
                if n.name != self.spec.name}
        if self.spec.role is Role.PROVIDER:
            for client in self.topology.clients_of(self.spec.name):
                keys[self.directory[client.name].curve_public] = client.id
        return keys

    def _resolve(self, node_id: bytes) -> tuple[str, bytes] | None:
        spec = self.topology.by_id(node_id)
        if not isinstance(spec, NodeSpec) or spec.id == self.spec.id:
            return None
        return spec.endpoint, self.directory[spec.name].curve_public

    def _name(self, node_id: bytes) -> str:
        spec = self.topology.by_id(node_id)
        return spec.name if spec is not None else node_id.hex()

    def _make_core(self, now: float) -> NodeCore:
        if self.spec.role is Role.PROVIDER:
            self.mailbox = Mailbox(self.node_dir / "mailbox.sqlite",
                                   quota=self.topology.mailbox.quota, ttl=self.topology.mailbox.ttl)
            clients = {c.id for c in self.topology.clients_of(self.spec.name)}
            names = self.topology.names()
            self.provider = ProviderCore(
                self.topology.sphinx, self.spec.id, clients, self.mailbox, self.topology.mailbox,
                network=self.topology.network, reserved=names,
                reserved_keys=[self.directory[name].curve_public for name in names])
        return NodeCore(self.topology, self.spec, self.directory, self.rng, now,
                        provider=self.provider)

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self._stop_signal = signum
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self) -> int:
        """Run the node until SIGTERM/SIGINT; return the process exit status (0)."""
        self._install_signals()
        core = self._make_core(time.monotonic())  # a provider's registered clients come with it
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        ipc_dir = Path(tempfile.mkdtemp(prefix="zmix-"))  # short path: ipc names are length-limited
        is_provider = self.spec.role is Role.PROVIDER
        gate = links.KeyGate(self._admitted_keys(), open_door=is_provider and
                             self.topology.mailbox.open_registration)
        if self.provider is not None:
            for client in self.provider.registrations():
                gate.add(client.curve_public, client.id)
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
            _Loop(self, core, gate, pool, out, router, work, results, control).run()
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
    """The node loop proper; split from :class:`NodeProcess` to keep the set-up readable."""

    def __init__(self, node: NodeProcess, core: NodeCore, gate: links.KeyGate, pool: WorkerPool,
                 out: links.Links, router: zmq.Socket[bytes], work: list[zmq.Socket[bytes]],
                 results: zmq.Socket[bytes], control: zmq.Socket[bytes]) -> None:
        self.n = node
        self.core = core
        self.gate = gate
        self.pool = pool
        self.out = out
        self.router, self.work, self.results, self.control = router, work, results, control
        self.params = node.topology.sphinx
        self.next_housekeeping = 0.0
        self.next_heartbeat = 0.0
        self.next_expire = 0.0
        self.jobs: list[tuple[float, bytes]] = []  # packets read, not yet pushed to the workers
        self.outstanding = [0] * len(work)  # packets each worker holds
        self.outbox: list[tuple[bytes, bytes]] = []  # (next hop, packet) due now, not yet sent

    def run(self) -> None:
        # While MAX_IN_FLIGHT packets are with the workers the ROUTER is not read, so it must not
        # be polled either: a readable socket that is never read makes every poll return at once.
        reading, busy = zmq.Poller(), zmq.Poller()
        for poller in (reading, busy):
            poller.register(self.results, zmq.POLLIN)
            poller.register(self.control, zmq.POLLIN)
        reading.register(self.router, zmq.POLLIN)
        # The control endpoint is already published: the first request must find every statistic.
        self.n.snapshot.update(self.statistics(time.monotonic()))
        while not self.n.stopping:
            now = time.monotonic()
            poller = reading if self.n._in_flight < MAX_IN_FLIGHT else busy
            ready = dict(poller.poll(self._timeout_ms(now)))
            self.n._counts["loop_wakeups"] += 1
            self.out.on_events(ready)  # link states first: sends below are counted against them
            if self.results in ready:
                self._read_results()
            if self.router in ready and self.n._in_flight < MAX_IN_FLIGHT:
                self._read_router()
            if self.control in ready:
                metrics.answer_control(self.control, self.n.snapshot)
            if self.jobs:  # left over when no worker could take them
                self._push_jobs()
            now = time.monotonic()
            self._send_due(now)
            self._timers(now)
            for monitor in self.out.take_new_monitors():  # links made since the last poll
                reading.register(monitor, zmq.POLLIN)
                busy.register(monitor, zmq.POLLIN)
        self._drain_on_stop()

    def _timeout_ms(self, now: float) -> int:
        timeout = self.n.queue.timeout_ms(now, POLL_CAP_MS)
        if self.jobs:
            timeout = min(timeout, 10)  # packets wait for a worker: try again soon
        loop_due = self.core.next_loop_due()
        if loop_due is not None:
            timeout = min(timeout, max(0, int((loop_due - now) * 1000) + 1))
        return timeout

    # ------------------------------------------------------------------ inbound

    def _read_router(self) -> None:
        # Two recv calls, not recv_multipart: that costs 2-5 us more per frame in pyzmq (a
        # getsockopt(RCVMORE) per part, measured), and the node reads one frame per packet.
        recv = self.router.recv
        try:
            for _ in range(BATCH):
                try:
                    route = recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
                # A ROUTER message is the routing id and at least one part, delivered whole.
                data = recv(zmq.NOBLOCK, copy=False)
                try:
                    if data.more:
                        self._discard_rest()
                        self._drop_frame(DropReason.BAD_FRAME)
                    else:
                        self._on_frame(route, data)
                except Exception:  # a bug must cost one frame, not the node
                    LOG.exception("error while handling a frame; dropped")
                    self.n._counts["internal_errors"] += 1
                if self.n._in_flight >= MAX_IN_FLIGHT:
                    return
        finally:
            self._push_jobs()

    def _discard_rest(self) -> None:
        """Read and forget the remaining parts of a multipart message (no frame has them)."""
        while self.router.recv(zmq.NOBLOCK, copy=False).more:
            pass

    def _push_jobs(self) -> None:
        """Hand the packets read to the workers, each batch to the worker holding the fewest.

        A quiet node sends batches of one, at once. Under load packets wait here until a whole
        batch (``JOB_BATCH``, or an even share of what waits) fits within the ``WORKER_QUEUE``
        packets a worker may hold: the worker is still busy with the batch before, so waiting
        costs nothing, and the batches stay large. A batch of 32 costs a worker about 5 us of
        messaging per packet, a batch of one about 35 us (measured; docs/performance.md)."""
        jobs, start, workers = self.jobs, 0, len(self.work)
        while start < len(jobs):
            index = min(range(workers), key=self.outstanding.__getitem__)
            size = min(JOB_BATCH, -(-(len(jobs) - start) // workers))
            if WORKER_QUEUE - self.outstanding[index] < size:
                break
            if not self._send_jobs(index, jobs[start:start + size]):
                break
            start += size
        self.jobs = jobs[start:] if start else jobs

    def _send_jobs(self, first: int, chunk: list[tuple[float, bytes]]) -> bool:
        message = encode_jobs(chunk)
        for index in (first, *(i for i in range(len(self.work)) if i != first)):
            try:
                self.work[index].send(message, zmq.NOBLOCK)
            except zmq.Again:  # that worker is gone (no peer) or full
                continue
            self.outstanding[index] += len(chunk)
            return True
        return False

    def _on_frame(self, route: bytes, part: zmq.Frame) -> None:
        now = time.monotonic()
        uid = str(part.get("User-Id"))
        peer = self.gate.entity(uid)
        data = part.bytes
        if peer is None:  # past ZAP only through a provider's open door, or a withdrawn key
            self._on_stranger(now, route, data, uid)
            return
        self.n._last_seen[peer] = now
        packet = wire.packet_of(data, params=self.params)
        if packet is not None:  # the hot path: a packet for the workers
            self.n._counts["received"] += 1
            self.jobs.append((now, packet))
            self.n._in_flight += 1
            return
        try:
            frame = wire.decode(data, params=self.params, slots=self.n._slots)
        except WireError as exc:
            self._drop_frame(exc.reason)
            return
        if isinstance(frame, wire.Packet):  # packet_of took every well-formed one
            raise AssertionError("wire.packet_of missed a PACKET frame")
        if isinstance(frame, wire.Heartbeat):
            self.n._counts["heartbeats_received"] += 1
        else:
            self._on_client_frame(now, route, peer, frame, uid)

    def _on_stranger(self, now: float, route: bytes, data: bytes, uid: str) -> None:
        """A frame from a key the gate does not know: only a REGISTER is looked at."""
        frame: wire.Frame | None = None
        if self.gate.open_door:
            with contextlib.suppress(WireError):
                frame = wire.decode(data, params=self.params, slots=self.n._slots)
        if self.n.provider is None or not isinstance(frame, wire.Register):
            self._drop_frame(DropReason.UNKNOWN_PEER)
            return
        self._register(now, route, links.curve_key(uid), frame)

    def _register(self, now: float, route: bytes, link_key: bytes, frame: wire.Register) -> None:
        assert self.n.provider is not None
        reply, admitted = self.n.provider.on_register(now, link_key, frame)
        if admitted is not None:
            self.gate.add(admitted.curve_public, admitted.id)
            LOG.info("registered client %s", admitted.name)
        data = wire.encode(reply, params=self.params, slots=self.n._slots)
        self.router.send_multipart([route, data], zmq.NOBLOCK)

    def _on_client_frame(self, now: float, route: bytes, peer: bytes, frame: wire.Frame,
                         uid: str) -> None:
        provider = self.n.provider
        if provider is None or not provider.serves(peer):
            self._drop_frame(DropReason.BAD_FRAME)
            return
        self.n._counts["client_frames"] += 1
        reply: wire.Frame
        if isinstance(frame, wire.Register):
            self._register(now, route, links.curve_key(uid), frame)
            return
        if isinstance(frame, wire.Fetch):
            reply = provider.on_fetch(now, peer, frame)
        elif isinstance(frame, wire.Relay):
            self._relay(now, frame)
            return
        else:
            self._drop_frame(DropReason.BAD_FRAME)
            return
        data = wire.encode(reply, params=self.params, slots=self.n._slots)
        self.router.send_multipart([route, data], zmq.NOBLOCK)

    def _relay(self, now: float, frame: wire.Relay) -> None:
        """Pass a client's SURB answer to the SURB's first hop (the client cannot reach it)."""
        self.n._counts["relayed"] += 1
        self._send(frame.first_hop, frame.packet, now)

    def _drop_frame(self, reason: DropReason) -> None:
        self.n._frame_drops[reason.value] += 1

    def _read_results(self) -> None:
        for _ in range(BATCH):
            try:
                message = self.results.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            index, pid, frames = split_results(message)
            packets = 0
            for frame in frames:
                try:
                    packets += self._on_result(frame, now)
                except Exception:  # a bug must cost one packet, not the node
                    LOG.exception("error while handling a processed packet; dropped")
                    self.n._counts["internal_errors"] += 1
                    packets += 1  # a packet's: statistics are one fixed struct
            self._send_outbox(now)
            # A dead worker's packets were written off when it was replaced (worker_lost);
            # results it sent before dying are still used but no longer counted as held.
            if packets and index < len(self.outstanding) and pid == self.pool.pid(index):
                self.outstanding[index] = max(0, self.outstanding[index] - packets)
                self.n._in_flight = max(0, self.n._in_flight - packets)

    def _on_result(self, frame: bytes, now: float) -> bool:
        """Handle one result; return True if it was a packet's (not a worker's statistics)."""
        if is_forward(frame):  # the hot path: nearly every packet goes on to another node
            arrival, next_hop, delay_us, tag, packet = decode_forward(frame)
            due = self.core.on_forward(arrival, next_hop, delay_us, tag)
            if due is not None:
                self._schedule(due, next_hop, packet, now)
            return True
        arrival, value = decode_result(frame)
        if isinstance(value, WorkerStats):
            self.pool.record(value)
            return False
        if isinstance(value, DropReason):
            self.core.on_invalid(value)
            return True
        for item in self.core.on_result(arrival, value):
            self._schedule(item.due, item.next_hop, item.packet, now)
        return True

    # ------------------------------------------------------------------ outbound and timers

    def _schedule(self, due: float, next_hop: bytes, packet: bytes, now: float) -> None:
        """Put ``packet`` for ``next_hop`` in the outbox if ``due`` has passed, else queue it."""
        if due <= now:
            self.outbox.append((next_hop, packet))
        elif not self.n.queue.push(due, Scheduled(due, next_hop, packet)):
            self.core.on_invalid(DropReason.QUEUE_FULL)

    def _send_outbox(self, now: float) -> None:
        """Send what a batch of results made due, back to back.

        Sent one at a time, between the results, each packet found the link's I/O thread idle
        and woke it (a system call on each side, and a TCP write of one packet); sent together,
        one wake-up and one write carry several packets."""
        outbox, self.outbox = self.outbox, []
        for next_hop, packet in outbox:
            self._send(next_hop, packet, now)

    def _send_due(self, now: float) -> None:
        for item in self.n.queue.pop_due(now):
            self._send(item.next_hop, item.packet, now)

    def _send(self, next_hop: bytes, packet: bytes, now: float) -> None:
        if self.out.send(next_hop, wire.encode_packet(packet, params=self.params), now):
            self.n._counts["sent"] += 1
        else:
            self.n._counts["link_send_failed"] += 1

    def _timers(self, now: float) -> None:
        """Run what is due on the node's own clock: mix loops, heartbeats, worker checks,
        statistics, mailbox expiry.

        Each runs under its own guard, like a frame: a bug in one is logged and counted in
        ``internal_errors`` and costs that round of it, not the node (a node that died here
        would die again after every restart). Each next time is set before the step runs, so a
        step that keeps failing runs at its usual pace instead of on every wake-up."""
        self._guarded("mix loop", self._send_loops, now)
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + HEARTBEAT_INTERVAL
            self._guarded("heartbeats", self._heartbeats, now)
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL
            self._guarded("worker check", self._check_workers, now)
            self._guarded("statistics", self._refresh_statistics, now)
        if self.n.mailbox is not None and now >= self.next_expire:
            self.next_expire = now + EXPIRE_INTERVAL
            self._guarded("mailbox expiry", self.n.mailbox.expire, now)

    def _guarded(self, what: str, step: Callable[[float], object], now: float) -> None:
        try:
            step(now)
        except Exception:  # a bug must cost one round of a timer, not the node
            LOG.exception("error in the node's %s; skipped this time", what)
            self.n._counts["internal_errors"] += 1

    def _send_loops(self, now: float) -> None:
        for item in self.core.poll_loops(now):
            self._send(item.next_hop, item.packet, now)

    def _check_workers(self, _now: float) -> None:
        for index in self.pool.check():
            self._worker_replaced(index)

    def _refresh_statistics(self, now: float) -> None:
        self.n.snapshot.update(self.statistics(now))

    def _worker_replaced(self, index: int) -> None:
        lost, self.outstanding[index] = self.outstanding[index], 0
        self.n._in_flight = max(0, self.n._in_flight - lost)
        self.n._frame_drops[DropReason.WORKER_LOST.value] += lost
        self.n._counts["worker_restarts"] += 1
        if lost:
            LOG.warning("worker %d died holding %d packets; they are lost", index, lost)

    def _heartbeats(self, now: float) -> None:
        beat = wire.encode(wire.Heartbeat(), params=self.params, slots=self.n._slots)
        for peer in self.out.peers():
            if now - self.out.last_sent.get(peer, 0.0) >= HEARTBEAT_INTERVAL:
                self.out.send(peer, beat, now)

    def _drain_on_stop(self) -> None:
        pending = self.n.queue.drain()
        if self.n.topology.runtime.drain_on_shutdown:
            now = time.monotonic()
            for item in pending:
                self._send(item.next_hop, item.packet, now)
        else:
            self.n._frame_drops[DropReason.SHUTDOWN.value] += len(pending)
        if pending:
            LOG.info("shutdown: %d queued packets %s", len(pending),
                     "sent" if self.n.topology.runtime.drain_on_shutdown else "dropped")

    # ------------------------------------------------------------------ statistics

    def statistics(self, now: float) -> dict[str, float]:
        """Return every counter and level of this node as one flat mapping; each name, its
        kind and its meaning are declared in :mod:`zmix.stats_schema` (tests/test_metrics.py
        checks that a running node reports exactly those)."""
        stats: dict[str, float] = dict(self.n._counts)
        stats.update(self.core.statistics())
        for reason, count in self.n._frame_drops.items():
            stats[f"dropped_{reason}"] = stats.get(f"dropped_{reason}", 0) + count
        stats["dropped_total"] = sum(v for k, v in stats.items()
                                     if k.startswith("dropped_") and k != "dropped_total")
        queue = self.n.queue.statistics()
        stats["queue_depth"] = queue["depth"]
        stats["queue_high_water"] = queue["high_water"]
        stats["in_flight"] = self.n._in_flight
        stats["workers"] = len(self.pool.pids())
        stats["worker_utilisation"] = self._worker_utilisation(now)
        stats["worker_processed"] = self.pool.processed()
        stats["cpu_seconds_workers"] = self.pool.cpu_seconds()
        stats["cpu_seconds_workers_sphinx"] = self.pool.sphinx_seconds()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats["cpu_seconds_node"] = usage.ru_utime + usage.ru_stime
        stats["peers_alive"] = sum(1 for t in self.n._last_seen.values() if now - t < PEER_ALIVE)
        stats.update(self.out.statistics())
        stats["auth_denied"] = self.gate.denied
        stats["auth_unregistered"] = self.gate.unregistered
        stats["auth_throttled"] = self.gate.throttled
        stats["uptime_seconds"] = now - self.n.started
        stats["pid"] = os.getpid()
        if self.n.mailbox is not None:
            stats.update({f"mailbox_{k}": v for k, v in self.n.mailbox.statistics().items()})
        return stats

    def _worker_utilisation(self, now: float) -> float:
        busy = 0.0
        for index, report in self.pool.stats.items():
            prev = self.n._util_prev.get(index)
            if prev is not None and now > prev[0] and report.cpu_seconds >= prev[1]:
                busy += (report.cpu_seconds - prev[1]) / (now - prev[0])
            self.n._util_prev[index] = (now, report.cpu_seconds)
        workers = max(1, len(self.pool.stats))
        self.n._utilisation = min(1.0, busy / workers)
        return self.n._utilisation


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
