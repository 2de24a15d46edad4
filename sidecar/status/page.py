"""The status page: a status snapshot (``snapshot``) as one self-contained HTML document.

Everything the page needs is in it: the style sheet and the script (``assets``), the
charts (inline SVG). With scripts off the page is complete as served, and a reload shows
the current state.

Check names, messages and configuration values come from apps and operators: every
value is escaped before it reaches the page. It knows only the snapshot's keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from .assets import SCRIPT, STYLE

# Seconds between refreshes unless ``?refresh=`` says otherwise (0: never).
DEFAULT_REFRESH_S = 5
MAX_REFRESH_S = 3600

_PHASE_CLASS = {
    "ready": "ok",
    "starting": "warn",
    "draining": "warn",
    "stopping": "warn",
    "stopped": "idle",
    "failed": "bad",
}
_PROBE_TITLES = {"readiness": "Readiness", "liveness": "Liveness", "startup": "Startup"}


def _e(value: object) -> str:
    """Escape for text and for quoted attribute values alike."""
    return escape(str(value), quote=True)


def duration(seconds: float) -> str:
    """A duration as a person reads it: ``850 ms``, ``4.2 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _time(at: float | None, now: float) -> str:
    """A ``<time>`` in UTC: the time of day, with the date when it is not today's."""
    if at is None:
        return "—"
    moment = datetime.fromtimestamp(at, UTC)
    today = datetime.fromtimestamp(now, UTC).date()
    shown = moment.strftime("%H:%M:%S" if moment.date() == today else "%Y-%m-%d %H:%M:%S")
    iso = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    return f'<time datetime="{iso}">{shown}</time>'


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "—"
    return f"{_time(at, now)} <span class=muted>({_e(duration(max(now - at, 0.0)))} ago)</span>"


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{_e(text)}</span>'


def _section(ident: str, title: str, body: str) -> str:
    return (
        f'<section id="{ident}" aria-labelledby="{ident}-title">'
        f'<h2 id="{ident}-title">{_e(title)}</h2>{body}</section>'
    )


