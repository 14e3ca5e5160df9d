"""Fixtures: identities, a running receiver, an authorized sender."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers import Pair, Receiver, quick_pair_maker


@pytest.fixture
def sender_home(tmp_path: Path) -> Path:
    home = tmp_path / "sender-home"
    home.mkdir()
    return home


@pytest.fixture
def receiver_home(tmp_path: Path) -> Path:
    home = tmp_path / "receiver-home"
    home.mkdir()
    return home


@pytest.fixture
def start_receiver(
    tmp_path: Path, receiver_home: Path
) -> Iterator[Callable[..., Receiver]]:
    """Start `filexfer recv` processes; every one is stopped after the test."""
    started: list[Receiver] = []

    def start(*extra: str, root: Path | None = None) -> Receiver:
        index = len(started)
        receiver = Receiver(
            home=receiver_home,
            root=root or tmp_path / f"out{index or ''}",
            log_path=tmp_path / f"recv{index or ''}.log",
            extra=extra,
        )
        started.append(receiver)
        return receiver.start()

    yield start
    for receiver in started:
        if receiver.process is not None:
            receiver.stop()


@pytest.fixture
def make_pair(
    tmp_path: Path,
    sender_home: Path,
    receiver_home: Path,
    start_receiver: Callable[..., Receiver],
) -> Callable[..., Pair]:
    """An authorized sender and a running receiver (extra recv flags allowed).

    The keys are set up in-process; the `id` and `allow` commands
    themselves are tested in test_keys.py.
    """
    return quick_pair_maker(tmp_path, sender_home, receiver_home, start_receiver)


@pytest.fixture
def pair(make_pair: Callable[..., Pair]) -> Pair:
    return make_pair()


def recv_flags(**flags: object) -> Sequence[str]:
    """`recv_flags(idle_timeout=2)` -> ["--idle-timeout", "2"]."""
    out: list[str] = []
    for name, value in flags.items():
        out += [f"--{name.replace('_', '-')}", str(value)]
    return out


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(device, inode) of everything fsynced, in order.

    A crash cannot be staged in a test, so durability tests watch the
    fsync calls instead (the real ones still run).
    """
    calls: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        calls.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls
