"""zmix-tune's search: the least bandwidth per client that meets an anonymity and latency target.

A target is a sender entropy (median over the measured packets of real messages, bits) of at
least ``entropy`` and a median message latency of at most ``latency`` seconds
(:class:`Target`). A candidate is a
set of Loopix rates and a mean delay (:class:`Rates`); :func:`judge_with` runs it through an
evaluation (:func:`zmix.sim.report.measure`, one fixed seed) and returns an :class:`Outcome`.
The cost of a candidate is the bandwidth per client: what a client sends, plus its share of the
nodes' mix loops (the only traffic the rates change; downloads are fixed by ``fetch_interval``
and the padded fetch answers).

The search (docs/tune.md, "How the search works"), :func:`search`:

- The client's stream is one rate ``lambda = lambda_P + lambda_L + lambda_D`` split in fixed
  shares (``Space.loop_share``, ``Space.drop_share``): a global passive adversary sees only the
  sum of a client's Poisson streams, and an empty payload tick is already a drop, so only the
  total buys sender anonymity; loops are kept for what they do besides (loop-loss detection,
  receiver anonymity).
- For each mix loop rate of a coarse ladder (``Space.mix_loop_rates``), the least client rate
  is found by bracketing (doubling or halving) and bisection in log space, assuming that more
  traffic never hurts: if ``lambda`` meets the target, so does any larger one.
- A client rate meets the target if some mean delay does: entropy and latency both grow with
  the delay, so the delays that meet the target are an interval; the search aims at the latency
  limit (secant steps on the measured latency) and stops as soon as one measurement decides
  (both met: yes; latency over and entropy under: no).
- The best mix loop rate of the ladder is refined once, halfway (geometrically) to each
  neighbour. The cheapest candidate that met the target wins.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import yaml

from zmix.errors import LocalMisuse
from zmix.sim.engine import SimParams
from zmix.sim.report import SimReport
from zmix.sim.sweep import Evaluate, busiest, max_bits, privacy_figure, with_loopix
from zmix.topology import Topology

MAX_LOSS = 0.02  # a candidate losing more of its measured messages than this fails the target
AIM = 0.97  # the delay search aims this far into the latency target (then stops there)
WARM_STEP = 1.3  # the rate's bracketing factor when starting from another answer
DIGITS = 4  # significant digits of every rate and delay tried (what the fragment says is what
# was measured)


@dataclass(frozen=True, slots=True)
class Target:
    """What the network must give: median sender entropy >= ``entropy`` bits and median
    message latency <= ``latency`` seconds."""

    entropy: float
    latency: float

    def __post_init__(self) -> None:
        if not (self.entropy >= 0 and math.isfinite(self.entropy)):
            raise LocalMisuse(f"the entropy target must be a number >= 0 bits, "
                              f"got {self.entropy!r}")
        if not (self.latency > 0 and math.isfinite(self.latency)):
            raise LocalMisuse(f"the latency target must be a number > 0 seconds, "
                              f"got {self.latency!r}")


@dataclass(frozen=True, slots=True)
class Profile:
    """A named target with the workload it is meant for (docs/tune.md, "Profiles")."""

    name: str
    entropy: float  # bits
    latency: float  # seconds
    message_rate: float  # messages per second per client
    message_bytes: int
    about: str


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("chat", 5.0, 2.0, 0.05, 300, "300-byte messages, one every 20 s"),
    Profile("files", 4.0, 15.0, 0.02, 20_000, "20 kB messages, one every 50 s"),
    Profile("max-anonymity", 7.0, 10.0, 0.05, 300, "300-byte messages, one every 20 s"),
)}


@dataclass(frozen=True, slots=True)
class Rates:
    """One candidate: the Loopix rates (per second; ``mix_loop_rate`` per node) and the mean
    per-hop delay (seconds)."""

    payload_rate: float
    loop_rate: float
    drop_rate: float
    mix_loop_rate: float
    mean_delay: float

    @property
    def client_rate(self) -> float:
        """Packets per second a client sends: lambda_P + lambda_L + lambda_D."""
        return self.payload_rate + self.loop_rate + self.drop_rate


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one candidate gave (measured): entropies in bits, latencies in seconds, bandwidth
    in bytes per second, node load in packets per second."""

    rates: Rates
    sender_median: float  # NaN if no message was measured
    sender_mean: float
    receiver_median: float
    max_bits: float
    latency_median: float
    latency_p95: float
    client_bytes_per_s: float  # what a client sends (mean over clients)
    mix_loop_bytes_per_client: float  # the nodes' mix loops, shared over the clients
    busiest_node: str
    busiest_node_per_s: float
    loss: float
    messages: int

    @property
    def bandwidth(self) -> float:
        """The cost the search minimises: bytes per second per client, its own traffic plus
        its share of the mix loops."""
        return self.client_bytes_per_s + self.mix_loop_bytes_per_client

    def entropy_ok(self, target: Target) -> bool:
        """True if the median sender entropy reaches the target (False if none measured)."""
        return self.sender_median >= target.entropy  # NaN compares False

    def latency_ok(self, target: Target) -> bool:
        """True if the median latency is within the target and (almost) nothing was lost."""
        return (self.messages > 0 and self.latency_median <= target.latency
                and self.loss <= MAX_LOSS)

    def meets(self, target: Target) -> bool:
        """True if this candidate meets both halves of ``target``."""
        return self.entropy_ok(target) and self.latency_ok(target)


