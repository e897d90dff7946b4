"""Options every device command shares, and how our errors become exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
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


def open_journal(profile: Profile) -> tuple[Any, Path]:
    """The profile's journal (``DATA/journal.db``) and its data folder."""
    from capsight_edge.journal.journal import Journal

    data = Path(os.path.expanduser(profile.storage.data_dir))
    return Journal(data / "journal.db"), data


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def exit_code_for(exc: CapsightError) -> int:
    return EXIT_USAGE if isinstance(exc, ProfileError) else EXIT_FAIL
