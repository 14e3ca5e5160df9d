"""The channel: one TCP socket carrying a Noise handshake, then records.

How this works
--------------
The initiator (``put``) connects and runs Noise_XX; the responder
(``recv``) answers.  Handshake messages are framed by a u16 big-endian
length and may not exceed :data:`MAX_HANDSHAKE_MESSAGE` bytes, so a
stranger can make the receiver buffer at most that much.  Trust is checked
inside the handshake: the initiator checks the responder's static key
(``verify_peer``) before it reveals its own identity in the third message;
the responder checks the initiator's key against its authorized list
after the third message and, if it is not there, sends one ``Error``
record and closes, having written nothing anywhere.

The responder builds a :class:`Channel`, with its megabyte record
buffers, only for an authorized sender; a stranger is refused with one
small record.

After the handshake each direction uses its own split key with the record
layer.  Every blocking operation has a deadline: connect, the whole
handshake, and an idle timeout on every later read and write, so a silent
or frozen peer ends the session instead of holding it forever.  The
handshake deadline covers the whole exchange, not each read, so a peer
that trickles one byte at a time is dropped as surely as a silent one;
no read inside it waits longer than the idle timeout either.

This module is the one place where foreign exceptions (``OSError``,
timeouts, record, message and Noise errors) become filexfer errors.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import NamedTuple

from . import messages as msgs
from .errors import (
    ConnectError,
    FilexferError,
    IntegrityError,
    PeerTimeoutError,
    ProtocolError,
    TrustError,
    from_code,
)
from .keys import Identity, fingerprint, short_fingerprint
from .noise import HandshakeState, NoiseError
from .printable import printable_relayed
from .records import (
    HEADER_LEN,
    MAX_PLAINTEXT,
    TAG_LEN,
    Opener,
    RecordError,
    Sealer,
    parse_length,
)

PROLOGUE = b"filexfer/1/Noise_XX_25519_AESGCM_SHA256"
MAX_HANDSHAKE_MESSAGE = 1024
_FRAME = struct.Struct(">H")
CHUNK_SIZE = 1 << 20
# Input is read in blocks of this size, so that small records do not cost
# a system call each.
INBOX_SIZE = 256 << 10
# Corked messages are sent before more than this would be held.
MAX_HELD = 64 << 10
# What a message holds besides its one text field (a reason, a name),
# with room to spare.
TEXT_OVERHEAD = 64
# Record buffers start this small and grow to the largest record size the
# first time a record needs it: a session of small files never touches
# (and a one-file put never pays to clear) megabytes of buffers.
FIRST_BUFFER = 64 << 10


class Timeouts(NamedTuple):
    """Deadlines in seconds; all have CLI flags."""

    connect: float = 10.0
    handshake: float = 15.0
    idle: float = 60.0


class translate:  # noqa: N801 - used as a function: ``with translate(...)``
    """Turn foreign exceptions raised inside the block into ours.

    A class rather than a generator: it wraps every record sent and
    received, where a generator's set-up would cost more than the check.

    Args:
        what: the step, for messages ("receive", "handshake").
        idle: the read timeout in force, for the timeout message.
        peer: what to call the other side ("receiver", "sender").
        deadline: the handshake's clock, when the block is a handshake.
    """

    __slots__ = ("deadline", "idle", "peer", "what")

    def __init__(
        self,
        what: str,
        idle: float | None = None,
        peer: str = "peer",
        deadline: _Deadline | None = None,
    ) -> None:
        self.what = what
        self.idle = idle
        self.peer = peer
        self.deadline = deadline

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, FilexferError):
            return
        what, peer = self.what, self.peer
        if isinstance(exc, TimeoutError):
            raise _timeout(what, self.idle, peer, self.deadline) from exc
        if isinstance(exc, RecordError | NoiseError):
            raise IntegrityError(
                f"{what}: connection failed its integrity check"
            ) from exc
        if isinstance(exc, msgs.MessageError):
            raise ProtocolError(
                f"{what}: {peer} sent a malformed message ({exc})"
            ) from exc
        if isinstance(exc, ConnectionError | EOFError):
            raise ConnectError(f"{what}: connection lost") from exc
        if isinstance(exc, OSError):
            raise ConnectError(f"{what}: {exc.strerror or exc}") from exc


def _timeout(
    what: str, idle: float | None, peer: str, deadline: _Deadline | None
) -> PeerTimeoutError:
    if deadline is not None:
        return PeerTimeoutError(
            f"{peer} stopped responding during the handshake ({deadline.why()})"
        )
    wait = f" (no data for {idle:g} s)" if idle else ""
    return PeerTimeoutError(f"{peer} stopped responding{wait}")


class _Deadline:
    """The clock of one handshake.

    Every read and write inside the handshake waits at most ``step``
    seconds (the idle timeout) and never past the end of the whole
    handshake, however the peer spaces out its bytes.
    """

    def __init__(self, total: float, step: float) -> None:
        self.total = total
        self.step = min(step, total)
        self.end = time.monotonic() + total

    def arm(self, sock: socket.socket) -> None:
        """Set sock's timeout for its next operation; raise when expired."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("handshake deadline passed")
        sock.settimeout(min(self.step, left))

    def why(self) -> str:
        if time.monotonic() >= self.end - 0.01 or self.step >= self.total:
            return f"not finished within {self.total:g} s"
        return f"no data for {self.step:g} s"


def send_at_once(sock: socket.socket) -> None:
    """Turn off Nagle's algorithm on sock.

    This side already gathers small messages into one write where it can
    (corking); what it writes is meant to leave now.  Left on, Nagle holds
    a small write back until the previous one is acknowledged, and with
    the peer's delayed acknowledgement that costs about 40 ms per
    exchange: a one-file job would pay it twice.
    """
    with contextlib.suppress(OSError):  # not TCP (tests use socket pairs)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _recv_exact(
    sock: socket.socket, view: memoryview, deadline: _Deadline | None = None
) -> None:
    while view:
        if deadline is not None:
            deadline.arm(sock)
        count = sock.recv_into(view)
        if count == 0:
            raise EOFError("peer closed the connection")
        view = view[count:]


class Channel:
    """An established, authenticated connection that carries messages.

    One thread may send while another receives; each direction has its own
    key, counter and buffers.
    """

    # What messages call the other side; connect and accept name it.
    peer_role = "peer"

    def __init__(
        self,
        sock: socket.socket,
        send_key: bytes,
        recv_key: bytes,
        peer_key: bytes,
        max_in: int,
        max_out: int,
        idle: float,
    ) -> None:
        self.sock = sock
        self.peer_key = peer_key
        # Computed once: log lines name the peer for every file.
        self.peer_fingerprint = fingerprint(peer_key)
        self.peer_short = short_fingerprint(peer_key)
        self.idle = idle
        self.max_out = max_out
        self.chunk_size = min(CHUNK_SIZE, max_out - 1)
        self._sealer = Sealer(send_key)
        self._opener = Opener(recv_key)
        self._max_in = max_in
        self._plain_out = self._new_plain_out(FIRST_BUFFER)
        self._wire_out = bytearray(HEADER_LEN + FIRST_BUFFER + TAG_LEN)
        self._wire_in = bytearray(FIRST_BUFFER + TAG_LEN)
        self._plain_in = bytearray(FIRST_BUFFER)
        self._held: bytearray | None = None
        self._inbox = bytearray(INBOX_SIZE)
        self._inbox_start = self._inbox_end = 0
        self._streaming = False  # the last record was large
        # poll, not select: a daemon's socket may be descriptor 1024 or more.
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        sock.settimeout(idle)

    def send(self, message: msgs.Message) -> None:
        """Send one control message (held back while corked).

        The reason a refusal or an error carries is cut, where it must be,
        to what one message and the peer's records can hold: it often
        names a file, and a name may be long.
        """
        if isinstance(message, msgs.Reject | msgs.Abort | msgs.Error):
            message = message._replace(reason=self._fitting(message.reason))
        self._send_plain(msgs.encode(message))

    def _fitting(self, reason: str) -> str:
        room = min(msgs.MAX_TEXT, self.max_out - TEXT_OVERHEAD)
        raw = reason.encode("utf-8")
        if len(raw) <= room:
            return reason
        return raw[:room].decode("utf-8", errors="ignore")

    def too_long(self, message: msgs.Message) -> str | None:
        """Why the peer would refuse message for its size, if it would.

        A peer may take records smaller than the longest message (down to
        1,024 bytes): an offer of a long name would then fail its record
        check there, and look like tampering.
        """
        name = getattr(message, "name", "")
        if 4 * len(name) + TEXT_OVERHEAD <= self.max_out:
            return None  # fits whatever the name's UTF-8: no need to encode
        if len(msgs.encode(message)) <= self.max_out:
            return None
        return (
            f"too long a name for the {self.peer_role}, which takes messages "
            f"of at most {self.max_out:,} bytes"
        )

    def cork(self) -> None:
        """Hold sealed control messages back until :meth:`flush`.

        Many small replies then leave in one write instead of one each.
        The caller must flush before it waits for the peer.
        """
        if self._held is None:
            self._held = bytearray()

    @property
    def held(self) -> int:
        """How many sealed bytes are held back."""
        return len(self._held) if self._held is not None else 0

    def flush(self) -> None:
        """Send whatever is held back, and stop holding."""
        held, self._held = self._held, None
        if held:
            with translate("send", self.idle, self.peer_role):
                self.sock.sendall(held)

    def data_buffer(self, size: int | None = None) -> memoryview:
        """A buffer to fill with the next chunk before :meth:`send_data`.

        It holds one chunk, or at least size bytes when that is less.
        """
        want = self.chunk_size if size is None else min(size, self.chunk_size)
        if len(self._plain_out) < 1 + want:
            self._plain_out = self._new_plain_out(self.chunk_size)
        return memoryview(self._plain_out)[1 : 1 + self.chunk_size]

    def new_data_buffer(self) -> bytearray:
        """A Data message buffer of one's own: the chunk goes after byte 0."""
        return self._new_plain_out(self.chunk_size)

    @staticmethod
    def _new_plain_out(chunk: int) -> bytearray:
        plain = bytearray(1 + chunk)
        plain[0] = msgs.Kind.DATA
        return plain

    def send_data(self, count: int, plain: bytearray | None = None) -> None:
        """Send count chunk bytes as Data, from :meth:`data_buffer` or from
        a buffer made by :meth:`new_data_buffer`."""
        buffer = self._plain_out if plain is None else plain
        self._send_plain(memoryview(buffer)[: 1 + count])

    def _send_plain(self, plaintext: bytes | memoryview) -> None:
        with translate("send", self.idle, self.peer_role):
            if len(self._wire_out) < HEADER_LEN + len(plaintext) + TAG_LEN:
                self._wire_out = bytearray(HEADER_LEN + MAX_PLAINTEXT + TAG_LEN)
            out = memoryview(self._wire_out)
            total = self._sealer.seal_into(plaintext, out)
            if self._held is not None and len(self._held) + total <= MAX_HELD:
                self._held += out[:total]
                return
            self.flush()
            self.sock.sendall(out[:total])

    @property
    def max_in(self) -> int:
        """The largest record plaintext this side accepts."""
        return self._max_in

    def recv(self, into: memoryview | None = None) -> msgs.Message:
        """Receive the next message.

        A Data payload is a view into INTO (at least :attr:`max_in` bytes),
        or into the channel's own buffer when INTO is not given; either
        way it is valid only until that buffer is used again.  An Error
        message from the peer is raised as the matching error.
        """
        with translate("receive", self.idle, self.peer_role):
            header = bytearray(HEADER_LEN)
            self._read_exact(memoryview(header), blocks=not self._streaming)
            length = parse_length(bytes(header), self._max_in)
            self._streaming = length >= INBOX_SIZE // 2
            if len(self._wire_in) < length:
                self._wire_in = bytearray(self._max_in + TAG_LEN)
            if into is None and len(self._plain_in) < length - TAG_LEN:
                self._plain_in = bytearray(self._max_in)
            plain = memoryview(self._plain_in) if into is None else into
            body = memoryview(self._wire_in)[:length]
            self._read_exact(body)
            size = self._opener.open_into(bytes(header), body, plain)
            message = msgs.decode(plain[:size])
        if isinstance(message, msgs.Error):
            reason = printable_relayed(message.reason)
            raise from_code(message.code, f"{self.peer_role}: {reason}")
        return message

    def input_waiting(self, wait: float = 0) -> bool:
        """Whether input is here, already read or on the socket, within wait."""
        if self._inbox_end > self._inbox_start:
            return True
        return bool(self._poller.poll(math.ceil(wait * 1000)))

    def _read_exact(self, view: memoryview, blocks: bool = True) -> None:
        """Fill view with the next input bytes.

        Small records would cost a system call or two each; instead the
        socket is read in blocks of up to INBOX_SIZE and records are cut
        from that.  A large record body is read straight into place, and
        so is the header that follows one (``blocks`` false): while large
        records stream, a block read for the header would only be copied
        again into the next body.
        """
        inbox = memoryview(self._inbox)
        take = min(self._inbox_end - self._inbox_start, len(view))
        view[:take] = inbox[self._inbox_start : self._inbox_start + take]
        self._inbox_start += take
        view = view[take:]
        if not view:
            return
        if len(view) >= INBOX_SIZE // 2 or not blocks:
            _recv_exact(self.sock, view)
            return
        self._inbox_start = self._inbox_end = 0
        while self._inbox_end < len(view):
            count = self.sock.recv_into(inbox[self._inbox_end :])
            if count == 0:
                raise EOFError("peer closed the connection")
            self._inbox_end += count
        view[:] = inbox[: len(view)]
        self._inbox_start = len(view)

    def tell(self, exc: FilexferError) -> None:
        """Send the Error that ends the session, if the connection still works."""
        try:
            self.send(msgs.Error(int(exc.code), str(exc)))
            self.flush()
        except FilexferError:
            pass  # the connection is already gone; nothing more to say

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _send_frame(sock: socket.socket, payload: bytes, deadline: _Deadline) -> None:
    deadline.arm(sock)
    sock.sendall(_FRAME.pack(len(payload)) + payload)


