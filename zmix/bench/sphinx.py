"""``zmix-bench sphinx``: the Sphinx core against the crypto floor, measured in one process.

The floor is what no implementation of a profile can avoid at a hop: its X25519 scalar
multiplications (v1: two, the shared secret and the blinding of alpha; kem1: one, the
decapsulation) and one LIONESS decryption of the payload. Every wire profile is measured, each
per-hop time as a ratio to its floor and to v1's, interleaved in rounds so that a noisy neighbour
slows all alike.

With --peers, one hop of other Python Sphinx libraries (sphinxmixcrypto 0.0.4, sphinxmix 0.0.7)
is timed in the same rounds at the same payload, each in its own interpreter (the current one, or
the one given with --peer-python NAME=PATH), and shown as a ratio to every zmix profile. A library
not installed there is reported with how to install it; it does not fail the bench.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from zmix import crypto
from zmix.bench.peers import (
    PEER_KEYS,
    PEERS,
    PeerProcess,
    PeerResult,
    PeerState,
    parse_peer_python,
    peer_json,
    peer_lines,
)
from zmix.sphinx import (
    WIRE_PROFILES,
    Hop,
    Profile,
    SphinxParams,
    create_forward_packet,
    create_surb,
    lioness,
    process_packet,
)

ROUNDS = 7
# X25519 scalar multiplications a hop of each profile cannot avoid (docs/sphinx.md, "Cost").
# A profile not listed here is measured and compared all the same, without a floor.
FLOOR_X25519 = {"v1": 2, "kem1": 1}
BASE = "v1"  # the profile every other figure is compared with


def _peer_python(text: str) -> tuple[str, str]:
    """Parse ``--peer-python NAME=PATH``: a known peer and an interpreter that can be run."""
    try:
        key, path = parse_peer_python(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise argparse.ArgumentTypeError(f"{path}: not an executable file")
    return key, path


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``zmix-bench sphinx``."""
    parser = argparse.ArgumentParser(prog="zmix-bench sphinx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=400, help="hops per round")
    parser.add_argument("--payload", type=int, default=2048, help="Sphinx payload bytes")
    parser.add_argument("--hops", type=int, default=5, help="route length")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--peers", action="store_true",
                        help="also time one hop of sphinxmixcrypto and sphinxmix")
    parser.add_argument("--peer-python", type=_peer_python, action="append", default=[],
                        metavar="NAME=PATH",
                        help=f"run peer NAME ({', '.join(PEER_KEYS)}) with this interpreter, "
                             "e.g. a virtual environment's bin/python (implies --peers; "
                             "default: the interpreter running the bench)")
    return parser


def _per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


@dataclass(frozen=True, slots=True)
class _Subject:
    """One wire profile set up for measuring: its geometry, a route and a packet for hop one."""

    params: SphinxParams
    route: list[Hop]
    packet: bytes
    private: bytes


def _subject(profile: Profile, payload: int, hops: int) -> _Subject:
    params = SphinxParams(max_hops=max(5, hops), payload_length=payload, profile=profile)
    keys = [crypto.x25519_keypair() for _ in range(hops)]
    route = [Hop(bytes([i + 1]) * 16, pk, 1000) for i, (pk, _) in enumerate(keys)]
    packet = create_forward_packet(params, route, b"\xaa" * 16, b"bench")
    return _Subject(params, route, packet, keys[0][1])


def _floor(subject: _Subject, scalar_mults: int) -> Callable[[], None]:
    """Return the floor of one hop: its X25519 and one LIONESS decryption of the payload."""
    point = subject.route[0].public_key
    key = crypto.random_bytes(lioness.KEY_BYTES)
    block = subject.packet[subject.params.header_length:]

    def floor() -> None:
        for _ in range(scalar_mults):
            crypto.x25519(subject.private, point)
        lioness.decrypt(key, block)
    return floor


