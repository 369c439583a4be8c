"""The global passive adversary (zmix.sim.adversary): closed forms on tiny streams, a direct
slow computation on random streams, the receiver side, corrupted nodes and bad streams.

Helpers at the top: a tiny event simulation that writes random record streams of a small Loopix
network (clients send payloads, drops, loops and replies through their provider and one mixnode
per layer; providers send acks and mixnodes mix loops; every node holds a packet for an
exponential delay; the last provider stores what it keeps until a fetch or an expiry and discards
drops at once; a mix loop ends when it comes home), and a slow adversary that computes every
transmission's distribution from scratch: for a departure from an honest pool it replays that
pool's whole history to get each past arrival's probability of still being inside (each removal
keeps any one packet with probability 1 - 1/n). It shares no code and no bookkeeping with the
streaming analysis's running means.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zmix.errors import LocalMisuse
from zmix.sim.adversary import Adversary, PrivacyReport, Summary, analyse, corrupt_sample
from zmix.sim.taps import (
    Ending,
    Origin,
    Record,
    RecordError,
    Transmission,
    read_records,
    write_records,
)


@dataclass(frozen=True)
class Net:
    """Members of a small stratified network."""

    clients: tuple[str, ...]
    home: dict[str, str]  # client -> its provider
    providers: tuple[str, ...]
    layers: tuple[tuple[str, ...], ...]

    @property
    def mixnodes(self) -> tuple[str, ...]:
        return tuple(n for layer in self.layers for n in layer)

    @property
    def nodes(self) -> tuple[str, ...]:
        return (*self.providers, *self.mixnodes)


def small_net(clients: int = 5, providers: int = 2, layers: int = 2, width: int = 2) -> Net:
    provs = tuple(f"p{i}" for i in range(providers))
    names = tuple(f"c{i}" for i in range(clients))
    home = {c: provs[i % providers] for i, c in enumerate(names)}
    grid = tuple(tuple(f"m{j}{w}" for w in range(width)) for j in range(layers))
    return Net(names, home, provs, grid)


def random_stream(net: Net, rng: random.Random, chains: int, horizon: float = 10.0,
                  fetch_mean: float = 1.0) -> list[Record]:
    """A time-ordered stream of ``chains`` packets' lives (every one ends inside the stream)."""
    heap: list[tuple[float, int, tuple[object, ...]]] = []
    seq = itertools.count()
    for _ in range(chains):
        heapq.heappush(heap, (rng.uniform(0, horizon), next(seq), ("start",)))
    out: list[Record] = []
    xids = itertools.count()

    def arrive(t: float, route: list[str], i: int, xid: int, final: str, who: str) -> None:
        if i == len(route) - 1:
            if final == "end":
                out.append(Ending(t, route[i], xid))
            else:
                heapq.heappush(heap, (t + rng.expovariate(1 / fetch_mean), next(seq),
                                      ("fetch", route[i], xid, who)))
            return
        heapq.heappush(heap, (t + rng.expovariate(1.0), next(seq),
                              ("depart", route, i, xid, final, who)))

    while heap:
        t, _, ev = heapq.heappop(heap)
        if ev[0] == "start":
            kind, maker, route, final, who = _chain(net, rng)
            if maker in net.home:
                x = next(xids)
                out.append(Origin(x, kind, maker, who if kind != "drop" else "", ""))
                out.append(Transmission(t, maker, route[0], x, -1))
                arrive(t, route, 0, x, final, who)
            else:  # a node made it: it holds it for a delay first
                heapq.heappush(heap, (t + rng.expovariate(1.0), next(seq),
                                      ("depart", route, 0, -1, final, who, kind)))
        elif ev[0] == "depart":
            route, i, parent, final, who = ev[1:6]
            x = next(xids)
            if parent == -1:
                out.append(Origin(x, ev[6], route[0], who, ""))
            out.append(Transmission(t, route[i], route[i + 1], x, parent))
            arrive(t, route, i + 1, x, final, who)
        else:
            node, parent, who = ev[1:4]
            if rng.random() < 0.15:
                out.append(Ending(t, node, parent))
            else:
                out.append(Transmission(t, node, who, next(xids), parent))
    return out


