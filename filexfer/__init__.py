"""filexfer: encrypted, mutually authenticated file transfer over TCP."""

__version__ = "0.1.0"


def main() -> None:
    """The ``filexfer`` command: load the command line, then run it.

    Loading it (click, cryptography and the rest) takes some 50 ms; a
    Ctrl-C or SIGTERM in that time ends the command the way a later one
    does, with one line and status 130.  It is only noted while loading:
    raised there, a KeyboardInterrupt can land where Python swallows it (a
    callback of the import machinery) and the command would run anyway.
    """
    import signal

    interrupted: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, _frame: interrupted.append(signum))
    from .cli import main as run

    try:
        # Both raise KeyboardInterrupt now; cli.main catches it from the
        # start of the command, and this catches it on the way there.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.default_int_handler)
        if not interrupted:
            run()  # ends the process, with the command's status
    except KeyboardInterrupt:
        pass
    _interrupted()


def _interrupted() -> None:
    """End as an interrupted command does: one line, status 130."""
    import os

    try:
        os.write(2, b"filexfer: error: interrupted\n")
    except OSError:
        pass  # stderr closed or full: nothing more to say
    os._exit(130)
