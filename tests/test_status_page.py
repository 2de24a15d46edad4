"""The status page in a real browser (Debian's headless Chromium), and its rendering.

Each browser test loads the page from a running sidecar and reads the DOM the browser
built, with the requests the browser sent and what it logged (``tests/browser.py``). The
screenshots go to the test's directory; with ``SIDECAR_UPDATE_DOCS=1`` the desktop one
also replaces ``docs/status-page.png``, the picture in README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest

from sidecar.examples import demo
from sidecar.status.assets import PALETTES
from sidecar.status.page import duration, render

from . import apps
from .browser import Chromium, Page
from .conftest import ROOT, LogWatch, fetch, require_binaries
from .test_status import loop_blocked, poll, snapshot, verdicts
from .workers.test_supervisor import start_pod

DOCS_SCREENSHOT = ROOT / "docs" / "status-page.png"

# What the page shows for each probe: [{probe, checks: [{name, state}]}], from the DOM.
CHECKS_IN_DOM = """
[...document.querySelectorAll('h3[id^="probe-"]')].map(heading => ({
  probe: heading.id.slice("probe-".length),
  checks: [...heading.nextElementSibling.querySelectorAll("tbody tr")].map(row => ({
    name: row.querySelector(".check-name").textContent,
    state: row.querySelector(".badge").textContent,
  })),
}))
"""
# The workers' table, one list of cell texts per row.
WORKERS_IN_DOM = """
[...document.querySelectorAll('#workers tbody tr')].map(row =>
  [...row.querySelectorAll('td, th')].map(cell => cell.textContent.trim()))
