"""Unauthenticated strangers: garbage, huge length prefixes, half handshakes,
slow trickles and hundreds of connections at once.

A stranger must not make the receiver write a byte, buffer more than one
handshake message, hold a connection slot past the handshake timeout, or
lock authorized senders out for long: while the strangers run, a real
`put` succeeds or fails fast with a clear message. The daemon's memory
stays bounded and it never logs a traceback.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from filexfer import messages as msgs
from filexfer.errors import Code
from filexfer.server import SILENT_EVICT
from tests.attackers import (
    Crowd,
    HostileClient,
    LogWatch,
    assert_serving,
    closed_by_peer,
    garbage,
    half_handshake,
    open_pair,
    stranger,
)
from tests.helpers import Pair, cli, leftovers, random_file, sha256

MiB_IN_KIB = 1024


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Pair]:
    """A receiver whose handshake timeout is long (30 s), so that a prompt
    close proves a check, not a timer."""
    pair = open_pair(tmp_path, "--handshake-timeout", "30")
    yield pair
    pair.receiver.stop()


def assert_clean(pair: Pair, watch: LogWatch) -> None:
    """Nothing on disk, no traceback, no crash line; still serving."""
    text = watch.text()
    assert "Traceback" not in text and "crashed" not in text, text
    assert " ERROR " not in text, text
    assert list(pair.area.iterdir()) == []
    assert_serving(pair, "still-serving.bin")
    (pair.area / "still-serving.bin").unlink()


# -- one stranger at a time ---------------------------------------------------


FIRST_BYTES = {
    "ff-ff-ff-ff": b"\xff\xff\xff\xff",
    "frame-1025": struct.pack(">H", 1025),
    "frame-0": struct.pack(">H", 0),
    "frame-5": struct.pack(">H", 5) + b"hello",
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "low-order-point": struct.pack(">H", 32) + bytes(32),
}


@pytest.mark.parametrize("which", list(FIRST_BYTES))
def test_bad_first_bytes_are_dropped_at_once(guarded: Pair, which: str) -> None:
    watch = LogWatch(guarded.receiver)
    sock = stranger(guarded.receiver.port, FIRST_BYTES[which])

    assert closed_by_peer(sock, timeout=10)
    sock.close()
    lines = watch.lines("WARNING", "session.handshake_failed")
    assert len(lines) == 1, watch.text()
    assert "peer=127.0.0.1:" in lines[0]
    assert_clean(guarded, watch)


def test_oversized_frame_after_a_valid_first_message_is_dropped(
    guarded: Pair,
) -> None:
    watch = LogWatch(guarded.receiver)
    sock = half_handshake(guarded.receiver.port)
    sock.sendall(struct.pack(">H", 1025))

    assert closed_by_peer(sock, timeout=10)
    sock.close()
    watch.wait_for("WARNING event=session.handshake_failed .*too long")
    assert_clean(guarded, watch)


def test_megabytes_of_garbage_cost_nothing(guarded: Pair) -> None:
    watch = LogWatch(guarded.receiver)
    for seed in range(20):
        sock = stranger(guarded.receiver.port, garbage(1 << 20, seed))
        assert closed_by_peer(sock, timeout=10)
        sock.close()

    assert len(watch.lines("WARNING", "session.handshake_failed")) == 20
    assert guarded.receiver.peak_rss_kib() < 100 * MiB_IN_KIB
    assert_clean(guarded, watch)


def test_random_short_inputs_never_crash_the_receiver(guarded: Pair) -> None:
    """Every length and prefix of the first message, chosen at random."""
    watch = LogWatch(guarded.receiver)
    crowd = Crowd()
    with crowd:
        for seed in range(200):
            data = garbage(seed % 90, seed)
            frame = struct.pack(">H", len(data)) + data
            crowd.add(stranger(guarded.receiver.port, frame if seed % 2 else data))
        for sock in crowd.socks:
            with contextlib.suppress(OSError):  # maybe closed already
                sock.shutdown(socket.SHUT_WR)
        assert crowd.closed_count(timeout=10) == 200

    watch.wait_lines("WARNING", "session.handshake_failed", 200)
    assert_clean(guarded, watch)


def test_random_third_messages_never_crash_the_receiver(guarded: Pair) -> None:
    """A valid start, then a third message of random length and content."""
    watch = LogWatch(guarded.receiver)
    with Crowd() as crowd:
        for seed in range(100):
            sock = half_handshake(guarded.receiver.port)
            data = garbage(random.Random(seed).randrange(0, 1025), seed)
            sock.sendall(struct.pack(">H", len(data)) + data)
            crowd.add(sock)
        assert crowd.closed_count(timeout=10) == 100

    watch.wait_lines("WARNING", "session.handshake_failed", 100)
    assert_clean(guarded, watch)


def test_silent_stranger_is_dropped_at_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    pair = open_pair(tmp_path, "--handshake-timeout", "1")
    try:
        watch = LogWatch(pair.receiver)
        silent = stranger(pair.receiver.port)
        half = half_handshake(pair.receiver.port)
        started = time.monotonic()

        assert closed_by_peer(silent, timeout=10)
        assert closed_by_peer(half, timeout=10)
        assert time.monotonic() - started < 8
        lines = watch.lines("WARNING", "session.handshake_failed")
        assert len(lines) == 2
        assert all(
            "sender stopped responding during the handshake (not finished within"
            " 1 s)" in line
            for line in lines
        ), lines
        assert_clean(pair, watch)
    finally:
        pair.receiver.stop()


def test_trickling_stranger_is_dropped_at_the_handshake_deadline(
    tmp_path: Path,
) -> None:
    """One byte every 0.2 s never trips a per-read timeout; the deadline
    for the whole handshake still ends it."""
    pair = open_pair(tmp_path, "--handshake-timeout", "1")
    try:
        watch = LogWatch(pair.receiver)
        sock = stranger(pair.receiver.port)
        started = time.monotonic()
        closed = False
        for byte in struct.pack(">H", 1000) + garbage(1000):
            time.sleep(0.2)
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if time.monotonic() - started > 15:
                break

        assert closed or closed_by_peer(sock, timeout=1)
        assert time.monotonic() - started < 8
        watch.wait_for("WARNING event=session.handshake_failed .*within 1 s")
        sock.close()
    finally:
        pair.receiver.stop()


# -- strangers with a key -----------------------------------------------------


def test_unauthorized_sender_is_told_and_writes_nothing(
    tmp_path: Path,
) -> None:
    pair = open_pair(tmp_path)
    try:
        watch = LogWatch(pair.receiver)
        end = HostileClient(pair.receiver.port, tmp_path / "stranger-home")
        with_data = [
            msgs.Offer(0, 4, 0, 0o644, False, "intruder.txt"),
            msgs.Data(b"evil"),
            msgs.End(0, 4, bytes(32)),
        ]
        try:
            end.send(*with_data)
        except OSError:
            pass  # it may already have hung up
        answer = end.recv()
        assert answer == msgs.Error(Code.NOT_AUTHORIZED, "sender key not authorized")
        assert end.recv() is None
        lines = watch.lines("WARNING", "session.unauthorized")
        assert len(lines) == 1 and "is not authorized" in lines[0]
        assert list(pair.area.iterdir()) == []

        source = random_file(tmp_path / "src" / "no.bin", 10)
        done = cli_put_as(pair, tmp_path / "stranger-home", source)
        assert done.returncode == 4, done.stderr
        lines = done.stderr.splitlines()
        assert lines[0] == "filexfer: error: receiver: sender key not authorized"
        assert [line[:16] for line in lines[1:]] in ([], ["filexfer: hint: "])
        assert list(pair.area.iterdir()) == []
    finally:
        pair.receiver.stop()


def cli_put_as(
    pair: Pair, home: Path, source: Path
) -> subprocess.CompletedProcess[str]:
    return cli(
        [
            "put",
            "--fingerprint",
            pair.receiver_fingerprint,
            source,
            pair.receiver.address,
        ],
        home,
    )


def test_unauthorized_handshakes_do_not_cost_channel_memory(
    tmp_path: Path,
) -> None:
    """Sixty strangers with valid keys at once: each costs the receiver a
    handshake, not a channel's megabyte buffers."""
    pair = open_pair(tmp_path)
    try:
        watch = LogWatch(pair.receiver)
        strangers = [
            HostileClient(pair.receiver.port, tmp_path / f"stranger-{i % 4}")
            for i in range(60)
        ]
        for end in strangers:
            assert end.recv() == msgs.Error(
                Code.NOT_AUTHORIZED, "sender key not authorized"
            )
            end.close()

        assert pair.receiver.peak_rss_kib() < 100 * MiB_IN_KIB
        # Each line is logged just after its Error was sent: wait for all.
        assert len(watch.wait_lines("WARNING", "session.unauthorized", 60)) == 60
        assert_clean(pair, watch)
    finally:
        pair.receiver.stop()


