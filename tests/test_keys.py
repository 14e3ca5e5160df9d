"""Tests for filexfer.keys: identity files, authorized senders, pins."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from filexfer.errors import TrustError, UsageError
from filexfer.keys import (
    AUTHORIZED_FILE,
    IDENTITY_FILE,
    KNOWN_FILE,
    PRIVATE_PREFIX,
    Grant,
    KnownReceivers,
    allow_sender,
    area_for,
    authorized_senders,
    check_fingerprint_text,
    check_pin,
    config_dir,
    decode_public,
    encode_public,
    fingerprint,
    load_identity,
    matches_fingerprint,
    sender_grants,
)
from tests.helpers import (
    ROOT,
    base_env,
    cli,
    cli_unprivileged,
    filexfer_command,
    new_identity,
)

RAW = bytes(range(32))
OTHER_RAW = bytes(range(100, 132))


def key_line(raw: bytes = RAW) -> str:
    return encode_public(raw)


# -- the config directory ---------------------------------------------------


def test_config_dir_prefers_filexfer_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FILEXFER_HOME", str(tmp_path / "fx"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert config_dir() == tmp_path / "fx"


def test_config_dir_then_xdg_config_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FILEXFER_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert config_dir() == tmp_path / "xdg" / "filexfer"


@pytest.mark.parametrize("blank", [None, ""])
def test_config_dir_falls_back_to_dot_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, blank: str | None
) -> None:
    for name in ("FILEXFER_HOME", "XDG_CONFIG_HOME"):
        if blank is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, blank)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert config_dir() == tmp_path / "home" / ".config" / "filexfer"


def run_id(
    env_overrides: dict[str, str | None], cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name, value in env_overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [sys.executable, "-m", "filexfer", "id"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize(
    ("filexfer_home", "xdg", "expected"),
    [
        ("fx", "xdg", "fx"),
        (None, "xdg", "xdg/filexfer"),
        (None, None, "home/.config/filexfer"),
    ],
    ids=["FILEXFER_HOME", "XDG_CONFIG_HOME", "HOME"],
)
def test_cli_creates_identity_where_the_environment_says(
    tmp_path: Path, filexfer_home: str | None, xdg: str | None, expected: str
) -> None:
    done = run_id(
        {
            "FILEXFER_HOME": filexfer_home and str(tmp_path / filexfer_home),
            "XDG_CONFIG_HOME": xdg and str(tmp_path / xdg),
            "HOME": str(tmp_path / "home"),
        },
        tmp_path,
    )

    assert done.returncode == 0, done.stderr
    identities = sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob(IDENTITY_FILE)
    )
    assert identities == [f"{expected}/{IDENTITY_FILE}"]


# -- identity ----------------------------------------------------------------


def test_identity_is_created_0600_in_a_0700_directory(tmp_path: Path) -> None:
    home = tmp_path / "new" / "filexfer"
    old_umask = os.umask(0)  # the modes must not depend on a lax umask
    try:
        load_identity(home)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / IDENTITY_FILE).st_mode) == 0o600


def test_identity_is_stable_across_loads(tmp_path: Path) -> None:
    first = load_identity(tmp_path)
    second = load_identity(tmp_path)

    assert first.public == second.public
    assert first.public_line.startswith("fx1") and len(first.public_line) == 46


def test_identity_is_not_created_when_asked_not_to(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_identity(tmp_path, create=False)

    assert not (tmp_path / IDENTITY_FILE).exists()


def test_damaged_identity_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).write_text("fx1-private-not base64 at all\n")
    (tmp_path / IDENTITY_FILE).chmod(0o600)

    with pytest.raises(UsageError) as caught:
        load_identity(tmp_path)

    assert "damaged" in str(caught.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_identity_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Like ssh with a private key others can read: exit 2 and a chmod hint."""
    load_identity(tmp_path)
    path = tmp_path / IDENTITY_FILE
    path.chmod(mode)

    done = cli(["id"], tmp_path)

    how = "writable" if mode == 0o620 else "readable"
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"filexfer: error: identity file {path} is {how} by others (mode {mode:04o})",
        f"filexfer: hint: chmod 600 {path}",
    ]


