"""The local API's frames (docs/api.md), pure: length-prefixed JSON objects, both ways.

Shared by the daemon (``zmix.runtime.api``) and the thin clients (``zmix.api``). Nothing here
touches a socket: :class:`FrameReader` takes the bytes read and returns whole frames,
:func:`encode` returns the bytes to write.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

from zmix.errors import ZmixError

API_VERSION = 1
SOCKET_FILE = "api.sock"  # in the client's folder STATE/clients/NAME (docs/api.md)
TOKEN_FILE = "api.token"  # noqa: S105 - a file name, not a secret: where the TCP token is
MAX_FRAME = 16 * 1024 * 1024  # bytes of JSON in one frame (docs/api.md, "Framing")
_LENGTH = struct.Struct(">I")

# Error codes (docs/api.md's table) and whether the daemon closes the connection after sending one.
CLOSING_ERRORS = frozenset({"bad_frame", "too_large", "unauthorized", "busy"})
ERRORS = CLOSING_ERRORS | {"bad_json", "unknown_op", "bad_request", "unknown_recipient",
                           "too_long", "no_reply_block", "unknown_message", "offline"}
EVENTS = ("message", "progress", "acknowledged", "failed", "sent", "network")


class ApiError(ZmixError):
    """An API error: ``code`` is one of :data:`ERRORS`, ``str(self)`` says it for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(obj: dict[str, Any]) -> bytes:
    """Return ``obj`` as one frame. Raises ApiError("too_large") if its JSON is over MAX_FRAME."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ApiError("too_large", f"a frame holds at most {MAX_FRAME} bytes, this one "
                                    f"would be {len(body)}")
    return _LENGTH.pack(len(body)) + body


def decode_object(body: bytes) -> dict[str, Any]:
    """Return the JSON object in a frame's body. Raises ApiError("bad_json") for anything else."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError("bad_json", "the frame is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise ApiError("bad_json", "the frame holds JSON that is not an object")
    return obj


class FrameReader:
    """Splits a byte stream into frame bodies.

    :meth:`feed` returns the bodies completed by ``data``; it raises ApiError ("bad_frame" for a
    length of 0, "too_large" over ``limit``) as soon as a length prefix is read that no frame may
    have, without buffering the body, after which the stream cannot be read on.
    """

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._need: int | None = None  # the body length being read, once its prefix is in

    @property
    def buffered(self) -> int:
        """Return how many bytes of an incomplete frame are held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Take ``data``; return the frame bodies it completed, in order."""
        self._buffer += data
        bodies: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buffer) < _LENGTH.size:
                    return bodies
                (need,) = _LENGTH.unpack_from(self._buffer)
                if need == 0:
                    raise ApiError("bad_frame", "a frame of length 0")
                if need > self._limit:
                    raise ApiError("too_large", f"a frame of {need} bytes; at most "
                                                f"{self._limit} are allowed")
                del self._buffer[:_LENGTH.size]
                self._need = need
            if len(self._buffer) < self._need:
                return bodies
            bodies.append(bytes(self._buffer[:self._need]))
            del self._buffer[:self._need]
            self._need = None


def b64encode(data: bytes) -> str:
    """Return ``data`` as standard base64 text with padding."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, field: str) -> bytes:
    """Return the bytes of base64 ``text``. Raises ApiError("bad_request") naming ``field``."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ApiError("bad_request", f"{field!r} is not standard base64") from None


def error_answer(request_id: Any, error: ApiError) -> dict[str, Any]:
    """Return the answer object saying ``error`` for a request with ``request_id``."""
    return {"id": request_id, "ok": False, "error": error.code, "message": error.message}
