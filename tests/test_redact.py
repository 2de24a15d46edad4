"""How secrets are shown: tokens and URL passwords read ``<redacted>``."""

from __future__ import annotations

import pytest

from sidecar.redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h:1/x?q=1#f", "http://u:<redacted>@h:1/x?q=1#f"),
        ("http://u@h/x", "http://u@h/x"),  # no password: nothing to hide
        ("http://h/x", "http://h/x"),
        ("http://u:p:q@h/", "http://u:<redacted>@h/"),
        ("http://[::1", "http://[::1"),  # not a URL: left as it is
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
