"""One circuit's stream end (zmix.tunnel.stream) on a fake clock: order, acks, loss,
retransmission, window, half-close, give-up; and the reply-block accounting of both ends."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from zmix.tunnel.frames import Ack, Data, Fin, Segment
from zmix.tunnel.stream import BlockLedger, BlockPurse, Stream, StreamConfig

EXIT = StreamConfig(resend_data=True, rto_initial=1.0, rto_min=0.5, rto_max=8.0)
PROXY = StreamConfig(resend_data=False, rto_initial=1.0, rto_min=0.5, rto_max=8.0)


def send(src: Stream, dst: Stream, now: float, *, room: int = 500,
         drop: Callable[[Segment], bool] = lambda segment: False) -> list[Segment]:
    """Move one message's worth of segments from ``src`` to ``dst``; return what was sent."""
    if not src.wants_to_send(now):
        return []
    batch = src.take(now, room)
    for segment in batch.segments:
        if not drop(segment):
            dst.receive(now, segment)
    if batch.answer:
        dst.request_ack(now)
    return list(batch.segments)


def drain(stream: Stream, now: float) -> bytes:
    """Take everything readable from ``stream``."""
    out = bytearray()
    while data := stream.readable():
        out += data
        stream.consume(len(data), now)
    return bytes(out)


def talk(a: Stream, b: Stream, start: float, until: float, step: float = 0.05,
         drop: Callable[[Segment], bool] = lambda segment: False) -> tuple[bytes, bytes, float]:
    """Run both ends on a fake clock; return what each read and the time it ended."""
    got_a, got_b = bytearray(), bytearray()
    now = start
    while now < until and not (a.done and b.done) and not (a.failed or b.failed):
        for src, dst in ((a, b), (b, a)):
            src.on_timer(now)
            while send(src, dst, now, drop=drop):
                pass
        got_a += drain(a, now)
        got_b += drain(b, now)
        now += step
    return bytes(got_a), bytes(got_b), now


def test_data_arrives_in_order_and_both_ends_finish_after_half_closes() -> None:
    a, b = Stream(EXIT, 0.0), Stream(PROXY, 0.0)
    a.write(b"x" * 3000)
    a.finish()
    b.write(b"y" * 700)
    b.finish()
    got_a, got_b, _ = talk(a, b, 0.0, 10.0)
    assert got_b == b"x" * 3000 and got_a == b"y" * 700
    assert a.done and b.done and a.eof and b.eof


def test_one_direction_can_end_while_the_other_keeps_sending() -> None:
    a, b = Stream(EXIT, 0.0), Stream(PROXY, 0.0)
    b.finish()  # the proxy's client half-closed at once
    a.write(b"first")
    talk(a, b, 0.0, 2.0)
    assert a.eof and not a.done and drain(b, 2.0) == b""
    a.write(b" and more")
    a.finish()
    _, got_b, _ = talk(a, b, 2.0, 6.0)
    assert got_b == b" and more" and a.done and b.done


def test_lost_segments_are_retransmitted_until_they_arrive() -> None:
    a, b = Stream(EXIT, 0.0), Stream(PROXY, 0.0)
    a.write(bytes(range(256)) * 20)
    a.finish()
    lost = {1, 3}

    def drop(segment: Segment) -> bool:
        if isinstance(segment, Data) and segment.seq in lost:
            lost.discard(segment.seq)  # lost once
            return True
        return False
    _, got_b, _ = talk(a, b, 0.0, 20.0, drop=drop)
    assert got_b == bytes(range(256)) * 20
    assert a.counters["retransmissions"] >= 2


def test_a_loss_is_repaired_by_a_later_ack_before_the_timeout() -> None:
    a = Stream(StreamConfig(resend_data=True, rto_initial=5.0, rto_min=5.0), 0.0)
    b = Stream(PROXY, 0.0)
    a.write(b"z" * 4000)
    first = a.take(0.0, 500)  # segment 0 (lost)
    later = a.take(0.6, 500)  # segment 1, sent well after it
    assert first.segments and later.segments
    for segment in later.segments:
        b.receive(0.7, segment)
    a.receive(0.8, b.ack())  # the ack shows 1 arrived, 0 did not (RTT 0.2 s: 0 is lost)
    assert a.wants_to_send(0.8) and a.rto > 0.8  # due before its timeout
    resent = a.take(0.8, 500).segments
    assert Data(0, first.segments[0].payload) in resent  # type: ignore[union-attr]


