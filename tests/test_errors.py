"""Tests for filexfer.errors: one hierarchy, one documented code per kind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from filexfer import errors
from filexfer.errors import (
    ALL_ERRORS,
    Code,
    ConnectError,
    FilexferError,
    IntegrityError,
    InterruptError,
    LocalFileError,
    PeerTimeoutError,
    ProtocolError,
    RefusedError,
    TrustError,
    from_code,
)
from tests.helpers import ROOT, cli

README = ROOT / "README.md"


def every_subclass(cls: type[FilexferError]) -> set[type[FilexferError]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | every_subclass(sub)
    return found


def kinds() -> list[type[FilexferError]]:
    """The root and its direct children: each is one kind of failure."""
    return [FilexferError, *FilexferError.__subclasses__()]


def readme_exit_codes() -> dict[int, str]:
    text = README.read_text()
    table = text[text.index("### Exit codes") :]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", table, re.MULTILINE)
    return {int(code): meaning.replace("`", "") for code, meaning in rows}


def help_exit_codes(help_text: str) -> dict[int, str]:
    block = help_text[help_text.index("Exit codes:") :]
    rows = re.findall(r"^\s+(\d+)\s+(\S.*)$", block, re.MULTILINE)
    return {int(code): meaning.strip() for code, meaning in rows}


def test_all_errors_lists_every_class() -> None:
    assert set(ALL_ERRORS) == every_subclass(FilexferError) | {FilexferError}
    assert len(ALL_ERRORS) == len(set(ALL_ERRORS))


def test_each_kind_has_a_distinct_exit_code() -> None:
    codes = [cls.exit_code for cls in kinds()]

    assert len(codes) == len(set(codes)), codes
    assert 0 not in codes


def test_refinements_share_their_kinds_exit_code() -> None:
    # PeerTimeoutError is a kind of ConnectError, ProtocolError a kind of
    # IntegrityError: the exit code says the kind, the message the detail.
    for cls in every_subclass(FilexferError):
        kind = next(k for k in kinds() if issubclass(cls, k) and k is not FilexferError)
        assert cls.exit_code == kind.exit_code, cls


def test_no_error_exits_zero() -> None:
    assert all(cls.exit_code != 0 for cls in ALL_ERRORS)


def test_every_exit_code_is_in_the_readme_table() -> None:
    table = readme_exit_codes()

    assert {cls.exit_code for cls in ALL_ERRORS} | {0} == set(table)


def test_every_class_is_drawn_in_the_module_docstring() -> None:
    assert errors.__doc__ is not None
    for cls in ALL_ERRORS:
        assert re.search(rf"\b{cls.__name__}\s+{cls.exit_code}\b", errors.__doc__), cls


@pytest.mark.parametrize("command", [[], ["put"], ["recv"], ["id"], ["allow"]])
def test_help_lists_the_same_exit_codes_as_the_readme(
    tmp_path: Path, command: list[str]
) -> None:
    done = cli([*command, "--help"], tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert help_exit_codes(done.stdout) == readme_exit_codes()


# -- codes on the wire -------------------------------------------------------

EXPECTED_FROM_CODE = {
    Code.INTERNAL: (FilexferError, 1),
    Code.PROTOCOL: (ProtocolError, 5),
    Code.INTEGRITY: (IntegrityError, 5),
    Code.NOT_AUTHORIZED: (TrustError, 4),
    Code.READ_ONLY: (TrustError, 4),
    Code.BUSY: (ConnectError, 3),
    Code.TIMEOUT: (PeerTimeoutError, 3),
    Code.EXISTS: (RefusedError, 6),
    Code.BAD_PATH: (RefusedError, 6),
    Code.NO_SPACE: (RefusedError, 6),
    Code.IO_ERROR: (RefusedError, 6),
    Code.NOT_FOUND: (RefusedError, 6),
    Code.SOURCE_CHANGED: (LocalFileError, 8),
    Code.DUPLICATE: (RefusedError, 6),
    Code.NOT_REGULAR: (RefusedError, 6),
}


def test_expected_mapping_covers_every_code() -> None:
    assert set(EXPECTED_FROM_CODE) == set(Code)


@pytest.mark.parametrize("code", list(Code), ids=[c.name for c in Code])
def test_from_code_maps_each_wire_code(code: Code) -> None:
    cls, exit_code = EXPECTED_FROM_CODE[code]

    error = from_code(int(code), "peer: why")

    assert type(error) is cls
    assert error.exit_code == exit_code
    assert "peer: why" in str(error)
    if cls is RefusedError:
        assert error.code is code


@pytest.mark.parametrize("code", [0, 8, 18, 99, 255])
def test_from_code_treats_unknown_codes_as_protocol_errors(code: int) -> None:
    error = from_code(code, "odd")

    assert isinstance(error, ProtocolError)
    assert str(code) in str(error)


def test_wire_codes_match_the_protocol_document() -> None:
    document = (ROOT / "docs" / "protocol.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", document, re.MULTILINE))

    assert {int(n): name for n, name in rows.items()} == {c.value: c.name for c in Code}


def test_hint_is_optional_and_kept() -> None:
    assert FilexferError("plain").hint is None
    assert TrustError("x", hint="do this").hint == "do this"
    refused = RefusedError("exists", Code.EXISTS, hint="use --overwrite")
    assert (refused.code, refused.hint) == (Code.EXISTS, "use --overwrite")


@pytest.mark.parametrize(
    ("code", "needle"),
    [(Code.NOT_AUTHORIZED, "filexfer allow"), (Code.BUSY, "try again later")],
    ids=["not authorized", "busy"],
)
def test_from_code_gives_the_sender_a_hint(code: Code, needle: str) -> None:
    error = from_code(int(code), "receiver: why")

    assert error.hint is not None and needle in error.hint


def test_interrupt_is_exit_130_in_help_and_readme(tmp_path: Path) -> None:
    done = cli(["put", "--help"], tmp_path)

    assert InterruptError().exit_code == 130
    assert str(InterruptError()) == "interrupted; copy not completed"
    assert "interrupted" in help_exit_codes(done.stdout)[130]
    assert "interrupted" in readme_exit_codes()[130]
