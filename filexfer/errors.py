"""The one exception hierarchy of filexfer, and the exit code of each kind.

Every failure that a user can cause or meet is one of these classes, and
each kind maps to exactly one process exit code::

    FilexferError                 1  unexpected error (a bug; see --debug)
    ├── UsageError                2  bad arguments, options or config
    ├── ConnectError              3  cannot connect, or the connection broke
    │   └── PeerTimeoutError      3  the peer stopped responding
    ├── TrustError                4  unknown/changed receiver key, sender
    │                                not authorized
    ├── IntegrityError            5  a record or a digest failed to verify
    │   └── ProtocolError         5  the peer broke the protocol
    ├── RefusedError              6  the receiver refused a file (exists,
    │                                bad path, no space, not found, I/O)
    ├── PartialError              7  some files of a job failed, the rest
    │                                arrived
    ├── LocalFileError            8  a local file could not be read or
    │                                written, a name cannot be sent, a
    │                                file changed while being sent, or
    │                                stdout could not take the output
    └── InterruptError          130  the job was stopped (Ctrl-C, SIGTERM)

Errors that travel to the peer carry a :class:`Code`, the one-byte reason
on the wire; :func:`from_code` turns a received code back into the class
that the local side raises.

Messages are lowercase, one line, no final period: the CLI prints them as
``filexfer: error: <message>``.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Reason codes carried by ``Reject`` and ``Error`` messages."""

    INTERNAL = 1
    PROTOCOL = 2
    INTEGRITY = 3
    NOT_AUTHORIZED = 4
    BUSY = 5
    TIMEOUT = 6
    READ_ONLY = 7
    EXISTS = 10
    BAD_PATH = 11
    NO_SPACE = 12
    IO_ERROR = 13
    NOT_FOUND = 14
    SOURCE_CHANGED = 15
    DUPLICATE = 16
    NOT_REGULAR = 17


class FilexferError(Exception):
    """Root of every error filexfer raises on purpose."""

    exit_code = 1
    code = Code.INTERNAL
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(FilexferError):
    exit_code = 2


class ConnectError(FilexferError):
    exit_code = 3


class PeerTimeoutError(ConnectError):
    code = Code.TIMEOUT


class TrustError(FilexferError):
    exit_code = 4
    code = Code.NOT_AUTHORIZED


class IntegrityError(FilexferError):
    exit_code = 5
    code = Code.INTEGRITY


class ProtocolError(IntegrityError):
    code = Code.PROTOCOL


class RefusedError(FilexferError):
    exit_code = 6

    def __init__(self, message: str, code: Code, **kwargs: str | None) -> None:
        super().__init__(message, **kwargs)
        self.code = code


class PartialError(FilexferError):
    exit_code = 7


class LocalFileError(FilexferError):
    exit_code = 8
    code = Code.IO_ERROR
    # What the peer is told, when the message names a local path the
    # peer has no business seeing (the daemon's own, serving get).
    peer_reason: str | None = None


class InterruptError(FilexferError):
    # 128 + SIGINT, what a shell reports for a program Ctrl-C stopped.
    exit_code = 130

    def __init__(self, message: str = "interrupted; copy not completed") -> None:
        super().__init__(message)


# Every class a user can meet, in the order of the table above; a test
# checks that their codes are distinct per kind and documented.
ALL_ERRORS: tuple[type[FilexferError], ...] = (
    FilexferError,
    UsageError,
    ConnectError,
    PeerTimeoutError,
    TrustError,
    IntegrityError,
    ProtocolError,
    RefusedError,
    PartialError,
    LocalFileError,
    InterruptError,
)

_FILE_CODES = frozenset(
    {
        Code.EXISTS,
        Code.BAD_PATH,
        Code.NO_SPACE,
        Code.IO_ERROR,
        Code.NOT_FOUND,
        Code.DUPLICATE,
        Code.NOT_REGULAR,
    }
)


_NOT_AUTHORIZED_HINT = (
    "give the receiver's owner your key (the fx1... line 'filexfer id' "
    "prints) to add with 'filexfer allow'"
)


def os_reason(exc: OSError) -> str:
    """The system's reason for an OSError, worded like our messages."""
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


def from_code(code: int, message: str) -> FilexferError:
    """Build the local error for a reason code received from the peer."""
    try:
        known = Code(code)
    except ValueError:
        return ProtocolError(f"peer sent unknown error code {code}: {message}")
    if known in _FILE_CODES:
        return RefusedError(message, known)
    if known is Code.NOT_AUTHORIZED:
        return TrustError(message, hint=_NOT_AUTHORIZED_HINT)
    if known is Code.READ_ONLY:
        return TrustError(message)
    if known is Code.TIMEOUT:
        return PeerTimeoutError(message)
    if known is Code.BUSY:
        return ConnectError(
            message, hint="the receiver is at its session limit; try again later"
        )
    if known is Code.SOURCE_CHANGED:
        return LocalFileError(message)
    if known in (Code.INTEGRITY, Code.PROTOCOL):
        return (IntegrityError if known is Code.INTEGRITY else ProtocolError)(message)
    return FilexferError(message)
