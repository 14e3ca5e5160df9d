"""What a job tells its user: progress bars, per-file JSON, summary, exit.

How this works
--------------
Progress bars are drawn with tqdm on stderr, only when asked for (by
default when stderr is a terminal).  At the end of a job every file gets
one JSON object on stdout with ``--json``; in a multi-file job each
file's own error gets one line on stderr, and a summary line follows.
:func:`job_error` picks the one error (and so the exit code) the whole
job ends with: 7 when some files failed and others arrived.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO, cast

import click

from .errors import (
    FilexferError,
    IntegrityError,
    InterruptError,
    LocalFileError,
    PartialError,
    os_reason,
)
from .printable import printable
from .sources import FileResult


class Debug:
    """Whether errors are printed with their traceback (``--debug``)."""

    enabled = False


def print_error(exc: FilexferError) -> None:
    """``filexfer: error: ...`` and its hint, on stderr."""
    if Debug.enabled:
        import traceback

        traceback.print_exception(exc)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    click.echo(f"filexfer: error: {message}", err=True)
    if exc.hint:
        click.echo(f"filexfer: hint: {exc.hint}", err=True)


class Progress:
    """tqdm bars on stderr: overall, and per file when there are several."""

    def __init__(self, enabled: bool, total: int, files: int) -> None:
        self.overall: Any = None
        self.current: Any = None
        if not enabled or sys.stderr is None:
            return
        from tqdm import tqdm

        options: dict[str, Any] = dict(
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.2,
        )
        desc = "total" if files > 1 else ""
        self.overall = tqdm(total=total, desc=desc, leave=True, **options)
        if files > 1:
            # The per-file bar goes away when done; the total stays.
            self.current = tqdm(total=0, position=1, leave=False, **options)

    def start(self, name: str, size: int) -> None:
        if self.current is not None:
            self.current.reset(total=size)
            self.current.set_description_str(printable(name)[-40:], refresh=False)
        elif self.overall is not None:
            self.overall.set_description_str(printable(name)[-40:], refresh=False)

    def advance(self, count: int) -> None:
        if self.overall is not None:
            self.overall.update(count)
        if self.current is not None:
            self.current.update(count)

    def close(self) -> None:
        for bar in (self.current, self.overall):
            if bar is not None:
                bar.close()


class _Output:
    """Why stdout stopped taking the command's output, once it has."""

    lost: OSError | None = None


class _Guarded:
    """A standard stream whose failed writes never fail the command.

    What it cannot take (a pipe whose reader has gone, a full disk, a
    stream closed before start) is dropped, and the job runs on.  For
    stdout the first failure is kept, for :func:`lost_output`; for stderr
    there is nowhere left to tell anyone.
    """

    def __init__(self, stream: TextIO | None, keep_failure: bool) -> None:
        self._stream = stream
        self._keep = keep_failure

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return getattr(self._stream, "errors", None) or "strict"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError("a text stream")  # click probes for binary ones
        if text:
            self._attempt(lambda stream: stream.write(text))
        return len(text)

    def flush(self) -> None:
        if self._stream is not None:
            self._attempt(lambda stream: stream.flush())

    def _attempt(self, action: Callable[[TextIO], object]) -> None:
        failure: OSError
        if self._stream is None:
            failure = OSError(errno.EBADF, os.strerror(errno.EBADF))
        else:
            try:
                action(self._stream)
                return
            except OSError as exc:
                failure = exc
            except ValueError:  # closed under us
                failure = OSError(errno.EBADF, os.strerror(errno.EBADF))
        if self._keep and _Output.lost is None:
            _Output.lost = failure

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_streams() -> None:
    """Make failed writes to stdout and stderr harmless for the whole run.

    A stderr closed before start stays None (nothing is drawn or said);
    a closed stdout is guarded, so that output meant for it counts as
    lost.
    """
    if not isinstance(sys.stdout, _Guarded):
        sys.stdout = cast(TextIO, _Guarded(sys.stdout, keep_failure=True))
    if sys.stderr is not None and not isinstance(sys.stderr, _Guarded):
        sys.stderr = cast(TextIO, _Guarded(sys.stderr, keep_failure=False))


def emit(line: str) -> None:
    """Print one line of the command's output (JSON, a listing, a key).

    Once stdout has failed to take a line, the rest is dropped: the job
    goes on, its messages still reach stderr, and :func:`lost_output`
    tells the end.
    """
    if _Output.lost is None:
        click.echo(line)


