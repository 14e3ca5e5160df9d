"""Faults: a full disk, processes killed or frozen, a source that changes,
silent peers, and sizes past 32 bits.

A full disk fails the file with the "refused" code and a no-space message
(C06); a killed side never leaves a final file and its parts go at the
next start (C05); a changing source is never committed (C09); a silent
peer is dropped at a documented timeout on either side (C11); every size,
offset and counter is 64-bit (C08).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from filexfer import messages as msgs
from filexfer.errors import Code, FilexferError
from filexfer.records import MAX_COUNTER, Opener, RecordError, Sealer
from tests.attackers import (
    Endpoint,
    HostileClient,
    HostileServer,
    LogWatch,
    Proxy,
    SmallDiskReceiver,
    Tamper,
    open_pair,
    put_process,
    put_to,
    running,
)
from tests.helpers import (
    Pair,
    Receiver,
    channel_pair,
    cli,
    leftovers,
    random_file,
    sha256,
    stray_parts,
    wait_until,
)

MiB = 1 << 20


@pytest.fixture
def pairs(tmp_path: Path) -> Iterator[Callable[..., Pair]]:
    """open_pair(tmp_path, *flags), with every receiver stopped afterwards."""
    made: list[Pair] = []

    def make(*extra: str) -> Pair:
        made.append(open_pair(tmp_path, *extra))
        return made[-1]

    yield make
    for pair in made:
        pair.receiver.stop()


def background_put(
    pair: Pair, address: str, *args: str | os.PathLike[str]
) -> subprocess.Popen[str]:
    return put_process(
        ["put", "--fingerprint", pair.receiver_fingerprint, *args, address],
        pair.sender_home,
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    """Wait for a background put; return its exit code and stderr."""
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


# -- the disk fills up (C06) --------------------------------------------------


@pytest.fixture(params=["tmpfs", "write-hook"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """A receiver on an 8 MiB disk: a tmpfs in a private mount namespace,
    and the same through an injected write hook (the fallback for machines
    that do not allow the mount)."""
    hooked = request.param == "write-hook"
    pair = open_pair(tmp_path, kind=SmallDiskReceiver, capacity=8 * MiB, hooked=hooked)
    yield pair
    pair.receiver.stop()


def disk_of(pair: Pair) -> SmallDiskReceiver:
    assert isinstance(pair.receiver, SmallDiskReceiver)
    return pair.receiver


def test_file_larger_than_the_free_space_is_refused_up_front(
    small_disk: Pair,
) -> None:
    watch = LogWatch(small_disk.receiver)
    source = random_file(small_disk.tmp / "src" / "big.bin", 12 * MiB)

    done = small_disk.put(source)

    assert done.returncode == 6, done.stderr
    assert re.fullmatch(
        r"filexfer: error: receiver refused 'big.bin': not enough space "
        r"\(needs 12\.0 MiB, [0-9.]+ MiB free\)\n",
        done.stderr,
    ), done.stderr
    assert "event=transfer.refused" in watch.text()
    assert "reason=no_space" in watch.text()
    assert list(disk_of(small_disk).disk.iterdir()) == []


def test_disk_full_mid_file(small_disk: Pair) -> None:
    receiver = disk_of(small_disk)
    keep = random_file(small_disk.tmp / "src" / "keep.bin", MiB, seed=3)
    assert small_disk.put(keep).returncode == 0
    source = random_file(small_disk.tmp / "src" / "mid.bin", 4 * MiB)
    watch = LogWatch(receiver)

    with Proxy(receiver.port, Tamper(hold_at=2 * MiB)) as proxy:
        process = background_put(small_disk, proxy.address, source)
        with running(process):
            assert proxy.holding.wait(20)
            wait_until(lambda: leftovers(receiver.disk), "the part file")
            receiver.fill()
            proxy.release()
            code, stderr = finish(process)

    assert code == 6, stderr
    assert stderr == (
        "filexfer: error: receiver refused 'mid.bin': not enough space "
        "(No space left on device)\n"
    )
    failed = watch.lines("ERROR", "transfer.failed")
    assert len(failed) == 1 and "path=mid.bin" in failed[0], watch.text()
    assert not (receiver.disk / "mid.bin").exists()
    assert leftovers(receiver.disk) == []
    assert sha256(receiver.disk / "keep.bin") == sha256(keep)

    receiver.unfill()
    after = random_file(small_disk.tmp / "src" / "after.bin", MiB, seed=4)
    done = small_disk.put(after)
    assert done.returncode == 0, done.stderr
    assert sha256(receiver.disk / "after.bin") == sha256(after)


def test_file_that_does_not_fit_in_a_multi_file_job(small_disk: Pair) -> None:
    src = small_disk.tmp / "src"
    files = [
        random_file(src / "small1.bin", 100_000, seed=1),
        random_file(src / "big.bin", 12 * MiB, seed=2),
        random_file(src / "small2.bin", 100_000, seed=3),
    ]

    done = small_disk.put(*files)

    assert done.returncode == 7, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith(
        "filexfer: error: receiver refused 'big.bin': not enough space (needs 12.0"
    )
    assert lines[1].startswith("filexfer: sent 2 file(s), 200,000 bytes in ")
    assert lines[1].endswith(", 1 failed")
    assert lines[2] == "filexfer: error: 1 of 3 files failed"
    disk = disk_of(small_disk).disk
    assert sorted(p.name for p in disk.iterdir()) == ["small1.bin", "small2.bin"]
    for source in (files[0], files[2]):
        assert sha256(disk / source.name) == sha256(source)


# -- either side killed (C05) -------------------------------------------------


SIZE = 6 * MiB
# The sender's stream up to its End record: handshake (107 bytes), Offer
# (62), six Data records (6 MiB + 126). A stop anywhere before the End
# leaves the receiver with an unfinished file.
BEFORE_END = SIZE + 295


def kill_points() -> list[int]:
    """In the handshake, in the Offer, and reproducible random offsets."""
    rng = random.Random(5)
    return [20, 140, *sorted(rng.randrange(200, BEFORE_END) for _ in range(3))]


@pytest.mark.parametrize("at", kill_points())
def test_receiver_killed_at_a_random_point(
    tmp_path: Path, pairs: Callable[..., Pair], at: int
) -> None:
    pair = pairs()
    receiver = pair.receiver
    source = random_file(tmp_path / "src" / "victim.bin", SIZE)

    with Proxy(receiver.port, Tamper(hold_at=at)) as proxy:
        process = background_put(pair, proxy.address, source)
        with running(process):
            assert proxy.holding.wait(20)
            time.sleep(0.3)  # let the receiver act on what it got
            parts = leftovers(receiver.root)
            receiver.stop(signal.SIGKILL)
            killed = time.monotonic()
            proxy.release()
            code, stderr = finish(process)
            noticed = time.monotonic() - killed

    assert code == 3, stderr
    assert "connection lost" in stderr or "closed the connection" in stderr
    assert noticed < 10
    assert not (receiver.root / "victim.bin").exists()
    assert leftovers(receiver.root) == parts

    again = Receiver(receiver.home, receiver.root, tmp_path / "again.log").start()
    try:
        again.wait_for_log(f"stale_parts_removed={len(parts)}")
        assert leftovers(receiver.root) == []
        assert not (receiver.root / "victim.bin").exists()
    finally:
        again.stop()


@pytest.mark.parametrize("at", kill_points())
def test_sender_killed_at_a_random_point(
    tmp_path: Path, pairs: Callable[..., Pair], at: int
) -> None:
    """The file is much longer than the socket buffers: what the killed
    sender had written but not yet delivered cannot complete it."""
    pair = pairs()
    receiver = pair.receiver
    source = random_file(tmp_path / "src" / "victim.bin", 64 * MiB)
    watch = LogWatch(receiver)

    with Proxy(receiver.port, Tamper(hold_at=at)) as proxy:
        process = background_put(pair, proxy.address, source)
        with running(process):
            assert proxy.holding.wait(20)
            process.kill()
            process.wait()
            proxy.release()
            watch.wait_for(r"WARNING event=session\.(failed|handshake_failed)")

    assert not (receiver.root / "victim.bin").exists()
    assert stray_parts(receiver.root) == []  # a resumable part may stay
    assert receiver.alive()
    done = pair.put(source)
    assert done.returncode == 0, done.stderr
    assert sha256(receiver.root / "victim.bin") == sha256(source)
    assert leftovers(receiver.root) == []


# -- the source changes while it is sent (C09) --------------------------------


def rewrite(path: Path) -> None:
    with open(path, "r+b") as stream:
        stream.seek(100)
        stream.write(b"CHANGED")


def grow(path: Path) -> None:
    with open(path, "ab") as stream:
        stream.write(b"\x01" * MiB)


def shrink(path: Path) -> None:
    os.truncate(path, MiB)


def rewrite_and_put_mtime_back(path: Path) -> None:
    before = path.stat()
    rewrite(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


CHANGES = {
    "rewrite": rewrite,
    "grow": grow,
    "shrink": shrink,
    "rewrite-mtime-kept": rewrite_and_put_mtime_back,
}
LIVE = 16 * MiB
OLD_MTIME = 1_600_000_000 * 10**9


@pytest.fixture(scope="module")
def live_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    pair = open_pair(tmp_path_factory.mktemp("live"))
    yield pair
    pair.receiver.stop()


def send_while_changing(
    pair: Pair, files: list[Path], change: Callable[[], None]
) -> tuple[int, str]:
    with Proxy(pair.receiver.port, Tamper(hold_at=2 * MiB)) as proxy:
        process = background_put(pair, proxy.address, *files)
        with running(process):
            assert proxy.holding.wait(20)
            change()
            proxy.release()
            return finish(process)


@pytest.mark.parametrize("how", list(CHANGES))
def test_source_changed_while_sent_is_not_copied(
    live_pair: Pair, tmp_path: Path, how: str
) -> None:
    source = random_file(tmp_path / f"live-{how}.bin", LIVE)
    os.utime(source, ns=(OLD_MTIME, OLD_MTIME))
    watch = LogWatch(live_pair.receiver)

    code, stderr = send_while_changing(
        live_pair, [source], lambda: CHANGES[how](source)
    )

    assert code == 8, stderr
    assert stderr == f"filexfer: error: {source} changed while being sent; not copied\n"
    watch.wait_for(f"event=transfer.aborted .*path=live-{how}.bin")
    assert not (live_pair.area / source.name).exists()
    assert leftovers(live_pair.area) == []


def test_stored_file_changed_while_served_names_it_not_the_daemons_path(
    live_pair: Pair, tmp_path: Path
) -> None:
    """The daemon serving get aborts a stored file that changes under it;
    the client hears why, of the name it asked for, never the daemon's
    own path."""
    stored = random_file(live_pair.area / "served.bin", LIVE)
    into = tmp_path / "dl"
    command = ["get", "--fingerprint", live_pair.receiver_fingerprint]
    with Proxy(live_pair.receiver.port, Tamper("s2c", hold_at=2 * MiB)) as proxy:
        process = put_process(
            [*command, proxy.address, "served.bin", "-o", str(into)],
            live_pair.sender_home,
        )
        with running(process):
            assert proxy.holding.wait(20)
            grow(stored)
            proxy.release()
            code, stderr = finish(process)

    assert code == 8, stderr
    assert stderr.splitlines()[0] == (
        "filexfer: error: 'served.bin': changed while being sent; not copied"
    )
    assert str(live_pair.receiver.root) not in stderr
    assert not (into / "served.bin").exists()
    pattern = r"WARNING event=get\.failed .*path=served\.bin .*changed while being sent"
    live_pair.receiver.wait_for_log(pattern)


def rewrite_then_rename(path: Path) -> None:
    """A writer that puts the mtime back, then renames: nothing of the
    file's own stat but its ctime tells."""
    rewrite_and_put_mtime_back(path)
    os.rename(path, path.with_suffix(".moved"))


