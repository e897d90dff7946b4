"""The power-cut filesystem on its own: what a cut keeps and what it forgets."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lazyfs import LazyMount, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"FUSE: {unavailable()}")


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyMount]:
    m = LazyMount(tmp_path / "lazy")
    m.start()
    try:
        yield m
    finally:
        m.stop()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def cut_and_remount(fs: LazyMount) -> Path:
    fs.cut()
    return fs.start()


def test_a_write_without_fsync_is_gone_after_a_cut(fs: LazyMount) -> None:
    write_synced(fs.mnt / "f", b"one")
    fsync_path(fs.mnt)
    with open(fs.mnt / "f", "ab") as fh:
        fh.write(b" two")  # written, visible, never synced
    assert (fs.mnt / "f").read_bytes() == b"one two"
    mnt = cut_and_remount(fs)
    assert (mnt / "f").read_bytes() == b"one"


def test_an_fsynced_file_in_a_synced_directory_survives(fs: LazyMount) -> None:
    (fs.mnt / "d").mkdir()
    fsync_path(fs.mnt)
    write_synced(fs.mnt / "d" / "f", os.urandom(3 * 4096 + 17))
    fsync_path(fs.mnt / "d")
    want = (fs.mnt / "d" / "f").read_bytes()
    mnt = cut_and_remount(fs)
    assert (mnt / "d" / "f").read_bytes() == want


def test_a_new_file_without_a_directory_fsync_is_gone(fs: LazyMount) -> None:
    write_synced(fs.mnt / "f", b"content synced, entry not")
    mnt = cut_and_remount(fs)
    assert not (mnt / "f").exists()


def test_a_rename_without_a_directory_fsync_is_undone(fs: LazyMount) -> None:
    write_synced(fs.mnt / "old", b"x")
    fsync_path(fs.mnt)
    os.rename(fs.mnt / "old", fs.mnt / "new")
    mnt = cut_and_remount(fs)
    assert sorted(os.listdir(mnt)) == ["old"] and (mnt / "old").read_bytes() == b"x"
    os.rename(mnt / "old", mnt / "new")
    fsync_path(mnt)
    mnt = cut_and_remount(fs)
    assert sorted(os.listdir(mnt)) == ["new"]


def test_a_rename_over_a_file_is_undone_with_the_old_content(fs: LazyMount) -> None:
    write_synced(fs.mnt / "target", b"old")
    write_synced(fs.mnt / "tmp", b"new")
    fsync_path(fs.mnt)
    os.replace(fs.mnt / "tmp", fs.mnt / "target")
    mnt = cut_and_remount(fs)
    assert (mnt / "target").read_bytes() == b"old" and (mnt / "tmp").read_bytes() == b"new"


def test_an_unlink_without_a_directory_fsync_is_undone(fs: LazyMount) -> None:
    write_synced(fs.mnt / "f", b"still here")
    fsync_path(fs.mnt)
    (fs.mnt / "f").unlink()
    mnt = cut_and_remount(fs)
    assert (mnt / "f").read_bytes() == b"still here"


def test_a_new_directory_needs_its_parent_synced(fs: LazyMount) -> None:
    (fs.mnt / "a" / "b").mkdir(parents=True)
    write_synced(fs.mnt / "a" / "b" / "f", b"deep")
    fsync_path(fs.mnt / "a" / "b")
    fsync_path(fs.mnt / "a")  # the root never synced: a is not durable
    mnt = cut_and_remount(fs)
    assert os.listdir(mnt) == []
    (mnt / "a" / "b").mkdir(parents=True)
    write_synced(mnt / "a" / "b" / "f", b"deep")
    for d in (mnt / "a" / "b", mnt / "a", mnt):
        fsync_path(d)
    mnt = cut_and_remount(fs)
    assert (mnt / "a" / "b" / "f").read_bytes() == b"deep"


def test_a_truncate_without_fsync_is_undone_and_pages_are_tracked(fs: LazyMount) -> None:
    data = os.urandom(10 * 4096)
    write_synced(fs.mnt / "f", data)
    fsync_path(fs.mnt)
    with open(fs.mnt / "f", "r+b") as fh:
        fh.seek(5 * 4096 + 3)
        fh.write(b"synced")  # one page changed, then synced
        fh.flush()
        os.fsync(fh.fileno())
        fh.truncate(4096)  # then cut short, not synced
    mnt = cut_and_remount(fs)
    want = data[: 5 * 4096 + 3] + b"synced" + data[5 * 4096 + 9 :]
    assert (mnt / "f").read_bytes() == want


def test_a_cut_counts_syncs_and_freezes_the_filesystem(fs: LazyMount) -> None:
    write_synced(fs.mnt / "f", b"x")
    with open(fs.mnt / "f", "ab") as fh:
        fh.write(b"y")
        fh.flush()
        os.fdatasync(fh.fileno())
    fsync_path(fs.mnt)
    counts = fs.stats()
    assert (counts["fsync"], counts["fdatasync"], counts["fsyncdir"]) == (1, 1, 1)
    reply = fs.cut()
    assert reply["kept"] == {"files": 1}
    assert not fs.mounted()


def test_sqlite_commits_survive_a_cut_and_the_database_stays_whole(fs: LazyMount) -> None:
    db = sqlite3.connect(fs.mnt / "j.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, v BLOB)")
    fsync_path(fs.mnt)  # the database file's own entry (SQLite syncs the WAL's, not the db's)
    for i in range(50):
        db.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(300)))
    db.execute("PRAGMA synchronous=OFF")
    for i in range(50, 80):
        db.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(300)))  # not synced
    fs.cut()  # with the connection open: a power cut, not a close (which would checkpoint)
    with contextlib.suppress(sqlite3.Error):
        db.close()
    mnt = fs.start()
    again = sqlite3.connect(mnt / "j.db")
    assert again.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n = again.execute("SELECT count(*) FROM t").fetchone()[0]
    again.close()
    assert 50 <= n <= 80


def test_it_mounts_deep_in_a_temporary_folder(tmp_path: Path) -> None:
    """A Unix socket's path holds 107 bytes: under a benchmark run's or pytest's folders the
    control socket goes in a short folder of its own, which goes at unmount."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    fs = LazyMount(deep)
    mnt = fs.start()
    try:
        short = fs.sock.parent
        assert short != deep and short.exists()
        write_synced(mnt / "kept", b"synced")
        fsync_path(mnt)
        assert fs.stats()["fsync"] >= 1
        fs.cut()
        assert not short.exists()
        mnt = fs.start()
        assert (mnt / "kept").read_bytes() == b"synced"
    finally:
        fs.stop()
    assert not fs.sock.parent.exists() or fs.sock.parent == deep
