"""`capsight demo`: the simulated flywheel (the library's :func:`capsight_edge.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run simulated carts against a local sink on hw_profiles/sim.toml"
    )
    p.add_argument("--profile", metavar="FILE", help="cart profile (default: hw_profiles/sim.toml)")
    p.add_argument("--out", metavar="DIR", default="demo-out", help="where the demo writes")
    p.add_argument("--minutes", type=float, default=1.0, help="how long the carts run")
    p.add_argument("--carts", type=int, default=3, help="how many simulated carts")
    p.add_argument("--seed", type=int, default=7, help="scenario seed of the first cart")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from capsight_edge.demo import run_demo

    return run_demo(
        args.profile, out=Path(args.out), minutes=args.minutes, carts=args.carts, seed=args.seed
    )
