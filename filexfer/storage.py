"""Where received bytes go: confinement, temp files, durable atomic commit.

How this works
--------------
Every write path (plain files, files inside a sent tree, downloads) goes
through one :class:`LocalStore`, and every name through
:func:`check_name`.  A name is a relative POSIX path of UTF-8 components;
the store refuses it before touching the disk if it is empty, absolute,
has an empty, ``.`` or ``..`` component, holds NUL, a backslash or a
control character, or breaks the length and depth limits.

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
which :meth:`LocalStore.remove_stale_parts` deletes on the next start.

The store never creates symlinks, devices or FIFOs: it creates only
directories and regular files.  Modes are reduced to ``0o755`` at most
(no setuid, setgid, sticky or group/other write bits).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Code, RefusedError
from .printable import printable

log = logging.getLogger(__name__)

PART_PREFIX = ".filexfer-"
PART_SUFFIX = ".part"
MODE_MASK = 0o755


@dataclass(frozen=True)
class NameLimits:
    """Limits on names a peer may send; all have CLI flags on recv."""

    max_component: int = 255  # bytes of UTF-8, the usual NAME_MAX
    max_path: int = 4096  # bytes of UTF-8 for the whole relative name
    max_depth: int = 32  # components


def _refuse(why: str) -> RefusedError:
    # No name in the text: log lines and the sender's message add it.
    return RefusedError(f"bad path: {why}", Code.BAD_PATH)


def _check_component(name: str, part: str, limits: NameLimits) -> None:
    if part in ("", ".", ".."):
        raise _refuse(f"component {part!r} is not allowed")
    if len(part.encode("utf-8", "surrogatepass")) > limits.max_component:
        raise _refuse("a component is too long")
    for ch in part:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F or ch == "\\":
            raise _refuse("control character or backslash in name")
        if 0xD800 <= code <= 0xDFFF:
            raise _refuse("name is not valid UTF-8")


def check_name(name: str, limits: NameLimits = NameLimits()) -> tuple[str, ...]:
    """Validate a peer-supplied relative name and split it into components.

    Raises:
        RefusedError: with code BAD_PATH, saying what is wrong.
    """
    if not name:
        raise _refuse("empty name")
    if name.startswith("/"):
        raise _refuse("absolute path")
    if len(name.encode("utf-8", "surrogatepass")) > limits.max_path:
        raise _refuse("name is too long")
    parts = tuple(name.split("/"))
    if len(parts) > limits.max_depth:
        raise _refuse("too many directory levels")
    for part in parts:
        _check_component(name, part, limits)
    return parts


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        func: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
        return func
    except (AttributeError, OSError):
        return None


_SYNCFS = _libc_syncfs()


def syncfs(fd: int) -> bool:
    """Flush the whole file system holding fd; False if unsupported."""
    if _SYNCFS is None:
        return False
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def refusal_for(exc: OSError) -> RefusedError:
    """Translate an OSError met while storing a file into a refusal."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RefusedError(f"not enough space ({exc.strerror})", Code.NO_SPACE)
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return _refuse("a path component is a symlink or not a directory")
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

    def write(self, data: memoryview | bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                count = os.write(self.fd, view)
                view = view[count:]
                self.written += count
        except OSError as exc:
            raise refusal_for(exc) from exc

    def finish(self, mode: int, mtime_ns: int) -> None:
        """Apply the offered mode (reduced) and mtime to the data."""
        try:
            os.fchmod(self.fd, mode & MODE_MASK)
            os.utime(self.fd, ns=(mtime_ns, mtime_ns))
        except OSError as exc:
            raise refusal_for(exc) from exc

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
        self._close_fd()
        try:
            if self.placement.overwrite:
                self._check_replaceable(final)
                os.rename(
                    self.part_name,
                    final,
                    src_dir_fd=self.dir_fd,
                    dst_dir_fd=self.dir_fd,
                )
            else:
                os.link(
                    self.part_name,
                    final,
                    src_dir_fd=self.dir_fd,
                    dst_dir_fd=self.dir_fd,
                    follow_symlinks=False,
                )
                os.unlink(self.part_name, dir_fd=self.dir_fd)
        except OSError as exc:
            self.abort()
            raise refusal_for(exc) from exc
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
        self, root: Path, limits: NameLimits = NameLimits(), min_free: int = 1 << 20
    ) -> None:
        self.root = root
        self.limits = limits
        self.min_free = min_free
        self._reserved = 0
        self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._dirs: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        self.close_dirs()
        os.close(self._root_fd)

    def close_dirs(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def free_bytes(self) -> int:
        info = os.fstatvfs(self._root_fd)
        return info.f_bavail * info.f_frsize

    def release(self, placement: Placement) -> None:
        self._reserved = max(0, self._reserved - placement.size)

    def reserve(self, name: str, size: int, overwrite: bool) -> Placement:
        """Check that name may be written and that size fits; set it aside.

        Nothing is created on disk.

        Raises:
            RefusedError: bad path, exists, not a regular file, no space.
        """
        parts = check_name(name, self.limits)
        self._check_target(name, parts, overwrite)
        self._check_space(name, size)
        self._reserved += size
        return Placement(name, parts, size, overwrite)

    def _check_target(self, name: str, parts: tuple[str, ...], overwrite: bool) -> None:
        try:
            dir_fd = self._walk(parts[:-1], create=False)
        except FileNotFoundError:
            return  # a parent is missing, so the target cannot exist
        except OSError as exc:
            raise refusal_for(exc) from exc
        try:
            info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(info.st_mode):
            raise RefusedError("exists and is not a regular file", Code.NOT_REGULAR)
        if not overwrite:
            raise RefusedError("already exists", Code.EXISTS)

    def _check_space(self, name: str, size: int) -> None:
        free = self.free_bytes()
        needed = size + self._reserved + self.min_free
        if needed > free:
            raise RefusedError(
                "not enough space (needs "
                f"{_mib(size)}, {_mib(max(0, free - self._reserved))} free)",
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
            os.mkdir(parts[-1], 0o755, dir_fd=fd)
            child = os.open(parts[-1], flags, dir_fd=fd)
        self._dirs[parts] = child
        return child

    def open_part(self, placement: Placement) -> PartFile:
        """Create the directories and the exclusive temporary file.

        Raises:
            RefusedError: a component is a symlink or not a directory, or
                the disk refused.
        """
        try:
            dir_fd = self._walk(placement.parts[:-1], create=True)
            part_name = f"{PART_PREFIX}{secrets.token_hex(8)}{PART_SUFFIX}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(part_name, flags | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            self.release(placement)
            raise refusal_for(exc) from exc
        return PartFile(self, placement, dir_fd, part_name, fd)

    def sync_all(self) -> bool:
        """Make every finished write on this file system durable."""
        return syncfs(self._root_fd)

    def sync_dirs(self, parts: Iterable[PartFile]) -> None:
        for fd in {part.dir_fd for part in parts}:
            os.fsync(fd)

    def remove_stale_parts(self) -> int:
        """Delete part files left by a crash; return how many went."""
        removed = 0
        for top, _dirs, files in os.walk(self.root, followlinks=False):
            for name in files:
                if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX):
                    try:
                        os.unlink(os.path.join(top, name))
                        removed += 1
                    except OSError as exc:
                        log.warning(
                            "event=storage.stale_part_kept path=%s error=%s",
                            printable(name),
                            exc.strerror,
                        )
        return removed


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