def _recv_frame(sock: socket.socket, deadline: _Deadline) -> bytes:
    header = bytearray(_FRAME.size)
    _recv_exact(sock, memoryview(header), deadline)
    (length,) = _FRAME.unpack(header)
    if length > MAX_HANDSHAKE_MESSAGE:
        raise ProtocolError("handshake message too long")
    body = bytearray(length)
    _recv_exact(sock, memoryview(body), deadline)
    return bytes(body)


def _hello_from(payload: bytes) -> msgs.Hello:
    hello = msgs.decode(payload)
    if not isinstance(hello, msgs.Hello):
        raise ProtocolError("handshake payload is not a hello")
    if hello.version != msgs.PROTOCOL_VERSION:
        raise ProtocolError(f"peer speaks protocol version {hello.version}")
    if not 1024 <= hello.max_plaintext <= MAX_PLAINTEXT:
        raise ProtocolError("peer announced an unusable record size")
    return hello


def _my_hello(max_plaintext: int) -> bytes:
    return msgs.encode(msgs.Hello(msgs.PROTOCOL_VERSION, max_plaintext))


def connect(
    host: str,
    port: int,
    identity: Identity,
    verify_peer: Callable[[bytes], None],
    timeouts: Timeouts = Timeouts(),
) -> Channel:
    """Connect to a receiver and complete the handshake as initiator.

    Args:
        verify_peer: called with the receiver's raw static key before this
            side's identity is sent; raises TrustError to stop.

    Raises:
        ConnectError, PeerTimeoutError, TrustError, IntegrityError.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeouts.connect)
    except TimeoutError as exc:
        raise ConnectError(f"cannot connect to {where}: timed out") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConnectError(f"cannot connect to {where}: {reason}") from exc
    send_at_once(sock)
    try:
        return _initiate(sock, identity, verify_peer, timeouts)
    except BaseException:
        sock.close()
        raise


def _initiate(
    sock: socket.socket,
    identity: Identity,
    verify_peer: Callable[[bytes], None],
    timeouts: Timeouts,
) -> Channel:
    deadline = _Deadline(timeouts.handshake, timeouts.idle)
    with _initiator_errors(deadline):
        state = HandshakeState(True, identity.private, PROLOGUE)
        _send_frame(sock, state.write_message(b""), deadline)
        hello = _hello_from(state.read_message(_recv_frame(sock, deadline)))

        peer = state.remote_static
        assert peer is not None, "internal error: XX revealed no static key"
        verify_peer(peer)
        _send_frame(sock, state.write_message(_my_hello(MAX_PLAINTEXT)), deadline)
        send, recv = state.split()
    assert send.key is not None and recv.key is not None
    channel = Channel(
        sock,
        send.key,
        recv.key,
        peer,
        MAX_PLAINTEXT,
        hello.max_plaintext,
        timeouts.idle,
    )
    channel.peer_role = "receiver"
    return channel


@contextlib.contextmanager
def _initiator_errors(deadline: _Deadline) -> Iterator[None]:
    """translate() for the initiator's handshake, with a hint on a hang-up.

    A receiver closes a connection unanswered when all its handshake
    slots are taken, so a hang-up here usually means "busy", not "broken".
    """
    try:
        with translate("handshake", peer="receiver", deadline=deadline):
            yield
    except ConnectError as exc:
        if type(exc) is not ConnectError:
            raise
        raise ConnectError(
            "receiver closed the connection during the handshake",
            hint="it may be at its limit of connections; try again later",
        ) from exc.__cause__


def accept(
    sock: socket.socket,
    identity: Identity,
    authorized: Callable[[bytes], bool],
    timeouts: Timeouts = Timeouts(),
    max_plaintext: int = MAX_PLAINTEXT,
    heard: Callable[[], bool] | None = None,
) -> Channel:
    """Complete the handshake as responder on an accepted socket.

    ``heard`` is called once the sender's first message is in; if it
    returns False (the daemon closed the connection meanwhile), the
    handshake ends there with ConnectError.

    Raises:
        TrustError: the sender's key is not authorized (it has been told).
        IntegrityError, ProtocolError, ConnectError, PeerTimeoutError.
    """
    send_at_once(sock)
    deadline = _Deadline(timeouts.handshake, timeouts.idle)
    with translate("handshake", peer="sender", deadline=deadline):
        state = HandshakeState(False, identity.private, PROLOGUE)
        state.read_message(_recv_frame(sock, deadline))
        if heard is not None and not heard():
            raise ConnectError("handshake: closed by this side")
        _send_frame(sock, state.write_message(_my_hello(max_plaintext)), deadline)
        hello = _hello_from(state.read_message(_recv_frame(sock, deadline)))
        send, recv = state.split()
    peer = state.remote_static
    assert peer is not None and send.key is not None and recv.key is not None
    if not authorized(peer):
        _refuse(sock, send.key, deadline)
        raise TrustError(f"sender key {fingerprint(peer)} is not authorized")
    channel = Channel(
        sock,
        send.key,
        recv.key,
        peer,
        max_plaintext,
        hello.max_plaintext,
        timeouts.idle,
    )
    channel.peer_role = "sender"
    return channel


def _refuse(sock: socket.socket, send_key: bytes, deadline: _Deadline) -> None:
    """Tell an unauthorized sender so in one record, built without a Channel.

    A Channel holds megabytes of record buffers; a stranger must not be
    able to make the receiver allocate them.
    """
    error = msgs.Error(int(TrustError.code), "sender key not authorized")
    record = Sealer(send_key).seal(msgs.encode(error))
    with contextlib.suppress(OSError):
        deadline.arm(sock)
        sock.sendall(record)