@dataclass(frozen=True, slots=True)
class Space:
    """Where the search looks (docs/tune.md, "How the search works")."""

    loop_share: float = 0.25  # lambda_L / lambda
    drop_share: float = 0.0  # lambda_D / lambda
    min_rate: float = 0.1  # lambda, packets/s per client
    max_rate: float = 20.0
    mix_loop_rates: tuple[float, ...] = (0.0, 0.5, 2.0)  # lambda_M ladder, per node
    start_rate: float = 2.0  # the first lambda tried
    start_delay: float = 0.05  # the first mean delay tried, seconds
    max_delay: float = 60.0  # the longest mean delay tried, seconds
    rate_tolerance: float = 0.1  # stop bisecting lambda when hi / lo <= 1 + this
    delay_steps: int = 5  # measurements at most to decide one client rate
    max_runs: int = 120  # candidates judged at most (then the best so far is the answer)

    def __post_init__(self) -> None:
        if not (self.loop_share >= 0 and self.drop_share >= 0
                and self.loop_share + self.drop_share < 1):
            raise LocalMisuse("loop and drop shares must be >= 0 and leave some of the "
                              f"client's rate to payload, got {self.loop_share} and "
                              f"{self.drop_share}")
        if not 0 < self.min_rate <= self.max_rate < math.inf:
            raise LocalMisuse(f"need 0 < min rate <= max rate, got {self.min_rate} and "
                              f"{self.max_rate}")
        if not self.mix_loop_rates or any(not (m >= 0 and math.isfinite(m))
                                          for m in self.mix_loop_rates):
            raise LocalMisuse(f"mix loop rates must be numbers >= 0, at least one, got "
                              f"{self.mix_loop_rates}")
        if not (self.rate_tolerance > 0 and self.delay_steps >= 2 and self.max_runs >= 1
                and self.max_delay > 0):
            raise LocalMisuse("rate tolerance > 0, delay steps >= 2, max runs >= 1 and "
                              "max delay > 0 are required")

    def rates(self, rate: float, mix_loop: float, delay: float) -> Rates:
        """Return the candidate of client rate ``rate``, ``mix_loop`` and ``delay``, rounded
        to :data:`DIGITS` significant digits."""
        payload = 1 - self.loop_share - self.drop_share
        return Rates(_round(rate * payload), _round(rate * self.loop_share),
                     _round(rate * self.drop_share), _round(mix_loop), _round(delay))


