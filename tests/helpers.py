"""Real processes for the tests: a `filexfer recv` daemon and the real CLI.

Everything talks to 127.0.0.1 only. Each test gets its own config homes
(FILEXFER_HOME) so no test ever touches the user's keys.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "sample_data"
_LISTENING = re.compile(r"event=recv\.listening address=127\.0\.0\.1:(\d+)")


def base_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FILEXFER_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("XDG_CONFIG_HOME", None)
    return env


def cli(
    args: Sequence[str | os.PathLike[str]],
    home: Path,
    *,
    timeout: float = 120,
    stdin: int | None = subprocess.DEVNULL,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `filexfer ARGS` as a real process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "filexfer", *map(str, args)],
        env=base_env(home),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def public_key(home: Path) -> str:
    """The identity's `fx1...` line (the identity is created on first use)."""
    done = cli(["id"], home)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def fingerprint(home: Path) -> str:
    done = cli(["id"], home)
    assert done.returncode == 0, done.stderr
    return done.stderr.strip().split()[-1]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digests(top: Path) -> dict[str, str]:
    """Relative path -> sha256 for every regular file under TOP."""
    found = {}
    for path in sorted(top.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[path.relative_to(top).as_posix()] = sha256(path)
    return found


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of SIZE pseudo-random bytes, written in 1 MiB steps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = hashlib.shake_256(f"filexfer-test-{seed}".encode()).digest(1 << 20)
    with open(path, "wb") as stream:
        left = size
        counter = 0
        while left:
            piece = block if counter == 0 else bytes(reversed(block))
            counter ^= 1
            stream.write(piece[: min(left, len(piece))])
            left -= min(left, len(piece))
    return path


def leftovers(root: Path) -> list[str]:
    """Temporary part files left under ROOT (there should be none)."""
    return sorted(p.name for p in root.rglob(".filexfer-*"))


@dataclass
class Receiver:
    """A real `filexfer recv` process on 127.0.0.1 with its own identity."""

    home: Path
    root: Path
    log_path: Path
    extra: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    _log: object = field(default=None, repr=False)

    def start(self, timeout: float = 20) -> Receiver:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "filexfer",
                "recv",
                "--dir",
                str(self.root),
                "--listen",
                "127.0.0.1:0",
                *self.extra,
            ],
            env=base_env(self.home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                self.port = int(match.group(1))
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"receiver exited early:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"receiver did not start:\n{self.log()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in receiver log:\n{self.log()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def peak_rss_kib(self) -> int:
        """VmHWM of the running daemon, in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        assert match, status
        return int(match.group(1))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        return code


@dataclass
class Pair:
    """A sender identity authorized at a running receiver."""

    sender_home: Path
    receiver: Receiver
    tmp: Path
    receiver_fingerprint: str

    def put(
        self, *args: str | os.PathLike[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`filexfer put ARGS... 127.0.0.1:PORT`, pinning by fingerprint."""
        return cli(
            [
                "put",
                "--fingerprint",
                self.receiver_fingerprint,
                *args,
                self.receiver.address,
            ],
            self.sender_home,
            timeout=timeout,
        )
