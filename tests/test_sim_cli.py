"""zmix-sim as a user meets it: the report, its files, the taps, repeatability and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zmix.cli import sim as sim_cli
from zmix.sim.adversary import analyse
from zmix.sim.engine import START, SimParams, sim_topology
from zmix.sim.taps import read_records
from zmix.topology_yaml import load_topology

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "topologies" / "local.yaml"
SIM = ROOT / "topologies" / "sim.yaml"  # light cover: 2 packets a second per client
SMALL = ["--clients", "8", "--duration", "10", "--quiet"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = sim_cli.main(args)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_a_simulation_prints_its_report_and_writes_it(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run([str(SIM), *SMALL, "--out", str(tmp_path / "run")], capsys)
    assert status == 0
    assert "simulated 10 s of 8 clients and 40 nodes" in out
    assert "sender anonymity: median" in out and "receiver anonymity: median" in out
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    assert data["clients"] == 8 and data["privacy"]["max_bits"] == pytest.approx(3.0)
    assert data["privacy"]["sender"]["count"] > 0
    assert (tmp_path / "run" / "report.txt").read_text() == out.split("report written")[0]


def test_a_seed_gives_the_same_report_twice_and_another_seed_another(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert run([str(SIM), *SMALL, "--seed", seed, "--out", str(tmp_path / name)],
                   capsys)[0] == 0
        data = json.loads((tmp_path / name / "report.json").read_text())
        for timing in ("wall_s", "sim_seconds_per_s"):
            data.pop(timing)
        reports.append(data)
    assert reports[0] == reports[1]
    assert reports[0] != reports[2]  # control


def test_the_taps_file_holds_what_the_adversary_saw(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert run([str(SIM), *SMALL, "--taps", "--out", str(out)], capsys)[0] == 0
    privacy = json.loads((out / "report.json").read_text())["privacy"]
    topology = sim_topology(load_topology(SIM), SimParams(clients=8, duration=10.0))
    again = analyse(read_records(out / "taps.jsonl"), [c.name for c in topology.clients],
                    [n.name for n in topology.nodes()],
                    providers=[p.name for p in topology.providers],
                    measure_from=START + 1.0)  # the default warmup: a tenth of 10 s
    assert again.records == privacy["records"]
    assert again.sender is not None
    assert again.sender.mean == pytest.approx(privacy["sender"]["mean"])


def test_refusals_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(LOCAL.read_text().replace("mean_delay: 0.02", "mean_dealy: 0.02"))
    status, _, err = run([str(bad), *SMALL], capsys)
    assert status == 2 and f"{bad}: loopix.mean_dealy: unknown key" in err
    status, _, err = run([str(LOCAL), *SMALL, "--taps"], capsys)
    assert status == 2 and "--taps needs --out" in err
    status, _, err = run([str(LOCAL), "--clients", "1", "--quiet"], capsys)
    assert status == 2 and "at least 2 clients" in err
    with pytest.raises(SystemExit):
        sim_cli.main([str(LOCAL), "--corrupted", "1.5"])
    assert run([str(SIM), *SMALL], capsys)[0] == 0  # control


def test_taps_of_a_real_network_are_read_or_refused_by_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taps = tmp_path / "taps"
    taps.mkdir()
    status, _, err = run([str(LOCAL), "--from-taps", str(taps)], capsys)
    assert status == 2 and "no node tap" in err
    h1, h2 = "1" * 32, "2" * 32
    (taps / "provider-1.jsonl").write_text(
        f'{{"t": 10.0, "ev": "in", "peer": "alice", "h": "{h1}"}}\n'
        f'{{"t": 10.1, "ev": "out", "peer": "mix-a1", "h": "{h2}", "parent": "{h1}"}}\n')
    (taps / "mix-a1.jsonl").write_text(f'{{"t": 10.1, "ev": "end", "h": "{h2}"}}\n')
    status, out, _ = run([str(LOCAL), "--from-taps", str(taps), "--out", str(tmp_path / "o")],
                         capsys)
    assert status == 0 and "2 node taps" in out and "3 lines" in out
    assert json.loads((tmp_path / "o" / "privacy.json").read_text())["records"] == 3
    (taps / "mix-a1.jsonl").write_text("{not json\n")
    status, _, err = run([str(LOCAL), "--from-taps", str(taps)], capsys)
    assert status == 1 and "mix-a1.jsonl: line 1" in err


def test_a_sweep_prints_its_table_and_writes_the_plot(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run([str(SIM), *SMALL, "--sweep", "mean_delay=0.01,0.2",
                          "--out", str(tmp_path)], capsys)
    assert status == 0
    rows = [line for line in out.splitlines() if line.startswith("| 0.")]
    assert [row.split("|")[1].strip() for row in rows] == ["0.01", "0.2"]
    low, high = (float(row.split("|")[3]) for row in rows)  # sender mean
    assert high > low  # longer delays, bigger pools
    assert (tmp_path / "sweep-mean_delay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "sweep-mean_delay.json").read_text())
    assert [p["value"] for p in data["points"]] == [0.01, 0.2]
    with pytest.raises(SystemExit):
        sim_cli.main([str(SIM), "--sweep", "speed=1,2"])
    with pytest.raises(SystemExit):
        sim_cli.main([str(SIM), "--sweep", "mean_delay=fast"])
