"""Allow ``python -m filexfer``."""

from . import main

main()
