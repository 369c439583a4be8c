"""The Sphinx worker pool: processes that run ``process_packet`` for the node loop.

The node loop PUSHes packets to the workers and PULLs their results back (zguide's ventilator and
sink). Each worker has its own PUSH socket in the node (``work-INDEX``), so the node knows how many
packets each worker holds: it gives a batch to the least loaded worker, and when a worker dies it
knows how many packets were lost with it. Workers do only crypto and keep no state but the Sphinx
keys, which the node sends them on the job socket (a key set, before any job: docs/sphinx.md,
"Keys per epoch"), so a worker that dies is simply started again and sent the keys again. They
never read a private key from a file. A worker keeps its keys in bytearrays and zeroes them when a
newer set replaces them, and zeroes the received message in place (libzmq's own buffer).

Messages on these local sockets are single binary frames, and each carries a batch: under load the
node loop hands over every packet it read in one go, so the per-message cost of ZeroMQ (a wake-up
of the I/O thread, a poll, a system call) is paid once per batch instead of once per packet. A
quiet node sends batches of one, and waits for nothing. The frames are :mod:`zmix.workframes`;
which worker gets which batch is :class:`zmix.dispatch.Dispatcher`'s call.

The packets never leave the machine on these sockets (ipc in a private temporary directory).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from zmix.errors import DropReason, InvalidPacket
from zmix.sphinx import SphinxParams, process_packet_keys
from zmix.workframes import (
    STATS_INTERVAL,
    WorkerStats,
    decode_jobs,
    decode_keys,
    encode_stats,
    invalid_parts,
    is_keys,
    join_results,
    result_parts,
    results_head,
)

__all__ = ["WorkerPool", "main", "run_worker"]

# ---------------------------------------------------------------------------- the worker process


def run_worker(
    params: SphinxParams, work: str, results: str, index: int, parent: int | None = None,
) -> None:
    """Process jobs from ``work`` with the keys the node sends there, and push results to
    ``results``, until the node process ``parent`` (default: the parent now) goes away.

    The first statistics report goes out at once: it tells the node this worker is up, and
    the node answers with the key set before any job."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    for sock in (pull, push):
        sock.linger = 0
    # A send to a node that died would wait for it forever; time out and look at the parent.
    push.sndtimeo = 1_000
    pull.connect(work)
    push.connect(results)
    pid = os.getpid()
    if parent is None:
        parent = os.getppid()
    keys: list[tuple[int, bytearray]] = []
    processed = 0
    sphinx = 0.0  # CPU seconds in process_packet (sampled per batch: the clock is a system call)
    next_report = 0.0
    try:
        while os.getppid() == parent:
            now = time.monotonic()
            if now >= next_report:
                stats = WorkerStats(index, time.process_time(), processed, pid, sphinx)
                _send(push, join_results(index, pid, [encode_stats(stats)]), parent)
                next_report = now + STATS_INTERVAL
            if not pull.poll(200):
                continue
            for _ in range(256):
                try:
                    frame = pull.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if is_keys(frame.buffer):
                    keys = _replace_keys(keys, frame.buffer)
                    continue
                jobs = decode_jobs(frame.buffer, params.packet_length)
                started = time.thread_time()
                parts = [results_head(index, pid)]
                for arrival, packet in jobs:
                    parts += _process(params, keys, arrival, packet)
                sphinx += time.thread_time() - started
                _send(push, b"".join(parts), parent)
                processed += len(jobs)
    finally:
        _zero(keys)
        pull.close()
        push.close()
        ctx.term()


def _replace_keys(old: list[tuple[int, bytearray]],
                  message: memoryview) -> list[tuple[int, bytearray]]:
    """Return the key set in ``message``; zero the keys it replaces and the message itself
    (libzmq's buffer, written in place)."""
    try:
        keys = decode_keys(message)
    finally:
        message[:] = bytes(len(message))
    _zero(old)
    return keys


def _zero(keys: list[tuple[int, bytearray]]) -> None:
    for _, key in keys:
        key[:] = bytes(len(key))


def _send(push: zmq.Socket[bytes], message: bytes, parent: int) -> None:
    """Send ``message`` to the node, waiting as long as the node process lives."""
    while True:
        try:
            push.send(message)
            return
        except zmq.Again:
            if os.getppid() != parent:
                return  # the node is gone; the worker's loop ends next


