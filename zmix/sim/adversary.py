"""The global passive adversary: sender and receiver anonymity from a stream of records.

Loopix's method (docs/privacy.md, "How anonymity is computed"): with exponential delays every
packet in a node's pool is equally likely to be the next to leave, so the adversary gives each
packet leaving an honest node the mean of the distributions of the packets in its pool. Each
distribution is one numpy vector over ``clients + nodes`` (who made the packet) followed by one
entry per tracked receiver target (how much of that target the packet carries); a pool keeps
its packet count and its mean vector, scaled lazily so that a client's packet (a point mass)
joins it in constant time. :class:`Adversary` consumes the records one at a time
(:meth:`Adversary.observe`) and keeps only the pools, the packets it still needs (at corrupted
nodes, in mailboxes) and the targets; :meth:`Adversary.report` returns a
:class:`PrivacyReport`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from zmix.errors import LocalMisuse
from zmix.sim.taps import CLIENT_KINDS, Ending, Origin, Record, RecordError, Transmission

Vector = npt.NDArray[np.float64]

# A departing packet: (maker, flags, first xid, form, scale, vec, point, slot). Its vector comes
# in one of three forms: 0 = a point mass on ``point`` (plus receiver ``slot`` if >= 0);
# 1 = ``scale * vec`` (maybe a pool's lazy mean: use it at once); 2 = ``vec``, the receiver part
# only (from a store: it can go to a client only).
_Made = tuple[int, int, int, int, float, Vector, int, int]
_NOTHING: Vector = np.zeros(0)  # the vector of a form-0 packet, and of a pool entry

# Where a packet inside a node is (the ``place`` of an in-flight entry).
_POOL = 0  # an honest node's mixing pool (mean vector, count)
_STORE = 1  # an honest provider's mailboxes and discards: a pool for fetches only
_SINK = 2  # an honest mixnode's own mix loop come home: it ends there
_HELD = 3  # a corrupted node: the packet's own vector, revealed by the node

_TARGET = 1  # flag: a sender target not yet measured
_RESCALE = 1e-150  # a pool's lazy scale below this is folded back into its vector
_SOURCE = "records"


@dataclass(frozen=True, slots=True)
class Summary:
    """Summary statistics of a sample (bits, or mass): percentiles interpolate linearly."""

    count: int
    mean: float
    median: float
    p5: float
    p95: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        """Return the summary of ``values``, or None when there are none."""
        if not values:
            return None
        a = np.asarray(values, dtype=np.float64)
        p5, median, p95 = (float(x) for x in np.percentile(a, [5.0, 50.0, 95.0]))
        return cls(len(a), float(a.mean()), median, p5, p95, float(a.min()), float(a.max()))


@dataclass(frozen=True, slots=True)
class PrivacyReport:
    """What the adversary learned (docs/privacy.md, "How anonymity is computed").

    Sender side, one entry per target in the order measured: ``sender_targets`` (the xid of the
    target packet's first transmission), ``sender_bits`` (entropy over clients, renormalised)
    and ``sender_node_mass`` (the probability, set apart, that a node made it). Receiver side,
    one entry per settled target: ``receiver_targets``, ``receiver_bits`` (entropy over the
    clients that fetched its mass, renormalised) and ``receiver_lost`` (its mass that ended in
    discards). ``max_bits`` is log2(clients)."""

    records: int
    clients: int
    max_bits: float
    corrupted: tuple[str, ...]
    sender_targets: tuple[int, ...]
    sender_bits: tuple[float, ...]
    sender_node_mass: tuple[float, ...]
    sender_pending: int  # targets still inside the mixnet
    sender_ended: int  # targets that ended (were dropped) before leaving the mixnet
    sender: Summary | None
    receiver_targets: tuple[int, ...]
    receiver_bits: tuple[float, ...]
    receiver_lost: tuple[float, ...]
    receiver_pending: int  # targets tracked but not settled yet
    receiver_skipped: int  # targets not tracked: every slot was busy
    receiver: Summary | None


def corrupt_sample(mixnodes: Sequence[str], fraction: float,
                   rng: random.Random) -> frozenset[str]:
    """Return ``round(fraction * len(mixnodes))`` distinct mixnodes drawn with ``rng`` (halves
    round up). Raises :class:`LocalMisuse` unless 0 <= fraction <= 1."""
    if not 0.0 <= fraction <= 1.0:
        raise LocalMisuse(f"the corrupted fraction must be in [0, 1], not {fraction}")
    names = sorted(set(mixnodes))
    count = math.floor(fraction * len(names) + 0.5)
    return frozenset(rng.sample(names, count))


def analyse(records: Iterable[Record], clients: Sequence[str], nodes: Sequence[str],
            **kw: Any) -> PrivacyReport:
    """Feed ``records`` to an :class:`Adversary` (keywords as its own) and return its report."""
    adversary = Adversary(clients, nodes, **kw)
    observe = adversary.observe
    for record in records:
        observe(record)
    return adversary.report()


class Adversary:
    """A global passive adversary consuming records in stream order (docs/privacy.md).

    ``clients`` and ``nodes`` name every member (``providers`` the nodes that are providers,
    ``corrupted`` the nodes that reveal their input -> output mapping). ``receiver_targets``
    bounds how many receiver targets are tracked at once; a target is settled (and its slot
    freed) once at least ``receiver_settle`` of its mass was fetched or ended. Only packets
    first sent at or after ``measure_from`` are targets (the pools fill from the first record
    on: feed the whole stream, and skip a warm-up with this). Bad records
    raise :class:`~zmix.sim.taps.RecordError`; bad arguments :class:`LocalMisuse`."""

    def __init__(self, clients: Sequence[str], nodes: Sequence[str], *,
                 providers: Collection[str], corrupted: Collection[str] = (),
                 receiver_targets: int = 32, receiver_settle: float = 0.999,
                 measure_from: float = -math.inf) -> None:
        names = [*clients, *nodes]
        if not clients or len(set(names)) != len(names):
            raise LocalMisuse("clients and nodes must be distinct names, clients not empty")
        for what, group in (("providers", providers), ("corrupted", corrupted)):
            if not set(group) <= set(nodes):
                raise LocalMisuse(f"{what} must be nodes: {sorted(set(group) - set(nodes))}")
        if receiver_targets < 0 or not 0.0 < receiver_settle <= 1.0:
            raise LocalMisuse("receiver_targets must be >= 0 and receiver_settle in (0, 1]")
        self._c = c = len(clients)
        self._d = d = len(names)
        self._k = k = receiver_targets
        self._settle = receiver_settle
        self._measure_from = measure_from
        self._index = {name: i for i, name in enumerate(names)}
        self._names = names
        self._corrupted = tuple(n for n in nodes if n in set(corrupted))
        providers_set, corrupted_set = set(providers), set(corrupted)
        self._provider = [False] * c + [n in providers_set for n in nodes]
        self._honest = [True] * c + [n not in corrupted_set for n in nodes]
        self._v: list[Vector] = [np.zeros(d + k) for _ in range(d)]  # per member; nodes used
        self._s = [1.0] * d  # lazy scales: a pool's mean is _s[i] * _v[i]
        self._n = [0] * d  # pool counts
        self._sn = [0] * d  # store counts (honest providers)
        self._st: list[Vector] = [np.zeros(k) for _ in range(d)]  # store totals (receiver)
        self._sdep = [0] * d  # anonymous removals from each store so far
        self._tmp = np.zeros(d + k)
        self._live: dict[int, tuple[int, int, int, int, int, float, Vector, int]] = {}
        self._t = -math.inf
        self._xid = -1
        self._records = 0
        self._origin: Origin | None = None
        self._sender: list[tuple[int, float, float]] = []
        self._sender_ended = 0
        self._slot_target = [-1] * k
        self._free = list(range(k - 1, -1, -1))
        self._fetched = np.zeros((c, k))
        self._lost = np.zeros(k)
        self._settled = np.zeros(k)
        self._receiver: list[tuple[int, float, float]] = []
        self._skipped = 0

    # ------------------------------------------------------------------ the stream

    def observe(self, record: Record) -> None:
        """Consume one record. Raises :class:`RecordError` for a record out of order, naming
        an unknown member or a packet that is not where it says."""
        self._records += 1
        kind = type(record)
        if self._origin is not None and kind is not Transmission:
            self._fail("an Origin must come just before its Transmission")
        if kind is Transmission:
            self._transmission(record)  # type: ignore[arg-type]
        elif kind is Ending:
            self._ending(record)  # type: ignore[arg-type]
        elif kind is Origin:
            self._origin_record(record)  # type: ignore[arg-type]
        else:
            self._fail(f"not a record: {kind.__name__}")

    def _fail(self, problem: str) -> NoReturn:
        raise RecordError(_SOURCE, f"record {self._records}", problem)

    def _member(self, name: str) -> int:
        i = self._index.get(name)
        if i is None:
            self._fail(f"unknown member {name!r}")
        return i

    def _clock(self, t: float) -> None:
        if t < self._t:
            self._fail(f"time {t} before {self._t}: records must come in time order")
        self._t = t

    def _origin_record(self, rec: Origin) -> None:
        if rec.xid <= self._xid:
            self._fail(f"xid {rec.xid} not above {self._xid}")
        maker = self._member(rec.sender)
        if (maker < self._c) != (rec.kind in CLIENT_KINDS):
            self._fail(f"a {rec.kind!r} made by {rec.sender!r}")
        if rec.recipient:
            self._member(rec.recipient)
        self._origin = rec

    def _transmission(self, rec: Transmission) -> None:
        self._clock(rec.t)
        xid = rec.xid
        if xid <= self._xid:
            self._fail(f"xid {xid} not above {self._xid}")
        self._xid = xid
        si, di = self._member(rec.src), self._member(rec.dst)
        c = self._c
        if si == di or (si < c and not self._provider[di]) or (di < c and not self._provider[si]):
            self._fail(f"no such link: {rec.src} -> {rec.dst}")
        origin, self._origin = self._origin, None
        if origin is not None and (origin.xid != xid or origin.sender != rec.src
                                   or rec.parent != -1):
            self._fail(f"Origin of xid {origin.xid} does not match the transmission")
        made = self._made(rec, si, di, origin) if rec.parent == -1 else self._leaves(rec, si)
        maker, flags, first, form, scale, vec, point, slot = made
        if flags & _TARGET and si >= c and not self._provider[si] and self._provider[di]:
            self._measure(first, form, scale, vec, point)
            flags &= ~_TARGET
        if di < c:
            self._fetch(di, self._receiver_part(form, scale, vec, slot))
        else:
            self._arrive(rec, xid, di, si, maker, flags, first, form, scale, vec, point, slot)

    def _made(self, rec: Transmission, si: int, di: int, origin: Origin | None) -> _Made:
        """A packet ``rec.src`` made: a point mass on its maker, mixed into the pool of an
        honest node on its way to a node (the adversary does not see when a node made it)."""
        flags, slot = 0, -1
        if si < self._c:
            if (origin is None or origin.kind == "payload") and rec.t >= self._measure_from:
                flags = _TARGET
                slot = self._take_slot(rec.xid)
            return (si, flags, rec.xid, 0, 1.0, _NOTHING, si, slot)
        if self._honest[si] and di >= self._c:
            self._add_point(si, si, -1)  # joins the pool and leaves it at once
            self._n[si] -= 1
            return (si, flags, rec.xid, 1, self._s[si], self._v[si], si, -1)
        return (si, flags, rec.xid, 0, 1.0, _NOTHING, si, -1)

    def _leaves(self, rec: Transmission, si: int) -> _Made:
        """A packet that came into ``rec.src`` leaves it: its vector by where it was."""
        if si < self._c:
            self._fail(f"a client forwards xid {rec.parent}")
        entry = self._live.pop(rec.parent, None)
        if entry is None or entry[0] != si:
            self._fail(f"parent {rec.parent} is not in {rec.src}")
        _, place, maker, flags, first, _, vec, _ = entry
        if place == _POOL:
            self._n[si] -= 1
            return (maker, flags, first, 1, self._s[si], self._v[si], -1, -1)
        if place == _HELD:
            return (maker, flags, first, 1, 1.0, vec, -1, -1)
        if place == _STORE and self._index[rec.dst] < self._c:
            return (maker, flags, first, 2, 1.0, self._unstore(si), -1, -1)
        self._fail(f"xid {rec.parent} left {rec.src} for {rec.dst}: it had ended its route")

    def _arrive(self, rec: Transmission, xid: int, di: int, si: int, maker: int, flags: int,
                first: int, form: int, scale: float, vec: Vector, point: int,
                slot: int) -> None:
        """Put an arriving packet where the adversary keeps it (never form 2: _leaves let a
        stored packet go to a client only)."""
        c = self._c
        if not self._honest[di]:
            place, keep = _HELD, self._full(form, scale, vec, point, slot)
        elif (self._provider[di] and si >= c and not self._provider[si]
              and (maker < c or self._provider[maker])):
            place, keep = _STORE, self._receiver_part(form, scale, vec, slot)
            self._st[di] += keep
            self._sn[di] += 1
        elif maker == di and not self._provider[di]:
            place, keep = _SINK, self._receiver_part(form, scale, vec, slot)
        else:
            place, keep = _POOL, _NOTHING
            if form == 0:
                self._add_point(di, point, slot)
            else:
                self._add_vec(di, scale, vec)
        self._live[xid] = (di, place, maker, flags, first, rec.t, keep, self._sdep[di])

    def _ending(self, rec: Ending) -> None:
        self._clock(rec.t)
        ni = self._member(rec.node)
        entry = self._live.pop(rec.xid, None)
        if ni < self._c or entry is None or entry[0] != ni:
            self._fail(f"xid {rec.xid} is not in {rec.node}")
        _, place, _, flags, _, since, vec, deps = entry
        if flags & _TARGET:
            self._sender_ended += 1
        if place == _POOL:
            self._n[ni] -= 1
            lost = self._v[ni][self._d:] * self._s[ni]
        elif place == _STORE:
            if since == rec.t and deps == self._sdep[ni]:
                # Discarded on arrival: the store's count never rose, so the adversary knows
                # which packet it was and takes out exactly its mass.
                self._st[ni] -= vec
                self._sn[ni] -= 1
                lost = vec
            else:
                lost = self._unstore(ni)
        elif place == _SINK:
            lost = vec
        else:
            lost = vec[self._d:]
        if self._k:
            self._lost += lost
            self._settled += lost

    # ------------------------------------------------------------------ pools and stores

    def _add_point(self, i: int, point: int, slot: int) -> None:
        """A point mass on ``point`` (and on receiver ``slot`` if >= 0) joins pool ``i``."""
        n = self._n[i]
        v = self._v[i]
        if n == 0:
            v.fill(0.0)
            v[point] = 1.0
            if slot >= 0:
                v[self._d + slot] = 1.0
            self._s[i] = 1.0
        else:
            s = self._s[i] * n / (n + 1)
            weight = 1.0 / ((n + 1) * s)
            v[point] += weight
            if slot >= 0:
                v[self._d + slot] += weight
            self._rescale(i, s)
        self._n[i] = n + 1

    def _add_vec(self, i: int, scale: float, vec: Vector) -> None:
        """A packet whose vector is ``scale * vec`` joins pool ``i`` (vec is not pool i's)."""
        n = self._n[i]
        v = self._v[i]
        if n == 0:
            np.copyto(v, vec)
            self._rescale(i, scale)
        else:
            s = self._s[i] * n / (n + 1)
            np.multiply(vec, scale / ((n + 1) * s), out=self._tmp)
            np.add(v, self._tmp, out=v)
            self._rescale(i, s)
        self._n[i] = n + 1

    def _rescale(self, i: int, s: float) -> None:
        if s < _RESCALE:
            self._v[i] *= s
            s = 1.0
        self._s[i] = s

    def _unstore(self, i: int) -> Vector:
        """Take one packet, any of them alike, out of store ``i``: its receiver vector."""
        n = self._sn[i]
        mean = self._st[i] / n
        self._st[i] -= mean
        self._sn[i] = n - 1
        self._sdep[i] += 1
        return mean

    def _full(self, form: int, scale: float, vec: Vector, point: int,
              slot: int) -> Vector:
        """The whole vector of a departing packet, as a new array."""
        if form == 0:
            out = np.zeros(self._d + self._k)
            out[point] = 1.0
            if slot >= 0:
                out[self._d + slot] = 1.0
            return out
        return vec * scale

    def _receiver_part(self, form: int, scale: float, vec: Vector, slot: int) -> Vector:
        """The receiver part of a departing packet (may be a view: copy to keep it)."""
        if form == 0:
            out = np.zeros(self._k)
            if slot >= 0:
                out[slot] = 1.0
            return out
        if form == 2:
            return vec
        return vec[self._d:] * scale

    # ------------------------------------------------------------------ measurements

    def _measure(self, first: int, form: int, scale: float, vec: Vector,
                 point: int) -> None:
        """Record a sender target's entropy as it leaves the mixnet."""
        if form == 0:
            bits, nodes = 0.0, float(point >= self._c)
        else:
            bits, nodes = _split_entropy(vec[:self._d], self._c)
        self._sender.append((first, bits, nodes))

    def _fetch(self, client: int, part: Vector) -> None:
        if self._k:
            self._fetched[client] += part
            self._settled += part

    def _take_slot(self, xid: int) -> int:
        if not self._k:
            return -1
        if not self._free:
            self._settle_targets()  # settling is looked at only when a slot is wanted
        if not self._free:
            self._skipped += 1
            return -1
        slot = self._free.pop()
        self._slot_target[slot] = xid
        return slot

    def _settle_targets(self) -> None:
        """Finish every tracked receiver target whose mass has (nearly) all come out."""
        for found in np.flatnonzero(self._settled >= self._settle):
            slot = int(found)
            if self._slot_target[slot] < 0:
                continue
            fetched = self._fetched[:, slot]
            bits = _entropy(fetched) if fetched.sum() > 0 else 0.0
            self._receiver.append((self._slot_target[slot], bits, float(self._lost[slot])))
            self._clear_slot(slot)

    def _clear_slot(self, slot: int) -> None:
        """Forget a finished target's residual mass everywhere, so its slot can be reused."""
        column = self._d + slot
        for v in self._v:
            v[column] = 0.0
        for st in self._st:
            st[slot] = 0.0
        for entry in self._live.values():
            vec = entry[6]
            if entry[1] != _POOL:
                vec[column if entry[1] == _HELD else slot] = 0.0
        self._fetched[:, slot] = 0.0
        self._lost[slot] = self._settled[slot] = 0.0
        self._slot_target[slot] = -1
        self._free.append(slot)

    def report(self) -> PrivacyReport:
        """Return what was learned so far (finishing the receiver targets that settled)."""
        if self._k:
            self._settle_targets()
        sender_pending = sum(1 for e in self._live.values() if e[3] & _TARGET)
        s_first, s_bits, s_nodes = _columns(self._sender)
        r_first, r_bits, r_lost = _columns(self._receiver)
        return PrivacyReport(
            records=self._records, clients=self._c, max_bits=math.log2(self._c),
            corrupted=self._corrupted,
            sender_targets=tuple(int(x) for x in s_first), sender_bits=s_bits,
            sender_node_mass=s_nodes, sender_pending=sender_pending,
            sender_ended=self._sender_ended, sender=Summary.of(s_bits),
            receiver_targets=tuple(int(x) for x in r_first), receiver_bits=r_bits,
            receiver_lost=r_lost,
            receiver_pending=sum(1 for x in self._slot_target if x >= 0),
            receiver_skipped=self._skipped, receiver=Summary.of(r_bits))


def _columns(rows: list[tuple[int, float, float]]
             ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    if not rows:
        return (), (), ()
    a, b, c = zip(*rows, strict=True)
    return a, b, c


def _entropy(weights: Vector) -> float:
    """Shannon entropy in bits of ``weights`` renormalised (they must sum above 0)."""
    p = weights[weights > 0] / weights.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def _split_entropy(sender: Vector, clients: int) -> tuple[float, float]:
    """Return (entropy over the clients' part renormalised, the nodes' share of the mass)."""
    part = sender[:clients]
    total_clients = float(part.sum())
    total = total_clients + float(sender[clients:].sum())
    if total_clients <= 0:
        return 0.0, 1.0
    return _entropy(part), (total - total_clients) / total
