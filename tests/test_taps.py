"""The adversary's records as JSON lines (zmix.sim.taps), and the merger of a real network's
per-node taps into them."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmix.sim.adversary import analyse
from zmix.sim.taps import (
    Ending,
    MergeResult,
    Origin,
    Record,
    RecordError,
    TapLine,
    Transmission,
    decode_record,
    decode_tap_line,
    encode_record,
    merge_node_taps,
    read_records,
    write_records,
)

SAMPLE: list[Record] = [
    Origin(0, "payload", "c0", "c1", "m-1"),
    Transmission(1800000000.25, "c0", "p0", 0, -1),
    Transmission(1800000001.0, "p0", "m0", 1, 0),
    Ending(1800000002.5, "m0", 1),
    Origin(2, "mix_loop", "m0", "", ""),
    Transmission(1e-300, "m0", "p0", 2, -1),
    Transmission(3.0, "p0", "clïent ☃", 3, 2),
]


def test_records_written_and_read_back_are_equal(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    assert write_records(path, SAMPLE) == len(SAMPLE)
    assert list(read_records(path)) == SAMPLE
    assert path.read_bytes().count(b"\n") == len(SAMPLE)


def test_each_record_is_one_json_object_in_the_documented_form() -> None:
    assert encode_record(Transmission(1.5, "c0", "p0", 0, -1)) == \
        '{"T":"tx","t":1.5,"src":"c0","dst":"p0","xid":0,"parent":-1}'
    assert encode_record(Ending(2.0, "m0", 7)) == '{"T":"end","t":2.0,"node":"m0","xid":7}'
    assert encode_record(Origin(3, "drop", "c0", "", "")) == \
        '{"T":"origin","xid":3,"kind":"drop","sender":"c0","recipient":"","message":""}'


def test_a_reader_accepts_any_spacing_and_integer_times() -> None:
    line = '{ "T": "tx", "t": 2, "src": "a", "dst": "b", "xid": 1, "parent": -1 }'
    assert decode_record(line) == Transmission(2.0, "a", "b", 1, -1)


BAD_LINES = {
    "not a JSON line": b"{",
    "not a JSON object": b"[1, 2]",
    '"T" must be one of': b'{"T": "rx"}',
    "missing parent": b'{"T":"tx","t":1,"src":"a","dst":"b","xid":0}',
    "unknown key 'z'": b'{"T":"end","t":1,"node":"a","xid":0,"z":1}',
    '"t" must be a number': b'{"T":"end","t":"1","node":"a","xid":0}',
    '"t" must be a finite number': b'{"T":"end","t":NaN,"node":"a","xid":0}',
    '"xid" must be an integer': b'{"T":"end","t":1,"node":"a","xid":true}',
    '"xid" must be at least 0': b'{"T":"end","t":1,"node":"a","xid":-1}',
    '"parent" must be at least -1': b'{"T":"tx","t":1,"src":"a","dst":"b","xid":0,"parent":-2}',
    '"node" must not be empty': b'{"T":"end","t":1,"node":"","xid":0}',
    '"kind" must be one of': b'{"T":"origin","xid":0,"kind":"x","sender":"a","recipient":"",'
                             b'"message":""}',
    "not a JSON line (UnicodeDecodeError)": b'{"T":"\xff"}',
}


@pytest.mark.parametrize("problem", sorted(BAD_LINES))
def test_a_bad_line_names_the_file_the_line_and_the_problem(tmp_path: Path,
                                                            problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = encode_record(SAMPLE[1]).encode()
    path.write_bytes(good + b"\n\n" + BAD_LINES[problem] + b"\n")
    records = read_records(path)
    assert next(records) == SAMPLE[1]  # positive control: the good line before it
    with pytest.raises(RecordError) as caught:
        next(records)
    assert caught.value.source == str(path)
    assert caught.value.where == "line 3"  # the blank line 2 is skipped, but counted
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{path}: line 3: ")


def test_a_missing_file_is_a_record_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"missing\.jsonl: file: "):
        list(read_records(tmp_path / "missing.jsonl"))


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4),
                    st.sampled_from(["tx", "end", "origin", "payload", "in", "out", "a" * 32]))
_KEYS = st.sampled_from(["T", "t", "src", "dst", "xid", "parent", "node", "kind", "sender",
                         "recipient", "message", "ev", "peer", "h", "zz"])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_record_or_a_record_error(data: bytes) -> None:
    with contextlib.suppress(RecordError):
        assert isinstance(decode_record(data), Transmission | Ending | Origin)
    with contextlib.suppress(RecordError):
        assert isinstance(decode_tap_line(data), TapLine)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=8))
def test_any_json_object_gives_a_record_or_a_record_error(obj: dict[str, object]) -> None:
    line = json.dumps(obj)
    for decode in (decode_record, decode_tap_line):
        with contextlib.suppress(RecordError):
            decode(line)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([encode_record(r).encode() for r in SAMPLE]) | st.binary(
    max_size=40), max_size=6))
def test_any_file_reads_as_records_or_a_record_error_naming_its_line(
        tmp_path: Path, lines: list[bytes]) -> None:
    path = tmp_path / "any.jsonl"
    path.write_bytes(b"\n".join(lines))
    read = 0
    try:
        for record in read_records(path):
            assert isinstance(record, Transmission | Ending | Origin)
            read += 1
    except RecordError as exc:
        assert exc.source == str(path) and exc.where.startswith("line ")
        assert int(exc.where.split()[1]) > read


def test_deeply_nested_json_is_a_record_error() -> None:
    with pytest.raises(RecordError):
        decode_record("[" * 100_000)


# ---------------------------------------------------------------------------- node taps

H = {i: f"{i:032x}" for i in range(1, 12)}


def _tap(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _network_taps(tmp_path: Path) -> dict[str, Path]:
    """A provider p0 takes c0's packet to m0 (and refuses a second one), m0 (its clock a little
    behind) forwards it to p1 and sends a mix loop through p1, p1 hands the packet to c1 in a
    fetch; plus lines naming strangers and a fetch of a packet p1 never received."""
    p0 = _tap(tmp_path / "p0.jsonl", [
        {"t": 1.0, "ev": "in", "peer": "c0", "h": H[1]},
        {"t": 1.2, "ev": "in", "peer": "c0", "h": H[5]},
        {"t": 1.3, "ev": "end", "h": H[5]},
        {"t": 1.5, "ev": "out", "peer": "m0", "h": H[2], "parent": H[1]},
        {"t": 1.6, "ev": "in", "peer": "zz", "h": H[7]},
    ])
    m0 = _tap(tmp_path / "m0.jsonl", [
        {"t": 1.4, "ev": "out", "peer": "p1", "h": H[3], "parent": H[2]},
        {"t": 2.5, "ev": "out", "peer": "p1", "h": H[6], "parent": None},
        {"t": 2.7, "ev": "out", "peer": "yy", "h": H[9], "parent": None},
    ])
    p1 = _tap(tmp_path / "p1.jsonl", [
        {"t": 2.6, "ev": "end", "h": H[6]},
        {"t": 3.0, "ev": "out", "peer": "c1", "h": H[4], "parent": H[3]},
        {"t": 3.1, "ev": "out", "peer": "c1", "h": H[8], "parent": H[10]},
    ])
    return {"p0": p0, "m0": m0, "p1": p1}


MEMBERS = ("c0", "c1", "p0", "p1", "m0")


def test_node_taps_merge_into_records_in_causal_time_order(tmp_path: Path) -> None:
    merged = merge_node_taps(_network_taps(tmp_path), MEMBERS)
    assert merged.records == (
        Transmission(1.0, "c0", "p0", 0, -1),
        Transmission(1.2, "c0", "p0", 1, -1),
        Ending(1.3, "p0", 1),
        Transmission(1.5, "p0", "m0", 2, 0),
        Transmission(1.5, "m0", "p1", 3, 2),  # logged at 1.4, before its parent: takes 1.5
        Transmission(2.5, "m0", "p1", 4, -1),
        Ending(2.6, "p1", 4),
        Transmission(3.0, "p1", "c1", 5, 3),  # the fetch, parent the packet that came in
    )
    assert (merged.lines, merged.unknown_members, merged.unresolved) == (11, 2, 1)


def test_merged_taps_are_a_stream_the_adversary_reads(tmp_path: Path) -> None:
    merged = merge_node_taps(_network_taps(tmp_path), MEMBERS)
    report = analyse(merged.records, ["c0", "c1"], ["p0", "p1", "m0"], providers=["p0", "p1"])
    assert report.sender_targets == (0,)  # no Origin: every client's packet is a target
    assert report.sender_bits == (0.0,)  # c0 was alone
    assert report.sender_ended == 1  # the second one, refused at p0
    # Both were in p0's pool when one was refused: each is half lost, half fetched by c1.
    assert report.receiver_targets == (0, 1) and report.receiver_bits == (0.0, 0.0)
    assert report.receiver_lost == (0.5, 0.5)


def test_a_tap_of_a_node_outside_the_topology_is_counted_and_skipped(tmp_path: Path) -> None:
    taps = _network_taps(tmp_path)
    known = merge_node_taps(taps, MEMBERS)
    assert known.unknown_members == 2  # positive control
    without_m0 = merge_node_taps(taps, ("c0", "c1", "p0", "p1"))
    assert without_m0.unknown_members == 3 + 1 + 1  # m0's own lines, p0's zz, p0's line to m0
    assert without_m0.unresolved == 3  # p1's end and fetch never meet their packets; its stray
    assert without_m0.records == (Transmission(1.0, "c0", "p0", 0, -1),
                                  Transmission(1.2, "c0", "p0", 1, -1), Ending(1.3, "p0", 1))


def test_a_lost_parent_leaves_the_whole_rest_of_its_route_unresolved(tmp_path: Path) -> None:
    taps = _network_taps(tmp_path)
    lines = taps["p0"].read_text().splitlines()
    taps["p0"].write_text("\n".join(line for line in lines if '"in"' not in line or H[1]
                                     not in line) + "\n")
    merged = merge_node_taps(taps, MEMBERS)
    assert merged.unresolved == 4  # p0 -> m0, m0 -> p1 and p1 -> c1 of that packet, p1's stray
    assert isinstance(merged, MergeResult)


def test_a_bad_tap_line_names_its_file_and_line(tmp_path: Path) -> None:
    taps = _network_taps(tmp_path)
    merge_node_taps(taps, MEMBERS)  # positive control
    with taps["m0"].open("a") as out:
        out.write('{"t": 3, "ev": "out", "peer": "p1", "h": "XYZ", "parent": null}\n')
    with pytest.raises(RecordError) as caught:
        merge_node_taps(taps, MEMBERS)
    assert caught.value.source == str(taps["m0"]) and caught.value.where == "line 4"
    assert "32 lowercase hex digits" in caught.value.problem


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.fixed_dictionaries({
    "t": st.floats(0, 10) | st.integers(0, 10),
    "ev": st.sampled_from(["in", "out", "end"]),
    "peer": st.sampled_from(["c0", "c1", "p0", "m0", "zz"]),
    "h": st.sampled_from([H[1], H[2], H[3]]),
    "parent": st.none() | st.sampled_from([H[1], H[2], H[3]]),
}), max_size=12), st.binary(max_size=30))
def test_any_tap_file_merges_or_raises_a_record_error(tmp_path: Path,
                                                      lines: list[dict[str, object]],
                                                      junk: bytes) -> None:
    rng = random.Random(len(lines))
    path = tmp_path / "node.jsonl"
    text = b"".join(json.dumps({k: v for k, v in line.items()
                                if line["ev"] == "out" or k in ("t", "ev", "h")
                                or (k == "peer" and line["ev"] == "in")}).encode() + b"\n"
                    for line in lines)
    data = text + (junk if rng.random() < 0.3 else b"")
    path.write_bytes(data)
    try:
        merged = merge_node_taps({"p0": path, "m0": path}, ("c0", "c1", "p0", "m0"))
    except RecordError:
        return
    times = [r.t for r in merged.records if not isinstance(r, Origin)]
    assert times == sorted(times)
    assert len(merged.records) + merged.unknown_members + merged.unresolved <= merged.lines