def _chain(net: Net, rng: random.Random) -> tuple[str, str, list[str], str, str]:
    """(kind, maker, route, "fetch" or "end", recipient) of one random packet."""
    mixes = [rng.choice(layer) for layer in net.layers]
    roll = rng.random()
    if roll < 0.15:  # a mixnode's mix loop: the layers after its own, a provider, the rest
        i = rng.randrange(len(net.layers))
        me = mixes[i]
        route = [me, *mixes[i + 1:], rng.choice(net.providers), *mixes[:i], me]
        return "mix_loop", me, route, "end", ""
    if roll < 0.25:  # a provider's ack, through a SURB to a client's provider
        who = rng.choice(net.clients)
        return "ack", rng.choice(net.providers), [rng.choice(net.providers), *mixes,
                                                  net.home[who]], "fetch", who
    sender = rng.choice(net.clients)
    kind = rng.choice(["payload", "payload", "payload", "drop", "loop", "reply"])
    if kind == "drop":
        return kind, sender, [net.home[sender], *mixes, rng.choice(net.providers)], "end", ""
    who = sender if kind == "loop" else rng.choice([c for c in net.clients if c != sender])
    return kind, sender, [net.home[sender], *mixes, net.home[who]], "fetch", who


# ---------------------------------------------------------------------------- slow adversary

Dist = dict[tuple[str, object], float]  # ("m", member) -> sender mass; ("t", xid) -> target mass


@dataclass
class _Box:
    """One pool's history: arrivals (xid) and anonymous removals (None), in order."""

    history: list[int | None] = field(default_factory=list)
    exact: set[int] = field(default_factory=set)  # arrivals taken out exactly

    def weights(self) -> dict[int, float]:
        """Each arrival still counted -> the probability that it is the next to leave."""
        inside: dict[int, float] = {}  # arrival -> probability it is still inside
        n = 0
        for event in self.history:
            if event is None:  # any one of the n inside left, each alike
                for a in inside:
                    inside[a] *= 1 - 1 / n
                n -= 1
            elif event not in self.exact:
                inside[event] = 1.0
                n += 1
        return {a: p / n for a, p in inside.items()}


