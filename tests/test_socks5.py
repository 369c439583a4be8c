"""The sans-IO SOCKS5 server handshake (zmix.tunnel.socks5, docs/tunnel.md "SOCKS5")."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix.errors import LocalMisuse, ZmixError
from zmix.tunnel import socks5
from zmix.tunnel.socks5 import ConnectRequest, SocksHandshake, SocksProtocolError

GREETING = b"\x05\x01\x00"
CHOSEN = b"\x05\x00"
NONE_ACCEPTABLE = b"\x05\xff"


def request(atyp: int, address: bytes, port: int = 80, *, cmd: int = 1, rsv: int = 0) -> bytes:
    """A request's bytes: VER CMD RSV ATYP DST.ADDR DST.PORT."""
    return bytes((5, cmd, rsv, atyp)) + address + struct.pack(">H", port)


def domain(name: bytes, port: int = 80) -> bytes:
    """A domain-name CONNECT request."""
    return request(3, bytes((len(name),)) + name, port)


def feed(chunks: list[bytes]) -> tuple[bytes, ConnectRequest | None, SocksHandshake]:
    """Feed chunks in order; return the joined output, the request and the handshake."""
    handshake = SocksHandshake()
    out = b""
    found = None
    for chunk in chunks:
        written, got = handshake.receive(chunk)
        out += written
        if got is not None:
            assert found is None, "the request was returned twice"
            found = got
    return out, found, handshake


def refusal(data: bytes) -> SocksProtocolError:
    """Feed ``data`` at once and return the SocksProtocolError it must raise."""
    with pytest.raises(SocksProtocolError) as caught:
        SocksHandshake().receive(data)
    return caught.value


def test_reply_is_version_code_and_a_zero_ipv4_bind_address() -> None:
    assert socks5.reply(socks5.REPLY_SUCCEEDED) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert socks5.reply(socks5.NOT_ALLOWED) == b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(("name", "code"), [
    ("REPLY_SUCCEEDED", 0), ("GENERAL_FAILURE", 1), ("NOT_ALLOWED", 2),
    ("NETWORK_UNREACHABLE", 3), ("HOST_UNREACHABLE", 4), ("CONNECTION_REFUSED", 5),
    ("TTL_EXPIRED", 6), ("COMMAND_NOT_SUPPORTED", 7), ("ADDRESS_TYPE_NOT_SUPPORTED", 8),
])
def test_every_rfc1928_reply_code_has_its_value_and_encodes(name: str, code: int) -> None:
    assert getattr(socks5, name) == code
    assert socks5.reply(code)[1] == code
    assert code in socks5.REPLY_TEXT


@pytest.mark.parametrize("code", [-1, 9, 255, 256])
def test_reply_refuses_a_code_that_rfc1928_does_not_define(code: int) -> None:
    with pytest.raises(LocalMisuse):
        socks5.reply(code)


@pytest.mark.parametrize(("data", "expected"), [
    (domain(b"example.com", 443), ConnectRequest("example.com", 443, 3)),
    (domain(b"Example.COM.", 8080), ConnectRequest("Example.COM.", 8080, 3)),
    (domain(b"127.0.0.1", 1), ConnectRequest("127.0.0.1", 1, 3)),
    (domain(b"under_score-dash.x", 65535), ConnectRequest("under_score-dash.x", 65535, 3)),
    (request(1, bytes((127, 0, 0, 1)), 8080), ConnectRequest("127.0.0.1", 8080, 1)),
    (request(1, bytes((93, 184, 216, 34)), 443), ConnectRequest("93.184.216.34", 443, 1)),
    (request(4, bytes(15) + b"\x01", 22), ConnectRequest("::1", 22, 4)),
    (request(4, bytes.fromhex("20010db8000000000000000000000001"), 443),
     ConnectRequest("2001:db8::1", 443, 4)),
])
def test_a_connect_request_is_answered_with_no_auth_and_returned(
        data: bytes, expected: ConnectRequest) -> None:
    out, found, handshake = feed([GREETING + data])
    assert out == CHOSEN
    assert found == expected
    assert handshake.request == expected
    assert handshake.leftover == b""


def test_a_greeting_offering_several_methods_including_no_auth_is_accepted() -> None:
    out, found, _ = feed([b"\x05\x03\x02\x01\x00" + domain(b"a.b")])
    assert (out, found) == (CHOSEN, ConnectRequest("a.b", 80, 3))


def test_the_method_choice_is_written_before_the_request_arrives() -> None:
    handshake = SocksHandshake()
    assert handshake.receive(GREETING[:2]) == (b"", None)
    assert handshake.receive(GREETING[2:]) == (CHOSEN, None)
    assert handshake.receive(domain(b"x.org")[:5]) == (b"", None)
    assert handshake.request is None
    assert handshake.receive(domain(b"x.org")[5:]) == (b"", ConnectRequest("x.org", 80, 3))


