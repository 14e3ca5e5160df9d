"""Tests for filexfer.messages: every kind, exact layouts, malformed input.

The expected encodings are written out by hand from docs/protocol.md,
section 4, so the module is checked against the document, not itself.
"""

from __future__ import annotations

import pytest

from filexfer import messages as msgs
from filexfer.records import RecordDecoder, Sealer

DIGEST_A = bytes([0xAB]) * 32
DIGEST_B = bytes([0xCD]) * 32


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# (message, its encoding in hand-written hex)
KNOWN: list[tuple[msgs.Message, str]] = [
    (msgs.Hello(1, 1048640), "00 0001 00100040"),
    (
        msgs.Offer(1, 5, -1, 0o644, True, "a/b"),
        "01 0000000000000001 0000000000000005 ffffffffffffffff 000001a4 01 0003 612f62",
    ),
    (
        msgs.Offer(2**64 - 1, 0, 2**63 - 1, 0, False, ""),
        "01 ffffffffffffffff 0000000000000000 7fffffffffffffff 00000000 00 0000",
    ),
    (
        msgs.Offer(7, 0, 0, 0o755, False, "d", fresh=True, directory=True),
        "01 0000000000000007 0000000000000000 0000000000000000 000001ed 06 0001 64",
    ),
    (msgs.Accept(2, 0), "02 0000000000000002 0000000000000000 00"),
    (
        msgs.Accept(2, 4096, DIGEST_A),
        "02 0000000000000002 0000000000001000 01" + " ab" * 32,
    ),
    (msgs.Reject(3, 10, "exists"), "03 0000000000000003 0a 0006 657869737473"),
    (msgs.Data(b"\x00\xff"), "10 00ff"),
    (msgs.Data(b""), "10"),
    (
        msgs.End(4, 6, DIGEST_A),
        "11 0000000000000004 0000000000000006" + " ab" * 32,
    ),
    (msgs.Abort(5, 15, "changed"), "12 0000000000000005 0f 0007 6368616e676564"),
    (msgs.Done(6, DIGEST_B), "13 0000000000000006" + " cd" * 32),
    (msgs.Close(), "20"),
    (msgs.Error(4, "no"), "21 04 0002 6e6f"),
    (msgs.Error(2, "Ü"), "21 02 0002 c39c"),
    (msgs.List("", False), "30 00 0000"),
    (msgs.List("a", True), "30 01 0001 61"),
    (
        msgs.Entry(5, -1, 0o644, False, None, "a"),
        "31 0000000000000005 ffffffffffffffff 000001a4 00" + " 00" * 32 + " 0001 61",
    ),
    (
        msgs.Entry(0, 0, 0o755, True, DIGEST_B, "d"),
        "31 0000000000000000 0000000000000000 000001ed 03" + " cd" * 32 + " 0001 64",
    ),
    (msgs.Get("a/b", False, True), "32 02 0003 612f62"),
    (msgs.Get("c", True, False), "32 01 0001 63"),
]
KNOWN_IDS = [f"{type(m).__name__}-{i}" for i, (m, _) in enumerate(KNOWN)]
# Every kind but Data, whose end is the end of its record.
FRAMED = [(m, w) for m, w in KNOWN if not isinstance(m, msgs.Data)]
FRAMED_IDS = [
    name
    for name, (m, _) in zip(KNOWN_IDS, KNOWN, strict=True)
    if not isinstance(m, msgs.Data)
]

