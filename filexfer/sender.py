"""What ``put`` does: offer files, stream accepted ones, collect confirmations.

How this works
--------------
The job is pipelined so that many small files cost no round trip each:
the writer (the calling thread) keeps up to :data:`OFFER_WINDOW` offers
ahead of the file it is streaming, and a reader thread collects the
receiver's answers (``Accept``/``Reject``) and confirmations (``Done``).
Data for a file is sent only after its ``Accept``, so a refused file costs
no upload.  Each file ends with ``End`` carrying the BLAKE3 digest of the
bytes read, and counts as copied only when the receiver's ``Done`` carries
the same digest, which it sends after the file is durable under its final
name.

A source is opened once, at offer time; its size, mtime, inode, device
and ctime are compared again after the last byte is read.  Any
difference, a short read or extra bytes end that file with ``Abort``
instead of ``End``: the receiver discards it, and the result says the
file changed while being sent.  The ctime moves with any write, even one
whose mtime was put back, and also with a rename, a new link or a chmod:
all count as changes, so that no copy is ever confirmed that matches no
moment of the source.

Every file of a job ends with exactly one :class:`FileResult`, whatever
happens: a local failure (missing file, unreadable directory, a name the
receiver would refuse), the receiver's answer, or, when the session as a
whole fails or the user interrupts it, that session's error for every
file not confirmed by then.  Text that came from the receiver is passed
through :func:`printable` before it becomes part of a message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from blake3 import blake3

from . import messages as msgs
from .disk import OPEN_ATTEMPTS, OPEN_PAUSE, out_of_files
from .errors import (
    Code,
    ConnectError,
    FilexferError,
    IntegrityError,
    InterruptError,
    LocalFileError,
    ProtocolError,
    RefusedError,
    from_code,
)
from .printable import named, printable, printable_relayed
from .session import Channel
from .sources import FileResult, Source, local_failure, unsent

log = logging.getLogger(__name__)

OFFER_WINDOW = 64


class _Stat(NamedTuple):
    """What a source's stat said when it was opened (its end is checked
    against it).  Kept instead of the stat result, a fifth of its size:
    a job holds one per file until it ends."""

    size: int
    mtime_ns: int
    mode: int
    inode: int
    device: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> _Stat:
        size, mtime, ctime = info.st_size, info.st_mtime_ns, info.st_ctime_ns
        return cls(size, mtime, info.st_mode, info.st_ino, info.st_dev, ctime)


@dataclass(slots=True)
class _Opened:
    file_id: int
    source: Source
    file: io.FileIO | None
    info: _Stat
    result: FileResult
    digest: bytes = b""
    started: float = 0.0
    fresh: bool = False
    # Offered again as fresh after the receiver's copy did not match; the
    # new offer settles the result.
    superseded: bool = False


@dataclass
class _Replies:
    """State shared between the writer and the reply-reading thread."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    decisions: dict[int, msgs.Accept | msgs.Reject] = field(default_factory=dict)
    outcomes: dict[int, msgs.Done | msgs.Reject] = field(default_factory=dict)
    failed_while_sending: set[int] = field(default_factory=set)
    error: FilexferError | None = None
    closed: bool = False

    def put(self, message: msgs.Message) -> None:
        with self.cond:
            self._record(message)
            self.cond.notify_all()

    def _record(self, message: msgs.Message) -> None:
        if isinstance(message, msgs.Accept | msgs.Reject) and (
            message.file_id not in self.decisions
        ):
            self.decisions[message.file_id] = message
            if isinstance(message, msgs.Reject):
                self.outcomes[message.file_id] = message
        elif isinstance(message, msgs.Reject):
            self.failed_while_sending.add(message.file_id)
            self.outcomes.setdefault(message.file_id, message)
        elif isinstance(message, msgs.Done):
            self.outcomes.setdefault(message.file_id, message)
        else:
            raise ProtocolError(f"unexpected {type(message).__name__} from peer")

    def stop(self, error: FilexferError | None) -> None:
        with self.cond:
            self.closed = True
            self.error = self.error or error
            self.cond.notify_all()

    def decision(self, file_id: int) -> msgs.Accept | msgs.Reject | None:
        """The receiver's answer to an offer, if it has come (no waiting)."""
        with self.cond:
            if file_id not in self.decisions:
                self._raise_if_stopped()
            return self.decisions.get(file_id)

    def wait_decision(self, file_id: int) -> msgs.Accept | msgs.Reject:
        with self.cond:
            while file_id not in self.decisions:
                self._raise_if_stopped()
                self.cond.wait()
            return self.decisions[file_id]

    def _raise_if_stopped(self) -> None:
        if self.error is not None:
            raise self.error
        if self.closed:
            raise ProtocolError("receiver closed the session early")


