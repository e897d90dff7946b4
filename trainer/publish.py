"""``capsight-train publish``: hand a released model to the model registry.

Until the TUF registry lands (the model-push issue), the registry is a folder in its layout:
``REGISTRY/targets/NAME/VERSION/`` holds the ONNX file, its card and the gate's ``eval.json``;
``REGISTRY/channels/CHANNEL.json`` names what each channel offers. Only a model the gate released
is published: the ``eval.json`` must say ``release`` for exactly this file (its sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from capsight_edge.runtime.card import card_path, read_card

CHANNELS = ("canary", "stable")


class PublishError(ValueError):
    pass


def publish(model: Path, eval_json: Path, registry: Path, channel: str) -> dict[str, Any]:
    if channel not in CHANNELS:
        raise PublishError(f"unknown channel {channel!r} (choose from {', '.join(CHANNELS)})")
    try:
        report = json.loads(eval_json.read_text())
    except (OSError, ValueError) as exc:
        raise PublishError(f"{eval_json}: not a gate report: {exc}") from None
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    candidate = report.get("candidate") or {}
    if candidate.get("sha256") != digest:
        raise PublishError(
            f"{eval_json} judged another file (sha256 {str(candidate.get('sha256'))[:12]}...), "
            f"not {model} ({digest[:12]}...): run the gate on this model"
        )
    if report.get("decision") != "release":
        reasons = "; ".join(report.get("reasons") or []) or "no reason given"
        raise PublishError(f"the gate rejected {model}: {reasons}")
    card = read_card(model)
    folder = registry / "targets" / card.name / card.version
    if folder.exists():
        raise PublishError(f"{card.name} {card.version} is already published ({folder})")
    tmp = folder.with_name(f".{card.version}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(model, tmp / "model.onnx")
    (tmp / "model.card.json").write_text(card_path(model).read_text())
    shutil.copyfile(eval_json, tmp / "eval.json")
    os.replace(tmp, folder)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    chan = registry / "channels" / f"{channel}.json"
    chan.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "name": card.name,
        "version": card.version,
        "sha256": digest,
        "length": model.stat().st_size,
        "path": str(folder.relative_to(registry) / "model.onnx"),
        "published_utc": now,
    }
    history = json.loads(chan.read_text())["history"] if chan.is_file() else []
    tmp_chan = chan.with_suffix(".tmp")
    tmp_chan.write_text(json.dumps({"current": entry, "history": [*history, entry]}, indent=1))
    os.replace(tmp_chan, chan)
    return {
        "name": card.name,
        "version": card.version,
        "channel": channel,
        "registry": str(registry),
        "files": sorted(str(p.relative_to(registry)) for p in folder.iterdir()),
        "published_utc": now,
    }
