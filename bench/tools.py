"""The tools under test, each able to copy one workload once, timed.

A tool's clock covers the whole client command until it exits, plus, for
the baselines that have no confirmation of their own, the wait for the
receiving side to finish and (where the row says durable) the fsync or
syncfs of the output.  Servers are started before the clock: the filexfer
receiver, sshd, the listening socat and the AES-GCM receiver all play a
daemon that is already running when a user types the command.

Which rows are durable: filexfer (its receiver fsyncs and confirms the
digest before ``put`` exits), socat, the AES-GCM loop and the file loop
(fsync/syncfs timed here).  scp and rsync are timed as they come: they do not fsync.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

import procs
import servers
from workloads import Workload

BENCH = Path(__file__).resolve().parent
SOCAT_BLOCK = 1 << 20  # bytes per read/write; socat's 8 KiB default caps it


@dataclass(frozen=True)
class Run:
    """One timed copy; ``error`` is None only for an identical copy."""

    seconds: float
    error: str | None = None
    sender_rss_kib: int | None = None
    receiver_rss_kib: int | None = None
    # CPU time (user + system) of each side: near `seconds`, a side is
    # CPU-bound; far below, it waits (for the disk, the peer, the network).
    sender_cpu: float | None = None
    receiver_cpu: float | None = None


@dataclass(frozen=True)
class Job:
    """One copy to make: the workload, an empty destination, a log prefix."""

    workload: Workload
    dest: Path
    logs: Path
    timeout: float

    def path(self, suffix: str) -> Path:
        return self.logs.with_name(f"{self.logs.name}.{suffix}")

    def log(self, role: str) -> Path:
        return self.path(f"{role}.log")


@dataclass(frozen=True)
class Context:
    """What the tools share: identities, and sshd if it could be started."""

    ids: servers.Identities
    sshd: servers.Sshd | None
    sshd_problem: str | None


class Tool(ABC):
    name: ClassVar[str]
    durable: ClassVar[bool]

    def __init__(self, context: Context) -> None:
        self.context = context

    def missing(self, workload: Workload) -> str | None:
        """Why this tool cannot run here ("not installed: ..."), or None."""
        return None

    def applies_to(self, workload: Workload) -> bool:
        """Whether the workload has a row for this tool at all."""
        return True

    @abstractmethod
    def run(self, job: Job) -> Run: ...


def not_installed(*programs: str) -> str | None:
    absent = [p for p in programs if shutil.which(p) is None]
    return f"not installed: {', '.join(absent)}" if absent else None


def timed(
    argv: procs.Argv, job: Job, what: str, env: dict[str, str] | None = None
) -> Run:
    """Run one client command through the rusage wrapper; time it to exit."""
    report = job.path("rusage.json")
    wrapper = [sys.executable, "-I", "-S", str(BENCH / "rusage.py"), str(report)]
    with open(job.log("client"), "ab") as log:
        start = time.perf_counter()
        process = procs.spawn([*wrapper, *argv], env=env, stderr=log)
        finished = procs.reap(process, job.timeout)
        seconds = time.perf_counter() - start

    error = exit_problem(what, finished, job.log("client"))
    if not report.exists():
        return Run(seconds, error or f"{what}: the wrapper wrote no report")
    measured = json.loads(report.read_text())
    return Run(
        measured["seconds"],
        error,
        sender_rss_kib=measured["max_rss_kib"],
        sender_cpu=measured["cpu_seconds"],
    )


def exit_problem(what: str, finished: procs.Exit, log: Path) -> str | None:
    if finished.timed_out:
        return f"{what} timed out"
    if finished.code != 0:
        return f"{what} exited with {finished.code}: {procs.tail(log, 2)}"
    return None


class Filexfer(Tool):
    name = "filexfer"
    durable = True

    def run(self, job: Job) -> Run:
        ids = self.context.ids
        receiver = servers.Receiver(ids, job.dest, job.log("receiver")).start()
        idle_cpu = receiver.cpu_seconds() or 0.0
        try:
            recursive = ["-r"] if job.workload.is_tree else []
            argv = servers.filexfer_argv(
                "put",
                "--fingerprint",
                ids.receiver_fingerprint,
                *recursive,
                job.workload.source,
                receiver.address,
            )
            run = timed(argv, job, self.name, servers.filexfer_env(ids.sender_home))
            receiver_rss = receiver.peak_rss_kib()
            # Only the copy's share: the daemon's start-up is not the copy.
            busy_cpu = receiver.cpu_seconds()
            receiver_cpu = None if busy_cpu is None else busy_cpu - idle_cpu
        finally:
            code = receiver.stop()

        # SIGTERM ends a healthy receiver with status 0; anything else is
        # a crash the sender may not have noticed.
        error = run.error
        if error is None and code != 0:
            error = f"receiver exited with {code}: {procs.tail(job.log('receiver'))}"
        return dataclasses.replace(
            run,
            error=error,
            receiver_rss_kib=receiver_rss,
            receiver_cpu=receiver_cpu,
        )


class Scp(Tool):
    name = "scp"
    durable = False

    def missing(self, workload: Workload) -> str | None:
        return self.context.sshd_problem

    def run(self, job: Job) -> Run:
        sshd = self.context.sshd
        assert sshd is not None
        recursive = ["-r"] if job.workload.is_tree else []
        argv = ["scp", "-q", *recursive, "-P", str(sshd.port)]
        argv += [*sshd.client_options(), str(job.workload.source)]
        return timed([*argv, sshd.target(job.dest)], job, self.name)


class Rsync(Tool):
    name = "rsync"
    durable = False

    def missing(self, workload: Workload) -> str | None:
        return not_installed("rsync") or self.context.sshd_problem

    def run(self, job: Job) -> Run:
        sshd = self.context.sshd
        assert sshd is not None
        remote_shell = shlex.join(sshd.ssh_command())
        argv = ["rsync", "-a", "-e", remote_shell, str(job.workload.source)]
        return timed([*argv, sshd.target(job.dest)], job, self.name)


# Pipelines: the plain and the AES-GCM baselines stream a tree through tar.

Pipeline = list[subprocess.Popen[bytes]]


def start_pipeline(
    commands: Sequence[procs.Argv],
    log: Path,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> Pipeline:
    """Start COMMANDS joined by pipes; only the first inherits PASS_FDS."""
    started: Pipeline = []
    upstream: int | IO[bytes] | None = subprocess.DEVNULL
    with open(log, "ab") as errors:
        for index, argv in enumerate(commands):
            last = index == len(commands) - 1
            process = procs.spawn(
                argv,
                env=env,
                stdin=upstream,
                stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                stderr=errors,
                pass_fds=pass_fds if index == 0 else (),
            )
            if started:
                # The child holds the pipe now; our copy would hide its EOF.
                assert started[-1].stdout is not None
                started[-1].stdout.close()
            started.append(process)
            upstream = process.stdout
    return started


def finish(sending: Pipeline, receiving: Pipeline, job: Job) -> str | None:
    """Wait for both pipelines; a failed sender ends the receiver at once."""
    problems = [_reap(p, job) for p in sending]
    if any(problems):
        for process in receiving:
            procs.stop(process)
    problems += [_reap(p, job) for p in receiving]
    return next((p for p in problems if p), None)


def _reap(process: subprocess.Popen[bytes], job: Job) -> str | None:
    if process.returncode is not None:
        return None if process.returncode == 0 else "stopped after a failure"
    finished = procs.reap(process, job.timeout)
    assert isinstance(process.args, list)
    what = Path(process.args[0]).name
    return exit_problem(what, finished, job.log("pipeline"))


_libc = ctypes.CDLL(None, use_errno=True)


def make_durable(job: Job) -> None:
    """fsync the copied file, or syncfs the file system under a tree."""
    target = job.dest / job.workload.source.name
    fd = os.open(target if not job.workload.is_tree else job.dest, os.O_RDONLY)
    try:
        if not job.workload.is_tree:
            os.fsync(fd)
        elif _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)


def tar_create(workload: Workload) -> list[str]:
    source = workload.source
    return ["tar", "-c", "-C", str(source.parent), source.name]


def tar_extract(job: Job) -> list[str]:
    return ["tar", "-x", "-C", str(job.dest)]


class Socat(Tool):
    """The unencrypted ceiling: bytes over loopback, then fsync or syncfs."""

    name = "socat"
    durable = True

    def missing(self, workload: Workload) -> str | None:
        return not_installed("socat", *(["tar"] if workload.is_tree else []))

    def run(self, job: Job) -> Run:
        port = procs.free_port()
        socat = ["socat", "-u", "-b", str(SOCAT_BLOCK)]
        listen = f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"
        connect = f"TCP:127.0.0.1:{port}"
        if job.workload.is_tree:
            receiver = [[*socat, listen, "STDOUT"], tar_extract(job)]
            sender = [tar_create(job.workload), [*socat, "STDIN", connect]]
        else:
            output = job.dest / job.workload.source.name
            receiver = [[*socat, listen, f"CREATE:{output}"]]
            sender = [[*socat, f"OPEN:{job.workload.source}", connect]]

        receiving = start_pipeline(receiver, job.log("pipeline"))
        procs.wait_until(lambda: procs.listening(port), receiving[0], "socat")
        return timed_pipeline(sender, receiving, job)


def timed_pipeline(
    sender: Sequence[procs.Argv],
    receiving: Pipeline,
    job: Job,
    env: dict[str, str] | None = None,
) -> Run:
    start = time.perf_counter()
    sending = start_pipeline(sender, job.log("pipeline"), env)
    error = finish(sending, receiving, job)
    if error is None:
        make_durable(job)
    return Run(time.perf_counter() - start, error)


class AesLoop(Tool):
    """Bare Python: AES-256-GCM per 1 MiB chunk over a socket, then fsync."""

    name = "python aes-gcm"
    durable = True

    def missing(self, workload: Workload) -> str | None:
        return not_installed("tar") if workload.is_tree else None

    def run(self, job: Job) -> Run:
        env = dict(os.environ, BENCH_AESLOOP_KEY=os.urandom(32).hex())
        loop = [sys.executable, str(BENCH / "aesloop.py")]
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            receiving = self._start_receiver(job, loop, env, listener.fileno())

        if job.workload.is_tree:
            sender = [tar_create(job.workload), [*loop, "send", "--port", str(port)]]
        else:
            source = str(job.workload.source)
            sender = [[*loop, "send", "--port", str(port), "--in", source]]
        return timed_pipeline(sender, receiving, job, env)

    def _start_receiver(
        self, job: Job, loop: list[str], env: dict[str, str], listen_fd: int
    ) -> Pipeline:
        ready, ready_writer = os.pipe()
        command = [*loop, "recv", "--listen-fd", str(listen_fd)]
        command += ["--ready-fd", str(ready_writer)]
        if job.workload.is_tree:
            receiver = [command, tar_extract(job)]
        else:
            receiver = [[*command, "--out", str(job.dest / job.workload.source.name)]]
        fds = (listen_fd, ready_writer)
        receiving = start_pipeline(receiver, job.log("pipeline"), env, fds)
        os.close(ready_writer)

        # The receiver closes its end once it is about to accept, so that
        # its interpreter start-up is not charged to the copy.
        select.select([ready], [], [], 30)
        os.close(ready)
        if receiving[0].poll() is not None:
            raise RuntimeError(
                f"aes-gcm receiver failed: {procs.tail(job.log('pipeline'))}"
            )
        return receiving


class FileLoop(Tool):
    """Bare Python storing a tree as filexfer's receiver does: the floor."""

    name = "python files"
    durable = True

    def applies_to(self, workload: Workload) -> bool:
        return workload.is_tree

    def run(self, job: Job) -> Run:
        loop = [sys.executable, str(BENCH / "fsloop.py")]
        return timed([*loop, str(job.workload.source), str(job.dest)], job, self.name)


TOOLS: tuple[type[Tool], ...] = (Filexfer, Scp, Rsync, Socat, AesLoop, FileLoop)
