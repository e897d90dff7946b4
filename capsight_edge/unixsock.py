"""Unix socket paths that fit. ``bind()`` and ``connect()`` take at most 107 bytes of path (and a
NUL); a data folder, a test's temporary folder or a benchmark's run folder deep in a tree easily
holds more. Every socket the project makes or asks a tool to make (the cart's control socket,
Ray's session sockets, the test filesystem's control socket) goes through here."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MAX_UNIX_PATH = 100  # bytes: AF_UNIX holds 107 and a NUL; a little kept in hand
#: What Ray appends to its temporary folder for its deepest socket
#: (``/session_2026-12-04_14-35-47_123456_12345/sockets/plasma_store``), with some room.
RAY_SOCKET_ROOM = 72


def fits(path: str | bytes | os.PathLike[str]) -> bool:
    return len(os.fsencode(path)) <= MAX_UNIX_PATH


@contextlib.contextmanager
def unix_socket_path(path: Path) -> Iterator[str]:
    """``path`` as bind() and sendto() can take it: itself when it fits, otherwise reached
    through its folder's descriptor in /proc/self/fd, which names the same file."""
    if fits(path):
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


@contextlib.contextmanager
def socket_folder(wanted: Path, room: int, prefix: str) -> Iterator[Path]:
    """A folder for sockets whose names take up to ``room`` bytes more: ``wanted`` when that
    fits, otherwise a short folder of its own in /tmp, removed with everything in it on exit.
    For a tool that makes its sockets itself (Ray, a child process), where /proc/self/fd cannot
    help."""
    if fits(os.fsencode(wanted) + b"x" * room):
        yield wanted
        return
    short = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@contextlib.contextmanager
def ray_temp_dir() -> Iterator[str | None]:
    """The ``_temp_dir`` (``--temp-dir``) for a Ray cluster started here: ``None`` (Ray's own
    choice, ``$TMPDIR/ray``) when its sockets fit under it, otherwise a short folder removed
    after the cluster stops. Ray refuses to start when a socket path would be too long."""
    default = Path(tempfile.gettempdir()) / "ray"
    with socket_folder(default, RAY_SOCKET_ROOM, "ray-") as folder:
        yield None if folder == default else str(folder)