def _round(x: float) -> float:
    return 0.0 if x == 0 else float(f"{x:.{DIGITS}g}")


class BudgetSpent(Exception):
    """Raised inside the search when ``Space.max_runs`` candidates were judged."""


@dataclass
class _Judged:
    """The memo of every candidate judged: the search never measures one twice."""

    judge: Callable[[Rates], Outcome]
    limit: int
    seen: dict[Rates, Outcome] = field(default_factory=dict)
    order: list[Outcome] = field(default_factory=list)

    def __call__(self, rates: Rates) -> Outcome:
        if rates not in self.seen:
            if len(self.order) >= self.limit:
                raise BudgetSpent
            outcome = self.judge(rates)
            self.seen[rates] = outcome
            self.order.append(outcome)
        return self.seen[rates]


@dataclass(frozen=True, slots=True)
class TuneResult:
    """The search's answer: ``best`` is the cheapest candidate that met the target (None if
    none did); ``closest`` the one that came nearest (:func:`closest`); ``history`` every
    candidate judged, in order; ``exhausted`` whether the run budget ran out."""

    target: Target
    best: Outcome | None
    closest: Outcome | None
    history: tuple[Outcome, ...]
    exhausted: bool


def closest(outcomes: Sequence[Outcome], target: Target) -> Outcome | None:
    """Return the candidate that came nearest ``target``: among those within the latency, the
    one with the most sender entropy; if none is, the one with the least latency."""
    timely = [o for o in outcomes if o.latency_ok(target) and not math.isnan(o.sender_median)]
    if timely:
        return max(timely, key=lambda o: (o.sender_median, -o.bandwidth))
    measured = [o for o in outcomes if o.messages > 0]
    return min(measured, key=lambda o: o.latency_median) if measured else None


def search(judge: Callable[[Rates], Outcome], target: Target,
           space: Space | None = None) -> TuneResult:
    """Find the cheapest :class:`Rates` meeting ``target`` with ``judge`` (the module's
    docstring says how); return a :class:`TuneResult`. Never raises for an infeasible
    target: ``best`` is then None."""
    space = space or Space()
    memo = _Judged(judge, space.max_runs)
    found: dict[float, Outcome] = {}
    exhausted = False
    start = (space.start_rate, space.start_delay, 2.0)
    try:
        for mix_loop in [*space.mix_loop_rates, None]:
            if mix_loop is None:  # the ladder is done: refine next to its best
                for extra in _refinements(space.mix_loop_rates, found):
                    _keep(found, extra, _least_rate(memo, target, space, extra, start))
                break
            outcome = _least_rate(memo, target, space, mix_loop, start)
            _keep(found, mix_loop, outcome)
            if outcome is not None:  # the next mix loop rate starts near this answer
                start = (outcome.rates.client_rate, outcome.rates.mean_delay, WARM_STEP)
    except BudgetSpent:
        exhausted = True
    met = [o for o in memo.order if o.meets(target)]
    best = min(met, key=lambda o: (o.bandwidth, o.latency_median)) if met else None
    return TuneResult(target, best, closest(memo.order, target), tuple(memo.order), exhausted)


def _keep(found: dict[float, Outcome], mix_loop: float, outcome: Outcome | None) -> None:
    if outcome is not None:
        found[mix_loop] = outcome


def _refinements(ladder: Sequence[float], found: dict[float, Outcome]) -> list[float]:
    """The mix loop rates halfway (geometrically; half of it next to 0) between the ladder's
    best and its neighbours, not tried yet."""
    if not found:
        return []
    ordered = sorted(set(ladder))
    best = min(found, key=lambda m: found[m].bandwidth)
    i = ordered.index(best)
    out = []
    for j in (i - 1, i + 1):
        if 0 <= j < len(ordered):
            a, b = sorted((ordered[i], ordered[j]))
            mid = b / 2 if a == 0 else math.sqrt(a * b)
            if _round(mid) not in found and mid > 0:
                out.append(_round(mid))
    return out


