"""End to end: `filexfer put` against a real `filexfer recv` process.

Every test checks the exit code, stdout and stderr apart, what is on the
receiver's disk, and that no part file is left behind.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from blake3 import blake3

from filexfer import messages as msgs
from filexfer.errors import ProtocolError
from filexfer.keys import load_identity
from filexfer.session import Channel, connect
from tests.attackers import Proxy, Tamper
from tests.conftest import recv_flags
from tests.helpers import (
    SAMPLE_DATA,
    Pair,
    Receiver,
    as_unprivileged,
    at_once,
    authorize_sender,
    base_env,
    cli,
    cli_with_file_limit,
    filexfer_command,
    leftovers,
    random_file,
    sha256,
    sleeps_in,
    stray_parts,
    terminated_once,
    tree_digests,
    wait_until,
)

MiB = 1 << 20
CHUNK = 1 << 20  # the sender's default Data size


# -- helpers ------------------------------------------------------------------


def assert_success(done: subprocess.CompletedProcess[str], files: int) -> None:
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith(f"filexfer: sent {files} file(s), ")
    assert done.stderr.count("\n") == 1


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The error and hint lines of stderr; nothing else but a summary."""
    assert "Traceback" not in done.stderr
    lines = []
    for line in done.stderr.splitlines():
        if line.startswith("filexfer: sent "):
            continue  # the summary of a multi-file job
        assert line.startswith(("filexfer: error: ", "filexfer: hint: ")), line
        lines.append(line)
    return lines


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def start_put(
    pair: Pair, *args: str | os.PathLike[str], via: str | None = None
) -> subprocess.Popen[str]:
    """`put` as a background process (for killing it, or running two);
    via: the address to connect to instead of the receiver's (a proxy)."""
    argv = pair.put_args(*args)
    if via is not None:
        argv[-1] = via
    return subprocess.Popen(
        filexfer_command(*argv),
        env=base_env(pair.sender_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_part(root: Path, size: int = 0) -> None:
    """Until a part file is there, holding at least size bytes."""

    def ready() -> bool:
        parts = list(root.rglob(".filexfer-*"))
        return any(part.stat().st_size >= size for part in parts)

    wait_until(ready, "a part file under the receiver root")


def blake3_hex(data: bytes) -> str:
    return blake3(data).hexdigest()


# -- files arrive ---------------------------------------------------------------


def test_put_recursive_sample_data_arrives_byte_identical(pair: Pair) -> None:
    done = pair.put("-r", SAMPLE_DATA)

    assert_success(done, 7)
    arrived = pair.area / "sample_data"
    assert tree_digests(arrived) == tree_digests(SAMPLE_DATA)
    assert (arrived / "docs" / "Übersicht März 2026.txt").is_file()
    assert (arrived / "empty.txt").stat().st_size == 0
    assert (arrived / "photos" / "2026" / "gradient.png").is_file()
    assert leftovers(pair.area) == []
    assert pair.receiver.log().count("event=transfer.complete") == 7


def test_put_recursive_warns_about_links_with_a_prefix(pair: Pair) -> None:
    tree = pair.tmp / "src" / "tree"
    write(tree / "real.txt", b"real\n")
    (tree / "link.txt").symlink_to(tree / "real.txt")

    done = pair.put("-r", tree)

    assert done.returncode == 0, done.stderr
    warning, summary = done.stderr.splitlines()
    assert (
        warning
        == f"filexfer: warning: skipping {tree / 'link.txt'}: not a regular file"
    )
    assert summary.startswith("filexfer: sent 1 file(s), ")
    assert os.listdir(pair.area / "tree") == ["real.txt"]


def put_unprivileged(
    pair: Pair, *args: str | os.PathLike[str]
) -> subprocess.CompletedProcess[str]:
    """`put` with file permissions applying, as they would for a user."""
    return subprocess.run(
        as_unprivileged(filexfer_command(*pair.put_args(*args))),
        env=base_env(pair.sender_home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("others", "code"), [(True, 7), (False, 8)], ids=["with others", "alone"]
)
def test_put_recursive_unreadable_directory_is_a_local_failure(
    pair: Pair, others: bool, code: int
) -> None:
    """A directory the walk cannot list is never skipped in silence (C10)."""
    tree = pair.tmp / "src" / "tree"
    locked = tree / "locked"
    write(locked / "secret.txt", b"unseen\n")
    if others:
        write(tree / "a.txt", b"a\n")
    locked.chmod(0)
    try:
        done = put_unprivileged(pair, "-r", "--json", tree)
    finally:
        locked.chmod(0o755)

    assert done.returncode == code, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    failed = [r for r in records if r["status"] == "failed"]
    assert [(r["name"], r["path"], r["exit_code"]) for r in failed] == [
        ("tree/locked", str(locked), 8)
    ]
    assert "cannot read directory (permission denied)" in str(failed[0]["error"])
    assert [r["name"] for r in records if r["status"] == "ok"] == (
        ["tree/a.txt"] if others else []
    )
    assert any("locked: cannot read directory" in line for line in error_lines(done))
    assert not (pair.area / "tree" / "locked").exists()


def test_put_name_the_receiver_would_refuse_is_a_local_failure(pair: Pair) -> None:
    """Checked before connecting: exit 8, never offered (README: names)."""
    odd = write(pair.tmp / "src" / "back\\slash.txt", b"x")

    done = pair.put("--json", odd)

    assert done.returncode == 8
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    assert (record["name"], record["path"]) == ("back\\slash.txt", str(odd))
    assert "cannot be sent (bad path: " in str(record["error"])
    [line] = error_lines(done)
    assert "back\\\\slash.txt: cannot be sent" in line
    assert "event=session.start" not in pair.receiver.log()


def test_put_keeps_permission_bits_and_mtime(pair: Pair) -> None:
    script = write(pair.tmp / "src" / "run.sh", b"#!/bin/sh\necho hi\n")
    os.chmod(script, 0o750)
    os.utime(script, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))

    assert_success(pair.put(script), 1)

    info = (pair.area / "run.sh").stat()
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert info.st_mtime_ns == 1_600_000_000_123_456_789


def test_put_several_files_share_one_connection(pair: Pair) -> None:
    sources = [
        write(pair.tmp / "src" / "a.txt", b"alpha\n"),
        random_file(pair.tmp / "src" / "b.bin", 3 * MiB + 17, seed=1),
        write(pair.tmp / "src" / "with space ü.txt", b"gamma\n"),
    ]

    done = pair.put(*sources)

    assert_success(done, 3)
    for source in sources:
        assert sha256(pair.area / source.name) == sha256(source)
    pair.receiver.wait_for_log(r"event=session\.end .*files=3")
    assert pair.receiver.log().count("event=session.start") == 1
    assert leftovers(pair.area) == []


@pytest.mark.slow
def test_put_one_gib_random_file_arrives_identical(pair: Pair) -> None:
    source = random_file(pair.tmp / "src" / "one-gib.bin", 1 << 30, seed=7)

    done = pair.put(source, timeout=900)

    assert_success(done, 1)
    arrived = pair.area / "one-gib.bin"
    assert arrived.stat().st_size == 1 << 30
    assert sha256(arrived) == sha256(source)
    assert leftovers(pair.area) == []


def test_two_senders_at_once_both_succeed(
    pair: Pair, tmp_path: Path, receiver_home: Path
) -> None:
    second_home = tmp_path / "second-sender"
    second_home.mkdir()
    authorize_sender(second_home, receiver_home)
    second = Pair(second_home, pair.receiver, tmp_path, pair.receiver_fingerprint)
    first_file = random_file(tmp_path / "src" / "first.bin", 6 * MiB, seed=2)
    second_file = random_file(tmp_path / "src" / "second.bin", 6 * MiB, seed=3)
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    threads = [
        threading.Thread(target=lambda: results.update(a=pair.put(first_file))),
        threading.Thread(target=lambda: results.update(b=second.put(second_file))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert_success(results["a"], 1)
    assert_success(results["b"], 1)
    assert sha256(pair.area / "first.bin") == sha256(first_file)
    assert sha256(second.area / "second.bin") == sha256(second_file)
    assert pair.receiver.log().count("event=session.start") == 2
    assert leftovers(pair.receiver.root) == []


# -- the daemon's descriptor limit ---------------------------------------------


def many_small_files(top: Path, count: int) -> None:
    for number in range(count):
        write(top / f"f{number:03d}.txt", f"{number}\n".encode())


def limited_receiver(
    pair: Pair, tmp_path: Path, limit: int = 64, hard: int | None = None
) -> Receiver:
    """The pair's receiver, started again under a limit on open files."""
    pair.receiver.stop()
    log = tmp_path / "limited.log"
    home, root = pair.receiver.home, pair.receiver.root
    return Receiver(home, root, log, max_files=limit, hard_max_files=hard).start()


@pytest.mark.parametrize(
    ("soft", "hard"), [(64, None), (64, 4096)], ids=["fixed", "raisable"]
)
def test_a_daemon_with_few_descriptors_still_takes_every_file(
    pair: Pair, tmp_path: Path, soft: int, hard: int | None
) -> None:
    """Each file waiting for its commit holds a descriptor.  A daemon
    raises a low soft limit to its hard one; where it cannot, it commits
    early rather than refuse files for want of descriptors."""
    top = tmp_path / "src" / "many"
    many_small_files(top, 300)
    limited = limited_receiver(pair, tmp_path, soft, hard)
    try:
        fingerprint = pair.receiver_fingerprint
        limited_pair = Pair(pair.sender_home, limited, pair.tmp, fingerprint)
        done = limited_pair.put("-r", top)
    finally:
        limited.stop()

    assert_success(done, 300)
    assert f"open_files={hard or soft}" in limited.log()
    for number in (0, 150, 299):
        arrived = limited_pair.area / "many" / f"f{number:03d}.txt"
        assert arrived.read_bytes() == f"{number}\n".encode()
    assert leftovers(pair.receiver.root) == []


def test_sessions_in_many_folders_share_few_descriptors(
    pair: Pair, tmp_path: Path
) -> None:
    """Sessions also keep their folders open; under a limit of 64, four
    at once storing a tree of 40 folders, then sending it again unchanged
    with --overwrite (which opens every stored file to compare it), give
    descriptors back to each other: no file refused, none called missing."""
    top = tmp_path / "src" / "tree"
    for folder in range(40):
        many_small_files(top / f"d{folder:02d}", 5)
    limited = limited_receiver(pair, tmp_path)
    fingerprint = pair.receiver_fingerprint
    limited_pair = Pair(pair.sender_home, limited, pair.tmp, fingerprint)

    def send() -> subprocess.CompletedProcess[str]:
        return limited_pair.put("-r", "--overwrite", top)

    try:
        results = at_once([send] * 4) + at_once([send] * 4)
    finally:
        limited.stop()

    assert len(results) == 8
    for done in results:
        assert done.returncode == 0, done.stderr
    assert "no such file" not in limited.log()
    arrived = limited_pair.area / "tree" / "d39" / "f004.txt"
    assert arrived.read_bytes() == b"4\n"


def test_a_daemon_with_few_descriptors_serves_whole_trees(
    pair: Pair, tmp_path: Path
) -> None:
    """Serving a download, the daemon keeps a source open per file offered
    ahead and a descriptor per folder it walked.  Under a limit of 64,
    three concurrent `get -r` of a tree in 80 folders each get all of it:
    the offer window narrows to the descriptors there are."""
    top = tmp_path / "src" / "tree"
    for folder in range(80):
        many_small_files(top / f"d{folder:02d}", 4)
    assert_success(pair.put("-r", top), 320)
    limited = limited_receiver(pair, tmp_path)

    def fetch(number: int) -> subprocess.CompletedProcess[str]:
        into = tmp_path / f"copy{number}"
        command = ["get", "--fingerprint", pair.receiver_fingerprint]
        command += [limited.address, "tree", "-r", "-o", str(into)]
        return cli(command, pair.sender_home)

    try:
        results = at_once([functools.partial(fetch, n) for n in range(3)])
    finally:
        limited.stop()

    for number in range(3):
        assert results[number].returncode == 0, results[number].stderr
        copy = tmp_path / f"copy{number}" / "tree"
        assert sorted(copy.rglob("*.txt")) == sorted(
            copy / path.relative_to(top) for path in top.rglob("*.txt")
        )
        assert (copy / "d79" / "f003.txt").read_bytes() == b"3\n"


def test_a_signal_while_the_report_waits_for_its_reader_changes_nothing(
    pair: Pair, tmp_path: Path
) -> None:
    """Every file is confirmed and --json is still being written to a slow
    reader: SIGTERM then neither calls the job interrupted nor cuts its
    report short."""
    top = tmp_path / "src" / "report"
    many_small_files(top, 1500)  # far more --json than a pipe holds
    done = terminated_once(
        pair.put_args("--json", "-r", top),
        pair.sender_home,
        lambda process: sleeps_in(process.pid, "pipe_write"),
        "a blocked report",
    )

    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 1500
    assert {record["status"] for record in records} == {"ok"}
    assert done.stderr == ""


def test_a_crowd_at_a_daemon_with_few_descriptors_is_busy_not_refused(
    pair: Pair, tmp_path: Path
) -> None:
    """More clients than sessions at a daemon limited to 64 descriptors:
    it admits only as many handshakes at once as leave its sessions room,
    so the crowd is told to come back (exit 3, which --retry does), and no
    file is refused for want of descriptors."""
    top = tmp_path / "src" / "crowd"
    for folder in range(40):
        many_small_files(top / f"d{folder:02d}", 5)
    assert_success(pair.put("-r", top), 200)
    tops = [tmp_path / f"src{number}" / "crowd" for number in range(12)]
    for copy in tops:  # new files for every put: part files, commit batches
        shutil.copytree(top, copy)
    limited = limited_receiver(pair, tmp_path)
    trust = ["--fingerprint", pair.receiver_fingerprint, "--retry", "4"]
    jobs = [["put", *trust, "-r", "--overwrite", str(t), limited.address] for t in tops]
    for number in range(6):
        into = str(tmp_path / f"copy{number}")
        jobs.append(["get", *trust, limited.address, "crowd", "-r", "-o", into])
        jobs.append(["ls", *trust, limited.address, "crowd", "-r"])
    calls = [functools.partial(cli, job, pair.sender_home, timeout=180) for job in jobs]
    try:
        results = at_once(calls)
    finally:
        limited.stop()

    assert len(results) == 24
    for done in results:
        assert done.returncode == 0, done.stderr
        assert "Too many open files" not in done.stderr
    assert "handshakes=4 " in limited.log()


def test_put_with_fewer_descriptors_than_its_offer_window(
    pair: Pair, tmp_path: Path
) -> None:
    """A sender allowed fewer open files than the 64 it would offer ahead
    offers fewer: every file is sent, none fails as unreadable."""
    top = tmp_path / "src" / "many"
    many_small_files(top, 200)
    done = cli_with_file_limit(24, pair.put_args("-r", top), pair.sender_home)

    assert done.returncode == 0, done.stderr
    assert len(list((pair.area / "many").iterdir())) == 200


# -- C07: empty files -----------------------------------------------------------


def test_put_empty_file_alone(pair: Pair) -> None:
    """An empty file arrives, is reported and logged like any other (C07)."""
    empty = write(pair.tmp / "src" / "empty.txt", b"")

    done = pair.put("--json", empty, timeout=30)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["name"] == "empty.txt" and record["status"] == "ok"
    assert record["bytes"] == 0
    assert record["digest"] == blake3_hex(b"")
    arrived = pair.area / "empty.txt"
    info = arrived.lstat()
    assert stat.S_ISREG(info.st_mode) and info.st_size == 0
    assert stat.S_IMODE(info.st_mode) == stat.S_IMODE(empty.stat().st_mode) & 0o755
    assert "event=transfer.complete" in pair.receiver.log()
    assert "path=empty.txt bytes=0" in pair.receiver.log()
    assert leftovers(pair.area) == []


def test_put_empty_files_among_others_and_chunk_edges(pair: Pair) -> None:
    """Empty files do not stall the job; chunk-size edges round-trip (C07)."""
    src = pair.tmp / "src"
    sources = [
        write(src / "empty.txt", b""),
        write(src / "one.txt", b"x"),
        write(src / "keep" / ".keep", b""),
        random_file(src / "exactly-one-chunk.bin", CHUNK, seed=4),
        random_file(src / "chunk-plus-one.bin", CHUNK + 1, seed=5),
        random_file(src / "two-chunks.bin", 2 * CHUNK, seed=6),
        write(src / "last-empty.txt", b""),
    ]

    done = pair.put("--json", *sources, timeout=60)

    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["name"] for r in records] == [s.name for s in sources]
    for record, source in zip(records, sources, strict=True):
        assert record["status"] == "ok"
        assert record["digest"] == blake3_hex(source.read_bytes())
        assert sha256(pair.area / source.name) == sha256(source)
    assert leftovers(pair.area) == []


def test_put_same_name_twice_fails_that_file_only(pair: Pair) -> None:
    """A name given twice is refused, the rest arrives, nothing hangs (C07)."""
    empty = write(pair.tmp / "src" / "empty.txt", b"")
    one = write(pair.tmp / "src" / "one.txt", b"1")

    done = pair.put(empty, one, empty, timeout=30)

    assert done.returncode == 7
    assert done.stdout == ""
    lines = error_lines(done)
    assert any("empty.txt" in line and "twice" in line for line in lines)
    assert (pair.area / "empty.txt").read_bytes() == b""
    assert (pair.area / "one.txt").read_bytes() == b"1"


# -- C04: existing targets ----------------------------------------------------


@pytest.fixture
def precious(pair: Pair) -> tuple[Path, str]:
    """The receiver's own copy of data.bin, and its digest."""
    target = random_file(pair.area / "data.bin", 2 * MiB, seed=10)
    return target, sha256(target)


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_put_refuses_to_replace_an_existing_file(
    pair: Pair, precious: tuple[Path, str], read_only: bool
) -> None:
    """The receiver's file is left exactly as it was (C04)."""
    target, digest = precious
    if read_only:
        target.chmod(0o444)
    source = random_file(pair.tmp / "src" / "data.bin", MiB, seed=11)

    done = pair.put(source)

    assert done.returncode == 6
    assert done.stdout == ""
    assert error_lines(done) == [
        "filexfer: error: receiver refused 'data.bin': already exists"
    ]
    assert sha256(target) == digest
    assert os.listdir(pair.area) == ["data.bin"]
    assert "reason=exists" in pair.receiver.log()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_put_never_replaces_a_directory(pair: Pair, overwrite: list[str]) -> None:
    """A file named like an existing directory is refused (C04)."""
    photos = pair.area / "photos"
    write(photos / "a.jpg", b"keep")
    source = write(pair.tmp / "src" / "photos", b"not a directory")

    done = pair.put(*overwrite, source)

    assert done.returncode == 6
    assert done.stdout == ""
    [line] = error_lines(done)
    assert "'photos'" in line and "not a regular file" in line
    assert (photos / "a.jpg").read_bytes() == b"keep"
    assert leftovers(pair.area) == []


def test_put_refusal_in_a_multi_file_job_fails_only_that_file(
    pair: Pair, precious: tuple[Path, str]
) -> None:
    """Only the existing file fails; the job exits 7 (C04, C10)."""
    target, digest = precious
    other = write(pair.tmp / "src" / "a.txt", b"a\n")
    clash = random_file(pair.tmp / "src" / "data.bin", MiB, seed=12)

    done = pair.put(other, clash)

    assert done.returncode == 7
    assert done.stdout == ""
    lines = error_lines(done)
    assert lines[0] == "filexfer: error: receiver refused 'data.bin': already exists"
    assert lines[-1] == "filexfer: error: 1 of 2 files failed"
    assert (pair.area / "a.txt").read_bytes() == b"a\n"
    assert sha256(target) == digest
    assert leftovers(pair.area) == []


def test_put_overwrite_replaces_atomically(
    pair: Pair, precious: tuple[Path, str]
) -> None:
    """With --overwrite a reader sees the old or the new file, never a mix (C04)."""
    target, old_digest = precious
    source = random_file(pair.tmp / "src" / "data.bin", 8 * MiB, seed=13)
    new_digest = sha256(source)
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(sha256(target))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        done = pair.put("--overwrite", source)
    finally:
        stop.set()
        watcher.join(30)

    assert_success(done, 1)
    assert sha256(target) == new_digest
    assert seen <= {old_digest, new_digest}
    assert leftovers(pair.area) == []


# -- C05: interrupted transfers ------------------------------------------------

BIG = 16 * MiB
HOLD_AT = 4 * MiB


@dataclass
class Held:
    """A pair whose puts pass through a proxy that stops forwarding the
    sender's bytes after HOLD_AT of them: the transfer is caught mid-way,
    and stays there however fast the machine is, until the test acts.
    Closing the proxy cuts the connection on both sides."""

    pair: Pair
    proxy: Proxy

    def start_put(self, *args: str | os.PathLike[str]) -> subprocess.Popen[str]:
        return start_put(self.pair, *args, via=self.proxy.address)

    def wait_mid_transfer(self, part_size: int = 0) -> None:
        assert self.proxy.holding.wait(60), "the put never got to HOLD_AT"
        wait_for_part(self.pair.area, part_size)


@pytest.fixture
def held(make_pair: Callable[..., Pair]) -> Iterator[Held]:
    pair = make_pair()
    with Proxy(pair.receiver.port, Tamper(hold_at=HOLD_AT)) as proxy:
        yield Held(pair, proxy)


@pytest.fixture
def big_source(tmp_path: Path) -> Path:
    return random_file(tmp_path / "src" / "big.bin", BIG, seed=20)


def test_put_sender_killed_mid_transfer_leaves_nothing(
    held: Held, big_source: Path
) -> None:
    """SIGKILL of the sender: nothing under the final name, only the part
    kept for a resume, which the next run uses (C05)."""
    pair = held.pair
    root = pair.area
    sender = held.start_put(big_source)
    held.wait_mid_transfer()

    sender.kill()
    sender.wait(30)
    held.proxy.close()  # the receiver sees the connection go
    pair.receiver.wait_for_log(r"event=session\.failed")

    assert not (root / "big.bin").exists()
    assert stray_parts(root) == []
    assert pair.receiver.alive()
    assert "event=transfer.kept_for_resume" in pair.receiver.log()
    assert "path=big.bin" in pair.receiver.log()

    rerun = pair.put(big_source)
    assert_success(rerun, 1)
    assert sha256(root / "big.bin") == sha256(big_source)
    assert leftovers(root) == []


def test_put_sender_interrupted_says_not_completed(
    held: Held, big_source: Path
) -> None:
    """SIGINT of the sender: non-zero exit, a one-line message (C05)."""
    pair = held.pair
    root = pair.area
    sender = held.start_put(big_source)
    held.wait_mid_transfer()

    sender.send_signal(signal.SIGINT)
    stdout, stderr = sender.communicate(timeout=30)
    held.proxy.close()
    pair.receiver.wait_for_log(r"event=session\.failed")

    assert sender.returncode == 130
    assert stdout == ""
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        "filexfer: error: interrupted; copy not completed"
    )
    assert not (root / "big.bin").exists()
    assert stray_parts(root) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_put_json_interrupted_reports_every_file(
    held: Held, big_source: Path, signum: int
) -> None:
    """Ctrl-C, or a SIGTERM from timeout(1), systemd or a job runner, still
    ends with one object per file, and exit 130 (C15)."""
    small = write(held.pair.tmp / "src" / "small.txt", b"small\n")
    sender = held.start_put("--json", big_source, small)
    held.wait_mid_transfer()

    sender.send_signal(signum)
    stdout, stderr = sender.communicate(timeout=30)

    assert sender.returncode == 130
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["name"] for r in records] == ["big.bin", "small.txt"]
    for record in records:
        assert record["status"] == "failed" and record["exit_code"] == 130
        assert record["error"] == "interrupted; copy not completed"
    assert stderr.splitlines()[-1] == "filexfer: error: interrupted; copy not completed"


def test_put_json_receiver_stopped_reports_every_file(
    held: Held, big_source: Path
) -> None:
    """The session's failure is each unconfirmed file's failure (C15)."""
    pair = held.pair
    small = write(pair.tmp / "src" / "small.txt", b"small\n")
    sender = held.start_put("--json", big_source, small)
    held.wait_mid_transfer()

    assert pair.receiver.stop(signal.SIGTERM) == 0
    stdout, stderr = sender.communicate(timeout=60)

    assert sender.returncode == 3, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["name"] for r in records] == ["big.bin", "small.txt"]
    assert {r["exit_code"] for r in records} == {3}
    assert {r["error"] for r in records} == {
        stderr.splitlines()[0].removeprefix("filexfer: error: ")
    }
    assert all(r["status"] == "failed" for r in records)
    assert not (pair.area / "small.txt").exists()


