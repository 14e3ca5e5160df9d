"""Identity keys, authorized senders, known receivers and fingerprints.

How this works
--------------
Each installation has one X25519 identity, created on first use in the
config directory (``$FILEXFER_HOME``, else ``$XDG_CONFIG_HOME/filexfer``,
else ``~/.config/filexfer``).  Files there:

``identity``             the private key, mode 0600.  It is written to a
                         temporary file of that mode, synced, then linked
                         to its name, which never replaces a file: of
                         processes racing to create it one wins, and no
                         reader ever sees it empty or half written.  An
                         identity that group or others can open is
                         refused, as ssh refuses such a key.
``authorized_senders``   receiver side: one public key line per sender
                         allowed to connect; ``#`` comments, blank lines
                         and a trailing comment after the key are allowed.
                         Options may precede the key, comma-separated:
                         ``read-only`` (may list and download, never
                         upload) and ``area=NAME`` (the folder under the
                         receiver's root this key works in).
``known_receivers``      sender side: ``HOST:PORT KEY`` pins, trust on
                         first use as in ssh.

Lines are separated by ``\n`` only, and an entry is appended on a line of
its own even when the file lacks a final newline; a comment given to
``allow`` must be one line of printable text, so it cannot start a second
entry.  A malformed entry is reported with the file and line number.

A public key line is ``fx1`` followed by the 32 key bytes in unpadded
URL-safe base64.  A fingerprint is ``SHA256:`` followed by the unpadded
base64 of the SHA-256 of those 32 bytes (the form ssh users know).

Nothing here logs or prints a private key.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import os
import shlex
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .disk import make_directories, sync_directory
from .errors import TrustError, UsageError, os_reason
from .printable import is_plain, printable

KEY_PREFIX = "fx1"
PRIVATE_PREFIX = "fx1-private-"
IDENTITY_FILE = "identity"
AUTHORIZED_FILE = "authorized_senders"
KNOWN_FILE = "known_receivers"


def config_dir() -> Path:
    """Return the config directory the environment selects (not created)."""
    if os.environ.get("FILEXFER_HOME"):
        return Path(os.environ["FILEXFER_HOME"])
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "filexfer"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def encode_public(raw: bytes) -> str:
    """Return the copy-pasteable public key line for 32 raw key bytes."""
    return KEY_PREFIX + _b64(raw)


def decode_public(text: str) -> bytes:
    """Parse a public key line (``fx1...``) into 32 raw bytes.

    Raises:
        UsageError: the text is not a well-formed key.
    """
    word = text.strip().split()[0] if text.strip() else ""
    if not word.startswith(KEY_PREFIX) or len(word) != len(KEY_PREFIX) + 43:
        raise UsageError(f"not a filexfer public key: {word[:60]!r}")
    try:
        raw = base64.urlsafe_b64decode(word[len(KEY_PREFIX) :] + "=")
    except ValueError:
        raise UsageError(f"not a filexfer public key: {word[:60]!r}") from None
    if len(raw) != 32 or encode_public(raw) != word:
        raise UsageError(f"not a filexfer public key: {word[:60]!r}")
    return raw


def _sha256(data: bytes) -> bytes:
    # cryptography's SHA-256, which is loaded anyway: hashlib would cost
    # every command a few ms of start-up for two small hashes.
    hasher = hashes.Hash(hashes.SHA256())
    hasher.update(data)
    return hasher.finalize()


def fingerprint(raw: bytes) -> str:
    """Return the ``SHA256:...`` fingerprint of a raw public key."""
    digest = _sha256(raw)
    return "SHA256:" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def short_fingerprint(raw: bytes) -> str:
    """A short form for log lines; never used for trust decisions."""
    return fingerprint(raw)[:19]


class Identity(NamedTuple):
    private: X25519PrivateKey

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes_raw()

    @property
    def public_line(self) -> str:
        return encode_public(self.public)


def _ensure_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"config directory {path} is not a directory")
    try:
        make_directories(path, 0o700)
    except OSError as exc:
        raise UsageError(
            f"cannot create config directory {path}: {os_reason(exc)}",
            hint="set FILEXFER_HOME to a directory you can write",
        ) from exc


def _create_identity(path: Path) -> None:
    """Put a new private key at path, unless a racing process did first."""
    key = X25519PrivateKey.generate()
    raw = key.private_bytes_raw()
    temp = path.with_name(f".{path.name}-{os.urandom(8).hex()}.tmp")
    try:
        _write_new(temp, (PRIVATE_PREFIX + _b64(raw) + "\n").encode("ascii"))
        _link_or_keep(temp, path)
    except OSError as exc:
        raise UsageError(
            f"cannot create identity file {path}: {os_reason(exc)}",
            hint="set FILEXFER_HOME to a directory you can write",
        ) from exc
    finally:
        temp.unlink(missing_ok=True)
    _sync_directory(path.parent)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _link_or_keep(temp: Path, path: Path) -> None:
    """Give temp's complete file the final name, never replacing one."""
    try:
        os.link(temp, path)
    except FileExistsError:
        pass  # another process won the race; its file is complete
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # A file system without hard links: rename is atomic too, so no
        # reader sees a partial file, but it replaces; two first uses that
        # race on such a file system may each see a different key once.
        if not path.exists():
            os.replace(temp, path)


