"""What ``recv`` does for ``ls`` and ``get``: list an area, send files back.

How this works
--------------
A session whose first message is ``List`` or ``Get`` reads instead of
writes.  Every name it asks about is looked up in the key's area through
the same :class:`LocalStore` that confines uploads: no absolute path, no
``..``, no symlink followed, part files never shown.

``List`` is answered with one ``Entry`` per file or directory, then
``Close``.  ``Get`` requests are collected until the one marked last;
then every file they name (a directory's whole tree with ``recursive``,
empty directories included) is sent back with the sender's engine, the
same pipelined offers, digests and confirmations as an upload.  A
directory asked for without ``recursive`` is offered empty and aborted,
so that it fails alone.  A name that does not exist ends the session
with an ``Error`` before anything is offered; so does a
stored name that breaks the protocol's name rules (it was not put there
through filexfer), so that a restore is never silently incomplete.
"""

from __future__ import annotations

import functools
import logging
import os

from . import messages as msgs
from .disk import out_of_files, wait_for_files
from .errors import Code, FilexferError, ProtocolError, RefusedError
from .names import check_name, names_overlap
from .printable import log_value, printable
from .sender import send_files
from .session import Channel
from .sources import FileResult, Source
from .storage import LocalStore, StoredEntry

log = logging.getLogger(__name__)

MAX_REQUESTS = msgs.MAX_GETS


def serve_reading(
    channel: Channel, store: LocalStore, first: msgs.List | msgs.Get, session_id: str
) -> int:
    """Answer a listing or a download; return how many entries or files.

    Raises:
        FilexferError: the request failed; the peer has been told.
    """
    try:
        if isinstance(first, msgs.List):
            return _serve_list(channel, store, first)
        return _serve_get(channel, store, first, session_id)
    except FilexferError as exc:
        channel.tell(exc)
        raise


def _serve_list(channel: Channel, store: LocalStore, request: msgs.List) -> int:
    count = 0
    channel.cork()
    for entry in store.entries(request.name, request.recursive):
        try:
            channel.send(_entry_message(entry))
        except ValueError:
            # A name longer than the protocol's text field: not listable.
            log.warning(
                "event=list.skipped path=%s reason=name_too_long",
                log_value(entry.name[:200]),
            )
            continue
        count += 1
    channel.send(msgs.Close())
    channel.flush()
    _expect_close(channel)
    return count


def _entry_message(entry: StoredEntry) -> msgs.Entry:
    # A name that is not UTF-8 (put there by other means) is shown with
    # U+FFFD for its bad bytes: listed, though get refuses it by name.
    raw = entry.name.encode("utf-8", "surrogateescape")
    # An mtime past what an i64 carries is shown at the nearest end.
    mtime_ns = min(max(entry.mtime_ns, -(2**63)), 2**63 - 1)
    return msgs.Entry(
        entry.size,
        mtime_ns,
        entry.mode,
        entry.directory,
        entry.digest,
        raw.decode("utf-8", "replace"),
    )


def _expect_close(channel: Channel) -> None:
    reply = channel.recv()
    if not isinstance(reply, msgs.Close):
        raise ProtocolError(f"unexpected {type(reply).__name__} after the listing")


def _serve_get(
    channel: Channel, store: LocalStore, first: msgs.Get, session_id: str
) -> int:
    sources = _sources(store, _requests(channel, first))
    results, error = send_files(channel, sources, strict=True)
    for result in results:
        _log_result(result, session_id, channel.peer_short, error)
    if error is not None:
        raise error
    return sum(result.ok for result in results)


def _log_result(
    result: FileResult, session_id: str, key: str, error: FilexferError | None
) -> None:
    """One line per file served: complete, or why not (a file that failed
    here, say changed while sent; the session's own failure is logged
    once, by the server)."""
    if result.ok:
        log.info(
            "event=get.complete session=%s key=%s path=%s bytes=%d unchanged=%s",
            session_id,
            key,
            log_value(result.name),
            result.size,
            str(result.unchanged).lower(),
        )
    elif result.error is not None and result.error is not error:
        log.warning(
            "event=get.failed session=%s key=%s path=%s reason=%s",
            session_id,
            key,
            log_value(result.name),
            log_value(str(result.error), relayed=True),
        )


def _requests(channel: Channel, first: msgs.Get) -> list[msgs.Get]:
    """Every Get of the job, up to the one marked last."""
    requests = [first]
    while not requests[-1].last:
        if len(requests) >= MAX_REQUESTS:
            raise ProtocolError(f"more than {MAX_REQUESTS} names in one download")
        message = channel.recv()
        if not isinstance(message, msgs.Get):
            raise ProtocolError(f"unexpected {type(message).__name__} in a download")
        requests.append(message)
    return requests


def _sources(store: LocalStore, requests: list[msgs.Get]) -> list[Source]:
    """The stored files (and empty directories) the requests name, in order.

    A directory asked for without recursive is a source of its own that
    carries its refusal.

    Raises:
        RefusedError: a name does not exist or is asked for twice.
    """
    sources: list[Source] = []
    seen: set[str] = set()
    for request in requests:
        if not request.name:
            raise RefusedError("empty name in a download", Code.BAD_PATH)
        if any(names_overlap(request.name, other) for other in seen):
            raise RefusedError(
                f"'{printable(request.name)}' asked for twice", Code.DUPLICATE
            )
        seen.add(request.name)
        is_directory = functools.partial(store.is_directory, request.name)
        if wait_for_files(is_directory) and not request.recursive:
            # It fails alone, as scp's "not a regular file": the others
            # are still sent.
            why = RefusedError("is a directory (use -r)", Code.NOT_REGULAR)
            path = os.path.join(store.root, request.name)
            sources.append(Source(path, request.name, refusal=why))
            continue
        sources.extend(_tree(store, request.name))
    return sources


def _tree(store: LocalStore, name: str) -> list[Source]:
    entries = list(store.entries(name, recursive=True))
    if not entries and wait_for_files(functools.partial(store.is_directory, name)):
        # An empty directory asked for by name is created, empty, there.
        return [Source(os.path.join(store.root, name), name, directory=True)]
    parents = {entry.name.rpartition("/")[0] for entry in entries}
    sources = []
    for entry in entries:
        _check_sendable(entry)
        if entry.directory and entry.name in parents:
            continue  # not empty: its files create it on the other side
        path = os.path.join(store.root, entry.name)
        opener = functools.partial(_open_stored, store, entry.name)
        sources.append(Source(path, entry.name, entry.directory, opener))
    return sources


def _check_sendable(entry: StoredEntry) -> None:
    """Refuse the download of a stored file the other side could not take.

    Such a file was put there by other means (a name with a control
    character, a tree deeper than the protocol's default limits, an mtime
    past 2262): the whole download fails, naming it, rather than leave it
    out silently.
    """
    try:
        check_name(entry.name)
    except RefusedError as exc:
        raise RefusedError(
            f"'{printable(entry.name)}' cannot be sent: {exc}", Code.BAD_PATH
        ) from None
    if not msgs.mtime_fits(entry.mtime_ns):
        raise RefusedError(
            f"'{printable(entry.name)}' cannot be sent: its mtime is out of range",
            Code.BAD_PATH,
        )


def _open_stored(store: LocalStore, name: str) -> int:
    try:
        return store.open_file(name)[0]
    except RefusedError as exc:
        if not out_of_files(exc):
            raise
    # The folders the store keeps open are only a shortcut here: a
    # download has no part file that needs them.
    store.close_dirs()
    return store.open_file(name)[0]
