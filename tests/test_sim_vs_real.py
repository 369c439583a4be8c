"""The simulator against a real network of the same topology and workload: their message
latency distributions agree (two-sample Kolmogorov-Smirnov test at the 1% level)."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import pytest

from zmix.bench.common import make_network, network_launcher
from zmix.runtime.client import ClientRuntime
from zmix.sim.engine import SimParams, client_names
from zmix.sim.report import simulate
from zmix.topology import Topology

scipy_stats = pytest.importorskip("scipy.stats")

pytestmark = pytest.mark.slow

CLIENTS = 4
DURATION = 70.0  # seconds of traffic (real and simulated)
WARMUP = 5.0
MESSAGE_RATE = 0.8  # messages per second per client
# Delays long against what a real hop costs (about a millisecond of crypto and links), so that
# what the simulator leaves out is small against the spread it compares.
LOOPIX = {"mean_delay": 0.1, "payload_rate": 4.0, "loop_rate": 1.0, "drop_rate": 1.0,
          "mix_loop_rate": 0.5, "fetch_interval": 0.5, "max_delay": 10.0}
LEVEL = 0.01


def real_latencies(tmp: Path) -> tuple[list[float], Topology]:
    """Run the workload on real node processes: each client submits messages to random others
    as a Poisson process; return each delivered message's latency (submitted -> reassembled at
    its recipient's fetch) and the topology."""
    names = client_names(CLIENTS)
    topology, state = make_network(
        tmp, clients={n: ("provider-1", "provider-2")[i % 2] for i, n in enumerate(names)},
        loopix=LOOPIX, network="zmix-simcheck")
    launcher = network_launcher(state, topology, verbosity=0)
    launcher.start()
    rng = random.Random(11)
    submitted: dict[bytes, float] = {}
    latencies: list[float] = []
    runtimes = [ClientRuntime(state, n) for n in names]
    try:
        for r in runtimes:
            r.__enter__()
        start = time.time()
        next_submit = [start + rng.expovariate(MESSAGE_RATE) for _ in names]
        while time.time() < start + DURATION:
            now = time.time()
            for i, runtime in enumerate(runtimes):
                if now >= next_submit[i]:
                    other = rng.choice([n for n in names if n != names[i]])
                    message_id = runtime.core.submit(now, other, rng.randbytes(200))
                    if now >= start + WARMUP and now < start + DURATION - 10:
                        submitted[message_id] = now
                    next_submit[i] += rng.expovariate(MESSAGE_RATE)
                for message in runtime.step(now + 0.002):
                    sent = submitted.pop(message.message_id, None)
                    if sent is not None:
                        latencies.append(message.received_at - sent)
                    runtime.core.mark_delivered(message.message_id)
    finally:
        for r in runtimes:
            r.__exit__(None, None, None)
        launcher.stop()
    return latencies, topology


def test_simulated_and_real_message_latencies_come_from_one_distribution(tmp_path: Path) -> None:
    real, topology = real_latencies(tmp_path)
    sim_sample, lost = _sim_latencies(topology)
    assert len(real) > 120 and len(sim_sample) > 120
    result = scipy_stats.ks_2samp(real, sim_sample)
    print(f"\nreal: {len(real)} messages, median {statistics.median(real):.3f} s; "
          f"simulated: {len(sim_sample)}, median {statistics.median(sim_sample):.3f} s; "
          f"KS D = {result.statistic:.3f}, p = {result.pvalue:.3f}")
    assert result.pvalue > LEVEL
    assert lost == 0
    # control: the same test tells a distribution shifted by one mean delay per hop apart
    shifted = [x + 4 * LOOPIX["mean_delay"] for x in sim_sample]
    assert scipy_stats.ks_2samp(real, shifted).pvalue < LEVEL


def _sim_latencies(topology: Topology) -> tuple[list[float], int]:
    """Return more simulated message latencies than the real run has, from several seeds (the
    simulator is cheap: the test's power then rests on the real sample), and how many of the
    simulated messages were lost."""
    out: list[float] = []
    lost = 0
    for seed in range(1, 4):
        sim, report = simulate(topology, SimParams(
            clients=CLIENTS, duration=DURATION, warmup=WARMUP, message_rate=MESSAGE_RATE,
            message_bytes=200, seed=seed), settle=10.0)
        cutoff = sim.end - 10.0
        out += [sim.tally.completed[m] for m, t in sim.tally.submitted.items()
                if t <= cutoff and m in sim.tally.completed]
        lost += report.messages_sent - report.messages_delivered
    return out, lost