class SlowAdversary:
    """The same model as zmix.sim.adversary.Adversary, computed directly."""

    def __init__(self, net: Net, corrupted: frozenset[str] = frozenset()) -> None:
        self.net = net
        self.clients = set(net.clients)
        self.providers = set(net.providers)
        self.corrupted = corrupted
        self.dist: dict[int, Dist] = {}
        self.at: dict[int, tuple[str, str]] = {}  # xid -> (node, place)
        self.arrived_t: dict[int, float] = {}
        self.maker: dict[int, str] = {}
        self.first: dict[int, int] = {}
        self.target: set[int] = set()
        self.boxes: dict[tuple[str, str], _Box] = defaultdict(_Box)
        self.anon_removals: dict[tuple[str, str], int] = defaultdict(int)
        self.removals_at_arrival: dict[int, int] = {}
        self.sender: list[tuple[int, float, float]] = []
        self.fetched: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.lost: dict[int, float] = defaultdict(float)
        self.targets: list[int] = []
        self.virtual = itertools.count(-2, -1)

    def feed(self, records: list[Record]) -> None:
        pending: Origin | None = None
        for r in records:
            if isinstance(r, Origin):
                pending = r
            elif isinstance(r, Transmission):
                self.transmission(r, pending)
                pending = None
            else:
                self.ending(r)

    def _mean(self, key: tuple[str, str]) -> Dist:
        out: Dist = defaultdict(float)
        for a, w in self.boxes[key].weights().items():
            for k, v in self.dist[a].items():
                out[k] += w * v
        return out

    def _leave(self, node: str, parent: int, t: float, discard: bool = False) -> Dist:
        place = self.at.pop(parent)[1]
        key = (node, place)
        if place == "held" or place == "sink":
            return self.dist[parent]
        if discard and place == "store" and self.arrived_t[parent] == t and \
                self.removals_at_arrival[parent] == self.anon_removals[key]:
            self.boxes[key].exact.add(parent)
            return self.dist[parent]
        out = self._mean(key)
        self.boxes[key].history.append(None)
        if place == "store":
            self.anon_removals[key] += 1
        return out

    def transmission(self, r: Transmission, origin: Origin | None) -> None:
        if r.parent == -1:
            maker, first = r.src, r.xid
            d: Dist = {("m", r.src): 1.0}
            if r.src in self.clients and (origin is None or origin.kind == "payload"):
                self.target.add(r.xid)
                self.targets.append(r.xid)
                d[("t", r.xid)] = 1.0
            elif r.src not in self.clients and r.src not in self.corrupted:
                v = next(self.virtual)  # the node's own packet joins its pool, then leaves
                self.dist[v] = d
                self.boxes[(r.src, "pool")].history.append(v)
                d = self._mean((r.src, "pool"))
                self.boxes[(r.src, "pool")].history.append(None)
        else:
            maker, first = self.maker.pop(r.parent), self.first.pop(r.parent)
            d = self._leave(r.src, r.parent, r.t)
            if r.parent in self.target:
                self.target.discard(r.parent)
                self.target.add(r.xid)
        if r.xid in self.target and r.src not in self.providers and \
                r.src not in self.clients and r.dst in self.providers:
            self.target.discard(r.xid)
            self.sender.append((first, *_sender_entropy(d, self.clients)))
        if r.dst in self.clients:
            for k, v in d.items():
                if k[0] == "t":
                    self.fetched[k[1]][r.dst] += v
            self.target.discard(r.xid)
            return
        if r.dst in self.corrupted:
            place = "held"
        elif r.dst in self.providers and r.src not in self.clients and \
                r.src not in self.providers and (maker in self.clients or maker in self.providers):
            place = "store"
        elif maker == r.dst and r.dst not in self.providers:
            place = "sink"
        else:
            place = "pool"
        self.dist[r.xid] = d
        self.at[r.xid] = (r.dst, place)
        self.arrived_t[r.xid] = r.t
        self.maker[r.xid], self.first[r.xid] = maker, first
        if place in ("pool", "store"):
            self.boxes[(r.dst, place)].history.append(r.xid)
            self.removals_at_arrival[r.xid] = self.anon_removals[(r.dst, place)]

    def ending(self, r: Ending) -> None:
        d = self._leave(r.node, r.xid, r.t, discard=True)
        self.target.discard(r.xid)
        for k, v in d.items():
            if k[0] == "t":
                self.lost[k[1]] += v

    def receiver(self) -> dict[int, tuple[float, float]]:
        """target -> (entropy over the fetched mass, lost mass)."""
        out = {}
        for x in self.targets:
            got = self.fetched[x]
            total = sum(got.values())
            bits = 0.0 if total <= 0 else -sum(
                v / total * math.log2(v / total) for v in got.values() if v > 0)
            out[x] = (max(0.0, bits), self.lost[x])
        return out


def _sender_entropy(d: Dist, clients: set[str]) -> tuple[float, float]:
    mass = {k[1]: v for k, v in d.items() if k[0] == "m" and v > 0}
    client_total = sum(v for m, v in mass.items() if m in clients)
    total = sum(mass.values())
    if client_total <= 0:
        return 0.0, 1.0
    bits = -sum(v / client_total * math.log2(v / client_total)
                for m, v in mass.items() if m in clients)
    return max(0.0, bits), (total - client_total) / total


# ---------------------------------------------------------------------------- hand-made streams

CLIENTS = ("a", "b", "c", "r1", "r2")
PROVIDERS = ("pa", "pb", "pc", "q")
MIXNODES = ("m", "m2", "n")
NODES = (*PROVIDERS, *MIXNODES)
HOME = {"a": "pa", "b": "pb", "c": "pc"}


