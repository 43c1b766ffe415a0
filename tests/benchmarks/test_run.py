"""The benchmark's command line when a tool it needs is missing: exit 2, and a hint only where
the hint helps. Nothing is measured: the checks come before any server starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.run import main


def path_with(tmp_path: Path, *tools: str) -> str:
    """A PATH holding only stand-ins for `tools` (found by shutil.which, never run)."""
    for tool in tools:
        stand_in = tmp_path / tool
        stand_in.write_text("#!/bin/sh\nexit 1\n")
        stand_in.chmod(0o755)
    return str(tmp_path)


def test_without_wrk_the_error_offers_no_flag_that_would_not_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", path_with(tmp_path))

    for argv in (["--no-resp"], ["--resp"]):
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert "wrk is not installed" in error
        assert "--no-resp" not in error


def test_without_redis_benchmark_the_error_offers_no_resp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", path_with(tmp_path, "wrk"))

    assert main(["--resp"]) == 2
    error = capsys.readouterr().err
    assert "redis-benchmark and redis-server are needed" in error
    assert "(or --no-resp, to leave the RESP workloads out)" in error
