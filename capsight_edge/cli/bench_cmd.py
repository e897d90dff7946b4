"""`capsight bench`: the benchmark runner (`python -m benchmarks`), same options."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench",
        help="run the benchmarks into one folder per run (same options as python -m benchmarks)",
        add_help=False,
        prefix_chars="\x00",  # every option belongs to the runner, which parses them itself
    )
    b.add_argument("options", nargs=argparse.REMAINDER, help="see `capsight bench --help`")
    b.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.runner import main

    return main(list(args.options), prog="capsight bench")