class Tape:
    """Records written by hand: a client's packet reaches a mixnode through its own provider
    (alone there, so it leaves the provider as a point mass)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.xid = -1

    def _next(self) -> int:
        self.xid += 1
        return self.xid

    def made(self, t: float, src: str, dst: str, kind: str = "payload",
             recipient: str = "r1") -> int:
        """A packet ``src`` made, with its Origin; return its first xid."""
        x = self._next()
        self.records.append(Origin(x, kind, src, recipient, ""))
        self.records.append(Transmission(t, src, dst, x, -1))
        return x

    def hop(self, t: float, src: str, dst: str, parent: int) -> int:
        x = self._next()
        self.records.append(Transmission(t, src, dst, x, parent))
        return x

    def end(self, t: float, node: str, xid: int) -> None:
        self.records.append(Ending(t, node, xid))

    def into(self, t: float, client: str, mix: str, kind: str = "payload",
             recipient: str = "r1") -> int:
        """``client``'s packet through its provider into ``mix`` at ``t`` (made at t - 0.5)."""
        x = self.made(t - 0.5, client, HOME[client], kind, recipient)
        return self.hop(t, HOME[client], mix, x)


def run(records: list[Record], **kw: object) -> PrivacyReport:
    kw.setdefault("receiver_settle", 1 - 1e-9)
    return analyse(records, CLIENTS, NODES, providers=PROVIDERS, **kw)  # type: ignore[arg-type]


def bits(probs: list[float]) -> float:
    return -sum(p * math.log2(p) for p in probs if p > 0)


def test_two_senders_in_the_pool_when_the_target_leaves_give_exactly_one_bit() -> None:
    tape = Tape()
    x = tape.into(1, "a", "m")
    y = tape.into(2, "b", "m")
    tape.hop(3, "m", "q", x)
    tape.hop(4, "m", "q", y)  # memoryless: the one left behind is as mixed
    report = run(tape.records)
    assert report.sender_bits == (1.0, 1.0)
    assert report.sender_targets == (0, 2)  # each target named by its first transmission
    assert report.sender_node_mass == (0.0, 0.0)
    assert report.max_bits == math.log2(len(CLIENTS))


def test_a_sender_whose_packet_left_before_the_target_arrived_gives_zero_bits() -> None:
    tape = Tape()
    y = tape.into(1, "b", "m")
    tape.hop(2, "m", "q", y)
    x = tape.into(3, "a", "m")
    tape.hop(4, "m", "q", x)
    assert run(tape.records).sender_bits == (0.0, 0.0)


def test_three_senders_with_unequal_pool_histories_give_the_hand_computed_mixture() -> None:
    tape = Tape()
    xa = tape.into(1, "a", "m")
    xb = tape.into(2, "b", "m")
    tape.hop(3, "m", "q", xa)  # mean (a 1/2, b 1/2); one packet left: count 1
    xc = tape.into(4, "c", "m")  # mean: 1/2 * (a 1/2, b 1/2) + 1/2 * c
    tape.hop(5, "m", "q", xc)
    tape.hop(6, "m", "q", xb)
    mixture = [0.5 * 0.5, 0.5 * 0.5, 0.5]
    report = run(tape.records)
    assert report.sender_bits == pytest.approx([1.0, bits(mixture), bits(mixture)], abs=1e-12)
    assert bits(mixture) == 1.5


def test_a_chain_of_two_mixes_carries_the_first_pool_into_the_second() -> None:
    tape = Tape()
    xa = tape.into(1, "a", "m")
    xb = tape.into(2, "b", "m")
    to_m2 = tape.hop(3, "m", "m2", xa)  # carries (a 1/2, b 1/2) into m2: not measured yet
    xc = tape.into(4, "c", "m2")
    tape.hop(5, "m2", "q", xc)  # m2's mean: 1/2 (a 1/2, b 1/2) + 1/2 c
    tape.hop(6, "m2", "q", to_m2)
    tape.hop(7, "m", "q", xb)
    report = run(tape.records)
    assert report.sender_bits == pytest.approx([1.5, 1.5, 1.0], abs=1e-12)
    assert report.sender_targets == (5, 0, 2)


def test_a_corrupted_mix_reveals_the_target_where_the_honest_one_gave_one_bit() -> None:
    tape = Tape()
    x = tape.into(1, "a", "m")
    y = tape.into(2, "b", "m")
    tape.hop(3, "m", "q", x)
    tape.hop(4, "m", "q", y)
    assert run(tape.records).sender_bits == (1.0, 1.0)
    corrupted = run(tape.records, corrupted=("m",))
    assert corrupted.sender_bits == (0.0, 0.0)
    assert corrupted.corrupted == ("m",)


def test_a_corrupted_mix_passes_on_what_the_honest_mix_before_it_mixed() -> None:
    tape = Tape()
    xa = tape.into(1, "a", "m")
    xb = tape.into(2, "b", "m")
    to_m2 = tape.hop(3, "m", "m2", xa)
    xc = tape.into(4, "c", "m2")
    tape.hop(5, "m2", "q", to_m2)  # m2 corrupted: exactly what m gave it, (a 1/2, b 1/2)
    tape.hop(6, "m2", "q", xc)  # and c alone
    tape.hop(7, "m", "q", xb)
    assert run(tape.records, corrupted=("m2",)).sender_bits == pytest.approx([1.0, 0.0, 1.0])


def test_a_nodes_own_packet_is_reported_apart_as_node_mass() -> None:
    tape = Tape()
    loop = tape.made(1, "n", "m", kind="mix_loop", recipient="")
    x = tape.into(2, "a", "m")
    tape.hop(3, "m", "q", x)  # (a 1/2, n 1/2): a is the only client
    tape.hop(4, "m", "pb", loop)
    report = run(tape.records)
    assert report.sender_bits == (0.0,)
    assert report.sender_node_mass == (0.5,)
    control = Tape()
    y = control.into(1, "b", "m")
    x = control.into(2, "a", "m")
    control.hop(3, "m", "q", x)
    control.hop(4, "m", "q", y)
    assert run(control.records).sender_node_mass == (0.0, 0.0)


def test_only_payloads_leaving_a_mixnode_for_a_provider_are_sender_targets() -> None:
    tape = Tape()
    x = tape.into(1, "a", "m", kind="loop", recipient="a")
    y = tape.into(2, "b", "m")
    tape.hop(3, "m", "q", x)  # a loop: not a target
    to_m2 = tape.hop(4, "m", "m2", y)  # between mixnodes: not measured yet
    report = run(tape.records)
    assert report.sender_targets == ()
    assert report.sender_pending == 1
    tape.hop(5, "m2", "q", to_m2)
    report = run(tape.records)
    assert report.sender_targets == (2,) and report.sender_pending == 0


def test_without_origins_every_packet_a_client_made_is_a_target() -> None:
    tape = Tape()
    x = tape.into(1, "a", "m", kind="loop", recipient="a")
    y = tape.into(2, "b", "m", kind="drop", recipient="")
    tape.hop(3, "m", "q", x)
    tape.hop(4, "m", "q", y)
    bare = [r for r in tape.records if not isinstance(r, Origin)]
    assert run(tape.records).sender_targets == ()
    assert run(bare).sender_bits == (1.0, 1.0)


def test_a_target_dropped_inside_the_mixnet_is_counted_as_ended() -> None:
    tape = Tape()
    x = tape.into(1, "a", "m")
    tape.end(2, "m", x)
    report = run(tape.records)
    assert (report.sender_targets, report.sender_ended, report.sender_pending) == ((), 1, 0)


def test_packets_sent_before_measure_from_mix_but_are_not_targets() -> None:
    tape = Tape()
    x = tape.into(1, "a", "m")  # a's packet was first sent at 0.5
    y = tape.into(2, "b", "m")
    tape.hop(3, "m", "q", y)
    tape.hop(4, "m", "q", x)
    assert run(tape.records).sender_targets == (2, 0)  # positive control
    late = run(tape.records, measure_from=1.0)
    assert late.sender_targets == (2,) and late.sender_bits == (1.0,)
    assert late.receiver_skipped == 0 and late.receiver_pending + len(late.receiver_targets) == 1


# ---------------------------------------------------------------------------- receiver side

def test_a_fetch_reply_a_provider_made_itself_takes_nothing_from_its_pool() -> None:
    tape = Tape()
    x = tape.made(0.5, "a", "pa", recipient="r2")
    tape.made(0.7, "pa", "r1", kind="ack", recipient="r1")  # no parent: the provider's own
    stored = tape.hop(2, "m", "q", tape.hop(1, "pa", "m", x))
    tape.hop(3, "q", "r2", stored)
    report = run(tape.records)
    assert report.receiver_targets == (0,)
    assert report.receiver_bits == (0.0,) and report.receiver_lost == (0.0,)


def _two_payloads_into_q() -> tuple[Tape, int, int, int, int]:
    tape = Tape()
    t_first = tape.xid + 1
    x = tape.into(1, "a", "m", recipient="r1")
    u_first = tape.xid + 1
    y = tape.into(2, "b", "m", recipient="r2")
    sx = tape.hop(3, "m", "q", x)  # each carries half of each target
    sy = tape.hop(4, "m", "q", y)
    return tape, t_first, u_first, sx, sy


def test_two_targets_fetched_by_two_clients_give_one_bit_each() -> None:
    tape, t_first, u_first, sx, sy = _two_payloads_into_q()
    tape.hop(5, "q", "r1", sx)
    tape.hop(6, "q", "r2", sy)
    report = run(tape.records)
    assert report.receiver_targets == (t_first, u_first)
    assert report.receiver_bits == pytest.approx([1.0, 1.0])
    assert report.receiver_lost == pytest.approx([0.0, 0.0])
    assert report.receiver is not None and report.receiver.count == 2


def test_mass_that_expires_in_a_mailbox_is_lost_not_fetched() -> None:
    tape, _, _, sx, sy = _two_payloads_into_q()
    tape.end(5, "q", sx)  # expired: any stored packet alike, half of each target
    tape.hop(6, "q", "r1", sy)
    report = run(tape.records)
    assert report.receiver_bits == pytest.approx([0.0, 0.0])
    assert report.receiver_lost == pytest.approx([0.5, 0.5])


def test_a_packet_discarded_as_it_arrives_takes_only_its_own_mass() -> None:
    def stream(discard_at: float) -> list[Record]:
        tape = Tape()
        x = tape.into(1, "a", "m", recipient="r1")
        stored = tape.hop(3, "m", "q", x)  # the target alone in q's mailboxes
        d = tape.into(3.5, "b", "m2", kind="drop", recipient="")
        at_q = tape.hop(4, "m2", "q", d)
        tape.end(discard_at, "q", at_q)
        tape.hop(5, "q", "r1", stored)
        return tape.records

    exact = run(stream(4.0))  # on arrival: the store's count never rose
    assert exact.receiver_targets == (0,)
    assert exact.receiver_bits == (0.0,) and exact.receiver_lost == pytest.approx([0.0])
    later = run(stream(4.5))  # later: any stored packet alike
    assert later.receiver_lost == pytest.approx([0.5])


def test_a_busy_slot_skips_a_target_and_a_settled_one_is_reused() -> None:
    tape, _, _, sx, sy = _two_payloads_into_q()
    tape.hop(5, "q", "r1", sx)
    tape.hop(6, "q", "r2", sy)
    third = tape.xid + 1
    z = tape.into(8, "c", "m", recipient="r1")
    tape.hop(9, "q", "r1", tape.hop(8.5, "m", "q", z))
    report = run(tape.records, receiver_targets=1)
    assert report.receiver_skipped == 1  # b's payload came while a's was tracked
    assert report.receiver_targets == (0, third)  # a's settled, its slot went to c's
    assert report.receiver_bits == pytest.approx([1.0, 0.0])


