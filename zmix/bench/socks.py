"""``zmix-bench socks``: a download through zmix-socks and zmix-exit, against its bound.

Runs a whole local network (3 layers of 2 mixnodes, 2 providers, an authority), an exit
(``zmix-exit`` as client ``exit`` on provider-2, allowed to reach one HTTP server on 127.0.0.1)
and a proxy (``zmix-socks`` as client ``alice`` on provider-1), then fetches a body with
``curl --socks5-hostname`` a few times and reports, from that one run:

- time to first byte (curl's ``time_starttransfer``: the SOCKS handshake, the OPEN crossing the
  mixnet, the exit's connection, the request, and the first data back through a reply block);
- throughput of the body (bytes per second from the request to the last byte);
- the bound the payload rate sets: the exit answers only through reply blocks, one packet per
  payload-stream event (Loopix lambda_P, the real-or-drop rate every client keeps), each carrying
  at most ``reply limit - tunnel header - DATA overhead`` bytes; throughput / bound is the share
  of the exit's payload stream that carried the body.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from zmix.bench.common import free_ports, make_network, network_launcher
from zmix.fragment import HEADER_BYTES as FRAGMENT_HEADER
from zmix.tunnel.frames import DATA_OVERHEAD
from zmix.tunnel.frames import HEADER_BYTES as TUNNEL_HEADER


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``zmix-bench socks``."""
    parser = argparse.ArgumentParser(prog="zmix-bench socks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-kib", type=int, default=1024, help="body size (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="downloads (default 3)")
    parser.add_argument("--payload-rate", type=float, default=20.0,
                        help="lambda_P of every client, packets/s (default 20, as local.yaml)")
    parser.add_argument("--mean-delay", type=float, default=0.02,
                        help="per-hop mean delay, seconds (default 0.02, as local.yaml)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


class _Body(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the bench prints figures, not an access log."""


def _start(command: str, state: Path, name: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start a daemon command; return it and its ready line (RuntimeError if none came)."""
    process = subprocess.Popen([sys.executable, "-m", f"zmix.cli.{command}", "--state",
                                str(state), "--as", name, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # the ready line, or nothing if it exited
    if not line.startswith("ready "):
        process.kill()
        process.wait(10)
        raise RuntimeError(f"zmix-{command} {name} did not start (status {process.poll()})")
    return process, line.strip()


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _download(socks: str, url: str, out: Path) -> dict[str, float]:
    done = subprocess.run(["curl", "--silent", "--show-error", "--fail", "--max-time", "600",
                           "--socks5-hostname", socks, "-o", str(out), "-w",
                           "%{time_pretransfer} %{time_starttransfer} %{time_total} "
                           "%{size_download}", url],
                          capture_output=True, text=True, timeout=620, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"curl failed: {done.stderr.strip()}")
    pretransfer, first, total, size = (float(x) for x in done.stdout.split())
    return {"ttfb": first, "seconds": total - pretransfer, "bytes": size}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the network, the tunnel and the downloads; return the figures."""
    if shutil.which("curl") is None:
        raise RuntimeError("zmix-bench socks downloads with curl: install it (apt-get install "
                           "curl)")
    body = os.urandom(args.size_kib * 1024)
    _Body.body = body
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Body)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    http_port = server.server_address[1]
    with tempfile.TemporaryDirectory(prefix="zmix-bench-socks-") as tmp:
        topology, state = make_network(
            Path(tmp), clients={"alice": "provider-1", "exit": "provider-2"},
            network="zmix-bench", loopix={"mean_delay": args.mean_delay,
                                          "payload_rate": args.payload_rate,
                                          "fetch_interval": 0.05})
        launcher = network_launcher(state, topology, verbosity=0)
        started: list[subprocess.Popen[str]] = []
        try:  # (started inside: stop() also stops a start cut short by a failure or a signal)
            launcher.start()
            process, _ = _start("exit", state, "exit", "--allow", f"127.0.0.1:{http_port}")
            started.append(process)
            [socks_port] = free_ports(1)
            process, _ = _start("socks", state, "alice", "--exit", "exit", "--listen",
                                f"127.0.0.1:{socks_port}")
            started.append(process)
            runs = []
            for i in range(args.runs):
                out = Path(tmp) / f"body-{i}"
                runs.append(_download(f"127.0.0.1:{socks_port}",
                                      f"http://127.0.0.1:{http_port}/", out))
                if hashlib.sha256(out.read_bytes()).digest() != hashlib.sha256(body).digest():
                    raise RuntimeError("a download arrived damaged")
        finally:
            for process in reversed(started):
                _stop(process)
            launcher.stop()
            server.shutdown()
            server.server_close()
    per_packet = (topology.sphinx.max_reply_length - FRAGMENT_HEADER - TUNNEL_HEADER
                  - DATA_OVERHEAD)
    bound = args.payload_rate * per_packet
    throughput = [r["bytes"] / r["seconds"] for r in runs]
    return {"size_bytes": len(body), "runs": len(runs), "payload_rate": args.payload_rate,
            "mean_delay": args.mean_delay, "bytes_per_reply_packet": per_packet,
            "bound_bytes_per_second": bound,
            "ttfb_median": statistics.median(r["ttfb"] for r in runs),
            "throughput_median": statistics.median(throughput),
            "throughput_to_bound": statistics.median(throughput) / bound,
            "downloads": runs}


def main(argv: list[str]) -> int:
    """Run ``zmix-bench socks``; print the figures; return 0."""
    args = build_parser().parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    kib = 1024.0
    print(f"zmix-bench socks: {result['size_bytes'] // 1024} KiB through zmix-socks -> mixnet "
          f"(5 hops, mean delay {args.mean_delay * 1000:.0f} ms) -> zmix-exit, "
          f"lambda_P {args.payload_rate:g}/s, {result['runs']} downloads")
    print(f"  time to first byte             {result['ttfb_median'] * 1000:8.0f} ms median")
    print(f"  throughput                     {result['throughput_median'] / kib:8.1f} KiB/s "
          "median")
    print(f"  bound (lambda_P x {result['bytes_per_reply_packet']} B/packet)  "
          f"{result['bound_bytes_per_second'] / kib:8.1f} KiB/s")
    print(f"  throughput / bound             {result['throughput_to_bound']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