def test_put_receiver_stopped_mid_transfer_leaves_nothing(
    held: Held,
    big_source: Path,
    start_receiver: Callable[..., Receiver],
) -> None:
    """SIGTERM of recv: it exits 0, keeps only a resumable part; a rerun
    against the restarted receiver resumes from it (C05)."""
    pair = held.pair
    root = pair.area
    sender = held.start_put(big_source)
    held.wait_mid_transfer(2 * MiB)  # enough for a resume

    assert pair.receiver.stop(signal.SIGTERM) == 0
    stdout, stderr = sender.communicate(timeout=60)

    assert "event=recv.stopped" in pair.receiver.log()
    assert sender.returncode == 3
    assert stdout == ""
    assert "Traceback" not in stderr
    assert stderr.startswith("filexfer: error: ")
    assert not (root / "big.bin").exists()
    assert stray_parts(root) == []

    restarted = start_receiver(root=pair.receiver.root)
    again = Pair(pair.sender_home, restarted, pair.tmp, pair.receiver_fingerprint)
    assert_success(again.put(big_source), 1)
    assert sha256(root / "big.bin") == sha256(big_source)
    assert "event=transfer.resume" in restarted.log()
    assert leftovers(root) == []


def test_put_receiver_killed_mid_transfer_restart_keeps_the_part(
    held: Held,
    big_source: Path,
    start_receiver: Callable[..., Receiver],
) -> None:
    """SIGKILL of recv: the part stays, the next start keeps it for a
    resume, and the rerun completes from it (C05)."""
    pair = held.pair
    root = pair.area
    sender = held.start_put(big_source)
    held.wait_mid_transfer()

    pair.receiver.stop(signal.SIGKILL)
    sender.communicate(timeout=60)

    assert sender.returncode not in (0, None)
    assert not (root / "big.bin").exists()
    assert len(leftovers(root)) == 1

    restarted = start_receiver(root=pair.receiver.root)

    assert "stale_parts_removed=0" in restarted.log()
    assert not (root / "big.bin").exists()
    again = Pair(pair.sender_home, restarted, pair.tmp, pair.receiver_fingerprint)
    assert_success(again.put(big_source), 1)
    assert sha256(root / "big.bin") == sha256(big_source)
    assert leftovers(root) == []