def _facts(items: Iterable[tuple[str, str]]) -> str:
    """A ``<dl>`` of (label, HTML) pairs; labels are escaped, values must already be."""
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _table(
    caption: str, headings: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]], cards: bool
) -> str:
    """A table of (row class, cells as HTML) rows; with ``cards`` rows stack on a phone."""
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headings)
    body = []
    for row_class, cells in rows:
        tds = "".join(
            f'<td data-label="{_e(label)}"><div>{cell}</div></td>'
            for label, cell in zip(headings, cells, strict=True)
        )
        attribute = f' class="{row_class}"' if row_class else ""
        body.append(f"<tr{attribute}>{tds}</tr>")
    kind = ' class="cards"' if cards else ""
    return (
        f'<div class="wrap"><table{kind}><caption>{_e(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


# -- the sections ---------------------------------------------------------------------


def _header(snapshot: Mapping[str, Any], now: float) -> str:
    sidecar = snapshot.get("sidecar", {})
    phase = str(snapshot.get("phase", "unknown"))
    probes = snapshot.get("probes", {})
    verdicts = "".join(
        "<li>"
        + _badge(
            f"{document.get('endpoint', name)} {'ok' if document.get('ok') else 'failed'}",
            "ok" if document.get("ok") else "bad",
        )
        + "</li>"
        for name, document in probes.items()
    )
    facts = _facts(
        [
            ("Version", _e(sidecar.get("version", "?"))),
            ("App", f"<code>{_e(sidecar.get('app') or '—')}</code>"),
            ("Process", f"pid {_e(sidecar.get('pid', '?'))}, Python {_e(sidecar.get('python'))}"),
            (
                "Up",
                f"{_e(duration(float(sidecar.get('uptime_s', 0))))}, since "
                f"{_time(sidecar.get('started_at'), now)}",
            ),
        ]
    )
    return (
        f"<header><h1>Sidecar status <span class=muted>· {_e(sidecar.get('hostname', ''))}"
        "</span></h1>"
        f'<p class="phase">Phase <span id="phase" class="badge {_PHASE_CLASS.get(phase, "idle")}"'
        f' data-phase="{_e(phase)}">{_e(phase)}</span></p>'
        f'<ul class="verdicts" aria-label="Probes">{verdicts}</ul>{facts}'
        f'<p class="muted">Updated <span id="updated">{_time(now, now)}</span> '
        "(all times UTC).</p></header>"
    )


def _timeline(snapshot: Mapping[str, Any], now: float) -> str:
    rows = []
    for span in snapshot.get("timeline", []):
        current, phase = bool(span.get("current")), str(span.get("phase"))
        took = duration(float(span.get("duration_s", 0)))
        rows.append(
            (
                "current" if current else "",
                [
                    _badge(phase, _PHASE_CLASS.get(phase, "idle")),
                    _time(span.get("started_at"), now),
                    _e(took + (" so far" if current else "")),
                    _e(span.get("reason") or "—"),
                ],
            )
        )
    table = _table(
        "Each phase the process went through, oldest first.",
        ["Phase", "Began", "Duration", "Reason"],
        rows,
        cards=True,
    )
    return _section("timeline", "Lifecycle", table)


def _runs_chart(runs: Sequence[Mapping[str, Any]], now: float) -> str:
    """The last runs as small bars: a passing run short and green, a failing one tall and red."""
    if not runs:
        return "<span class=muted>no runs yet</span>"
    failed = sum(1 for run in runs if not run.get("ok"))
    label = f"last {len(runs)} runs, oldest first: {len(runs) - failed} ok, {failed} failed"
    bars = []
    for index, run in enumerate(runs):
        ok = bool(run.get("ok"))
        took = run.get("duration_s")
        when = datetime.fromtimestamp(float(run.get("at", now)), UTC).strftime("%H:%M:%S")
        if not ok:
            tip = f"{when} failed: {run.get('error') or 'unknown'}"
        elif took is not None:
            tip = f"{when} ok in {duration(float(took))}"
        else:
            tip = f"{when} ok"
        height = 8 if ok else 16
        bars.append(
            f'<rect class="{"run-ok" if ok else "run-bad"}" x="{index * 8}" y="{16 - height}"'
            f' width="6" height="{height}"><title>{_e(tip)}</title></rect>'
        )
    return (
        f'<svg class="runs" role="img" aria-label="{_e(label)}" width="{len(runs) * 8}" '
        f'height="16" viewBox="0 0 {len(runs) * 8} 16">{"".join(bars)}</svg>'
        f"<span class=muted>{len(runs) - failed}/{len(runs)} ok</span>"
    )


def _check_row(check: Mapping[str, Any], now: float) -> tuple[str, list[str]]:
    ok, critical = bool(check.get("ok")), bool(check.get("critical", True))
    details = check.get("details") or {}
    history = check.get("history")
    if ok:
        state = _badge("ok", "ok")
    elif history is not None and history.get("status") == "pending":
        state = _badge("pending", "warn")
    else:
        state = _badge("failed" if critical else "failed (warning)", "bad" if critical else "warn")
    facts = []
    if "lag_s" in details:
        limit = float(details.get("max_lag_s", 0))
        facts.append(f"lag {duration(float(details['lag_s']))}, limit {limit:g} s")
    if details.get("last_duration_s") is not None:
        facts.append(f"took {duration(float(details['last_duration_s']))}")
    if details.get("last_run_s_ago") is not None:
        facts.append(f"ran {duration(float(details['last_run_s_ago']))} ago")
    if details.get("interval_s") is not None:
        facts.append(f"every {details['interval_s']:g} s")
    tags = check.get("tags") or []
    if tags:
        facts.append("tags: " + ", ".join(str(tag) for tag in tags))
    message = f"<div>{_e(check.get('message', ''))}</div>"
    if facts:
        message += f'<div class="muted">{_e("; ".join(facts))}</div>'
    if history is not None:
        since = f"{_e(history.get('status', ''))} since {_ago(history.get('since'), now)}"
        runs = _runs_chart(history.get("runs", []), now)
    else:
        since, runs = "<span class=muted>built in</span>", "—"
    name = f'<code class="check-name">{_e(check.get("name", "?"))}</code>'
    return "", [name, state, message, since, runs]


def _checks(snapshot: Mapping[str, Any], now: float) -> str:
    parts = []
    for name, probe in snapshot.get("probes", {}).items():
        title = _PROBE_TITLES.get(name, name)
        endpoint = probe.get("endpoint", "")
        verdict = _badge("passes", "ok") if probe.get("ok") else _badge("fails", "bad")
        rows = [_check_row(check, now) for check in probe.get("checks", [])]
        parts.append(
            f'<h3 id="probe-{_e(name)}">{_e(title)} <code>{_e(endpoint)}</code> {verdict}</h3>'
            + _table(
                f"The checks of {endpoint}; a failed warning check does not fail it.",
                ["Check", "State", "Result", "Last change", "Recent runs"],
                rows,
                cards=True,
            )
        )
    return _section("checks", "Checks", "".join(parts))


def _lag_chart(history: Sequence[float], step: float, limit: float) -> str:
    """The longest lag of each step as a filled step chart, now at the right edge."""
    # A young process's few samples still span a minute, so one sample is never a wall.
    width, height = max(len(history), 60), 60
    peak = max(history, default=0.0)
    top = max(peak * 1.25, 0.01)
    offset = width - len(history)
    path = [f"M{offset} {height}"]
    for index, lag in enumerate(history):
        y = height - min(lag / top, 1.0) * height
        path.append(f"V{y:.2f}H{offset + index + 1}")
    path.append(f"V{height}Z")
    limit_line = ""
    if 0 < limit < top:
        y = height - limit / top * height
        limit_line = (
            f'<line class="limit" x1="0" x2="{width}" y1="{y:.2f}" y2="{y:.2f}" '
            'vector-effect="non-scaling-stroke"/>'
        )
    minutes = width * step / 60
    label = (
        f"Longest event-loop lag of each {step:g} s over the last {minutes:.3g} min; "
        f"peak {duration(peak)}" + (f"; readiness limit {limit:g} s" if limit > 0 else "")
    )
    return (
        f'<svg class="chart" role="img" aria-label="{_e(label)}" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="none"><title>{_e(label)}</title>'
        f'<path class="area" d="{"".join(path)}"/>{limit_line}</svg>'
        f'<p class="axis muted"><span>{_e(f"{minutes:.3g} min ago")}</span>'
        f"<span>scale 0 to {_e(duration(top))}"
        + (f", dashed: {_e(f'{limit:g}')} s readiness limit" if limit_line else "")
        + "</span><span>now</span></p>"
    )


def _event_loop(snapshot: Mapping[str, Any]) -> str:
    loop = snapshot.get("event_loop", {})
    if not loop.get("monitored"):
        if snapshot.get("workers"):
            body = "<p>Each worker's lag is in the workers' table below.</p>"
        else:
            body = "<p>Not monitored: <code>health.heartbeat_interval</code> is 0.</p>"
        return _section("event-loop", "Event loop", body)
    ready, live = float(loop.get("ready_max_lag_s", 0)), float(loop.get("live_max_lag_s", 0))
    history = [float(lag) for lag in loop.get("history_max_lag_s", [])]
    window = float(loop.get("recent_window_s", 60))
    facts = _facts(
        [
            ("Lag now", _e(duration(float(loop.get("lag_s", 0))))),
            (
                f"Longest, last {window:g} s",
                _e(duration(float(loop.get("longest_recent_stall_s", 0)))),
            ),
            (
                "Limits",
                _e(
                    f"readiness {ready:g} s, liveness {live:g} s"
                    f" (heartbeat every {float(loop.get('heartbeat_interval_s', 0)):g} s)"
                ),
            ),
        ]
    )
    chart = (
        _lag_chart(history, float(loop.get("history_step_s", 1)), ready)
        if history
        else "<p class=muted>No samples yet: one is taken every second.</p>"
    )
    return _section("event-loop", "Event loop", facts + chart)


def _traffic(snapshot: Mapping[str, Any]) -> str:
    traffic = snapshot.get("traffic", {})
    items = [
        ("Requests in flight", _e(traffic.get("requests_in_flight", 0))),
        ("Connections open", _e(traffic.get("connections_open", 0))),
        ("WebSockets open", _e(traffic.get("websockets_open", 0))),
    ]
    total = traffic.get("requests_total")
    if total is None:
        items.append(("Requests served", "<span class=muted>not counted (metrics.requests)</span>"))
    else:
        by_class = ", ".join(f"{k}: {v}" for k, v in (traffic.get("responses") or {}).items())
        items.append(("Requests served", _e(f"{total}" + (f" ({by_class})" if by_class else ""))))
    note = "" if traffic.get("serving") else "<p class=muted>The app port is not open yet.</p>"
    return _section("traffic", "Traffic", note + _facts(items))


def _startup(snapshot: Mapping[str, Any], now: float) -> str:
    startup = snapshot.get("startup", {})
    failures = {k: v for k, v in (startup.get("failures") or {}).items() if v}
    items = [
        ("Attempts", _e(startup.get("attempts", 0))),
        (
            "Failures",
            _e(", ".join(f"{reason}: {count}" for reason, count in failures.items()) or "none"),
        ),
    ]
    last = startup.get("last_failure")
    body = _facts(items)
    if last:
        body += (
            f"<h3>Last failure: {_e(last.get('reason', '?'))}, {_ago(last.get('at'), now)}</h3>"
            f'<pre id="last-failure">{_e(last.get("message", ""))}</pre>'
        )
    return _section("startup", "Startup", body)


def _workers(snapshot: Mapping[str, Any]) -> str:
    workers = snapshot.get("workers") or []
    if not workers:
        return ""

    def cell(worker: Mapping[str, Any], key: str) -> str:
        value = worker.get(key)
        if value is None:
            return "—"
        if key == "ready":
            return _badge("ready", "ok") if value else _badge("not ready", "bad")
        if key == "loop_lag_s":
            return _e(duration(float(value)))
        if key == "rss_bytes":
            return _e(f"{float(value) / 2**20:.1f} MiB")
        return _e(value)

    keys = ["slot", "pid", "phase", "ready", "loop_lag_s", "restarts", "rss_bytes"]
    rows = [("", [cell(worker, key) for key in keys]) for worker in workers]
    table = _table(
        "One row per worker process.",
        ["Worker", "PID", "Phase", "Ready", "Loop lag", "Restarts", "RSS"],
        rows,
        cards=True,
    )
    return _section("workers", "Workers", table)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return f"<code>{_e(value)}</code>" if value else '<span class=muted>""</span>'
    return f"<code>{_e(json.dumps(value, ensure_ascii=False))}</code>"


def _config(snapshot: Mapping[str, Any]) -> str:
    sections = []
    for name, keys in (snapshot.get("config") or {}).items():
        if not isinstance(keys, Mapping):
            continue
        rows = [("", [f"<code>{_e(name)}.{_e(key)}</code>", _value(v)]) for key, v in keys.items()]
        sections.append(_table(f"{name}", ["Key", "Value"], rows, cards=False))
    body = (
        '<details id="config-details"><summary>The effective configuration (secrets '
        "redacted)</summary>" + "".join(sections) + "</details>"
    )
    return _section("config", "Configuration", body)


def refresh_interval(value: str | None) -> int:
    """Parse ``?refresh=`` (whole seconds, 0 for never); raise ``ValueError`` otherwise."""
    if value is None:
        return DEFAULT_REFRESH_S
    if not value.isdigit() or int(value) > MAX_REFRESH_S:
        raise ValueError(
            f"invalid refresh {value!r}; expected whole seconds from 0 (never) to {MAX_REFRESH_S}"
        )
    return int(value)


def render(snapshot: Mapping[str, Any], *, refresh_s: int = DEFAULT_REFRESH_S) -> str:
    """Return the status page for ``snapshot`` (``status.Status.snapshot()``)."""
    now = float(snapshot.get("generated_at", 0.0))
    phase = str(snapshot.get("phase", "unknown"))
    host = str(snapshot.get("sidecar", {}).get("hostname", ""))
    main = "".join(
        [
            _header(snapshot, now),
            _timeline(snapshot, now),
            _checks(snapshot, now),
            _event_loop(snapshot),
            '<div class="columns">',
            _traffic(snapshot),
            _startup(snapshot, now),
            "</div>",
            _workers(snapshot),
            _config(snapshot),
        ]
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(phase)} · {_e(host)} · sidecar status</title>"
        f"<style>{STYLE}</style></head>"
        f'<body data-refresh="{int(refresh_s)}"><main>{main}</main>'
        '<footer><p id="refresh-note">This page shows the state when it was served; reload '
        "it for the current state.</p><p>Read-only: draining is <code>/prestop</code> with the "
        "admin token. <code>?refresh=N</code> sets the refresh in seconds (0: never); "
        "<code>Accept: application/json</code> gives this page as JSON.</p></footer>"
        f"<script>{SCRIPT}</script></body></html>"
    )
