"""What a global passive adversary sees of a network, plus the ground truth a simulation knows.

Three records, in one stream ordered by time (docs/privacy.md, "The records"):

- :class:`Transmission`: one packet crossing one link at one time (what the adversary sees),
  with the id of the transmission that brought the same packet into its source (ground truth);
- :class:`Ending`: a packet that left a node without a transmission (discarded, home, expired);
- :class:`Origin`: who made a packet, what it is and whom it is for (ground truth only).

They are written and read as JSON lines (:func:`write_records`, :func:`read_records`). A real
network's nodes write per-node taps instead (docs/privacy.md, "Node taps"), which
:func:`merge_node_taps` turns into the same records. Every bad line raises :class:`RecordError`,
naming the file, the line and the problem.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmix.errors import ZmixError

KINDS = frozenset({"payload", "drop", "loop", "ack", "reply", "mix_loop"})
"""What an :class:`Origin` may say a packet is."""

CLIENT_KINDS = frozenset({"payload", "drop", "loop", "reply"})
"""The kinds a client makes (the others, ``ack`` and ``mix_loop``, a node makes)."""

_HEX16 = re.compile(r"[0-9a-f]{32}")


class RecordError(ZmixError):
    """A record, a records file or a node tap is wrong: names where (file and line, or the
    record's position in a stream) and what is wrong."""

    def __init__(self, source: str, where: str, problem: str) -> None:
        self.source = source
        self.where = where
        self.problem = problem
        super().__init__(f"{source}: {where}: {problem}")


@dataclass(frozen=True, slots=True)
class Transmission:
    """One packet crossing the link ``src -> dst`` at time ``t`` (seconds).

    ``xid`` is unique in its stream and increases in emit order; ``parent`` is the xid of the
    transmission that brought this same packet into ``src`` (the node's input -> output
    mapping, ground truth), or -1 when ``src`` made the packet."""

    t: float
    src: str
    dst: str
    xid: int
    parent: int


@dataclass(frozen=True, slots=True)
class Ending:
    """The packet that transmission ``xid`` brought into ``node`` left it at ``t`` without a
    transmission (a drop discarded, a loop home, an item expired, a packet refused)."""

    t: float
    node: str
    xid: int


@dataclass(frozen=True, slots=True)
class Origin:
    """Ground truth for the packet whose first transmission is ``xid``: its ``kind`` (one of
    :data:`KINDS`), the member that made it, the client it is for ("" for drops and mix loops)
    and the id its message's fragments share ("" when it carries none)."""

    xid: int
    kind: str
    sender: str
    recipient: str
    message: str


Record = Transmission | Ending | Origin


# ---------------------------------------------------------------------------- record files

def encode_record(record: Record) -> str:
    """Return ``record`` as one JSON object on one line (no newline), keys in the documented
    order."""
    if isinstance(record, Transmission):
        obj: dict[str, Any] = {"T": "tx", "t": record.t, "src": record.src, "dst": record.dst,
                               "xid": record.xid, "parent": record.parent}
    elif isinstance(record, Ending):
        obj = {"T": "end", "t": record.t, "node": record.node, "xid": record.xid}
    else:
        obj = {"T": "origin", "xid": record.xid, "kind": record.kind, "sender": record.sender,
               "recipient": record.recipient, "message": record.message}
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


_FIELDS = {
    "tx": ("T", "t", "src", "dst", "xid", "parent"),
    "end": ("T", "t", "node", "xid"),
    "origin": ("T", "xid", "kind", "sender", "recipient", "message"),
}


def decode_record(line: bytes | str, source: str = "<records>", lineno: int = 1) -> Record:
    """Return the record one JSON line holds.

    Raises :class:`RecordError` (naming ``source`` and ``lineno``) for anything else: bad UTF-8
    or JSON, not an object, an unknown ``T``, missing or extra keys, a value of the wrong type
    or range."""
    obj = _json_object(line, source, lineno)
    kind = obj.get("T")
    fields = _FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise RecordError(source, f"line {lineno}", f'"T" must be one of {sorted(_FIELDS)}')
    _exact_keys(obj, fields, source, lineno)
    get = _Getter(obj, source, lineno)
    if kind == "tx":
        return Transmission(get.time("t"), get.name("src"), get.name("dst"), get.xid("xid"),
                            get.integer("parent", -1))
    if kind == "end":
        return Ending(get.time("t"), get.name("node"), get.xid("xid"))
    origin_kind = get.text("kind")
    if origin_kind not in KINDS:
        raise RecordError(source, f"line {lineno}", f'"kind" must be one of {sorted(KINDS)}')
    return Origin(get.xid("xid"), origin_kind, get.name("sender"), get.text("recipient"),
                  get.text("message"))


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """Write ``records`` to ``path`` as JSON lines (one record a line, "\\n" after each);
    return how many."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for record in records:
            out.write(encode_record(record))
            out.write("\n")
            count += 1
    return count


class RecordWriter:
    """Writes records to a JSON-lines file one at a time, as a simulation makes them (the
    format of :func:`write_records`); :meth:`close` when done."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._out = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        self.count = 0

    def write(self, record: Record) -> None:
        """Append ``record`` as one line."""
        self._out.write(encode_record(record))
        self._out.write("\n")
        self.count += 1

    def close(self) -> None:
        """Flush and close the file."""
        self._out.close()


def read_records(path: str | Path) -> Iterator[Record]:
    """Yield the records of a JSON-lines file one at a time (blank lines are skipped).

    Raises :class:`RecordError` naming the file and line of the first bad line, or the file
    when it cannot be read."""
    name = str(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 (a generator: closed by the with below)
    except OSError as exc:
        raise RecordError(name, "file", exc.strerror or str(exc)) from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            if line.strip():
                yield decode_record(line, name, lineno)


# ---------------------------------------------------------------------------- node taps

@dataclass(frozen=True, slots=True)
class TapLine:
    """One line of a node's tap: ``ev`` is "in", "out" or "end"; ``peer`` is "" for "end";
    ``parent`` is "" when the line has none (an "in", an "end", or an "out" of a packet the
    node made)."""

    t: float
    ev: str
    peer: str
    h: str
    parent: str


_TAP_FIELDS = {
    "in": ("t", "ev", "peer", "h"),
    "out": ("t", "ev", "peer", "h", "parent"),
    "end": ("t", "ev", "h"),
}


def decode_tap_line(line: bytes | str, source: str = "<tap>", lineno: int = 1) -> TapLine:
    """Return one line of a node tap. Raises :class:`RecordError` naming ``source`` and
    ``lineno`` for anything that is not a tap line as docs/privacy.md describes it."""
    obj = _json_object(line, source, lineno)
    ev = obj.get("ev")
    fields = _TAP_FIELDS.get(ev) if isinstance(ev, str) else None
    if fields is None:
        raise RecordError(source, f"line {lineno}", f'"ev" must be one of {sorted(_TAP_FIELDS)}')
    _exact_keys(obj, fields, source, lineno)
    get = _Getter(obj, source, lineno)
    peer = get.name("peer") if "peer" in fields else ""
    parent = ""
    if ev == "out" and obj["parent"] is not None:
        parent = get.digest("parent")
    return TapLine(get.time("t"), str(ev), peer, get.digest("h"), parent)


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What :func:`merge_node_taps` made: the records in causal time order, and how many tap
    lines it read and skipped (``unknown_members``: a line of an unknown node, or naming an
    unknown peer; ``unresolved``: a line whose parent packet, or whose packet for an "end",
    never came into that node, and every line that depended on it)."""

    records: tuple[Record, ...]
    lines: int
    unknown_members: int
    unresolved: int


def merge_node_taps(paths: Mapping[str, str | Path], members: Collection[str]) -> MergeResult:
    """Merge the per-node taps of a real network (node name -> its tap file) into
    :class:`Transmission` and :class:`Ending` records with fresh xids, in time order, each
    after its parent (a line met before its parent waits for it and takes its parent's time).

    Raises :class:`RecordError` for a file that cannot be read or a malformed line."""
    known = frozenset(members)
    lines: list[tuple[float, int, int, str, TapLine]] = []
    total = unknown = 0
    for order, (node, path) in enumerate(paths.items()):
        for lineno, tap in _read_tap(path):
            total += 1
            if node not in known or (tap.peer and tap.peer not in known):
                unknown += 1
            else:
                lines.append((tap.t, order, lineno, node, tap))
    lines.sort(key=lambda item: item[:3])
    merger = _Merger()
    for _, _, _, node, tap in lines:
        merger.feed(node, tap)
    return MergeResult(tuple(merger.records), total, unknown, merger.waiting_lines())


def _read_tap(path: str | Path) -> Iterator[tuple[int, TapLine]]:
    """Yield (line number, line) of one node tap; blank lines are skipped."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RecordError(name, "file", exc.strerror or str(exc)) from None
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            yield lineno, decode_tap_line(line, name, lineno)


class _Merger:
    """Turns time-sorted tap lines into records. ``arrived`` maps (node, h) to the xid of the
    transmission that brought packet h into that node; a line whose packet has not arrived yet
    waits under that key."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.arrived: dict[tuple[str, str], tuple[int, float]] = {}
        self.waiting: dict[tuple[str, str], list[tuple[str, TapLine]]] = {}
        self.xid = -1

    def feed(self, node: str, tap: TapLine) -> None:
        """Emit ``tap`` (and every line that was waiting for it) or make it wait."""
        stack = [(node, tap, tap.t)]
        while stack:
            node, tap, now = stack.pop()
            key = self._needs(node, tap)
            if key is not None and key not in self.arrived:
                self.waiting.setdefault(key, []).append((node, tap))
                continue
            released = self._emit(node, tap, now, key)
            if released is not None:
                t, waiters = released
                stack.extend((n, w, max(w.t, t)) for n, w in reversed(waiters))

    def _needs(self, node: str, tap: TapLine) -> tuple[str, str] | None:
        """The (node, h) a line needs to have arrived first, or None."""
        if tap.ev == "end":
            return (node, tap.h)
        if tap.ev == "out" and tap.parent:
            return (node, tap.parent)
        return None

    def _emit(self, node: str, tap: TapLine, now: float, key: tuple[str, str] | None
              ) -> tuple[float, list[tuple[str, TapLine]]] | None:
        """Append the record of one line; return the lines that waited for its packet."""
        parent = -1
        t = now
        if key is not None:
            parent, since = self.arrived.pop(key)
            t = max(now, since)
        if tap.ev == "end":  # an ending takes no xid of its own
            self.records.append(Ending(t, node, parent))
            return None
        self.xid += 1
        if tap.ev == "in":
            self.records.append(Transmission(t, tap.peer, node, self.xid, -1))
            arrival = (node, tap.h)
        else:
            self.records.append(Transmission(t, node, tap.peer, self.xid, parent))
            arrival = (tap.peer, tap.h)
        self.arrived[arrival] = (self.xid, t)
        waiters = self.waiting.pop(arrival, None)
        return None if waiters is None else (t, waiters)

    def waiting_lines(self) -> int:
        """How many lines never met the packet they needed."""
        return sum(len(w) for w in self.waiting.values())


# ---------------------------------------------------------------------------- parsing helpers

def _json_object(line: bytes | str, source: str, lineno: int) -> dict[str, Any]:
    """Parse one line as a JSON object, or raise :class:`RecordError`."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        problem = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise RecordError(source, f"line {lineno}", f"not a JSON line ({problem})") from None
    if not isinstance(obj, dict):
        raise RecordError(source, f"line {lineno}", "not a JSON object")
    return obj


def _exact_keys(obj: dict[str, Any], fields: tuple[str, ...], source: str, lineno: int) -> None:
    """Raise :class:`RecordError` unless ``obj`` has exactly the keys ``fields``."""
    missing = [f for f in fields if f not in obj]
    if missing:
        raise RecordError(source, f"line {lineno}", f"missing {', '.join(missing)}")
    extra = sorted(set(obj) - set(fields))
    if extra:
        raise RecordError(source, f"line {lineno}", f"unknown key {extra[0]!r}")


class _Getter:
    """Typed reads of one parsed line's values, each raising :class:`RecordError`."""

    def __init__(self, obj: dict[str, Any], source: str, lineno: int) -> None:
        self.obj = obj
        self.source = source
        self.where = f"line {lineno}"

    def _fail(self, key: str, problem: str) -> RecordError:
        return RecordError(self.source, self.where, f'"{key}" {problem}')

    def time(self, key: str) -> float:
        value = self.obj[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, "must be a number")
        try:
            result = float(value)
        except OverflowError:
            raise self._fail(key, "must be a finite number") from None
        if not math.isfinite(result):
            raise self._fail(key, "must be a finite number")
        return result

    def integer(self, key: str, least: int) -> int:
        value = self.obj[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "must be an integer")
        if value < least:
            raise self._fail(key, f"must be at least {least}")
        return value

    def xid(self, key: str) -> int:
        return self.integer(key, 0)

    def text(self, key: str) -> str:
        value = self.obj[key]
        if not isinstance(value, str):
            raise self._fail(key, "must be a string")
        return value

    def name(self, key: str) -> str:
        value = self.text(key)
        if not value:
            raise self._fail(key, "must not be empty")
        return value

    def digest(self, key: str) -> str:
        value = self.text(key)
        if not _HEX16.fullmatch(value):
            raise self._fail(key, "must be 32 lowercase hex digits")
        return value
