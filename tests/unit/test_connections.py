"""ConnectionGuard without sockets: the cap's ceiling and the accept-error log aggregation.
Its deadlines and caps against real sockets are in tests/e2e/test_slow_connections.py."""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import pytest

from server.config import Settings
from server.connections import ACCEPT_ERROR, ConnectionGuard


def test_the_cap_never_exceeds_half_the_open_files_limit(tmp_path: Path) -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert ConnectionGuard(Settings(data_dir=tmp_path, max_unauthenticated_connections=10**9)).max_unauthenticated == soft // 2
    assert ConnectionGuard(Settings(data_dir=tmp_path, max_unauthenticated_connections=7)).max_unauthenticated == 7


def test_accept_errors_are_logged_once_per_interval_with_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard = ConnectionGuard(Settings(data_dir=tmp_path, accept_error_log_interval_s=0.2))
    error = OSError(24, "Too many open files")
    with caplog.at_level(logging.ERROR, logger="server.connections"):
        for _ in range(500):
            guard.accept_failed(error)
        time.sleep(0.25)
        guard.accept_failed(error)
    reports = [r.getMessage() for r in caplog.records if ACCEPT_ERROR in r.getMessage()]
    assert len(reports) == 2, reports
    assert "1 time(s)" in reports[0] and "500 time(s)" in reports[1]
    assert all(r.exc_info is None for r in caplog.records)
