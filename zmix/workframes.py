"""The frames between a node loop and its Sphinx workers: job batches and key sets out, result
batches back.

Pure functions over bytes (no sockets), so the node's sans-IO centre (:mod:`zmix.nodecentre`)
reads results and builds job batches itself; :mod:`zmix.runtime.workers` moves them. The layout
(docs/architecture.md, "Worker frames"):

    work message    = b"J" || group*                         jobs (as many as fit the batch)
                    | b"K" || (epoch u32-le || private key 32)*   the Sphinx keys, in trial order
    group           = arrival (f64 little-endian) || count (u16-le) || count x packet
                                                (packets that arrived at one moment, in one frame)
    result message  = index u32-le || pid u32-le || (length u32-le || result)*
                                                (the worker's index and pid; one result per job)
    result          = kind (1 byte) || arrival (f64) || fields...
        b"F" forward:  epoch u32 | delay_us u64 | next_hop 16 | tag_len u8 | tag | packet
        b"D" deliver:  epoch u32 | delay_us u64 | recipient 16 | tag_len u8 | tag | message
        b"R" reply:    epoch u32 | delay_us u64 | recipient 16 | surb_id 16 | tag_len u8 | tag
                       | payload
        b"X" invalid:  reason (utf-8, a DropReason value)
        b"S" stats:    (arrival field = 0) index u32 | cpu_seconds f64 | processed u64 | pid u32
                       | sphinx_seconds f64

``epoch`` is the epoch of the key that opened the packet: the node checks the replay tag in that
epoch's filter. A key set replaces the worker's previous one whole (the worker zeroes the old
keys); a worker takes jobs only after its first key set (the node sends it first).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from zmix.errors import DropReason, LocalMisuse
from zmix.sphinx import FinalDelivery, ForwardHop, SurbReply
from zmix.wire import Buffer

Result = ForwardHop | FinalDelivery | SurbReply

_ARRIVAL = struct.Struct("<d")
_GROUP = struct.Struct("<dH")  # arrival, packets
_LENGTH = struct.Struct("<I")
_FROM = struct.Struct("<II")  # worker index, worker pid
_HEAD = struct.Struct("<cdIQ16s")  # kind, arrival, key epoch, delay_us, recipient-or-next-hop
_KEY = struct.Struct("<I32s")  # epoch, X25519 private key
JOBS, KEYS = b"J", b"K"  # the first byte of a work message
_STATS = struct.Struct("<cdIdQId")
STATS_INTERVAL = 0.5  # seconds between a worker's utilisation reports


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """A worker's cumulative CPU time and packet count, as last reported.

    ``sphinx_seconds`` is the part of its CPU time spent in ``process_packet`` (and in encoding
    each result, under a microsecond): the rest is messaging and the process's own upkeep."""

    index: int
    cpu_seconds: float
    processed: int
    pid: int
    sphinx_seconds: float


JobGroup = tuple[float, Buffer, int]  # (arrival, count packets back to back, count)


def encode_jobs(jobs: list[tuple[float, bytes]]) -> bytes:
    """Return the work message for packets given as ``(arrival, packet)``, all of one length:
    one group per packet (the node groups the packets of a frame: :func:`encode_groups`)."""
    return encode_groups([(arrival, packet, 1) for arrival, packet in jobs])


def encode_groups(groups: Sequence[JobGroup]) -> bytes:
    """Return the work message for ``groups``: each ``(arrival, packets, count)``, ``packets``
    being ``count`` packets back to back (the packets of one frame, a view of it), 1 to 65,535."""
    pack = _GROUP.pack
    return b"".join([JOBS, *(part for arrival, packets, count in groups
                             for part in (pack(arrival, count), packets))])


