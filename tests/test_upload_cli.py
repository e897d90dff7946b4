"""`capsight upload now|pause|resume`, `capsight queue` (progress) and `capsight status` against
a real sink process on 127.0.0.1 and a real journal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.bundles import seal_bundle
from capsight_edge.journal.journal import Journal
from capsight_edge.uploader.service import UploaderThread
from capsight_edge.uploader.shaping import UploadSchedule
from capsight_edge.uploader.uploader import Uploader
from tests.conftest import json_records, run_cli, wait_until
from tests.sink_helpers import Sink


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sink, Path]]:
    data = tmp_path_factory.mktemp("sink")
    s = Sink(data)
    token_file = data / "cart-a.token"
    token_file.write_text(s.add_device("cart-a") + "\n")
    s.start()
    yield s, token_file
    s.stop()


def cart_with(tmp_path: Path, *ids: str, **kw: object) -> Path:
    data = tmp_path / "cart"
    j = Journal(data / "journal.db")
    for i in ids:
        seal_bundle(j, data, i, **kw)
    j.close()
    return data


def test_upload_now_flushes_the_queue_and_reports(tmp_path: Path, sink: tuple[Sink, Path]) -> None:
    s, token = sink
    data = cart_with(tmp_path, "n1", "n2")
    args = ("--data", str(data), "--sink", s.url, "--token-file", str(token))
    res = run_cli("upload", "now", "--json", *args)
    assert res.returncode == 0, res.stderr + res.stdout
    records = json_records(res.stdout)
    result = records[-1]
    assert result["type"] == "upload_result"
    assert result["uploaded"] == 2 and result["left"] == 0
    assert {r["type"] for r in records[:-1]} <= {"upload_progress"}
    (q,) = json_records(run_cli("queue", "--json", "--data", str(data)).stdout)
    assert q["bundles"] == 0 and q["uploader"]["stats"]["bundles_uploaded"] == 2
    human = run_cli("queue", "--data", str(data))
    assert "the upload queue is empty" in human.stdout
    watch = run_cli("queue", "--watch", "--data", str(data))  # returns: nothing left
    assert watch.returncode == 0
    (st,) = json_records(run_cli("status", "--json", "--data", str(data)).stdout)
    assert st["queue"]["uploaded"]["count"] == 2 and st["upload"]["state"] == "stopped"


def test_upload_now_with_a_refused_token_says_so_and_keeps_the_bundles(
    tmp_path: Path, sink: tuple[Sink, Path]
) -> None:
    s, _ = sink
    data = cart_with(tmp_path, "t1")
    bad = tmp_path / "bad.token"
    bad.write_text("not-a-token")
    res = run_cli("upload", "now", "--data", str(data), "--sink", s.url, "--token-file", str(bad))
    assert res.returncode == 1
    assert "refuses this device's token" in res.stdout and "1 left" in res.stdout
    human = run_cli("status", "--data", str(data))
    assert "refuses this device's token" in human.stdout
    missing = run_cli("upload", "now", "--data", str(data), "--sink", s.url, "--token-file", "/x")
    assert missing.returncode == 1 and "cannot read the token" in missing.stderr
    no_sink = run_cli("upload", "now", "--data", str(data))
    assert no_sink.returncode == 1 and "no sink" in no_sink.stderr


def test_pause_holds_uploads_until_resume(tmp_path: Path, sink: tuple[Sink, Path]) -> None:
    s, token = sink
    data = cart_with(tmp_path, "h1")
    args = ("--data", str(data), "--sink", s.url, "--token-file", str(token))
    assert run_cli("upload", "pause", "--reason", "store busy", "--data", str(data)).returncode == 0
    held = run_cli("upload", "now", *args)
    assert held.returncode == 1 and "store busy" in held.stdout
    assert "store busy" in run_cli("queue", "--data", str(data)).stdout
    assert run_cli("upload", "resume", "--data", str(data)).returncode == 0
    assert run_cli("upload", "now", *args).returncode == 0


def test_a_running_uploader_holds_for_upload_pause(tmp_path: Path, sink: tuple[Sink, Path]) -> None:
    s, token = sink
    data = cart_with(tmp_path, "k1", noise_frames=30)
    j = Journal(data / "journal.db")
    up = Uploader(
        j,
        data,
        sink_url=s.url,
        token_file=str(token),
        schedule=UploadSchedule(1_000_000),
        chunk_bytes=64 * 1024,
        heartbeat_s=0,
    )
    runner = UploaderThread(up).start()
    try:
        assert wait_until(lambda: up.stats.bytes_sent > 0, 30)
        progress, row = json_records(run_cli("queue", "--json", "--data", str(data)).stdout)
        assert row["bundle_id"] == "k1" and progress["uploader"]["running"]
        assert progress["uploader"]["rate_cap_bps"] == 1_000_000
        assert run_cli("upload", "pause", "--data", str(data)).returncode == 0
        assert wait_until(lambda: up.state.startswith("paused: paused by a technician"), 10)
        assert run_cli("upload", "resume", "--data", str(data)).returncode == 0
        assert wait_until(lambda: up.state in ("uploading", "idle"), 10)
    finally:
        runner.stop()
        j.close()
