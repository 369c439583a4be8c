"""Real node processes across short epochs: key rotation, replays, the authorities' absence.

A chain mix-a -> mix-b runs as processes with the topology's authority; the test plays
provider-1 (published like a node: tests/chain.py). Epochs last seconds (docs/topology.md: a
short epoch needs a small ``max_delay``), so each test crosses the boundaries it needs. Waiting
for a point of the epoch schedule is waiting for the clock, not for an event: ``until`` sleeps to
a computed unix time; events are awaited with bounded deadlines that fail loudly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from chain import Chain, start_chain

from zmix import wire
from zmix.bench.common import fetch_network, hops_at
from zmix.epochkeys import key_directory
from zmix.epochs import EpochParams
from zmix.keys import load_private
from zmix.runtime import links, metrics
from zmix.runtime.launcher import authority_command, node_command
from zmix.sphinx import create_forward_packet

# 2 * max_hops (5) * max_delay (0.5 s) = 5 s <= the epoch length (docs/topology.md)
LOOPIX = {"max_delay": 0.5}
SHORT = {"length": 6, "grace": 1}
LONGER = {"length": 10, "grace": 2}


def until(t: float) -> None:
    """Sleep until unix time ``t`` (a point of the key schedule)."""
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))


def epoch_with_room(params: EpochParams, room: float) -> int:
    """Return the current epoch once at least ``room`` seconds of it are left (waiting for the
    next one to start if fewer are)."""
    now = time.time()
    current = params.epoch_at(now)
    if params.end(current) - now < room:
        until(params.end(current) + 0.05)
        current += 1
    return current


def restart(chain: Chain, name: str, sig: int = signal.SIGKILL) -> int:
    """Kill node ``name`` with ``sig``, let the launcher start it again, wait until it answers;
    return its new pid."""
    child = chain.launcher.children[name]
    old = child.proc.pid
    os.kill(old, sig)
    child.proc.wait(10)
    chain.launcher.watch(time.monotonic())  # notices the death
    chain.launcher.watch(time.monotonic() + 60)  # starts it again
    deadline = time.monotonic() + 15
    while metrics.query(chain.state, name, "ping", 0.2) != "pong":
        assert child.proc.poll() is None, f"{name} exited again: status {child.proc.returncode}"
        assert time.monotonic() < deadline, f"{name} did not come back within 15 s"
    assert child.proc.pid != old
    return child.proc.pid


def messages(chain: Chain, count: int, timeout: float = 10.0) -> list[bytes]:
    return [m for _, m in chain.receive(count, timeout)]


@pytest.mark.slow  # up to an epoch of alignment, then to the key's erasure: about 15 s
def test_a_replay_is_dropped_after_a_sigkill_restart_and_refused_once_its_key_is_erased(
        tmp_path: Path) -> None:
    with start_chain(tmp_path, workers=1, loopix=LOOPIX, epoch=SHORT) as chain:
        params = chain.topology.epoch
        epoch = epoch_with_room(params, 4.5)  # recorded, killed, restarted, replayed in it
        recorded = chain.packet(b"recorded")
        chain.send(recorded)
        assert messages(chain, 1) == [b"recorded"]
        key_file = key_directory(chain.state, "mix-a") / f"{epoch}.json"
        assert key_file.exists()

        restart(chain, "mix-a")  # SIGKILL: no shutdown, no final flush of the filters
        replayed_at = time.time()
        chain.send(recorded)
        chain.send(chain.packet(b"fresh after the restart"))  # the positive control
        assert messages(chain, 1) == [b"fresh after the restart"]
        stats = chain.wait_stats("mix-a", lambda s: s["dropped_replay"] == 1, "replay dropped")
        assert stats["dropped_bad_mac"] == 0 and stats["forwarded"] == 1
        # Under the same key: the replay was caught by the filter, not by a missing key.
        assert replayed_at < params.erase_at(epoch)

        until(params.erase_at(epoch) + 0.2)
        chain.wait_stats("mix-a", lambda s: s["sphinx_keys_erased"] >= 1, "the key erased")
        assert not key_file.exists()
        assert epoch not in [int(p.stem) for p in key_file.parent.glob("*.json")]
        before = chain.stats("mix-a")
        chain.send(recorded)
        chain.send(chain.packet(b"fresh after the erasure"))  # the positive control
        assert messages(chain, 1) == [b"fresh after the erasure"]
        after = chain.wait_stats(
            "mix-a", lambda s: s["dropped_bad_mac"] == before["dropped_bad_mac"] + 1,
            "the replay refused as bad_mac")
        assert after["dropped_replay"] == before["dropped_replay"]
        assert after["forwarded"] == before["forwarded"] + 1


@pytest.mark.slow  # two epoch boundaries of 6 s: about 15-20 s
def test_a_node_rotates_its_keys_across_two_epoch_boundaries_while_packets_flow(
        tmp_path: Path) -> None:
    with start_chain(tmp_path, loopix=LOOPIX, epoch=SHORT) as chain:
        params = chain.topology.epoch
        first = {name: chain.wait_stats(name, lambda s: s["document_epoch"] == s["epoch"],
                                        "the current epoch's document") for name in
                 ("mix-a", "mix-b")}
        e0 = int(first["mix-a"]["epoch"])
        for name, stats in first.items():  # a fresh node: this epoch's key and those ahead
            assert stats["sphinx_keys_made"] == params.ahead + 1, name
            assert stats["sphinx_keys_erased"] == 0, name
        end = params.erase_at(e0 + 1) + 0.3  # both boundaries, and the grace after the second
        sent: list[bytes] = []
        got: list[bytes] = []
        seen_epoch = e0
        while time.time() < end:
            now_epoch = params.epoch_at(time.time())
            if now_epoch != seen_epoch:  # as a sender does: the new epoch's document
                seen_epoch = now_epoch
                chain.refresh()
            message = b"packet %d" % len(sent)
            chain.send(chain.packet(message))
            sent.append(message)
            got += messages(chain, 1, timeout=5)
            assert got[-1:] == [message], f"{message!r} did not arrive in epoch {now_epoch}"
            time.sleep(0.2)  # pacing
        assert len(sent) >= 2 * params.length  # packets flowed the whole time
        for name in ("mix-a", "mix-b"):
            stats = chain.wait_stats(
                name, lambda s: s["epoch"] == e0 + 2 and s["document_epoch"] == e0 + 2
                and s["sphinx_keys_erased"] == 2, "two rotations")
            assert stats["sphinx_keys_made"] == params.ahead + 1 + 2, name
            assert stats["sphinx_keys_accepted"] == 2, name  # after the grace: current and next
            assert stats["dropped_bad_mac"] == 0 and stats["dropped_replay"] == 0, name
            held = sorted(int(p.stem) for p in key_directory(chain.state, name).glob("*.json"))
            assert held == list(range(e0 + 2, e0 + 2 + params.ahead + 1)), name


@pytest.mark.slow  # up to half an epoch of alignment and the document's expiry: about 20 s
def test_without_authorities_nodes_forward_until_the_cached_document_expires_and_restart_from_it(
        tmp_path: Path) -> None:
    with start_chain(tmp_path, loopix=LOOPIX, epoch=LONGER) as chain:
        params = chain.topology.epoch
        # Stop the authorities before the next epoch's document is frozen (half an epoch before
        # it starts), so that the nodes hold only this epoch's.
        now = time.time()
        epoch = params.epoch_at(now)
        if now > params.start(epoch) + params.length / 2 - 2.5:
            epoch += 1
            until(params.start(epoch) + 0.05)
        for name in ("mix-a", "mix-b"):
            chain.wait_stats(name, lambda s: s["document_epoch"] == epoch, "this epoch's document")
        chain.authorities.stop()
        assert time.time() < params.start(epoch + 1) - params.length / 2  # E+1 not frozen yet
        cached = chain.state / "nodes" / "mix-a" / "documents" / str(epoch)
        assert cached.is_file()

        log_path = chain.state / "nodes" / "mix-a" / "node.log"
        logged = len(log_path.read_text())
        restart(chain, "mix-a")  # no authority answers: it can start only from its cache
        assert chain.stats("mix-a")["document_epoch"] == epoch
        assert f"network document of epoch {epoch}: 3 nodes" in log_path.read_text()[logged:]
        chain.send(chain.packet(b"after the authorities stopped"))
        assert messages(chain, 1) == [b"after the authorities stopped"]

        until(params.start(epoch + 1) + 0.3)  # the next epoch, its document never came
        assert time.time() < params.erase_at(epoch) - 0.5
        chain.send(chain.packet(b"in the grace"))  # built with the next epoch's keys
        assert messages(chain, 1) == [b"in the grace"]
        for name in ("mix-a", "mix-b"):
            stats = chain.stats(name)
            assert stats["document_epoch"] == epoch and stats["document_valid_seconds"] > 0

        until(params.start(epoch + 1) + params.grace + 0.2)  # valid_until: end + grace
        for name in ("mix-a", "mix-b"):
            stats = chain.wait_stats(name, lambda s: s["document_valid_seconds"] < 0,
                                     "the document expired")
            assert stats["document_epoch"] == epoch
            log_path = chain.state / "nodes" / name / "node.log"
            deadline = time.monotonic() + 20  # said at the node's next look at the schedule
            while "no valid network document" not in log_path.read_text():
                assert time.monotonic() < deadline, f"{name} never logged the expiry"
                time.sleep(0.1)


def test_a_restarted_node_without_authorities_and_without_a_valid_cache_does_not_start(
        tmp_path: Path) -> None:
    """The counterpart of the cache: with nothing cached and no authority up, the node waits
    (it never starts on a network it cannot verify)."""
    with start_chain(tmp_path, loopix=LOOPIX) as chain:
        chain.authorities.stop()
        cache = chain.state / "nodes" / "mix-a" / "documents"
        for path in cache.iterdir():
            path.unlink()
        child = chain.launcher.children["mix-a"]
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait(10)
        chain.launcher.watch(time.monotonic())
        chain.launcher.watch(time.monotonic() + 60)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the bounded window in which a start would show
            assert metrics.query(chain.state, "mix-a", "ping", 0.2) != "pong"
        assert child.proc.poll() is None  # it waits, it does not crash
        # The positive control: the authority back, the same process gets its network.
        auth = chain.topology.authorities[0]
        log = chain.state / "authorities" / auth.name / "authority.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(authority_command(chain.state, auth.name),
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while metrics.query(chain.state, "mix-a", "ping", 0.2) != "pong":
                assert time.monotonic() < deadline, "mix-a never got its network"
        finally:
            proc.terminate()
            proc.wait(10)



def authority_cli(chain: Chain, *args: str) -> str:
    """Run ``zmix-authority --state STATE ARGS`` (allow, evict); return its output."""
    done = subprocess.run([sys.executable, "-m", "zmix.cli.authority", "--state",
                           str(chain.state), *args], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def in_first_part(params: EpochParams, margin: float) -> int:
    """Return the current epoch once the time is at least ``margin`` seconds before the next
    epoch's vote time (half an epoch before it), waiting for the next epoch's start if not:
    an allowlist change made now affects the next epoch's document."""
    now = time.time()
    epoch = params.epoch_at(now)
    if now > params.start(epoch) + params.length / 2 - margin:
        epoch += 1
        until(params.start(epoch) + 0.05)
    return epoch


