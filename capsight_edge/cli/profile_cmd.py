"""`capsight profile check|show`."""

from __future__ import annotations

import argparse
import sys

from capsight_edge.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    add_device_options,
    profile_from,
)
from capsight_edge.errors import ProfileError
from capsight_edge.profile import load_profile, profile_as_dict, profile_as_toml
from capsight_edge.records import ProfileCheckRecord, ProfileRecord, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="validate or show hardware profiles")
    psub = p.add_subparsers(dest="profile_command", metavar="ACTION", required=True)

    c = psub.add_parser("check", help="validate profile files; exit 2 on the first bad one")
    c.add_argument("files", nargs="+", metavar="FILE", help="profile files (TOML)")
    c.add_argument("--json", action="store_true", help="one JSON object per file")
    c.set_defaults(handler=cmd_check)

    s = psub.add_parser("show", help="print the effective settings (defaults filled in)")
    add_device_options(s)
    s.set_defaults(handler=cmd_show)


def cmd_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            status = EXIT_USAGE
            if args.json:
                emit(
                    ProfileCheckRecord(
                        file=path,
                        ok=False,
                        key=exc.key,
                        problem=exc.problem,
                        expected=exc.expected,
                        error=str(exc),
                    )
                )
            else:
                print(f"capsight: error: {exc}", file=sys.stderr)
            continue
        if args.json:
            emit(ProfileCheckRecord(file=path, ok=True, name=profile.name))
        else:
            print(f"{path}: ok (profile {profile.name!r})")
    return status


def cmd_show(args: argparse.Namespace) -> int:
    profile = profile_from(args)
    data = profile_as_dict(profile)
    if args.json:
        emit(ProfileRecord(source_path=profile.source_path, profile=data))
        return EXIT_OK
    print(profile_as_toml(profile), end="")
    return EXIT_OK