@pytest.mark.parametrize(
    "how",
    ["replaced", "linked", "chmod", "rewritten-mtime-kept-and-linked", "renamed"],
)
def test_source_renamed_linked_or_chmod_while_sent_counts_as_changed(
    live_pair: Pair, tmp_path: Path, how: str
) -> None:
    """What was read cannot be told apart from a torn read once the ctime
    moved: the file fails as changed, and no copy is committed."""
    source = random_file(tmp_path / f"live-{how}.bin", LIVE, seed=4)
    changes: dict[str, Callable[[], object]] = {
        "replaced": lambda: (
            source.rename(tmp_path / "old.bin"),
            random_file(source, LIVE, seed=2),
        ),
        "linked": lambda: os.link(source, tmp_path / "another-name.bin"),
        "chmod": lambda: os.chmod(source, 0o600),
        "rewritten-mtime-kept-and-linked": lambda: (
            rewrite_and_put_mtime_back(source),
            os.link(source, tmp_path / "second-name.bin"),
        ),
        "renamed": lambda: rewrite_then_rename(source),
    }

    code, stderr = send_while_changing(live_pair, [source], changes[how])

    assert code == 8, stderr
    assert "changed while being sent; not copied" in stderr
    assert not (live_pair.area / source.name).exists()
    assert leftovers(live_pair.area) == []


