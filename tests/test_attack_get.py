"""A hostile receiver answering `get` (C12).

The fake receiver is built from filexfer's own protocol modules and serves
one connection on 127.0.0.1; the client has pinned its key, so the
handshake succeeds and only what it sends afterwards is on trial.  After
each run nothing may have been written anywhere except, at most, the file
that was asked for, intact.
"""

from __future__ import annotations

import contextlib
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from blake3 import blake3

from filexfer import messages as msgs
from filexfer.errors import FilexferError
from filexfer.keys import fingerprint
from filexfer.session import Channel, Timeouts, accept
from tests.helpers import cli, new_identity

CONTENT = b"the quarterly report\n"
Script = Callable[[Channel], None]


@dataclass
class FakeReceiver:
    """Accepts one connection, reads the Get requests, runs a script."""

    script: Script
    identity: object = field(default_factory=new_identity)
    requests: list[msgs.Get] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity.public)  # type: ignore[attr-defined]

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, contextlib.suppress(FilexferError, OSError):
            channel = accept(conn, self.identity, lambda _key: True, Timeouts())  # type: ignore[arg-type]
            while not self.requests or not self.requests[-1].last:
                message = channel.recv()
                assert isinstance(message, msgs.Get)
                self.requests.append(message)
            self.script(channel)
            channel.recv()  # the client's Close or Error

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def offer(
    file_id: int, name: str, size: int = len(CONTENT), mode: int = 0o644
) -> msgs.Offer:
    return msgs.Offer(file_id, size, 1_700_000_000_000_000_000, mode, True, name)


def send_file(
    channel: Channel, file_id: int, data: bytes = CONTENT, digest: bytes | None = None
) -> None:
    """Data and End for an accepted file (no waiting)."""
    if data:
        channel.send(msgs.Data(data))
    channel.send(msgs.End(file_id, len(data), digest or blake3(data).digest()))


def offered_and_sent(*names: str) -> Script:
    """Offer every name at once, then stream each, as a pipelining sender."""

    def script(channel: Channel) -> None:
        for file_id, name in enumerate(names):
            channel.send(offer(file_id, name))
        for file_id in range(len(names)):
            reply = channel.recv()
            if isinstance(reply, msgs.Accept):
                send_file(channel, file_id)
        channel.send(msgs.Close())

    return script


def one_file(data: bytes, announced: int, digest: bytes | None = None) -> Script:
    def script(channel: Channel) -> None:
        channel.send(offer(0, "report.txt", announced))
        assert isinstance(channel.recv(), msgs.Accept)
        if data:
            channel.send(msgs.Data(data))
        channel.send(msgs.End(0, announced, digest or blake3(data).digest()))
        channel.recv()
        channel.send(msgs.Close())

    return script


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Callable[[Script, list[str]], tuple[int, str]]]:
    """Run `get ARGS 127.0.0.1:PORT` from dl/ against a fake receiver."""
    fakes: list[FakeReceiver] = []

    def run(script: Script, args: list[str]) -> tuple[int, str]:
        fake = FakeReceiver(script)
        fakes.append(fake)
        home = tmp_path / "home"
        command = ["get", "--fingerprint", fake.fingerprint]
        done = cli(
            [*command, f"127.0.0.1:{fake.port}", "-o", tmp_path / "dl", *args],
            home,
        )
        return done.returncode, done.stderr

    yield run
    for fake in fakes:
        fake.close()


def written(tmp_path: Path) -> list[str]:
    """Every file and directory under tmp_path, but the client's own home."""
    return sorted(
        p.relative_to(tmp_path).as_posix()
        for p in tmp_path.rglob("*")
        if not p.relative_to(tmp_path).as_posix().startswith("home")
    )


UNEXPECTED = {
    "an extra .profile": (["report.txt", ".profile"], ".profile"),
    "another name": (["other.txt"], "other.txt"),
    "a parent path": (["../report.txt"], "../report.txt"),
    "an absolute path": (["/tmp/report.txt"], "/tmp/report.txt"),
    "a sub-directory": (["sub/report.txt"], "sub/report.txt"),
    "a control character": (["report.txt\x1b[2J"], "report.txt\\x1b[2J"),
}


@pytest.mark.parametrize(("names", "shown"), UNEXPECTED.values(), ids=UNEXPECTED)
def test_unrequested_names_abort_and_write_nothing(
    world: Callable[[Script, list[str]], tuple[int, str]],
    tmp_path: Path,
    names: list[str],
    shown: str,
) -> None:
    code, stderr = world(offered_and_sent(*names), ["report.txt"])

    assert code == 5
    assert stderr == (
        f"filexfer: error: receiver sent an unexpected file '{shown}'; aborted\n"
    )
    assert written(tmp_path) == []  # -o too was taken back


def test_the_same_file_twice_aborts(
    world: Callable[[Script, list[str]], tuple[int, str]], tmp_path: Path
) -> None:
    code, stderr = world(offered_and_sent("report.txt", "report.txt"), ["report.txt"])

    assert code == 5
    assert stderr == "filexfer: error: receiver sent 'report.txt' twice\n"
    assert written(tmp_path) == []  # -o too was taken back


