"""What ``recv`` does with one authenticated session: decide, write, commit.

How this works
--------------
Messages arrive in job order.  Each ``Offer`` is answered at once with
``Accept`` or ``Reject`` (bad path, exists, not a regular file, no space,
duplicate in this session); nothing is created on disk for it yet.  Data
then arrives for the accepted files, in id order: the first ``Data`` or
``End`` of a file creates its part file, every chunk is hashed and
written, and ``End`` compares size and digest.  A file that matches joins
the commit batch; one that does not is deleted and refused.

For a large file, writing overlaps receiving: the session thread
receives and decrypts chunk n+1 while a second thread hashes chunk n and
writes it to the part file by direct I/O (``_WriteBehind``).  A small file
is written at once, as handing it to another thread would cost more than
the write.  Chunks are decrypted into a small pool of buffers
that go round between the two threads, so memory does not grow with file
size.  Only the session thread talks to the peer; a write error is left
on the file and reported by the session thread at its next step.  Before
a part file is closed, synced or deleted, the writer is drained, so no
write can land in a file descriptor that has been reused.

Commits are batched so that ten thousand small files do not cost ten
thousand fsyncs: a batch is made durable in one go (``fsync`` for a
single file, ``syncfs`` for several), then each part is linked or renamed
to its final name, the directories are synced, and only then is ``Done``
sent for each file.  A batch is flushed when it is full, a second old,
when no more bytes arrive within a short pause, before a large file
starts, and at ``Close``.

Anything that breaks the protocol (data for a file that was not accepted,
more bytes than offered, an unknown id) ends the session with ``Error``;
whatever was not committed is deleted.  Nothing under a final name is
ever partial.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from blake3 import blake3

from . import messages as msgs
from .disk import OPEN_ATTEMPTS, OPEN_PAUSE, aligned_buffer, out_of_files
from .errors import (
    Code,
    ConnectError,
    FilexferError,
    IntegrityError,
    ProtocolError,
    RefusedError,
    from_code,
)
from .printable import log_value, named, printable, printable_relayed
from .session import Channel
from .storage import (
    FileVersion,
    LocalStore,
    PartFile,
    Placement,
    digest_of,
    refusal_for,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

BATCH_FILES = 128
BATCH_BYTES = 256 << 20
BATCH_SECONDS = 1.0
# An honest sender keeps at most sender.OFFER_WINDOW (64) offers ahead of
# the file it streams; far more is a flood, and every pending offer costs
# memory here.
MAX_PENDING = 256
WRITE_BUFFERS = 6
LARGE_FILE = 8 << 20
FLUSH_PAUSE = 0.01
# Sealed replies held back while input is waiting, at most: a dozen
# Accepts.  Holding them until the input runs dry made the two sides take
# turns, as the sender runs out of answered offers just as it stops
# sending; sent on, they reach it while it is still busy.
REPLIES_HELD = 512
EMPTY_DIGEST = blake3().digest()


@dataclass
class _Incoming:
    offer: msgs.Offer
    placement: Placement
    part: PartFile | None = None
    hasher: blake3 | None = None
    received: int = 0
    started: float = 0.0
    discarding: bool = False
    write_behind: bool = False
    write_error: RefusedError | None = None
    # The digest of the identical-looking file already under the name, when
    # the sender was asked to check it instead of sending.
    existing: bytes | None = None
    existing_version: FileVersion | None = None  # of the file hashed
    held: int = 0  # bytes a resumed part already had


class Watcher:
    """What a receiving side may add: check offers, hear each file's fate.

    The daemon uses this no-op; ``get`` checks every name the other side
    offers against what it asked for, and collects per-file results.
    """

    def admit(self, offer: msgs.Offer) -> msgs.Offer:
        """Return the offer to act on (renamed, say), or raise ProtocolError."""
        return offer

    def progress(self, count: int) -> None:
        """count more bytes of the current file arrived."""

    def finished(
        self,
        offer: msgs.Offer,
        digest: bytes | None,
        error: FilexferError | None,
        held: int = 0,
        unchanged: bool = False,
    ) -> None:
        """The file is committed (digest) or failed (error).

        ``held`` is how many of its bytes this side already had (a resumed
        part, or the whole file), ``unchanged`` whether an identical file
        was already there and kept as it is.
        """

    def closing(self) -> None:
        """The other side sent Close; raise ProtocolError if that is early."""


_Chunk = tuple[_Incoming, memoryview, memoryview]


class _WriteBehind:
    """A second thread that writes chunks to part files, in order."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._allocated = 0
        self._chunks: queue.SimpleQueue[_Chunk | None] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._crash: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="filexfer-writer", daemon=True
        )
        self._thread.start()

    def buffer(self) -> memoryview:
        """A free buffer to receive into; waits while all are being written."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            if self._allocated < WRITE_BUFFERS:
                self._allocated += 1
                # Data payloads start one byte into the plaintext, after
                # the message type: align that byte for direct I/O.
                return aligned_buffer(self._channel.max_in, lead=1)
        return self._free.get()

    def recycle(self, buffer: memoryview) -> None:
        self._free.put(buffer)

    def write(
        self, incoming: _Incoming, payload: memoryview, buffer: memoryview
    ) -> None:
        """Queue payload (a view into buffer) for incoming's part file."""
        with self._idle:
            self._pending += 1
        self._chunks.put((incoming, payload, buffer))

    def drain(self) -> None:
        """Wait until every queued chunk is written (or has failed)."""
        with self._idle:
            while self._pending:
                self._idle.wait()
        crash, self._crash = self._crash, None
        if crash is not None:
            # Reported once: the cleanup that follows must still drain.
            raise AssertionError("internal error: writer thread failed") from crash

    def close(self) -> None:
        self.drain()
        self._chunks.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            incoming, payload, buffer = chunk
            try:
                self._write(incoming, payload)
            except BaseException as exc:  # reported to the session thread
                self._crash = exc
            finally:
                self._free.put(buffer)
                with self._idle:
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()

    @staticmethod
    def _write(incoming: _Incoming, payload: memoryview) -> None:
        # Hashing here too takes it off the session thread, which is then
        # free to receive and decrypt the next chunk.
        assert incoming.hasher is not None
        incoming.hasher.update(payload)
        _write_chunk(incoming, payload)