def _read_replies(channel: Channel, replies: _Replies) -> None:
    try:
        while True:
            message = channel.recv()
            if isinstance(message, msgs.Close):
                replies.stop(None)
                return
            replies.put(message)
    except FilexferError as exc:
        replies.stop(exc)
        _stop_writer(channel)
    except Exception as exc:
        replies.stop(FilexferError(f"internal error in reply reader: {exc!r}"))
        _stop_writer(channel)


def _stop_writer(channel: Channel) -> None:
    """Wake a writer blocked on a connection that can no longer succeed.

    A receiver that went away without a reset may leave our send window
    at zero, so a blocked send would wait for the whole idle timeout;
    shutting the socket down makes it fail now.
    """
    with contextlib.suppress(OSError):
        channel.sock.shutdown(socket.SHUT_RDWR)


ProgressFn = Callable[[int], None]
StartFn = Callable[[str, int], None]
ResultFn = Callable[[FileResult], None]


class _Job:
    """One pass over the sources on one channel."""

    def __init__(
        self,
        channel: Channel,
        sources: list[Source],
        overwrite: bool,
        on_progress: ProgressFn,
        on_start: StartFn,
        strict: bool = False,
    ) -> None:
        self.channel = channel
        self.strict = strict
        self.sources = sources
        self.overwrite = overwrite
        self.on_progress = on_progress
        self.on_start = on_start
        self.replies = _Replies()
        self.offered: list[_Opened] = []
        self.failed_locally: list[FileResult] = []
        self.again: list[_Opened] = []
        self._next_source = 0

    def run(self) -> list[FileResult]:
        """Send everything; the session's failure is left in replies.error."""
        reader = threading.Thread(
            target=_read_replies, args=(self.channel, self.replies), daemon=True
        )
        reader.start()
        try:
            self._send_all()
            self.channel.send(msgs.Close())
            self.channel.flush()
            reader.join()
        except FilexferError as exc:
            if exc is not self.replies.error and not isinstance(exc, ConnectError):
                # This side's own reason (the peer broke the protocol, a
                # file cannot be sent): say so. An error the peer sent, a
                # broken record or a lost connection is not echoed.
                self.channel.tell(exc)
            # A failed write usually means the receiver hung up; its reason
            # (an Error message) may still be in flight to the reader, and
            # stop() keeps the first error recorded.
            reader.join(timeout=2)
            self.replies.stop(exc)
        except KeyboardInterrupt:
            self.replies.stop(InterruptError())
        finally:
            self.channel.close()
            reader.join(timeout=5)
            for opened in self.offered:
                if opened.file is not None:
                    opened.file.close()
        return self._results()

    def _send_all(self) -> None:
        """Offer ahead and send each file in turn.

        Small messages (offers, the data of small files, ends) are corked:
        held back and written together, so that a tree of small files
        costs a few large writes rather than three small ones per file.
        What is held goes out before this side waits for the receiver.
        """
        position = 0
        while True:
            self.channel.cork()
            self._offer_ahead(position)
            if position >= len(self.offered):
                return
            self._send_one(self.offered[position])
            position += 1

    def _offer_ahead(self, position: int) -> None:
        while self.again and len(self.offered) - position < OFFER_WINDOW:
            earlier = self.again.pop(0)
            again = _Opened(
                len(self.offered),
                earlier.source,
                earlier.file,
                earlier.info,
                earlier.result,
                fresh=True,
            )
            self.offered.append(again)
            self._offer(again)
        while (
            self._next_source < len(self.sources)
            and len(self.offered) - position < OFFER_WINDOW
        ):
            opened = self._open_when_free(self.sources[self._next_source], position)
            if opened is None:
                return  # the window shrinks until its files give theirs back
            # From here the source has its result: a local failure, or an
            # offered file that is settled even if sending the offer fails.
            self._next_source += 1
            if isinstance(opened, FileResult):
                self.failed_locally.append(opened)
                continue
            self.offered.append(opened)
            self._offer(opened)

    def _open_when_free(
        self, source: Source, position: int
    ) -> _Opened | FileResult | None:
        """Open source, or None while the window holds every free descriptor.

        Each file offered ahead keeps its source open until it is sent, so
        under a low limit on open files the window is as wide as the limit
        allows.  With no file of its own open, this side waits a moment for
        other processes (the daemon's other sessions) to free some.
        """
        for _ in range(OPEN_ATTEMPTS):
            opened = self._open(source, last_try=False)
            if opened is not None or len(self.offered) > position:
                return opened
            time.sleep(OPEN_PAUSE)
        return self._open(source, last_try=True)

    def _open(self, source: Source, last_try: bool) -> _Opened | FileResult | None:
        handle = None
        try:
            if source.empty:
                info = os.stat(source.path, follow_symlinks=False)
            else:
                handle = _open_source(source)
                info = os.fstat(handle.fileno())
        except (OSError, RefusedError) as exc:
            if not last_try and out_of_files(exc):
                return None
            why = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
            if self.strict:
                # The daemon serving get: the other side must hear of it,
                # or a restore would be silently incomplete.
                if isinstance(exc, RefusedError):
                    raise  # from the store, which names the file itself
                raise RefusedError(
                    f"'{printable(source.name)}' cannot be sent: {why}", Code.IO_ERROR
                ) from exc
            return local_failure(source.name, source.path, why)
        too_long = self.channel.too_long(msgs.Offer(0, 0, 0, 0, False, source.name))
        if too_long and self.strict:
            if handle is not None:
                handle.close()
            raise RefusedError(
                f"'{printable(source.name)}' cannot be sent: {too_long}", Code.BAD_PATH
            )
        why = f"cannot be sent ({too_long})" if too_long else ""
        if not msgs.mtime_fits(info.st_mtime_ns):
            why = "cannot be sent (its mtime is outside the years 1678 to 2262)"
        if why:
            if handle is not None:
                handle.close()
            failure = local_failure(source.name, source.path, why)
            failure.directory = source.directory
            failure.size = 0 if source.directory else info.st_size
            return failure
        result = FileResult(source.name, source.path, size=info.st_size)
        if source.empty:
            result.size, result.directory = 0, source.directory
        return _Opened(len(self.offered), source, handle, _Stat.of(info), result)

    def _offer(self, opened: _Opened) -> None:
        info, directory = opened.info, opened.source.directory
        self.channel.send(
            msgs.Offer(
                opened.file_id,
                0 if opened.source.empty else info.size,
                info.mtime_ns,
                stat.S_IMODE(info.mode),
                self.overwrite,
                opened.source.name,
                fresh=opened.fresh,
                directory=directory,
            )
        )

    def _send_one(self, opened: _Opened) -> None:
        try:
            self._send_decided(opened)
        finally:
            # One descriptor per file in the offer window, not per file of
            # the job; a file offered again keeps its handle.
            if opened.file is not None and not opened.superseded:
                opened.file.close()
                opened.file = None

    def _send_decided(self, opened: _Opened) -> None:
        decision = self.replies.decision(opened.file_id)
        if decision is None:
            self.channel.flush()  # the receiver may need what is held to decide
            decision = self.replies.wait_decision(opened.file_id)
            self.channel.cork()
        if isinstance(decision, msgs.Reject):
            return
        refusal = opened.source.refusal
        if refusal is not None:
            opened.result.error = refusal
            self.channel.send(msgs.Abort(opened.file_id, refusal.code, str(refusal)))
            return
        opened.started = time.monotonic()
        if opened.source.directory:
            opened.digest = EMPTY_DIGEST  # nothing to send; Done follows
            opened.result.unchanged = decision.digest is not None
            return
        self.on_start(opened.source.name, opened.info.size)
        if decision.digest is not None:
            # Hashing what the receiver holds may take a while: what is
            # held (earlier files' ends) must not wait for it.
            self.channel.flush()
        try:
            hasher = self._check_held(opened, decision)
            if hasher is None:
                return
            opened.digest = self._stream(opened, hasher, decision.offset)
        except LocalFileError as exc:
            opened.result.error = exc
            reason = exc.peer_reason or str(exc)
            self.channel.send(msgs.Abort(opened.file_id, exc.code, reason))
            return
        if opened.digest:
            self.channel.send(msgs.End(opened.file_id, opened.info.size, opened.digest))

    def _check_held(self, opened: _Opened, decision: msgs.Accept) -> blake3 | None:
        """Compare what the receiver holds with this file's first bytes.

        Returns the hasher fed with those bytes when they match (sending
        goes on after them), or None when they differ: the file is then
        aborted and offered again, fresh, so no mixed copy can arise.

        Raises:
            ProtocolError: the receiver claims more than the file's size.
            LocalFileError: the file cannot be read.
        """
        hasher = blake3()
        if decision.digest is None:
            if decision.offset:
                raise ProtocolError("receiver resumes without a digest")
            return hasher
        if opened.fresh:
            # It was offered fresh because the receiver's copy differed;
            # claiming a copy again would only start the loop over.
            raise ProtocolError("receiver claims a copy of a file offered fresh")
        if decision.offset > opened.info.size:
            raise ProtocolError("receiver holds more than the file's size")
        assert opened.file is not None
        buffer = self.channel.data_buffer()
        left = decision.offset
        while left:
            count = _read_into(opened.file, buffer[: min(len(buffer), left)], opened)
            hasher.update(buffer[:count])
            left -= count
        if hasher.digest() == decision.digest:
            opened.result.held = decision.offset
            opened.result.unchanged = decision.offset == opened.info.size
            self.on_progress(decision.offset)
            return hasher
        self.channel.send(
            msgs.Abort(opened.file_id, Code.SOURCE_CHANGED, "differs from your copy")
        )
        opened.file.seek(0)
        opened.superseded = True
        self.again.append(opened)
        return None

    def _stream(self, opened: _Opened, hasher: blake3, offset: int) -> bytes:
        """Send the file's bytes; return the digest, or b"" if it failed."""
        remaining = opened.info.size - offset
        if remaining >= READ_AHEAD_MIN:
            return self._stream_read_ahead(opened, hasher, remaining)
        buffer = self.channel.data_buffer(remaining)
        reader = opened.file
        assert reader is not None
        while remaining > 0:
            if opened.file_id in self.replies.failed_while_sending:
                self.channel.send(msgs.Abort(opened.file_id, Code.IO_ERROR, "stopped"))
                return b""
            count = _read_into(reader, buffer[: min(len(buffer), remaining)], opened)
            hasher.update(buffer[:count])
            self.channel.send_data(count)
            remaining -= count
            self.on_progress(count)
        _check_unchanged(reader, opened)
        return hasher.digest()

    def _stream_read_ahead(
        self, opened: _Opened, hasher: blake3, remaining: int
    ) -> bytes:
        """Like :meth:`_stream`, with reading and hashing in a second thread."""
        ahead = _ReadAhead(self.channel, opened, hasher, remaining)
        try:
            for plain, count in ahead.chunks():
                if opened.file_id in self.replies.failed_while_sending:
                    self.channel.send(
                        msgs.Abort(opened.file_id, Code.IO_ERROR, "stopped")
                    )
                    return b""
                self.channel.send_data(count, plain)
                ahead.recycle(plain)
                self.on_progress(count)
        finally:
            ahead.stop()
        return ahead.digest

    def _results(self) -> list[FileResult]:
        results = list(self.failed_locally)
        # A file offered again keeps the place of its first offer.
        latest = {id(opened.result): opened for opened in self.offered}
        settled: set[int] = set()
        for opened in self.offered:
            if id(opened.result) not in settled:
                settled.add(id(opened.result))
                results.append(self._settle(latest[id(opened.result)]))
        never_opened = self.sources[self._next_source :]
        if never_opened:
            error = self.replies.error
            assert error is not None, "internal error: sources left unsent"
            results.extend(unsent(never_opened, error))
        return results

    def _settle(self, opened: _Opened) -> FileResult:
        result = opened.result
        if result.error is None:
            self._settle_outcome(opened)
        if result.unchanged and not result.ok:
            # The receiver showed an identical copy, then failed the file
            # (its --dir deleted meanwhile, say): only a confirmed one is
            # unchanged, and nothing was resumed either.
            result.unchanged, result.held = False, 0
        return result

    def _settle_outcome(self, opened: _Opened) -> None:
        result = opened.result
        outcome = self.replies.outcomes.get(opened.file_id)
        if isinstance(outcome, msgs.Reject):
            reason = printable_relayed(outcome.reason)
            result.error = from_code(
                outcome.code, f"receiver refused {named(opened.source.name, reason)}"
            )
        elif isinstance(outcome, msgs.Done):
            self._confirm(opened, outcome)
        else:
            result.error = self.replies.error or ConnectError(
                f"{printable(opened.source.name)}: no confirmation from the receiver"
            )

    def _confirm(self, opened: _Opened, done: msgs.Done) -> None:
        result = opened.result
        if done.digest != opened.digest:
            result.error = IntegrityError(
                f"{printable(opened.source.name)}: receiver's digest does not match"
            )
            return
        result.digest = done.digest.hex()
        result.seconds = time.monotonic() - opened.started


READ_AHEAD_MIN = 8 << 20
READ_AHEAD_BUFFERS = 4

_Ready = tuple[bytearray, int] | LocalFileError | None


class _ReadAhead:
    """Reads and hashes a large file a few chunks ahead of the sender.

    The thread that sends then only seals and writes to the socket, while
    this one reads the next chunks from the disk and hashes them; both
    halves release the GIL for most of their work.  Buffers go round a
    fixed pool, so memory does not grow with the file.
    """

    def __init__(
        self, channel: Channel, opened: _Opened, hasher: blake3, remaining: int
    ) -> None:
        self._opened = opened
        self._hasher, self._remaining = hasher, remaining
        self._free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        for _ in range(READ_AHEAD_BUFFERS):
            self._free.put(channel.new_data_buffer())
        self._ready: queue.SimpleQueue[_Ready] = queue.SimpleQueue()
        self._stopping = False
        self.digest = b""
        self._thread = threading.Thread(
            target=self._run, name="filexfer-read-ahead", daemon=True
        )
        self._thread.start()

    def chunks(self) -> Iterator[tuple[bytearray, int]]:
        """Each filled buffer and its chunk length, in file order.

        Raises:
            LocalFileError: the file could not be read or changed.
        """
        while (item := self._ready.get()) is not None:
            if isinstance(item, LocalFileError):
                raise item
            yield item

    def recycle(self, plain: bytearray) -> None:
        self._free.put(plain)

    def stop(self) -> None:
        self._stopping = True
        self._free.put(None)  # wakes the reader if it waits for a buffer
        self._thread.join()

    def _run(self) -> None:
        try:
            self._read_all()
        except LocalFileError as exc:
            self._ready.put(exc)
            return
        except BaseException as exc:  # reported to the sending thread
            self._ready.put(LocalFileError(f"internal error while reading: {exc!r}"))
            return
        self._ready.put(None)

    def _read_all(self) -> None:
        opened, hasher = self._opened, self._hasher
        remaining = self._remaining
        assert opened.file is not None
        while remaining > 0:
            plain = self._free.get()
            if plain is None or self._stopping:
                return
            view = memoryview(plain)[1 : 1 + min(len(plain) - 1, remaining)]
            count = _read_into(opened.file, view, opened)
            hasher.update(view[:count])
            remaining -= count
            self._ready.put((plain, count))
        _check_unchanged(opened.file, opened)
        self.digest = hasher.digest()


