"""Tests for filexfer.printable: peer text made safe for terminals and logs."""

from __future__ import annotations

import os
import unicodedata

import pytest

from filexfer.printable import log_value, printable, printable_relayed

ESCAPED = {
    "escape sequence": ("a\x1b[2Jb", "a\\x1b[2Jb"),
    "bell": ("\x07", "\\x07"),
    "nul": ("a\x00b", "a\\x00b"),
    "newline": ("a\nb", "a\\nb"),
    "carriage return": ("done\rfake", "done\\rfake"),
    "tab": ("a\tb", "a\\tb"),
    "delete": ("a\x7f", "a\\x7f"),
    "c1 csi": ("a\x9b31mb", "a\\x9b31mb"),
    "c1 next line": ("a\x85b", "a\\x85b"),
    "right-to-left override": ("invoice\u202etxt.exe", "invoice\\u202etxt.exe"),
    "left-to-right mark": ("a\u200eb", "a\\u200eb"),
    "isolate": ("a\u2066b\u2069", "a\\u2066b\\u2069"),
    "arabic letter mark": ("a\u061cb", "a\\u061cb"),
    "line separator": ("a\u2028b", "a\\u2028b"),
    "paragraph separator": ("a\u2029b", "a\\u2029b"),
    "zero-width space": ("pay\u200bpal", "pay\\u200bpal"),
    "no-break space": ("a\u00a0b", "a\\xa0b"),
    "ideographic space": ("a\u3000b", "a\\u3000b"),
    "zero-width joiner": ("a\u200db", "a\\u200db"),
    "byte order mark": ("\ufeffname", "\\ufeffname"),
    "soft hyphen": ("a\u00adb", "a\\xadb"),
    "tag character": ("a\U000e0041b", "a\\U000e0041b"),
    "undecodable byte": (os.fsdecode(b"bad\xffname"), "bad\\xffname"),
    "backslash doubled": ("a\\b", "a\\\\b"),
    "backslash before escape": ("\\\x1b", "\\\\\\x1b"),
}

UNCHANGED = [
    "plain.txt",
    "docs/Übersicht März 2026.txt",
    "写真/🙂.png",
    "with space and 'quotes'",
    "\u2211 \u2192 \u00e9",
    "",
]

BIDI_CONTROLS = (
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


@pytest.mark.parametrize(("text", "shown"), ESCAPED.values(), ids=ESCAPED.keys())
def test_printable_escapes(text: str, shown: str) -> None:
    assert printable(text) == shown


@pytest.mark.parametrize("text", UNCHANGED)
def test_printable_leaves_ordinary_text_alone(text: str) -> None:
    assert printable(text) == text


def test_escaped_form_differs_from_a_name_spelling_it_out() -> None:
    # A name that literally contains the four characters \x1b must not
    # look like a name that contains ESC.
    literal = "a\\x1b"
    real = "a\x1b"

    assert printable(literal) != printable(real)
    assert printable(literal) == "a\\\\x1b"


def is_unsafe(ch: str) -> bool:
    category = unicodedata.category(ch)
    space_like = category == "Zs" and ch != " "
    return (
        ch in BIDI_CONTROLS or space_like or category in ("Cc", "Cf", "Zl", "Zp", "Cs")
    )


def test_no_unsafe_character_survives() -> None:
    # Every code point of the BMP, in one string, and every one alone.
    everything = "".join(chr(code) for code in range(0x10000))

    shown = printable(everything)

    assert not any(is_unsafe(ch) for ch in shown)
    for code in range(0x3000):
        assert not any(is_unsafe(ch) for ch in printable(chr(code)))


def test_printable_output_is_one_line() -> None:
    shown = printable("line one\nline two\r\n\u2028\u0085\x0b\x0c")

    assert len(shown.splitlines()) == 1


def test_a_peers_escapes_show_once_and_nothing_unsafe_gets_through() -> None:
    """A reason the peer escaped (naming its file) keeps its backslashes;
    whatever it failed to escape is escaped here."""
    reason = f"'{printable('odd/nl' + chr(10) + 'name')}' cannot be sent"

    assert printable_relayed(reason) == "'odd/nl\\nname' cannot be sent"
    everything = "".join(chr(code) for code in range(0x10000))
    assert not any(is_unsafe(ch) for ch in printable_relayed(everything))
    assert len(printable_relayed("a\nb\r\u2028c").splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("plain.txt", "plain.txt"),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ("", '""'),
        ('say "hi"', '"say \\x22hi\\x22"'),
        ("tab\there", "tab\\there"),
        ("esc\x1b[0m line", '"esc\\x1b[0m line"'),
    ],
)
def test_log_value_is_one_field(text: str, logged: str) -> None:
    assert log_value(text) == logged


def test_a_relayed_message_in_a_log_is_one_field_however_it_ends() -> None:
    """A peer's text keeps its backslashes; a quote in it never ends the
    value early, whatever comes before it."""
    value = log_value('refused \\" key=forged', relayed=True)
    assert value == '"refused \\\\x22 key=forged"'
    assert value.count('"') == 2