def test_source_changed_in_a_three_file_job(live_pair: Pair, tmp_path: Path) -> None:
    first = random_file(tmp_path / "job-a.bin", 10_000, seed=1)
    source = random_file(tmp_path / "job-live.bin", LIVE, seed=2)
    last = random_file(tmp_path / "job-c.bin", 10_000, seed=3)
    os.utime(source, ns=(OLD_MTIME, OLD_MTIME))

    code, stderr = send_while_changing(
        live_pair, [first, source, last], lambda: rewrite(source)
    )

    assert code == 7, stderr
    lines = stderr.splitlines()
    assert lines[0] == f"filexfer: error: {source} changed while being sent; not copied"
    assert lines[-1] == "filexfer: error: 1 of 3 files failed"
    root = live_pair.area
    assert not (root / "job-live.bin").exists()
    for done in (first, last):
        assert sha256(root / done.name) == sha256(done)
    assert leftovers(root) == []


# -- silent and frozen peers (C11) --------------------------------------------


def test_put_to_a_listener_that_never_answers_times_out(tmp_path: Path) -> None:
    source = random_file(tmp_path / "small.txt", 10)
    with HostileServer(tmp_path / "silent-home") as silent:
        started = time.monotonic()
        done = cli(
            [
                "put",
                "--accept-new",
                "--connect-timeout",
                "1",
                "--idle-timeout",
                "1",
                source,
                silent.address,
            ],
            tmp_path / "sender-home",
            timeout=60,
        )
        took = time.monotonic() - started

    assert done.returncode == 3, done.stderr
    assert done.stderr == (
        "filexfer: error: receiver stopped responding during the handshake "
        "(no data for 1 s)\n"
    )
    assert took < 10


