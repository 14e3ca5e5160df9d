"""The benchmark's quick mode runs end to end and reports verified copies.

This keeps ``bench/run.py`` from rotting.  Nothing here asserts a speed:
timing belongs to the benchmark's own output, not to a test.  Baselines
that are not installed on a machine show up as such and are not required.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

WORKLOADS = {"big", "tree", "small"}
TOOLS = {"filexfer", "scp", "rsync", "socat", "python aes-gcm"}
STATUSES = {"ok", "failed", "not installed", "unavailable"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Run ``bench/run.py --quick`` once; return its stdout and results dir."""
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, ROOT / "bench" / "run.py", "--quick"]
    done = subprocess.run(
        [*command, "--out", out / "results", "--tmp", out],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, out / "results"


def rows(results: Path) -> list[dict[str, Any]]:
    document = json.loads((results / "quick.json").read_text())
    assert document["mode"] == "quick"
    found: list[dict[str, Any]] = document["rows"]
    return found


def test_bench_quick_writes_every_tool_and_workload(quick: tuple[str, Path]) -> None:
    found = rows(quick[1])

    pairs = {(row["tool"], row["workload"]) for row in found}
    expected = {(tool, load) for tool in TOOLS for load in WORKLOADS}
    assert pairs == expected | {("python files", "tree")}
    floor = next(row for row in found if row["tool"] == "python files")
    assert floor["status"] == "ok", floor  # its copy is verified like the rest
    assert all(row["status"] in STATUSES for row in found)


def test_bench_quick_filexfer_copies_are_verified(quick: tuple[str, Path]) -> None:
    mine = [row for row in rows(quick[1]) if row["tool"] == "filexfer"]

    assert {row["workload"] for row in mine} == WORKLOADS
    for row in mine:
        assert row["status"] == "ok", row
        assert row["runs_ok"] == len(row["runs"]) >= 1
        assert all(run["identical"] and run["error"] is None for run in row["runs"])
        assert row["ratio_to_filexfer"] == 1.0


def test_bench_quick_numbers_are_sane(quick: tuple[str, Path]) -> None:
    for row in rows(quick[1]):
        if row["status"] != "ok":
            continue
        median = row["median_seconds"]
        assert math.isfinite(median) and median > 0, row
        assert row["mb_per_s"] > 0 and row["files_per_s"] > 0, row
        assert row["ratio_to_filexfer"] > 0, row


def test_bench_quick_records_filexfer_peak_rss(quick: tuple[str, Path]) -> None:
    for row in rows(quick[1]):
        if row["tool"] != "filexfer":
            continue
        for side in ("sender", "receiver"):
            # Between "a Python process" and "obviously broken": a sanity
            # range, not the memory target (that is the benchmark's job).
            assert 4 << 10 < row["peak_rss_kib"][side] < 4 << 20, (side, row)


def test_bench_quick_prints_and_saves_the_table(quick: tuple[str, Path]) -> None:
    stdout, results = quick
    markdown = (results / "quick.md").read_text()

    for text in (stdout, markdown):
        assert "median s" in text and "ratio" in text
        for title in ("MiB file", "x 4 KiB files", "one 4 KiB file"):
            assert any(
                "filexfer" in line and title in line for line in text.splitlines()
            ), title


def test_a_subset_run_keeps_the_full_results(tmp_path: Path) -> None:
    """--tools/--workloads write *-partial.*, never the quoted full.*."""
    out = tmp_path / "results"
    command = [sys.executable, ROOT / "bench" / "run.py", "--quick", "--runs", "1"]
    command += ["--tools", "filexfer", "--workloads", "small"]
    done = subprocess.run(
        [*command, "--out", out, "--tmp", tmp_path],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "quick-partial.json",
        "quick-partial.md",
    ]


def test_an_unknown_tool_is_refused_before_any_work(tmp_path: Path) -> None:
    command = [sys.executable, ROOT / "bench" / "run.py", "--quick"]
    done = subprocess.run(
        [*command, "--tools", "bogus", "--tmp", tmp_path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert "unknown tool(s): bogus" in done.stderr
    assert list(tmp_path.iterdir()) == []
