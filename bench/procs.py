"""Child processes for the benchmark: start, time, measure, and end by PID.

Every process the benchmark starts gets its own session (and so its own
process group), so that ending it by its PID also ends the helpers it
spawned itself, such as the ``ssh`` under ``scp``.  Nothing else is ever
signalled.  Being in their own sessions, children do not see a Ctrl-C
at the terminal; every one is listed here, so that whatever a failed or
interrupted copy left running is ended by :func:`end_since`.  Timed
commands are reaped with ``os.wait4`` so that each one's own peak RSS
comes back with its exit status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

Argv = Sequence[str | os.PathLike[str]]

_started: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class Exit:
    """How a reaped child ended: exit code (negative: signal) and peak RSS."""

    code: int
    max_rss_kib: int
    timed_out: bool = False


def spawn(
    argv: Argv,
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ARGV in a new session, so that its PID names its whole group."""
    process = subprocess.Popen(
        [os.fspath(arg) for arg in argv],
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
    )
    _started.append(process)
    return process


def mark() -> int:
    """A point to pass to :func:`end_since` later."""
    return len(_started)


def end_since(point: int) -> None:
    """End every process started after POINT that still runs, newest first."""
    for process in reversed(_started[point:]):
        if process.poll() is None:
            stop(process)
    del _started[point:]


def reap(process: subprocess.Popen[bytes], timeout: float) -> Exit:
    """Wait for PROCESS with ``wait4``; end its group if it runs too long."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        signal_group(process.pid, signal.SIGKILL)

    # A timer rather than polling: polling would add its interval to the
    # measured time of every short command.
    watchdog = threading.Timer(timeout, expire)
    watchdog.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        stop(process)
        raise
    finally:
        watchdog.cancel()

    process.returncode = os.waitstatus_to_exitcode(status)
    return Exit(process.returncode, usage.ru_maxrss, expired.is_set())


def signal_group(pid: int, signum: int) -> None:
    """Send SIGNUM to the process group that PID leads (we started it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def stop(process: subprocess.Popen[bytes], grace: float = 10) -> int:
    """End PROCESS (and its group) politely, then firmly; return its code."""
    if process.poll() is None:
        signal_group(process.pid, signal.SIGTERM)
    try:
        return process.wait(grace)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGKILL)
        return process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:PORT (read from /proc)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                return True
    return False


def wait_until(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    what: str,
    timeout: float = 20,
) -> None:
    """Poll READY() until true; fail if PROCESS exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready in {timeout:.0f} s")
        time.sleep(0.01)


def tail(path: Path, lines: int = 3) -> str:
    """The last LINES lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def check(
    argv: Argv, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a short setup command; raise with its stderr if it fails."""
    done = subprocess.run(
        [os.fspath(arg) for arg in argv],
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        command = " ".join(os.fspath(arg) for arg in argv)
        raise RuntimeError(f"{command}: {done.stderr.strip() or done.returncode}")
    return done
