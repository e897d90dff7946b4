"""A test filesystem that forgets what was never made durable, for power-cut tests.

A FUSE filesystem (mfusepy over Debian's libfuse3) that passes every operation through to a
backing folder and keeps, beside it, what a power cut would leave:

- a file's durable content is what it held at its last ``fsync``/``fdatasync`` (or at mount);
- a directory's durable entries are what it listed at its last ``fsync`` of the directory (or
  at mount): a new file, a rename or an unlink is undone by a cut unless its directory was
  fsynced after it, whatever was done to the file itself.

:meth:`LazyMount.cut` is the power cut: the filesystem freezes (every operation fails with EIO),
rebuilds the backing folder from the durable state alone, and is unmounted; :meth:`start` mounts
it again over what survived, which counts as durable from then on. This is the model of
Jepsen's LazyFS and SQLite's crash tests, and stricter than ext4's defaults (which, for one,
commit a new file's directory entry with an fsync of the file): code that is safe here is safe
on any POSIX filesystem that keeps its promises.

How it keeps the durable state cheaply: a file nobody changed since its last sync is "clean"
(its live content is its durable content); its first change copies it into a snapshot, and
every later write marks the 4 KiB pages it touched; a sync copies only those pages into the
snapshot. A directory likewise snapshots its entries (name -> node) at its first change after a
sync. Unlinking a clean file snapshots it first, so a cut can bring it back.

Counts (syncs by kind, writes, bytes) are kept and returned by :meth:`LazyMount.stats` and
:meth:`LazyMount.cut`, so a benchmark can report fsyncs per sealed bundle.

Run ``python -m tests.lazyfs serve BACKING STATE MOUNT SOCKET`` for the filesystem alone;
:class:`LazyMount` starts it as a child process and talks to it over the Unix socket.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

from capsight_edge.unixsock import socket_folder

PAGE = 4096


def unavailable() -> str | None:
    """Why this machine cannot run the filesystem, or None when it can."""
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and no fusermount3 (Debian's fuse3) to mount as a user"
    try:
        import mfusepy  # noqa: F401  (loads libfuse3 through ctypes)
    except (ImportError, OSError, AttributeError) as exc:
        return f"mfusepy cannot load libfuse3 (Debian's libfuse3-3): {exc}"
    if shutil.which("fusermount3") is None and shutil.which("umount") is None:
        return "neither fusermount3 nor umount to unmount with"
    return None


class _Node:
    __slots__ = ("dirty", "entries", "id", "is_dir", "mode", "path", "snapshot", "special")

    def __init__(self, nid: int, is_dir: bool, path: str | None, mode: int) -> None:
        self.id = nid
        self.is_dir = is_dir
        self.path = path  # a live path, None once unlinked
        self.mode = mode
        self.special = False  # a socket or fifo: nothing to keep
        # files: snapshot file name in the state folder (None: clean), pages changed since
        self.snapshot: str | None = None
        self.dirty: set[int] = set()
        # directories: durable entries (None: clean, the live listing is durable)
        self.entries: dict[str, int] | None = None


def _raise(code: int) -> NoReturn:
    from mfusepy import FuseOSError

    raise FuseOSError(code)


class LazyOps:  # the mfusepy Operations protocol, path-based
    use_ns = True

    def __init__(self, backing: Path, state: Path) -> None:
        self.backing = str(backing)
        self.state = state
        self.mutex = threading.RLock()
        self.frozen = False
        self.counts: Counter[str] = Counter()
        self.nodes: dict[int, _Node] = {}
        self.live: dict[str, int] = {}  # live path ("/a/b") -> node id
        self.fh_node: dict[int, int] = {}  # open file handle -> node id
        self._next = 0
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        # everything already in the backing folder at mount is durable
        self._add("/", True)
        for dirpath, dirnames, filenames in os.walk(self.backing):
            rel = "/" + os.path.relpath(dirpath, self.backing).lstrip(".")
            rel = "/" if rel in ("/", "//") else rel.rstrip("/")
            for d in dirnames:
                self._add(self._join(rel, d), True)
            for f in filenames:
                node = self._add(self._join(rel, f), False)
                node.special = not stat.S_ISREG(node.mode)

    # -- bookkeeping -------------------------------------------------------------------------

    @staticmethod
    def _join(parent: str, name: str) -> str:
        return "/" + name if parent == "/" else f"{parent}/{name}"

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        parent, _, name = path.rpartition("/")
        return (parent or "/"), name

    def _add(self, path: str, is_dir: bool, mode: int = 0) -> _Node:
        self._next += 1
        if not mode:
            mode = os.lstat(self._real(path)).st_mode
        node = _Node(self._next, is_dir, path, mode)
        self.nodes[node.id] = node
        self.live[path] = node.id
        return node

    def _real(self, path: str) -> str:
        return self.backing + path if path != "/" else self.backing

    def _live_entries(self, dir_path: str) -> dict[str, int]:
        return {
            name: self.live[self._join(dir_path, name)]
            for name in os.listdir(self._real(dir_path))
            if self._join(dir_path, name) in self.live
        }

    def _dir_changing(self, dir_path: str) -> None:
        """Snapshot a clean directory's entries before its first change after a sync."""
        node = self.nodes[self.live[dir_path]]
        if node.entries is None:
            node.entries = self._live_entries(dir_path)

    def _file_changing(self, node: _Node) -> None:
        """Snapshot a clean file's content before its first change after a sync."""
        if node.snapshot is None and node.path is not None and not node.special:
            node.snapshot = str(node.id)
            shutil.copyfile(self._real(node.path), self.state / node.snapshot)
            node.dirty.clear()

    def _check(self) -> None:
        if self.frozen:
            _raise(errno.EIO)

    def _node_of(self, path: str | None, fh: int | None) -> _Node:
        if fh is not None and fh in self.fh_node:
            return self.nodes[self.fh_node[fh]]
        if path is not None and path in self.live:
            return self.nodes[self.live[path]]
        _raise(errno.ENOENT)

    # -- the durable state -------------------------------------------------------------------

    def _sync_file(self, node: _Node, fd: int) -> None:
        if node.snapshot is None:
            return  # clean: nothing to make durable
        size = os.fstat(fd).st_size
        snap = self.state / node.snapshot
        # the handle may be write-only: read through /proc (works for an unlinked file too)
        with open(f"/proc/self/fd/{fd}", "rb") as src, open(snap, "r+b") as out:
            for page in sorted(p for p in node.dirty if p * PAGE < size):
                out.seek(page * PAGE)
                out.write(os.pread(src.fileno(), PAGE, page * PAGE))
            out.truncate(size)
        node.dirty.clear()

    def rebuild(self) -> dict[str, int]:
        """Replace the backing folder with the durable state alone (called frozen)."""
        new = self.backing + ".cut"
        shutil.rmtree(new, ignore_errors=True)
        kept = Counter[str]()

        def build(dir_path: str | None, node: _Node, out: str) -> None:
            entries = node.entries
            if entries is None:
                assert dir_path is not None, "a removed directory always has a snapshot"
                entries = self._live_entries(dir_path)
            for name, nid in entries.items():
                child, target = self.nodes[nid], os.path.join(out, name)
                if child.is_dir:
                    os.mkdir(target)
                    kept["dirs"] += 1
                    build(child.path if child.entries is None else None, child, target)
                elif child.special:
                    continue
                else:
                    if child.snapshot is not None:
                        shutil.copyfile(self.state / child.snapshot, target)
                    else:
                        assert child.path is not None, "an unlinked file always has a snapshot"
                        shutil.copyfile(self._real(child.path), target)
                    os.chmod(target, stat.S_IMODE(child.mode))
                    kept["files"] += 1

        os.mkdir(new)
        build("/", self.nodes[self.live["/"]], new)
        shutil.rmtree(self.backing)
        os.rename(new, self.backing)
        return dict(kept)

    # -- operations --------------------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        with self.mutex:
            self._check()
            if fh is not None and fh in self.fh_node:
                st = os.fstat(fh)
            elif path is not None:
                try:
                    st = os.lstat(self._real(path))
                except FileNotFoundError:
                    _raise(errno.ENOENT)
            else:
                _raise(errno.ENOENT)
            return {
                k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid")
            } | {
                "st_atime": st.st_atime_ns,
                "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns,
            }

    def access(self, path: str, amode: int) -> int:
        with self.mutex:
            self._check()
            if not os.access(self._real(path), amode):
                _raise(errno.EACCES)
            return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.backing)
        return {
            k: getattr(sv, k)
            for k in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax",
            )
        }  # fmt: skip

    def readdir(self, path: str, fh: int) -> list[str]:
        with self.mutex:
            self._check()
            return [".", "..", *os.listdir(self._real(path))]

    def opendir(self, path: str) -> int:
        with self.mutex:
            self._check()
            if path not in self.live:
                _raise(errno.ENOENT)
            return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        with self.mutex:
            self._check()
            if path is None or path not in self.live:
                _raise(errno.EIO)
            self.nodes[self.live[path]].entries = None  # its live listing is now durable
            self.counts["fsyncdir"] += 1
            return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self.mutex:
            self._check()
            parent, _ = self._split(path)
            self._dir_changing(parent)
            os.mkdir(self._real(path), mode)
            node = self._add(path, True)
            node.entries = {}  # a new directory is durably empty until it is synced
            return 0

    def rmdir(self, path: str) -> int:
        with self.mutex:
            self._check()
            parent, _ = self._split(path)
            self._dir_changing(parent)
            self._dir_changing(path)
            os.rmdir(self._real(path))
            self.nodes[self.live.pop(path)].path = None
            return 0

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        with self.mutex:
            self._check()
            if path in self.live:  # raced with another creator: an open
                if flags & os.O_EXCL:
                    _raise(errno.EEXIST)
                return self.open(path, flags & ~os.O_CREAT)
            parent, _ = self._split(path)
            self._dir_changing(parent)
            fd = os.open(self._real(path), (flags & ~os.O_APPEND) | os.O_CREAT | os.O_EXCL, mode)
            node = self._add(path, False)
            node.snapshot = str(node.id)  # a new file is durably empty until synced
            (self.state / node.snapshot).write_bytes(b"")
            self.fh_node[fd] = node.id
            return fd

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            self._check()
            node = self._node_of(path, None)
            if flags & os.O_TRUNC:
                self._file_changing(node)
                node.dirty.update(range(os.stat(self._real(path)).st_size // PAGE + 1))
            # the kernel computes O_APPEND offsets itself; pwrite must land where it says
            fd = os.open(self._real(path), flags & ~(os.O_CREAT | os.O_APPEND))
            self.fh_node[fd] = node.id
            return fd

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            self._check()
            return os.pread(fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            self._check()
            node = self._node_of(path, fh)
            self._file_changing(node)
            n = os.pwrite(fh, data, offset)
            node.dirty.update(range(offset // PAGE, (offset + max(n, 1) - 1) // PAGE + 1))
            self.counts["writes"] += 1
            self.counts["bytes"] += n
            return n

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self.mutex:
            self._check()
            node = self._node_of(path, fh)
            self._file_changing(node)
            real = None if fh is not None else self._real(path or "/")
            old = os.fstat(fh).st_size if fh is not None else os.stat(real or "").st_size
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(real or "", length)
            lo, hi = min(old, length), max(old, length)
            node.dirty.update(range(lo // PAGE, hi // PAGE + 1))
            return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self.mutex:
            self._check()
            self._sync_file(self._node_of(path, fh), fh)
            self.counts["fdatasync" if datasync else "fsync"] += 1
            return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close() promises nothing about durability

    def release(self, path: str | None, fh: int) -> int:
        with self.mutex:  # even frozen: a killed process's files are closed after the cut
            self.fh_node.pop(fh, None)
            os.close(fh)
            return 0

    def unlink(self, path: str) -> int:
        with self.mutex:
            self._check()
            parent, _ = self._split(path)
            self._dir_changing(parent)
            node = self._node_of(path, None)
            self._file_changing(node)  # a cut may bring it back
            os.unlink(self._real(path))
            del self.live[path]
            node.path = None
            return 0

    def rename(self, old: str, new: str) -> int:
        with self.mutex:
            self._check()
            node = self._node_of(old, None)
            for d in {self._split(old)[0], self._split(new)[0]}:
                self._dir_changing(d)
            if new in self.live:  # replaced: a cut may bring the old one back
                gone = self.nodes[self.live[new]]
                if gone.is_dir:
                    self._dir_changing(new)
                else:
                    self._file_changing(gone)
                gone.path = None
            os.rename(self._real(old), self._real(new))
            moved = {p: n for p, n in self.live.items() if p == old or p.startswith(old + "/")}
            for p in moved:
                del self.live[p]
            for p, nid in moved.items():
                q = new + p[len(old) :]
                self.live[q] = nid
                self.nodes[nid].path = q
            self.live[new] = node.id
            node.path = new
            return 0

    def chmod(self, path: str, mode: int) -> int:
        with self.mutex:
            self._check()
            os.chmod(self._real(path), mode)
            self._node_of(path, None).mode = mode
            return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self.mutex:
            self._check()
            os.chown(self._real(path), uid, gid)
            return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self.mutex:
            self._check()
            if times is None:
                os.utime(self._real(path))
            else:
                os.utime(self._real(path), ns=times)
            return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        """A socket or fifo (the cart's control socket): it lives in memory, so a cut takes it
        whatever was synced."""
        with self.mutex:
            self._check()
            parent, _ = self._split(path)
            self._dir_changing(parent)
            os.mknod(self._real(path), mode, dev)
            node = self._add(path, False)
            node.special = True
            return 0

    def link(self, target: str, source: str) -> int:
        _raise(errno.EPERM)  # hard links are not modelled (nothing in capsight makes one)

    def symlink(self, target: str, source: str) -> int:
        _raise(errno.EPERM)


def _control(ops: LazyOps, sock_path: str, mount: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        with conn:
            cmd = conn.recv(64).decode().strip()
            with ops.mutex:
                reply: dict[str, Any] = {"counts": dict(ops.counts)}
                if cmd == "cut":
                    ops.frozen = True
                    reply["kept"] = ops.rebuild()
            conn.sendall(json.dumps(reply).encode())


def serve(backing: str, state: str, mount: str, sock_path: str) -> None:
    from mfusepy import FUSE

    ops = LazyOps(Path(backing), Path(state))
    threading.Thread(target=_control, args=(ops, sock_path, mount), daemon=True).start()
    FUSE(
        ops,
        mount,
        foreground=True,
        nothreads=False,
        hard_remove=True,  # unlink means unlink (no .fuse_hidden renames)
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        fsname="lazyfs",
    )


class LazyMount:
    """The filesystem as a child process: ``start()`` mounts it at ``root/mnt`` over
    ``root/backing``, ``cut()`` is a power cut (all unsynced changes are gone, then unmounted),
    ``stop()`` an orderly unmount that keeps everything."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backing, self.state, self.mnt = root / "backing", root / "state", root / "mnt"
        self.sock = root / "ctl.sock"
        self._short: contextlib.ExitStack | None = None  # the socket's folder, when made for it
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "lazyfs.log"
        for p in (self.backing, self.mnt):
            p.mkdir(parents=True, exist_ok=True)

    def start(self, timeout_s: float = 20.0) -> Path:
        # deep under pytest's or a benchmark run's temporary folder, the socket goes in a short
        # folder of its own, removed at unmount
        self._short = contextlib.ExitStack()
        self.sock = self._short.enter_context(socket_folder(self.root, 9, "lazyfs-")) / "ctl.sock"
        self.sock.unlink(missing_ok=True)
        repo = Path(__file__).resolve().parent.parent
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.lazyfs", "serve"]
                + [str(p) for p in (self.backing, self.state, self.mnt, self.sock)],
                cwd=repo,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while not (self.mounted() and self.sock.exists()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"lazyfs exited {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"lazyfs not mounted after {timeout_s} s")
            time.sleep(0.02)
        return self.mnt

    def _ask(self, cmd: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120)
            s.connect(str(self.sock))
            s.sendall(cmd.encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return json.loads(b"".join(chunks))

    def stats(self) -> dict[str, int]:
        return self._ask("stats")["counts"]

    def cut(self) -> dict[str, Any]:
        """The power cut: everything not durable is gone; the filesystem is unmounted. Stop
        every process using it first (a power cut stops them too)."""
        reply = self._ask("cut")
        # frozen, the server has nothing left to do; files still open elsewhere would keep a
        # lazily unmounted one alive
        self._unmount(kill=True)
        return reply

    def stop(self) -> None:
        """Unmount keeping everything (an orderly shutdown)."""
        self._unmount()

    def mounted(self) -> bool:
        """From the mount table: a frozen or dead filesystem fails the stat of ismount()."""
        with open("/proc/self/mounts") as fh:
            return any(line.split()[1] == str(self.mnt) for line in fh)

    def _unmount(self, kill: bool = False) -> None:
        if self.mounted():
            cmd = ["fusermount3", "-u", "-z", str(self.mnt)]
            if shutil.which("fusermount3") is None:
                cmd = ["umount", "-l", str(self.mnt)]
            subprocess.run(cmd, check=False, capture_output=True)
        if self.proc is not None:
            if kill:
                self.proc.kill()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._short is not None:
            self._short.close()
            self._short = None
            self.sock = self.root / "ctl.sock"

    def __enter__(self) -> LazyMount:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "serve":
        serve(*sys.argv[2:6])
    else:
        sys.exit("usage: python -m tests.lazyfs serve BACKING STATE MOUNT SOCKET")
