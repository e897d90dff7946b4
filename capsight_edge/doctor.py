"""`capsight doctor`: probe every device a profile configures and say what to do about failures.

Each probe is a function ``(profile) -> list[Check]`` registered with :func:`check`. Probes never
raise: a probe that crashes is itself reported as a failed check. A check marked ``required`` that
fails makes the doctor exit non-zero.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from capsight_edge.profile.schema import Profile

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    remedy: str = ""
    required: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


Probe = Callable[[Profile], list[Check]]
_PROBES: list[tuple[str, Probe]] = []


def check(area: str) -> Callable[[Probe], Probe]:
    """Register a probe for one area (camera, mcu, imu, ...)."""

    def deco(fn: Probe) -> Probe:
        _PROBES.append((area, fn))
        return fn

    return deco


def data_dir(profile: Profile) -> Path:
    return Path(os.path.expanduser(profile.storage.data_dir))


def run_doctor(profile: Profile, *, only: set[str] | None = None) -> list[Check]:
    """Run every registered probe (or those of the ``only`` areas) and time each."""
    _load_builtin_probes()
    results: list[Check] = []
    for area, probe in _PROBES:
        if only and area not in only:
            continue
        start = time.perf_counter()
        try:
            checks = probe(profile)
        except Exception as exc:  # a probe bug must not hide the other checks
            checks = [
                Check(
                    area,
                    FAIL,
                    f"probe crashed: {type(exc).__name__}: {exc}",
                    "report this as a capsight bug",
                    required=True,
                )
            ]
        spent = time.perf_counter() - start
        for c in checks:
            c.seconds = c.seconds or spent / max(len(checks), 1)
        results.extend(checks)
    return results


def doctor_ok(checks: list[Check]) -> bool:
    return not any(c.status == FAIL and c.required for c in checks)


def format_table(checks: list[Check]) -> str:
    rows = [("CHECK", "STATUS", "DETAIL", "REMEDY")]
    rows += [(c.name, c.status.upper(), c.detail, c.remedy) for c in checks]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = min(max(len(r[2]) for r in rows), 70)
    lines = [f"{a:<{w0}}  {b:<{w1}}  {c:<{w2}}  {d}".rstrip() for a, b, c, d in rows]
    return "\n".join(lines)


_loaded = False


def _load_builtin_probes() -> None:
    """Import the modules whose probes register themselves (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import capsight_edge.doctor_probes  # noqa: F401


def disk_check(profile: Profile) -> Check:
    st = profile.storage
    folder = data_dir(profile)
    probe_at = folder
    while not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent
    usage = shutil.disk_usage(probe_at)
    used_pct = 100.0 * (usage.total - usage.free) / usage.total
    free_gib = usage.free / 2**30
    detail = (
        f"{folder}: {used_pct:.1f}% used, {free_gib:.1f} GiB free "
        f"(pause at {st.high_watermark_pct:g}% or < {st.min_free_bytes / 2**20:.0f} MiB)"
    )
    if used_pct >= st.high_watermark_pct or usage.free < st.min_free_bytes:
        return Check(
            "disk",
            FAIL,
            detail,
            "free space or lower the watermarks: capture would pause at once",
            required=True,
        )
    if used_pct >= st.low_watermark_pct:
        return Check(
            "disk", WARN, detail, "disk is between the watermarks; capture will pause soon"
        )
    if not folder.exists():
        return Check("disk", PASS, detail + "; folder will be created on first run")
    if not os.access(folder, os.W_OK):
        return Check(
            "disk",
            FAIL,
            detail + "; folder is not writable",
            f"chown/chmod {folder} for the capsight user",
            required=True,
        )
    return Check("disk", PASS, detail)
