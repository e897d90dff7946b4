"""`capsight demo`: the simulated flywheel (the library's :func:`capsight_edge.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the flywheel end to end: simulated carts, a sink, labels, training, model push",
    )
    p.add_argument("--profile", metavar="FILE", help="cart profile (default: hw_profiles/sim.toml)")
    p.add_argument("--out", metavar="DIR", default="demo-out", help="where the demo writes")
    p.add_argument(
        "--minutes", type=float, help="how long the carts run (round 1; default 2, --quick 0.5)"
    )
    p.add_argument("--carts", type=int, help="how many simulated carts (default 3, --quick 2)")
    p.add_argument("--stores", type=int, help="how many stores, 2..3 (default 3, --quick 2)")
    p.add_argument("--seed", type=int, default=7, help="scenario seed of the first cart")
    p.add_argument(
        "--quick",
        action="store_true",
        help="the test suite's shortened loop: fewer renders and steps, and unless given "
        "otherwise 2 carts in 2 stores for 0.5 minutes",
    )
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import sys

    from capsight_edge.demo import Settings, run_demo

    # --quick is the suite's loop (tests/test_demo.py): about 3 minutes here, where the
    # defaults' 3 carts for 2 minutes took 5 minutes with --quick's short trainings.
    for name, full, quick in (("minutes", 2.0, 0.5), ("carts", 3, 2), ("stores", 3, 2)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for ok, text in (
        (0.1 <= args.minutes <= 120, "--minutes must be 0.1..120"),
        (1 <= args.carts <= 16, "--carts must be 1..16"),
        (2 <= args.stores <= 3, "--stores must be 2..3 (the demo's stores)"),
    ):
        if not ok:
            print(f"capsight demo: {text}", file=sys.stderr)
            return 2
    return run_demo(
        Settings(
            out=Path(args.out),
            carts=args.carts,
            stores=args.stores,
            minutes=args.minutes,
            seed=args.seed,
            quick=args.quick,
            profile=args.profile,
        )
    )
