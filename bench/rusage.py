"""Run one command; write its wall time, exit code, peak RSS, CPU as JSON.

    python -I -S rusage.py REPORT COMMAND...

Why a wrapper: on Linux a child's ``ru_maxrss`` also counts the memory of
the process that forked it (the forked copy, or with vfork the parent's
own address space, is measured until ``exec``).  Reaped straight from the
benchmark, every command would report at least the benchmark's own size.
Forked from this small, fresh interpreter instead, a command's figure is
its own (never below the ~10 MiB of this wrapper).  The time is taken
around the command alone, so the wrapper's start-up is not counted.

The command stays in this process's group: ending the group by this PID
ends the command too.  The exit status is the command's.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(report: str, argv: list[str]) -> int:
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)

    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    found = {
        "seconds": seconds,
        "code": code,
        "max_rss_kib": usage.ru_maxrss,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
    with open(report, "w") as stream:
        json.dump(found, stream)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
