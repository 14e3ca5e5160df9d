"""The ``filexfer`` command: the click group, ``id``, ``allow``, ``recv``.

Each subcommand parses its arguments, calls one library function and lets
errors propagate to :func:`main`, which prints ``filexfer: error: ...``
(and a hint), and exits with the error's code.  ``put``, ``get`` and
``ls`` live in :mod:`commands`, the options they share in
:mod:`options`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from types import CodeType, FrameType
from typing import TYPE_CHECKING

import click

from . import __version__
from .commands import get, ls_command, put
from .errors import (
    ConnectError,
    FilexferError,
    InterruptError,
    UsageError,
    os_reason,
)
from .keys import (
    Grant,
    Identity,
    allow_sender,
    decode_public,
    describe,
    fingerprint,
    load_identity,
    sender_grants,
)
from .names import NameLimits
from .options import (
    DEFAULT_PORT,
    EXIT_CODES,
    Seconds,
    State,
    display,
    make_root,
    outcome_decided,
    root_option,
    split_address,
    with_config,
)
from .report import Debug, emit, guard_streams, lost_output, print_error
from .session import Timeouts

if TYPE_CHECKING:
    from .server import Server, ServerConfig


class _EventFormatter(logging.Formatter):
    """``2026-12-05T03:59:49.831Z INFO event=...``: UTC to the millisecond.

    A line is stamped when it is written, under the handler's lock, not
    when its event was logged: sessions log from threads of their own, and
    their lines would otherwise sometimes go back a few milliseconds.
    The daemon logs a line per file, so the date is formatted once a
    second, not once a line.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(  # noqa: N802 - logging's name
        self, record: logging.LogRecord, datefmt: str | None = None
    ) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EventFormatter())
    # Lines name no source line, thread or process: not looking them up
    # saves a third of the cost of each line.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
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
    State.config_file = config_file
    State.command = click.get_current_context().invoked_subcommand


@cli.command("id", epilog=EXIT_CODES)
def id_command() -> None:
    """Print this identity's public key line and fingerprint.

    The identity is created on first use in $FILEXFER_HOME (else
    $XDG_CONFIG_HOME/filexfer, else ~/.config/filexfer).
    """
    identity = load_identity()
    emit(identity.public_line)
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
    """Authorize a sender's public key (the 'fx1...' line) on this receiver.

    Each key works in its own area, a folder under the receiver's --dir,
    so that it can neither see nor touch another key's files; keys given
    the same --area share it.
    """
    added = allow_sender(key, comment, grant_options=(not read_only, area))
    word = "authorized" if added else "already authorized"
    grant = Grant(decode_public(key), not read_only, area)
    click.echo(f"filexfer: {word}: {key.split()[0]} ({describe(grant)})", err=True)


RECV_EXIT = """\b
With --once, recv exits 0 when the session ended normally, even if the
receiver refused some of its files, and with the session's code when it
failed (3, 4, 5, 6: see the table). A signal before any session: 0.
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
    type=Seconds(),
    help="Seconds a handshake may take.",
)
@click.option(
    "--idle-timeout",
    default=60.0,
    show_default=True,
    type=Seconds(),
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
    help="One area for every key: --dir itself, with all that is in it. "
    "Refused when a key has an area= of its own.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug events too.")
@with_config
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

    root = root_option(root_text)
    host, port = split_address(listen, listening=True)
    # Read once here so that a damaged file stops the start, with its line
    # number, instead of failing every handshake later.
    _check_grants(sender_grants(), shared)
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
    make_root(root)
    server.serve()
    if server.once_result is not None:
        raise server.once_result


def _check_grants(grants: dict[bytes, Grant], shared: bool) -> None:
    """With --shared every key works in --dir, so no key may have an area.

    An area there would be a folder of the shared one, open to every key.
    """
    for grant in grants.values():
        if shared and grant.area is not None:
            raise UsageError(
                f"--shared, but key {fingerprint(grant.key)} has its own area "
                f"'{grant.area}' in authorized_senders",
                hint="remove its area= option, or do not use --shared",
            )


def _listen(config: ServerConfig, identity: Identity) -> Server:
    """Bind the server's socket; an address this machine cannot use is exit 2.

    A port that another process holds is exit 3, like any other resource
    that may be free again later.
    """
    where = display(config.host, config.port)
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


cli.add_command(put)
cli.add_command(get)
cli.add_command(ls_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every outcome into an exit code.

    The process then ends at once, without the interpreter's tear-down of
    every module, which costs a one-file ``put`` about a fifth of its
    time.  Nothing is lost by it: every file this program writes is closed
    (and, where it matters, fsynced) before its command returns, and the
    standard streams are flushed here.
    """
    guard_streams()
    # SIGTERM (timeout(1), systemd, a job runner) stops a job as Ctrl-C
    # does: every file accounted for, one line, 130.  recv sets its own.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    code = _run(argv)
    lost = lost_output()
    if lost is not None:
        print_error(lost)
        code = code or lost.exit_code
    # A signal from here on can neither change the status nor interrupt
    # the last writes with a traceback.
    outcome_decided()
    for stream in (sys.stdout, sys.stderr):
        # Output goes out line by line and a failure is already counted
        # (lost_output); None is a stream closed before start (>&-).
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if frame is not None and _errors_are_ignored_in(frame.f_code):
        # Raised here, the KeyboardInterrupt would be printed and dropped,
        # and the command would go on: the signal comes again, after it.
        again = threading.Timer(0.005, os.kill, (os.getpid(), signum))
        again.daemon = True
        again.start()
        return
    raise KeyboardInterrupt


def _errors_are_ignored_in(code: CodeType) -> bool:
    """Whether Python ignores what this code raises: a finalizer, or the
    weakref callback of the import lock (a signal can land in either)."""
    import_lock = code.co_filename.startswith("<frozen importlib")
    return code.co_name == "__del__" or (import_lock and code.co_name == "cb")


def _run(argv: list[str] | None) -> int:
    try:
        _invoke(sys.argv[1:] if argv is None else argv)
    except (click.exceptions.Abort, KeyboardInterrupt):
        if State.command == "recv":
            # Stopped while starting, before it listened: a clean stop,
            # as one a moment later would be.
            logging.getLogger("filexfer.server").info("event=recv.stopped")
            return 0
        copying = State.command in ("put", "get")
        interrupted = InterruptError() if copying else InterruptError("interrupted")
        print_error(interrupted)
        return interrupted.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)
        return 2
    except click.ClickException as exc:
        _print_usage_error(exc)
        return 2
    except FilexferError as exc:
        print_error(exc)
        return exc.exit_code
    except Exception as exc:
        if Debug.enabled:
            raise
        click.echo(f"filexfer: error: unexpected error: {exc!r}", err=True)
        click.echo("filexfer: hint: rerun with --debug and report it", err=True)
        return 1
    return 0


def _invoke(args: list[str]) -> None:
    """Parse the command line and run the command.

    What ``cli.main`` does without its handling of the outcome, which is
    ours: in particular it writes a blank line for a Ctrl-C or SIGTERM
    that lands before the command's own handling begins.
    """
    try:
        with cli.make_context("filexfer", list(args)) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit:
        pass  # --help, --version: said what they had to


def _print_usage_error(exc: click.ClickException) -> None:
    """Show click's complaint in our form: lowercase, no final period."""
    message = exc.format_message().strip().rstrip(".")
    click.echo(f"filexfer: error: {message[:1].lower()}{message[1:]}", err=True)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        click.echo(f"filexfer: hint: see '{ctx.command_path} --help'", err=True)
