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
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import httpx

from capsight_edge.journal.guard import disk_usage
from capsight_edge.journal.journal import Journal
from capsight_edge.uploader.progress import RetryLater, SinkMisconfigured, TokenRefused
from capsight_edge.uploader.tus import TUS_VERSION, ServerCaps, TusUpload

log = logging.getLogger("capsight.uploader")


class Interrupted(Exception):
    """A request got no answer (timeout, connection reset): what the sink holds is unknown."""


def endpoint_candidates(sink_url: str, tus_path: str = "/files/") -> list[str]:
    """Where the tus endpoint may be for a URL a person typed: the URL itself (it may be the
    endpoint: ``http://sink:8080/files/``, or a foreign server's ``/uploads/``), then the URL
    with our sink's path added (it may be the base: ``http://sink:8080``)."""
    url = sink_url.rstrip("/")
    first = url + "/"
    second = url + "/" + tus_path.strip("/") + "/"
    return [first] if first == second else [first, second]


def base_of(endpoint: str, tus_path: str = "/files/") -> str:
    """The sink's base URL (for ``/api/heartbeat``) from its tus endpoint."""
    url = endpoint.rstrip("/")
    suffix = "/" + tus_path.strip("/")
    if url.endswith(suffix):
        return url[: -len(suffix)]
    return str(httpx.URL(url).copy_with(path="/", query=None)).rstrip("/")


class SinkClient:
    """``client``: any ``httpx.AsyncClient`` (an ``ASGITransport`` one in tests); ``sink_url``:
    what the profile says (the sink's base URL or its tus endpoint: :meth:`discover` finds
    which); ``token``: this device's bearer token (the driver swaps it when the token file
    changes)."""

    def __init__(
        self, client: httpx.AsyncClient, sink_url: str, token: str, tus_path: str = "/files/"
    ) -> None:
        self.client = client
        self.sink_url = sink_url
        self.tus_path = tus_path
        self.endpoint = endpoint_candidates(sink_url, tus_path)[-1]
        self.base = base_of(self.endpoint, tus_path)
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

    def remembered(self) -> str:
        """What :meth:`discover` found, to be given back to it on the next start."""
        return json.dumps({"sink_url": self.sink_url, "endpoint": self.endpoint})

    def _recalled(self, remembered: str) -> list[str]:
        """The endpoint a previous run found for this very sink URL ([] for another URL or
        nothing kept)."""
        try:
            kept = json.loads(remembered) if remembered else {}
        except ValueError:
            return []
        if not isinstance(kept, dict) or kept.get("sink_url") != self.sink_url:
            return []
        endpoint = kept.get("endpoint")
        return [endpoint] if isinstance(endpoint, str) and endpoint.startswith("http") else []

    async def discover(self, remembered: str = "") -> ServerCaps:
        """Find the tus endpoint behind the sink URL (OPTIONS, redirects followed) and what it
        can do: extensions, checksum algorithms, maximum size. ``remembered``: what
        :meth:`remembered` said on a previous run, asked first (one request instead of one per
        candidate when the URL is the sink's base). SinkMisconfigured when neither the URL nor
        the URL with our sink's path is a tus endpoint."""
        headers = {"Tus-Resumable": TUS_VERSION, **self.auth()}
        seen: list[str] = []
        candidates = endpoint_candidates(self.sink_url, self.tus_path)
        for candidate in dict.fromkeys([*self._recalled(remembered), *candidates]):
            try:
                resp = await self.send("OPTIONS", candidate, headers, follow_redirects=True)
            except Interrupted as exc:
                raise RetryLater(f"OPTIONS failed: {exc}") from exc
            except httpx.TooManyRedirects:
                seen.append(f"{candidate}: redirects that go round")
                continue
            if resp.status_code in (401, 403):
                raise TokenRefused(f"OPTIONS answered {resp.status_code}: the token is refused")
            if resp.status_code >= 500:
                raise RetryLater(f"OPTIONS answered {resp.status_code}", sink_down=True)
            if resp.headers.get("Tus-Version") or resp.headers.get("Tus-Resumable"):
                self.endpoint = str(resp.url)
                self.base = base_of(self.endpoint, self.tus_path)
                break
            seen.append(f"{candidate}: HTTP {resp.status_code}, not tus")
        else:
            raise SinkMisconfigured(
                f"no tus endpoint at the sink URL {self.sink_url} ({'; '.join(seen)}): "
                "give the sink's base URL or its tus endpoint"
            )
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
    with contextlib.suppress(OSError):
        used_pct = round(disk_usage(data_dir)[2], 1)
    return {
        "queue_depth": len(journal.upload_queue()),
        "disk_used_pct": used_pct,
        "last_upload_utc": last_upload_utc,
        "model_version": model_version,
    }
