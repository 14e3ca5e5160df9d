"""End to end: the `filexfer` command's trust prompts, exit codes and output.

Real processes throughout: `filexfer recv` on a loopback port and the CLI
run as `python -m filexfer`. Exit code, stdout and stderr are checked apart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3

from filexfer import messages as msgs
from filexfer.errors import Code
from filexfer.keys import (
    AUTHORIZED_FILE,
    KNOWN_FILE,
    encode_public,
    load_identity,
)
from filexfer.session import connect
from tests.attackers import Endpoint, HostileServer
from tests.conftest import recv_flags
from tests.helpers import (
    Pair,
    Receiver,
    SwitchingProxy,
    authorize_sender,
    base_env,
    cli,
    cli_answering,
    cli_on_terminal,
    closed_port,
    filexfer_command,
    identity_fingerprint,
    new_identity,
    random_file,
    sha256,
    terminated_once,
    wait_until,
)

MiB = 1 << 20


def assert_one_error(
    done: subprocess.CompletedProcess[str], code: int, *needles: str
) -> str:
    """Exit CODE, nothing on stdout, one error line (and maybe a hint)."""
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines and lines[0].startswith("filexfer: error: "), lines
    assert len(lines) == 1 or (
        len(lines) == 2 and lines[1].startswith("filexfer: hint: ")
    )
    message = lines[0].removeprefix("filexfer: error: ")
    assert message == message.rstrip(".")
    assert not message[:1].isupper(), message
    for needle in needles:
        assert needle in done.stderr
    return message


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return random_file(tmp_path / "src" / "report.bin", 64 * 1024, seed=40)


def nothing_arrived(receiver: Receiver) -> bool:
    return not any(path.is_file() for path in receiver.root.rglob("*"))


# -- trust: pinning the receiver -----------------------------------------------


def test_put_unknown_receiver_without_terminal_refuses_without_prompting(
    pair: Pair, source: Path
) -> None:
    done = cli(["put", source, pair.receiver.address], pair.sender_home)

    assert_one_error(done, 4, "unknown receiver key", pair.receiver_fingerprint)
    assert "filexfer: hint: " in done.stderr
    assert "Trust this key" not in done.stderr
    assert not (pair.sender_home / KNOWN_FILE).exists()
    pair.receiver.wait_for_log(r"event=session\.handshake_failed")
    assert nothing_arrived(pair.receiver)
    assert "event=session.start" not in pair.receiver.log()


def test_put_accept_new_pins_and_later_puts_need_no_flag(
    pair: Pair, source: Path
) -> None:
    first = cli(
        ["put", "--accept-new", source, pair.receiver.address], pair.sender_home
    )
    (pair.area / "report.bin").unlink()
    second = cli(["put", source, pair.receiver.address], pair.sender_home)

    for done in (first, second):
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        assert done.stderr.startswith("filexfer: sent 1 file(s)")
    pins = (pair.sender_home / KNOWN_FILE).read_text().splitlines()
    receiver_key = load_identity(pair.receiver.home).public_line
    assert pins == [f"{pair.receiver.address} {receiver_key}"]
    assert sha256(pair.area / "report.bin") == sha256(source)


def test_put_fingerprint_pins_the_receiver(pair: Pair, source: Path) -> None:
    done = pair.put(source)

    assert done.returncode == 0, done.stderr
    pins = (pair.sender_home / KNOWN_FILE).read_text()
    receiver_key = load_identity(pair.receiver.home).public_line
    assert pins == f"{pair.receiver.address} {receiver_key}\n"


def test_put_wrong_fingerprint_exits_4_and_sends_nothing(
    pair: Pair, source: Path, tmp_path: Path
) -> None:
    other = identity_fingerprint(tmp_path / "other")

    done = cli(
        ["put", "--fingerprint", other, source, pair.receiver.address],
        pair.sender_home,
    )

    assert_one_error(done, 4, "not the fingerprint given", pair.receiver_fingerprint)
    assert not (pair.sender_home / KNOWN_FILE).exists()
    pair.receiver.wait_for_log(r"event=session\.handshake_failed")
    assert "event=session.start" not in pair.receiver.log()
    assert nothing_arrived(pair.receiver)


@pytest.mark.parametrize(
    "extra",
    [[], ["--accept-new"], ["--fingerprint"]],
    ids=["plain", "accept-new", "fingerprint"],
)
def test_put_changed_receiver_key_is_a_hard_failure(
    pair: Pair, source: Path, extra: list[str]
) -> None:
    impostor_pin = encode_public(new_identity().public)
    (pair.sender_home / KNOWN_FILE).write_text(
        f"{pair.receiver.address} {impostor_pin}\n"
    )
    if extra == ["--fingerprint"]:
        extra = ["--fingerprint", pair.receiver_fingerprint]

    done = cli(["put", *extra, source, pair.receiver.address], pair.sender_home)

    assert_one_error(done, 4, "has changed", "known_receivers")
    assert (pair.sender_home / KNOWN_FILE).read_text() == (
        f"{pair.receiver.address} {impostor_pin}\n"
    )
    pair.receiver.wait_for_log(r"event=session\.handshake_failed")
    assert nothing_arrived(pair.receiver)


def test_put_unauthorized_sender_exits_4(
    make_pair: Callable[..., Pair], source: Path
) -> None:
    pair = make_pair(authorize=False)

    done = pair.put(source)

    assert_one_error(done, 4, "not authorized", "filexfer id", "filexfer allow")
    assert done.stderr.splitlines()[1].startswith("filexfer: hint: give the ")
    pair.receiver.wait_for_log(r"event=session\.unauthorized")
    assert "event=session.start" not in pair.receiver.log()
    assert nothing_arrived(pair.receiver)
    assert pair.receiver.alive()


PROMPT = "Trust this key from now on?"


def interactive_put(
    pair: Pair, answer: str, at_prompt: Callable[[], None], *args: str | Path
) -> tuple[int, str, str]:
    """`put` run by a person at a terminal who types ANSWER at the prompt."""
    run = cli_answering(
        ["put", *args, pair.receiver.address],
        pair.sender_home,
        PROMPT,
        answer,
        at_prompt,
    )
    return run.returncode, run.stdout, run.terminal


def test_put_interactive_yes_pins_only_after_the_answer_then_sends(
    pair: Pair, source: Path
) -> None:
    """The prompt is not inside a handshake: that connection is over."""
    seen_at_prompt: list[object] = []

    def at_prompt() -> None:
        pair.receiver.wait_for_log(r"event=session\.handshake_failed")
        seen_at_prompt.append((pair.sender_home / KNOWN_FILE).exists())
        seen_at_prompt.append(pair.receiver.log().count("event=session.start"))

    code, stdout, terminal = interactive_put(pair, "y", at_prompt, source)

    assert code == 0, terminal
    assert stdout == ""
    assert seen_at_prompt == [False, 0]
    assert f"has key {pair.receiver_fingerprint}" in terminal
    receiver_key = load_identity(pair.receiver.home).public_line
    assert (pair.sender_home / KNOWN_FILE).read_text() == (
        f"{pair.receiver.address} {receiver_key}\n"
    )
    assert sha256(pair.area / "report.bin") == sha256(source)
    assert pair.receiver.log().count("event=session.start") == 1


def test_put_interactive_no_exits_4_and_pins_nothing(pair: Pair, source: Path) -> None:
    code, stdout, terminal = interactive_put(pair, "n", lambda: None, source)

    assert code == 4
    assert stdout == ""
    last = terminal.rstrip("\r\n").splitlines()[-2:]
    assert last[0].startswith("filexfer: error: receiver key SHA256:")
    assert last[0].endswith("not trusted")
    assert last[1].startswith("filexfer: hint: ")
    assert not (pair.sender_home / KNOWN_FILE).exists()
    assert nothing_arrived(pair.receiver)
    assert "event=session.start" not in pair.receiver.log()


def test_put_interactive_end_of_input_is_a_no(pair: Pair, source: Path) -> None:
    """Ctrl-D at the trust prompt declines (exit 4); it is not an interrupt."""
    code, stdout, terminal = interactive_put(pair, "\x04", lambda: None, source)

    assert code == 4
    assert stdout == ""
    assert "not trusted" in terminal
    assert "interrupted" not in terminal
    assert not (pair.sender_home / KNOWN_FILE).exists()
    assert nothing_arrived(pair.receiver)


def test_put_interactive_yes_then_a_different_key_exits_4(
    pair: Pair, source: Path, tmp_path: Path
) -> None:
    """The second connection must show the key the person said yes to."""
    impostor_home = tmp_path / "impostor-home"
    impostor_home.mkdir()
    authorize_sender(pair.sender_home, impostor_home)
    impostor = Receiver(
        impostor_home, tmp_path / "impostor-out", tmp_path / "impostor.log"
    ).start()
    proxy = SwitchingProxy([pair.receiver.port, impostor.port])
    try:
        run = cli_answering(
            ["put", source, proxy.address], pair.sender_home, PROMPT, "y"
        )
    finally:
        proxy.close()
        impostor.stop()

    assert run.returncode == 4, run.terminal
    assert "has changed" in run.terminal
    receiver_key = load_identity(pair.receiver.home).public_line
    assert (pair.sender_home / KNOWN_FILE).read_text() == (
        f"{proxy.address} {receiver_key}\n"
    )
    assert nothing_arrived(pair.receiver)
    assert not (tmp_path / "impostor-out" / "report.bin").exists()


# -- other exit codes ----------------------------------------------------------


def test_put_nothing_listening_exits_3(sender_home: Path, source: Path) -> None:
    port = closed_port()

    done = cli(["put", "--accept-new", source, f"127.0.0.1:{port}"], sender_home)

    assert_one_error(done, 3, f"cannot connect to 127.0.0.1:{port}")


def test_sigterm_while_waiting_to_retry_still_reports_every_file(
    sender_home: Path, source: Path
) -> None:
    """Stopped between attempts, a --json job still ends with one object
    per file, 130 and one error line."""
    port = closed_port()
    options = ["--json", "--retry", "5", "--accept-new"]
    process = subprocess.Popen(
        filexfer_command("put", *options, source, f"127.0.0.1:{port}"),
        env=base_env(sender_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    warning = process.stderr.readline()  # the first attempt failed
    assert "retrying in 1 s" in warning
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 130
    [record] = [json.loads(line) for line in stdout.splitlines()]
    assert (record["status"], record["exit_code"]) == ("failed", 130)
    assert stderr == "filexfer: error: interrupted; copy not completed\n"


USAGE_ERRORS = {
    "one argument": ["put", "HOST"],
    "bad port": ["put", "SOURCE", "127.0.0.1:notaport"],
    "port out of range": ["put", "SOURCE", "127.0.0.1:65536"],
    "port of many digits": ["put", "SOURCE", "127.0.0.1:" + "1" * 5000],
    "superscript port": ["put", "SOURCE", "127.0.0.1:\u00b2"],
    "arabic-indic port": ["put", "SOURCE", "127.0.0.1:\u0667\u0667\u0665\u0667"],
    "arabic-indic port alone": ["put", "SOURCE", ":\u0667\u0667\u0665\u0667"],
    "empty port": ["put", "SOURCE", "127.0.0.1:"],
    "port 0": ["put", "SOURCE", "127.0.0.1:0"],
    "ipv6 port 0": ["put", "SOURCE", "[::1]:0"],
    "unclosed bracket": ["put", "SOURCE", "[::1"],
    "no colon after bracket": ["put", "SOURCE", "[::1]7757"],
    "host with a space": ["put", "SOURCE", "two words:7757"],
    "host with an empty label": ["put", "SOURCE", "a..b:7757"],
    "host label too long": ["put", "SOURCE", "a" * 64 + ".example:7757"],
    "no host": ["put", "SOURCE", ":7757"],
    "unknown option": ["put", "--no-such-option", "SOURCE", "127.0.0.1:1"],
    "bad timeout": ["put", "--connect-timeout", "0", "SOURCE", "127.0.0.1:1"],
    "nan timeout": ["put", "--connect-timeout", "nan", "SOURCE", "127.0.0.1:1"],
    "inf timeout": ["put", "--idle-timeout", "inf", "SOURCE", "127.0.0.1:1"],
    "negative timeout": ["put", "--idle-timeout", "-5", "SOURCE", "127.0.0.1:1"],
    "timeout over a day": ["put", "--idle-timeout", "86401", "SOURCE", "127.0.0.1:1"],
    "not a fingerprint": ["put", "--fingerprint", "nope", "SOURCE", "127.0.0.1:1"],
    "unknown command": ["frobnicate"],
    "recv without --dir": ["recv"],
    "recv empty --dir": ["recv", "--dir", ""],
    "recv bad listen address": ["recv", "--dir", "OUT", "--listen", "127.0.0.1:x"],
    "recv listen superscript port": ["recv", "--dir", "OUT", "--listen", ":\u00b2"],
    "recv listen unclosed bracket": ["recv", "--dir", "OUT", "--listen", "[::1"],
    "recv listen unresolvable": ["recv", "--dir", "OUT", "--listen", "a..b"],
    "recv listen address not here": [
        "recv",
        "--dir",
        "OUT",
        "--listen",
        "192.0.2.1:7757",  # TEST-NET-1: on no machine, so bind fails locally
    ],
    "recv nan timeout": ["recv", "--dir", "OUT", "--idle-timeout", "nan"],
    "recv inf timeout": ["recv", "--dir", "OUT", "--handshake-timeout", "inf"],
    "recv negative timeout": ["recv", "--dir", "OUT", "--handshake-timeout", "-1"],
    "recv huge timeout": ["recv", "--dir", "OUT", "--idle-timeout", "1e300"],
    "recv record limit too small": ["recv", "--dir", "OUT", "--max-record", "10"],
    "allow without key": ["allow"],
    "allow comment with a newline": ["allow", "KEY", "laptop\nfx1"],
    "allow comment with an escape": ["allow", "KEY", "\x1b[2Jlaptop"],
}


@pytest.mark.parametrize("args", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_exit_2(
    args: list[str], sender_home: Path, source: Path, tmp_path: Path
) -> None:
    fill = {
        "SOURCE": str(source),
        "OUT": str(tmp_path / "out"),
        "KEY": new_identity().public_line,
    }
    filled = [fill.get(a, a) for a in args]

    done = cli(filled, sender_home, timeout=30)

    assert_one_error(done, 2)
    assert not (tmp_path / "out").exists()
    assert not (sender_home / KNOWN_FILE).exists()
    assert not (sender_home / AUTHORIZED_FILE).exists()


@pytest.mark.parametrize(
    "arg", ["/", ".", "..", "src/..", "src/.", "src/./", "//"], ids=repr
)
def test_put_argument_without_a_name_is_a_usage_error(
    sender_home: Path, source: Path, arg: str
) -> None:
    """`put -r /` must not walk the disk: exit 2 before reading or connecting."""
    port = closed_port()  # were it to connect, it would exit 3

    done = cli(
        ["put", "-r", "--json", source, arg, f"127.0.0.1:{port}"],
        sender_home,
        cwd=source.parent.parent,
        timeout=30,
    )

    message = assert_one_error(done, 2, "does not end in a name")
    assert f"'{arg}'" in message
    assert "filexfer: hint: " in done.stderr


def test_put_ipv6_address_is_shown_in_brackets(sender_home: Path, source: Path) -> None:
    done = cli(["put", "--accept-new", source, "[::1]:1"], sender_home, timeout=30)

    assert_one_error(done, 3, "cannot connect to [::1]:1: ")


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_recv_dir_that_cannot_be_a_directory_exits_2(
    receiver_home: Path, tmp_path: Path, where: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file\n")
    root = blocker if where == "a file" else blocker / "incoming"

    done = cli(
        ["recv", "--dir", root, "--listen", "127.0.0.1:0"], receiver_home, timeout=30
    )

    assert_one_error(done, 2, str(root), "not a directory")
    assert blocker.read_text() == "a file\n"


@pytest.mark.parametrize("below", [False, True])
def test_recv_dir_with_a_name_too_long_exits_2(
    receiver_home: Path, tmp_path: Path, below: bool
) -> None:
    root = tmp_path / ("k" * 300)
    if below:
        root = root / "incoming"

    done = cli(
        ["recv", "--dir", root, "--listen", "127.0.0.1:0"], receiver_home, timeout=30
    )

    assert_one_error(done, 2, "file name too long")


def test_recv_refuses_to_start_with_a_malformed_authorized_senders(
    receiver_home: Path, tmp_path: Path
) -> None:
    """Found at start, with file and line, not at every handshake later."""
    good = new_identity().public_line
    (receiver_home / AUTHORIZED_FILE).write_text(
        f"# senders\n{good} laptop\n\nssh-ed25519 AAAAC3Nza bob\n"
    )

    done = cli(
        ["recv", "--dir", tmp_path / "out", "--listen", "127.0.0.1:0"],
        receiver_home,
        timeout=30,
    )

    assert_one_error(done, 2, f"{receiver_home / AUTHORIZED_FILE}: line 4: ")
    assert not (tmp_path / "out").exists()


def test_bare_command_shows_usage_and_exits_2(sender_home: Path) -> None:
    done = cli([], sender_home)

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("Usage: filexfer")
    assert "Exit codes:" in done.stderr


def test_a_config_directory_that_cannot_be_made_is_exit_2() -> None:
    """/proc exists and takes no new folder: one line and 2, no retry loop."""
    done = cli(["id"], Path("/proc/filexfer-no-such-home"), timeout=30)

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "filexfer: error: cannot create config directory "
        "/proc/filexfer-no-such-home: no such file or directory\n"
    )


def test_recv_on_a_busy_port_exits_3(receiver_home: Path, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = cli(
            ["recv", "--dir", tmp_path / "out", "--listen", f"127.0.0.1:{port}"],
            receiver_home,
            timeout=30,
        )

    message = assert_one_error(done, 3, "another process listens there")
    assert message == f"cannot listen on 127.0.0.1:{port}: address already in use"


def test_debug_shows_the_traceback(sender_home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"

    plain = cli(["put", missing, "127.0.0.1:1"], sender_home)
    debug = cli(["--debug", "put", missing, "127.0.0.1:1"], sender_home)

    assert_one_error(plain, 8, "missing.txt")
    assert debug.returncode == 8
    assert "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1]


def test_version(sender_home: Path) -> None:
    done = cli(["--version"], sender_home)

    assert done.returncode == 0
    assert done.stdout == "filexfer, version 0.1.0\n"
    assert done.stderr == ""


# -- output: --json, --quiet, progress (C15) -----------------------------------


def test_put_json_prints_one_object_per_file(pair: Pair, tmp_path: Path) -> None:
    """stdout holds only JSON lines, one per file, in job order (C15)."""
    sources = [
        random_file(tmp_path / "src" / "a.bin", 3 * MiB, seed=41),
        random_file(tmp_path / "src" / "b.bin", 0),
        random_file(tmp_path / "src" / "c d.bin", 1000, seed=42),
    ]

    done = pair.put("--json", *sources)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == len(done.stdout.splitlines()) == 3
    for record, path in zip(records, sources, strict=True):
        assert set(record) == {
            "name",
            "path",
            "status",
            "bytes",
            "digest",
            "digest_algorithm",
            "seconds",
            "type",
            "unchanged",
            "resumed_from",
        }
        assert (record["type"], record["unchanged"]) == ("file", False)
        assert record["resumed_from"] == 0
        assert record["name"] == path.name
        assert record["path"] == str(path)
        assert record["status"] == "ok"
        assert record["bytes"] == path.stat().st_size
        assert record["digest"] == blake3(path.read_bytes()).hexdigest()
        assert record["digest_algorithm"] == "blake3"
        assert isinstance(record["seconds"], float) and record["seconds"] >= 0


def test_put_json_reports_failures_with_their_code(pair: Pair, tmp_path: Path) -> None:
    (pair.area / "taken.txt").write_bytes(b"old")
    sources = [
        random_file(tmp_path / "src" / "fine.txt", 10),
        random_file(tmp_path / "src" / "taken.txt", 10),
    ]

    done = pair.put("--json", *sources)

    assert done.returncode == 7
    fine, taken = [json.loads(line) for line in done.stdout.splitlines()]
    assert fine["status"] == "ok"
    assert taken["status"] == "failed"
    assert taken["exit_code"] == 6
    assert "already exists" in taken["error"]
    assert taken["digest"] is None


def test_put_json_of_a_name_that_is_not_utf8_is_strict_json(
    pair: Pair, tmp_path: Path
) -> None:
    """A local name with a byte that is not UTF-8 is shown with U+FFFD, and
    its exact bytes are kept in hex; the output is strict UTF-8 JSON."""
    fine = random_file(tmp_path / "src" / "fine.txt", 10)
    raw = os.fsencode(tmp_path / "src") + b"/caf\xff.txt"
    with open(raw, "wb") as stream:
        stream.write(b"data")

    done = subprocess.run(
        filexfer_command(*pair.put_args("--json", fine, os.fsdecode(raw))),
        env=base_env(pair.sender_home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )

    assert done.returncode == 7, done.stderr
    lines = done.stdout.decode("utf-8", "strict").splitlines()
    bad, good = [json.loads(line) for line in lines]
    for record in (bad, good):
        json.dumps(record, ensure_ascii=False).encode("utf-8", "strict")
    assert (bad["name"], bad["name_hex"]) == ("caf\ufffd.txt", b"caf\xff.txt".hex())
    assert bad["path"] == os.fsdecode(raw).replace("\udcff", "\ufffd")
    assert bytes.fromhex(str(bad["path_hex"])) == raw
    assert bad["status"] == "failed" and bad["exit_code"] == 8
    assert "name_hex" not in good and "path_hex" not in good
    assert (good["name"], good["status"]) == ("fine.txt", "ok")


def _shows_a_copy_then_fails_it(end: Endpoint) -> None:
    """A receiver that holds an identical copy, then cannot confirm it (its
    --dir was deleted meanwhile, say)."""
    while not isinstance(message := end.recv(), msgs.Close):
        if isinstance(message, msgs.Offer):
            end.send(msgs.Accept(message.file_id, message.size, blake3(b"").digest()))
        elif isinstance(message, msgs.End):
            why = "cannot write (No such file or directory)"
            end.send(msgs.Reject(message.file_id, Code.IO_ERROR, why))
    end.send(msgs.Close())


def test_put_json_never_calls_a_failed_file_unchanged(tmp_path: Path) -> None:
    empty = tmp_path / "src" / "empty.txt"
    empty.parent.mkdir()
    empty.write_bytes(b"")

    with HostileServer(tmp_path / "receiver-home", _shows_a_copy_then_fails_it) as end:
        args = ["put", "--accept-new", "--json", empty, end.address]
        done = cli(args, tmp_path / "sender-home")

    assert done.returncode == 6, done.stderr
    [record] = json_records(done)
    assert (record["status"], record["exit_code"]) == ("failed", 6)
    assert (record["unchanged"], record["resumed_from"]) == (False, 0)


def json_records(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    lines = done.stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) for r in records)
    return records


def three_sources(tmp_path: Path) -> list[Path]:
    """a.txt, a missing file, b.txt (the order given on the command line)."""
    src = tmp_path / "src"
    return [
        random_file(src / "a.txt", 100, seed=45),
        src / "missing.txt",
        random_file(src / "b.txt", 200, seed=46),
    ]


def assert_every_file_failed(
    done: subprocess.CompletedProcess[str], sources: list[Path], code: int, why: str
) -> None:
    """One failed object per file: the local failure, then the session's."""
    a, missing, b = sources
    records = json_records(done)
    assert [(r["name"], r["path"]) for r in records] == [
        ("missing.txt", str(missing)),
        ("a.txt", str(a)),
        ("b.txt", str(b)),
    ]
    assert all(r["status"] == "failed" and r["digest"] is None for r in records)
    assert records[0]["exit_code"] == 8
    assert "missing.txt" in str(records[0]["error"])
    for record in records[1:]:
        assert record["exit_code"] == code
        assert why in str(record["error"])
    assert done.returncode == code


