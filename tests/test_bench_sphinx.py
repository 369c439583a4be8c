"""``zmix-bench sphinx`` and its --peers: the replies of a peer's child, the tables, the options.

The fast tests stand in for the real peers with small libraries of the standard one (a child that
hashes, one that is missing, one that crashes), so they run without sphinxmixcrypto or sphinxmix.
The slow test runs the real peers when it can find them: installed in this interpreter, or in the
ones named by ZMIX_BENCH_SMC_PYTHON and ZMIX_BENCH_SPHINXMIX_PYTHON (docs/performance.md, "Against
other Python Sphinx libraries").
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmix.bench import peers as peers_mod
from zmix.bench import sphinx as bench
from zmix.bench.peers import (
    PEERS,
    Missing,
    Peer,
    PeerOutputError,
    PeerProcess,
    PeerResult,
    PeerState,
    Ready,
    Timing,
    parse_peer_python,
    parse_reply,
    peer_lines,
    ratios,
)
from zmix.cli import bench as bench_cli
from zmix.sphinx import WIRE_PROFILES, Profile

QUICK = ["--iterations", "3", "--payload", "256"]


def fake_peer(key: str, setup: str, module: str = "hashlib") -> Peer:
    # "pytest" is a distribution installed wherever these tests run: the child reports its version.
    return Peer(key, module, "pytest", "0", "a stand-in", f"install {key} somehow", setup)


HASHING = fake_peer("hashing", "import hashlib\ndef unwrap():\n"
                               "    return hashlib.blake2b(b'x' * PAYLOAD).digest()\n")
ABSENT = fake_peer("absent", "def unwrap():\n    pass\n", module="zmix_no_such_module_here")
CRASHING = fake_peer("crashing", "raise RuntimeError('the library broke at setup')\n")
CHATTY = fake_peer("chatty", "print('hello from the library')\ndef unwrap():\n    pass\n")


def test_each_reply_of_a_child_parses_to_what_it_says() -> None:
    assert parse_reply(b'{"ready": "0.0.4"}') == Ready("0.0.4")
    assert parse_reply(b'{"missing": "sphinxmix"}') == Missing("sphinxmix")
    assert parse_reply(b'{"hop_seconds": 9.6e-05}') == Timing(9.6e-05)
    assert parse_reply(b'{"hop_seconds": 1}') == Timing(1.0)


@pytest.mark.parametrize("line", [
    b"", b"hello", b"[]", b'"ready"', b'{"ready": ""}', b'{"ready": 4}', b'{"missing": null}',
    b'{"hop_seconds": 0}', b'{"hop_seconds": -1e-05}', b'{"hop_seconds": NaN}',
    b'{"hop_seconds": Infinity}', b'{"hop_seconds": true}', b'{"hop_seconds": "1e-4"}',
    b'{"hop_seconds": 1e-4, "ready": "1"}', b'{"other": 1}', b"\xff\xfe", b"[" * 100000])
def test_a_line_that_is_not_a_reply_is_refused_as_peer_output(line: bytes) -> None:
    with pytest.raises(PeerOutputError):
        parse_reply(line)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_line_gives_a_reply_or_a_peer_output_error(line: bytes) -> None:
    try:
        reply = parse_reply(line)
    except PeerOutputError:
        return
    assert isinstance(reply, Ready | Missing | Timing)
    if isinstance(reply, Timing):
        assert math.isfinite(reply.hop_seconds) and reply.hop_seconds > 0


def test_peer_python_names_a_known_peer_and_a_path() -> None:
    assert parse_peer_python("smc=/venv/bin/python") == ("smc", "/venv/bin/python")
    assert parse_peer_python("sphinxmix=py=3") == ("sphinxmix", "py=3")
    for bad in ("smc", "smc=", "=/bin/python", "sphinxmixcrypto=/bin/python", "SMC=/x"):
        with pytest.raises(ValueError, match="NAME=PATH"):
            parse_peer_python(bad)


@given(st.text(max_size=60))
def test_any_peer_python_text_gives_a_pair_or_a_value_error(text: str) -> None:
    try:
        key, path = parse_peer_python(text)
    except ValueError:
        return
    assert key in peers_mod.PEER_KEYS and path and text == f"{key}={path}"


def test_the_options_take_a_runnable_interpreter_for_a_known_peer_and_refuse_the_rest(
        capsys: pytest.CaptureFixture[str]) -> None:
    parser = bench.build_parser()
    args = parser.parse_args(["--peer-python", f"smc={sys.executable}",
                              "--peer-python", f"sphinxmix={sys.executable}"])
    assert dict(args.peer_python) == {"smc": sys.executable, "sphinxmix": sys.executable}
    assert parser.parse_args(["--peers"]).peers and not parser.parse_args([]).peers
    for bad in ("nosuch=" + sys.executable, "smc=/nonexistent/bin/python", "smc=" + os.devnull):
        with pytest.raises(SystemExit) as exc:
            bench_cli.main(["sphinx", "--peer-python", bad])
        assert exc.value.code == 2
        assert "--peer-python" in capsys.readouterr().err


def test_the_help_names_the_peers_options_and_how_to_name_a_peer() -> None:
    text = bench.build_parser().format_help()
    assert "--peers" in text and "--peer-python NAME=PATH" in text
    assert all(peer.key in text for peer in PEERS)
    assert "--peers" in bench_cli.help_text()


def test_a_peer_ratio_is_the_median_of_the_rounds_ratios_to_each_profile() -> None:
    zmix = {"v1": [100e-6, 200e-6, 100e-6], "kem1": [50e-6, 100e-6, 50e-6]}
    peer = [150e-6, 300e-6, 160e-6]  # rounds 2 and 3 were slowed alike: 1.5, 1.5, 1.6
    assert ratios(peer, zmix) == pytest.approx({"v1": 1.5, "kem1": 3.0})
    result = PeerResult(HASHING, "/py", PeerState.MEASURED, "1.2", tuple(peer))
    head, row, _ = peer_lines([result], zmix)
    assert head.split() == ["peer", "per", "hop", "us", "x", "v1", "x", "kem1"]
    assert row.split() == ["pytest", "1.2", "160.0", "1.50", "3.00"]


def test_a_peer_not_installed_is_one_line_with_the_interpreter_and_how_to_install() -> None:
    missing = PeerResult(PEERS[1], "/venv/bin/python", PeerState.NOT_INSTALLED)
    failed = PeerResult(PEERS[0], "/venv/bin/python", PeerState.FAILED, error="boom")
    lines = peer_lines([missing, failed], {"v1": [1e-4]})
    assert lines[1].split()[:2] == ["sphinxmix", "0.0.7"]
    assert "not installed in /venv/bin/python (to install: python3 -m venv VENV && " \
           "VENV/bin/pip install sphinxmix==0.0.7" in lines[1]
    assert lines[2].endswith("failed: boom") and "not installed" not in lines[2]


def run_child(peer: Peer, rounds: int = 2) -> PeerResult:
    proc = PeerProcess(peer, sys.executable)
    try:
        proc.start(256, 3)
        proc.wait_ready()
        for _ in range(rounds):
            proc.measure(5)
        return proc.result()
    finally:
        proc.close()
        assert proc.proc is None


def test_a_child_that_imports_its_library_times_each_round() -> None:
    result = run_child(HASHING)
    assert result.state is PeerState.MEASURED, result.error
    assert result.version == bench_version("pytest") and len(result.samples) == 2
    assert all(0 < s < 0.1 for s in result.samples)


def bench_version(distribution: str) -> str:
    import importlib.metadata
    return importlib.metadata.version(distribution)


def test_a_child_without_its_library_reports_it_not_installed_and_a_crash_as_failed() -> None:
    assert run_child(HASHING).state is PeerState.MEASURED  # control: the same child, library there
    assert run_child(ABSENT) == PeerResult(ABSENT, sys.executable, PeerState.NOT_INSTALLED)
    crashed = run_child(CRASHING)
    assert crashed.state is PeerState.FAILED and crashed.samples == ()
    assert crashed.error == "RuntimeError: the library broke at setup"
    chatty = run_child(CHATTY)
    assert chatty.state is PeerState.FAILED and "not a JSON line" in chatty.error


def test_a_child_that_does_not_answer_in_time_is_failed_and_ended(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers_mod, "READY_SECONDS", 0.5)
    assert run_child(HASHING).state is PeerState.MEASURED  # control: a prompt child, same budget
    proc = PeerProcess(fake_peer("hanging", "time.sleep(30)\n"), sys.executable)
    proc.start(256, 3)
    child = proc.proc
    assert child is not None
    started = time.monotonic()
    proc.wait_ready()
    proc.close()
    assert time.monotonic() - started < 5
    assert proc.result().state is PeerState.FAILED and proc.result().error == "no answer in time"
    assert child.returncode is not None  # ended, not left sleeping


def test_an_interpreter_that_cannot_run_makes_the_peer_failed_not_the_bench() -> None:
    proc = PeerProcess(HASHING, os.devnull)
    proc.start(256, 3)
    proc.wait_ready()
    proc.measure(5)
    result = proc.result()
    assert result.state is PeerState.FAILED and "cannot run" in result.error


def test_the_bench_measures_every_wire_profile_against_v1_and_its_floor() -> None:
    result = bench.run(3, 256, 3)
    wire = {p.value for p in Profile} - {"smc0"}
    assert set(result["profiles"]) == wire and "v1" in wire
    v1 = result["profiles"]["v1"]
    assert v1["ratio_to_v1"] == 1.0 and v1["floor_x25519"] == 2
    assert result["per_hop_seconds"] == v1["per_hop_seconds"]  # the top level is v1's
    for name, figures in result["profiles"].items():
        assert figures["per_hop_seconds"] > 0 and figures["ratio_to_v1"] > 0
        assert ("floor_seconds" in figures) == (name in bench.FLOOR_X25519)
    assert result["peer_results"] == []
    lines = bench.profile_lines(result)
    assert [line.split()[0] for line in lines[1:-1]] == list(result["profiles"])


def test_with_peers_the_table_has_each_measured_missing_and_failed_peer_and_exits_1_on_failure(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "PEERS", (HASHING, ABSENT))
    assert bench_cli.main(["sphinx", "--peers", *QUICK]) == 0  # a missing peer fails nothing
    out = capsys.readouterr().out
    assert "zmix-bench sphinx: 256-byte payload" in out
    measured = next(line for line in out.splitlines() if line.startswith("  pytest"))
    assert len(measured.split()) == 3 + len(WIRE_PROFILES)  # name, version, us, ratios
    assert f"not installed in {sys.executable} (to install: install absent somehow)" in out
    monkeypatch.setattr(bench, "PEERS", (HASHING, CRASHING))
    assert bench.main(["--peers", *QUICK]) == 1
    assert "failed: RuntimeError: the library broke at setup" in capsys.readouterr().out


def test_without_peers_nothing_is_started_and_no_peer_table_printed(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "PEERS", (CRASHING,))
    assert bench.main(QUICK) == 0
    out = capsys.readouterr().out
    assert "peers:" not in out and "failed" not in out
    assert bench.main(["--peers", *QUICK]) == 1  # control: asked for, the same peer is run


def test_json_holds_every_profile_and_each_peer_by_its_name(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "PEERS", (HASHING, ABSENT))
    assert bench.main(["--peers", "--json", *QUICK]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures["profiles"]) == {p.value for p in WIRE_PROFILES}
    hashing, absent = figures["peers"]["hashing"], figures["peers"]["absent"]
    assert hashing["state"] == "measured" and hashing["per_hop_seconds"] > 0
    assert set(hashing["ratio_to"]) == set(figures["profiles"])
    assert absent == {"distribution": "pytest", "construction": "a stand-in",
                      "python": sys.executable, "state": "not installed",
                      "install": "install absent somehow"}
    assert bench.main(["--json", *QUICK]) == 0
    assert "peers" not in json.loads(capsys.readouterr().out)


def test_the_json_fields_are_those_the_usage_doc_names(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "usage.md").read_text()
    text = doc.split("With `--json` the figures", 1)[1].split("\n\n", 1)[0]
    profile_part, top_part = text.split("v1's figures also stand at the top level", 1)
    profile_fields = set(re.findall(r"`([a-z0-9_]+)`", profile_part)) - {"profiles"}
    top_fields = set(re.findall(r"`([a-z0-9_]+)`", top_part))
    monkeypatch.setattr(bench, "PEERS", (ABSENT,))
    assert bench.main(["--peers", "--json", *QUICK]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures) == top_fields | {"profiles"}
    assert set(figures["profiles"]["v1"]) == profile_fields  # v1 has a floor: every field


def real_peer_pythons() -> dict[str, str]:
    """Return, per peer found, the interpreter that has it."""
    found = {}
    for peer in PEERS:
        python = os.environ.get(f"ZMIX_BENCH_{peer.key.upper()}_PYTHON", sys.executable)
        result = run_child_with(peer, python)
        if result.state is PeerState.MEASURED:
            found[peer.key] = python
    return found


def run_child_with(peer: Peer, python: str) -> PeerResult:
    proc = PeerProcess(peer, python)
    try:
        proc.start(1024, 5)
        proc.wait_ready()
        return proc.result()
    finally:
        proc.close()


@pytest.mark.slow
def test_the_real_peers_are_timed_beside_every_profile(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    found = real_peer_pythons()
    if len(found) < len(PEERS):
        pytest.skip(f"peers found: {sorted(found) or 'none'}; set ZMIX_BENCH_SMC_PYTHON and "
                    "ZMIX_BENCH_SPHINXMIX_PYTHON to the interpreters of venvs that have them")
    options = [arg for key, python in found.items() for arg in ("--peer-python", f"{key}={python}")]
    assert bench.main([*options, "--json", "--iterations", "200", "--payload", "1024"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for peer in PEERS:
        entry = figures["peers"][peer.key]
        assert entry["state"] == "measured" and entry["version"] == peer.version
        assert 1e-6 < entry["per_hop_seconds"] < 1e-2  # a hop, not a no-op nor a hang
        assert set(entry["ratio_to"]) == set(figures["profiles"])
