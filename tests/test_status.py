"""The status page's content over HTTP: the JSON snapshot, the HTML, its headers and escaping.

A real browser loads it in ``tests/test_status_page.py``; here the answers are read as
they come off the wire.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any

import pytest

from sidecar import HealthChecks
from sidecar._version import __version__
from sidecar.health.loop_monitor import HISTORY_STEP
from sidecar.status.assets import CONTENT_SECURITY_POLICY, SCRIPT, STYLE

from . import apps
from .conftest import WAIT, LogWatch, fetch

JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def snapshot(running: Any) -> dict[str, Any]:
    reply = fetch(running.admin("/"), headers=JSON)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    return reply.json()  # type: ignore[no-any-return]


def poll(running: Any, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Fetch the JSON until ``predicate`` holds (the history fills once a second)."""
    deadline = time.monotonic() + WAIT
    while True:
        document = snapshot(running)
        if predicate(document):
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"the status never satisfied the condition: {document}")
        time.sleep(0.1)


def verdicts(running: Any, path: str) -> dict[str, bool]:
    """``{check: passes}`` from a probe's ``?verbose`` lines, as kubectl users read them."""
    lines = fetch(running.admin(f"{path}?verbose")).text.splitlines()
    found = {}
    for line in lines:
        match = re.match(r"\[([+-])\]([^ ]+) ", line)
        if match:
            found[match.group(2)] = match.group(1) == "+"
    return found


