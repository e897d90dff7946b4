"""The uploader's other conversations with the sink: what its tus endpoint can do (OPTIONS),
terminating uploads that will never be finished, and heartbeats for the fleet view."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

import httpx

from capsight_edge.journal.journal import Journal
from capsight_edge.uploader.progress import RetryLater, TokenRefused
from capsight_edge.uploader.tus import TUS_VERSION, ServerCaps, TusUpload

log = logging.getLogger("capsight.uploader")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def discover(client: httpx.AsyncClient, endpoint: str, token: str) -> ServerCaps:
    """OPTIONS: extensions, checksum algorithms, maximum size."""
    try:
        resp = await client.options(
            endpoint, headers={"Tus-Resumable": TUS_VERSION, **_auth(token)}
        )
    except httpx.ConnectError as exc:
        raise RetryLater(f"sink unreachable: {exc}", sink_down=True) from exc
    except httpx.TransportError as exc:
        raise RetryLater(f"OPTIONS failed: {exc!r}") from exc
    if resp.status_code in (401, 403):
        raise TokenRefused(f"OPTIONS answered {resp.status_code}: the token is refused")
    if resp.status_code >= 500:
        raise RetryLater(f"OPTIONS answered {resp.status_code}", sink_down=True)
    caps = ServerCaps.parse(resp.headers)
    log.info(
        "sink %s: tus extensions %s, checksums %s",
        endpoint,
        ",".join(sorted(caps.extensions)) or "-",
        ",".join(sorted(caps.checksum_algorithms)) or "-",
    )
    return caps


async def terminate_abandoned(
    client: httpx.AsyncClient, journal: Journal, endpoint: str, token: str
) -> int:
    """DELETE the sink-side uploads of bundles that were evicted or quarantined; returns how
    many went. A transport error leaves the rest for the next time."""
    done = 0
    for row in journal.abandoned_uploads():
        if not await terminate(client, endpoint, token, row.url, row.wire_bytes):
            break
        journal.forget_upload_plan(row.bundle_id, row.name)
        log.info("terminated the abandoned upload of %s/%s", row.bundle_id, row.name)
        done += 1
    return done


async def terminate(
    client: httpx.AsyncClient, endpoint: str, token: str, url: str, length: int
) -> bool:
    """DELETE one upload; True when it is gone (or was already)."""
    up = TusUpload(endpoint, length, {}, token=token, url=url)
    req = up.termination_request()
    if req is None:
        return True
    try:
        resp = await client.request(req.method, req.url, headers=req.headers)
    except httpx.TransportError:
        return False
    return up.receive("DELETE", resp.status_code, resp.headers).ok


def drop_stale_wire(journal: Journal, data_dir: Path) -> None:
    """Compressed copies of bundles that nothing will send any more."""
    root = data_dir / "wire"
    if root.is_dir():
        live = {r.id for r in journal.upload_queue()}
        for d in root.iterdir():
            if d.name not in live:
                shutil.rmtree(d, ignore_errors=True)


def heartbeat_body(
    journal: Journal, data_dir: Path, last_upload_utc: str, model_version: str
) -> dict[str, Any]:
    used_pct = 0.0
    with contextlib.suppress(OSError, ZeroDivisionError):
        disk = shutil.disk_usage(data_dir)
        used_pct = round(100.0 * disk.used / disk.total, 1)
    return {
        "queue_depth": len(journal.upload_queue()),
        "disk_used_pct": used_pct,
        "last_upload_utc": last_upload_utc,
        "model_version": model_version,
    }


async def heartbeat(
    client: httpx.AsyncClient, base_url: str, token: str, body: dict[str, Any]
) -> bool:
    """POST /api/heartbeat; True when the sink took it."""
    try:
        resp = await client.post(base_url + "/api/heartbeat", json=body, headers=_auth(token))
    except httpx.TransportError:
        return False
    return resp.status_code == 200
