"""The local API's frames (zmix/api/protocol.py, docs/api.md) and its documented tables."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmix.api.protocol import (
    CLOSING_ERRORS,
    ERRORS,
    MAX_FRAME,
    ApiError,
    FrameReader,
    b64decode,
    decode_object,
    encode,
)
from zmix.stats_schema import DAEMON_STATISTICS, client_markdown_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_a_frame_is_a_big_endian_length_then_json() -> None:
    frame = encode({"op": "status", "id": 1})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4 and decode_object(frame[4:]) == {"op": "status", "id": 1}


@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=20),
                                max_size=4), max_size=5),
       st.lists(st.integers(min_value=1, max_value=50), max_size=20))
def test_frames_split_anywhere_come_out_whole_and_in_order(
        objects: list[dict[str, object]], cuts: list[int]) -> None:
    stream = b"".join(encode(obj) for obj in objects)
    reader, got, at = FrameReader(), [], 0
    for cut in [*cuts, len(stream)]:
        got += reader.feed(stream[at:at + cut])
        at += cut
    got += reader.feed(stream[at:])
    assert [decode_object(body) for body in got] == objects and reader.buffered == 0


@given(st.binary(max_size=300))
def test_any_bytes_give_frames_or_an_api_error(data: bytes) -> None:
    reader = FrameReader(limit=200)
    try:
        for body in reader.feed(data):
            try:
                assert isinstance(decode_object(body), dict)
            except ApiError as exc:
                assert exc.code == "bad_json"
    except ApiError as exc:
        assert exc.code in ("bad_frame", "too_large")


def test_a_length_over_the_limit_is_refused_before_its_body_arrives() -> None:
    reader = FrameReader()
    with pytest.raises(ApiError) as refused:
        reader.feed(struct.pack(">I", MAX_FRAME + 1))
    assert refused.value.code == "too_large" and reader.buffered <= 4  # only the prefix
    assert FrameReader().feed(struct.pack(">I", 2) + b"{}") == [b"{}"]  # positive control
    with pytest.raises(ApiError) as empty:
        FrameReader().feed(struct.pack(">I", 0))
    assert empty.value.code == "bad_frame"


@pytest.mark.parametrize("body", [b"[1]", b"\xff", b"{", b"1", b'"x"', b"[" * 100000])
def test_a_body_that_is_not_a_json_object_is_bad_json(body: bytes) -> None:
    with pytest.raises(ApiError) as refused:
        decode_object(body)
    assert refused.value.code == "bad_json"


def test_base64_must_be_standard_and_padded() -> None:
    assert b64decode("aGk=", "data") == b"hi"
    for bad in ("aGk", "a-k=", "é"):
        with pytest.raises(ApiError) as refused:
            b64decode(bad, "data")
        assert refused.value.code == "bad_request" and "'data'" in refused.value.message


def test_the_documented_error_table_is_the_protocols() -> None:
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| (closed|kept) \|$", DOCS.read_text(), re.M)
    assert {code for code, _ in rows} == ERRORS
    assert {code for code, how in rows if how == "closed"} == CLOSING_ERRORS


def test_the_documented_statistics_table_is_the_schemas() -> None:
    table = client_markdown_table(DAEMON_STATISTICS)
    assert table in DOCS.read_text()
