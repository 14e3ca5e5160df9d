"""filexfer: encrypted, mutually authenticated file transfer over TCP."""

__version__ = "0.1.0"


def main() -> None:
    """The ``filexfer`` command: load the command line, then run it.

    Loading it (click, cryptography and the rest) takes some 50 ms; a
    Ctrl-C in that time ends the command the way a later one does, with
    one line and status 130 rather than a traceback.
    """
    import os
    import sys

    try:
        from .cli import main as run
    except KeyboardInterrupt:
        if sys.stderr is not None:  # None when started with stderr closed
            try:
                sys.stderr.write("filexfer: error: interrupted\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)
    run()
