"""`capsight-sink`: the cloud sink's command line (its commands arrive with the sink issue)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cloud_sink import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsight-sink",
        description="capsight cloud sink (not built yet: only --version works in this release)",
    )
    parser.add_argument("--version", action="version", version=f"capsight-sink {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("capsight-sink: no commands yet; the tus sink is a later release", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
