"""The simulator against a real network of the same topology and workload: their message
latency distributions agree (two-sample Kolmogorov-Smirnov test at the 1% level)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from workload import run_workload

from zmix.sim.engine import SimParams
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
    topology, _, latencies = run_workload(
        tmp, clients=CLIENTS, loopix=LOOPIX, network="zmix-simcheck", rate=MESSAGE_RATE,
        duration=DURATION, seed=11, body=lambda rng: rng.randbytes(200), measure_from=WARMUP,
        measure_until=DURATION - 10)
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