def test_identity_first_use_by_many_processes_at_once(tmp_path: Path) -> None:
    """Racing first uses agree on one complete identity; none sees it empty."""
    home = tmp_path / "fresh"
    processes = [
        subprocess.Popen(
            filexfer_command("id"),
            env=base_env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    outcomes = [(*p.communicate(timeout=120), p.returncode) for p in processes]

    assert [code for _out, _err, code in outcomes] == [0] * 20, outcomes
    assert {out for out, _err, _code in outcomes} == {
        load_identity(home).public_line + "\n"
    }
    assert os.listdir(home) == [IDENTITY_FILE]
    assert stat.S_IMODE(os.stat(home / IDENTITY_FILE).st_mode) == 0o600


def test_identity_race_lost_uses_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loser's key never replaces the winner's, and its temp file goes."""
    winner = new_identity()
    raw = base64.urlsafe_b64encode(winner.private.private_bytes_raw()).rstrip(b"=")
    real_link = os.link

    def winner_links_first(source: Path, target: Path) -> None:
        # Another process completes its identity just before this one links.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, PRIVATE_PREFIX.encode() + raw + b"\n")
        os.close(fd)
        real_link(source, target)  # FileExistsError, as in a lost race

    monkeypatch.setattr(os, "link", winner_links_first)

    loaded = load_identity(tmp_path)

    assert loaded.public == winner.public
    assert os.listdir(tmp_path) == [IDENTITY_FILE]


@pytest.mark.parametrize("where", ["a file", "below a file", "read-only"])
def test_unusable_config_directory_exits_2(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n")
    home = {
        "a file": blocker,
        "below a file": blocker / "filexfer",
        "read-only": tmp_path / "read-only",
    }[where]
    if where == "read-only":
        home.mkdir(mode=0o500)

    done = cli_unprivileged(["id"], home)

    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("filexfer: error: ")
    assert str(home) in done.stderr.splitlines()[0]
    assert "Traceback" not in done.stderr
    assert blocker.read_text() == "not a directory\n"


def test_id_never_prints_the_private_key(tmp_path: Path) -> None:
    done = cli(["id"], tmp_path)
    private_text = (tmp_path / IDENTITY_FILE).read_text().strip()
    secret = private_text.removeprefix("fx1-private-")

    assert done.returncode == 0
    assert done.stdout.strip() == load_identity(tmp_path).public_line
    assert done.stderr.strip() == fingerprint(load_identity(tmp_path).public)
    assert secret not in done.stdout + done.stderr


# -- public keys and fingerprints -------------------------------------------


def test_public_key_text_round_trips() -> None:
    line = encode_public(RAW)

    assert line.startswith("fx1") and len(line) == 3 + 43
    assert decode_public(line) == RAW
    assert decode_public(f"  {line}  laptop of alice\n") == RAW


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "fx2" + encode_public(RAW)[3:],
        encode_public(RAW)[:-1],
        encode_public(RAW) + "A",
        encode_public(RAW)[:-1] + "!",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG",
    ],
    ids=["empty", "blank", "wrong prefix", "short", "long", "bad char", "ssh key"],
)
def test_reject_malformed_public_key(text: str) -> None:
    with pytest.raises(UsageError):
        decode_public(text)


def test_reject_non_canonical_public_key() -> None:
    # The last base64 character carries 2 spare bits; a key text that sets
    # them decodes to the same bytes but is not the key's one spelling.
    line = encode_public(RAW)
    last = line[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]

    with pytest.raises(UsageError):
        decode_public(line[:-1] + twin)


def test_fingerprint_is_ssh_style_sha256() -> None:
    expected = base64.b64encode(hashlib.sha256(RAW).digest()).decode().rstrip("=")

    assert fingerprint(RAW) == "SHA256:" + expected


@pytest.mark.parametrize(
    "given",
    [
        "fingerprint",
        "fingerprint-without-prefix",
        "fingerprint-padded",
        "fingerprint-spaced",
        "key-line",
    ],
)
def test_matches_fingerprint_accepts_the_forms_users_paste(given: str) -> None:
    full = fingerprint(RAW)
    forms = {
        "fingerprint": full,
        "fingerprint-without-prefix": full.removeprefix("SHA256:"),
        "fingerprint-padded": full + "=",
        "fingerprint-spaced": f"  {full}\n",
        "key-line": encode_public(RAW),
    }

    assert matches_fingerprint(RAW, forms[given])


@pytest.mark.parametrize(
    "given",
    [
        fingerprint(OTHER_RAW),
        encode_public(OTHER_RAW),
        fingerprint(RAW)[:-1],
        fingerprint(RAW).lower(),
        "",
        "SHA256:",
    ],
    ids=["other fp", "other key", "truncated", "lowercased", "empty", "prefix only"],
)
def test_matches_fingerprint_rejects_anything_else(given: str) -> None:
    assert not matches_fingerprint(RAW, given)


# -- authorized senders ------------------------------------------------------


def test_allow_appends_once(tmp_path: Path) -> None:
    assert allow_sender(key_line(RAW), "alice", tmp_path) is True
    assert allow_sender(key_line(OTHER_RAW), "", tmp_path) is True
    assert allow_sender(key_line(RAW), "again", tmp_path) is False

    lines = (tmp_path / AUTHORIZED_FILE).read_text().splitlines()
    assert lines == [f"{key_line(RAW)} alice", key_line(OTHER_RAW)]
    assert authorized_senders(tmp_path) == {RAW, OTHER_RAW}


def test_allow_keeps_existing_hand_written_lines(tmp_path: Path) -> None:
    path = tmp_path / AUTHORIZED_FILE
    path.write_text(f"# backups\n{key_line(RAW)} nas\n")

    allow_sender(key_line(OTHER_RAW), "laptop", tmp_path)

    assert path.read_text() == (
        f"# backups\n{key_line(RAW)} nas\n{key_line(OTHER_RAW)} laptop\n"
    )


@pytest.mark.parametrize("name", [AUTHORIZED_FILE, KNOWN_FILE])
def test_appending_starts_a_new_line_when_the_file_lacks_one(
    tmp_path: Path, name: str
) -> None:
    """A hand edit without a final newline must not glue two entries."""
    path = tmp_path / name
    first = (
        f"{key_line(RAW)} nas" if name == AUTHORIZED_FILE else f"a:1 {key_line(RAW)}"
    )
    path.write_text(f"# by hand\n{first}")

    if name == AUTHORIZED_FILE:
        allow_sender(key_line(OTHER_RAW), "laptop", tmp_path)
        added = f"{key_line(OTHER_RAW)} laptop"
    else:
        KnownReceivers(tmp_path).pin("b:2", OTHER_RAW)
        added = f"b:2 {key_line(OTHER_RAW)}"

    assert path.read_text() == f"# by hand\n{first}\n{added}\n"
    if name == AUTHORIZED_FILE:
        assert authorized_senders(tmp_path) == {RAW, OTHER_RAW}
    else:
        assert KnownReceivers(tmp_path).lookup("a:1") == RAW
        assert KnownReceivers(tmp_path).lookup("b:2") == OTHER_RAW


@pytest.mark.parametrize(
    "comment",
    [
        f"laptop\n{key_line(OTHER_RAW)}",
        f"laptop\r{key_line(OTHER_RAW)}",
        "tab\there",
        "\x1b[2Jlaptop",
        f"next\u2028{key_line(OTHER_RAW)}",
        f"next\x85{key_line(OTHER_RAW)}",
        f"next\x1c{key_line(OTHER_RAW)}",
        "flip\u202eplot",
    ],
    ids=["LF", "CR", "TAB", "ESC", "LINE SEPARATOR", "NEL", "FS", "RLO"],
)
def test_allow_refuses_a_comment_that_is_not_one_printable_line(
    tmp_path: Path, comment: str
) -> None:
    """A comment can never add a second key, nor drive a terminal."""
    with pytest.raises(UsageError) as caught:
        allow_sender(key_line(RAW), comment, tmp_path)

    assert "comment" in str(caught.value)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    assert not (tmp_path / AUTHORIZED_FILE).exists()


def test_allow_refuses_a_key_of_two_lines(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        allow_sender(f"{key_line(RAW)}\n{key_line(OTHER_RAW)}", "", tmp_path)

    assert not (tmp_path / AUTHORIZED_FILE).exists()


def test_allow_refuses_a_malformed_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        allow_sender("fx1-nope", "", tmp_path)

    assert not (tmp_path / AUTHORIZED_FILE).exists()


def test_authorized_file_is_private(tmp_path: Path) -> None:
    allow_sender(key_line(RAW), "", tmp_path)

    assert stat.S_IMODE(os.stat(tmp_path / AUTHORIZED_FILE).st_mode) == 0o600


def test_hand_edited_authorized_senders_with_comments_and_blanks(
    tmp_path: Path,
) -> None:
    (tmp_path / AUTHORIZED_FILE).write_text(
        "# who may send here\n"
        "\n"
        f"{key_line(RAW)}   # alice, added by hand\n"
        "   \n"
        "\t# an indented comment\n"
        f"  {key_line(OTHER_RAW)} bob's laptop\n"
        "#" + key_line(bytes(32)) + " commented out\n"
    )

    assert authorized_senders(tmp_path) == {RAW, OTHER_RAW}


def test_missing_authorized_senders_means_nobody(tmp_path: Path) -> None:
    assert authorized_senders(tmp_path) == frozenset()


def test_malformed_authorized_line_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / AUTHORIZED_FILE).write_text(
        f"# ok\n{key_line(RAW)}\nssh-rsa AAAAB3Nza bob\n"
    )

    with pytest.raises(UsageError) as caught:
        authorized_senders(tmp_path)

    assert str(caught.value).startswith(f"{tmp_path / AUTHORIZED_FILE}: line 3: ")
    assert caught.value.hint is not None


def test_key_file_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / AUTHORIZED_FILE).mkdir()

    with pytest.raises(UsageError) as caught:
        authorized_senders(tmp_path)

    assert f"cannot read {tmp_path / AUTHORIZED_FILE}" in str(caught.value)


def test_cli_allow_reports_and_exits_zero(tmp_path: Path) -> None:
    line = new_identity().public_line

    first = cli(["allow", line, "alice"], tmp_path)
    second = cli(["allow", line], tmp_path)

    assert (first.returncode, first.stdout) == (0, "")
    area = area_for(decode_public(line))
    assert first.stderr == f"filexfer: authorized: {line} (read-write, area {area})\n"
    assert (second.returncode, second.stdout) == (0, "")
    assert second.stderr == (
        f"filexfer: already authorized: {line} (read-write, area {area})\n"
    )
    assert (tmp_path / AUTHORIZED_FILE).read_text() == f"{line} alice\n"


@pytest.mark.parametrize(
    "setup",
    ["bad argument", "bad file"],
)
def test_cli_allow_with_a_malformed_key_exits_2(tmp_path: Path, setup: str) -> None:
    if setup == "bad file":
        (tmp_path / AUTHORIZED_FILE).write_text("not-a-key\n")
        key = new_identity().public_line
    else:
        key = "fx1tooshort"

    done = cli(["allow", key], tmp_path)

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("filexfer: error: ")
    assert "Traceback" not in done.stderr


# -- known receivers -----------------------------------------------------------


def test_known_receivers_pin_and_lookup(tmp_path: Path) -> None:
    known = KnownReceivers(tmp_path)
    assert known.lookup("host:7757") is None

    known.pin("host:7757", RAW)
    known.pin("[::1]:7757", OTHER_RAW)

    assert known.lookup("host:7757") == RAW
    assert known.lookup("[::1]:7757") == OTHER_RAW
    assert known.lookup("host:7758") is None
    assert KnownReceivers(tmp_path).lookup("host:7757") == RAW  # persisted
    assert (tmp_path / KNOWN_FILE).read_text() == (
        f"host:7757 {key_line(RAW)}\n[::1]:7757 {key_line(OTHER_RAW)}\n"
    )


def test_concurrent_first_connections_pin_a_receiver_once(tmp_path: Path) -> None:
    """Several first connections to one receiver at once (parallel jobs
    with --accept-new) leave one line, not one each."""
    pins = [
        threading.Thread(target=KnownReceivers(tmp_path).pin, args=("h:1", RAW))
        for _ in range(10)
    ]
    for thread in pins:
        thread.start()
    for thread in pins:
        thread.join()

    assert (tmp_path / KNOWN_FILE).read_text() == f"h:1 {key_line(RAW)}\n"


def test_a_pin_made_meanwhile_for_another_key_is_a_trust_error(
    tmp_path: Path,
) -> None:
    """Two first connections that met different keys for one address:
    one of them did not reach the real receiver, and must not pin it."""
    KnownReceivers(tmp_path).pin("h:1", RAW)

    with pytest.raises(TrustError, match="has changed"):
        KnownReceivers(tmp_path).pin("h:1", OTHER_RAW)
    assert (tmp_path / KNOWN_FILE).read_text() == f"h:1 {key_line(RAW)}\n"


def test_known_receivers_tolerates_comments(tmp_path: Path) -> None:
    (tmp_path / KNOWN_FILE).write_text(
        f"# pins\n\nhost:1 {key_line(RAW)}\n#host:2 {key_line(OTHER_RAW)}\n"
    )

    assert KnownReceivers(tmp_path).lookup("host:1") == RAW
    assert KnownReceivers(tmp_path).lookup("#host:2") is None
    assert KnownReceivers(tmp_path).lookup("host:2") is None


def test_malformed_pin_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / KNOWN_FILE).write_text(
        f"# pins\nother:1 garbage\nhost:1 {key_line(RAW)[:-2]}\n"
    )

    assert KnownReceivers(tmp_path).lookup("other:2") is None
    with pytest.raises(UsageError) as caught:
        KnownReceivers(tmp_path).lookup("host:1")

    assert str(caught.value).startswith(f"{tmp_path / KNOWN_FILE}: line 3: ")


@pytest.mark.parametrize(
    "given",
    [fingerprint(RAW), fingerprint(RAW).removeprefix("SHA256:"), encode_public(RAW)],
    ids=["fingerprint", "bare", "key line"],
)
def test_check_fingerprint_text_accepts_what_matches_reads(given: str) -> None:
    check_fingerprint_text(given)


@pytest.mark.parametrize(
    "given",
    ["", "nope", "SHA256:", fingerprint(RAW)[:-1], fingerprint(RAW) + "!", "fx1abc"],
    ids=["empty", "word", "prefix only", "short", "bad char", "short key"],
)
def test_check_fingerprint_text_refuses_the_rest(given: str) -> None:
    with pytest.raises(UsageError):
        check_fingerprint_text(given)


def test_check_pin_accepts_unknown_and_same_key() -> None:
    check_pin(None, RAW, "host:7757")
    check_pin(RAW, RAW, "host:7757")


def test_check_pin_refuses_a_changed_key() -> None:
    with pytest.raises(TrustError) as caught:
        check_pin(RAW, OTHER_RAW, "host:7757")

    message = str(caught.value)
    assert "host:7757" in message and "changed" in message
    assert fingerprint(RAW) in message and fingerprint(OTHER_RAW) in message
    assert caught.value.hint is not None and "known_receivers" in caught.value.hint
    assert caught.value.exit_code == 4


# -- options on authorized_senders lines ---------------------------------------


def test_options_before_the_key_give_read_only_and_an_area(tmp_path: Path) -> None:
    (tmp_path / AUTHORIZED_FILE).write_text(
        f"read-only,area=laptop {key_line(RAW)} restore\n"
        f"area=other {key_line(OTHER_RAW)}\n"
    )

    grants = sender_grants(tmp_path)

    assert (grants[RAW].write, grants[RAW].area) == (False, "laptop")
    assert (grants[OTHER_RAW].write, grants[OTHER_RAW].area) == (True, "other")


def test_a_read_only_key_may_read_another_keys_own_area(tmp_path: Path) -> None:
    area = area_for(OTHER_RAW)
    (tmp_path / AUTHORIZED_FILE).write_text(f"area={area},read-only {key_line(RAW)}\n")

    assert sender_grants(tmp_path)[RAW] == Grant(RAW, False, area)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{key} read-only", "option 'read-only' after the key"),
        ("{key} area=x", "option 'area=x' after the key"),
        ("{key} read-only,area=x", "option 'read-only,area=x' after the key"),
        ("area=x,area=y {key}", "more than one area="),
        ("write {key}", "unknown option 'write'"),
        ("area=key-0686b558aa80c6a0 {key}", "are the keys' own areas"),
        ("area=../x {key}", "bad area name '../x'"),
        ("{key} first\nread-only {key} second", "line 2: the key of line 1 again"),
        ("garbage line here", "line 1: not a filexfer public key: 'garbage'"),
        ("read-only fx1short", "not a filexfer public key: 'fx1short'"),
    ],
    ids=[
        "read-only after",
        "area after",
        "both after",
        "two areas",
        "unknown",
        "auto area",
        "dotdot area",
        "twice",
        "no key",
        "bad key after options",
    ],
)
def test_bad_options_stop_with_the_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    (tmp_path / AUTHORIZED_FILE).write_text(line.format(key=key_line(RAW)) + "\n")

    with pytest.raises(UsageError) as caught:
        sender_grants(tmp_path)

    assert str(tmp_path / AUTHORIZED_FILE) in str(caught.value)
    assert message in str(caught.value)


def test_allow_with_other_options_for_a_listed_key_is_refused(tmp_path: Path) -> None:
    allow_sender(key_line(RAW), "alice", tmp_path)
    before = (tmp_path / AUTHORIZED_FILE).read_text()

    with pytest.raises(UsageError, match="already authorized with other options"):
        allow_sender(key_line(RAW), "", tmp_path, grant_options=(False, None))
    with pytest.raises(UsageError, match="already authorized with other options"):
        allow_sender(key_line(RAW), "", tmp_path, grant_options=(True, "other"))

    assert (tmp_path / AUTHORIZED_FILE).read_text() == before
    assert allow_sender(key_line(RAW), "", tmp_path) is False


@pytest.mark.parametrize("comment", ["read-only", "read-only,area=x", "area=x backup"])
def test_allow_refuses_a_comment_that_reads_as_options(
    tmp_path: Path, comment: str
) -> None:
    with pytest.raises(UsageError, match="reads as options"):
        allow_sender(key_line(RAW), comment, tmp_path)

    assert not (tmp_path / AUTHORIZED_FILE).exists()


def test_identity_that_is_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).mkdir(mode=0o700)

    done = cli(["id"], tmp_path)

    assert done.returncode == 2
    assert done.stderr == (
        f"filexfer: error: identity file {tmp_path / IDENTITY_FILE} "
        "is not a regular file\n"
    )
