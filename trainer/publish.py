"""``capsight-train publish``: hand a released model to the model registry, signed offline.

The registry is a TUF repository (:mod:`capsight_edge.runtime.trust` says who signs what). The
ML team's side, here: create the repository's root (``init_registry``: root and targets signed
by the team's key, snapshot, timestamp and the ``rollout`` delegation given to the sink's online
key) and add a released model to targets (``publish``: the ONNX file, its card, its golden
self-test and the gate's eval report, each with length and hashes; targets' version goes up by
one and is signed again). The sink re-signs snapshot and timestamp, and points channels at
models (``capsight-sink model promote``). Only a model the gate released is published: the
``eval.json`` must say ``release`` for exactly this file (its sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from capsight_edge.runtime.card import card_path, read_card
from capsight_edge.runtime.trust import (
    ROLLOUT,
    expires,
    load_public,
    load_signer,
    model_dir,
    resign,
)


class PublishError(ValueError):
    pass


def _write(md: Any, path: Path) -> None:
    from tuf.api.serialization.json import JSONSerializer

    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(md.to_bytes(JSONSerializer(compact=False)))
    os.replace(tmp, path)


def init_registry(folder: Path, ml_key: Path, online_public: Path) -> Path:
    """A new registry in ``folder``: ``metadata/1.root.json`` (the root carts are given) and
    ``metadata/targets.json`` v1, both signed with ``ml_key``."""
    from tuf.api.metadata import DelegatedRole, Delegations, Metadata, Root, Targets

    meta = folder / "metadata"
    if (meta / "1.root.json").exists():
        raise PublishError(f"{folder} already holds a registry")
    meta.mkdir(parents=True, exist_ok=True)
    (folder / "targets").mkdir(exist_ok=True)
    signer = load_signer(ml_key)
    online = load_public(online_public)
    root = Metadata(Root(expires=expires("root"), consistent_snapshot=False))
    root.signed.add_key(signer.public_key, "root")
    root.signed.add_key(signer.public_key, "targets")
    root.signed.add_key(online, "snapshot")
    root.signed.add_key(online, "timestamp")
    root.sign(signer)
    targets = Metadata(Targets(expires=expires("targets")))
    targets.signed.delegations = Delegations(
        keys={online.keyid: online},
        roles={
            ROLLOUT: DelegatedRole(
                name=ROLLOUT,
                keyids=[online.keyid],
                threshold=1,
                terminating=True,
                paths=["channels/*"],
            )
        },
    )
    targets.sign(signer)
    _write(root, meta / "1.root.json")
    _write(root, meta / "root.json")
    _write(targets, meta / "targets.json")
    return meta / "1.root.json"


def rotate_keys(
    registry: Path,
    ml_key: Path,
    *,
    new_ml_key: Path | None = None,
    new_online: Path | None = None,
) -> dict[str, Any]:
    """A new root version that names new keys: the ML team's (root and targets) when
    ``new_ml_key``, the sink's online key (snapshot, timestamp, and the rollout delegation) when
    ``new_online`` (a ``.pub.json``; the sink makes it with ``capsight-sink model keygen --next``).

    The new root is signed by the old root key and by the new one (a cart accepts root N+1 only
    when root N's keys and root N+1's keys both signed it; carts walk ``N.root.json`` upwards at
    their next poll, with nothing to install by hand). Targets is signed again with the key that
    now holds the role. From then on, anything the old keys sign is refused by every cart."""
    from tuf.api.metadata import Metadata, Root, Targets

    if new_ml_key is None and new_online is None:
        raise PublishError("nothing to rotate: give --new-key, --online-key or both")
    meta = registry / "metadata"
    old_signer = load_signer(ml_key)
    root: Metadata[Root] = Metadata.from_file(str(meta / "root.json"))
    if old_signer.public_key.keyid not in root.signed.roles["root"].keyids:
        raise PublishError(f"{ml_key} is not the key the registry's root trusts for root")
    new_signer = load_signer(new_ml_key) if new_ml_key else old_signer
    online = load_public(new_online) if new_online else None
    for roles, key in (
        (("root", "targets"), new_signer.public_key if new_ml_key else None),
        (("snapshot", "timestamp"), online),
    ):
        if key is None:
            continue
        for role in roles:
            for keyid in list(root.signed.roles[role].keyids):
                root.signed.revoke_key(keyid, role)
            root.signed.add_key(key, role)
    resign(root, "root", *([old_signer] if new_signer is old_signer else [old_signer, new_signer]))
    targets: Metadata[Targets] = Metadata.from_file(str(meta / "targets.json"))
    if online is not None and targets.signed.delegations is not None:
        delegations = targets.signed.delegations
        for keyid in list(delegations.keys):
            targets.signed.revoke_key(keyid, ROLLOUT)
        targets.signed.add_key(online, ROLLOUT)
    resign(targets, "targets", new_signer)
    version = root.signed.version
    _write(root, meta / f"{version}.root.json")
    _write(root, meta / "root.json")
    _write(targets, meta / "targets.json")
    return {
        "root_version": version,
        "root": str(meta / f"{version}.root.json"),
        "ml_keyid": new_signer.public_key.keyid,
        "online_keyid": root.signed.roles["timestamp"].keyids[0],
        "targets_version": targets.signed.version,
    }


def publish(model: Path, eval_json: Path, registry: Path, ml_key: Path) -> dict[str, Any]:
    """Add ``model`` (with its card, golden self-test and eval report) to the registry's
    targets, signed with ``ml_key``."""
    from tuf.api.metadata import Metadata, TargetFile, Targets

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
    targets_path = registry / "metadata" / "targets.json"
    if not targets_path.is_file():
        raise PublishError(f"{registry} is not a registry (capsight-train registry-init first)")
    card = read_card(model)
    rel = model_dir(card.name, card.version)
    signer = load_signer(ml_key)
    root: Metadata[Any] = Metadata.from_file(str(registry / "metadata" / "root.json"))
    if signer.public_key.keyid not in root.signed.roles["targets"].keyids:
        raise PublishError(f"{ml_key} is not the key the registry's root trusts for targets")
    md: Metadata[Targets] = Metadata.from_file(str(targets_path))
    if any(p.startswith(rel + "/") for p in md.signed.targets):
        raise PublishError(f"{card.name} {card.version} is already published")
    files = {
        "model.onnx": model,
        "model.card.json": card_path(model),
        "golden.npz": golden_path(model),
        "eval.json": eval_json,
    }
    for name, src in files.items():
        if not src.is_file():
            raise PublishError(f"{src} is missing (needed as {name})")
    dest = registry / "targets" / rel
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, dest / name)
        target = TargetFile.from_file(f"{rel}/{name}", str(dest / name), ["sha256"])
        if name == "model.onnx":
            target.unrecognized_fields["custom"] = {
                "name": card.name,
                "version": card.version,
                "precision": card.precision,
                "dataset": card.dataset.model_dump() if card.dataset else None,
                # TUF's canonical JSON has no floats: the gate's figure as text.
                "accuracy": f"{float(candidate.get('accuracy') or 0):.4f}",
            }
        md.signed.targets[target.path] = target
    resign(md, "targets", signer)
    _write(md, targets_path)
    return {
        "name": card.name,
        "version": card.version,
        "registry": str(registry),
        "files": sorted(f"{rel}/{n}" for n in files),
        "targets_version": md.signed.version,
    }


def golden_path(model: Path) -> Path:
    return model.with_name(model.stem + ".golden.npz")


def write_golden(model: Path, inputs: Any) -> Path:
    """The model's self-test: a few real inputs and what the model answers to them (the cart
    runs them after loading and refuses a model that answers otherwise, or NaN)."""
    import numpy as np

    from trainer.export import session

    card = read_card(model)
    sess = session(model)
    scores, boxes = sess.run([card.outputs.scores, card.outputs.boxes], {card.input.name: inputs})
    path = golden_path(model)
    with path.open("wb") as f:
        np.savez(f, inputs=inputs, scores=scores, boxes=boxes)
    return path
