"""The ``filexfer`` command: thin click commands over the library.

Each subcommand parses its arguments, calls one library function and lets
errors propagate to :func:`main`, which prints ``filexfer: error: ...``
(and a hint), and exits with the error's code.  Progress bars live only
here, on stderr, and only when stderr is a terminal.

Everything a user can get wrong on the command line or in the config
(addresses, ports, timeouts, directories, key files) is found before a
connection is made or a socket is bound to serve, and is exit 2 with a
one-line message.  Asking whether to trust a new receiver key never
happens inside a handshake: the connection that showed the key is closed
first, and after a yes the key is pinned and a new connection made, which
must show the same key.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from . import __version__
from . import messages as msgs
from .config import load as load_config
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
    allow_sender,
    area_for,
    authorized_senders,
    check_fingerprint_text,
    check_pin,
    decode_public,
    fingerprint,
    load_identity,
    matches_fingerprint,
)
from .printable import printable
from .report import Debug, Progress, job_error, print_error, report
from .sender import FileResult, Source, collect_sources, send_files, unsent
from .session import Channel, Timeouts, connect
from .storage import KEEP_MODES_MASK, MODE_MASK, LocalStore, NameLimits

if TYPE_CHECKING:
    from .server import Server, ServerConfig

DEFAULT_PORT = 7757
MAX_SECONDS = 86400.0  # a day: longer timeouts are typing mistakes

EXIT_CODES = """\b
Exit codes:
  0  success: every file is durably stored and its digest confirmed
  1  unexpected error (a bug; rerun with --debug for the traceback)
  2  usage: bad arguments, options or configuration
  3  cannot connect, connection lost, or the peer stopped responding
  4  trust: unknown or changed receiver key, or sender not authorized
  5  integrity: data or digest failed to verify, or protocol violation
  6  refused by the receiver: exists, bad path, no space, write error
  7  some files failed, the others arrived
  8  a local file could not be read or sent, or changed while being sent
  130  interrupted (Ctrl-C); files not confirmed were not copied"""


class _State:
    config_file: str | None = None


class _CliFormatter(logging.Formatter):
    """``filexfer: warning: ...``, the form of the CLI's other lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"filexfer: {record.levelname.lower()}: {record.getMessage()}"


def _configure_put_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliFormatter())
    root = logging.getLogger("filexfer")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
    )
    logging.Formatter.converter = time.gmtime
    root = logging.getLogger("filexfer")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


@click.group(epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="filexfer")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    envvar="FILEXFER_CONFIG",
    show_envvar=True,
    help="Read put and recv defaults and host names from FILE "
    "(default: config.toml in the config directory).",
)
def cli(debug: bool, config_file: str | None) -> None:
    """Encrypted, mutually authenticated file transfer over TCP."""
    Debug.enabled = debug
    _State.config_file = config_file


def _with_config(command: Callable[..., None]) -> Callable[..., None]:
    """Fill in the options the command line leaves out from the config file."""

    @functools.wraps(command)
    def run(**params: Any) -> None:
        ctx = click.get_current_context()
        given = {
            name
            for name in params
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        }
        config = load_config(_State.config_file, _split_address)
        command(**config.fill(ctx.command.name or "", params, given))

    return run


@cli.command("id", epilog=EXIT_CODES)
def id_command() -> None:
    """Print this identity's public key line and fingerprint.

    The identity is created on first use in $FILEXFER_HOME (else
    $XDG_CONFIG_HOME/filexfer, else ~/.config/filexfer).
    """
    identity = load_identity()
    click.echo(identity.public_line)
    click.echo(fingerprint(identity.public), err=True)


