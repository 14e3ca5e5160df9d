"""Hostile peers against resume and skip-identical, and racing sessions.

Resume lets each side claim "I already hold these bytes"; these tests
check that such a claim can neither loop a transfer forever nor make a
daemon re-read files without end, that a session's memory stays bounded
by what is in flight, and that two honest sessions racing on one name
both succeed.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from filexfer import messages as msgs
from filexfer.errors import Code
from tests.attackers import (
    Endpoint,
    HostileClient,
    HostileServer,
    LogWatch,
    assert_serving,
    open_pair,
)
from tests.helpers import Pair, cli, leftovers, random_file, sha256

MiB = 1 << 20


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Pair]:
    pair = open_pair(tmp_path)
    yield pair
    pair.receiver.stop()


def claims_a_copy_every_time(end: Endpoint) -> None:
    """A receiver that answers every offer, fresh ones too, with a digest."""
    rounds = 0
    while rounds < 50:
        message = end.recv()
        if isinstance(message, msgs.Offer):
            rounds += 1
            end.send(msgs.Accept(message.file_id, message.size, bytes(32)))


def test_put_refuses_a_receiver_that_claims_a_copy_of_a_fresh_offer(
    tmp_path: Path,
) -> None:
    source = random_file(tmp_path / "data.bin", 2 * MiB, seed=1)
    home = tmp_path / "sender-home"

    started = time.monotonic()
    with HostileServer(tmp_path / "evil-home", claims_a_copy_every_time) as evil:
        done = cli(["put", "--accept-new", source, evil.address], home)

    assert done.returncode == 5, done.stderr
    assert "receiver claims a copy of a file offered fresh" in done.stderr
    assert time.monotonic() - started < 20


def test_daemon_refuses_a_client_that_claims_a_copy_of_a_fresh_offer(
    shared: Pair,
) -> None:
    """The same loop against the daemon serving get: at most two reads."""
    (shared.area / "big.bin").write_bytes(bytes(4 * MiB))
    watch = LogWatch(shared.receiver)
    end = HostileClient(shared.receiver.port, shared.sender_home)
    end.send(msgs.Get("big.bin", False, True))
    seen: list[msgs.Message] = []
    while (message := end.recv()) is not None and len(seen) < 50:
        seen.append(message)
        if isinstance(message, msgs.Offer):
            end.send(msgs.Accept(message.file_id, message.size, bytes(32)))
    end.close()

    offers = [m for m in seen if isinstance(m, msgs.Offer)]
    assert len(offers) == 2  # the first offer, and the fresh one that ended it
    assert offers[1].fresh
    assert isinstance(seen[-1], msgs.Error) and seen[-1].code == Code.PROTOCOL
    watch.wait_for("event=session.failed.*claims a copy of a file offered fresh")
    assert_serving(shared, "after-fresh-loop.txt")


def test_a_name_may_come_again_after_its_commit_but_not_while_in_flight(
    shared: Pair,
) -> None:
    """Only names in flight are remembered (memory stays bounded); a name
    offered again after its commit meets the stored file."""
    end = HostileClient(shared.receiver.port, shared.sender_home)
    data = b"same bytes\n"
    first = end.send_file("again.txt", data)
    second_id = end.offer("again.txt", len(data))
    second = end.recv()
    in_flight_id = end.offer("twice.txt", 5)
    duplicate_id = end.offer("twice.txt", 5)
    replies = [end.recv(), end.recv()]
    end.close()

    assert [type(m) for m in first] == [msgs.Accept, msgs.Done]
    assert second == msgs.Accept(second_id, len(data), blake3(data).digest())
    assert replies[0] == msgs.Accept(in_flight_id, 0)
    assert isinstance(replies[1], msgs.Reject)
    assert (replies[1].file_id, replies[1].code) == (duplicate_id, Code.DUPLICATE)


def test_overlapping_get_requests_are_refused_by_the_daemon(shared: Pair) -> None:
    (shared.area / "docs" / "sub").mkdir(parents=True)
    (shared.area / "docs" / "sub" / "f.txt").write_text("f\n")
    end = HostileClient(shared.receiver.port, shared.sender_home)
    end.send(msgs.Get("docs", True, False), msgs.Get("docs/sub", True, True))

    answer = end.recv()
    end.close()

    assert isinstance(answer, msgs.Error) and answer.code == Code.DUPLICATE
    assert "asked for twice" in answer.reason


def test_two_identical_uploads_at_once_both_succeed(
    shared: Pair, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "src" / "same.bin", 20 * MiB, seed=2)
    results: dict[int, int] = {}

    def run(index: int) -> None:
        results[index] = shared.put(source).returncode

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert results == {0: 0, 1: 0}
    assert sha256(shared.area / "same.bin") == sha256(source)
    assert leftovers(shared.area) == []


def put_tree_beside(
    shared: Pair, top: Path, part_like: str
) -> subprocess.CompletedProcess[str]:
    """put -r a folder of real.txt and a file named part_like."""
    top.mkdir(parents=True)
    (top / "real.txt").write_text("real\n")
    (top / part_like).write_text("some bytes\n")
    return shared.put("-r", top)


def test_put_skips_leftover_part_files_in_a_tree(shared: Pair, tmp_path: Path) -> None:
    top = tmp_path / "src" / "dl"
    done = put_tree_beside(shared, top, ".filexfer-0123456789abcdef.part")

    assert done.returncode == 0, done.stderr
    assert "an unfinished filexfer download" in done.stderr
    assert sorted(p.name for p in (shared.area / "dl").iterdir()) == ["real.txt"]


def test_a_users_file_named_like_a_part_file_fails_not_vanishes(
    shared: Pair, tmp_path: Path
) -> None:
    """Only names filexfer itself gives its part files are skipped; a
    user's file that merely looks like one is a file that cannot be sent
    (exit 7), not one quietly left out of a backup."""
    top = tmp_path / "src" / "mine"
    done = put_tree_beside(shared, top, ".filexfer-notes.part")

    assert done.returncode == 7, done.stderr
    assert ".filexfer-notes.part: cannot be sent (bad path: names" in done.stderr
    assert sorted(p.name for p in (shared.area / "mine").iterdir()) == ["real.txt"]


def test_an_empty_get_name_is_refused(shared: Pair) -> None:
    end = HostileClient(shared.receiver.port, shared.sender_home)
    end.send(msgs.Get("", True, True))

    answer = end.recv()
    end.close()

    assert isinstance(answer, msgs.Error) and answer.code == Code.BAD_PATH
