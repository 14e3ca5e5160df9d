"""Names a peer sends: the checks every stored or requested path passes.

A name is a relative POSIX path of UTF-8 components.  It is refused
before anything touches the disk if it is empty, absolute, has an empty,
``.`` or ``..`` component, holds NUL, a backslash or a control character,
breaks the length and depth limits, or has a component named like the
store's own part files (``.filexfer-*.part``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import Code, RefusedError

PART_PREFIX = ".filexfer-"
PART_SUFFIX = ".part"


class NameLimits(NamedTuple):
    """Limits on names a peer may send; all have CLI flags on recv."""

    max_component: int = 255  # bytes of UTF-8, the usual NAME_MAX
    max_path: int = 4096  # bytes of UTF-8 for the whole relative name
    max_depth: int = 32  # components


def _refuse(why: str) -> RefusedError:
    # No name in the text: log lines and the sender's message add it.
    return RefusedError(f"bad path: {why}", Code.BAD_PATH)


# C0 and C1 controls, DEL, the backslash, and the lone surrogates that
# stand for bytes that were not UTF-8.
_BAD_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f\\\ud800-\udfff]")


def _check_component(name: str, part: str, limits: NameLimits) -> None:
    if part in ("", ".", ".."):
        raise _refuse(f"component {part!r} is not allowed")
    if part.startswith(PART_PREFIX) and part.endswith(PART_SUFFIX):
        # Such names belong to the store: they would be taken for crash
        # leftovers and deleted at the next start.
        raise _refuse("names like .filexfer-*.part are reserved")
    if len(part.encode("utf-8", "surrogatepass")) > limits.max_component:
        raise _refuse("a component is too long")
    bad = _BAD_CHARACTER.search(part)
    if bad is None:
        return
    if 0xD800 <= ord(bad.group()) <= 0xDFFF:
        raise _refuse("name is not valid UTF-8")
    raise _refuse("control character or backslash in name")


def check_name(name: str, limits: NameLimits = NameLimits()) -> tuple[str, ...]:
    """Validate a peer-supplied relative name and split it into components.

    Raises:
        RefusedError: with code BAD_PATH, saying what is wrong.
    """
    if not name:
        raise _refuse("empty name")
    if name.startswith("/"):
        raise _refuse("absolute path")
    if len(name.encode("utf-8", "surrogatepass")) > limits.max_path:
        raise _refuse("name is too long")
    parts = tuple(name.split("/"))
    if len(parts) > limits.max_depth:
        raise _refuse("too many directory levels")
    for part in parts:
        _check_component(name, part, limits)
    return parts


def names_overlap(one: str, other: str) -> bool:
    """Whether two names are the same or one lies inside the other."""
    return one == other or one.startswith(other + "/") or other.startswith(one + "/")


def is_part_name(name: str) -> bool:
    """Whether a file name is one of this store's part files."""
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def is_made_part_name(name: str) -> bool:
    """Whether a name is exactly what a store gives its part files
    (``.filexfer-`` 16 hex digits, or ``r`` and 32, then ``.part``)."""
    return _MADE_PART.fullmatch(name) is not None


_MADE_PART = re.compile(r"\.filexfer-(?:[0-9a-f]{16}|r[0-9a-f]{32})\.part")
