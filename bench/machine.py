"""What the numbers were measured on: hardware, kernel, tool versions."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _first_line(argv: list[str], pattern: str = "") -> str | None:
    """The first output line of ARGV (matching PATTERN), or None."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (done.stdout + done.stderr).splitlines():
        if re.search(pattern, line):
            return line.strip()
    return None


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return round(int(match.group(1)) / (1 << 20), 1) if match else None


def filesystem(path: Path) -> str:
    """The type of the file system holding PATH (longest mount prefix)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        point = fields[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def describe(data_dir: Path) -> dict[str, Any]:
    """A short, JSON-ready description of this machine."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "filesystem": filesystem(data_dir),
        "python": platform.python_version(),
        # On a shared machine the load tells how far to trust the numbers.
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def versions() -> dict[str, str | None]:
    """Versions of the things measured; None where not installed."""
    from cryptography import __version__ as cryptography_version

    return {
        "python": sys.version.split()[0],
        "cryptography": cryptography_version,
        "openssh": _version(["ssh", "-V"], r"OpenSSH_([^\s,]+)"),
        "ssh_cipher": default_cipher(),
        "rsync": _version(["rsync", "--version"], r"rsync\s+version (\S+)"),
        "socat": _version(["socat", "-V"], r"socat version (\S+)"),
        "tar": _version(["tar", "--version"], r"^tar .* (\S+)$"),
    }


def _version(argv: list[str], pattern: str) -> str | None:
    """The version group of PATTERN in ARGV's output, or None."""
    line = _first_line(argv, pattern)
    match = re.search(pattern, line) if line else None
    return match.group(1) if match else None


def default_cipher() -> str | None:
    """The cipher ssh offers first (what scp and rsync use here)."""
    line = _first_line(["ssh", "-G", "-F", "/dev/null", "127.0.0.1"], "^ciphers ")
    return line.split()[1].split(",")[0] if line else None


def commit() -> str:
    """The filexfer commit measured, marked when the tree has changes."""
    head = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if head is None:
        return "unknown"
    status = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    return head + ("+changes" if status.stdout.strip() else "")
