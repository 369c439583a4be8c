"""What the client daemon offers the services that run inside it, and what it asks of them.

The daemon (``zmix.runtime.daemon``) runs one poll loop: the client runtime's sockets, the local
API's listeners and connections, and any service's own file descriptors (the SOCKS proxy's
listener and TCP connections, the exit's connections to destinations). A service never blocks and
never polls by itself; it says which descriptors it waits on and when it next has work, and the
daemon calls it back. It reaches the mixnet through a :class:`MixnetPort`.
"""

from __future__ import annotations

from typing import Protocol

from zmix.client import ReceivedMessage, SendProgress


class MixnetPort(Protocol):
    """The client, as a service inside the daemon sees it."""

    @property
    def name(self) -> str:
        """This client's name."""
        ...

    def send(self, now: float, recipient: str, data: bytes, *, anonymous: bool,
             reply_blocks: int) -> bytes:
        """Queue a message (in the client's store on disk when this returns); return its id.
        Raises LocalMisuse (unknown recipient, too many reply blocks) or NetworkExpired."""
        ...

    def reply(self, now: float, handle: bytes, data: bytes) -> bytes:
        """Queue a reply through one of ``handle``'s reply blocks; return its id. Raises
        LocalMisuse (too long, no usable reply block left) or NetworkExpired."""
        ...

    def progress(self, message_id: bytes) -> SendProgress:
        """Return how far a message or reply got (a reply: acked 1 once it left)."""
        ...

    def queued(self) -> int:
        """Return how many fragments and replies wait for the payload stream now."""
        ...

    def forward_capacity(self, reply_blocks: int) -> int:
        """Return the most bytes of data an anonymous message with ``reply_blocks`` reply blocks
        and no filename carries in one packet."""
        ...

    def reply_capacity(self) -> int:
        """Return the most bytes of data one reply carries (it is always one packet)."""
        ...

    def payload_rate(self) -> float:
        """Return lambda_P: packets per second the payload stream sends (real or drop)."""
        ...

    def is_client(self, name: str) -> bool:
        """Return True if ``name`` is a client of the current network."""
        ...


class Service(Protocol):
    """A part of the daemon with descriptors and timers of its own."""

    #: What the daemon puts before the names of :meth:`statistics` in its own (``proxy_``,
    #: ``exit_``), so that no service's figure shadows the client's or another's.
    statistics_prefix: str

    def poll_items(self) -> list[tuple[int, int]]:
        """Return the (file descriptor, zmq.POLLIN | zmq.POLLOUT mask) pairs to wait on now."""
        ...

    def on_ready(self, now: float, ready: dict[int, int]) -> None:
        """Handle the descriptors that are ready (descriptor -> events that occurred); only
        descriptors from the last :meth:`poll_items` appear."""
        ...

    def on_message(self, now: float, message: ReceivedMessage) -> bool:
        """Take a message that arrived for the client; return True if it was the service's
        (the daemon then marks it delivered and shows it to no API caller), False otherwise."""
        ...

    def on_timer(self, now: float) -> None:
        """Do what is due by ``now`` (retransmissions, time-outs); calling early is harmless."""
        ...

    def next_deadline(self) -> float:
        """Return the unix time of the service's next timer (``math.inf`` for none)."""
        ...

    def statistics(self) -> dict[str, int]:
        """Return the service's counters and gauges (names documented with the service)."""
        ...

    def close(self) -> None:
        """Close every descriptor the service holds."""
        ...
