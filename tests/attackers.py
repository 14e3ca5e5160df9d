"""Attackers for the security tests, all on 127.0.0.1 only.

- :class:`Proxy`: an on-path attacker between ``put`` and ``recv``. It
  records both directions, splits them into handshake frames and records,
  and can flip a bit, drop, duplicate, swap or replace a record, hold the
  stream at a byte offset, or cut the connection at one.
- :class:`HostileClient`: an authorized sender built from the package's own
  handshake, record and message layers that sends whatever a test wants.
- :class:`HostileServer`: the same on the receiving side, for attacks on
  ``put`` (silent listener, silent session, hostile reasons).
- Strangers: :func:`stranger`, :func:`half_handshake`, :class:`Crowd`.
- :func:`decrypt_capture`: an offline attempt to read a recorded session.
- :class:`SmallDiskReceiver`: a real receiver whose root is a small disk.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from filexfer import messages as msgs
from filexfer.keys import Identity, allow_sender, fingerprint, load_identity
from filexfer.noise import PROTOCOL_NAME, HandshakeState, SymmetricState
from filexfer.records import MAX_PLAINTEXT, RecordDecoder, Sealer
from filexfer.session import MAX_HANDSHAKE_MESSAGE, PROLOGUE
from tests.helpers import _LISTENING, Pair, Receiver, base_env, cli

LOOPBACK = "127.0.0.1"
C2S, S2C = "c2s", "s2c"
# Handshake frames each direction carries before its records start.
HANDSHAKE_FRAMES = {C2S: 2, S2C: 1}
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


# -- a receiver, a sender, and the receiver's log -----------------------------


def open_pair(
    tmp: Path, *extra: str, kind: type[Receiver] = Receiver, **fields: object
) -> Pair:
    """Like the make_pair fixture, for any scope and any Receiver class.

    Identities are made in-process, which is quicker than three CLI runs.
    The receiver runs with ``--shared``: the sender's files land in its
    --dir itself, which these attacks and faults look at directly.
    """
    sender_home, receiver_home = tmp / "sender-home", tmp / "receiver-home"
    sender = load_identity(sender_home)
    allow_sender(sender.public_line, "test", receiver_home)
    receiver = kind(
        home=receiver_home,
        root=tmp / "out",
        log_path=tmp / "recv.log",
        extra=("--shared", *extra),
        **fields,  # type: ignore[arg-type]
    )
    receiver.start()
    receiver_fp = fingerprint(load_identity(receiver_home).public)
    return Pair(sender_home, receiver, tmp, receiver_fp)


def put_to(
    pair: Pair, address: str, *args: str | os.PathLike[str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``filexfer put ARGS... ADDRESS`` (a proxy, say), pinned by fingerprint."""
    return cli(
        ["put", "--fingerprint", pair.receiver_fingerprint, *args, address],
        pair.sender_home,
        timeout=timeout,
    )


class LogWatch:
    """The part of a receiver's log written since this watch was made."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.offset = len(receiver.log_path.read_bytes())

    def raw(self) -> bytes:
        return self.receiver.log_path.read_bytes()[self.offset :]

    def text(self) -> str:
        return self.raw().decode("utf-8", "replace")

    def lines(self, level: str = "", event: str = "") -> list[str]:
        return [
            line
            for line in self.text().splitlines()
            if (not level or f" {level} " in line) and f"event={event}" in line
        ]

    def wait_lines(
        self, level: str, event: str, count: int, timeout: float = 20
    ) -> list[str]:
        """Wait until at least count lines of level and event were logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines(level, event)
            if len(lines) >= count:
                return lines
            time.sleep(0.02)
        raise AssertionError(f"not {count} {event} lines; log:\n{self.text()}")

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text())
            if match:
                return match
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not logged; log:\n{self.text()}")


# -- framing ------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One handshake frame or one record, as it was on the wire."""

    kind: str  # "handshake" or "record"
    index: int  # frame number, or the record's counter
    start: int  # offset of its first byte in the direction's stream
    raw: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.raw)