def test_connect_timeout_is_enforced(tmp_path: Path) -> None:
    """A listener whose accept queue is full drops new connection attempts
    unanswered, as a firewall would: the connect timeout ends the wait."""
    source = random_file(tmp_path / "small.txt", 10)
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # fills the queue
            started = time.monotonic()
            done = cli(
                [
                    "put",
                    "--accept-new",
                    "--connect-timeout",
                    "1",
                    source,
                    f"127.0.0.1:{port}",
                ],
                tmp_path / "sender-home",
                timeout=60,
            )
            took = time.monotonic() - started

    assert done.returncode == 3, done.stderr
    assert (
        done.stderr
        == f"filexfer: error: cannot connect to 127.0.0.1:{port}: timed out\n"
    )
    assert took < 10


def _accept_then_read_forever(end: Endpoint) -> None:
    offer = end.recv()
    assert isinstance(offer, msgs.Offer)
    end.send(msgs.Accept(offer.file_id, 0))
    while end.recv(timeout=60) is not None:
        pass


def _accept_then_stop_reading(end: Endpoint) -> None:
    offer = end.recv()
    assert isinstance(offer, msgs.Offer)
    end.send(msgs.Accept(offer.file_id, 0))


@pytest.mark.parametrize(
    "script",
    [_accept_then_read_forever, _accept_then_stop_reading],
    ids=["never-confirms", "stops-reading"],
)
def test_put_to_a_receiver_that_goes_quiet_mid_session_times_out(
    tmp_path: Path, script: Callable[[Endpoint], None]
) -> None:
    source = random_file(tmp_path / "quiet.bin", 32 * MiB)
    with HostileServer(tmp_path / "quiet-home", script) as quiet:
        started = time.monotonic()
        done = cli(
            ["put", "--accept-new", "--idle-timeout", "1", source, quiet.address],
            tmp_path / "sender-home",
            timeout=60,
        )
        took = time.monotonic() - started

    assert done.returncode == 3, done.stderr
    assert done.stderr == (
        "filexfer: error: receiver stopped responding (no data for 1 s)\n"
    )
    assert took < 15


