"""An attacker on the path between `put` and `recv`.

Every test runs the real CLI through :class:`tests.attackers.Proxy` to a
real receiver. Whatever the proxy does to the bytes, the sender must not
report success for anything the receiver did not durably store and
verify; nothing unverified appears under a final name; the receiver logs
a WARNING and keeps serving. Recorded traffic reveals neither content,
names nor identities, and the identity keys alone do not decrypt it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from filexfer import messages as msgs
from filexfer.keys import load_identity
from filexfer.noise import HandshakeState, NoiseError
from filexfer.records import MAX_PLAINTEXT, RecordError, Sealer
from filexfer.session import PROLOGUE
from tests.attackers import (
    C2S,
    S2C,
    Capture,
    HostileServer,
    LogWatch,
    Proxy,
    Tamper,
    assert_serving,
    closed_by_peer,
    decrypt_capture,
    open_pair,
    put_to,
    static_only_guesses,
)
from tests.helpers import Pair, cli, leftovers, random_file, sha256, wait_until

SIZE = (3 << 20) + 100  # records: 0 Offer, 1-4 Data, 5 End, 6 Close
LAST_DATA, END, CLOSE = 4, 5, 6
LAYOUT_NAME = "layout.bin"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """One receiver for the whole module: it must survive every attack."""
    pair = open_pair(tmp_path_factory.mktemp("proxy"))
    yield pair
    pair.receiver.stop()


@pytest.fixture(scope="module")
def layout(shared: Pair) -> Capture:
    """A clean session of a SIZE-byte file called layout.bin, recorded."""
    source = random_file(shared.tmp / "src" / LAYOUT_NAME, SIZE, seed=1)
    with Proxy(shared.receiver.port) as proxy:
        done = put_to(shared, proxy.address, source)
        proxy.wait_done()
    assert done.returncode == 0, done.stderr
    return proxy.capture


def attack(pair: Pair, tamper: Tamper, name: str, seed: int = 2) -> Attack:
    """Send a SIZE-byte file called name through a tampering proxy."""
    source = random_file(pair.tmp / "src" / name, SIZE, seed=seed)
    watch = LogWatch(pair.receiver)
    with Proxy(pair.receiver.port, tamper) as proxy:
        done = put_to(pair, proxy.address, source, timeout=60)
        proxy.wait_done()
    return Attack(
        pair, source, done.returncode, done.stdout, done.stderr, watch, proxy.capture
    )


@dataclass
class Attack:
    """What one attack left behind."""

    pair: Pair
    source: Path
    code: int
    stdout: str
    stderr: str
    watch: LogWatch
    capture: Capture

    @property
    def target(self) -> Path:
        return self.pair.area / self.source.name

    def assert_refused(self, code: int, message: str, event: str) -> None:
        """Exit code and message; one WARNING; nothing stored; still serving,
        in bounded memory."""
        assert self.code == code, self.stderr
        assert self.stdout == ""
        assert f"filexfer: error: {message}" in self.stderr
        self.watch.wait_for(f"WARNING event={event}")
        assert len(self.watch.lines("WARNING")) == 1, self.watch.text()
        assert not self.target.exists()
        assert leftovers(self.pair.area) == []
        assert_serving(self.pair, f"after-{self.source.name}")
        assert self.pair.receiver.peak_rss_kib() < 100 * 1024


def assert_copied_only_if_confirmed(result: Attack, failure: int) -> None:
    """When the file was complete before the attack, it may be committed.

    The sender exits 0 only if the receiver's Done reached it, and then
    the copy is there and intact; otherwise it exits with failure. Either
    way nothing partial is ever kept.
    """
    assert result.code in (0, failure), result.stderr
    if result.code == 0:
        assert "filexfer: sent 1 file(s)" in result.stderr
        assert result.target.exists()
    if result.target.exists():
        assert sha256(result.target) == sha256(result.source)
    assert leftovers(result.pair.area) == []


def record_start(
    layout: Capture, direction: str, index: int, name: str = LAYOUT_NAME
) -> int:
    """Stream offset of record index in a session sending name.

    Only the Offer's length depends on the name; the rest is the clean
    session's layout shifted by the difference.
    """
    records = [u for u in layout.units(direction) if u.kind == "record"]
    shift = len(name) - len(LAYOUT_NAME) if direction == C2S and index else 0
    return records[index].start + shift


def handshake_end(layout: Capture, direction: str) -> int:
    return record_start(layout, direction, 0)


# -- tampering with the sender's stream ---------------------------------------


@pytest.mark.parametrize(
    ("record", "offset"),
    [(0, 20), (1, 4), (1, 500_000), (LAST_DATA, 30), (END, 10), (1, 2)],
    ids=["offer", "first-data", "mid-data", "last-data", "end", "length-header"],
)
def test_flipped_bit_in_a_record_fails_integrity(
    shared: Pair, layout: Capture, record: int, offset: int
) -> None:
    name = f"flip-{record}-{offset}.bin"
    at = record_start(layout, C2S, record, name) + offset
    result = attack(shared, Tamper(flip_at=at), name)

    result.assert_refused(
        5,
        "receiver: receive: connection failed its integrity check",
        "session.failed",
    )


def test_flipped_bit_in_the_close_record_is_noticed(
    shared: Pair, layout: Capture
) -> None:
    """The file itself was complete: it may be stored and confirmed, but
    never partial, and the failed session is reported."""
    at = record_start(layout, C2S, CLOSE, "flip-close.bin") + 6
    result = attack(shared, Tamper(flip_at=at), "flip-close.bin")

    assert "connection failed its integrity check" in result.stderr
    result.watch.wait_for("WARNING event=session.failed")
    assert_copied_only_if_confirmed(result, 5)


@pytest.mark.parametrize(
    "tamper",
    [
        Tamper(drop=1),
        Tamper(drop=LAST_DATA),
        Tamper(drop=END),
        Tamper(duplicate=1),
        Tamper(duplicate=0),
        Tamper(swap=1),
        Tamper(swap=LAST_DATA),
    ],
    ids=[
        "drop-data",
        "drop-last",
        "drop-end",
        "dup-data",
        "dup-offer",
        "swap",
        "swap-end",
    ],
)
def test_dropped_duplicated_or_reordered_record_fails_integrity(
    shared: Pair, tamper: Tamper
) -> None:
    name = f"order-{tamper.drop}-{tamper.duplicate}-{tamper.swap}.bin"
    result = attack(shared, tamper, name)

    result.assert_refused(
        5,
        "receiver: receive: connection failed its integrity check",
        "session.failed",
    )


def test_record_replayed_from_an_earlier_session_fails(
    shared: Pair, layout: Capture
) -> None:
    """Same position, same plaintext, other session: other key, so it fails."""
    earlier = [u for u in layout.units(C2S) if u.kind == "record"]
    tamper = Tamper(replace={1: earlier[1].raw})
    result = attack(shared, tamper, "replayed.bin", seed=1)
    assert result.capture.units(C2S)[3].raw[4:] != earlier[1].raw[4:]

    result.assert_refused(
        5,
        "receiver: receive: connection failed its integrity check",
        "session.failed",
    )


def test_whole_session_replayed_by_a_stranger_writes_nothing(
    shared: Pair, layout: Capture
) -> None:
    watch = LogWatch(shared.receiver)
    before = sorted(p.name for p in shared.area.iterdir())
    sock = socket.create_connection(("127.0.0.1", shared.receiver.port))
    # The receiver may hang up (a reset) before all of it is sent.
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        sock.sendall(layout.direction(C2S))

    assert closed_by_peer(sock, timeout=10)
    sock.close()
    watch.wait_for("WARNING event=session.handshake_failed .*integrity")
    assert sorted(p.name for p in shared.area.iterdir()) == before
    assert leftovers(shared.area) == []
    assert_serving(shared, "after-replay")


def test_flipped_bit_in_the_first_handshake_message(
    shared: Pair, layout: Capture
) -> None:
    """The sender sees the receiver's answer fail; the receiver just sees
    the sender leave."""
    result = attack(shared, Tamper(flip_at=10), "flip-msg1.bin")

    result.assert_refused(
        5, "handshake: connection failed its integrity check", "session.handshake"
    )


def test_flipped_bit_in_the_third_handshake_message(
    shared: Pair, layout: Capture
) -> None:
    """Only the receiver can notice; it cannot tell the sender why (it has
    no key that the sender shares), so the sender sees a lost connection."""
    at = handshake_end(layout, C2S) - 20
    result = attack(shared, Tamper(flip_at=at), "flip-msg3.bin")

    result.assert_refused(3, "receive: connection lost", "session.handshake")
    assert "integrity" in result.watch.lines("WARNING")[0]


# -- tampering with the receiver's stream -------------------------------------


def test_flipped_bit_in_the_second_handshake_message(
    shared: Pair, layout: Capture
) -> None:
    result = attack(shared, Tamper(S2C, flip_at=50), "flip-msg2.bin")

    result.assert_refused(
        5, "handshake: connection failed its integrity check", "session.handshake"
    )


def test_flipped_bit_in_accept_fails_on_the_sender(
    shared: Pair, layout: Capture
) -> None:
    at = record_start(layout, S2C, 0) + 8
    result = attack(shared, Tamper(S2C, flip_at=at), "flip-accept.bin")

    result.assert_refused(
        5, "receive: connection failed its integrity check", "session.failed"
    )


def test_flipped_bit_in_done_is_never_reported_as_success(
    shared: Pair, layout: Capture
) -> None:
    """Done comes after the commit: the copy is there, intact, but the
    sender could not verify it and says so."""
    at = record_start(layout, S2C, 1) + 8
    result = attack(shared, Tamper(S2C, flip_at=at), "flip-done.bin")

    assert result.code == 5, result.stderr
    assert "receive: connection failed its integrity check" in result.stderr
    assert sha256(result.target) == sha256(result.source)
    assert leftovers(shared.area) == []


# -- cutting the connection ---------------------------------------------------


def cut_points(layout: Capture, name: str) -> dict[str, int]:
    first_data = record_start(layout, C2S, 1, name)
    return {
        "mid-first-handshake-message": 20,
        "after-first-handshake-message": 34,
        "mid-third-handshake-message": handshake_end(layout, C2S) - 30,
        "after-handshake": handshake_end(layout, C2S),
        "after-offer": first_data,
        "mid-record": first_data + 300_000,
        "record-boundary": record_start(layout, C2S, 3, name),
        "before-end": record_start(layout, C2S, END, name),
    }


CUTS = [
    "mid-first-handshake-message",
    "after-first-handshake-message",
    "mid-third-handshake-message",
    "after-handshake",
    "after-offer",
    "mid-record",
    "record-boundary",
    "before-end",
]


@pytest.mark.parametrize("where", CUTS)
def test_cut_connection_is_never_success(
    shared: Pair, layout: Capture, where: str
) -> None:
    name = f"cut-{where}.bin"
    at = cut_points(layout, name)[where]
    result = attack(shared, Tamper(cut_at=at), name)

    assert result.code == 3, result.stderr
    assert "connection lost" in result.stderr or "closed the connection" in (
        result.stderr
    )
    result.watch.wait_for(r"WARNING event=session\.(failed|handshake_failed)")
    assert not result.target.exists()
    assert leftovers(shared.area) == []
    assert_serving(shared, f"after-cut-{where}")


def test_cut_after_end_reports_success_only_if_confirmed(
    shared: Pair,
) -> None:
    result = attack(shared, Tamper(cut_after_record=END), "cut-after-end.bin")

    assert "connection lost" in result.stderr
    result.watch.wait_for("WARNING event=session.failed")
    assert_copied_only_if_confirmed(result, 3)


def test_cut_of_the_receivers_answers_is_never_success(
    shared: Pair, layout: Capture
) -> None:
    """Accept arrives, the rest of the answers never do."""
    at = record_start(layout, S2C, 1)
    result = attack(shared, Tamper(S2C, cut_at=at), "cut-answers.bin")

    assert result.code == 3, result.stderr
    assert "connection lost" in result.stderr
    result.watch.wait_for("WARNING event=session.failed")
    assert leftovers(shared.area) == []


@pytest.mark.parametrize(
    ("recv_idle", "put_idle", "message", "logged"),
    [
        (
            "1",
            "10",
            "receiver: sender stopped responding (no data for 1 s)",
            r"sender stopped responding \(no data for 1 s\)",
        ),
        ("10", "1", "receiver stopped responding (no data for 1 s)", "connection lost"),
    ],
    ids=["receiver-gives-up-first", "sender-gives-up-first"],
)
def test_withheld_end_ends_in_an_idle_timeout(
    tmp_path: Path, recv_idle: str, put_idle: str, message: str, logged: str
) -> None:
    """Holding back the last records (End, Close) leaves both sides
    waiting: an idle timeout ends it, and the file is not copied."""
    pair = open_pair(tmp_path, "--idle-timeout", recv_idle)
    try:
        source = random_file(tmp_path / "withheld.bin", 5000)
        watch = LogWatch(pair.receiver)
        end_at = end_record_start(source.name, 5000)
        with Proxy(pair.receiver.port, Tamper(hold_at=end_at)) as proxy:
            done = put_to(pair, proxy.address, "--idle-timeout", put_idle, source)

        assert done.returncode == 3, done.stderr
        assert done.stderr == f"filexfer: error: {message}\n"
        watch.wait_for(f"WARNING event=session.failed .*{logged}")
        assert not (pair.area / "withheld.bin").exists()
        assert leftovers(pair.area) == []
    finally:
        pair.receiver.stop()


def end_record_start(name: str, size: int) -> int:
    """Where the End record starts in a one-file session of a file under
    1 MiB: the handshake (107 bytes), the Offer, one Data record."""
    offer = 4 + 16 + 1 + 29 + 2 + len(name.encode())
    return 107 + offer + 4 + 16 + 1 + size


def test_withheld_close_after_a_confirmed_file_is_a_copy(tmp_path: Path) -> None:
    """Only the sender's Close is dropped: the file was committed and
    confirmed (Done) before, so it counts as copied (exit 0), and the
    failed session is still reported."""
    pair = open_pair(tmp_path, "--idle-timeout", "1")
    try:
        source = random_file(tmp_path / "confirmed.bin", 5000)
        watch = LogWatch(pair.receiver)
        with Proxy(pair.receiver.port, Tamper(drop=3)) as proxy:
            done = put_to(pair, proxy.address, "--idle-timeout", "10", source)

        assert done.returncode == 0, done.stderr
        lines = done.stderr.splitlines()
        assert lines[0] == (
            "filexfer: error: receiver: sender stopped responding (no data for 1 s)"
        )
        assert lines[1].startswith("filexfer: sent 1 file(s), 5,000 bytes in ")
        watch.wait_for("WARNING event=session.failed .*sender stopped responding")
        assert sha256(pair.area / "confirmed.bin") == sha256(source)
        assert leftovers(pair.area) == []
    finally:
        pair.receiver.stop()


# -- a man in the middle with its own key -------------------------------------


def test_receiver_key_swapped_in_the_middle_is_refused(
    shared: Pair, tmp_path: Path
) -> None:
    """Pin the receiver through the proxy, then let the proxy lead to an
    impostor with its own identity: the sender refuses it (exit 4) before
    it reveals who it is."""
    source = random_file(tmp_path / "mitm.bin", 1000)
    with Proxy(shared.receiver.port) as proxy:
        done = put_to(shared, proxy.address, source)
        assert done.returncode == 0, done.stderr

        with HostileServer(tmp_path / "impostor-home", _note_sender) as impostor:
            proxy.target_port = impostor.port
            done = cli(["put", source, proxy.address], shared.sender_home)
            # The sender has exited; its end reaches the impostor a moment
            # later, before which closing the impostor would hide it.
            wait_until(lambda: impostor.errors, "the impostor to see the sender go")

    assert done.returncode == 4, done.stderr
    assert f"receiver key for {proxy.address} has changed" in done.stderr
    assert "filexfer: hint: if the receiver really got a new key" in done.stderr
    assert impostor.errors and isinstance(impostor.errors[0], EOFError)


def _note_sender(_end: object) -> None:
    raise AssertionError("the impostor completed a handshake")


# -- what a recording shows ---------------------------------------------------


def windows(data: bytes, size: int = 16) -> set[bytes]:
    return {data[i : i + size] for i in range(len(data) - size + 1)}


def test_capture_holds_no_content_name_or_identity(shared: Pair) -> None:
    name = "quarterly-secret-plan-7f3a.txt"
    source = random_file(shared.tmp / "src" / name, 200_000, seed=5)
    watch = LogWatch(shared.receiver)
    with Proxy(shared.receiver.port) as proxy:
        done = put_to(shared, proxy.address, source)
        proxy.wait_done()
    assert done.returncode == 0, done.stderr
    wire = proxy.capture.whole()
    content = source.read_bytes()

    assert len(wire) > len(content)  # everything went through the proxy
    assert windows(content).isdisjoint(windows(wire))
    assert name.encode() not in wire
    assert b"quarterly" not in wire
    sender, receiver = (
        load_identity(shared.sender_home),
        load_identity(shared.receiver.home),
    )
    for public in (sender.public, receiver.public):
        assert public not in wire
    log = watch.raw()
    assert windows(content).isdisjoint(windows(log))
    assert b"private" not in log


def test_two_sessions_of_one_file_share_no_ciphertext(shared: Pair) -> None:
    """Fresh keys per connection: the same plaintext never yields the same
    ciphertext, so no keystream is ever reused across sessions."""
    source = random_file(shared.tmp / "src" / "twice.bin", 300_000, seed=6)
    captures = []
    for _ in range(2):
        with Proxy(shared.receiver.port) as proxy:
            done = put_to(shared, proxy.address, "--overwrite", source)
            proxy.wait_done()
        assert done.returncode == 0, done.stderr
        captures.append(proxy.capture)

    first, second = (c.whole() for c in captures)
    assert windows(first).isdisjoint(windows(second))


# -- forward secrecy ----------------------------------------------------------


def test_recorded_session_does_not_open_with_both_identity_keys(
    shared: Pair, layout: Capture
) -> None:
    """Steal both identity keys after the fact: every key schedule that can
    be computed from them fails on the recording."""
    initiator = load_identity(shared.sender_home).private
    responder = load_identity(shared.receiver.home).private
    guesses = static_only_guesses(layout, initiator, responder)

    assert len(guesses) == 5
    for ee in guesses.values():
        with pytest.raises((NoiseError, RecordError)):
            decrypt_capture(layout, initiator, responder, ee)


def test_decrypting_a_recording_works_only_with_an_ephemeral_key() -> None:
    """The control for the test above: the same decryptor opens a session
    whose ephemeral key is known, so its failures above are real."""
    initiator, responder = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ephemeral = X25519PrivateKey.generate()
    capture = _session_in_memory(initiator, responder, ephemeral)
    e_r = capture.units(S2C)[0].raw[2:34]
    ee = ephemeral.exchange(X25519PublicKey.from_public_bytes(e_r))

    opened = decrypt_capture(capture, initiator, responder, ee)
    assert opened.c2s[0] == msgs.Offer(0, 5, 0, 0o644, False, "secret.txt")
    assert opened.c2s[1] == msgs.Data(b"hello")
    assert opened.initiator_key == initiator.public_key().public_bytes_raw()
    for ee in static_only_guesses(capture, initiator, responder).values():
        with pytest.raises((NoiseError, RecordError)):
            decrypt_capture(capture, initiator, responder, ee)


def _session_in_memory(
    initiator: X25519PrivateKey,
    responder: X25519PrivateKey,
    ephemeral: X25519PrivateKey,
) -> Capture:
    """Three handshake messages and two records, framed as on the wire."""
    left = HandshakeState(True, initiator, PROLOGUE, ephemeral=ephemeral)
    right = HandshakeState(False, responder, PROLOGUE)
    hello = msgs.encode(msgs.Hello(msgs.PROTOCOL_VERSION, MAX_PLAINTEXT))
    capture = Capture()

    def frame(message: bytes) -> bytes:
        return len(message).to_bytes(2, "big") + message

    m1 = left.write_message(b"")
    right.read_message(m1)
    m2 = right.write_message(hello)
    left.read_message(m2)
    m3 = left.write_message(hello)
    right.read_message(m3)
    send, _ = left.split()
    assert send.key is not None
    sealer = Sealer(send.key)
    capture.c2s += frame(m1) + frame(m3)
    capture.c2s += sealer.seal(
        msgs.encode(msgs.Offer(0, 5, 0, 0o644, False, "secret.txt"))
    )
    capture.c2s += sealer.seal(msgs.encode(msgs.Data(b"hello")))
    capture.s2c += frame(m2)
    return capture