def test_put_json_reports_every_file_when_nothing_listens(
    sender_home: Path, tmp_path: Path
) -> None:
    sources = three_sources(tmp_path)
    port = closed_port()

    done = cli(
        ["put", "--accept-new", "--json", *sources, f"127.0.0.1:{port}"], sender_home
    )

    assert_every_file_failed(done, sources, 3, f"cannot connect to 127.0.0.1:{port}")
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and "missing.txt" in lines[0]
    assert lines[1].startswith(f"filexfer: error: cannot connect to 127.0.0.1:{port}")


def test_put_json_reports_every_file_when_not_authorized(
    make_pair: Callable[..., Pair], tmp_path: Path
) -> None:
    pair = make_pair(authorize=False)
    sources = three_sources(tmp_path)

    done = pair.put("--json", *sources)

    assert_every_file_failed(done, sources, 4, "not authorized")
    assert done.stderr.splitlines()[-1].startswith("filexfer: hint: give the ")
    assert nothing_arrived(pair.receiver)


def test_put_busy_receiver_fails_every_file_with_a_hint(
    make_pair: Callable[..., Pair], tmp_path: Path
) -> None:
    pair = make_pair(*recv_flags(max_sessions=1))
    identity = load_identity(pair.sender_home)
    holder = connect("127.0.0.1", pair.receiver.port, identity, lambda _key: None)
    pair.receiver.wait_for_log(r"event=session\.start")
    sources = three_sources(tmp_path)
    try:
        done = pair.put("--json", *sources)
    finally:
        holder.send(msgs.Close())
        holder.close()

    assert_every_file_failed(done, sources, 3, "receiver: all sessions in use")
    assert "try again later" in done.stderr.splitlines()[-1]
    pair.receiver.wait_for_log(r"reason=busy")
    assert nothing_arrived(pair.receiver)


