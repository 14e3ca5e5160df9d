"""The servers the benchmark starts for itself, all on 127.0.0.1 only.

- a ``filexfer recv`` daemon with throwaway identities in the temp dir; a
  fresh one per run, so that its peak RSS (VmHWM) belongs to that run;
- one ``sshd`` for ``scp`` and ``rsync``, with its own host key, user key,
  ``authorized_keys``, ``known_hosts`` and ``sshd_config`` in the temp dir.
  The ssh client is told to read no configuration (``-F /dev/null``), no
  agent and no key but ours, so the user's ``~/.ssh`` is never read or
  written.

Each server is ended by the PID it was started with.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import procs

REPO = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")
_LISTENING = re.compile(r"event=recv\.listening address=127\.0\.0\.1:(\d+)")


def filexfer_argv(*args: str | os.PathLike[str]) -> list[str]:
    """The ``filexfer`` command, run by this interpreter (the project venv)."""
    return [sys.executable, "-m", "filexfer", *(os.fspath(arg) for arg in args)]


def filexfer_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FILEXFER_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    env.pop("XDG_CONFIG_HOME", None)
    return env


@dataclass(frozen=True)
class Identities:
    """A sender authorized at a receiver; both homes live in the temp dir."""

    sender_home: Path
    receiver_home: Path
    receiver_fingerprint: str


def make_identities(top: Path) -> Identities:
    sender, receiver = top / "sender-home", top / "receiver-home"
    sender.mkdir(parents=True)
    receiver.mkdir(parents=True)

    # `filexfer id` prints the key line on stdout, the fingerprint on stderr.
    key = procs.check(filexfer_argv("id"), filexfer_env(sender)).stdout.strip()
    shown = procs.check(filexfer_argv("id"), filexfer_env(receiver)).stderr
    procs.check(filexfer_argv("allow", key, "bench"), filexfer_env(receiver))
    return Identities(sender, receiver, shown.strip().split()[-1])


@dataclass
class Receiver:
    """One ``filexfer recv --dir ROOT`` on an OS-chosen 127.0.0.1 port."""

    ids: Identities
    root: Path
    log_path: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Receiver:
        self._log = open(self.log_path, "ab")  # closed in stop()
        # --shared: the files land in --dir itself, where the checks look.
        argv = filexfer_argv(
            "recv", "--dir", self.root, "--listen", "127.0.0.1:0", "--shared"
        )
        env = filexfer_env(self.ids.receiver_home)
        self.process = procs.spawn(argv, env=env, stderr=self._log)
        procs.wait_until(self._find_port, self.process, "filexfer recv")
        return self

    def _find_port(self) -> bool:
        match = _LISTENING.search(self.log_path.read_text(errors="replace"))
        if match:
            self.port = int(match.group(1))
        return match is not None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def peak_rss_kib(self) -> int | None:
        """VmHWM of the daemon, or None if it is no longer running."""
        assert self.process is not None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except FileNotFoundError:
            return None
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) if match else None

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time of the daemon so far, from /proc."""
        assert self.process is not None
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except FileNotFoundError:
            return None
        # Fields 14 and 15 (utime, stime), counted after the ")" that ends
        # the command name, which may itself contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int | None:
        code = procs.stop(self.process) if self.process is not None else None
        if self._log is not None:
            self._log.close()
        return code


@dataclass
class Sshd:
    """A throwaway ``sshd`` and the client options that reach it."""

    top: Path
    port: int
    user: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.top / "sshd.log"

    def client_options(self) -> list[str]:
        """Options for ssh/scp: our key, our known_hosts, no user config."""
        return [
            "-F", "/dev/null",
            "-i", str(self.top / "user_key"),
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", f"UserKnownHostsFile={self.top / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def ssh_command(self) -> list[str]:
        """The ``ssh`` command line that rsync's ``-e`` runs."""
        return ["ssh", "-p", str(self.port), *self.client_options()]

    def target(self, path: Path) -> str:
        return f"{self.user}@127.0.0.1:{path}/"

    def stop(self) -> None:
        if self.process is not None:
            procs.stop(self.process)


def sshd_missing() -> str | None:
    """Why sshd cannot be used here, or None."""
    for program in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(program) is None:
            return f"not installed: {program}"
    if not SSHD.exists():
        return f"not installed: {SSHD}"
    return None


def start_sshd(top: Path) -> Sshd:
    """Write keys and config under TOP and start sshd on a free port."""
    top.mkdir(parents=True)
    sshd = Sshd(top, procs.free_port(), getpass.getuser())
    for name in ("host_key", "user_key"):
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench"]
        procs.check([*keygen, "-f", top / name])
    shutil.copy(top / "user_key.pub", top / "authorized_keys")

    # Pin the host key up front: the client checks it strictly and never
    # has to learn (or print anything about) a new host.
    host_key = (top / "host_key.pub").read_text().split()[:2]
    pinned = f"[127.0.0.1]:{sshd.port} {' '.join(host_key)}\n"
    (top / "known_hosts").write_text(pinned)
    (top / "sshd_config").write_text(_sshd_config(sshd))

    with open(sshd.log_path, "ab") as log:
        argv: procs.Argv = [SSHD, "-D", "-e", "-f", top / "sshd_config"]
        sshd.process = procs.spawn(argv, stderr=log)
    try:
        procs.wait_until(lambda: _sshd_ready(sshd), sshd.process, "sshd")
    except RuntimeError as exc:
        sshd.stop()
        raise RuntimeError(f"{exc}: {procs.tail(sshd.log_path)}") from exc
    return sshd


def _sshd_ready(sshd: Sshd) -> bool:
    text = sshd.log_path.read_text(errors="replace")
    return f"Server listening on 127.0.0.1 port {sshd.port}" in text


def _sshd_config(sshd: Sshd) -> str:
    # StrictModes is off because the keys sit below the world-writable
    # /tmp; root may log in by key only, as the benchmark runs as root on
    # build machines.  The built-in SFTP server serves scp (SFTP mode).
    return "\n".join(
        [
            f"Port {sshd.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {sshd.top / 'host_key'}",
            f"AuthorizedKeysFile {sshd.top / 'authorized_keys'}",
            f"AllowUsers {sshd.user}",
            "PidFile none",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )
