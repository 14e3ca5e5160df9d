"""Length-prefixed AEAD records: the framing of everything after the handshake.

How this works
--------------
Each direction of a connection has its own key (from the Noise split) and
its own 64-bit record counter, starting at 0.  A record on the wire is::

    length  u32 big-endian   number of ciphertext bytes that follow
    body    length bytes     AES-256-GCM(key, nonce(counter), plaintext,
                                         ad=length) incl. 16-byte tag

The nonce is Noise's AESGCM nonce: four zero bytes and the counter as a
big-endian u64.  The counter is never sent: both sides count, so a dropped,
replayed, duplicated or reordered record fails its tag on arrival.  The
length is the associated data, so it cannot be altered either.  A counter
that would reach 2**64 - 1 ends the session instead of wrapping.

Invariants: a length above the negotiated maximum is rejected before any
buffer for it exists; a nonce is never used twice under one key; a failed
record leaves no plaintext behind (``decrypt_into`` may have written
unauthenticated bytes into the caller's buffer, so callers must discard it
when :class:`RecordError` is raised).

Truncation at a record boundary is invisible at this layer: the message
layer above ends every session with an explicit closing message.

This module does no I/O.  :class:`Sealer` and :class:`Opener` work on
caller-owned buffers (the fast path used by the channel);
:class:`RecordDecoder` is a pure bytes-in, plaintexts-out parser.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HEADER = struct.Struct(">I")
HEADER_LEN = HEADER.size
TAG_LEN = 16
# Largest plaintext a record may carry: one 1 MiB chunk plus room for the
# message header.  Receivers may configure a smaller limit, never larger.
MAX_PLAINTEXT = (1 << 20) + 64
MAX_COUNTER = (1 << 64) - 1


class RecordError(Exception):
    """A record could not be accepted. The message never says why."""


def nonce(counter: int) -> bytes:
    """Return the 12-byte AES-GCM nonce for a record counter."""
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


def parse_length(header: bytes | memoryview, max_plaintext: int) -> int:
    """Return the body length announced by a 4-byte header, or raise.

    Raises:
        RecordError: the length is below one tag or above the limit.
    """
    length: int = HEADER.unpack(header)[0]
    if length < TAG_LEN or length > max_plaintext + TAG_LEN:
        raise RecordError("record length out of range")
    return length


class _Counter:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("record key must be 32 bytes")
        self._aead = AESGCM(key)
        self.counter = 0

    def _next_nonce(self) -> bytes:
        if self.counter >= MAX_COUNTER:
            raise RecordError("record counter exhausted")
        value = nonce(self.counter)
        self.counter += 1
        return value


class Sealer(_Counter):
    """Encrypts outgoing records for one direction of one connection."""

    def seal_into(self, plaintext: memoryview | bytes, out: memoryview) -> int:
        """Write header and ciphertext of one record into out.

        Args:
            plaintext: the record's plaintext, at most MAX_PLAINTEXT bytes.
            out: a buffer of at least HEADER_LEN + len(plaintext) + TAG_LEN.

        Returns:
            The number of bytes written to out.
        """
        length = len(plaintext) + TAG_LEN
        assert len(plaintext) <= MAX_PLAINTEXT, "internal error: record too big"
        header = HEADER.pack(length)
        out[:HEADER_LEN] = header
        body = out[HEADER_LEN : HEADER_LEN + length]
        self._aead.encrypt_into(self._next_nonce(), plaintext, header, body)
        return HEADER_LEN + length

    def seal(self, plaintext: bytes) -> bytes:
        """Return one whole record (header and body) for plaintext."""
        out = bytearray(HEADER_LEN + len(plaintext) + TAG_LEN)
        self.seal_into(plaintext, memoryview(out))
        return bytes(out)


class Opener(_Counter):
    """Decrypts incoming records for one direction of one connection."""

    def open_into(self, header: bytes, body: memoryview, out: memoryview) -> int:
        """Authenticate and decrypt one record body into out.

        Returns:
            The plaintext length.

        Raises:
            RecordError: the record is not the next authentic one.  out may
                then hold garbage and must be discarded.
        """
        size = len(body) - TAG_LEN
        try:
            self._aead.decrypt_into(self._next_nonce(), body, header, out[:size])
            return size
        except InvalidTag:
            raise RecordError("record failed to authenticate") from None


class RecordDecoder:
    """Turns a byte stream into authenticated plaintexts, one at a time.

    ``feed`` accepts any slicing of the stream; ``next_plaintext`` returns
    a complete record's plaintext or None when more bytes are needed.  Once
    an error is raised the decoder stays broken (sticky error).
    """

    def __init__(self, key: bytes, max_plaintext: int = MAX_PLAINTEXT) -> None:
        self._opener = Opener(key)
        self._max = max_plaintext
        self._buffer = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a returned record."""
        return len(self._buffer)

    def next_plaintext(self) -> bytes | None:
        if self._broken:
            raise RecordError("record stream already failed")
        if len(self._buffer) < HEADER_LEN:
            return None
        try:
            return self._take_record()
        except RecordError:
            self._broken = True
            raise

    def _take_record(self) -> bytes | None:
        header = bytes(self._buffer[:HEADER_LEN])
        length = parse_length(header, self._max)
        if len(self._buffer) < HEADER_LEN + length:
            return None
        body = memoryview(self._buffer)[HEADER_LEN : HEADER_LEN + length]
        out = bytearray(length - TAG_LEN)
        try:
            size = self._opener.open_into(header, body, memoryview(out))
        finally:
            body.release()
        del self._buffer[: HEADER_LEN + length]
        return bytes(out[:size])
