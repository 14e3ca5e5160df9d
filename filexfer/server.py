"""The receiver daemon: accept loop, limits, handshakes, sessions, shutdown.

How this works
--------------
One listening socket; one thread per connection.  A connection first holds
a *handshake slot* (at most ``max_handshakes`` at once, each for at most
the handshake timeout); a stranger that cannot complete the handshake
never gets further, never makes the daemon write to disk, and costs at
most the fixed handshake buffers.  Connections beyond the slot limit are
closed at once.  After the handshake an authorized sender needs a
*session slot* (``max_sessions``); when all are busy it is told so with
an ``Error`` and the connection ends.

SIGINT and SIGTERM stop the accept loop and shut every session's socket;
each session then deletes its unfinished part files before the process
exits with status 0.  Part files left by a crash are removed at start-up.
The daemon never draws progress; it logs one line per event.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import secrets
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from . import messages as msgs
from .catalog import serve_reading
from .disk import load_libc, make_directories, raise_file_limit, wait_for_files
from .errors import Code, ConnectError, FilexferError, RefusedError, TrustError
from .keys import (
    Grant,
    Identity,
    area_for,
    fingerprint,
    sender_grants,
    short_fingerprint,
)
from .names import NameLimits
from .printable import log_value
from .receiver import ReceiveSession
from .records import MAX_PLAINTEXT
from .session import Channel, Timeouts, accept
from .storage import KEEP_MODES_MASK, MODE_MASK, LocalStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``filexfer recv`` can be told; each has a CLI flag."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 7757
    once: bool = False
    max_sessions: int = 16
    max_handshakes: int = 64
    max_record: int = MAX_PLAINTEXT
    min_free: int = 1 << 20
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: NameLimits = field(default_factory=NameLimits)
    config_home: Path | None = None
    # Every key works in the root itself instead of an area of its own
    # (a key whose line names an area still gets that area).
    shared: bool = False
    keep_modes: bool = False  # group/other write bits too


def _run_job(channel: Channel, store: LocalStore, grant: Grant, session_id: str) -> int:
    """Serve what the first message asks for; return the files handled.

    Raises:
        FilexferError: the session failed; the peer has been told.
    """
    try:
        first = channel.recv()
        if not isinstance(first, msgs.List | msgs.Get) and not grant.write:
            error = TrustError("this key may only list and download here")
            error.code = Code.READ_ONLY
            raise error
    except FilexferError as exc:
        channel.tell(exc)
        raise
    if isinstance(first, msgs.List | msgs.Get):
        return serve_reading(channel, store, first, session_id)
    session = ReceiveSession(channel, store, session_id)
    session.run(first)
    return session.committed


# Descriptors one session may hold at once: its socket, a batch of part
# files waiting for their commit, and the directories they lie in.
FILES_PER_SESSION = 160
# Under a lower limit, sessions commit early and share what there is;
# connections still in their handshake (each a descriptor, more while it
# reads authorized_senders) must not take what the sessions wait for.
FILES_PER_HANDSHAKE = 4
FILES_KEPT = 16  # standard streams, the listener, the log, libraries
# With every handshake slot taken, a newcomer takes the slot of a
# connection that has sent nothing for at least this long: a client sends
# its first handshake message as soon as it connects (its bytes arrive
# with the end of the TCP handshake), so idle connections cannot hold the
# slots.  The one taken is the oldest from the address that holds the most
# such connections, so a flood from one place evicts its own first.
SILENT_EVICT = 0.05


def _peer_text(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _has_input(conn: socket.socket) -> bool:
    """Whether bytes (or the end of the stream) wait on conn, unread."""
    poller = select.poll()
    try:
        poller.register(conn, select.POLLIN)
    except (OSError, ValueError):
        return False  # closed meanwhile
    return bool(poller.poll(0))


class Server:
    """Serves sessions until stopped (or after one session with ``once``)."""

    def __init__(self, config: ServerConfig, identity: Identity) -> None:
        self.config = config
        self.identity = identity
        self.stopping = threading.Event()
        self.handshake_slots = threading.BoundedSemaphore(config.max_handshakes)
        self.session_slots = threading.BoundedSemaphore(config.max_sessions)
        self.conns: set[socket.socket] = set()
        # Connections that have not sent a byte yet: when each was accepted,
        # and from where (the address, and the host alone).
        self.silent: dict[socket.socket, tuple[float, str, str]] = {}
        self.evicted: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()
        self.once_result: FilexferError | None = None
        self.grants = sender_grants(config.config_home)
        self.listener = self._listen()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        try:
            sock = socket.create_server(
                (self.config.host, self.config.port), family=family, backlog=128
            )
        except OSError as exc:
            where = _peer_text((self.config.host, self.config.port))
            raise ConnectError(
                f"cannot listen on {where}: {exc.strerror or exc}"
            ) from exc
        sock.settimeout(0.5)
        return sock

    def serve(self) -> None:
        """Run the accept loop until a signal (or the one session) ends it."""
        self._install_signals()
        removed = LocalStore(self.config.root).remove_stale_parts()
        open_files = raise_file_limit()
        load_libc()
        host, port = self.address
        log.info(
            "event=recv.listening address=%s key=%s root=%s stale_parts_removed=%d "
            "open_files=%d",
            _peer_text((host, port)),
            fingerprint(self.identity.public),
            log_value(str(self.config.root)),
            removed,
            open_files,
        )
        if open_files < self.config.max_sessions * FILES_PER_SESSION:
            self._fit_slots(open_files)
        try:
            while not self.stopping.is_set():
                self._accept_one()
        finally:
            self._shutdown()

    def _fit_slots(self, open_files: int) -> None:
        """Admit fewer handshakes at once under a low limit on open files.

        A crowd of connections (senders beyond the session limit, say)
        would otherwise hold the descriptors the sessions wait for, until
        those give up and refuse files; past the cap a connection is
        closed at once, as when the handshake slots are full.
        """
        spare = open_files - FILES_KEPT - 2 * self.config.max_sessions
        handshakes = min(
            self.config.max_handshakes, max(1, spare // FILES_PER_HANDSHAKE)
        )
        self.handshake_slots = threading.BoundedSemaphore(handshakes)
        log.warning(
            "event=recv.low_file_limit open_files=%d max_sessions=%d "
            "handshakes=%d effect=smaller_commit_batches",
            open_files,
            self.config.max_sessions,
            handshakes,
        )

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("event=recv.stopping signal=%s", signal.Signals(signum).name)
        self._stop()

    def _stop(self) -> None:
        """End the accept loop now: a shut-down listener wakes accept()."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)

    def _accept_one(self) -> None:
        try:
            conn, address = self.listener.accept()
        except (TimeoutError, InterruptedError):
            return
        except OSError as exc:
            # Out of descriptors or a connection reset while queued: the
            # loop must survive it, after a pause so it does not spin.
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning(
                    "event=recv.accept_failed error=%s", log_value(exc.strerror or "")
                )
                time.sleep(0.1)
            return
        # An evicted connection's thread gives its slot back at once; the
        # wait only covers a machine too busy to run that thread now.
        if not self.handshake_slots.acquire(blocking=False) and not (
            self._evict_silent() and self.handshake_slots.acquire(timeout=2.0)
        ):
            log.warning(
                "event=session.refused peer=%s reason=too_many_handshakes",
                _peer_text(address),
            )
            conn.close()
            return
        self._start(conn, address)

    def _evict_silent(self) -> bool:
        """Close a connection silent for SILENT_EVICT or more, if any.

        Its thread then gives its handshake slot back.  Returns whether one
        was closed.
        """
        now = time.monotonic()
        with self.lock:
            found = self._silent_victim(now)
            if found is None:
                return False
            conn, (since, peer, _) = found
            self.evicted.add(conn)
        log.warning(
            "event=session.evicted peer=%s reason=silent seconds=%.2f",
            peer,
            now - since,
        )
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        return True

    def _silent_victim(
        self, now: float
    ) -> tuple[socket.socket, tuple[float, str, str]] | None:
        """Take from ``silent`` (under the lock) the connection to evict: of
        those silent for SILENT_EVICT or more, the oldest from the host with
        the most.  One whose bytes wait unread by its thread is dropped
        from ``silent`` on the way: it is not silent."""
        candidates = []
        for conn, entry in list(self.silent.items()):
            if now - entry[0] < SILENT_EVICT:
                continue
            if _has_input(conn):
                del self.silent[conn]  # heard, not read yet
            else:
                candidates.append((conn, entry))
        if not candidates:
            return None
        per_host = collections.Counter(entry[2] for _, entry in candidates)
        victim = min(candidates, key=lambda item: (-per_host[item[1][2]], item[1][0]))
        del self.silent[victim[0]]
        return victim

    def _start(self, conn: socket.socket, address: object) -> None:
        thread = threading.Thread(
            target=self._handle, args=(conn, address), daemon=True
        )
        with self.lock:
            self.threads.add(thread)
            self.conns.add(conn)
            host = str(address[0]) if isinstance(address, tuple) else str(address)
            self.silent[conn] = (time.monotonic(), _peer_text(address), host)
        thread.start()

    def _heard(self, conn: socket.socket) -> bool:
        """Note that conn has sent its first message; False if evicted."""
        with self.lock:
            self.silent.pop(conn, None)
            return conn not in self.evicted

    def _handle(self, conn: socket.socket, address: object) -> None:
        session_id = secrets.token_hex(4)
        peer = _peer_text(address)
        channel = None
        try:
            channel = self._handshake(conn, peer, session_id)
        except Exception:
            log.error(
                "event=session.crashed session=%s peer=%s",
                session_id,
                peer,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        finally:
            with self.lock:  # no longer a candidate for eviction
                self.silent.pop(conn, None)
                self.evicted.discard(conn)
            self.handshake_slots.release()
        try:
            if channel is not None:
                self._run_session(channel, peer, session_id)
        except Exception:
            # A bug must cost one session, never the daemon.
            log.error(
                "event=session.crashed session=%s peer=%s",
                session_id,
                peer,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        finally:
            conn.close()
            with self.lock:
                self.threads.discard(threading.current_thread())
                self.conns.discard(conn)

    def _handshake(
        self, conn: socket.socket, peer: str, session_id: str
    ) -> Channel | None:
        try:
            return accept(
                conn,
                self.identity,
                self._authorized,
                self.config.timeouts,
                self.config.max_record,
                functools.partial(self._heard, conn),
            )
        except TrustError as exc:
            log.warning(
                "event=session.unauthorized session=%s peer=%s reason=%s",
                session_id,
                peer,
                log_value(str(exc), relayed=True),
            )
            _drain_and_close(conn)
        except FilexferError as exc:
            with self.lock:
                if conn in self.evicted:
                    return None  # logged as evicted
            log.warning(
                "event=session.handshake_failed session=%s peer=%s reason=%s",
                session_id,
                peer,
                log_value(str(exc), relayed=True),
            )
        return None

    def _authorized(self, key: bytes) -> bool:
        """Check a key against authorized_senders as it is now on disk.

        The file is read again for every sender, so an edit applies at
        once; if it has become unreadable or damaged, the last good list
        stays in force and the problem is logged.
        """
        try:
            # Out of descriptors is a moment to wait, not a damaged file.
            read = functools.partial(sender_grants, self.config.config_home)
            self.grants = wait_for_files(read)
        except FilexferError as exc:
            log.error(
                "event=recv.config_error reason=%s", log_value(str(exc), relayed=True)
            )
        return key in self.grants

    def _run_session(self, channel: Channel, peer: str, session_id: str) -> None:
        if not self.session_slots.acquire(blocking=False):
            log.warning(
                "event=session.refused session=%s peer=%s reason=busy", session_id, peer
            )
            with contextlib.suppress(FilexferError):
                channel.send(msgs.Error(Code.BUSY, "all sessions in use"))
            _drain_and_close(channel.sock)
            return
        try:
            self._serve_session(channel, peer, session_id)
        finally:
            self.session_slots.release()
        # After the slot is free: a peer slow to hang up must not keep
        # another sender out. Drain on failure too, so that the Error just
        # sent is not destroyed by the RST that closing over unread data
        # would cause.
        _drain_and_close(channel.sock)

    def _area(self, grant: Grant) -> Path:
        """The folder a key works in, created on its first session.

        Raises:
            TrustError: the receiver is --shared but the key's line, added
                since the start, gives it an area of its own, which the
                shared area would contain.
            OSError: it cannot be created (--dir is gone, say).
        """
        if self.config.shared and grant.area is not None:
            raise TrustError(
                f"key has area {grant.area} but the receiver runs --shared"
            )
        if self.config.shared:
            return self.config.root
        area = self.config.root / (grant.area or area_for(grant.key))
        make_directories(area, 0o700, parents=False)  # --dir may be gone
        return area

    def _open_area(self, key: bytes) -> tuple[Grant, Path, LocalStore]:
        """What the key may do, where, and the store over that place.

        Raises:
            FilexferError: the key has been removed from the file since its
                handshake (TrustError), or its area cannot be opened.
        """
        grant = self.grants.get(key)
        if grant is None:
            raise TrustError("sender key is no longer authorized")
        mask = KEEP_MODES_MASK if self.config.keep_modes else MODE_MASK

        def open_area() -> tuple[Path, LocalStore]:
            area = self._area(grant)
            config = self.config
            return area, LocalStore(area, config.limits, config.min_free, mask)

        try:
            area, store = wait_for_files(open_area)
        except OSError as exc:
            raise self._area_error(grant, exc) from exc
        return grant, area, store

    def _area_error(self, grant: Grant, exc: OSError) -> RefusedError:
        """The sender hears its area's name; the log has the whole path."""
        log.error(
            "event=recv.area_error path=%s reason=%s",
            log_value(str(exc.filename or self.config.root)),
            log_value(exc.strerror or ""),
        )
        name = "--dir" if self.config.shared else grant.area or area_for(grant.key)
        return RefusedError(f"cannot open area {name} ({exc.strerror})", Code.IO_ERROR)

    def _serve_session(self, channel: Channel, peer: str, session_id: str) -> None:
        key = short_fingerprint(channel.peer_key)
        try:
            grant, area, store = self._open_area(channel.peer_key)
        except FilexferError as exc:
            log.error(
                "event=session.refused session=%s key=%s reason=%s",
                session_id,
                key,
                log_value(str(exc), relayed=True),
            )
            channel.tell(exc)
            self._after_session(exc)
            return
        log.info(
            "event=session.start session=%s peer=%s key=%s area=%s",
            session_id,
            peer,
            key,
            log_value(area.name) if area != self.config.root else ".",
        )
        error: FilexferError | None = None
        files = 0
        try:
            files = _run_job(channel, store, grant, session_id)
        except FilexferError as exc:
            error = exc
            log.warning(
                "event=session.failed session=%s peer=%s key=%s reason=%s",
                session_id,
                peer,
                key,
                log_value(str(exc), relayed=True),
            )
        except Exception as exc:
            # A bug must cost one session, never the daemon (nor hang --once).
            error = FilexferError("internal error in the session")
            error.__cause__ = exc
            log.error(
                "event=session.crashed session=%s peer=%s key=%s",
                session_id,
                peer,
                key,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        finally:
            store.close()
        if error is None:
            log.info(
                "event=session.end session=%s peer=%s key=%s files=%d",
                session_id,
                peer,
                key,
                files,
            )
        self._after_session(error)

    def _after_session(self, error: FilexferError | None) -> None:
        if self.config.once:
            self.once_result = error
            self._stop()

    def _shutdown(self) -> None:
        self.listener.close()
        with self.lock:
            conns = list(self.conns)
            threads = list(self.threads)
        # Every connection, handshakes included: a stranger that says
        # nothing must not hold up the stop.
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 10
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        log.info("event=recv.stopped")


# How long, and how much, a closing connection is read before it is cut.
DRAIN_SECONDS = 1.0
DRAIN_BYTES = 4 << 20


def _drain_and_close(sock: socket.socket) -> None:
    """Close so that our last message arrives: FIN, not RST.

    Closing a socket with unread input makes the kernel send RST, which can
    destroy our final Error message in the peer's buffer.  So stop writing,
    read until the peer closes, then close.  The reading is bounded in
    bytes and in total time: a peer that keeps trickling bytes must not
    hold the thread (and its slot) past DRAIN_SECONDS.
    """
    deadline = time.monotonic() + DRAIN_SECONDS
    # Only OSError (timeouts included) can happen here, and every one
    # just means "stop reading": none is worth a log line.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        budget = DRAIN_BYTES
        while budget > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            budget -= len(data)
    with contextlib.suppress(OSError):
        sock.close()
