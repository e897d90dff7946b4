"""`capsight-sink doctor` (reads only) and `capsight-sink migrate`, run as an operator would:
real child processes on a real data folder, and moto's S3 server for the bucket check."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from cloud_sink import db as sinkdb
from cloud_sink.db import apply_migrations
from cloud_sink.doctor import schema_version
from tests.conftest import run_cli


def sink(*args: str, env: dict[str, str] | None = None) -> Any:
    return run_cli(*args, prog="cloud_sink.cli", env=env)


def records(out: str) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in out.splitlines()]
    return {r.get("name") or r["type"]: r for r in rows}


def sink_db_at(path: Path, version: int) -> None:
    """A sink.db as a sink of an older capsight-sink left it: the first ``version`` steps."""
    con = sqlite3.connect(path, isolation_level=None)
    apply_migrations(con, sinkdb.MIGRATIONS[:version])
    con.close()


def test_a_fresh_folder_is_migrated_then_passes_and_says_what_is_not_set_up(
    tmp_path: Path,
) -> None:
    data = tmp_path / "sink"
    res = sink("doctor", "--data", str(data), "--json")
    assert res.returncode == 1
    got = records(res.stdout)
    folder = got["data folder"]
    assert folder["status"] == "fail" and "does not exist" in folder["detail"]
    assert got["sink_doctor"]["ok"] is False and got["sink_doctor"]["failed"] == ["data folder"]

    data.mkdir()
    res = sink("migrate", "--data", str(data), "--json")
    assert res.returncode == 0, res.stderr
    migrated = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(m["database"], m["version_before"]) for m in migrated] == [
        ("sink.db", 0),
        ("index.db", 0),
    ]
    assert migrated[0]["version_after"] == len(sinkdb.MIGRATIONS)

    res = sink("doctor", "--data", str(data), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    got = records(res.stdout)
    assert got["sink.db"]["status"] == "pass" and "integrity ok" in got["sink.db"]["detail"]
    assert got["index.db"]["status"] == "pass"
    assert got["ingest queue"]["detail"] == "0 pending, 0 done, 0 failed"
    # not set up yet: warnings with the command that sets each up, not failures
    assert got["catalogue"]["status"] == "warn" and "catalogue import" in got["catalogue"]["remedy"]
    assert got["model registry"]["status"] == "warn"
    assert got["sink_doctor"] == {
        "type": "sink_doctor",
        "data": str(data),
        "ok": True,
        "checks": 7,
        "failed": [],
    }
    again = sink("migrate", "--data", str(data))
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_a_schema_behind_the_code_fails_the_doctor_untouched_until_migrated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sink.db"
    sink_db_at(path, 5)
    before = path.read_bytes()
    res = sink("doctor", "--data", str(tmp_path))
    assert res.returncode == 1
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("sink.db"))
    assert f"schema version 5, this capsight-sink needs {len(sinkdb.MIGRATIONS)}" in line
    assert "capsight-sink migrate --data DIR" in line
    assert path.read_bytes() == before  # the doctor only reads
    res = sink("migrate", "--data", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert f"sink.db: version 5 -> {len(sinkdb.MIGRATIONS)}" in res.stdout
    assert sink("doctor", "--data", str(tmp_path)).returncode == 0


def test_a_migration_that_fails_is_rolled_back_and_named(tmp_path: Path) -> None:
    """Step 6 adds ingest_queue.done_ts; a database that somehow has that column already makes
    the step fail: the schema stays at 5, and the error says which file and which step."""
    path = tmp_path / "sink.db"
    sink_db_at(path, 5)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE ingest_queue ADD COLUMN done_ts REAL")
    con.commit()
    con.close()
    res = sink("migrate", "--data", str(tmp_path))
    assert res.returncode == 2
    assert "sink.db: migration 6 failed and was rolled back; the schema stays at version 5" in (
        res.stderr
    )
    assert "duplicate column name: done_ts" in res.stderr
    assert schema_version(path) == 5


def test_a_damaged_database_fails_the_doctor(tmp_path: Path) -> None:
    assert sink("migrate", "--data", str(tmp_path)).returncode == 0
    (tmp_path / "index.db").write_bytes(b"not a database, a disk's bad day" * 200)
    res = sink("doctor", "--data", str(tmp_path), "--json")
    assert res.returncode == 1
    got = records(res.stdout)
    assert got["index.db"]["status"] == "fail" and "not a database" in got["index.db"]["detail"]
    assert got["sink.db"]["status"] == "pass"  # one bad file does not hide the others' state


def test_the_bucket_is_checked_by_writing_and_removing_a_probe(
    tmp_path: Path, moto_url: str
) -> None:
    import boto3

    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="doctor-ok")
    assert sink("migrate", "--data", str(tmp_path)).returncode == 0
    common = ("doctor", "--data", str(tmp_path), "--s3-endpoint", moto_url, "--json")
    res = sink(*common, "--s3-bucket", "doctor-ok", "--s3-prefix", "sink", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    blob = records(res.stdout)["blob store"]
    assert blob["status"] == "pass" and blob["detail"].startswith("s3://doctor-ok/sink")
    assert s3.list_objects_v2(Bucket="doctor-ok").get("KeyCount", 0) == 0  # the probe is gone
    res = sink(*common, "--s3-bucket", "no-such-bucket", env=env)
    assert res.returncode == 1
    blob = records(res.stdout)["blob store"]
    assert blob["status"] == "fail" and "no-such-bucket" in blob["detail"]
    assert "credentials" in blob["remedy"]