def decode_jobs(message: Buffer, packet_length: int) -> list[tuple[float, bytes]]:
    """Return the ``(arrival, packet)`` pairs of a job message (a memoryview of the message
    read: each packet is then copied once, into bytes); ValueError if it is not one: not
    ``b"J"``, no group, or a group whose packets run past the end or short of it."""
    if bytes(message[:1]) != JOBS or len(message) == 1:
        raise ValueError("a job message is b'J' and at least one group")
    unpack, head, end = _GROUP.unpack_from, _GROUP.size, len(message)
    jobs, at = [], 1
    while at < end:
        if end - at < head:
            raise ValueError("a job message ends inside a group's head")
        arrival, count = unpack(message, at)
        at += head
        stop = at + count * packet_length
        if count == 0 or stop > end:
            raise ValueError(f"a group of {count} packets of {packet_length} bytes does not fit")
        jobs += [(arrival, bytes(message[p:p + packet_length]))
                 for p in range(at, stop, packet_length)]
        at = stop
    return jobs


def encode_keys(keys: Sequence[tuple[int, bytes | bytearray]]) -> bytearray:
    """Return the key message for ``(epoch, private key)`` pairs, in the order to try them.

    A bytearray, so the sender can zero it once sent. LocalMisuse if a key is not 32 bytes or an
    epoch does not fit a u32."""
    message = bytearray(KEYS)
    for epoch, key in keys:
        if len(key) != _KEY.size - 4 or not 0 <= epoch < 2**32:
            raise LocalMisuse("a key set holds 32-byte keys of epochs 0..2**32-1")
        message += epoch.to_bytes(4, "little")
        message += key
    return message


def decode_keys(message: bytes | bytearray | memoryview) -> list[tuple[int, bytearray]]:
    """Return the ``(epoch, private key)`` pairs of a key message, each key in its own
    bytearray (its holder zeroes it when it is replaced); ValueError if it is not one."""
    if bytes(message[:1]) != KEYS or (len(message) - 1) % _KEY.size:
        raise ValueError(f"a key message is b'K' and a multiple of {_KEY.size} bytes")
    return [(int.from_bytes(message[at:at + 4], "little"), bytearray(message[at + 4:at + 36]))
            for at in range(1, len(message), _KEY.size)]


def is_keys(message: bytes | bytearray | memoryview) -> bool:
    """Return True if a work message is a key set (read it with :func:`decode_keys`)."""
    return bytes(message[:1]) == KEYS


def join_results(index: int, pid: int, results: list[bytes]) -> bytes:
    """Return the message in which worker ``index`` (process ``pid``) sends ``results`` (each
    from :func:`encode_result` & co.)."""
    pack = _LENGTH.pack
    return b"".join([_FROM.pack(index, pid),
                     *(part for result in results for part in (pack(len(result)), result))])


def results_head(index: int, pid: int) -> bytes:
    """Return the start of worker ``index``'s (process ``pid``) result message; the results
    follow as :func:`result_parts` (``join_results`` of encoded results, without building each
    result's bytes first: a forwarded packet is copied once into the message, not twice)."""
    return _FROM.pack(index, pid)


def result_parts(arrival: float, epoch: int, result: Result) -> list[bytes]:
    """Return :func:`encode_result`'s frame with its length prefix, as parts to join."""
    tag = result.replay_tag
    if isinstance(result, ForwardHop):
        head = _HEAD.pack(b"F", arrival, epoch, result.delay_us, result.next_hop)
        body, extra = result.packet, b""
    elif isinstance(result, FinalDelivery):
        head = _HEAD.pack(b"D", arrival, epoch, result.delay_us, result.recipient)
        body, extra = result.message, b""
    else:
        head = _HEAD.pack(b"R", arrival, epoch, result.delay_us, result.recipient)
        body, extra = result.payload, result.surb_id
    size = len(head) + len(extra) + 1 + len(tag) + len(body)
    return [_LENGTH.pack(size), head, extra, bytes((len(tag),)), tag, body]


