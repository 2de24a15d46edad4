"""What the status page carries besides its content: its style sheet, its script and the
headers it is sent with.

The script fetches the page again every few seconds while the tab is visible and swaps
in its content. The Content-Security-Policy names that style sheet and that script by
their hashes and allows nothing else: no other script, no style attribute, no image,
font, frame or form, and requests to the page's own origin only.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

# Both color schemes, each pair of text and its background at least 4.5:1 (WCAG AA for
# text) and the chart's marks at least 3:1 against the panel (AA for graphics);
# tests/test_status_page.py computes the ratios.
PALETTES: dict[str, dict[str, str]] = {
    "light": {
        "bg": "#ffffff",
        "fg": "#1f2328",
        "muted": "#59636e",
        "line": "#d1d9e0",
        "panel": "#f6f8fa",
        "ok": "#116329",
        "ok-bg": "#dafbe1",
        "bad": "#a40e26",
        "bad-bg": "#ffebe9",
        "warn": "#7a4b00",
        "warn-bg": "#fff8c5",
        "chart": "#0550ae",
        "limit": "#a40e26",
    },
    "dark": {
        "bg": "#0d1117",
        "fg": "#e6edf3",
        "muted": "#9ea7b3",
        "line": "#3d444d",
        "panel": "#151b23",
        "ok": "#6fdd8b",
        "ok-bg": "#0f2d1a",
        "bad": "#ff9492",
        "bad-bg": "#3b1219",
        "warn": "#f2cc60",
        "warn-bg": "#2e2306",
        "chart": "#6cb6ff",
        "limit": "#ff9492",
    },
}


def _variables(palette: Mapping[str, str]) -> str:
    return ";".join(f"--{name}:{value}" for name, value in palette.items())


STYLE = (
    ":root{color-scheme:light dark;" + _variables(PALETTES["light"]) + "}"
    "@media (prefers-color-scheme:dark){:root{" + _variables(PALETTES["dark"]) + "}}"
    """
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"Noto Sans","Liberation Sans",Arial,sans-serif}
main,footer{max-width:72rem;margin:0 auto;padding:0 1rem}
header{padding:1rem 0 .75rem;border-bottom:1px solid var(--line)}
h1{font-size:1.35rem;margin:0 0 .5rem;overflow-wrap:anywhere}
h2{font-size:1.15rem;margin:1.75rem 0 .5rem}
h3{font-size:1rem;margin:1.25rem 0 .4rem}
p{margin:.4rem 0}
.muted,dt,th,caption{color:var(--muted)}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
font-size:.92em}
.badge{display:inline-block;padding:0 .55rem;border:1px solid currentColor;border-radius:1rem;
font-weight:600;white-space:nowrap}
.ok{color:var(--ok);background:var(--ok-bg)}
.bad{color:var(--bad);background:var(--bad-bg)}
.warn{color:var(--warn);background:var(--warn-bg)}
.idle{color:var(--fg);background:var(--panel)}
.phase{font-size:1.15rem}
.verdicts{list-style:none;padding:0;margin:.6rem 0;display:flex;flex-wrap:wrap;gap:.5rem}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2rem 1rem;margin:.5rem 0}
dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}
caption{text-align:left;padding:.25rem 0}
th,td{text-align:left;vertical-align:top;padding:.4rem .5rem;border-bottom:1px solid var(--line);
overflow-wrap:break-word}
th,.check-name{white-space:nowrap}
th{font-weight:600}
tr.current td{font-weight:600}
.wrap{overflow-x:auto}
pre{margin:.4rem 0;padding:.5rem;white-space:pre-wrap;overflow-wrap:anywhere;
background:var(--panel);border:1px solid var(--line)}
.chart{display:block;width:100%;height:8rem;background:var(--panel);border:1px solid var(--line)}
.chart .area{fill:var(--chart)}
.chart .limit{stroke:var(--limit);stroke-width:1.5;stroke-dasharray:6 4;fill:none}
.axis{display:flex;justify-content:space-between;gap:1rem;margin:.1rem 0}
.columns{display:grid;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr));gap:0 2rem}
.runs{display:block}
.runs .run-ok{fill:var(--ok)}
.runs .run-bad{fill:var(--bad)}
details{margin:.5rem 0}
summary{cursor:pointer;font-weight:600}
footer{margin-top:2rem;padding-top:.75rem;padding-bottom:1.5rem;border-top:1px solid var(--line);
color:var(--muted)}
@media (max-width:40rem){
table.cards thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
table.cards tr{display:block;padding:.5rem 0;border-bottom:1px solid var(--line)}
table.cards td{display:grid;grid-template-columns:6.5rem minmax(0,1fr);gap:.5rem;border:0;
padding:.15rem 0}
table.cards td::before{content:attr(data-label);color:var(--muted)}
}
"""
)

# Fetch the page again every data-refresh seconds, while the tab is visible, and swap in
# its <main>; say when that fails (the port-forward ended, the pod is gone).
SCRIPT = """
(() => {
  const seconds = Number(document.body.dataset.refresh);
  const note = document.getElementById("refresh-note");
  if (!(seconds > 0) || !note) return;
  note.textContent = "Refreshes every " + seconds + " s while this tab is visible.";
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const answer = await fetch(location.href, {headers: {Accept: "text/html"}});
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const next = page.querySelector("main");
      const current = document.querySelector("main");
      if (!next || !current) throw new Error("no content in the answer");
      for (const open of current.querySelectorAll("details[open][id]")) {
        const same = next.querySelector("#" + CSS.escape(open.id));
        if (same) same.open = true;
      }
      current.replaceWith(next);
      document.title = page.title;
      note.textContent = "Refreshes every " + seconds + " s while this tab is visible.";
    } catch (error) {
      note.textContent = "Refresh failed at " + new Date().toLocaleTimeString() + " (" +
        error.message + "); the page shows the state of its last update.";
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", refresh);
})();
"""


def _digest(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_digest(STYLE)}; script-src {_digest(SCRIPT)}; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: The headers of every HTML answer.
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