def test_bytes_after_the_request_are_kept_as_leftover() -> None:
    handshake = SocksHandshake()
    written, found = handshake.receive(GREETING + domain(b"x.org") + b"GET / HTTP/1.0\r\n")
    assert (written, found) == (CHOSEN, ConnectRequest("x.org", 80, 3))
    assert handshake.leftover == b"GET / HTTP/1.0\r\n"


def test_receive_after_the_request_is_misuse() -> None:
    handshake = SocksHandshake()
    handshake.receive(GREETING + domain(b"x.org"))
    with pytest.raises(LocalMisuse):
        handshake.receive(b"more")
    assert handshake.leftover == b""


def test_the_longest_handshake_fits_and_nothing_after_it_is_parsed() -> None:
    greeting = b"\x05\xff" + bytes(range(255))
    longest = domain(b".".join([b"a" * 63] * 3) + b"." + b"b" * 63, 65535)
    assert len(greeting + longest) == socks5.MAX_HANDSHAKE_BYTES
    after = b"\x05\x01\x00\xff" * 20_000  # looks like more requests: only stream data now
    out, found, handshake = feed([greeting + longest + after])
    assert out == CHOSEN and found is not None and len(found.host) == 255
    assert handshake.leftover == after


REFUSALS = [
    # (case, bytes, reason, answer)
    ("http request", b"GET / HTTP/1.1\r\n", "not_socks5", b""),
    ("socks4 connect", b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", "not_socks5", b""),
    ("empty method list", b"\x05\x00", "no_acceptable_method", NONE_ACCEPTABLE),
    ("username/password only", b"\x05\x01\x02", "no_acceptable_method", NONE_ACCEPTABLE),
    ("gssapi and password", b"\x05\x02\x01\x02", "no_acceptable_method", NONE_ACCEPTABLE),
    ("request version 4", GREETING + b"\x04\x01\x00\x01", "bad_request",
     CHOSEN + socks5.reply(1)),
    ("reserved byte set", GREETING + request(1, bytes(4), rsv=1), "bad_request",
     CHOSEN + socks5.reply(1)),
    ("bind", GREETING + request(1, bytes(4), cmd=2), "bad_command", CHOSEN + socks5.reply(7)),
    ("udp associate", GREETING + request(1, bytes(4), cmd=3), "bad_command",
     CHOSEN + socks5.reply(7)),
    ("command 0", GREETING + b"\x05\x00", "bad_command", CHOSEN + socks5.reply(7)),
    ("address type 2", GREETING + request(2, bytes(4)), "bad_address_type",
     CHOSEN + socks5.reply(8)),
    ("address type 255", GREETING + b"\x05\x01\x00\xff", "bad_address_type",
     CHOSEN + socks5.reply(8)),
    ("empty name", GREETING + domain(b""), "bad_domain", CHOSEN + socks5.reply(1)),
    ("NUL in name", GREETING + domain(b"a\x00b.com"), "bad_domain", CHOSEN + socks5.reply(1)),
    ("space in name", GREETING + domain(b"a b.com"), "bad_domain", CHOSEN + socks5.reply(1)),
    ("newline in name", GREETING + domain(b"a.com\n"), "bad_domain", CHOSEN + socks5.reply(1)),
    ("high byte in name", GREETING + domain(b"\xc3\xa9.fr"), "bad_domain",
     CHOSEN + socks5.reply(1)),
    ("colon in name", GREETING + domain(b"a.com:22"), "bad_domain", CHOSEN + socks5.reply(1)),
    ("bracketed ipv6 as name", GREETING + domain(b"[::1]"), "bad_domain",
     CHOSEN + socks5.reply(1)),
    ("empty label", GREETING + domain(b"a..com"), "bad_domain", CHOSEN + socks5.reply(1)),
    ("only a dot", GREETING + domain(b"."), "bad_domain", CHOSEN + socks5.reply(1)),
    ("label of 64", GREETING + domain(b"a" * 64 + b".com"), "bad_domain",
     CHOSEN + socks5.reply(1)),
    ("port 0 by name", GREETING + domain(b"a.com", 0), "bad_port", CHOSEN + socks5.reply(1)),
    ("port 0 by address", GREETING + request(1, bytes((1, 2, 3, 4)), 0), "bad_port",
     CHOSEN + socks5.reply(1)),
]


@pytest.mark.parametrize(("data", "reason", "answer"), [case[1:] for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
def test_a_refused_handshake_says_why_and_what_to_answer(
        data: bytes, reason: str, answer: bytes) -> None:
    error = refusal(data)
    assert (error.reason, error.answer) == (reason, answer)
    assert reason in socks5.REASONS
    assert isinstance(error, ZmixError)


def test_every_reason_is_reachable_by_a_table_case() -> None:
    assert {case[2] for case in REFUSALS} == set(socks5.REASONS)


def test_a_refusal_after_an_earlier_method_choice_answers_only_the_reply() -> None:
    handshake = SocksHandshake()
    assert handshake.receive(GREETING) == (CHOSEN, None)
    with pytest.raises(SocksProtocolError) as caught:
        handshake.receive(request(1, bytes(4), cmd=2))
    assert caught.value.answer == socks5.reply(socks5.COMMAND_NOT_SUPPORTED)


def test_a_bad_field_is_refused_as_soon_as_it_arrives() -> None:
    handshake = SocksHandshake()
    handshake.receive(GREETING)
    assert handshake.receive(b"\x05") == (b"", None)  # positive control: a good prefix waits
    with pytest.raises(SocksProtocolError):
        handshake.receive(b"\x02")


def test_receive_after_a_refusal_is_misuse() -> None:
    handshake = SocksHandshake()
    with pytest.raises(SocksProtocolError):
        handshake.receive(b"\x04")
    with pytest.raises(LocalMisuse):
        handshake.receive(b"\x05")


@pytest.mark.parametrize("whole", [
    GREETING + domain(b"example.com", 443),
    GREETING + request(1, bytes((10, 0, 0, 1)), 443),
    GREETING + request(4, bytes(15) + b"\x01", 443),
], ids=["name", "ipv4", "ipv6"])
def test_a_truncated_handshake_waits_without_answering_or_failing(whole: bytes) -> None:
    for cut in range(len(whole)):
        out, found, handshake = feed([whole[:cut]])
        assert found is None and handshake.request is None
        assert out == (CHOSEN if cut >= len(GREETING) else b"")
    assert feed([whole])[1] is not None  # positive control: the whole handshake completes


def outcome(chunks: list[bytes]) -> tuple[str, bytes, ConnectRequest | None, bytes]:
    """Feed chunks until done or refused: (how it ended, all bytes to write, request, the
    client's bytes after the request: the leftover plus the chunks not fed)."""
    handshake = SocksHandshake()
    out = b""
    for index, chunk in enumerate(chunks):
        try:
            written, got = handshake.receive(chunk)
        except SocksProtocolError as error:
            assert error.reason in socks5.REASONS
            return error.reason, out + error.answer, None, b""
        out += written
        if got is not None:  # done: feeding more would be misuse, the rest is stream data
            return "ok", out, got, handshake.leftover + b"".join(chunks[index + 1:])
    return "ok", out, None, b""


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, repeats allowed)."""
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


plausible = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda tail: GREETING + tail, st.binary(max_size=300)),
    st.builds(lambda name, port, tail: GREETING + domain(name, port) + tail,
              st.binary(min_size=0, max_size=255), st.integers(0, 65535), st.binary(max_size=20)),
    st.builds(lambda atyp, tail: GREETING + bytes((5, 1, 0, atyp)) + tail,
              st.integers(0, 255), st.binary(max_size=40)),
)


@settings(max_examples=400, deadline=None)
@given(plausible, st.lists(st.integers(0, 700), max_size=8))
def test_any_bytes_in_any_split_give_the_same_outcome_and_only_socks_errors(
        data: bytes, cuts: list[int]) -> None:
    whole = outcome([data])
    assert outcome(splits(data, cuts)) == whole
    assert outcome([data[i:i + 1] for i in range(len(data))]) == whole
    status, _, found, leftover = whole
    if status == "ok" and found is not None:
        assert found.port != 0 and len(found.host) >= 1
        assert data.endswith(leftover)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z0-9_-]{1,20}(\.[a-z0-9_-]{1,20}){0,5}\.?", fullmatch=True),
       st.integers(1, 65535))
def test_every_host_name_is_accepted_as_sent(name: str, port: int) -> None:
    status, out, found, _ = outcome([GREETING + domain(name.encode(), port)])
    assert (status, out, found) == ("ok", CHOSEN, ConnectRequest(name, port, 3))


def test_the_handshake_and_policy_modules_import_no_sockets_or_zmq() -> None:
    import os
    import subprocess
    import sys

    code = ("import sys, zmix.tunnel.socks5, zmix.tunnel.policy; "
            "print(sorted(m for m in ('zmq', 'socket', 'selectors') if m in sys.modules))")
    # without coverage's subprocess hook, which imports modules of its own
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60, env=env)
    assert done.stdout.strip() == "[]"
