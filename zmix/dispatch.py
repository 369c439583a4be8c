"""Which Sphinx worker gets which batch of packets: the node's dispatch bookkeeping, sans-IO.

The node hands every packet it reads to :class:`Dispatcher`, which keeps them until a worker can
take them, cuts them into batches and picks the worker for each batch; the runtime only sends the
message it is given (the ``send`` callable: False when that worker's socket would block). The
dispatcher also keeps what each worker holds, so that a dead worker's packets are written off
when it is replaced, and the node-wide ``in_flight`` count that bounds how much the node reads.

A worker gets jobs only once it holds the node's Sphinx keys: a process is recorded unkeyed when
it starts (:meth:`Dispatcher.started`, :meth:`Dispatcher.replaced`); the node sends it the key set
when its first statistics report shows it is up (:meth:`Dispatcher.wants_keys`), and
:meth:`Dispatcher.keyed` records that the key set went out. Jobs sent after it on the same socket
reach the worker after it, so no worker sees a packet before its keys.
"""

from __future__ import annotations

from collections.abc import Callable

from zmix.wire import Buffer
from zmix.workframes import JobGroup, encode_groups

MAX_IN_FLIGHT = 4_096  # packets handed to workers and not yet back
JOB_BATCH = 32  # packets in one message to a worker, at most
# packets given to one worker and not yet answered, at most: about 18 ms of kem1 work, so a
# worker does not run dry while the node loop waits for a core (docs/performance.md)
WORKER_QUEUE = 256
LOW_WATER = 8  # a worker holding fewer packets than this is about to run dry: it gets any batch

Job = tuple[float, bytes]  # (arrival, packet)
Cursor = tuple[int, int]  # (group, packets of it already taken)
SendJobs = Callable[[int, bytes], bool]  # (worker index, job message) -> sent?


