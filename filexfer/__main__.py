"""Allow ``python -m filexfer``."""

from .cli import main

main()