def _least_rate(judge: _Judged, target: Target, space: Space, mix_loop: float,
                start: tuple[float, float, float]) -> Outcome | None:
    """The outcome at the least client rate that meets ``target`` with this mix loop rate
    (within ``space.rate_tolerance``), or None if even ``space.max_rate`` does not. ``start``
    is the first rate, the first delay and the factor by which the rate is stepped until it
    is bracketed."""
    rate, delay, step = start

    def attempt(rate: float) -> Outcome | None:
        nonlocal delay
        outcome = _meets_at(judge, target, space, rate, mix_loop, delay)
        if outcome is not None:
            delay = outcome.rates.mean_delay or delay  # a warm start for the next rate
        return outcome

    rate = min(max(rate, space.min_rate), space.max_rate)
    best = attempt(rate)
    if best is None:  # climb until some rate meets it
        lo = rate
        while best is None:
            if rate >= space.max_rate:
                return None
            lo, rate = rate, min(step * rate, space.max_rate)
            best = attempt(rate)
        hi = rate
    else:  # descend until one does not
        hi = rate
        while True:
            if hi <= space.min_rate:
                return best
            lo = max(hi / step, space.min_rate)
            lower = attempt(lo)
            if lower is None:
                break
            hi, best = lo, lower
    while hi / lo > 1 + space.rate_tolerance:
        mid = math.sqrt(lo * hi)
        outcome = attempt(mid)
        if outcome is None:
            lo = mid
        else:
            hi, best = mid, outcome
    return best


def _meets_at(judge: _Judged, target: Target, space: Space, rate: float, mix_loop: float,
              start: float) -> Outcome | None:
    """The first outcome at client rate ``rate`` that meets ``target``, trying mean delays
    from ``start`` towards the latency limit; None once a measurement shows none can (or after
    ``space.delay_steps`` measurements without an answer)."""
    if space.rates(rate, 0, 0).payload_rate <= 0:
        return None
    ok: tuple[float, float] | None = None  # (delay, latency): latency met, entropy short
    over: tuple[float, float] | None = None  # (delay, latency): latency over, entropy met
    delay = min(start, space.max_delay)
    for _ in range(space.delay_steps):
        outcome = judge(space.rates(rate, mix_loop, delay))
        if outcome.meets(target):
            return outcome
        timely = outcome.latency_ok(target)
        if not timely and not outcome.entropy_ok(target):
            return None  # a shorter delay loses entropy, a longer one time: no delay works
        if timely:
            if delay >= space.max_delay or outcome.latency_median >= AIM * target.latency:
                return None  # short of entropy at (about) the longest delay allowed
            ok = (outcome.rates.mean_delay, outcome.latency_median)
        else:
            over = (outcome.rates.mean_delay, outcome.latency_median)
        nxt = _next_delay(ok, over, target.latency, space)
        if nxt is None or _round(nxt) == _round(delay):
            return None
        delay = nxt
    return None


def _next_delay(ok: tuple[float, float] | None, over: tuple[float, float] | None,
                limit: float, space: Space) -> float | None:
    """The next mean delay to try: a secant step on latency against delay towards the
    latency limit (aiming 3% inside it), kept strictly between the delays already bracketing
    it; None when the bracket has closed."""
    aim = AIM * limit
    if ok is not None and over is not None:
        (d0, l0), (d1, l1) = ok, over
        if d1 - d0 <= 1e-4 * max(d1, 1e-3):
            return None
        guess = d0 + (aim - l0) * (d1 - d0) / (l1 - l0) if l1 > l0 else (d0 + d1) / 2
        low, high = d0 + 0.1 * (d1 - d0), d1 - 0.1 * (d1 - d0)
        return min(max(guess, low), high)
    if ok is not None:  # only short of entropy so far: lengthen
        d0, l0 = ok
        # towards the limit if latency grows by about 5 s per second of mean delay (a route's
        # five delaying hops), at least doubling and at most x8 a step
        guess = max(d0 + (aim - l0) / 5, 2 * d0, 0.005)
        return min(guess, 8 * max(d0, 0.005), space.max_delay)
    assert over is not None  # only over the latency so far: shorten
    d1, l1 = over
    return d1 * min(0.5, max(aim / l1, 0.1)) if d1 > 1e-4 else None


