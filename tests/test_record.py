"""The startup record: counts that outlive the process, and never a crash over the file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.metrics import STARTUP_FAILURE_REASONS
from sidecar.record import FILE_NAME, StartupRecord

from .metrics_util import sample


def _registry(record: StartupRecord) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(record)
    return registry


def test_counts_survive_a_new_process(tmp_path: Path) -> None:
    first = StartupRecord(str(tmp_path), STARTUP_FAILURE_REASONS)
    first.attempt()
    first.failure("import", "cannot load app 'x:app'")
    # The next container of the pod starts from what the last one left.
    second = StartupRecord(str(tmp_path), STARTUP_FAILURE_REASONS)
    assert second.attempts == 1
    assert second.failures["import"] == 1
    second.attempt()
    second.failure("timeout", "no answer")
    registry = _registry(StartupRecord(str(tmp_path), STARTUP_FAILURE_REASONS))
    assert sample(registry, "sidecar_lifespan_startup_attempts_total") == 2
    assert sample(registry, "sidecar_lifespan_startup_failures_total", reason="import") == 1
    assert sample(registry, "sidecar_lifespan_startup_failures_total", reason="timeout") == 1
    assert sample(registry, "sidecar_lifespan_startup_failures_total", reason="failed") == 0
    last = second.last_failure
    assert last is not None
    assert (last.reason, last.message) == ("timeout", "no answer")
    when = sample(
        registry, "sidecar_lifespan_last_startup_failure_timestamp_seconds", reason="timeout"
    )
    assert when == pytest.approx(last.time)
    # No other reason has a timestamp series: only the last failure's.
    assert (
        registry.get_sample_value(
            "sidecar_lifespan_last_startup_failure_timestamp_seconds", {"reason": "import"}
        )
        is None
    )


def test_without_a_state_dir_nothing_is_written(tmp_path: Path) -> None:
    record = StartupRecord("", STARTUP_FAILURE_REASONS)
    record.failure("failed", "nope")
    assert record.failures["failed"] == 1
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_replaced_whole(tmp_path: Path) -> None:
    record = StartupRecord(str(tmp_path), STARTUP_FAILURE_REASONS)
    record.failure("exception", "x" * 10_000)
    document = json.loads((tmp_path / FILE_NAME).read_text())
    assert document["failures"]["exception"] == 1
    assert len(document["last_failure"]["message"]) == 2000  # bounded
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]  # no temporary left


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"version": 99}', '{"version": 1, "attempts": -3, "failures": {}}', "[]"],
)
def test_a_corrupt_file_is_a_warning_and_counting_starts_over(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_text(content)
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        record = StartupRecord(str(tmp_path), STARTUP_FAILURE_REASONS)
    assert "which is not a startup record" in caplog.text
    assert record.attempts == 0
    record.failure("import", "again")  # and the file is usable again
    assert StartupRecord(str(tmp_path), STARTUP_FAILURE_REASONS).failures["import"] == 1


def test_a_missing_directory_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        record = StartupRecord(str(tmp_path / "absent"), STARTUP_FAILURE_REASONS)
    assert "is not a directory" in caplog.text
    record.failure("failed", "still counted")
    assert record.failures["failed"] == 1


def test_an_unwritable_directory_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # A directory nobody can create files in, root included.
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        record = StartupRecord("/proc/self", STARTUP_FAILURE_REASONS)
        record.failure("failed", "kept in memory")
    assert "cannot write /proc/self/startup.json" in caplog.text
    assert record.failures["failed"] == 1
