"""A bare encrypted copy: AES-256-GCM per 1 MiB chunk over one TCP socket.

The baseline for what plain Python reaches with filexfer's cipher and
chunk size and nothing else: no handshake (both sides get the key from
the environment), no file digest, no protocol, one thread per side.

Frame: a 4-byte big-endian length, then that many bytes of ciphertext and
16-byte tag.  The nonce is a 12-byte big-endian counter.  A zero-length
frame ends the stream, so a cut connection is an error, not a short file.

    aesloop.py recv --listen-fd N --ready-fd M [--out FILE]   (else stdout)
    aesloop.py send --port P [--in FILE]                      (else stdin)

The receiver accepts one connection on an inherited listening socket,
says it is ready by closing the ready pipe, and fsyncs an output file
before it exits.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK = 1 << 20
TAG = 16
LENGTH = struct.Struct(">I")
KEY_VARIABLE = "BENCH_AESLOOP_KEY"


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


def nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


def fill(source: Readable, buffer: memoryview) -> int:
    """Read until BUFFER is full or the input ends (pipes give short reads)."""
    filled = 0
    while filled < len(buffer):
        got = source.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled


def recv_exactly(sock: socket.socket, buffer: memoryview) -> None:
    filled = 0
    while filled < len(buffer):
        got = sock.recv_into(buffer[filled:])
        if not got:
            raise ConnectionError("connection closed in the middle of a frame")
        filled += got


def send(sock: socket.socket, source: Readable, aead: AESGCM) -> None:
    plain = memoryview(bytearray(CHUNK))
    frame = memoryview(bytearray(LENGTH.size + CHUNK + TAG))
    counter = 0
    while size := fill(source, plain):
        LENGTH.pack_into(frame, 0, size + TAG)
        sealed = frame[LENGTH.size : LENGTH.size + size + TAG]
        aead.encrypt_into(nonce(counter), plain[:size], None, sealed)
        sock.sendall(frame[: LENGTH.size + size + TAG])
        counter += 1
    sock.sendall(LENGTH.pack(0))


def receive(sock: socket.socket, sink: BinaryIO, aead: AESGCM) -> None:
    header = memoryview(bytearray(LENGTH.size))
    sealed = memoryview(bytearray(CHUNK + TAG))
    plain = memoryview(bytearray(CHUNK))
    counter = 0
    while True:
        recv_exactly(sock, header)
        (length,) = LENGTH.unpack(header)
        if length == 0:
            return
        if not TAG < length <= CHUNK + TAG:
            raise ValueError(f"bad frame length {length}")

        recv_exactly(sock, sealed[:length])
        # decrypt_into raises on a bad tag before anything reaches SINK.
        aead.decrypt_into(nonce(counter), sealed[:length], None, plain[: length - TAG])
        sink.write(plain[: length - TAG])
        counter += 1


def run_receiver(args: argparse.Namespace, aead: AESGCM) -> None:
    listener = socket.socket(fileno=args.listen_fd)
    os.close(args.ready_fd)
    conn, _ = listener.accept()
    listener.close()
    with conn:
        if args.out is None:
            receive(conn, sys.stdout.buffer, aead)
            sys.stdout.buffer.flush()
            return
        with open(args.out, "xb") as sink:
            receive(conn, sink, aead)
            sink.flush()
            os.fsync(sink.fileno())


def run_sender(args: argparse.Namespace, aead: AESGCM) -> None:
    # Unbuffered: fill() reads straight into the chunk, with no extra copy.
    source = args.input if args.input is not None else sys.stdin.fileno()
    with (
        socket.create_connection(("127.0.0.1", args.port)) as sock,
        open(source, "rb", buffering=0, closefd=args.input is not None) as stream,
    ):
        send(sock, stream, aead)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    recv = roles.add_parser("recv")
    recv.add_argument("--listen-fd", type=int, required=True)
    recv.add_argument("--ready-fd", type=int, required=True)
    recv.add_argument("--out")
    sender = roles.add_parser("send")
    sender.add_argument("--port", type=int, required=True)
    sender.add_argument("--in", dest="input")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    aead = AESGCM(bytes.fromhex(os.environ[KEY_VARIABLE]))
    if args.role == "recv":
        run_receiver(args, aead)
    else:
        run_sender(args, aead)


if __name__ == "__main__":
    main(sys.argv[1:])
