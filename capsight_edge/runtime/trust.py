"""The trust model of model push (The Update Framework, through python-tuf).

Who signs what:

- **root** and **targets**: the ML team's offline key (``capsight-train keygen``; the sink never
  holds it). Root names every role's keys; targets lists every model file (ONNX, card, golden
  self-test, eval report) with its length and hashes, and delegates ``channels/*`` to the
  ``rollout`` role.
- **rollout** (a delegated targets role), **snapshot** and **timestamp**: the sink's online key.
  Rollout lists the channel files (``channels/canary.json``: which model, for what share of the
  fleet); snapshot pins the versions of targets and rollout; timestamp pins snapshot and expires
  soonest. The online key can only point a channel at a model the ML team signed.

A cart holds a copy of root (its trust anchor, ``[model] trust_root``) and accepts a model only
when python-tuf's client verifies the chain: signatures by the keys root names, versions that never
go backwards (a replayed old snapshot or channel file is refused), nothing expired, and the file's
length and hashes as targets says. A rollback is a new, signed channel file pointing at an older
model: never an old channel file replayed.

Key files are JSON: ``{"keytype", "scheme", "keyid", "public": {...}, "private_pem"}`` (mode
0600); ``*.pub.json`` holds the public half only.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: How long each role's metadata stays valid (the online roles are re-signed well before).
EXPIRY_DAYS = {"root": 365, "targets": 90, "rollout": 7, "snapshot": 7, "timestamp": 1}
ROLLOUT = "rollout"
CHANNELS = ("canary", "stable")


def expires(role: str) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=EXPIRY_DAYS[role])


def resign(md: Any, role: str, *signers: Any) -> None:
    """The next version of ``md`` (a python-tuf ``Metadata``): version + 1, a fresh expiry for
    ``role``, signed by ``signers`` alone (a new root: the old root's key and the new one)."""
    md.signed.version += 1
    md.signed.expires = expires(role)
    md.signatures.clear()
    for k, signer in enumerate(signers):
        md.sign(signer, append=k > 0)


def channel_path(channel: str) -> str:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r} (choose from {', '.join(CHANNELS)})")
    return f"channels/{channel}.json"


def model_dir(name: str, version: str) -> str:
    return f"models/{name}/{version}"


def bucket(device_id: str) -> int:
    """The device's place in a staged rollout, 0..99, fixed by its name: a channel at n% reaches
    the devices whose bucket is below n."""
    return int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:4], "big") % 100


def generate_key(path: Path) -> dict[str, Any]:
    """A new ed25519 key: ``path`` (private, mode 0600) and ``path.pub.json``; returns the
    public half."""
    from securesystemslib.signer import CryptoSigner

    signer = CryptoSigner.generate_ed25519()
    public = signer.public_key
    data = {
        "keyid": public.keyid,
        "public": public.to_dict(),
        "private_pem": signer.private_bytes.decode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    pub = {"keyid": public.keyid, "public": public.to_dict()}
    pub_path(path).write_text(json.dumps(pub, indent=1))
    return pub


def pub_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".json") + ".pub.json")


def load_public(path: Path) -> Any:
    """The public key in a key file or a ``.pub.json`` (an ``SSlibKey``)."""
    from securesystemslib.signer import SSlibKey

    data = json.loads(Path(path).read_text())
    return SSlibKey.from_dict(data["keyid"], dict(data["public"]))


def load_signer(path: Path) -> Any:
    """A signer for the private key in ``path``."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    data = json.loads(Path(path).read_text())
    if "private_pem" not in data:
        raise ValueError(f"{path} holds no private key (a .pub.json?)")
    private = load_pem_private_key(data["private_pem"].encode(), password=None)
    return CryptoSigner(private, load_public(path))  # type: ignore[arg-type]
