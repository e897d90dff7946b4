"""What survives a power cut, not only a crash.

A killed process leaves the kernel's page cache behind; a dead battery does not. A file's data is
durable once it was fsynced, and its name once the directory holding it was fsynced after the
name appeared (POSIX promises no more; ext4 happens to commit a new file's entry with the file's
fsync, other filesystems do not). A ``mkdir`` is a new name too: a folder whose entry was never
synced vanishes in a cut with everything under it, however carefully its files were synced.
``tests/lazyfs.py`` is a filesystem that forgets exactly what these promises do not cover.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the names in a directory (new, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` whose result survives a power cut: each folder it creates has its entry
    synced into its parent (the parent first, so a new name never points into a lost folder).
    Folders that already exist cost nothing."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile:
            d.mkdir()  # its entry is synced below all the same
        fsync_dir(d.parent)
    return path


def data_folder(path: str | os.PathLike[str]) -> Path:
    """A folder a program keeps its data in: created as :func:`make_dirs` does, and its own
    name synced into its parent even when it existed (someone may have made it with a plain
    ``mkdir`` just before: a cut would take it with everything the program then synced in it).
    One fsync per start."""
    path = make_dirs(path)
    fsync_dir(path.parent)
    return path
