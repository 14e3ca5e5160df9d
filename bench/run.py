#!/usr/bin/env python3
"""Benchmark filexfer against scp, rsync, a plain socket and bare AES-GCM.

    python bench/run.py            # full: 1 GiB file, 10,000 x 4 KiB, 4 KiB
    python bench/run.py --quick    # small data, well under a minute

How it works: the data is written once into a temp dir; sshd is started
once; then for each workload, run after run, every tool copies it into a
fresh empty directory, in turn, so that a change in machine load hits all
tools alike.  Before each copy the page cache's dirty data is flushed
(``sync``), so no copy pays for an earlier one's writeback.  Each copy is
checked file by file (SHA-256); only identical copies count.  Everything
the benchmark starts listens on 127.0.0.1 and is ended by its PID.

The table goes to stdout, progress to stderr, and Markdown and JSON to
``bench/results/{full,quick}.{md,json}`` (or ``--out DIR``).  The exit
status is 1 if a filexfer copy failed, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import machine
import procs
import report
import servers
import workloads
from report import Row
from tools import TOOLS, Context, Filexfer, Job, Run, Tool
from workloads import Workload

BENCH = Path(__file__).resolve().parent
GIB = 1 << 30

# Runs per workload.  The lone small file is quick and noisy, so it gets
# more runs; quick mode keeps the medians but cuts their number.
FULL_RUNS = {"big": 3, "tree": 3, "small": 7}
QUICK_RUNS = {"big": 1, "tree": 1, "small": 3}


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Time filexfer against scp, rsync, socat and bare AES-GCM.",
    )
    parser.add_argument("--quick", action="store_true", help="small data, few runs")
    parser.add_argument(
        "--out", type=Path, default=BENCH / "results", help="results directory"
    )
    parser.add_argument("--runs", type=int, help="runs per workload (default 3-7)")
    parser.add_argument(
        "--tools",
        help="comma-separated subset of: " + ", ".join(t.name for t in TOOLS),
    )
    parser.add_argument(
        "--workloads",
        help="comma-separated subset of: " + ", ".join(workloads.KEYS),
    )
    parser.add_argument(
        "--rss-4g",
        action="store_true",
        help="also send a 4 GiB file once to show filexfer's memory is flat",
    )
    parser.add_argument("--tmp", type=Path, help="where to create the temp dir")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.quick and args.rss_4g:
        parser.error("--rss-4g needs full mode")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.tools:
        names = {name.strip() for name in args.tools.split(",")}
        unknown = names - {tool.name for tool in TOOLS}
        if unknown:
            parser.error(f"unknown tool(s): {', '.join(sorted(unknown))}")
    args.loads = workloads.KEYS
    if args.workloads:
        args.loads = tuple(name.strip() for name in args.workloads.split(","))
        unknown = set(args.loads) - set(workloads.KEYS)
        if unknown:
            parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    if args.rss_4g and "big" not in args.loads:
        parser.error("--rss-4g needs the big workload")
    return args


def chosen_tools(spec: str | None) -> list[type[Tool]]:
    """The tools --tools names (checked by parse), in the table's order."""
    if not spec:
        return list(TOOLS)
    names = {name.strip() for name in spec.split(",")}
    return [tool for tool in TOOLS if tool.name in names]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lacks_space(where: Path, needed: int) -> str | None:
    free = shutil.disk_usage(where).free
    if free >= needed:
        return None
    return f"{needed / GIB:.1f} GiB free needed in {where}, {free / GIB:.1f} found"


@contextlib.contextmanager
def sshd_for(top: Path, wanted: bool) -> Iterator[tuple[servers.Sshd | None, str]]:
    """sshd while the benchmark runs, or the reason why there is none."""
    problem = servers.sshd_missing() if wanted else "not selected"
    if problem:
        yield None, problem
        return
    try:
        sshd = servers.start_sshd(top)
    except (RuntimeError, OSError) as exc:
        hint = "; `make bench-tools` creates it" if "/run/sshd" in str(exc) else ""
        yield None, f"unavailable: sshd did not start: {exc}{hint}"
        return
    try:
        yield sshd, ""
    finally:
        sshd.stop()