class Dispatcher:
    """The packets waiting for a worker, and what each of ``workers`` workers holds."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a node needs at least one worker")
        # Packets read, not yet given to a worker: the packets of a frame stay together, one
        # group, and go to a worker as they are (no object per packet on the node loop).
        self._groups: list[JobGroup] = []
        self.waiting = 0  # packets in them
        self.outstanding = [0] * workers  # packets each worker holds
        self.in_flight = 0  # packets read and not yet back from a worker (or written off)
        self.pids: list[int | None] = [None] * workers  # the process now at each index
        self.lost = 0  # packets written off with dead workers
        self.has_keys = [False] * workers  # the key set went to the process now at each index

    def accepting(self) -> bool:
        """Return True while fewer than ``MAX_IN_FLIGHT`` packets are in flight: the node reads
        its inbound socket only then, so an overloaded node pushes back on its upstream links."""
        return self.in_flight < MAX_IN_FLIGHT

    @property
    def jobs(self) -> list[Job]:
        """The packets waiting, in order, as ``(arrival, packet)`` (a copy, to look at)."""
        return [(arrival, bytes(packets[at:at + len(packets) // count]))
                for arrival, packets, count in self._groups
                for at in range(0, len(packets), len(packets) // count)]

    def add(self, now: float, packet: Buffer) -> None:
        """Take a packet that arrived at ``now``; it waits until :meth:`dispatch` hands it on."""
        self.add_frame(now, packet, 1)

    def add_frame(self, now: float, packets: Buffer, count: int) -> None:
        """Take ``count`` packets of one length, back to back in ``packets`` (a view of the
        frame they came in), that arrived at ``now``, as :meth:`add` each."""
        self._groups.append((now, packets, count))
        self.waiting += count
        self.in_flight += count

    def dispatch(self, send: SendJobs) -> int:
        """Hand the waiting packets to the workers, each batch to the worker holding the fewest;
        return how many packets were handed over.

        A quiet node sends batches of one, at once: its workers hold nothing. A worker that
        holds ``LOW_WATER`` packets or more is busy for a while yet, and gets only whole batches
        (``JOB_BATCH``) that fit within the ``WORKER_QUEUE`` packets it may hold; fewer packets
        wait for a whole batch, or for a worker to run low, which costs them nothing (no worker
        would start on them sooner) and keeps the batches large under load. Each message costs
        the node loop, its I/O thread and the worker a send, a receive and a wake-up: a batch of
        32 costs a worker about 5 us of messaging per packet, a batch of one about 35 us
        (measured; docs/performance.md). The workers running low share what waits evenly,
        up to ``JOB_BATCH`` each. A batch the chosen worker cannot take goes to the next one
        that can; if none can, the packets wait for the next call."""
        ready = [i for i, keyed in enumerate(self.has_keys) if keyed]
        outstanding = self.outstanding
        low = sum(1 for i in ready if outstanding[i] < LOW_WATER)
        share = min(JOB_BATCH, -(-self.waiting // max(1, low)))  # ceil(waiting / workers low)
        cursor, handed = (0, 0), 0
        while handed < self.waiting and ready:
            index = min(ready, key=outstanding.__getitem__)
            held, waiting = outstanding[index], self.waiting - handed
            if held < LOW_WATER:  # running low: it takes its share of what waits
                size = min(share, waiting)
            elif waiting >= JOB_BATCH:  # busy: a whole batch, or nothing
                size = JOB_BATCH
            else:
                break
            if WORKER_QUEUE - held < size:
                break
            chunk, after = self._cut(cursor, size)
            if not self._send(index, ready, chunk, size, send):
                break
            cursor, handed = after, handed + size
        if handed:
            self._drop_taken(cursor)
            self.waiting -= handed
        return handed

    def _cut(self, cursor: Cursor, size: int) -> tuple[list[JobGroup], Cursor]:
        """Return the groups of the next ``size`` waiting packets from ``cursor`` (a group cut
        at a packet's end where the batch ends) and the cursor after them."""
        groups, chunk = self._groups, []
        index, taken = cursor
        while size:
            arrival, packets, count = groups[index]
            length = len(packets) // count
            part = min(size, count - taken)
            chunk.append((arrival, packets[taken * length:(taken + part) * length]
                          if part < count else packets, part))
            size -= part
            taken += part
            if taken == count:
                index, taken = index + 1, 0
        return chunk, (index, taken)

    def _drop_taken(self, cursor: Cursor) -> None:
        """Forget the groups before ``cursor`` and the packets taken from the one at it."""
        index, taken = cursor
        rest = self._groups[index:]
        if taken:
            arrival, packets, count = rest[0]
            length = len(packets) // count
            rest[0] = (arrival, packets[taken * length:], count - taken)
        self._groups = rest

    def _send(self, first: int, ready: list[int], chunk: list[JobGroup], size: int,
              send: SendJobs) -> bool:
        """Send ``chunk`` (``size`` packets) to worker ``first``, or else to the first other
        ``ready`` worker that takes it."""
        message = encode_groups(chunk)
        for index in (first, *(i for i in ready if i != first)):
            if send(index, message):
                self.outstanding[index] += size
                return True
        return False

    def returned(self, index: int, pid: int, packets: int) -> None:
        """Count ``packets`` that worker ``index`` (process ``pid``) sent back.

        Results a worker sent before it died and was replaced are still used, but they are no
        longer counted as held: its packets were written off by :meth:`replaced`."""
        if packets and 0 <= index < len(self.outstanding) and pid == self.pids[index]:
            self.outstanding[index] = max(0, self.outstanding[index] - packets)
            self.in_flight = max(0, self.in_flight - packets)

    def started(self, index: int, pid: int | None) -> None:
        """Record the process now at ``index`` (its results are the ones counted); it gets no
        jobs until :meth:`keyed`."""
        self.pids[index] = pid
        self.has_keys[index] = False

    def wants_keys(self, index: int, pid: int) -> bool:
        """Return True if worker ``index``, which just reported as process ``pid``, is the
        process now at that index and has not been sent the key set."""
        return 0 <= index < len(self.pids) and pid == self.pids[index] and (
            not self.has_keys[index])

    def keyed(self, index: int, sent: bool = True) -> None:
        """Record that the key set went to worker ``index`` (``sent``), or that it must go
        again (False: a new set could not be sent; the worker gets no jobs until it is)."""
        self.has_keys[index] = sent

    def replaced(self, index: int, pid: int | None) -> int:
        """Write off what the dead worker at ``index`` held, record its successor ``pid``, and
        return how many packets were lost with it."""
        lost, self.outstanding[index] = self.outstanding[index], 0
        self.in_flight = max(0, self.in_flight - lost)
        self.pids[index] = pid
        self.has_keys[index] = False
        self.lost += lost
        return lost

    def timeout_cap_ms(self) -> int | None:
        """Return how soon the loop should try again when packets wait for a worker, or None."""
        return 10 if self.waiting else None
