"""The watch benchmark at a tiny size (a few watchers, one short wrk run a side): it opens its
watchers on a real kvservice, times a write to every one of them and prints its figures.
Nothing here is a timing claim."""

from __future__ import annotations

import re
import shutil

import pytest

from benchmarks.watch import main


def test_a_tiny_watch_benchmark_reaches_every_watcher_and_prints_its_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")

    assert main(["--watchers", "20", "--load-s", "1", "--runs", "1", "--writes", "2"]) == 0

    printed = capsys.readouterr().out
    print(printed)
    assert re.search(r"A write reached all 20 watchers in: [\d.]+ ms, [\d.]+ ms", printed)
    assert "| no watcher open |" in printed and "| 20 SSE watchers open |" in printed
    assert re.search(r"\*\*-?[\d.]+ KiB per idle watcher\*\*", printed)