MALFORMED: dict[str, str] = {
    "empty": "",
    "unknown type 0x05": "05",
    "unknown type 0xff": "ff 00",
    "unknown type 0x14": "14 0000000000000000",
    "truncated hello": "00 0001",
    "trailing byte after hello": "00 0001 00100040 00",
    "trailing byte after close": "20 00",
    "truncated accept": "02 0000000000000002 00000000000000",
    "accept without flags": "02 0000000000000002 0000000000000000",
    "trailing byte after accept": "02 0000000000000002 0000000000000000 00 00",
    "accept flag without digest": "02 0000000000000002 0000000000000000 01",
    "accept with a short digest": "02 0000000000000002 0000000000000000 01"
    + " ab" * 31,
    "accept flags 2": "02 0000000000000002 0000000000000000 02",
    "offer flags 8": "01 0000000000000001 0000000000000005 0000000000000000"
    " 000001a4 08 0003 612f62",
    "directory offer with a size": "01 0000000000000001 0000000000000005"
    " 0000000000000000 000001ed 04 0001 64",
    "list flags 2": "30 02 0000",
    "entry flags 4": "31 0000000000000005 0000000000000000 000001a4 04"
    + " 00" * 32
    + " 0001 61",
    "get flags 4": "32 04 0001 61",
    "get without text": "32 01",
    "offer flags 0x81": "01 0000000000000001 0000000000000005 0000000000000000"
    " 000001a4 81 0003 612f62",
    "offer without text length": "01 0000000000000001 0000000000000005"
    " 0000000000000000 000001a4 00",
    "offer with half a text length": "01 0000000000000001 0000000000000005"
    " 0000000000000000 000001a4 00 00",
    "text shorter than its length": "03 0000000000000003 0a 0006 6578",
    "text longer than its length": "03 0000000000000003 0a 0002 657878",
    "text not utf-8": "21 04 0002 fffe",
    "text with a surrogate": "21 04 0003 eda080",
    "text over the limit": "21 04 1001" + " 61" * 4097,
    "truncated end digest": "11 0000000000000004 0000000000000006" + " ab" * 31,
    "trailing byte after done": "13 0000000000000006" + " cd" * 32 + " 00",
    "truncated done": "13 0000000000000006 cdcd",
    "error without text": "21 04",
}


@pytest.mark.parametrize(("message", "wire"), KNOWN, ids=KNOWN_IDS)
def test_encode_matches_protocol_layout(message: msgs.Message, wire: str) -> None:
    assert msgs.encode(message) == unhex(wire)


@pytest.mark.parametrize(("message", "wire"), KNOWN, ids=KNOWN_IDS)
def test_decode_matches_protocol_layout(message: msgs.Message, wire: str) -> None:
    decoded = msgs.decode(unhex(wire))

    assert type(decoded) is type(message)
    if isinstance(message, msgs.Data):
        assert isinstance(decoded, msgs.Data)
        assert bytes(decoded.payload) == bytes(message.payload)
    else:
        assert decoded == message


def test_every_kind_is_covered_by_the_known_answers() -> None:
    covered = {msgs.encode(message)[0] for message, _ in KNOWN}
    assert covered == {int(kind) for kind in msgs.Kind}


@pytest.mark.parametrize(("message", "wire"), FRAMED, ids=FRAMED_IDS)
def test_every_proper_prefix_is_rejected(message: msgs.Message, wire: str) -> None:
    # Fed one byte at a time, nothing decodes before the message is whole.
    raw = unhex(wire)
    for end in range(len(raw)):
        with pytest.raises(msgs.MessageError):
            msgs.decode(raw[:end])


def test_data_prefix_is_a_shorter_data() -> None:
    # Data has no length of its own: the record around it frames it.
    decoded = msgs.decode(unhex("10 00ff")[:2])

    assert isinstance(decoded, msgs.Data) and bytes(decoded.payload) == b"\x00"


@pytest.mark.parametrize(("message", "wire"), KNOWN, ids=KNOWN_IDS)
def test_trailing_bytes_are_rejected(message: msgs.Message, wire: str) -> None:
    raw = unhex(wire) + b"\x00"
    if isinstance(message, msgs.Data):
        decoded = msgs.decode(raw)
        assert isinstance(decoded, msgs.Data)
        assert bytes(decoded.payload) == bytes(message.payload) + b"\x00"
    else:
        with pytest.raises(msgs.MessageError):
            msgs.decode(raw)


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
def test_reject_malformed_message(wire: str) -> None:
    with pytest.raises(msgs.MessageError):
        msgs.decode(unhex(wire))