def test_put_without_terminal_draws_no_progress(pair: Pair, tmp_path: Path) -> None:
    """stderr to a file or pipe gets one summary line, no bar bytes (C15)."""
    big = random_file(tmp_path / "src" / "big.bin", 8 * MiB, seed=43)

    done = pair.put(big)

    assert done.returncode == 0
    assert done.stdout == ""
    assert "\r" not in done.stderr
    assert "\x1b" not in done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("filexfer: sent 1 file(s), 8,388,608 bytes in ")
    assert len(done.stderr) < 200


def test_put_progress_flag_forces_the_bar(pair: Pair, source: Path) -> None:
    """--progress draws the bar even when stderr is not a terminal (C15)."""
    done = pair.put("--progress", source)

    assert done.returncode == 0
    assert done.stdout == ""
    assert "100%" in done.stderr and "64.0k/64.0k" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("filexfer: sent 1 file(s)")


def test_put_quiet_prints_nothing_on_success(pair: Pair, source: Path) -> None:
    done = pair.put("--quiet", source)

    assert done.returncode == 0
    assert (done.stdout, done.stderr) == ("", "")
    assert sha256(pair.area / "report.bin") == sha256(source)


def test_put_quiet_still_reports_errors(pair: Pair, source: Path) -> None:
    (pair.area / "report.bin").write_bytes(b"old")

    done = pair.put("--quiet", source)

    assert_one_error(done, 6, "already exists")


