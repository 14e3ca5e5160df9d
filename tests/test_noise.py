"""Tests for filexfer.noise: known answers, live interop, and rejections."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from noise.connection import Keypair, NoiseConnection

from filexfer.noise import (
    DHLEN,
    MAX_MESSAGE_LEN,
    PROTOCOL_NAME,
    CipherState,
    HandshakeState,
    NoiseError,
    SymmetricState,
    _hkdf,
    nonce_bytes,
)

VECTORS = Path(__file__).parent / "vectors"
CACOPHONY = VECTORS / "cacophony_xx_25519_aesgcm_sha256.json"
FLYNN = VECTORS / "flynn_xx_25519_aesgcm_sha256.txt"

PROLOGUE = b"filexfer-test/1"
HANDSHAKE_MESSAGES = 3
MAX_NONCE = 2**64 - 1

# Encodings of low-order Curve25519 points, whose DH output is all zeros:
# zero, one, and a point of order 8.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


# ---------------------------------------------------------------------------
# Known-answer vectors
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Vector:
    """One handshake plus transport messages, from either vector file."""

    source: str
    init_static: bytes
    resp_static: bytes
    init_ephemeral: bytes
    resp_ephemeral: bytes
    prologue: bytes
    messages: list[tuple[bytes, bytes]]  # (payload, ciphertext)
    handshake_hash: bytes | None
    initiator_sends_first_transport: bool


def load_cacophony() -> list[Vector]:
    entries = json.loads(CACOPHONY.read_text())["vectors"]
    vectors = []
    for entry in entries:
        if entry["protocol_name"] != PROTOCOL_NAME.decode():
            continue

        # Our API has one prologue and no PSKs, so such entries would have to
        # be skipped; none exist for our name, and none may appear silently.
        assert entry["init_prologue"] == entry["resp_prologue"]
        assert not any("psk" in key for key in entry)
        assert not entry.get("fail", False)

        vectors.append(
            Vector(
                source="cacophony",
                init_static=bytes.fromhex(entry["init_static"]),
                resp_static=bytes.fromhex(entry["resp_static"]),
                init_ephemeral=bytes.fromhex(entry["init_ephemeral"]),
                resp_ephemeral=bytes.fromhex(entry["resp_ephemeral"]),
                prologue=bytes.fromhex(entry["init_prologue"]),
                messages=[
                    (bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"]))
                    for m in entry["messages"]
                ],
                handshake_hash=bytes.fromhex(entry["handshake_hash"]),
                # Cacophony alternates senders through the whole list, so the
                # responder sends right after the initiator's last message.
                initiator_sends_first_transport=False,
            )
        )
    return vectors


def parse_flynn_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        if key == "handshake":
            blocks.append({})
        blocks[-1][key] = value
    return blocks


def load_flynn() -> list[Vector]:
    vectors = []
    for block in parse_flynn_blocks(FLYNN.read_text()):
        if block["handshake"] != PROTOCOL_NAME.decode():
            continue
        assert "preshared_key" not in block

        count = sum(1 for key in block if key.endswith("_ciphertext"))
        messages = [
            (
                bytes.fromhex(block[f"msg_{i}_payload"]),
                bytes.fromhex(block[f"msg_{i}_ciphertext"]),
            )
            for i in range(count)
        ]
        vectors.append(
            Vector(
                source="flynn",
                init_static=bytes.fromhex(block["init_static"]),
                resp_static=bytes.fromhex(block["resp_static"]),
                init_ephemeral=bytes.fromhex(block["gen_init_ephemeral"]),
                resp_ephemeral=bytes.fromhex(block["gen_resp_ephemeral"]),
                prologue=bytes.fromhex(block.get("prologue", "")),
                messages=messages,
                handshake_hash=None,
                # flynn/noise encrypts transport message 3 with c1.
                initiator_sends_first_transport=True,
            )
        )
    return vectors


ALL_VECTORS = load_cacophony() + load_flynn()


def private(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def run_vector_handshake(vector: Vector) -> tuple[HandshakeState, HandshakeState]:
    initiator = HandshakeState(
        True,
        private(vector.init_static),
        vector.prologue,
        ephemeral=private(vector.init_ephemeral),
    )
    responder = HandshakeState(
        False,
        private(vector.resp_static),
        vector.prologue,
        ephemeral=private(vector.resp_ephemeral),
    )

    sides = (initiator, responder)
    for index, (payload, ciphertext) in enumerate(vector.messages[:3]):
        writer, reader = sides[index % 2], sides[1 - index % 2]
        message = writer.write_message(payload)
        assert message.hex() == ciphertext.hex(), f"handshake message {index}"
        assert reader.read_message(message) == payload
    return initiator, responder


def test_vectors_are_present_from_both_sources() -> None:
    sources = [vector.source for vector in ALL_VECTORS]

    assert sources.count("cacophony") > 0
    assert sources.count("flynn") > 0


@pytest.mark.parametrize(
    "vector",
    ALL_VECTORS,
    ids=[f"{v.source}-{i}" for i, v in enumerate(ALL_VECTORS)],
)
def test_handshake_matches_vector(vector: Vector) -> None:
    initiator, responder = run_vector_handshake(vector)

    assert initiator.complete and responder.complete
    assert initiator.handshake_hash == responder.handshake_hash
    if vector.handshake_hash is not None:
        assert initiator.handshake_hash.hex() == vector.handshake_hash.hex()

    assert initiator.remote_static == public(private(vector.resp_static))
    assert responder.remote_static == public(private(vector.init_static))


@pytest.mark.parametrize(
    "vector",
    ALL_VECTORS,
    ids=[f"{v.source}-{i}" for i, v in enumerate(ALL_VECTORS)],
)
def test_transport_matches_vector(vector: Vector) -> None:
    initiator, responder = run_vector_handshake(vector)
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    transport = vector.messages[HANDSHAKE_MESSAGES:]
    assert transport, "vector has no transport messages"

    for index, (payload, ciphertext) in enumerate(transport):
        initiator_sends = (index % 2 == 0) == vector.initiator_sends_first_transport
        send, recv = (i_send, r_recv) if initiator_sends else (r_send, i_recv)
        assert send.encrypt_with_ad(b"", payload).hex() == ciphertext.hex()
        assert recv.decrypt_with_ad(b"", ciphertext) == payload


# ---------------------------------------------------------------------------
# Live interop with the noiseprotocol package
# ---------------------------------------------------------------------------


def their_side(initiator: bool, static: X25519PrivateKey) -> NoiseConnection:
    connection = NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(
        Keypair.STATIC, static.private_bytes_raw()
    )
    connection.set_prologue(PROLOGUE)
    connection.start_handshake()
    return connection


@pytest.mark.parametrize("we_initiate", [True, False], ids=["initiator", "responder"])
def test_handshake_interoperates_with_noiseprotocol(we_initiate: bool) -> None:
    our_key, their_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ours = HandshakeState(we_initiate, our_key, PROLOGUE)
    theirs = their_side(not we_initiate, their_key)

    for index, payload in enumerate([b"first", b"", b"third payload"]):
        if (index % 2 == 0) == we_initiate:
            assert theirs.read_message(ours.write_message(payload)) == payload
        else:
            assert ours.read_message(bytes(theirs.write_message(payload))) == payload

    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert ours.remote_static == public(their_key)

    send, recv = ours.split()
    for round_ in range(4):
        outbound = b"ours %d" % round_ * (round_ + 1)
        inbound = b"theirs %d" % round_
        assert theirs.decrypt(send.encrypt_with_ad(b"", outbound)) == outbound
        assert recv.decrypt_with_ad(b"", theirs.encrypt(inbound)) == inbound


# ---------------------------------------------------------------------------
# Rejections: tampering, truncation, turn order, length, nonces, bad points
# ---------------------------------------------------------------------------


def fixed_pair() -> tuple[HandshakeState, HandshakeState]:
    initiator = HandshakeState(True, private(bytes(range(32))), PROLOGUE)
    responder = HandshakeState(False, private(bytes(range(1, 33))), PROLOGUE)
    return initiator, responder


def completed_pair() -> tuple[HandshakeState, HandshakeState]:
    initiator, responder = fixed_pair()
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())
    return initiator, responder


def tampered_handshake(target: int, tamper: Callable[[bytes], bytes]) -> None:
    """Run a handshake whose message number ``target`` goes through tamper."""
    sides = fixed_pair()
    for index in range(HANDSHAKE_MESSAGES):
        writer, reader = sides[index % 2], sides[1 - index % 2]
        message = writer.write_message(b"payload")
        if index == target:
            message = tamper(message)
        reader.read_message(message)


def flip_bit(position: int) -> Callable[[bytes], bytes]:
    def tamper(message: bytes) -> bytes:
        changed = bytearray(message)
        changed[position] ^= 1 << (position % 8)
        return bytes(changed)

    return tamper


def message_length(target: int) -> int:
    lengths: list[int] = []

    def record(message: bytes) -> bytes:
        lengths.append(len(message))
        return message

    tampered_handshake(target, record)
    return lengths[0]


@pytest.mark.parametrize("target", range(HANDSHAKE_MESSAGES))
def test_handshake_rejects_flipped_bit_in_message(target: int) -> None:
    # The first message is unencrypted, so the change shows only when the
    # initiator reads the reply; the others fail on the spot.
    for position in range(message_length(target)):
        with pytest.raises(NoiseError):
            tampered_handshake(target, flip_bit(position))


@pytest.mark.parametrize("target", range(HANDSHAKE_MESSAGES))
def test_handshake_rejects_truncated_message(target: int) -> None:
    for size in range(message_length(target)):
        with pytest.raises(NoiseError):
            tampered_handshake(target, lambda m, size=size: m[:size])


@pytest.mark.parametrize("target", range(HANDSHAKE_MESSAGES))
def test_handshake_rejects_trailing_bytes(target: int) -> None:
    with pytest.raises(NoiseError):
        tampered_handshake(target, lambda m: m + b"\x00")


def test_handshake_rejects_short_first_message_on_read() -> None:
    _, responder = fixed_pair()

    with pytest.raises(NoiseError):
        responder.read_message(bytes(DHLEN - 1))


def test_handshake_rejects_initiator_reading_first() -> None:
    initiator, _ = fixed_pair()

    with pytest.raises(NoiseError, match="turn"):
        initiator.read_message(bytes(DHLEN))


def test_handshake_rejects_responder_writing_first() -> None:
    _, responder = fixed_pair()

    with pytest.raises(NoiseError, match="turn"):
        responder.write_message()


def test_handshake_rejects_writing_twice_in_a_row() -> None:
    initiator, _ = fixed_pair()
    initiator.write_message()

    with pytest.raises(NoiseError, match="turn"):
        initiator.write_message()


def test_handshake_rejects_messages_after_completion() -> None:
    initiator, responder = completed_pair()

    with pytest.raises(NoiseError):
        initiator.write_message()
    with pytest.raises(NoiseError):
        responder.read_message(bytes(64))


def test_handshake_error_is_sticky() -> None:
    initiator, responder = fixed_pair()
    first = initiator.write_message()
    with pytest.raises(NoiseError):
        responder.read_message(first[:10])

    with pytest.raises(NoiseError, match="failed earlier"):
        responder.read_message(first)


def test_handshake_remote_static_known_before_initiator_writes_its_own() -> None:
    initiator, responder = fixed_pair()
    assert initiator.remote_static is None

    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())

    assert initiator.remote_static == public(private(bytes(range(1, 33))))
    assert responder.remote_static is None


def test_handshake_forgets_remote_static_after_failure() -> None:
    initiator, responder = fixed_pair()
    responder.read_message(initiator.write_message())
    reply = responder.write_message()

    with pytest.raises(NoiseError):
        initiator.read_message(reply[:-1] + bytes([reply[-1] ^ 1]))

    assert initiator.remote_static is None


def test_handshake_split_before_completion_raises() -> None:
    initiator, _ = fixed_pair()

    with pytest.raises(NoiseError):
        initiator.split()
    with pytest.raises(NoiseError):
        _ = initiator.handshake_hash


def test_handshake_split_twice_raises() -> None:
    initiator, _ = completed_pair()
    initiator.split()

    with pytest.raises(NoiseError):
        initiator.split()


def test_handshake_split_pairs_send_with_peer_receive() -> None:
    initiator, responder = completed_pair()
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()

    assert i_send.key == r_recv.key
    assert i_recv.key == r_send.key
    assert i_send.key != i_recv.key


@pytest.mark.parametrize(("writer", "overhead"), [(0, DHLEN), (1, 2 * DHLEN + 32)])
def test_handshake_rejects_too_long_payload_on_write(
    writer: int, overhead: int
) -> None:
    sides = fixed_pair()
    if writer == 1:
        sides[1].read_message(sides[0].write_message())
    largest = MAX_MESSAGE_LEN - overhead

    with pytest.raises(NoiseError, match="too long"):
        sides[writer].write_message(bytes(largest + 1))


@pytest.mark.parametrize(("writer", "overhead"), [(0, DHLEN), (1, 2 * DHLEN + 32)])
def test_handshake_accepts_payload_at_length_limit(writer: int, overhead: int) -> None:
    sides = fixed_pair()
    if writer == 1:
        sides[1].read_message(sides[0].write_message())
    payload = bytes(MAX_MESSAGE_LEN - overhead)

    message = sides[writer].write_message(payload)

    assert len(message) == MAX_MESSAGE_LEN
    assert sides[1 - writer].read_message(message) == payload


def test_handshake_rejects_too_long_message_on_read() -> None:
    _, responder = fixed_pair()

    with pytest.raises(NoiseError):
        responder.read_message(bytes(MAX_MESSAGE_LEN + 1))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=["zero", "one", "order8"])
def test_handshake_rejects_low_order_ephemeral_from_responder(point: bytes) -> None:
    initiator, _ = fixed_pair()
    initiator.write_message()

    with pytest.raises(NoiseError):
        initiator.read_message(point + bytes(64))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=["zero", "one", "order8"])
def test_handshake_rejects_low_order_ephemeral_from_initiator(point: bytes) -> None:
    _, responder = fixed_pair()
    responder.read_message(point)

    # The first DH with the bad point happens when the responder answers.
    with pytest.raises(NoiseError):
        responder.write_message()


def rejection_text(tamper: Callable[[bytes], bytes]) -> str:
    """Return the error the initiator raises for a tampered second message."""
    initiator, responder = fixed_pair()
    responder.read_message(initiator.write_message())
    reply = tamper(responder.write_message())

    with pytest.raises(NoiseError) as info:
        initiator.read_message(reply)
    return str(info.value)


def test_reject_errors_do_not_say_which_check_failed() -> None:
    tampers: list[Callable[[bytes], bytes]] = [
        lambda m: m[:10],  # too short for the ephemeral key
        lambda m: m[:-1],  # truncated tag
        lambda m: m[:-1] + bytes([m[-1] ^ 1]),  # bad tag
        lambda m: LOW_ORDER_POINTS[0] + m[DHLEN:],  # invalid point
    ]

    texts = {rejection_text(tamper) for tamper in tampers}

    assert len(texts) == 1


# ---------------------------------------------------------------------------
# CipherState, nonces, SymmetricState, HKDF
# ---------------------------------------------------------------------------


def test_nonce_bytes_encodes_counter_big_endian_after_four_zero_bytes() -> None:
    assert nonce_bytes(0) == bytes(12)
    assert nonce_bytes(0x0102) == bytes.fromhex("000000000000000000000102")
    assert nonce_bytes(MAX_NONCE) == bytes(4) + b"\xff" * 8


@pytest.mark.parametrize("n", [-1, 2**64])
def test_nonce_bytes_rejects_out_of_range(n: int) -> None:
    with pytest.raises(NoiseError):
        nonce_bytes(n)


def test_cipherstate_matches_raw_aesgcm_with_nonce_bytes() -> None:
    key = bytes(range(32))
    cipher = CipherState(key)
    cipher.n = 7

    ciphertext = cipher.encrypt_with_ad(b"ad", b"hello")

    assert ciphertext == AESGCM(key).encrypt(nonce_bytes(7), b"hello", b"ad")
    assert cipher.n == 8


def test_cipherstate_without_key_passes_data_through() -> None:
    cipher = CipherState()

    assert not cipher.has_key()
    assert cipher.key is None
    assert cipher.encrypt_with_ad(b"ad", b"data") == b"data"
    assert cipher.decrypt_with_ad(b"ad", b"data") == b"data"


def test_cipherstate_rejects_wrong_key_length() -> None:
    with pytest.raises(NoiseError):
        CipherState(bytes(16))


def test_cipherstate_failed_decrypt_keeps_nonce() -> None:
    sender, receiver = CipherState(bytes(32)), CipherState(bytes(32))
    ciphertext = sender.encrypt_with_ad(b"", b"data")

    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"", ciphertext[:-1] + b"\x00")

    assert receiver.n == 0
    assert receiver.decrypt_with_ad(b"", ciphertext) == b"data"


def test_cipherstate_rejects_wrong_associated_data() -> None:
    ciphertext = CipherState(bytes(32)).encrypt_with_ad(b"one", b"data")

    with pytest.raises(NoiseError):
        CipherState(bytes(32)).decrypt_with_ad(b"two", ciphertext)


def test_transport_rejects_reserved_nonce() -> None:
    initiator, responder = completed_pair()
    send, _ = initiator.split()
    _, recv = responder.split()
    send.n = MAX_NONCE
    recv.n = MAX_NONCE

    with pytest.raises(NoiseError, match="nonce"):
        send.encrypt_with_ad(b"", b"data")
    with pytest.raises(NoiseError, match="nonce"):
        recv.decrypt_with_ad(b"", bytes(32))


def test_transport_allows_last_nonce_then_stops() -> None:
    initiator, responder = completed_pair()
    send, _ = initiator.split()
    _, recv = responder.split()
    send.n = recv.n = MAX_NONCE - 1

    assert recv.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"last")) == b"last"

    with pytest.raises(NoiseError):
        send.encrypt_with_ad(b"", b"one more")


def test_symmetricstate_pads_short_protocol_name() -> None:
    state = SymmetricState(PROTOCOL_NAME)

    assert state.get_handshake_hash() == PROTOCOL_NAME + bytes(4)
    assert not state.has_key()


def test_symmetricstate_hashes_long_protocol_name() -> None:
    name = b"Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s"

    state = SymmetricState(name)

    assert state.get_handshake_hash() == hashlib.sha256(name).digest()


@pytest.mark.parametrize("ikm", [b"", bytes(range(32))], ids=["empty", "dh"])
def test_hkdf_matches_rfc5869_with_chaining_key_as_salt(ikm: bytes) -> None:
    chaining_key = bytes(range(100, 132))
    reference = HKDF(hashes.SHA256(), length=64, salt=chaining_key, info=b"")

    output1, output2 = _hkdf(chaining_key, ikm)

    assert output1 + output2 == reference.derive(ikm)
