"""An authorized but hostile sender, and names and texts that drive terminals.

:class:`tests.attackers.HostileClient` completes the real handshake with an
authorized key and then sends whatever each test chooses. Whatever it
sends, nothing is written outside the receiver's root, nothing is written
through a symlink, nothing unverified appears under a final name, the
receiver answers with the documented refusal or error, logs it (escaped),
and keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from filexfer import messages as msgs
from filexfer.errors import Code
from tests.attackers import (
    Endpoint,
    HostileClient,
    HostileServer,
    LogWatch,
    Script,
    open_pair,
    put_to,
)
from tests.helpers import (
    Pair,
    cli,
    cli_on_terminal,
    leftovers,
    random_file,
    sha256,
    wait_until,
)

# Bytes that must never reach a log or a terminal raw when a peer chose them.
RAW_CONTROLS = [b"\x1b", b"\r", b"\x07", b"\x00", b"\x7f", b"\xc2\x9b", b"\xe2\x80\xae"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """One receiver for the module: it must keep serving through all of it."""
    pair = open_pair(tmp_path_factory.mktemp("hostile"))
    yield pair
    pair.receiver.stop()


def client(pair: Pair) -> HostileClient:
    return HostileClient(pair.receiver.port, pair.sender_home)


def send_one(
    pair: Pair, name: str, data: bytes
) -> tuple[list[msgs.Message | None], LogWatch]:
    """One file sent as a hostile client would; its answers, and the log."""
    watch = LogWatch(pair.receiver)
    end = client(pair)
    answer = end.send_file(name, data)
    end.finish()
    return answer, watch


def tree(root: Path) -> set[str]:
    """Every path under root, directories and links included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_no_raw_controls(data: bytes) -> None:
    for raw in RAW_CONTROLS:
        assert raw not in data, (raw, data[-2000:])


def assert_ended_with(end: HostileClient, code: Code, text: str) -> None:
    """The receiver sent Error(code) mentioning text, then closed."""
    answer = end.recv()
    while isinstance(answer, msgs.Accept | msgs.Done):
        answer = end.recv()
    assert isinstance(answer, msgs.Error), answer
    assert answer.code == code
    assert text in answer.reason
    assert end.recv() is None


# -- names (C01, C03) ---------------------------------------------------------


def traversal_names(tmp: Path) -> dict[str, str]:
    return {
        "parent": "../escape.txt",
        "grandparent": "../../escape.txt",
        "absolute": str(tmp / "outside" / "escape-abs.txt"),
        "inner-dotdot": "sub/../../escape.txt",
        "dot-dotdot": "./../escape.txt",
        "dotdot": "..",
        "dot": ".",
        "empty": "",
        "double-slash": "a//b.txt",
        "trailing-slash": "sub/",
        "backslash": "..\\escape.txt",
        "nul": "nul\x00.txt",
        "erase-line": "\x1b[1A\r\x1b[2Kcover.txt",
        "window-title": "title\x1b]0;owned\x07.txt",
        "carriage-return": "cr\rlooks-fine.txt",
        "c1-csi": "c1\x9bKcsi.txt",
        "del": "del\x7f.txt",
        "newline": "two\nlines.txt",
        "tab": "tab\t.txt",
        "part-name": ".filexfer-0123456789abcdef.part",
        "nested-part-name": "d/.filexfer-0123456789abcdef.part",
        "long-component": "x" * 256,
        "too-deep": "/".join(["d"] * 33),
    }


NAME_IDS = list(traversal_names(Path("/")))


def escape_targets(tmp: Path) -> list[Path]:
    return [
        tmp / "escape.txt",
        tmp.parent / "escape.txt",
        tmp / "outside" / "escape-abs.txt",
    ]


@pytest.mark.parametrize("which", NAME_IDS)
def test_reject_bad_name(shared: Pair, which: str) -> None:
    """Refused before a byte is written; one WARNING; the session goes on."""
    root = shared.area
    name = traversal_names(shared.tmp)[which]
    (shared.tmp / "outside").mkdir(exist_ok=True)
    before = tree(root)
    watch = LogWatch(shared.receiver)
    end = client(shared)

    answer = end.send_file(name, b"PAYLOAD")
    good = end.send_file(f"good-{which}.txt", b"fine")
    closing = end.finish()

    assert len(answer) == 1 and isinstance(answer[0], msgs.Reject), answer
    assert answer[0].code == Code.BAD_PATH
    assert answer[0].reason.startswith("bad path: ")
    assert [type(m) for m in good] == [msgs.Accept, msgs.Done]
    assert closing == msgs.Close()
    assert tree(root) == before | {f"good-{which}.txt"}
    for target in escape_targets(shared.tmp):
        assert not target.exists()
    refused = watch.lines("WARNING", "transfer.refused")
    assert len(refused) == 1 and "reason=bad_path" in refused[0]
    assert "key=SHA256:" in refused[0]
    assert_no_raw_controls(watch.raw())


