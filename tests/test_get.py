"""End-to-end tests for the round trip: get, ls, areas, read-only keys,
skipping identical files, empty folders and metadata.

Every test runs a real `filexfer recv` on 127.0.0.1 and the real CLI.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from filexfer.keys import allow_sender, area_for, load_identity
from tests.helpers import (
    SAMPLE_DATA,
    Pair,
    Receiver,
    base_env,
    cli,
    cli_with_file_limit,
    closed_port,
    leftovers,
    random_file,
    sha256,
)

MiB = 1 << 20


def get(pair: Pair, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """`filexfer get --fingerprint FP 127.0.0.1:PORT ARGS...` as the pair's sender."""
    command = ["get", "--fingerprint", pair.receiver_fingerprint]
    return cli([*command, pair.receiver.address, *args], pair.sender_home)


def ls(pair: Pair, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["ls", "--fingerprint", pair.receiver_fingerprint]
    return cli([*command, pair.receiver.address, *args], pair.sender_home)


def tree(top: Path) -> dict[str, tuple[str, int, int | None, str | None]]:
    """Every entry below top: kind, mode, mtime (files) and digest (files)."""
    found = {}
    for path in sorted(top.rglob("*")):
        info = path.lstat()
        name = path.relative_to(top).as_posix()
        if stat.S_ISDIR(info.st_mode):
            found[name] = ("dir", stat.S_IMODE(info.st_mode), None, None)
        else:
            mode, mtime = stat.S_IMODE(info.st_mode), info.st_mtime_ns
            found[name] = ("file", mode, mtime, sha256(path))
    return found


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """sample_data/ plus what a backup meets: an empty folder, a private
    file, an executable, a nested empty folder."""
    top = tmp_path / "src" / "sample_data"
    shutil.copytree(SAMPLE_DATA, top)
    (top / "empty-folder").mkdir()
    (top / "private-empty").mkdir(mode=0o700)
    (top / "docs" / "deeper" / "still-empty").mkdir(parents=True)
    secret = top / "docs" / "secret.txt"
    secret.write_text("only me\n")
    secret.chmod(0o600)
    script = top / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    os.utime(script, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return top


# -- the round trip ---------------------------------------------------------


def test_put_then_get_round_trip_is_identical(
    pair: Pair, dataset: Path, tmp_path: Path
) -> None:
    """Names, bytes, modes, mtimes and empty folders survive put then get."""
    assert pair.put("-r", dataset).returncode == 0
    download = tmp_path / "download"

    done = get(pair, "-r", "-o", download, "sample_data")

    assert done.returncode == 0, done.stderr
    assert tree(download / "sample_data") == tree(dataset)
    assert leftovers(download) == []


def test_get_one_file_lands_under_its_last_name(pair: Pair, tmp_path: Path) -> None:
    source = random_file(tmp_path / "src" / "report.txt", 5000, seed=1)
    assert pair.put(source).returncode == 0
    (pair.area / "sub").mkdir()
    shutil.copy2(source, pair.area / "sub" / "inner.txt")

    first = get(pair, "-o", tmp_path / "dl", "report.txt")
    second = get(pair, "-o", tmp_path / "dl", "sub/inner.txt")

    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        "inner.txt",
        "report.txt",
    ]
    assert sha256(tmp_path / "dl" / "report.txt") == sha256(source)


def test_get_json_reports_each_file(pair: Pair, dataset: Path, tmp_path: Path) -> None:
    pair.put("-r", dataset)

    done = get(pair, "--json", "-r", "-o", tmp_path / "dl", "sample_data")

    records = [json.loads(line) for line in done.stdout.splitlines()]
    files = [r for r in records if r["type"] == "file"]
    assert done.returncode == 0
    assert {r["status"] for r in records} == {"ok"}
    assert len(files) == sum(1 for p in dataset.rglob("*") if p.is_file())
    readme = next(r for r in files if r["name"] == "sample_data/README.txt")
    assert readme["bytes"] == (dataset / "README.txt").stat().st_size


def test_get_missing_name_exits_6_and_writes_nothing(
    pair: Pair, tmp_path: Path
) -> None:
    done = get(pair, "-o", tmp_path / "dl", "nothere.txt")

    assert done.returncode == 6
    assert done.stderr == (
        "filexfer: error: receiver: 'nothere.txt': no such file or directory\n"
    )
    assert not (tmp_path / "dl").exists()  # made for the download, taken back


def test_get_json_of_a_missing_name_says_where_it_was_due(
    pair: Pair, tmp_path: Path
) -> None:
    done = get(pair, "--json", "-o", tmp_path / "dl", "nothere.txt")

    assert done.returncode == 6
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["status"] == "failed"
    assert record["path"] == str(tmp_path / "dl" / "nothere.txt")


def test_get_that_cannot_connect_leaves_no_folder_behind(
    sender_home: Path, tmp_path: Path
) -> None:
    """-o and the parents it needed are made for the download and taken
    back when nothing was stored; a folder that was there stays."""
    port = closed_port()
    there = tmp_path / "there"
    there.mkdir()
    address = f"127.0.0.1:{port}"

    for dest in (tmp_path / "new" / "dl", there):
        done = cli(["get", "--accept-new", address, "x.txt", "-o", dest], sender_home)
        assert done.returncode == 3, done.stderr
        assert f"cannot connect to {address}" in done.stderr

    assert sorted(os.listdir(tmp_path)) == ["sender-home", "there"]
    assert os.listdir(there) == []


def test_get_directory_without_r_exits_6(pair: Pair, dataset: Path) -> None:
    pair.put("-r", dataset)

    done = get(pair, "-o", pair.tmp / "dl", "sample_data")

    assert done.returncode == 6
    assert "is a directory (use -r)" in done.stderr


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "a\x1bb"])
def test_get_bad_remote_name_is_a_usage_error(pair: Pair, name: str) -> None:
    done = get(pair, "-o", pair.tmp / "dl", name)

    assert done.returncode == 2
    assert done.stderr.startswith("filexfer: error: cannot get ")
    assert len(done.stderr.splitlines()) == 1


def test_get_does_not_replace_a_different_local_file(
    pair: Pair, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "src" / "data.bin", 4000, seed=5)
    pair.put(source)
    local = random_file(tmp_path / "dl" / "data.bin", 4000, seed=6)
    before = sha256(local)

    refused = get(pair, "-o", tmp_path / "dl", "data.bin")
    replaced = get(pair, "--overwrite", "-o", tmp_path / "dl", "data.bin")

    assert refused.returncode == 6 and "already exists" in refused.stderr
    assert before != sha256(source)
    assert replaced.returncode == 0, replaced.stderr
    assert sha256(local) == sha256(source)


# -- listing -----------------------------------------------------------------


def test_ls_shows_names_sizes_and_digests(pair: Pair, dataset: Path) -> None:
    pair.put("-r", dataset)

    table = ls(pair, "-r")
    listing = ls(pair, "--json", "-r", "sample_data/docs")

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.endswith(" sample_data/") for line in lines)
    assert any(line.endswith(" sample_data/empty-folder/") for line in lines)
    readme = next(line for line in lines if line.endswith("sample_data/README.txt"))
    assert readme.startswith("-rw-r--r-- ")
    entries = [json.loads(line) for line in listing.stdout.splitlines()]
    by_name = {e["name"]: e for e in entries}
    notes = by_name["sample_data/docs/notes.md"]
    assert notes["bytes"] == (dataset / "docs" / "notes.md").stat().st_size
    assert notes["mode"] == "0644"
    if notes["digest"] is not None:  # where the file system keeps it
        from blake3 import blake3

        expected = blake3((dataset / "docs" / "notes.md").read_bytes()).hexdigest()
        assert notes["digest"] == expected
    assert by_name["sample_data/docs/secret.txt"]["mode"] == "0600"


def test_ls_of_an_empty_area_prints_nothing(pair: Pair) -> None:
    done = ls(pair)

    assert (done.returncode, done.stdout) == (0, "")


def test_ls_missing_path_exits_6(pair: Pair) -> None:
    done = ls(pair, "nothing/here")

    assert done.returncode == 6
    assert "no such file or directory" in done.stderr


def test_ls_never_shows_part_files_or_symlinks(pair: Pair, tmp_path: Path) -> None:
    (pair.area / "real.txt").write_text("x")
    (pair.area / ".filexfer-0123456789abcdef.part").write_text("partial")
    (pair.area / "link").symlink_to("/etc/passwd")

    done = ls(pair, "--json")

    names = [json.loads(line)["name"] for line in done.stdout.splitlines()]
    assert names == ["real.txt"]
    assert get(pair, "-o", tmp_path / "dl", "link").returncode == 6


# -- areas and read-only keys ---------------------------------------------------


@pytest.fixture
def other(tmp_path: Path, pair: Pair) -> Pair:
    """A second sender, authorized at the same receiver with its own area."""
    home = tmp_path / "other-home"
    identity = load_identity(home)
    allow_sender(identity.public_line, "other", pair.receiver.home)
    return Pair(home, pair.receiver, tmp_path, pair.receiver_fingerprint)


def test_one_sender_cannot_list_read_or_overwrite_anothers_files(
    pair: Pair, other: Pair, tmp_path: Path
) -> None:
    mine = random_file(tmp_path / "mine" / "ledger.txt", 3000, seed=7)
    theirs = random_file(tmp_path / "theirs" / "ledger.txt", 3000, seed=8)
    assert pair.put(mine).returncode == 0

    listed = ls(other)
    fetched = get(other, "-o", tmp_path / "stolen", "ledger.txt")
    written = other.put(theirs, "--overwrite")

    assert (listed.returncode, listed.stdout) == (0, "")
    assert fetched.returncode == 6
    assert not (tmp_path / "stolen").exists()
    assert written.returncode == 0  # into its own area
    assert other.area != pair.area
    assert sha256(pair.area / "ledger.txt") == sha256(mine)
    assert sha256(other.area / "ledger.txt") == sha256(theirs)


def test_area_names_cannot_be_used_to_escape(pair: Pair, other: Pair) -> None:
    """The area is chosen by the receiver, never by what a sender asks for."""
    done = ls(other, f"../{pair.area.name}")

    assert done.returncode == 2
    assert "bad path" in done.stderr


def test_read_only_key_can_list_and_get_but_not_put(
    pair: Pair, tmp_path: Path, dataset: Path
) -> None:
    pair.put("-r", dataset)
    reader_home = tmp_path / "reader-home"
    reader = load_identity(reader_home)
    allowed = cli(
        ["allow", "--read-only", "--area", pair.area.name, reader.public_line],
        pair.receiver.home,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "read-only" in allowed.stderr
    viewer = Pair(reader_home, pair.receiver, tmp_path, pair.receiver_fingerprint)
    upload = random_file(tmp_path / "evil" / "README.txt", 10, seed=9)

    listed = ls(viewer, "sample_data")
    fetched = get(viewer, "-r", "-o", tmp_path / "copy", "sample_data")
    refused = viewer.put(upload, "--overwrite")

    assert listed.returncode == 0 and "README.txt" in listed.stdout
    assert fetched.returncode == 0, fetched.stderr
    assert tree(tmp_path / "copy" / "sample_data") == tree(dataset)
    assert refused.returncode == 4
    assert refused.stderr == (
        "filexfer: error: receiver: this key may only list and download here\n"
    )
    assert not (pair.area / "README.txt").exists()


def test_shared_receiver_stores_in_its_root(
    start_receiver: Callable[..., Receiver],
    sender_home: Path,
    receiver_home: Path,
    tmp_path: Path,
) -> None:
    from tests.helpers import authorize_sender, identity_fingerprint

    authorize_sender(sender_home, receiver_home)
    receiver = start_receiver("--shared")
    shared = Pair(sender_home, receiver, tmp_path, identity_fingerprint(receiver_home))
    source = random_file(tmp_path / "src" / "common.bin", 1000, seed=10)

    assert shared.put(source).returncode == 0

    assert sha256(receiver.root / "common.bin") == sha256(source)
    sender = load_identity(sender_home, create=False)
    assert not (receiver.root / area_for(sender.public)).exists()


# -- backups: identical files are not sent again -------------------------------


def test_second_backup_run_sends_nothing_and_exits_0(pair: Pair, dataset: Path) -> None:
    first = pair.put("-r", "--json", dataset)
    second = pair.put("-r", "--json", dataset)

    assert first.returncode == 0 and second.returncode == 0, second.stderr
    records = [json.loads(line) for line in second.stdout.splitlines()]
    files = [r for r in records if r["type"] == "file"]
    assert files and all(r["unchanged"] for r in files)
    folders = [r for r in records if r["type"] == "directory"]
    assert folders and all(r["unchanged"] for r in folders)
    assert all(r["digest"] is None for r in folders)  # a folder has none
    assert all(r["digest"] for r in files)
    log = pair.receiver.log()
    assert log.count("event=transfer.unchanged") == len(files)
    plain = pair.put("-r", dataset)
    assert plain.returncode == 0
    assert plain.stderr.startswith("filexfer: sent 0 file(s), 0 bytes in ")
    assert f", {len(files)} unchanged" in plain.stderr


def test_backup_run_sends_only_the_changed_file(pair: Pair, dataset: Path) -> None:
    pair.put("-r", dataset)
    changed = dataset / "docs" / "notes.md"
    changed.write_text(changed.read_text().upper())  # same size, new bytes

    refused = pair.put("-r", dataset)
    replaced = pair.put("-r", "--overwrite", "--json", dataset)

    assert refused.returncode == 7  # the one changed file, not replaced
    assert "'sample_data/docs/notes.md'" in refused.stderr
    assert "already exists" in refused.stderr
    records = [json.loads(line) for line in replaced.stdout.splitlines()]
    sent = [r["name"] for r in records if r["type"] == "file" and not r["unchanged"]]
    assert replaced.returncode == 0
    assert sent == ["sample_data/docs/notes.md"]
    assert sha256(pair.area / "sample_data/docs/notes.md") == sha256(changed)


def test_overwrite_gives_an_unchanged_file_its_new_mode_and_mtime(
    pair: Pair, dataset: Path
) -> None:
    """Only the metadata changed: the bytes are not sent again, but with
    --overwrite the stored copy takes the new mode and mtime; without it,
    the stored file is left as it is."""
    pair.put("-r", dataset)
    source = dataset / "docs" / "notes.md"
    stored = pair.area / "sample_data" / "docs" / "notes.md"
    os.chmod(source, 0o700)
    os.utime(source, ns=(1_300_000_000_123_456_789,) * 2)

    plain = pair.put("-r", dataset)
    assert plain.returncode == 0, plain.stderr
    assert stored.stat().st_mtime_ns != 1_300_000_000_123_456_789

    replaced = pair.put("-r", "--overwrite", "--json", dataset)
    assert replaced.returncode == 0, replaced.stderr
    records = [json.loads(line) for line in replaced.stdout.splitlines()]
    assert all(r["unchanged"] for r in records if r["type"] == "file")
    assert stored.stat().st_mtime_ns == 1_300_000_000_123_456_789
    assert stat.S_IMODE(stored.stat().st_mode) == 0o700
    # The digest kept for listings follows the new mtime.
    listing = ls(pair, "--json", "sample_data/docs/notes.md")
    [entry] = [json.loads(line) for line in listing.stdout.splitlines()]
    assert entry["mode"] == "0700"
    if entry["digest"] is not None:  # where the file system keeps it
        from blake3 import blake3

        assert entry["digest"] == blake3(source.read_bytes()).hexdigest()


def test_get_again_keeps_identical_local_files(
    pair: Pair, dataset: Path, tmp_path: Path
) -> None:
    pair.put("-r", dataset)
    get(pair, "-r", "-o", tmp_path / "dl", "sample_data")

    again = get(pair, "-r", "--json", "-o", tmp_path / "dl", "sample_data")

    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert again.returncode == 0, again.stderr
    assert all(r["unchanged"] for r in records if r["type"] == "file")


# -- what a sent tree may hold ------------------------------------------------


def test_symlinks_in_a_sent_tree_are_skipped_with_a_warning(
    pair: Pair, tmp_path: Path
) -> None:
    top = tmp_path / "src" / "tree"
    top.mkdir(parents=True)
    (top / "real.txt").write_text("real\n")
    (top / "out.txt").symlink_to("/etc/passwd")
    (top / "loop").symlink_to(top)

    done = pair.put("-r", top)

    assert done.returncode == 0, done.stderr
    assert "skipping" in done.stderr and "out.txt" in done.stderr
    stored = sorted(p.name for p in (pair.area / "tree").iterdir())
    assert stored == ["real.txt"]
    assert not any(p.is_symlink() for p in pair.area.rglob("*"))


def test_setuid_and_group_write_bits_are_not_kept(pair: Pair, tmp_path: Path) -> None:
    source = random_file(tmp_path / "src" / "tool", 100, seed=11)
    source.chmod(0o4777)

    assert pair.put(source).returncode == 0

    assert stat.S_IMODE((pair.area / "tool").stat().st_mode) == 0o755


def test_keep_modes_keeps_group_write_but_never_setuid(
    make_pair: Callable[..., Pair], tmp_path: Path
) -> None:
    keeping = make_pair("--keep-modes")
    shared = random_file(tmp_path / "src" / "shared.txt", 100, seed=12)
    shared.chmod(0o664)
    tool = random_file(tmp_path / "src" / "tool", 100, seed=13)
    tool.chmod(0o6777)

    assert keeping.put(shared, tool).returncode == 0
    fetched = get(keeping, "--keep-modes", "-o", tmp_path / "dl", "shared.txt")
    plain = get(keeping, "-o", tmp_path / "dl2", "shared.txt")

    assert stat.S_IMODE((keeping.area / "shared.txt").stat().st_mode) == 0o664
    assert stat.S_IMODE((keeping.area / "tool").stat().st_mode) == 0o777
    assert fetched.returncode == 0 and plain.returncode == 0
    assert stat.S_IMODE((tmp_path / "dl" / "shared.txt").stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "dl2" / "shared.txt").stat().st_mode) == 0o644


# -- what a careful user runs into ---------------------------------------------


def test_get_of_a_tree_with_a_name_that_cannot_be_sent_fails_loudly(
    pair: Pair, tmp_path: Path
) -> None:
    """A file put there by other means, named with an escape: not left out."""
    (pair.area / "weird").mkdir()
    (pair.area / "weird" / "good.txt").write_text("ok\n")
    (pair.area / "weird" / "esc\x1b[31mred").write_text("bad\n")

    done = get(pair, "-r", "-o", tmp_path / "dl", "weird")

    assert done.returncode == 6
    # Escaped once by the receiver, and not again here.
    assert "'weird/esc\\x1b[31mred' cannot be sent" in done.stderr
    assert not (tmp_path / "dl").exists()


@pytest.mark.parametrize(
    "names", [["tree", "tree/deep"], ["tree/run.sh", "tree"]], ids=["below", "above"]
)
def test_overlapping_remotes_are_a_usage_error(pair: Pair, names: list[str]) -> None:
    done = get(pair, "-r", "-o", pair.tmp / "dl", *names)

    assert done.returncode == 2
    assert "overlap" in done.stderr


def test_more_remotes_than_the_protocol_allows_is_a_usage_error(pair: Pair) -> None:
    done = get(pair, "-o", pair.tmp / "dl", *(f"f{i}" for i in range(1025)))

    assert done.returncode == 2
    assert done.stderr.startswith("filexfer: error: at most 1024 names in one get")


def test_get_of_a_new_empty_file_is_not_reported_unchanged(
    pair: Pair, tmp_path: Path
) -> None:
    (pair.area / "empty.bin").write_bytes(b"")

    first = get(pair, "--json", "-o", tmp_path / "dl", "empty.bin")
    again = get(pair, "--json", "-o", tmp_path / "dl", "empty.bin")

    assert json.loads(first.stdout)["unchanged"] is False
    assert json.loads(again.stdout)["unchanged"] is True


def test_get_names_the_file_it_could_not_store(pair: Pair, tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt"):
        (pair.area / name).write_text("stored\n")
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "a.txt").write_text("local, different\n")

    done = get(pair, "-o", tmp_path / "dl", "a.txt", "b.txt")

    assert done.returncode == 7
    assert "filexfer: error: 'a.txt': already exists" in done.stderr


@pytest.mark.parametrize(
    ("output", "message"),
    [("", "-o is empty"), ("afile/sub", "cannot use -o"), ("afile", "'-o'")],
)
def test_get_output_errors_name_the_option(
    pair: Pair, tmp_path: Path, output: str, message: str
) -> None:
    (tmp_path / "afile").write_text("x")

    done = cli(
        [
            "get",
            "--fingerprint",
            pair.receiver_fingerprint,
            pair.receiver.address,
            "-o",
            output and str(tmp_path / output),
            "x",
        ],
        pair.sender_home,
    )

    assert done.returncode == 2
    assert message in done.stderr
    assert "--dir" not in done.stderr


def test_quiet_put_prints_nothing_for_a_skipped_symlink(
    pair: Pair, tmp_path: Path
) -> None:
    top = tmp_path / "src" / "linked"
    top.mkdir(parents=True)
    (top / "real.txt").write_text("real\n")
    (top / "link").symlink_to(top / "real.txt")

    done = pair.put("-q", "-r", top)

    assert (done.returncode, done.stderr) == (0, "")


def test_shared_receiver_refuses_to_start_with_a_key_that_has_an_area(
    pair: Pair, tmp_path: Path
) -> None:
    other = load_identity(tmp_path / "other-home")
    allow_sender(other.public_line, "", pair.receiver.home, grant_options=(True, "x"))

    done = cli(
        [
            "recv",
            "--dir",
            tmp_path / "shared-out",
            "--shared",
            "--listen",
            "127.0.0.1:0",
        ],
        pair.receiver.home,
    )

    assert done.returncode == 2
    assert "--shared, but key SHA256:" in done.stderr
    assert "has its own area 'x'" in done.stderr


def test_ls_shows_a_name_that_is_not_utf8_instead_of_failing(pair: Pair) -> None:
    (pair.area / "t8").mkdir()
    (pair.area / "t8" / "good").write_text("ok\n")
    (pair.area / "t8" / os.fsdecode(b"bad\xff")).write_text("x\n")

    done = ls(pair, "--json", "t8")

    assert done.returncode == 0, done.stderr
    names = [json.loads(line)["name"] for line in done.stdout.splitlines()]
    assert names == ["t8/bad\ufffd", "t8/good"]
    assert "session.crashed" not in pair.receiver.log()


FUTURE_NS = 13_569_465_600 * 10**9  # 2400-01-01: past what an i64 of ns holds


def test_put_of_a_file_dated_past_2262_fails_that_file_only(
    pair: Pair, tmp_path: Path
) -> None:
    future = random_file(tmp_path / "src" / "future.txt", 10, seed=14)
    os.utime(future, ns=(FUTURE_NS, FUTURE_NS))
    normal = random_file(tmp_path / "src" / "normal.txt", 10, seed=15)

    done = pair.put("--json", future, normal)

    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 7, done.stderr
    assert [(r["name"], r["status"]) for r in records] == [
        ("future.txt", "failed"),
        ("normal.txt", "ok"),
    ]
    assert records[0]["exit_code"] == 8
    assert "mtime is outside" in records[0]["error"]


def test_get_of_a_stored_file_dated_past_2262_fails_naming_it(
    pair: Pair, tmp_path: Path
) -> None:
    (pair.area / "dated").mkdir()
    (pair.area / "dated" / "g.txt").write_text("g\n")
    future = pair.area / "dated" / "f.txt"
    future.write_text("f\n")
    os.utime(future, ns=(FUTURE_NS, FUTURE_NS))

    listed = ls(pair, "--json", "dated")
    fetched = get(pair, "-r", "-o", tmp_path / "dl", "dated")

    names = [json.loads(line)["name"] for line in listed.stdout.splitlines()]
    assert names == ["dated/f.txt", "dated/g.txt"]
    assert fetched.returncode == 6
    assert "'dated/f.txt' cannot be sent: its mtime is out of range" in fetched.stderr
    assert not (tmp_path / "dl").exists()


def test_json_keeps_job_order_when_a_file_is_offered_again(
    pair: Pair, tmp_path: Path
) -> None:
    first = random_file(tmp_path / "src" / "a.bin", 1000, seed=16)
    second = random_file(tmp_path / "src" / "b.bin", 1000, seed=17)
    random_file(pair.area / "a.bin", 1000, seed=18)  # same size, other bytes

    done = pair.put("--json", "--overwrite", first, second)

    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, done.stderr
    assert [r["name"] for r in records] == ["a.bin", "b.bin"]
    assert sha256(pair.area / "a.bin") == sha256(first)


def test_get_of_files_the_daemon_cannot_open_is_not_a_success(
    pair: Pair, tmp_path: Path
) -> None:
    """A daemon left with no descriptor for the files of a download must
    say so after its wait, not send part of a folder and let it exit 0."""
    top = pair.area / "many"
    top.mkdir()
    for index in range(120):
        (top / f"f{index:03d}.txt").write_text(f"{index}\n")
    # Room for the connection and its area, and for nothing more.
    daemon = pair.receiver.process.pid
    highest = max(int(fd) for fd in os.listdir(f"/proc/{daemon}/fd"))
    resource.prlimit(daemon, resource.RLIMIT_NOFILE, (highest + 3, highest + 3))
    done = get(pair, "-r", "-o", tmp_path / "dl", "many")

    assert done.returncode in (6, 7), done.stderr
    assert "cannot read (Too many open files)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "dl").rglob("*.txt"))


def test_get_with_few_descriptors_stores_every_file(pair: Pair, tmp_path: Path) -> None:
    """Files waiting for their commit hold a descriptor each: a get under
    a limit of 24 commits early and gets every file of a 300-file tree."""
    top = pair.area / "many"
    for index in range(300):
        folder = top / f"d{index % 30:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:03d}.txt").write_text(f"{index}\n")
    command = ["get", "--fingerprint", pair.receiver_fingerprint]
    command += [pair.receiver.address, "many", "-r", "-o", str(tmp_path / "dl")]
    done = cli_with_file_limit(24, command, pair.sender_home)

    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "dl" / "many").rglob("*.txt"))) == 300
    assert (tmp_path / "dl" / "many" / "d29" / "f299.txt").read_text() == "299\n"


def test_a_local_write_failure_is_reported_with_its_cause(
    pair: Pair, tmp_path: Path
) -> None:
    """A file this side cannot write (here too large for RLIMIT_FSIZE, as a
    full disk would be) fails with that reason, not the sender's answer to
    the refusal; the other file still arrives and nothing partial stays."""
    (pair.area / "big.bin").write_bytes(os.urandom(24 << 20))
    (pair.area / "small.txt").write_bytes(b"small\n")
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from filexfer.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["get", "--fingerprint", pair.receiver_fingerprint, pair.receiver.address]
    args += ["big.bin", "small.txt", "-o", str(tmp_path / "dl")]
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=base_env(pair.sender_home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 7, done.stderr
    assert "'big.bin': cannot write (File too large)" in done.stderr
    assert "stopped" not in done.stderr
    assert (tmp_path / "dl" / "small.txt").read_bytes() == b"small\n"
    assert sorted(os.listdir(tmp_path / "dl")) == ["small.txt"]


def test_retried_get_keeps_what_arrived_when_the_last_attempt_fails() -> None:
    from filexfer.errors import ConnectError
    from filexfer.options import merge_download
    from filexfer.sources import FileResult

    lost = ConnectError("connection refused")
    merged: dict[str, FileResult] = {}
    first = [FileResult("big/f1", digest="aa"), FileResult("big/f2", error=lost)]
    merge_download(merged, first)
    merge_download(merged, [FileResult("big", error=lost)])  # cannot connect

    assert {name: r.ok for name, r in merged.items()} == {
        "big": False,
        "big/f1": True,
    }

    again = FileResult("big/f1", digest="aa", unchanged=True)
    merge_download(merged, [again, FileResult("big/f2", digest="bb")])

    assert {name: r.ok for name, r in merged.items()} == {
        "big/f1": True,
        "big/f2": True,
    }
    assert merged["big/f1"].unchanged is False  # it arrived in this run


def test_an_address_with_stray_colons_is_a_usage_error(pair: Pair) -> None:
    done = cli(["ls", "127.0.0.1:17001:5"], pair.sender_home)

    assert done.returncode == 2
    assert done.stderr.startswith("filexfer: error: bad host in '127.0.0.1:17001:5'")


# -- names longer than a small receiver's records ------------------------------

LONG_PARTS = ["d" * 200] * 6  # 1,205 bytes: more than 1,024-byte records hold


def test_names_too_long_for_the_receivers_records_are_refused_by_name(
    make_pair: Callable[..., Pair], tmp_path: Path
) -> None:
    """A receiver may take records as small as 1,024 bytes; a name that
    does not fit is refused by name, on each side, not sent as a record
    the other side would take for tampering."""
    pair = make_pair("--max-record", "1024")
    top = tmp_path / "src" / "top"
    long_file = top.joinpath(*LONG_PARTS, "f.bin")
    long_file.parent.mkdir(parents=True)
    long_file.write_bytes(b"far down\n")
    (top / "near.txt").write_bytes(b"near\n")

    sent = pair.put("-r", top)

    assert sent.returncode == 7, sent.stderr
    assert (pair.area / "top" / "near.txt").read_bytes() == b"near\n"
    assert "too long a name for the receiver, which takes messages of at most" in (
        sent.stderr
    )
    assert "integrity" not in sent.stderr + pair.receiver.log()

    long_name = "/".join(["top", *LONG_PARTS])
    fetched = get(pair, "-r", "-o", tmp_path / "dl", long_name)
    assert fetched.returncode == 6, fetched.stderr
    assert "cannot ask for" in fetched.stderr
    assert "too long a name for the receiver" in fetched.stderr

    # Asked for with a name that fits, it fails alone.
    fetched = get(pair, "-r", "-o", tmp_path / "dl", long_name, "top/near.txt")
    assert fetched.returncode == 7, fetched.stderr
    assert (tmp_path / "dl" / "near.txt").read_bytes() == b"near\n"
    assert "too long a name for the receiver" in fetched.stderr

    listed = ls(pair, long_name)
    assert listed.returncode == 6, listed.stderr
    assert "cannot list" in listed.stderr
    assert "integrity" not in pair.receiver.log()


def test_ls_into_a_closed_pipe_is_exit_8_with_one_line(pair: Pair) -> None:
    for number in range(50):
        (pair.area / f"f{number:02d}.txt").write_text("x\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        command = ["ls", "--fingerprint", pair.receiver_fingerprint]
        done = cli(
            [*command, pair.receiver.address], pair.sender_home, stdout=write_end
        )
    finally:
        os.close(write_end)

    assert done.returncode == 8
    assert done.stderr == (
        "filexfer: error: cannot write to standard output (broken pipe); "
        "output is missing\n"
    )
    # It stopped at the first line nobody took, without asking for the
    # rest: the daemon saw the connection end before the listing's Close.
    pair.receiver.wait_for_log(r"event=session\.failed ")
    assert "event=session.end" not in pair.receiver.log()


def test_get_of_a_file_the_receiver_cannot_read_names_it_once(
    pair: Pair, tmp_path: Path
) -> None:
    pair.receiver.stop()
    receiver = Receiver(
        pair.receiver.home,
        pair.receiver.root,
        tmp_path / "unprivileged.log",
        unprivileged=True,
    ).start()
    (pair.area / "x.txt").write_bytes(b"secret\n")
    (pair.area / "x.txt").chmod(0)
    command = ["get", "--fingerprint", pair.receiver_fingerprint, receiver.address]
    try:
        done = cli([*command, "x.txt", "-o", tmp_path / "dl"], pair.sender_home)
    finally:
        receiver.stop()

    assert done.returncode == 6
    assert done.stderr == (
        "filexfer: error: receiver: 'x.txt': cannot read (Permission denied)\n"
    )


def test_get_of_a_folder_without_r_fails_alone(pair: Pair, tmp_path: Path) -> None:
    """Like scp's "not a regular file": the folder fails, the file arrives,
    and the job ends with 7."""
    (pair.area / "t").mkdir()
    (pair.area / "t" / "inside.txt").write_bytes(b"inside\n")
    (pair.area / "s.txt").write_bytes(b"s\n")

    done = get(pair, "--json", "-o", tmp_path / "dl", "t", "s.txt")

    assert done.returncode == 7, done.stderr
    assert done.stderr.splitlines() == [
        "filexfer: error: 't': is a directory (use -r)",
        "filexfer: error: 1 of 2 files failed",
    ]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["name"], r["status"]) for r in records] == [
        ("t", "failed"),
        ("s.txt", "ok"),
    ]
    assert (records[0]["exit_code"], records[0]["type"]) == (6, "file")
    assert os.listdir(tmp_path / "dl") == ["s.txt"]
