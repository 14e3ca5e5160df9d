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

import errno
import functools
import json
import logging
import math
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from . import __version__
from .config import load as load_config
from .errors import (
    ConnectError,
    FilexferError,
    InterruptError,
    PartialError,
    TrustError,
    UsageError,
    os_reason,
)
from .keys import (
    Identity,
    KnownReceivers,
    allow_sender,
    authorized_senders,
    check_fingerprint_text,
    check_pin,
    fingerprint,
    load_identity,
    matches_fingerprint,
)
from .printable import printable
from .sender import FileResult, Source, collect_sources, send_files, unsent
from .session import Channel, Timeouts, connect
from .storage import NameLimits

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
    debug = False
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
    _State.debug = debug
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
def allow(key: str, comment: str) -> None:
    """Authorize a sender's public key (``fx1...``) on this receiver."""
    added = allow_sender(key, comment)
    word = "authorized" if added else "already authorized"
    click.echo(f"filexfer: {word}: {key.split()[0]}", err=True)


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
    verbose: bool,
) -> None:
    """Receive files from authorized senders into --dir.

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


class _Progress:
    """tqdm bars on stderr: overall, and per file when there are several."""

    def __init__(self, enabled: bool, total: int, files: int) -> None:
        self.overall: Any = None
        self.current: Any = None
        if not enabled:
            return
        from tqdm import tqdm

        options: dict[str, Any] = dict(
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.2,
        )
        desc = "total" if files > 1 else ""
        self.overall = tqdm(total=total, desc=desc, leave=True, **options)
        if files > 1:
            # The per-file bar goes away when done; the total stays.
            self.current = tqdm(total=0, position=1, leave=False, **options)

    def start(self, name: str, size: int) -> None:
        if self.current is not None:
            self.current.reset(total=size)
            self.current.set_description_str(printable(name)[-40:], refresh=False)
        elif self.overall is not None:
            self.overall.set_description_str(printable(name)[-40:], refresh=False)

    def advance(self, count: int) -> None:
        if self.overall is not None:
            self.overall.update(count)
        if self.current is not None:
            self.current.update(count)

    def close(self) -> None:
        for bar in (self.current, self.overall):
            if bar is not None:
                bar.close()


def _json_line(result: FileResult) -> str:
    record: dict[str, object] = {
        "name": result.name,
        "path": result.path,
        "status": "ok" if result.ok else "failed",
        "bytes": result.size,
        "digest": result.digest,
        "digest_algorithm": "blake3",
        "seconds": round(result.seconds, 6),
    }
    if result.error is not None:
        record["error"] = str(result.error)
        record["exit_code"] = result.error.exit_code
    return json.dumps(record, ensure_ascii=True)


def _report(
    results: list[FileResult],
    session_error: FilexferError | None,
    as_json: bool,
    quiet: bool,
    seconds: float,
) -> None:
    """Print per-file JSON, per-file errors of a multi-file job, a summary.

    An error that ends the job is left to main(), so it is printed once;
    so is the session's error, which files it ended share.
    """
    for result in results:
        if as_json:
            click.echo(_json_line(result))
        error = result.error
        if error is not None and error is not session_error and len(results) > 1:
            click.echo(f"filexfer: error: {error}", err=True)
    sent = [r for r in results if r.ok]
    if session_error is not None and sent:
        _print_error(session_error)  # the job ends with PartialError instead
    if quiet or as_json:
        return
    if not sent and (len(results) == 1 or session_error is not None):
        return  # nothing arrived; the one error main() prints says why
    total = sum(r.size for r in sent)
    rate = total / seconds / 1e6 if seconds > 0 else 0.0
    failed = len(results) - len(sent)
    tail = f", {failed} failed" if failed else ""
    click.echo(
        f"filexfer: sent {len(sent)} file(s), {total:,} bytes in "
        f"{seconds:.2f} s ({rate:.1f} MB/s){tail}",
        err=True,
    )


def _job_error(
    results: list[FileResult], session_error: FilexferError | None
) -> FilexferError | None:
    """The error the whole job ends with, if any file failed.

    7 when some files arrived and others did not; when none arrived, the
    session's error if it failed, else the error of the (first) failed file.
    An interruption is always 130.
    """
    if isinstance(session_error, InterruptError):
        return session_error
    failed = [r.error for r in results if r.error is not None]
    if not failed:
        return None
    if len(failed) < len(results):
        return PartialError(f"{len(failed)} of {len(results)} files failed")
    if session_error is not None:
        return session_error
    if len(results) == 1:
        return failed[0]
    # The class itself is not rebuilt, as some (RefusedError) need more
    # arguments than a message.
    summary = FilexferError(f"all {len(failed)} files failed")
    summary.exit_code = failed[0].exit_code
    return summary


@cli.command(epilog=EXIT_CODES)
@click.argument("args", nargs=-1, required=True, metavar="FILE... HOST[:PORT]")
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Send directories and everything below them.",
)
@click.option(
    "--overwrite/--no-overwrite",
    help="Atomically replace files that already exist on the receiver.",
)
@click.option(
    "--accept-new",
    is_flag=True,
    help="Trust and pin an unknown receiver key without asking (for scripts).",
)
@click.option(
    "--fingerprint",
    "given_fp",
    metavar="FP",
    help="Trust the receiver only if its key has this fingerprint.",
)
@click.option(
    "--json/--no-json",
    "as_json",
    help="Print one JSON object per file on stdout.",
)
@click.option("-q", "--quiet/--no-quiet", help="No progress bar, no summary.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Force the progress bar on or off (default: on a terminal).",
)
@click.option(
    "--connect-timeout",
    default=10.0,
    show_default=True,
    type=_Seconds(),
    help="Seconds to wait for a connection.",
)
@click.option(
    "--idle-timeout",
    default=60.0,
    show_default=True,
    type=_Seconds(),
    help="Seconds without progress before giving up.",
)
@_with_config
def put(
    args: tuple[str, ...],
    recursive: bool,
    overwrite: bool,
    accept_new: bool,
    given_fp: str | None,
    as_json: bool,
    quiet: bool,
    progress: bool | None,
    connect_timeout: float,
    idle_timeout: float,
) -> None:
    """Send FILEs to a receiver at HOST[:PORT] (default port 7757).

    HOST may also be the NAME of a [hosts.NAME] section of the config file.
    """
    if len(args) < 2:
        raise UsageError("need at least one FILE and a HOST[:PORT]")
    host, port = _split_address(args[-1])
    if given_fp is not None:
        check_fingerprint_text(given_fp)
    identity = load_identity()
    _configure_put_logging()
    sources, failures = collect_sources(list(args[:-1]), recursive)

    show_bar = (sys.stderr.isatty() and not quiet) if progress is None else progress
    bars = _Progress(show_bar, sum(_size(s) for s in sources), len(sources))
    timeouts = Timeouts(
        connect=connect_timeout,
        handshake=max(15.0, connect_timeout),
        idle=idle_timeout,
    )
    started = time.monotonic()
    try:
        sent, session_error = _send(
            (host, port),
            identity,
            timeouts,
            (accept_new, given_fp),
            sources,
            overwrite,
            bars,
        )
    finally:
        bars.close()
    results = failures + sent
    _report(results, session_error, as_json, quiet, time.monotonic() - started)
    error = _job_error(results, session_error)
    if error is not None:
        raise error


def _size(source: Source) -> int:
    try:
        return os.path.getsize(source.path)
    except OSError:
        return 0  # opening it will fail too, and say why


def _send(
    where: tuple[str, int],
    identity: Identity,
    timeouts: Timeouts,
    trust: tuple[bool, str | None],
    sources: list[Source],
    overwrite: bool,
    bars: _Progress,
) -> tuple[list[FileResult], FilexferError | None]:
    """Connect and send; a failed connection fails every source."""
    if not sources:
        return [], None
    try:
        channel = _connect_trusting(*where, identity, timeouts, trust)
    except FilexferError as exc:
        return unsent(sources, exc), exc
    except (KeyboardInterrupt, click.exceptions.Abort):
        interrupted = InterruptError()
        return unsent(sources, interrupted), interrupted
    return send_files(channel, sources, overwrite, bars.advance, bars.start)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every outcome into an exit code."""
    try:
        cli.main(args=argv, prog_name="filexfer", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C (SIGINT) into Abort before it reaches us.
        interrupted = InterruptError()
        _print_error(interrupted)
        sys.exit(interrupted.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        _print_usage_error(exc)
        sys.exit(2)
    except FilexferError as exc:
        _print_error(exc)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _State.debug:
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


def _print_error(exc: FilexferError) -> None:
    if _State.debug:
        import traceback

        traceback.print_exception(exc)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    click.echo(f"filexfer: error: {message}", err=True)
    if exc.hint:
        click.echo(f"filexfer: hint: {exc.hint}", err=True)