def test_reject_every_bad_name_in_one_session(shared: Pair) -> None:
    root = shared.area
    names = traversal_names(shared.tmp)
    before = tree(root)
    watch = LogWatch(shared.receiver)
    end = client(shared)

    for name in names.values():
        end.offer(name, 7)
    answers = [end.recv() for _ in names]
    closing = end.finish()

    assert all(isinstance(a, msgs.Reject) for a in answers), answers
    assert {a.code for a in answers if isinstance(a, msgs.Reject)} == {Code.BAD_PATH}
    assert closing == msgs.Close()
    assert tree(root) == before
    assert len(watch.lines("WARNING", "transfer.refused")) == len(names)
    assert_no_raw_controls(watch.raw())
    assert shared.receiver.peak_rss_kib() < 100 * 1024


def test_name_with_terminal_escapes_is_logged_escaped(shared: Pair) -> None:
    watch = LogWatch(shared.receiver)
    end = client(shared)
    end.send_file("title\x1b]0;owned\x07.txt", b"x")
    end.finish()

    line = watch.lines("WARNING", "transfer.refused")[0]
    assert "path=title\\x1b]0;owned\\x07.txt " in line


def test_a_name_cannot_pass_for_more_log_fields(shared: Pair) -> None:
    """A name with spaces, '=' and quotes is one quoted value in the log,
    so the line still has one of each field."""
    name = 'evil bytes=999999 key=SHA256:FORGED "digest=00'
    answer, watch = send_one(shared, name, b"data")

    assert [type(m) for m in answer] == [msgs.Accept, msgs.Done]
    line = watch.lines("INFO", "transfer.complete")[0]
    assert ' path="evil bytes=999999 key=SHA256:FORGED \\x22digest=00" ' in line
    unquoted = re.sub(r'"[^"]*"', "", line)
    for key in ("path=", "bytes=", "key=", "digest="):
        assert unquoted.count(" " + key) == 1, line


def test_bidi_override_name_is_stored_exactly_and_logged_escaped(
    shared: Pair,
) -> None:
    """U+202E is not a control character: it is stored as sent, and shown
    escaped wherever a person reads it."""
    name = "invoice\u202etxt.exe"
    answer, watch = send_one(shared, name, b"MZ")

    assert [type(m) for m in answer] == [msgs.Accept, msgs.Done]
    assert (shared.area / name).read_bytes() == b"MZ"
    assert "path=invoice\\u202etxt.exe " in watch.text()
    assert_no_raw_controls(watch.raw())


def test_reject_name_that_is_not_utf8(shared: Pair) -> None:
    before = tree(shared.area)
    watch = LogWatch(shared.receiver)
    end = client(shared)
    name = b"bad\xff\xfe.txt"
    body = struct.pack(">QQqIB", 0, 3, 0, 0o644, 0) + struct.pack(">H", len(name))
    end.send_plain(bytes([msgs.Kind.OFFER]) + body + name)

    assert_ended_with(end, Code.PROTOCOL, "text field is not UTF-8")
    watch.wait_for("WARNING event=session.failed .*not UTF-8")
    assert tree(shared.area) == before


# -- symlinks already under the root (C02) ------------------------------------


@pytest.fixture
def links(shared: Pair, tmp_path: Path) -> Path:
    """out/l-dir -> outside/, out/l-leaf.txt -> outside/target.txt,
    out/l-dangling.txt -> outside/new.txt (absolute links)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.txt").write_text("KEEP\n")
    root = shared.area
    for name, target in [
        ("l-dir", outside),
        ("l-leaf.txt", outside / "target.txt"),
        ("l-dangling.txt", outside / "new.txt"),
    ]:
        link = root / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    return outside


LINK_NAMES = ["l-dir/owned.txt", "l-dir/sub/owned.txt", "l-leaf.txt", "l-dangling.txt"]


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_reject_writing_through_existing_symlinks(
    shared: Pair, links: Path, overwrite: bool
) -> None:
    root = shared.area
    before = tree(root)
    watch = LogWatch(shared.receiver)
    end = client(shared)

    answers = [end.send_file(n, b"PAYLOAD", overwrite=overwrite) for n in LINK_NAMES]
    closing = end.finish()

    for answer in answers:
        assert len(answer) == 1 and isinstance(answer[0], msgs.Reject), answer
        assert answer[0].code == Code.NOT_REGULAR
    assert closing == msgs.Close()
    assert sorted(p.name for p in links.iterdir()) == ["target.txt"]
    assert (links / "target.txt").read_text() == "KEEP\n"
    assert tree(root) == before
    assert all((root / n).is_symlink() for n in ["l-dir", "l-leaf.txt"])
    refused = watch.lines("INFO", "transfer.refused")
    assert len(refused) == len(LINK_NAMES)
    assert all("reason=not_regular" in line for line in refused)


def test_put_of_a_name_that_is_a_symlink_on_the_receiver_exits_6(
    shared: Pair, links: Path, tmp_path: Path
) -> None:
    source = tmp_path / "src" / "l-leaf.txt"
    source.parent.mkdir()
    source.write_text("PAYLOAD\n")

    done = shared.put(source)

    assert done.returncode == 6, done.stderr
    assert done.stderr == (
        "filexfer: error: receiver refused 'l-leaf.txt': exists and is not a "
        "regular file\n"
    )
    assert (links / "target.txt").read_text() == "KEEP\n"


def test_parent_swapped_for_a_symlink_before_data_is_not_followed(
    shared: Pair, links: Path
) -> None:
    """C02 race: the parent directory becomes a link after Accept."""
    root = shared.area
    (root / "race-a").mkdir()
    end = client(shared)
    file_id = end.offer("race-a/race.txt", 7)
    assert isinstance(end.recv(), msgs.Accept)

    (root / "race-a").rename(root / "race-a.moved")
    (root / "race-a").symlink_to(links)
    end.stream(file_id, b"PAYLOAD")
    answer = end.recv()
    end.finish()

    assert sorted(p.name for p in links.iterdir()) == ["target.txt"]
    if isinstance(answer, msgs.Done):
        # The store kept the directory it had opened: the file went there.
        assert (root / "race-a.moved" / "race.txt").read_bytes() == b"PAYLOAD"
    else:
        assert isinstance(answer, msgs.Reject), answer
        assert answer.code == Code.NOT_REGULAR
    assert leftovers(root) == []


def test_parent_swapped_for_a_symlink_during_data_is_not_followed(
    shared: Pair, links: Path
) -> None:
    root = shared.area
    (root / "race-b").mkdir()
    end = client(shared)
    file_id = end.offer("race-b/race.txt", 14)
    assert isinstance(end.recv(), msgs.Accept)
    end.send(msgs.Data(b"PAYLOAD"))
    wait_until(lambda: leftovers(root / "race-b"), "the part file")

    (root / "race-b").rename(root / "race-b.moved")
    (root / "race-b").symlink_to(links)
    end.send(msgs.Data(b"PAYLOAD"))
    end.send(msgs.End(file_id, 14, blake3(b"PAYLOADPAYLOAD").digest()))
    answer = end.recv()
    end.finish()

    assert isinstance(answer, msgs.Done), answer
    assert sorted(p.name for p in links.iterdir()) == ["target.txt"]
    assert (root / "race-b.moved" / "race.txt").read_bytes() == b"PAYLOADPAYLOAD"
    assert leftovers(root) == []


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_final_name_swapped_for_a_symlink_before_commit(
    shared: Pair, links: Path, overwrite: bool
) -> None:
    """Without overwrite the commit refuses (EXISTS); with it the link entry
    itself is replaced by the file. The link's target is never touched."""
    root = shared.area
    name = f"race-final-{overwrite}.txt"
    end = client(shared)
    file_id = end.offer(name, 7, overwrite=overwrite)
    assert isinstance(end.recv(), msgs.Accept)
    end.send(msgs.Data(b"PAYLOAD"))
    wait_until(lambda: leftovers(root), "the part file")

    (root / name).symlink_to(links / "target.txt")
    end.send(msgs.End(file_id, 7, blake3(b"PAYLOAD").digest()))
    answer = end.recv()
    end.finish()

    assert (links / "target.txt").read_text() == "KEEP\n"
    if overwrite:
        assert isinstance(answer, msgs.Done), answer
        assert not (root / name).is_symlink()
        assert (root / name).read_bytes() == b"PAYLOAD"
    else:
        assert isinstance(answer, msgs.Reject), answer
        assert answer.code == Code.EXISTS
        assert (root / name).is_symlink()
    assert leftovers(root) == []


def test_never_creates_links_devices_or_unsafe_modes(shared: Pair) -> None:
    """Whatever mode is offered, a regular file without setuid, setgid,
    sticky or group/other write bits is created."""
    end = client(shared)
    for index, mode in enumerate([0o7777, 0o120777, 0o020666, 0o010644, 0xFFFFFFFF]):
        end.send(msgs.Offer(index, 2, 0, mode, False, f"mode-{index}"))
        assert isinstance(end.recv(), msgs.Accept)
        end.stream(index, b"ok")
        assert isinstance(end.recv(), msgs.Done)
    end.finish()

    for index in range(5):
        info = os.lstat(shared.area / f"mode-{index}")
        assert stat.S_ISREG(info.st_mode)
        assert stat.S_IMODE(info.st_mode) & ~0o755 == 0


# -- sizes and data that lie --------------------------------------------------


def test_reject_more_bytes_than_offered(shared: Pair) -> None:
    watch = LogWatch(shared.receiver)
    end = client(shared)
    end.offer("more.bin", 10)
    assert isinstance(end.recv(), msgs.Accept)
    end.send(msgs.Data(b"0123456789"), msgs.Data(b"!"))

    assert_ended_with(end, Code.PROTOCOL, "more bytes than offered")
    watch.wait_for("WARNING event=session.failed .*more bytes than offered")
    assert not (shared.area / "more.bin").exists()
    assert leftovers(shared.area) == []


@pytest.mark.parametrize("claimed", [100, 50], ids=["offered-size", "true-size"])
def test_reject_fewer_bytes_than_offered(shared: Pair, claimed: int) -> None:
    watch = LogWatch(shared.receiver)
    end = client(shared)
    name = f"fewer-{claimed}.bin"
    end.offer(name, 100)
    assert isinstance(end.recv(), msgs.Accept)
    end.send(msgs.Data(b"x" * 50), msgs.End(0, claimed, blake3(b"x" * 50).digest()))

    assert_ended_with(end, Code.PROTOCOL, "size mismatch")
    watch.wait_for("WARNING event=session.failed .*size mismatch")
    assert not (shared.area / name).exists()
    assert leftovers(shared.area) == []


def test_reject_data_after_end(shared: Pair) -> None:
    """The file was complete and verified, so it stays; the extra chunk is
    a protocol error and changes nothing."""
    watch = LogWatch(shared.receiver)
    end = client(shared)
    answer = end.send_file("after-end.bin", b"complete")
    assert [type(m) for m in answer] == [msgs.Accept, msgs.Done]
    end.send(msgs.Data(b"EXTRA"))

    assert_ended_with(end, Code.PROTOCOL, "data for a file that was not accepted")
    watch.wait_for("WARNING event=session.failed")
    assert (shared.area / "after-end.bin").read_bytes() == b"complete"
    assert leftovers(shared.area) == []


def test_reject_digest_mismatch_and_go_on(shared: Pair) -> None:
    watch = LogWatch(shared.receiver)
    end = client(shared)
    file_id = end.offer("mismatch.bin", 8)
    assert isinstance(end.recv(), msgs.Accept)
    end.stream(file_id, b"ABCDEFGH", digest=blake3(b"abcdefgh").digest())
    answer = end.recv()
    good = end.send_file("after-mismatch.bin", b"fine")
    closing = end.finish()

    assert answer == msgs.Reject(file_id, Code.INTEGRITY, "digest mismatch")
    assert [type(m) for m in good] == [msgs.Accept, msgs.Done]
    assert closing == msgs.Close()
    assert not (shared.area / "mismatch.bin").exists()
    assert leftovers(shared.area) == []
    lines = watch.lines("WARNING")
    assert len(lines) == 1 and "event=transfer.digest_mismatch" in lines[0]


@pytest.mark.parametrize(
    ("messages", "text"),
    [
        ([msgs.Data(b"x")], "data for a file that was not accepted"),
        ([msgs.End(0, 0, bytes(32))], "data for a file that was not accepted"),
        ([msgs.Offer(5, 1, 0, 0o644, False, "gap")], "offer ids out of order"),
        ([msgs.Accept(0, 0)], "unexpected Accept"),
        ([msgs.Done(0, bytes(32))], "unexpected Done"),
        ([msgs.Hello(1, 4096)], "unexpected Hello"),
    ],
    ids=["data-unoffered", "end-unoffered", "id-gap", "accept", "done", "hello"],
)
def test_reject_messages_out_of_place(
    shared: Pair, messages: list[msgs.Message], text: str
) -> None:
    end = client(shared)
    end.send(*messages)
    assert_ended_with(end, Code.PROTOCOL, text)


def test_reject_data_for_a_refused_file(shared: Pair) -> None:
    end = client(shared)
    end.offer("../refused.txt", 3)
    assert isinstance(end.recv(), msgs.Reject)
    end.send(msgs.Data(b"abc"))
    assert_ended_with(end, Code.PROTOCOL, "data for a file that was not accepted")
    assert not (shared.tmp / "refused.txt").exists()


def test_reject_end_for_a_file_that_is_not_current(shared: Pair) -> None:
    end = client(shared)
    end.offer("first.bin", 1)
    end.offer("second.bin", 1)
    assert isinstance(end.recv(), msgs.Accept)
    end.send(msgs.End(1, 1, bytes(32)))
    assert_ended_with(end, Code.PROTOCOL, "not current")
    assert leftovers(shared.area) == []


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"\x7f",
        b"\x01\x00",
        bytes([msgs.Kind.OFFER]) + bytes(28) + b"\x08\x00\x01x",
    ],
    ids=["empty", "unknown-type", "truncated-offer", "bad-flags"],
)
def test_reject_malformed_message(shared: Pair, plaintext: bytes) -> None:
    end = client(shared)
    end.send_plain(plaintext)
    assert_ended_with(end, Code.PROTOCOL, "malformed message")


def test_reject_duplicate_name_in_one_session(shared: Pair) -> None:
    """Sent again after its commit, a name meets the stored file (EXISTS);
    sent again while in flight, it is a duplicate (test_attack_resume)."""
    end = client(shared)
    first = end.send_file("dup.bin", b"one")
    second = end.send_file("dup.bin", b"two!")
    end.finish()

    assert [type(m) for m in first] == [msgs.Accept, msgs.Done]
    assert second == [msgs.Reject(1, Code.EXISTS, "already exists")]
    assert (shared.area / "dup.bin").read_bytes() == b"one"


def test_offer_flood_without_data_is_cut_off(shared: Pair) -> None:
    """Offers beyond any honest pipeline depth end the session: the
    receiver's queue of pending files (and its memory) stays bounded."""
    watch = LogWatch(shared.receiver)
    before = tree(shared.area)
    end = client(shared)
    records = [
        end.sealer.seal(msgs.encode(msgs.Offer(i, 1, 0, 0o644, False, f"fl-{i}")))
        for i in range(5000)
    ]
    end.sock.settimeout(20)
    try:
        end.send_raw(b"".join(records))
    except OSError:
        pass  # the receiver may hang up before reading all of them
    answers: list[msgs.Message] = []
    answer = None
    with contextlib.suppress(TimeoutError):  # quiet, the session still open
        while (answer := end.recv(timeout=5)) is not None:
            if isinstance(answer, msgs.Error):
                break
            answers.append(answer)

    assert isinstance(answer, msgs.Error), f"{len(answers)} offers answered"
    assert answer.code == Code.PROTOCOL
    assert len(answers) <= 1024
    watch.wait_for("WARNING event=session.failed")
    assert tree(shared.area) == before
    assert shared.receiver.peak_rss_kib() < 100 * 1024


# -- records ------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", [b"\xff\xff\xff\xff", struct.pack(">I", (1 << 20) + 64 + 16 + 1)]
)
def test_oversized_record_is_refused_from_its_header(
    shared: Pair, header: bytes
) -> None:
    """No body follows: the receiver answers at once, it does not wait for
    (or allocate) the announced length."""
    rss = shared.receiver.peak_rss_kib()
    end = client(shared)
    end.send_raw(header)

    assert_ended_with(end, Code.INTEGRITY, "integrity check")
    assert shared.receiver.peak_rss_kib() < rss + 8 * 1024


def test_max_record_limit_is_enforced(tmp_path: Path) -> None:
    pair = open_pair(tmp_path, "--max-record", "1024")
    try:
        end = HostileClient(pair.receiver.port, pair.sender_home)
        assert end.receiver_hello == msgs.Hello(1, 1024)
        end.offer("fits.bin", 1023)
        assert isinstance(end.recv(), msgs.Accept)
        end.stream(0, b"f" * 1023)
        assert isinstance(end.recv(), msgs.Done)
        end.send_plain(bytes([msgs.Kind.DATA]) + b"g" * 1024)  # 1025 bytes
        assert_ended_with(end, Code.INTEGRITY, "integrity check")

        source = random_file(tmp_path / "src" / "small-records.bin", 5000)
        done = pair.put(source)
        assert done.returncode == 0, done.stderr
        assert sha256(pair.area / "small-records.bin") == sha256(source)
    finally:
        pair.receiver.stop()


# -- other limits -------------------------------------------------------------


def test_name_length_and_depth_limits_are_enforced(tmp_path: Path) -> None:
    pair = open_pair(tmp_path, "--max-name-bytes", "20", "--max-depth", "3")
    try:
        end = HostileClient(pair.receiver.port, pair.sender_home)
        cases = {
            "a" * 20: msgs.Accept,
            "b" * 21: msgs.Reject,
            "c/d/e": msgs.Accept,
            "f/g/h/i": msgs.Reject,
        }
        answers = [end.send_file(name, b"1")[0] for name in cases]
        end.finish()

        assert [type(a) for a in answers] == list(cases.values())
        reasons = [a.reason for a in answers if isinstance(a, msgs.Reject)]
        assert reasons == [
            "bad path: name is too long",
            "bad path: too many directory levels",
        ]
        assert tree(pair.area) == {"a" * 20, "c", "c/d", "c/d/e"}
    finally:
        pair.receiver.stop()


def test_session_limit_refuses_with_a_clear_message(tmp_path: Path) -> None:
    pair = open_pair(tmp_path, "--max-sessions", "1")
    try:
        holder = HostileClient(pair.receiver.port, pair.sender_home)
        assert holder.send_file("held.bin", b"1")[1] == msgs.Done(
            0, blake3(b"1").digest()
        )
        source = random_file(tmp_path / "src" / "busy.bin", 100)

        busy = pair.put(source)
        holder.finish()
        holder.close()
        again = pair.put(source)

        assert busy.returncode == 3, busy.stderr
        lines = busy.stderr.splitlines()
        assert lines[0] == "filexfer: error: receiver: all sessions in use"
        assert lines[1].startswith("filexfer: hint: the receiver is at its session")
        assert len(lines) == 2
        assert again.returncode == 0, again.stderr
    finally:
        pair.receiver.stop()


