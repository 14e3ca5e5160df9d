"""Tests for filexfer.storage: names, confinement, part files, commits."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from filexfer.disk import (
    DIRECT_ALIGN,
    aligned_buffer,
)
from filexfer.errors import Code, RefusedError
from filexfer.names import PART_PREFIX, PART_SUFFIX
from filexfer.storage import (
    MODE_MASK,
    RESUME_STEP,
    WRITEBACK_STEP,
    FileVersion,
    LocalStore,
    PartFile,
)
from tests.helpers import identity, leftovers

# -- a store on a temporary root --------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def store(root: Path) -> Iterator[LocalStore]:
    local = LocalStore(root, min_free=0)
    yield local
    local.close()


def write_part(
    store: LocalStore, name: str, data: bytes, overwrite: bool = False
) -> PartFile:
    placement = store.reserve(name, len(data), overwrite)
    part = store.open_part(placement)
    part.write(data)
    part.sync()
    return part


def store_file(
    store: LocalStore, name: str, data: bytes, overwrite: bool = False
) -> None:
    part = write_part(store, name, data, overwrite)
    part.commit()


def tree(root: Path) -> dict[str, bytes]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


# -- reserve ---------------------------------------------------------------


def test_reserve_creates_nothing_on_disk(store: LocalStore, root: Path) -> None:
    store.reserve("new/dir/file.txt", 10, False)

    assert list(root.iterdir()) == []


def test_reserve_refuses_existing_file(store: LocalStore, root: Path) -> None:
    (root / "data.bin").write_bytes(b"precious")

    with pytest.raises(RefusedError) as caught:
        store.reserve("data.bin", 3, False)

    assert caught.value.code is Code.EXISTS
    assert (root / "data.bin").read_bytes() == b"precious"


def test_reserve_allows_existing_file_with_overwrite(
    store: LocalStore, root: Path
) -> None:
    (root / "data.bin").write_bytes(b"precious")

    placement = store.reserve("data.bin", 3, True)

    assert placement.overwrite and placement.parts == ("data.bin",)
    assert (root / "data.bin").read_bytes() == b"precious"


@pytest.mark.parametrize("overwrite", [False, True])
def test_reserve_refuses_directory_target(
    store: LocalStore, root: Path, overwrite: bool
) -> None:
    (root / "photos").mkdir()
    (root / "photos" / "a.jpg").write_bytes(b"keep")

    with pytest.raises(RefusedError) as caught:
        store.reserve("photos", 3, overwrite)

    assert caught.value.code is Code.NOT_REGULAR
    assert (root / "photos" / "a.jpg").read_bytes() == b"keep"


@pytest.mark.parametrize("overwrite", [False, True])
def test_reserve_refuses_symlink_as_final_entry(
    store: LocalStore, root: Path, tmp_path: Path, overwrite: bool
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside")
    (root / "link.txt").symlink_to(outside)

    with pytest.raises(RefusedError) as caught:
        store.reserve("link.txt", 3, overwrite)

    assert caught.value.code is Code.NOT_REGULAR
    assert outside.read_bytes() == b"outside"


@pytest.mark.parametrize("overwrite", [False, True])
def test_reserve_refuses_dangling_symlink(
    store: LocalStore, root: Path, tmp_path: Path, overwrite: bool
) -> None:
    """A link to nothing is not a place to create a file (C02)."""
    (root / "dangling.txt").symlink_to(tmp_path / "new.txt")

    with pytest.raises(RefusedError) as caught:
        store.reserve("dangling.txt", 3, overwrite)

    assert caught.value.code is Code.NOT_REGULAR
    assert not (tmp_path / "new.txt").exists()


def test_symlink_swapped_in_at_the_final_name_is_refused(
    store: LocalStore, root: Path, tmp_path: Path
) -> None:
    """A link planted before commit never redirects the data (C02)."""
    outside = tmp_path / "target.txt"
    outside.write_bytes(b"KEEP")
    part = write_part(store, "race.txt", b"PAYLOAD")
    (root / "race.txt").symlink_to(outside)

    with pytest.raises(RefusedError) as caught:
        part.commit()

    assert caught.value.code is Code.EXISTS
    assert (root / "race.txt").is_symlink()
    assert outside.read_bytes() == b"KEEP"
    assert leftovers(root) == []


def test_overwrite_replaces_a_swapped_in_symlink_not_its_target(
    store: LocalStore, root: Path, tmp_path: Path
) -> None:
    """With overwrite, the link entry itself is replaced (C02)."""
    outside = tmp_path / "target.txt"
    outside.write_bytes(b"KEEP")
    part = write_part(store, "race.txt", b"PAYLOAD", overwrite=True)
    (root / "race.txt").symlink_to(outside)

    part.commit()

    assert not (root / "race.txt").is_symlink()
    assert (root / "race.txt").read_bytes() == b"PAYLOAD"
    assert outside.read_bytes() == b"KEEP"
    assert leftovers(root) == []


def test_reserve_refuses_symlinked_parent_directory(
    store: LocalStore, root: Path, tmp_path: Path
) -> None:
    """A symlink already under the root is never followed (C02)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)

    with pytest.raises(RefusedError) as caught:
        store.reserve("link/file.txt", 3, False)

    # docs/protocol.md, section 6: a symlinked parent is NOT_REGULAR.
    assert caught.value.code is Code.NOT_REGULAR
    assert list(outside.iterdir()) == []


