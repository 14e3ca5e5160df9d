"""What ``get`` and ``ls`` do: ask the receiver, check every answer, store.

How this works
--------------
``get`` turns the roles of an upload around on the same connection: it
sends one ``Get`` per remote name, then receives exactly as the daemon
does (:class:`ReceiveSession`: part files, digest check, atomic commit,
resume), into a :class:`LocalStore` at the destination directory.

What arrives is decided by the other side, so nothing it says is
trusted.  Every offered name must be one that was asked for, or, with
``recursive``, lie below one; the local name is built from the request
(its last component, plus the part below it), never taken as sent.  An
offer of anything else, a name that fails the usual checks, the same
name twice, or more bytes than announced ends the whole download as a
protocol error: files already committed stay (each was asked for and
verified), everything else is deleted.  The offered mode is reduced as
for uploads and applied, like the mtime, only to the file just
committed; whether an existing file may be replaced is this side's
``--overwrite``, not the offer's flag.

``ls`` sends ``List`` and collects ``Entry`` messages until ``Close``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import messages as msgs
from .errors import (
    Code,
    ConnectError,
    FilexferError,
    IntegrityError,
    InterruptError,
    ProtocolError,
    RefusedError,
    UsageError,
)
from .names import check_name, names_overlap
from .printable import named, printable
from .receiver import ReceiveSession, Watcher
from .session import Channel
from .sources import FileResult
from .storage import LocalStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """A name on the receiver and the name it gets here."""

    remote: str
    local: str


def plan(remotes: list[str], verb: str = "get") -> list[Request]:
    """Check the remote names given on the command line; name them here.

    Raises:
        UsageError: a name would be refused, two end in the same name, one
            lies inside another, or there are more than the protocol's
            limit of names.
    """
    if len(remotes) > msgs.MAX_GETS:
        raise UsageError(f"at most {msgs.MAX_GETS} names in one {verb}")
    requests: list[Request] = []
    for remote in remotes:
        name = remote.rstrip("/")
        try:
            check_name(name)
        except RefusedError as exc:
            raise UsageError(f"cannot {verb} '{printable(remote)}': {exc}") from None
        local = name.rsplit("/", 1)[-1]
        if any(r.local == local for r in requests):
            raise UsageError(f"two names end in '{printable(local)}'")
        for other in requests:
            if names_overlap(name, other.remote):
                raise UsageError(
                    f"'{printable(name)}' and '{printable(other.remote)}' overlap",
                    hint="name the folder alone; -r fetches what is inside it",
                )
        requests.append(Request(name, local))
    return requests


class _Guard(Watcher):
    """Admits only what was asked for; keeps one result per file."""

    def __init__(
        self,
        requests: list[Request],
        recursive: bool,
        overwrite: bool,
        dest: str,
        progress: Callable[[int], None],
    ) -> None:
        self.requests = requests
        self.recursive = recursive
        self.overwrite = overwrite
        self.dest = dest
        self.on_progress = progress
        self.admitted: dict[int, msgs.Offer] = {}
        self.by_name: dict[str, int] = {}  # local name -> its file id
        self.results: dict[int, FileResult] = {}
        self.answered: set[str] = set()
        self.refused: dict[str, FilexferError] = {}  # not asked for: why
        self.started = time.monotonic()

    def admit(self, offer: msgs.Offer) -> msgs.Offer:
        local = self._local_name(offer.name)
        if offer.directory and not self.recursive:
            raise self._unexpected(offer.name + "/")
        earlier = self.by_name.get(local)
        if earlier is not None:
            # Offered again, fresh, after it aborted the first offer (this
            # side's copy differed): the new offer replaces the failed one.
            result = self.results.get(earlier)
            if not offer.fresh or result is None or result.error is None:
                raise ProtocolError(f"receiver sent '{printable(offer.name)}' twice")
            del self.admitted[earlier], self.results[earlier]
        admitted = msgs.Offer(
            offer.file_id,
            offer.size,
            offer.mtime_ns,
            offer.mode,
            self.overwrite,
            local,
            fresh=offer.fresh,
            directory=offer.directory,
        )
        self.admitted[offer.file_id] = admitted
        self.by_name[local] = offer.file_id
        return admitted

    def _local_name(self, name: str) -> str:
        try:
            check_name(name)
        except RefusedError:
            raise self._unexpected(name) from None
        for request in self.requests:
            if name == request.remote or (
                self.recursive and name.startswith(request.remote + "/")
            ):
                self.answered.add(request.remote)
                return request.local + name[len(request.remote) :]
        raise self._unexpected(name)

    @staticmethod
    def _unexpected(name: str) -> ProtocolError:
        return ProtocolError(
            f"receiver sent an unexpected file '{printable(name)}'; aborted"
        )

    def progress(self, count: int) -> None:
        self.on_progress(count)

    def closing(self) -> None:
        """Every admitted file must have arrived (or been refused) by now."""
        for file_id, offer in self.admitted.items():
            if file_id not in self.results:
                raise ProtocolError(
                    f"receiver closed without sending '{printable(offer.name)}'"
                )

    def finished(
        self,
        offer: msgs.Offer,
        digest: bytes | None,
        error: FilexferError | None,
        held: int = 0,
        unchanged: bool = False,
    ) -> None:
        path = os.path.join(self.dest, offer.name)
        result = FileResult(offer.name, path, offer.size, directory=offer.directory)
        result.digest, result.error = (digest.hex() if digest else None), error
        result.held, result.unchanged = held, unchanged and result.ok
        if isinstance(error, RefusedError):
            # This side's own refusal ("already exists"): say of which file.
            result.error = RefusedError(named(offer.name, str(error)), error.code)
        result.seconds = time.monotonic() - self.started
        self.results[offer.file_id] = result
        if isinstance(error, IntegrityError):
            # Bytes that do not match their digest: the receiver is broken
            # or lying, and the whole download ends (exit 5).
            raise error

    def settle(self, error: FilexferError | None) -> list[FileResult]:
        """One result per admitted file and per request nothing came for."""
        results = []
        for file_id, offer in sorted(self.admitted.items()):
            result = self.results.get(file_id)
            if result is None:
                result = FileResult(offer.name, os.path.join(self.dest, offer.name))
                result.size = offer.size
                result.error = error or ConnectError(
                    f"{printable(offer.name)}: not received"
                )
            results.append(result)
        for request in self.requests:
            if request.remote not in self.answered:
                missing = self.refused.get(request.remote) or error
                missing = missing or ProtocolError(
                    f"receiver did not send '{printable(request.remote)}'"
                )
                path = os.path.join(self.dest, request.local)  # where it was due
                results.append(FileResult(request.local, path, error=missing))
        return results


def get_files(
    channel: Channel,
    requests: list[Request],
    dest: LocalStore,
    options: tuple[bool, bool],
    on_progress: Callable[[int], None],
) -> tuple[list[FileResult], FilexferError | None]:
    """Ask for every request and store what comes back; close the channel.

    ``options`` is (recursive, overwrite).  Returns one result per file
    received or expected, and the error the session failed with, if any.
    """
    recursive, overwrite = options
    guard = _Guard(requests, recursive, overwrite, str(dest.root), on_progress)
    error: FilexferError | None = None
    try:
        asked = _ask(channel, requests, recursive, guard)
        if asked:
            ReceiveSession(channel, dest, "get", guard).run()
    except FilexferError as exc:
        error = exc
    except KeyboardInterrupt:
        error = InterruptError()
    finally:
        channel.close()
    return guard.settle(error), error


def _ask(
    channel: Channel, requests: list[Request], recursive: bool, guard: _Guard
) -> int:
    """Send a Get for each request that fits the receiver; return how many.

    A name too long for the receiver's records fails alone, here.
    """
    fitting = []
    for request in requests:
        too_long = channel.too_long(msgs.Get(request.remote, recursive, True))
        if too_long:
            why = f"cannot ask for '{printable(request.remote)}': {too_long}"
            guard.refused[request.remote] = RefusedError(why, Code.BAD_PATH)
        else:
            fitting.append(request)
    for index, request in enumerate(fitting):
        last = index == len(fitting) - 1
        channel.send(msgs.Get(request.remote, recursive, last))
    return len(fitting)


def list_remote(
    channel: Channel, name: str, recursive: bool, show: Callable[[msgs.Entry], None]
) -> int:
    """Pass each entry the receiver lists under name to show, as it comes.

    Nothing is collected, so a listing of any length costs no memory.
    Returns the number of entries; closes the channel.

    Raises:
        FilexferError: the receiver refused (no such name) or the
            connection failed; ProtocolError for anything but entries.
    """
    count = 0
    try:
        request = msgs.List(name, recursive)
        too_long = channel.too_long(request)
        if too_long:
            why = f"cannot list '{printable(name)}': {too_long}"
            raise RefusedError(why, Code.BAD_PATH)
        channel.send(request)
        while not isinstance(message := channel.recv(), msgs.Close):
            if not isinstance(message, msgs.Entry):
                raise ProtocolError(f"unexpected {type(message).__name__} in a listing")
            show(message)
            count += 1
        channel.send(msgs.Close())
        return count
    finally:
        channel.close()
