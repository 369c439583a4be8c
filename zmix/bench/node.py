"""``zmix-bench node``: one mixnode process and its worker pool under load.

The benchmark builds a two-layer network on loopback, runs the layer-0 mixnode as a real
``zmix-node`` process, and plays its neighbours itself: a load generator with the provider's CURVE
key sends pre-built packets (route: the node, then a layer-1 node, zero delays, so creation cost is
not measured), and a sink with the layer-1 node's keys counts what the node forwards. The
network's authority runs as a real process; the two played nodes publish descriptors like real
ones (zmix.bench.common.play_node), and the packets use the node's key of the current epoch from
the authority's document. It reports, from one run:

- forwarded packets/s at saturation (the generator sends as fast as the node takes them);
- loss below saturation (the generator paces at a fraction of that rate; must be zero);
- CPU seconds per forwarded packet, node process plus workers (from the node's own accounting),
  and its ratio to the Sphinx per-hop time measured in this process during the same run (CPU
  time of ``process_packet``, sampled just before and just after the saturation phase);
- for comparison, the CPU time the workers themselves spent in ``process_packet`` per packet,
  under the load (slower than in this process: the cores are shared with the node's threads and
  the load generator), and the ratio of the CPU per packet to that;
- the cost of key selection at an epoch boundary (docs/sphinx.md, "Keys per epoch"): the CPU
  time of ``process_packet_keys`` per packet when every packet opens with the first key tried
  and when every packet needs the second (the worst case of a boundary), measured in this
  process in alternating chunks over the same packets; ``key_trial_ratio`` is second / first,
  and ``key_trial_cpu_ratio`` what the extra time makes of the node's whole CPU per packet;
- the cost of the replay filters' persistence (docs/operations.md, "Replay protection"): replay
  lookups per second with the filters in files (mmap, as the node keeps them) over lookups with
  them in memory (``replay_file_ratio``, measured in this process in alternating rounds), a
  flush of a full filter's dirty pages (``replay_flush_ms``, done every second by the node) and
  its share of one second of the node's saturated throughput (``replay_flush_share``).

- where the CPU of the saturation phase went, per forwarded packet, by thread
  (``cpu_seconds_per_packet_by_thread``, read from Linux's ``/proc/PID/task/TID/schedstat``):
  the node loop, the node's libzmq I/O thread, the workers, their libzmq I/O threads, and the
  benchmark's own generator, sink and libzmq I/O thread (they share the cores with the node);
  ``cpu_seconds_per_packet_bench`` is this process's whole CPU time over the phase.

The generator sends pre-encoded frames back to back on one CURVE link (the send blocks at the
link's high-water mark: the node sets the pace): in the saturation phase PACKETS frames of
``--batch`` packets (32, the most a frame holds: what a neighbour forwarding at the node's own
rate sends, ``packets_per_frame_out`` shows how full the node's own frames are at saturation),
in the loss phase one PACKET per packet. The sink counts the packets of PACKET and PACKETS
frames, reading each message without copying it, blocked in recv between them.

The saturation phase runs in ``--rounds`` rounds (5), each a share of the packets; the figures
are summed over them. ``forwarded_per_second`` is the steady rate: in each round, the packets
the sink counted between the frame that brought it past 10% of the round's packets and the one
that brought it past 90%, over the time between them (``forwarded_per_second_rounds``, round by
round), so that the pipeline filling at a round's start and draining at its end (a worker
finishing its last batch while the other core idles) does not count: a fixed few milliseconds
that weigh more on a profile whose rounds are shorter. ``forwarded_per_second_whole`` (and
``_whole_rounds``) is the older figure, from each round's first packet sent to its last one
forwarded.

``--profile`` picks the Sphinx profile of the network (docs/sphinx.md); ``--profile all`` runs one
network per wire profile, all at once, their saturation rounds taking turns (v1's first round,
kem1's first round, v1's second ...) so that the shared machine's drift falls on every profile
alike; the rest of the benchmark follows one profile after the other. It adds each profile's
saturated packets/s as a ratio to v1's (``forwarded_ratio_to_v1``, round by round in
``forwarded_ratio_to_v1_rounds``, whole rounds in ``forwarded_ratio_to_v1_whole``) and its CPU
per packet over all those threads as a ratio too
(``cpu_ratio_to_v1``: v1's CPU per packet over this profile's, the packets/s ratio a machine with
nothing else to run would show while the run is CPU-bound; on a shared machine the packets/s
swing with the other load, the CPU much less).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import resource
import statistics as stats
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from zmix import crypto, wire
from zmix.bench.common import fetch_network, hops_at, make_network, play_node, start_authorities
from zmix.bench.replay import measure as measure_replay
from zmix.epochkeys import EpochKeyStore, key_directory
from zmix.keys import load_directory, load_private
from zmix.network import Network
from zmix.runtime import links, metrics
from zmix.runtime.launcher import node_command
from zmix.sphinx import (
    WIRE_PROFILES,
    Profile,
    create_forward_packet,
    process_packet,
    process_packet_keys,
)
from zmix.topology import Topology


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``zmix-bench node``."""
    parser = argparse.ArgumentParser(prog="zmix-bench node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=30_000,
                        help="packets sent in the saturation phase (default 30000)")
    parser.add_argument("--paced-fraction", type=float, default=0.5,
                        help="rate of the loss phase as a fraction of saturation (default 0.5)")
    parser.add_argument("--paced-seconds", type=float, default=3.0,
                        help="length of the loss phase (default 3 s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes of the node (default: the machine's cores)")
    parser.add_argument("--payload", type=int, default=2048, help="Sphinx payload bytes")
    parser.add_argument("--profile", choices=[*(p.value for p in WIRE_PROFILES), "all"],
                        default=Profile.V1.value,
                        help="the network's Sphinx profile, or all of them at once, their "
                             "saturation rounds taking turns, with ratios to v1 (default v1)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="the saturation phase in this many rounds; with several profiles "
                             "their rounds take turns (default 5)")
    parser.add_argument("--batch", type=int, default=wire.MAX_PACKETS_PER_FRAME,
                        choices=range(1, wire.MAX_PACKETS_PER_FRAME + 1), metavar="N",
                        help="packets per frame the generator sends at saturation, 1 to "
                             f"{wire.MAX_PACKETS_PER_FRAME} (default "
                             f"{wire.MAX_PACKETS_PER_FRAME})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


class _Sink:
    """The layer-1 node's ROUTER: counts packets that arrive, in a thread."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], topology: Topology,
                 state: Path) -> None:
        spec = topology.layers[1][0]
        me = load_private(state, spec.name)
        directory = load_directory(state, topology)
        sender = topology.layers[0][0]
        self.gate = links.KeyGate({directory[sender.name].curve_public: sender.id})
        self.auth = links.start_authenticator(ctx, self.gate, topology.network)
        self.sock = links.bind_router(ctx, spec.endpoint, me.curve_public, me.curve_private,
                                      topology.network,
                                      max_frame=wire.node_frame_limit(topology.sphinx))
        self.packet_length = topology.sphinx.packet_length
        # (arrival time, packets so far) after each frame that carried packets: len() is the
        # frames, the last mark the count and the last packet's time
        self.marks: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.tid = self._thread.native_id  # for the CPU-by-thread figures

    def _run(self) -> None:
        # As little work per packet as counting allows: this thread shares the machine's cores
        # with the node under test. Two recv calls, not recv_multipart (which costs a
        # getsockopt per part); the frame read without a copy (a PACKETS frame is up to 80 KB):
        # only its type and length are looked at. The thread blocks in recv: at saturation the
        # node sends frames of about 32 packets, a few hundred a second, and a wake-up per frame
        # costs less than napping and polling (0.9-1.0 us of the sink's CPU a packet against
        # 2.0-2.5 with a 1 ms nap, measured with PACKETS frames).
        recv, length = self.sock.recv, self.packet_length
        packet, packets = wire.FrameType.PACKET, wire.FrameType.PACKETS
        clock, mark, count = time.perf_counter, self.marks.append, 0
        self.sock.rcvtimeo = 50  # to look at the stop flag
        while not self._stop.is_set():
            try:
                recv()  # the routing id; the node sends one-part messages
            except zmq.Again:
                continue
            frame = recv(copy=False).buffer
            kind = frame[1] if len(frame) > 1 else 0
            if kind == packet:
                got = 1
            elif kind == packets:
                got = (len(frame) - 2) // length
            else:  # a HEARTBEAT does not count
                continue
            count += got
            mark((clock(), count))

    @property
    def count(self) -> int:
        """The packets counted so far."""
        return self.marks[-1][1] if self.marks else 0

    @property
    def last(self) -> float:
        """When the last packet counted arrived (perf_counter; 0.0 before any)."""
        return self.marks[-1][0] if self.marks else 0.0

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.count >= count

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(linger=0)
        self.auth.stop()


def _build_packets(topology: Topology, network: Network, count: int) -> tuple[int, list[bytes]]:
    """Return the key epoch of the node under test and ``count`` packets for it and the next
    layer, built now with the document's keys."""
    node, nxt = topology.layers[0][0], topology.layers[1][0]
    now = time.time()
    route = hops_at(network, (node.name, nxt.name), (0.0, 0.0), now)
    message = b"zmix-bench node"
    return network.epochs.epoch_at(now), [
        create_forward_packet(topology.sphinx, route, nxt.id, message) for _ in range(count)]


def _node_key(state: Path, name: str, epoch: int) -> bytes:
    """Return the running node ``name``'s Sphinx private key of ``epoch`` from its key
    directory (what its workers hold)."""
    return EpochKeyStore(key_directory(state, name)).private(epoch)


_COUNTERS = ("cpu_seconds_node", "cpu_seconds_workers", "cpu_seconds_workers_sphinx",
             "forwarded", "loop_wakeups")


def _node_counters(state: Path, name: str) -> dict[str, float]:
    """Return the running node's CPU times, packets forwarded and loop turns (``_COUNTERS``)."""
    time.sleep(1.2)  # workers report their CPU time every 0.5 s
    values = metrics.statistics(state, name) or {}
    return {key: float(values.get(key, 0)) for key in _COUNTERS}


def run(args: argparse.Namespace, profile: Profile = Profile.V1) -> dict[str, Any]:
    """Run the benchmark on a network of Sphinx profile ``profile``; return its figures."""
    return run_profiles(args, [profile])[0]


def run_profiles(args: argparse.Namespace, profiles: Sequence[Profile]) -> list[dict[str, Any]]:
    """Run the benchmark on one network per profile of ``profiles``, all running at once, the
    saturation phase in ``args.rounds`` rounds that take turns between them (the machine's
    drift then falls on every profile alike); return each profile's figures."""
    with contextlib.ExitStack() as stack:
        benches = [stack.enter_context(_running(args, profile)) for profile in profiles]
        return _measure(args, benches)


@dataclass
class _Bench:
    """One network under test: its running node, the benchmark's sockets and packets."""

    topology: Topology
    state: Path
    packets: list[bytes]
    frames: list[bytes]
    sink: _Sink
    gen: zmq.Socket[bytes]
    key: bytes
    build_seconds: float
    node_pid: int


@contextlib.contextmanager
def _running(args: argparse.Namespace, profile: Profile) -> Iterator[_Bench]:
    """Set up a network of profile ``profile`` with its node running, its packets built and
    its link warmed up; stop everything on leaving."""
    sphinx: dict[str, Any] = {"payload_length": args.payload, "max_hops": 5}
    if profile is not Profile.V1:  # v1 is the default: a topology need not name it
        sphinx["profile"] = profile.value
    with tempfile.TemporaryDirectory(prefix="zmix-bench-node-") as tmp:
        topology, state = make_network(
            Path(tmp), layers=(("mix-0",), ("mix-1",)), providers=("provider-0",),
            loopix={"mix_loop_rate": 0.0}, sphinx=sphinx, workers=args.workers,
            network="zmix-bench")
        paced_n = int(args.paced_seconds * 4_000)  # enough for 4,000 packets/s paced
        total = args.packets + paced_n
        node = topology.layers[0][0]
        authorities = start_authorities(state, topology, verbosity=0)  # every node: 3
        proc: subprocess.Popen[bytes] | None = None
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sink: _Sink | None = None
        gen: zmq.Socket[bytes] | None = None
        try:
            # The neighbours the benchmark plays are in the document like real nodes: the node
            # admits their links and routes to them.
            for played in (topology.providers[0].name, topology.layers[1][0].name):
                play_node(state, topology, played)
            proc = subprocess.Popen(node_command(state, node.name, 0), stdin=subprocess.DEVNULL)
            sink = _Sink(ctx, topology, state)
            _wait_started(state, node.name, proc)
            t0 = time.perf_counter()
            epoch, packets = _build_packets(topology, fetch_network(state, topology), total)
            build_seconds = time.perf_counter() - t0
            gen = _generator(ctx, topology, state)
            frames = [wire.encode(wire.Packet(p), params=topology.sphinx, slots=1)
                      for p in packets]
            # Warm-up: the link and the workers are up before anything is timed.
            gen.send(frames[0])
            if not sink.wait_for(1, 30):
                raise RuntimeError("the node forwarded nothing")
            yield _Bench(topology, state, packets, frames, sink, gen,
                         _node_key(state, node.name, epoch), build_seconds, proc.pid)
        finally:
            if gen is not None:
                gen.close(linger=0)
            if sink is not None:
                sink.close()
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            ctx.term()
            authorities.stop()


def _generator(ctx: zmq.Context[zmq.Socket[bytes]], topology: Topology,
               state: Path) -> zmq.Socket[bytes]:
    """Return the provider's CURVE link to the node under test (the load generator)."""
    node, provider = topology.layers[0][0], topology.providers[0]
    me = load_private(state, provider.name)
    directory = load_directory(state, topology)
    gen = links.connect_dealer(ctx, node.endpoint, directory[node.name].curve_public,
                               me.curve_public, me.curve_private,
                               max_frame=wire.node_frame_limit(topology.sphinx))
    gen.sndhwm = 1_000
    return gen


def _wait_started(state: Path, name: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the node answers on its control socket (it has its network); RuntimeError if
    it exits or does not answer within 40 s."""
    deadline = time.monotonic() + 40
    while metrics.query(state, name, "ping", 0.2) != "pong":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the node under test did not start")
        time.sleep(0.05)


@dataclass
class _Saturation:
    """What the saturation rounds of one network measured, summed over its rounds."""

    sent: int = 0
    got: int = 0
    frames_out: int = 0  # the frames the node sent the packets in
    elapsed: float = 0.0
    bench_cpu: float = 0.0
    by_thread: dict[str, float] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)  # packets/s of each round
    steady_packets: int = 0  # the middle of each round: from 10% to 90% of its packets
    steady_seconds: float = 0.0
    steady_rates: list[float] = field(default_factory=list)


def _saturate(bench: _Bench, frames: list[zmq.Frame], packets: int,
              into: _Saturation) -> None:
    """Send ``frames`` (``packets`` packets in all) as fast as the node takes them; add what it
    forwarded, the time it took and the CPU spent to ``into``."""
    sink, gen = bench.sink, bench.gen
    base, frames_base = sink.count, len(sink.marks)
    bench_cpu = _process_cpu()
    threads = _thread_cpu(bench.node_pid, sink.tid)
    t0 = time.perf_counter()
    for frame in frames:
        gen.send(frame)  # blocks at the high-water mark: the node sets the pace
    sink.wait_for(base + packets, 60)
    got = sink.count - base
    into.frames_out += len(sink.marks) - frames_base
    elapsed = sink.last - t0 if got else 0.0
    into.bench_cpu += _process_cpu() - bench_cpu
    for where, seconds in _thread_cpu(bench.node_pid, sink.tid, since=threads).items():
        into.by_thread[where] = into.by_thread.get(where, 0.0) + seconds
    into.sent += packets
    into.got += got
    into.elapsed += elapsed
    into.rates.append(got / elapsed if elapsed > 0 else 0.0)
    steady = _steady(sink.marks, base, packets) or (got, elapsed)  # too few frames: whole
    into.steady_packets += steady[0]
    into.steady_seconds += steady[1]
    into.steady_rates.append(steady[0] / steady[1] if steady[1] > 0 else 0.0)


STEADY = (0.1, 0.9)  # the share of a round's packets between which its steady rate is taken


def _steady(marks: list[tuple[float, int]], base: int, packets: int) -> tuple[int, float] | None:
    """Return ``(packets, seconds)`` between the frames that brought the sink past ``STEADY``'s
    shares of a round's packets (the count was ``base`` before it), or None if they are too few:
    the round's rate without the pipeline filling at its start and draining at its end."""
    low, high = (bisect.bisect_left(marks, base + share * packets, key=_count) for share in STEADY)
    if high >= len(marks) or marks[high][0] <= marks[low][0]:  # the counts only grow
        return None
    (start, first), (end, last) = marks[low], marks[high]
    return last - first, end - start


def _count(mark: tuple[float, int]) -> int:
    return mark[1]


def _measure(args: argparse.Namespace, benches: list[_Bench]) -> list[dict[str, Any]]:
    """Measure every network of ``benches``: their saturation rounds take turns, the rest
    (loss below saturation, key trial, replay filters) follows one network at a time."""
    names = [bench.topology.layers[0][0].name for bench in benches]
    before = [_node_counters(b.state, name) for b, name in zip(benches, names, strict=True)]
    # The Sphinx time is sampled just before and just after the load: the machine is shared, its
    # speed drifts, and the samples should see the speed the workers saw.
    samples = [_sphinx_samples(b.topology, b.key, b.packets[:1_000]) for b in benches]
    rounds = max(1, args.rounds)
    saturations = [_Saturation() for _ in benches]
    # Each round's frames, made before anything is timed: PACKETS frames of --batch packets.
    batches = []
    for bench in benches:
        saturated = bench.packets[1:args.packets]
        chunks = [saturated[len(saturated) * index // rounds:
                            len(saturated) * (index + 1) // rounds] for index in range(rounds)]
        batches.append([(_frames(bench.topology, chunk, args.batch), len(chunk))
                        for chunk in chunks])
    for index in range(rounds):
        for bench, saturation, made in zip(benches, saturations, batches, strict=True):
            _saturate(bench, *made[index], saturation)
    for bench, sample in zip(benches, samples, strict=True):
        sample += _sphinx_samples(bench.topology, bench.key, bench.packets[:1_000])
    after = [_node_counters(b.state, name) for b, name in zip(benches, names, strict=True)]
    return [_figures(args, *each) for each in zip(benches, saturations, before, after, samples,
                                                   strict=True)]


def _frames(topology: Topology, packets: list[bytes], batch: int) -> list[zmq.Frame]:
    """Return ``packets`` in frames of ``batch`` (the last one may hold fewer), each already a
    libzmq message: sending it shares its buffer (a reference count) instead of copying 80 KB
    into fresh memory per send (about 1.5 us of the generator's CPU a packet, page faults
    mostly)."""
    return [zmq.Frame(wire.encode_packets(packets[at:at + batch], params=topology.sphinx))
            for at in range(0, len(packets), batch)]


def _figures(args: argparse.Namespace, bench: _Bench, saturation: _Saturation,
             before: dict[str, float], after: dict[str, float],
             sphinx_samples: list[float]) -> dict[str, Any]:
    """Finish the measurements of one network (after its saturation rounds); return them."""
    topology, key, packets = bench.topology, bench.key, bench.packets
    got = saturation.got
    whole = got / saturation.elapsed if saturation.elapsed > 0 else 0.0
    rate = (saturation.steady_packets / saturation.steady_seconds
            if saturation.steady_seconds > 0 else whole)
    forwarded = max(1.0, after["forwarded"] - before["forwarded"])
    per_packet = {key: (after[key] - before[key]) / forwarded for key in _COUNTERS}
    node_per_packet = per_packet["cpu_seconds_node"]
    workers_per_packet = per_packet["cpu_seconds_workers"]
    cpu_per_packet = node_per_packet + workers_per_packet
    in_workers = per_packet["cpu_seconds_workers_sphinx"]
    paced = _paced_phase(args, bench.frames[args.packets:], bench.gen, bench.sink, rate)
    per_hop = stats.median(sphinx_samples)
    first_key, second_key = _key_trial(topology, key, packets[:1_000])
    # On the state directory's disk, where the node keeps its filters (a flush on tmpfs is free).
    replay = measure_replay(50_000, directory=bench.state)
    return {
        "profile": topology.sphinx.profile.value,
        "workers": args.workers, "payload_bytes": args.payload,
        "packet_bytes": topology.sphinx.packet_length,
        "saturation_sent": saturation.sent, "saturation_forwarded": got,
        "packets_per_frame_in": args.batch,
        "packets_per_frame_out": got / saturation.frames_out if saturation.frames_out else 0.0,
        "forwarded_per_second": rate,
        "saturation_rounds": len(saturation.rates),
        "forwarded_per_second_rounds": saturation.steady_rates,
        "forwarded_per_second_whole": whole,
        "forwarded_per_second_whole_rounds": saturation.rates,
        "paced_rate": paced["rate"], "paced_sent": paced["sent"], "paced_lost": paced["lost"],
        "cpu_seconds_per_packet": cpu_per_packet,
        "cpu_seconds_per_packet_node_loop": node_per_packet,
        "cpu_seconds_per_packet_workers": workers_per_packet,
        "loop_wakeups_per_packet": per_packet["loop_wakeups"],
        "cpu_seconds_per_packet_bench": saturation.bench_cpu / max(1, got),
        "cpu_seconds_per_packet_by_thread": {
            where: saturation.by_thread.get(where, 0.0) / max(1, got) for where in THREAD_GROUPS},
        "sphinx_in_workers_seconds": in_workers,
        "cpu_over_sphinx_in_workers_ratio": cpu_per_packet / in_workers if in_workers else 0.0,
        "sphinx_per_hop_seconds": per_hop,
        "cpu_over_sphinx_ratio": cpu_per_packet / per_hop,
        "key_first_seconds": first_key,
        "key_second_seconds": second_key,
        "key_trial_ratio": second_key / first_key,
        "key_trial_cpu_ratio": (cpu_per_packet + second_key - first_key) / cpu_per_packet,
        "replay_memory_lookups_per_second": replay["memory_lookups_per_s"],
        "replay_file_lookups_per_second": replay["file_lookups_per_s"],
        "replay_file_ratio": replay["file_to_memory_ratio"],
        "replay_flush_ms": replay["flush_ms"],
        # A flush a second, against a second of forwarding at saturation on the node's CPU.
        "replay_flush_share": replay["flush_ms"] / 1000 / (rate * cpu_per_packet),
        "packet_build_seconds": bench.build_seconds,
        "loopix_reference_per_second": 570,
    }


def _process_cpu() -> float:
    """Return the CPU seconds of this process so far, every thread (the generator, the sink,
    libzmq's I/O thread) and the kernel's work for it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


THREAD_GROUPS = ("node loop", "node libzmq I/O", "workers", "workers' libzmq I/O",
                 "bench generator", "bench sink", "bench libzmq I/O", "other threads")


def _thread_cpu(node_pid: int, sink_tid: int | None,
                since: dict[str, float] | None = None) -> dict[str, float]:
    """Return the CPU seconds of every thread of the node under test, of its workers and of
    this process, summed by :data:`THREAD_GROUPS` (minus ``since``, a previous reading).

    Read from ``/proc/PID/task/TID/schedstat`` (nanoseconds on a CPU; Linux): libzmq's I/O
    threads are the ones it names ``ZMQbg/IO/...``; the node's and each worker's main thread is
    the one whose id is the process id. On a machine without these files every figure is 0."""
    totals = dict.fromkeys(THREAD_GROUPS, 0.0)
    processes = [(node_pid, "node"), *((pid, "workers") for pid in _children(node_pid)),
                 (os.getpid(), "bench")]
    for pid, group in processes:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    seconds = int(f.read().split()[0]) / 1e9
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    comm = f.read().strip()
            except (OSError, ValueError, IndexError):
                continue
            totals[_thread_group(group, pid, tid, comm, sink_tid)] += seconds
    if since is not None:
        totals = {where: seconds - since.get(where, 0.0) for where, seconds in totals.items()}
    return totals


def _thread_group(group: str, pid: int, tid: int, comm: str, sink_tid: int | None) -> str:
    """Return the :data:`THREAD_GROUPS` name of thread ``tid`` of process ``pid``."""
    if comm.startswith("ZMQbg/IO"):
        return {"node": "node libzmq I/O", "workers": "workers' libzmq I/O"}.get(
            group, "bench libzmq I/O")
    if group == "bench":
        return ("bench generator" if tid == pid else
                "bench sink" if tid == sink_tid else "other threads")
    if tid == pid:
        return "node loop" if group == "node" else "workers"
    return "other threads"


def _children(pid: int) -> list[int]:
    """Return the ids of the processes whose parent is ``pid`` (the node's workers)."""
    children = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                children.append(int(name))
    return children


def _paced_phase(args: argparse.Namespace, frames: list[bytes], gen: zmq.Socket[bytes],
                 sink: _Sink, saturation: float) -> dict[str, float]:
    rate = max(1.0, saturation * args.paced_fraction)
    count = min(len(frames), int(rate * args.paced_seconds))
    base = sink.count
    start = time.perf_counter()
    for i in range(count):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        gen.send(frames[i])
    sink.wait_for(base + count, 30)
    return {"rate": rate, "sent": count, "lost": max(0, count - (sink.count - base))}


def _sphinx_samples(topology: Topology, key: bytes, packets: list[bytes]) -> list[float]:
    """Return the CPU time of ``process_packet`` per packet over 5 chunks of ``packets`` (with
    the node's Sphinx key ``key``).

    CPU time of this thread, like the node's figures it is compared with: wall time would also
    count whatever else the shared machine runs meanwhile.
    """
    samples = []
    for chunk in range(5):
        batch = packets[chunk * len(packets) // 5:(chunk + 1) * len(packets) // 5]
        t0 = time.thread_time()
        for packet in batch:
            process_packet(topology.sphinx, key, packet)
        samples.append((time.thread_time() - t0) / max(1, len(batch)))
    return samples


def _key_trial(topology: Topology, key: bytes, packets: list[bytes]) -> tuple[float, float]:
    """Return the median CPU time of ``process_packet_keys`` per packet when the node's key is
    tried first, and when another key is tried before it (every packet pays one miss).

    Ten chunks, the two orders alternating, so both see the same drift of the shared machine."""
    other = crypto.x25519_keypair()[1]
    orders = ([(1, key), (0, other)], [(0, other), (1, key)])
    samples: tuple[list[float], list[float]] = ([], [])
    for chunk in range(10):
        batch = packets[chunk // 2 * len(packets) // 5:(chunk // 2 + 1) * len(packets) // 5]
        keys = orders[chunk % 2]
        t0 = time.thread_time()
        for packet in batch:
            process_packet_keys(topology.sphinx, keys, packet)
        samples[chunk % 2].append((time.thread_time() - t0) / max(1, len(batch)))
    return stats.median(samples[0]), stats.median(samples[1])


def main(argv: list[str]) -> int:
    """Run ``zmix-bench node``; print the figures; return 0."""
    args = build_parser().parse_args(argv)
    profiles = WIRE_PROFILES if args.profile == "all" else (Profile(args.profile),)
    results = run_profiles(args, profiles)
    base = next((r for r in results if r["profile"] == Profile.V1.value), None)
    for result in results:
        if base is not None and result is not base:
            result["forwarded_ratio_to_v1"] = (result["forwarded_per_second"]
                                               / base["forwarded_per_second"])
            result["forwarded_ratio_to_v1_whole"] = (result["forwarded_per_second_whole"]
                                                     / base["forwarded_per_second_whole"])
            result["forwarded_ratio_to_v1_rounds"] = [
                mine / theirs if theirs else 0.0 for mine, theirs in
                zip(result["forwarded_per_second_rounds"], base["forwarded_per_second_rounds"],
                    strict=True)]
            cpu, cpu_v1 = _all_threads(result), _all_threads(base)
            result["cpu_ratio_to_v1"] = cpu_v1 / cpu if cpu and cpu_v1 else 0.0
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    for result in results:
        show(result)
    return 0


def _all_threads(result: dict[str, Any]) -> float:
    """Return the CPU seconds per packet of every thread measured (0 without the figures)."""
    return float(sum((result.get("cpu_seconds_per_packet_by_thread") or {}).values()))


def show(result: dict[str, Any]) -> None:
    """Print one profile's figures."""
    print(f"zmix-bench node: 1 mixnode, {result['workers']} workers, Sphinx {result['profile']}, "
          f"{result['payload_bytes']}-byte payloads ({result['packet_bytes']}-byte packets)")
    print(f"  forwarded at saturation   {result['forwarded_per_second']:10.0f} packets/s "
          f"({result['saturation_forwarded']}/{result['saturation_sent']}); "
          f"x{result['forwarded_per_second'] / 570:.1f} the Loopix reference (570/s)")
    print(f"  whole rounds              {result['forwarded_per_second_whole']:10.0f} packets/s "
          "(from each round's first packet sent to its last one forwarded)")
    print(f"  packets per frame         {result['packets_per_frame_in']:10d} in (the generator's), "
          f"{result['packets_per_frame_out']:.1f} out (the node's) at saturation")
    print(f"  loss below saturation     {int(result['paced_lost']):10d} of {result['paced_sent']} "
          f"at {result['paced_rate']:.0f} packets/s")
    print(f"  CPU per forwarded packet  {result['cpu_seconds_per_packet'] * 1e6:10.1f} us "
          f"(node loop {result['cpu_seconds_per_packet_node_loop'] * 1e6:.1f} us + workers "
          f"{result['cpu_seconds_per_packet_workers'] * 1e6:.1f} us)")
    print(f"  node loop turns per packet {result['loop_wakeups_per_packet']:9.2f}")
    by_thread = result.get("cpu_seconds_per_packet_by_thread") or {}
    total = sum(by_thread.values())
    if total > 0:
        print(f"  CPU per packet, all threads {total * 1e6:8.1f} us in the saturation phase: "
              + ", ".join(f"{where} {seconds * 1e6:.1f}" for where, seconds in by_thread.items()
                          if seconds * 1e6 >= 0.05))
    print(f"  Sphinx per-hop time       {result['sphinx_per_hop_seconds'] * 1e6:10.1f} us")
    print(f"  ratio CPU / Sphinx        {result['cpu_over_sphinx_ratio']:10.2f}  (target <= 1.3)")
    print(f"  Sphinx inside the workers {result['sphinx_in_workers_seconds'] * 1e6:10.1f} us "
          f"(under load, on the shared cores); CPU / that "
          f"{result['cpu_over_sphinx_in_workers_ratio']:.2f}")
    print(f"  key selection, 2nd key    {result['key_trial_ratio']:10.2f}  x the Sphinx time with "
          f"the 1st ({result['key_first_seconds'] * 1e6:.1f} -> "
          f"{result['key_second_seconds'] * 1e6:.1f} us); x"
          f"{result['key_trial_cpu_ratio']:.2f} the node's CPU per packet")
    print(f"  replay filters in files   {result['replay_file_ratio']:10.2f}  x the lookups/s in "
          f"memory ({result['replay_memory_lookups_per_second']:.0f} -> "
          f"{result['replay_file_lookups_per_second']:.0f}); a flush "
          f"{result['replay_flush_ms']:.1f} ms a second, "
          f"{result['replay_flush_share'] * 100:.2f}% of a saturated second's CPU")
    if "forwarded_ratio_to_v1" in result:
        print(f"  packets/s against v1      {result['forwarded_ratio_to_v1']:10.2f}  x v1's "
              "forwarded at saturation in this run; round by round "
              + " ".join(f"{ratio:.2f}" for ratio in result["forwarded_ratio_to_v1_rounds"])
              + f"; whole rounds {result['forwarded_ratio_to_v1_whole']:.2f}")
        print(f"  CPU per packet against v1 {result['cpu_ratio_to_v1']:10.2f}  v1's CPU per "
              "packet (all threads) over this profile's")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
