"""`capsight`: the device CLI.

Each command module exposes ``register(subparsers)``; the handler it sets on the parser returns an
exit code. Errors from capsight become one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from capsight_edge import __version__, logs
from capsight_edge.cli.common import EXIT_FAIL, EXIT_USAGE, exit_code_for
from capsight_edge.errors import CapsightError

COMMAND_MODULES = (
    "capsight_edge.cli.profile_cmd",
    "capsight_edge.cli.doctor_cmd",
    "capsight_edge.cli.sensors_cmd",
    "capsight_edge.cli.camera_cmd",
    "capsight_edge.cli.run_cmd",
    "capsight_edge.cli.queue_cmd",
    "capsight_edge.cli.upload_cmd",
    "capsight_edge.cli.demo_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsight", description="capsight device CLI: check, run and service a cart."
    )
    parser.add_argument("--version", action="version", version=f"capsight {__version__}")
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="human",
        help="log lines for people (human) or one JSON object per line (json)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log threshold",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        return int(args.handler(args) or 0)
    except CapsightError as exc:
        print(f"capsight: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("capsight: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAIL
    except OSError as exc:
        print(f"capsight: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, FileNotFoundError) else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
