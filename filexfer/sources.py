"""What a job sends: command-line paths made into named sources.

``put`` names each argument on the receiver by its last path component
and, with ``-r``, every regular file and empty folder below a directory
by its path under it.  Symlinks and special files are skipped with a
warning; names the receiver would refuse, and a name given twice, fail
here before anything connects.  Each file ends up with one
:class:`FileResult`, whether it failed here or was sent.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from .errors import FilexferError, LocalFileError, RefusedError, UsageError, os_reason
from .names import check_name, is_made_part_name
from .printable import printable

log = logging.getLogger(__name__)


class Source(NamedTuple):
    """A local file (or empty directory) and the name it gets on the receiver.

    ``opener``, when set, opens the file instead of its path (the daemon
    uses it to open stored files without following symlinks).
    ``refusal``, when set, is why the daemon cannot send what was asked
    for under that name (a folder asked for without recursive): it is
    offered empty and aborted with that reason, so that it fails alone.
    """

    path: str
    name: str
    directory: bool = False
    opener: Callable[[], int] | None = None
    refusal: RefusedError | None = None

    @property
    def empty(self) -> bool:
        """Whether it is offered with no data: a folder, or a refusal."""
        return self.directory or self.refusal is not None


@dataclass(slots=True)
class FileResult:
    """The outcome of one file of a job.

    ``name`` is the name on the receiver (or the one the file would have
    had), ``path`` the local path it was read from.
    """

    name: str
    path: str = ""
    size: int = 0
    digest: str | None = None
    seconds: float = 0.0
    error: FilexferError | None = None
    # Bytes the receiver already held (a resumed part, or the whole
    # identical file), which were therefore not sent.
    held: int = 0
    unchanged: bool = False
    directory: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.digest is not None


def _sources_under(
    top: str, base: str, sources: list[Source], failures: list[FileResult]
) -> None:
    """Add the regular files below a directory, sorted; links are skipped.

    A directory that cannot be listed becomes a failure of its own, so
    that a tree is never reported complete when part of it was not read.
    """

    def name_of(path: str) -> str:
        rel = os.path.relpath(path, top)
        return base if rel == "." else f"{base}/{rel.replace(os.sep, '/')}"

    def unreadable(exc: OSError) -> None:
        path = exc.filename if isinstance(exc.filename, str) else top
        why = f"cannot read directory ({os_reason(exc)})"
        failures.append(local_failure(name_of(path), path, why))

    for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
        dirnames.sort()
        prefix = name_of(dirpath)
        if not dirnames and not filenames:
            sources.append(Source(dirpath, prefix, directory=True))
        for name in sorted(filenames + [d for d in dirnames if _is_link(dirpath, d)]):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                log.warning("skipping %s: not a regular file", printable(path))
                continue
            if is_made_part_name(name):
                # Another such name is the user's: refused below, as reserved.
                log.warning(
                    "skipping %s: an unfinished filexfer download", printable(path)
                )
                continue
            sources.append(Source(path, f"{prefix}/{name}"))


def _is_link(dirpath: str, name: str) -> bool:
    return os.path.islink(os.path.join(dirpath, name))


def receiver_name(arg: str) -> str:
    """The name a command-line path gets on the receiver: its last part.

    Raises:
        UsageError: the path does not end in a name (``/``, ``.``, ``..``,
            or a path ending in ``/.`` or ``/..``).
    """
    last = arg.rstrip("/").rsplit("/", 1)[-1]
    if last in ("", ".", ".."):
        raise UsageError(
            f"cannot send '{printable(arg)}': it does not end in a name "
            "to give it on the receiver",
            hint="name it by a path that ends in its own name, "
            "e.g. ../photos instead of .",
        )
    return last


def collect_sources(
    args: list[str], recursive: bool
) -> tuple[list[Source], list[FileResult]]:
    """Expand command-line paths into sources and local failures.

    Raises:
        UsageError: an argument does not end in a name (checked for every
            argument before anything is read).
    """
    names = [receiver_name(arg) for arg in args]
    sources: list[Source] = []
    failures: list[FileResult] = []
    for arg, name in zip(args, names, strict=True):
        try:
            info = os.stat(arg)
        except OSError as exc:
            failures.append(local_failure(name, arg, exc.strerror or str(exc)))
            continue
        if stat.S_ISDIR(info.st_mode) and recursive:
            _sources_under(arg, name, sources, failures)
        elif stat.S_ISDIR(info.st_mode):
            failures.append(local_failure(name, arg, "is a directory (use -r)"))
        elif not stat.S_ISREG(info.st_mode):
            failures.append(local_failure(name, arg, "not a regular file"))
        else:
            sources.append(Source(arg, name))
    return _drop_bad_names(sources, failures)


def _drop_bad_names(
    sources: list[Source], failures: list[FileResult]
) -> tuple[list[Source], list[FileResult]]:
    """Fail, here and before connecting, names the receiver would refuse."""
    kept, seen = [], set()
    for source in sources:
        try:
            check_name(source.name)
        except RefusedError as exc:
            why = f"cannot be sent ({exc})"
            failures.append(local_failure(source.name, source.path, why))
            continue
        if source.name in seen:
            why = "same name twice in one job"
            failures.append(local_failure(source.name, source.path, why))
            continue
        seen.add(source.name)
        kept.append(source)
    return kept, failures


def local_failure(name: str, path: str, why: str) -> FileResult:
    error = LocalFileError(f"{printable(path)}: {why}")
    return FileResult(name, path, error=error)


def unsent(sources: list[Source], error: FilexferError) -> list[FileResult]:
    """Results for sources a failed session never got to: each has error."""
    return [
        FileResult(s.name, s.path, error=error, directory=s.directory) for s in sources
    ]
