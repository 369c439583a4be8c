"""Deployment bundles (zmix-up --export-hosts, docs/deploy.md): each host folder holds its own
private keys only and runs its share unchanged, a second export never mixes keys, and the
systemd and compose files pass the tools' own checks."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml
from chain import read_until_ready, stop_process
from hypothesis import given
from hypothesis import strategies as st

from zmix import deploy
from zmix.authority import format_allowlist, parse_allowlist
from zmix.bench.common import free_ports
from zmix.errors import ConfigError, LocalMisuse
from zmix.keys import load_identity_public
from zmix.topology_yaml import load_topology

HOST_A, HOST_B = "198.51.100.1", "198.51.100.2"  # documentation addresses: never bound here
COMMANDS = {"zmix-node": "zmix.cli.node", "zmix-authority": "zmix.cli.authority"}


def topology_file(path: Path, host_a: str = HOST_A, host_b: str = HOST_B,
                  ports: list[int] | None = None) -> Path:
    """Host A: authority-1, provider-1, mix-a1; host B: provider-2, mix-b1; clients alice
    (provider-1) and bob (provider-2)."""
    port = iter(ports or range(31000, 31005))

    def member(name: str, host: str) -> dict[str, object]:
        return {"name": name, "host": host, "port": next(port)}

    path.write_text(yaml.safe_dump({
        "network": "deploy-test",
        "loopix": {"mean_delay": 0.002, "payload_rate": 50.0, "fetch_interval": 0.05,
                   "mix_loop_rate": 0.5},
        "defaults": {"workers": 1},
        "providers": [member("provider-1", host_a), member("provider-2", host_b)],
        "layers": [[member("mix-a1", host_a), member("mix-b1", host_b)]],
        "clients": [{"name": "alice", "provider": "provider-1"},
                    {"name": "bob", "provider": "provider-2"}],
        "authorities": [member("authority-1", host_a)],
    }, sort_keys=False))
    return path


def up(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmix.cli.up", *map(str, args)],
                          capture_output=True, text=True, timeout=60, check=False)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path,
                                                                subprocess.CompletedProcess[str]]:
    """One export of the two-host topology, keys made by it: (topology, state, DIR, result)."""
    base = tmp_path_factory.mktemp("export")
    topology = topology_file(base / "net.yaml")
    done = up(topology, "--state", base / "state", "--export-hosts", base / "bundles",
              "--zmix-bin", install_commands(base / "bin"))
    return topology, base / "state", base / "bundles", done


def install_commands(folder: Path) -> Path:
    """Put zmix-node and zmix-authority into ``folder`` as a host has them: executables that
    run this zmix (systemd-analyze verify checks that ExecStart is one)."""
    folder.mkdir()
    for command, module in COMMANDS.items():
        path = folder / command
        path.write_text(f"#!/bin/sh\nexec {sys.executable} -m {module} \"$@\"\n")
        path.chmod(0o755)
    return folder


# ---------------------------------------------------------------------------- the folders


def test_the_export_says_where_each_host_and_client_went_in_the_documented_lines(
        exported: tuple[Path, Path, Path, subprocess.CompletedProcess[str]]) -> None:
    _, state, bundles, done = exported
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no loopback host: no warning
    assert done.stdout.splitlines() == [
        f"zmix-up: keys of network deploy-test are in {state.resolve()} (generated now: "
        "provider-1, provider-2, mix-a1, mix-b1, alice, bob, authority-1)",
        f"  host {HOST_A:<16} provider-1 mix-a1 authority-1 -> {bundles}/hosts/{HOST_A}",
        f"  host {HOST_B:<16} provider-2 mix-b1 -> {bundles}/hosts/{HOST_B}",
        f"  client {'alice':<14} -> {bundles}/clients/alice",
        f"  client {'bob':<14} -> {bundles}/clients/bob",
        f"zmix-up: wrote 4 folder(s); the private keys are still in {state.resolve()}/private: "
        "delete them once the folders are on their hosts"]


def test_each_host_folder_holds_only_its_own_private_keys_and_every_public_file(
        exported: tuple[Path, Path, Path, subprocess.CompletedProcess[str]]) -> None:
    _, state, bundles, _ = exported
    own = {HOST_A: ["authority-1.identity.json", "mix-a1.identity.json", "mix-a1.json",
                    "provider-1.identity.json", "provider-1.json"],
           HOST_B: ["mix-b1.identity.json", "mix-b1.json", "provider-2.identity.json",
                    "provider-2.json"]}
    folders = {**{bundles / "hosts" / h: names for h, names in own.items()},
               bundles / "clients" / "alice": ["alice.json"],
               bundles / "clients" / "bob": ["bob.json"]}
    assert sorted(p.name for p in (bundles / "hosts").iterdir()) == [HOST_A, HOST_B]
    assert sorted(p.name for p in (bundles / "clients").iterdir()) == ["alice", "bob"]
    for folder, names in folders.items():
        private = folder / "private"
        assert sorted(p.name for p in private.iterdir()) == names
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        for name in names:
            assert stat.S_IMODE((private / name).stat().st_mode) == 0o600
            assert (private / name).read_bytes() == (state / "private" / name).read_bytes()
        assert tree(folder / "public") == tree(state / "public")
        assert (folder / "topology.yaml").read_bytes() == (state / "topology.yaml").read_bytes()
    # Positive control: together the folders hold every private file of the state, once.
    every = sorted(n for names in folders.values() for n in names)
    assert every == sorted(p.name for p in (state / "private").iterdir())
    assert not (bundles / "hosts" / HOST_B / "authorities").exists()  # no authority there
    assert sorted(p.name for p in bundles.iterdir()) == ["clients", "hosts"]  # no temporary


def test_the_authoritys_host_gets_an_allowlist_of_every_node_as_zmix_up_writes_it(
        exported: tuple[Path, Path, Path, subprocess.CompletedProcess[str]]) -> None:
    _, state, bundles, _ = exported
    allowlist = bundles / "hosts" / HOST_A / "authorities" / "authority-1" / "allowlist"
    nodes = ("provider-1", "provider-2", "mix-a1", "mix-b1")
    assert allowlist.read_text() == format_allowlist(
        {load_identity_public(state, n): n for n in nodes})
    assert not (state / "authorities").exists()  # written into the host folder, not the state


def test_an_allowlist_edited_in_the_state_folder_is_the_one_exported(tmp_path: Path) -> None:
    topology = topology_file(tmp_path / "net.yaml")
    assert up(topology, "--state", tmp_path / "state", "--keys-only").returncode == 0
    edited = tmp_path / "state" / "authorities" / "authority-1" / "allowlist"
    edited.parent.mkdir(parents=True)
    key = load_identity_public(tmp_path / "state", "provider-1")
    edited.write_text(f"{key.hex()}  # provider-1\n")
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    allowlist = tmp_path / "out" / "hosts" / HOST_A / "authorities" / "authority-1" / "allowlist"
    assert parse_allowlist(allowlist.read_text(), "") == {key: "provider-1"}


def test_an_export_from_a_state_made_by_keys_only_reuses_its_keys(tmp_path: Path) -> None:
    topology = topology_file(tmp_path / "net.yaml")
    made = up(topology, "--state", tmp_path / "state", "--keys-only")
    assert made.returncode == 0, made.stderr
    before = tree(tmp_path / "state" / "private")
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "(generated now: none)" in done.stdout
    assert tree(tmp_path / "state" / "private") == before
    assert tree(tmp_path / "out" / "hosts" / HOST_B / "private") == {
        n: before[n] for n in ("mix-b1.identity.json", "mix-b1.json",
                               "provider-2.identity.json", "provider-2.json")}


# ---------------------------------------------------------------------------- refusals


def test_a_second_export_into_the_same_folder_is_refused_and_changes_nothing(
        exported: tuple[Path, Path, Path, subprocess.CompletedProcess[str]],
        tmp_path: Path) -> None:
    topology, state, bundles, first = exported
    assert first.returncode == 0  # positive control: the first export was written
    before = tree(bundles)
    done = up(topology, "--state", state, "--export-hosts", bundles)
    assert done.returncode == 2
    assert done.stderr == (f"error: {bundles}/hosts/{HOST_A} exists already (an earlier "
                           "export?): move it away first, so that key files of two exports "
                           "never mix\n")
    assert done.stdout == ""
    assert tree(bundles) == before
    # One folder of the export is enough to refuse it all: here a client's.
    shutil.rmtree(tmp_path / "again", ignore_errors=True)
    (tmp_path / "again" / "clients" / "bob").mkdir(parents=True)
    done = up(topology, "--state", state, "--export-hosts", tmp_path / "again")
    assert done.returncode == 2
    assert f"{tmp_path}/again/clients/bob exists already" in done.stderr
    assert not (tmp_path / "again" / "hosts").exists()


def test_a_member_whose_private_key_is_not_in_the_state_folder_is_refused(
        tmp_path: Path) -> None:
    topology = topology_file(tmp_path / "net.yaml")
    assert up(topology, "--state", tmp_path / "state", "--keys-only").returncode == 0
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "ok")
    assert done.returncode == 0, done.stderr  # positive control
    (tmp_path / "state" / "private" / "mix-b1.json").unlink()  # made elsewhere, say
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out")
    assert done.returncode == 2
    missing = (tmp_path / "state" / "private" / "mix-b1.json").resolve()
    assert done.stderr == (f"error: {missing}: (file): no private key file for 'mix-b1'; copy "
                           "private/mix-b1.json (mode 0600) from the state directory where the "
                           "keys were made\n")
    assert not (tmp_path / "out" / "hosts").exists()


@pytest.mark.parametrize("extra, message", [
    (("--only", "mix-a1"), "--export-hosts writes files and starts nothing: it takes no --only"),
    (("--keys-only",), "--export-hosts writes files and starts nothing: it takes no --keys-only"),
    (("--demo", "--web", "8470"),
     "--export-hosts writes files and starts nothing: it takes no --demo, --web"),
    (("--export-monitoring", "mon"),
     "--export-monitoring writes files and starts nothing: it takes no --state, --export-hosts"),
])
def test_options_that_mean_nothing_with_export_hosts_are_refused(
        tmp_path: Path, extra: tuple[str, ...], message: str) -> None:
    topology = topology_file(tmp_path / "net.yaml")
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out",
              *extra)
    assert (done.returncode, done.stderr) == (2, f"error: {message}\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out")
    assert done.returncode == 0, done.stderr  # positive control: without them it works


def test_zmix_bin_must_be_absolute_and_goes_with_export_hosts_only(tmp_path: Path) -> None:
    topology = topology_file(tmp_path / "net.yaml")
    done = up(topology, "--export-hosts", tmp_path / "out", "--zmix-bin", "opt/zmix/bin")
    assert done.returncode == 2
    assert "--zmix-bin: 'opt/zmix/bin': must be absolute" in done.stderr
    done = up(topology, "--export-hosts", tmp_path / "out", "--zmix-bin", "/opt/my zmix/%h")
    assert done.returncode == 2
    assert ("--zmix-bin: '/opt/my zmix/%h': must hold no white space, quotes, '%', '$' or "
            "backslashes") in done.stderr
    done = up(topology, "--state", tmp_path / "state", "--keys-only", "--zmix-bin", "/opt/x")
    assert (done.returncode, done.stderr) == (2, "error: --zmix-bin goes with --export-hosts\n")
    assert not (tmp_path / "state").exists()
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out",
              "--zmix-bin", "/usr/local/bin")
    assert done.returncode == 0, done.stderr  # positive control
    unit = tmp_path / "out" / "hosts" / HOST_B / "systemd" / "zmix-deploy-test-mix-b1.service"
    assert ("ExecStart=/usr/local/bin/zmix-node --state /var/lib/zmix/deploy-test --name "
            "mix-b1\n") in unit.read_text()


def test_a_host_that_cannot_name_a_folder_is_refused_before_any_key_is_made(
        tmp_path: Path) -> None:
    topology = topology_file(tmp_path / "net.yaml", host_b="../escape")
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr == (f"error: {topology}: host: '../escape' (of provider-2) holds a slash, "
                           "so --export-hosts cannot give it a folder\n")
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("old, new", [("network: deploy-test", "network: '..'"),
                                      ("name: alice", "name: ."), ("name: mix-a1", "name: ..")])
def test_a_name_that_cannot_name_a_folder_is_refused_before_any_key_is_made(
        tmp_path: Path, old: str, new: str) -> None:
    # The topology loader refuses . and .. as names (a folder's parent is no state folder).
    topology = topology_file(tmp_path / "net.yaml")
    text = topology.read_text()
    assert old in text  # positive control: this topology exports (the tests above)
    topology.write_text(text.replace(old, new))
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out")
    assert done.returncode == 2
    assert "must be a name of 1-64 letters, digits, '_', '.' or '-' (not . or ..)" in done.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()


def test_a_loopback_host_is_exported_with_a_warning(tmp_path: Path) -> None:
    topology = topology_file(tmp_path / "net.yaml", host_a="127.0.0.1", host_b="localhost")
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: host {h} is a loopback address: its nodes and authorities cannot be reached "
        "from another machine" for h in ("127.0.0.1", "localhost")]
    assert sorted(p.name for p in (tmp_path / "out" / "hosts").iterdir()) == [
        "127.0.0.1", "localhost"]


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("::ffff:127.0.0.1", True),
    ("198.51.100.1", False), ("2001:db8::1", False), ("node1.example.org", False),
    ("0.0.0.0", False), ("128.0.0.1", False)])
def test_loopback_hosts_are_recognised(host: str, loopback: bool) -> None:
    assert deploy.is_loopback(host) is loopback


@given(st.text(max_size=80))
def test_any_host_string_gives_an_answer_and_never_an_exception(host: str) -> None:
    assert isinstance(deploy.is_loopback(host), bool)
    problem = deploy.folder_problem(host)
    assert problem is None or isinstance(problem, str)
    if problem is None:  # a folder of its own, directly under hosts/
        assert host not in ("", ".", "..")
        assert PurePosixPath("hosts", host).parent == PurePosixPath("hosts")


@given(st.text(max_size=80))
def test_any_zmix_bin_is_refused_with_a_reason_or_names_one_word_of_execstart(
        folder: str) -> None:
    problem = deploy.zmix_bin_problem(folder)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        member = deploy.Member("mix-a1", deploy.Kind.NODE, "mixnode")
        argv = deploy.command(member, "net", PurePosixPath(folder))
        assert " ".join(argv).split() == argv  # systemd splits ExecStart= where we do
        assert not set(folder) & set("%$\\'\"")


# ---------------------------------------------------------------------------- the plan


def test_the_plan_gives_each_host_one_hardened_unit_per_member_and_a_target(
        tmp_path: Path) -> None:
    topology = load_topology(topology_file(tmp_path / "net.yaml"))
    bundles = deploy.plan(topology, PurePosixPath("/srv/zmix/bin"))
    host_a = bundles.hosts[0]
    assert [m.name for m in host_a.members] == ["provider-1", "mix-a1", "authority-1"]
    files = dict(host_a.files)
    assert sorted(files) == [
        "Dockerfile", "compose.yaml", "systemd/zmix-deploy-test-authority-1.service",
        "systemd/zmix-deploy-test-mix-a1.service", "systemd/zmix-deploy-test-provider-1.service",
        "systemd/zmix-deploy-test.target", "sysusers.d/zmix.conf"]
    for member in host_a.members:
        unit = files[f"systemd/zmix-deploy-test-{member.name}.service"].splitlines()
        assert (f"ExecStart=/srv/zmix/bin/{member.kind.value} --state /var/lib/zmix/deploy-test "
                f"--name {member.name}") in unit
        for line in ("User=zmix", "ProtectSystem=strict", "StateDirectory=zmix/deploy-test",
                     "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes",
                     "Restart=on-failure", "RestartSec=5s", "KillSignal=SIGTERM",
                     "After=network-online.target", "PartOf=zmix-deploy-test.target",
                     "Environment=TMPDIR=/run/zmix"):
            assert line in unit, (member.name, line)
    assert ("Wants=zmix-deploy-test-provider-1.service zmix-deploy-test-mix-a1.service "
            "zmix-deploy-test-authority-1.service") in files["systemd/zmix-deploy-test.target"]
    with pytest.raises(LocalMisuse):
        deploy.plan(topology, PurePosixPath("relative/bin"))


def test_compose_runs_each_member_of_the_host_on_the_host_network_as_a_non_root_user(
        tmp_path: Path) -> None:
    topology = load_topology(topology_file(tmp_path / "net.yaml"))
    host_b = deploy.plan(topology).hosts[1]
    services = yaml.safe_load(dict(host_b.files)["compose.yaml"])["services"]
    assert list(services) == ["provider-2", "mix-b1"]
    for name, service in services.items():
        assert service["command"] == ["/opt/zmix/bin/zmix-node", "--state",
                                      "/var/lib/zmix/deploy-test", "--name", name]
        assert service["network_mode"] == "host"
        assert service["user"] == "10001:10001"
        assert service["volumes"][0] == ".:/var/lib/zmix/deploy-test"
        assert service["stop_signal"] == "SIGTERM" and service["restart"] == "unless-stopped"
        assert service["healthcheck"]["test"][-1] == (
            f"/var/lib/zmix/deploy-test/nodes/{name}/control")


def test_a_host_with_a_slash_is_a_config_error_of_the_plan(tmp_path: Path) -> None:
    good = load_topology(topology_file(tmp_path / "good.yaml"))
    assert len(deploy.plan(good).hosts) == 2  # positive control
    bad = load_topology(topology_file(tmp_path / "bad.yaml", host_a="a/b"))
    with pytest.raises(ConfigError, match="holds a slash"):
        deploy.plan(bad)


# ---------------------------------------------------------------------------- the tools


def test_the_units_pass_systemd_analyze_verify(
        exported: tuple[Path, Path, Path, subprocess.CompletedProcess[str]],
        tmp_path: Path) -> None:
    """The bundle was made with --zmix-bin naming a folder that holds the commands: verify
    checks that ExecStart is an executable, as on a host with zmix installed there."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    units = sorted((exported[2] / "hosts" / HOST_A / "systemd").iterdir())
    done = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    # Positive control: verify does complain about a misspelt key, and about a missing command.
    bad = tmp_path / "zmix-deploy-test-mix-a1.service"
    text = (exported[2] / "hosts" / HOST_A / "systemd" / bad.name).read_text()
    bad.write_text(text.replace("ProtectSystem=", "ProtectSystm=").replace(
        str(exported[0].parent / "bin"), "/nonexistent/bin"))
    done = subprocess.run(["systemd-analyze", "verify", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "Unknown key 'ProtectSystm'" in done.stderr
    assert "/nonexistent/bin/zmix-node is not executable" in done.stderr


def test_systemd_rates_every_units_exposure_at_most_2_5(
        exported: tuple[Path, Path, Path, subprocess.CompletedProcess[str]],
        tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")

    def exposure_within(units: list[Path]) -> bool:
        done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=25",
                               *map(str, units)], capture_output=True, text=True, timeout=60,
                              check=False)
        return done.returncode == 0

    if subprocess.run(["systemd-analyze", "security", "--help"], capture_output=True,
                      text=True, timeout=60, check=False).stdout.find("--offline") < 0:
        pytest.skip("this systemd-analyze cannot rate unit files offline (systemd < 250)")
    units = sorted((exported[2] / "hosts" / HOST_A / "systemd").glob("*.service"))
    assert exposure_within(units)
    # Positive control: the same unit without its hardening is rated above the bound.
    text = units[0].read_text()
    bare = tmp_path / units[0].name
    bare.write_text(text.split("NoNewPrivileges=")[0] + "\n[Install]\n" +
                    text.split("[Install]\n")[1])
    assert not exposure_within([bare])


def test_the_sysusers_file_makes_the_zmix_user(
        exported: tuple[Path, Path, Path, subprocess.CompletedProcess[str]],
        tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers is not installed (Debian package systemd)")
    (tmp_path / "root" / "etc").mkdir(parents=True)
    conf = exported[2] / "hosts" / HOST_A / "sysusers.d" / "zmix.conf"
    done = subprocess.run(["systemd-sysusers", "--dry-run", f"--root={tmp_path / 'root'}",
                           str(conf)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Creating user 'zmix' (zmix mixnet)" in done.stdout + done.stderr
    bad = tmp_path / "bad.conf"  # positive control: a malformed line is refused
    bad.write_text(conf.read_text().replace("/usr/sbin/nologin", "/usr/sbin/nologin garbage"))
    done = subprocess.run(["systemd-sysusers", "--dry-run", f"--root={tmp_path / 'root'}",
                           str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0


def compose_command() -> list[str] | None:
    """Return the compose client here: ``docker compose`` (v2) or Debian's docker-compose."""
    docker = shutil.which("docker")
    if docker is not None and subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30,
            check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_each_compose_file_passes_compose_config(
        exported: tuple[Path, Path, Path, subprocess.CompletedProcess[str]],
        tmp_path: Path) -> None:
    client = compose_command()
    if client is None:
        pytest.skip("neither 'docker compose' nor docker-compose is installed (Debian package "
                    "docker-compose)")
    for host in (HOST_A, HOST_B):
        folder = exported[2] / "hosts" / host
        done = subprocess.run([*client, "-f", str(folder / "compose.yaml"), "config", "-q"],
                              capture_output=True, text=True, timeout=60, check=False,
                              cwd=folder)
        assert (done.returncode, done.stderr) == (0, ""), host
    bad = tmp_path / "compose.yaml"  # positive control: a misspelt key is refused
    bad.write_text((exported[2] / "hosts" / HOST_A / "compose.yaml").read_text().replace(
        "network_mode:", "network_mood:", 1))
    done = subprocess.run([*client, "-f", str(bad), "config", "-q"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode != 0


# ---------------------------------------------------------------------------- running


def start_share(folder: Path, *names: str) -> subprocess.Popen[str]:
    """Start ``zmix-up FOLDER/topology.yaml --state FOLDER --only NAMES`` as the test bed does."""
    return subprocess.Popen(
        [sys.executable, "-m", "zmix.cli.up", str(folder / "topology.yaml"), "--state",
         str(folder), "--only", *names], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


@pytest.mark.slow  # real networks of two hosts, about 5-7 s each
def test_two_host_folders_run_their_shares_unchanged_and_carry_a_message(
        tmp_path: Path) -> None:
    """Host A on 127.0.0.1 and host B on 127.0.0.2 (all of 127/8 is this machine's)."""
    ports = free_ports(3) + free_ports(2, "127.0.0.2")
    order = [ports[0], ports[3], ports[1], ports[4], ports[2]]  # as topology_file hands out
    topology = topology_file(tmp_path / "net.yaml", "127.0.0.1", "127.0.0.2", order)
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    shutil.rmtree(tmp_path / "state")  # the exporting machine keeps nothing the hosts need
    host_a, host_b = (tmp_path / "out" / "hosts" / h for h in ("127.0.0.1", "127.0.0.2"))
    before = {h: tree(h / "private") for h in (host_a, host_b)}
    share_b = start_share(host_b, "provider-2", "mix-b1")
    try:
        share_a = start_share(host_a, "authority-1", "provider-1", "mix-a1")
        try:
            assert "ready: 1 authority(ies) and 2 node(s) running" in read_until_ready(share_a)[-1]
            assert "ready: 0 authority(ies) and 2 node(s) running" in read_until_ready(share_b)[-1]
            clients = tmp_path / "out" / "clients"
            sent = subprocess.run(
                [sys.executable, "-m", "zmix.cli.send", "--state", str(clients / "alice"),
                 "--from", "alice", "--to", "bob", "from one host folder to another"],
                capture_output=True, text=True, timeout=120, check=False)
            assert sent.returncode == 0, sent.stderr
            got = subprocess.run(
                [sys.executable, "-m", "zmix.cli.recv", "--state", str(clients / "bob"),
                 "--as", "bob", "--wait", "30"],
                capture_output=True, text=True, timeout=120, check=False)
            assert got.returncode == 0, got.stderr
            assert "from alice: from one host folder to another" in got.stdout
        finally:
            assert stop_process(share_a) == 0
    finally:
        assert stop_process(share_b) == 0
    for host in (host_a, host_b):  # ran unchanged: no key made or replaced
        assert tree(host / "private") == before[host]


# ---------------------------------------------------------------------------- the doc

DOC = Path(__file__).parent.parent / "docs" / "deploy.md"


def doc_block(heading: str, fence: str) -> str:
    """Return the first fenced block (opening with ``fence``) after ``heading`` in deploy.md."""
    section = DOC.read_text().split(heading, 1)[1]
    return section.split(fence + "\n", 1)[1].split("```\n", 1)[0]


def test_the_docs_three_host_walkthrough_prints_what_the_doc_shows(tmp_path: Path) -> None:
    (tmp_path / "demo.yaml").write_text(doc_block("## 1. The topology", "```yaml"))
    command = doc_block("## 2. Export", "```").strip()
    assert command == "zmix-up demo.yaml --state demo-keys --export-hosts bundles"
    done = subprocess.run([sys.executable, "-m", "zmix.cli.up", *command.split()[1:]],
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = doc_block("prints\n", "```").replace("/home/op/", f"{tmp_path}/")
    assert done.stdout == shown
    assert sorted(p.name for p in (tmp_path / "bundles/hosts/198.51.100.3/private").iterdir()) == [
        "authority-3.identity.json", "mix-c1.identity.json", "mix-c1.json"]  # as the doc says
    units = sorted(p.name for p in (tmp_path / "bundles/hosts/198.51.100.1/systemd").iterdir())
    assert units == ["zmix-demo-authority-1.service", "zmix-demo-mix-a1.service",
                     "zmix-demo-provider-1.service", "zmix-demo.target"]
    sysusers = (tmp_path / "bundles/hosts/198.51.100.1/sysusers.d/zmix.conf").read_text()
    assert ("useradd --system --user-group --home-dir /var/lib/zmix\n# --shell "
            "/usr/sbin/nologin zmix") in sysusers  # the line the doc gives without sysusers
    assert ("`useradd --system --user-group --home-dir /var/lib/zmix --shell\n/usr/sbin/nologin "
            "zmix`") in DOC.read_text()


def unit_process(unit: Path, state: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    """Start what ``unit`` runs (its ExecStart and Environment), with the host's state folder
    at ``state`` instead of /var/lib/zmix/NETWORK and /run/zmix at ``run_dir``."""
    lines = unit.read_text().splitlines()
    (command,) = (line.removeprefix("ExecStart=") for line in lines
                  if line.startswith("ExecStart="))
    (environment,) = (line.removeprefix("Environment=") for line in lines
                      if line.startswith("Environment="))
    assert environment == "TMPDIR=/run/zmix"
    argv = command.replace("/var/lib/zmix/deploy-test", str(state)).split()
    return subprocess.Popen(argv, env={**os.environ, "TMPDIR": str(run_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def status_of(host: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmix.cli.status", "--state", str(host),
                           "--json"], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow  # real networks of two hosts, about 5-7 s each
def test_the_units_commands_run_each_host_and_zmix_status_reaches_them_through_tmpdir(
        tmp_path: Path) -> None:
    ports = free_ports(3) + free_ports(2, "127.0.0.2")
    order = [ports[0], ports[3], ports[1], ports[4], ports[2]]
    topology = topology_file(tmp_path / "net.yaml", "127.0.0.1", "127.0.0.2", order)
    done = up(topology, "--state", tmp_path / "state", "--export-hosts", tmp_path / "out",
              "--zmix-bin", install_commands(tmp_path / "bin"))
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "run"  # /run/zmix of the units: one per host, shared by its services
    hosts = [tmp_path / "out" / "hosts" / h for h in ("127.0.0.1", "127.0.0.2")]
    local = {hosts[0]: ["nodes/provider-1", "nodes/mix-a1", "authorities/authority-1"],
             hosts[1]: ["nodes/provider-2", "nodes/mix-b1"]}
    processes = []
    try:
        assert status_of(hosts[0]).returncode == 1  # positive control: down before the start
        for host in hosts:
            (run_dir / host.name).mkdir(parents=True)
            processes += [unit_process(unit, host, run_dir / host.name)
                          for unit in sorted((host / "systemd").glob("*.service"))]
        assert len(processes) == 5
        deadline = time.monotonic() + 60
        for host in hosts:
            while (status := status_of(host)).returncode != 0:  # every local node answered
                assert time.monotonic() < deadline, f"{host.name}: {status.stdout[-500:]}"
                time.sleep(0.5)
            for member in local[host]:  # their sockets are in the units' TMPDIR
                assert (host / member / "control").read_text().startswith(
                    f"ipc://{run_dir / host.name}/")
        assert [health(hosts[0], name) for name in ("provider-1", "authority-1")] == [0, 0]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)  # the units' KillSignal
        codes = [process.wait(30) for process in processes]
    assert codes == [0] * 5  # every one stopped cleanly on SIGTERM
    assert health(hosts[0], "provider-1") == 1  # positive control: unhealthy once stopped


def health(host: Path, service: str) -> int:
    """Run the healthcheck of ``service`` in ``host``'s compose.yaml here (its python and the
    state folder where they are on this machine); return its exit status."""
    services = yaml.safe_load((host / "compose.yaml").read_text())["services"]
    python, *argv = services[service]["healthcheck"]["test"][1:]
    assert python == "/opt/zmix/bin/python3"
    argv = [a.replace("/var/lib/zmix/deploy-test", str(host)) for a in argv]
    return subprocess.run([sys.executable, *argv], timeout=60, check=False).returncode