def _process(params: SphinxParams, keys: list[tuple[int, bytearray]], arrival: float,
             packet: bytes) -> list[bytes]:
    """Return the result of one job as the parts of a result message (length and frame)."""
    if not keys:  # never: the node sends the key set before any job (docs/architecture.md)
        return invalid_parts(arrival, DropReason.WORKER_LOST)
    try:
        return result_parts(arrival, *process_packet_keys(params, keys, packet))
    except InvalidPacket as exc:
        return invalid_parts(arrival, exc.reason)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m zmix.runtime.workers`` (started by the node, not by users)."""
    from zmix.topology_yaml import load_topology

    parser = argparse.ArgumentParser(prog="zmix-worker")
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--work", required=True, help="this worker's job socket")
    parser.add_argument("--results", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--parent", type=int, default=None,
                        help="the node's pid: the worker exits when its parent is another")
    args = parser.parse_args(argv)
    from zmix.runtime.proctitle import set_title
    set_title("zmix-worker", f"{args.name}/{args.index}")
    # Ctrl-C in a terminal reaches the whole process group; the node decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The node stops its workers with SIGTERM: leave through run_worker's cleanup (keys zeroed).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    topology = load_topology(args.state / "topology.yaml")  # the packet geometry, no key
    run_worker(topology.sphinx, args.work, args.results, args.index, args.parent)
    return 0


class WorkerPool:
    """Starts ``count`` worker processes for node ``name`` and replaces any that die.

    ``work`` is the address of the job sockets with ``{}`` for the worker's index.
    """

    def __init__(self, state_dir: Path, name: str, count: int, work: str, results: str) -> None:
        self._argv = [sys.executable, "-m", "zmix.runtime.workers", "--state", str(state_dir),
                      "--name", name, "--results", results]
        self._work = work
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.restarts = 0
        self.stats: dict[int, WorkerStats] = {}
        self._history: dict[int, WorkerStats] = {}

    def start(self) -> None:
        """Start every worker that is not running."""
        for index, proc in enumerate(self._procs):
            if proc is None:
                self._procs[index] = self._spawn(index)

    def check(self) -> list[int]:
        """Replace workers that exited; return the indexes of those replaced."""
        replaced = []
        for index, proc in enumerate(self._procs):
            if proc is not None and proc.poll() is not None:
                self._procs[index] = self._spawn(index)
                replaced.append(index)
        self.restarts += len(replaced)
        return replaced

    def pid(self, index: int) -> int | None:
        """Return the process id of the worker at ``index`` now, or None."""
        proc = self._procs[index]
        return None if proc is None else proc.pid

    def pids(self) -> list[int]:
        """Return the process ids of the running workers."""
        return [proc.pid for proc in self._procs if proc is not None]

    def _reports(self) -> list[WorkerStats]:
        """Return the last report of every worker, dead ones included."""
        return [*self._history.values(), *self.stats.values()]

    def cpu_seconds(self) -> float:
        """Return the CPU time the workers last reported, summed (dead workers included)."""
        return sum(s.cpu_seconds for s in self._reports())

    def sphinx_seconds(self) -> float:
        """Return the CPU time the workers last reported spending in ``process_packet``."""
        return sum(s.sphinx_seconds for s in self._reports())

    def processed(self) -> int:
        """Return how many packets the workers report having processed."""
        return sum(s.processed for s in self._reports())

    def record(self, stats: WorkerStats) -> None:
        """Keep a worker's latest report; a new pid at an index means the old worker died."""
        old = self.stats.get(stats.index)
        if old is not None and old.pid != stats.pid:
            self._history[old.pid] = old
        self.stats[stats.index] = stats

    def stop(self, timeout: float = 2.0) -> None:
        """Terminate every worker and wait for it (killing it after ``timeout`` seconds)."""
        procs = [p for p in self._procs if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = [None] * len(self._procs)

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        # The node's pid goes along: a worker started just before the node dies would otherwise
        # take its new parent (init) for the node and run on, orphaned.
        return subprocess.Popen([*self._argv, "--work", self._work.format(index),
                                 "--index", str(index), "--parent", str(os.getpid())],
                                stdin=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