def test_receiver_drops_a_sender_that_goes_quiet_mid_file(tmp_path: Path) -> None:
    pair = open_pair(tmp_path, "--idle-timeout", "1", "--max-sessions", "1")
    try:
        watch = LogWatch(pair.receiver)
        end = HostileClient(pair.receiver.port, pair.sender_home)
        end.offer("stalled.bin", 3 * MiB)
        assert isinstance(end.recv(), msgs.Accept)
        end.send(msgs.Data(b"x" * MiB))
        started = time.monotonic()

        assert end.recv(timeout=15) == msgs.Error(
            Code.TIMEOUT, "sender stopped responding (no data for 1 s)"
        )
        assert time.monotonic() - started < 10
        lines = watch.wait_lines("WARNING", "session.failed", 1)
        assert "sender stopped responding (no data for 1 s)" in lines[0]
        assert leftovers(pair.area) == []
        assert not (pair.area / "stalled.bin").exists()
        done = pair.put(random_file(tmp_path / "next.bin", 100))
        assert done.returncode == 0, done.stderr
    finally:
        pair.receiver.stop()


def test_frozen_receiver_makes_the_sender_give_up(
    tmp_path: Path, pairs: Callable[..., Pair]
) -> None:
    pair = pairs()
    receiver = pair.receiver
    source = random_file(tmp_path / "frozen.bin", 64 * MiB)
    watch = LogWatch(receiver)
    with Proxy(receiver.port, Tamper(hold_at=2 * MiB)) as proxy:
        process = background_put(pair, proxy.address, "--idle-timeout", "2", source)
        with running(process):
            assert proxy.holding.wait(20)
            os.kill(receiver.pid, signal.SIGSTOP)
            try:
                proxy.release()
                stopped = time.monotonic()
                code, stderr = finish(process)
                took = time.monotonic() - stopped
            finally:
                os.kill(receiver.pid, signal.SIGCONT)

    assert code == 3, stderr
    assert stderr == "filexfer: error: receiver stopped responding (no data for 2 s)\n"
    assert took < 15
    watch.wait_for("WARNING event=session.failed")
    assert stray_parts(receiver.root) == []
    assert not (receiver.root / "frozen.bin").exists()
    done = pair.put(random_file(tmp_path / "after-thaw.bin", 100))
    assert done.returncode == 0, done.stderr


def test_frozen_sender_is_dropped_and_others_are_served(
    tmp_path: Path, pairs: Callable[..., Pair]
) -> None:
    pair = pairs("--idle-timeout", "1", "--max-sessions", "2")
    receiver = pair.receiver
    source = random_file(tmp_path / "frozen-sender.bin", 64 * MiB)
    watch = LogWatch(receiver)
    proxy = Proxy(receiver.port, Tamper(hold_at=2 * MiB))
    process = background_put(pair, proxy.address, source)
    with proxy, running(process):
        assert proxy.holding.wait(20)
        os.kill(process.pid, signal.SIGSTOP)
        proxy.release()

        other = pair.put(random_file(tmp_path / "meanwhile.bin", 1000))
        lines = watch.wait_lines("WARNING", "session.failed", 1, timeout=15)

        assert other.returncode == 0, other.stderr
        assert "sender stopped responding (no data for 1 s)" in lines[0]
        assert stray_parts(receiver.root) == []
        assert not (receiver.root / "frozen-sender.bin").exists()
        os.kill(process.pid, signal.SIGKILL)


# -- sizes and counters past 32 bits (C08) ------------------------------------


BOUNDARIES = [
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**32 + 1,
    2**63,
    2**64 - 1,
]


@pytest.mark.parametrize("value", BOUNDARIES)
def test_sizes_offsets_and_ids_round_trip_at_64_bits(value: int) -> None:
    digest = bytes(range(32))
    for message in (
        msgs.Offer(value, value, 0, 0o644, False, "big.bin"),
        msgs.Accept(value, value),
        msgs.End(value, value, digest),
        msgs.Done(value, digest),
        msgs.Reject(value, Code.NO_SPACE, ""),
    ):
        wire = msgs.encode(message)
        assert msgs.decode(wire) == message
        assert wire[1:9] == struct.pack(">Q", value)


@pytest.mark.parametrize("value", [2**64, -1])
def test_sizes_the_format_cannot_carry_are_refused_not_wrapped(value: int) -> None:
    for message in (
        msgs.Offer(0, value, 0, 0o644, False, "x"),
        msgs.End(0, value, bytes(32)),
    ):
        with pytest.raises(ValueError, match="out of range"):
            msgs.encode(message)


def test_record_counters_cross_2_to_the_32() -> None:
    key = bytes(range(32))
    sealer, opener = Sealer(key), Opener(key)
    sealer.counter = opener.counter = 2**32 - 1
    records = [sealer.seal(b"before"), sealer.seal(b"after")]

    out = bytearray(16)
    for record, text in zip(records, [b"before", b"after"], strict=True):
        size = opener.open_into(record[:4], memoryview(record)[4:], memoryview(out))
        assert bytes(out[:size]) == text
    assert opener.counter == 2**32 + 1


def test_record_counter_is_not_cut_to_32_bits() -> None:
    key = bytes(range(32))
    sealer, opener = Sealer(key), Opener(key)
    sealer.counter = 2**32
    record = sealer.seal(b"wrapped?")

    with pytest.raises(RecordError):
        opener.open_into(record[:4], memoryview(record)[4:], memoryview(bytearray(16)))


def test_channel_ends_before_its_record_counter_wraps() -> None:
    """A nonce is never reused: at counter 2**64 - 1 the channel refuses to
    send, and the peer sees nothing sealed under a repeated nonce."""
    left, right = channel_pair()
    try:
        left._sealer.counter = MAX_COUNTER - 1
        right._opener.counter = MAX_COUNTER - 1
        left.send(msgs.Close())
        assert right.recv() == msgs.Close()

        with pytest.raises(FilexferError):
            left.send(msgs.Close())
        assert left._sealer.counter == MAX_COUNTER
        right.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            right.sock.recv(1)
    finally:
        left.close()
        right.close()


