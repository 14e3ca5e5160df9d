"""Typed protocol messages and their byte encoding.

How this works
--------------
Every record's plaintext is exactly one message: a one-byte type followed
by a fixed big-endian layout and, for some types, one trailing UTF-8
string with a u16 length.  ``Data`` is the exception that makes the fast
path cheap: its body is the raw chunk, so the channel can read a file
straight into a record buffer after one type byte.

All sizes, offsets and ids are unsigned 64-bit; mtimes are signed 64-bit
nanoseconds.  Nothing here is trusted: :func:`decode` checks the type, the
exact length, the string's UTF-8 and its length limit, and raises
:class:`MessageError` for anything else.  Names are not checked for safety
here; that is the storage layer's job, in one place.

The byte layouts are listed in ``docs/protocol.md``; this module is their
one implementation.

Messages are named tuples, which are cheaper than dataclasses both to
define (every command's start-up) and to build (one per record).  Unlike
plain tuples, two messages are equal only if they are of the same type.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, NamedTuple, TypeVar

PROTOCOL_VERSION = 1
DIGEST_LEN = 32
MAX_TEXT = 4096  # longest name or reason, in UTF-8 bytes
MAX_GETS = 1024  # most Get requests in one download


def mtime_fits(mtime_ns: int) -> bool:
    """Whether an mtime (ns since 1970) fits the i64 the messages carry."""
    return -(2**63) <= mtime_ns < 2**63


_Class = TypeVar("_Class", bound=type)


def _equal_by_type(cls: _Class) -> _Class:
    """A message is equal only to a message of the same type: a Reject is
    never equal to an Abort with the same fields, nor Close() to ``()``."""
    cls.__eq__ = _same  # type: ignore[assignment,method-assign]
    cls.__ne__ = _different  # type: ignore[assignment,method-assign]
    return cls


def _same(one: tuple[object, ...], other: object) -> bool:
    if type(one) is not type(other):
        return False
    assert isinstance(other, tuple)
    return tuple(one) == tuple(other)


def _different(one: tuple[object, ...], other: object) -> bool:
    return not _same(one, other)


class MessageError(Exception):
    """A plaintext that is not a well-formed message."""


class Kind(enum.IntEnum):
    HELLO = 0x00
    OFFER = 0x01
    ACCEPT = 0x02
    REJECT = 0x03
    DATA = 0x10
    END = 0x11
    ABORT = 0x12
    DONE = 0x13
    CLOSE = 0x20
    ERROR = 0x21
    LIST = 0x30
    ENTRY = 0x31
    GET = 0x32


@_equal_by_type
class Hello(NamedTuple):
    """Handshake payload: protocol version and the largest record accepted."""

    version: int
    max_plaintext: int


@_equal_by_type
class Offer(NamedTuple):
    """Sender proposes a file (or a directory): id in job order, name, metadata.

    ``fresh`` asks the receiver not to reuse anything it holds (no resume,
    no skip); ``directory`` offers an empty folder to create.
    """

    file_id: int
    size: int
    mtime_ns: int
    mode: int
    overwrite: bool
    name: str
    fresh: bool = False
    directory: bool = False


@_equal_by_type
class Accept(NamedTuple):
    """Receiver takes the file; with a digest, it already holds a prefix.

    ``digest`` is the BLAKE3 of the first ``offset`` bytes the receiver
    holds (the whole file when offset equals the size); the sender sends
    only what follows, after checking that its own prefix has that digest.
    """

    file_id: int
    offset: int
    digest: bytes | None = None


@_equal_by_type
class Reject(NamedTuple):
    """Receiver refuses (or, after Accept, fails) one file; job goes on."""

    file_id: int
    code: int
    reason: str


@_equal_by_type
class Data(NamedTuple):
    """The next chunk of the file currently being sent."""

    payload: memoryview | bytes


@_equal_by_type
class End(NamedTuple):
    """Sender has sent every byte of file_id; digest covers the whole file."""

    file_id: int
    size: int
    digest: bytes


@_equal_by_type
class Abort(NamedTuple):
    """Sender gives up on the current file; the receiver discards it."""

    file_id: int
    code: int
    reason: str


@_equal_by_type
class Done(NamedTuple):
    """Receiver committed file_id durably; digest is its own computation."""

    file_id: int
    digest: bytes


@_equal_by_type
class Close(NamedTuple):
    """No more files from this side; answered by Close after the last Done."""


@_equal_by_type
class Error(NamedTuple):
    """Fatal: the session ends after this message."""

    code: int
    reason: str


@_equal_by_type
class List(NamedTuple):
    """Initiator asks what is stored under name ("" for everything)."""

    name: str
    recursive: bool


@_equal_by_type
class Entry(NamedTuple):
    """One stored file or directory, answering List; digest when known."""

    size: int
    mtime_ns: int
    mode: int
    directory: bool
    digest: bytes | None
    name: str


@_equal_by_type
class Get(NamedTuple):
    """Initiator asks for a stored file or tree; ``last`` ends the requests."""

    name: str
    recursive: bool
    last: bool


Message = (
    Hello
    | Offer
    | Accept
    | Reject
    | Data
    | End
    | Abort
    | Done
    | Close
    | Error
    | List
    | Entry
    | Get
)


OFFER_OVERWRITE = 0x01
OFFER_FRESH = 0x02
OFFER_DIRECTORY = 0x04
ENTRY_DIRECTORY = 0x01
ENTRY_DIGEST = 0x02
GET_RECURSIVE = 0x01
GET_LAST = 0x02
_NO_DIGEST = bytes(DIGEST_LEN)

# Fixed part of each type's body; a trailing u16-length string follows for
# the types listed in _WITH_TEXT.
_LAYOUT: dict[Kind, struct.Struct] = {
    Kind.HELLO: struct.Struct(">HI"),
    Kind.OFFER: struct.Struct(">QQqIB"),
    Kind.ACCEPT: struct.Struct(">QQB"),
    Kind.REJECT: struct.Struct(">QB"),
    Kind.END: struct.Struct(f">QQ{DIGEST_LEN}s"),
    Kind.ABORT: struct.Struct(">QB"),
    Kind.DONE: struct.Struct(f">Q{DIGEST_LEN}s"),
    Kind.CLOSE: struct.Struct(">"),
    Kind.ERROR: struct.Struct(">B"),
    Kind.LIST: struct.Struct(">B"),
    Kind.ENTRY: struct.Struct(f">QqIB{DIGEST_LEN}s"),
    Kind.GET: struct.Struct(">B"),
}
_WITH_TEXT = frozenset(
    {Kind.OFFER, Kind.REJECT, Kind.ABORT, Kind.ERROR, Kind.LIST, Kind.ENTRY, Kind.GET}
)
ACCEPT_DIGEST = 0x01
_TEXT_LEN = struct.Struct(">H")


def _fields(message: Message) -> tuple[Kind, tuple[object, ...], str | None]:
    match message:
        case Hello(version, max_plaintext):
            return Kind.HELLO, (version, max_plaintext), None
        case Offer(file_id, size, mtime_ns, mode, overwrite, name, fresh, directory):
            flags = _flags(
                (overwrite, OFFER_OVERWRITE),
                (fresh, OFFER_FRESH),
                (directory, OFFER_DIRECTORY),
            )
            return Kind.OFFER, (file_id, size, mtime_ns, mode, flags), name
        case Accept(file_id, offset, digest):
            flags = _flags((digest is not None, ACCEPT_DIGEST))
            return Kind.ACCEPT, (file_id, offset, flags), None
        case List(name, recursive):
            return Kind.LIST, (_flags((recursive, GET_RECURSIVE)),), name
        case Entry(size, mtime_ns, mode, directory, digest, name):
            flags = _flags(
                (directory, ENTRY_DIRECTORY), (digest is not None, ENTRY_DIGEST)
            )
            values = (size, mtime_ns, mode, flags, digest or _NO_DIGEST)
            return Kind.ENTRY, values, name
        case Get(name, recursive, last):
            flags = _flags((recursive, GET_RECURSIVE), (last, GET_LAST))
            return Kind.GET, (flags,), name
        case Reject(file_id, code, reason):
            return Kind.REJECT, (file_id, code), reason
        case End(file_id, size, digest):
            return Kind.END, (file_id, size, digest), None
        case Abort(file_id, code, reason):
            return Kind.ABORT, (file_id, code), reason
        case Done(file_id, digest):
            return Kind.DONE, (file_id, digest), None
        case Close():
            return Kind.CLOSE, (), None
        case Error(code, reason):
            return Kind.ERROR, (code, reason), None
    raise TypeError(f"cannot encode {type(message).__name__}")


def _flags(*bits: tuple[bool, int]) -> int:
    return sum(bit for on, bit in bits if on)


def encode(message: Message) -> bytes:
    """Return the plaintext of one record carrying message."""
    if isinstance(message, Data):
        return bytes([Kind.DATA]) + bytes(message.payload)
    kind, values, text = _fields(message)
    if kind is Kind.ERROR:
        values, text = values[:1], str(values[1])
    body = _pack(kind, _LAYOUT[kind], values)
    if isinstance(message, Accept) and message.digest is not None:
        # The receiver's digest of the prefix it holds follows the flags.
        if len(message.digest) != DIGEST_LEN:
            raise ValueError("accept: digest must be 32 bytes")
        body += message.digest
    if kind in _WITH_TEXT:
        raw = (text or "").encode("utf-8")
        if len(raw) > MAX_TEXT:
            raise ValueError("text field too long")
        body += _TEXT_LEN.pack(len(raw)) + raw
    return bytes([kind]) + body


def _pack(kind: Kind, layout: struct.Struct, values: tuple[object, ...]) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error:
        # A size past 2**64 - 1, say: refuse it here, never wrap it.
        raise ValueError(f"{kind.name.lower()}: a field is out of range") from None


def _text(body: memoryview) -> str:
    if len(body) < _TEXT_LEN.size:
        raise MessageError("truncated text field")
    (length,) = _TEXT_LEN.unpack(body[: _TEXT_LEN.size])
    if length > MAX_TEXT or len(body) != _TEXT_LEN.size + length:
        raise MessageError("bad text field length")
    try:
        return bytes(body[_TEXT_LEN.size :]).decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("text field is not UTF-8") from None


def _build(kind: Kind, v: tuple[Any, ...], text: str) -> Message:
    if kind is Kind.HELLO:
        return Hello(v[0], v[1])
    if kind is Kind.OFFER:
        flags = _check_flags(
            "offer", v[4], OFFER_OVERWRITE | OFFER_FRESH | OFFER_DIRECTORY
        )
        directory = bool(flags & OFFER_DIRECTORY)
        if directory and v[1]:
            raise MessageError("directory offer with a size")
        overwrite, fresh = bool(flags & OFFER_OVERWRITE), bool(flags & OFFER_FRESH)
        return Offer(v[0], v[1], v[2], v[3], overwrite, text, fresh, directory)
    if kind is Kind.LIST:
        flags = _check_flags("list", v[0], GET_RECURSIVE)
        return List(text, bool(flags))
    if kind is Kind.ENTRY:
        flags = _check_flags("entry", v[3], ENTRY_DIRECTORY | ENTRY_DIGEST)
        digest = v[4] if flags & ENTRY_DIGEST else None
        return Entry(v[0], v[1], v[2], bool(flags & ENTRY_DIRECTORY), digest, text)
    if kind is Kind.GET:
        flags = _check_flags("get", v[0], GET_RECURSIVE | GET_LAST)
        return Get(text, bool(flags & GET_RECURSIVE), bool(flags & GET_LAST))
    if kind is Kind.REJECT:
        return Reject(v[0], v[1], text)
    if kind is Kind.END:
        return End(v[0], v[1], v[2])
    if kind is Kind.ABORT:
        return Abort(v[0], v[1], text)
    if kind is Kind.DONE:
        return Done(v[0], v[1])
    if kind is Kind.CLOSE:
        return Close()
    return Error(v[0], text)


def _accept(v: tuple[Any, ...], rest: memoryview) -> Accept:
    flags = _check_flags("accept", v[2], ACCEPT_DIGEST)
    if len(rest) != (DIGEST_LEN if flags else 0):
        raise MessageError("bad accept length")
    return Accept(v[0], v[1], bytes(rest) if flags else None)


def _check_flags(what: str, flags: int, allowed: int) -> int:
    if flags & ~allowed:
        raise MessageError(f"bad {what} flags")
    return flags


def decode(plaintext: memoryview | bytes) -> Message:
    """Parse one record's plaintext.

    ``Data`` keeps a view into plaintext: it is valid only as long as the
    caller's buffer is.

    Raises:
        MessageError: unknown type, wrong length, bad string.
    """
    view = memoryview(plaintext)
    if len(view) == 0:
        raise MessageError("empty message")
    try:
        kind = Kind(view[0])
    except ValueError:
        raise MessageError(f"unknown message type 0x{view[0]:02x}") from None
    if kind is Kind.DATA:
        return Data(view[1:])
    layout = _LAYOUT[kind]
    fixed, rest = view[1 : 1 + layout.size], view[1 + layout.size :]
    if len(fixed) != layout.size:
        raise MessageError(f"truncated {kind.name.lower()} message")
    text = ""
    if kind in _WITH_TEXT:
        text = _text(rest)
    elif kind is Kind.ACCEPT:
        return _accept(layout.unpack(fixed), rest)
    elif len(rest):
        raise MessageError(f"trailing bytes after {kind.name.lower()} message")
    return _build(kind, layout.unpack(fixed), text)
