"""Interrupted transfers resume: a killed sender or receiver, a changed
source, and --retry.

Each test moves a 200 MiB file through a proxy on 127.0.0.1 that holds the
stream at a seeded random point, kills one side there, then runs the same
command again through a proxy that counts the bytes it forwards: what the
receiver already had is not sent again, and the copy is byte-identical.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.attackers import S2C, Proxy, Tamper, open_pair, put_process
from tests.helpers import (
    Pair,
    Receiver,
    cli,
    leftovers,
    random_file,
    sha256,
    stray_parts,
    wait_until,
)

MiB = 1 << 20
SIZE = 200 * MiB


def hold_points(seed: int) -> list[int]:
    """Two reproducible stream offsets well inside the 200 MiB file."""
    rng = random.Random(seed)
    return [rng.randrange(20 * MiB, 180 * MiB) for _ in range(2)]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_file(tmp_path_factory.mktemp("src") / "big.bin", SIZE, seed=200)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    made = open_pair(tmp_path)
    yield made  # type: ignore[misc]
    made.receiver.stop()


def put_via(pair: Pair, address: str, *args: str | os.PathLike[str]) -> list[str]:
    return ["put", "--fingerprint", pair.receiver_fingerprint, *args, address]


def interrupted_put(pair: Pair, source: Path, at: int, kill: str) -> None:
    """Start put through a proxy holding at byte at, then kill one side."""
    with Proxy(pair.receiver.port, Tamper(hold_at=at)) as proxy:
        process = put_process(put_via(pair, proxy.address, source), pair.sender_home)
        try:
            assert proxy.holding.wait(60)
            time.sleep(0.3)  # let the receiver write what it got
            if kill == "sender":
                process.kill()
            else:
                pair.receiver.stop(signal.SIGKILL)
            proxy.release()
            process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode != 0


def counted_put(
    pair: Pair, source: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], int]:
    """put through a proxy; return its result and the bytes it sent."""
    with Proxy(pair.receiver.port) as proxy:
        process = put_process(
            put_via(pair, proxy.address, "--json", *args, source), pair.sender_home
        )
        stdout, stderr = process.communicate(timeout=120)
        proxy.wait_done()
        sent = len(proxy.capture.c2s)
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return done, sent


def resumed_offset(receiver: Receiver) -> int:
    match = re.search(r"event=transfer\.resume .*offset=(\d+)", receiver.log())
    assert match, receiver.log()
    return int(match.group(1))


@pytest.mark.parametrize("at", hold_points(1))
def test_killed_sender_resumes_without_resending(
    pair: Pair, big: Path, at: int
) -> None:
    interrupted_put(pair, big, at, "sender")
    pair.receiver.wait_for_log(r"event=transfer\.kept_for_resume")
    assert not (pair.area / "big.bin").exists()
    assert stray_parts(pair.area) == []

    done, sent = counted_put(pair, big)

    assert done.returncode == 0, done.stderr
    offset = resumed_offset(pair.receiver)
    assert at - 2 * MiB <= offset < SIZE
    assert json.loads(done.stdout)["resumed_from"] == offset
    assert sent < SIZE - offset + MiB  # the held prefix did not cross again
    assert sha256(pair.area / "big.bin") == sha256(big)
    assert leftovers(pair.area) == []


@pytest.mark.parametrize("at", hold_points(2))
def test_killed_receiver_resumes_after_restart(
    pair: Pair, big: Path, at: int, tmp_path: Path
) -> None:
    interrupted_put(pair, big, at, "receiver")
    assert not (pair.area / "big.bin").exists()
    old = pair.receiver
    again = Receiver(old.home, old.root, tmp_path / "again.log", old.extra).start()
    pair = Pair(pair.sender_home, again, pair.tmp, pair.receiver_fingerprint)
    try:
        assert "stale_parts_removed=0" in again.log()
        done, sent = counted_put(pair, big)
    finally:
        again.stop()

    assert done.returncode == 0, done.stderr
    offset = resumed_offset(again)
    assert at - 2 * MiB <= offset < SIZE
    assert sent < SIZE - offset + MiB
    assert sha256(pair.area / "big.bin") == sha256(big)
    assert leftovers(pair.area) == []


def test_changed_source_restarts_from_zero(pair: Pair, tmp_path: Path) -> None:
    """Same name, size and mtime, other bytes: never a mixed copy."""
    source = random_file(tmp_path / "src" / "data.bin", 40 * MiB, seed=3)
    interrupted_put(pair, source, 20 * MiB, "sender")
    pair.receiver.wait_for_log(r"event=transfer\.kept_for_resume")
    times = source.stat()
    random_file(source, 40 * MiB, seed=4)
    os.utime(source, ns=(times.st_atime_ns, times.st_mtime_ns))

    done, sent = counted_put(pair, source)

    assert done.returncode == 0, done.stderr
    assert sent > 40 * MiB  # all of it, once the prefix did not match
    assert sha256(pair.area / "data.bin") == sha256(source)
    assert leftovers(pair.area) == []


def test_source_with_a_new_mtime_is_sent_whole(pair: Pair, tmp_path: Path) -> None:
    source = random_file(tmp_path / "src" / "data.bin", 40 * MiB, seed=5)
    interrupted_put(pair, source, 20 * MiB, "sender")
    pair.receiver.wait_for_log(r"event=transfer\.kept_for_resume")
    random_file(source, 40 * MiB, seed=6)

    done, sent = counted_put(pair, source)

    assert done.returncode == 0, done.stderr
    assert "event=transfer.resume " not in pair.receiver.log()
    assert sent > 40 * MiB
    assert sha256(pair.area / "data.bin") == sha256(source)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def test_retry_waits_for_the_receiver_to_come_back(tmp_path: Path) -> None:
    port = free_port()
    pair = open_pair(tmp_path, "--listen", f"127.0.0.1:{port}")
    pair.receiver.stop()
    source = random_file(tmp_path / "src" / "late.bin", MiB, seed=7)
    command = put_via(pair, f"127.0.0.1:{port}", "--retry", "4", source)
    process = put_process(command, pair.sender_home)
    try:
        time.sleep(1.5)  # two attempts fail meanwhile
        pair.receiver.start()
        _, stderr = process.communicate(timeout=60)
    finally:
        pair.receiver.stop()

    assert process.returncode == 0, stderr
    assert "retrying in 1 s (1 of 4)" in stderr
    assert sha256(pair.receiver.root / "late.bin") == sha256(source)


def test_retry_is_not_used_for_a_trust_failure(pair: Pair, tmp_path: Path) -> None:
    source = random_file(tmp_path / "src" / "a.bin", 100, seed=8)
    wrong = "SHA256:" + "A" * 43

    started = time.monotonic()
    done = cli(
        ["put", "--retry", "5", "--fingerprint", wrong, source, pair.receiver.address],
        pair.sender_home,
    )

    assert done.returncode == 4
    assert time.monotonic() - started < 10
    assert "retrying" not in done.stderr


def test_retry_resumes_after_the_connection_is_cut(pair: Pair, tmp_path: Path) -> None:
    """A connection cut mid-file: --retry connects again and sends the rest."""
    source = random_file(tmp_path / "src" / "cut.bin", 40 * MiB, seed=9)
    with Proxy(pair.receiver.port, Tamper(cut_at=20 * MiB)) as proxy:
        command = put_via(pair, proxy.address, "--retry", "3", "--json", source)
        process = put_process(command, pair.sender_home)
        wait_until(lambda: proxy.links, "the first connection")
        proxy.tamper = Tamper()  # the next connection goes through untouched
        stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 0, stderr
    assert "retrying in 1 s (1 of 3)" in stderr
    assert json.loads(stdout)["resumed_from"] >= 18 * MiB
    assert sha256(pair.area / "cut.bin") == sha256(source)
    assert leftovers(pair.area) == []


def test_killed_get_resumes_the_download(pair: Pair, tmp_path: Path) -> None:
    source = random_file(tmp_path / "src" / "back.bin", 40 * MiB, seed=10)
    assert pair.put(source).returncode == 0
    dl = tmp_path / "dl"
    get = ["get", "--fingerprint", pair.receiver_fingerprint]
    with Proxy(pair.receiver.port, Tamper(direction=S2C, hold_at=20 * MiB)) as proxy:
        process = put_process(
            [*get, proxy.address, "-o", dl, "back.bin"], pair.sender_home
        )
        assert proxy.holding.wait(60)
        time.sleep(0.3)
        process.kill()
        process.wait()
        proxy.release()
    assert not (dl / "back.bin").exists()
    assert stray_parts(dl) == [] and len(leftovers(dl)) == 1

    done = cli(
        [*get, pair.receiver.address, "--json", "-o", dl, "back.bin"], pair.sender_home
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["resumed_from"] >= 18 * MiB
    assert sha256(dl / "back.bin") == sha256(source)
    assert leftovers(dl) == []


def test_retry_of_a_recursive_get_ends_with_every_file(
    pair: Pair, tmp_path: Path
) -> None:
    """A cut download of a folder, retried: exit 0, one result per file."""
    top = pair.area / "docs"
    top.mkdir()
    for name in ("a.bin", "b.bin"):
        random_file(top / name, 20 * MiB, seed=len(name) + ord(name[0]))
    get = ["get", "--fingerprint", pair.receiver_fingerprint, "--retry", "3"]
    with Proxy(pair.receiver.port, Tamper(direction=S2C, cut_at=10 * MiB)) as proxy:
        process = put_process(
            [*get, "--json", "-r", proxy.address, "-o", tmp_path / "dl", "docs"],
            pair.sender_home,
        )
        wait_until(lambda: proxy.links, "the first connection")
        proxy.tamper = Tamper()
        stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 0, stderr
    assert "retrying in 1 s" in stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(r["name"] for r in records) == ["docs/a.bin", "docs/b.bin"]
    assert {r["status"] for r in records} == {"ok"}
    for name in ("a.bin", "b.bin"):
        assert sha256(tmp_path / "dl" / "docs" / name) == sha256(top / name)