def terminal_put(pair: Pair, *args: str | Path) -> tuple[int, str, str]:
    run = cli_on_terminal(pair.put_args(*args), pair.sender_home)
    return run.returncode, run.stdout, run.terminal


def test_put_on_a_terminal_draws_a_bar(pair: Pair, tmp_path: Path) -> None:
    """Under a real pseudo-terminal the tqdm bar appears on stderr (C15)."""
    big = random_file(tmp_path / "src" / "big.bin", 8 * MiB, seed=44)

    code, stdout, terminal = terminal_put(pair, big)

    assert code == 0
    assert stdout == ""
    assert "\r" in terminal
    assert "100%" in terminal and "8.00M/8.00M" in terminal
    assert (
        terminal.rstrip("\r\n").splitlines()[-1].startswith("filexfer: sent 1 file(s)")
    )


def test_put_on_a_terminal_several_files_and_a_tree(pair: Pair, tmp_path: Path) -> None:
    """Several files draw a total bar and a per-file bar, and finish."""
    src = tmp_path / "src"
    files = [
        random_file(src / "one.bin", 2 * MiB, seed=47),
        random_file(src / "two.bin", MiB, seed=48),
    ]
    random_file(src / "tree" / "deep" / "three.bin", MiB, seed=49)
    random_file(src / "tree" / "four.bin", 1000, seed=50)

    code, stdout, terminal = terminal_put(pair, "-r", *files, src / "tree")

    assert code == 0, terminal
    assert stdout == ""
    assert "Traceback" not in terminal
    assert "total: 100%" in terminal and "4.00M/4.00M" in terminal
    assert "\r" in terminal
    last = terminal.rstrip("\r\n").splitlines()[-1]
    assert last.startswith("filexfer: sent 4 file(s), 4,195,304 bytes in ")
    for name in ["one.bin", "two.bin", "tree/deep/three.bin", "tree/four.bin"]:
        assert (pair.area / name).is_file()


