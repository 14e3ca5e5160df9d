"""The config file: host aliases and default options for put and recv.

How this works
--------------
``config.toml`` in the config directory (see :func:`keys.config_dir`), or
the file that ``--config`` or ``$FILEXFER_CONFIG`` names, holds up to
three kinds of section::

    [put]           defaults for every put
    [hosts.NAME]    NAME given as put's HOST: where that receiver is
                    (address, port), the fingerprint its key must have,
                    and put defaults for it alone
    [recv]          defaults for recv

For each option the command line wins, then the host's section, then
[put] (or [recv]), then the built-in default.  A missing default file is
an empty config; a file named on purpose must exist.

The whole file is checked when put or recv starts, before anything is
read, created or connected: a TOML syntax error, an unknown section or
key, a value of the wrong type or out of range is a UsageError that
names the file, the section and the key.  Addresses are checked by the
command line's own parser, which the caller passes in, so an address
means exactly the same in the file as on the command line.

Whoever can write this file decides which receiver key put trusts, as
whoever can write ``known_receivers`` does.  Nothing here does I/O but
reading the one file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from .errors import UsageError, os_reason
from .keys import check_fingerprint_text, config_dir
from .printable import printable
from .records import MAX_PLAINTEXT

CONFIG_FILE = "config.toml"
MAX_SECONDS = 86400.0  # as on the command line: longer is a typing mistake

# Letters, digits and the punctuation of host names: an alias can never be
# mistaken for HOST:PORT or [V6], which the command line parses instead.
_ALIAS = re.compile(r"[A-Za-z0-9._-]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class AddressParser(Protocol):
    """The command line's HOST[:PORT] parser; it raises UsageError."""

    def __call__(self, text: str, *, listening: bool = False) -> tuple[str, int]: ...


# -- value checks ------------------------------------------------------------
# Each returns the value to use, or raises UsageError saying what it must be;
# the caller adds the file, section and key.


