"""Real processes for the tests: a `filexfer recv` daemon and the real CLI.

Everything talks to 127.0.0.1 only. Each test gets its own config homes
(FILEXFER_HOME) so no test ever touches the user's keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from filexfer import messages as msgs
from filexfer.keys import Identity, allow_sender, area_for, load_identity
from filexfer.keys import fingerprint as key_fingerprint
from filexfer.noise import HandshakeState
from filexfer.records import MAX_PLAINTEXT, RecordDecoder, Sealer
from filexfer.session import PROLOGUE, Channel

_T = TypeVar("_T")

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
    stdout: int = subprocess.PIPE,
    redirect: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run `filexfer ARGS` as a real process and capture its output.

    stdout: a descriptor to give it instead of a pipe to read.  redirect:
    shell redirections to start it with (``>&-``, ``2>/dev/full``).
    """
    argv = [sys.executable, "-m", "filexfer", *map(str, args)]
    if redirect:
        argv = ["sh", "-c", f"exec {shlex.join(argv)} {redirect}"]
    return subprocess.run(
        argv,
        env=base_env(home),
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
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


def stray_parts(root: Path) -> list[str]:
    """Part files under ROOT other than those kept for a resume."""
    return [name for name in leftovers(root) if not name.startswith(".filexfer-r")]


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
    max_files: int | None = None  # a descriptor limit for the daemon
    hard_max_files: int | None = None  # how far it may raise it (max_files)
    unprivileged: bool = False  # file permissions apply to it, even as root

    def _python(self) -> list[str]:
        if self.max_files is None:
            command = [sys.executable, "-m", "filexfer"]
        else:
            command = filexfer_with_file_limit(self.max_files, self.hard_max_files)
        return as_unprivileged(command) if self.unprivileged else command

    def start(self, timeout: float = 20) -> Receiver:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            [
                *self._python(),
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

    @property
    def area(self) -> Path:
        """Where this sender's files land: its own area under the receiver's --dir."""
        if "--shared" in self.receiver.extra:
            return self.receiver.root
        sender = load_identity(self.sender_home, create=False)
        area = self.receiver.root / area_for(sender.public)
        area.mkdir(parents=True, exist_ok=True)
        return area

    def put_args(self, *args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        """`put --fingerprint FP ARGS... 127.0.0.1:PORT` as CLI arguments."""
        return [
            "put",
            "--fingerprint",
            self.receiver_fingerprint,
            *args,
            self.receiver.address,
        ]

    def put(
        self, *args: str | os.PathLike[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`filexfer put ARGS... 127.0.0.1:PORT`, pinning by fingerprint."""
        return cli(self.put_args(*args), self.sender_home, timeout=timeout)


# ---------------------------------------------------------------------------
# Endpoints joined in memory
# ---------------------------------------------------------------------------


def new_identity() -> Identity:
    """A throwaway identity that never touches the disk."""
    return Identity(X25519PrivateKey.generate())


@dataclass(frozen=True)
class JoinedKeys:
    """The outcome of one real Noise XX handshake run in memory."""

    initiator: Identity
    responder: Identity
    initiator_send: bytes  # = the responder's receive key
    responder_send: bytes  # = the initiator's receive key


def handshake_in_memory(
    initiator: Identity | None = None, responder: Identity | None = None
) -> JoinedKeys:
    """Run the three handshake messages between two states, no socket."""
    initiator = initiator or new_identity()
    responder = responder or new_identity()
    left = HandshakeState(True, initiator.private, PROLOGUE)
    right = HandshakeState(False, responder.private, PROLOGUE)
    hello = msgs.encode(msgs.Hello(msgs.PROTOCOL_VERSION, MAX_PLAINTEXT))

    right.read_message(left.write_message(b""))
    left.read_message(right.write_message(hello))
    right.read_message(left.write_message(hello))

    left_send, left_recv = left.split()
    right_send, right_recv = right.split()
    assert left_send.key == right_recv.key and right_send.key == left_recv.key
    assert left_send.key is not None and right_send.key is not None
    return JoinedKeys(initiator, responder, left_send.key, right_send.key)


def _initiator_channel(
    sock: socket.socket, keys: JoinedKeys, idle: float, max_plaintext: int
) -> Channel:
    """The initiator's side of an in-memory handshake, as a channel."""
    return Channel(
        sock,
        keys.initiator_send,
        keys.responder_send,
        keys.responder.public,
        max_plaintext,
        max_plaintext,
        idle,
    )


def channel_pair(
    *, idle: float = 10.0, max_plaintext: int = MAX_PLAINTEXT
) -> tuple[Channel, Channel]:
    """A back-to-back pair of endpoints joined in memory.

    Two real channels (initiator, responder) over ``socket.socketpair()``,
    keyed by a real handshake. Close both when done.
    """
    keys = handshake_in_memory()
    left_sock, right_sock = socket.socketpair()
    left = _initiator_channel(left_sock, keys, idle, max_plaintext)
    right = Channel(
        right_sock,
        keys.responder_send,
        keys.initiator_send,
        keys.initiator.public,
        max_plaintext,
        max_plaintext,
        idle,
    )
    return left, right


@dataclass
class RawEnd:
    """The far end of a channel, sealing and reading records by hand.

    For feeding a channel input that no well-behaved peer would send.
    """

    sock: socket.socket
    sealer: Sealer
    decoder: RecordDecoder

    def send_plain(self, plaintext: bytes) -> None:
        self.sock.sendall(self.sealer.seal(plaintext))

    def send(self, message: msgs.Message) -> None:
        self.send_plain(msgs.encode(message))

    def recv(self, timeout: float = 10.0) -> msgs.Message:
        self.sock.settimeout(timeout)
        while (plaintext := self.decoder.next_plaintext()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("channel closed")
            self.decoder.feed(data)
        return msgs.decode(plaintext)

    def close(self) -> None:
        self.sock.close()


def channel_and_raw_end(
    *, idle: float = 10.0, max_plaintext: int = MAX_PLAINTEXT
) -> tuple[Channel, RawEnd]:
    """A channel (as initiator) whose peer is a :class:`RawEnd`."""
    keys = handshake_in_memory()
    ours, theirs = socket.socketpair()
    channel = _initiator_channel(ours, keys, idle, max_plaintext)
    end = RawEnd(
        theirs, Sealer(keys.responder_send), RecordDecoder(keys.initiator_send)
    )
    return channel, end


# ---------------------------------------------------------------------------
# Waiting, ports, terminals, a tampering proxy
# ---------------------------------------------------------------------------


def identity(path: Path) -> tuple[int, int]:
    """(device, inode): which file or folder a path names, as fsync sees it."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def sleeps_in(pid: int, kernel_function: str) -> bool:
    """Whether the process is asleep in the kernel function named (its
    wchan), e.g. ``pipe_write`` for a write to a full pipe."""
    return kernel_function in Path(f"/proc/{pid}/wchan").read_text()


def terminated_once(
    args: Sequence[str | os.PathLike[str]],
    home: Path,
    ready: Callable[[subprocess.Popen[str]], bool],
    what: str,
) -> subprocess.CompletedProcess[str]:
    """Run filexfer ARGS, send it SIGTERM once ready(process) holds, and
    return how it ended (output ready() read is not in it)."""
    process = subprocess.Popen(
        filexfer_command(*args),
        env=base_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: ready(process), what)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20) -> None:
    """Poll CONDITION (a file appearing, a process ending) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def closed_port() -> int:
    """A loopback port that was just free: bound, then closed at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def filexfer_with_file_limit(limit: int, hard: int | None = None) -> list[str]:
    """``filexfer`` as a command that may open at most limit descriptors,
    or up to hard once it raises its own limit."""
    hard = limit if hard is None else hard
    script = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {hard}))\n"
        "from filexfer.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    return [sys.executable, "-c", script]


def cli_with_file_limit(
    limit: int, args: Sequence[str | os.PathLike[str]], home: Path
) -> subprocess.CompletedProcess[str]:
    """Run `filexfer ARGS` as a real process that may open limit files."""
    return subprocess.run(
        [*filexfer_with_file_limit(limit), *map(str, args)],
        env=base_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def at_once(calls: Sequence[Callable[[], _T]], timeout: float = 200) -> list[_T]:
    """Run every call in a thread of its own, all at once; their results."""
    results: dict[int, _T] = {}

    def run(number: int) -> None:
        results[number] = calls[number]()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert len(results) == len(calls), "a call did not finish"
    return [results[number] for number in range(len(calls))]


def filexfer_command(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "filexfer", *map(str, args)]


@dataclass
class TerminalRun:
    returncode: int
    stdout: str
    terminal: str  # everything written to the pseudo-terminal (stderr)


def cli_on_terminal(
    args: Sequence[str | os.PathLike[str]], home: Path, timeout: float = 120
) -> TerminalRun:
    """Run `filexfer ARGS` with stderr on a pseudo-terminal (80x24).

    stdin stays /dev/null, so nothing can be typed at a prompt.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        process = subprocess.Popen(
            filexfer_command(*args),
            env=base_env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain_terminal, args=(master, chunks))
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        reader.join(timeout)
        os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    return TerminalRun(process.returncode, stdout.decode(), text)


def _drain_terminal(master: int, chunks: list[bytes]) -> None:
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            return
        if not data:
            return
        chunks.append(data)


def _relay(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# ---------------------------------------------------------------------------
# Pairs set up in-process (no CLI run per key step)
# ---------------------------------------------------------------------------


def identity_fingerprint(home: Path) -> str:
    """Like fingerprint(HOME), computed here instead of by `filexfer id`."""
    return key_fingerprint(load_identity(home).public)


def authorize_sender(sender_home: Path, receiver_home: Path) -> None:
    """Like `filexfer allow`, done in-process (the identity is created)."""
    allow_sender(load_identity(sender_home).public_line, "test", receiver_home)


def quick_pair_maker(
    tmp_path: Path,
    sender_home: Path,
    receiver_home: Path,
    start_receiver: Callable[..., Receiver],
) -> Callable[..., Pair]:
    """The conftest make_pair, with the key steps done in-process.

    For suites with many end-to-end tests: it saves three CLI start-ups per
    pair. The `id` and `allow` commands themselves are tested elsewhere.
    """

    def make(*extra: str, authorize: bool = True) -> Pair:
        if authorize:
            authorize_sender(sender_home, receiver_home)
        receiver = start_receiver(*extra)
        return Pair(
            sender_home, receiver, tmp_path, identity_fingerprint(receiver_home)
        )

    return make


# ---------------------------------------------------------------------------
# A person at a terminal, permissions as root, a receiver that changes
# ---------------------------------------------------------------------------


def cli_answering(
    args: Sequence[str | os.PathLike[str]],
    home: Path,
    prompt: str,
    answer: str,
    at_prompt: Callable[[], None] = lambda: None,
    timeout: float = 120,
) -> TerminalRun:
    """Run `filexfer ARGS` with stdin and stderr on a pseudo-terminal.

    When PROMPT has appeared, AT_PROMPT runs (to look at the world while
    the command waits for its person), then ANSWER and a newline are typed.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        process = subprocess.Popen(
            filexfer_command(*args),
            env=base_env(home),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain_terminal, args=(master, chunks))
    reader.start()
    try:
        shown = prompt.encode()
        wait_until(
            lambda: shown in b"".join(chunks) or process.poll() is not None,
            repr(prompt),
            timeout,
        )
        assert shown in b"".join(chunks), b"".join(chunks).decode(errors="replace")
        at_prompt()
        os.write(master, answer.encode() + b"\n")
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout)
        os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    return TerminalRun(process.returncode, stdout.decode(), text)


def as_unprivileged(command: Sequence[str | os.PathLike[str]]) -> list[str]:
    """COMMAND run so that file permissions apply to it, even as root.

    Root reads and writes through any mode bits by its DAC override
    capabilities; setpriv drops them for the command it starts.
    """
    if os.geteuid() != 0:
        return [str(part) for part in command]
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "tests run as root need setpriv (util-linux)"
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *map(str, command)]


def cli_unprivileged(
    args: Sequence[str | os.PathLike[str]], home: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Like cli(), with file permissions applying (see as_unprivileged)."""
    return subprocess.run(
        as_unprivileged(filexfer_command(*args)),
        env=base_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class SwitchingProxy:
    """A loopback relay that sends each new connection to the next port.

    Connection number i goes to TARGET_PORTS[i]: a receiver that seems to
    change between one connection and the next.
    """

    def __init__(self, target_ports: Sequence[int]) -> None:
        self.target_ports = list(target_ports)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            for target in self.target_ports:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", target))
                for source, sink in ((client, server), (server, client)):
                    threading.Thread(
                        target=_relay, args=(source, sink), daemon=True
                    ).start()

    def close(self) -> None:
        self.listener.close()
