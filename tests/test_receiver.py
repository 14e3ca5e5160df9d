"""The receiving side end to end: write-behind, direct I/O and batching.

Large files go to the disk from a second thread by direct I/O, small ones
are written at once and committed in batches; one job mixes both, and
every file must still arrive whole, in place, and confirmed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from filexfer import messages as msgs
from filexfer.receiver import LARGE_FILE, REPLIES_HELD
from tests.attackers import HostileClient, Proxy, Tamper, put_process, running
from tests.helpers import Pair, leftovers, random_file, sha256

MiB = 1 << 20


def test_mixed_large_and_small_files_arrive_identical(pair: Pair) -> None:
    source = pair.tmp / "mixed"
    sizes = {
        "a-small.bin": 4096,
        "b-large-unaligned.bin": LARGE_FILE + 3 * MiB + 777,
        "c-empty.bin": 0,
        "d-large-aligned.bin": LARGE_FILE,
        "e-just-below.bin": LARGE_FILE - 1,
        "f-tiny.bin": 1,
    }
    for seed, (name, size) in enumerate(sizes.items()):
        random_file(source / name, size, seed=seed)

    done = pair.put("--json", "-r", source)

    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["name"] for r in reports) == [f"mixed/{n}" for n in sizes]
    assert all(r["status"] == "ok" for r in reports)
    for name in sizes:
        arrived = pair.area / "mixed" / name
        assert sha256(arrived) == sha256(source / name), name
    assert leftovers(pair.area) == []


def test_many_small_files_are_all_durable_and_confirmed(pair: Pair) -> None:
    source = pair.tmp / "many"
    for index in range(600):
        folder = source / f"d{index % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:04d}").write_bytes(os.urandom(index % 300))

    done = pair.put("--json", "-r", source)

    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(reports) == 600
    assert all(r["status"] == "ok" for r in reports)
    arrived = sorted(
        p.relative_to(pair.area).as_posix()
        for p in Path(pair.area).rglob("*")
        if p.is_file()
    )
    assert arrived == sorted(f"many/{r['name'].split('/', 1)[1]}" for r in reports)
    assert leftovers(pair.area) == []
    pair.receiver.wait_for_log(r"event=session\.end .* files=600")


def test_small_files_are_committed_before_a_large_file_streams(pair: Pair) -> None:
    """A finished small file must not wait, uncommitted, behind a large one.

    The stream is held in the middle of the large file: by then the small
    file must be on disk under its name and logged complete.
    """
    small = pair.tmp / "first-small.txt"
    small.write_bytes(b"small and done\n")
    large = random_file(pair.tmp / "then-large.bin", LARGE_FILE + MiB)
    args = ["put", "--fingerprint", pair.receiver_fingerprint, small, large]

    with Proxy(pair.receiver.port, Tamper(hold_at=4 * MiB)) as proxy:
        process = put_process([*args, proxy.address], pair.sender_home)
        with running(process):
            assert proxy.holding.wait(20)
            pair.receiver.wait_for_log(r"transfer\.complete .*path=first-small\.txt")
            assert (pair.area / "first-small.txt").read_bytes() == (b"small and done\n")
            assert not (pair.area / "then-large.bin").exists()
            proxy.release()
            _, stderr = process.communicate(timeout=60)

    assert process.returncode == 0, stderr
    assert sha256(pair.area / "then-large.bin") == sha256(large)


def test_finished_file_is_committed_within_a_second_while_the_next_streams(
    pair: Pair,
) -> None:
    """The batch has an age limit, whatever the next (smaller) file does.

    The stream is held between two records of a file below the large-file
    size, long past a second: the finished file before it must be committed
    meanwhile.  (Within a record the receiver is reading, it checks at the
    record's end.)
    """
    small = pair.tmp / "done-first.txt"
    small.write_bytes(b"finished\n")
    medium = random_file(pair.tmp / "still-coming.bin", LARGE_FILE - MiB)

    hold = Tamper(hold_at=3 * MiB, hold_at_boundary=True)
    with Proxy(pair.receiver.port, hold) as proxy:
        args = ["put", "--fingerprint", pair.receiver_fingerprint, small, medium]
        process = put_process([*args, proxy.address], pair.sender_home)
        with running(process):
            assert proxy.holding.wait(20)
            pair.receiver.wait_for_log(
                r"transfer\.complete .*path=done-first\.txt", timeout=10
            )
            assert (pair.area / "done-first.txt").read_bytes() == b"finished\n"
            proxy.release()
            _, stderr = process.communicate(timeout=60)

    assert process.returncode == 0, stderr
    assert sha256(pair.area / "still-coming.bin") == sha256(medium)
    assert leftovers(pair.area) == []


def test_answers_go_out_while_the_sender_is_still_sending(pair: Pair) -> None:
    """Accepts are not all held until the receiver's input runs dry.

    A sender offers ahead and streams a file as soon as its Accept is in;
    had the receiver held every answer while input kept arriving, the two
    sides would take turns instead of working at once.  Here the input never
    runs dry: the record after the offers is only half sent.  The first
    answers must arrive all the same, and the rest once the record is whole.
    """
    end = HostileClient(pair.receiver.port, pair.sender_home)
    mtime = 1_700_000_000 * 10**9
    offers = [
        end.sealer.seal(msgs.encode(msgs.Offer(i, 1, mtime, 0o644, False, f"ahead{i}")))
        for i in range(41)
    ]
    assert 40 * len(offers[0]) > 2 * REPLIES_HELD  # enough to fill the hold
    last = offers.pop()
    end.send_raw(b"".join(offers) + last[:10])

    early = [end.recv(timeout=10) for _ in range(2)]
    assert early == [msgs.Accept(0, 0), msgs.Accept(1, 0)]

    end.send_raw(last[10:])
    answers = [end.recv() for _ in range(39)]
    assert answers == [msgs.Accept(i, 0) for i in range(2, 41)]
    end.close()
    assert leftovers(pair.area) == []