def test_an_unsettled_target_is_reported_pending() -> None:
    tape, _, _, sx, _ = _two_payloads_into_q()
    tape.hop(5, "q", "r1", sx)
    report = run(tape.records)
    assert (report.receiver_targets, report.receiver_pending) == ((), 2)
    assert report.receiver is None


# ---------------------------------------------------------------------------- random streams

def _compare(seed: int, chains: int) -> None:
    net = small_net()
    rng = random.Random(seed)
    records = random_stream(net, rng, chains)
    corrupted = frozenset(rng.sample(net.mixnodes, rng.randrange(3)))
    slow = SlowAdversary(net, corrupted)
    slow.feed(records)
    report = analyse(records, net.clients, net.nodes, providers=net.providers,
                     corrupted=corrupted, receiver_targets=chains, receiver_settle=1 - 1e-9)
    fast = list(zip(report.sender_targets, report.sender_bits, report.sender_node_mass,
                    strict=True))
    assert [x for x, _, _ in fast] == [x for x, _, _ in slow.sender]
    assert [b for _, b, _ in fast] == pytest.approx([b for _, b, _ in slow.sender], abs=1e-9)
    assert [m for _, _, m in fast] == pytest.approx([m for _, _, m in slow.sender], abs=1e-9)
    expected = slow.receiver()
    assert sorted(report.receiver_targets) == sorted(expected)
    for x, b, lost in zip(report.receiver_targets, report.receiver_bits,
                          report.receiver_lost, strict=True):
        assert (b, lost) == pytest.approx(expected[x], abs=1e-9)
    assert report.sender_pending == 0 and report.receiver_pending == 0


@pytest.mark.parametrize("seed", range(12))
def test_the_streaming_analysis_equals_a_direct_computation_on_random_streams(seed: int) -> None:
    _compare(seed, 30)


def test_the_random_streams_exercise_every_case_the_comparison_relies_on() -> None:
    net = small_net()
    records = [r for seed in range(12) for r in random_stream(net, random.Random(seed), 30)]
    kinds = {r.kind for r in records if isinstance(r, Origin)}
    assert kinds == {"payload", "drop", "loop", "ack", "reply", "mix_loop"}
    assert any(isinstance(r, Ending) for r in records)
    fetches = [r for r in records if isinstance(r, Transmission) and r.dst in net.clients]
    assert fetches


def test_the_same_stream_gives_the_same_report_twice() -> None:
    net = small_net()
    first = random_stream(net, random.Random(7), 40)
    again = random_stream(net, random.Random(7), 40)
    assert first == again
    kw = dict(providers=net.providers, corrupted=("m00",), receiver_targets=4)
    one = analyse(first, net.clients, net.nodes, **kw)  # type: ignore[arg-type]
    two = analyse(again, net.clients, net.nodes, **kw)  # type: ignore[arg-type]
    assert one == two and one.sender_bits
    other = analyse(random_stream(net, random.Random(8), 40), net.clients, net.nodes, **kw)  # type: ignore[arg-type]
    assert other != one


def test_a_pool_that_keeps_turning_over_stays_exact() -> None:
    # a's packet stays in m while 700 of b's pass: each halves a's share (2^-700 is below the
    # lazy scale's floor, so the scale is folded back many times on the way).
    tape = Tape()
    xa = tape.into(0.5, "a", "m")
    for k in range(1, 701):
        y = tape.into(k, "b", "m")
        tape.hop(k + 0.25, "m", "q", y if k % 2 else xa)
        if k % 2 == 0:
            xa = y  # what stays is b's (by ground truth): the adversary cannot tell
    report = run(tape.records, receiver_targets=0)
    share = 2.0 ** -700
    expected = -(share * math.log2(share) + (1 - share) * math.log2(1 - share))
    assert report.sender_bits[-1] == pytest.approx(expected, rel=1e-9)
    assert report.sender_bits[0] == 1.0


