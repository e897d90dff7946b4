"""The pre-label stage as a Ray Data job on a real local cluster (`ray start --head`) labels
exactly what the in-process stage labels."""

from __future__ import annotations

import shutil
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from capsight_edge.localray import ray_head
from cloud_sink.blobs import LocalBlobStore
from cloud_sink.catalogue import Catalogue
from cloud_sink.index import Index
from cloud_sink.prelabel import Prelabeler
from cloud_sink.teacher import Teacher
from tests.labelling_helpers import Fleet, label_rows, make_teacher

pytestmark = pytest.mark.whole_machine  # a Ray cluster (`ray start --head`)


@pytest.mark.slow
def test_the_ray_path_labels_exactly_as_in_process(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also: under a temporary folder too deep for Ray's session sockets, the cluster gets a
    short one of its own, removed after; and Ray's usage statistics stay off (with them on, the
    driver starts a thread that asks a Prometheus server at localhost:9090 for counters)."""
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    deep = tmp_path / ("t" * 60) / ("m" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    cat = Catalogue.load(fleet.catalogue)
    teacher = make_teacher(tmp_path, ["", *cat.skus])
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(fleet.sink_data, here)
    shutil.copytree(fleet.sink_data, there)
    with ray_head() as address:
        a = Index(here / "index.db")
        Prelabeler(a, LocalBlobStore(here / "blobs" / "store"), cat, Teacher(teacher)).run()
        b = Index(there / "index.db")
        report = Prelabeler(
            b, LocalBlobStore(there / "blobs" / "store"), cat, Teacher(teacher)
        ).run_ray(address)

    assert report.items > 0 and not report.failed
    assert not [t.name for t in threading.enumerate() if "usage" in t.name], "usage statistics"
    assert label_rows(a) == label_rows(b)
    left = {p.name: stat.filemode(p.lstat().st_mode) for p in deep.iterdir()}
    assert left == {}
