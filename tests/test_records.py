"""Tests for filexfer.records: sealing, opening and the stream decoder.

Everything here is sans-IO: byte strings in, plaintexts or errors out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from filexfer.records import (
    HEADER_LEN,
    MAX_COUNTER,
    MAX_PLAINTEXT,
    TAG_LEN,
    Opener,
    RecordDecoder,
    RecordError,
    Sealer,
    nonce,
    parse_length,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHUNK = 256  # chunk size C for the stream tests; small keeps them fast
STREAM_LENGTHS = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 500]


def payload(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(size))


def seal_stream(data: bytes, chunk: int = CHUNK, key: bytes = KEY) -> list[bytes]:
    """Cut data into records of at most chunk bytes (one empty record for b"")."""
    sealer = Sealer(key)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    return [sealer.seal(piece) for piece in pieces]


def feed_whole(decoder: RecordDecoder, wire: bytes) -> list[bytes]:
    decoder.feed(wire)
    return drain(decoder)


def feed_bytewise(decoder: RecordDecoder, wire: bytes) -> list[bytes]:
    out = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        out += drain(decoder)
    return out


def feed_with_trailing(decoder: RecordDecoder, wire: bytes) -> list[bytes]:
    # A header and part of a body of the next record: left alone, not an error.
    decoder.feed(wire + b"\x00\x00\x00\x20" + b"partial")
    out = drain(decoder)
    assert decoder.pending == HEADER_LEN + len(b"partial")
    return out


FEEDERS: dict[str, Callable[[RecordDecoder, bytes], list[bytes]]] = {
    "whole": feed_whole,
    "bytewise": feed_bytewise,
    "trailing": feed_with_trailing,
}


def drain(decoder: RecordDecoder) -> list[bytes]:
    out = []
    while (plaintext := decoder.next_plaintext()) is not None:
        out.append(plaintext)
    return out


# -- layout ----------------------------------------------------------------


def test_nonce_is_four_zero_bytes_then_big_endian_counter() -> None:
    assert nonce(0) == bytes(12)
    assert nonce(1) == bytes(11) + b"\x01"
    assert nonce(0x0102030405060708) == bytes(4) + bytes(range(1, 9))


def test_record_layout_matches_raw_aesgcm_with_length_as_ad() -> None:
    plaintext = b"hello, records"
    sealer = Sealer(KEY)
    first, second = sealer.seal(plaintext), sealer.seal(plaintext)

    header = struct.pack(">I", len(plaintext) + TAG_LEN)
    aead = AESGCM(KEY)
    assert first == header + aead.encrypt(nonce(0), plaintext, header)
    assert second == header + aead.encrypt(nonce(1), plaintext, header)


def test_seal_into_writes_header_and_body_into_caller_buffer() -> None:
    out = bytearray(100)
    written = Sealer(KEY).seal_into(b"abc", memoryview(out))

    assert written == HEADER_LEN + 3 + TAG_LEN
    assert bytes(out[:written]) == Sealer(KEY).seal(b"abc")
    assert out[written:] == bytes(100 - written)


def test_record_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        Sealer(bytes(16))
    with pytest.raises(ValueError):
        Opener(bytes(31))


# -- round trips -----------------------------------------------------------


@pytest.mark.parametrize("feeder", FEEDERS.values(), ids=FEEDERS.keys())
@pytest.mark.parametrize("size", STREAM_LENGTHS)
def test_stream_round_trip(
    size: int, feeder: Callable[[RecordDecoder, bytes], list[bytes]]
) -> None:
    data = payload(size)
    records = seal_stream(data)

    plaintexts = feeder(RecordDecoder(KEY), b"".join(records))

    assert len(plaintexts) == len(records)
    assert b"".join(plaintexts) == data


def test_stream_round_trip_with_full_size_chunks() -> None:
    chunk = 1 << 20
    data = payload(2 * chunk + 500)
    records = seal_stream(data, chunk)

    plaintexts = feed_whole(RecordDecoder(KEY), b"".join(records))

    assert [len(p) for p in plaintexts] == [chunk, chunk, 500]
    assert b"".join(plaintexts) == data


def test_largest_allowed_record_round_trips() -> None:
    data = payload(MAX_PLAINTEXT)
    record = Sealer(KEY).seal(data)

    assert feed_whole(RecordDecoder(KEY), record) == [data]


def test_open_into_returns_plaintext_length() -> None:
    record = Sealer(KEY).seal(b"xyz")
    out = bytearray(64)

    size = Opener(KEY).open_into(
        record[:HEADER_LEN], memoryview(record)[4:], memoryview(out)
    )

    assert size == 3 and out[:3] == b"xyz"


# -- truncation ------------------------------------------------------------


def test_truncation_mid_record_yields_nothing_of_that_record() -> None:
    records = seal_stream(payload(2 * CHUNK + 500))
    cut = b"".join(records)[: len(records[0]) + 10]
    decoder = RecordDecoder(KEY)

    plaintexts = feed_whole(decoder, cut)

    assert plaintexts == [payload(CHUNK)]
    assert decoder.pending == 10  # held back, never returned unauthenticated


def test_truncation_at_record_edge_is_left_to_the_message_layer() -> None:
    # A stream cut between records looks like a shorter stream here; the
    # session catches it because it ends with an explicit Close.
    records = seal_stream(payload(2 * CHUNK))
    decoder = RecordDecoder(KEY)

    plaintexts = feed_whole(decoder, records[0])

    assert plaintexts == [payload(CHUNK)]
    assert decoder.pending == 0


def test_truncated_header_waits_for_more() -> None:
    decoder = RecordDecoder(KEY)
    decoder.feed(b"\x00\x00")

    assert decoder.next_plaintext() is None
    assert decoder.pending == 2


# -- tampering -------------------------------------------------------------


def flip(data: bytes, position: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 0x01
    return bytes(changed)


def test_flipped_byte_in_first_record_fails_before_any_plaintext() -> None:
    records = seal_stream(payload(2 * CHUNK + 500))
    records[0] = flip(records[0], HEADER_LEN + 5)
    decoder = RecordDecoder(KEY)
    decoder.feed(b"".join(records))

    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_flipped_byte_in_last_record_fails_that_record() -> None:
    records = seal_stream(payload(2 * CHUNK + 500))
    records[-1] = flip(records[-1], len(records[-1]) - 1)
    decoder = RecordDecoder(KEY)
    decoder.feed(b"".join(records))

    data = payload(2 * CHUNK + 500)
    for start in range(0, len(data) - CHUNK, CHUNK):
        assert decoder.next_plaintext() == data[start : start + CHUNK]
    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_flipped_length_byte_fails_even_when_in_range() -> None:
    # The length is the associated data, so shortening it breaks the tag.
    record = Sealer(KEY).seal(payload(40))
    shorter = struct.pack(">I", len(record) - HEADER_LEN - 1) + record[4:-1]
    decoder = RecordDecoder(KEY)
    decoder.feed(shorter)

    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_reordered_records_fail() -> None:
    records = seal_stream(payload(3 * CHUNK))
    decoder = RecordDecoder(KEY)
    decoder.feed(records[1] + records[0])

    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_replayed_record_fails() -> None:
    records = seal_stream(payload(2 * CHUNK))
    decoder = RecordDecoder(KEY)
    decoder.feed(records[0] + records[0])

    assert decoder.next_plaintext() == payload(CHUNK)
    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_dropped_record_fails_the_next_one() -> None:
    records = seal_stream(payload(3 * CHUNK))
    decoder = RecordDecoder(KEY)
    decoder.feed(records[0] + records[2])

    assert decoder.next_plaintext() == payload(CHUNK)
    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_wrong_key_fails() -> None:
    decoder = RecordDecoder(OTHER_KEY)
    decoder.feed(seal_stream(b"secret")[0])

    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_every_failure_has_the_same_message() -> None:
    records = seal_stream(payload(2 * CHUNK))
    cases = [
        (KEY, flip(records[0], 20)),
        (KEY, records[1]),
        (OTHER_KEY, records[0]),
    ]
    messages = set()
    for key, wire in cases:
        opener = Opener(key)
        with pytest.raises(RecordError) as caught:
            out = memoryview(bytearray(len(wire)))
            opener.open_into(wire[:4], memoryview(wire)[4:], out)
        messages.add(str(caught.value))

    assert len(messages) == 1


# -- length limits ---------------------------------------------------------


def test_length_over_max_is_rejected_from_the_header_alone() -> None:
    decoder = RecordDecoder(KEY, max_plaintext=1024)
    decoder.feed(struct.pack(">I", 1024 + TAG_LEN + 1))  # no body at all

    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_huge_length_is_rejected_before_buffering() -> None:
    decoder = RecordDecoder(KEY)
    decoder.feed(b"\xff\xff\xff\xff")

    with pytest.raises(RecordError):
        decoder.next_plaintext()
    assert decoder.pending == HEADER_LEN


def test_length_at_max_waits_for_the_body() -> None:
    decoder = RecordDecoder(KEY, max_plaintext=1024)
    decoder.feed(struct.pack(">I", 1024 + TAG_LEN))

    assert decoder.next_plaintext() is None


@pytest.mark.parametrize("length", [0, 1, TAG_LEN - 1])
def test_length_shorter_than_a_tag_is_rejected(length: int) -> None:
    with pytest.raises(RecordError):
        parse_length(struct.pack(">I", length), MAX_PLAINTEXT)


def test_parse_length_bounds() -> None:
    assert parse_length(struct.pack(">I", TAG_LEN), 1024) == TAG_LEN
    assert parse_length(struct.pack(">I", 1024 + TAG_LEN), 1024) == 1024 + TAG_LEN
    with pytest.raises(RecordError):
        parse_length(struct.pack(">I", 1024 + TAG_LEN + 1), 1024)


# -- sticky errors and counters --------------------------------------------


def test_decoder_error_is_sticky() -> None:
    records = seal_stream(payload(2 * CHUNK))
    decoder = RecordDecoder(KEY)
    decoder.feed(flip(records[0], 10))
    with pytest.raises(RecordError):
        decoder.next_plaintext()

    decoder.feed(records[1])  # would be valid after a good first record
    with pytest.raises(RecordError):
        decoder.next_plaintext()
    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_decoder_length_error_is_sticky() -> None:
    decoder = RecordDecoder(KEY)
    decoder.feed(b"\x00\x00\x00\x01")
    with pytest.raises(RecordError):
        decoder.next_plaintext()

    with pytest.raises(RecordError):
        decoder.next_plaintext()


def test_counters_start_at_zero_for_each_new_sealer() -> None:
    # Fresh keys per connection, and the counter restarts with them.
    assert Sealer(KEY).seal(b"a") == Sealer(KEY).seal(b"a")
    assert Sealer(KEY).counter == 0


def test_sealer_stops_before_the_last_counter() -> None:
    sealer = Sealer(KEY)
    sealer.counter = MAX_COUNTER - 1

    last = sealer.seal(b"last")  # counter 2**64 - 2 is still allowed
    with pytest.raises(RecordError):
        sealer.seal(b"wrapped")

    header = last[:HEADER_LEN]
    assert AESGCM(KEY).decrypt(nonce(MAX_COUNTER - 1), last[4:], header) == b"last"


def test_sealer_stays_stopped_after_exhaustion() -> None:
    sealer = Sealer(KEY)
    sealer.counter = MAX_COUNTER
    for _ in range(2):
        with pytest.raises(RecordError):
            sealer.seal(b"x")
    assert sealer.counter == MAX_COUNTER


def test_opener_stops_before_the_last_counter() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    sealer.counter = opener.counter = MAX_COUNTER - 1
    record = sealer.seal(b"z")
    out = memoryview(bytearray(8))

    assert opener.open_into(record[:4], memoryview(record)[4:], out) == 1
    assert out.tobytes()[:1] == b"z"
    with pytest.raises(RecordError):
        opener.open_into(record[:4], memoryview(record)[4:], out)
