"""The client daemon with real processes: zmix-up runs the network, zmix-client serves the API."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hostile
import pytest
from daemonnet import DaemonProcess, LocalNet, Raw, local_net, start_daemon

from zmix.api.protocol import encode


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNet]:
    with local_net(tmp_path_factory.mktemp("daemon")) as running:
        yield running


@pytest.fixture
def alice(net: LocalNet) -> Iterator[DaemonProcess]:
    daemon = start_daemon(net, "alice")
    yield daemon
    assert daemon.stop() == 0, "".join(daemon.log)


@pytest.fixture
def bob(net: LocalNet) -> Iterator[DaemonProcess]:
    daemon = start_daemon(net, "bob", "--api-tcp", "127.0.0.1:0")
    yield daemon
    assert daemon.stop() == 0, "".join(daemon.log)


def drain_inbox(path: str) -> None:
    """Acknowledge every message in the daemon's inbox, once its first FETCH since it started
    was answered: messages an earlier test sent while this client's daemon was not running
    wait in its mailbox at the provider until then."""
    with Raw(path) as api:
        deadline = time.monotonic() + 30
        while api.ok("status")["statistics"]["fetch_answers"] < 1:
            assert time.monotonic() < deadline, "the daemon's first FETCH was never answered"
            time.sleep(0.1)
        for message in api.ok("inbox")["messages"]:
            api.ok("ack", message_id=message["message_id"])


def test_the_api_socket_is_private_to_the_daemons_user(alice: DaemonProcess) -> None:
    path = Path(alice.field("api"))
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with Raw(path) as api:
        hello = api.ok("hello")
    assert (hello["client"], hello["api"], hello["provider"]) == ("alice", 1, "provider-1")
    assert hello["reply_limit"] > 1000 and hello["max_reply_blocks"] == 4


def test_status_gives_the_loops_of_each_route_the_client_took(alice: DaemonProcess) -> None:
    deadline = time.monotonic() + 30
    with Raw(alice.field("api")) as api:
        while True:  # loops leave at loop_rate 1/s; the first come back within a second
            status = api.ok("status")
            routes = status["loop_routes"]
            if any(returned for returned, _ in routes.values()):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
    for label, (returned, lost) in routes.items():
        names = label.split(">")  # the client, its provider, a mixnode per layer, and back
        assert len(names) == 7 and names[0] == names[-1] == "alice"
        assert names[1] == names[-2] == "provider-1" and returned >= 0 and lost >= 0
    stats = status["statistics"]
    # loops_returned also counts loops of an earlier run of alice, which are in no route
    assert 0 < sum(returned for returned, _ in routes.values()) <= stats["loops_returned"]
    assert sum(lost for _, lost in routes.values()) == stats["loops_lost"]


def test_a_message_is_pushed_to_a_subscriber_and_kept_until_acknowledged(
        alice: DaemonProcess, bob: DaemonProcess) -> None:
    drain_inbox(bob.field("api"))
    with Raw(alice.field("api")) as a, Raw(bob.field("api")) as b:
        a.ok("subscribe", events=["progress", "acknowledged"])
        b.ok("subscribe")
        sent = a.ok("send", to="bob", data=base64.b64encode(b"\x00binary\xff").decode())
        message = b.event("message", message_id=sent["message_id"])
        assert message["from"] == "alice" and "text" not in message
        assert base64.b64decode(message["data"]) == b"\x00binary\xff"
        a.event("acknowledged", message_id=sent["message_id"])
        done = a.ok("progress", message_id=sent["message_id"])
        assert done["done"] is True and done["acked"] == done["fragments"] == 1
        # Not acknowledged yet: a second caller sees it in the inbox and in the backlog.
        with Raw(bob.field("api")) as other:
            assert [m["message_id"] for m in other.ok("inbox")["messages"]] == \
                [sent["message_id"]]
        piece = b.ok("read", message_id=sent["message_id"], offset=2, length=3)
        assert (piece["offset"], piece["bytes"]) == (2, 8)
        assert base64.b64decode(piece["data"]) == b"\x00binary\xff"[2:5]
        past = b.call("read", message_id=sent["message_id"], offset=9, length=3)
        assert past["error"] == "bad_request"
        b.ok("ack", message_id=sent["message_id"])
        assert b.call("read", message_id=sent["message_id"])["error"] == "unknown_message"
        with Raw(bob.field("api")) as other:
            assert other.ok("inbox")["messages"] == []
            other.ok("subscribe", events=["message"])
            assert other.ok("status")["inbox"] == 0
            assert other.events == []  # no backlog: it was shown once, and acknowledged
        assert b.call("ack", message_id=sent["message_id"])["error"] == "unknown_message"


def test_an_anonymous_message_answered_through_its_handle_reaches_its_sender(
        alice: DaemonProcess, bob: DaemonProcess) -> None:
    drain_inbox(alice.field("api"))
    with Raw(alice.field("api")) as a, Raw(bob.field("api")) as b:
        a.ok("subscribe", events=["message"])
        b.ok("subscribe", events=["message", "sent"])
        sent = a.ok("send", to="bob", text="guess who", anonymous=True, reply_blocks=2)
        got = b.event("message", message_id=sent["message_id"])
        assert got["from"] is None and got["text"] == "guess who" and got["reply_handle"]
        reply = b.ok("reply", handle=got["reply_handle"], text="no idea")
        b.event("sent", message_id=reply["message_id"])
        answer = a.event("message", message_id=reply["message_id"])
        assert answer["from"] is None and answer["text"] == "no idea"
        b.ok("reply", handle=got["reply_handle"], text="second")
        refused = b.call("reply", handle=got["reply_handle"], text="third")
        assert refused["ok"] is False and refused["error"] == "no_reply_block"


def test_requests_the_daemon_cannot_serve_get_their_documented_errors(
        alice: DaemonProcess) -> None:
    with Raw(alice.field("api")) as api:
        cases = [
            ({"op": "fly"}, "unknown_op"),
            ({}, "unknown_op"),
            ({"op": "send", "to": "bob"}, "bad_request"),
            ({"op": "send", "to": "bob", "text": "x", "data": "eA=="}, "bad_request"),
            ({"op": "send", "to": "bob", "data": "not base64!"}, "bad_request"),
            ({"op": "send", "to": "bob", "text": "x", "reply_blocks": 9}, "bad_request"),
            ({"op": "send", "to": "bob", "text": "x", "anonymous": "yes"}, "bad_request"),
            ({"op": "send", "to": "mallory", "text": "x"}, "unknown_recipient"),
            ({"op": "send", "to": "bob", "text": "x", "filename": "n" * 256}, "too_long"),
            ({"op": "reply", "handle": "00" * 16, "text": "x" * 5000}, "too_long"),
            ({"op": "reply", "handle": "00" * 16, "text": "x"}, "no_reply_block"),
            ({"op": "progress", "message_id": "00" * 16}, "unknown_message"),
            ({"op": "progress", "message_id": "zz"}, "bad_request"),
            ({"op": "subscribe", "events": ["everything"]}, "bad_request"),
        ]
        for request, code in cases:
            api.sock.sendall(encode(request))
            answer = api.answer()
            assert (answer["ok"], answer.get("error")) == (False, code), (request, answer)
            assert answer["message"]
        assert api.ok("status")["online"] is True  # positive control, same connection


def test_frames_that_break_the_stream_close_only_that_connection(alice: DaemonProcess) -> None:
    path = alice.field("api")
    with Raw(path) as api:
        body = b"[1, 2]"
        api.sock.sendall(struct.pack(">I", len(body)) + body)
        assert api.answer()["error"] == "bad_json"
        api.sock.sendall(struct.pack(">I", 3) + b"\xff\xfe\x00")
        assert api.answer()["error"] == "bad_json"
        assert api.ok("hello")["client"] == "alice"  # bad JSON keeps the connection
    for prefix, code in ((struct.pack(">I", 16 * 1024 * 1024 + 1), "too_large"),
                         (struct.pack(">I", 0), "bad_frame")):
        with Raw(path) as api:
            api.sock.sendall(prefix)
            assert api.answer()["error"] == code
            assert api.frame() is None  # closed: the stream cannot be resynchronised
    with Raw(path) as api:
        statistics = api.ok("status")["statistics"]
    assert statistics["api_bad_frames"] >= 4 and statistics["api_errors"] >= 4


def test_tcp_callers_must_say_hello_with_the_token_first(net: LocalNet, bob: DaemonProcess
                                                         ) -> None:
    host, port = bob.field("tcp").rsplit(":", 1)
    address = (host, int(port))
    token_file = net.state / "clients" / "bob" / "api.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    with Raw(address) as api:
        assert api.call("status")["error"] == "unauthorized"
        assert api.frame() is None
    with Raw(address) as api:
        assert api.call("hello", token="0" * 64)["error"] == "unauthorized"
        assert api.frame() is None
    with Raw(address) as api:
        assert api.ok("hello", token=token)["client"] == "bob"
        assert api.ok("status")["client"] == "bob"


def test_a_non_loopback_api_address_is_refused_at_start(net: LocalNet) -> None:
    done = net.cli("client", "--as", "carol", "--api-tcp", "0.0.0.0:0", timeout=30)
    assert done.returncode == 2 and "not a loopback address" in done.stderr


def test_a_second_daemon_of_the_same_client_is_refused(net: LocalNet, alice: DaemonProcess
                                                       ) -> None:
    done = net.cli("client", "--as", "alice", timeout=60)
    assert done.returncode == 1 and "in use by another zmix process" in done.stderr
    with Raw(alice.field("api")) as api:  # and the first one still serves
        assert api.ok("hello")["client"] == "alice"


def test_hostile_callers_leave_the_daemon_serving_and_its_messages_pending(
        net: LocalNet) -> None:
    carol = start_daemon(net, "carol", "--api-max-connections", "50")
    try:
        path = carol.field("api")
        with Raw(path) as api:
            sent = api.ok("send", to="bob", text="still here")
        for seed in range(20):
            hostile.random_bytes_conn(path, 4096, seed=seed, wait=0.5)
        line = hostile.huge_line(path)  # 10 MB of "a": a length prefix of 1.6 GB, refused
        assert line.closed and b"too_large" in line.answer, line
        cut = hostile.truncated(path, struct.pack(">I", 100) + b'{"op": "sta', wait=1.0)
        assert not cut.closed  # a frame not yet whole is waited for, not misread
        held_open = hostile.truncated(path, struct.pack(">I", 10_000_000) + b"x" * 1_000_000,
                                      wait=0.5)  # a frame that claims 10 MB and stops
        assert held_open.answer == b""
        deadline = time.monotonic() + 20
        while True:  # the daemon saw every attacker go (only the asking connection is open)
            with Raw(path) as api:
                if api.ok("status")["connections"] == 1:
                    break
            assert time.monotonic() < deadline, "attacking connections are still open"
            time.sleep(0.1)
        with hostile.many_connections(path, count=200) as held:
            # (``failed``: refused by the kernel while the listen backlog was full)
            connected = len(held.sockets)
            assert connected > 55, held.failed  # more than the bound, so some are refused
            deadline = time.monotonic() + 20
            while connected - held.closed_by_server() > 50:
                assert time.monotonic() < deadline, f"{held.closed_by_server()} refused"
                time.sleep(0.1)
            time.sleep(0.5)  # any more refusals have come by now
            served = connected - held.closed_by_server()
            # Every one over the bound of 50 was told "busy", then closed; the asking
            # connection above may still have counted as open when the first ones came.
            assert 48 <= served <= 50, served
            assert all(b'"error":"busy"' in answer for answer in held.answers if answer)
        deadline = time.monotonic() + 20
        while True:  # the daemon notices the held connections close, and serves again
            with Raw(path) as api:
                try:
                    answer = api.call("status")
                except (BrokenPipeError, ConnectionResetError):
                    # Still over the bound: told "busy" and closed before the request was
                    # written (the answer comes at once, on connecting).
                    answer = {"ok": False, "error": "busy"}
            if answer["ok"]:
                break
            assert answer["error"] == "busy" and time.monotonic() < deadline, answer
            time.sleep(0.1)
        with Raw(path) as api:
            assert api.ok("progress", message_id=sent["message_id"])["fragments"] == 1
            stats = api.ok("status")["statistics"]
            assert stats["api_refused"] >= connected - 50
            deadline = time.monotonic() + 30
            while not api.ok("progress", message_id=sent["message_id"])["done"]:
                assert time.monotonic() < deadline, "the pending message never went out"
                time.sleep(0.2)
    finally:
        assert carol.stop() == 0, "".join(carol.log)


def test_a_daemon_killed_in_the_middle_of_a_send_completes_it_when_restarted(
        net: LocalNet) -> None:
    data = os.urandom(300_000)  # about 190 fragments: several seconds of payload stream
    alice = start_daemon(net, "alice")
    with Raw(alice.field("api")) as api:
        api.ok("subscribe", events=["progress"])
        sent = api.ok("send", to="carol", data=base64.b64encode(data).decode())
        api.event("progress", message_id=sent["message_id"])  # some fragments went, not all
    alice.kill()
    restarted = start_daemon(net, "alice")
    try:
        with Raw(restarted.field("api")) as api:
            api.ok("subscribe", events=["acknowledged"])
            before = api.ok("progress", message_id=sent["message_id"])
            assert 0 < before["acked"] < before["fragments"], before
            api.event("acknowledged", timeout=60, message_id=sent["message_id"])
    finally:
        assert restarted.stop() == 0, "".join(restarted.log)
    carol = start_daemon(net, "carol")
    try:
        with Raw(carol.field("api")) as api:
            api.ok("subscribe", events=["message"])
            got = api.event("message", timeout=30, message_id=sent["message_id"])
            assert base64.b64decode(got["data"]) == data
            api.ok("ack", message_id=sent["message_id"])
    finally:
        assert carol.stop() == 0, "".join(carol.log)
    again = start_daemon(net, "carol")
    try:
        with Raw(again.field("api")) as api:
            api.ok("subscribe", events=["message"])
            api.sock.settimeout(2)
            with pytest.raises(TimeoutError):
                api.frame()  # nothing is shown twice
            assert api.events == []
    finally:
        assert again.stop() == 0, "".join(again.log)


def test_zmix_send_and_zmix_recv_work_through_a_running_daemon_of_their_client(
        net: LocalNet, alice: DaemonProcess, bob: DaemonProcess) -> None:
    drain_inbox(bob.field("api"))
    sent = net.cli("send", "--from", "alice", "--to", "bob", "--anonymous", "--reply-blocks",
                   "1", "through the daemon", timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert "every one acknowledged by the recipient's provider" in sent.stdout
    # Should an earlier test's message to bob still come after drain_inbox (there were more
    # than one FETCH answer carries), it comes before this one: shown and acknowledged with it.
    deadline = time.monotonic() + 30
    shown: list[dict[str, Any]] = []
    while not any(m.get("text") == "through the daemon" for m in shown):
        got = net.cli("recv", "--as", "bob", "--json", "--wait", "5", timeout=60)
        assert got.returncode in (0, 3) and time.monotonic() < deadline, (got.stderr, shown)
        shown += [json.loads(line) for line in got.stdout.splitlines()]
    [message] = [m for m in shown if m.get("text") == "through the daemon"]
    assert message["from"] is None
    replied = net.cli("send", "--from", "bob", "--reply", message["reply_handle"], "answer",
                      timeout=60)
    assert replied.returncode == 0 and "reply sent" in replied.stdout, replied.stderr
    again = net.cli("recv", "--as", "bob", "--json", timeout=60)
    assert again.returncode == 3 and again.stdout == ""  # shown once, acknowledged
    unknown = net.cli("send", "--from", "alice", "--to", "mallory", "x", timeout=60)
    assert unknown.returncode == 2 and "mallory" in unknown.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused_even_where_the_socket_file_was_opened_up(
        alice: DaemonProcess) -> None:
    path = Path(alice.field("api"))
    attempt = (
        "import os, socket, struct, sys\n"
        f"os.chdir({str(path.parent)!r})\n"  # as root; then only this folder's modes count
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({path.name!r})\n"
        "except PermissionError:\n"
        "    print('EACCES'); sys.exit(0)\n"
        "s.settimeout(10)\n"
        "print(s.recv(4096)[4:].decode())\n")

    def as_nobody() -> str:
        done = subprocess.run([sys.executable, "-c", attempt], capture_output=True, text=True,
                              timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert as_nobody().strip() == "EACCES"  # the file mode keeps other users out
    modes = (path.parent.stat().st_mode, path.stat().st_mode)
    os.chmod(path.parent, 0o711)
    os.chmod(path, 0o666)
    try:
        answer = as_nobody()  # the daemon itself still refuses them
    finally:
        os.chmod(path.parent, stat.S_IMODE(modes[0]))
        os.chmod(path, stat.S_IMODE(modes[1]))
    assert '"error":"unauthorized"' in answer
    with Raw(path) as api:  # and serves its own user
        assert api.ok("status")["statistics"]["api_refused"] >= 1


def test_the_chat_example_exchanges_messages_and_answers_an_anonymous_one(
        net: LocalNet, alice: DaemonProcess, bob: DaemonProcess) -> None:
    drain_inbox(alice.field("api"))
    drain_inbox(bob.field("api"))
    chat = [sys.executable, str(Path(__file__).resolve().parent.parent / "examples" / "chat.py"),
            "--state", str(net.state), "--timeout", "60"]
    bob_side = subprocess.Popen([*chat, "--as", "bob", "--to", "alice"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    alice_side = subprocess.Popen([*chat, "--as", "alice", "--to", "bob", "--expect", "2"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    try:
        assert alice_side.stdin is not None and bob_side.stdin is not None
        alice_side.stdin.write("hello bob\n/anon who am I?\n")
        alice_side.stdin.close()
        alice_side.stdin = None  # closed: communicate() must not flush it
        assert bob_side.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        handle = None
        while handle is None or "alice: hello bob" not in seen:  # in either order: the
            # mixnet's delays do not keep the order of two messages sent one after the other
            assert time.monotonic() < deadline, f"bob saw only {seen}"
            line = bob_side.stdout.readline()
            assert line, f"bob's chat ended after {seen}"
            seen.append(line.strip())
            if line.startswith("anonymous [") and "who am I?" in line:
                handle = line[len("anonymous ["):line.index("]")]
        bob_side.stdin.write(f"hi alice\n/reply {handle} you are a mystery\n")
        bob_side.stdin.close()
        bob_side.stdin = None
        alice_out, alice_err = alice_side.communicate(timeout=90)
        bob_out, _ = bob_side.communicate(timeout=90)
    finally:
        for side in (alice_side, bob_side):
            if side.poll() is None:
                side.kill()
    assert alice_side.returncode == 0, alice_err
    assert "bob: hi alice" in alice_out and "anonymous: you are a mystery" in alice_out
    assert alice_out.count("(delivered)") == 2  # hello bob, and the anonymous question
    assert bob_side.returncode == 0 and "(sent)" in bob_out


def test_a_unix_caller_may_send_a_file_by_its_path_and_a_tcp_caller_may_not(
        net: LocalNet, tmp_path: Path, bob: DaemonProcess) -> None:
    drain_inbox(bob.field("api"))
    path = tmp_path / "notes.bin"
    path.write_bytes(b"\x01\x02 file contents")
    host, port = bob.field("tcp").rsplit(":", 1)
    token = (net.state / "clients" / "bob" / "api.token").read_text().strip()
    with Raw((host, int(port))) as api:
        api.ok("hello", token=token)
        refused = api.call("send", to="alice", file=str(path))
        assert refused["error"] == "bad_request" and "Unix socket" in refused["message"]
    with Raw(bob.field("api")) as api:
        assert api.call("send", to="alice", file="notes.bin")["error"] == "bad_request"
        missing = api.call("send", to="alice", file=str(tmp_path / "none"))
        assert missing["error"] == "bad_request" and "cannot read" in missing["message"]
        sent = api.ok("send", to="carol", file=str(path), filename="notes.bin")
        assert api.ok("progress", message_id=sent["message_id"])["fragments"] == 1


def test_zmix_send_hands_a_daemon_large_data_through_a_private_file(tmp_path: Path) -> None:
    from zmix.cli import send as send_cli

    calls: list[tuple[str, object, bytes | None]] = []

    class Recorder:
        def send(self, to: str, data: object, **options: object) -> Any:
            content = data.read_bytes() if isinstance(data, Path) else None
            if isinstance(data, Path):
                assert stat.S_IMODE(data.stat().st_mode) == 0o600
            calls.append((to, data, content))
            return type("Sent", (), {"message_id": b"x" * 16})()

    folder = tmp_path / "clients" / "alice"
    folder.mkdir(parents=True)
    args = send_cli.build_parser().parse_args(
        ["--state", str(tmp_path), "--from", "alice", "--to", "bob", "x"])
    big = b"b" * (send_cli.INLINE_SEND + 1)
    send_cli._daemon_send(Recorder(), args, b"small", None)  # type: ignore[arg-type]
    send_cli._daemon_send(Recorder(), args, big, None)  # type: ignore[arg-type]
    assert calls[0] == ("bob", b"small", None)
    assert isinstance(calls[1][1], Path) and calls[1][2] == big
    assert list(folder.iterdir()) == []  # the temporary file is gone once sent


def test_a_caller_that_never_reads_its_answers_is_closed_not_waited_for(
        alice: DaemonProcess) -> None:
    path = alice.field("api")
    request = encode({"op": "status"})
    with Raw(path) as api:
        size = len(encode({"id": None, "ok": True, **api.ok("status")}))
    count = (64 * 1024 * 1024) // size + 2000  # answers past the 64 MiB of unread output
    hog = socket.socket(socket.AF_UNIX)
    hog.connect(path)
    hog.settimeout(60)
    # Write them all and read nothing; the daemon may close it while we still write.
    with contextlib.suppress(OSError):
        hog.sendall(request * count)
    with Raw(path) as api:  # meanwhile the daemon serves everyone else
        deadline = time.monotonic() + 60
        while api.ok("status")["statistics"]["api_slow_closed"] < 1:
            assert time.monotonic() < deadline, "the caller that reads nothing was not closed"
            time.sleep(0.2)
    hog.close()
