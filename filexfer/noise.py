"""The Noise_XX_25519_AESGCM_SHA256 handshake (Noise spec revision 34).

How this works
--------------
Two parties, each holding a long-term X25519 identity ("static") key, run
three handshake messages and end up with two fresh AES-GCM keys, one per
direction::

    -> e                   initiator sends a fresh ephemeral key in clear
    <- e, ee, s, es        responder's ephemeral, then its static key, encrypted
    -> s, se               initiator's static key, encrypted

Each DH result is fed through HKDF into a chaining key ``ck``; every byte sent
or received is hashed into the transcript hash ``h``, which is the associated
data of every handshake encryption. ``split()`` turns ``ck`` into the two
transport keys. The code follows the spec's objects one to one: CipherState
(key and nonce counter), SymmetricState (``ck`` and ``h``), HandshakeState
(the pattern and the key pairs). It is sans-IO: bytes in, bytes out.

Invariants
----------
- A (key, nonce) pair is never used twice: the counter moves forward only
  after a successful operation and stops before 2**64 - 1, the value the
  spec reserves. Nothing here moves it back (``n`` is settable, as the
  spec's SetNonce, and a caller who sets it owns that risk).
- The parties alternate strictly; writing or reading out of turn is an error.
- Any error ends the handshake for good (a "sticky" error): a HandshakeState
  that raised once raises on every later call, because its transcript may
  already have absorbed the offending bytes.
- The transport keys are handed out once, and only after the last message.
- No handshake message is longer than 65535 bytes (the spec's limit).
  CipherState does not enforce it, so the record layer may use longer
  records under its own framing.

What an attacker can and cannot do
----------------------------------
A network attacker sees the first message's payload in clear, and the sizes
and timing of everything. An active attacker who starts a handshake with a
responder learns the responder's static public key (XX reveals the
responder's identity first) and can read the second message's payload,
which is encrypted to whoever sent the first message. The initiator's
identity goes out only in the third message, encrypted to whoever holds the
responder's static key: callers should therefore check ``remote_static``
after reading the second message and before writing the third.

An attacker cannot alter or reorder a handshake byte without a later
decryption failing, because every byte is in ``h``; a replayed first message
only starts a handshake it cannot finish, as the third message needs that
message's ephemeral private key. Without a party's static private key it
cannot impersonate that party. Recorded traffic stays secret even if both
static keys are stolen later, because the ``ee`` DH of two ephemeral keys
enters every transport key (forward secrecy). A public key that forces an
all-zero DH output (a low-order point) is rejected.

Every failure is a NoiseError. Failures caused by the peer's bytes (bad
length, bad tag, bad point) all carry the same message, so an error reveals
nothing about which check failed.
"""

from __future__ import annotations

import enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PROTOCOL_NAME = b"Noise_XX_25519_AESGCM_SHA256"
DHLEN = 32
HASHLEN = 32
KEYLEN = 32
TAGLEN = 16
MAX_MESSAGE_LEN = 65535

# The spec reserves the largest 64-bit nonce for rekeying; no message uses it.
MAX_NONCE = 2**64 - 1

# One message for every failure caused by the peer's bytes, whatever failed.
_REJECTED = "noise: message rejected"

# The XX pattern: the tokens of each handshake message, in order. The
# initiator writes the messages with an even index, the responder the others.
_XX_PATTERN: tuple[tuple[str, ...], ...] = (
    ("e",),
    ("e", "ee", "s", "es"),
    ("s", "se"),
)


class NoiseError(Exception):
    """Any failure of the handshake or of a CipherState."""


def nonce_bytes(n: int) -> bytes:
    """Encode counter ``n`` as the spec's 12-byte AESGCM nonce.

    Args:
        n: A 64-bit unsigned counter value.

    Returns:
        Four zero bytes followed by ``n`` as 8 bytes big-endian.

    Raises:
        NoiseError: ``n`` does not fit in 64 bits.
    """
    if not 0 <= n <= MAX_NONCE:
        raise NoiseError("noise: nonce out of range")
    return bytes(4) + n.to_bytes(8, "big")


