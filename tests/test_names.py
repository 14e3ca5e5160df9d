"""check_name: which names a peer may send, and what a refused one is told."""

from __future__ import annotations

import os

import pytest

from filexfer.errors import Code, RefusedError
from filexfer.names import NameLimits, check_name, is_made_part_name

ACCEPTED = {
    "plain": ("a.txt", ("a.txt",)),
    "nested": ("a/b/c.bin", ("a", "b", "c.bin")),
    "spaces and non-ascii": (
        "docs/Übersicht März 2026.txt",
        ("docs", "Übersicht März 2026.txt"),
    ),
    "hidden": (".hidden", (".hidden",)),
    "dots inside": ("..a/b..", ("..a", "b..")),
    "three dots": ("...", ("...",)),
    "cjk and emoji": ("写真/🙂.png", ("写真", "🙂.png")),
    "component at the limit": ("x" * 255, ("x" * 255,)),
    "depth at the limit": ("/".join("d" * 32), tuple("d" * 32)),
}

REFUSED = {
    "empty": "",
    "absolute": "/etc/passwd",
    "absolute root": "/",
    "dot dot": "..",
    "dot dot inside": "a/../b",
    "dot dot at end": "a/..",
    "dot": ".",
    "dot inside": "a/./b",
    "leading dot slash": "./a",
    "empty component": "a//b",
    "trailing slash": "dir/",
    "nul": "a\x00b",
    "backslash": "a\\b",
    "windows parent": "..\\evil",
    "escape": "a\x1b[31mb",
    "newline": "a\nb",
    "carriage return": "a\rb",
    "tab": "a\tb",
    "delete": "a\x7fb",
    "c1 next line": "a\x85b",
    "c1 csi": "a\x9bb",
    "lone surrogate from undecodable byte": os.fsdecode(b"bad\xff"),
    "component too long": "x" * 256,
    "component too long in bytes": "é" * 128,
    "name too long": "/".join(["x" * 200] * 21),
    "too deep": "/".join("d" * 33),
}


@pytest.mark.parametrize(("name", "parts"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_check_name_accepts(name: str, parts: tuple[str, ...]) -> None:
    assert check_name(name) == parts


@pytest.mark.parametrize("name", REFUSED.values(), ids=REFUSED.keys())
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(RefusedError) as caught:
        check_name(name)

    assert caught.value.code is Code.BAD_PATH
    assert str(caught.value).startswith("bad path")


def test_check_name_obeys_configured_limits() -> None:
    limits = NameLimits(max_component=4, max_path=9, max_depth=2)

    assert check_name("abcd/efgh", limits) == ("abcd", "efgh")
    for name in ("abcde", "a/b/c", "abcd/efghi"):
        with pytest.raises(RefusedError):
            check_name(name, limits)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a\x01b", "control character or backslash"),
        ("a\\b", "control character or backslash"),
        ("a\x9fb", "control character or backslash"),
        (os.fsdecode(b"bad\xff"), "not valid UTF-8"),
        (os.fsdecode(b"\xff") + "\x01", "not valid UTF-8"),  # the first one counts
        ("\x01" + os.fsdecode(b"\xff"), "control character or backslash"),
        ("d/.filexfer-0123456789abcdef.part", "are reserved"),
    ],
)
def test_a_refused_name_is_told_why(name: str, reason: str) -> None:
    with pytest.raises(RefusedError, match=reason):
        check_name(name)


def test_no_break_or_private_use_character_is_refused() -> None:
    """Only controls, the backslash and undecodable bytes are refused."""
    for name in ("a\u00a0b", "a\u200bb", "a\ue000b", "a\U0001f642b", "a\u2028b"):
        assert check_name(name) == (name,)


def test_only_the_store_s_own_part_names_count_as_made_by_it() -> None:
    assert is_made_part_name(".filexfer-0123456789abcdef.part")
    assert is_made_part_name(".filexfer-r" + "0" * 32 + ".part")
    assert not is_made_part_name(".filexfer-notes.part")
