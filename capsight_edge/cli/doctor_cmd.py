"""`capsight doctor`."""

from __future__ import annotations

import argparse

from capsight_edge.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    add_device_options,
    profile_from,
)
from capsight_edge.doctor import AREAS, doctor_ok, format_table, run_doctor
from capsight_edge.records import CheckRecord, DoctorRecord, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", help="probe every configured device; non-zero exit when a required one fails"
    )
    add_device_options(p)
    p.add_argument(
        "--only",
        action="append",
        metavar="AREA",
        choices=AREAS,
        help="run only this area's probes; repeatable",
    )
    p.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    profile = profile_from(args)
    checks = run_doctor(profile, only=set(args.only) if args.only else None)
    ok = doctor_ok(checks)
    if args.json:
        for c in checks:
            emit(CheckRecord(**c.as_dict()))  # type: ignore[arg-type]
        emit(
            DoctorRecord(
                profile=profile.source_path,
                ok=ok,
                checks=len(checks),
                failed=[c.name for c in checks if c.status == "fail"],
            )
        )
    else:
        print(f"capsight doctor: profile {profile.name} ({profile.source_path})")
        print(format_table(checks))
        print("result: " + ("ok" if ok else "FAILED: a required check failed (see REMEDY)"))
    return EXIT_OK if ok else EXIT_FAIL
