"""Options every device command shares, and how our errors become exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from capsight_edge.errors import CapsightError, ProfileError
from capsight_edge.profile import Profile, load_profile

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_device_options(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="hardware profile (default: $CAPSIGHT_PROFILE, else hw_profiles/sim.toml)",
    )
    parser.add_argument("--data", metavar="DIR", help="data folder (overrides storage.data_dir)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def profile_from(args: argparse.Namespace) -> Profile:
    return load_profile(args.profile, data_dir=args.data)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def exit_code_for(exc: CapsightError) -> int:
    return EXIT_USAGE if isinstance(exc, ProfileError) else EXIT_FAIL
