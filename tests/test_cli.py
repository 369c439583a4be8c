"""The command line as a user meets it: help texts, exit statuses, refusals, the README's commands.

What needs a running network (binary messages, zmix-recv's statuses, replies) is in test_e2e.py;
these tests need at most a state directory with keys and run in seconds.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from zmix.bench.common import make_network
from zmix.cli import authority, bench, node, recv, register, send, up
from zmix.cli import client as client_cli
from zmix.cli import exit as exit_cli
from zmix.cli import sim as sim_cli
from zmix.cli import socks as socks_cli
from zmix.cli import status as status_cli
from zmix.cli import testbed as testbed_cli
from zmix.cli import tune as tune_cli
from zmix.envelope import dated_surb_length, envelope_capacity
from zmix.errors import LocalMisuse
from zmix.fragment import (
    CONTENT_OVERHEAD,
    HEADER_BYTES,
    MAX_REPLY_BLOCKS,
    reply_blocks_that_fit,
    split_message,
)
from zmix.sphinx.params import SphinxParams

ROOT = Path(__file__).parent.parent
PARSERS: dict[str, Callable[[], object]] = {
    "zmix-up": up.build_parser, "zmix-node": node.build_parser, "zmix-send": send.build_parser,
    "zmix-recv": recv.build_parser, "zmix-register": register.build_parser,
    "zmix-authority": authority.build_parser, "zmix-client": client_cli.build_parser,
    "zmix-socks": socks_cli.build_parser, "zmix-exit": exit_cli.build_parser,
    "zmix-status": status_cli.build_parser, "zmix-testbed": testbed_cli.build_parser,
    "zmix-sim": sim_cli.build_parser, "zmix-tune": tune_cli.build_parser,
}
CLIENTS = {"alice": "provider-1", "bob": "provider-2"}


def help_of(command: str) -> str:
    if command == "zmix-bench":
        return bench.help_text()
    return PARSERS[command]().format_help()  # type: ignore[attr-defined]


def statuses_in_help(text: str) -> list[int]:
    block = text.split("exit status:\n", 1)[1]
    return [int(m) for m in re.findall(r"^  (\d)  ", block, flags=re.MULTILINE)]


def test_every_command_lists_its_exit_statuses_in_its_help() -> None:
    for command in [*PARSERS, "zmix-bench"]:
        expected = [0, 1, 2, 3] if command == "zmix-recv" else [0, 1, 2]
        assert statuses_in_help(help_of(command)) == expected, command


def test_the_usage_doc_has_the_same_exit_statuses_as_each_commands_help() -> None:
    doc = (ROOT / "docs" / "usage.md").read_text()
    table = doc.split("## Exit statuses", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| `zmix")]
    documented = {row[0].strip().strip("`"): [int(c.strip()) for c in row[1].split(",")]
                  for row in rows}
    assert set(documented) == {*PARSERS, "zmix-bench"}
    for command, statuses in documented.items():
        assert statuses == statuses_in_help(help_of(command)), command


def test_every_example_in_the_help_texts_parses_with_its_command() -> None:
    checked = 0
    for command in ("zmix-send", "zmix-recv", "zmix-register", "zmix-client", "zmix-socks",
                    "zmix-exit", "zmix-status", "zmix-testbed", "zmix-sim", "zmix-tune"):
        for line in help_of(command).splitlines():
            if not line.startswith("  ") or "zmix-" not in line:
                continue
            step = next(part for part in line.split("#")[0].split("|") if "zmix-" in part)
            words = shlex.split(step)
            if words[0] not in PARSERS:
                continue  # prose that names a command
            parser = PARSERS[words[0]]()
            try:
                parser.parse_args(words[1:])  # type: ignore[attr-defined]
            except SystemExit:
                pytest.fail(f"{command} --help shows an example that {words[0]} refuses: {line}")
            checked += 1
    assert checked >= 12  # the examples were found at all
    assert "--from carol" in help_of("zmix-register")


def test_zmix_bench_without_a_benchmark_is_a_usage_error(capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    assert bench.main([]) == 2
    assert "usage: zmix-bench" in capsys.readouterr().err
    assert bench.main(["--help"]) == 0
    assert "usage: zmix-bench" in capsys.readouterr().out


def test_as_many_reply_blocks_as_said_to_fit_do_fit_and_one_more_does_not() -> None:
    surb = 301  # a reply block: a SURB of the default geometry and its key epoch
    for capacity in range(HEADER_BYTES + 3, 4000, 37):
        for filename in (None, "a-rather-long-file-name-for-a-report.pdf"):
            fit = reply_blocks_that_fit(capacity, surb, filename)
            try:
                split_message(bytes(16), b"x", capacity, filename=filename,
                              reply_surbs=[bytes(surb)] * fit)
            except LocalMisuse:
                assert fit == 0  # the name alone leaves no room: then no block fits either
                continue
            if fit < MAX_REPLY_BLOCKS:
                with pytest.raises(LocalMisuse, match=f"at most {fit} fit"):
                    split_message(bytes(16), b"x", capacity, filename=filename,
                                  reply_surbs=[bytes(surb)] * (fit + 1))


def test_the_reply_blocks_that_fit_follow_the_usage_docs_formula() -> None:
    for hops in (3, 4, 5, 8):
        for payload in (512, 700, 1024, 1536, 2048, 4096):
            params = SphinxParams(payload_length=payload, max_hops=hops)
            capacity = envelope_capacity(params, with_ack=True) - CONTENT_OVERHEAD
            block = dated_surb_length(params)
            assert block == 101 + 40 * hops
            for name in (None, "report.pdf", "r" * 255):
                length = len((name or "").encode())
                documented = min(4, max(0, (payload - 168 - length) // block - 1))
                assert reply_blocks_that_fit(capacity, block, name) == documented


def test_a_text_message_with_too_many_reply_blocks_is_refused_naming_the_most_that_fit(
        tmp_path: Path) -> None:
    # 1536-byte payloads: fewer reply blocks fit than the format's 4. Nothing runs: a refused
    # send exits 2 at once, an accepted one goes on to ask the authorities (none runs) for the
    # network and exits 1.
    _, state = make_network(tmp_path, clients=CLIENTS,
                            sphinx={"payload_length": 1536, "max_hops": 5})

    def send_with(blocks: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zmix.cli.send", "--state", str(state), "--from", "alice",
             "--to", "bob", "--reply-blocks", str(blocks), "--timeout", "0.5", *extra],
            capture_output=True, text=True, timeout=60, check=False)

    refused = send_with(MAX_REPLY_BLOCKS, "hello")
    assert refused.returncode == 2, refused.stderr
    most = int(re.search(r"at most (\d+) fit", refused.stderr).group(1))  # type: ignore[union-attr]
    assert 0 < most < MAX_REPLY_BLOCKS
    assert "file name" not in refused.stderr and "payload_length 1536" in refused.stderr
    accepted = send_with(most, "hello")
    assert accepted.returncode == 1 and "no valid network document" in accepted.stderr
    one_more = send_with(most + 1, "hello")
    assert one_more.returncode == 2 and f"at most {most} fit" in one_more.stderr
    # A file's name takes room in the same packet, and the refusal says so.
    report = tmp_path / ("r" * 200 + ".pdf")
    report.write_bytes(b"%PDF")
    with_name = send_with(most, "--file", str(report))
    assert with_name.returncode == 2 and "beside the file name" in with_name.stderr
    assert f"at most {most - 1} fit" in with_name.stderr


def test_more_reply_blocks_than_the_format_allows_are_refused_at_any_packet_size(
        tmp_path: Path) -> None:
    _, state = make_network(tmp_path, clients=CLIENTS,
                            sphinx={"payload_length": 4096, "max_hops": 5})
    done = subprocess.run(
        [sys.executable, "-m", "zmix.cli.send", "--state", str(state), "--from", "alice", "--to",
         "bob", "--reply-blocks", str(MAX_REPLY_BLOCKS + 1), "hi"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"carries at most {MAX_REPLY_BLOCKS}" in done.stderr


def readme_block(heading: str) -> str:
    section = (ROOT / "README.md").read_text().split(f"## {heading}", 1)[1]
    return section.split("```", 2)[1].strip()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    command = readme_block("Run the tests")
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(line.startswith(command) for line in ci.splitlines()), command


def test_the_readme_commands_use_a_virtual_environment() -> None:
    # A stock Debian or Ubuntu python3 refuses `pip install` outside one (PEP 668).
    for heading in ("Try it", "Run the tests"):
        command = readme_block(heading)
        before_pip = command.split("python3 -m pip install", 1)[0]
        assert "python3 -m venv .venv && . .venv/bin/activate && " in before_pip, heading
    assert "python3-venv" in readme_block("Try it")