class Flag:
    """A TOML boolean."""

    def __call__(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise UsageError("must be true or false")
        return value


class Integer(NamedTuple):
    """A TOML integer from low to high (no upper bound when high is None)."""

    low: int
    high: int | None = None

    def __call__(self, value: object) -> int:
        # bool is an int to Python, not to TOML: `port = true` is wrong.
        if type(value) is not int or not self._fits(value):
            if self.high is None:
                raise UsageError(f"must be an integer of at least {self.low}")
            raise UsageError(f"must be an integer from {self.low} to {self.high}")
        return value

    def _fits(self, value: int) -> bool:
        return self.low <= value and (self.high is None or value <= self.high)


class Seconds(NamedTuple):
    """A timeout: a TOML integer or float from low to high."""

    low: float = 0.1
    high: float = MAX_SECONDS

    def __call__(self, value: object) -> float:
        # TOML has nan and inf; neither passes the comparison.
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.low <= value <= self.high:
                return float(value)
        raise UsageError(
            f"must be a number of seconds from {self.low:g} to {self.high:g}"
        )


class Text:
    """A non-empty TOML string."""

    def __call__(self, value: object) -> str:
        if not isinstance(value, str) or not value:
            raise UsageError("must be a non-empty string")
        return value


class Fingerprint:
    """A receiver's fingerprint, in any form that --fingerprint takes."""

    def __call__(self, value: object) -> str:
        text = Text()(value)
        check_fingerprint_text(text)
        return text


Check = Flag | Integer | Seconds | Text | Fingerprint

# Keys a file may set, per section.  Trust on first use (--accept-new) is
# left out on purpose: a file pins a receiver with its fingerprint.
PUT_OPTIONS: Mapping[str, Check] = {
    "overwrite": Flag(),
    "quiet": Flag(),
    "json": Flag(),
    "progress": Flag(),
    "connect_timeout": Seconds(),
    "idle_timeout": Seconds(),
    "retry": Integer(0, 100),
}
HOST_OPTIONS: Mapping[str, Check] = {
    "address": Text(),
    "port": Integer(1, 65535),
    "fingerprint": Fingerprint(),
    **PUT_OPTIONS,
}
RECV_OPTIONS: Mapping[str, Check] = {
    "dir": Text(),
    "listen": Text(),
    "max_sessions": Integer(1),
    "max_handshakes": Integer(1),
    "handshake_timeout": Seconds(),
    "idle_timeout": Seconds(),
    "max_record": Integer(1024, MAX_PLAINTEXT),
    "max_name_bytes": Integer(1, 65535),
    "max_depth": Integer(1),
    "min_free": Integer(0),
    "shared": Flag(),
    "keep_modes": Flag(),
}
# What a [hosts.NAME] section gives get and ls: where, whom to trust, and
# how long to wait; the rest of it is put's.
_READ_HOST_OPTIONS = ("fingerprint", "connect_timeout", "idle_timeout", "retry")

# Where a key's name differs from the name of the command's parameter.
_PARAMETER = {"json": "as_json", "dir": "root_text", "fingerprint": "given_fp"}


# -- the parsed file ---------------------------------------------------------


class Host(NamedTuple):
    """One [hosts.NAME] section, ready for put."""

    name: str
    target: str  # HOST[:PORT] as put's last argument takes it
    options: Mapping[str, object]  # put defaults, fingerprint included


class Config(NamedTuple):
    """A checked config file (all empty when there is none)."""

    path: Path
    put: Mapping[str, object]
    recv: Mapping[str, object]
    hosts: Mapping[str, Host]

    def fill(
        self, command: str, params: Mapping[str, Any], given: Set[str]
    ) -> dict[str, Any]:
        """Return a command's parameters with the file's defaults filled in.

        Args:
            command: "put", "recv", or "get" and "ls" (which take a host's
                address, fingerprint and timeouts); others take nothing.
            params: the parameters click parsed, by parameter name.
            given: the names of those that the command line set; they win.
        """
        filled = dict(params)
        defaults: dict[str, object] = {}
        if command == "recv":
            defaults.update(self.recv)
        if command == "put":
            defaults.update(self.put)
            host = self._host(filled["args"])
            if host is not None:
                defaults.update(host.options)
                filled["args"] = (*filled["args"][:-1], host.target)
        if command in ("get", "ls"):
            host = self.hosts.get(filled["host"])
            if host is not None:
                defaults.update(
                    (key, value)
                    for key, value in host.options.items()
                    if key in _READ_HOST_OPTIONS
                )
                filled["host"] = host.target

        for key, value in defaults.items():
            name = _PARAMETER.get(key, key)
            if name not in given:
                filled[name] = value
        return filled

    def _host(self, args: tuple[str, ...]) -> Host | None:
        # Only put's last argument, and only when it is exactly a name.
        return self.hosts.get(args[-1]) if len(args) >= 2 else None


def load(given: str | None, parse_address: AddressParser) -> Config:
    """Read and check the config file.

    Args:
        given: the file --config or $FILEXFER_CONFIG names, which must
            exist; None for config.toml in the config directory, which
            need not.
        parse_address: the command line's HOST[:PORT] parser.

    Raises:
        UsageError: the file cannot be read, is not TOML, or holds an
            unknown section or key or a bad value (the message names the
            file, the section and the key).
    """
    if given == "":
        raise UsageError("--config is empty", hint="name a config file")
    path = Path(given) if given is not None else config_dir() / CONFIG_FILE
    shown = printable(str(path))
    try:
        data = _read_config(path)
    except FileNotFoundError:
        if given is not None:
            raise UsageError(f"config file {shown} does not exist") from None
        return Config(path, {}, {}, {})
    except OSError as exc:
        raise UsageError(f"cannot read config file {shown}: {os_reason(exc)}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"config file {shown} is not UTF-8 text") from None
    return parse(text.removeprefix("\ufeff"), path, parse_address)


# A config file is a few lines; anything near this is not one.
MAX_CONFIG_BYTES = 1 << 20


def _read_config(path: Path) -> bytes:
    """The file's bytes, if it is a small regular file only its owner writes.

    Opened without blocking, so that a FIFO cannot hang a backup job, and
    read up to a cap, so that /dev/zero cannot fill the memory.  A file
    that others may write is refused: it decides which receiver keys are
    trusted.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"config file {printable(str(path))} is not a file")
        if info.st_mode & 0o022:
            raise UsageError(
                f"config file {printable(str(path))} is writable by others",
                hint=f"chmod go-w {printable(str(path))}",
            )
        data = stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"config file {printable(str(path))} is too large")
    return data


def parse(text: str, path: Path, parse_address: AddressParser) -> Config:
    """Check the TOML text of the config file at path (see :func:`load`)."""
    # Imported here: most runs of put have no config file, and put must
    # start fast.
    import tomllib

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        why = str(exc)
        raise UsageError(
            f"{printable(str(path))}: not valid TOML: {why[:1].lower()}{why[1:]}"
        ) from None
    except RecursionError:
        raise UsageError(f"{printable(str(path))}: nested too deeply") from None
    return _Parser(path, parse_address).config(document)


class _Parser(NamedTuple):
    path: Path
    parse_address: AddressParser

    def config(self, document: Mapping[str, Any]) -> Config:
        for name, value in document.items():
            if name not in ("put", "recv", "hosts"):
                raise self.error(
                    _unknown(name, value),
                    hint="the sections are [put], [recv] and [hosts.NAME]",
                )
        put = self.options("put", document.get("put", {}), PUT_OPTIONS)
        recv = self.options("recv", document.get("recv", {}), RECV_OPTIONS)
        hosts = self.section("hosts", document.get("hosts", {}))

        if "dir" in recv:
            recv["dir"] = self.directory(str(recv["dir"]))
        if "listen" in recv:
            self.check_address("recv", "listen", str(recv["listen"]), listening=True)
        checked = {name: self.host(name, hosts[name]) for name in hosts}
        return Config(self.path, put, recv, checked)

    def section(self, section: str, value: object) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.error(f"{section}: must be a section, [{section}]")
        return value

    def options(
        self, section: str, value: object, known: Mapping[str, Check]
    ) -> dict[str, object]:
        """The checked keys of one section, by key."""
        values: dict[str, object] = {}
        for key, item in self.section(section, value).items():
            if key not in known:
                raise self.error(
                    f"[{section}] {printable(key)}: unknown key",
                    hint=f"the keys of [{section}] are {', '.join(known)}",
                )
            try:
                values[key] = known[key](item)
            except UsageError as exc:
                raise self.located(section, key, exc) from None
        return values

    def host(self, name: str, value: object) -> Host:
        section = "hosts." + (name if _BARE_KEY.fullmatch(name) else f'"{name}"')
        if not _ALIAS.fullmatch(name):
            raise self.error(
                f"[{printable(section)}]: bad host name",
                hint="a host name has only letters, digits, '.', '-' and '_'",
            )
        if not isinstance(value, dict):
            raise self.error(f"[hosts] {name}: must be a section, [{section}]")
        options = self.options(section, value, HOST_OPTIONS)

        # Without an address the section's name is the host's own name.
        address = str(options.pop("address", name))
        port = options.pop("port", None)
        return Host(name, self.target(section, address, port), options)

    def target(self, section: str, address: str, port: object) -> str:
        """HOST[:PORT] for put, checked as the command line checks it."""
        if "[" in address or "]" in address or (":" in address and not _is_ip(address)):
            raise self.located(
                section,
                "address",
                UsageError(
                    f"not a host name or IP address: '{printable(address)}'",
                    hint="give the port on its own, as port = N",
                ),
            )
        target = address if port is None else _with_port(address, port)
        self.check_address(section, "address", target)
        return target

    def check_address(
        self, section: str, key: str, text: str, *, listening: bool = False
    ) -> None:
        try:
            self.parse_address(text, listening=listening)
        except UsageError as exc:
            raise self.located(section, key, exc) from None

    def directory(self, text: str) -> str:
        if text.startswith("~"):
            why = UsageError("'~' is not expanded here", hint="write the full path")
            raise self.located("recv", "dir", why)
        # A relative directory is taken from where the file is, not from
        # wherever the command happens to run (cron and systemd start in /).
        return str(self.path.absolute().parent / text)

    def located(self, section: str, key: str, exc: UsageError) -> UsageError:
        return self.error(f"[{section}] {key}: {exc}", hint=exc.hint)

    def error(self, message: str, hint: str | None = None) -> UsageError:
        return UsageError(f"{printable(str(self.path))}: {message}", hint=hint)


def _unknown(name: str, value: object) -> str:
    if isinstance(value, dict):
        return f"[{printable(name)}]: unknown section"
    return f"{printable(name)}: unknown key outside any section"


def _with_port(address: str, port: object) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
