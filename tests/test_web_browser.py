"""The web view in a real headless browser (Debian's chromium and chromedriver, driven by
selenium): a real network runs under ``zmix-up --web``, and the page must load without console
errors, show every node, show figures that move while traffic flows, and show a killed node as
down. A screenshot is saved (the path is printed; also under $ZMIX_ARTIFACTS if set)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_web import fake_report, topology_of

from zmix.bench.common import free_ports, make_network
from zmix.runtime.launcher import NODE_LOCK
from zmix.web.pages import network_graph
from zmix.web.server import WebServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
LAYERS = (("mix-a1", "mix-a2"), ("mix-b1",))
PROVIDERS = ("provider-1", "provider-2")
NODES = (*PROVIDERS, *(n for layer in LAYERS for n in layer))
VICTIM = "mix-a2"  # run by its own zmix-node, so zmix-up does not restart it once killed

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install selenium; it is in the test extras)")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("chromium and chromedriver are not installed (Debian: apt-get install chromium "
                "chromium-driver; .ci/run installs them)", allow_module_level=True)


def wait_for(check: Callable[[], Any], what: str, timeout: float,
             why: Callable[[], str] = lambda: "") -> Any:
    """Return ``check()``'s first true value; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}. {why()}")
        time.sleep(0.1)


def spawn(module: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ,
                                                               "PYTHONUNBUFFERED": "1"})


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """Run a small network: zmix-up --web runs every node but VICTIM, which zmix-node runs;
    yield (the web view's URL, the state directory, zmix-up's output file)."""
    topology, state = make_network(tmp_path / "net", layers=LAYERS, providers=PROVIDERS,
                                   clients={"alice": "provider-1", "bob": "provider-2"},
                                   loopix={"mix_loop_rate": 4.0})
    port = free_ports(1)[0]
    others = [n for n in (*NODES, "authority-1") if n != VICTIM]
    up_log = tmp_path / "zmix-up.out"
    up = spawn("zmix.cli.up", [topology.path, "--state", str(state), "--web", str(port),
                               "--only", *others], up_log)
    victim = spawn("zmix.cli.node", ["--state", str(state), "--name", VICTIM],
                   tmp_path / "victim.out")
    client: subprocess.Popen[bytes] | None = None
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: f"web view at {url}" in up_log.read_text(), "zmix-up to serve", 30,
                 lambda: up_log.read_text()[-2000:])
        wait_for(lambda: "ready" in up_log.read_text() or up.poll() is not None,
                 "the network to start", 90, lambda: up_log.read_text()[-2000:])
        assert up.poll() is None, up_log.read_text()[-2000:]
        # Traffic: alice's daemon keeps her online, her Poisson streams running through it.
        client = spawn("zmix.cli.client", ["--state", str(state), "--as", "alice"],
                       tmp_path / "alice.out")
        yield url, state, up_log
    finally:
        if client is not None:
            stop(client)
        stop(victim)
        stop(up)


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1500,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def rows(driver: Any) -> dict[str, dict[str, str | None]]:
    """Return, per node row of the table, its data attributes and its state cell's text."""
    script = """return Array.from(document.querySelectorAll('#nodes tr[data-node]')).map(
        (r) => [r.dataset.node, r.dataset.state, r.dataset.received, r.children[3].textContent]);"""
    return {name: {"state": state, "received": received, "text": text}
            for name, state, received, text in driver.execute_script(script)}


def map_states(driver: Any) -> dict[str, set[str]]:
    """Return, per node drawn on the map, the states of its boxes (providers have two)."""
    script = """return Array.from(document.querySelectorAll('#map g.node')).map(
        (g) => [g.dataset.node, g.dataset.state, g.querySelector('.state').textContent]);"""
    states: dict[str, set[str]] = {}
    for name, state, text in driver.execute_script(script):
        states.setdefault(name, set()).add(f"{state}:{text}")
    return states