def test_extra_file_after_a_verified_one_keeps_only_what_was_asked(
    world: Callable[[Script, list[str]], tuple[int, str]], tmp_path: Path
) -> None:
    def script(channel: Channel) -> None:
        channel.send(offer(0, "report.txt"))
        assert isinstance(channel.recv(), msgs.Accept)
        send_file(channel, 0)
        assert isinstance(channel.recv(), msgs.Done)
        channel.send(offer(1, ".bashrc"))
        channel.send(msgs.Close())

    code, stderr = world(script, ["report.txt"])

    assert code == 5, stderr
    assert "unexpected file '.bashrc'" in stderr
    assert written(tmp_path) == ["dl", "dl/report.txt"]
    assert (tmp_path / "dl" / "report.txt").read_bytes() == CONTENT


BROKEN = {
    "more bytes than announced": one_file(CONTENT + b"extra", len(CONTENT)),
    "fewer bytes than announced": one_file(CONTENT[:5], len(CONTENT)),
    "a digest that does not match": one_file(CONTENT, len(CONTENT), bytes(32)),
}


@pytest.mark.parametrize("script", BROKEN.values(), ids=BROKEN)
def test_wrong_size_or_digest_is_an_integrity_failure(
    world: Callable[[Script, list[str]], tuple[int, str]],
    tmp_path: Path,
    script: Script,
) -> None:
    code, stderr = world(script, ["report.txt"])

    assert code == 5, stderr
    assert len(stderr.splitlines()) == 1
    assert written(tmp_path) == []  # -o too was taken back


@pytest.mark.parametrize(
    "name", ["docs/../../evil", ".ssh/authorized_keys", "docs/../docs2/x", "docs2/x"]
)
def test_recursive_get_refuses_names_outside_the_folder(
    world: Callable[[Script, list[str]], tuple[int, str]], tmp_path: Path, name: str
) -> None:
    code, stderr = world(offered_and_sent("docs/a.txt", name), ["-r", "docs"])

    assert code == 5, stderr
    assert "unexpected file" in stderr or "twice" in stderr
    assert written(tmp_path) == []  # -o too was taken back


def test_never_asked_for_file_is_reported_missing(
    world: Callable[[Script, list[str]], tuple[int, str]], tmp_path: Path
) -> None:
    code, stderr = world(lambda channel: channel.send(msgs.Close()), ["report.txt"])

    assert code == 5
    assert stderr == "filexfer: error: receiver did not send 'report.txt'\n"
    assert written(tmp_path) == []  # -o too was taken back


def test_server_mode_bits_are_reduced_and_mtime_applied_to_the_file_only(
    world: Callable[[Script, list[str]], tuple[int, str]], tmp_path: Path
) -> None:
    def script(channel: Channel) -> None:
        channel.send(offer(0, "report.txt", mode=0o6777))
        assert isinstance(channel.recv(), msgs.Accept)
        send_file(channel, 0)
        channel.recv()
        channel.send(msgs.Close())

    dl = tmp_path / "dl"
    dl.mkdir()
    before = stat.S_IMODE(dl.stat().st_mode)
    code, stderr = world(script, ["report.txt"])

    assert code == 0, stderr
    info = (dl / "report.txt").stat()
    assert stat.S_IMODE(info.st_mode) == 0o755
    assert info.st_mtime_ns == 1_700_000_000_000_000_000
    assert stat.S_IMODE(dl.stat().st_mode) == before


def test_a_directory_in_place_of_the_requested_file_aborts(
    world: Callable[[Script, list[str]], tuple[int, str]], tmp_path: Path
) -> None:
    def script(channel: Channel) -> None:
        channel.send(msgs.Offer(0, 0, 0, 0o755, False, "report.txt", directory=True))
        channel.recv()
        channel.send(msgs.Close())

    code, stderr = world(script, ["report.txt"])

    assert code == 5
    assert "unexpected file 'report.txt/'" in stderr
    assert written(tmp_path) == []  # -o too was taken back


CLOSED_EARLY = {
    "after the offer": [],
    "after half the data": [msgs.Data(CONTENT[:5])],
}


@pytest.mark.parametrize("sent", CLOSED_EARLY.values(), ids=CLOSED_EARLY)
def test_close_before_an_accepted_file_arrived_is_a_protocol_error(
    world: Callable[[Script, list[str]], tuple[int, str]],
    tmp_path: Path,
    sent: list[msgs.Message],
) -> None:
    def script(channel: Channel) -> None:
        channel.send(offer(0, "report.txt"))
        assert isinstance(channel.recv(), msgs.Accept)
        for message in sent:
            channel.send(message)
        channel.send(msgs.Close())

    code, stderr = world(script, ["--retry", "2", "report.txt"])

    assert code == 5
    assert stderr == ("filexfer: error: receiver closed without sending 'report.txt'\n")
    assert "retrying" not in stderr
    assert written(tmp_path) == []  # -o too was taken back


def test_a_wrong_digest_ends_a_download_of_several_files(
    world: Callable[[Script, list[str]], tuple[int, str]], tmp_path: Path
) -> None:
    """Not a per-file failure (exit 7): the receiver is broken or lying."""

    def script(channel: Channel) -> None:
        channel.send(offer(0, "a.txt"))
        channel.send(offer(1, "b.txt"))
        for _ in range(2):
            assert isinstance(channel.recv(), msgs.Accept)
        send_file(channel, 0, digest=bytes(32))
        send_file(channel, 1)
        channel.recv()

    code, stderr = world(script, ["a.txt", "b.txt"])

    assert code == 5, stderr
    assert "digest mismatch" in stderr
    assert written(tmp_path) == []  # -o too was taken back
