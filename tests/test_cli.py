"""CLI conventions: help everywhere, README names every command, JSON logs."""

from __future__ import annotations

import argparse
import json
import logging

from capsight_edge import logs
from capsight_edge.cli.main import build_parser
from tests.conftest import ROOT, run_cli


def command_paths(parser: argparse.ArgumentParser, prefix: str = "capsight") -> list[str]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append(f"{prefix} {name}")
                paths.extend(command_paths(sub, f"{prefix} {name}"))
    return paths


def test_every_command_has_help_and_is_in_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    paths = command_paths(build_parser())
    assert "capsight doctor" in paths and "capsight profile check" in paths
    missing = [p for p in paths if p not in readme]
    assert not missing, f"README's CLI section lacks {missing}"
    for path in paths:
        res = run_cli(*path.split()[1:], "--help")
        assert res.returncode == 0 and "usage:" in res.stdout, path


def test_json_log_format_emits_one_object_per_line(capsys) -> None:  # type: ignore[no-untyped-def]
    import io

    stream = io.StringIO()
    logs.configure("json", "INFO", stream)
    try:
        logs.get_logger("bridge.link").info("link up", extra={"fields": {"port": "/dev/x"}})
    finally:
        logs.configure("human", "WARNING")
    obj = json.loads(stream.getvalue())
    assert obj["component"] == "bridge.link" and obj["msg"] == "link up"
    assert obj["port"] == "/dev/x" and obj["level"] == "info"


def test_once_per_kind_logs_first_and_counts_rest(caplog) -> None:  # type: ignore[no-untyped-def]
    logger = logging.getLogger("capsight.test.once")
    logger.propagate = True
    once = logs.OncePerKind(logger)
    with caplog.at_level(logging.WARNING, logger="capsight.test.once"):
        for _ in range(5):
            once("crc", "bad crc")
        once("length", "bad length")
    assert once.counts == {"crc": 5, "length": 1}
    assert len(caplog.records) == 2


def test_unknown_command_is_usage_error() -> None:
    res = run_cli("frobnicate")
    assert res.returncode == 2 and "invalid choice" in res.stderr