def test_put_on_a_terminal_with_no_progress(pair: Pair, source: Path) -> None:
    code, stdout, terminal = terminal_put(pair, "--no-progress", source)

    assert code == 0
    assert stdout == ""
    assert "\r" not in terminal.replace("\r\n", "\n")
    assert terminal.startswith("filexfer: sent 1 file(s)")


def test_put_on_a_terminal_quiet_prints_nothing(pair: Pair, source: Path) -> None:
    code, stdout, terminal = terminal_put(pair, "--quiet", source)

    assert code == 0
    assert (stdout, terminal) == ("", "")


def test_put_on_a_terminal_error_is_one_clean_line(pair: Pair, source: Path) -> None:
    (pair.area / "report.bin").write_bytes(b"old")

    code, stdout, terminal = terminal_put(pair, source)

    assert code == 6
    assert stdout == ""
    assert "Traceback" not in terminal
    assert terminal.rstrip("\r\n").splitlines()[-1] == (
        "filexfer: error: receiver refused 'report.bin': already exists"
    )


# -- the receiver daemon ---------------------------------------------------------


def test_recv_once_exits_zero_after_one_session(
    make_pair: Callable[..., Pair], source: Path
) -> None:
    pair = make_pair("--once")

    done = pair.put(source)

    assert done.returncode == 0, done.stderr
    assert pair.receiver.process is not None
    assert pair.receiver.process.wait(30) == 0
    assert "event=recv.stopped" in pair.receiver.log()
    assert pair.receiver.log().count("event=session.start") == 1
    assert sha256(pair.area / "report.bin") == sha256(source)


