"""How secrets are shown wherever the configuration is printed: ``<redacted>``.

Tokens never appear in ``check-config``, error messages, log lines or the status page;
neither does the password in a URL's ``user:password@`` part (a health check's URL).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"


def redact_url(url: str) -> str:
    """Return ``url`` with the password of its ``user:password@`` part redacted."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL the checks could use either; nothing to find in it
        return url
    if password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:{REDACTED}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
