"""Options every device command shares, and how our errors become exit codes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from capsight_edge.errors import CapsightError, ProfileError
from capsight_edge.profile import Profile, load_profile

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_device_options(
    parser: argparse.ArgumentParser, *, json_output: bool = True, inherited: bool = False
) -> None:
    """``--profile``, ``--data`` and ``--json``. ``inherited``: ``parser`` is an action of a
    command that has them already (``queue ls``): given there, they keep what was given before
    the action (``capsight queue --data D ls``) instead of resetting it to their defaults."""
    keep: dict[str, Any] = {"default": argparse.SUPPRESS} if inherited else {}
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="hardware profile (default: $CAPSIGHT_PROFILE, else hw_profiles/sim.toml)",
        **keep,
    )
    parser.add_argument(
        "--data", metavar="DIR", help="data folder (overrides storage.data_dir)", **keep
    )
    if json_output:
        parser.add_argument(
            "--json",
            action="store_true",
            help="machine-readable output: JSON Lines, one typed record per line",
            **keep,
        )


def profile_from(args: argparse.Namespace) -> Profile:
    return load_profile(args.profile, data_dir=args.data)


def open_journal(profile: Profile, *, readonly: bool = False) -> tuple[Any, Path]:
    """The profile's journal (``DATA/journal.db``) and its data folder; ``readonly`` for the
    commands that only look (they create nothing)."""
    from capsight_edge.journal.journal import Journal

    data = Path(os.path.expanduser(profile.storage.data_dir))
    return Journal(data / "journal.db", readonly=readonly), data


def exit_code_for(exc: CapsightError) -> int:
    return EXIT_USAGE if isinstance(exc, ProfileError) else EXIT_FAIL


def human_bytes(n: float | None) -> str:
    """``1536`` → ``1.5 KiB``: byte counts for people (the JSON keeps exact integers)."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def human_rate(bps: float | None) -> str:
    """Bits per second for people: ``8.4 Mbit/s``."""
    if bps is None:
        return "?"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.1f} {unit}"
    return f"{bps:.0f} bit/s"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    n = round(s)
    return f"{n // 3600}h{n % 3600 // 60:02d}m" if n >= 3600 else f"{n // 60}m{n % 60:02d}s"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help says its default and, where a metavar hides them, its choices;
    descriptions and examples keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.choices and action.metavar and not isinstance(action, argparse._SubParsersAction):
            text += f" (choices: {', '.join(map(str, action.choices))})"
        default = action.default
        if (
            "%(default)" not in text
            and action.option_strings
            and not (default is None or default is False or default == "" or default == [])
            and default != argparse.SUPPRESS
        ):
            text += " (default: %(default)s)"
        return text


def polish_help(parser: argparse.ArgumentParser, examples: dict[str, str], path: str = "") -> None:
    """Walk every subcommand: the help formatter above, the one-line help as the description
    where none was given, and its examples (``examples["queue ls"]``) as the epilog."""
    parser.formatter_class = HelpFormatter
    if path in examples:
        parser.epilog = "examples:\n" + "\n".join(
            "  " + line for line in examples[path].strip().splitlines()
        )
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        action.help = action.help or "what to do (each has its own --help)"
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            if not sub.description and helps.get(name):
                sub.description = helps[name]
            polish_help(sub, examples, f"{path} {name}".strip())


def walk_parsers(
    parser: argparse.ArgumentParser, path: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    """``[(command path, parser)]`` of a parser and all its subcommands."""
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += walk_parsers(sub, f"{path} {name}".strip())
    return out