@pytest.fixture
def roomy(tmp_path: Path) -> Iterator[Pair]:
    """A receiver on an (empty, sparse) 8 GiB tmpfs: room for 2**32 bytes."""
    pair = open_pair(tmp_path, kind=SmallDiskReceiver, capacity=8 << 30)
    yield pair
    pair.receiver.stop()


def test_offer_past_2_to_the_32_is_neither_truncated_nor_wrapped(
    roomy: Pair,
) -> None:
    """2**32 + 5 read as 32 bits would be 5: ten bytes would then be "more
    than offered". Read as 64 bits, they are too few."""
    end = HostileClient(roomy.receiver.port, roomy.sender_home)
    end.offer("past-4g.bin", 2**32 + 5)
    assert isinstance(end.recv(), msgs.Accept)
    end.send(msgs.Data(b"0123456789"), msgs.End(0, 2**32 + 5, bytes(32)))

    answer = end.recv()
    assert isinstance(answer, msgs.Error) and answer.code == Code.PROTOCOL
    assert "size mismatch" in answer.reason
    assert leftovers(disk_of(roomy).disk) == []


@pytest.mark.parametrize(
    ("size", "needs"),
    [(2**63, "8796093022208.0 MiB"), (2**64 - 1, "17592186044416.0 MiB")],
)
def test_offer_of_an_impossible_size_is_refused_for_space(
    roomy: Pair, size: int, needs: str
) -> None:
    end = HostileClient(roomy.receiver.port, roomy.sender_home)
    end.offer("huge.bin", size)
    answer = end.recv()
    end.finish()

    assert isinstance(answer, msgs.Reject) and answer.code == Code.NO_SPACE
    assert answer.reason.startswith(f"not enough space (needs {needs}, ")


@pytest.mark.slow
def test_sparse_file_past_4_gib_arrives_whole(tmp_path: Path) -> None:
    size = (4 << 30) + MiB
    source = tmp_path / "big-sparse.bin"
    with open(source, "wb") as stream:
        stream.write(b"HEAD")
        stream.truncate(size - 4)
        stream.seek(size - 4)
        stream.write(b"TAIL")
    pair = open_pair(tmp_path)
    try:
        done = put_to(pair, pair.receiver.address, "--json", source, timeout=600)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["bytes"] == size and result["status"] == "ok"

        target = pair.area / "big-sparse.bin"
        assert target.stat().st_size == size
        digest = blake3(max_threads=blake3.AUTO)
        with open(target, "rb") as stream:
            head = stream.read(4)
            digest.update(head)
            while chunk := stream.read(16 * MiB):
                digest.update(chunk)
        assert head == b"HEAD"
        with open(target, "rb") as stream:
            stream.seek(size - 4)
            assert stream.read() == b"TAIL"
        assert digest.hexdigest() == result["digest"]
        assert pair.receiver.peak_rss_kib() < 100 * 1024
    finally:
        pair.receiver.stop()
        (pair.area / "big-sparse.bin").unlink(missing_ok=True)
        source.unlink()


def test_json_shows_the_true_size_past_4_gib(tmp_path: Path) -> None:
    """The announced size of a 4 GiB + 1 MiB file is shown whole before a
    byte is sent: the receiver here has no room, so nothing is sent."""
    source = tmp_path / "too-big.bin"
    with open(source, "wb") as stream:
        stream.truncate((4 << 30) + MiB)
    pair = open_pair(tmp_path, "--min-free", str(1 << 62))
    try:
        done = put_to(pair, pair.receiver.address, "--json", source)
        assert done.returncode == 6, done.stderr
        result = json.loads(done.stdout)
        assert result["bytes"] == (4 << 30) + MiB
        assert "needs 4097.0 MiB" in result["error"]
    finally:
        pair.receiver.stop()
