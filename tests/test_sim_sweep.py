"""Sweeps (zmix.sim.sweep): one evaluation per value, the table and the PNG they make, and the
parameter checks; the evaluation is injected (an analytic model) except in the one real sweep."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from zmix.errors import LocalMisuse
from zmix.sim import sweep as sweeps
from zmix.sim.engine import SimParams
from zmix.sim.report import NodeLoad, SimReport, Spread
from zmix.topology import Topology
from zmix.topology_yaml import load_topology

SIM_YAML = Path(__file__).resolve().parent.parent / "topologies" / "sim.yaml"
PACKET = 1000  # the analytic model's packet size, bytes


def analytic_report(topology: Topology, params: SimParams, *, corrupted: float = 0.0,
                    settle: float = 10.0) -> tuple[None, SimReport]:
    """A deterministic stand-in for measure(): closed forms of the rates, clients and delay.

    Sender entropy log2(N) * (1 - exp(-2 d (lambda + 0.2 lambda_M))) * (1 - corrupted), the
    receiver's 0.9 of it; median latency fetch/2 + 1/(lambda_P - message rate) + 5 d, p95
    twice that; a client sends lambda * PACKET bytes/s; every node makes lambda_M mix loops/s."""
    lp = topology.loopix
    n = params.clients
    rate = lp.payload_rate + lp.loop_rate + lp.drop_rate
    bits = math.log2(n) * (1 - math.exp(-2 * lp.mean_delay * (rate + 0.2 * lp.mix_loop_rate)))
    bits *= 1 - corrupted
    spare = lp.payload_rate - params.message_rate
    median = lp.fetch_interval / 2 + (1 / spare if spare > 0 else 1e3) + 5 * lp.mean_delay
    measured = params.duration - params.warmup
    nodes = len(topology.providers) + sum(len(layer) for layer in topology.layers)
    messages = int(n * params.message_rate * measured)

    def summary(value: float) -> dict[str, float]:
        return {"count": messages, "mean": value, "median": value, "p5": value, "p95": value,
                "min": value}

    latency = Spread(messages, median, median, median / 2, 2 * median, 3 * median)
    report = SimReport(
        params=dataclasses.asdict(params), loopix=dataclasses.asdict(lp), packet_bytes=PACKET,
        clients=n, nodes=nodes, simulated_s=params.duration, wall_s=0.01, events=1, records=1,
        packets={"mix_loop": round(lp.mix_loop_rate * nodes * measured)},
        message_latency=latency, network_latency=latency, messages_sent=messages,
        messages_delivered=messages,
        client_up_bytes_per_s=Spread.of([rate * PACKET] * n),
        client_down_items_per_s=Spread.of([1.0] * n),
        node_load=(NodeLoad("mix-a01", "mixnode", n * rate / 10, n * rate / 10, 1.0, 2, 0),),
        dropped={}, loops={},
        privacy={"sender": summary(bits), "receiver": summary(0.9 * bits),
                 "max_bits": math.log2(n)})
    return None, report


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(SIM_YAML)


BASE = SimParams(clients=200, duration=30)


def test_a_sweep_evaluates_each_value_and_its_points_carry_the_models_figures(
        topology: Topology) -> None:
    seen: list[tuple[float, int, float]] = []

    def spy(topo: Topology, params: SimParams, **kw: Any) -> tuple[None, SimReport]:
        seen.append((topo.loopix.mean_delay, params.seed, kw["corrupted"]))
        return analytic_report(topo, params, **kw)

    result = sweeps.sweep(topology, BASE, "mean_delay", [0.01, 0.1, 1.0], evaluate=spy,
                          seeds=2)
    assert seen == [(0.01, 0, 0.0), (0.01, 1, 0.0), (0.1, 0, 0.0), (0.1, 1, 0.0),
                    (1.0, 0, 0.0), (1.0, 1, 0.0)]
    assert [p.value for p in result.points] == [0.01, 0.1, 1.0]
    rate = 2.0 + 0.2 * 0.5  # sim.yaml: 1 + 0.5 + 0.5 per client, 0.5 mix loops per node
    for p in result.points:
        expected = math.log2(200) * (1 - math.exp(-2 * p.value * rate))
        assert p.sender_median == pytest.approx(expected)
        assert p.receiver_mean == pytest.approx(0.9 * expected)
        assert p.latency_median == pytest.approx(0.5 + 1 / 0.9 + 5 * p.value)
        assert p.latency_p95 == pytest.approx(2 * p.latency_median)
        assert p.client_bytes_per_s == pytest.approx(2.0 * PACKET)
        assert p.max_bits == pytest.approx(math.log2(200))
        assert p.seeds == 2
    assert result.points[0].sender_median < result.points[1].sender_median \
        < result.points[2].sender_median


def test_each_parameter_changes_what_it_names_and_nothing_else(topology: Topology) -> None:
    lp = topology.loopix
    topo, params, frac = sweeps.configure(topology, BASE, "payload_rate", 3.0)
    assert (topo.loopix.payload_rate, topo.loopix.loop_rate, params, frac) == \
        (3.0, lp.loop_rate, BASE, None)
    topo, params, frac = sweeps.configure(topology, BASE, "cover_scale", 4.0)
    assert (topo.loopix.loop_rate, topo.loopix.drop_rate, topo.loopix.payload_rate) == \
        (4 * lp.loop_rate, 4 * lp.drop_rate, lp.payload_rate)
    topo, params, frac = sweeps.configure(topology, BASE, "clients", 50)
    assert (topo, params.clients, frac) == (topology, 50, None)
    topo, params, frac = sweeps.configure(topology, BASE, "corrupted", 0.3)
    assert (topo, params, frac) == (topology, BASE, 0.3)
    topo, _, _ = sweeps.configure(topology, BASE, "mix_loop_rate", 2.0)
    assert topo.loopix.mix_loop_rate == 2.0


def test_a_longer_mean_delay_raises_max_delay_so_that_delays_are_not_clamped(
        topology: Topology) -> None:
    short = sweeps.with_loopix(topology, mean_delay=0.01)
    assert short.loopix.max_delay == topology.loopix.max_delay  # 5 s already >= 20 x 0.01
    long = sweeps.with_loopix(topology, mean_delay=2.0)
    assert long.loopix.max_delay == pytest.approx(40.0)
    with pytest.raises(LocalMisuse, match="longer than the epoch allows"):
        sweeps.with_loopix(topology, mean_delay=1000.0)


def test_the_corrupted_sweep_passes_each_fraction_to_the_evaluation(topology: Topology) -> None:
    result = sweeps.sweep(topology, BASE, "corrupted", [0.0, 0.5], evaluate=analytic_report)
    assert result.points[1].sender_median == pytest.approx(result.points[0].sender_median / 2)


@pytest.mark.parametrize("parameter, value, problem", [
    ("lambda_p", 1.0, "unknown sweep parameter 'lambda_p'"),
    ("clients", 1, "clients must be a whole number >= 2"),
    ("clients", 2.5, "clients must be a whole number >= 2"),
    ("corrupted", 1.5, r"corrupted must be a fraction in \[0, 1\]"),
    ("payload_rate", 0.0, "payload_rate must be > 0"),
    ("loop_rate", -1.0, "loop_rate must be a finite number >= 0"),
    ("cover_scale", math.inf, "cover_scale must be a finite number >= 0"),
])
def test_a_bad_parameter_or_value_is_refused_before_anything_runs_naming_it(
        topology: Topology, parameter: str, value: float, problem: str) -> None:
    runs: list[float] = []

    def counting(topo: Topology, params: SimParams, **kw: Any) -> tuple[None, SimReport]:
        runs.append(1.0)
        return analytic_report(topo, params, **kw)

    with pytest.raises(LocalMisuse, match=problem):
        sweeps.sweep(topology, BASE, parameter, [2.0, value], evaluate=counting)
    assert runs == []
    # positive control: the same sweep with a good value runs both points
    good = sweeps.sweep(topology, BASE, "clients", [2, 3], evaluate=counting)
    assert len(good.points) == 2 and len(runs) == 2


def test_an_unknown_parameter_error_lists_the_known_ones() -> None:
    with pytest.raises(LocalMisuse) as caught:
        sweeps.check_parameter("delay")
    assert "'delay'" in str(caught.value)
    for name in sweeps.PARAMETERS:
        assert name in str(caught.value)
    sweeps.check_parameter("mean_delay")  # positive control: no error


def test_an_empty_sweep_or_no_seeds_is_refused(topology: Topology) -> None:
    with pytest.raises(LocalMisuse, match="at least one value"):
        sweeps.sweep(topology, BASE, "clients", [], evaluate=analytic_report)
    with pytest.raises(LocalMisuse, match="seeds must be at least 1"):
        sweeps.sweep(topology, BASE, "clients", [10], evaluate=analytic_report, seeds=0)


def test_the_markdown_table_has_a_header_and_one_row_per_value_with_its_figures(
        topology: Topology) -> None:
    result = sweeps.sweep(topology, BASE, "payload_rate", [1.0, 2.0], evaluate=analytic_report)
    lines = result.markdown().splitlines()
    assert lines[0].startswith("| payload rate lambda_P (packets/s per client) | sender median")
    assert lines[1] == "|" + "---|" * 12
    assert len(lines) == 4
    first = [cell.strip() for cell in lines[2].strip("|").split("|")]
    p = result.points[0]
    assert first[0] == "1"
    assert first[1] == f"{p.sender_median:.2f}"
    assert first[6] == f"{p.latency_median:.3f}"
    assert first[8] == f"{p.client_bytes_per_s / 1000:.2f}"
    assert len(first) == 12


def test_the_plot_is_a_png_that_matplotlib_reads_back(topology: Topology,
                                                      tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    result = sweeps.sweep(topology, BASE, "mean_delay", [0.01, 0.05, 0.2, 1.0],
                          evaluate=analytic_report)
    path = result.plot(tmp_path / "delay.png")
    data = path.read_bytes()
    assert len(data) > 0 and data[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 300
    assert image.std() > 0  # something was drawn, not a blank canvas


def test_a_sweep_without_messages_shows_dashes_for_its_entropies(topology: Topology) -> None:
    def silent(topo: Topology, params: SimParams, **kw: Any) -> tuple[None, SimReport]:
        _, report = analytic_report(topo, params, **kw)
        return None, dataclasses.replace(report, privacy=None)

    result = sweeps.sweep(topology, BASE, "clients", [10], evaluate=silent)
    assert math.isnan(result.points[0].sender_median)
    assert "| - |" in result.markdown()
    assert '"parameter": "clients"' in result.to_json()


@pytest.mark.slow  # a few seconds of simulation: the default run is near its budget
def test_a_real_small_sweep_of_the_mean_delay_raises_sender_entropy(topology: Topology,
                                                                    tmp_path: Path) -> None:
    result = sweeps.sweep(topology, SimParams(clients=60, duration=20), "mean_delay",
                          [0.005, 0.2])
    low, high = result.points
    assert low.messages > 0 and high.messages > 0
    assert high.sender_median > low.sender_median + 1.0
    assert high.latency_median > low.latency_median
    assert result.plot(tmp_path / "real.png").stat().st_size > 0
