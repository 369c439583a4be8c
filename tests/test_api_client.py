"""The thin clients of the local API (zmix.api), against a scripted fake daemon on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.apiserver_fake import CLOSE, HOLD, STATUS, FakeDaemon, message_object
from zmix.api import (
    AcknowledgedEvent,
    ApiError,
    AsyncClient,
    Client,
    DaemonGone,
    Hello,
    Message,
    MessageEvent,
    NetworkEvent,
    Progress,
    ProgressEvent,
    ProtocolViolation,
    Sent,
    SentEvent,
    Status,
)
from zmix.api.protocol import CLOSING_ERRORS, ERRORS, encode
from zmix.api.session import Session
from zmix.api.types import parse_event, parse_hello, parse_inbox, parse_progress, parse_status

ROOT = Path(__file__).resolve().parent.parent
MID = "ab" * 16  # a message id, as hex


@pytest.fixture
def state() -> Iterator[Path]:
    """A short state folder (a Unix socket path must fit in 108 bytes) with clients/alice."""
    with tempfile.TemporaryDirectory(prefix="zapi", dir="/tmp") as folder:
        (Path(folder) / "clients" / "alice").mkdir(parents=True)
        yield Path(folder)


@pytest.fixture
def daemon(state: Path) -> Iterator[FakeDaemon]:
    """A fake daemon of alice on STATE/clients/alice/api.sock."""
    with FakeDaemon(unix_path=state / "clients" / "alice" / "api.sock") as fake:
        yield fake


def connect(state: Path, timeout: float = 5.0) -> Client:
    """Return a blocking client of the fake daemon of alice."""
    return Client.connect(state=state, name="alice", timeout=timeout)


def run(coroutine: Any) -> Any:
    """Run a coroutine to its end, bounded (a hang fails the test)."""
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, 20)
    return asyncio.run(bounded())


# --- answers, events, typed results ---------------------------------------------------------

def test_connect_greets_the_daemon_and_keeps_its_hello(daemon: FakeDaemon, state: Path) -> None:
    with connect(state) as client:
        assert client.info == Hello(1, "alice", "zmix-fake", "provider-1", 16777216, 1994, 4)
    assert daemon.requests[0]["op"] == "hello"


def test_send_gives_the_message_id_and_events_that_came_before_the_answer_are_queued(
        daemon: FakeDaemon, state: Path) -> None:
    with connect(state) as client:
        client.subscribe()
        daemon.script("send", {"event": "network", "epoch": 9},
                      {"event": "progress", "message_id": MID, "fragments": 2, "acked": 1},
                      {"ok": True, "message_id": "01" * 16, "fragments": 3})
        assert client.send("bob", "hi") == Sent(bytes.fromhex("01" * 16), 3)
        assert client.next_event(1) == NetworkEvent(9)
        assert client.next_event(1) == ProgressEvent(bytes.fromhex(MID), 2, 1)
        assert client.next_event(0.05) is None


def test_send_carries_text_as_text_and_bytes_as_base64_with_its_options(
        daemon: FakeDaemon, state: Path) -> None:
    with connect(state) as client:
        client.send("bob", "héllo")
        client.send("bob", b"\xff\x00", filename="x.bin", anonymous=True, reply_blocks=2)
    first, second = daemon.requests[-2:]
    assert first["text"] == "héllo" and "data" not in first
    assert second["data"] == "/wA=" and second["filename"] == "x.bin"
    assert second["anonymous"] is True and second["reply_blocks"] == 2


def test_inbox_status_progress_and_ack_give_typed_results(daemon: FakeDaemon,
                                                          state: Path) -> None:
    daemon.deliver(bytes.fromhex(MID), b"hello", reply_handle=b"\x07" * 8)
    with connect(state) as client:
        [message] = client.inbox()
        assert message == Message(bytes.fromhex(MID), "bob", b"hello", "hello", None,
                                  1790000001.25, b"\x07" * 8)
        status = client.status()
        assert isinstance(status, Status) and status.inbox == 1
        assert status.statistics == {"queued": 0, "loops_sent": 4}
        assert status.loop_routes == {("alice", "provider-1", "mix-a1", "provider-1", "alice"):
                                      (3, 1)}
        sent = client.send("bob", b"x")
        assert client.progress(sent.message_id) == Progress(sent.message_id, 1, 0, False, False)
        client.ack(message.message_id)
        assert client.inbox() == []


def test_a_message_that_is_not_utf8_has_no_text(daemon: FakeDaemon, state: Path) -> None:
    daemon.deliver(bytes.fromhex(MID), b"\xff\xfe", sender=None)
    with connect(state) as client:
        [message] = client.inbox()
    assert message.text is None and message.data == b"\xff\xfe" and message.sender is None


def test_subscribe_replays_the_inbox_then_events_come_as_they_happen(
        daemon: FakeDaemon, state: Path) -> None:
    daemon.deliver(bytes.fromhex(MID), b"old")
    with connect(state) as client:
        client.subscribe(["message"])
        event = client.next_event(2)
        assert isinstance(event, MessageEvent) and event.message.data == b"old"
        daemon.deliver(bytes.fromhex("cd" * 16), b"new")
        event = client.next_event(2)
        assert isinstance(event, MessageEvent) and event.message.data == b"new"


def test_wait_done_returns_once_the_acknowledged_event_comes(daemon: FakeDaemon,
                                                             state: Path) -> None:
    with connect(state) as client:
        sent = client.send("bob", "hi")
        started = time.monotonic()
        daemon.script("progress", lambda request: {"ok": True, "message_id": request[
            "message_id"], "fragments": 1, "acked": 0, "failed": False, "done": False},
            lambda request: daemon.acknowledge(request["message_id"]))
        progress = client.wait_done(sent.message_id, timeout=5)
        assert progress == Progress(sent.message_id, 1, 1, False, True)
        assert time.monotonic() - started < 2
        # wait_done subscribed for itself: its events are not handed to the caller
        assert client.next_event(0.1) is None
    assert [r["op"] for r in daemon.requests][-3:] == ["subscribe", "progress", "progress"]


def test_wait_done_times_out_loudly_when_nothing_comes(daemon: FakeDaemon, state: Path) -> None:
    with connect(state) as client:
        sent = client.send("bob", "hi")
        with pytest.raises(TimeoutError, match=sent.message_id.hex()):
            client.wait_done(sent.message_id, timeout=0.3)
        daemon.acknowledge(sent.message_id.hex())  # positive control: now it is done
        assert client.wait_done(sent.message_id, timeout=2).done


def test_wait_done_leaves_the_callers_events_in_the_queue(daemon: FakeDaemon,
                                                          state: Path) -> None:
    with connect(state) as client:
        client.subscribe()
        sent = client.send("bob", "hi")
        daemon.script("progress", lambda request: {"ok": True, "message_id": request[
            "message_id"], "fragments": 1, "acked": 0, "failed": False, "done": False},
            lambda request: daemon.acknowledge(request["message_id"]))
        assert client.wait_done(sent.message_id, timeout=5).done
        assert client.next_event(1) == ProgressEvent(sent.message_id, 1, 1)
        assert client.next_event(1) == AcknowledgedEvent(sent.message_id, 1)


def test_a_subscribe_made_by_wait_done_shows_no_message_twice(daemon: FakeDaemon,
                                                              state: Path) -> None:
    daemon.deliver(bytes.fromhex(MID), b"once")
    with connect(state) as client:
        client.subscribe(["message"])
        assert isinstance(client.next_event(2), MessageEvent)
        sent = client.send("bob", "hi")
        daemon.acknowledge(sent.message_id.hex())
        assert client.wait_done(sent.message_id, timeout=5).done
        assert daemon.requests[-2]["op"] == "subscribe"  # which replayed the inbox
        assert client.next_event(0.2) is None
        client.subscribe(["message"])  # positive control: asked by the caller, it is shown
        assert isinstance(client.next_event(2), MessageEvent)


def test_reply_returns_the_replys_id_and_its_sent_event_comes(daemon: FakeDaemon,
                                                               state: Path) -> None:
    with connect(state) as client:
        client.subscribe(["sent"])
        reply_id = client.reply(b"\x07" * 8, "answer")
        assert daemon.requests[-1]["handle"] == "07" * 8
        assert client.next_event(2) == SentEvent(reply_id)
        assert client.wait_done(reply_id, timeout=2).done


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("code", sorted(ERRORS))
def test_every_error_code_is_raised_as_an_api_error_with_its_code(
        daemon: FakeDaemon, state: Path, code: str) -> None:
    with connect(state) as client:
        assert client.status().online  # positive control
        daemon.script("status", {"ok": False, "error": code, "message": f"said {code}"},
                      *([CLOSE] if code in CLOSING_ERRORS else []))
        with pytest.raises(ApiError) as raised:
            client.status()
        assert raised.value.code == code and str(raised.value) == f"said {code}"
        assert not isinstance(raised.value, ProtocolViolation)
        if code in CLOSING_ERRORS:
            with pytest.raises(DaemonGone, match=code):
                client.status()
        else:
            assert client.status().online  # the connection stays usable


def test_an_error_without_an_id_is_the_answer_to_the_oldest_request(daemon: FakeDaemon,
                                                                     state: Path) -> None:
    with connect(state) as client:
        daemon.script("status", {"id": None, "ok": False, "error": "bad_json", "message": "x"})
        with pytest.raises(ApiError, match="x"):
            client.status()
        assert client.status().online


def test_a_busy_daemon_refuses_at_connect(state: Path) -> None:
    path = state / "clients" / "alice" / "api.sock"
    busy = {"id": None, "ok": False, "error": "busy", "message": "too many connections"}
    with FakeDaemon(unix_path=path, on_accept=[busy, CLOSE]), \
            pytest.raises(ApiError) as raised:
        connect(state)
    assert raised.value.code == "busy"


def test_a_busy_refusal_is_reported_even_when_the_first_write_fails(state: Path) -> None:
    # The fake says busy and closes at once, so the client's hello often meets a closed socket
    # (EPIPE or ECONNRESET); over a hundred tries both clients must still report busy.
    path = state / "clients" / "alice" / "api.sock"
    busy = {"id": None, "ok": False, "error": "busy", "message": "too many connections"}

    async def refusals() -> list[str]:
        codes = []
        for _ in range(100):
            with pytest.raises(ApiError) as raised:
                await AsyncClient.connect(path)
            codes.append(raised.value.code)
        return codes

    with FakeDaemon(unix_path=path, on_accept=[busy, CLOSE]) as daemon:
        assert run(refusals()) == ["busy"] * 100
        for _ in range(100):
            with pytest.raises(ApiError) as raised:
                Client.connect(path)
            assert raised.value.code == "busy"
        daemon.on_accept = []  # positive control: without the refusal, both connect
        with Client.connect(path) as client:
            assert client.info is not None

        async def greeted() -> Hello | None:
            async with await AsyncClient.connect(path) as client:
                return client.info
        assert run(greeted()) is not None


def test_connecting_without_a_daemon_says_to_start_one(state: Path) -> None:
    with pytest.raises(DaemonGone, match="zmix-client --state"):
        connect(state)
    with pytest.raises(ConnectionError):  # DaemonGone is a ConnectionError
        connect(state)


def test_a_daemon_that_closes_the_connection_raises_daemon_gone(daemon: FakeDaemon,
                                                                 state: Path) -> None:
    with connect(state) as client:
        daemon.script("status", CLOSE)
        with pytest.raises(DaemonGone, match="closed the connection"):
            client.status()
        with pytest.raises(DaemonGone):
            client.next_event(1)


def test_a_daemon_that_does_not_answer_times_out(daemon: FakeDaemon, state: Path) -> None:
    with connect(state, timeout=0.3) as client:
        daemon.script("status", HOLD)
        with pytest.raises(TimeoutError, match="status"):
            client.status()


BROKEN: dict[str, Any] = {
    "a zero length prefix": struct.pack(">I", 0),
    "a length over 16 MiB": struct.pack(">I", 16 * 1024 * 1024 + 1),
    "a body that is not JSON": struct.pack(">I", 3) + b"{x}",
    "a body that is not UTF-8": struct.pack(">I", 2) + b"\xff\xfe",
    "JSON that is not an object": struct.pack(">I", 7) + b"[1,2,3]",
    "an answer to no request": encode({"id": 999, "ok": True}),
    "an answer without its fields": lambda request: {"id": request["id"], "ok": True},
    "an answer with a field of the wrong type": lambda request: {
        "id": request["id"], "ok": True, **STATUS, "online": "yes"},
    "a status whose loop routes hold a label that is no route": lambda request: {
        "id": request["id"], "ok": True, **STATUS, "loop_routes": {"alice>bob": [1, 0]}},
    "a status whose loop routes hold negative counts": lambda request: {
        "id": request["id"], "ok": True, **STATUS, "loop_routes": {"a>b>a": [1, -1]}},
    "an error without a message": encode({"id": None, "ok": False, "error": "busy"}),
    "an object that is neither answer nor event": encode({"id": None, "hello": 1}),
    "a known event with bad fields": encode({"event": "progress", "message_id": "zz"}),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_what_breaks_the_protocol_raises_protocol_violation_at_once(
        daemon: FakeDaemon, state: Path, name: str) -> None:
    with connect(state, timeout=10) as client:
        client.subscribe()
        assert client.status().online  # positive control
        daemon.script("status", BROKEN[name])
        started = time.monotonic()
        with pytest.raises(ProtocolViolation):
            client.status()
        assert time.monotonic() - started < 2
        with pytest.raises(DaemonGone):
            client.status()


def test_a_frame_cut_short_by_the_end_of_the_stream_raises_daemon_gone(
        daemon: FakeDaemon, state: Path) -> None:
    with connect(state) as client:
        daemon.script("status", encode({"ok": True})[:6], CLOSE)
        with pytest.raises(DaemonGone, match="middle of a frame"):
            client.status()


def test_misuse_is_refused_before_anything_is_sent(daemon: FakeDaemon, state: Path) -> None:
    with connect(state) as client:
        with pytest.raises(ValueError, match="events are some of"):
            client.subscribe(["messages"])
        with pytest.raises(ValueError, match="bytes or str"):
            client.send("bob", 5)  # type: ignore[arg-type]
        assert client.status().online
        with pytest.raises(ValueError, match="hexadecimal"):
            client.ack("not hex")
        assert client.status().online
    with pytest.raises(ValueError, match="say where"):
        Client.connect()


def test_a_daemon_that_stops_ends_a_wait_for_events_with_daemon_gone(
        daemon: FakeDaemon, state: Path) -> None:
    with connect(state) as client:
        client.subscribe()
        threading.Timer(0.2, daemon.push, args=(CLOSE,)).start()
        started = time.monotonic()
        with pytest.raises(DaemonGone):
            client.next_event()  # no timeout: only the end of the connection ends it
        assert time.monotonic() - started < 5


# --- TCP ------------------------------------------------------------------------------------

def test_tcp_connects_with_hello_and_the_token_from_the_state_folder(state: Path) -> None:
    token = "5a" * 32
    (state / "clients" / "alice" / "api.token").write_text(token + "\n")
    with FakeDaemon(tcp=True, token=token) as daemon:
        with Client.connect(state=state, name="alice", tcp=daemon.address, timeout=5) as client:
            assert client.status().online
        assert daemon.requests[0] == {"op": "hello", "id": 1, "token": token}
        with pytest.raises(ApiError) as raised:
            Client.connect(tcp=daemon.address, token="00" * 32, timeout=5)
        assert raised.value.code == "unauthorized"


def test_tcp_without_a_token_is_local_misuse() -> None:
    with pytest.raises(ValueError, match="token"):
        Client.connect(tcp=("127.0.0.1", 1))


# --- asyncio --------------------------------------------------------------------------------

def test_the_async_client_matches_answers_by_id_while_events_interleave(
        daemon: FakeDaemon, state: Path) -> None:
    async def scenario() -> None:
        client = await AsyncClient.connect(state=state, name="alice", timeout=5)
        await client.subscribe()
        # status is held; the inbox answer brings the held status answer after its own
        daemon.script("status", HOLD)
        daemon.script("inbox", {"event": "network", "epoch": 4}, {"ok": True, "messages": []},
                      lambda request: {"id": request["id"] - 1, "ok": True, **STATUS})
        status_task = asyncio.ensure_future(client.status())
        await asyncio.sleep(0)  # the status request goes first
        assert await client.inbox() == []
        assert (await status_task).client == "alice"
        assert await client.next_event(1) == NetworkEvent(4)
        await client.close()
    run(scenario())


def test_the_async_client_raises_the_same_errors(daemon: FakeDaemon, state: Path) -> None:
    async def scenario() -> None:
        async with await AsyncClient.connect(state=state, name="alice", timeout=5) as client:
            daemon.script("status", {"ok": False, "error": "offline", "message": "no doc"})
            with pytest.raises(ApiError) as raised:
                await client.status()
            assert raised.value.code == "offline"
            daemon.script("status", struct.pack(">I", 0))
            with pytest.raises(ProtocolViolation):
                await client.status()
            with pytest.raises(DaemonGone):
                await client.status()
            with pytest.raises(DaemonGone):
                await client.next_event(1)
        with pytest.raises(DaemonGone, match="zmix-client"):
            await AsyncClient.connect(state / "nowhere.sock")
    run(scenario())


def test_the_async_client_times_out_and_waits_done(daemon: FakeDaemon, state: Path) -> None:
    async def scenario() -> None:
        async with await AsyncClient.connect(state=state, name="alice", timeout=0.3) as client:
            daemon.script("status", HOLD)
            with pytest.raises(TimeoutError, match="status"):
                await client.status()
            sent = await client.send("bob", "hi")
            with pytest.raises(TimeoutError, match=sent.message_id.hex()):
                await client.wait_done(sent.message_id, 0.3)
            waiting = asyncio.ensure_future(client.wait_done(sent.message_id, 5))
            await asyncio.sleep(0.1)
            daemon.acknowledge(sent.message_id.hex())
            assert (await waiting).done
            assert await client.next_event(0.1) is None
    run(scenario())


def test_the_async_client_is_refused_by_a_busy_daemon_and_ends_its_events_when_it_stops(
        daemon: FakeDaemon, state: Path) -> None:
    busy = {"id": None, "ok": False, "error": "busy", "message": "too many connections"}

    async def scenario() -> None:
        async with await AsyncClient.connect(state=state, name="alice") as client:
            await client.subscribe()
            daemon.on_accept = [busy, CLOSE]
            with pytest.raises(ApiError) as raised:
                await AsyncClient.connect(state=state, name="alice")
            assert raised.value.code == "busy"
            daemon.deliver(bytes.fromhex(MID), b"hi")  # positive control: events still come
            threading.Timer(0.2, daemon.push, args=(CLOSE,)).start()
            seen = []
            with pytest.raises(DaemonGone):
                async for event in client.events():
                    seen.append(event)
            assert [type(event) for event in seen] == [MessageEvent]
    run(scenario())


def test_the_async_client_over_tcp_with_a_token(state: Path) -> None:
    token = "c3" * 32
    with FakeDaemon(tcp=True, token=token) as daemon:
        async def scenario() -> None:
            async with await AsyncClient.connect(tcp=daemon.address, token=token) as client:
                assert (await client.status()).online
            with pytest.raises(ApiError, match="token"):
                await AsyncClient.connect(tcp=daemon.address, token="")
        run(scenario())


SCRIPT: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("subscribe", (), {}),
    ("send", ("bob", "hi"), {}),
    ("send", ("carol", b"x"), {}),
    ("progress", (bytes.fromhex("00" * 15 + "01"),), {}),
    ("progress", ("ff" * 16,), {}),
    ("inbox", (), {}),
    ("ack", (MID,), {}),
    ("ack", (MID,), {}),
    ("reply", (b"\x01\x02", b"back"), {}),
    ("status", (), {}),
    ("next_event", (1,), {}),
    ("next_event", (1,), {}),
    ("next_event", (0.05,), {}),
    ("unsubscribe", (), {}),
]


def _outcome(call: Any) -> Any:
    """Return a call's result, or the type and code of what it raised."""
    try:
        return call()
    except ApiError as error:
        return (type(error).__name__, error.code)


