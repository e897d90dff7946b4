"""The README's examples run as written; every command's --help documents its options (defaults,
choices) with examples that parse; the JSON Schemas in schemas/ match the code."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from capsight_edge.cli.common import walk_parsers
from tests.conftest import ROOT, SIM

README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_examples_run_as_written(index: int, tmp_path: Path) -> None:
    code = blocks("python")[index]
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "CAPSIGHT_PROFILE": str(SIM), "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    if "BundleSealed" in code:
        assert "sealed " in res.stdout and "MCU link up" in res.stdout


def parsers() -> list[tuple[str, str, argparse.ArgumentParser]]:
    from capsight_edge.cli.main import build_parser as edge
    from cloud_sink.cli import build_parser as sink
    from trainer.cli import build_parser as train

    out = []
    for prog, build in (("capsight", edge), ("capsight-sink", sink), ("capsight-train", train)):
        out += [(prog, path, p) for path, p in walk_parsers(build())]
    return out


def test_every_option_and_command_is_described_with_examples() -> None:
    for prog, path, parser in parsers():
        for action in parser._actions:
            assert action.help, f"{prog} {path}: {action.option_strings or action.dest} has no help"
        assert parser.epilog and "examples:" in parser.epilog, f"{prog} {path}: no example"
        assert parser.description or path == "", f"{prog} {path}: no description"
        text = parser.format_help()
        for action in parser._actions:
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                assert all(str(c) in text for c in action.choices), (prog, path, action.dest)
            shown = (
                action.option_strings
                and isinstance(action.default, int | float | str)
                and action.default not in ("", False, argparse.SUPPRESS)
            )
            if shown:
                assert f"default: {action.default}" in text, (prog, path, action.dest)


def test_every_example_parses() -> None:
    from capsight_edge.cli.main import build_parser as edge
    from cloud_sink.cli import build_parser as sink
    from trainer.cli import build_parser as train

    builders = {"capsight": edge, "capsight-sink": sink, "capsight-train": train}
    lines = []
    for _prog, _path, parser in parsers():
        lines += [x.strip() for x in (parser.epilog or "").splitlines()[1:]]
    for block in blocks("sh"):
        lines += [x.strip() for x in block.replace("\\\n", " ").splitlines()]
    checked = 0
    for line in lines:
        words = shlex.split(line.split(" #")[0]) if line else []
        if ">" in words:  # a redirection is the shell's
            words = words[: words.index(">")]
        if not words or words[0] not in builders:
            continue
        try:
            builders[words[0]]().parse_args(words[1:])
        except SystemExit as exc:
            raise AssertionError(f"the example does not parse: {line}") from exc
        checked += 1
    assert checked >= 40


def test_the_published_schemas_are_up_to_date(tmp_path: Path) -> None:
    from capsight_edge.records import write_schemas as cli_schemas
    from cloud_sink.schemas import write_schemas as api_schemas
    from trainer.records import write_schemas as train_schemas

    for folder, write, module in (
        ("schemas/cli", cli_schemas, "capsight_edge.records"),
        ("schemas/api", api_schemas, "cloud_sink.schemas"),
        ("schemas/train", train_schemas, "trainer.records"),
    ):
        fresh = {p.name: p.read_text() for p in write(tmp_path / folder)}
        kept = {p.name: p.read_text() for p in (ROOT / folder).glob("*.json")}
        assert kept == fresh, f"{folder} is out of date: run python -m {module}"
        for text in fresh.values():
            assert json.loads(text)["properties"]["type"]
