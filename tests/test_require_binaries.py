"""The policy for tests that need programs the README's test command does not install."""

from __future__ import annotations

import pytest

from .conftest import require_binaries

MISSING = "no-such-program-for-lifespan-sidecar-tests"


def test_found_programs_are_returned_with_their_paths() -> None:
    found = require_binaries("sh")
    assert set(found) == {"sh"}
    assert found["sh"].endswith("/sh")


def test_a_missing_program_skips_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        require_binaries("sh", MISSING)


def test_a_missing_program_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI is set.*{MISSING}"):
        require_binaries(MISSING)
