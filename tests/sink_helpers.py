"""A real sink on 127.0.0.1 for the tests (`capsight-sink serve` as a child process), and the
sink's CLI."""

from __future__ import annotations

import subprocess
import sys

from capsight_edge.localsink import LocalSink as Sink
from capsight_edge.localsink import free_port, wait_http
from tests.conftest import ROOT

__all__ = ["Sink", "free_port", "sink_cli", "tus_headers", "wait_http"]


def sink_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud_sink.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def tus_headers(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0", **extra}


def api_json(response: object) -> dict:  # type: ignore[type-arg]
    """A sink API response's body, held against its schema in ``schemas/api/`` (by ``type``)."""
    from tests.conftest import json_records

    (record,) = json_records(response.text, folder="schemas/api")  # type: ignore[attr-defined]
    return record
