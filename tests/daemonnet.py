"""A local network and client daemons as real processes, for the daemon and tunnel tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chain import stop_process
from test_launch import start_up

from zmix.api.protocol import FrameReader, decode_object, encode
from zmix.bench.common import make_network

CLIENTS = {"alice": "provider-1", "bob": "provider-2", "carol": "provider-1",
           "exit": "provider-2"}
FAST = {"payload_rate": 50.0, "mean_delay": 0.002, "fetch_interval": 0.05}


@dataclass
class LocalNet:
    """A running zmix-up of a test topology."""

    topology: Path
    state: Path
    up: subprocess.Popen[str]

    def cli(self, module: str, *args: str, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``python -m zmix.cli.MODULE --state STATE ARGS``."""
        return subprocess.run([sys.executable, "-m", f"zmix.cli.{module}", "--state",
                               str(self.state), *args], capture_output=True, text=True,
                              timeout=timeout, input=stdin, check=False)


@contextmanager
def local_net(tmp: Path, loopix: dict[str, float] | None = None) -> Iterator[LocalNet]:
    """Make and run a network of CLIENTS in ``tmp``; stop it at the end."""
    make_network(tmp, clients=CLIENTS, loopix=loopix or FAST)
    up = start_up(tmp / "topology.yaml", tmp / "state")
    try:
        yield LocalNet(tmp / "topology.yaml", tmp / "state", up)
    finally:
        stop_process(up)


@dataclass
class DaemonProcess:
    """A zmix-client (or zmix-socks, zmix-exit) process and the line it printed when ready."""

    process: subprocess.Popen[str]
    ready: str
    log: list[str] = field(default_factory=list)

    def field(self, key: str) -> str:
        """Return KEY's value in the ready line (``api=...``, ``socks=...``)."""
        for word in self.ready.split():
            if word.startswith(key + "="):
                return word.split("=", 1)[1]
        raise AssertionError(f"no {key}= in {self.ready!r}")

    def stop(self) -> int:
        """SIGTERM it; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        self.process.kill()
        self.process.wait(10)


def start_daemon(net: LocalNet, name: str, *args: str, command: str = "client",
                 timeout: float = 60) -> DaemonProcess:
    """Start ``zmix-COMMAND --state STATE --as NAME ARGS``; return once it printed its ready
    line (fail loudly, with its output, otherwise)."""
    process = subprocess.Popen(
        [sys.executable, "-m", f"zmix.cli.{command}", "--state", str(net.state), "--as", name,
         *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("ready ") and not found:
                found.append(line.strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(10)
            raise AssertionError(f"zmix-{command} {name} did not get ready:\n" + "".join(lines))
        time.sleep(0.05)
    return DaemonProcess(process, found[0], lines)


class Raw:
    """A caller of the API that speaks docs/api.md's frames by hand (and can misbehave)."""

    def __init__(self, path: Path | str | tuple[str, int], timeout: float = 20) -> None:
        if isinstance(path, tuple):
            self.sock = socket.create_connection(path, timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))
        self.reader = FrameReader()
        self.events: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frame(self) -> dict[str, Any] | None:
        """Return the next frame, None if the daemon closed the connection."""
        while not self._pending:
            data = self.sock.recv(1 << 16)
            if not data:
                return None
            self._pending.extend(decode_object(body) for body in self.reader.feed(data))
        return self._pending.pop(0)

    def answer(self) -> dict[str, Any]:
        """Return the next answer; events met on the way are kept in ``events``."""
        while True:
            obj = self.frame()
            assert obj is not None, "the daemon closed the connection"
            if "event" in obj:
                self.events.append(obj)
            else:
                return obj

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return its answer."""
        self.sock.sendall(encode({"op": op, "id": op, **fields}))
        return self.answer()

    def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request; return its answer, which must say ok."""
        answer = self.call(op, **fields)
        assert answer["ok"] is True, answer
        return answer

    def event(self, kind: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        """Return the next event of ``kind`` whose fields include ``match``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, obj in enumerate(self.events):
                if obj["event"] == kind and all(obj.get(k) == v for k, v in match.items()):
                    return self.events.pop(i)
            assert time.monotonic() < deadline, f"no {kind} event {match} in {timeout} s"
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                obj = self.frame()
            except TimeoutError:
                continue
            assert obj is not None, "the daemon closed the connection"
            if "event" in obj:
                self.events.append(obj)
