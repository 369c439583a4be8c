"""The exit's allowlist (zmix.tunnel.policy, docs/tunnel.md "Exit policy")."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix.errors import ConfigError, LocalMisuse
from zmix.tunnel.policy import ExitPolicy


def policy(*patterns: str) -> ExitPolicy:
    return ExitPolicy.from_patterns(list(patterns))


NAME_CASES = [
    # (patterns, host, port, allowed)
    (["example.com:443"], "example.com", 443, True),
    (["example.com:443"], "EXAMPLE.com", 443, True),
    (["example.com:443"], "example.com.", 443, True),
    (["Example.COM:443"], "example.com", 443, True),
    (["example.com:443"], "example.com", 80, False),
    (["example.com:443"], "www.example.com", 443, False),
    (["example.com:443"], "example.org", 443, False),
    (["example.com:443"], "badexample.com", 443, False),
    (["*.example.com:443"], "www.example.com", 443, True),
    (["*.example.com:443"], "a.b.example.com", 443, True),
    (["*.example.com:443"], "example.com", 443, False),
    (["*.example.com:443"], "wwwexample.com", 443, False),
    (["*.example.com:443"], "www.example.com.evil.net", 443, False),
    (["*.example.com:443"], "www.example.com", 444, False),
    (["*:80"], "anything.at.all", 80, True),
    (["*:80"], "anything.at.all", 81, False),
    (["*:*"], "x", 1, True),
    (["*:*"], "x", 65535, True),
    (["web:8000-8080"], "web", 8000, True),
    (["web:8000-8080"], "web", 8080, True),
    (["web:8000-8080"], "web", 7999, False),
    (["web:8000-8080"], "web", 8081, False),
    (["web:*"], "web", 22, True),
    (["10.0.0.0/8:*"], "internal.corp", 22, False),  # IP patterns do not match names
    # IP literals as the requested host
    (["127.0.0.1:8080"], "127.0.0.1", 8080, True),
    (["127.0.0.1:8080"], "127.0.0.1", 8081, False),
    (["127.0.0.1:8080"], "127.0.0.2", 8080, False),
    (["127.0.0.0/8:8080"], "127.9.9.9", 8080, True),
    (["10.0.0.0/8:*"], "10.1.2.3", 22, True),
    (["10.0.0.0/8:*"], "11.1.2.3", 22, False),
    (["*:*"], "93.184.216.34", 80, True),
    (["*:*"], "127.0.0.1", 80, False),  # "*" is not an explicit allowance for loopback
    (["*:*"], "10.0.0.1", 80, False),
    (["*:*"], "169.254.169.254", 80, False),
    (["*:*"], "0.0.0.0", 80, False),
    (["*:*"], "224.0.0.1", 80, False),
    (["*:*"], "100.64.0.1", 80, False),
    (["*:*"], "::1", 80, False),
    (["*:*"], "::ffff:127.0.0.1", 80, False),
    (["*:*"], "2606:4700::1111", 80, True),
    (["0.0.0.0/0:*"], "127.0.0.1", 80, True),  # an explicit CIDR containing it
    (["[::1]:22"], "::1", 22, True),
    (["[::1]:22"], "[::1]", 22, True),
    (["[::1]:22"], "::2", 22, False),
    (["[fd00::/8]:*"], "fd12::1", 5, True),
    (["127.0.0.1:80"], "::ffff:127.0.0.1", 80, True),
    (["localhost:80"], "127.0.0.1", 80, False),  # a name pattern does not match an address
    ([], "example.com", 443, False),
    ([], "127.0.0.1", 80, False),
    (["example.com:443"], "exa mple.com", 443, False),
    (["*:*"], "a\x00b", 443, False),
    (["*:*"], "", 443, False),
]


@pytest.mark.parametrize(("patterns", "host", "port", "allowed"), NAME_CASES)
def test_allows_name_matches_the_pattern_table(
        patterns: list[str], host: str, port: int, allowed: bool) -> None:
    assert policy(*patterns).allows_name(host, port) is allowed


ADDRESS_CASES = [
    # (patterns, resolved address, port, requested, allowed)
    (["*.example.com:443"], "93.184.216.34", 443, "www.example.com", True),
    (["*.example.com:443"], "127.0.0.1", 443, "www.example.com", False),
    (["*.example.com:443"], "10.1.1.1", 443, "www.example.com", False),
    (["*.example.com:443"], "192.168.1.1", 443, "www.example.com", False),
    (["*.example.com:443"], "169.254.169.254", 443, "www.example.com", False),
    (["*.example.com:443"], "0.0.0.0", 443, "www.example.com", False),
    (["*.example.com:443"], "239.1.1.1", 443, "www.example.com", False),
    (["*.example.com:443"], "::1", 443, "www.example.com", False),
    (["*.example.com:443"], "fe80::1%eth0", 443, "www.example.com", False),
    (["*.example.com:443"], "::ffff:127.0.0.1", 443, "www.example.com", False),
    (["*.example.com:443"], "64:ff9b::7f00:1", 443, "www.example.com", False),
    (["*.example.com:443"], "2002:7f00:1::1", 443, "www.example.com", False),
    (["*.example.com:443"], "2002:0a00:0001::1", 443, "www.example.com", False),
    (["*.example.com:443"], "2001:0:4136:e378:8000:63bf:3fff:fdd2", 443, "www.example.com",
     False),  # Teredo
    (["*.example.com:443"], "2002:5db8:d822::1", 443, "www.example.com", True),  # 6to4, public
    (["*.example.com:443"], "2606:4700::1111", 443, "www.example.com", True),
    (["*.example.com:443"], "93.184.216.34", 443, "example.org", False),
    (["*.example.com:443"], "93.184.216.34", 80, "www.example.com", False),
    (["*.example.com:443"], "not an address", 443, "www.example.com", False),
    # an internal name reaches its private address only with an explicit IP pattern
    (["intranet:80"], "10.0.0.5", 80, "intranet", False),
    (["intranet:80", "10.0.0.5:80"], "10.0.0.5", 80, "intranet", True),
    (["intranet:80", "10.0.0.0/8:80"], "10.0.0.5", 80, "intranet", True),
    (["intranet:80", "10.0.0.5:81"], "10.0.0.5", 80, "intranet", False),
    (["localhost:8080", "127.0.0.1:8080"], "127.0.0.1", 8080, "localhost", True),
    (["localhost:8080", "127.0.0.1:8080"], "::ffff:127.0.0.1", 8080, "localhost", True),
    (["*:*"], "127.0.0.1", 80, "localhost", False),
    (["*:*"], "93.184.216.34", 80, "anything", True),
    # an IP literal request resolves to itself only
    (["127.0.0.1:8080"], "127.0.0.1", 8080, "127.0.0.1", True),
    (["127.0.0.1:8080"], "127.0.0.2", 8080, "127.0.0.1", False),
    (["*:*"], "93.184.216.34", 80, "93.184.216.34", True),
    (["*:*"], "93.184.216.35", 80, "93.184.216.34", False),
    # a name that is only numbers resolves (inet_aton) to loopback: refused without an IP rule
    (["2130706433.x:80", "*:80"], "127.0.0.1", 80, "2130706433", False),
]


@pytest.mark.parametrize(("patterns", "address", "port", "requested", "allowed"), ADDRESS_CASES)
def test_allows_address_checks_the_resolved_address(
        patterns: list[str], address: str, port: int, requested: str, allowed: bool) -> None:
    assert policy(*patterns).allows_address(address, port, requested=requested) is allowed


BAD_PATTERNS = [
    ("", "empty pattern"),
    ("example.com", "no port"),
    (":80", "no port"),
    ("example.com:", "bad port"),
    ("example.com:0", "outside 1..65535"),
    ("example.com:65536", "outside 1..65535"),
    ("example.com:http", "bad port"),
    ("example.com:-5", "bad port"),
    ("example.com:90-80", "runs backwards"),
    ("example.com:80-", "bad port"),
    ("foo.*.com:80", "bad host name"),
    ("*example.com:80", "bad host name"),
    ("*.*.com:80", "bad host name"),
    ("exa mple.com:80", "bad host name"),
    ("a..b:80", "bad host name"),
    (" example.com:80", "spaces"),
    ("10.0.0.1/8:80", "host bits set"),
    ("10.0.0.0/33:80", "bad IPv4"),
    ("300.1.1.1:80", "bad IPv4"),
    ("::1:80", "brackets"),
    ("[::1]80", "[ADDRESS]:PORT"),
    ("[::1:80", "[ADDRESS]:PORT"),
    ("[127.0.0.1]:80", "not an IPv6"),
    ("[zz::1]:80", "bad IPv6"),
]


@pytest.mark.parametrize(("pattern", "problem"), BAD_PATTERNS)
def test_a_bad_pattern_is_a_config_error_naming_the_source_and_pattern(
        pattern: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ExitPolicy.from_patterns(["example.com:443", pattern], source="--allow")
    assert caught.value.path == "--allow"
    assert caught.value.key == pattern
    assert problem in caught.value.problem


def test_good_patterns_parse_and_keep_their_text() -> None:
    patterns = ["example.com:443", "*.example.com:80-90", "*:*", "10.0.0.0/8:22",
                "127.0.0.1:8080", "[::1]:5", "[fd00::/8]:*", "host_name-1.local.:1"]
    assert ExitPolicy.from_patterns(patterns).patterns == tuple(patterns)


def test_one_string_instead_of_a_list_of_patterns_is_misuse() -> None:
    with pytest.raises(LocalMisuse):
        ExitPolicy.from_patterns("example.com:443")  # type: ignore[arg-type]
    assert ExitPolicy.from_patterns(["example.com:443"]).allows_name("example.com", 443)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_a_policy_file_is_loaded_and_applied(tmp_path: Path) -> None:
    loaded = ExitPolicy.load(write(tmp_path, "allow:\n  - '*.example.com:443'\n"
                                             "  - 127.0.0.1:8080\n"))
    assert loaded.allows_name("www.example.com", 443)
    assert loaded.allows_name("127.0.0.1", 8080)
    assert not loaded.allows_name("127.0.0.1", 8081)


def test_an_empty_allow_list_refuses_everything(tmp_path: Path) -> None:
    loaded = ExitPolicy.load(write(tmp_path, "allow: []\n"))
    assert loaded.patterns == ()
    assert not loaded.allows_name("example.com", 443)
    assert not loaded.allows_address("93.184.216.34", 443, requested="example.com")


BAD_FILES = [
    # (text, key, problem)
    ("allow: [\n", "(yaml)", "not valid YAML"),
    ("", "(top level)", "must be a mapping"),
    ("- example.com:443\n", "(top level)", "must be a mapping"),
    ("allow: [example.com:443]\ndeny: []\n", "deny", "unknown key"),
    ("alow: [example.com:443]\n", "alow", "unknown key"),
    ("{}\n", "allow", "missing"),
    ("allow: example.com:443\n", "allow", "must be a list"),
    ("allow:\n", "allow", "must be a list"),
    ("allow: [example.com:443, 443]\n", "allow[1]", "must be a HOST:PORT string"),
    ("allow: [example.com:443, 'example.com:0']\n", "allow[1]", "outside 1..65535"),
    ("allow: ['*.example.com:443', 'foo.*.com:443']\n", "allow[1]", "bad host name"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD_FILES)
def test_a_bad_policy_file_is_a_config_error_naming_file_key_and_problem(
        tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        ExitPolicy.load(path)
    assert (caught.value.path, caught.value.key) == (str(path), key)
    assert problem in caught.value.problem
    assert str(path) in str(caught.value) and key in str(caught.value)


def test_a_missing_unreadable_or_binary_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        ExitPolicy.load(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="cannot read it"):
        ExitPolicy.load(tmp_path)  # a directory
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"allow: [\xff]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        ExitPolicy.load(binary)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_pattern_text_parses_or_is_a_config_error(text: str) -> None:
    try:
        parsed = ExitPolicy.from_patterns([text])
    except ConfigError as error:
        assert error.key == text
    else:
        assert parsed.patterns == (text,)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.integers(0, 70000),
       st.sampled_from(["*:*", "*.example.com:443", "example.com:1-100", "10.0.0.0/8:*",
                        "[::1]:22", "127.0.0.1:80"]))
def test_any_host_gives_a_yes_or_no_never_an_exception(host: str, port: int, pattern: str) -> None:
    checked = policy(pattern)
    assert checked.allows_name(host, port) in (True, False)
    assert checked.allows_address(host, port, requested=host) in (True, False)
    assert checked.allows_address("127.0.0.1", port, requested=host) in (True, False)
