"""The file-system calls beneath the store: buffers, renames, mkdir -p."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from pathlib import Path

import pytest

from filexfer.disk import (
    DIRECT_ALIGN,
    aligned_buffer,
    make_directories,
    rename_no_replace,
)
from tests.helpers import identity


def test_aligned_buffer_puts_the_lead_byte_on_a_block_boundary() -> None:
    buffer = aligned_buffer(1000, lead=1)
    assert len(buffer) == 1000
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    assert (address + 1) % DIRECT_ALIGN == 0


def test_rename_no_replace_never_clobbers(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"new content")
    (tmp_path / "taken").write_bytes(b"precious")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            rename_no_replace(dir_fd, "old", "taken")
        rename_no_replace(dir_fd, "old", "free")
    finally:
        os.close(dir_fd)
    assert (tmp_path / "taken").read_bytes() == b"precious"
    assert (tmp_path / "free").read_bytes() == b"new content"
    assert not (tmp_path / "old").exists()


def test_make_directories_creates_and_syncs_each_level(
    tmp_path: Path, synced: list[tuple[int, int]]
) -> None:
    target = tmp_path / "p" / "q" / "r"
    make_directories(target, 0o700)

    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    for directory in (tmp_path, tmp_path / "p", tmp_path / "p" / "q"):
        assert identity(directory) in synced, directory

    # Already there, perhaps made meanwhile by another process that has
    # not synced it yet: its name is synced again (once, cheaply).
    synced.clear()
    make_directories(target, 0o700)
    assert synced == [identity(tmp_path / "p" / "q")]


def test_make_directories_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        make_directories(tmp_path / "file")
    with pytest.raises(NotADirectoryError):
        make_directories(tmp_path / "file" / "below")


def test_make_directories_where_nothing_can_be_made_fails_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent that exists and still refuses a child (a deleted working
    directory, /proc) is one error, not an endless retry."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()

    with pytest.raises(FileNotFoundError):
        make_directories(Path("new") / "deeper")


def test_make_directories_goes_as_deep_as_the_system_allows(tmp_path: Path) -> None:
    """No recursion limit: a path of 1,100 levels is made or refused by the
    file system, never by Python."""
    deep = tmp_path.joinpath(*["d"] * 1100)
    try:
        make_directories(deep)
    except OSError as exc:  # a path longer than PATH_MAX
        assert exc.errno == errno.ENAMETOOLONG
    else:
        assert deep.is_dir()
    finally:
        # Removed here, deepest first: shutil.rmtree, which pytest uses to
        # clear old temp dirs, recurses and cannot go this deep.
        level = deep
        while level != tmp_path:
            with contextlib.suppress(FileNotFoundError):
                level.rmdir()
            level = level.parent


def test_make_directories_without_parents_needs_them(tmp_path: Path) -> None:
    """An area is made only inside an existing --dir: one deleted while the
    daemon runs is not quietly rebuilt, maybe on another file system."""
    with pytest.raises(FileNotFoundError):
        make_directories(tmp_path / "gone" / "area", 0o700, parents=False)
    assert not (tmp_path / "gone").exists()