def scripted_sender(pair: Pair) -> Channel:
    """A channel from the authorized sender identity, driven by the test."""
    identity = load_identity(pair.sender_home)
    return connect("127.0.0.1", pair.receiver.port, identity, lambda _key: None)


def test_connection_cut_at_a_chunk_boundary_is_truncation(pair: Pair) -> None:
    """Whole chunks and then a clean close do not make a file (C05)."""
    channel = scripted_sender(pair)
    channel.send(msgs.Offer(0, 3 * CHUNK, 0, 0o644, False, "cut.bin"))
    assert channel.recv() == msgs.Accept(0, 0)
    for _ in range(2):
        channel.data_buffer()[:] = os.urandom(CHUNK)
        channel.send_data(CHUNK)
    channel.close()

    pair.receiver.wait_for_log(r"event=session\.failed")

    root = pair.area
    assert not (root / "cut.bin").exists()
    assert leftovers(root) == []
    assert f"path=cut.bin bytes={2 * CHUNK}" in pair.receiver.log()


def test_close_before_end_is_not_success(pair: Pair) -> None:
    """Every byte but no End, then Close: the file is discarded (C05)."""
    channel = scripted_sender(pair)
    channel.send(msgs.Offer(0, 100, 0, 0o644, False, "no-end.bin"))
    assert channel.recv() == msgs.Accept(0, 0)
    channel.data_buffer()[:100] = bytes(100)
    channel.send_data(100)
    channel.send(msgs.Close())

    try:
        # Not a Done: the receiver ends the session as broken (protocol §5).
        with pytest.raises(ProtocolError, match="close before the end"):
            channel.recv()
    finally:
        channel.close()
    pair.receiver.wait_for_log(r"event=session\.(end|failed)")

    assert not (pair.area / "no-end.bin").exists()
    assert leftovers(pair.area) == []


# -- C10: failures exit non-zero with the right code ---------------------------


def test_put_missing_local_file_among_good_ones_exits_7(pair: Pair) -> None:
    """The good file is sent, the missing one is named (C10)."""
    good = write(pair.tmp / "src" / "a.txt", b"a\n")
    missing = pair.tmp / "src" / "missing.txt"

    done = pair.put("--json", good, missing)

    assert done.returncode == 7
    records = {r["status"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert records["ok"]["name"] == "a.txt"
    assert records["failed"]["exit_code"] == 8
    assert "missing.txt" in records["failed"]["error"]
    lines = error_lines(done)
    assert any("missing.txt" in line for line in lines)
    assert lines[-1] == "filexfer: error: 1 of 2 files failed"
    assert (pair.area / "a.txt").read_bytes() == b"a\n"


def missing_file(src: Path) -> Path:
    return src / "missing.txt"


def plain_directory(src: Path) -> Path:
    (src / "adir").mkdir()
    return src / "adir"


def fifo(src: Path) -> Path:
    os.mkfifo(src / "fifo")
    return src / "fifo"


@pytest.mark.parametrize(
    "make_source",
    [missing_file, plain_directory, fifo],
    ids=["missing", "directory without -r", "fifo"],
)
def test_put_unusable_local_file_exits_8(
    pair: Pair, make_source: Callable[[Path], Path]
) -> None:
    """A local problem is exit 8, and nothing reaches the receiver (C10)."""
    src = pair.tmp / "src"
    src.mkdir()
    source = make_source(src)

    done = pair.put(source)

    assert done.returncode == 8
    assert done.stdout == ""
    [line] = error_lines(done)
    assert source.name in line
    assert list(pair.area.iterdir()) == []


@pytest.mark.parametrize("size", [0, MiB], ids=["empty", "one-mib"])
def test_put_refused_for_lack_of_space_exits_6(
    make_pair: Callable[..., Pair], size: int
) -> None:
    """An empty file the receiver cannot take fails like a big one (C10)."""
    pair = make_pair(*recv_flags(min_free=1 << 62))
    source = random_file(pair.tmp / "src" / "backup.tar", size)

    done = pair.put("--json", source)

    assert done.returncode == 6
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["status"] == "failed" and record["exit_code"] == 6
    [line] = error_lines(done)
    assert "backup.tar" in line and "not enough space" in line
    assert list(pair.area.iterdir()) == []
    assert source.exists()


def test_put_all_files_refused_exits_with_their_code(pair: Pair) -> None:
    """Every file of a job refused the same way: that refusal's code (C10)."""
    write(pair.area / "a.txt", b"old a")
    write(pair.area / "b.txt", b"old b")
    sources = [
        write(pair.tmp / "src" / "a.txt", b"new a"),
        write(pair.tmp / "src" / "b.txt", b"new b"),
    ]

    done = pair.put(*sources)

    assert done.returncode == 6
    assert done.stdout == ""
    lines = error_lines(done)
    assert lines[-1] == "filexfer: error: all 2 files failed"
    assert (pair.area / "a.txt").read_bytes() == b"old a"
    assert (pair.area / "b.txt").read_bytes() == b"old b"


def test_put_through_a_tampering_path_exits_5(pair: Pair) -> None:
    """One flipped bit on the wire fails the copy and stores nothing (C10)."""
    source = random_file(pair.tmp / "src" / "data.bin", 2 * MiB, seed=30)
    with Proxy(pair.receiver.port, Tamper(flip_at=300_000)) as proxy:
        done = cli(
            ["put", "--fingerprint", pair.receiver_fingerprint, source, proxy.address],
            pair.sender_home,
        )
        proxy.wait_done()
    pair.receiver.wait_for_log(r"event=session\.failed")

    assert len(proxy.capture.c2s) > 300_000  # the flipped byte went through
    assert done.returncode == 5
    assert done.stdout == ""
    assert error_lines(done)[0].startswith("filexfer: error: ")
    assert not (pair.area / "data.bin").exists()
    assert leftovers(pair.area) == []


def test_put_of_many_files_needs_few_descriptors(pair: Pair, tmp_path: Path) -> None:
    """Sources are closed once sent: 128 descriptors do for 300 files
    (at most 64 are open, one per offer ahead)."""
    top = tmp_path / "src" / "many"
    top.mkdir(parents=True)
    for index in range(300):
        (top / f"f{index:03d}.txt").write_text(f"{index}\n")
    done = cli_with_file_limit(128, pair.put_args("-q", "-r", top), pair.sender_home)

    assert done.returncode == 0, done.stderr
    assert len(list((pair.area / "many").iterdir())) == 300


# -- output that cannot be written ------------------------------------------------


def put_to(pair: Pair, stdout: int, *args: str | os.PathLike[str]) -> tuple[int, str]:
    """`put` with its stdout on a given descriptor; (status, stderr)."""
    done = cli(pair.put_args(*args), pair.sender_home, stdout=stdout, timeout=60)
    return done.returncode, done.stderr


def test_put_json_into_a_closed_pipe_keeps_its_status_and_messages(
    pair: Pair,
) -> None:
    """The job still runs to its end: its refusals reach stderr, its
    status is its own, and the lost output is said last."""
    top = pair.tmp / "src" / "mix"
    for number in range(4):
        write(top / f"f{number}.txt", f"first {number}\n".encode())
    assert_success(pair.put("-r", top), 4)
    write(top / "f1.txt", b"changed\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before anything was written
    try:
        status, stderr = put_to(pair, write_end, "--json", "-r", top)
    finally:
        os.close(write_end)

    assert status == 7
    lines = stderr.splitlines()
    assert "filexfer: error: receiver refused 'mix/f1.txt': already exists" in lines
    assert lines[-1] == (
        "filexfer: error: cannot write to standard output (broken pipe); "
        "output is missing"
    )


def test_put_json_onto_a_full_disk_is_exit_8_after_a_success(pair: Pair) -> None:
    source = write(pair.tmp / "src" / "one.txt", b"one\n")
    with open("/dev/full", "wb") as full:
        status, stderr = put_to(pair, full.fileno(), "--json", source)

    assert status == 8
    assert (pair.area / "one.txt").read_bytes() == b"one\n"
    assert stderr == (
        "filexfer: error: cannot write to standard output "
        "(no space left on device); output is missing\n"
    )


@pytest.mark.parametrize("stderr", ["2>/dev/full", "2>&-"])
@pytest.mark.parametrize("flags", [[], ["--progress"]])
def test_put_with_stderr_unwritable_still_sends_and_exits_0(
    pair: Pair, stderr: str, flags: list[str]
) -> None:
    """Messages and bars that cannot be written never stop the job."""
    source = random_file(pair.tmp / "src" / "quiet.bin", 3 * MiB, seed=3)
    done = cli(pair.put_args(*flags, source), pair.sender_home, redirect=stderr)

    assert done.returncode == 0
    assert sha256(pair.area / "quiet.bin") == sha256(source)


def test_put_json_with_stdout_closed_is_exit_8(pair: Pair) -> None:
    source = write(pair.tmp / "src" / "one.txt", b"one\n")
    done = cli(pair.put_args("--json", source), pair.sender_home, redirect=">&-")

    assert done.returncode == 8
    assert (pair.area / "one.txt").read_bytes() == b"one\n"
    assert "cannot write to standard output (bad file descriptor)" in done.stderr


def test_refusal_of_an_unreadable_copy_names_the_file_once(
    pair: Pair, tmp_path: Path
) -> None:
    """The receiver cannot read its copy of the same size: one line that
    names the file once, not once by each side."""
    pair.receiver.stop()
    receiver = Receiver(
        pair.receiver.home,
        pair.receiver.root,
        tmp_path / "unprivileged.log",
        unprivileged=True,
    ).start()
    source = write(tmp_path / "src" / "x.txt", b"new\n")
    stored = write(pair.area / "x.txt", b"old\n")
    stored.chmod(0)
    command = ["put", "--fingerprint", pair.receiver_fingerprint, source]
    try:
        done = cli([*command, receiver.address], pair.sender_home)
    finally:
        receiver.stop()

    assert done.returncode == 6
    assert done.stderr == (
        "filexfer: error: receiver refused 'x.txt': cannot read (Permission denied)\n"
    )