def test_reordered_and_duplicated_segments_are_delivered_once_in_order() -> None:
    a, b = Stream(EXIT, 0.0), Stream(PROXY, 0.0)
    a.write(b"".join(bytes([i]) * 100 for i in range(6)))
    segments = [s for s in a.take(0.0, 5000).segments if isinstance(s, Data)]
    assert len(segments) == 1  # one big one: cut smaller to reorder
    a2 = Stream(EXIT, 0.0)
    a2.write(b"".join(bytes([i]) * 100 for i in range(6)))
    pieces = [a2.take(0.0, 107).segments[0] for _ in range(6)]
    for segment in reversed(pieces + pieces[:2]):
        b.receive(0.1, segment)
    assert drain(b, 0.1) == b"".join(bytes([i]) * 100 for i in range(6))
    assert b.counters["duplicates"] == 2


def test_the_ack_carries_selective_ranges_of_what_came_out_of_order() -> None:
    a, b = Stream(EXIT, 0.0), Stream(PROXY, 0.0)
    a.write(b"q" * 1000)
    pieces = [a.take(0.0, 107).segments[0] for _ in range(8)]
    for index in (0, 2, 3, 6):
        b.receive(0.0, pieces[index])
    assert b.ack() == Ack(1, PROXY.window, ((2, 4), (6, 7)))  # edge: nothing read yet


def test_the_sender_stops_at_the_receivers_window_until_it_is_read() -> None:
    small = StreamConfig(resend_data=True, window=4)
    a, b = Stream(small, 0.0), Stream(small, 0.0)
    a.write(b"w" * 5000)
    sent = [s for _ in range(6) for s in a.take(0.0, 107).segments if isinstance(s, Data)]
    assert [s.seq for s in sent] == [0, 1, 2, 3]  # four segments, then the window is full
    for segment in sent:
        b.receive(0.0, segment)
    a.receive(0.1, b.ack())
    assert not a.take(0.1, 100_000).segments  # b has not read anything: the window is shut
    drain(b, 0.2)
    a.receive(0.2, b.take(0.2, 500).segments[0])  # the window update
    assert [s.seq for s in a.take(0.3, 100_000).segments if isinstance(s, Data)][:1] == [4]


def test_segments_beyond_the_window_are_refused() -> None:
    b = Stream(StreamConfig(window=4), 0.0)
    b.receive(0.0, Data(3, b"ok"))  # positive control: inside
    b.receive(0.0, Data(4, b"too far"))
    assert b.counters["out_of_window"] == 1 and b.ack().ranges == ((3, 4),)


def test_nothing_is_accepted_after_the_peers_fin() -> None:
    b = Stream(PROXY, 0.0)
    b.receive(0.0, Data(0, b"a"))
    b.receive(0.0, Fin(2))
    b.receive(0.0, Data(3, b"after"))
    b.receive(0.0, Data(5, b"after"))
    b.receive(0.0, Data(1, b"b"))  # positive control: before the FIN
    assert drain(b, 0.0) == b"ab" and b.eof and b.counters["out_of_window"] == 2


def test_an_ack_of_segments_never_sent_is_ignored_and_counted() -> None:
    a = Stream(EXIT, 0.0)
    a.write(b"abc")
    a.take(0.0, 500)
    a.receive(0.1, Ack(1, 64))  # positive control
    assert not a.unacknowledged
    a.receive(0.2, Ack(9, 64))
    assert a.counters["bad_acks"] == 1


def test_the_exit_gives_up_after_max_retries_without_an_ack() -> None:
    a, b = Stream(EXIT, 0.0), Stream(PROXY, 0.0)
    a.write(b"nobody listens")
    _, _, end = talk(a, b, 0.0, 200.0, drop=lambda segment: True)
    assert a.failed and a.counters["gave_up"] == 1
    assert a.counters["retransmissions"] == EXIT.max_retries - 1
    assert end < EXIT.idle_timeout  # the retries, not the idle timeout, ended it


def test_the_proxy_never_resends_data_but_asks_for_an_answer_then_gives_up() -> None:
    p = Stream(PROXY, 0.0)
    p.write(b"through the core")
    assert [type(s) for s in p.take(0.0, 500).segments] == [Data]
    asks = 0
    now = 0.0
    while not p.failed and now < 400:
        now += 0.25
        p.on_timer(now)
        if p.wants_to_send(now):
            batch = p.take(now, 500)
            assert not any(isinstance(s, Data) for s in batch.segments)
            asks += batch.answer
    assert p.failed and asks == PROXY.max_retries and p.counters["retransmissions"] == 0


def test_a_probe_answered_by_an_ack_ends_the_probing() -> None:
    p, x = Stream(PROXY, 0.0), Stream(EXIT, 0.0)
    p.write(b"hello")
    segment = p.take(0.0, 500).segments[0]
    x.receive(0.0, segment)
    assert p.probe_due(PROXY.rto_initial) and not p.probe_due(PROXY.rto_initial - 0.01)
    p.receive(0.5, x.ack())
    assert not p.probe_due(100.0) and not p.unacknowledged


