"""File-system calls that the os module lacks or that need care to use.

Syncs (``syncfs``, ``sync_file_range``, a directory's ``fsync``), a
rename that never replaces (``renameat2``), aligned buffers for direct
I/O, durable ``mkdir -p``, and living with a low limit on open files.
They are looked up in libc on first use, and each has a fallback or a
plain "unsupported" answer where the kernel or file system lacks it.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import FilexferError

_T = TypeVar("_T")


@functools.cache
def _libc(name: str) -> Callable[..., int] | None:
    """A libc function the os module lacks, or None where libc has none.

    Looked up on first use: ctypes and the lookups cost a few ms, which a
    command that stores nothing (``put``, ``ls``) should not pay.
    """
    import ctypes

    argtypes = {
        "syncfs": [ctypes.c_int],
        "sync_file_range": [
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_uint,
        ],
        "renameat2": [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint,
        ],
    }
    try:
        func = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None
    func.argtypes = argtypes[name]
    found: Callable[..., int] = func
    return found


# Out of descriptors, a session gives back what it holds, then waits up
# to OPEN_ATTEMPTS x OPEN_PAUSE for other sessions to do the same before
# it refuses a file (or, in the daemon, a whole session's area).
OPEN_ATTEMPTS = 250
OPEN_PAUSE = 0.02


def out_of_files(exc: BaseException) -> bool:
    """Whether exc (or the OSError behind a refusal) is a lack of descriptors."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.EMFILE, errno.ENFILE)


def wait_for_files(step: Callable[[], _T]) -> _T:
    """Run step; out of descriptors, try again while others may free some.

    For the daemon's steps that hold few descriptors of their own and
    wait for other sessions' (listings, downloads, reading its config).
    """
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return step()
        except (OSError, FilexferError) as exc:
            if attempt == OPEN_ATTEMPTS - 1 or not out_of_files(exc):
                raise
        time.sleep(OPEN_PAUSE)
    raise AssertionError("unreachable")


def raise_file_limit() -> int:
    """Raise this process's descriptor limit to what it may have; return it.

    Soft limits of 1024 are common, and receiving sessions (the daemon's,
    and ``get``'s) hold a part file for each file waiting in their commit
    batch.  Past the limit that remains, a session commits its batch early
    (see ReceiveSession) instead of refusing files.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # kept as it is; sessions then commit early
    return soft


def load_libc() -> None:
    """Look the libc functions up now, not on first use.

    For the daemon and ``get``: loading ctypes opens files, which must not
    wait until a session is out of descriptors and commits early to get
    some back.
    """
    for name in ("syncfs", "sync_file_range", "renameat2"):
        _libc(name)


def _libc_error(path: str | None = None) -> OSError:
    """The OSError for the errno the last libc call left."""
    import ctypes

    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), path)


_SYNC_FILE_RANGE_WRITE = 2

_RENAME_NOREPLACE = 1


def rename_no_replace(dir_fd: int, old: str, new: str) -> None:
    """Rename old to new inside one directory, failing if new exists.

    One atomic step where the kernel and file system offer it
    (renameat2 with RENAME_NOREPLACE); otherwise a hard link to the new
    name, which also fails on an existing name, then removal of the old.
    """
    renameat2 = _libc("renameat2")
    if renameat2 is not None:
        old_b, new_b = os.fsencode(old), os.fsencode(new)
        if renameat2(dir_fd, old_b, dir_fd, new_b, _RENAME_NOREPLACE) == 0:
            return
        error = _libc_error(new)
        if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise error
    os.link(old, new, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    os.unlink(old, dir_fd=dir_fd)


# Direct I/O (O_DIRECT) moves a large file from the buffer to the disk by
# DMA, without copying it through the page cache: the writing thread then
# costs almost no CPU and the fsync before commit has little left to do.
# It needs the memory, the length and the file offset of every write
# aligned to the device's block size; DIRECT_ALIGN covers the usual sizes.
DIRECT_ALIGN = 4096
O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where there is none


def aligned_buffer(size: int, lead: int = 0) -> memoryview:
    """A writable buffer of size bytes whose byte number ``lead`` is aligned.

    Used to receive a record so that its payload, which starts ``lead``
    bytes into the plaintext, can go to the disk by direct I/O.
    """
    assert 0 <= lead <= DIRECT_ALIGN, "internal error: lead past one block"
    memory = mmap.mmap(-1, DIRECT_ALIGN + size)
    return memoryview(memory)[DIRECT_ALIGN - lead : DIRECT_ALIGN - lead + size]


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range out, without waiting.

    Only a hint: durability still comes from fsync, and a kernel or file
    system without sync_file_range simply skips it.
    """
    sync_file_range = _libc("sync_file_range")
    if sync_file_range is not None:
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def sync_directory(path: Path) -> None:
    """Make the names in the directory at path durable.

    A file system that cannot sync a directory (EINVAL) is left as it is.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def make_directories(path: Path, mode: int = 0o777, parents: bool = True) -> None:
    """Create path (and, with parents, its missing parents) durably.

    Like ``Path.mkdir(mode, parents, exist_ok=True)``, except that the
    directory holding each level is synced, also when another process made
    that level meanwhile (it may not have synced it yet), so that what is
    later written below cannot vanish with an unsynced name in a crash.
    Only path itself gets mode; parents get the default.

    Raises:
        OSError: a level could not be created or synced, or something
            other than a directory is in the way.
    """
    missing: list[Path] = []  # levels still to make, the deepest first
    level = path
    while True:
        try:
            os.mkdir(level, mode if level == path else 0o777)
        except FileNotFoundError:
            above = level.parent
            if not parents or above == level or above.is_dir():
                raise  # nothing above is missing (a deleted cwd, /proc, ...)
            missing.append(level)
            level = above
            continue
        except FileExistsError:
            if not level.is_dir():
                raise
        sync_directory(level.parent)
        if not missing:
            return
        level = missing.pop()


def syncfs(fd: int) -> bool:
    """Flush the whole file system holding fd; False if unsupported."""
    call = _libc("syncfs")
    if call is None:
        return False
    if call(fd) != 0:
        raise _libc_error()
    return True
