"""filexfer: encrypted, mutually authenticated file transfer over TCP."""

__version__ = "0.1.0"