def split_results(message: Buffer) -> tuple[int, int, list[Buffer]]:
    """Return ``(index, pid, results)`` from a result message; ValueError if it is cut short.
    The results are slices of ``message``: memoryviews of a message read without a copy."""
    if len(message) < _FROM.size:
        raise ValueError("a result message starts with the worker's index and pid")
    index, pid = _FROM.unpack_from(message)
    results, at, end = [], _FROM.size, len(message)
    unpack = _LENGTH.unpack_from
    while at < end:
        if end - at < _LENGTH.size:
            raise ValueError("a result message ends inside a length field")
        (size,) = unpack(message, at)
        at += _LENGTH.size
        if size > end - at:
            raise ValueError("a result runs past the end of its message")
        results.append(message[at:at + size])
        at += size
    return index, pid, results


def encode_result(arrival: float, epoch: int, result: Result) -> bytes:
    """Return the result frame for a packet that the key of ``epoch`` opened."""
    return b"".join(result_parts(arrival, epoch, result)[1:])


def encode_invalid(arrival: float, reason: DropReason) -> bytes:
    """Return the result frame for a packet the worker rejected."""
    return b"X" + _ARRIVAL.pack(arrival) + reason.value.encode()


def invalid_parts(arrival: float, reason: DropReason) -> list[bytes]:
    """Return :func:`encode_invalid`'s frame with its length prefix, as :func:`result_parts`."""
    frame = encode_invalid(arrival, reason)
    return [_LENGTH.pack(len(frame)), frame]


def encode_stats(stats: WorkerStats) -> bytes:
    """Return a worker's statistics frame."""
    return _STATS.pack(b"S", 0.0, stats.index, stats.cpu_seconds, stats.processed, stats.pid,
                       stats.sphinx_seconds)


def is_forward(frame: Buffer) -> bool:
    """Return True if ``frame`` is the result of a forward hop (read it with
    :func:`decode_forward`)."""
    return frame[:1] == b"F"


def decode_forward(frame: Buffer) -> tuple[float, int, bytes, int, bytes, Buffer]:
    """Return ``(arrival, epoch, next_hop, delay_us, replay_tag, packet)`` of a forward hop's
    result frame: :func:`decode_result` without building a :class:`ForwardHop`, for the node
    loop's hot path (nearly every result is one). The packet is a slice of ``frame`` (a
    memoryview of one read without a copy: the node copies it once, into the frame to the next
    hop, or into bytes if it must wait)."""
    _, arrival, epoch, delay_us, next_hop = _HEAD.unpack_from(frame)
    tag_end = _HEAD.size + 1 + frame[_HEAD.size]
    return arrival, epoch, next_hop, delay_us, bytes(frame[_HEAD.size + 1:tag_end]), \
        frame[tag_end:]


def _tag_and_body(frame: bytes, offset: int) -> tuple[bytes, bytes]:
    """Return the length-prefixed replay tag at ``offset`` and the body after it."""
    tag_end = offset + 1 + frame[offset]
    return frame[offset + 1:tag_end], frame[tag_end:]


def decode_result(frame: bytes) -> tuple[float, int, Result | DropReason | WorkerStats]:
    """Return ``(arrival, epoch, value)`` from a result frame written by :func:`encode_result`
    & co.; ``epoch`` is the key's for a processed packet, 0 for an invalid one or statistics."""
    kind = frame[:1]
    if kind == b"S":
        _, _, index, cpu, processed, pid, sphinx = _STATS.unpack(frame)
        return 0.0, 0, WorkerStats(index, cpu, processed, pid, sphinx)
    if kind == b"X":
        return _ARRIVAL.unpack_from(frame, 1)[0], 0, DropReason(frame[9:].decode())
    _, arrival, epoch, delay_us, who = _HEAD.unpack_from(frame)
    offset = _HEAD.size
    surb_id = b""
    if kind == b"R":
        surb_id, offset = frame[offset:offset + 16], offset + 16
    tag, body = _tag_and_body(frame, offset)
    if kind == b"F":
        return arrival, epoch, ForwardHop(who, delay_us, body, tag)
    if kind == b"D":
        return arrival, epoch, FinalDelivery(who, delay_us, body, tag)
    return arrival, epoch, SurbReply(who, surb_id, delay_us, body, tag)
