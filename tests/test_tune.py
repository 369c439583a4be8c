"""zmix-tune (zmix.sim.tune, zmix.cli.tune): the search finds the cheapest rates that meet a
target on analytic models whose optimum is known, never returns one that misses it, says the
best reached when none meets it; the command's options, errors and fragment."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sim_sweep import SIM_YAML, analytic_report

from zmix.cli import tune as cli
from zmix.errors import ConfigError, LocalMisuse
from zmix.sim import tune
from zmix.sim.engine import SimParams
from zmix.sim.report import SimReport
from zmix.sim.tune import Outcome, Rates, Space, Target
from zmix.topology import Topology
from zmix.topology_yaml import load_topology
from zmix.yamlfile import read_yaml_file

HMAX = math.log2(200)


class Model:
    """An analytic network: sender entropy HMAX (1 - exp(-2 d (lambda + a lambda_M))), median
    latency 0.5 + 1 / (lambda_P - 0.1) + 5 d, bandwidth 1000 lambda + c lambda_M."""

    def __init__(self, a: float, c: float) -> None:
        self.a, self.c = a, c
        self.calls: list[Rates] = []

    def entropy(self, rate: float, mix: float, delay: float) -> float:
        return HMAX * (1 - math.exp(-2 * delay * (rate + self.a * mix)))

    @staticmethod
    def latency(payload: float, delay: float) -> float:
        return 0.5 + (1 / (payload - 0.1) if payload > 0.1 else 1e3) + 5 * delay

    def __call__(self, r: Rates) -> Outcome:
        self.calls.append(r)
        bits = self.entropy(r.client_rate, r.mix_loop_rate, r.mean_delay)
        lat = self.latency(r.payload_rate, r.mean_delay)
        return Outcome(r, bits, bits, bits, HMAX, lat, 2 * lat, 1000 * r.client_rate,
                       self.c * r.mix_loop_rate, "mix-a01", 10.0, 0.0, 100)

    def optimum(self, target: Target, mix: float, payload_share: float = 0.75) -> float:
        """The least bandwidth meeting ``target`` with this mix loop rate (bisection on the
        client rate, each at the longest delay the latency allows)."""
        def feasible(rate: float) -> bool:
            spare = target.latency - self.latency(payload_share * rate, 0.0)
            return spare >= 0 and self.entropy(rate, mix, spare / 5) >= target.entropy

        lo, hi = 0.1, 1000.0
        assert feasible(hi)
        if feasible(lo):
            return 1000 * lo + self.c * mix
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
        return 1000 * hi + self.c * mix


@pytest.mark.parametrize("a, c, entropy, latency", [
    (0.2, 200, 6.0, 3.0),  # mix loops buy as much as client packets per byte: none best
    (2.0, 200, 6.0, 3.0),  # mix loops ten times cheaper: the most of them best
    (0.2, 200, 7.0, 10.0),  # a long latency budget: a low rate, long delays
    (1.0, 1000, 3.0, 1.5),  # a tight latency: the payload queue decides
])
def test_the_search_finds_the_known_optimum_of_an_analytic_model_within_its_tolerance(
        a: float, c: float, entropy: float, latency: float) -> None:
    model = Model(a, c)
    target = Target(entropy, latency)
    result = tune.search(model, target, Space())
    assert result.best is not None and not result.exhausted
    assert result.best.meets(target)
    tried = {r.mix_loop_rate for r in model.calls}
    optimum = min(model.optimum(target, m) for m in tried)
    assert optimum * (1 - 1e-9) <= result.best.bandwidth <= 1.15 * optimum
    assert len(model.calls) == len(set(model.calls))  # no candidate judged twice


def test_the_mix_loop_ladder_is_refined_next_to_its_best_value() -> None:
    model = Model(2.0, 200)
    tune.search(model, Target(6.0, 3.0), Space(mix_loop_rates=(0.0, 0.5, 2.0)))
    tried = {r.mix_loop_rate for r in model.calls}
    assert {0.0, 0.5, 2.0, 1.0} <= tried  # 1 = sqrt(0.5 x 2): between the best and its
    assert tried <= {0.0, 0.5, 2.0, 1.0}  # neighbour; 2 is the top, nothing beyond


def test_every_candidate_splits_the_client_rate_in_the_spaces_shares() -> None:
    model = Model(0.2, 200)
    tune.search(model, Target(5.0, 3.0), Space(loop_share=0.2, drop_share=0.1))
    for r in model.calls:
        assert r.loop_rate == pytest.approx(0.2 * r.client_rate, rel=1e-3)
        assert r.drop_rate == pytest.approx(0.1 * r.client_rate, rel=1e-3)


def test_an_entropy_no_rate_reaches_gives_no_best_and_the_most_entropy_reached() -> None:
    model = Model(0.2, 200)
    target = Target(HMAX - 1e-6, 2.0)
    result = tune.search(model, target, Space(max_rate=5.0))
    assert result.best is None
    assert result.closest is not None
    assert result.closest.latency_ok(target)
    timely = [o for o in result.history if o.latency_ok(target)]
    assert result.closest.sender_median == max(o.sender_median for o in timely)
    # positive control: the same search with a reachable entropy finds an answer
    assert tune.search(Model(0.2, 200), Target(5.0, 2.0), Space(max_rate=5.0)).best is not None


def test_a_latency_under_the_models_floor_gives_no_best_and_the_least_latency_reached() -> None:
    model = Model(0.2, 200)
    result = tune.search(model, Target(1.0, 0.5), Space(max_rate=8.0))
    assert result.best is None and result.closest is not None
    assert result.closest.latency_median == min(o.latency_median for o in result.history)


def test_the_run_budget_stops_the_search_and_keeps_what_met_the_target() -> None:
    model = Model(0.2, 200)
    result = tune.search(model, Target(6.0, 3.0), Space(max_runs=4))
    assert result.exhausted and len(model.calls) == 4 == len(result.history)
    if result.best is not None:
        assert result.best.meets(Target(6.0, 3.0))


def test_a_candidate_that_loses_messages_or_measured_none_fails_the_target() -> None:
    model = Model(0.2, 200)
    good = model(Rates(3, 1, 0, 0, 0.3))
    target = Target(1.0, 10.0)
    assert good.meets(target)
    assert not replace(good, loss=0.5).meets(target)
    assert not replace(good, messages=0).meets(target)
    assert not replace(good, sender_median=math.nan).meets(target)


@pytest.mark.parametrize("kw, problem", [
    ({"loop_share": 0.6, "drop_share": 0.4}, "leave some of the client's rate"),
    ({"min_rate": 5.0, "max_rate": 1.0}, "min rate <= max rate"),
    ({"mix_loop_rates": ()}, "at least one"),
    ({"mix_loop_rates": (-1.0,)}, "numbers >= 0"),
])
def test_a_search_space_that_cannot_work_is_refused(kw: dict[str, Any], problem: str) -> None:
    with pytest.raises(LocalMisuse, match=problem):
        Space(**kw)
    Space()  # positive control


def test_targets_must_be_numbers_of_bits_and_seconds() -> None:
    with pytest.raises(LocalMisuse, match="entropy target"):
        Target(-1.0, 1.0)
    with pytest.raises(LocalMisuse, match="latency target"):
        Target(1.0, 0.0)
    assert Target(0.0, 0.1).latency == 0.1


# ---------------------------------------------------------------- through the report


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(SIM_YAML)


def test_judge_with_runs_the_candidates_rates_and_reads_the_outcome_off_the_report(
        topology: Topology) -> None:
    seen: list[tuple[float, float, int]] = []

    def spy(topo: Topology, params: SimParams, **kw: Any) -> tuple[None, SimReport]:
        seen.append((topo.loopix.payload_rate, topo.loopix.mean_delay, params.seed))
        return analytic_report(topo, params, **kw)

    params = SimParams(clients=200, duration=30, seed=7)
    judge = tune.judge_with(topology, params, spy)
    out = judge(Rates(1.5, 0.5, 0.0, 1.0, 0.2))
    assert seen == [(1.5, 0.2, 7)]
    assert out.client_bytes_per_s == pytest.approx(2000)
    assert out.mix_loop_bytes_per_client == pytest.approx(1.0 * 40 * 1000 / 200)
    assert out.sender_median == pytest.approx(HMAX * (1 - math.exp(-0.4 * (2 + 0.2))))
    assert out.latency_median == pytest.approx(0.5 + 1 / 1.4 + 1.0)
    assert out.busiest_node == "mix-a01"


def test_the_fragment_loads_when_merged_into_the_sim_topology(topology: Topology) -> None:
    rates = Rates(1.25, 0.4, 0.0, 0.5, 2.0)
    text = tune.fragment(rates, topology, "a comment\nof two lines")
    assert text.startswith("# a comment\n# of two lines\nloopix:\n")
    merged = tune.merged_topology(read_yaml_file(SIM_YAML), text, str(SIM_YAML))
    lp = merged.loopix
    assert (lp.payload_rate, lp.loop_rate, lp.drop_rate, lp.mix_loop_rate, lp.mean_delay) == \
        (1.25, 0.4, 0.0, 0.5, 2.0)
    assert lp.max_delay == 40.0  # raised to 20 mean delays: clamping would break the mixing
    assert lp.fetch_interval == topology.loopix.fetch_interval
    assert merged.layers == topology.layers


def test_a_fragment_with_other_sections_or_a_bad_rate_does_not_merge(
        topology: Topology) -> None:
    data = read_yaml_file(SIM_YAML)
    good = tune.fragment(Rates(1.0, 0.5, 0.0, 0.5, 0.1), topology)
    tune.merged_topology(data, good, "sim.yaml")  # positive control
    with pytest.raises(ConfigError, match="holding only loopix"):
        tune.merged_topology(data, good + "network: other\n", "sim.yaml")
    with pytest.raises(ConfigError, match=r"loopix\.payload_rate"):
        tune.merged_topology(data, good.replace("payload_rate: 1.0", "payload_rate: 0"),
                             "sim.yaml")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.builds(lambda key, value: f"loopix:\n  {key}: {value}\n",
                           st.sampled_from(["mean_delay", "payload_rate", "loop_rate",
                                            "max_delay", "other"]),
                           st.text(max_size=20))))
def test_any_fragment_text_merges_into_a_topology_or_raises_config_error(text: str) -> None:
    data = read_yaml_file(SIM_YAML)
    try:
        merged = tune.merged_topology(data, text, "sim.yaml")
    except ConfigError:
        return
    assert merged.layers  # a topology came out


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_option_text_parses_or_is_an_argument_error(text: str) -> None:
    for parse in (cli._bits, cli._share, cli._ladder, cli._clients):
        try:
            value = parse(text)
        except argparse.ArgumentTypeError:
            continue
        assert isinstance(value, float | int | tuple)


# ---------------------------------------------------------------- the command


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main([str(SIM_YAML), *argv], evaluate=analytic_report)
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_prints_the_chosen_rates_and_writes_a_fragment_that_loads(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "loopix.yaml"
    status, out, err = run_cli(capsys, "--entropy", "6", "--latency", "3",
                               "--out", str(out_file))
    assert status == 0, err
    assert "target: sender entropy >= 6 bits, median latency <= 3 s (200 clients" in out
    for key in ("payload_rate   lambda_P", "loop_rate      lambda_L", "drop_rate      lambda_D",
                "mix_loop_rate  lambda_M", "mean_delay     1/mu", "bandwidth per client:",
                "median latency:", "sender entropy:", "busiest node:"):
        assert key in out
    merged = tune.merged_topology(read_yaml_file(SIM_YAML), out_file.read_text(), "sim.yaml")
    model = Model(0.2, 200)
    assert model.entropy(merged.loopix.payload_rate + merged.loopix.loop_rate
                         + merged.loopix.drop_rate, merged.loopix.mix_loop_rate,
                         merged.loopix.mean_delay) >= 6.0
    assert f"wrote the loopix: section to {out_file}" in out
    assert yaml.safe_load(out_file.read_text()).keys() == {"loopix"}


def test_a_profile_sets_the_target_and_workload_and_options_override_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    chat = tune.PROFILES["chat"]
    status, out, _ = run_cli(capsys, "--profile", "chat")
    assert status == 0
    assert (f"sender entropy >= {chat.entropy:g} bits, median latency <= {chat.latency:g} s "
            f"(200 clients, {chat.message_rate:g} messages/s of {chat.message_bytes} bytes")\
        in out
    status, out, _ = run_cli(capsys, "--profile", "chat", "--entropy", "4.5")
    assert status == 0 and "sender entropy >= 4.5 bits" in out


@pytest.mark.parametrize("argv, seconds", [
    (("--profile", "chat"), 35),  # 200 messages in 20 s, 10 s to settle
    (("--profile", "files"), 100),  # 200 messages take 50 s; 45 s (3 x 15) to settle
    (("--entropy", "3", "--latency", "2", "--clients", "10"), 135),  # 120 s at most
    (("--entropy", "3", "--latency", "2", "--duration", "16"), 16),
])
def test_the_default_duration_measures_about_200_messages_and_lets_them_settle(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], seconds: int) -> None:
    durations: set[float] = set()

    def spy(topo: Topology, params: SimParams, **kw: Any) -> tuple[None, SimReport]:
        durations.add(params.duration)
        return analytic_report(topo, params, **kw)

    cli.main([str(SIM_YAML), *argv], evaluate=spy)
    assert durations == {seconds}
    assert f"({seconds} simulated s each" in capsys.readouterr().out


def test_every_documented_profile_exists() -> None:
    assert set(tune.PROFILES) == {"chat", "files", "max-anonymity"}


def test_a_target_no_candidate_meets_exits_1_saying_the_best_reached(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "never.yaml"
    status, _, err = run_cli(capsys, "--entropy", "2", "--latency", "0.4", "--max-rate", "4",
                             "--out", str(out_file))
    assert status == 1
    assert "no candidate met sender entropy >= 2 bits with median latency <= 0.4 s" in err
    assert "best reached:" in err
    assert not out_file.exists()


def test_an_out_file_that_cannot_be_written_or_an_interrupt_exits_1(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run_cli(capsys, "--profile", "chat", "--out",
                             str(tmp_path / "no-such-dir" / "x.yaml"))
    assert status == 1 and "error: cannot write" in err and "x.yaml" in err

    def interrupted(*a: Any, **kw: Any) -> tuple[None, SimReport]:
        raise KeyboardInterrupt

    assert cli.main([str(SIM_YAML), "--profile", "chat"], evaluate=interrupted) == 1
    assert "error: interrupted" in capsys.readouterr().err
    # positive control: a folder that exists takes the file
    status, _, _ = run_cli(capsys, "--profile", "chat", "--out", str(tmp_path / "x.yaml"))
    assert status == 0 and (tmp_path / "x.yaml").exists()


def test_an_entropy_above_log2_clients_exits_1_before_simulating(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "--entropy", "6", "--latency", "3", "--clients", "50")
    assert status == 1
    assert "50 clients give at most log2(50) = 5.64 bits" in err


@pytest.mark.parametrize("argv, problem", [
    ((), "give a target: --profile, or both --entropy and --latency"),
    (("--entropy", "5"), "give a target"),
    (("--latency", "10", "--entropy", "3", "--duration", "20"), "--duration must be longer"),
    (("--profile", "chat", "--loop-share", "0.6", "--drop-share", "0.5"),
     "leave some of the client's rate"),
    (("--profile", "chat", "--min-rate", "5", "--max-rate", "1"), "min rate <= max rate"),
])
def test_a_bad_combination_of_options_exits_2_before_simulating(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], problem: str) -> None:
    calls: list[int] = []

    def never(*a: Any, **kw: Any) -> tuple[None, SimReport]:
        calls.append(1)
        raise AssertionError("simulated")

    status = cli.main([str(SIM_YAML), *argv], evaluate=never)
    assert status == 2
    assert problem in capsys.readouterr().err
    assert calls == []


@pytest.mark.parametrize("argv, problem", [
    (("--profile", "video"), "invalid choice: 'video'"),
    (("--entropy", "-1", "--latency", "1"), "must be a number of bits >= 0"),
    (("--entropy", "x", "--latency", "1"), "'x' is not a number"),
    (("--entropy", "3", "--latency", "0"), "must be greater than 0"),
    (("--profile", "chat", "--clients", "1"), "at least 2 clients"),
    (("--profile", "chat", "--loop-share", "1"), "must be a fraction in [0, 1)"),
    (("--profile", "chat", "--mix-loop-rates", "0,a"), "comma-separated list of numbers"),
    (("--profile", "chat", "--mix-loop-rates", "0,-1"), "every rate must be a number >= 0"),
    (("--profile", "chat", "--max-runs", "0"), "must be at least 1"),
])
def test_a_bad_option_value_is_a_usage_error_naming_it(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], problem: str) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main([str(SIM_YAML), *argv], evaluate=analytic_report)
    assert caught.value.code == 2
    assert problem in capsys.readouterr().err


def test_a_missing_or_bad_topology_exits_2(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    assert cli.main([str(tmp_path / "none.yaml"), "--profile", "chat"],
                    evaluate=analytic_report) == 2
    assert "none.yaml: (file): no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(SIM_YAML.read_text().replace("payload_rate: 1 ", "payload_rate: -1 "))
    assert cli.main([str(bad), "--profile", "chat"], evaluate=analytic_report) == 2
    assert "loopix.payload_rate" in capsys.readouterr().err


def test_the_search_tries_no_delay_the_topologys_epoch_cannot_hold_20_of(
        capsys: pytest.CaptureFixture[str]) -> None:
    local = SIM_YAML.parent / "local.yaml"  # 20 s epochs, 5 hops: delays up to 0.1 s
    seen: list[float] = []

    def spy(topo: Topology, params: SimParams, **kw: Any) -> tuple[None, SimReport]:
        seen.append(topo.loopix.mean_delay)
        return analytic_report(topo, params, **kw)

    status = cli.main([str(local), "--entropy", "5", "--latency", "10", "--max-rate", "2"],
                      evaluate=spy)
    assert seen and max(seen) <= 0.1 + 1e-12
    assert status == 1  # the model needs longer delays than 0.1 s at 2 packets/s
    # positive control: the sim topology (3600 s epochs) lets the search go past 0.1 s
    seen.clear()
    assert cli.main([str(SIM_YAML), "--entropy", "5", "--latency", "10", "--max-rate", "2"],
                    evaluate=spy) == 0
    assert max(seen) > 0.1
    capsys.readouterr()


def test_verbose_prints_each_candidate_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "--profile", "chat", "-v")
    assert status == 0
    searched = int(out.split("searched ")[1].split(" ")[0])
    assert err.count("candidate P ") == searched > 0


def _has_measure() -> bool:
    from zmix.sim import report
    return hasattr(report, "measure")


@pytest.mark.slow
@pytest.mark.skipif(not _has_measure(), reason="zmix.sim.report.measure is not in this tree")
def test_a_small_real_tune_meets_its_target_when_it_says_so(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "real.yaml"
    status = cli.main([str(SIM_YAML), "--entropy", "4", "--latency", "2.5", "--clients", "60",
                       "--mix-loop-rates", "0.5", "--max-runs", "12", "--out", str(out_file)])
    out = capsys.readouterr().out
    assert status == 0, out
    bits = float(out.split("sender entropy:")[1].split("bits")[0])
    latency = float(out.split("median latency:")[1].split("s (")[0])
    assert bits >= 4 and latency <= 2.5
    tune.merged_topology(read_yaml_file(SIM_YAML), out_file.read_text(), "sim.yaml")