def test_reserve_refuses_file_as_parent_directory(
    store: LocalStore, root: Path
) -> None:
    (root / "plain").write_bytes(b"keep")

    with pytest.raises(RefusedError):
        store.reserve("plain/file.txt", 3, False)

    assert (root / "plain").read_bytes() == b"keep"


def test_reserve_refuses_bad_names_before_touching_disk(
    store: LocalStore, tmp_path: Path
) -> None:
    with pytest.raises(RefusedError) as caught:
        store.reserve("../escape.txt", 3, False)

    assert caught.value.code is Code.BAD_PATH
    assert not (tmp_path / "escape.txt").exists()


def test_reserve_refuses_when_space_would_run_out(root: Path) -> None:
    greedy = LocalStore(root, min_free=0)
    free = greedy.free_bytes()
    try:
        with pytest.raises(RefusedError) as caught:
            greedy.reserve("huge.bin", free * 2 + (1 << 30), False)
        assert caught.value.code is Code.NO_SPACE
    finally:
        greedy.close()


def test_reserve_keeps_the_minimum_free(root: Path) -> None:
    strict = LocalStore(root, min_free=1 << 62)
    try:
        with pytest.raises(RefusedError) as caught:
            strict.reserve("empty.txt", 0, False)
        assert caught.value.code is Code.NO_SPACE
    finally:
        strict.close()


def test_a_refusal_for_space_counts_the_minimum_free_out(root: Path) -> None:
    """The free space a refusal shows is what the file could have used:
    never more than it needs, as "needs 6.7 MiB, 7.4 MiB free" was."""
    keeping = LocalStore(root, min_free=0)
    keeping.min_free = keeping.free_bytes() - (2 << 20)  # about 2 MiB usable
    try:
        with pytest.raises(RefusedError) as caught:
            keeping.reserve("big.bin", 3 << 20, False)
    finally:
        keeping.close()

    shown = re.search(r"\(needs 3\.0 MiB, ([0-9.]+) MiB free\)", str(caught.value))
    assert shown is not None, caught.value
    assert float(shown.group(1)) < 3.0  # other writers may move it a little


def test_reservations_add_up_until_released(root: Path) -> None:
    local = LocalStore(root, min_free=0)
    try:
        half = local.free_bytes() // 2 + (1 << 20)
        first = local.reserve("a.bin", half, False)
        with pytest.raises(RefusedError):
            local.reserve("b.bin", half, False)

        local.release(first)

        local.reserve("b.bin", half, False)
    finally:
        local.close()


# -- part files and commit --------------------------------------------------


def test_part_file_lives_under_a_temporary_name_until_commit(
    store: LocalStore, root: Path
) -> None:
    part = write_part(store, "dir/data.bin", b"content")

    assert not (root / "dir" / "data.bin").exists()
    [name] = os.listdir(root / "dir")
    assert name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)
    assert len(name) == len(PART_PREFIX) + 16 + len(PART_SUFFIX)

    part.commit()

    assert os.listdir(root / "dir") == ["data.bin"]
    assert (root / "dir" / "data.bin").read_bytes() == b"content"
    assert leftovers(root) == []