@cli.command(epilog=EXIT_CODES)
@click.argument("key")
@click.argument("comment", required=False, default="")
@click.option(
    "--read-only",
    is_flag=True,
    help="The key may list and download, never upload.",
)
@click.option(
    "--area",
    metavar="NAME",
    help="Folder under the receiver's --dir this key works in "
    "(default: one of its own, named after the key).",
)
def allow(key: str, comment: str, read_only: bool, area: str | None) -> None:
    """Authorize a sender's public key (``fx1...``) on this receiver.

    Each key works in its own area, a folder under the receiver's --dir,
    so that it can neither see nor touch another key's files; keys given
    the same --area share it.
    """
    added = allow_sender(key, comment, grant_options=(not read_only, area))
    word = "authorized" if added else "already authorized"
    where = area or area_for(decode_public(key))
    access = "read-only" if read_only else "read-write"
    click.echo(f"filexfer: {word}: {key.split()[0]} ({access}, area {where})", err=True)


def _split_address(text: str, *, listening: bool = False) -> tuple[str, int]:
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
    if not _host_ok(host):
        raise UsageError(f"bad host in '{shown}'")
    if port == 0 and not listening:
        raise UsageError(f"port 0 in '{shown}': give the port the receiver uses")
    return host, port


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


def _display(host: str, port: int) -> str:
    """HOST:PORT as a user writes it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Seconds(click.FloatRange):
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


RECV_EXIT = """\b
With --once, recv exits 0 when the session ended normally, even if the
receiver refused some of its files, and with the session's code (3, 5, ...)
when the session failed. A signal before any session: 0.
"""


@cli.command(epilog=RECV_EXIT + "\n" + EXIT_CODES)
@click.option(
    "--dir",
    "root_text",
    type=click.Path(),
    help="Directory that received files go into (created if missing); "
    "required here or in the config file.",
)
@click.option(
    "--listen",
    default=f"127.0.0.1:{DEFAULT_PORT}",
    show_default=True,
    help="Address to listen on, HOST:PORT (port 0 picks a free one).",
)
@click.option("--once", is_flag=True, help="Serve one authorized session, then exit.")
@click.option(
    "--max-sessions",
    default=16,
    show_default=True,
    type=click.IntRange(1),
    help="Authorized sessions served at once.",
)
@click.option(
    "--max-handshakes",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Unauthenticated connections at once.",
)
@click.option(
    "--handshake-timeout",
    default=15.0,
    show_default=True,
    type=_Seconds(),
    help="Seconds a handshake may take.",
)
@click.option(
    "--idle-timeout",
    default=60.0,
    show_default=True,
    type=_Seconds(),
    help="Seconds without data before a session is dropped.",
)
@click.option(
    "--max-record",
    default=(1 << 20) + 64,
    show_default=True,
    type=click.IntRange(1024, (1 << 20) + 64),
    help="Largest record plaintext accepted, in bytes.",
)
@click.option(
    "--max-name-bytes",
    default=4096,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Longest relative name accepted.",
)
@click.option(
    "--max-depth",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="Most directory levels in a name.",
)
@click.option(
    "--min-free",
    default=1 << 20,
    show_default=True,
    type=click.IntRange(0),
    help="Bytes that must stay free on the disk.",
)
@click.option(
    "--keep-modes",
    is_flag=True,
    help="Keep the group and other write bits of received files' modes "
    "(setuid, setgid and sticky are never kept).",
)
@click.option(
    "--shared",
    is_flag=True,
    help="Every key works in --dir itself, not in an area of its own "
    "(a key authorized with --area keeps that area).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug events too.")
@_with_config
def recv(
    root_text: str | None,
    listen: str,
    once: bool,
    max_sessions: int,
    max_handshakes: int,
    handshake_timeout: float,
    idle_timeout: float,
    max_record: int,
    max_name_bytes: int,
    max_depth: int,
    min_free: int,
    keep_modes: bool,
    shared: bool,
    verbose: bool,
) -> None:
    """Receive files from authorized senders into --dir; serve them back.

    Each authorized key works in its own area, a folder under --dir named
    after the key (or as 'filexfer allow --area' says): it uploads there,
    and 'ls' and 'get' show and return only what is there.

    Runs in the foreground and logs one line per event to stderr. SIGINT or
    SIGTERM stop it cleanly; unfinished files are removed, never left under
    their final name.
    """
    # Imported here: `put`, which must start fast, never needs the server.
    from .server import ServerConfig

    root = _root_option(root_text)
    host, port = _split_address(listen, listening=True)
    # Read once here so that a damaged file stops the start, with its line
    # number, instead of failing every handshake later.
    authorized_senders()
    identity = load_identity()
    config = ServerConfig(
        root=root.resolve(),
        host=host,
        port=port,
        once=once,
        max_sessions=max_sessions,
        max_handshakes=max_handshakes,
        max_record=max_record,
        min_free=min_free,
        shared=shared,
        keep_modes=keep_modes,
        timeouts=Timeouts(handshake=handshake_timeout, idle=idle_timeout),
        limits=NameLimits(
            max_component=min(255, max_name_bytes),
            max_path=max_name_bytes,
            max_depth=max_depth,
        ),
    )
    _configure_logging(verbose)
    server = _listen(config, identity)
    _make_root(root)
    server.serve()
    if server.once_result is not None:
        raise server.once_result


def _root_option(text: str | None) -> Path:
    if text is None:
        raise UsageError(
            "missing option '--dir'",
            hint="give --dir DIR, or set dir in the config file's [recv] section",
        )
    if not text:
        raise UsageError("--dir is empty", hint="name the directory to receive into")
    root = Path(text)
    try:
        info = root.stat()
    except FileNotFoundError:
        return root
    except OSError as exc:
        shown = printable(str(root))
        raise UsageError(f"cannot use --dir {shown}: {os_reason(exc)}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"--dir {printable(str(root))} is not a directory")
    return root


def _make_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --dir {root}: {os_reason(exc)}") from exc


def _listen(config: ServerConfig, identity: Identity) -> Server:
    """Bind the server's socket; an address this machine cannot use is exit 2.

    A port that another process holds is exit 3, like any other resource
    that may be free again later.
    """
    where = _display(config.host, config.port)
    try:
        socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        why = f"cannot resolve the host ({os_reason(exc)})"
        raise UsageError(f"cannot listen on {where}: {why}") from exc
    from .server import Server

    try:
        return Server(config, identity)
    except ConnectError as exc:
        cause = exc.__cause__
        if not isinstance(cause, OSError) or not cause.errno:
            raise
        # The system's words for the errno alone: the exception's own text
        # has Python's account of the call appended.
        why = os_reason(OSError(cause.errno, os.strerror(cause.errno)))
        if cause.errno == errno.EADDRINUSE:
            raise ConnectError(
                f"cannot listen on {where}: {why}",
                hint="another process listens there; stop it or pick another port",
            ) from cause
        raise UsageError(f"cannot listen on {where}: {why}") from cause


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


def _connect_trusting(
    host: str,
    port: int,
    identity: Identity,
    timeouts: Timeouts,
    trust: tuple[bool, str | None],
) -> Channel:
    """Connect; an unknown key is asked about between two connections."""
    address = _display(host, port)
    accept_new, given = trust
    ask = sys.stdin.isatty() and sys.stderr.isatty()
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


_TRUST_OPTIONS = [
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
        type=_Seconds(),
        help="Seconds to wait for a connection.",
    ),
    click.option(
        "--idle-timeout",
        default=60.0,
        show_default=True,
        type=_Seconds(),
        help="Seconds without progress before giving up.",
    ),
    click.option(
        "--retry",
        default=0,
        show_default=True,
        type=click.IntRange(0, 100),
        metavar="N",
        help="After a lost or refused connection, try again up to N times "
        "(waiting 1, 2, 4... up to 30 s); transfers resume where they stopped.",
    ),
]
_OUTPUT_OPTIONS = [
    click.option(
        "--json/--no-json",
        "as_json",
        help="Print one JSON object per file on stdout.",
    ),
    click.option("-q", "--quiet/--no-quiet", help="No progress bar, no summary."),
    click.option(
        "--progress/--no-progress",
        default=None,
        help="Force the progress bar on or off (default: on a terminal).",
    ),
]


def _options(
    options: list[Any],
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Apply a list of click options, in the order listed in --help."""

    def apply(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


@dataclass(frozen=True)
class _Remote:
    """Where a client command connects, and how it decides to trust it."""

    host: str
    port: int
    identity: Identity
    timeouts: Timeouts
    trust: tuple[bool, str | None]
    retries: int

    @classmethod
    def from_options(
        cls, target: str, trust: tuple[bool, str | None], times: tuple[float, float]
    ) -> _Remote:
        """Check the target and trust options; load this side's identity."""
        host, port = _split_address(target)
        if trust[1] is not None:
            check_fingerprint_text(trust[1])
        connect_timeout, idle_timeout = times
        timeouts = Timeouts(
            connect=connect_timeout,
            handshake=max(15.0, connect_timeout),
            idle=idle_timeout,
        )
        return cls(host, port, load_identity(), timeouts, trust, 0)

    def connect(self) -> Channel:
        return _connect_trusting(
            self.host, self.port, self.identity, self.timeouts, self.trust
        )


def _show_bar(quiet: bool, progress: bool | None) -> bool:
    return (sys.stderr.isatty() and not quiet) if progress is None else progress


Attempt = Callable[[], tuple[list[FileResult], FilexferError | None]]


def _with_retries(
    remote: _Remote, attempt: Attempt, quiet: bool
) -> tuple[list[FileResult], FilexferError | None]:
    """Run attempt; after a connection failure, again up to remote.retries.

    Only a lost, refused or timed-out connection (exit 3) is retried: a
    trust, integrity or refusal error would fail the same way again.
    Results of files that succeeded stay; each new attempt's results
    replace those of files that failed.
    """
    merged: dict[str, FileResult] = {}
    for number in range(remote.retries + 1):
        results, error = attempt()
        for result in results:
            if result.name not in merged or not merged[result.name].ok:
                merged[result.name] = result
        if not isinstance(error, ConnectError) or number == remote.retries:
            return list(merged.values()), error
        wait = min(30.0, 2.0**number)
        if not quiet:
            click.echo(
                f"filexfer: warning: {printable(str(error))}; retrying in "
                f"{wait:g} s ({number + 1} of {remote.retries})",
                err=True,
            )
        time.sleep(wait)
    raise AssertionError("unreachable")


@cli.command(epilog=EXIT_CODES)
@click.argument("args", nargs=-1, required=True, metavar="FILE... HOST[:PORT]")
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Send directories and everything below them, empty ones included.",
)
@click.option(
    "--overwrite/--no-overwrite",
    help="Atomically replace files that already exist on the receiver "
    "(identical ones are never sent again, with or without this).",
)
@_options(_TRUST_OPTIONS + _OUTPUT_OPTIONS)
@_with_config
def put(
    args: tuple[str, ...],
    recursive: bool,
    overwrite: bool,
    accept_new: bool,
    given_fp: str | None,
    connect_timeout: float,
    idle_timeout: float,
    retry: int,
    as_json: bool,
    quiet: bool,
    progress: bool | None,
) -> None:
    """Send FILEs to a receiver at HOST[:PORT] (default port 7757).

    HOST may also be the NAME of a [hosts.NAME] section of the config file.
    A file already there with the same size and digest is not sent again;
    an interrupted transfer of a large file resumes where it stopped.
    """
    if len(args) < 2:
        raise UsageError("need at least one FILE and a HOST[:PORT]")
    remote = _Remote.from_options(
        args[-1], (accept_new, given_fp), (connect_timeout, idle_timeout)
    )
    remote = dataclasses.replace(remote, retries=retry)
    _configure_put_logging()
    sources, failures = collect_sources(list(args[:-1]), recursive)

    bars = Progress(
        _show_bar(quiet, progress), sum(_size(s) for s in sources), len(sources)
    )
    pending = sources
    started = time.monotonic()

    def attempt() -> tuple[list[FileResult], FilexferError | None]:
        # A retry sends again only the files the lost connection failed.
        nonlocal pending
        results, error = _send(remote, pending, overwrite, bars)
        again = {r.name for r in results if r.error is not None and r.error is error}
        pending = [source for source in pending if source.name in again]
        return results, error

    try:
        sent, session_error = _with_retries(remote, attempt, quiet)
    finally:
        bars.close()
    _finish(failures + sent, session_error, (as_json, quiet), ("sent", started))


