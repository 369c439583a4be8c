"""The node loop <-> worker messages: batches of jobs and of results survive the round trip."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix.errors import DropReason
from zmix.sphinx import FinalDelivery, ForwardHop, SurbReply
from zmix.workframes import (
    WorkerStats,
    decode_forward,
    decode_jobs,
    decode_result,
    encode_invalid,
    encode_jobs,
    encode_result,
    encode_stats,
    is_forward,
    join_results,
    split_results,
)

PACKET = 64  # the framing does not care about the Sphinx geometry, only that it is fixed

arrivals = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200)
@given(st.lists(st.tuples(arrivals, st.binary(min_size=PACKET, max_size=PACKET)), min_size=1,
                max_size=40))
def test_a_job_batch_round_trips(jobs: list[tuple[float, bytes]]) -> None:
    assert decode_jobs(encode_jobs(jobs), PACKET) == jobs


@pytest.mark.parametrize("length", [0, 1, PACKET + 7, 2 * (PACKET + 8) - 1])
def test_a_job_message_that_is_not_whole_jobs_is_refused(length: int) -> None:
    with pytest.raises(ValueError):
        decode_jobs(b"\0" * length, PACKET)


def _results() -> st.SearchStrategy[bytes]:
    ids, tags = st.binary(min_size=16, max_size=16), st.binary(min_size=0, max_size=64)
    delays, bodies = st.integers(0, 2**64 - 1), st.binary(max_size=300)
    forward = st.builds(ForwardHop, ids, delays, bodies, tags)
    final = st.builds(FinalDelivery, ids, delays, bodies, tags)
    reply = st.builds(SurbReply, ids, ids, delays, bodies, tags)
    return st.tuples(arrivals, forward | final | reply).map(lambda ar: encode_result(*ar))


@settings(max_examples=200)
@given(st.lists(_results() | st.sampled_from(list(DropReason)).map(
    lambda r: encode_invalid(1.5, r)), max_size=20))
def test_a_result_batch_round_trips(results: list[bytes]) -> None:
    assert split_results(join_results(3, 4242, results)) == (3, 4242, results)


def test_each_kind_of_result_decodes_to_what_was_encoded() -> None:
    tag, body, who = os.urandom(32), os.urandom(100), os.urandom(16)
    values = [ForwardHop(who, 7, body, tag), FinalDelivery(who, 0, body, tag),
              SurbReply(who, os.urandom(16), 9, body, tag)]
    message = join_results(1, 1234, [encode_result(2.5, v) for v in values]
                           + [encode_invalid(3.5, DropReason.BAD_MAC),
                              encode_stats(WorkerStats(1, 0.25, 10, 1234, 0.125))])
    index, pid, results = split_results(message)
    assert (index, pid) == (1, 1234)
    decoded = [decode_result(r) for r in results]
    assert decoded == [(2.5, v) for v in values] + [
        (3.5, DropReason.BAD_MAC), (0.0, WorkerStats(1, 0.25, 10, 1234, 0.125))]


def test_a_forward_result_reads_the_same_by_the_fast_path() -> None:
    hop = ForwardHop(os.urandom(16), 7, os.urandom(100), os.urandom(32))
    frame = encode_result(2.5, hop)
    assert is_forward(frame)
    assert decode_forward(frame) == (2.5, hop.next_hop, 7, hop.replay_tag, hop.packet)
    others = [encode_result(1.0, FinalDelivery(bytes(16), 0, b"m", bytes(32))),
              encode_invalid(1.0, DropReason.BAD_MAC),
              encode_stats(WorkerStats(0, 0.0, 0, 1, 0.0))]
    assert not any(is_forward(other) for other in others)


@pytest.mark.parametrize("body", [b"\x05", b"\x05\0\0\0abcd", b"\x01\0\0\0a\xff\xff\xff\xff"])
def test_a_result_message_with_a_length_past_its_end_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        split_results(b"\0" * 8 + body)


def test_a_result_message_without_its_sender_is_refused() -> None:
    with pytest.raises(ValueError):
        split_results(b"\0" * 7)
