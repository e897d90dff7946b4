"""A cart that cleans up after crashes: children that die with their parent, and a record of
each run in its data folder so the next start removes what a killed run left behind.

- :func:`die_with_parent`: a child process asks the kernel to SIGKILL it when its parent dies
  (``PR_SET_PDEATHSIG``), so a ``kill -9`` of ``capsight run`` cannot leave its encoder
  process running (and, with it, multiprocessing's resource tracker and the shared memory they
  hold: the tracker removes the segments once the last process holding its pipe is gone).
- :func:`semaphore_files`: the named semaphores a run's queues hold in /dev/shm, recorded with
  its segments, so a start after a run killed with its resource tracker unlinks them too.
- :func:`settle_imports`: before a spawn, no import in another thread has ``sys.path`` half
  changed (OpenCV's loader does, while it loads).
- :class:`RunRecord`: ``DATA/run.lock`` (an exclusive ``flock``: one ``capsight run`` per data
  folder; the kernel drops it when the holder dies) and ``DATA/run.json`` (the run's pid, its
  children and its shared-memory segments). A start that finds the record of a run that is no
  longer alive kills the children it names that are still there and unlinks its segments.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from capsight_edge.durable import data_folder, fsync_dir, fsync_file
from capsight_edge.errors import CapsightError, DeviceBusy

log = logging.getLogger("capsight.hygiene")
PR_SET_PDEATHSIG = 1


def settle_imports(timeout_s: float = 10.0) -> None:
    """Call before spawning a process (multiprocessing's ``spawn`` gives the child the
    parent's ``sys.path`` as it is at that moment). OpenCV's loader puts its own folder first
    on ``sys.path`` while it loads its native module and puts the old path back after; a child
    spawned in that window, while another thread (the Collector's) imports cv2, finds
    ``cv2/typing`` for ``typing`` and dies before it runs a line of ours.

    ``import cv2`` here is not enough by itself: for a moment inside the loader the finished
    native module stands in ``sys.modules`` as ``cv2``, and an import from another thread
    returns it at once, with the loader's folder still on ``sys.path`` (a quick benchmark run
    beside the test suite lost its encoder this way, about one start in six under load). So
    this also waits for the loader's own flag (``sys.OpenCV_LOADER``, set before it changes
    ``sys.path`` and removed after it puts it back), and refuses to go on, with a clear error,
    if the loader's folder is still there after ``timeout_s``."""
    import cv2

    # the folder exactly as the loader puts it on sys.path (its own file's real path's folder)
    loader_dir = os.path.dirname(os.path.realpath(cv2.__file__))
    deadline = time.monotonic() + timeout_s
    while hasattr(sys, "OpenCV_LOADER") or loader_dir in sys.path:
        if time.monotonic() > deadline:
            raise CapsightError(
                f"OpenCV's folder {loader_dir} is still on sys.path after {timeout_s:g} s: a "
                "process spawned now would import cv2's modules for the standard library's"
            )
        time.sleep(0.001)


def semaphore_files(*queues: Any) -> list[str]:
    """The /dev/shm files (``sem.mp-...``) of the named semaphores behind multiprocessing
    queues made with the ``spawn`` context: a queue's two locks and its counter. Their process's
    resource tracker unlinks them when it ends, even after a SIGKILL of the process; when the
    tracker is killed with it (a whole process group killed, as systemd does when a stop times
    out), nothing did, and each such kill of a cart left six. (The attributes read here are
    CPython's own; where they are missing, nothing is found and nothing is recorded.)"""
    files = []
    for q in queues:
        for attr in ("_rlock", "_wlock", "_sem"):
            part = getattr(q, attr, None)
            name = getattr(getattr(part, "_semlock", None), "name", None)
            if isinstance(name, str) and name:
                files.append("sem." + name.lstrip("/"))
    return files


