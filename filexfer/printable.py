"""Make peer-supplied text safe to show on a terminal or in a log line.

Names and messages that come from the other side of a connection (or from a
hostile file system) may hold bytes that drive a terminal: ESC sequences,
carriage returns, C1 controls such as the 8-bit CSI, and bidirectional
overrides that make ``invoice\\u202etxt.exe`` look like ``invoiceexe.txt``.
Every place that prints such text goes through :func:`printable`, which
shows those characters in an escaped, visible form and leaves all other
text alone.  What is stored on disk is never rewritten by this module.
"""

from __future__ import annotations

import re
import unicodedata

# Cc: C0, DEL and C1 controls.  Cf: format characters, invisible
# themselves: bidirectional controls that reorder what the eye sees
# (U+202E), zero-width spaces and joiners, the byte order mark, tags.
# Zs: spaces other than the plain one (a no-break space passes for it).
# Zl/Zp: line and paragraph separators.  Cs: lone surrogates, left by
# os.fsdecode of bytes that were not UTF-8.
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zs", "Zl", "Zp", "Cs"))


def _is_unsafe(ch: str) -> bool:
    return ch != " " and unicodedata.category(ch) in _UNSAFE_CATEGORIES


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that was not valid UTF-8, smuggled through surrogateescape.
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{code:02x}")
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """Return text with every terminal-affecting character escaped.

    Backslashes are doubled so that an escaped form cannot be confused with
    a name that literally contains ``\\x1b``.
    """
    if text.isprintable() and "\\" not in text:
        return text  # isprintable() is false for every unsafe character
    return "".join("\\\\" if ch == "\\" else _shown(ch) for ch in text)


def printable_relayed(text: str) -> str:
    """Like :func:`printable`, for a peer's message (a refusal reason).

    An honest peer has already escaped the names in it with printable, so
    backslashes are kept as they are and its escapes show once, not
    doubled; anything unsafe is still escaped, whoever sent it.
    """
    return "".join(_shown(ch) for ch in text)


def _shown(ch: str) -> str:
    return _escape(ch) if _is_unsafe(ch) else ch


def named(name: str, reason: str) -> str:
    """``'name': reason``, naming the file once when reason already does.

    Some reasons (a store's "'x': cannot read", say) name their file
    themselves; the message built on one must not name it again.
    """
    shown = f"'{printable(name)}'"
    return reason if reason.startswith(shown + ":") else f"{shown}: {reason}"


def is_plain(text: str) -> bool:
    """True when text holds no character that printable() would escape.

    Backslashes count as plain here: they change nothing on a terminal.
    """
    return not any(_is_unsafe(ch) for ch in text)


_NEEDS_QUOTES = re.compile(r'[\s"=]')


def log_value(text: str, relayed: bool = False) -> str:
    """text as one value of a ``key=value`` log line.

    Escaped as :func:`printable` does (or :func:`printable_relayed`, for
    text already escaped once, such as an error's message), then, when it
    is empty or holds a space, a double quote or ``=``, put in double
    quotes, a quote inside shown as ``\\x22``: a name a peer chose never
    reads as more fields (``path=a key=b``), and a quoted value ends at
    the first quote after its opening one.
    """
    shown = printable_relayed(text) if relayed else printable(text)
    if shown and not _NEEDS_QUOTES.search(shown):
        return shown
    return '"' + shown.replace('"', "\\x22") + '"'