def test_the_blocking_and_async_clients_give_equal_results_for_the_same_script(
        state: Path) -> None:
    path = state / "clients" / "alice" / "api.sock"

    def prepared() -> FakeDaemon:
        fake = FakeDaemon(unix_path=path)
        fake.deliver(bytes.fromhex(MID), b"hello", reply_handle=b"\x01\x02")
        return fake

    with prepared() as fake, connect(state) as client:
        blocking = [_outcome(lambda m=m, a=a, k=k: getattr(client, m)(*a, **k))
                    for m, a, k in SCRIPT]
    path.unlink()

    async def scenario() -> list[Any]:
        results = []
        async with await AsyncClient.connect(path, timeout=5) as client:
            for method, args, kwargs in SCRIPT:
                try:
                    results.append(await getattr(client, method)(*args, **kwargs))
                except ApiError as error:
                    results.append((type(error).__name__, error.code))
        return results

    with prepared():
        asynchronous = run(scenario())
    assert blocking == asynchronous
    assert ("ApiError", "unknown_recipient") in blocking
    assert blocking.count(("ApiError", "unknown_message")) == 2
    assert isinstance(blocking[5][0], Message) and blocking[9].client == "alice"
    assert blocking[10] == MessageEvent(blocking[5][0]) and blocking[11] == SentEvent(blocking[8])
    assert blocking[12:] == [None, None]
    assert fake.requests  # the script ran against a daemon


