"""Tests for filexfer.session: channels, the handshake over TCP, trust checks.

Most tests use a back-to-back pair of channels joined in memory
(tests.helpers.channel_pair); the handshake tests use a loopback listener,
because connect() takes a host and port.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from filexfer import messages as msgs
from filexfer.errors import (
    Code,
    ConnectError,
    FilexferError,
    IntegrityError,
    PeerTimeoutError,
    ProtocolError,
    RefusedError,
    TrustError,
)
from filexfer.keys import Identity
from filexfer.noise import HandshakeState
from filexfer.records import MAX_PLAINTEXT
from filexfer.session import (
    FIRST_BUFFER,
    MAX_HANDSHAKE_MESSAGE,
    MAX_HELD,
    PROLOGUE,
    Channel,
    Timeouts,
    accept,
    connect,
)
from tests.helpers import (
    RawEnd,
    channel_and_raw_end,
    channel_pair,
    closed_port,
    new_identity,
)


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    left, right = channel_pair()
    yield left, right
    left.close()
    right.close()


@pytest.fixture
def raw() -> Iterator[tuple[Channel, RawEnd]]:
    channel, end = channel_and_raw_end(idle=5.0)
    yield channel, end
    channel.close()
    end.close()


CONTROL_MESSAGES: list[msgs.Message] = [
    msgs.Offer(0, 10, -5, 0o644, False, "docs/Übersicht.txt"),
    msgs.Accept(0, 0),
    msgs.Reject(1, Code.EXISTS, "already exists"),
    msgs.End(0, 10, bytes(range(32))),
    msgs.Abort(2, Code.SOURCE_CHANGED, "changed"),
    msgs.Done(0, bytes(range(32))),
    msgs.Close(),
]


# -- channels joined in memory ----------------------------------------------


def test_channel_pair_knows_each_others_key(pair: tuple[Channel, Channel]) -> None:
    left, right = pair

    assert left.peer_key != right.peer_key
    assert left.peer_fingerprint.startswith("SHA256:")
    assert right.peer_short == right.peer_fingerprint[:19]


@pytest.mark.parametrize("message", CONTROL_MESSAGES, ids=lambda m: type(m).__name__)
def test_control_message_crosses_in_both_directions(
    pair: tuple[Channel, Channel], message: msgs.Message
) -> None:
    left, right = pair

    left.send(message)
    assert right.recv() == message
    right.send(message)
    assert left.recv() == message


@pytest.mark.parametrize("size", [0, 1, 4096, 1 << 20])
def test_data_from_the_channel_buffer_arrives_intact(
    pair: tuple[Channel, Channel], size: int
) -> None:
    left, right = pair
    chunk = bytes((i * 13) % 256 for i in range(size))
    received: list[bytes] = []

    def read() -> None:
        message = right.recv()
        assert isinstance(message, msgs.Data)
        received.append(bytes(message.payload))

    reader = threading.Thread(target=read)
    reader.start()
    buffer = left.data_buffer()
    buffer[:size] = chunk
    left.send_data(size)
    reader.join(10)

    assert received == [chunk]


def test_data_buffer_is_one_chunk(pair: tuple[Channel, Channel]) -> None:
    left, _ = pair

    assert len(left.data_buffer()) == left.chunk_size == 1 << 20


def test_chunk_size_follows_the_peers_record_limit() -> None:
    left, right = channel_pair(max_plaintext=1024)
    try:
        assert left.chunk_size == 1023  # one byte goes to the type
        assert len(left.data_buffer()) == 1023
    finally:
        left.close()
        right.close()


def test_many_records_keep_their_order(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    count = 300
    got: list[int] = []

    def read() -> None:
        for _ in range(count):
            message = right.recv()
            assert isinstance(message, msgs.Accept)
            got.append(message.file_id)

    reader = threading.Thread(target=read)
    reader.start()
    for file_id in range(count):
        left.send(msgs.Accept(file_id, 0))
    reader.join(10)

    assert got == list(range(count))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (Code.NOT_AUTHORIZED, TrustError),
        (Code.INTEGRITY, IntegrityError),
        (Code.PROTOCOL, ProtocolError),
        (Code.TIMEOUT, PeerTimeoutError),
        (Code.BUSY, ConnectError),
        (Code.NO_SPACE, RefusedError),
    ],
)
def test_error_message_from_peer_is_raised(
    pair: tuple[Channel, Channel], code: Code, expected: type[FilexferError]
) -> None:
    left, right = pair
    left.send(msgs.Error(int(code), "the reason"))

    with pytest.raises(expected) as caught:
        right.recv()

    assert type(caught.value) is expected
    assert "the reason" in str(caught.value)


# -- a channel fed bad input by hand ----------------------------------------


def test_malformed_message_in_an_authentic_record(raw: tuple[Channel, RawEnd]) -> None:
    channel, end = raw
    end.send_plain(bytes.fromhex("05"))  # no such message type

    with pytest.raises(ProtocolError):
        channel.recv()


def test_forged_record_fails_integrity(raw: tuple[Channel, RawEnd]) -> None:
    channel, end = raw
    end.sock.sendall(struct.pack(">I", 40) + bytes(40))

    with pytest.raises(IntegrityError) as caught:
        channel.recv()

    assert not isinstance(caught.value, ProtocolError)


def test_replayed_record_fails_integrity(raw: tuple[Channel, RawEnd]) -> None:
    channel, end = raw
    record = end.sealer.seal(msgs.encode(msgs.Accept(0, 0)))
    end.sock.sendall(record + record)

    assert channel.recv() == msgs.Accept(0, 0)
    with pytest.raises(IntegrityError):
        channel.recv()


def test_flipped_bit_fails_integrity(raw: tuple[Channel, RawEnd]) -> None:
    channel, end = raw
    record = bytearray(end.sealer.seal(msgs.encode(msgs.Accept(0, 0))))
    record[-3] ^= 0x80
    end.sock.sendall(bytes(record))

    with pytest.raises(IntegrityError):
        channel.recv()


def test_oversized_record_is_rejected_from_its_header() -> None:
    channel, end = channel_and_raw_end(idle=5.0, max_plaintext=1024)
    try:
        # Only the header is sent: waiting for the body would end in a
        # timeout, so an IntegrityError shows it was refused at once.
        end.sock.sendall(struct.pack(">I", 1024 + 16 + 1))
        with pytest.raises(IntegrityError):
            channel.recv()
    finally:
        channel.close()
        end.close()


def test_record_over_the_limit_is_rejected_even_when_sent_whole() -> None:
    channel, end = channel_and_raw_end(idle=5.0, max_plaintext=1024)
    try:
        end.send_plain(b"\x10" + bytes(1100))
        with pytest.raises(IntegrityError):
            channel.recv()
    finally:
        channel.close()
        end.close()


def test_peer_closing_between_records_is_a_lost_connection(
    raw: tuple[Channel, RawEnd],
) -> None:
    """A stream cut at a record edge is not mistaken for an end (C05)."""
    channel, end = raw
    end.send(msgs.Data(b"chunk"))
    end.sock.shutdown(socket.SHUT_WR)

    message = channel.recv()
    assert isinstance(message, msgs.Data)
    with pytest.raises(ConnectError) as caught:
        channel.recv()

    assert "connection lost" in str(caught.value)


def test_peer_closing_mid_record_is_a_lost_connection(
    raw: tuple[Channel, RawEnd],
) -> None:
    channel, end = raw
    record = end.sealer.seal(msgs.encode(msgs.Accept(0, 0)))
    end.sock.sendall(record[:-5])
    end.sock.shutdown(socket.SHUT_WR)

    with pytest.raises(ConnectError):
        channel.recv()


def test_silent_peer_times_out() -> None:
    channel, end = channel_and_raw_end(idle=0.2)
    try:
        with pytest.raises(PeerTimeoutError) as caught:
            channel.recv()
        assert caught.value.exit_code == 3
    finally:
        channel.close()
        end.close()


def test_channel_reads_what_the_raw_end_seals(raw: tuple[Channel, RawEnd]) -> None:
    channel, end = raw
    channel.send(msgs.Offer(0, 1, 2, 0o600, True, "x"))
    end.send(msgs.Accept(0, 0))

    assert end.recv() == msgs.Offer(0, 1, 2, 0o600, True, "x")
    assert channel.recv() == msgs.Accept(0, 0)


# -- the handshake over loopback TCP -----------------------------------------


@dataclass
class Responder:
    """One `accept` call running in a thread on a loopback listener."""

    identity: Identity
    authorized: Callable[[bytes], bool]
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(handshake=5.0))
    max_plaintext: int = MAX_PLAINTEXT
    channel: Channel | None = None
    error: BaseException | None = None
    asked: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _check(self, key: bytes) -> bool:
        self.asked.append(key)
        return self.authorized(key)

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        self.listener.close()
        try:
            self.channel = accept(
                conn, self.identity, self._check, self.timeouts, self.max_plaintext
            )
        except BaseException as exc:
            self.error = exc
            conn.close()

    def wait(self) -> None:
        self.thread.join(10)
        assert not self.thread.is_alive()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


@pytest.fixture
def responders() -> Iterator[Callable[..., Responder]]:
    made: list[Responder] = []

    def make(**kwargs: object) -> Responder:
        responder = Responder(**kwargs)  # type: ignore[arg-type]
        made.append(responder)
        return responder

    yield make
    for responder in made:
        responder.close()


def accept_any(_key: bytes) -> None:
    return None


def test_handshake_authenticates_both_sides(
    responders: Callable[..., Responder],
) -> None:
    sender, receiver = new_identity(), new_identity()
    seen: list[bytes] = []
    responder = responders(
        identity=receiver, authorized=lambda key: key == sender.public
    )

    channel = connect("127.0.0.1", responder.port, sender, seen.append)
    responder.wait()

    assert seen == [receiver.public]
    assert channel.peer_key == receiver.public
    assert responder.channel is not None
    assert responder.channel.peer_key == sender.public
    channel.send(msgs.Close())
    assert responder.channel.recv() == msgs.Close()
    responder.channel.send(msgs.Close())
    assert channel.recv() == msgs.Close()
    channel.close()


def test_both_ends_of_a_connection_send_at_once(
    responders: Callable[..., Responder],
) -> None:
    # With Nagle's algorithm on, a small write waits for the ack of the
    # previous one: about 40 ms, twice, for a one-file put.
    responder = responders(identity=new_identity(), authorized=lambda _k: True)
    channel = connect("127.0.0.1", responder.port, new_identity(), accept_any)
    responder.wait()
    assert responder.channel is not None

    for end in (channel, responder.channel):
        assert end.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    channel.close()


def test_each_connection_gets_fresh_keys(responders: Callable[..., Responder]) -> None:
    # The same message on two connections between the same identities
    # must not produce the same bytes (ephemeral keys, counters from 0).
    sender, receiver = new_identity(), new_identity()
    wires = []
    for _ in range(2):
        responder = responders(identity=receiver, authorized=lambda _k: True)
        channel = connect("127.0.0.1", responder.port, sender, accept_any)
        responder.wait()
        assert responder.channel is not None
        channel.send(msgs.Accept(0, 0))
        wires.append(responder.channel.sock.recv(1024))
        channel.close()

    assert wires[0] != wires[1]
    assert len(wires[0]) == len(wires[1])


def test_initiator_refusing_the_key_never_reveals_itself(
    responders: Callable[..., Responder],
) -> None:
    receiver = new_identity()
    responder = responders(identity=receiver, authorized=lambda _k: True)

    def refuse(key: bytes) -> None:
        raise TrustError("not the pinned key")

    with pytest.raises(TrustError):
        connect("127.0.0.1", responder.port, new_identity(), refuse)
    responder.wait()

    assert responder.asked == []  # message 3 (our identity) was never sent
    assert isinstance(responder.error, ConnectError)
    assert responder.channel is None


def test_unauthorized_sender_is_told_and_refused(
    responders: Callable[..., Responder],
) -> None:
    sender, receiver = new_identity(), new_identity()
    responder = responders(identity=receiver, authorized=lambda _k: False)

    channel = connect("127.0.0.1", responder.port, sender, accept_any)
    responder.wait()

    assert responder.asked == [sender.public]
    assert isinstance(responder.error, TrustError)
    with pytest.raises(TrustError) as caught:
        channel.recv()
    assert "not authorized" in str(caught.value)
    channel.close()


def raw_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def test_oversized_handshake_frame_is_refused_unread(
    responders: Callable[..., Responder],
) -> None:
    responder = responders(identity=new_identity(), authorized=lambda _k: True)
    client = raw_client(responder.port)
    client.sendall(struct.pack(">H", MAX_HANDSHAKE_MESSAGE + 1))  # no body

    responder.wait()

    assert isinstance(responder.error, ProtocolError)
    assert responder.asked == []
    client.close()


def test_garbage_first_message_fails_the_handshake(
    responders: Callable[..., Responder],
) -> None:
    responder = responders(identity=new_identity(), authorized=lambda _k: True)
    client = raw_client(responder.port)
    client.sendall(struct.pack(">H", 5) + b"hello")

    responder.wait()

    assert isinstance(responder.error, IntegrityError)
    client.close()


def test_silent_stranger_is_dropped_after_the_handshake_timeout(
    responders: Callable[..., Responder],
) -> None:
    responder = responders(
        identity=new_identity(),
        authorized=lambda _k: True,
        timeouts=Timeouts(handshake=0.3),
    )
    client = raw_client(responder.port)

    responder.wait()

    assert isinstance(responder.error, PeerTimeoutError)
    client.close()


def handshake_by_hand(port: int, hello: bytes) -> socket.socket:
    """Run the initiator's side with a chosen Hello payload in message 3."""
    sock = raw_client(port)
    state = HandshakeState(True, new_identity().private, PROLOGUE)

    def send(payload: bytes) -> None:
        message = state.write_message(payload)
        sock.sendall(struct.pack(">H", len(message)) + message)

    send(b"")
    (length,) = struct.unpack(">H", sock.recv(2, socket.MSG_WAITALL))
    state.read_message(sock.recv(length, socket.MSG_WAITALL))
    send(hello)
    return sock


