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

``--profile`` picks the Sphinx profile of the network (docs/sphinx.md); ``--profile all`` runs the
whole benchmark once per wire profile, one after the other in the same run, and adds each
profile's saturated packets/s as a ratio to v1's (``forwarded_ratio_to_v1``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as stats
import subprocess
import sys
import tempfile
import threading
import time
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
                        help="the network's Sphinx profile, or all of them one after the other "
                             "with ratios to v1 (default v1)")
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
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # As little work per packet as counting allows: this thread shares the machine's cores
        # with the node under test. Two recv calls, not recv_multipart (which costs a
        # getsockopt per part), and one clock reading per drained batch, not per packet.
        recv = self.sock.recv
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            got = 0
            while True:
                try:
                    recv(zmq.NOBLOCK)  # the routing id; the node sends one-part messages
                except zmq.Again:
                    break
                if recv(zmq.NOBLOCK)[1:2] == b"\x01":  # a PACKET frame (heartbeats do not count)
                    got += 1
            if got:
                now = time.perf_counter()
                if self.count == 0:
                    self.first = now
                self.count += got
                self.last = now

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
            key = _node_key(state, node.name, epoch)
            return _measure(args, topology, state, packets, ctx, sink, key, build_seconds)
        finally:
            if sink is not None:
                sink.close()
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            ctx.term()
            authorities.stop()


def _wait_started(state: Path, name: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the node answers on its control socket (it has its network); RuntimeError if
    it exits or does not answer within 40 s."""
    deadline = time.monotonic() + 40
    while metrics.query(state, name, "ping", 0.2) != "pong":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the node under test did not start")
        time.sleep(0.05)


def _measure(args: argparse.Namespace, topology: Topology, state: Path, packets: list[bytes],
             ctx: zmq.Context[zmq.Socket[bytes]], sink: _Sink, key: bytes,
             build_seconds: float) -> dict[str, Any]:
    node = topology.layers[0][0]
    provider = topology.providers[0]
    me = load_private(state, provider.name)
    directory = load_directory(state, topology)
    gen = links.connect_dealer(ctx, node.endpoint, directory[node.name].curve_public,
                               me.curve_public, me.curve_private,
                               max_frame=wire.node_frame_limit(topology.sphinx))
    gen.sndhwm = 1_000
    frames = [wire.encode(wire.Packet(p), params=topology.sphinx, slots=1) for p in packets]
    # Warm-up: the link and the workers are up before anything is timed.
    gen.send(frames[0])
    if not sink.wait_for(1, 30):
        raise RuntimeError("the node forwarded nothing")
    before = _node_counters(state, node.name)
    # The Sphinx time is sampled just before and just after the load: the machine is shared, its
    # speed drifts, and the samples should see the speed the workers saw.
    sphinx_samples = _sphinx_samples(topology, key, packets[:1_000])
    saturated = frames[1:args.packets]
    base = sink.count
    t0 = time.perf_counter()
    for frame in saturated:
        gen.send(frame)  # blocks at the high-water mark: the node sets the pace
    sink.wait_for(base + len(saturated), 60)
    got = sink.count - base
    elapsed = sink.last - t0
    sphinx_samples += _sphinx_samples(topology, key, packets[:1_000])
    after = _node_counters(state, node.name)
    rate = got / elapsed if elapsed > 0 else 0.0
    forwarded = max(1.0, after["forwarded"] - before["forwarded"])
    per_packet = {key: (after[key] - before[key]) / forwarded for key in _COUNTERS}
    node_per_packet = per_packet["cpu_seconds_node"]
    workers_per_packet = per_packet["cpu_seconds_workers"]
    cpu_per_packet = node_per_packet + workers_per_packet
    in_workers = per_packet["cpu_seconds_workers_sphinx"]
    paced = _paced_phase(args, frames[args.packets:], gen, sink, rate)
    per_hop = stats.median(sphinx_samples)
    first_key, second_key = _key_trial(topology, key, packets[:1_000])
    # On the state directory's disk, where the node keeps its filters (a flush on tmpfs is free).
    replay = measure_replay(50_000, directory=state)
    gen.close(linger=0)
    return {
        "profile": topology.sphinx.profile.value,
        "workers": args.workers, "payload_bytes": args.payload,
        "packet_bytes": topology.sphinx.packet_length,
        "saturation_sent": len(saturated), "saturation_forwarded": got,
        "forwarded_per_second": rate,
        "paced_rate": paced["rate"], "paced_sent": paced["sent"], "paced_lost": paced["lost"],
        "cpu_seconds_per_packet": cpu_per_packet,
        "cpu_seconds_per_packet_node_loop": node_per_packet,
        "cpu_seconds_per_packet_workers": workers_per_packet,
        "loop_wakeups_per_packet": per_packet["loop_wakeups"],
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
        "packet_build_seconds": build_seconds,
        "loopix_reference_per_second": 570,
    }


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
    results = [run(args, profile) for profile in profiles]
    base = next((r for r in results if r["profile"] == Profile.V1.value), None)
    for result in results:
        if base is not None and result is not base:
            result["forwarded_ratio_to_v1"] = (result["forwarded_per_second"]
                                               / base["forwarded_per_second"])
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    for result in results:
        show(result)
    return 0


def show(result: dict[str, Any]) -> None:
    """Print one profile's figures."""
    print(f"zmix-bench node: 1 mixnode, {result['workers']} workers, Sphinx {result['profile']}, "
          f"{result['payload_bytes']}-byte payloads ({result['packet_bytes']}-byte packets)")
    print(f"  forwarded at saturation   {result['forwarded_per_second']:10.0f} packets/s "
          f"({result['saturation_forwarded']}/{result['saturation_sent']}); "
          f"x{result['forwarded_per_second'] / 570:.1f} the Loopix reference (570/s)")
    print(f"  loss below saturation     {int(result['paced_lost']):10d} of {result['paced_sent']} "
          f"at {result['paced_rate']:.0f} packets/s")
    print(f"  CPU per forwarded packet  {result['cpu_seconds_per_packet'] * 1e6:10.1f} us "
          f"(node loop {result['cpu_seconds_per_packet_node_loop'] * 1e6:.1f} us + workers "
          f"{result['cpu_seconds_per_packet_workers'] * 1e6:.1f} us)")
    print(f"  node loop turns per packet {result['loop_wakeups_per_packet']:9.2f}")
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
              "forwarded at saturation in this run")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