def _sync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # the file itself is synced
        sync_directory(path)


def _read_private(path: Path) -> X25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UsageError(f"no identity at {path}; run 'filexfer id' first") from None
    except OSError as exc:
        raise UsageError(f"cannot read identity file {path}: {os_reason(exc)}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"identity file {path} is not a regular file")
    with os.fdopen(fd, "rb") as stream:
        _check_private_mode(path, os.fstat(stream.fileno()))
        try:
            data = stream.read(4096)
        except OSError as exc:
            raise UsageError(
                f"cannot read identity file {path}: {os_reason(exc)}"
            ) from exc
    text = data.decode("ascii", errors="replace").strip()
    try:
        if not text.startswith(PRIVATE_PREFIX):
            raise ValueError
        raw = base64.urlsafe_b64decode(text[len(PRIVATE_PREFIX) :] + "=")
        return X25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise UsageError(f"identity file {path} is damaged") from None


def _check_private_mode(path: Path, info: os.stat_result) -> None:
    """Refuse a private key that others may read or replace, as ssh does."""
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"identity file {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        how = "readable" if mode & 0o044 else "writable"
        raise UsageError(
            f"identity file {path} is {how} by others (mode {mode:04o})",
            hint=f"chmod 600 {shlex.quote(str(path))}",
        )


def load_identity(home: Path | None = None, create: bool = True) -> Identity:
    """Load this installation's identity, creating it on first use.

    Raises:
        UsageError: the identity file is missing (create=False), damaged,
            open to others, or cannot be created or read.
    """
    home = home or config_dir()
    path = home / IDENTITY_FILE
    if create and not os.path.lexists(path):
        _ensure_dir(home)
        _create_identity(path)
    return Identity(_read_private(path))


class _Entry(NamedTuple):
    """One non-comment line of a key file."""

    number: int  # 1-based line number in the file
    word: str  # the first word: a key, or HOST:PORT
    rest: str  # what follows it, stripped


def _entries(path: Path) -> list[_Entry]:
    """Every non-blank, non-comment line of a key file (none if missing)."""
    try:
        # A byte order mark some editors write is not part of the first line.
        text = path.read_text(encoding="utf-8", errors="replace").removeprefix("\ufeff")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {os_reason(exc)}") from exc
    entries = []
    # Split on \n alone: str.splitlines() would also break at characters
    # such as \x1c or \u2028, which an editor shows inside one line.
    for number, line in enumerate(text.split("\n"), 1):
        words = line.split(None, 1)
        if words and not words[0].startswith("#"):
            rest = words[1].strip() if len(words) > 1 else ""
            entries.append(_Entry(number, words[0], rest))
    return entries


def _decode_entry(path: Path, entry: _Entry, text: str) -> bytes:
    try:
        return decode_public(text)
    except UsageError as exc:
        raise UsageError(
            f"{path}: line {entry.number}: {exc}",
            hint="correct or remove that line",
        ) from None


def _append_line(
    path: Path, line: str, wanted: Callable[[], bool] | None = None
) -> None:
    """Append one line, starting a new line if the file lacks a final one.

    ``wanted``, called while the file is locked, may decide that the line
    is not needed after all (another process appended it meanwhile).
    """
    _ensure_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {os_reason(exc)}") from exc
    try:
        # The lock keeps two appending processes from interleaving their
        # check of the last byte with each other's writes.
        fcntl.flock(fd, fcntl.LOCK_EX)
        if wanted is not None and not wanted():
            return
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        data = (line + "\n").encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {os_reason(exc)}") from exc
    finally:
        os.close(fd)


class Grant(NamedTuple):
    """What one authorized key may do, and where.

    ``area`` is the folder under the receiver's root that the key works
    in, when its line names one; otherwise the receiver decides (its own
    area per key, or the shared root).
    """

    key: bytes
    write: bool = True
    area: str | None = None


AUTO_AREA_PREFIX = "key-"


def area_for(key: bytes) -> str:
    """The default area of a key: a folder name derived from the key alone."""
    return AUTO_AREA_PREFIX + _sha256(key).hex()[:16]


def check_area(name: str, write: bool = True) -> str:
    """An area is one plain folder name.

    A name of a key's own area (``key-...``) is allowed only for a
    read-only key: reading another key's files back is what a restore
    key is for, writing into them would not be expected.

    Raises:
        UsageError: it is empty, has a slash, starts with a dot, holds
            anything but letters, digits, ``-``, ``_`` and ``.``, or is a
            key's own area given to a key that may write.
    """
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    if not name or name.startswith(".") or len(name) > 64 or set(name) - allowed:
        raise UsageError(
            f"bad area name '{printable(name)}'",
            hint="use up to 64 letters, digits, '-', '_' or '.', not starting with '.'",
        )
    if write and name.startswith(AUTO_AREA_PREFIX):
        raise UsageError(
            f"bad area name '{printable(name)}': names starting with "
            f"'{AUTO_AREA_PREFIX}' are the keys' own areas",
            hint="pick another name, or give this key --read-only",
        )
    return name


_OPTIONS_HINT = "options are read-only and area=NAME, comma-separated, before the key"


def _grant_from(path: Path, entry: _Entry) -> Grant:
    """Parse ``[OPTIONS] KEY [COMMENT]``; options before the key, as in ssh."""

    def bad(why: str) -> UsageError:
        where = f"{path}: line {entry.number}"
        return UsageError(f"{where}: {why}", hint=_OPTIONS_HINT)

    second = entry.rest.split(None, 1)[0] if entry.rest else ""
    if entry.word.startswith(KEY_PREFIX) or not (
        second.startswith(KEY_PREFIX) or _looks_like_options(entry.word)
    ):
        # A line whose first word is neither a key nor options before
        # one is named by that word ("garbage here" is not about "here").
        options, key_word, comment = "", entry.word, entry.rest
    else:
        words = entry.rest.split(None, 1) if entry.rest else [""]
        options, key_word = entry.word, words[0]
        comment = words[1] if len(words) > 1 else ""
    raw = _decode_entry(path, entry, key_word)
    first = comment.split(None, 1)[0] if comment else ""
    if _looks_like_options(first):
        raise bad(f"option {printable(first)[:40]!r} after the key")
    words = options.split(",") if options else []
    write, areas = "read-only" not in words, []
    for option in words:
        name, _, value = option.partition("=")
        if name == "area" and value:
            try:
                areas.append(check_area(value, write))
            except UsageError as exc:
                raise bad(str(exc)) from None
        elif option != "read-only":
            raise bad(f"unknown option {printable(option)[:40]!r}")
    if len(areas) > 1:
        raise bad("more than one area=")
    return Grant(raw, write, areas[0] if areas else None)


def _looks_like_options(word: str) -> bool:
    """Whether a word reads as options (``read-only,area=x``), not a comment."""
    return any(
        option == "read-only" or option.startswith("area=")
        for option in word.split(",")
    )


def sender_grants(home: Path | None = None) -> dict[bytes, Grant]:
    """Return every authorized key with what it may do.

    Raises:
        UsageError: the file cannot be read, a line holds something that
            is not a key or an option, or a key is listed twice (the
            message names the file and lines).
    """
    path = (home or config_dir()) / AUTHORIZED_FILE
    grants: dict[bytes, Grant] = {}
    lines: dict[bytes, int] = {}
    for entry in _entries(path):
        grant = _grant_from(path, entry)
        if grant.key in grants:
            raise UsageError(
                f"{path}: line {entry.number}: the key of line "
                f"{lines[grant.key]} again",
                hint="keep one line per key",
            )
        grants[grant.key], lines[grant.key] = grant, entry.number
    return grants


def describe(grant: Grant) -> str:
    """``read-write, area key-...``: what a key may do, for messages."""
    access = "read-write" if grant.write else "read-only"
    return f"{access}, area {grant.area or area_for(grant.key)}"


def authorized_senders(home: Path | None = None) -> frozenset[bytes]:
    """Return the raw keys listed in the authorized-senders file.

    Raises:
        UsageError: as :func:`sender_grants`.
    """
    return frozenset(sender_grants(home))


def allow_sender(
    key_text: str,
    comment: str = "",
    home: Path | None = None,
    grant_options: tuple[bool, str | None] = (True, None),
) -> bool:
    """Add a sender key to the authorized list; False if already there.

    ``grant_options`` is (may upload, area or None).

    Raises:
        UsageError: the key is malformed, the comment is not one line of
            printable text, the area is not a plain name, or the file
            cannot be read or written.
    """
    if not is_plain(key_text.strip()):
        raise UsageError("the key must be one line without control characters")
    raw = decode_public(key_text)
    if not is_plain(comment):
        raise UsageError(
            f"the comment must be one line of printable text: '{printable(comment)}'"
        )
    if comment.split() and _looks_like_options(comment.split()[0]):
        raise UsageError(
            f"the comment {printable(comment)!r} reads as options",
            hint="give options as --read-only and --area NAME",
        )
    write, area = grant_options
    options = ([] if write else ["read-only"]) + (
        [f"area={check_area(area, write)}"] if area is not None else []
    )
    home = home or config_dir()
    existing = sender_grants(home).get(raw)
    if existing is not None:
        if (existing.write, existing.area) != (write, area):
            raise UsageError(
                f"{encode_public(raw)} is already authorized with other options "
                f"({describe(existing)})",
                hint=f"edit {home / AUTHORIZED_FILE} to change them",
            )
        return False
    words = [",".join(options)] if options else []
    words.append(encode_public(raw))
    if comment.strip():
        words.append(comment.strip())
    _append_line(home / AUTHORIZED_FILE, " ".join(words))
    return True


class KnownReceivers:
    """The sender's pins: which key each HOST:PORT must present."""

    def __init__(self, home: Path | None = None) -> None:
        self.path = (home or config_dir()) / KNOWN_FILE

    def lookup(self, address: str) -> bytes | None:
        """The key pinned for address, if any.

        Raises:
            UsageError: the file cannot be read, or address's entry is
                malformed (the message names the file and line).
        """
        found = None
        for entry in _entries(self.path):
            if entry.word == address:
                raw = _decode_entry(self.path, entry, entry.rest)
                found = found or raw  # every line for it is checked
        return found

    def pin(self, address: str, raw: bytes) -> None:
        """Append address's pin, unless another process pinned it meanwhile.

        Raises:
            TrustError: the pin made meanwhile is of another key (so one
                of the two connections did not reach the real receiver).
        """

        def still_unpinned() -> bool:
            known = self.lookup(address)
            check_pin(known, raw, address)
            return known is None

        _append_line(self.path, f"{address} {encode_public(raw)}", still_unpinned)


_B64_STANDARD = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)