# --- parsers (property tests) ---------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=40),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=12), children, max_size=5),
                    max_leaves=12)
KEYS = st.sampled_from(["event", "message_id", "fragments", "acked", "epoch", "from", "bytes",
                        "data", "text", "filename", "received_at", "reply_handle", "messages",
                        "statistics", "online", "client", "api"])
OBJECTS = st.dictionaries(KEYS, JSON | st.sampled_from(["message", "progress", "failed", MID,
                                                        "aGk=", 2]), max_size=10)


@settings(max_examples=300, deadline=None)
@given(OBJECTS)
def test_the_parsers_give_a_value_or_a_protocol_violation_for_any_object(
        obj: dict[str, Any]) -> None:
    for parse in (parse_event, parse_hello, parse_inbox, parse_progress, parse_status):
        with contextlib.suppress(ProtocolViolation):
            parse(obj)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40) | OBJECTS.map(lambda obj: encode(obj)), max_size=6))
def test_the_session_gives_items_or_one_error_type_for_any_bytes(chunks: list[bytes]) -> None:
    session = Session()
    session.request("status")
    try:
        for chunk in chunks:
            session.receive(chunk)
    except ProtocolViolation:
        pass


def test_a_message_event_parses_into_its_message() -> None:
    obj = {"event": "message", **message_object(bytes.fromhex(MID), b"hi", sender=None,
                                                filename="a.txt")}
    assert parse_event(obj) == MessageEvent(Message(bytes.fromhex(MID), None, b"hi", "hi",
                                                    "a.txt", 1790000001.25, None))
    with pytest.raises(ProtocolViolation, match="bytes"):  # negative: a length that lies
        parse_event({**obj, "bytes": 3})
    assert parse_event({"event": "from-the-future"}) is None