@pytest.mark.parametrize(
    "hello",
    [
        msgs.Hello(2, MAX_PLAINTEXT),
        msgs.Hello(1, 1023),
        msgs.Hello(1, MAX_PLAINTEXT + 1),
        msgs.Accept(0, 0),
    ],
    ids=["version 2", "records too small", "records too big", "not a hello"],
)
def test_unusable_hello_ends_the_handshake(
    responders: Callable[..., Responder], hello: msgs.Message
) -> None:
    responder = responders(identity=new_identity(), authorized=lambda _k: True)

    client = handshake_by_hand(responder.port, msgs.encode(hello))
    responder.wait()

    assert isinstance(responder.error, ProtocolError)
    assert responder.channel is None
    client.close()


def test_responder_announces_its_record_limit(
    responders: Callable[..., Responder],
) -> None:
    responder = responders(
        identity=new_identity(), authorized=lambda _k: True, max_plaintext=4096
    )

    channel = connect("127.0.0.1", responder.port, new_identity(), accept_any)
    responder.wait()

    assert channel.chunk_size == 4095
    channel.close()


def test_connect_to_a_closed_port_is_a_connect_error() -> None:
    port = closed_port()

    with pytest.raises(ConnectError) as caught:
        connect("127.0.0.1", port, new_identity(), accept_any)

    assert type(caught.value) is ConnectError
    assert f"127.0.0.1:{port}" in str(caught.value)