def dial(chain: Chain, target: str, keys_of: str, message: bytes) -> zmq.Socket[bytes]:
    """Connect to node ``target`` with node ``keys_of``'s CURVE keys and send it a packet for
    ``target`` (-> mix-b) -> provider-1 carrying ``message``; return the socket (the caller
    closes it)."""
    keys = load_private(chain.state, keys_of)
    sock = links.connect_dealer(chain.ctx, chain.topology.node(target).endpoint,
                                chain.network.curve_key(target), keys.curve_public,
                                keys.curve_private,
                                max_frame=wire.node_frame_limit(chain.topology.sphinx))
    names = (target, "provider-1") if target == "mix-b" else (target, "mix-b", "provider-1")
    route = hops_at(chain.network, names, [0.0] * len(names))
    packet = create_forward_packet(chain.topology.sphinx, route, chain.provider.id, message)
    sock.send(wire.encode(wire.Packet(packet), params=chain.topology.sphinx, slots=8))
    return sock


@pytest.mark.slow  # two allowlist changes, each waiting for its epoch: about 30 s
def test_a_mixnode_admitted_carries_traffic_from_the_next_epoch_and_an_evicted_one_none_after(
        tmp_path: Path) -> None:
    with start_chain(tmp_path, loopix=LOOPIX, epoch=SHORT, spare=("mix-a2",)) as chain:
        params = chain.topology.epoch
        authority = chain.authorities.pids()["authority-1"]
        others = chain.launcher.pids()
        log = chain.state / "nodes" / "mix-a2" / "node.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:  # it uploads, is refused (not allowed), and waits
            spare = subprocess.Popen(node_command(chain.state, "mix-a2"), stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            # -------------------------------------------------------------- admitted
            admitted = in_first_part(params, 2.0)
            said = authority_cli(chain, "allow", "mix-a2")
            assert said.startswith("authority-1: allowed mix-a2"), said
            assert not fetch_network(chain.state, chain.topology).is_member("mix-a2")
            assert metrics.query(chain.state, "mix-a2", "ping", 0.2) != "pong"  # not yet
            until(params.start(admitted + 1) + 0.1)
            deadline = time.monotonic() + 10
            while metrics.query(chain.state, "mix-a2", "ping", 0.2) != "pong":
                assert spare.poll() is None, f"mix-a2 exited: status {spare.returncode}"
                assert time.monotonic() < deadline, "mix-a2 did not start in its first epoch"
            chain.refresh()
            assert chain.network.version == admitted + 1
            assert chain.network.is_member("mix-a2")
            sock = dial(chain, "mix-a2", "provider-1", b"through mix-a2")
            got = messages(chain, 1)  # mix-a2 -> mix-b -> provider-1
            assert got == [b"through mix-a2"], {
                name: {k: v for k, v in chain.stats(name).items() if v and "cpu" not in k}
                for name in ("mix-a2", "mix-b")}
            sock.close(linger=0)
            chain.wait_stats("mix-a2", lambda s: s["forwarded"] == 1, "mix-a2's packet counted")

            # -------------------------------------------------------------- evicted
            last = in_first_part(params, 2.0)
            authority_cli(chain, "evict", "mix-a2")
            chain.refresh()
            assert chain.network.is_member("mix-a2")  # the documents already frozen keep it
            until(params.erase_at(last) + 0.5)  # its last document expired
            chain.refresh()
            assert chain.network.version == last + 1
            assert not chain.network.is_member("mix-a2")
            deadline = time.monotonic() + 10
            while "does not list node mix-a2" not in log.read_text():
                assert time.monotonic() < deadline, "mix-a2 never said it was left out"
                time.sleep(0.1)
            # mix-b no longer admits a link with mix-a2's key; mix-a's is (the control).
            before = chain.stats("mix-b")
            refused = dial(chain, "mix-b", "mix-a2", b"from an evicted key")
            chain.wait_stats("mix-b", lambda s: s["auth_denied"] > before["auth_denied"],
                             "mix-a2's handshake refused")
            admitted_sock = dial(chain, "mix-b", "mix-a", b"from a member's key")
            assert messages(chain, 1) == [b"from a member's key"]
            refused.close(linger=0)
            admitted_sock.close(linger=0)
            # No other process was restarted for either change.
            assert chain.launcher.pids() == others
            assert chain.authorities.pids()["authority-1"] == authority
        finally:
            spare.terminate()
            spare.wait(10)