def test_part_file_is_private_until_finished(store: LocalStore, root: Path) -> None:
    part = write_part(store, "data.bin", b"x")
    [name] = os.listdir(root)

    assert stat.S_IMODE(os.stat(root / name).st_mode) == 0o600
    part.abort()


def test_empty_file_commits(store: LocalStore, root: Path) -> None:
    """An empty file is stored like any other (C07)."""
    part = write_part(store, "empty.txt", b"")
    part.finish(0o644, 0)
    part.commit()

    assert (root / "empty.txt").read_bytes() == b""
    assert stat.S_ISREG(os.stat(root / "empty.txt").st_mode)
    assert leftovers(root) == []


def test_commit_refuses_a_name_that_appeared_meanwhile(
    store: LocalStore, root: Path
) -> None:
    part = write_part(store, "data.bin", b"new")
    (root / "data.bin").write_bytes(b"old")

    with pytest.raises(RefusedError) as caught:
        part.commit()

    assert caught.value.code is Code.EXISTS
    assert (root / "data.bin").read_bytes() == b"old"
    assert leftovers(root) == []


def test_a_file_made_in_a_folder_seen_missing_is_still_never_replaced(
    store: LocalStore, root: Path
) -> None:
    """A folder found missing at one offer is not looked for again at the
    next (until the batch's commit); a file another session stored there
    meanwhile is then first met at the commit, and kept."""
    store.release(store.reserve("late/first.bin", 3, False))
    (root / "late").mkdir()
    (root / "late" / "second.bin").write_bytes(b"theirs")

    part = write_part(store, "late/second.bin", b"ours")
    with pytest.raises(RefusedError) as caught:
        part.commit()

    assert caught.value.code is Code.EXISTS
    assert (root / "late" / "second.bin").read_bytes() == b"theirs"
    assert leftovers(root) == []

    store.close_dirs()  # after a batch: looked for afresh
    with pytest.raises(RefusedError, match="already exists"):
        store.reserve("late/second.bin", 4, False)


def test_overwrite_replaces_atomically(store: LocalStore, root: Path) -> None:
    """--overwrite swaps in a new inode; a reader of the old one is unharmed (C04)."""
    target = root / "data.bin"
    target.write_bytes(b"old content")
    old_inode = target.stat().st_ino
    part = write_part(store, "data.bin", b"brand new content", overwrite=True)

    with open(target, "rb") as reader:
        assert target.read_bytes() == b"old content"  # unchanged before commit
        part.commit()
        assert reader.read() == b"old content"

    assert target.read_bytes() == b"brand new content"
    assert target.stat().st_ino != old_inode
    assert leftovers(root) == []


def test_overwrite_never_replaces_a_directory_that_appeared(
    store: LocalStore, root: Path
) -> None:
    part = write_part(store, "photos", b"file", overwrite=True)
    (root / "photos").mkdir()
    (root / "photos" / "a.jpg").write_bytes(b"keep")

    with pytest.raises(RefusedError) as caught:
        part.commit()

    assert caught.value.code is Code.NOT_REGULAR
    assert (root / "photos" / "a.jpg").read_bytes() == b"keep"
    assert leftovers(root) == []


def test_abort_removes_the_part_file(store: LocalStore, root: Path) -> None:
    part = write_part(store, "dir/data.bin", b"half")

    part.abort()
    part.abort()  # harmless a second time

    assert os.listdir(root / "dir") == []
    assert leftovers(root) == []


def test_abort_releases_the_reservation(root: Path) -> None:
    local = LocalStore(root, min_free=0)
    try:
        size = local.free_bytes() // 2 + (1 << 20)
        part = local.open_part(local.reserve("a.bin", size, False))
        part.abort()

        local.reserve("b.bin", size, False)
    finally:
        local.close()