def check_fingerprint_text(given: str) -> None:
    """Raise UsageError unless given has a form matches_fingerprint reads.

    The forms are a fingerprint (``SHA256:`` and 43 base64 characters, the
    prefix and ``=`` padding optional) and a public key line (``fx1...``).
    """
    text = given.strip()
    if text.startswith(KEY_PREFIX):
        decode_public(text)
        return
    digest = text.removeprefix("SHA256:").rstrip("=")
    if len(digest) != 43 or not set(digest) <= _B64_STANDARD:
        raise UsageError(
            f"not a fingerprint: {printable(given)!r}",
            hint="give it as 'filexfer id' prints it: SHA256:... (43 characters)",
        )


def matches_fingerprint(raw: bytes, given: str) -> bool:
    """True when given names this key, as a fingerprint or a key line."""
    given = given.strip()
    if given.startswith(KEY_PREFIX):
        return given == encode_public(raw)
    if not given.startswith("SHA256:"):
        given = "SHA256:" + given
    return given.rstrip("=") == fingerprint(raw)


def check_pin(known: bytes | None, presented: bytes, address: str) -> None:
    """Raise TrustError when a pinned key differs from the presented one."""
    if known is not None and known != presented:
        raise TrustError(
            f"receiver key for {address} has changed "
            f"(pinned {fingerprint(known)}, got {fingerprint(presented)})",
            hint="if the receiver really got a new key, remove its line "
            "from the known_receivers file",
        )
