"""The daemon itself: stopping, reloading its authorized senders, --once."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers import (
    Pair,
    sleeps_in,
    terminated_once,
)

SAMPLE = b"server test\n"


def test_stop_does_not_wait_for_a_silent_stranger(pair: Pair) -> None:
    """An unauthenticated connection that says nothing is cut at the stop."""
    receiver = pair.receiver
    with socket.create_connection(("127.0.0.1", receiver.port)) as stranger:
        stranger.sendall(b"\x00")  # half of a handshake frame header, then silence
        receiver.wait_for_log(r"event=recv\.listening")
        started = time.monotonic()
        code = receiver.stop(signal.SIGTERM, timeout=60)
        took = time.monotonic() - started
    assert code == 0
    assert "event=recv.stopped" in receiver.log()
    # The handshake timeout is 15 s: stopping must not wait for it.
    assert took < 10, f"stop took {took:.1f} s"


def test_damaged_authorized_senders_keeps_the_last_good_list(
    pair: Pair, tmp_path: Path
) -> None:
    source = tmp_path / "a.txt"
    source.write_bytes(SAMPLE)
    senders = pair.receiver.home / "authorized_senders"
    good = senders.read_text()
    senders.write_text(good + "this is not a key\n")

    done = pair.put(source)

    assert done.returncode == 0, done.stderr
    assert (pair.area / "a.txt").read_bytes() == SAMPLE
    pair.receiver.wait_for_log(r"ERROR event=recv\.config_error reason=.*line 2")


def test_authorized_senders_unread_for_want_of_descriptors_is_waited_for(
    pair: Pair, tmp_path: Path
) -> None:
    """A daemon briefly out of descriptors when a sender connects waits to
    read authorized_senders, rather than log the file as damaged."""
    source = tmp_path / "d.txt"
    source.write_bytes(SAMPLE)
    daemon = pair.receiver.process.pid
    limits = resource.prlimit(daemon, resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir(f"/proc/{daemon}/fd"))
    # Room for the connection, not for reading the file.
    resource.prlimit(daemon, resource.RLIMIT_NOFILE, (highest + 2, limits[1]))
    freed = threading.Timer(
        0.4, resource.prlimit, (daemon, resource.RLIMIT_NOFILE, limits)
    )
    freed.start()
    try:
        done = pair.put(source)
    finally:
        freed.join()

    assert done.returncode == 0, done.stderr
    assert (pair.area / "d.txt").read_bytes() == SAMPLE
    assert "config_error" not in pair.receiver.log()


def test_a_removed_dir_is_an_error_naming_the_area_not_the_path(
    pair: Pair, tmp_path: Path
) -> None:
    """--dir deleted while the daemon runs: the sender is refused (exit 6)
    with its area's name, the daemon's own path stays in its log."""
    source = tmp_path / "e.txt"
    source.write_bytes(SAMPLE)
    assert pair.put(source).returncode == 0
    area = pair.area.name
    shutil.rmtree(pair.receiver.root)

    done = pair.put(source)

    assert done.returncode == 6, done.stderr
    assert f"cannot open area {area} (No such file" in done.stderr
    assert str(pair.receiver.root) not in done.stderr
    assert not pair.receiver.root.exists()
    pair.receiver.wait_for_log(r"ERROR event=recv\.area_error path=/")
    assert pair.receiver.alive()


def test_removed_sender_is_refused_at_once(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "b.txt"
    source.write_bytes(SAMPLE)
    senders = pair.receiver.home / "authorized_senders"
    senders.write_text("# nobody\n")

    done = pair.put(source)

    assert done.returncode == 4, done.stderr
    assert not (pair.area / "b.txt").exists()
    pair.receiver.wait_for_log(r"event=session\.unauthorized")


def test_once_exits_soon_after_its_session(
    make_pair: Callable[..., Pair], tmp_path: Path
) -> None:
    pair = make_pair("--once")
    source = tmp_path / "c.txt"
    source.write_bytes(SAMPLE)

    done = pair.put(source)

    assert done.returncode == 0, done.stderr
    assert pair.receiver.process is not None
    try:
        code = pair.receiver.process.wait(timeout=10)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("recv --once kept running") from exc
    assert code == 0
    assert (pair.area / "c.txt").read_bytes() == SAMPLE


def test_a_stop_signal_while_starting_is_a_clean_stop(
    pair: Pair, tmp_path: Path
) -> None:
    """SIGTERM before the daemon listens (here: while it waits to read
    authorized_senders, a FIFO nobody writes) ends it as one a moment
    later would: status 0, no error line."""
    home = tmp_path / "starting-home"
    home.mkdir()
    shutil.copy(pair.receiver.home / "identity", home / "identity")
    os.mkfifo(home / "authorized_senders")
    done = terminated_once(
        ["recv", "--dir", tmp_path / "out", "--listen", "127.0.0.1:0"],
        home,
        lambda process: sleeps_in(process.pid, "wait_for_partner"),
        "recv reading the FIFO",
    )

    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr
