"""The config file: parsing and checks, then its effect on the real CLI.

The first half feeds TOML text to the parser; every rejected file must be
reported with the file, the section and the key. The second half runs
the real `filexfer put` and `filexfer recv` processes on 127.0.0.1 and
shows the precedence: command line, then the host's section, then [put]
or [recv], then the built-in default.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import click
import pytest

from filexfer import cli as cli_module
from filexfer import config
from filexfer.errors import UsageError
from filexfer.keys import KNOWN_FILE, fingerprint, load_identity
from filexfer.options import split_address as _split_address
from tests.helpers import (
    Pair,
    authorize_sender,
    base_env,
    cli,
    filexfer_command,
    identity_fingerprint,
    new_identity,
    random_file,
    sha256,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
OTHER_FINGERPRINT = fingerprint(new_identity().public)


def parse(text: str, path: Path = Path("/etc/fx/config.toml")) -> config.Config:
    return config.parse(text, path, _split_address)


def rejection(text: str, path: Path = Path("/etc/fx/config.toml")) -> UsageError:
    with pytest.raises(UsageError) as caught:
        parse(text, path)
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(f"{path}: "), caught.value
    return caught.value


# -- parsing -----------------------------------------------------------------


def test_parse_every_key() -> None:
    parsed = parse(
        f"""
        [put]
        overwrite = true
        quiet = true
        json = false
        progress = false
        connect_timeout = 5
        idle_timeout = 2.5

        [hosts.backup-host]
        address = "10.0.0.5"
        port = 7000
        fingerprint = "{OTHER_FINGERPRINT}"
        overwrite = false
        idle_timeout = 30

        [recv]
        dir = "/srv/in"
        listen = "0.0.0.0:7757"
        max_sessions = 4
        max_handshakes = 8
        handshake_timeout = 3
        idle_timeout = 9.5
        max_record = 1024
        max_name_bytes = 300
        max_depth = 5
        min_free = 0
        """
    )

    assert parsed.put == {
        "overwrite": True,
        "quiet": True,
        "json": False,
        "progress": False,
        "connect_timeout": 5.0,
        "idle_timeout": 2.5,
    }
    assert isinstance(parsed.put["connect_timeout"], float)
    host = parsed.hosts["backup-host"]
    assert host.target == "10.0.0.5:7000"
    assert host.options == {
        "fingerprint": OTHER_FINGERPRINT,
        "overwrite": False,
        "idle_timeout": 30.0,
    }
    assert parsed.recv["dir"] == "/srv/in"
    assert parsed.recv["listen"] == "0.0.0.0:7757"
    assert parsed.recv["max_record"] == 1024
    assert parsed.recv["handshake_timeout"] == 3.0


def test_parse_empty_file_is_an_empty_config() -> None:
    parsed = parse("")

    assert (parsed.put, parsed.recv, parsed.hosts) == ({}, {}, {})


@pytest.mark.parametrize(
    ("section", "target"),
    [
        ('[hosts.nas]\naddress = "192.0.2.7"', "192.0.2.7"),
        ('[hosts.nas]\naddress = "::1"', "::1"),
        ('[hosts.nas]\naddress = "::1"\nport = 9000', "[::1]:9000"),
        ('[hosts.nas]\naddress = "nas.example.net"\nport = 1', "nas.example.net:1"),
        ("[hosts.nas]\nport = 9000", "nas:9000"),
        ("[hosts.nas]", "nas"),
        ('[hosts."nas.example.net"]', "nas.example.net"),
    ],
)
def test_host_target_is_what_put_would_be_given(section: str, target: str) -> None:
    host = next(iter(parse(section).hosts.values()))

    assert host.target == target
    assert _split_address(target)  # the command line reads it back


def test_relative_dir_is_taken_from_the_config_files_directory(
    tmp_path: Path,
) -> None:
    parsed = parse('[recv]\ndir = "incoming/a"', tmp_path / "config.toml")

    assert parsed.recv["dir"] == str(tmp_path / "incoming" / "a")


# -- rejected files: each names the file, the section and the key -------------

BAD_VALUES = {
    "unknown put key": ("[put]\ncolour = 1", "put", "colour"),
    "unknown recv key": ("[recv]\nonce = true", "recv", "once"),
    "accept_new is not a file key": ("[put]\naccept_new = true", "put", "accept_new"),
    "unknown host key": ("[hosts.b]\nrecursive = true", "hosts.b", "recursive"),
    "fingerprint in put": (f'[put]\nfingerprint = "{OTHER_FINGERPRINT}"', "put", ""),
    "flag as a string": ('[put]\noverwrite = "yes"', "put", "overwrite"),
    "flag as an integer": ("[put]\nquiet = 1", "put", "quiet"),
    "timeout as a string": ('[put]\nidle_timeout = "10"', "put", "idle_timeout"),
    "timeout as a flag": ("[put]\nidle_timeout = true", "put", "idle_timeout"),
    "timeout zero": ("[put]\nconnect_timeout = 0", "put", "connect_timeout"),
    "timeout over a day": ("[put]\nidle_timeout = 86401", "put", "idle_timeout"),
    "timeout nan": ("[recv]\nidle_timeout = nan", "recv", "idle_timeout"),
    "timeout inf": ("[recv]\nhandshake_timeout = inf", "recv", "handshake_timeout"),
    "timeout negative": ("[hosts.b]\nidle_timeout = -1", "hosts.b", "idle_timeout"),
    "count as a float": ("[recv]\nmax_sessions = 2.0", "recv", "max_sessions"),
    "count as a flag": ("[recv]\nmax_depth = true", "recv", "max_depth"),
    "count zero": ("[recv]\nmax_handshakes = 0", "recv", "max_handshakes"),
    "record too small": ("[recv]\nmax_record = 1023", "recv", "max_record"),
    "record too large": ("[recv]\nmax_record = 1048641", "recv", "max_record"),
    "name too long": ("[recv]\nmax_name_bytes = 65536", "recv", "max_name_bytes"),
    "min_free negative": ("[recv]\nmin_free = -1", "recv", "min_free"),
    "dir empty": ('[recv]\ndir = ""', "recv", "dir"),
    "dir a number": ("[recv]\ndir = 5", "recv", "dir"),
    "dir with a tilde": ('[recv]\ndir = "~/in"', "recv", "dir"),
    "listen a number": ("[recv]\nlisten = 7757", "recv", "listen"),
    "listen bad port": ('[recv]\nlisten = "0.0.0.0:x"', "recv", "listen"),
    "listen unclosed bracket": ('[recv]\nlisten = "[::1"', "recv", "listen"),
    "port a string": ('[hosts.b]\nport = "7757"', "hosts.b", "port"),
    "port a flag": ("[hosts.b]\nport = true", "hosts.b", "port"),
    "port zero": ("[hosts.b]\nport = 0", "hosts.b", "port"),
    "port too large": ("[hosts.b]\nport = 65536", "hosts.b", "port"),
    "address with a port": ('[hosts.b]\naddress = "b.example:1"', "hosts.b", "address"),
    "address in brackets": ('[hosts.b]\naddress = "[::1]"', "hosts.b", "address"),
    "address with a space": ('[hosts.b]\naddress = "two words"', "hosts.b", "address"),
    "address empty label": ('[hosts.b]\naddress = "a..b"', "hosts.b", "address"),
    "address empty": ('[hosts.b]\naddress = ""', "hosts.b", "address"),
    "fingerprint malformed": ('[hosts.b]\nfingerprint = "x"', "hosts.b", "fingerprint"),
    "fingerprint a number": ("[hosts.b]\nfingerprint = 1", "hosts.b", "fingerprint"),
    "quoted host name": ('[hosts."b.example"]\nport = 0', 'hosts."b.example"', "port"),
}


@pytest.mark.parametrize(
    ("text", "section", "key"), BAD_VALUES.values(), ids=BAD_VALUES.keys()
)
def test_reject_bad_value(text: str, section: str, key: str) -> None:
    error = rejection(text)

    key = key or "fingerprint"
    assert f": [{section}] {key}: " in str(error), error
    assert "\n" not in str(error)


BAD_SECTIONS = {
    "unknown section": ("[puts]\nquiet = true", "[puts]"),
    "key outside a section": ("quiet = true", "quiet"),
    "put not a section": ("put = 1", "put"),
    "hosts not a section": ('hosts = "b"', "hosts"),
    "host not a section": ("[hosts]\nb = 1", "[hosts] b"),
    "host name with a colon": ('[hosts."b:1"]', '[hosts."b:1"]'),
    "host name with a space": ('[hosts."a b"]', '[hosts."a b"]'),
    "host name empty": ('[hosts.""]', '[hosts.""]'),
    "host name with an escape": ('[hosts."\\u001b[2J"]', '[hosts."\\x1b[2J"]'),
}


@pytest.mark.parametrize(
    ("text", "where"), BAD_SECTIONS.values(), ids=BAD_SECTIONS.keys()
)
def test_reject_bad_section(text: str, where: str) -> None:
    error = rejection(text)

    assert str(error).startswith(f"/etc/fx/config.toml: {where}"), error
    assert "\x1b" not in str(error)


@pytest.mark.parametrize(
    "text",
    ["[put\n", "[put]\nquiet = \n", "[put]\nquiet = true\nquiet = false\n", "= 1\n"],
)
def test_reject_toml_syntax_with_its_line(text: str) -> None:
    error = rejection(text)

    assert re.search(r"line \d+", str(error)), error


def test_unknown_key_hint_lists_the_sections_keys() -> None:
    error = rejection("[put]\ncolour = 1")

    assert error.hint is not None
    for key in config.PUT_OPTIONS:
        assert key in error.hint


def test_load_missing_default_file_is_an_empty_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FILEXFER_HOME", str(tmp_path / "home"))

    loaded = config.load(None, _split_address)

    assert loaded.path == tmp_path / "home" / config.CONFIG_FILE
    assert (loaded.put, loaded.recv, loaded.hosts) == ({}, {}, {})


def test_load_reads_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FILEXFER_HOME", str(tmp_path))
    (tmp_path / config.CONFIG_FILE).write_text("[put]\nquiet = true\n")

    assert config.load(None, _split_address).put == {"quiet": True}


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "cannot read config file"),
        (lambda p: p.write_bytes(b"[put]\nquiet = \xff\n"), "is not UTF-8 text"),
    ],
    ids=["missing", "a directory", "not utf-8"],
)
def test_load_reject_unreadable_file(
    tmp_path: Path, make: Callable[[Path], object], needle: str
) -> None:
    path = tmp_path / "given.toml"
    make(path)

    with pytest.raises(UsageError) as caught:
        config.load(str(path), _split_address)

    assert needle in str(caught.value)
    assert str(path) in str(caught.value)


def test_load_reject_empty_name() -> None:
    with pytest.raises(UsageError, match="--config is empty"):
        config.load("", _split_address)


# -- filling a command's parameters -------------------------------------------

PUT_PARAMS: Mapping[str, object] = {
    "args": ("a.txt", "backup-host"),
    "overwrite": False,
    "as_json": False,
    "quiet": False,
    "given_fp": None,
    "idle_timeout": 60.0,
}
LAYERED = f"""
[put]
overwrite = true
json = true
idle_timeout = 5

[hosts.backup-host]
address = "192.0.2.7"
overwrite = false
fingerprint = "{OTHER_FINGERPRINT}"
"""


def test_fill_takes_the_host_section_before_put() -> None:
    filled = parse(LAYERED).fill("put", PUT_PARAMS, set())

    assert filled["args"] == ("a.txt", "192.0.2.7")
    assert filled["overwrite"] is False  # the host section
    assert filled["as_json"] is True  # [put]
    assert filled["idle_timeout"] == 5.0  # [put]
    assert filled["given_fp"] == OTHER_FINGERPRINT
    assert filled["quiet"] is False  # built in


def test_fill_leaves_what_the_command_line_gave() -> None:
    given = {"overwrite", "as_json", "given_fp"}
    params = {**PUT_PARAMS, "overwrite": True, "given_fp": "SHA256:x"}

    filled = parse(LAYERED).fill("put", params, given)

    assert filled["overwrite"] is True
    assert filled["as_json"] is False
    assert filled["given_fp"] == "SHA256:x"
    assert filled["idle_timeout"] == 5.0


@pytest.mark.parametrize(
    "args",
    [("a.txt", "backup-host:7757"), ("backup-host", "192.0.2.9"), ("backup-host",)],
)
def test_fill_uses_a_host_section_only_for_the_exact_last_argument(
    args: tuple[str, ...],
) -> None:
    filled = parse(LAYERED).fill("put", {**PUT_PARAMS, "args": args}, set())

    assert filled["args"] == args
    assert filled["overwrite"] is True  # [put]; no host section applied
    assert filled["given_fp"] is None


def test_fill_recv_takes_recv_only() -> None:
    parsed = parse('[put]\nidle_timeout = 5\n[recv]\ndir = "/srv/in"\nmax_depth = 3')
    params = {"root_text": None, "idle_timeout": 60.0, "max_depth": 32}

    filled = parsed.fill("recv", params, {"max_depth"})

    assert filled == {"root_text": "/srv/in", "idle_timeout": 60.0, "max_depth": 32}


def _click_params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name or "": p for p in command.params}


@pytest.mark.parametrize(
    ("command", "known"),
    [(cli_module.put, config.PUT_OPTIONS), (cli_module.recv, config.RECV_OPTIONS)],
    ids=["put", "recv"],
)
def test_every_key_checks_what_its_flag_checks(
    command: click.Command, known: Mapping[str, config.Check]
) -> None:
    params = _click_params(command)
    for key, check in known.items():
        param = params[{"json": "as_json", "dir": "root_text"}.get(key, key)]
        if isinstance(check, config.Flag):
            assert isinstance(param, click.Option) and param.is_flag, key
        if isinstance(check, config.Integer | config.Seconds):
            assert isinstance(param.type, click.IntRange | click.FloatRange), key
            assert (check.low, check.high) == (param.type.min, param.type.max), key


def test_every_key_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for known in (config.PUT_OPTIONS, config.HOST_OPTIONS, config.RECV_OPTIONS):
        for key in known:
            assert f"| `{key}` |" in readme, key


# -- the real CLI --------------------------------------------------------------


def run(
    args: list[str | Path], home: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """`filexfer ARGS` with extra environment variables (cli() has none)."""
    return subprocess.run(
        filexfer_command(*args),
        env={**base_env(home), **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_usage_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("filexfer: error: "), lines
    assert all(line.startswith("filexfer: hint: ") for line in lines[1:]), lines
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", [["put", "a.txt", "b"], ["recv"]])
def test_cli_bad_config_file_exits_2_before_anything(
    sender_home: Path, command: list[str]
) -> None:
    path = sender_home / config.CONFIG_FILE
    path.write_text("[recv]\nmax_depth = 0\n")

    done = cli(command, sender_home)

    assert_usage_error(done, str(path), "[recv] max_depth: ")
    assert sorted(p.name for p in sender_home.iterdir()) == [config.CONFIG_FILE]


def test_cli_missing_config_option_file_exits_2(sender_home: Path) -> None:
    missing = sender_home / "nope.toml"

    done = cli(["--config", missing, "put", "a.txt", "b"], sender_home)

    assert_usage_error(done, f"config file {missing} does not exist")


def test_cli_config_option_wins_over_the_environment(sender_home: Path) -> None:
    named = sender_home / "named.toml"
    named.write_text("[hosts.b]\nport = 0\n")

    from_env = run(["put", "a.txt", "b"], sender_home, FILEXFER_CONFIG=str(named))
    from_option = run(
        ["--config", sender_home / "nope.toml", "put", "a.txt", "b"],
        sender_home,
        FILEXFER_CONFIG=str(named),
    )

    assert_usage_error(from_env, str(named), "[hosts.b] port: ")
    assert_usage_error(from_option, "nope.toml does not exist")


def test_cli_other_commands_do_not_read_the_config(sender_home: Path) -> None:
    (sender_home / config.CONFIG_FILE).write_text("not toml at all")

    done = cli(["id"], sender_home)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("fx1")


def write_config(home: Path, text: str) -> Path:
    path = home / config.CONFIG_FILE
    path.write_text(text)
    return path


def host_section(pair: Pair, fingerprint: str, extra: str = "") -> str:
    return (
        "[hosts.backup-host]\n"
        'address = "127.0.0.1"\n'
        f"port = {pair.receiver.port}\n"
        f'fingerprint = "{fingerprint}"\n' + extra
    )


def test_put_to_a_host_name_pins_by_its_fingerprint_without_asking(
    pair: Pair, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "src" / "night.bin", 70_000, seed=50)
    write_config(pair.sender_home, host_section(pair, pair.receiver_fingerprint))

    done = cli(["put", source, "backup-host"], pair.sender_home)

    assert done.returncode == 0, done.stderr
    assert "filexfer: sent 1 file(s)" in done.stderr
    assert sha256(pair.area / "night.bin") == sha256(source)
    pins = (pair.sender_home / KNOWN_FILE).read_text().split()
    assert pins[0] == pair.receiver.address
    assert pins[1] == load_identity(pair.receiver.home).public_line


def test_put_to_a_host_name_with_a_wrong_fingerprint_exits_4(
    pair: Pair, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "src" / "night.bin", 1000, seed=51)
    write_config(pair.sender_home, host_section(pair, OTHER_FINGERPRINT))

    done = cli(["put", source, "backup-host"], pair.sender_home)

    assert done.returncode == 4, done.stderr
    assert "not the fingerprint given" in done.stderr
    assert done.stdout == ""
    assert list(pair.area.iterdir()) == []
    assert not (pair.sender_home / KNOWN_FILE).exists()


def test_put_fingerprint_flag_wins_over_the_host_section(
    pair: Pair, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "src" / "night.bin", 1000, seed=52)
    write_config(pair.sender_home, host_section(pair, OTHER_FINGERPRINT))

    done = cli(
        ["put", "--fingerprint", pair.receiver_fingerprint, source, "backup-host"],
        pair.sender_home,
    )

    assert done.returncode == 0, done.stderr
    assert (pair.area / "night.bin").exists()


def test_put_overwrite_precedence(pair: Pair, tmp_path: Path) -> None:
    """flag > [hosts.NAME] > [put] > built-in default, shown on one file."""
    source = random_file(tmp_path / "src" / "night.bin", 1000, seed=53)
    host = host_section(pair, pair.receiver_fingerprint)
    layers = {
        "built-in": host,
        "put": "[put]\noverwrite = true\n" + host,
        "host": "[put]\noverwrite = true\n" + host + "overwrite = false\n",
    }
    paths = {name: tmp_path / f"{name}.toml" for name in layers}
    for name, text in layers.items():
        paths[name].write_text(text)

    def put(layer: str, *flags: str) -> int:
        # New content each time, of the same size: never skipped as identical.
        random_file(source, 1000, seed=next(seeds))
        args = ["--config", paths[layer], "put", *flags, source, "backup-host"]
        return cli(args, pair.sender_home).returncode

    seeds = iter(range(530, 540))
    assert put("built-in") == 0  # the first copy
    assert put("built-in") == 6  # exists: not replaced by default
    assert put("put") == 0  # [put] overwrite = true
    assert put("host") == 6  # the host section says false
    assert put("host", "--overwrite") == 0  # the flag wins
    assert put("put", "--no-overwrite") == 6


def test_put_json_and_quiet_precedence(pair: Pair, tmp_path: Path) -> None:
    sources = [
        random_file(tmp_path / "src" / f"f{i}.bin", 100, seed=60 + i) for i in range(3)
    ]
    write_config(
        pair.sender_home,
        "[put]\njson = true\nquiet = false\n"
        + host_section(pair, pair.receiver_fingerprint, "quiet = true\n"),
    )

    from_file = cli(["put", sources[0], "backup-host"], pair.sender_home)
    by_address = cli(
        ["put", sources[1], f"127.0.0.1:{pair.receiver.port}"], pair.sender_home
    )
    flags = cli(
        ["put", "--no-json", "--no-quiet", sources[2], "backup-host"],
        pair.sender_home,
    )

    assert from_file.returncode == by_address.returncode == flags.returncode == 0
    assert json.loads(from_file.stdout)["status"] == "ok"  # [put] json
    assert from_file.stderr == ""  # the host's quiet
    assert json.loads(by_address.stdout)["name"] == "f1.bin"  # [put] alone
    assert flags.stdout == ""
    assert "filexfer: sent 1 file(s)" in flags.stderr


class RecvProcess:
    """`filexfer recv` started with arguments of our choosing."""

    def __init__(self, args: list[str | Path], home: Path, log: Path) -> None:
        self.log = log
        self.stream = open(log, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            filexfer_command(*args),
            env=base_env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stream,
        )

    def port(self) -> int:
        pattern = re.compile(r"event=recv\.listening address=127\.0\.0\.1:(\d+)")
        wait_until(
            lambda: pattern.search(self.text()) or self.process.poll() is not None,
            "the receiver to listen",
        )
        match = pattern.search(self.text())
        assert match, self.text()
        return int(match.group(1))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(30)
        self.stream.close()


def test_recv_takes_dir_listen_and_limits_from_the_file(
    tmp_path: Path, sender_home: Path, receiver_home: Path
) -> None:
    authorize_sender(sender_home, receiver_home)
    write_config(
        receiver_home,
        '[recv]\ndir = "incoming"\nlisten = "127.0.0.1:0"\nmax_name_bytes = 8\n'
        "shared = true\n",
    )
    short = random_file(tmp_path / "src" / "a.bin", 500, seed=70)
    long = random_file(tmp_path / "src" / "long-name.bin", 500, seed=71)
    receiver = RecvProcess(["recv"], receiver_home, tmp_path / "recv.log")
    try:
        address = f"127.0.0.1:{receiver.port()}"
        trust = ["--fingerprint", identity_fingerprint(receiver_home)]
        done = cli(["put", *trust, short, long, address], sender_home)
    finally:
        receiver.stop()

    assert done.returncode == 7, done.stderr  # the long name is refused
    assert "bad path" in done.stderr
    incoming = receiver_home / "incoming"
    assert sorted(p.name for p in incoming.iterdir()) == ["a.bin"]


def test_recv_flags_win_over_the_file(
    tmp_path: Path, sender_home: Path, receiver_home: Path
) -> None:
    authorize_sender(sender_home, receiver_home)
    write_config(
        receiver_home,
        '[recv]\ndir = "incoming"\nlisten = "127.0.0.1:1"\nmax_name_bytes = 8\n',
    )
    long = random_file(tmp_path / "src" / "long-name.bin", 500, seed=72)
    flags: list[str | Path] = ["--dir", tmp_path / "out", "--max-name-bytes", "64"]
    flags.append("--shared")
    receiver = RecvProcess(
        ["recv", *flags, "--listen", "127.0.0.1:0", "--once"],
        receiver_home,
        tmp_path / "recv.log",
    )
    try:
        address = f"127.0.0.1:{receiver.port()}"
        trust = ["--fingerprint", identity_fingerprint(receiver_home)]
        done = cli(["put", *trust, long, address], sender_home)
        assert receiver.process.wait(30) == 0
    finally:
        receiver.stop()

    assert done.returncode == 0, done.stderr
    assert sha256(tmp_path / "out" / "long-name.bin") == sha256(long)
    assert not (receiver_home / "incoming").exists()


def test_cli_config_that_is_a_fifo_is_refused_without_waiting(
    sender_home: Path,
) -> None:
    fifo = sender_home / "fifo.toml"
    os.mkfifo(fifo)

    done = cli(["--config", fifo, "put", "a.txt", "b"], sender_home, timeout=20)

    assert_usage_error(done, f"config file {fifo} is not a file")


def test_cli_config_device_is_refused(sender_home: Path) -> None:
    done = cli(["--config", "/dev/zero", "recv"], sender_home, timeout=20)

    assert_usage_error(done, "config file /dev/zero is not a file")


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_cli_config_writable_by_others_is_refused(sender_home: Path, mode: int) -> None:
    path = sender_home / config.CONFIG_FILE
    path.write_text("[put]\nquiet = true\n")
    path.chmod(mode)

    done = cli(["put", "a.txt", "b"], sender_home)

    assert_usage_error(done, f"config file {path} is writable by others")
    assert f"chmod go-w {path}" in done.stderr


def test_cli_config_nested_too_deeply_is_a_usage_error(sender_home: Path) -> None:
    path = sender_home / config.CONFIG_FILE
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")

    done = cli(["put", "a.txt", "b"], sender_home)

    assert_usage_error(done, f"{path}: nested too deeply")


def test_cli_config_larger_than_the_cap_is_refused(sender_home: Path) -> None:
    path = sender_home / config.CONFIG_FILE
    path.write_text("# " + "x" * config.MAX_CONFIG_BYTES + "\n")

    done = cli(["put", "a.txt", "b"], sender_home)

    assert_usage_error(done, f"config file {path} is too large")


def test_parse_accepts_a_byte_order_mark(sender_home: Path) -> None:
    path = sender_home / config.CONFIG_FILE
    path.write_bytes(b"\xef\xbb\xbf[put]\nquiet = true\n")

    loaded = config.load(str(path), _split_address)

    assert loaded.put == {"quiet": True}


def test_cli_config_path_with_control_characters_is_shown_escaped(
    sender_home: Path,
) -> None:
    odd = sender_home / "a\nb\x1b[31m.toml"

    done = cli(["--config", odd, "put", "a.txt", "b"], sender_home)

    assert done.returncode == 2
    first = done.stderr.splitlines()[0]
    assert "\\n" in first and "\\x1b" in first and "does not exist" in first


def test_get_and_ls_reach_a_host_name_from_the_file(pair: Pair, tmp_path: Path) -> None:
    """A restore script is as short as the backup: the host's address,
    port and fingerprint come from its section; put's options do not."""
    source = random_file(tmp_path / "src" / "night.bin", 70_000, seed=56)
    write_config(
        pair.sender_home,
        host_section(pair, pair.receiver_fingerprint, "overwrite = true\n"),
    )
    assert cli(["put", source, "backup-host"], pair.sender_home).returncode == 0

    listed = cli(["ls", "backup-host"], pair.sender_home)
    fetched = cli(
        ["get", "backup-host", "night.bin", "-o", tmp_path / "restore"],
        pair.sender_home,
    )

    assert listed.returncode == 0 and listed.stdout.endswith(" night.bin\n")
    assert fetched.returncode == 0, fetched.stderr
    assert sha256(tmp_path / "restore" / "night.bin") == sha256(source)