def lost_output() -> LocalFileError | None:
    """The error to end with if some output could not be written."""
    if _Output.lost is None:
        return None
    return LocalFileError(
        f"cannot write to standard output ({os_reason(_Output.lost)}); "
        "output is missing"
    )


def json_line(result: FileResult) -> str:
    record: dict[str, object] = {}
    _add_name(record, "name", result.name)
    _add_name(record, "path", result.path)
    record |= {
        "status": "ok" if result.ok else "failed",
        "bytes": result.size,
        "digest": None if result.directory else result.digest,
        "digest_algorithm": "blake3",
        "seconds": round(result.seconds, 6),
        "type": "directory" if result.directory else "file",
        "unchanged": result.unchanged,
        "resumed_from": 0 if result.unchanged else result.held,
    }
    if result.error is not None:
        record["error"] = str(result.error)  # names in it went through printable
        record["exit_code"] = result.error.exit_code
    import json  # only --json needs it: not loaded for every command

    return json.dumps(record, ensure_ascii=True)


def _add_name(record: dict[str, object], key: str, text: str) -> None:
    """A name as strict UTF-8 text, and its exact bytes when that is not it.

    A local name that is not UTF-8 reaches us with its bad bytes as lone
    surrogates (os.fsdecode), which no strict JSON reader takes: they are
    shown as U+FFFD, and the bytes follow in hex under ``<key>_hex``.
    """
    raw = text.encode("utf-8", "surrogateescape")
    record[key] = raw.decode("utf-8", "replace")
    if record[key] != text:
        record[f"{key}_hex"] = raw.hex()


def report(
    results: list[FileResult],
    session_error: FilexferError | None,
    as_json: bool,
    quiet: bool,
    timing: tuple[str, float],
    final: FilexferError | None = None,
) -> None:
    """Print per-file JSON, per-file errors of a multi-file job, a summary.

    ``timing`` is the verb for the summary ("sent", "received") and the
    job's seconds.  ``final``, the error the job ends with, is left to the
    caller, so it is printed once; so is the session's error when it is
    that error or the files it ended share it.
    """
    for result in results:
        if as_json:
            emit(json_line(result))
        error = result.error
        if error is not None and error is not session_error and len(results) > 1:
            click.echo(f"filexfer: error: {error}", err=True)
    done = [r for r in results if r.ok]
    if session_error is not None and done and final is not session_error:
        print_error(session_error)  # the job ends with PartialError instead
    if quiet or as_json:
        return
    if not done and (len(results) == 1 or session_error is not None):
        return  # nothing arrived; the one error the caller prints says why
    click.echo(f"filexfer: {summary(results, *timing)}", err=True)


def summary(results: list[FileResult], verb: str, seconds: float) -> str:
    """``sent 3 file(s), 1,024 bytes in 0.20 s (0.0 MB/s), 2 unchanged``."""
    done = [r for r in results if r.ok and not r.directory]
    unchanged = sum(r.unchanged for r in done)
    moved = sum(r.size - r.held for r in done)
    rate = moved / seconds / 1e6 if seconds > 0 else 0.0
    failed = sum(not r.ok for r in results)
    tail = f", {unchanged} unchanged" if unchanged else ""
    tail += f", {failed} failed" if failed else ""
    return (
        f"{verb} {len(done) - unchanged} file(s), {moved:,} bytes in "
        f"{seconds:.2f} s ({rate:.1f} MB/s){tail}"
    )


def job_error(
    results: list[FileResult],
    session_error: FilexferError | None,
    strict: bool = False,
) -> FilexferError | None:
    """The error the whole job ends with, if any file failed.

    7 when some files arrived and others did not; when none arrived, the
    session's error if it failed, else the error of the (first) failed file.
    An interruption is always 130.  With ``strict`` (downloads), a peer
    that broke the protocol or failed an integrity check fails the whole
    job with that error, whatever arrived before.
    """
    if isinstance(session_error, InterruptError):
        return session_error
    if strict and isinstance(session_error, IntegrityError):
        return session_error
    failed = [r.error for r in results if r.error is not None]
    if not failed:
        return None
    if len(failed) < len(results):
        return PartialError(f"{len(failed)} of {len(results)} files failed")
    if session_error is not None:
        return session_error
    if len(results) == 1:
        return failed[0]
    # The class itself is not rebuilt, as some (RefusedError) need more
    # arguments than a message.
    summary = FilexferError(f"all {len(failed)} files failed")
    summary.exit_code = failed[0].exit_code
    return summary