def _finish(
    results: list[FileResult],
    session_error: FilexferError | None,
    output: tuple[bool, bool],
    timing: tuple[str, float],
) -> None:
    """Report a job's results and end with its exit code.

    A download (verb "received") is strict: a receiver that broke the
    protocol fails it with exit 5 even if some files arrived.
    """
    verb, started = timing
    error = job_error(results, session_error, strict=verb == "received")
    seconds = time.monotonic() - started
    report(results, session_error, *output, (verb, seconds), error)
    if error is not None:
        raise error


def _size(source: Source) -> int:
    try:
        return os.path.getsize(source.path)
    except OSError:
        return 0  # opening it will fail too, and say why


def _send(
    remote: _Remote, sources: list[Source], overwrite: bool, bars: Progress
) -> tuple[list[FileResult], FilexferError | None]:
    """Connect and send; a failed connection fails every source."""
    if not sources:
        return [], None
    try:
        channel = remote.connect()
    except FilexferError as exc:
        return unsent(sources, exc), exc
    except (KeyboardInterrupt, click.exceptions.Abort):
        interrupted = InterruptError()
        return unsent(sources, interrupted), interrupted
    return send_files(channel, sources, overwrite, bars.advance, bars.start)


@cli.command(epilog=EXIT_CODES)
@click.argument("host", metavar="HOST[:PORT]")
@click.argument("remotes", nargs=-1, required=True, metavar="REMOTE...")
@click.option(
    "-o",
    "--output",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory to store the files in (created if missing).",
)
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Fetch directories and everything below them.",
)
@click.option(
    "--overwrite/--no-overwrite",
    help="Atomically replace local files that differ "
    "(identical ones are kept and not fetched again).",
)
@click.option(
    "--keep-modes",
    is_flag=True,
    help="Keep the group and other write bits of the files' modes "
    "(setuid, setgid and sticky are never kept).",
)
@_options(_TRUST_OPTIONS + _OUTPUT_OPTIONS)
@_with_config
def get(
    host: str,
    remotes: tuple[str, ...],
    out_dir: str,
    recursive: bool,
    overwrite: bool,
    keep_modes: bool,
    accept_new: bool,
    given_fp: str | None,
    connect_timeout: float,
    idle_timeout: float,
    retry: int,
    as_json: bool,
    quiet: bool,
    progress: bool | None,
) -> None:
    """Fetch REMOTE files (or, with -r, folders) back from a receiver.

    Each REMOTE is a name as 'filexfer ls' shows it; it is stored under
    --output by its last component (get HOST docs/a.txt -> ./a.txt).
    Whatever the receiver sends that was not asked for ends the whole
    download with exit 5, and is never written.
    """
    from .getter import get_files, plan

    remote = _Remote.from_options(
        host, (accept_new, given_fp), (connect_timeout, idle_timeout)
    )
    remote = dataclasses.replace(remote, retries=retry)
    requests = plan(list(remotes))
    _configure_put_logging()
    logging.getLogger("filexfer.receiver").setLevel(logging.CRITICAL)
    root = _root_option(out_dir)
    _make_root(root)
    bars = Progress(_show_bar(quiet, progress), 0, 1)
    started = time.monotonic()

    def attempt() -> tuple[list[FileResult], FilexferError | None]:
        try:
            channel = remote.connect()
        except FilexferError as exc:
            return [FileResult(r.local, error=exc) for r in requests], exc
        store = LocalStore(root, mode_mask=KEEP_MODES_MASK if keep_modes else MODE_MASK)
        try:
            options = (recursive, overwrite)
            return get_files(channel, requests, store, options, bars.advance)
        finally:
            store.close()

    try:
        results, session_error = _with_retries(remote, attempt, quiet)
    finally:
        bars.close()
    _finish(results, session_error, (as_json, quiet), ("received", started))