def die_with_parent(parent_pid: int) -> None:
    """In a child: be killed when the parent dies; exit now if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the call above took effect
        os._exit(1)


def proc_stat(pid: int | str) -> tuple[str, list[str]] | None:
    """``/proc/PID/stat`` read: the command name and the fields after it (the first is the
    state, "Z" for a zombie; then the parent, the process group, ...), or None when the process
    is gone. The name may hold spaces and parentheses, so it is cut at the last ")"."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a pid from its reuse)."""
    stat = proc_stat(pid)
    return stat[1][19] if stat else None


def _alive(entry: dict[str, Any]) -> bool:
    pid = int(entry.get("pid", 0))
    return pid > 0 and _start_time(pid) == entry.get("started")


class RunRecord:
    """One run of a cart on one data folder (see the module docstring)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(os.path.expanduser(data_dir))
        self.path = self.dir / "run.json"
        self._fd: int | None = None
        self.record: dict[str, Any] = {}
        self.cleaned: dict[str, list[Any]] = {"processes": [], "segments": []}

    def claim(self) -> RunRecord:
        """Take the data folder (DeviceBusy when a live run holds it) and clean up after a dead
        one."""
        data_folder(self.dir)  # its own name too, or a power cut takes all of it
        fd = os.open(self.dir / "run.lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                old = self._read()
                # A run that died can leave the lock held for a moment by a child that inherited
                # it and is being killed (PR_SET_PDEATHSIG): kill what it names, wait a little.
                if old and not _alive(old) and time.monotonic() < deadline:
                    self._clean(old)
                    time.sleep(0.05)
                    continue
                os.close(fd)
                holder = old.get("pid", "?")
                raise DeviceBusy(
                    f"another capsight run (pid {holder}) uses the data folder {self.dir}",
                    remedy="stop it first, or give this run its own --data folder",
                    holder=str(holder),
                ) from None
        self._fd = fd
        self._clean(self._read())
        me = os.getpid()
        self.record = {"pid": me, "started": _start_time(me), "children": [], "segments": []}
        self._write()
        return self

    def add_child(self, pid: int) -> None:
        self.record["children"].append({"pid": pid, "started": _start_time(pid)})
        self._write()

    def add_segment(self, *names: str) -> None:
        """Shared-memory objects of the run, by their name in /dev/shm: the frame bus, the named
        semaphores behind the encoder's queues (:func:`semaphore_files`)."""
        self.record["segments"].extend(names)
        self._write()

    def add_temp_dir(self, path: str | os.PathLike[str]) -> None:
        """A temporary folder of the run (the simulated MCU's pty link): removed by the next
        start if this run dies before it removes it itself."""
        self.record.setdefault("temp_dirs", []).append(str(path))
        self._write()

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        # Durable: after a power cut the next start must still find what this run left on disk
        # (its temporary folders; processes and segments die with the power).
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record))
        fsync_file(tmp)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def _clean(self, old: dict[str, Any]) -> None:
        if not old or _alive(old):
            return  # nothing recorded, or (impossible under the lock) still running
        for child in old.get("children", []):
            if isinstance(child, dict) and _alive(child):
                with contextlib.suppress(OSError):
                    os.kill(int(child["pid"]), signal.SIGKILL)
                if child["pid"] not in self.cleaned["processes"]:
                    self.cleaned["processes"].append(child["pid"])
        for name in old.get("segments", []):
            seg = Path("/dev/shm") / str(name).lstrip("/")
            if seg.parent == Path("/dev/shm") and seg.exists():
                with contextlib.suppress(OSError):
                    seg.unlink()
                if name not in self.cleaned["segments"]:
                    self.cleaned["segments"].append(name)
        for folder in old.get("temp_dirs", []):
            where = Path(str(folder))
            # only what a run of ours made: a capsight-* folder in the temporary folder
            if where.name.startswith("capsight-") and where.is_dir() and not where.is_symlink():
                shutil.rmtree(where, ignore_errors=True)
                self.cleaned.setdefault("temp_dirs", []).append(str(where))
        if self.cleaned["processes"] or self.cleaned["segments"] or self.cleaned.get("temp_dirs"):
            log.warning("cleaned up after an earlier run that died: %s", self.cleaned)