def test_recv_once_is_not_used_up_by_a_stranger(
    make_pair: Callable[..., Pair], source: Path, tmp_path: Path
) -> None:
    pair = make_pair("--once")
    stranger_home = tmp_path / "stranger"
    stranger_home.mkdir()

    refused = cli(pair.put_args(source), stranger_home)
    pair.receiver.wait_for_log(r"event=session\.unauthorized")

    assert refused.returncode == 4
    assert pair.receiver.alive()
    assert pair.put(source).returncode == 0
    assert pair.receiver.process is not None
    assert pair.receiver.process.wait(30) == 0


def test_recv_once_exits_zero_when_it_refused_a_file(
    make_pair: Callable[..., Pair], source: Path
) -> None:
    """A refusal is the sender's failure; the session itself ended well."""
    pair = make_pair("--once")
    (pair.area / "report.bin").write_bytes(b"old")

    done = pair.put(source)

    assert_one_error(done, 6, "already exists")
    assert pair.receiver.process is not None
    assert pair.receiver.process.wait(30) == 0
    assert (pair.area / "report.bin").read_bytes() == b"old"
    assert "event=session.end" in pair.receiver.log()


def test_recv_once_exits_with_the_code_of_a_failed_session(
    make_pair: Callable[..., Pair],
) -> None:
    """A sender that vanishes mid-file: the session failed, so recv exits 3."""
    pair = make_pair("--once")
    identity = load_identity(pair.sender_home)
    channel = connect("127.0.0.1", pair.receiver.port, identity, lambda _key: None)
    channel.send(msgs.Offer(0, 1000, 0, 0o644, False, "cut.bin"))
    assert isinstance(channel.recv(), msgs.Accept)
    channel.data_buffer()[:10] = bytes(10)
    channel.send_data(10)
    channel.close()

    assert pair.receiver.process is not None
    assert pair.receiver.process.wait(30) == 3
    log = pair.receiver.log()
    assert "event=session.failed" in log
    assert log.rstrip().splitlines()[-1].startswith("filexfer: error: ")
    assert nothing_arrived(pair.receiver)