class Parsed(HTMLParser):
    """Every start tag with its attributes, the text, and the style and script sources."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.sources: dict[str, list[str]] = {"style": [], "script": []}
        self._inside: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in self.sources:
            self._inside = tag
            self.sources[tag].append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag == self._inside:
            self._inside = None

    def handle_data(self, data: str) -> None:
        if self._inside is not None:
            self.sources[self._inside][-1] += data
        else:
            self.text.append(data)

    def by_id(self, ident: str) -> dict[str, str | None]:
        return next(attrs for _, attrs in self.tags if attrs.get("id") == ident)

    def first(self, name: str) -> dict[str, str | None]:
        return next(attrs for tag, attrs in self.tags if tag == name)

    def names(self) -> set[str]:
        return {tag for tag, _ in self.tags}


def two_checks(health: HealthChecks) -> None:
    """A readiness check that passes and a liveness warning check that fails."""

    async def pool() -> None:
        return None

    async def cache() -> None:
        raise ConnectionError("cache cluster unreachable")

    health.add_readiness_check("db", pool, interval=0.02)
    health.add_liveness_check("cache", cache, interval=0.02, severity="warning")


def test_the_json_checks_are_the_probes_checks(run_sidecar: Any, logs: LogWatch) -> None:
    running = run_sidecar(apps.registers(two_checks))
    logs.wait_for(r"health check 'db' \(readiness\) passes")
    logs.wait_for(r"health check 'cache' \(liveness\) failed")
    document = snapshot(running)
    for probe, path in (("readiness", "/readyz"), ("liveness", "/livez"), ("startup", "/startupz")):
        shown = document["probes"][probe]
        assert shown["endpoint"] == path
        checks = {check["name"]: check["ok"] for check in shown["checks"]}
        assert checks == verdicts(running, path), probe
        answer = fetch(running.admin(path), headers=JSON)
        assert shown["ok"] is (answer.status == 200)
        assert [(c["name"], c["ok"]) for c in shown["checks"]] == [
            (c["name"], c["ok"]) for c in answer.json()["checks"]
        ]
    assert list(document["probes"]["readiness"]) == ["endpoint", "ok", "checks"]
    cache = next(c for c in document["probes"]["liveness"]["checks"] if c["name"] == "cache")
    assert (cache["ok"], cache["critical"]) == (False, False)
    assert cache["message"].startswith("ConnectionError: cache cluster unreachable")
    history = cache["history"]
    assert history["status"] == "failing"
    assert history["runs"], history
    errors = {run["error"] for run in history["runs"]}
    assert errors == {"ConnectionError: cache cluster unreachable"}
    assert history["since"] <= history["runs"][-1]["at"] <= document["generated_at"]
    builtin = document["probes"]["readiness"]["checks"][0]
    assert builtin["name"] == "ping"
    assert "history" not in builtin


def test_the_snapshot_has_every_part(run_sidecar: Any) -> None:
    token = "a-long-enough-admin-token-0123456789"
    running = run_sidecar(apps.lifespan_app(), admin__token=token)
    for _ in range(3):
        assert fetch(running.app("/")).status == 200
    document = snapshot(running)
    assert set(document) == {
        "schema",
        "generated_at",
        "sidecar",
        "phase",
        "timeline",
        "probes",
        "event_loop",
        "traffic",
        "startup",
        "config",
        "workers",
    }
    assert document["schema"] == 1
    assert abs(document["generated_at"] - time.time()) < WAIT
    sidecar = document["sidecar"]
    assert (sidecar["version"], sidecar["pid"]) == (__version__, os.getpid())
    assert 0 <= sidecar["uptime_s"] < WAIT
    assert document["phase"] == "ready"
    assert [(s["phase"], s["reason"], s["current"]) for s in document["timeline"]] == [
        ("starting", "process started", False),
        ("ready", "startup complete", True),
    ]
    loop = document["event_loop"]
    assert loop["monitored"] is True
    assert (loop["ready_max_lag_s"], loop["live_max_lag_s"]) == (1.0, 30.0)
    assert loop["history_step_s"] == HISTORY_STEP
    traffic = document["traffic"]
    assert traffic["serving"] is True
    assert traffic["requests_total"] >= 3  # the last may still be counted as it ends
    assert traffic["responses"]["2xx"] == traffic["requests_total"]
    assert traffic["requests_in_flight"] == traffic["websockets_open"] == 0
    assert document["startup"] == {
        "attempts": 1,
        "failures": {"exception": 0, "failed": 0, "import": 0, "timeout": 0},
        "last_failure": None,
    }
    assert document["config"]["admin"]["token"] == "<redacted>"
    assert token not in json.dumps(document)
    assert document["workers"] == []


def test_requests_are_not_counted_when_request_metrics_are_off(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app(), metrics__requests=False)
    assert fetch(running.app("/")).status == 200
    traffic = snapshot(running)["traffic"]
    assert (traffic["requests_total"], traffic["responses"]) == (None, None)
    assert "not counted (metrics.requests)" in fetch(running.admin("/")).text


def test_the_page_is_self_contained_and_says_so_in_its_headers(run_sidecar: Any) -> None:
    running = run_sidecar(apps.registers(two_checks))
    reply = fetch(running.admin("/"), headers=HTML)
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["x-frame-options"] == "DENY"
    assert "server" not in reply.headers
    page = Parsed(reply.text)
    # One style sheet and one script, inline, each allowed by its hash and nothing else.
    assert page.sources == {"style": [STYLE], "script": [SCRIPT]}
    policy = dict(directive.split(" ", 1) for directive in CONTENT_SECURITY_POLICY.split("; "))
    for kind, source in (("style", STYLE), ("script", SCRIPT)):
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert policy[f"{kind}-src"] == f"'sha256-{digest}'"
    assert policy["default-src"] == policy["base-uri"] == policy["form-action"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["connect-src"] == "'self'"
    # Nothing that loads, navigates or submits anything; no inline handlers or styles.
    assert not page.names() & {"link", "img", "iframe", "object", "embed", "base", "form"}
    assert not page.names() & {"button", "input", "select", "textarea", "audio", "video"}
    assert "meta" not in {tag for tag, attrs in page.tags if "http-equiv" in attrs}
    for tag, attrs in page.tags:
        assert not {"src", "href", "style", "action", "srcset"} & set(attrs), (tag, attrs)
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
    assert "url(" not in STYLE
    assert "@import" not in STYLE
    assert "://" not in reply.text  # no absolute URL anywhere
    assert page.by_id("phase")["data-phase"] == "ready"
    assert fetch(running.admin("/"), "HEAD").body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_page_changes_nothing(run_sidecar: Any, method: str) -> None:
    running = run_sidecar(apps.lifespan_app())
    assert fetch(running.admin("/"), method).status == 405
    assert snapshot(running)["phase"] == "ready"


def test_everything_the_page_shows_is_escaped(run_sidecar: Any, logs: LogWatch) -> None:
    hostile = '<b>bold</b> & "quoted" <script>alert(1)</script>'

    async def hostile_check() -> None:
        raise RuntimeError(hostile)

    app = apps.registers(
        lambda health: health.add_readiness_check("hostile", hostile_check, interval=0.02)
    )
    target = "tests.apps:<img src=x onerror=alert(1)>"
    root = '/a<i>b</i>"&x'
    running = run_sidecar(app, app__target=target, server__root_path=root)
    logs.wait_for(r"health check 'hostile' \(readiness\) failed")
    reply = fetch(running.admin("/"))
    page = Parsed(reply.text)
    assert not page.names() & {"b", "i", "img"}
    assert len(page.sources["script"]) == 1  # the page's own, nothing injected
    text = "".join(page.text)
    assert f"RuntimeError: {hostile}" in text  # shown as text, as the app wrote it
    assert target in text
    assert root in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;" in reply.text
    # Run results appear in attributes too (the bars' tooltips): escaped there as well.
    assert all('"quoted"' not in str(attrs) for _, attrs in page.tags)


@contextlib.contextmanager
def loop_blocked(run_sidecar: Any, logs: LogWatch) -> Iterator[Any]:
    """A running sidecar whose app's event loop is blocked (past the stall's log line)
    for as long as the ``with`` block lasts."""
    app = apps.BlocksLoop()
    running = run_sidecar(
        app,
        health__heartbeat_interval=0.02,
        health__ready_max_loop_lag=0.2,
        health__stack_dump_after=0.3,
        health__stack_dump_interval=0,
    )
    request = threading.Thread(target=fetch, args=(running.app("/block"),), daemon=True)
    request.start()
    assert app.entered.wait(WAIT)
    try:
        logs.wait_for("event loop blocked for")  # the lag is past 0.3 s now
        yield running
    finally:
        app.release()
        request.join(WAIT)


def test_the_page_answers_while_the_app_loop_is_blocked(run_sidecar: Any, logs: LogWatch) -> None:
    with loop_blocked(run_sidecar, logs) as running:
        began = time.monotonic()
        document = snapshot(running)
        html = fetch(running.admin("/"), timeout=2).text
        elapsed = time.monotonic() - began
    assert elapsed < 1.0  # the kubelet's own timeout; in practice milliseconds
    loop = next(c for c in document["probes"]["readiness"]["checks"] if c["name"] == "event-loop")
    assert loop["ok"] is False
    assert loop["message"].startswith("event loop blocked for")
    assert document["event_loop"]["lag_s"] >= 0.3
    assert document["probes"]["readiness"]["ok"] is False
    assert "event loop blocked for" in html
    # The stall stays in the lag history after it ended.
    after = poll(running, lambda d: max(d["event_loop"]["history_max_lag_s"], default=0) >= 0.3)
    assert after["probes"]["readiness"]["ok"] is True


def test_format_and_refresh_in_the_query(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    forced = fetch(running.admin("/?format=json"), headers=HTML)
    assert forced.json()["phase"] == "ready"
    assert "<html" in fetch(running.admin("/?format=html"), headers=JSON).text
    bad = fetch(running.admin("/?format=xml"))
    assert (bad.status, bad.text) == (400, "invalid format 'xml'; expected html or json\n")
    assert Parsed(fetch(running.admin("/")).text).first("body")["data-refresh"] == "5"
    assert Parsed(fetch(running.admin("/?refresh=0")).text).first("body")["data-refresh"] == "0"
    for value in ("abc", "-1", "1.5", "99999"):
        reply = fetch(running.admin(f"/?refresh={value}"))
        assert reply.status == 400, value
        assert reply.text.startswith(f"invalid refresh {value!r}; expected whole seconds")


def test_the_timeline_shows_the_drain(run_sidecar: Any) -> None:
    running = run_sidecar(apps.lifespan_app())
    assert fetch(running.admin("/prestop")).status == 200
    document = snapshot(running)
    timeline = document["timeline"]
    assert [(s["phase"], s["reason"], s["current"]) for s in timeline] == [
        ("starting", "process started", False),
        ("ready", "startup complete", False),
        ("draining", "drain started", True),
    ]
    starts = [span["started_at"] for span in timeline]
    assert starts == sorted(starts)
    for span, following in itertools.pairwise(timeline):
        # A phase lasts until the next began (the wall clock and the durations agree).
        took = following["started_at"] - span["started_at"]
        assert span["duration_s"] == pytest.approx(took, abs=0.05)
    assert document["phase"] == "draining"
    assert document["probes"]["readiness"]["ok"] is False
    assert Parsed(fetch(running.admin("/")).text).by_id("phase")["data-phase"] == "draining"


def test_startup_attempts_and_the_last_failure(run_sidecar: Any) -> None:
    app = apps.FlakyStartup(failures=1)
    running = run_sidecar(app, lifespan__startup_attempts=2, lifespan__retry_backoff=0.01)
    document = snapshot(running)
    startup = document["startup"]
    assert startup["attempts"] == 2
    assert startup["failures"]["failed"] == 1
    last = startup["last_failure"]
    assert last["reason"] == "failed"
    assert last["message"] == "the app reported lifespan.startup.failed: try 1"
    assert last["at"] <= document["generated_at"]
    html = fetch(running.admin("/")).text
    assert '<pre id="last-failure">the app reported lifespan.startup.failed: try 1</pre>' in html
    assert "Last failure: failed" in html