# -- corked replies --------------------------------------------------------


def _pending(sock: socket.socket) -> int:
    """Bytes waiting to be read on sock, without reading them."""
    readable, _, _ = select.select([sock], [], [], 0)
    return len(sock.recv(1 << 20, socket.MSG_PEEK)) if readable else 0


def test_corked_messages_wait_for_flush_and_keep_their_order(
    pair: tuple[Channel, Channel],
) -> None:
    left, right = pair
    right.cork()
    for file_id in range(5):
        right.send(msgs.Accept(file_id, 0))
    assert _pending(left.sock) == 0

    right.flush()

    assert [left.recv() for _ in range(5)] == [msgs.Accept(i, 0) for i in range(5)]
    right.send(msgs.Close())  # no longer corked: goes at once
    assert left.recv() == msgs.Close()


def test_cork_never_holds_more_than_its_limit(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    reason = "r" * 1000
    count = MAX_HELD // 1000 + 5
    received: list[msgs.Message] = []
    reader = threading.Thread(
        target=lambda: received.extend(left.recv() for _ in range(count))
    )
    reader.start()
    right.cork()
    for file_id in range(count):
        right.send(msgs.Reject(file_id, Code.BAD_PATH, reason))
    # Past the limit everything went out without a flush.
    reader.join(timeout=20)
    assert not reader.is_alive()
    assert received == [msgs.Reject(i, Code.BAD_PATH, reason) for i in range(count)]


# -- buffered input --------------------------------------------------------


def test_small_and_large_records_read_through_the_inbox(
    pair: tuple[Channel, Channel],
) -> None:
    """Many small records, then one larger than the inbox, then more."""
    left, right = pair
    chunk = bytes(range(256)) * (left.chunk_size // 256)
    expected: list[msgs.Message] = [msgs.Accept(i, 0) for i in range(300)]
    sender = threading.Thread(target=lambda: _send_mixed(left, chunk))
    sender.start()
    got = [right.recv() for _ in range(300)]
    data = right.recv()
    assert isinstance(data, msgs.Data)
    assert bytes(data.payload) == chunk  # valid only until the next recv
    tail = [right.recv() for _ in range(3)]
    sender.join(timeout=20)
    assert got == expected
    assert tail == [msgs.Done(i, bytes(32)) for i in range(3)]


def _send_mixed(channel: Channel, chunk: bytes) -> None:
    channel.cork()
    for file_id in range(300):
        channel.send(msgs.Accept(file_id, 0))
    channel.flush()
    buffer = channel.data_buffer()
    buffer[: len(chunk)] = chunk
    channel.send_data(len(chunk))
    channel.cork()
    for file_id in range(3):
        channel.send(msgs.Done(file_id, bytes(32)))
    channel.flush()


def test_input_waiting_counts_what_was_already_read(
    pair: tuple[Channel, Channel],
) -> None:
    left, right = pair
    left.cork()
    left.send(msgs.Accept(0, 0))
    left.send(msgs.Accept(1, 0))
    left.flush()
    assert right.input_waiting(5)
    assert right.recv() == msgs.Accept(0, 0)
    # Both records came in one read: the second is buffered, the socket empty.
    assert _pending(right.sock) == 0
    assert right.input_waiting()
    assert right.recv() == msgs.Accept(1, 0)
    assert not right.input_waiting()


def test_input_waiting_works_on_a_descriptor_past_1023(
    pair: tuple[Channel, Channel],
) -> None:
    """A daemon with a raised descriptor limit has sockets numbered 1024
    and up, where select() cannot look."""
    left, right = pair
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.fail(f"this test needs a descriptor limit of 2048 (hard {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    high = os.dup2(right.sock.fileno(), 1500)
    moved = right.sock
    right.sock = socket.socket(fileno=high)
    try:
        assert not right.input_waiting()
        left.send(msgs.Accept(0, 0))
        assert right.input_waiting(5)
        assert right.recv() == msgs.Accept(0, 0)
    finally:
        right.sock.close()
        right.sock = moved
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_records_of_any_size_in_any_order_arrive_intact(
    pair: tuple[Channel, Channel],
) -> None:
    """Buffers start small and grow; a header after a large record is read
    on its own.  Neither may lose or mix up a byte."""
    left, right = pair
    full = left.chunk_size
    sizes = [0, 1, FIRST_BUFFER - 1, FIRST_BUFFER, FIRST_BUFFER + 1, 5, full]
    sizes += [full, 3, full - 1, FIRST_BUFFER, full, 0]
    chunks = [bytes((i * 7 + n) % 251 for i in range(n)) for n in sizes]
    received: list[bytes | msgs.Message] = []

    def read() -> None:
        for _ in sizes:
            data = right.recv()
            assert isinstance(data, msgs.Data)
            received.append(bytes(data.payload))
            received.append(right.recv())

    reader = threading.Thread(target=read)
    reader.start()
    for index, chunk in enumerate(chunks):
        buffer = left.data_buffer(len(chunk))
        assert len(buffer) >= len(chunk)
        buffer[: len(chunk)] = chunk
        left.send_data(len(chunk))
        left.send(msgs.Accept(index, 0))
    reader.join(timeout=20)

    assert not reader.is_alive()
    expected: list[bytes | msgs.Message] = []
    for index, chunk in enumerate(chunks):
        expected += [chunk, msgs.Accept(index, 0)]
    assert received == expected


def test_a_data_buffer_asked_for_little_starts_small(
    pair: tuple[Channel, Channel],
) -> None:
    left, _ = pair

    assert len(left.data_buffer(4096)) == FIRST_BUFFER
    assert len(left.data_buffer(FIRST_BUFFER + 1)) == left.chunk_size
    assert len(left.data_buffer(10)) == left.chunk_size  # never shrinks


def test_a_long_reason_is_cut_to_what_the_peer_takes() -> None:
    """Reasons name files, and names may be long: a refusal must still
    fit one message and the peer's records, cut on a character boundary."""
    left, right = channel_pair(max_plaintext=1024)
    try:
        reason = "é" * 3000  # 6,000 bytes of UTF-8
        left.send(msgs.Reject(7, Code.BAD_PATH, reason))
        got = right.recv()
        left.send(msgs.Abort(8, Code.IO_ERROR, "short"))
        short = right.recv()
    finally:
        left.close()
        right.close()

    assert isinstance(got, msgs.Reject) and got.file_id == 7
    assert reason.startswith(got.reason)
    assert 900 <= len(got.reason.encode()) <= 1024 - 64
    assert short == msgs.Abort(8, Code.IO_ERROR, "short")