def test_records_read_back_from_a_file_give_the_same_report(tmp_path: Path) -> None:
    net = small_net()
    records = random_stream(net, random.Random(3), 30)
    path = tmp_path / "records.jsonl"
    write_records(path, records)
    kw = dict(providers=net.providers)
    assert analyse(read_records(path), net.clients, net.nodes, **kw) == \
        analyse(records, net.clients, net.nodes, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- bad streams

def _good() -> Tape:
    tape = Tape()
    x = tape.into(1, "a", "m")
    tape.hop(2, "m", "q", x)
    return tape


BAD_STREAMS = {
    "time order": lambda r: [*r, Transmission(0.5, "b", "pb", 10, -1)],
    "not above": lambda r: [*r, Transmission(3, "b", "pb", 1, -1)],
    "unknown member 'zz'": lambda r: [*r, Transmission(3, "zz", "pb", 10, -1)],
    "unknown member 'yy'": lambda r: [*r, Ending(3, "yy", 3)],
    "is not in m": lambda r: [*r, Transmission(3, "m", "q", 10, 0)],
    "is not in q": lambda r: [*r, Ending(3, "q", 99)],
    "just before its Transmission": lambda r: [*r, Origin(10, "payload", "b", "r1", ""),
                                               Ending(3, "q", 3)],
    "does not match": lambda r: [*r, Origin(10, "payload", "b", "r1", ""),
                                 Transmission(3, "c", "pc", 10, -1)],
    "no such link": lambda r: [*r, Transmission(3, "a", "m", 10, -1)],
    "a 'payload' made by 'm'": lambda r: [*r, Origin(10, "payload", "m", "r1", "")],
    "a client forwards": lambda r: [*r, Transmission(3, "a", "pa", 10, 3)],
    "had ended its route": lambda r: [*r, Transmission(3, "q", "m", 10, 2)],
}


@pytest.mark.parametrize("problem", sorted(BAD_STREAMS))
def test_a_bad_stream_raises_a_record_error_naming_the_problem(problem: str) -> None:
    good = _good().records
    assert run(good).sender_bits == (0.0,)  # positive control
    with pytest.raises(RecordError, match=problem) as caught:
        run(BAD_STREAMS[problem](good))
    assert caught.value.source == "records" and caught.value.where.startswith("record ")


def test_an_adversary_refuses_members_that_do_not_add_up() -> None:
    Adversary(CLIENTS, NODES, providers=PROVIDERS, corrupted=("m",))  # positive control
    with pytest.raises(LocalMisuse):
        Adversary(CLIENTS, NODES, providers=("nowhere",))
    with pytest.raises(LocalMisuse):
        Adversary(CLIENTS, NODES, providers=PROVIDERS, corrupted=("a",))
    with pytest.raises(LocalMisuse):
        Adversary(CLIENTS, (*NODES, "a"), providers=PROVIDERS)
    with pytest.raises(LocalMisuse):
        Adversary((), NODES, providers=PROVIDERS)
    with pytest.raises(LocalMisuse):
        Adversary(CLIENTS, NODES, providers=PROVIDERS, receiver_settle=0.0)


# ---------------------------------------------------------------------------- helpers

def test_corrupt_sample_draws_the_rounded_fraction_of_distinct_mixnodes() -> None:
    mixnodes = [f"m{i}" for i in range(10)]
    picked = corrupt_sample(mixnodes, 0.25, random.Random(1))
    assert len(picked) == 3 and picked <= set(mixnodes)  # 2.5 rounds up
    assert corrupt_sample(mixnodes, 0.25, random.Random(1)) == picked
    assert corrupt_sample(mixnodes, 0.0, random.Random(1)) == frozenset()
    assert corrupt_sample(mixnodes, 1.0, random.Random(1)) == frozenset(mixnodes)
    with pytest.raises(LocalMisuse):
        corrupt_sample(mixnodes, 1.5, random.Random(1))


def test_a_summary_gives_count_mean_percentiles_and_extremes() -> None:
    summary = Summary.of([4.0, 0.0, 2.0, 1.0, 3.0])
    assert summary == Summary(5, 2.0, 2.0, 0.2, 3.8, 0.0, 4.0)
    assert Summary.of([]) is None