def _write_chunk(incoming: _Incoming, payload: memoryview) -> None:
    """Write to the part file, keeping the first error on the file."""
    if incoming.write_error is not None or incoming.part is None:
        return
    try:
        incoming.part.write(payload)
    except RefusedError as exc:
        incoming.write_error = exc


class ReceiveSession:
    """Receives one job from an authenticated channel into a store."""

    def __init__(
        self,
        channel: Channel,
        store: LocalStore,
        session_id: str,
        watcher: Watcher | None = None,
    ) -> None:
        self.channel = channel
        self.store = store
        self.session_id = session_id
        self.watcher = watcher or Watcher()
        self.queue: collections.deque[_Incoming] = collections.deque()
        self.batch: list[_Incoming] = []
        self.batch_bytes = 0
        self.batch_started = 0.0
        self.names: set[str] = set()
        self.next_id = 0
        self.committed = 0
        self.writer = _WriteBehind(channel)

    def run(self, first: msgs.Message | None = None) -> None:
        """Serve until the sender's Close; clean up whatever is unfinished.

        ``first`` is a message already read from the channel.  Parts of
        large files are kept for a resume when the connection was lost;
        in every other failure they are deleted.

        Raises:
            FilexferError: the session failed; the peer has been told when
                the connection still worked.
        """
        keep = False
        try:
            self._serve(first)
        except FilexferError as exc:
            keep = isinstance(exc, ConnectError)
            self.channel.tell(exc)
            raise
        except KeyboardInterrupt:
            keep = True  # get interrupted by its user: resumable later
            raise
        finally:
            self._discard_unfinished(keep)
            self.writer.close()

    def _serve(self, first: msgs.Message | None) -> None:
        if first is not None and self._handle(first):
            return
        while True:
            self._before_receiving()
            buffer = self.writer.buffer()
            message = self.channel.recv(buffer)
            if isinstance(message, msgs.Data):
                self._on_data(memoryview(message.payload), buffer)
                continue
            self.writer.recycle(buffer)
            if self._handle(message):
                return

    def _handle(self, message: msgs.Message) -> bool:
        """Act on one message other than Data; True after the Close."""
        if isinstance(message, msgs.Data):
            raise ProtocolError("data for a file that was not accepted")
        if not isinstance(message, msgs.Close):
            self._dispatch(message)
            return False
        if self.queue:
            self.watcher.closing()  # names the file, where the watcher can
            raise ProtocolError("close before the end of an accepted file")
        self._flush()
        self.watcher.closing()
        self.channel.send(msgs.Close())
        self.channel.flush()
        return True

    def _before_receiving(self) -> None:
        """Batch replies while input is here; commit a batch that has aged.

        Accepts and Dones are held back while more input is waiting on the
        socket and sent together, in one write, once REPLIES_HELD bytes of
        them are held and before this side would block: the sender never
        waits on a reply held here.  Finished files wait at most
        BATCH_SECONDS for their commit, whether the next file is still
        streaming or the sender has gone quiet.
        """
        if self.channel.input_waiting():
            if self.channel.held >= REPLIES_HELD:
                self.channel.flush()  # the sender may be waiting for these
            self.channel.cork()
            if self.batch and self._batch_age() >= BATCH_SECONDS:
                self._flush()
            return
        self.channel.flush()
        if self.batch:
            left = max(0.0, BATCH_SECONDS - self._batch_age())
            if not self.channel.input_waiting(left):
                self._flush()

    def _batch_age(self) -> float:
        return time.monotonic() - self.batch_started

    def _dispatch(self, message: msgs.Message) -> None:
        if isinstance(message, msgs.Offer):
            self._on_offer(message)
        elif isinstance(message, msgs.End):
            self._on_end(message)
        elif isinstance(message, msgs.Abort):
            self._on_abort(message)
        else:
            raise ProtocolError(f"unexpected {type(message).__name__} from sender")

    # -- offers ---------------------------------------------------------

    def _on_offer(self, offer: msgs.Offer) -> None:
        if offer.file_id != self.next_id:
            raise ProtocolError("offer ids out of order")
        if len(self.queue) >= MAX_PENDING:
            raise ProtocolError("too many offers ahead of the data")
        self.next_id += 1
        offer = self.watcher.admit(offer)
        try:
            incoming = self._reserve(offer)
        except RefusedError as exc:
            self._log_refusal(offer.name, exc)
            self.channel.send(msgs.Reject(offer.file_id, exc.code, str(exc)))
            self.watcher.finished(offer, None, exc)
            return
        if offer.directory:
            # Created (durably) already: accepted and done at once; an
            # Accept with the empty digest says it was there before.
            there = None
            if incoming.placement.exists and not offer.fresh:
                there = EMPTY_DIGEST
            incoming.started = time.monotonic()
            self.channel.send(msgs.Accept(offer.file_id, 0, there))
            self._confirm(incoming, unchanged=there is not None)
            return
        self.names.add(offer.name)
        self.queue.append(incoming)
        self._accept(incoming)

    def _reserve(self, offer: msgs.Offer) -> _Incoming:
        """Check the offer and find what this side already holds of it."""
        if offer.name in self.names:
            # Only names still on their way are remembered, so that memory
            # stays bounded; a name offered again after its commit meets
            # the file it became (exists, or identical).
            raise RefusedError("sent twice in one job", Code.DUPLICATE)
        if offer.directory:
            made = self._with_files(self.store.make_directory, offer.name, offer.mode)
            return _Incoming(offer, made)
        placement = self._with_files(
            self.store.reserve,
            offer.name,
            offer.size,
            offer.overwrite,
            same_size_ok=not offer.fresh,
            mtime_ns=offer.mtime_ns,
        )
        incoming = _Incoming(offer, placement)
        if placement.exists:
            self.channel.flush()  # earlier answers must not wait for the hash
            incoming.existing = self._existing_digest(incoming)
        elif not offer.fresh and placement.resume_name:
            self._resume(incoming)
        return incoming

    def _existing_digest(self, incoming: _Incoming) -> bytes:
        """Digest of the same-size file already there, for the sender to compare.

        Raises:
            RefusedError: it cannot be read (its name is then not usable).
        """
        try:
            fd, info = self._with_files(self.store.open_file, incoming.offer.name)
            incoming.existing_version = FileVersion.of(info)
            return digest_of(fd)
        except OSError as exc:
            self.store.release(incoming.placement)
            raise refusal_for(exc) from exc
        except RefusedError:
            self.store.release(incoming.placement)
            raise

    def _resume(self, incoming: _Incoming) -> None:
        """Take over the part an interrupted transfer of this file left."""
        part = self.store.resumable_part(incoming.placement)
        if part is None:
            return
        try:
            hasher = part.prefix_hasher()
        except (OSError, RefusedError):
            part.abort()  # unreadable: the file starts over, fresh
            return
        incoming.part, incoming.hasher = part, hasher
        incoming.received = incoming.held = part.written
        incoming.started = time.monotonic()
        self._start_writing(incoming)

    def _accept(self, incoming: _Incoming) -> None:
        offer = incoming.offer
        if incoming.existing is not None:
            accept = msgs.Accept(offer.file_id, offer.size, incoming.existing)
        elif incoming.part is not None:
            assert incoming.hasher is not None
            digest = incoming.hasher.digest()
            accept = msgs.Accept(offer.file_id, incoming.received, digest)
            log.info(
                "event=transfer.resume session=%s key=%s path=%s offset=%d",
                self.session_id,
                self.channel.peer_short,
                log_value(offer.name),
                incoming.received,
            )
        else:
            accept = msgs.Accept(offer.file_id, 0)
        self.channel.send(accept)

    def _log_refusal(self, name: str, exc: RefusedError) -> None:
        level = logging.WARNING if exc.code is Code.BAD_PATH else logging.INFO
        log.log(
            level,
            "event=transfer.refused session=%s key=%s path=%s reason=%s",
            self.session_id,
            self.channel.peer_short,
            log_value(name),
            exc.code.name.lower(),
        )

    # -- data -----------------------------------------------------------

    def _current(self) -> _Incoming:
        if not self.queue:
            raise ProtocolError("data for a file that was not accepted")
        incoming = self.queue[0]
        idle = incoming.part is None and incoming.existing is None
        if idle and not incoming.discarding:
            if incoming.offer.size >= LARGE_FILE:
                # Files already complete are committed and confirmed now,
                # not after this one: an interruption must not cost them.
                self._flush()
            incoming.started = time.monotonic()
            incoming.hasher = blake3()
            try:
                incoming.part = self._open_part(incoming.placement)
            except RefusedError as exc:
                self._fail_current(incoming, exc)
                return incoming
            self._start_writing(incoming)
        return incoming

    def _open_part(self, placement: Placement) -> PartFile:
        def open_part() -> PartFile:
            self.store.hold_again(placement)  # a failed try gave it back
            return self.store.open_part(placement)

        return self._with_files(open_part)

    def _with_files(self, step: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a storage step; out of descriptors, commit the batch and retry.

        Files waiting for their commit hold a descriptor each, so a daemon
        under a low limit (many sessions, a small ``ulimit -n``) gets them
        back by committing early, and waiting a moment for other sessions
        to do the same, rather than refusing the next file.
        """
        for attempt in range(OPEN_ATTEMPTS):
            try:
                return step(*args, **kwargs)
            except RefusedError as exc:
                if attempt == OPEN_ATTEMPTS - 1 or not out_of_files(exc):
                    raise
            if not self._free_files() or attempt:
                time.sleep(OPEN_PAUSE)  # other sessions are committing theirs
        raise AssertionError("unreachable")

    def _free_files(self) -> bool:
        """Give descriptors back: commit the batch, close cached folders.

        Folders are closed only when no part file (which uses its folder's
        descriptor) is open.  Returns whether anything was given back.
        """
        freed = bool(self.batch)
        if self.batch:
            self._flush()
        if self.store.open_dirs and not any(item.part for item in self.queue):
            self.store.close_dirs()
            freed = True
        return freed

    @staticmethod
    def _start_writing(incoming: _Incoming) -> None:
        """A large file is written behind, by direct I/O where possible."""
        if incoming.part is not None and incoming.offer.size >= LARGE_FILE:
            incoming.write_behind = True
            incoming.part.use_direct_io()

    def _on_data(self, payload: memoryview, buffer: memoryview) -> None:
        incoming = self._current()
        if incoming.existing is not None:
            raise ProtocolError("data for a file the receiver already holds")
        if incoming.write_error is not None and not incoming.discarding:
            self._fail_current(incoming, incoming.write_error)
        if incoming.discarding:
            self.writer.recycle(buffer)
            return
        assert incoming.hasher is not None
        incoming.received += len(payload)
        if incoming.received > incoming.offer.size:
            self.writer.recycle(buffer)
            raise ProtocolError(
                f"{printable(incoming.offer.name)!r}: more bytes than offered"
            )
        self.watcher.progress(len(payload))
        if incoming.write_behind:
            self.writer.write(incoming, payload, buffer)
            return
        incoming.hasher.update(payload)
        _write_chunk(incoming, payload)
        self.writer.recycle(buffer)

    def _drop_part(self, incoming: _Incoming) -> None:
        """Delete the part file, once no queued write can still reach it."""
        if incoming.part is not None:
            self.writer.drain()
            incoming.part.abort()

    def _fail_current(self, incoming: _Incoming, exc: RefusedError) -> None:
        """Refuse the file mid-way; its remaining data is read and dropped."""
        self._drop_part(incoming)
        incoming.discarding = True
        level = logging.ERROR if exc.code is Code.NO_SPACE else logging.WARNING
        log.log(
            level,
            "event=transfer.failed session=%s key=%s path=%s reason=%s",
            self.session_id,
            self.channel.peer_short,
            log_value(incoming.offer.name),
            log_value(str(exc), relayed=True),
        )
        self.channel.send(msgs.Reject(incoming.offer.file_id, exc.code, str(exc)))
        self.watcher.finished(incoming.offer, None, exc)

    def _take_current(self, file_id: int) -> _Incoming:
        incoming = self._current()
        if incoming.offer.file_id != file_id:
            raise ProtocolError("end or abort for a file that is not current")
        self.queue.popleft()
        self.names.discard(incoming.offer.name)
        return incoming

    def _on_end(self, end: msgs.End) -> None:
        incoming = self._take_current(end.file_id)
        if incoming.discarding:
            return
        if incoming.existing is not None:
            self._on_end_of_existing(incoming, end)
            return
        if incoming.write_behind:
            self.writer.drain()  # the writer hashes what it writes
        hasher = incoming.hasher
        assert hasher is not None
        if end.size != incoming.offer.size or incoming.received != end.size:
            self._drop_part(incoming)
            raise ProtocolError(f"{printable(incoming.offer.name)!r}: size mismatch")
        if hasher.digest() != end.digest:
            self._digest_mismatch(incoming)
            return
        self._add_to_batch(incoming)

    def _on_end_of_existing(self, incoming: _Incoming, end: msgs.End) -> None:
        """The sender found its file identical to the one here: nothing to do."""
        self.store.release(incoming.placement)
        if end.size != incoming.offer.size or end.digest != incoming.existing:
            self._digest_mismatch(incoming)
            return
        offer = incoming.offer
        if offer.overwrite:
            # Asked to replace: the same bytes get the sender's mode and mtime.
            assert incoming.existing_version is not None
            metadata = (offer.mode, offer.mtime_ns, end.digest)
            try:
                self._with_files(
                    self.store.refresh, offer.name, incoming.existing_version, metadata
                )
            except RefusedError as exc:
                self._fail_current(incoming, exc)
                return
        log.info(
            "event=transfer.unchanged session=%s key=%s path=%s bytes=%d",
            self.session_id,
            self.channel.peer_short,
            log_value(incoming.offer.name),
            incoming.offer.size,
        )
        self.channel.send(msgs.Done(incoming.offer.file_id, end.digest))
        size = incoming.offer.size
        self.watcher.finished(incoming.offer, end.digest, None, size, unchanged=True)

    def _digest_mismatch(self, incoming: _Incoming) -> None:
        self._drop_part(incoming)
        log.warning(
            "event=transfer.digest_mismatch session=%s key=%s path=%s",
            self.session_id,
            self.channel.peer_short,
            log_value(incoming.offer.name),
        )
        self.channel.send(
            msgs.Reject(incoming.offer.file_id, Code.INTEGRITY, "digest mismatch")
        )
        error = IntegrityError(f"{printable(incoming.offer.name)}: digest mismatch")
        self.watcher.finished(incoming.offer, None, error)

    def _on_abort(self, abort: msgs.Abort) -> None:
        incoming = self._take_current(abort.file_id)
        if incoming.part is not None:
            self._drop_part(incoming)
        else:
            self.store.release(incoming.placement)
        log.info(
            "event=transfer.aborted session=%s key=%s path=%s bytes=%d reason=%s",
            self.session_id,
            self.channel.peer_short,
            log_value(incoming.offer.name),
            incoming.received,
            log_value(abort.reason, relayed=True),
        )
        if incoming.discarding:
            return  # failed here first (and reported): the abort only answers
        reason = named(incoming.offer.name, printable_relayed(abort.reason))
        self.watcher.finished(incoming.offer, None, from_code(abort.code, reason))

    # -- commits --------------------------------------------------------

    def _add_to_batch(self, incoming: _Incoming) -> None:
        if not self.batch:
            self.batch_started = time.monotonic()
        self.batch.append(incoming)
        self.names.add(incoming.offer.name)  # until its commit
        self.batch_bytes += incoming.offer.size
        if (
            len(self.batch) >= BATCH_FILES
            or self.batch_bytes >= BATCH_BYTES
            or self._batch_age() >= BATCH_SECONDS
            or not self._more_waiting()
        ):
            self._flush()

    def _more_waiting(self) -> bool:
        """Whether the sender is still streaming: bytes arrive within a pause.

        Waiting a moment before calling the stream idle keeps a sender that
        is only a little slower than this side from causing one sync per
        file; a sender that has finished gets its confirmations after at
        most FLUSH_PAUSE.
        """
        if self.channel.input_waiting():
            return True
        self.channel.flush()  # the sender may be waiting for a held reply
        return self.channel.input_waiting(FLUSH_PAUSE)

    def _flush(self) -> None:
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        if not batch:
            return
        self.names.difference_update(item.offer.name for item in batch)
        self.writer.drain()
        for item in batch:
            self._finish(item)
        parts = [
            item.part for item in batch if item.part is not None and not item.discarding
        ]
        try:
            self._make_durable(parts)
        except (OSError, RefusedError) as exc:
            refusal = exc if isinstance(exc, RefusedError) else refusal_for(exc)
            for item in batch:
                if not item.discarding:
                    self._fail_current(item, refusal)
            return
        for item in batch:
            if not item.discarding:
                self._commit(item)
        try:
            self.store.sync_dirs(parts)
        except OSError as exc:
            # Complete and verified under their names, but not known to be
            # durable: not confirmed (the README's "may exist").
            for item in batch:
                if not item.discarding:
                    self._fail_current(item, refusal_for(exc))
            return
        for item in batch:
            if not item.discarding:
                self._confirm(item)
        self.channel.flush()  # confirmations go out now, not after the next file
        if not any(item.part for item in self.queue):
            # A part still streaming holds one of the cached descriptors.
            self.store.close_dirs()

    def _finish(self, item: _Incoming) -> None:
        """Check the file's writes and give it the offered mode and mtime."""
        assert item.part is not None
        try:
            if item.write_error is not None:
                raise item.write_error
            assert item.hasher is not None
            item.part.finish(item.offer.mode, item.offer.mtime_ns, item.hasher.digest())
        except RefusedError as exc:
            self._fail_current(item, exc)

    def _make_durable(self, parts: list[PartFile]) -> None:
        if len(parts) == 1 or not self.store.sync_all():
            for part in parts:
                part.sync()

    def _commit(self, item: _Incoming) -> None:
        assert item.part is not None
        try:
            item.part.commit()
        except RefusedError as exc:
            if exc.code is Code.EXISTS and self._now_identical(item):
                return  # another session stored the same bytes meanwhile
            self._fail_current(item, exc)

    def _now_identical(self, item: _Incoming) -> bool:
        """Whether the file that took the name meanwhile has our bytes."""
        assert item.hasher is not None
        try:
            fd, info = self.store.open_file(item.offer.name)
            if info.st_size != item.offer.size:
                os.close(fd)
                return False
            return digest_of(fd) == item.hasher.digest()
        except (OSError, RefusedError):
            return False

    def _confirm(self, item: _Incoming, unchanged: bool = False) -> None:
        digest = item.hasher.digest() if item.hasher is not None else EMPTY_DIGEST
        self.channel.send(msgs.Done(item.offer.file_id, digest))
        self.watcher.finished(item.offer, digest, None, item.held, unchanged)
        self.committed += 1
        log.info(
            "event=transfer.complete session=%s key=%s path=%s bytes=%d "
            "seconds=%.3f digest=%s",
            self.session_id,
            self.channel.peer_short,
            log_value(item.offer.name),
            item.offer.size,
            time.monotonic() - item.started,
            digest.hex()[:16],
        )

    # -- endings --------------------------------------------------------

    def _discard_unfinished(self, keep: bool) -> None:
        """Delete what was not committed; keep resumable parts if asked."""
        self.writer.drain()
        for item in list(self.queue) + self.batch:
            if item.part is None:
                self.store.release(item.placement)
                continue
            kept = keep and item.part.resumable
            if item.part.part_name:
                log.info(
                    "event=transfer.%s session=%s key=%s path=%s bytes=%d "
                    "reason=session_ended",
                    "kept_for_resume" if kept else "aborted",
                    self.session_id,
                    self.channel.peer_short,
                    log_value(item.offer.name),
                    item.received,
                )
            if kept:
                item.part.keep()
            else:
                item.part.abort()
        self.queue.clear()
        self.batch.clear()
        self.store.close_dirs()