"""
ENDPOINTS = {"readiness": "/readyz", "liveness": "/livez", "startup": "/startupz"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    """One headless Chromium for the module; each test opens its own tabs."""
    chromium = Chromium(require_binaries("chromium")["chromium"])
    yield chromium
    chromium.close()


@pytest.fixture
def open_page(browser: Chromium) -> Iterator[Callable[..., Page]]:
    """Open tabs (``Chromium.new_page`` arguments); each is closed at teardown."""
    pages: list[Page] = []

    def open_tab(**options: Any) -> Page:
        page = browser.new_page(**options)
        pages.append(page)
        return page

    yield open_tab
    for page in pages:
        page.close()


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return int(listener.getsockname()[1])


@pytest.fixture
def demo_sidecar(run_sidecar: Any, logs: LogWatch) -> Any:
    """The demo app with its passing pool check, a failing search check, some traffic and
    stalls of its event loop in the lag history: a pod worth looking at.

    For the README's picture (``SIDECAR_UPDATE_DOCS``) it runs for half a minute first,
    so the history shows more than two seconds.
    """
    search = {
        "name": "search",
        "type": "tcp",
        "host": "127.0.0.1",
        "port": closed_port(),
        "interval": 0.5,
        "tags": ["external"],
    }
    target = "sidecar.examples.demo:app"
    running = run_sidecar(demo.app, app__target=target, health__checks=[search])
    logs.wait_for(r"health check 'demo-pool' \(readiness\) passes")
    logs.wait_for(r"health check 'search' failed \(2/2\)")  # past its threshold
    for path in ("/", "/echo", "/", "/nope", "/"):
        fetch(running.app(path), "POST" if path == "/echo" else "GET", body=b"hi")
    longer = bool(os.environ.get("SIDECAR_UPDATE_DOCS"))
    stalls, apart = ((0.2, 0.5, 1.3, 0.3, 0.7, 0.4), 5) if longer else ((0.3, 0.6), 1)
    for seconds in stalls:
        fetch(running.app(f"/block?seconds={seconds}"))
        fetch(running.app("/"))
        # Samples are taken once a second: wait for the next ones, so stalls lie apart.
        wanted = len(snapshot(running)["event_loop"]["history_max_lag_s"]) + apart
        poll(running, lambda d, n=wanted: len(d["event_loop"]["history_max_lag_s"]) >= n)
    return running


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_nothing_but_the_page(page: Page, admin: str) -> None:
    """Every request went to the admin port, and the browser reported no problem."""
    assert page.requests, "the browser recorded no request"
    assert {origin(request["url"]) for request in page.requests} == {origin(admin)}
    assert {request["type"] for request in page.requests} <= {"Document", "Fetch"}
    assert page.messages == []  # CSP violations, script errors, failed loads: none
    assert [issue["code"] for issue in page.issues] == []


def assert_shows_every_check(page: Page, running: Any) -> None:
    shown = page.evaluate(CHECKS_IN_DOM)
    assert [probe["probe"] for probe in shown] == ["readiness", "liveness", "startup"]
    for probe in shown:
        expected = verdicts(running, ENDPOINTS[probe["probe"]])
        seen = {check["name"]: check["state"] == "ok" for check in probe["checks"]}
        assert seen == expected, probe["probe"]


def test_a_browser_shows_the_phase_and_every_check(
    demo_sidecar: Any, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    running = demo_sidecar
    page = open_page(width=1200, height=900)
    page.navigate(running.admin("/"))
    assert page.evaluate("document.querySelector('#phase').dataset.phase") == "ready"
    assert page.evaluate("document.title").startswith("ready · ")
    assert_shows_every_check(page, running)
    readiness = page.evaluate(CHECKS_IN_DOM)[0]["checks"]
    assert {"name": "search", "state": "failed"} in readiness
    assert {"name": "demo-pool", "state": "ok"} in readiness
    # The style sheet applied (its hash is in the policy): the phase wears its colour.
    assert page.evaluate("getComputedStyle(document.querySelector('#phase')).backgroundColor") == (
        "rgb(218, 251, 225)"
    )
    # The lag chart is drawn, and the stall is in it.
    assert page.evaluate("document.querySelector('svg.chart').getBoundingClientRect().width") > 800
    label = page.evaluate("document.querySelector('svg.chart').getAttribute('aria-label')")
    assert_nothing_but_the_page(page, running.admin("/"))
    document = snapshot(running)
    peak = max(document["event_loop"]["history_max_lag_s"])
    assert peak >= 0.5
    assert f"peak {duration(peak)}" in label
    # The JSON says the same as the probes.
    for name, endpoint in ENDPOINTS.items():
        checks = document["probes"][name]["checks"]
        assert {c["name"]: c["ok"] for c in checks} == verdicts(running, endpoint)

    shot = tmp_path / "status-page.png"
    width, height = page.screenshot(shot)
    assert png_size(shot) == (width, height)
    assert width == 1200
    assert height > 1200  # the whole page, not the viewport
    if os.environ.get("SIDECAR_UPDATE_DOCS"):
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)


def test_with_scripts_off_the_page_is_complete(
    demo_sidecar: Any, open_page: Callable[..., Page]
) -> None:
    page = open_page(scripts=False)
    page.navigate(demo_sidecar.admin("/"))
    # The refresh script did not run: the note still says what a reload does.
    note = page.evaluate("document.getElementById('refresh-note').textContent")
    assert note.startswith("This page shows the state when it was served; reload it")
    assert page.evaluate("document.querySelector('#phase').dataset.phase") == "ready"
    assert_shows_every_check(page, demo_sidecar)
    assert page.evaluate("document.querySelectorAll('svg.chart path.area').length") == 1
    assert_nothing_but_the_page(page, demo_sidecar.admin("/"))


def test_the_page_refreshes_itself(run_sidecar: Any, open_page: Callable[..., Page]) -> None:
    running = run_sidecar(apps.lifespan_app())
    page = open_page()
    url = running.admin("/?refresh=1")
    page.navigate(url)
    assert page.evaluate("document.getElementById('refresh-note').textContent") == (
        "Refreshes every 1 s while this tab is visible."
    )
    assert page.evaluate("document.querySelector('#phase').dataset.phase") == "ready"
    assert fetch(running.admin("/prestop")).status == 200  # drain_delay 0: at once
    page.wait_for("document.querySelector('#phase').dataset.phase === 'draining'")
    assert page.evaluate("document.title").startswith("draining · ")
    assert page.evaluate("location.href") == url  # swapped in place, not reloaded
    assert [r["type"] for r in page.requests].count("Document") == 1
    assert {r["url"] for r in page.requests if r["type"] == "Fetch"} == {url}
    assert_nothing_but_the_page(page, url)


def test_the_page_loads_while_the_app_loop_is_blocked(
    run_sidecar: Any, logs: LogWatch, open_page: Callable[..., Page]
) -> None:
    page = open_page()
    with loop_blocked(run_sidecar, logs) as running:
        page.navigate(running.admin("/"))
        readiness = page.evaluate(CHECKS_IN_DOM)[0]["checks"]
        result = page.evaluate(
            "[...document.querySelectorAll('#probe-readiness + .wrap tbody tr')]"
            ".find(row => row.querySelector('.check-name').textContent === 'event-loop')"
            ".cells[2].textContent"
        )
    assert {"name": "event-loop", "state": "failed"} in readiness
    assert result.startswith("event loop blocked for")
    assert_nothing_but_the_page(page, running.admin("/"))


def test_on_a_phone(demo_sidecar: Any, open_page: Callable[..., Page], tmp_path: Path) -> None:
    page = open_page(width=390, height=844, mobile=True)
    page.navigate(demo_sidecar.admin("/"))
    # Nothing wider than the screen, text at a readable size, rows stacked as cards.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("getComputedStyle(document.body).fontSize") == "16px"
    assert page.evaluate("getComputedStyle(document.querySelector('tbody td')).display") == "grid"
    assert_shows_every_check(page, demo_sidecar)
    shot = tmp_path / "status-page-phone.png"
    width, _ = page.screenshot(shot)
    assert png_size(shot)[0] == width == 390
    assert_nothing_but_the_page(page, demo_sidecar.admin("/"))


def test_the_dark_scheme(run_sidecar: Any, open_page: Callable[..., Page]) -> None:
    running = run_sidecar(apps.lifespan_app())
    page = open_page(dark=True)
    page.navigate(running.admin("/"))
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(13, 17, 23)"
    assert page.evaluate("getComputedStyle(document.body).color") == "rgb(230, 237, 243)"


# -- rendering, without a browser ---------------------------------------------------------


def _luminance(color: str) -> float:
    channels = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, other: str) -> float:
    """The WCAG 2 contrast ratio of two ``#rrggbb`` colours."""
    light, dark = sorted((_luminance(one), _luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


@pytest.mark.parametrize("scheme", sorted(PALETTES))
def test_every_colour_pair_has_enough_contrast(scheme: str) -> None:
    palette = PALETTES[scheme]
    text = [
        ("fg", "bg"),
        ("fg", "panel"),
        ("muted", "bg"),
        ("muted", "panel"),
        ("ok", "ok-bg"),
        ("bad", "bad-bg"),
        ("warn", "warn-bg"),
    ]
    for foreground, background in text:  # WCAG AA for text
        ratio = contrast(palette[foreground], palette[background])
        assert ratio >= 4.5, f"{scheme}: {foreground} on {background} is {ratio:.2f}:1"
    for mark in ("chart", "limit", "ok", "bad"):  # WCAG AA for graphics: the bars and lines
        ratio = contrast(palette[mark], palette["panel"])
        assert ratio >= 3, f"{scheme}: {mark} on panel is {ratio:.2f}:1"


def test_a_browser_shows_each_worker_of_a_pod(cli: Any, open_page: Callable[..., Page]) -> None:
    # The supervisor's page in the browser: every probe line the pod answers with, and a
    # row per worker with its pid, as /readyz reports them.
    pod = start_pod(cli)
    try:
        page = open_page(width=1200, height=900)
        page.navigate(pod.admin_url + "/")
        assert page.evaluate("document.querySelector('#phase').dataset.phase") == "ready"
        running = SimpleNamespace(admin=lambda path: pod.admin_url + path)
        assert_shows_every_check(page, running)
        rows = page.evaluate(WORKERS_IN_DOM)
        workers = fetch(pod.admin_url + "/readyz", headers={"Accept": "application/json"})
        expected = [
            [str(c["details"]["slot"]), str(c["details"]["pid"]), c["details"]["phase"], "ready"]
            for c in workers.json()["checks"]
            if c["name"].startswith("worker-")
        ]
        assert [row[:4] for row in rows] == expected
        assert len(rows) == 2
        assert_nothing_but_the_page(page, pod.admin_url + "/")
    finally:
        pod.kill()


def test_workers_are_a_table_only_when_there_are_some(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    document = snapshot(running)
    assert 'id="workers"' not in render(document)
    document["workers"] = [
        {
            "slot": 0,
            "pid": 101,
            "phase": "ready",
            "ready": True,
            "loop_lag_s": 0.002,
            "restarts": 0,
            "rss_bytes": 48 * 2**20,
        },
        {"slot": 1, "pid": 102, "phase": "<starting>", "ready": False, "restarts": 3},
    ]
    html = render(document)
    section = html[html.index('<section id="workers"') :]
    section = section[: section.index("</section>")]
    assert section.count("<tr>") == 3  # the heading and one row per worker
    assert "48.0 MiB" in section
    assert "&lt;starting&gt;" in section
    assert "not ready" in section
    assert "—" in section  # a key the worker did not report
    json.dumps(document)  # still plain JSON with workers in it


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0004, "0 ms"),
        (0.85, "850 ms"),
        (4.25, "4.2 s"),
        (185, "3 min 5 s"),
        (7800, "2 h 10 min"),
        (200_000, "2 d 7 h"),
    ],
)
def test_durations_read_as_people_say_them(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown
