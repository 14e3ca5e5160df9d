"""Turn runs into rows, the table, the target checks, Markdown and JSON.

A row is one tool on one workload.  Its median covers only the runs that
produced an identical copy; failed runs are counted and shown, never
averaged in.  The ratio is the row's median time divided by filexfer's
on the same workload, so above 1 means filexfer was faster (it is also
filexfer's speed divided by the tool's).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools import Run
from workloads import Workload

MB = 1e6
MIB_KIB = 1024


@dataclass
class Row:
    tool: str
    durable: bool
    workload: Workload
    runs: list[Run] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def good(self) -> list[Run]:
        return [run for run in self.runs if run.error is None]

    @property
    def median(self) -> float | None:
        good = self.good
        return statistics.median(r.seconds for r in good) if good else None

    @property
    def status(self) -> str:
        if self.unavailable:
            return self.unavailable.split(":")[0]
        if not self.runs:
            return "not run"
        return "ok" if len(self.good) == len(self.runs) else "failed"

    def rate(self, unit: str) -> float | None:
        """MB/s (10^6 bytes) or files/s from the median time."""
        median = self.median
        if not median:
            return None
        amount = self.workload.size / MB if unit == "MB/s" else self.workload.files
        return amount / median

    def peak_rss_kib(self, side: str) -> int | None:
        found = [getattr(r, f"{side}_rss_kib") for r in self.runs]
        known = [value for value in found if value is not None]
        return max(known) if known else None


def ratio(row: Row, rows: Sequence[Row]) -> float | None:
    """ROW's median time over filexfer's on the same workload."""
    base = next(
        (r for r in rows if r.tool == "filexfer" and r.workload is row.workload),
        None,
    )
    if base is None or row.median is None or not base.median:
        return None
    return row.median / base.median


# -- the table ---------------------------------------------------------------

HEADER = [
    "tool",
    "workload",
    "ok runs",
    "median s",
    "range s",
    "rate",
    "ratio",
    "durable",
    "peak RSS send/recv",
]


def cells(row: Row, rows: Sequence[Row]) -> list[str]:
    """One table line; unavailable and failed rows say so instead of numbers."""
    head = [row.tool, row.workload.title]
    durable = "yes" if row.durable else "no"
    if row.unavailable:
        return [*head, "-", row.status, "", "", "", durable, ""]

    ok_runs = f"{len(row.good)}/{len(row.runs)}"
    median, rate, factor = row.median, row.rate(row.workload.unit), ratio(row, rows)
    if median is None or rate is None:
        return [*head, ok_runs, "FAILED", "", "", "", durable, ""]
    times = [run.seconds for run in row.good]
    return [
        *head,
        ok_runs,
        f"{median:.3f}",
        f"{min(times):.2f}-{max(times):.2f}",
        f"{rate:,.0f} {row.workload.unit}",
        f"{factor:.2f}" if factor is not None else "-",
        durable,
        rss_pair(row),
    ]


def rss_pair(row: Row) -> str:
    sender, receiver = row.peak_rss_kib("sender"), row.peak_rss_kib("receiver")
    if row.tool != "filexfer" or sender is None:
        return ""
    return f"{mib(sender)} / {mib(receiver)} MiB"


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / MIB_KIB:.0f}"


def reasons(rows: Sequence[Row]) -> list[str]:
    """Why rows are missing or failed: one line per tool and reason."""
    found: dict[str, None] = {}
    for row in rows:
        if row.unavailable:
            found[f"{row.tool}: {row.unavailable}"] = None
        for run in row.runs:
            if run.error is not None:
                found[f"{row.tool} on {row.workload.title}: {run.error}"] = None
    return list(found)


def cpu_lines(rows: Sequence[Row]) -> list[str]:
    """filexfer's CPU time per side next to its wall time (medians)."""
    lines = []
    for row in rows:
        if row.tool != "filexfer" or not row.good:
            continue
        cpu = {
            side: [getattr(r, f"{side}_cpu") for r in row.good]
            for side in ("sender", "receiver")
        }
        if all(None not in values for values in cpu.values()):
            sender, receiver = (statistics.median(v) for v in cpu.values())
            lines.append(
                f"filexfer CPU on {row.workload.title}: sender {sender:.2f} s "
                f"(whole command), receiver {receiver:.2f} s (the copy), "
                f"wall {row.median:.2f} s"
            )
    return lines