def test_recv_once_stopped_by_a_signal_before_any_session_exits_zero(
    make_pair: Callable[..., Pair],
) -> None:
    pair = make_pair("--once")

    assert pair.receiver.stop(signal.SIGTERM) == 0
    assert "event=recv.stopped" in pair.receiver.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_recv_signal_stops_cleanly(
    pair: Pair, source: Path, sig: signal.Signals
) -> None:
    assert pair.put(source).returncode == 0

    code = pair.receiver.stop(sig)

    log = pair.receiver.log()
    assert code == 0
    assert f"event=recv.stopping signal={sig.name}" in log
    assert log.rstrip().splitlines()[-1].endswith("event=recv.stopped")
    assert "Traceback" not in log


def test_recv_logs_one_line_per_event_without_secrets(pair: Pair, source: Path) -> None:
    """The daemon logs key=value lines, never a private key or a bar (C15)."""
    assert pair.put(source).returncode == 0
    pair.receiver.stop()

    log = pair.receiver.log()
    private = (pair.receiver.home / "identity").read_text().strip()
    assert private.removeprefix("fx1-private-") not in log
    assert "\r" not in log and "\x1b" not in log
    complete = [line for line in log.splitlines() if "event=transfer.complete" in line]
    assert len(complete) == 1
    for field in ("session=", "key=", "path=report.bin", "bytes=65536", "seconds="):
        assert field in complete[0]


def test_daemon_log_lines_are_stamped_in_the_order_they_are_written(
    pair: Pair, source: Path
) -> None:
    """Sessions log from threads of their own: a line logged first may be
    written second.  Its stamp is that of the writing, so a log never goes
    back in time; the form is UTC to the millisecond."""
    assert pair.put(source).returncode == 0
    pair.receiver.stop()
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING) event=")
    lines = pair.receiver.log().splitlines()
    assert lines and all(stamp.match(line) for line in lines), lines

    from filexfer.cli import _EventFormatter

    formatter = _EventFormatter()
    logged_first = logging.LogRecord("x", logging.INFO, "", 0, "event=a", None, None)
    logged_later = logging.LogRecord("x", logging.INFO, "", 0, "event=b", None, None)
    logged_first.created -= 5.0  # its thread was held up before writing it
    written = [formatter.format(logged_later), formatter.format(logged_first)]
    assert written[0][:24] <= written[1][:24], written


