"""Messages too large to travel inline (docs/api.md, "read"): the daemon's choice of what to
inline, and the thin clients reading the rest in pieces."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver_fake import FakeDaemon

from zmix.api import AsyncClient, Client, MessageEvent, ProtocolViolation
from zmix.api.protocol import b64encode
from zmix.client import ReceivedMessage
from zmix.runtime.daemon import INLINE_BYTES, _inlined

ID = bytes(range(16))
BODY = "héllo, a large message".encode()


def received(size: int, n: int = 0) -> ReceivedMessage:
    return ReceivedMessage(bytes([n]) * 16, "bob", b"x" * size, None, 1.0, None)


def test_messages_are_inlined_while_their_sizes_fit_the_budget() -> None:
    small, large = received(10, 1), received(INLINE_BYTES + 1, 2)
    objects = _inlined([small, large, received(5, 3)], budget=12)
    assert [o["data"] is not None for o in objects] == [True, False, False]  # 10, then 5 > 2
    assert [o["bytes"] for o in objects] == [10, INLINE_BYTES + 1, 5]
    assert "text" not in objects[1] and objects[0]["text"] == "x" * 10
    assert _inlined([received(INLINE_BYTES)], budget=10 * INLINE_BYTES)[0]["data"] is not None


def large_message() -> dict[str, Any]:
    return {"message_id": ID.hex(), "from": "bob", "bytes": len(BODY), "data": None,
            "filename": None, "received_at": 1790000001.25, "reply_handle": None}


def piece(offset: int, size: int) -> dict[str, Any]:
    return {"ok": True, "message_id": ID.hex(), "offset": offset, "bytes": len(BODY),
            "data": b64encode(BODY[offset:offset + size])}


@pytest.fixture
def daemon() -> Iterator[tuple[FakeDaemon, Path]]:
    with tempfile.TemporaryDirectory(prefix="zapi", dir="/tmp") as folder:
        (Path(folder) / "clients" / "alice").mkdir(parents=True)
        with FakeDaemon(unix_path=Path(folder) / "clients" / "alice" / "api.sock") as fake:
            yield fake, Path(folder)


def test_the_blocking_client_reads_a_large_message_in_pieces(
        daemon: tuple[FakeDaemon, Path]) -> None:
    fake, state = daemon
    fake.script("inbox", {"ok": True, "messages": [large_message()]})
    fake.script("read", piece(0, 7))
    fake.script("read", piece(7, 100))
    with Client.connect(state=state, name="alice", timeout=5) as client:
        [message] = client.inbox()
    assert message.data == BODY and message.text == BODY.decode() and message.complete


def test_pieces_that_do_not_make_up_the_message_are_a_protocol_violation(
        daemon: tuple[FakeDaemon, Path]) -> None:
    fake, state = daemon
    fake.script("inbox", {"ok": True, "messages": [large_message()]})
    fake.script("read", piece(3, 100))  # not from the start
    with Client.connect(state=state, name="alice", timeout=5) as client, \
            pytest.raises(ProtocolViolation):
        client.inbox()


def test_the_asyncio_client_reads_a_large_message_event_before_handing_it_out(
        daemon: tuple[FakeDaemon, Path]) -> None:
    fake, state = daemon
    fake.script("subscribe", {"ok": True}, {"event": "message", **large_message()})
    fake.script("read", piece(0, 5))
    fake.script("read", piece(5, 100))

    async def scenario() -> MessageEvent:
        async with await AsyncClient.connect(state=state, name="alice", timeout=5) as client:
            await client.subscribe(["message"])
            event = await client.next_event(5)
            assert isinstance(event, MessageEvent)
            return event

    event = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert event.message.data == BODY and event.message.complete