def _measure_profile(name: str, s: _Subject, out: dict[str, list[float]], iterations: int
                     ) -> None:
    """Time one round of one profile: hops, its floor, creation of packets and SURBs."""
    slow = max(1, iterations // 10)
    out["process"].append(_per_call(lambda: process_packet(s.params, s.private, s.packet),
                                    iterations))
    if name in FLOOR_X25519:
        out["floor"].append(_per_call(_floor(s, FLOOR_X25519[name]), iterations))
    out["create"].append(_per_call(
        lambda: create_forward_packet(s.params, s.route, b"\xaa" * 16, b"bench"), slow))
    out["surb"].append(_per_call(
        lambda: create_surb(s.params, s.route, b"\xaa" * 16, b"\xbb" * 16), slow))


def _paired_median(top: Sequence[float], bottom: Sequence[float]) -> float:
    return statistics.median(a / b for a, b in zip(top, bottom, strict=True))


def _profile_figures(name: str, s: _Subject, samples: dict[str, dict[str, list[float]]]
                     ) -> dict[str, Any]:
    own = samples[name]
    figures: dict[str, Any] = {
        "packet_bytes": s.params.packet_length,
        "per_hop_seconds": statistics.median(own["process"]),
        "ratio_to_v1": _paired_median(own["process"], samples[BASE]["process"]),
        "create_seconds": statistics.median(own["create"]),
        "surb_seconds": statistics.median(own["surb"])}
    if own["floor"]:
        figures["floor_x25519"] = FLOOR_X25519[name]
        figures["floor_seconds"] = statistics.median(own["floor"])
        figures["ratio_to_floor"] = _paired_median(own["process"], own["floor"])
    return figures


def run(iterations: int, payload: int, hops: int,
        peers: Sequence[PeerProcess] = ()) -> dict[str, Any]:
    """Measure and return the figures (seconds per operation, medians over rounds).

    ``peers`` have been started (:meth:`PeerProcess.start`); each is timed once a round after
    zmix's profiles. The result's ``profiles`` maps each wire profile to its figures; the v1
    figures also stand at the top level, as before there were profiles. ``peer_results`` holds the
    peers' outcomes (for :func:`zmix.bench.peers.peer_lines`) and ``zmix_samples`` each profile's
    per-round seconds per hop that the peers' ratios pair with.
    """
    subjects = {p.value: _subject(p, payload, hops) for p in WIRE_PROFILES}
    samples: dict[str, dict[str, list[float]]] = {
        name: {"process": [], "floor": [], "create": [], "surb": []} for name in subjects}
    for peer in peers:
        peer.wait_ready()
    for _ in range(ROUNDS):
        for name, subject in subjects.items():
            _measure_profile(name, subject, samples[name], iterations)
        for peer in peers:
            peer.measure(iterations)
    profiles = {name: _profile_figures(name, s, samples) for name, s in subjects.items()}
    v1 = profiles[BASE]
    return {"payload_bytes": payload, "packet_bytes": v1["packet_bytes"], "hops": hops,
            "per_hop_seconds": v1["per_hop_seconds"], "floor_seconds": v1["floor_seconds"],
            "ratio": v1["ratio_to_floor"], "create_seconds": v1["create_seconds"],
            "surb_seconds": v1["surb_seconds"], "rounds": ROUNDS, "iterations": iterations,
            "profiles": profiles, "peer_results": [peer.result() for peer in peers],
            "zmix_samples": {name: list(s["process"]) for name, s in samples.items()}}


def profile_lines(result: dict[str, Any]) -> list[str]:
    """Return the table of zmix's profiles: per hop, floor, ratios, creation."""
    us = 1e6
    lines = [f"  {'profile':<8} {'packet B':>8} {'per hop us':>10} {'floor us':>9} "
             f"{'hop/floor':>9} {'x v1':>6} {'create us':>10} {'SURB us':>9}"]
    for name, f in result["profiles"].items():
        floor = (f"{f['floor_seconds'] * us:9.1f} {f['ratio_to_floor']:9.3f}"
                 if "floor_seconds" in f else f"{'-':>9} {'-':>9}")
        lines.append(f"  {name:<8} {f['packet_bytes']:8d} {f['per_hop_seconds'] * us:10.1f} "
                     f"{floor} {f['ratio_to_v1']:6.3f} {f['create_seconds'] * us:10.1f} "
                     f"{f['surb_seconds'] * us:9.1f}")
    counts = ", ".join(f"{n} {FLOOR_X25519[n]}" for n in result["profiles"] if n in FLOOR_X25519)
    lines.append(f"  floor: the X25519 a hop must do ({counts}) and one LIONESS decryption; "
                 "hop/floor target <= 1.25")
    return lines


def json_figures(result: dict[str, Any]) -> dict[str, Any]:
    """Return the figures as ``--json`` prints them (peers by their --peer-python name)."""
    out = {k: v for k, v in result.items() if k not in ("peer_results", "zmix_samples")}
    peer_results: list[PeerResult] = result["peer_results"]
    if peer_results:
        out["peers"] = {r.peer.key: peer_json(r, result["zmix_samples"]) for r in peer_results}
    return out


def _start_peers(args: argparse.Namespace) -> list[PeerProcess]:
    chosen = dict(args.peer_python)
    if not (args.peers or chosen):
        return []
    procs = [PeerProcess(peer, chosen.get(peer.key, sys.executable)) for peer in PEERS]
    for proc in procs:
        proc.start(args.payload, args.hops)
    return procs


def main(argv: list[str]) -> int:
    """Run ``zmix-bench sphinx``; print the figures; return 0 (1 when an installed peer failed)."""
    args = build_parser().parse_args(argv)
    peers = _start_peers(args)
    try:
        result = run(args.iterations, args.payload, args.hops, peers)
    finally:
        for peer in peers:
            peer.close()
    failed = any(r.state is PeerState.FAILED for r in result["peer_results"])
    if args.json:
        print(json.dumps(json_figures(result), indent=2))
        return 1 if failed else 0
    print(f"zmix-bench sphinx: {result['payload_bytes']}-byte payload, {args.hops}-hop routes, "
          f"medians of {ROUNDS} rounds of {args.iterations} hops")
    for line in profile_lines(result):
        print(line)
    if peers:
        print("peers: one hop each at the same payload, in its own interpreter, in the same "
              "rounds; ratios to each zmix profile")
        for line in peer_lines(result["peer_results"], result["zmix_samples"]):
            print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