def severe(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def save_screenshot(driver: Any, tmp_path: Path) -> Path:
    path = tmp_path / "zmix-web-view.png"
    assert driver.save_screenshot(str(path)), "the screenshot was not saved"
    print(f"screenshot: {path}")
    artifacts = os.environ.get("ZMIX_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        copy = Path(artifacts) / path.name
        shutil.copyfile(path, copy)
        print(f"screenshot: {copy}")
    return path


def test_the_web_view_shows_every_node_live_and_a_killed_node_as_down(
        network: tuple[str, Path, Path], browser: Any, tmp_path: Path) -> None:
    url, state, _ = network
    browser.get(url)
    wait_for(lambda: browser.execute_script(
        "return document.getElementById('connection').dataset.state") == "live",
        "the page to receive a report", 20)
    assert set(rows(browser)) == set(NODES)
    assert set(map_states(browser)) == set(NODES)
    assert len(browser.find_elements("css selector", "#map line.link")) == 2 * 2 + 2 + 2
    wait_for(lambda: all(r["state"] == "up" for r in rows(browser).values()),
             "every node shown up", 30, lambda: str(rows(browser)))

    # Mix loops (each node sends 4 per second) and alice's streams flow: every node's figures
    # move, links carry packets, and alice is online at her provider.
    before = {name: int(r["received"] or 0) for name, r in rows(browser).items()}
    wait_for(lambda: all(int(r["received"] or 0) > before[name]
                         for name, r in rows(browser).items()),
             "every node's received count to grow", 20, lambda: f"{before} -> {rows(browser)}")
    wait_for(lambda: browser.execute_script(
        "return Array.from(document.querySelectorAll('#map line.link')).some("
        "(l) => Number(l.dataset.packetsPerS) > 0)"), "a link to show packets", 20)
    clients = '#map g.node[data-node="provider-1"] .clients'
    wait_for(lambda: browser.find_element("css selector", clients).text.startswith(
        "clients online 1 / 1 declared"), "alice online at provider-1", 30,
        lambda: browser.find_element("css selector", clients).text)
    assert severe(browser) == []

    pid = int((state / "nodes" / VICTIM / NODE_LOCK).read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: rows(browser)[VICTIM]["state"] == "down", f"{VICTIM} shown down", 20,
             lambda: str(rows(browser)))
    shown = rows(browser)
    assert shown[VICTIM]["text"] == "DOWN"  # in words, not only in colour
    assert map_states(browser)[VICTIM] == {"down:DOWN"}
    assert all(r["state"] == "up" for name, r in shown.items() if name != VICTIM), shown
    save_screenshot(browser, tmp_path)
    assert severe(browser) == []


def test_the_page_says_stale_without_updates_reconnects_and_shows_text_as_text(
        browser: Any) -> None:
    """Against a fake source: a report whose error text is markup is shown as text; no report
    for 5 s makes the page say "stale"; a server that comes back is reconnected to."""
    topology = topology_of()
    paused = threading.Event()
    hostile = "<img src=x data-injected=1> no answer"

    def source() -> dict[str, Any]:
        if paused.is_set():
            raise RuntimeError("no report now")
        report = fake_report(topology, 1, down=("mix-b1",))
        report["nodes"][4]["error"] = hostile
        return report

    port = free_ports(1)[0]
    web = WebServer("127.0.0.1", port, network_graph(topology), source, interval=0.2)
    web.start()
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        connection = "return document.getElementById('connection').dataset.state"
        wait_for(lambda: browser.execute_script(connection) == "live", "live", 15)
        cell = browser.find_element("css selector", '#nodes tr[data-node="mix-b1"] td:last-child')
        assert cell.text == hostile
        assert browser.find_elements("css selector", "[data-injected]") == []
        assert severe(browser) == []
        paused.set()
        wait_for(lambda: browser.execute_script(connection) == "stale", "stale", 15)
        assert "stale: no update for" in browser.find_element("id", "connection").text
        web.close()
        paused.clear()
        web = WebServer("127.0.0.1", port, network_graph(topology), source, interval=0.2)
        web.start()
        wait_for(lambda: browser.execute_script(connection) == "live", "live again", 20)
    finally:
        web.close()