@cli.command("ls", epilog=EXIT_CODES)
@click.argument("host", metavar="HOST[:PORT]")
@click.argument("path", required=False, default="")
@click.option("-r", "--recursive", is_flag=True, help="List folders' contents too.")
@click.option(
    "--json/--no-json",
    "as_json",
    help="Print one JSON object per entry instead of a table.",
)
@_options(_TRUST_OPTIONS)
@_with_config
def ls_command(
    host: str,
    path: str,
    recursive: bool,
    as_json: bool,
    accept_new: bool,
    given_fp: str | None,
    connect_timeout: float,
    idle_timeout: float,
    retry: int,
) -> None:
    """List what this key has stored on a receiver (under PATH, if given).

    Shows mode, size, modification time (UTC), name and, where the
    receiver knows it, the first 16 hex digits of the BLAKE3 digest.
    """
    from .getter import list_remote, plan

    remote = _Remote.from_options(
        host, (accept_new, given_fp), (connect_timeout, idle_timeout)
    )
    name = plan([path], "list")[0].remote if path.strip("/") else ""

    shown = 0

    def show(entry: msgs.Entry) -> None:
        nonlocal shown
        click.echo(_entry_json(entry) if as_json else _entry_line(entry))
        shown += 1

    for number in range(retry + 1):
        try:
            list_remote(remote.connect(), name, recursive, show)
            return
        except ConnectError as exc:
            if number == retry or shown:
                raise  # a listing cut short is not printed twice
            wait = min(30.0, 2.0**number)
            click.echo(f"filexfer: warning: {exc}; retrying in {wait:g} s", err=True)
            time.sleep(wait)