def test_finish_reduces_mode_and_sets_mtime(store: LocalStore, root: Path) -> None:
    part = write_part(store, "tool", b"#!/bin/sh\n")
    part.finish(0o6777, 1_234_567_890_123_456_789)
    part.commit()

    info = os.stat(root / "tool")
    assert stat.S_IMODE(info.st_mode) == 0o6777 & MODE_MASK == 0o755
    assert info.st_mtime_ns == 1_234_567_890_123_456_789


def test_symlink_swapped_in_after_reserve_is_not_followed(
    store: LocalStore, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    placement = store.reserve("later/file.txt", 4, False)
    (root / "later").symlink_to(outside)

    with pytest.raises(RefusedError):
        store.open_part(placement)

    assert list(outside.iterdir()) == []
    assert leftovers(root) == []


def test_store_creates_only_directories_and_regular_files(
    store: LocalStore, root: Path
) -> None:
    store_file(store, "a/b/c.txt", b"c")
    store_file(store, "a/d.txt", b"d")

    kinds = {p.relative_to(root).as_posix(): p.lstat().st_mode for p in root.rglob("*")}
    assert sorted(kinds) == ["a", "a/b", "a/b/c.txt", "a/d.txt"]
    assert all(stat.S_ISDIR(m) or stat.S_ISREG(m) for m in kinds.values())
    assert tree(root) == {"a/b/c.txt": b"c", "a/d.txt": b"d"}


# -- stale parts -------------------------------------------------------------


def test_remove_stale_parts_deletes_only_part_files(
    store: LocalStore, root: Path, tmp_path: Path
) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    stale = [
        root / ".filexfer-0123456789abcdef.part",
        root / "sub" / "deeper" / ".filexfer-fedcba9876543210.part",
    ]
    kept = [
        root / "keep.part",
        root / ".filexfer-notes.txt",
        root / "sub" / "filexfer-0123.part",
    ]
    for path in stale + kept:
        path.write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".filexfer-0000000000000000.part").write_bytes(b"not ours")
    (root / "link").symlink_to(outside)

    assert store.remove_stale_parts() == 2

    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    assert (outside / ".filexfer-0000000000000000.part").exists()


def test_remove_stale_parts_on_a_clean_root_removes_nothing(
    store: LocalStore, root: Path
) -> None:
    store_file(store, "a.txt", b"a")

    assert store.remove_stale_parts() == 0
    assert tree(root) == {"a.txt": b"a"}


# -- direct I/O, write-back hints and the no-replace rename ----------------


def aligned_chunks(data: bytes, size: int) -> list[memoryview]:
    """Data cut into size-byte pieces, each in an aligned buffer (lead 0)."""
    pieces = []
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        buffer = aligned_buffer(len(piece))
        buffer[:] = piece
        pieces.append(buffer)
    return pieces


@pytest.mark.parametrize(
    "size",
    [0, 1, DIRECT_ALIGN - 1, DIRECT_ALIGN, 3 * (1 << 20) + 500, 3 << 20],
)
def test_direct_io_part_file_keeps_every_byte(
    store: LocalStore, root: Path, size: int
) -> None:
    data = os.urandom(size)
    placement = store.reserve("big.bin", size, False)
    part = store.open_part(placement)
    part.use_direct_io()
    for piece in aligned_chunks(data, 1 << 20):
        part.write(piece)
    part.sync()
    part.commit()
    assert (root / "big.bin").read_bytes() == data
    assert leftovers(root) == []


def test_direct_io_falls_back_after_an_unaligned_write(
    store: LocalStore, root: Path
) -> None:
    placement = store.reserve("mixed.bin", 3 * DIRECT_ALIGN + 10, False)
    part = store.open_part(placement)
    direct = part.use_direct_io()
    part.write(aligned_chunks(b"a" * DIRECT_ALIGN, DIRECT_ALIGN)[0])
    part.write(b"b" * 10)
    assert not part.direct
    part.write(b"c" * (3 * DIRECT_ALIGN))
    part.sync()
    part.commit()
    expected = b"a" * DIRECT_ALIGN + b"b" * 10 + b"c" * (3 * DIRECT_ALIGN)
    assert (root / "mixed.bin").read_bytes() == expected
    assert direct in (True, False)


