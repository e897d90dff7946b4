"""`capsight-train`: the trainer's command line (its commands arrive with the training issue)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trainer import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsight-train",
        description="capsight trainer (not built yet: only --version works in this release)",
    )
    parser.add_argument("--version", action="version", version=f"capsight-train {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("capsight-train: no commands yet; training is a later release", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