def _entry_line(entry: msgs.Entry) -> str:
    kind = "d" if entry.directory else "-"
    mode = kind + stat.filemode(entry.mode)[1:]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.mtime_ns / 1e9))
    digest = entry.digest.hex()[:16] if entry.digest else "-"
    name = printable(entry.name) + ("/" if entry.directory else "")
    return f"{mode} {entry.size:>14,} {when} {digest:16} {name}"


def _entry_json(entry: msgs.Entry) -> str:
    import json

    return json.dumps(
        {
            "name": entry.name,
            "type": "directory" if entry.directory else "file",
            "bytes": entry.size,
            "mode": f"{entry.mode:04o}",
            "mtime_ns": entry.mtime_ns,
            "digest": entry.digest.hex() if entry.digest else None,
            "digest_algorithm": "blake3",
        },
        ensure_ascii=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every outcome into an exit code."""
    try:
        cli.main(args=argv, prog_name="filexfer", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C (SIGINT) into Abort before it reaches us.
        interrupted = InterruptError()
        print_error(interrupted)
        sys.exit(interrupted.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        _print_usage_error(exc)
        sys.exit(2)
    except FilexferError as exc:
        print_error(exc)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if Debug.enabled:
            raise
        click.echo(f"filexfer: error: unexpected error: {exc!r}", err=True)
        click.echo("filexfer: hint: rerun with --debug and report it", err=True)
        sys.exit(1)
    sys.exit(0)


def _print_usage_error(exc: click.ClickException) -> None:
    """Show click's complaint in our form: lowercase, no final period."""
    message = exc.format_message().strip().rstrip(".")
    click.echo(f"filexfer: error: {message[:1].lower()}{message[1:]}", err=True)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        click.echo(f"filexfer: hint: see '{ctx.command_path} --help'", err=True)
