"""The pre-label stage as a Ray Data job on a real local cluster (`ray start --head`) labels
exactly what the in-process stage labels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capsight_edge.localsink import free_port
from cloud_sink.blobs import LocalBlobStore
from cloud_sink.catalogue import Catalogue
from cloud_sink.index import Index
from cloud_sink.prelabel import Prelabeler
from cloud_sink.teacher import Teacher
from tests.labelling_helpers import Fleet, label_rows, make_teacher

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.mark.slow
def test_the_ray_path_labels_exactly_as_in_process(fleet: Fleet, tmp_path: Path) -> None:
    cat = Catalogue.load(fleet.catalogue)
    teacher = make_teacher(tmp_path, ["", *cat.skus])
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(fleet.sink_data, here)
    shutil.copytree(fleet.sink_data, there)
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--object-store-memory=150000000",
            "--include-dashboard=false",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        a = Index(here / "index.db")
        Prelabeler(a, LocalBlobStore(here / "blobs" / "store"), cat, Teacher(teacher)).run()
        b = Index(there / "index.db")
        report = Prelabeler(
            b, LocalBlobStore(there / "blobs" / "store"), cat, Teacher(teacher)
        ).run_ray(f"127.0.0.1:{port}")
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=env)

    assert report.items > 0 and not report.failed
    assert label_rows(a) == label_rows(b)
