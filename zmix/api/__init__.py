"""zmix's local API (docs/api.md): the frames, and thin clients of the client daemon."""

from zmix.api.aio import AsyncClient
from zmix.api.client import Client
from zmix.api.protocol import ApiError
from zmix.api.types import (
    AcknowledgedEvent,
    DaemonGone,
    Event,
    FailedEvent,
    Hello,
    Message,
    MessageEvent,
    NetworkEvent,
    Piece,
    Progress,
    ProgressEvent,
    ProtocolViolation,
    Sent,
    SentEvent,
    Status,
)

__all__ = ["AcknowledgedEvent", "ApiError", "AsyncClient", "Client", "DaemonGone", "Event",
           "FailedEvent", "Hello", "Message", "MessageEvent", "NetworkEvent", "Piece", "Progress",
           "ProgressEvent", "ProtocolViolation", "Sent", "SentEvent", "Status"]