def test_direct_io_is_refused_mid_block(store: LocalStore) -> None:
    placement = store.reserve("odd.bin", 10, False)
    part = store.open_part(placement)
    part.write(b"x" * 10)
    assert part.use_direct_io() is False
    assert not part.direct
    part.abort()


def test_large_buffered_file_hands_data_to_the_disk_as_it_goes(
    store: LocalStore, root: Path
) -> None:
    data = os.urandom(WRITEBACK_STEP + 12345)
    placement = store.reserve("steady.bin", len(data), False)
    part = store.open_part(placement)
    for start in range(0, len(data), 1 << 20):
        part.write(data[start : start + (1 << 20)])
    assert part.handed_to_disk == WRITEBACK_STEP
    part.sync()
    part.commit()
    assert (root / "steady.bin").read_bytes() == data


# -- durable names of new directories ----------------------------------------
#
# A crash cannot be staged here, so these tests watch the fsync calls
# (the real ones still run): a file is durable only when the directory
# holding each new name on its path has been synced after that name
# appeared.


def test_one_file_in_new_directories_syncs_every_new_name(
    store: LocalStore, root: Path, synced: list[tuple[int, int]]
) -> None:
    """A batch of one file syncs the directories above its own, too."""
    part = write_part(store, "a/b/c/data.bin", b"content")
    part.commit()
    store.sync_dirs([part])

    for directory in (root, root / "a", root / "a" / "b", root / "a" / "b" / "c"):
        assert identity(directory) in synced, directory


def test_a_folder_another_session_made_is_synced_before_a_file_in_it(
    root: Path, synced: list[tuple[int, int]]
) -> None:
    """Another session made a/b and has not synced it yet (it is still
    streaming its own file there); a file stored here below it must not be
    confirmed before the names a and b are durable."""
    other, mine = LocalStore(root, min_free=0), LocalStore(root, min_free=0)
    try:
        theirs = other.open_part(other.reserve("a/b/theirs.bin", 1, False))
        synced.clear()

        part = write_part(mine, "a/b/mine.bin", b"2")
        part.commit()
        mine.sync_dirs([part])

        for directory in (root, root / "a", root / "a" / "b"):
            assert identity(directory) in synced, directory
        theirs.abort()
    finally:
        other.close()
        mine.close()


def test_new_directories_of_a_failed_file_are_synced_with_the_next(
    store: LocalStore, root: Path, synced: list[tuple[int, int]]
) -> None:
    """The next file below a directory made for a failed one needs its name."""
    failed = write_part(store, "a/b/failed.bin", b"x")
    failed.abort()
    store.close_dirs()

    part = write_part(store, "a/b/ok.bin", b"y")
    part.commit()
    store.sync_dirs([part])

    assert identity(root) in synced
    assert identity(root / "a") in synced


def test_make_directory_syncs_the_names_of_its_new_parents(
    store: LocalStore, root: Path, synced: list[tuple[int, int]]
) -> None:
    store.make_directory("x/y/z", 0o755)

    assert (root / "x" / "y" / "z").is_dir()
    for directory in (root, root / "x", root / "x" / "y"):
        assert identity(directory) in synced, directory


def test_a_directory_made_meanwhile_by_another_session_is_used(
    store: LocalStore,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    synced: list[tuple[int, int]],
) -> None:
    """Two sessions storing below the same new folder race to create it;
    the one that loses uses the folder the other made (and syncs its name)."""
    real_mkdir = os.mkdir

    def the_other_session_was_first(
        path: str, mode: int = 0o777, *, dir_fd: int | None = None
    ) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        real_mkdir(path, mode, dir_fd=dir_fd)  # ours, now too late: EEXIST

    monkeypatch.setattr(os, "mkdir", the_other_session_was_first)
    part = write_part(store, "shared/deeper/file.bin", b"mine")
    part.commit()
    store.sync_dirs([part])

    assert (root / "shared" / "deeper" / "file.bin").read_bytes() == b"mine"
    assert identity(root) in synced
    assert identity(root / "shared") in synced