EMPTY_DIGEST = blake3().digest()


def _open_source(source: Source) -> io.FileIO:
    if source.opener is not None:
        return io.FileIO(source.opener(), "rb", closefd=True)
    return io.FileIO(source.path, "rb")


def _read_into(reader: io.FileIO, view: memoryview, opened: _Opened) -> int:
    try:
        count = reader.readinto(view)
    except OSError as exc:
        why = f"read failed ({exc.strerror})"
        raise _source_error(opened, ": ", why, Code.IO_ERROR) from exc
    if not count:
        raise _changed(opened)
    return int(count)


def _changed(opened: _Opened) -> LocalFileError:
    why = "changed while being sent; not copied"
    return _source_error(opened, " ", why, Code.SOURCE_CHANGED)


def _source_error(opened: _Opened, joint: str, why: str, code: Code) -> LocalFileError:
    """A source that failed while sent: its path here, only why for the peer."""
    error = LocalFileError(f"{printable(opened.source.path)}{joint}{why}")
    error.code, error.peer_reason = code, why
    return error


def _check_unchanged(reader: io.FileIO, opened: _Opened) -> None:
    """Raise unless the source ended as it was when opened.

    Its size, mtime, inode and device must be the same, and so must a
    local file's ctime, which no writer can put back: a write whose mtime
    was restored still shows there.  So does a rename, a new link or a
    chmod meanwhile, which count as changes too.  (The daemon's own
    stored files change in place only by their metadata, when an
    identical copy is sent with new ones, so their ctime is not checked.)
    """
    extra = reader.read(1)
    now, then = _Stat.of(os.fstat(reader.fileno())), opened.info
    same = (now.size, now.mtime_ns, now.inode, now.device) == (
        then.size,
        then.mtime_ns,
        then.inode,
        then.device,
    )
    if opened.source.opener is None:
        same = same and now.ctime_ns == then.ctime_ns
    if extra or not same:
        raise _changed(opened)


def send_files(
    channel: Channel,
    sources: list[Source],
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
    on_start: StartFn | None = None,
    strict: bool = False,
) -> tuple[list[FileResult], FilexferError | None]:
    """Send every source over an established channel and close it.

    ``strict`` (the daemon serving get) ends the whole job, telling the
    peer, at the first source that cannot be opened.

    Returns one result per source, in job order (local failures first),
    and the error the session as a whole failed with (connection lost,
    integrity failure, not authorized, busy, interrupted), if it did.
    Files the receiver confirmed before such a failure count as sent;
    every other file's result carries that error.
    """
    job = _Job(
        channel,
        sources,
        overwrite,
        on_progress or (lambda _n: None),
        on_start or (lambda _n, _s: None),
        strict,
    )
    results = job.run()
    return results, job.replies.error
