"""`capsight doctor`: probe every device and service a profile configures, and say what to do
about each failure. Every check says whether it is required: a required check that fails makes
the doctor fail (exit 1); a device the profile does not require (``required = false``) is a
warning when it fails.

A probe is a function ``(profile, factory) -> list[Check]``; :data:`PROBES` lists them by area.
Probes never raise: a probe that crashes is itself reported as a failed check. Devices come from
one :class:`~capsight_edge.DeviceFactory` (by default one made for a cart at rest, and
closed at the end), so the doctor opens them exactly as a running cart does, and a device that
another program holds is reported as busy instead of being opened twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from capsight_edge.devices import DeviceFactory, factory_from_profile
from capsight_edge.doctor.devices import probe_camera, probe_imu, probe_mcu, probe_positioning
from capsight_edge.doctor.report import FAIL, WARN, Check
from capsight_edge.doctor.services import (
    probe_disk,
    probe_encoders,
    probe_model_runtime,
    probe_profile,
    probe_sink,
)
from capsight_edge.profile.schema import Profile

Probe = Callable[[Profile, DeviceFactory], list[Check]]

#: (area, probe), in the order the report lists them.
PROBES: tuple[tuple[str, Probe], ...] = (
    ("profile", probe_profile),
    ("camera", probe_camera),
    ("encoders", probe_encoders),
    ("model", probe_model_runtime),
    ("disk", probe_disk),
    ("sink", probe_sink),
    ("mcu", probe_mcu),
    ("imu", probe_imu),
    ("positioning", probe_positioning),
)
AREAS = tuple(area for area, _ in PROBES)


def _optional(profile: Profile, area: str) -> bool:
    return {
        "camera": not profile.camera.required,
        "mcu": not profile.mcu.required,
        "imu": not profile.imu.required,
    }.get(area, False)


def run_doctor(
    profile: Profile, *, only: set[str] | None = None, factory: DeviceFactory | None = None
) -> list[Check]:
    """Run every probe (or those of the ``only`` areas) and time each. ``factory``: the devices
    to probe (default: the profile's, with a simulated cart at rest)."""
    own = factory is None
    devs = factory or factory_from_profile(profile, scenario_kind="idle")
    results: list[Check] = []
    try:
        for area, probe in PROBES:
            if only and area not in only:
                continue
            start = time.perf_counter()
            try:
                checks = probe(profile, devs)
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
            optional = _optional(profile, area)
            for c in checks:
                c.duration_s = c.duration_s or spent / max(len(checks), 1)
                # A configured device that fails is a failure, unless the profile says the cart
                # runs without it (``required = false``): then it is a warning.
                c.required = not optional
                if c.status == FAIL and optional:
                    c.status = WARN
                    c.detail += " (not required by the profile)"
            results.extend(checks)
    finally:
        if own:
            devs.close()
    return results
