"""The data the benchmark moves, and the check that a copy is identical.

Every workload is random bytes (incompressible, so no tool gains from
compression) written once into the temp dir.  Its manifest maps each
file's path, as it must appear under a destination directory, to its
SHA-256.  A copy counts only if the destination holds exactly that
manifest: a missing, extra or different file fails the run.  SHA-256 from
the standard library is deliberately independent of filexfer's own BLAKE3.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
FILES_PER_DIR = 100
DIRS_PER_DIR = 10


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; full mode follows the issue, quick is small."""

    big_file: int
    tree_files: int
    tree_file_size: int
    small_file: int


FULL = Sizes(
    big_file=1024 * MIB, tree_files=10_000, tree_file_size=4096, small_file=4096
)
QUICK = Sizes(big_file=32 * MIB, tree_files=300, tree_file_size=4096, small_file=4096)


@dataclass(frozen=True)
class Workload:
    """One thing to copy: a file or a directory tree, and what must arrive."""

    key: str
    title: str
    source: Path
    files: int
    size: int
    manifest: dict[str, str]
    unit: str  # "MB/s" or "files/s": what the table shows as the rate

    @property
    def is_tree(self) -> bool:
        return self.source.is_dir()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(top: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under TOP; others are flagged.

    Symlinks and special files are listed with a marker instead of a digest,
    so that they can never match a source file.
    """
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if Path(folder, d).is_symlink()]:
            path = Path(folder, name)
            relative = path.relative_to(top).as_posix()
            found[relative] = sha256_file(path) if _regular(path) else "not a file"
    return found


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def differences(expected: dict[str, str], found: dict[str, str]) -> str | None:
    """None if FOUND is exactly EXPECTED, else a short description."""
    missing = expected.keys() - found.keys()
    extra = found.keys() - expected.keys()
    changed = [p for p in expected.keys() & found.keys() if expected[p] != found[p]]
    if not (missing or extra or changed):
        return None

    parts = []
    for label, paths in (("missing", missing), ("extra", extra), ("differ", changed)):
        if paths:
            parts.append(f"{len(paths)} {label} (e.g. {min(paths)})")
    return "not identical: " + ", ".join(parts)


def verify(workload: Workload, destination: Path) -> str | None:
    """Check the copy under DESTINATION; None if it is identical."""
    return differences(workload.manifest, manifest(destination))


def random_file(path: Path, size: int) -> None:
    """SIZE bytes from the OS random source, written 1 MiB at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        left = size
        while left:
            step = min(left, MIB)
            stream.write(os.urandom(step))
            left -= step


def tree_path(top: Path, index: int) -> Path:
    """tree/dAA/dBB/fNNNNN.bin: 100 files per folder, 10 folders per level."""
    leaf = index // FILES_PER_DIR
    outer, inner = divmod(leaf, DIRS_PER_DIR)
    return top / f"d{outer:02d}" / f"d{inner:02d}" / f"f{index:05d}.bin"


def make_file(key: str, title: str, path: Path, size: int, unit: str) -> Workload:
    random_file(path, size)
    digests = {path.name: sha256_file(path)}
    return Workload(key, title, path, 1, size, digests, unit)


def make_tree(key: str, title: str, top: Path, count: int, size: int) -> Workload:
    for index in range(count):
        path = tree_path(top, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))

    # The copy lands as DEST/<top name>/..., whatever the tool.
    digests = {f"{top.name}/{rel}": sha for rel, sha in manifest(top).items()}
    return Workload(key, title, top, count, count * size, digests, "files/s")


KEYS = ("big", "tree", "small")


def create(root: Path, sizes: Sizes, keys: Sequence[str] = KEYS) -> list[Workload]:
    """Write the workloads named by keys under ROOT, in the table's order."""
    big, leaf, small = sizes.big_file, sizes.tree_file_size, sizes.small_file
    count = sizes.tree_files
    made = []
    if "big" in keys:
        title = f"{_size_title(big)} file"
        made.append(make_file("big", title, root / "big.bin", big, "MB/s"))
    if "tree" in keys:
        title = f"{count:,} x {_size_title(leaf)} files"
        made.append(make_tree("tree", title, root / "tree", count, leaf))
    if "small" in keys:
        title = f"one {_size_title(small)} file"
        path = root / "small" / "one.bin"
        made.append(make_file("small", title, path, small, "files/s"))
    return made


def _size_title(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"