def test_unauthorized_sender_that_keeps_talking_is_cut_off(
    tmp_path: Path,
) -> None:
    """Refused, it keeps trickling bytes: the receiver stops listening
    within about a second instead of draining it forever."""
    pair = open_pair(tmp_path)
    try:
        end = HostileClient(pair.receiver.port, tmp_path / "stranger-home")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 15:
            try:
                end.send_raw(b"x")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        assert closed
        assert time.monotonic() - started < 8
    finally:
        pair.receiver.stop()


# -- crowds -------------------------------------------------------------------


def test_handshake_slot_limit_refuses_at_once(tmp_path: Path) -> None:
    pair = open_pair(tmp_path, "--max-handshakes", "2", "--handshake-timeout", "30")
    try:
        watch = LogWatch(pair.receiver)
        with Crowd() as crowd:
            crowd.add(half_handshake(pair.receiver.port))
            crowd.add(half_handshake(pair.receiver.port))
            third = stranger(pair.receiver.port)
            assert closed_by_peer(third, timeout=5)
            third.close()

            source = random_file(tmp_path / "src" / "locked-out.bin", 100)
            started = time.monotonic()
            done = pair.put(source)
            assert time.monotonic() - started < 10
            assert_refused_while_full(done)
            assert len(watch.lines("WARNING", "session.refused")) == 2
            assert "reason=too_many_handshakes" in watch.text()

        watch.wait_lines("WARNING", "session.handshake_failed", 2)
        done = pair.put(source)
        assert done.returncode == 0, done.stderr
    finally:
        pair.receiver.stop()