# A Ctrl-C or SIGTERM that lands while the command line is still being
# loaded: the process signals itself as the import of filexfer.cli begins.
_INTERRUPTED_WHILE_LOADING = """\
import os, signal, sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "filexfer.cli":
            os.kill(os.getpid(), signal.SIGNAL)
        return None

sys.meta_path.insert(0, Interrupt())
from filexfer import main
main()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_command_loads_is_one_line_and_130(sig: str) -> None:
    script = _INTERRUPTED_WHILE_LOADING.replace("SIGNAL", sig)
    done = subprocess.run(
        [sys.executable, "-c", script, "put", "x", "h"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 130
    assert done.stderr == "filexfer: error: interrupted\n"
    assert done.stdout == ""


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (or has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    match = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    assert match, status
    return bool(int(match.group(1), 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.parametrize("delay", [0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.07, 0.1])
def test_sigterm_at_any_moment_of_a_put_is_one_line_and_130(
    sender_home: Path, source: Path, delay: float
) -> None:
    """From the moment filexfer's own code runs, SIGTERM is never the silent
    143 of its default action: 130 and one line, or the command's end."""
    port = closed_port()
    process = subprocess.Popen(
        filexfer_command("put", "--accept-new", source, f"127.0.0.1:{port}"),
        env=base_env(sender_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: _catches_sigterm(process.pid), "a SIGTERM handler")
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode in (130, 3), stderr
    assert stdout == "" and len(stderr.splitlines()) == 1, stderr
    expected = "interrupted" if process.returncode == 130 else "cannot connect"
    assert stderr.startswith(f"filexfer: error: {expected}"), stderr


@pytest.mark.parametrize(
    ("args", "closed", "status"),
    [
        (["--version"], ">&-", 8),  # stdout not writable: output is lost
        (["--version"], "2>&-", 0),
        (["put"], ">&-", 2),
        (["--help"], ">/dev/full", 8),
        (["put"], "2>&-", 2),
    ],
)
def test_a_closed_standard_stream_does_not_change_the_status(
    tmp_path: Path, args: list[str], closed: str, status: int
) -> None:
    """Started with stdout or stderr closed, Python has no stream object
    for it; the end of the command must not trip over that."""
    done = cli(args, tmp_path, redirect=closed, timeout=60)

    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["put", "x.txt"], "interrupted; copy not completed"),
        (["get", "x.txt"], "interrupted; copy not completed"),
        (["ls"], "interrupted"),
    ],
)
def test_ctrl_c_says_copy_not_completed_only_for_copies(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    message: str,
) -> None:
    """A Ctrl-C that lands before the command's own handling (here, while
    its options are turned into a connection) is reported by the CLI."""
    from filexfer import cli as cli_module
    from filexfer.options import Remote

    def interrupt(*_args: object) -> Remote:
        raise KeyboardInterrupt

    monkeypatch.setattr(Remote, "from_options", interrupt)
    logger = logging.getLogger("filexfer")  # put sets its handlers: restored
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "level", logger.level)
    verb, *rest = command
    address = ["127.0.0.1:9"]
    args = [verb, *rest, *address] if verb == "put" else [verb, *address, *rest]

    assert cli_module._run(args) == 130
    assert capsys.readouterr().err.splitlines()[-1] == f"filexfer: error: {message}"


# A weakref callback of the import lock, compiled as Python names it.
IMPORT_LOCK_CALLBACK = compile(
    "def cb(then):\n    then(sys._getframe())\n",
    "<frozen importlib._bootstrap>",
    "exec",
)


def test_a_signal_where_python_ignores_errors_comes_again_after_it() -> None:
    """Python prints and drops what an import lock's weakref callback (or
    a __del__) raises, so a stop signal landing there would be lost and
    the command would go on.  There it is sent again, a moment later."""
    from filexfer.cli import _interrupt

    namespace = {"sys": sys}
    exec(IMPORT_LOCK_CALLBACK, namespace)
    again: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _: again.append(signum))
    try:
        namespace["cb"](lambda frame: _interrupt(signal.SIGUSR1, frame))
        wait_until(lambda: again, "the signal sent again")
        with pytest.raises(KeyboardInterrupt):
            _interrupt(signal.SIGUSR1, sys._getframe())
    finally:
        signal.signal(signal.SIGUSR1, previous)

    assert again == [signal.SIGUSR1]


def test_a_signal_while_put_reads_its_folders_reports_each_argument(
    sender_home: Path, tmp_path: Path
) -> None:
    """Stopped while `put -r` is still walking a large tree (before any
    file is known), every argument gets a failed object, with one line
    and 130: a script is never left with no objects at all."""
    tree = tmp_path / "wide"
    (tree / "d000").mkdir(parents=True)
    # Skipped with a warning as the walk starts: the sign that it has.
    (tree / "d000" / "a-link").symlink_to("elsewhere")
    for folder in range(40):
        (tree / f"d{folder:03d}").mkdir(exist_ok=True)
        for number in range(200):
            (tree / f"d{folder:03d}" / f"f{number}").write_bytes(b"x")
    single = tmp_path / "single.txt"
    single.write_bytes(b"one\n")
    command = ["put", "--json", "-r", single, tree, f"127.0.0.1:{closed_port()}"]
    warnings: list[str] = []

    def walking(process: subprocess.Popen[str]) -> bool:
        assert process.stderr is not None
        warnings.append(process.stderr.readline())
        return True

    done = terminated_once(command, sender_home, walking, "the walk to start")

    assert "a-link: not a regular file" in warnings[0]
    assert done.returncode == 130, done.stderr
    assert done.stderr == "filexfer: error: interrupted; copy not completed\n"
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert {record["status"] for record in records} == {"failed"}
    assert [(r["name"], r["type"]) for r in records] == [
        ("single.txt", "file"),
        ("wide", "directory"),
    ]