def text_table(rows: Sequence[Row]) -> str:
    """The table as aligned plain text, for the terminal."""
    lines = [HEADER, *(cells(row, rows) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    numeric = {2, 3, 4, 5, 6}
    out = []
    for line in lines:
        padded = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(padded).rstrip())
    out.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(out)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [HEADER, *(cells(row, rows) for row in rows)]
    align = ["---", "---", "---:", "---:", "---:", "---:", "---:", "---", "---:"]
    out = ["| " + " | ".join(line) + " |" for line in lines]
    out.insert(1, "| " + " | ".join(align) + " |")
    return "\n".join(out)


# -- targets (issue: speed and memory) ----------------------------------------


@dataclass(frozen=True)
class Target:
    """At least (or, for RSS, at most) LIMIT on one measured value."""

    text: str
    value: float | None
    limit: float
    at_most: bool = False

    @property
    def met(self) -> bool | None:
        if self.value is None or math.isnan(self.value):
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit


def targets(rows: Sequence[Row], rss_4g: dict[str, Any] | None) -> list[Target]:
    def factor(workload: str, tool: str) -> float | None:
        for row in rows:
            if row.workload.key == workload and row.tool == tool:
                return ratio(row, rows)
        return None

    found = [
        Target("big file: filexfer >= 3x scp", factor("big", "scp"), 3.0),
        Target("big file: filexfer >= 0.85x socat+fsync", factor("big", "socat"), 0.85),
        Target("tree: filexfer >= 2x rsync (files/s)", factor("tree", "rsync"), 2.0),
        Target(
            "one small file: filexfer time <= 0.5x scp", factor("small", "scp"), 2.0
        ),
    ]
    found += rss_targets(rows, rss_4g)
    return found


def rss_targets(rows: Sequence[Row], rss_4g: dict[str, Any] | None) -> list[Target]:
    found = []
    for side in ("sender", "receiver"):
        peaks = [r.peak_rss_kib(side) for r in rows if r.tool == "filexfer"]
        known = [p for p in peaks if p is not None]
        peak = max(known) / MIB_KIB if known else None
        found.append(Target(f"{side} peak RSS <= 100 MiB", peak, 100, at_most=True))
        if rss_4g and rss_4g.get(f"{side}_4g_kib") and rss_4g.get(f"{side}_1g_kib"):
            growth = (rss_4g[f"{side}_4g_kib"] - rss_4g[f"{side}_1g_kib"]) / MIB_KIB
            text = f"{side} RSS flat: 4 GiB minus 1 GiB peak <= 8 MiB"
            found.append(Target(text, growth, 8, at_most=True))
    return found


def target_lines(found: Sequence[Target]) -> list[str]:
    marks = {True: "met", False: "NOT MET", None: "not measured"}
    lines = []
    for target in found:
        value = "-" if target.value is None else f"{target.value:.2f}"
        lines.append(f"{marks[target.met]:>12}  {target.text} (measured {value})")
    return lines


# -- files ----------------------------------------------------------------------


def row_json(row: Row, rows: Sequence[Row]) -> dict[str, Any]:
    return {
        "tool": row.tool,
        "workload": row.workload.key,
        "status": row.status,
        "unavailable": row.unavailable,
        "durable": row.durable,
        "runs_ok": len(row.good),
        "median_seconds": row.median,
        "mb_per_s": row.rate("MB/s"),
        "files_per_s": row.rate("files/s"),
        "ratio_to_filexfer": ratio(row, rows),
        "peak_rss_kib": {
            "sender": row.peak_rss_kib("sender"),
            "receiver": row.peak_rss_kib("receiver"),
        },
        "runs": [
            {
                "seconds": run.seconds,
                "identical": run.error is None,
                "error": run.error,
                "sender_rss_kib": run.sender_rss_kib,
                "receiver_rss_kib": run.receiver_rss_kib,
                "sender_cpu_seconds": run.sender_cpu,
                "receiver_cpu_seconds": run.receiver_cpu,
            }
            for run in row.runs
        ],
    }


def document(
    meta: dict[str, Any],
    workloads: Sequence[Workload],
    rows: Sequence[Row],
    rss_4g: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything measured, as one JSON-ready object."""
    return {
        "format": "filexfer-bench/1",
        **meta,
        "workloads": [
            {"key": w.key, "title": w.title, "files": w.files, "bytes": w.size}
            for w in workloads
        ],
        "rows": [row_json(row, rows) for row in rows],
        "rss_4g": rss_4g,
        "targets": [
            {"target": t.text, "value": t.value, "limit": t.limit, "met": t.met}
            for t in targets(rows, rss_4g)
        ],
    }


def machine_line(meta: dict[str, Any]) -> str:
    found, versions = meta["machine"], meta["versions"]
    parts = [
        f"{found['cpu']}, {found['cores']} cores, {found['memory_gib']} GiB RAM",
        f"Linux {found['kernel']}, {found['filesystem']} temp dir",
        f"Python {found['python']}, cryptography {versions['cryptography']}",
    ]
    for name in ("openssh", "rsync", "socat"):
        if versions[name]:
            parts.append(f"{name} {versions[name]}")
    load = ", ".join(f"{value:.2f}" for value in found["load_average"])
    return "; ".join([*parts, f"load average at the end {load}"])


LEGEND = [
    "- filexfer: `filexfer put [-r] SOURCE 127.0.0.1:PORT` until it exits,",
    "  that is until the receiver has fsynced the copy and confirmed its digest.",
    "- scp, rsync: `scp [-r]` (default cipher: {cipher}) and `rsync -a` over",
    "  ssh to a throwaway sshd on 127.0.0.1; neither fsyncs.",
    "- socat: no encryption, the ceiling: socat (tar | socat for the tree),",
    "  then fsync (syncfs for the tree).",
    "- python aes-gcm: one Python thread per side, AES-256-GCM per 1 MiB",
    "  chunk over a socket (tar for the tree), then fsync (syncfs).",
    "",
    "Median of the runs that produced an identical copy (SHA-256 of every",
    "file, no file missing or extra). Rate in MB/s (10^6 bytes) or files/s.",
    "Ratio: this tool's median time over filexfer's; above 1 means filexfer",
    "is faster. Peak RSS: the filexfer sender and receiver processes.",
]


def markdown(meta: dict[str, Any], rows: Sequence[Row], extra: Sequence[str]) -> str:
    cipher = meta["versions"]["ssh_cipher"] or "unknown"
    lines = [
        f"# filexfer benchmark ({meta['mode']} mode)",
        "",
        f"`{meta['command']}` at {meta['finished']}, filexfer "
        f"{meta['filexfer_commit']}.",
        "",
        f"Machine: {machine_line(meta)}.",
        "",
        markdown_table(rows),
        "",
        *(line.format(cipher=cipher) for line in LEGEND),
        "",
        "```",
        *extra,
        "```",
        "",
    ]
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    """Write atomically, so a cut run never leaves half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    partial.replace(path)


def save(out: Path, mode: str, payload: dict[str, Any], text: str) -> list[Path]:
    paths = [out / f"{mode}.json", out / f"{mode}.md"]
    write(paths[0], json.dumps(payload, indent=2) + "\n")
    write(paths[1], text)
    return paths