def copy_once(tool: Tool, job: Job) -> Run:
    """One copy, verified; any failure becomes a failed run, not a crash."""
    job.dest.mkdir(parents=True)
    os.sync()
    started = procs.mark()
    try:
        run = tool.run(job)
    except (OSError, RuntimeError) as exc:
        run = Run(0.0, f"{type(exc).__name__}: {exc}")
    finally:
        procs.end_since(started)
    if run.error is None:
        problem = workloads.verify(job.workload, job.dest)
        run = dataclasses.replace(run, error=problem)
    if not job.workload.is_tree:
        shutil.rmtree(job.dest, ignore_errors=True)
    return run


def timeout_for(workload: Workload, quick: bool) -> float:
    """Generous: only a hang should ever reach it (10 MB/s, 50 files/s)."""
    base = 30 if quick else 120
    return base + workload.size / 10e6 + workload.files / 50


def measure(
    tools: Sequence[Tool], load: Workload, runs: int, scratch: Path, quick: bool
) -> list[Row]:
    tools = [tool for tool in tools if tool.applies_to(load)]
    rows = [Row(tool.name, tool.durable, load) for tool in tools]
    for row, tool in zip(rows, tools, strict=True):
        row.unavailable = tool.missing(load)

    for index in range(1, runs + 1):
        for row, tool in zip(rows, tools, strict=True):
            if row.unavailable:
                continue
            stem = f"{load.key}-{tool.name.replace(' ', '-')}-{index}"
            out, logs = scratch / "out" / stem, scratch / "logs" / stem
            run = copy_once(tool, Job(load, out, logs, timeout_for(load, quick)))
            row.runs.append(run)

            verdict = "identical" if run.error is None else f"FAILED: {run.error}"
            say(f"  {stem:24} {run.seconds:8.3f} s  {verdict}")
    # Copies of a tree are removed only now.  On a file system without a
    # journal (this machine's ext4), the kernel will not reuse an inode
    # freed in the last few seconds: right after 10,000 files were
    # deleted, creating the next 10,000 takes twice as long, so whichever
    # tool ran after a deletion would pay for it.
    for stem in (scratch / "out").glob(f"{load.key}-*"):
        shutil.rmtree(stem, ignore_errors=True)
    return rows