def _hash(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _hmac(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def _hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    # HKDF exactly as section 4.3 of the spec writes it, with two outputs
    # (ikm is its input_key_material). The three-output form serves only
    # pre-shared keys, which XX lacks.
    temp_key = _hmac(chaining_key, ikm)
    output1 = _hmac(temp_key, b"\x01")
    output2 = _hmac(temp_key, output1 + b"\x02")
    return output1, output2


class CipherState:
    """A cipher key and its nonce counter (spec section 5.1).

    Without a key, encryption and decryption return their input unchanged,
    as the spec requires for the first handshake message. This class does
    not enforce the 65535-byte message limit; HandshakeState does.

    Attributes:
        n: The nonce for the next operation. Settable, as the spec's
            ``SetNonce``.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != KEYLEN:
            raise NoiseError("noise: cipher key must be 32 bytes")
        self._key = key
        self._aead = AESGCM(key) if key is not None else None
        self.n = 0

    @property
    def key(self) -> bytes | None:
        """The raw 32-byte key, or None before one is set."""
        return self._key

    def has_key(self) -> bool:
        """Return whether a key is set."""
        return self._key is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` under the next nonce, authenticating ``ad``.

        Raises:
            NoiseError: The nonce counter is exhausted.
        """
        if self._aead is None:
            return plaintext
        ciphertext = self._aead.encrypt(self._next_nonce(), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and authenticate ``ciphertext`` under the next nonce.

        The counter advances only on success, so a forged message does not
        desynchronise the two sides.

        Raises:
            NoiseError: Authentication failed or the nonce is exhausted.
        """
        if self._aead is None:
            return ciphertext
        try:
            plaintext = self._aead.decrypt(self._next_nonce(), ciphertext, ad)
        except InvalidTag as exc:
            raise NoiseError(_REJECTED) from exc
        self.n += 1
        return plaintext

    def _next_nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise NoiseError("noise: nonce exhausted, handshake again")
        return nonce_bytes(self.n)


class SymmetricState:
    """The chaining key, the transcript hash and a CipherState (section 5.2)."""

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        if len(protocol_name) <= HASHLEN:
            h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            h = _hash(protocol_name)
        self._h = h
        self._ck = h
        self._cipher = CipherState()

    def has_key(self) -> bool:
        """Return whether a DH result has been mixed in yet."""
        return self._cipher.has_key()

    def mix_key(self, input_key_material: bytes) -> None:
        """Derive a new chaining key and cipher key from a DH output."""
        self._ck, temp_k = _hkdf(self._ck, input_key_material)
        self._cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        """Absorb ``data`` into the transcript hash."""
        self._h = _hash(self._h + data)

    def get_handshake_hash(self) -> bytes:
        """Return the transcript hash ``h``."""
        return self._h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """Encrypt with the transcript as associated data, then absorb it."""
        ciphertext = self._cipher.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Decrypt with the transcript as associated data, then absorb it.

        Raises:
            NoiseError: Authentication failed.
        """
        plaintext = self._cipher.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Return (c1, c2): initiator-to-responder, responder-to-initiator."""
        temp_k1, temp_k2 = _hkdf(self._ck, b"")
        return CipherState(temp_k1), CipherState(temp_k2)


class _Phase(enum.Enum):
    HANDSHAKE = enum.auto()
    COMPLETE = enum.auto()
    SPLIT = enum.auto()
    FAILED = enum.auto()


_PHASE_ERRORS = {
    _Phase.COMPLETE: "noise: handshake already complete",
    _Phase.SPLIT: "noise: handshake already complete",
    _Phase.FAILED: "noise: handshake failed earlier",
}


class _Reader:
    """Takes fields off the front of a received message."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise NoiseError(_REJECTED)
        field = self._data[self._offset : end]
        self._offset = end
        return field

    def rest(self) -> bytes:
        return self._data[self._offset :]


class HandshakeState:
    """One side of a Noise_XX_25519_AESGCM_SHA256 handshake (section 5.3).

    Call ``write_message`` and ``read_message`` in turn (the initiator
    writes first) until ``complete`` is true, then call ``split`` once.

    Args:
        initiator: True for the side that sends the first message.
        static: This side's long-term identity key.
        prologue: Data both sides must agree on; it enters the transcript.
        ephemeral: A fixed ephemeral key, for known-answer tests only.
    """

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes = b"",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self._initiator = initiator
        self._s = static
        self._e = ephemeral
        self._re: bytes | None = None
        self._rs: bytes | None = None

        self._symmetric = SymmetricState(PROTOCOL_NAME)
        self._symmetric.mix_hash(prologue)

        self._phase = _Phase.HANDSHAKE
        self._step = 0
        self._hash: bytes | None = None
        self._ciphers: tuple[CipherState, CipherState] | None = None

    @property
    def complete(self) -> bool:
        """Whether all three handshake messages have been processed."""
        return self._phase in (_Phase.COMPLETE, _Phase.SPLIT)

    @property
    def remote_static(self) -> bytes | None:
        """The peer's 32-byte static public key, once received.

        None before the key arrives, and after any failure: a key from a
        handshake that failed later was never proven to be the peer's.
        """
        if self._phase is _Phase.FAILED:
            return None
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """The final transcript hash, for channel binding.

        Raises:
            NoiseError: The handshake is not complete.
        """
        if self._hash is None:
            raise NoiseError("noise: handshake not complete")
        return self._hash

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce this side's next handshake message.

        Args:
            payload: Application data to carry; see the module docstring for
                how well each message protects it.

        Returns:
            The message to send.

        Raises:
            NoiseError: Not this side's turn, the message would exceed
                MAX_MESSAGE_LEN, the peer's ephemeral key is invalid, or
                the handshake already failed.
        """
        self._check_turn(writing=True)
        try:
            tokens = _XX_PATTERN[self._step]
            parts = [self._write_token(token) for token in tokens]
            parts.append(self._symmetric.encrypt_and_hash(payload))
            message = b"".join(parts)
            if len(message) > MAX_MESSAGE_LEN:
                raise NoiseError("noise: handshake message too long")
            self._advance()
        except BaseException:
            self._phase = _Phase.FAILED
            raise
        return message

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message.

        Args:
            message: Exactly one whole handshake message.

        Returns:
            The payload it carried.

        Raises:
            NoiseError: Not this side's turn, or the message is malformed,
                fails authentication or carries an invalid key.
        """
        self._check_turn(writing=False)
        try:
            if len(message) > MAX_MESSAGE_LEN:
                raise NoiseError(_REJECTED)
            reader = _Reader(message)
            for token in _XX_PATTERN[self._step]:
                self._read_token(token, reader)
            payload = self._symmetric.decrypt_and_hash(reader.rest())
            self._advance()
        except BaseException:
            self._phase = _Phase.FAILED
            raise
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """Hand out the transport CipherStates, once.

        Returns:
            ``(send, receive)`` from this side's point of view.

        Raises:
            NoiseError: The handshake is not complete, or split was already
                called (two owners of one CipherState would reuse nonces).
        """
        if self._phase is not _Phase.COMPLETE or self._ciphers is None:
            raise NoiseError("noise: split needs a complete, unsplit handshake")
        ciphers, self._ciphers = self._ciphers, None
        self._phase = _Phase.SPLIT
        return ciphers

    def _check_turn(self, writing: bool) -> None:
        if self._phase is not _Phase.HANDSHAKE:
            raise NoiseError(_PHASE_ERRORS[self._phase])

        our_turn_to_write = (self._step % 2 == 0) == self._initiator
        if writing != our_turn_to_write:
            self._phase = _Phase.FAILED
            action = "write" if writing else "read"
            raise NoiseError(f"noise: not this side's turn to {action}")

    def _write_token(self, token: str) -> bytes:
        if token == "e":
            if self._e is None:
                self._e = X25519PrivateKey.generate()
            public = self._e.public_key().public_bytes_raw()
            self._symmetric.mix_hash(public)
            return public

        if token == "s":
            public = self._s.public_key().public_bytes_raw()
            return self._symmetric.encrypt_and_hash(public)

        self._symmetric.mix_key(self._dh(token))
        return b""

    def _read_token(self, token: str, reader: _Reader) -> None:
        if token == "e":
            self._re = reader.take(DHLEN)
            self._symmetric.mix_hash(self._re)
        elif token == "s":
            size = DHLEN + TAGLEN if self._symmetric.has_key() else DHLEN
            self._rs = self._symmetric.decrypt_and_hash(reader.take(size))
        else:
            self._symmetric.mix_key(self._dh(token))

    def _dh(self, token: str) -> bytes:
        # A DH token names the initiator's key first and the responder's
        # second: "es" is the initiator's e with the responder's s.
        ours, theirs = (token[0], token[1])
        if not self._initiator:
            ours, theirs = theirs, ours
        private = self._e if ours == "e" else self._s
        public = self._re if theirs == "e" else self._rs
        if private is None or public is None:
            raise AssertionError("internal error: DH before its keys are known")

        # The spec lets 25519 implementations reject inputs that give an
        # all-zero output; cryptography does, with ValueError.
        try:
            return private.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as exc:
            raise NoiseError(_REJECTED) from exc

    def _advance(self) -> None:
        self._step += 1
        if self._step < len(_XX_PATTERN):
            return

        # The ephemeral key has done its job; dropping it is what makes the
        # session keys unrecoverable once the CipherStates are gone too.
        self._e = None
        self._hash = self._symmetric.get_handshake_hash()
        c1, c2 = self._symmetric.split()
        self._ciphers = (c1, c2) if self._initiator else (c2, c1)
        self._phase = _Phase.COMPLETE