def judge_with(topology: Topology, params: SimParams, evaluate: Evaluate, *,
               settle: float = 10.0) -> Callable[[Rates], Outcome]:
    """Return a judge that runs ``evaluate`` (shaped like :func:`zmix.sim.report.measure`) on
    ``topology`` with a candidate's rates and ``params`` (its seed fixed) and reads the
    :class:`Outcome` off the report."""
    def judge(rates: Rates) -> Outcome:
        topo = with_loopix(topology, **dataclasses.asdict(rates))
        _, report = evaluate(topo, params, corrupted=0.0, settle=settle)
        return outcome_of(rates, report)
    return judge


def outcome_of(rates: Rates, report: SimReport) -> Outcome:
    """Read the :class:`Outcome` of ``rates`` off a simulation report."""
    measured = report.simulated_s - float(report.params.get("warmup", 0.0))
    loops = report.packets.get("mix_loop", 0)
    share = loops * report.packet_bytes / measured / report.clients if measured > 0 else 0.0
    node = max(report.node_load, key=lambda n: n.received_per_s, default=None)
    return Outcome(
        rates=rates,
        sender_median=privacy_figure(report, "sender", "median"),
        sender_mean=privacy_figure(report, "sender", "mean"),
        receiver_median=privacy_figure(report, "receiver", "median"),
        max_bits=max_bits(report),
        latency_median=report.message_latency.median,
        latency_p95=report.message_latency.p95,
        client_bytes_per_s=report.client_up_bytes_per_s.mean,
        mix_loop_bytes_per_client=share,
        busiest_node=node.name if node is not None else "",
        busiest_node_per_s=busiest(report),
        loss=report.loss,
        messages=report.message_latency.count)


def fragment(rates: Rates, topology: Topology, comment: str = "") -> str:
    """Return the ``loopix:`` section of ``rates`` as YAML text (every key of the section, the
    rest taken from ``topology``, ``max_delay`` raised as :func:`with_loopix` does), to replace
    a topology's own; ``comment`` lines go first, each as a ``#`` line."""
    loopix = with_loopix(topology, **dataclasses.asdict(rates)).loopix
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    lines.append("loopix:")
    for name, value in _loopix_items(dataclasses.asdict(loopix)):
        lines.append(f"  {name}: {value!r}")
    return "\n".join(lines) + "\n"


def _loopix_items(values: dict[str, float]) -> Iterator[tuple[str, float]]:
    for name in ("mean_delay", "payload_rate", "loop_rate", "drop_rate", "mix_loop_rate",
                 "fetch_interval", "max_delay"):
        yield name, float(values[name])


def merged_topology(data: object, fragment_text: str, path: str) -> Topology:
    """Return the topology of YAML ``data`` (as read from ``path``) with its ``loopix:``
    section replaced by the one in ``fragment_text``, validated by the topology loader.
    Raises :class:`~zmix.errors.ConfigError` if the result is not a valid topology."""
    from zmix.errors import ConfigError
    from zmix.topology_yaml import parse_topology

    try:
        part = yaml.safe_load(fragment_text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, "loopix", f"the fragment is not YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(part, dict) or set(part) != {"loopix"}:
        raise ConfigError(path, "loopix", "the fragment and the topology must be mappings, "
                          "the fragment holding only loopix:")
    return parse_topology({**data, "loopix": part["loopix"]}, path)
