"""What a run (a benchmark run, the demo) ran on and what it ran: CPU model, cores, memory, GPU,
OS, Python and key package versions, and the git commit with a dirty flag (figures from
uncommitted code say so; outside a git checkout, the commit is None)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: Packages whose versions decide the figures (decoders, encoders, runtimes, the sink's stack).
KEY_PACKAGES = (
    "numpy",
    "opencv-python-headless",
    "av",
    "onnxruntime",
    "torch",
    "ray",
    "zxing-cpp",
    "pyzbar",
    "pynmea2",
    "mcap",
    "starlette",
    "uvicorn",
    "httpx",
    "pydantic",
    "tuspy",
)
ROOT = Path(__file__).resolve().parents[1]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """The commit the code is at and whether tracked files differ from it (None: no git)."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.SubprocessError):
            return None
        # rstrip: porcelain lines begin with a status column that may be a space
        return res.stdout.rstrip() if res.returncode == 0 else None

    if os.environ.get("CAPSIGHT_SOURCE_COMMIT"):
        # A copy of the tree (a device host) whose .git, if any, can be older than the files:
        # the commit the copy was made at, as the copier says; whether it differs is unknown.
        return {"commit": os.environ["CAPSIGHT_SOURCE_COMMIT"], "dirty": None, "changed_files": []}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "changed_files": [] if not status else [ln[3:] for ln in status.splitlines()][:50],
    }


def describe_machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            gpu = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            gpu = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_state(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """One line for a report's reader: the machine and the code's commit."""
    git = machine.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12]
    dirty = " with uncommitted changes" if git.get("dirty") else ""
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"GPU: {machine['gpu'] or 'none'}, {machine.get('os', '')}, Python {machine['python']}; "
        f"code at commit {commit}{dirty}"
    )