def test_silent_connections_give_their_slots_to_a_sender(tmp_path: Path) -> None:
    """Connections that send nothing cannot lock senders out: with every
    handshake slot taken, a newcomer takes the slot of the one silent
    longest, once that has been silent for SILENT_EVICT seconds.  Those
    that have begun a handshake keep theirs (the test above)."""
    pair = open_pair(tmp_path, "--max-handshakes", "2", "--handshake-timeout", "30")
    try:
        watch = LogWatch(pair.receiver)
        with Crowd() as crowd:
            first = stranger(pair.receiver.port)
            crowd.add(first)
            crowd.add(stranger(pair.receiver.port))
            time.sleep(SILENT_EVICT + 0.5)

            source = random_file(tmp_path / "src" / "through.bin", 100)
            done = pair.put(source)

            assert done.returncode == 0, done.stderr
            assert closed_by_peer(first, timeout=5)
            evicted = watch.lines("WARNING", "session.evicted")
            assert len(evicted) == 1 and "reason=silent" in evicted[0]
            assert "too_many_handshakes" not in watch.text()
        assert sha256(pair.area / "through.bin") == sha256(source)
    finally:
        pair.receiver.stop()


def test_a_stream_of_silent_connections_does_not_lock_senders_out(
    tmp_path: Path,
) -> None:
    """New idle connections arriving all the time (20 a second for two
    slots): none is ever a second old, yet a sender still gets through,
    taking the slot of one that has said nothing for 50 ms."""
    pair = open_pair(tmp_path, "--max-handshakes", "2", "--handshake-timeout", "30")
    stop = threading.Event()
    idle: list[socket.socket] = []

    def flood() -> None:
        while not stop.wait(0.05):
            with contextlib.suppress(OSError):
                idle.append(stranger(pair.receiver.port))

    flooding = threading.Thread(target=flood, daemon=True)
    flooding.start()
    try:
        time.sleep(0.5)
        source = random_file(tmp_path / "src" / "through-a-flood.bin", 100)
        for _ in range(3):
            done = pair.put("--overwrite", "--retry", "2", source)
            assert done.returncode == 0, done.stderr
        assert sha256(pair.area / "through-a-flood.bin") == sha256(source)
    finally:
        stop.set()
        flooding.join()
        for sock in idle:
            sock.close()
        pair.receiver.stop()


def assert_refused_while_full(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 3, done.stderr
    assert done.stderr == (
        "filexfer: error: receiver closed the connection during the handshake\n"
        "filexfer: hint: it may be at its limit of connections; try again later\n"
    )


@pytest.mark.slow
def test_hundreds_of_strangers_at_once(tmp_path: Path) -> None:
    """300 connections: silent ones, half handshakes, huge length prefixes
    and garbage, all held open. Authorized puts fail fast with a clear
    message while every slot is taken, and succeed as soon as one frees.
    Memory stays bounded throughout; nothing is written."""
    pair = open_pair(tmp_path, "--handshake-timeout", "4")
    try:
        watch = LogWatch(pair.receiver)
        source = random_file(tmp_path / "src" / "crowded.bin", 100_000)
        with Crowd() as crowd:
            for index in range(300):
                kind = index % 4
                if kind == 0:
                    crowd.add(stranger(pair.receiver.port))
                elif kind == 1:
                    crowd.add(half_handshake(pair.receiver.port))
                elif kind == 2:
                    crowd.add(stranger(pair.receiver.port, b"\xff\xff\xff\xff"))
                else:
                    crowd.add(stranger(pair.receiver.port, garbage(4096, index)))

            started = time.monotonic()
            during = pair.put(source)
            took = time.monotonic() - started
            assert during.returncode == 0 or (during.returncode == 3 and took < 10), (
                during.stderr
            )
            if during.returncode == 3:
                assert_refused_while_full(during)

            # Slots free up at the handshake timeout at the latest.
            time.sleep(5)
            after = pair.put("--overwrite", source)
            assert after.returncode == 0, after.stderr
            assert pair.receiver.peak_rss_kib() < 100 * MiB_IN_KIB

        assert sha256(pair.area / "crowded.bin") == sha256(source)
        assert leftovers(pair.area) == []
        assert "reason=too_many_handshakes" in watch.text()
        text = watch.text()
        assert "Traceback" not in text and "crashed" not in text
    finally:
        pair.receiver.stop()
