"""The ``filexfer`` command: thin click commands over the library.

Each subcommand parses its arguments, calls one library function and lets
errors propagate to :func:`main`, which prints ``filexfer: error: ...``
(and a hint), and exits with the error's code.  Progress bars live only
here, on stderr, and only when stderr is a terminal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import (
    FilexferError,
    PartialError,
    TrustError,
    UsageError,
)
from .keys import (
    KnownReceivers,
    allow_sender,
    check_pin,
    fingerprint,
    load_identity,
    matches_fingerprint,
)
from .printable import printable
from .sender import FileResult, collect_sources, send_files
from .server import Server, ServerConfig
from .session import Timeouts, connect
from .storage import NameLimits

DEFAULT_PORT = 7757

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
  8  a local file could not be read, or changed while being sent"""


class _State:
    debug = False


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
def cli(debug: bool) -> None:
    """Encrypted, mutually authenticated file transfer over TCP."""
    _State.debug = debug


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


def _split_address(text: str) -> tuple[str, int]:
    """Parse HOST, HOST:PORT, [V6] or [V6]:PORT."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = _port(rest.removeprefix(":"), text)
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(number, text)
    if not host:
        raise UsageError(f"no host in {text!r}")
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise UsageError(f"bad port in {whole!r}")
    return int(text)


@cli.command(epilog=EXIT_CODES)
@click.option(
    "--dir",
    "root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory that received files go into (created if missing).",
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
    type=click.FloatRange(0.1),
    help="Seconds a handshake may take.",
)
@click.option(
    "--idle-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.1),
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
def recv(
    root: Path,
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
    _configure_logging(verbose)
    host, port = _split_address(listen)
    root.mkdir(parents=True, exist_ok=True)
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
    server = Server(config, load_identity())
    server.serve()
    if server.once_result is not None:
        raise server.once_result


def _verifier(
    address: str, accept_new: bool, given: str | None
) -> Callable[[bytes], None]:
    """Build the receiver-key check used inside the handshake."""
    known_receivers = KnownReceivers()

    def verify(presented: bytes) -> None:
        known = known_receivers.lookup(address)
        check_pin(known, presented, address)
        if given is not None and not matches_fingerprint(presented, given):
            raise TrustError(
                f"receiver key for {address} is {fingerprint(presented)}, "
                "not the fingerprint given"
            )
        if known is None:
            _trust_new(address, presented, accept_new or given is not None)
            known_receivers.pin(address, presented)

    return verify


def _trust_new(address: str, presented: bytes, allowed: bool) -> None:
    if allowed:
        return
    shown = fingerprint(presented)
    if sys.stdin.isatty() and sys.stderr.isatty():
        click.echo(f"filexfer: receiver {address} has key {shown}", err=True)
        if click.confirm("Trust this key from now on?", err=True, default=False):
            return
    raise TrustError(
        f"unknown receiver key {shown} for {address}",
        hint="check the fingerprint with the receiver's owner ('filexfer id'), "
        "then pass --fingerprint or --accept-new",
    )


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
            leave=True,
        )
        self.overall = tqdm(total=total, desc="total" if files > 1 else "", **options)
        if files > 1:
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
    results: list[FileResult], as_json: bool, quiet: bool, seconds: float
) -> None:
    """Print per-file JSON, per-file errors of a multi-file job, a summary.

    A single file's error is left to main(), so it is printed once.
    """
    for result in results:
        if as_json:
            click.echo(_json_line(result))
        if result.error is not None and len(results) > 1:
            click.echo(f"filexfer: error: {result.error}", err=True)
    sent = [r for r in results if r.ok]
    if quiet or as_json or (len(results) == 1 and not sent):
        return
    total = sum(r.size for r in sent)
    rate = total / seconds / 1e6 if seconds > 0 else 0.0
    failed = len(results) - len(sent)
    tail = f", {failed} failed" if failed else ""
    click.echo(
        f"filexfer: sent {len(sent)} file(s), {total:,} bytes in "
        f"{seconds:.2f} s ({rate:.1f} MB/s){tail}",
        err=True,
    )


def _job_error(results: list[FileResult]) -> FilexferError | None:
    """The error the whole job ends with, if any file failed."""
    failed = [r.error for r in results if r.error is not None]
    if not failed:
        return None
    if len(results) == 1:
        return failed[0]
    if len(failed) == len(results) and len({e.exit_code for e in failed}) == 1:
        # Every file failed the same way: exit with that kind's code. The
        # class itself is not rebuilt, as some (RefusedError) need more
        # arguments than a message.
        summary = FilexferError(f"all {len(failed)} files failed")
        summary.exit_code = failed[0].exit_code
        return summary
    return PartialError(f"{len(failed)} of {len(results)} files failed")


@cli.command(epilog=EXIT_CODES)
@click.argument("args", nargs=-1, required=True, metavar="FILE... HOST[:PORT]")
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Send directories and everything below them.",
)
@click.option(
    "--overwrite",
    is_flag=True,
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
    "--json", "as_json", is_flag=True, help="Print one JSON object per file on stdout."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Force the progress bar on or off (default: on a terminal).",
)
@click.option(
    "--connect-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds to wait for a connection.",
)
@click.option(
    "--idle-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds without progress before giving up.",
)
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
    """Send FILEs to a receiver at HOST[:PORT] (default port 7757)."""
    if len(args) < 2:
        raise UsageError("need at least one FILE and a HOST[:PORT]")
    host, port = _split_address(args[-1])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sources, failures = collect_sources(list(args[:-1]), recursive)

    identity = load_identity()
    show_bar = (sys.stderr.isatty() and not quiet) if progress is None else progress
    bars = _Progress(
        show_bar, sum(os.path.getsize(s.path) for s in sources), len(sources)
    )
    started = time.monotonic()
    try:
        results = failures
        if sources:
            timeouts = Timeouts(
                connect=connect_timeout,
                handshake=max(15.0, connect_timeout),
                idle=idle_timeout,
            )
            channel = connect(
                host, port, identity, _verifier(address, accept_new, given_fp), timeouts
            )
            results = failures + send_files(
                channel, sources, overwrite, bars.advance, bars.start
            )
    finally:
        bars.close()
    _report(results, as_json, quiet, time.monotonic() - started)
    error = _job_error(results)
    if error is not None:
        raise error


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every outcome into an exit code."""
    try:
        cli.main(args=argv, prog_name="filexfer", standalone_mode=False)
    except click.exceptions.Abort:
        # click turns Ctrl-C (SIGINT) into Abort before it reaches us.
        click.echo("filexfer: error: interrupted; copy not completed", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        _print_usage_error(exc)
        sys.exit(2)
    except FilexferError as exc:
        _print_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("filexfer: error: interrupted; copy not completed", err=True)
        sys.exit(130)
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