# --- the documentation and the example ------------------------------------------------------

def test_the_python_examples_in_docs_apps_md_run(daemon: FakeDaemon, state: Path) -> None:
    text = (ROOT / "docs" / "apps.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3
    daemon.auto_ack = True
    with tempfile.TemporaryDirectory(prefix="zapi", dir="/tmp") as where:
        (Path(where) / "zmix-local").symlink_to(state)  # the state folder the examples name
        for block in blocks:
            daemon.deliver(bytes.fromhex(MID), b"hello alice", reply_handle=b"\x05" * 8)
            done = subprocess.run([sys.executable, "-c", block], cwd=where,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            assert "bob hello alice" in done.stdout
            assert daemon.inbox == []  # acked
    ops = [request["op"] for request in daemon.requests]
    assert ops.count("send") == 1 and ops.count("reply") == 1 and ops.count("ack") == 3


def chat(state: Path, lines: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run examples/chat.py as alice talking to bob, its stdin from a pipe."""
    return subprocess.run([sys.executable, str(ROOT / "examples" / "chat.py"), "--state",
                           str(state), "--as", "alice", "--to", "bob", *extra], input=lines,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=30)


def test_the_chat_example_sends_lines_shows_messages_and_exits_once_delivered(
        daemon: FakeDaemon, state: Path) -> None:
    daemon.auto_ack = True
    daemon.deliver(bytes.fromhex(MID), b"hi alice")
    daemon.deliver(bytes.fromhex("cd" * 16), b"psst", sender=None, reply_handle=b"\x09" * 8)
    daemon.deliver(bytes.fromhex("ef" * 16), b"a reply to us", sender=None)
    done = chat(state, "hello bob\n/anon who am I\n/reply 09090909 answered\n")
    assert done.returncode == 0, done.stderr
    assert "bob: hi alice" in done.stdout
    assert "anonymous [09090909]: psst" in done.stdout
    assert "\nanonymous: a reply to us" in done.stdout
    assert done.stdout.count("(delivered)") == 2
    sends = [r for r in daemon.requests if r["op"] in ("send", "reply")]
    assert sends[0] == {"op": "send", "id": sends[0]["id"], "to": "bob", "text": "hello bob",
                        "anonymous": False, "reply_blocks": 0}
    assert sends[1]["anonymous"] is True and sends[1]["reply_blocks"] == 2
    assert sends[2]["handle"] == "09" * 8 and sends[2]["text"] == "answered"
    assert daemon.inbox == []  # all shown, so all acked
    assert json.dumps(daemon.requests).count('"op": "ack"') == 3


def test_the_chat_example_gives_up_after_its_timeout_when_nothing_is_delivered(
        daemon: FakeDaemon, state: Path) -> None:
    started = time.monotonic()
    done = chat(state, "hello\n", "--timeout", "0.5")
    assert done.returncode == 1 and "1 not delivered" in done.stderr
    assert time.monotonic() - started < 15


def test_the_chat_example_waits_at_the_end_of_its_input_for_the_messages_it_expects(
        daemon: FakeDaemon, state: Path) -> None:
    daemon.auto_ack = True
    threading.Timer(1.0, daemon.deliver, args=(bytes.fromhex(MID), b"late answer")).start()
    done = chat(state, "/anon who am I\n", "--expect", "1", "--timeout", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.index("(delivered)") < done.stdout.index("bob: late answer")
    done = chat(state, "", "--expect", "1", "--timeout", "0.5")  # negative: nothing comes
    assert done.returncode == 1 and "0 of 1 expected" in done.stderr


def test_the_chat_example_says_so_when_its_daemon_stops(daemon: FakeDaemon,
                                                         state: Path) -> None:
    with subprocess.Popen([sys.executable, str(ROOT / "examples" / "chat.py"), "--state",
                           str(state), "--as", "alice", "--to", "bob", "--expect", "1",
                           "--timeout", "20"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().startswith("chatting as alice")  # it is connected
        started = time.monotonic()
        daemon.push(CLOSE)
        _, errors = process.communicate(timeout=15)
    assert process.returncode == 3 and "closed the connection" in errors, errors
    assert time.monotonic() - started < 10


def test_the_chat_example_says_to_start_the_daemon_when_it_is_missing(state: Path) -> None:
    done = chat(state, "")
    assert done.returncode == 2
    assert "zmix-client --state" in done.stderr
