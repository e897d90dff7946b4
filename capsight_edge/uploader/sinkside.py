"""The uploader's one door to the sink: :class:`SinkClient`.

Every request the uploader makes goes through :meth:`SinkClient.send`, where every transport
error is mapped, once: a refused connection is :class:`~.progress.RetryLater` with
``sink_down`` (the sink is not there: every upload waits), anything else that leaves a request
without an answer (a timeout, a reset) is :class:`Interrupted` (ask the sink where it is, then
carry on). Besides the uploads' own requests it knows the sink's other conversations: what its
tus endpoint can do (OPTIONS), terminating uploads that will never be finished, heartbeats for
the fleet view.
"""

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


class Interrupted(Exception):
    """A request got no answer (timeout, connection reset): what the sink holds is unknown."""


class SinkClient:
    """``client``: any ``httpx.AsyncClient`` (an ``ASGITransport`` one in tests); ``base``: the
    sink's base URL; ``endpoint``: its tus endpoint; ``token``: this device's bearer token
    (the driver swaps it when the token file changes)."""

    def __init__(self, client: httpx.AsyncClient, base: str, endpoint: str, token: str) -> None:
        self.client = client
        self.base = base
        self.endpoint = endpoint
        self.token = token

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def send(
        self, method: str, url: str, headers: dict[str, str], content: Any = None, **kw: Any
    ) -> httpx.Response:
        try:
            return await self.client.request(method, url, headers=headers, content=content, **kw)
        except httpx.ConnectError as exc:
            raise RetryLater(f"sink unreachable: {exc}", sink_down=True) from exc
        except httpx.TransportError as exc:  # timeouts, resets, protocol errors
            raise Interrupted(f"{method} interrupted: {exc!r}") from exc

    async def discover(self) -> ServerCaps:
        """OPTIONS: extensions, checksum algorithms, maximum size."""
        headers = {"Tus-Resumable": TUS_VERSION, **self.auth()}
        try:
            resp = await self.send("OPTIONS", self.endpoint, headers)
        except Interrupted as exc:
            raise RetryLater(f"OPTIONS failed: {exc}") from exc
        if resp.status_code in (401, 403):
            raise TokenRefused(f"OPTIONS answered {resp.status_code}: the token is refused")
        if resp.status_code >= 500:
            raise RetryLater(f"OPTIONS answered {resp.status_code}", sink_down=True)
        caps = ServerCaps.parse(resp.headers)
        log.info(
            "sink %s: tus extensions %s, checksums %s",
            self.endpoint,
            ",".join(sorted(caps.extensions)) or "-",
            ",".join(sorted(caps.checksum_algorithms)) or "-",
        )
        return caps

    async def terminate(self, url: str, length: int) -> bool:
        """DELETE one upload; True when it is gone (or was already)."""
        up = TusUpload(self.endpoint, length, {}, token=self.token, url=url)
        req = up.termination_request()
        if req is None:
            return True
        try:
            resp = await self.send(req.method, req.url, req.headers)
        except (RetryLater, Interrupted):
            return False
        return up.receive("DELETE", resp.status_code, resp.headers).ok

    async def terminate_abandoned(self, journal: Journal) -> int:
        """DELETE the sink-side uploads of bundles that were evicted or quarantined; returns
        how many went. A failure leaves the rest for the next time."""
        done = 0
        for row in journal.abandoned_uploads():
            if not await self.terminate(row.url, row.wire_bytes):
                break
            journal.forget_upload_plan(row.bundle_id, row.name)
            log.info("terminated the abandoned upload of %s/%s", row.bundle_id, row.name)
            done += 1
        return done

    async def heartbeat(self, body: dict[str, Any]) -> bool:
        """POST /api/heartbeat; True when the sink took it."""
        try:
            resp = await self.send("POST", self.base + "/api/heartbeat", self.auth(), json=body)
        except (RetryLater, Interrupted):
            return False
        return resp.status_code == 200


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
