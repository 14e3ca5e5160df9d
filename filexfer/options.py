"""What the client commands share: addresses, options, config, trust.

How this works
--------------
Everything a user can get wrong on the command line or in the config
(addresses, ports, timeouts, directories) is checked here before a
connection is made, and is exit 2 with a one-line message.  Asking
whether to trust a new receiver key never happens inside a handshake:
the connection that showed the key is closed first, and after a yes the
key is pinned and a new connection made, which must show the same key.
A lost connection is tried again only when the user asked (``--retry``),
with a growing pause.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import click
from click.core import ParameterSource

from .config import load as load_config
from .disk import make_directories
from .errors import (
    ConnectError,
    FilexferError,
    InterruptError,
    TrustError,
    UsageError,
    os_reason,
)
from .keys import (
    Identity,
    KnownReceivers,
    check_fingerprint_text,
    check_pin,
    fingerprint,
    load_identity,
    matches_fingerprint,
)
from .printable import printable
from .session import Channel, Timeouts, connect
from .sources import FileResult

DEFAULT_PORT = 7757
MAX_SECONDS = 86400.0  # a day: longer timeouts are typing mistakes

EXIT_CODES = """\b
Exit codes:
  0  success (put, get: every file durably stored, its digest confirmed)
  1  unexpected error (a bug; rerun with --debug for the traceback)
  2  usage: bad arguments, options or configuration
  3  cannot connect, connection lost, or the peer stopped responding
  4  trust: unknown or changed receiver key, or sender not authorized
  5  integrity: data or digest failed to verify, or protocol violation
  6  refused by the receiver: exists, bad path, no space, write error
  7  some files failed, the others arrived
  8  a local file could not be read or sent, or changed; or stdout was not writable
  130  interrupted (Ctrl-C or SIGTERM); files not confirmed were not copied"""


class State:
    config_file: str | None = None
    command: str | None = None  # the subcommand being run, once known


class _CliFormatter(logging.Formatter):
    """``filexfer: warning: ...``, the form of the CLI's other lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"filexfer: {record.levelname.lower()}: {record.getMessage()}"


