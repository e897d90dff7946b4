"""`capsight demo`: the simulated flywheel on the embedded defaults (grows with each part built)."""

from __future__ import annotations

import argparse
from pathlib import Path

from capsight_edge.cli.common import EXIT_FAIL, EXIT_OK, profile_from
from capsight_edge.doctor import doctor_ok, format_table, run_doctor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the simulated flywheel on hw_profiles/sim.toml")
    p.add_argument("--profile", metavar="FILE", help="profile (default: hw_profiles/sim.toml)")
    p.add_argument("--data", metavar="DIR", help="ignored by the demo; use --out")
    p.add_argument("--out", metavar="DIR", default="demo-out", help="where the demo writes")
    p.add_argument("--minutes", type=float, default=0.5, help="simulated run length")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.data = str(out / "data")
    profile = profile_from(args)
    print(f"== capsight demo: profile {profile.name}, output in {out}/")
    print("-- step 1: doctor on the simulated cart")
    checks = run_doctor(profile)
    print(format_table(checks))
    if not doctor_ok(checks):
        print("demo stopped: a required device failed")
        return EXIT_FAIL
    return EXIT_OK