def test_refresh_touches_only_the_version_that_was_hashed(
    store: LocalStore, root: Path, synced: list[tuple[int, int]]
) -> None:
    """An identical file takes the offered mode and mtime, synced; one
    replaced or changed since it was hashed (another session's later
    copy) is left alone, with its own digest."""
    store_file(store, "f.bin", b"same bytes")
    version = FileVersion.of(os.stat(root / "f.bin"))

    store.refresh("f.bin", version, (0o700, 1_000_000_000_000_000_001, bytes(32)))
    info = os.stat(root / "f.bin")
    assert (stat.S_IMODE(info.st_mode), info.st_mtime_ns) == (
        0o700,
        1_000_000_000_000_000_001,
    )
    assert identity(root / "f.bin") in synced

    hashed = FileVersion.of(info)
    (root / "new.bin").write_bytes(b"other")
    os.replace(root / "new.bin", root / "f.bin")  # another session's commit
    store.refresh("f.bin", hashed, (0o755, 5, bytes(32)))
    assert stat.S_IMODE(os.stat(root / "f.bin").st_mode) != 0o755
    assert os.stat(root / "f.bin").st_mtime_ns != 5


def test_refresh_with_nothing_to_change_writes_nothing(
    store: LocalStore, root: Path, synced: list[tuple[int, int]]
) -> None:
    """Sent again with the mode, mtime and digest it has, a stored file is
    not written or synced: a download reading it meanwhile sees no change
    (not even of its ctime), and a rerun of a backup costs no fsync."""
    store_file(store, "f.bin", b"same bytes")
    metadata = (0o640, 1_000_000_000_000_000_001, bytes(32))
    store.refresh("f.bin", FileVersion.of(os.stat(root / "f.bin")), metadata)
    before = os.stat(root / "f.bin")
    synced.clear()

    store.refresh("f.bin", FileVersion.of(before), metadata)

    assert os.stat(root / "f.bin").st_ctime_ns == before.st_ctime_ns
    assert synced == []


def finished_part(store: LocalStore, data: bytes) -> PartFile:
    """A resumable part of f.bin holding data, ready to commit."""
    part = store.open_part(store.reserve("f.bin", len(data), False, mtime_ns=1))
    part.write(data)
    part.finish(0o644, 1, blake3(data).digest())
    return part


@contextlib.contextmanager
def committed_at_next_lock(
    part: PartFile, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[bool]]:
    """Within, the next non-blocking lock first commits part: another
    session's commit landing between an open of its name and the lock."""
    real_flock = fcntl.flock
    committed: list[bool] = []

    def commit_then_lock(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_NB and not committed:
            committed.append(True)
            part.commit()  # renamed to f.bin, its lock released
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", commit_then_lock)
    try:
        yield committed
    finally:
        monkeypatch.setattr(fcntl, "flock", real_flock)


def test_a_resume_part_committed_while_another_session_locks_it_is_left_alone(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two identical uploads share a resume part name.  If the first
    commits its part (renames it to the final name) between the second
    opening that name and locking it, the second must neither delete nor
    write the committed file: it starts a part of its own."""
    data = b"x" * 64
    first_store = LocalStore(root, min_free=0, resume_min=1)
    second_store = LocalStore(root, min_free=0, resume_min=1)
    first = finished_part(first_store, data)

    with committed_at_next_lock(first, monkeypatch):
        placement = second_store.reserve("f.bin", 64, True, mtime_ns=1)
        second = second_store.open_part(placement)
    second.write(b"y" * 64)
    second.abort()
    first_store.close()
    second_store.close()

    assert (root / "f.bin").read_bytes() == data
    assert leftovers(root) == []


def test_a_part_committed_while_another_session_would_resume_it_stays_whole(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second identical upload looking for a part to resume opens the
    name, and the first session commits that part before the lock is
    taken: the committed file must not be cut and resumed into."""
    data = os.urandom(2 * RESUME_STEP + 5)
    first_store = LocalStore(root, min_free=0, resume_min=1)
    second_store = LocalStore(root, min_free=0, resume_min=1)
    first = finished_part(first_store, data)

    again = second_store.reserve("f.bin", len(data), True, mtime_ns=1)
    with committed_at_next_lock(first, monkeypatch) as committed:
        found = second_store.resumable_part(again)
    second_store.release(again)
    first_store.close()
    second_store.close()

    assert committed and found is None
    assert (root / "f.bin").read_bytes() == data
