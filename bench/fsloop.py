"""The disk work of storing a tree the way filexfer's receiver does, alone.

A floor for the tree workload: one Python thread copies every file of
SOURCE into DEST/<SOURCE's name> with the same system calls per file as
the receiver (an exclusive part file, the data, its mode, mtime and
digest attribute, then a rename to the final name), and one syncfs at
the end.  No network, no encryption, no digest, no protocol: what is
left is the cost of the file system and of calling it from Python.

    fsloop.py SOURCE DEST
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

DIGEST_ATTR = "user.filexfer.bench"
DIGEST_VALUE = bytes(48)  # the size of the receiver's digest attribute


def store(source_fd: int, name: str, dest_fd: int) -> None:
    info = os.fstat(source_fd)
    data = os.read(source_fd, info.st_size)
    part = f".filexfer-{os.urandom(8).hex()}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(part, flags, 0o600, dir_fd=dest_fd)
    try:
        os.write(fd, data)
        os.fchmod(fd, stat.S_IMODE(info.st_mode))
        os.utime(fd, ns=(info.st_mtime_ns, info.st_mtime_ns))
        os.setxattr(fd, DIGEST_ATTR, DIGEST_VALUE)
    finally:
        os.close(fd)
    os.rename(part, name, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)


def copy_tree(source: str, dest: str) -> None:
    top = os.path.join(dest, os.path.basename(source.rstrip("/")))
    for folder, dirs, files in os.walk(source):
        dirs.sort()
        here = os.path.join(top, os.path.relpath(folder, source))
        os.makedirs(here, exist_ok=True)
        dest_fd = os.open(here, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in sorted(files):
                source_fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    store(source_fd, name, dest_fd)
                finally:
                    os.close(source_fd)
        finally:
            os.close(dest_fd)


def sync_file_system(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    source, dest = argv
    copy_tree(source, dest)
    sync_file_system(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