def test_free_space_margin_is_enforced(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    pair = open_pair(tmp_path, "--min-free", str(free + (1 << 40)))
    try:
        end = HostileClient(pair.receiver.port, pair.sender_home)
        answer = end.send_file("margin.bin", b"1")
        end.finish()
        assert len(answer) == 1 and isinstance(answer[0], msgs.Reject)
        assert answer[0].code == Code.NO_SPACE
        assert answer[0].reason.startswith("not enough space (needs 0.0 MiB, ")
        assert tree(pair.area) == set()
    finally:
        pair.receiver.stop()


def test_every_limit_has_a_flag_and_a_readme_line() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    help_text = cli(["recv", "--help"], Path("/nonexistent")).stdout
    for flag in [
        "--max-sessions",
        "--max-handshakes",
        "--handshake-timeout",
        "--idle-timeout",
        "--max-record",
        "--max-name-bytes",
        "--max-depth",
        "--min-free",
    ]:
        assert f"`{flag}" in readme, flag
        assert flag in help_text, flag
    put_help = cli(["put", "--help"], Path("/nonexistent")).stdout
    for flag in ["--connect-timeout", "--idle-timeout"]:
        assert f"`{flag}`" in readme and flag in put_help
    assert "handshake message | 1024 B" in readme
    assert "control characters" in readme


def test_security_doc_names_only_tests_that_exist() -> None:
    """docs/security.md says which tests show each property: keep it true."""
    tests = Path(__file__).parent
    doc = (tests.parent / "docs" / "security.md").read_text()
    defined = set()
    for path in tests.glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)\(", path.read_text(), re.M))
    named = re.findall(r"::(test_\w+)", doc)
    files = set(re.findall(r"\b(test_\w+\.py)::", doc))

    assert len(named) > 50
    assert sorted(set(named) - defined) == []
    assert sorted(f for f in files if not (tests / f).exists()) == []


# -- texts a hostile peer wants shown raw (C03) -------------------------------


def test_hostile_texts_in_error_and_abort_are_logged_escaped(shared: Pair) -> None:
    watch = LogWatch(shared.receiver)
    end = client(shared)
    end.offer("aborted.bin", 5)
    assert isinstance(end.recv(), msgs.Accept)
    end.send(msgs.Data(b"ab"), msgs.Abort(0, Code.SOURCE_CHANGED, "\x1b[2J\rgone"))
    end.send(msgs.Error(Code.INTERNAL, "\x1b]0;owned\x07\u202eboom"))

    watch.wait_for("event=session.failed")
    assert_no_raw_controls(watch.raw())
    assert "reason=\\x1b[2J\\rgone" in watch.text()
    assert "\\x1b]0;owned\\x07\\u202eboom" in watch.text()
    assert leftovers(shared.area) == []


CONTROL_REASON = "\x1b]0;owned\x07\x1b[2J\r\u202eevil\x9b31m"


def _refuse_with_controls(end: Endpoint) -> None:
    offer = end.recv()
    assert isinstance(offer, msgs.Offer)
    end.send(msgs.Reject(offer.file_id, Code.BAD_PATH, CONTROL_REASON))
    end.recv()  # Close
    end.send(msgs.Close())


def _fail_with_controls(end: Endpoint) -> None:
    end.recv()
    end.send(msgs.Error(Code.PROTOCOL, CONTROL_REASON))


@pytest.mark.parametrize(
    ("script", "code"),
    [(_refuse_with_controls, 6), (_fail_with_controls, 5)],
    ids=["reject-reason", "error-reason"],
)
def test_receiver_texts_reach_the_terminal_escaped(
    tmp_path: Path, script: Script, code: int
) -> None:
    """A hostile receiver's reasons are shown, but never raw."""
    source = random_file(tmp_path / "plain.txt", 10)
    home = tmp_path / "sender-home"
    with HostileServer(tmp_path / "evil-home", script) as evil:
        done = cli(["put", "--accept-new", source, evil.address], home)

    assert done.returncode == code, done.stderr
    assert_no_raw_controls(done.stderr.encode())
    assert "\\x1b]0;owned\\x07\\x1b[2J\\r\\u202eevil\\x9b31m" in done.stderr


ESCAPING_NAMES = [
    "\x1b[1A\r\x1b[2Kcover.txt",
    "title\x1b]0;owned\x07.txt",
    "cr\rlooks-fine.txt",
    "c1\x9bKcsi.txt",
]


def test_sender_output_escapes_names(shared: Pair, tmp_path: Path) -> None:
    """C03 with the real CLI: names that hold controls cannot be sent and
    are reported escaped; a bidi override is sent and shown escaped, in
    the error lines, the --json output and the receiver's log."""
    src = tmp_path / "c03"
    src.mkdir()
    for name in [*ESCAPING_NAMES, "harmless-c03.txt", "invoice\u202ec03.exe"]:
        (src / name).write_text("x")
    watch = LogWatch(shared.receiver)
    args = sorted(str(p) for p in src.iterdir())

    done = put_to(shared, shared.receiver.address, "--json", *args)

    assert done.returncode == 7, done.stderr
    assert_no_raw_controls(done.stderr.encode())
    assert_no_raw_controls(done.stdout.encode())
    assert "\\x1b[1A\\r\\x1b[2Kcover.txt: cannot be sent" in done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["name"] for r in records if r["status"] == "ok"} == {
        "harmless-c03.txt",
        "invoice\u202ec03.exe",
    }
    assert (shared.area / "invoice\u202ec03.exe").exists()
    watch.wait_for("path=invoice\\\\u202ec03.exe ")
    assert_no_raw_controls(watch.raw())


def test_progress_bar_shows_names_escaped(shared: Pair, tmp_path: Path) -> None:
    source = random_file(tmp_path / "bar\u202etxt.exe", 3 << 20)
    run = cli_on_terminal(
        [
            "put",
            "--progress",
            "--fingerprint",
            shared.receiver_fingerprint,
            source,
            shared.receiver.address,
        ],
        shared.sender_home,
    )

    assert run.returncode == 0, run.terminal
    assert "\u202e" not in run.terminal
    assert "bar\\u202etxt.exe" in run.terminal