def rss_4g(tool: Filexfer, scratch: Path, big_rows: Sequence[Row]) -> dict[str, Any]:
    """Send one 4 GiB file with filexfer; compare peak RSS with 1 GiB."""
    one_gib = next(r for r in big_rows if r.tool == "filexfer")
    found: dict[str, Any] = {
        "sender_1g_kib": one_gib.peak_rss_kib("sender"),
        "receiver_1g_kib": one_gib.peak_rss_kib("receiver"),
    }
    problem = lacks_space(scratch, 8 * GIB + GIB // 2)
    if problem:
        return {**found, "skipped": problem}

    say("bench: writing a 4 GiB file for --rss-4g")
    path = scratch / "big4g" / "big4g.bin"
    load = workloads.make_file("big4g", "4 GiB file", path, 4 * GIB, "MB/s")
    job = Job(load, scratch / "out" / "big4g", scratch / "logs" / "big4g", 900)
    run = copy_once(tool, job)
    shutil.rmtree(path.parent)
    return {
        **found,
        "identical": run.error is None,
        "error": run.error,
        "seconds": run.seconds,
        "sender_4g_kib": run.sender_rss_kib,
        "receiver_4g_kib": run.receiver_rss_kib,
    }


def rss_line(found: dict[str, Any]) -> str:
    def pair(size: str) -> str:
        sender, receiver = (
            found.get(f"sender_{size}_kib"),
            found.get(f"receiver_{size}_kib"),
        )
        return f"{report.mib(sender)} / {report.mib(receiver)} MiB"

    if "skipped" in found:
        return f"--rss-4g skipped: {found['skipped']}"
    failed = "" if found["identical"] else f" (the copy FAILED: {found['error']})"
    return (
        f"filexfer peak RSS send/recv: 1 GiB {pair('1g')}, 4 GiB {pair('4g')}{failed}"
    )


def space_needed(args: argparse.Namespace, sizes: workloads.Sizes) -> int:
    """The data, one copy of the big file at a time, and every copy of the
    tree (kept until the workload ends), plus room to spare."""
    needed = 512 << 20
    if "big" in args.loads:
        needed += 2 * sizes.big_file
    if "tree" in args.loads:
        runs = args.runs or (QUICK_RUNS if args.quick else FULL_RUNS)["tree"]
        copies = 1 + len(chosen_tools(args.tools)) * runs
        needed += copies * sizes.tree_files * max(sizes.tree_file_size, 4096)
    return needed


def benchmark(args: argparse.Namespace, scratch: Path) -> int:
    sizes = workloads.QUICK if args.quick else workloads.FULL
    problem = lacks_space(scratch, space_needed(args, sizes))
    if problem:
        sys.exit(f"bench: error: {problem} (use --tmp DIR or --quick)")
    say(f"bench: writing data under {scratch}")
    loads = workloads.create(scratch / "data", sizes, args.loads)
    ids = servers.make_identities(scratch / "filexfer")
    (scratch / "logs").mkdir()
    selected = chosen_tools(args.tools)
    wants_ssh = any(t.name in ("scp", "rsync") for t in selected)

    with sshd_for(scratch / "ssh", wants_ssh) as (sshd, problem):
        context = Context(ids, sshd, problem or None)
        tools = [tool(context) for tool in selected]
        rows: list[Row] = []
        for load in loads:
            runs = args.runs or (QUICK_RUNS if args.quick else FULL_RUNS)[load.key]
            say(f"bench: {load.title}, {runs} run(s) per tool")
            rows += measure(tools, load, runs, scratch, args.quick)

    memory = None
    filexfer = next((t for t in tools if isinstance(t, Filexfer)), None)
    if args.rss_4g and filexfer is not None:
        memory = rss_4g(filexfer, scratch, [r for r in rows if r.workload.key == "big"])
    return publish(args, scratch, loads, rows, memory)


def metadata(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "mode": "quick" if args.quick else "full",
        "command": shlex.join(["python", "bench/run.py", *args.argv]),
        "finished": now.isoformat(timespec="seconds"),
        "filexfer_commit": machine.commit(),
        "machine": machine.describe(scratch),
        "versions": machine.versions(),
    }


def publish(
    args: argparse.Namespace,
    scratch: Path,
    loads: Sequence[Workload],
    rows: Sequence[Row],
    memory: dict[str, Any] | None,
) -> int:
    """Print the table, write Markdown and JSON; 1 if filexfer failed a copy."""
    meta = metadata(args, scratch)
    extra = report.reasons(rows) + report.cpu_lines(rows)
    extra += report.target_lines(report.targets(rows, memory))
    if memory is not None:
        extra.insert(0, rss_line(memory))
    if args.quick:
        extra.insert(0, "quick mode: smaller data, so the targets are only indicative")
    print(report.text_table(rows), "", *extra, sep="\n")

    text = report.markdown(meta, rows, extra)
    payload = report.document(meta, loads, rows, memory)
    # Only a run of every tool on every workload, with the usual number
    # of runs, replaces full.* (the results the README quotes); anything
    # else goes to FULL-partial.*.
    partial = args.tools or args.workloads or args.runs
    stem = meta["mode"] + ("-partial" if partial else "")
    for path in report.save(args.out, stem, payload, text):
        say(f"bench: wrote {path}")

    failed = [r for r in rows if r.status == "failed"]
    for row in failed:
        say(f"bench: {row.tool} on {row.workload.title}: some copies FAILED")
    return 1 if any(r.tool == "filexfer" for r in failed) else 0


def stop_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so that servers and data are cleaned up."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    stop_on_sigterm()
    parent = args.tmp or Path(tempfile.gettempdir())
    scratch = Path(tempfile.mkdtemp(prefix="filexfer-bench-", dir=parent))
    try:
        return benchmark(args, scratch)
    finally:
        procs.end_since(0)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; servers ended, temp dir removed")
