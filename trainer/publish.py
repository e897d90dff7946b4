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

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsight_edge.errors import CapsightError
from capsight_edge.runtime.card import card_path, read_card
from capsight_edge.runtime.trust import (
    ROLLOUT,
    expires,
    load_public,
    load_signer,
    model_dir,
    resign,
)
from cloud_sink.registry import FolderStore

if TYPE_CHECKING:
    from cloud_sink.registry import RegistryStore


class PublishError(ValueError):
    pass


def _bytes(md: Any) -> bytes:
    from tuf.api.serialization.json import JSONSerializer

    return bytes(md.to_bytes(JSONSerializer(compact=False)))


@contextlib.contextmanager
def _registry(target: str | os.PathLike[str], *, new: bool = False) -> Iterator[RegistryStore]:
    """The registry ``target`` names (a folder, or the database server of a sink that runs on
    one), locked against the sink's own writes while the ML team's change is made. Unless
    ``new``, it must hold a registry already (a mistyped folder is never created)."""
    from cloud_sink.registry import RegistryError, open_store

    try:
        store, closer = open_store(target)
    except (RegistryError, CapsightError) as exc:
        raise PublishError(str(exc)) from None
    try:
        if not new and store.read("metadata/root.json") is None:
            raise PublishError(
                f"{store.name} is not a registry (capsight-train registry-init first)"
            )
        with store.lock():
            yield store
    except RegistryError as exc:
        raise PublishError(str(exc)) from None
    finally:
        if closer is not None:
            closer.close()


def _load(store: RegistryStore, role: str) -> Any:
    from tuf.api.metadata import Metadata

    body = store.read(f"metadata/{role}.json")
    if body is None:
        raise PublishError(f"{store.name} is not a registry (capsight-train registry-init first)")
    return Metadata.from_bytes(body)


def init_registry(
    registry: str | os.PathLike[str],
    ml_key: Path,
    online_public: Path,
    root_out: Path | None = None,
) -> Path:
    """A new registry in ``registry`` (a folder, or a sink's database server):
    ``metadata/1.root.json`` (the root carts are given) and ``metadata/targets.json`` v1, both
    signed with ``ml_key``. ``root_out``: a copy of that root for the carts (needed for a
    database). Returns the root file carts are given (the folder's, or ``root_out``)."""
    from tuf.api.metadata import DelegatedRole, Delegations, Metadata, Root, Targets

    from cloud_sink.sql import is_server_url

    if root_out is None and is_server_url(registry):
        raise PublishError(
            "a registry in a database needs --root-out FILE: the root carts are given"
        )
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
    with _registry(registry, new=True) as store:
        if store.read("metadata/1.root.json") is not None:
            raise PublishError(f"{store.name} already holds a registry")
        store.write(
            {
                "metadata/1.root.json": _bytes(root),
                "metadata/root.json": _bytes(root),
                "metadata/targets.json": _bytes(targets),
            }
        )
        local = store.local_file("metadata/1.root.json") if isinstance(store, FolderStore) else None
    if root_out is not None:
        root_out.write_bytes(_bytes(root))
        return root_out
    assert local is not None  # a folder's
    return local


def rotate_keys(
    registry: str | os.PathLike[str],
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

    if new_ml_key is None and new_online is None:
        raise PublishError("nothing to rotate: give --new-key, --online-key or both")
    old_signer = load_signer(ml_key)
    new_signer = load_signer(new_ml_key) if new_ml_key else old_signer
    online = load_public(new_online) if new_online else None
    with _registry(registry) as store:
        root = _load(store, "root")
        if old_signer.public_key.keyid not in root.signed.roles["root"].keyids:
            raise PublishError(f"{ml_key} is not the key the registry's root trusts for root")
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
        signers = [old_signer] if new_signer is old_signer else [old_signer, new_signer]
        resign(root, "root", *signers)
        targets = _load(store, "targets")
        if online is not None and targets.signed.delegations is not None:
            for keyid in list(targets.signed.delegations.keys):
                targets.signed.revoke_key(keyid, ROLLOUT)
            targets.signed.add_key(online, ROLLOUT)
        resign(targets, "targets", new_signer)
        version = root.signed.version
        store.write(
            {
                f"metadata/{version}.root.json": _bytes(root),
                "metadata/root.json": _bytes(root),
                "metadata/targets.json": _bytes(targets),
            }
        )
    return {
        "root_version": version,
        "root": f"{store.name}/metadata/{version}.root.json",
        "ml_keyid": new_signer.public_key.keyid,
        "online_keyid": root.signed.roles["timestamp"].keyids[0],
        "targets_version": targets.signed.version,
    }


def publish(
    model: Path, eval_json: Path, registry: str | os.PathLike[str], ml_key: Path
) -> dict[str, Any]:
    """Add ``model`` (with its card, golden self-test and eval report) to the targets of
    ``registry`` (a folder, or a sink's database server), signed with ``ml_key``."""
    from tuf.api.metadata import TargetFile

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
    rel = model_dir(card.name, card.version)
    signer = load_signer(ml_key)
    files = {
        "model.onnx": model,
        "model.card.json": card_path(model),
        "golden.npz": golden_path(model),
        "eval.json": eval_json,
    }
    for name, src in files.items():
        if not src.is_file():
            raise PublishError(f"{src} is missing (needed as {name})")
    with _registry(registry) as store:
        md = _load(store, "targets")
        root = _load(store, "root")
        if signer.public_key.keyid not in root.signed.roles["targets"].keyids:
            raise PublishError(f"{ml_key} is not the key the registry's root trusts for targets")
        if any(p.startswith(rel + "/") for p in md.signed.targets):
            raise PublishError(f"{card.name} {card.version} is already published")
        out: dict[str, bytes] = {}
        for name, src in files.items():
            body = src.read_bytes()
            target = TargetFile.from_data(f"{rel}/{name}", body, ["sha256"])
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
            out[f"targets/{rel}/{name}"] = body
        resign(md, "targets", signer)
        # The files first and targets last (a folder); in a database, all in one transaction.
        store.write(out)
        store.write({"metadata/targets.json": _bytes(md)})
    return {
        "name": card.name,
        "version": card.version,
        "registry": store.name,
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
