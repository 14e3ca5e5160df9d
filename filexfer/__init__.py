"""filexfer: encrypted, mutually authenticated file transfer over TCP."""

__version__ = "0.1.0"


def main() -> None:
    """The ``filexfer`` command: load the command line, then run it.

    Loading it (click, cryptography and the rest) takes some 50 ms; a
    Ctrl-C in that time ends the command the way a later one does, with
    one line and status 130.  It is only noted while loading: raised
    there, a KeyboardInterrupt can land where Python swallows it (a
    callback of the import machinery) and the command would run anyway.
    """
    import os
    import signal

    interrupted: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: interrupted.append(signum))
    from .cli import main as run

    signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        try:
            os.write(2, b"filexfer: error: interrupted\n")
        except OSError:
            pass  # stderr closed or full: nothing more to say
        os._exit(130)
    run()
