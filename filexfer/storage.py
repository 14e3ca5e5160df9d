"""Where received bytes go: confinement, temp files, durable atomic commit.

How this works
--------------
Every write path (plain files, files inside a sent tree, downloads) goes
through one :class:`LocalStore`, and every name through
:func:`~filexfer.names.check_name` before anything touches the disk.
The system calls beneath (syncs, the no-replace rename, direct-I/O
buffers) are in :mod:`filexfer.disk`.

The store never follows a symlink under its root.  It walks to the parent
directory one component at a time with ``O_NOFOLLOW | O_DIRECTORY``
relative to the previous directory's descriptor, so a link anywhere on the
path (or one swapped in during the transfer) stops the walk instead of
redirecting it.  Data goes into ``.filexfer-<random>.part`` created with
``O_EXCL | O_NOFOLLOW`` in the destination directory itself; the final
name appears only in :meth:`PartFile.commit`, after the data is durable,
by ``link`` (refuses to replace anything) or, when overwriting was asked
for, ``rename`` (atomically replaces a regular file, never a directory).
Then the directory is synced.  A crash leaves at most a ``.part`` file,
which :meth:`LocalStore.remove_stale_parts` deletes on the next start,
unless it is a large file's part kept for a resume (named after the
file's name, size and mtime, locked while in use, deleted after a week).

The store never creates symlinks, devices or FIFOs: it creates only
directories and regular files.  Modes are reduced to ``0o755`` at most
(no setuid, setgid, sticky or group/other write bits), or with
``--keep-modes`` to ``0o777``.  Reading goes through the same walk:
:meth:`LocalStore.entries` lists and :meth:`LocalStore.open_file` opens
stored files without following a symlink or showing a part file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import stat
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from blake3 import blake3

from .disk import (
    DIRECT_ALIGN,
    O_DIRECT,
    rename_no_replace,
    start_writeback,
    syncfs,
    wait_for_files,
)
from .errors import Code, RefusedError
from .names import PART_PREFIX, PART_SUFFIX, NameLimits, check_name, is_part_name
from .printable import log_value, printable

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MODE_MASK = 0o755
# What --keep-modes allows: group and other write bits too, never the
# setuid, setgid or sticky bits.
KEEP_MODES_MASK = 0o777
# A part of at least RESUME_MIN bytes gets a name derived from the file's
# name, size and mtime, and is kept when the connection is lost, so that
# the same transfer started again resumes from it; kept parts older than
# KEEP_SECONDS are deleted at start-up.  A kept prefix is cut to a whole
# number of RESUME_STEP bytes (the chunk size, so direct I/O stays aligned).
RESUME_MIN = 8 << 20
RESUME_STEP = 1 << 20
RESUME_PREFIX = PART_PREFIX + "r"
KEEP_SECONDS = 7 * 86400
# A large file is handed to the disk in steps of this size while it is
# still arriving, so that the fsync before its commit finds little left to
# do, and dirty pages never pile up into one long stall.
WRITEBACK_STEP = 16 << 20
# The digest of a committed file, kept with it where the file system has
# user extended attributes: digest, then the size and mtime it is valid for.
DIGEST_ATTR = "user.filexfer.blake3"
_DIGEST_VALUE = struct.Struct(">32sQq")


class StoredEntry(NamedTuple):
    """A file or directory found in the store, for listings and downloads."""

    name: str
    size: int
    mtime_ns: int
    mode: int
    directory: bool
    digest: bytes | None = None


class FileVersion(NamedTuple):
    """Which file a name held, and whether it has changed since."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileVersion:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def refusal_for(exc: OSError) -> RefusedError:
    """Translate an OSError met while storing a file into a refusal."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RefusedError(f"not enough space ({exc.strerror})", Code.NO_SPACE)
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return RefusedError(
            "a path component is a symlink or not a directory", Code.NOT_REGULAR
        )
    if exc.errno == errno.EEXIST:
        return RefusedError("already exists", Code.EXISTS)
    if exc.errno == errno.EISDIR:
        return RefusedError("exists and is not a regular file", Code.NOT_REGULAR)
    return RefusedError(f"cannot write ({exc.strerror})", Code.IO_ERROR)


@dataclass
class Placement:
    """A checked name, with the space set aside for it."""

    name: str
    parts: tuple[str, ...]
    size: int
    overwrite: bool
    # A regular file of the offered size is already there (and may be
    # identical); only set when the caller asked for that case.
    exists: bool = False
    # Part name an interrupted transfer of this same file would have left.
    resume_name: str = ""
    released: bool = False


@dataclass
class PartFile:
    """An open temporary file that becomes the final name on commit."""

    store: LocalStore
    placement: Placement
    dir_fd: int
    part_name: str
    fd: int
    written: int = 0
    closed: bool = field(default=False)
    handed_to_disk: int = 0
    direct: bool = False
    resumable: bool = False

    def prefix_hasher(self) -> blake3:
        """A BLAKE3 hasher fed with the bytes already in the part."""
        hasher, done = blake3(), 0
        while done < self.written:
            block = os.pread(self.fd, min(RESUME_STEP, self.written - done), done)
            if not block:
                raise RefusedError("part file shrank", Code.IO_ERROR)
            hasher.update(block)
            done += len(block)
        return hasher

    def keep(self) -> None:
        """Close, leaving the part on disk for a later resume."""
        self._close_fd()
        if self.part_name:
            self.part_name = ""
            self.store.release(self.placement)

    def use_direct_io(self) -> bool:
        """Write by direct I/O from now on, where the file system allows.

        The caller promises that every buffer it passes to :meth:`write`
        starts at a DIRECT_ALIGN boundary in memory.  Lengths and offsets
        are checked here: the first write that is not aligned (normally the
        file's last) switches the file back to buffered writes.
        """
        if not O_DIRECT or self.written % DIRECT_ALIGN:
            return False
        try:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | O_DIRECT)
        except OSError:
            return False
        self.direct = True
        return True

    def _stop_direct_io(self) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~O_DIRECT)
        self.direct = False

    def write(self, data: memoryview | bytes) -> None:
        try:
            view = memoryview(data)
            if self.direct and len(view) % DIRECT_ALIGN:
                self._stop_direct_io()
            while view:
                count = self._write_some(view)
                view = view[count:]
                self.written += count
        except OSError as exc:
            raise refusal_for(exc) from exc
        if not self.direct and self.written - self.handed_to_disk >= WRITEBACK_STEP:
            start_writeback(
                self.fd, self.handed_to_disk, self.written - self.handed_to_disk
            )
            self.handed_to_disk = self.written

    def _write_some(self, view: memoryview) -> int:
        try:
            return os.write(self.fd, view)
        except OSError as exc:
            # A file system may take O_DIRECT at open and still refuse a
            # write; the data then goes the buffered way instead.
            if not self.direct or exc.errno != errno.EINVAL:
                raise
        self._stop_direct_io()
        return os.write(self.fd, view)

    def finish(self, mode: int, mtime_ns: int, digest: bytes | None = None) -> None:
        """Apply the offered mode (reduced) and mtime; remember the digest."""
        try:
            _set_metadata(self.fd, mode & self.store.mode_mask, mtime_ns)
        except OSError as exc:
            raise refusal_for(exc) from exc
        if digest is not None:
            _remember_digest(self.fd, digest, self.written, mtime_ns)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise refusal_for(exc) from exc

    def commit(self) -> None:
        """Give the (already durable) data its final name.

        Raises:
            RefusedError: the final name appeared meanwhile (EXISTS) or the
                rename failed; the part file is then removed.
        """
        final = self.placement.parts[-1]
        try:
            # Renamed while still open: a resumable part stays locked until
            # it has its final name, so no other session takes it for an
            # abandoned one and deletes it in between.
            if self.placement.overwrite:
                self._check_replaceable(final)
                os.rename(
                    self.part_name,
                    final,
                    src_dir_fd=self.dir_fd,
                    dst_dir_fd=self.dir_fd,
                )
            else:
                rename_no_replace(self.dir_fd, self.part_name, final)
        except OSError as exc:
            self.abort()
            raise refusal_for(exc) from exc
        self._close_fd()
        self.store.release(self.placement)

    def _check_replaceable(self, final: str) -> None:
        try:
            info = os.stat(final, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            raise OSError(errno.EISDIR, "exists and is a directory")

    def abort(self) -> None:
        """Remove the part file; safe to call more than once."""
        self._close_fd()
        if self.part_name:
            try:
                os.unlink(self.part_name, dir_fd=self.dir_fd)
            except OSError:
                pass
            self.part_name = ""
            self.store.release(self.placement)

    def _close_fd(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class LocalStore:
    """Receiver-side storage confined to one root directory."""

    def __init__(
        self,
        root: Path,
        limits: NameLimits = NameLimits(),
        min_free: int = 1 << 20,
        mode_mask: int = MODE_MASK,
        resume_min: int = RESUME_MIN,
    ) -> None:
        self.root = root
        self.limits = limits
        self.min_free = min_free
        self.mode_mask = mode_mask
        self.resume_min = resume_min
        self._reserved = 0
        self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._dirs: dict[tuple[str, ...], int] = {}
        # Folders found missing since the cache was last emptied: offers
        # run ahead of the data, so many name a folder not made yet.
        self._missing: set[tuple[str, ...]] = set()

    def close(self) -> None:
        self.close_dirs()
        os.close(self._root_fd)

    @property
    def open_dirs(self) -> int:
        """How many directory descriptors the store keeps open."""
        return len(self._dirs)

    def close_dirs(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        self._missing.clear()

    def free_bytes(self) -> int:
        info = os.fstatvfs(self._root_fd)
        return info.f_bavail * info.f_frsize

    def release(self, placement: Placement) -> None:
        """Give back a placement's space; once, however often it is called."""
        if not placement.released:
            placement.released = True
            self._reserved = max(0, self._reserved - placement.size)

    def hold_again(self, placement: Placement) -> None:
        """Set a released placement's space aside again, for a retry."""
        if placement.released:
            placement.released = False
            self._reserved += placement.size

    def reserve(
        self,
        name: str,
        size: int,
        overwrite: bool,
        same_size_ok: bool = False,
        mtime_ns: int | None = None,
    ) -> Placement:
        """Check that name may be written and that size fits; set it aside.

        Nothing is created on disk.  With ``same_size_ok``, an existing
        regular file of the same size is not refused but reported in the
        placement's ``exists`` (it may be identical).  With ``mtime_ns``,
        a large file gets the part name a resume would look for.

        Raises:
            RefusedError: bad path, exists, not a regular file, no space.
        """
        parts = check_name(name, self.limits)
        exists = self._check_target(parts, overwrite, size if same_size_ok else -1)
        self._check_space(name, 0 if exists else size)
        placement = Placement(name, parts, 0 if exists else size, overwrite, exists)
        if mtime_ns is not None and size >= self.resume_min and not exists:
            placement.resume_name = _resume_name(name, size, mtime_ns)
        self._reserved += placement.size
        return placement

    def _check_target(self, parts: tuple[str, ...], overwrite: bool, size: int) -> bool:
        """Refuse a target that may not be written; True if it has that size.

        A folder seen missing is not looked for again until the cache is
        emptied.  Should another session make it meanwhile, a file that
        appears in it is still met at the commit, which never replaces a
        file it was not allowed to.
        """
        folder = parts[:-1]
        if folder in self._missing:
            return False
        try:
            dir_fd = self._walk(folder, create=False)
        except FileNotFoundError:
            self._missing.add(folder)
            return False  # a parent is missing, so the target cannot exist
        except OSError as exc:
            raise refusal_for(exc) from exc
        try:
            info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(info.st_mode):
            raise RefusedError("exists and is not a regular file", Code.NOT_REGULAR)
        if info.st_size == size:
            return True
        if not overwrite:
            raise RefusedError("already exists", Code.EXISTS)
        return False

    def make_directory(self, name: str, mode: int) -> Placement:
        """Create a directory (and its parents) durably, if not there yet.

        Raises:
            RefusedError: bad path, or something else is under that name.
        """
        parts = check_name(name, self.limits)
        try:
            dir_fd = self._walk(parts[:-1], create=True)
            exists = False
            try:
                os.mkdir(parts[-1], 0o700, dir_fd=dir_fd)
            except FileExistsError:
                exists = True  # one already there keeps its mode
            fd = self._walk(parts, create=False)  # refuses a non-directory
            if not exists:
                os.fchmod(fd, mode & self.mode_mask)
            self._sync_path(parts)
        except OSError as exc:
            raise refusal_for(exc) from exc
        return Placement(name, parts, 0, False, exists)

    def resumable_part(self, placement: Placement) -> PartFile | None:
        """Open the part an interrupted transfer left, if there is one.

        The part is locked, so that two sessions never write one file, and
        cut to a whole number of RESUME_STEP bytes.
        """
        if not placement.resume_name:
            return None
        try:
            dir_fd = self._walk(placement.parts[:-1], create=False)
            fd = _open_locked(dir_fd, placement.resume_name, create=False)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            kept = min(size, placement.size) // RESUME_STEP * RESUME_STEP
            if kept:
                os.ftruncate(fd, kept)
                os.lseek(fd, kept, os.SEEK_SET)
        except OSError:
            kept = 0
        if not kept:
            os.close(fd)  # nothing usable; open_part replaces it
            return None
        name = placement.resume_name
        part = PartFile(self, placement, dir_fd, name, fd, kept, resumable=True)
        part.handed_to_disk = kept
        return part

    def _check_space(self, name: str, size: int) -> None:
        # "free" is what this file may use: neither the space set aside
        # for files on their way nor the --min-free the receiver keeps.
        usable = self.free_bytes() - self._reserved - self.min_free
        if size > usable:
            raise RefusedError(
                f"not enough space (needs {_mib(size)}, {_mib(max(0, usable))} free)",
                Code.NO_SPACE,
            )

    def _walk(self, parts: tuple[str, ...], create: bool) -> int:
        """Return a descriptor of the directory parts, never via a symlink."""
        if parts in self._dirs:
            return self._dirs[parts]
        fd = self._root_fd if not parts else self._walk(parts[:-1], create)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        if not parts:
            return fd
        try:
            child = os.open(parts[-1], flags, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # another session's
                os.mkdir(parts[-1], 0o755, dir_fd=fd)
            child = os.open(parts[-1], flags, dir_fd=fd)
        self._dirs[parts] = child
        self._missing.discard(parts)
        return child

    def open_part(self, placement: Placement) -> PartFile:
        """Create the directories and the exclusive temporary file.

        Raises:
            RefusedError: a component is a symlink or not a directory, or
                the disk refused.
        """
        try:
            dir_fd = self._walk(placement.parts[:-1], create=True)
            if placement.resume_name:
                part = self._new_resumable(placement, dir_fd)
                if part is not None:
                    return part
            part_name = f"{PART_PREFIX}{os.urandom(8).hex()}{PART_SUFFIX}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(part_name, flags | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            self.release(placement)
            raise refusal_for(exc) from exc
        return PartFile(self, placement, dir_fd, part_name, fd)

    def _new_resumable(self, placement: Placement, dir_fd: int) -> PartFile | None:
        """A fresh part under the resume name; None if another session has it.

        An old part under that name that nobody holds is replaced.
        """
        name = placement.resume_name
        # Made and locked under a name nobody else looks for, then given
        # the resume name: another session never finds it unlocked (and
        # takes it for abandoned) between its creation and its lock.
        fresh = f"{PART_PREFIX}{os.urandom(8).hex()}{PART_SUFFIX}"
        fd = _open_locked(dir_fd, fresh, create=True)
        try:
            published = _publish(dir_fd, fresh, name)
        except OSError:
            published = False
        if not published:
            with contextlib.suppress(OSError):
                os.unlink(fresh, dir_fd=dir_fd)
            os.close(fd)
            return None  # in use by another session
        return PartFile(self, placement, dir_fd, name, fd, resumable=True)

    def sync_all(self) -> bool:
        """Make every finished write on this file system durable."""
        return syncfs(self._root_fd)

    def sync_dirs(self, parts: Iterable[PartFile]) -> None:
        """Make the names on the parts' paths durable.

        A file is only as durable as the names leading to it: after a
        crash, a synced file in a new folder whose own name was never
        synced is lost with the folder.  Whether this session or another
        made a folder (and whether that one has synced it yet) is not
        known here, so every directory from the file's own up to the root
        is synced; a clean one costs some 30 us.  Files in several
        directories are synced at once with one file-system sync instead.
        """
        parts = list(parts)
        if len({part.dir_fd for part in parts}) > 1 and syncfs(self._root_fd):
            return
        for path in {part.placement.parts[:-1] for part in parts}:
            self._sync_path(path)

    def _sync_path(self, parts: tuple[str, ...]) -> None:
        """fsync the directory parts and each one above it, up to the root."""
        for depth in range(len(parts), -1, -1):
            os.fsync(self._walk(parts[:depth], create=False))

    def _find(self, name: str) -> tuple[int, str, os.stat_result]:
        """The parent descriptor, last component and lstat of a stored name.

        "" is the root itself.

        Raises:
            RefusedError: NOT_FOUND when it does not exist, is a symlink or
                a special file, or lies below one; BAD_PATH for bad names.
        """
        if not name:
            return self._root_fd, ".", os.fstat(self._root_fd)
        parts = check_name(name, self.limits)
        try:
            dir_fd = self._walk(parts[:-1], create=False)
            info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            # Out of descriptors (say) is not "not found": the caller may
            # retry, and the peer must not be told the file is missing.
            raise _not_found(name) if _gone(exc) else _unreadable(name, exc) from exc
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            raise _not_found(name)
        return dir_fd, parts[-1], info

    def is_directory(self, name: str) -> bool:
        """Whether a stored name is a directory (False for a file).

        Raises:
            RefusedError: as :meth:`_find`.
        """
        return stat.S_ISDIR(self._find(name)[2].st_mode)

    def entries(self, name: str, recursive: bool) -> Iterator[StoredEntry]:
        """The stored file or directory name; a directory's contents too.

        Symlinks, special files and part files are left out; nothing is
        followed out of the store.  Names are relative to the root.

        Raises:
            RefusedError: name does not exist (NOT_FOUND) or is bad.
        """
        dir_fd, last, info = wait_for_files(functools.partial(self._find, name))
        if not stat.S_ISDIR(info.st_mode):
            yield _entry(name, info, _stored_digest(dir_fd, last, info))
            return
        try:
            fd = _open_directory(last, dir_fd)
        except OSError as exc:  # replaced or removed meanwhile, or unreadable
            raise _not_found(name) if _gone(exc) else _unreadable(name, exc) from exc
        try:
            yield from _walk_entries(fd, name, recursive)
        finally:
            os.close(fd)

    def open_file(self, name: str) -> tuple[int, os.stat_result]:
        """Open a stored regular file for reading, never through a symlink.

        Raises:
            RefusedError: NOT_FOUND if it is missing or not a regular file.
        """
        dir_fd, last, _ = self._find(name)
        try:
            fd = os.open(
                last, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
        except OSError as exc:
            raise _not_found(name) if _gone(exc) else _unreadable(name, exc) from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise _not_found(name)
        return fd, info

    def refresh(
        self, name: str, version: FileVersion, metadata: tuple[int, int, bytes]
    ) -> None:
        """Give a stored file found identical the offered mode and mtime.

        metadata is (mode, mtime_ns, digest).  Only the version of the file
        that was hashed is touched, and the change is synced: the sender
        is told it is done once this returns.  A file replaced or changed
        since is left alone: another session's copy, committed later,
        stands, as it would had this one been sent.

        Raises:
            RefusedError: the file is gone, or the metadata cannot be set.
        """
        mode, mtime_ns, digest = metadata
        mode &= self.mode_mask
        fd, info = self.open_file(name)
        try:
            if FileVersion.of(info) != version:
                return
            if _holds(fd, info, (mode, mtime_ns, digest)):
                return  # nothing to change: no write, no sync
            _set_metadata(fd, mode, mtime_ns)
            _remember_digest(fd, digest, info.st_size, mtime_ns)
            os.fsync(fd)
        except OSError as exc:
            raise refusal_for(exc) from exc
        finally:
            os.close(fd)

    def remove_stale_parts(self) -> int:
        """Delete part files left by a crash; return how many went."""
        removed = 0
        for top, _dirs, files in os.walk(self.root, followlinks=False):
            for name in files:
                if is_part_name(name) and not _worth_keeping(os.path.join(top, name)):
                    try:
                        os.unlink(os.path.join(top, name))
                        removed += 1
                    except OSError as exc:
                        log.warning(
                            "event=storage.stale_part_kept path=%s error=%s",
                            log_value(name),
                            log_value(exc.strerror or ""),
                        )
        return removed


def _gone(exc: OSError) -> bool:
    """The name vanished, or a link or non-directory stands where it was."""
    return exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _unreadable(name: str, exc: OSError) -> RefusedError:
    """A stored name the store cannot read now (permissions, no descriptors)."""
    why = exc.strerror or str(exc)
    return RefusedError(f"'{printable(name)}': cannot read ({why})", Code.IO_ERROR)


def _not_found(name: str) -> RefusedError:
    return RefusedError(
        f"'{printable(name)}': no such file or directory", Code.NOT_FOUND
    )


def _resume_name(name: str, size: int, mtime_ns: int) -> str:
    key = blake3(f"{size}:{mtime_ns}:{name}".encode("utf-8", "surrogatepass"))
    return f"{RESUME_PREFIX}{key.hexdigest()[:32]}{PART_SUFFIX}"


def _worth_keeping(path: str) -> bool:
    """A part kept for a resume that is younger than KEEP_SECONDS."""
    if not os.path.basename(path).startswith(RESUME_PREFIX):
        return False
    try:
        age = time.time() - os.lstat(path).st_mtime
    except OSError:
        return False
    return age < KEEP_SECONDS


def _open_locked(dir_fd: int, name: str, create: bool) -> int:
    """Open a part for reading and writing and lock it, never via a symlink.

    Raises:
        OSError: it cannot be opened, is not a regular file (ELOOP,
            EISDIR) or another session holds the lock (EWOULDBLOCK).
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= (os.O_CREAT | os.O_EXCL) if create else 0
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EISDIR, "not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not create:
            _check_still_named(fd, dir_fd, name)
    except OSError:
        os.close(fd)
        raise
    return fd


def _check_still_named(fd: int, dir_fd: int, name: str) -> None:
    """Raise FileNotFoundError unless name still holds the file at fd.

    A session that held the part may have committed it (renamed it to
    its final name) between our open and our lock: what we locked is
    then a finished file, never to be cut, written or deleted as a part.
    Once we hold the lock, only we rename or delete what the name holds.
    """
    now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    then = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino):
        raise FileNotFoundError(errno.ENOENT, "part committed meanwhile", name)


def _publish(dir_fd: int, fresh: str, name: str) -> bool:
    """Rename a locked part to name, replacing an abandoned part there.

    Returns False when a session holds the part under name.
    """
    try:
        rename_no_replace(dir_fd, fresh, name)
        return True
    except FileExistsError:
        if not _remove_unheld(dir_fd, name):
            return False
    try:
        rename_no_replace(dir_fd, fresh, name)
    except FileExistsError:
        return False  # another session took the name meanwhile
    return True


def _remove_unheld(dir_fd: int, name: str) -> bool:
    """Delete the part under name unless a session holds it (False then)."""
    try:
        fd = _open_locked(dir_fd, name, create=False)
    except FileNotFoundError:
        return True  # committed or dropped meanwhile
    except OSError:
        return False
    try:
        os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(fd)
    return True


def _set_metadata(fd: int, mode: int, mtime_ns: int) -> None:
    os.fchmod(fd, mode)
    os.utime(fd, ns=(mtime_ns, mtime_ns))


def _holds(fd: int, info: os.stat_result, metadata: tuple[int, int, bytes]) -> bool:
    """Whether a file has this mode, mtime and remembered digest already."""
    mode, mtime_ns, digest = metadata
    if (stat.S_IMODE(info.st_mode), info.st_mtime_ns) != (mode, mtime_ns):
        return False
    return _remembered_digest(fd, info) == digest


def _remember_digest(fd: int, digest: bytes, size: int, mtime_ns: int) -> None:
    """Keep the digest with the file, for listings; valid while size and
    mtime stay."""
    try:
        os.setxattr(fd, DIGEST_ATTR, _DIGEST_VALUE.pack(digest, size, mtime_ns))
    except OSError:
        pass  # only a cache for listings: a file system without it is fine


def digest_of(fd: int) -> bytes:
    """BLAKE3 of a whole open file; the descriptor is closed."""
    hasher = blake3()
    try:
        while block := os.read(fd, RESUME_STEP):
            hasher.update(block)
    finally:
        os.close(fd)
    return hasher.digest()


def _entry(name: str, info: os.stat_result, digest: bytes | None) -> StoredEntry:
    directory = stat.S_ISDIR(info.st_mode)
    size = 0 if directory else info.st_size
    mode = stat.S_IMODE(info.st_mode)
    return StoredEntry(name, size, info.st_mtime_ns, mode, directory, digest)


def _walk_entries(top_fd: int, top: str, recursive: bool) -> Iterator[StoredEntry]:
    """Entries below an open directory, sorted, depth first.

    Only the names of one directory are held at a time (plain strings,
    the least memory a sorted listing can take).
    """
    try:
        names = sorted(wait_for_files(functools.partial(os.listdir, top_fd)))
    except OSError as exc:
        raise _unreadable(top or ".", exc) from exc
    for last in names:
        if is_part_name(last):
            continue
        name = f"{top}/{last}" if top else last
        try:
            info = os.stat(last, dir_fd=top_fd, follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile: not part of the listing
        if stat.S_ISREG(info.st_mode):
            yield _entry(name, info, _stored_digest(top_fd, last, info))
        elif stat.S_ISDIR(info.st_mode):
            yield _entry(name, info, None)
            if recursive:
                yield from _walk_below(top_fd, last, name)


def _walk_below(parent_fd: int, last: str, name: str) -> Iterator[StoredEntry]:
    try:
        fd = _open_directory(last, parent_fd)
    except OSError as exc:
        if _gone(exc):
            return  # replaced or removed meanwhile: not part of the listing
        raise _unreadable(name, exc) from exc
    try:
        yield from _walk_entries(fd, name, True)
    finally:
        os.close(fd)


def _open_directory(last: str, dir_fd: int) -> int:
    """Open a listed directory below dir_fd, never through a symlink."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    return wait_for_files(functools.partial(os.open, last, flags, dir_fd=dir_fd))


def _stored_digest(dir_fd: int, last: str, info: os.stat_result) -> bytes | None:
    """The digest remembered at commit, if it still matches the file."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = wait_for_files(functools.partial(os.open, last, flags, dir_fd=dir_fd))
    except OSError:
        return None
    try:
        return _remembered_digest(fd, info)
    finally:
        os.close(fd)


def _remembered_digest(fd: int, info: os.stat_result) -> bytes | None:
    """The digest kept with the file at fd, if still valid for its info."""
    try:
        value = os.getxattr(fd, DIGEST_ATTR)
    except OSError:
        return None
    if len(value) != _DIGEST_VALUE.size:
        return None
    digest, size, mtime_ns = _DIGEST_VALUE.unpack(value)
    return (
        bytes(digest) if (size, mtime_ns) == (info.st_size, info.st_mtime_ns) else None
    )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
