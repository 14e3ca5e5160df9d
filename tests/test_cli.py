"""End to end: the `filexfer` command's trust prompts, exit codes and output.

Real processes throughout: `filexfer recv` on a loopback port and the CLI
run as `python -m filexfer`. Exit code, stdout and stderr are checked apart.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3

from filexfer.keys import KNOWN_FILE, encode_public, load_identity
from tests.helpers import (
    Pair,
    Receiver,
    cli,
    cli_on_terminal,
    closed_port,
    identity_fingerprint,
    new_identity,
    quick_pair_maker,
    random_file,
    sha256,
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
def make_pair(
    tmp_path: Path,
    sender_home: Path,
    receiver_home: Path,
    start_receiver: Callable[..., Receiver],
) -> Callable[..., Pair]:
    """conftest's make_pair (and so pair), with keys set up in-process."""
    return quick_pair_maker(tmp_path, sender_home, receiver_home, start_receiver)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return random_file(tmp_path / "src" / "report.bin", 64 * 1024, seed=40)


def nothing_arrived(receiver: Receiver) -> bool:
    return list(receiver.root.iterdir()) == []


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
    (pair.receiver.root / "report.bin").unlink()
    second = cli(["put", source, pair.receiver.address], pair.sender_home)

    for done in (first, second):
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        assert done.stderr.startswith("filexfer: sent 1 file(s)")
    pins = (pair.sender_home / KNOWN_FILE).read_text().splitlines()
    receiver_key = load_identity(pair.receiver.home).public_line
    assert pins == [f"{pair.receiver.address} {receiver_key}"]
    assert sha256(pair.receiver.root / "report.bin") == sha256(source)


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

    assert_one_error(done, 4, "not authorized")
    pair.receiver.wait_for_log(r"event=session\.unauthorized")
    assert "event=session.start" not in pair.receiver.log()
    assert nothing_arrived(pair.receiver)
    assert pair.receiver.alive()


# -- other exit codes ----------------------------------------------------------


def test_put_nothing_listening_exits_3(sender_home: Path, source: Path) -> None:
    port = closed_port()

    done = cli(["put", "--accept-new", source, f"127.0.0.1:{port}"], sender_home)

    assert_one_error(done, 3, f"cannot connect to 127.0.0.1:{port}")


USAGE_ERRORS = {
    "one argument": ["put", "HOST"],
    "bad port": ["put", "SOURCE", "127.0.0.1:notaport"],
    "port out of range": ["put", "SOURCE", "127.0.0.1:65536"],
    "no host": ["put", "SOURCE", ":7757"],
    "unknown option": ["put", "--no-such-option", "SOURCE", "127.0.0.1:1"],
    "bad timeout": ["put", "--connect-timeout", "0", "SOURCE", "127.0.0.1:1"],
    "unknown command": ["frobnicate"],
    "recv without --dir": ["recv"],
    "recv bad listen address": ["recv", "--dir", "OUT", "--listen", "127.0.0.1:x"],
    "recv record limit too small": ["recv", "--dir", "OUT", "--max-record", "10"],
    "allow without key": ["allow"],
}


@pytest.mark.parametrize("args", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_exit_2(
    args: list[str], sender_home: Path, source: Path, tmp_path: Path
) -> None:
    filled = [
        {"SOURCE": str(source), "OUT": str(tmp_path / "out")}.get(a, a) for a in args
    ]

    done = cli(filled, sender_home, timeout=30)

    assert_one_error(done, 2)
    assert not (tmp_path / "out").exists()


def test_bare_command_shows_usage_and_exits_2(sender_home: Path) -> None:
    done = cli([], sender_home)

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("Usage: filexfer")
    assert "Exit codes:" in done.stderr


def test_recv_on_a_busy_port_exits_3(receiver_home: Path, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = cli(
            ["recv", "--dir", tmp_path / "out", "--listen", f"127.0.0.1:{port}"],
            receiver_home,
            timeout=30,
        )

    assert done.returncode == 3
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        f"filexfer: error: cannot listen on 127.0.0.1:{port}"
    )


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
            "status",
            "bytes",
            "digest",
            "digest_algorithm",
            "seconds",
        }
        assert record["name"] == path.name
        assert record["status"] == "ok"
        assert record["bytes"] == path.stat().st_size
        assert record["digest"] == blake3(path.read_bytes()).hexdigest()
        assert record["digest_algorithm"] == "blake3"
        assert isinstance(record["seconds"], float) and record["seconds"] >= 0


def test_put_json_reports_failures_with_their_code(pair: Pair, tmp_path: Path) -> None:
    (pair.receiver.root / "taken.txt").write_bytes(b"old")
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
    assert sha256(pair.receiver.root / "report.bin") == sha256(source)


def test_put_quiet_still_reports_errors(pair: Pair, source: Path) -> None:
    (pair.receiver.root / "report.bin").write_bytes(b"old")

    done = pair.put("--quiet", source)

    assert_one_error(done, 6, "already exists")


def terminal_put(pair: Pair, *args: str | Path) -> tuple[int, str, str]:
    run = cli_on_terminal(
        [
            "put",
            "--fingerprint",
            pair.receiver_fingerprint,
            *args,
            pair.receiver.address,
        ],
        pair.sender_home,
    )
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
    (pair.receiver.root / "report.bin").write_bytes(b"old")

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
    assert sha256(pair.receiver.root / "report.bin") == sha256(source)


def test_recv_once_is_not_used_up_by_a_stranger(
    make_pair: Callable[..., Pair], source: Path, tmp_path: Path
) -> None:
    pair = make_pair("--once")
    stranger_home = tmp_path / "stranger"
    stranger_home.mkdir()

    refused = cli(
        [
            "put",
            "--fingerprint",
            pair.receiver_fingerprint,
            source,
            pair.receiver.address,
        ],
        stranger_home,
    )
    pair.receiver.wait_for_log(r"event=session\.unauthorized")

    assert refused.returncode == 4
    assert pair.receiver.alive()
    assert pair.put(source).returncode == 0
    assert pair.receiver.process is not None
    assert pair.receiver.process.wait(30) == 0


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
