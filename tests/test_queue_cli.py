"""`capsight status` and `capsight queue` over a real journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capsight_edge.journal.journal import Journal
from tests.conftest import json_records, run_cli
from tests.test_journal import files_of, make_bundle


def populate(data: Path) -> None:
    j = Journal(data / "journal.db")
    for bid, prio in [("a", 1), ("b", 3), ("c", 2)]:
        m = make_bundle(data, bid, priority=prio)
        j.add_recording(bid, priority=prio, rule="r")
        j.mark_sealed(bid, files_of(m), duration_s=5.0)
    j.start_upload("a", "http://sink/files/a")
    j.mark_uploaded("a")
    for _ in range(3):
        j.start_upload("c", "u")
        j.upload_failed("c", "400 bad request", permanent=True)
    j.close()


def test_queue_ls_json(tmp_path: Path) -> None:
    populate(tmp_path)
    res = run_cli("queue", "ls", "--json", "--data", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = json_records(res.stdout)
    assert {r["type"] for r in rows} == {"bundle"}
    assert {r["bundle_id"]: r["state"] for r in rows} == {
        "a": "uploaded",
        "b": "sealed",
        "c": "quarantined",
    }
    assert {"bundle_id", "state", "priority", "bytes", "attempts"} <= set(rows[0])
    assert next(r for r in rows if r["bundle_id"] == "c")["attempts"] == 3
    # `queue --json` speaks the same records: a summary, then one `bundle` per queued bundle.
    res = run_cli("queue", "--json", "--data", str(tmp_path))
    head, *queued = json_records(res.stdout)
    assert head["type"] == "upload_queue" and head["bundles"] == len(queued) == 1
    assert queued[0]["bundle_id"] == "b" and set(queued[0]) == set(rows[0])
    bad = run_cli("queue", "ls", "--state", "bogus", "--data", str(tmp_path))
    assert bad.returncode == 2 and "uploaded" in bad.stderr  # the states are listed


def test_status(tmp_path: Path) -> None:
    populate(tmp_path)
    res = run_cli("status", "--json", "--data", str(tmp_path))
    assert res.returncode == 0, res.stderr
    (st,) = json_records(res.stdout)
    assert (
        st["type"] == "status"
        and st["queue"]["sealed"]["count"] == 1
        and st["queue"]["uploaded"]["count"] == 1
    )
    assert st["capture_paused"] is None
    assert st["last_error"]["error"] == "400 bad request"
    assert st["disk"]["recording_bytes_per_min"] > 0
    human = run_cli("status", "--data", str(tmp_path))
    assert "capture: running" in human.stdout and "quarantined" in human.stdout


def test_retry_and_purge(tmp_path: Path) -> None:
    populate(tmp_path)
    assert run_cli("queue", "retry", "--data", str(tmp_path)).returncode == 0
    refused = run_cli("queue", "purge", "b", "--data", str(tmp_path))
    assert refused.returncode == 2 and "never uploaded" in refused.stderr
    assert run_cli("queue", "purge", "--data", str(tmp_path)).returncode == 0  # uploaded ones
    assert not (tmp_path / "bundles" / "a").exists()
    assert run_cli("queue", "purge", "b", "--yes", "--data", str(tmp_path)).returncode == 0
    j = Journal(tmp_path / "journal.db")
    assert {r.id: r.state for r in j.bundles()} == {"a": "evicted", "b": "evicted", "c": "sealed"}


def test_looking_writes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    res = run_cli("queue", "ls", "--data", str(missing))
    assert res.returncode == 1 and "no journal" in res.stderr and not missing.exists()
    populate(tmp_path)
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    for args in (("status", "--json"), ("queue", "--json"), ("queue", "ls", "--json")):
        res = run_cli(*args, "--data", str(tmp_path))
        assert res.returncode == 0, (args, res.stderr)
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before


def test_options_given_before_the_action_hold(tmp_path: Path) -> None:
    """`capsight queue --data D --json ls` is `capsight queue ls --data D --json`: an action
    does not reset what its command was given (argparse would, with the action's defaults)."""
    import argparse

    from capsight_edge.cli.main import build_parser

    populate(tmp_path)
    before = run_cli("queue", "--data", str(tmp_path), "--json", "ls")
    after = run_cli("queue", "ls", "--data", str(tmp_path), "--json")
    assert before.returncode == after.returncode == 0, before.stderr
    assert json_records(before.stdout) == json_records(after.stdout)
    assert len(json_records(before.stdout)) == 3
    # Every action of every command that shares an option with its command keeps it.
    parser = build_parser()

    def actions(p: argparse.ArgumentParser, path: list[str]) -> Any:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, child in a.choices.items():
                    yield path, p, name, child
                    yield from actions(child, [*path, name])

    checked = 0
    for path, p, name, child in actions(parser, []):
        if not path:
            continue
        shared = {o for a in p._actions for o in a.option_strings} & {
            o for a in child._actions for o in a.option_strings
        }
        given = [o for o in ("--profile", "--data") if o in shared]
        if not given:
            continue
        argv = [*path]
        for o in given:
            argv += [o, f"given{o}"]
        ids = ["x"] if name in ("retry", "purge") else []
        args = parser.parse_args([*argv, name, *ids])
        assert [getattr(args, o[2:]) for o in given] == [f"given{o}" for o in given], (path, name)
        checked += 1
    assert checked >= 3
