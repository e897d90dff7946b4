"""`capsight status` and `capsight queue` over a real journal."""

from __future__ import annotations

import json
from pathlib import Path

from capsight_edge.journal.journal import Journal
from tests.conftest import run_cli
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
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert {r["id"]: r["state"] for r in rows} == {
        "a": "uploaded",
        "b": "sealed",
        "c": "quarantined",
    }
    assert {"id", "state", "priority", "bytes", "attempts"} <= set(rows[0])
    assert next(r for r in rows if r["id"] == "c")["attempts"] == 3


def test_status(tmp_path: Path) -> None:
    populate(tmp_path)
    res = run_cli("status", "--json", "--data", str(tmp_path))
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert st["queue"]["sealed"]["count"] == 1 and st["queue"]["uploaded"]["count"] == 1
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