def test_decode_accepts_a_memoryview_of_a_larger_buffer() -> None:
    buffer = bytearray(msgs.encode(msgs.Accept(7, 0)) + b"unused")

    assert msgs.decode(memoryview(buffer)[:18]) == msgs.Accept(7, 0)


def test_data_payload_is_a_view_of_the_callers_buffer() -> None:
    buffer = bytearray(b"\x10abc")
    decoded = msgs.decode(memoryview(buffer))
    assert isinstance(decoded, msgs.Data)

    buffer[1] = ord("x")

    assert bytes(decoded.payload) == b"xbc"


def test_text_at_the_limit_round_trips() -> None:
    name = "n" * msgs.MAX_TEXT
    wire = msgs.encode(msgs.Offer(0, 0, 0, 0o600, False, name))

    decoded = msgs.decode(wire)

    assert isinstance(decoded, msgs.Offer) and decoded.name == name


@pytest.mark.parametrize(
    "text",
    ["n" * (msgs.MAX_TEXT + 1), "é" * (msgs.MAX_TEXT // 2 + 1)],
    ids=["ascii", "two-byte chars"],
)
def test_encode_refuses_text_over_the_limit(text: str) -> None:
    for message in (
        msgs.Offer(0, 0, 0, 0, False, text),
        msgs.Reject(0, 10, text),
        msgs.Abort(0, 15, text),
        msgs.Error(2, text),
    ):
        with pytest.raises(ValueError):
            msgs.encode(message)


def test_hand_built_text_over_the_limit_is_rejected_on_decode() -> None:
    body = (msgs.MAX_TEXT + 1).to_bytes(2, "big") + b"a" * (msgs.MAX_TEXT + 1)

    with pytest.raises(msgs.MessageError):
        msgs.decode(b"\x03" + bytes(8) + b"\x0a" + body)


def test_encode_rejects_a_non_message() -> None:
    with pytest.raises(TypeError):
        msgs.encode("not a message")  # type: ignore[arg-type]


def test_messages_are_frozen() -> None:
    offer = msgs.Offer(0, 1, 2, 3, False, "x")
    with pytest.raises(AttributeError):
        offer.name = "y"  # type: ignore[misc]


# -- messages through the record layer, fed three ways ---------------------

KEY = bytes(32)


def job_messages() -> list[msgs.Message]:
    return [message for message, _ in KNOWN if not isinstance(message, msgs.Hello)]


def sealed_job() -> bytes:
    sealer = Sealer(KEY)
    return b"".join(sealer.seal(msgs.encode(m)) for m in job_messages())


def decode_all(decoder: RecordDecoder) -> list[msgs.Message]:
    out = []
    while (plaintext := decoder.next_plaintext()) is not None:
        out.append(msgs.decode(bytes(plaintext)))
    return out


def same(left: list[msgs.Message], right: list[msgs.Message]) -> bool:
    return [msgs.encode(m) for m in left] == [msgs.encode(m) for m in right]


def test_job_through_records_fed_whole() -> None:
    decoder = RecordDecoder(KEY)
    decoder.feed(sealed_job())

    assert same(decode_all(decoder), job_messages())


def test_job_through_records_fed_one_byte_at_a_time() -> None:
    decoder = RecordDecoder(KEY)
    received: list[msgs.Message] = []
    for byte in sealed_job():
        decoder.feed(bytes([byte]))
        received += decode_all(decoder)

    assert same(received, job_messages())


def test_job_through_records_leaves_trailing_bytes_alone() -> None:
    decoder = RecordDecoder(KEY)
    decoder.feed(sealed_job() + b"\x00\x00")

    assert same(decode_all(decoder), job_messages())
    assert decoder.pending == 2