def configure_put_logging(quiet: bool = False) -> None:
    """Warnings (a skipped symlink, say) on stderr, unless quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliFormatter())
    root = logging.getLogger("filexfer")
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)


def with_config(command: Callable[..., None]) -> Callable[..., None]:
    """Fill in the options the command line leaves out from the config file."""

    @functools.wraps(command)
    def run(**params: Any) -> None:
        ctx = click.get_current_context()
        given = {
            name
            for name in params
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        }
        config = load_config(State.config_file, split_address)
        command(**config.fill(ctx.command.name or "", params, given))

    return run


def split_address(text: str, *, listening: bool = False) -> tuple[str, int]:
    """Parse HOST, HOST:PORT, [V6] or [V6]:PORT (port 0 only to listen)."""
    shown = printable(text)
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise UsageError(f"unclosed '[' in '{shown}'")
        if rest and not rest.startswith(":"):
            raise UsageError(f"expected ':PORT' after ']' in '{shown}'")
        if rest:
            port = _port(rest[1:], shown)
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(number, shown)
    if not host:
        raise UsageError(f"no host in '{shown}'")
    if ":" in host and not _is_ipv6(host):
        raise UsageError(
            f"bad host in '{shown}'", hint="write an IPv6 address as [ADDR]:PORT"
        )
    if not _host_ok(host):
        raise UsageError(f"bad host in '{shown}'")
    if port == 0 and not listening:
        raise UsageError(f"port 0 in '{shown}': give the port the receiver uses")
    return host, port


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _host_ok(host: str) -> bool:
    if not host.isprintable() or any(ch.isspace() for ch in host):
        return False
    try:
        # The encoding the socket calls apply: empty or overlong labels
        # fail here, with an error that is not an OSError.
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def _port(text: str, shown: str) -> int:
    # ASCII digits only: str.isdigit() takes "\u00b2", int() takes "\u0667".
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise UsageError(
            f"bad port in '{shown}'", hint="a port is a number from 1 to 65535"
        )
    return int(text)


def display(host: str, port: int) -> str:
    """HOST:PORT as a user writes it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Seconds(click.FloatRange):
    """A timeout: a finite number of seconds from 0.1 to a day."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(0.1, MAX_SECONDS)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        seconds = float(super().convert(value, param, ctx))
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def root_option(text: str | None, option: str = "--dir") -> Path:
    """Check a directory option (recv's --dir, get's -o); it may not exist yet."""
    if text is None:
        raise UsageError(
            f"missing option '{option}'",
            hint="give --dir DIR, or set dir in the config file's [recv] section",
        )
    if not text:
        raise UsageError(f"{option} is empty", hint="name a directory")
    root = Path(text)
    try:
        info = root.stat()
    except FileNotFoundError:
        return root
    except OSError as exc:
        shown = printable(str(root))
        raise UsageError(f"cannot use {option} {shown}: {os_reason(exc)}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{option} {printable(str(root))} is not a directory")
    return root


def make_root(root: Path, option: str = "--dir") -> None:
    try:
        make_directories(root)
    except OSError as exc:
        shown = printable(str(root))
        raise UsageError(f"cannot create {option} {shown}: {os_reason(exc)}") from exc


class _UnknownKeyError(Exception):
    """The receiver showed a key nobody pinned; a person must decide.

    Not a FilexferError: it only carries the key out of the handshake, and
    the handshake code lets it pass unchanged.
    """

    def __init__(self, key: bytes) -> None:
        super().__init__("unknown receiver key")
        self.key = key


def _verifier(
    address: str, accept_new: bool, given: str | None, ask: bool
) -> Callable[[bytes], None]:
    """Build the receiver-key check used inside the handshake.

    It never waits for a person: a key that needs a yes is raised, as
    _UnknownKeyError, out of the handshake.
    """
    known_receivers = KnownReceivers()

    def verify(presented: bytes) -> None:
        known = known_receivers.lookup(address)
        check_pin(known, presented, address)
        if given is not None and not matches_fingerprint(presented, given):
            raise TrustError(
                f"receiver key for {address} is {fingerprint(presented)}, "
                "not the fingerprint given"
            )
        if known is not None:
            return
        if accept_new or given is not None:
            known_receivers.pin(address, presented)
            return
        if ask:
            raise _UnknownKeyError(presented)
        raise TrustError(
            f"unknown receiver key {fingerprint(presented)} for {address}",
            hint="check the fingerprint with the receiver's owner "
            "('filexfer id'), then pass --fingerprint or --accept-new",
        )

    return verify


def _confirm(question: str) -> bool:
    """Ask yes or no on the terminal; end of input (Ctrl-D) is a no.

    Ctrl-C still interrupts (exit 130).
    """
    click.echo(f"{question} [y/N]: ", nl=False, err=True)
    answer = sys.stdin.readline()
    if not answer:
        click.echo(err=True)
    return answer.strip().lower() in ("y", "yes")


def connect_trusting(
    host: str,
    port: int,
    identity: Identity,
    timeouts: Timeouts,
    trust: tuple[bool, str | None],
) -> Channel:
    """Connect; an unknown key is asked about between two connections."""
    address = display(host, port)
    accept_new, given = trust
    ask = _terminal(sys.stdin) and _terminal(sys.stderr)
    verify = _verifier(address, accept_new, given, ask)
    try:
        return connect(host, port, identity, verify, timeouts)
    except _UnknownKeyError as unknown:
        presented = unknown.key

    # That connection is closed: the receiver does not wait on a person.
    # A yes pins the key; the next connection must then show that key.
    shown = fingerprint(presented)
    click.echo(f"filexfer: receiver {address} has key {shown}", err=True)
    if not _confirm("Trust this key from now on?"):
        raise TrustError(
            f"receiver key {shown} for {address} not trusted",
            hint="check the fingerprint with the receiver's owner ('filexfer id')",
        )
    KnownReceivers().pin(address, presented)
    return connect(host, port, identity, verify, timeouts)


TRUST_OPTIONS = [
    click.option(
        "--accept-new",
        is_flag=True,
        help="Trust and pin an unknown receiver key without asking (for scripts).",
    ),
    click.option(
        "--fingerprint",
        "given_fp",
        metavar="FP",
        help="Trust the receiver only if its key has this fingerprint.",
    ),
    click.option(
        "--connect-timeout",
        default=10.0,
        show_default=True,
        type=Seconds(),
        help="Seconds to wait for a connection.",
    ),
    click.option(
        "--idle-timeout",
        default=60.0,
        show_default=True,
        type=Seconds(),
        help="Seconds without progress before giving up.",
    ),
    click.option(
        "--retry",
        default=0,
        show_default=True,
        type=click.IntRange(0, 100),
        metavar="N",
        help="After a lost or refused connection, try again up to N times "
        "(waiting 1, 2, 4... up to 30 s); put and get resume where they stopped.",
    ),
]
OUTPUT_OPTIONS = [
    click.option(
        "--json/--no-json",
        "as_json",
        help="Print one JSON object per file on stdout.",
    ),
    click.option(
        "-q",
        "--quiet/--no-quiet",
        help="No progress bar, no summary, no warnings; errors only.",
    ),
    click.option(
        "--progress/--no-progress",
        default=None,
        help="Force the progress bar on or off (default: on a terminal).",
    ),
]


def apply_options(
    options: list[Any],
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Apply a list of click options, in the order listed in --help."""

    def apply(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


class Remote(NamedTuple):
    """Where a client command connects, and how it decides to trust it."""

    host: str
    port: int
    identity: Identity
    timeouts: Timeouts
    trust: tuple[bool, str | None]
    retries: int

    @classmethod
    def from_options(
        cls,
        target: str,
        trust: tuple[bool, str | None],
        times: tuple[float, float, int],
    ) -> Remote:
        """Check the target and trust options; load this side's identity.

        ``times`` is (connect timeout, idle timeout, retries).
        """
        host, port = split_address(target)
        if trust[1] is not None:
            check_fingerprint_text(trust[1])
        connect_timeout, idle_timeout, retries = times
        timeouts = Timeouts(
            connect=connect_timeout,
            handshake=max(15.0, connect_timeout),
            idle=idle_timeout,
        )
        return cls(host, port, load_identity(), timeouts, trust, retries)

    def connect(self) -> Channel:
        return connect_trusting(
            self.host, self.port, self.identity, self.timeouts, self.trust
        )


def show_bar(quiet: bool, progress: bool | None) -> bool:
    if sys.stderr is None:
        return False  # started with stderr closed: nowhere to draw
    return (_terminal(sys.stderr) and not quiet) if progress is None else progress


def _terminal(stream: TextIO | None) -> bool:
    """Whether stream is a terminal; a stream closed at start is None."""
    return stream is not None and stream.isatty()


Attempt = Callable[[], tuple[list[FileResult], FilexferError | None]]


Merge = Callable[[dict[str, FileResult], list[FileResult]], None]


def keep_successes(merged: dict[str, FileResult], results: list[FileResult]) -> None:
    """put: a new attempt sends only what failed; its results replace those."""
    for result in results:
        if result.name not in merged or not merged[result.name].ok:
            merged[result.name] = result


def merge_download(merged: dict[str, FileResult], results: list[FileResult]) -> None:
    """get: a new attempt asks for everything again.

    Its results are the job's, except that a file which arrived in an
    earlier attempt keeps that result (not "unchanged"), and one that the
    new attempt never got to (it failed to connect) keeps it too.
    """
    earlier = {name: result for name, result in merged.items() if result.ok}
    merged.clear()
    for result in results:
        before = earlier.pop(result.name, None)
        keep = before is not None and (result.unchanged or not result.ok)
        merged[result.name] = before if keep and before is not None else result
    merged.update(earlier)


def outcome_decided() -> None:
    """From here a Ctrl-C or SIGTERM changes nothing: the job is settled.

    Reporting it may still take a while (a slow reader of --json); a
    signal then must neither call a finished copy interrupted nor lose
    the rest of its report.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def with_retries(
    remote: Remote, attempt: Attempt, quiet: bool, merge: Merge = keep_successes
) -> tuple[list[FileResult], FilexferError | None]:
    """Run attempt; after a connection failure, again up to remote.retries.

    Only a lost, refused or timed-out connection (exit 3) is retried: a
    trust, integrity or refusal error would fail the same way again.
    ``merge`` folds each attempt's results into the job's.
    """
    merged: dict[str, FileResult] = {}
    for number in range(remote.retries + 1):
        results, error = attempt()
        merge(merged, results)
        if not isinstance(error, ConnectError) or number == remote.retries:
            return list(merged.values()), error
        wait = min(30.0, 2.0**number)
        try:
            # The warning too: a signal while it is written is a stop
            # between attempts like any other.
            if not quiet:
                click.echo(
                    f"filexfer: warning: {printable(str(error))}; retrying in "
                    f"{wait:g} s ({number + 1} of {remote.retries})",
                    err=True,
                )
            time.sleep(wait)
        except KeyboardInterrupt:
            # Stopped between attempts: what arrived stays reported as
            # such, and every other file fails with the interruption.
            interrupted = InterruptError()
            for result in merged.values():
                if not result.ok:
                    result.error = interrupted
            return list(merged.values()), interrupted
    raise AssertionError("unreachable")
