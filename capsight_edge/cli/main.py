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
from capsight_edge.cli.common import EXIT_FAIL, EXIT_USAGE, exit_code_for, polish_help
from capsight_edge.errors import CapsightError

COMMAND_MODULES = (
    "capsight_edge.cli.profile_cmd",
    "capsight_edge.cli.doctor_cmd",
    "capsight_edge.cli.sensors_cmd",
    "capsight_edge.cli.camera_cmd",
    "capsight_edge.cli.run_cmd",
    "capsight_edge.cli.queue_cmd",
    "capsight_edge.cli.upload_cmd",
    "capsight_edge.cli.model_cmd",
    "capsight_edge.cli.demo_cmd",
    "capsight_edge.cli.bench_cmd",
)


#: One or more examples per command (shown under its --help; a test checks every command has some).
EXAMPLES = {
    "": "capsight doctor\ncapsight run --duration 60\ncapsight status --json",
    "profile": "capsight profile check hw_profiles/*.toml",
    "profile check": "capsight profile check --json hw_profiles/rpi5.toml",
    "profile show": "capsight profile show --profile hw_profiles/rpi5.toml > effective.toml",
    "doctor": "capsight doctor\ncapsight doctor --only sink --json",
    "sensors": "capsight sensors watch --duration 10",
    "sensors watch": "capsight sensors watch --interval 0.5\ncapsight sensors watch --json "
    "--duration 5",
    "scale": "capsight scale tare\ncapsight scale calibrate --known-grams 1000",
    "scale tare": "capsight scale tare --samples 200",
    "scale calibrate": "capsight scale calibrate --known-grams 1000\n"
    "capsight scale calibrate --known-grams 500 --cell 2 --yes",
    "gps": "capsight gps parse receiver.log",
    "gps parse": "capsight gps parse --json receiver.log",
    "barcode": "capsight barcode scan photo.jpg",
    "barcode scan": "capsight barcode scan --json shelf/*.jpg",
    "trigger": "capsight trigger test --duration 30\ncapsight trigger manual --note 'odd item'",
    "trigger test": "capsight trigger test --duration 30\ncapsight trigger test --json --seed 3",
    "trigger manual": "capsight trigger manual --note 'customer asked'",
    "run": "capsight run\ncapsight run --sink http://sink.example:8080/ --token-file token\n"
    "capsight run --json --duration 300",
    "status": "capsight status\ncapsight status --json",
    "queue": "capsight queue --watch\ncapsight queue --json",
    "queue ls": "capsight queue ls --state quarantined",
    "queue retry": "capsight queue retry\ncapsight queue retry 20261202T101500Z-sim-0001-0007",
    "queue purge": "capsight queue purge\ncapsight queue purge --state quarantined --yes",
    "upload": "capsight upload now\ncapsight upload pause --reason 'store wifi busy'",
    "upload now": "capsight upload now --uncapped",
    "upload pause": "capsight upload pause --reason 'store wifi busy'",
    "upload resume": "capsight upload resume",
    "demo": "capsight demo\ncapsight demo --carts 3 --minutes 2",
    "bench": "capsight bench --out bench-out\ncapsight bench --quick --only barcodes_real",
    "model": "capsight model ls\ncapsight model pull --json",
    "model ls": "capsight model ls --json",
    "model pull": "capsight model pull",
    "model rollback": "capsight model rollback",
}


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
    polish_help(parser, EXAMPLES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every option is the benchmark runner's, --help included
        from capsight_edge.cli.bench_cmd import cmd_bench

        return cmd_bench(argparse.Namespace(options=argv[1:]))
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
