"""The few error types of zmix.

Every zmix error derives from :class:`ZmixError`. A peer's misbehaviour (a bad packet, a frame that
does not parse) and our own misuse (a route that is too long, a message that does not fit) are
different types, so a node can count the first and fail loudly on the second.
"""

from __future__ import annotations

import enum


class ZmixError(Exception):
    """Base class of every error zmix raises on purpose."""


class LocalMisuse(ZmixError, ValueError):
    """The caller used an API wrongly: a bad argument, a size that cannot fit, a missing key."""


class ConfigError(ZmixError):
    """A configuration file is wrong. The message names the file, the key path and the problem."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}")


class DropReason(enum.Enum):
    """Why a packet or frame from a peer was dropped; the value is the counter's name."""

    WRONG_SIZE = "wrong_size"
    BAD_VERSION = "bad_version"
    BAD_POINT = "bad_point"
    BAD_MAC = "bad_mac"
    BAD_TAG = "bad_tag"
    BAD_COMMAND = "bad_command"
    REPLAY = "replay"
    QUEUE_FULL = "queue_full"
    UNKNOWN_NEXT_HOP = "unknown_next_hop"
    DELAY_TOO_LONG = "delay_too_long"
    BAD_FRAME = "bad_frame"
    UNEXPECTED_DELIVERY = "unexpected_delivery"
    UNKNOWN_PEER = "unknown_peer"
    MAILBOX_FULL = "mailbox_full"
    SHUTDOWN = "shutdown"
    WORKER_LOST = "worker_lost"


class RemoteError(ZmixError):
    """Something a peer sent is wrong. ``reason`` is for counters and logs, never for the peer."""

    def __init__(self, reason: DropReason) -> None:
        self.reason = reason
        super().__init__(self.public_text)

    public_text = "rejected"


class InvalidPacket(RemoteError):
    """A Sphinx packet failed a check. The text is the same whatever the reason."""

    public_text = "invalid packet"


class WireError(RemoteError):
    """A link frame failed to parse or has the wrong version or size."""

    public_text = "invalid frame"
