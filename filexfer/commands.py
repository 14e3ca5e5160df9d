"""The client commands: ``put``, ``get`` and ``ls``.

Each parses its arguments with the shared options, runs one library
function (:func:`send_files`, :func:`get_files`, :func:`list_remote`)
with retries when asked, and reports through :mod:`report`; errors
propagate to ``cli.main``, which prints them and exits with their code.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from . import messages as msgs
from .disk import load_libc, raise_file_limit
from .errors import (
    ConnectError,
    FilexferError,
    InterruptError,
    UsageError,
    os_reason,
)
from .options import (
    EXIT_CODES,
    OUTPUT_OPTIONS,
    TRUST_OPTIONS,
    Remote,
    apply_options,
    configure_put_logging,
    make_root,
    merge_download,
    outcome_decided,
    root_option,
    show_bar,
    with_config,
    with_retries,
)
from .printable import printable
from .report import Progress, emit, job_error, lost_output, report
from .sender import send_files
from .session import Channel
from .sources import FileResult, Source, collect_sources, receiver_name, unsent
from .storage import KEEP_MODES_MASK, MODE_MASK, LocalStore

if TYPE_CHECKING:
    from .getter import Request


@click.command(epilog=EXIT_CODES)
@click.argument("args", nargs=-1, required=True, metavar="FILE... HOST[:PORT]")
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Send directories and everything below them, empty ones included.",
)
@click.option(
    "--overwrite/--no-overwrite",
    help="Atomically replace files that already exist on the receiver "
    "(identical ones are never sent again, with or without this).",
)
@apply_options(TRUST_OPTIONS + OUTPUT_OPTIONS)
@with_config
def put(
    args: tuple[str, ...],
    recursive: bool,
    overwrite: bool,
    accept_new: bool,
    given_fp: str | None,
    connect_timeout: float,
    idle_timeout: float,
    retry: int,
    as_json: bool,
    quiet: bool,
    progress: bool | None,
) -> None:
    """Send FILEs to a receiver at HOST[:PORT] (default port 7757).

    HOST may also be the NAME of a [hosts.NAME] section of the config file.
    A file already there with the same size and digest is not sent again;
    an interrupted transfer of a large file resumes where it stopped.
    """
    if len(args) < 2:
        raise UsageError("need at least one FILE and a HOST[:PORT]")
    remote = Remote.from_options(
        args[-1], (accept_new, given_fp), (connect_timeout, idle_timeout, retry)
    )
    configure_put_logging(quiet)
    try:
        sources, failures = collect_sources(list(args[:-1]), recursive)
        total = sum(_size(s) for s in sources)
        bars = Progress(show_bar(quiet, progress), total, len(sources))
    except KeyboardInterrupt:
        # Stopped before sending (while reading the folders, say): each
        # argument stands for the files below it.
        named = [
            Source(arg, receiver_name(arg), os.path.isdir(arg)) for arg in args[:-1]
        ]
        _stopped_before_start(named, (as_json, quiet), "sent")
    pending = sources
    started = time.monotonic()

    def attempt() -> tuple[list[FileResult], FilexferError | None]:
        # A retry sends again only the files the lost connection failed.
        nonlocal pending
        results, error = _send(remote, pending, overwrite, bars)
        again = {r.name for r in results if r.error is not None and r.error is error}
        pending = [source for source in pending if source.name in again]
        return results, error

    try:
        sent, session_error = with_retries(remote, attempt, quiet)
    finally:
        bars.close()
    _finish(failures + sent, session_error, (as_json, quiet), ("sent", started))


def _stopped_before_start(
    sources: list[Source], output: tuple[bool, bool], verb: str
) -> NoReturn:
    """End a job stopped before it started: every source failed, 130."""
    stop = InterruptError()
    _finish(unsent(sources, stop), stop, output, (verb, time.monotonic()))
    raise AssertionError("unreachable: _finish raises the interruption")


def _finish(
    results: list[FileResult],
    session_error: FilexferError | None,
    output: tuple[bool, bool],
    timing: tuple[str, float],
) -> None:
    """Report a job's results and end with its exit code.

    A download (verb "received") is strict: a receiver that broke the
    protocol fails it with exit 5 even if some files arrived.
    """
    outcome_decided()  # every file is settled; what follows only says so
    verb, started = timing
    error = job_error(results, session_error, strict=verb == "received")
    seconds = time.monotonic() - started
    report(results, session_error, *output, (verb, seconds), error)
    if error is not None:
        raise error


def _size(source: Source) -> int:
    try:
        return os.path.getsize(source.path)
    except OSError:
        return 0  # opening it will fail too, and say why


def _send(
    remote: Remote, sources: list[Source], overwrite: bool, bars: Progress
) -> tuple[list[FileResult], FilexferError | None]:
    """Connect and send; a failed connection fails every source."""
    if not sources:
        return [], None
    channel = _connect(remote)
    if isinstance(channel, FilexferError):
        return unsent(sources, channel), channel
    return send_files(channel, sources, overwrite, bars.advance, bars.start)


def _connect(remote: Remote) -> Channel | FilexferError:
    """The channel, or why there is none (a failure, or Ctrl-C at a prompt)."""
    try:
        return remote.connect()
    except FilexferError as exc:
        return exc
    except (KeyboardInterrupt, click.exceptions.Abort):
        return InterruptError()


def _open_store(root: Path, mask: int) -> LocalStore:
    try:
        return LocalStore(root, mode_mask=mask, resume_min=1)
    except OSError as exc:
        shown = printable(str(root))
        raise UsageError(f"cannot use -o {shown}: {os_reason(exc)}") from exc


@click.command(epilog=EXIT_CODES)
@click.argument("host", metavar="HOST[:PORT]")
@click.argument("remotes", nargs=-1, required=True, metavar="REMOTE...")
@click.option(
    "-o",
    "--output",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory to store the files in (created if missing, and "
    "removed again if nothing was stored there).",
)
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Fetch directories and everything below them.",
)
@click.option(
    "--overwrite/--no-overwrite",
    help="Atomically replace local files that differ "
    "(identical ones are kept and not fetched again).",
)
@click.option(
    "--keep-modes",
    is_flag=True,
    help="Keep the group and other write bits of the files' modes "
    "(setuid, setgid and sticky are never kept).",
)
@apply_options(TRUST_OPTIONS + OUTPUT_OPTIONS)
@with_config
def get(
    host: str,
    remotes: tuple[str, ...],
    out_dir: str,
    recursive: bool,
    overwrite: bool,
    keep_modes: bool,
    accept_new: bool,
    given_fp: str | None,
    connect_timeout: float,
    idle_timeout: float,
    retry: int,
    as_json: bool,
    quiet: bool,
    progress: bool | None,
) -> None:
    """Fetch REMOTE files (or, with -r, folders) back from a receiver.

    Each REMOTE is a name as 'filexfer ls' shows it; it is stored under
    --output by its last component (get HOST docs/a.txt -> ./a.txt).
    Whatever the receiver sends that was not asked for ends the whole
    download with exit 5, and is never written.
    """
    from .getter import plan

    remote = Remote.from_options(
        host, (accept_new, given_fp), (connect_timeout, idle_timeout, retry)
    )
    requests = plan(list(remotes))
    configure_put_logging(quiet)
    logging.getLogger("filexfer.receiver").setLevel(logging.CRITICAL)
    output = (as_json, quiet, progress)
    root = root_option(out_dir, "-o")
    made = _new_folders(root)
    make_root(root, "-o")
    try:
        _download(remote, requests, root, (recursive, overwrite, keep_modes), output)
    finally:
        _remove_empty(made)


def _download(
    remote: Remote,
    requests: list[Request],
    root: Path,
    options: tuple[bool, bool, bool],
    output: tuple[bool, bool, bool | None],
) -> None:
    """Run the download into root, with retries, and report it.

    ``options`` is (recursive, overwrite, keep_modes); ``output`` is
    (as_json, quiet, progress).
    """
    recursive, overwrite, keep_modes = options
    as_json, quiet, progress = output
    # Every part gets the name a rerun of this download looks for, so that
    # a killed get leaves nothing the next one does not take over.
    mask = KEEP_MODES_MASK if keep_modes else MODE_MASK
    # What each request stands for when a job fails before any answer.
    stand_ins = [Source(str(root / r.local), r.local) for r in requests]
    try:
        from .getter import get_files

        _open_store(root, mask).close()  # an unusable -o is found first
        raise_file_limit()  # as recv: files waiting for their commit hold one each
        load_libc()
        bars = Progress(show_bar(quiet, progress), 0, 1)
    except KeyboardInterrupt:
        _stopped_before_start(stand_ins, (as_json, quiet), "received")
    started = time.monotonic()

    def attempt() -> tuple[list[FileResult], FilexferError | None]:
        channel = _connect(remote)
        if isinstance(channel, FilexferError):
            return unsent(stand_ins, channel), channel
        store = _open_store(root, mask)
        try:
            job = (recursive, overwrite)
            return get_files(channel, requests, store, job, bars.advance)
        finally:
            store.close()

    try:
        results, session_error = with_retries(remote, attempt, quiet, merge_download)
    finally:
        bars.close()
    _finish(results, session_error, (as_json, quiet), ("received", started))


def _new_folders(root: Path) -> list[Path]:
    """The folders that creating root will make, deepest first."""
    new = []
    for folder in (root, *root.parents):
        if os.path.lexists(folder):
            break
        new.append(folder)
    return new


def _remove_empty(folders: list[Path]) -> None:
    """Take back the folders a download made and stored nothing in.

    A failed connection then leaves no empty -o behind; one that holds
    anything (a file, a part kept for a resume) stays, with its parents.
    """
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@click.command("ls", epilog=EXIT_CODES)
@click.argument("host", metavar="HOST[:PORT]")
@click.argument("path", required=False, default="")
@click.option("-r", "--recursive", is_flag=True, help="List folders' contents too.")
@click.option(
    "--json/--no-json",
    "as_json",
    help="Print one JSON object per entry instead of a table.",
)
@apply_options(TRUST_OPTIONS)
@with_config
def ls_command(
    host: str,
    path: str,
    recursive: bool,
    as_json: bool,
    accept_new: bool,
    given_fp: str | None,
    connect_timeout: float,
    idle_timeout: float,
    retry: int,
) -> None:
    """List what this key has stored on a receiver (under PATH, if given).

    Shows mode, size, modification time (UTC), name and, where the
    receiver knows it, the first 16 hex digits of the BLAKE3 digest.
    """
    from .getter import list_remote, plan

    remote = Remote.from_options(
        host, (accept_new, given_fp), (connect_timeout, idle_timeout, retry)
    )
    name = plan([path], "list")[0].remote if path.strip("/") else ""

    shown = 0

    def show(entry: msgs.Entry) -> None:
        nonlocal shown
        emit(_entry_json(entry) if as_json else _entry_line(entry))
        shown += 1
        if lost_output() is not None:
            raise _NoReaderError  # the rest would only be dropped: stop asking

    for number in range(retry + 1):
        try:
            channel = _connect(remote)
            if isinstance(channel, InterruptError):
                raise InterruptError("interrupted")  # nothing was being copied
            if isinstance(channel, FilexferError):
                raise channel
            list_remote(channel, name, recursive, show)
            return
        except _NoReaderError:
            return  # the end of the command says that output was lost
        except ConnectError as exc:
            if number == retry or shown:
                raise  # a listing cut short is not printed twice
            wait = min(30.0, 2.0**number)
            shown_error = printable(str(exc))
            click.echo(
                f"filexfer: warning: {shown_error}; retrying in {wait:g} s", err=True
            )
            time.sleep(wait)
        except KeyboardInterrupt:
            raise InterruptError("interrupted") from None


class _NoReaderError(Exception):
    """stdout no longer takes the listing, so it is not worth receiving."""


def _entry_line(entry: msgs.Entry) -> str:
    kind = "d" if entry.directory else "-"
    mode = kind + stat.filemode(entry.mode)[1:]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.mtime_ns / 1e9))
    digest = entry.digest.hex()[:16] if entry.digest else "-"
    name = printable(entry.name) + ("/" if entry.directory else "")
    return f"{mode} {entry.size:>14,} {when} {digest:16} {name}"


def _entry_json(entry: msgs.Entry) -> str:
    import json

    return json.dumps(
        {
            "name": entry.name,
            "type": "directory" if entry.directory else "file",
            "bytes": entry.size,
            "mode": f"{entry.mode:04o}",
            "mtime_ns": entry.mtime_ns,
            "digest": entry.digest.hex() if entry.digest else None,
            "digest_algorithm": "blake3",
        },
        ensure_ascii=True,
    )