class UnitSplitter:
    """Cuts one direction's byte stream into handshake frames and records."""

    def __init__(self, direction: str) -> None:
        self.frames_left = HANDSHAKE_FRAMES[direction]
        self.buffer = bytearray()
        self.offset = 0
        self.frames = 0
        self.records = 0

    def feed(self, data: bytes) -> list[Unit]:
        self.buffer += data
        units = []
        while (unit := self._take()) is not None:
            units.append(unit)
        return units

    def _take(self) -> Unit | None:
        header = _U16 if self.frames_left else _U32
        if len(self.buffer) < header.size:
            return None
        size = header.size + header.unpack(self.buffer[: header.size])[0]
        if len(self.buffer) < size:
            return None
        raw = bytes(self.buffer[:size])
        del self.buffer[:size]
        unit = self._unit(raw)
        self.offset += size
        return unit

    def _unit(self, raw: bytes) -> Unit:
        if self.frames_left:
            self.frames_left -= 1
            self.frames += 1
            return Unit("handshake", self.frames - 1, self.offset, raw)
        self.records += 1
        return Unit("record", self.records - 1, self.offset, raw)


def split_units(stream: bytes, direction: str) -> list[Unit]:
    """Every complete unit of a recorded direction."""
    return UnitSplitter(direction).feed(stream)


# -- the on-path proxy --------------------------------------------------------


@dataclass
class Tamper:
    """What the proxy does to one direction (records counted from 0)."""

    direction: str = C2S
    flip_at: int | None = None  # stream offset of a byte whose low bit flips
    drop: int | None = None
    duplicate: int | None = None
    swap: int | None = None  # records swap and swap + 1 change places
    replace: dict[int, bytes] = field(default_factory=dict)
    cut_at: int | None = None  # forward this many bytes, then cut both ways
    cut_after_record: int | None = None
    hold_at: int | None = None  # forward this many bytes, then wait
    hold_at_boundary: bool = False  # wait after the record that crosses hold_at


@dataclass
class Capture:
    """Everything each side sent on one connection, before any tampering."""

    c2s: bytearray = field(default_factory=bytearray)
    s2c: bytearray = field(default_factory=bytearray)

    def direction(self, name: str) -> bytes:
        return bytes(self.c2s if name == C2S else self.s2c)

    def units(self, name: str) -> list[Unit]:
        return split_units(self.direction(name), name)

    def whole(self) -> bytes:
        return bytes(self.c2s) + bytes(self.s2c)


class _Link:
    """One proxied connection: two sockets and a pump per direction."""

    def __init__(self, proxy: Proxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = socket.create_connection((LOOPBACK, proxy.target_port))
        self.tamper = proxy.tamper  # the one in force when it was accepted
        self.capture = Capture()
        self.cut = threading.Event()
        self.threads = [
            threading.Thread(target=self._pump, args=(C2S,), daemon=True),
            threading.Thread(target=self._pump, args=(S2C,), daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _pump(self, direction: str) -> None:
        src, dst = (
            (self.client, self.server)
            if direction == C2S
            else (self.server, self.client)
        )
        tamper = self.tamper if self.tamper.direction == direction else None
        out = _Output(self, dst, tamper)
        splitter = UnitSplitter(direction)
        record = self.capture.c2s if direction == C2S else self.capture.s2c
        try:
            while not self.cut.is_set():
                data = src.recv(1 << 16)
                if not data:
                    break
                record.extend(data)
                for unit in splitter.feed(data):
                    out.unit(unit)
            dst.shutdown(socket.SHUT_WR)  # an end passes on as an end
        except OSError:
            self.cut_both()  # a reset passes on as a cut

    def cut_both(self) -> None:
        self.cut.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut_both()
        for sock in (self.client, self.server):
            sock.close()


class _Output:
    """Applies a Tamper to units on their way out of one pump."""

    def __init__(self, link: _Link, dst: socket.socket, tamper: Tamper | None) -> None:
        self.link = link
        self.dst = dst
        self.tamper = tamper
        self.sent = 0
        self.held: list[Unit] = []

    def unit(self, unit: Unit) -> None:
        tamper = self.tamper
        if tamper is None:
            self._write(unit.raw)
            return
        raw = self._flipped(unit, tamper)
        if unit.kind != "record":
            self._write(raw)
            return
        self._record(unit, raw, tamper)

    def _flipped(self, unit: Unit, tamper: Tamper) -> bytes:
        if tamper.flip_at is None or not unit.start <= tamper.flip_at < unit.end:
            return unit.raw
        raw = bytearray(unit.raw)
        raw[tamper.flip_at - unit.start] ^= 0x01
        return bytes(raw)

    def _record(self, unit: Unit, raw: bytes, tamper: Tamper) -> None:
        index = unit.index
        if tamper.swap == index:
            self.held.append(Unit(unit.kind, index, unit.start, raw))
            return
        if index in tamper.replace:
            raw = tamper.replace[index]
        if tamper.drop != index:
            self._write(raw)
        if tamper.duplicate == index:
            self._write(raw)
        for held in self.held:
            self._write(held.raw)
        self.held.clear()
        if tamper.cut_after_record == index:
            self.link.cut_both()

    def _write(self, raw: bytes) -> None:
        if self.link.cut.is_set():
            return
        raw = self._hold_if_due(raw)
        if self.link.cut.is_set():  # cut while held: the rest never goes
            return
        tamper = self.tamper
        if tamper is not None and tamper.cut_at is not None:
            if self.sent + len(raw) >= tamper.cut_at:
                self.dst.sendall(raw[: tamper.cut_at - self.sent])
                self.sent = tamper.cut_at
                self.link.cut_both()
                return
        self.dst.sendall(raw)
        self.sent += len(raw)

    def _hold_if_due(self, raw: bytes) -> bytes:
        tamper, proxy = self.tamper, self.link.proxy
        if tamper is None or tamper.hold_at is None or proxy.released.is_set():
            return raw
        if tamper.hold_at_boundary:
            if self.sent < tamper.hold_at:
                return raw
            proxy.holding.set()
            proxy.released.wait()
            return raw
        if self.sent + len(raw) < tamper.hold_at:
            return raw
        head = tamper.hold_at - self.sent
        self.dst.sendall(raw[:head])
        self.sent += head
        proxy.holding.set()
        proxy.released.wait()
        return raw[head:]


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a receiver's port.

    Every connection it accepts is relayed to the target and recorded in
    ``links[i].capture``; ``tamper`` applies to every connection.
    """

    def __init__(self, target_port: int, tamper: Tamper | None = None) -> None:
        self.target_port = target_port
        self.tamper = tamper or Tamper()
        self.links: list[_Link] = []
        self._starting = threading.Lock()
        self.holding = threading.Event()
        self.released = threading.Event()
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def capture(self) -> Capture:
        assert self.links, "no connection went through the proxy"
        return self.links[-1].capture

    def release(self) -> None:
        """Let a held stream continue."""
        self.released.set()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                # Listed and started in one step: a test that sees the
                # sender end (a cut, say) then finds every connection.
                with self._starting:
                    link = _Link(self, client)
                    self.links.append(link)
                    link.start()

    def wait_done(self, timeout: float = 30) -> None:
        """Wait until both pumps of every connection have finished."""
        deadline = time.monotonic() + timeout
        with self._starting:
            links = list(self.links)
        for link in links:
            for thread in link.threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Cut every connection (a held stream goes no further), then stop."""
        self.listener.close()
        for link in self.links:
            link.close()
        self.released.set()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- handshake helpers --------------------------------------------------------


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_U16.pack(len(payload)) + payload)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return bytes(data)


def recv_frame(sock: socket.socket) -> bytes:
    (size,) = _U16.unpack(recv_exact(sock, 2))
    assert size <= MAX_HANDSHAKE_MESSAGE, "peer sent an oversized handshake frame"
    return recv_exact(sock, size)


def _hello(max_plaintext: int = MAX_PLAINTEXT) -> bytes:
    return msgs.encode(msgs.Hello(msgs.PROTOCOL_VERSION, max_plaintext))


class Endpoint:
    """Sends and receives records on a socket after a handshake."""

    sock: socket.socket
    sealer: Sealer
    decoder: RecordDecoder

    def send(self, *messages: msgs.Message) -> None:
        self.sock.sendall(b"".join(self.sealer.seal(msgs.encode(m)) for m in messages))

    def send_plain(self, plaintext: bytes) -> None:
        """Seal any plaintext, well-formed message or not."""
        self.sock.sendall(self.sealer.seal(plaintext))

    def send_raw(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def recv(self, timeout: float = 20) -> msgs.Message | None:
        """The next message, or None when the peer closed the connection."""
        self.sock.settimeout(timeout)
        while True:
            plaintext = self.decoder.next_plaintext()
            if plaintext is not None:
                return msgs.decode(plaintext)
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.decoder.feed(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# -- the hostile authorized sender --------------------------------------------


class HostileClient(Endpoint):
    """A sender that handshakes properly, then sends what its test says.

    Args:
        port: the receiver's port on 127.0.0.1.
        home: config home whose identity it uses (authorized or not).
        max_plaintext: the record size it announces in its Hello.
    """

    def __init__(
        self, port: int, home: Path, max_plaintext: int = MAX_PLAINTEXT
    ) -> None:
        self.identity = load_identity(home)
        self.sock = socket.create_connection((LOOPBACK, port), timeout=20)
        state = HandshakeState(True, self.identity.private, PROLOGUE)
        send_frame(self.sock, state.write_message(b""))
        payload = state.read_message(recv_frame(self.sock))
        self.receiver_hello = msgs.decode(payload)
        self.receiver_key = state.remote_static
        send_frame(self.sock, state.write_message(_hello(max_plaintext)))
        send, recv = state.split()
        assert send.key is not None and recv.key is not None
        self.sealer = Sealer(send.key)
        self.decoder = RecordDecoder(recv.key)
        self.next_id = 0

    def offer(
        self, name: str, size: int, *, overwrite: bool = False, mode: int = 0o644
    ) -> int:
        """Send one Offer with the next id; return that id."""
        file_id = self.next_id
        self.next_id += 1
        self.send(
            msgs.Offer(file_id, size, 1_700_000_000 * 10**9, mode, overwrite, name)
        )
        return file_id

    def send_file(
        self, name: str, data: bytes, *, overwrite: bool = False
    ) -> list[msgs.Message | None]:
        """Offer, and if accepted stream, a whole honest file.

        Returns the decision and, for an accepted file, the final answer.
        """
        file_id = self.offer(name, len(data), overwrite=overwrite)
        decision = self.recv()
        if not isinstance(decision, msgs.Accept):
            return [decision]
        self.stream(file_id, data)
        return [decision, self.recv()]

    def stream(self, file_id: int, data: bytes, digest: bytes | None = None) -> None:
        """Data records for data, then End with its (or the given) digest."""
        view = memoryview(data)
        for start in range(0, len(data), 1 << 20):
            self.send(msgs.Data(bytes(view[start : start + (1 << 20)])))
        digest = blake3(data).digest() if digest is None else digest
        self.send(msgs.End(file_id, len(data), digest))

    def finish(self) -> msgs.Message | None:
        """Send Close and return the receiver's answer."""
        self.send(msgs.Close())
        return self.recv()


def assert_serving(pair: Pair, name: str) -> None:
    """An authorized upload still works: one whole session, checked on disk.

    The same protocol as ``put``, without a process start, so that every
    attack can afford to check that the daemon survived it.
    """
    data = random.Random(name).randbytes(5000)
    end = HostileClient(pair.receiver.port, pair.sender_home)
    try:
        answer = end.send_file(name, data)
        assert [type(m) for m in answer] == [msgs.Accept, msgs.Done], answer
        assert end.finish() == msgs.Close()
    finally:
        end.close()
    assert (pair.area / name).read_bytes() == data


# -- the hostile receiver -----------------------------------------------------


class _ServerSide(Endpoint):
    def __init__(self, sock: socket.socket, identity: Identity) -> None:
        self.sock = sock
        state = HandshakeState(False, identity.private, PROLOGUE)
        state.read_message(recv_frame(sock))
        send_frame(sock, state.write_message(_hello()))
        state.read_message(recv_frame(sock))
        send, recv = state.split()
        assert send.key is not None and recv.key is not None
        self.sealer = Sealer(send.key)
        self.decoder = RecordDecoder(recv.key)


Script = Callable[[Endpoint], None]


class HostileServer:
    """Listens on 127.0.0.1 and plays a receiver that misbehaves.

    With ``script=None`` it accepts and never says a word; otherwise it
    completes the handshake with the identity in home and runs the script
    on the connection, then holds it open until closed.
    """

    def __init__(self, home: Path, script: Script | None = None) -> None:
        self.identity = load_identity(home)
        self.script = script
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.conns.append(conn)
                threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            if self.script is not None:
                self.script(_ServerSide(conn, self.identity))
        except Exception as exc:
            self.errors.append(exc)
        self.stop.wait()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for conn in self.conns:
            conn.close()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- strangers ----------------------------------------------------------------


def stranger(port: int, payload: bytes = b"") -> socket.socket:
    """Connect, send payload (maybe nothing), and return the open socket."""
    sock = socket.create_connection((LOOPBACK, port), timeout=20)
    if payload:
        with contextlib.suppress(OSError):
            sock.sendall(payload)
    return sock


def half_handshake(port: int) -> socket.socket:
    """Send a valid first handshake message, read the answer, then go quiet.

    A receiver with no handshake slot left hangs up instead of answering;
    the socket is returned all the same.
    """
    sock = socket.create_connection((LOOPBACK, port), timeout=20)
    state = HandshakeState(True, X25519PrivateKey.generate(), PROLOGUE)
    with contextlib.suppress(EOFError, OSError):
        send_frame(sock, state.write_message(b""))
        recv_frame(sock)
    return sock


def garbage(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes sock within timeout (reading what it sends)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(1 << 16):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


class Crowd:
    """Many stranger connections held open together, closed on exit."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def add(self, sock: socket.socket) -> None:
        self.socks.append(sock)

    def closed_count(self, timeout: float = 0.2) -> int:
        return sum(closed_by_peer(sock, timeout) for sock in self.socks)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()

    def __enter__(self) -> Crowd:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- offline decryption of a recorded session ---------------------------------


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    return private.exchange(X25519PublicKey.from_public_bytes(public))


@dataclass
class Opened:
    """What a successful decryption of a capture recovered."""

    initiator_key: bytes
    responder_key: bytes
    c2s: list[msgs.Message]
    s2c: list[msgs.Message]


def decrypt_capture(
    capture: Capture,
    initiator_static: X25519PrivateKey,
    responder_static: X25519PrivateKey,
    ee: bytes,
) -> Opened:
    """Replay the XX key schedule over a recording and open every record.

    Everything except ``ee`` (the DH of the two ephemeral keys) can be
    computed from the recording plus both static private keys; ``ee`` is
    what an attacker has to guess.  Raises NoiseError or RecordError when
    the guess is wrong.
    """
    m1, m3 = (unit.raw[2:] for unit in capture.units(C2S)[:2])
    m2 = capture.units(S2C)[0].raw[2:]
    state = SymmetricState(PROTOCOL_NAME)
    state.mix_hash(PROLOGUE)
    state.mix_hash(m1[:32])
    state.decrypt_and_hash(m1[32:])
    state.mix_hash(m2[:32])
    state.mix_key(ee)
    responder_key = state.decrypt_and_hash(m2[32:80])
    state.mix_key(_dh(responder_static, m1[:32]))
    state.decrypt_and_hash(m2[80:])
    initiator_key = state.decrypt_and_hash(m3[:48])
    state.mix_key(_dh(initiator_static, m2[:32]))
    state.decrypt_and_hash(m3[48:])
    c1, c2 = state.split()
    assert c1.key is not None and c2.key is not None
    return Opened(
        initiator_key,
        responder_key,
        _open_records(capture, C2S, c1.key),
        _open_records(capture, S2C, c2.key),
    )


def _open_records(capture: Capture, direction: str, key: bytes) -> list[msgs.Message]:
    decoder = RecordDecoder(key)
    for unit in capture.units(direction)[HANDSHAKE_FRAMES[direction] :]:
        decoder.feed(unit.raw)
    out = []
    while (plaintext := decoder.next_plaintext()) is not None:
        out.append(msgs.decode(bytes(plaintext)))
    return out


def static_only_guesses(
    capture: Capture,
    initiator_static: X25519PrivateKey,
    responder_static: X25519PrivateKey,
) -> dict[str, bytes]:
    """Every ``ee`` an attacker holding both identity keys could compute."""
    e_i = capture.units(C2S)[0].raw[2:34]
    e_r = capture.units(S2C)[0].raw[2:34]
    s_i = initiator_static.public_key().public_bytes_raw()
    s_r = responder_static.public_key().public_bytes_raw()
    return {
        "s_i*e_r": _dh(initiator_static, e_r),
        "s_r*e_i": _dh(responder_static, e_i),
        "s_i*s_r": _dh(initiator_static, s_r),
        "s_r*s_i": _dh(responder_static, s_i),
        "zeros": bytes(32),
    }


# -- a receiver on a small disk -----------------------------------------------


# Used when this machine does not let the test mount a tmpfs in a private
# namespace: the receiver runs with storage's os.write failing with ENOSPC
# once the file named by FILEXFER_TEST_FULL exists, and with its free space
# reported as FILEXFER_TEST_CAPACITY minus what the root holds.
_HOOKED_RECV = """\
import errno, os, sys, types
import filexfer.storage as storage
from filexfer.cli import main

flag = os.environ["FILEXFER_TEST_FULL"]
capacity = int(os.environ["FILEXFER_TEST_CAPACITY"])

def write(fd, data):
    if os.path.exists(flag):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return os.write(fd, data)

def used(root):
    total = 0
    for top, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except OSError:
                pass
    return total

def free_bytes(self):
    return max(0, capacity - used(self.root))

hooked = types.ModuleType("os")
hooked.__dict__.update(os.__dict__)
hooked.write = write
storage.os = hooked
storage.LocalStore.free_bytes = free_bytes
main(sys.argv[1:])
"""


def can_mount_tmpfs(where: Path) -> bool:
    """Whether this test may mount a tmpfs in a private mount namespace."""
    mount = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(where))}"
    try:
        probe = subprocess.run(
            ["unshare", "-m", "sh", "-c", mount], capture_output=True, check=False
        )
    except OSError:
        return False
    return probe.returncode == 0


@dataclass
class SmallDiskReceiver(Receiver):
    """A receiver whose --dir is a disk of ``capacity`` bytes.

    Preferably a tmpfs mounted in a private mount namespace made for it
    (``unshare -m``); its files are reached through ``/proc/PID/root``.
    Otherwise (``hooked=True``, or no mount allowed) a write hook: see
    ``_HOOKED_RECV``.  :meth:`fill` makes the disk full.
    """

    capacity: int = 8 << 20
    hooked: bool = False

    def start(self, timeout: float = 20) -> SmallDiskReceiver:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.hooked and not can_mount_tmpfs(self.root):
            self.hooked = True
        log = open(self.log_path, "ab")
        self._log = log
        env = base_env(self.home)
        env["FILEXFER_TEST_FULL"] = str(self.root.parent / "disk-is-full")
        env["FILEXFER_TEST_CAPACITY"] = str(self.capacity)
        self.process = subprocess.Popen(
            self._command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        self._wait_listening(timeout)
        return self

    def _command(self) -> list[str]:
        recv = ["recv", "--dir", str(self.root), "--listen", "127.0.0.1:0"]
        recv += list(self.extra)
        if self.hooked:
            return [sys.executable, "-c", _HOOKED_RECV, *recv]
        where = shlex.quote(str(self.root))
        mount = f"mount -t tmpfs -o size={self.capacity} tmpfs {where}"
        python = shlex.join([sys.executable, "-m", "filexfer", *recv])
        return ["unshare", "-m", "sh", "-c", f"{mount} && exec {python}"]

    def _wait_listening(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                self.port = int(match.group(1))
                return
            if self.process.poll() is not None:
                raise AssertionError(f"receiver exited early:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"receiver did not start:\n{self.log()}")

    @property
    def disk(self) -> Path:
        """The root as the receiver sees it (only while it runs)."""
        if self.hooked:
            return self.root
        return Path(f"/proc/{self.pid}/root{self.root}")

    def fill(self) -> None:
        """Use up every byte that is left on the disk."""
        if self.hooked:
            (self.root.parent / "disk-is-full").touch()
            return
        block = b"\0" * (64 << 10)
        fd = os.open(self.disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while os.write(fd, block):
                    pass
        finally:
            os.close(fd)

    def unfill(self) -> None:
        if self.hooked:
            (self.root.parent / "disk-is-full").unlink()
            return
        (self.disk / "filler").unlink()


@contextlib.contextmanager
def running(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Kill (by pid) whatever a test started, if it is still running."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def put_process(
    args: Sequence[str | os.PathLike[str]], home: Path
) -> subprocess.Popen[str]:
    """``filexfer ARGS`` started in the background (output captured)."""
    return subprocess.Popen(
        [sys.executable, "-m", "filexfer", *map(str, args)],
        env=base_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
