"""Identity keys, authorized senders, known receivers and fingerprints.

How this works
--------------
Each installation has one X25519 identity, created on first use in the
config directory (``$FILEXFER_HOME``, else ``$XDG_CONFIG_HOME/filexfer``,
else ``~/.config/filexfer``).  Files there:

``identity``             the private key; created with mode 0600 by an
                         exclusive create, so it is never world-readable,
                         not even for an instant.
``authorized_senders``   receiver side: one public key line per sender
                         allowed to connect; ``#`` comments, blank lines
                         and a trailing comment after the key are allowed.
``known_receivers``      sender side: ``HOST:PORT KEY`` pins, trust on
                         first use as in ssh.

A public key line is ``fx1`` followed by the 32 key bytes in unpadded
URL-safe base64.  A fingerprint is ``SHA256:`` followed by the unpadded
base64 of the SHA-256 of those 32 bytes (the form ssh users know).

Nothing here logs or prints a private key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from .errors import TrustError, UsageError

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


def fingerprint(raw: bytes) -> str:
    """Return the ``SHA256:...`` fingerprint of a raw public key."""
    digest = hashlib.sha256(raw).digest()
    return "SHA256:" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def short_fingerprint(raw: bytes) -> str:
    """A short form for log lines; never used for trust decisions."""
    return fingerprint(raw)[:19]


@dataclass(frozen=True)
class Identity:
    private: X25519PrivateKey

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_line(self) -> str:
        return encode_public(self.public)


def _ensure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_private(path: Path, key: X25519PrivateKey) -> None:
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(PRIVATE_PREFIX + _b64(raw) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _read_private(path: Path) -> X25519PrivateKey:
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        if not text.startswith(PRIVATE_PREFIX):
            raise ValueError
        raw = base64.urlsafe_b64decode(text[len(PRIVATE_PREFIX) :] + "=")
        return X25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise UsageError(f"identity file {path} is damaged") from None


def load_identity(home: Path | None = None, create: bool = True) -> Identity:
    """Load this installation's identity, creating it on first use.

    Raises:
        UsageError: the identity file is missing (create=False) or damaged.
    """
    home = home or config_dir()
    path = home / IDENTITY_FILE
    if not path.exists():
        if not create:
            raise UsageError(f"no identity at {path}; run 'filexfer id' first")
        _ensure_dir(home)
        try:
            _write_private(path, X25519PrivateKey.generate())
        except FileExistsError:
            pass  # another process created it first; use theirs
    return Identity(_read_private(path))


def _key_lines(path: Path) -> list[tuple[str, str]]:
    """Return (first word, rest) for every non-comment line of a file."""
    if not path.exists():
        return []
    result = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split(None, 1)
        if words and not words[0].startswith("#"):
            result.append((words[0], words[1].strip() if len(words) > 1 else ""))
    return result


def _append_line(path: Path, line: str) -> None:
    _ensure_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def authorized_senders(home: Path | None = None) -> frozenset[bytes]:
    """Return the raw keys listed in the authorized-senders file.

    Raises:
        UsageError: a line holds something that is not a key.
    """
    path = (home or config_dir()) / AUTHORIZED_FILE
    keys = set()
    for number, (word, _rest) in enumerate(_key_lines(path), 1):
        try:
            keys.add(decode_public(word))
        except UsageError as exc:
            raise UsageError(f"{path}: entry {number}: {exc}") from None
    return frozenset(keys)


def allow_sender(key_text: str, comment: str = "", home: Path | None = None) -> bool:
    """Add a sender key to the authorized list; False if already there."""
    raw = decode_public(key_text)
    home = home or config_dir()
    if raw in authorized_senders(home):
        return False
    line = encode_public(raw) + (f" {comment}" if comment else "")
    _append_line(home / AUTHORIZED_FILE, line)
    return True


class KnownReceivers:
    """The sender's pins: which key each HOST:PORT must present."""

    def __init__(self, home: Path | None = None) -> None:
        self.path = (home or config_dir()) / KNOWN_FILE

    def lookup(self, address: str) -> bytes | None:
        for word, rest in _key_lines(self.path):
            if word == address and rest:
                return decode_public(rest)
        return None

    def pin(self, address: str, raw: bytes) -> None:
        _append_line(self.path, f"{address} {encode_public(raw)}")


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