def test_acks_of_in_order_data_wait_a_little_and_come_at_once_after_ack_every() -> None:
    a, b = Stream(EXIT, 0.0), Stream(PROXY, 0.0)
    a.write(b"d" * 20_000)
    pieces = [a.take(0.0, 107).segments[0] for _ in range(PROXY.ack_every)]
    b.receive(0.0, pieces[0])
    assert not b.wants_to_send(0.0) and b.wants_to_send(PROXY.ack_delay)
    assert b.next_deadline() == PROXY.ack_delay
    for segment in pieces[1:]:
        b.receive(0.01, segment)
    assert b.wants_to_send(0.01)


def test_the_idle_timeout_ends_a_stream_whose_acks_never_come() -> None:
    config = StreamConfig(resend_data=True, max_retries=1000, idle_timeout=30.0, rto_max=2.0)
    a = Stream(config, 0.0)
    a.write(b"x")
    a.take(0.0, 500)
    a.on_timer(29.0)
    assert not a.failed  # positive control
    a.on_timer(30.0)
    assert a.failed


def test_an_idle_stream_has_no_deadline() -> None:
    a = Stream(EXIT, 0.0)
    assert a.next_deadline() == math.inf and not a.wants_to_send(5.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 0.4), st.integers(1, 9000),
       st.integers(0, 3000))
def test_any_loss_duplication_and_reordering_still_delivers_both_ways(
        seed: int, loss: float, up: int, down: int) -> None:
    rng = random.Random(seed)
    patient = StreamConfig(resend_data=True, max_retries=100, idle_timeout=10_000.0)
    a, b = Stream(patient, 0.0), Stream(patient, 0.0)
    data_a, data_b = rng.randbytes(up), rng.randbytes(down)
    a.write(data_a)
    a.finish()
    b.write(data_b)
    b.finish()
    held: list[tuple[Stream, Segment]] = []
    got = {id(a): bytearray(), id(b): bytearray()}
    now = 0.0
    while not (a.done and b.done) and now < 600:
        for src, dst in ((a, b), (b, a)):
            src.on_timer(now)
            while src.wants_to_send(now):
                batch = src.take(now, rng.randrange(60, 600))
                if not batch.segments:
                    break
                for segment in batch.segments:
                    if rng.random() >= loss:
                        held.append((dst, segment))
                    if rng.random() < 0.1:
                        held.append((dst, segment))  # duplicated
        rng.shuffle(held)
        for dst, segment in held[:len(held) // 2 + 1]:
            dst.receive(now, segment)
        del held[:len(held) // 2 + 1]
        for stream in (a, b):
            got[id(stream)] += drain(stream, now)
        now += 0.1
    assert bytes(got[id(b)]) == data_a and bytes(got[id(a)]) == data_b
    assert a.done and b.done


def test_the_ledger_counts_blocks_fresh_until_half_their_lifetime() -> None:
    ledger = BlockLedger(lifetime=20.0)
    ledger.grant(0.0, 4)
    ledger.grant(5.0, 4)
    assert ledger.fresh(5.0) == 8
    ledger.report(5.0, 3)
    assert ledger.fresh(5.0) == 5  # the exit spends the oldest first
    assert ledger.fresh(10.0) == 4  # the first grant's last block is no longer trusted
    assert ledger.next_stale(10.0) == 15.0
    ledger.report(6.0, 2)  # an older report arriving late changes nothing
    assert ledger.fresh(10.0) == 4
    assert ledger.fresh(15.0) == 0 and ledger.next_stale(15.0) == math.inf


def test_the_purse_spends_the_oldest_handle_first_and_drops_beyond_its_limit() -> None:
    purse = BlockPurse(limit=6)
    assert purse.first() is None
    purse.add(b"h1", 2)
    purse.add(b"h2", 3)
    purse.spent()
    assert purse.first() == b"h1" and purse.held == 4 and purse.used == 1
    purse.spent()
    assert purse.first() == b"h2"
    assert purse.unusable() == 3 and purse.first() is None and purse.used == 5
    purse.add(b"h3", 4)
    assert purse.add(b"h4", 4) == 4 and purse.first() == b"h4"  # h3 dropped to stay within 6


def test_the_tunnels_sans_io_modules_import_no_zmq_and_no_socket() -> None:
    code = ("import sys\nimport zmix.tunnel.frames, zmix.tunnel.stream\n"
            "assert 'zmq' not in sys.modules and 'socket' not in sys.modules, "
            "sorted(m for m in sys.modules if 'zmq' in m or m == 'socket')\n"
            # the same check sees socket once the services are imported: it can fail
            "import zmix.runtime.tunnel\nassert 'socket' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
