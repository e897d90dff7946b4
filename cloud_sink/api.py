"""The sink's JSON API: query the index (admin tokens), device heartbeats and the fleet view.

- ``GET /api/bundles?store=&device=&rule=&fired=&since=&until=&barcode=&label_status=&status=``
  ``&q=&limit=`` (admin): bundles, newest first; ``rule``: the rule that opened the bundle,
  ``fired``: a rule that fired in it at all; ``q`` is a full-text query.
- ``POST /api/heartbeat`` (device): ``{"queue_depth", "disk_used_pct", "last_upload_utc",
  "model_version"}``.
- ``GET /api/fleet`` (admin): per device its last heartbeat.
- ``GET /api/ingest`` (admin): the ingest queue: uploads pending, done, failed.
- ``GET /api/storage`` (admin): the upload area and what the sweep gave back.
- ``GET /api/bundles/{device_id}/{bundle_id}.mcap`` (admin): the bundle as one MCAP for
  Foxglove (clip as ``foxglove.CompressedVideo``, sensor channels, UTC log times).
- ``GET /metrics`` (admin): Prometheus metrics (:mod:`cloud_sink.observe`).

Every answer is one JSON object with a ``type`` (``bundles``, ``fleet``, ``ingest_queue``,
``storage``, ``ok``, ``error``), declared in :mod:`cloud_sink.schemas` and published as JSON
Schemas in ``schemas/api/``.

Every parameter and body goes through its schema (:mod:`cloud_sink.schemas`): a malformed one is
400 with the first problem, a body over its bound 413, a device token on an admin route 403 and
an admin token where a device is expected 403 (an admin is not a device).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from capsight_edge.bundle.manifest import BUNDLE_ID
from cloud_sink.auth import Identity, request_identity
from cloud_sink.config import SinkConfig
from cloud_sink.db import SinkDB
from cloud_sink.index import Index, QueryError
from cloud_sink.schemas import (
    BundleQuery,
    BundleRow,
    BundlesResponse,
    ErrorResponse,
    FleetDevice,
    FleetResponse,
    Heartbeat,
    IngestResponse,
    OkResponse,
    StorageResponse,
    validation_problem,
)


class TooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, never more than ``limit`` bytes read (TooLarge beyond)."""
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isascii() or not declared.isdigit() or len(declared) > 19):
        raise TooLarge("Content-Length is not a number")
    if declared and int(declared) > limit:
        raise TooLarge(f"the body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the body is larger than {limit} bytes")
    return bytes(body)


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=message).model_dump(), status_code=status, headers=headers or None
    )


def _answer(model: Any) -> JSONResponse:
    return JSONResponse(model.model_dump())


def add_api(
    routes: list[Route],
    db: SinkDB,
    index: Index,
    config: SinkConfig | None = None,
    sweeper: Any = None,
    ingest: Any = None,
    metrics: Any = None,
    sessions: Any = None,
) -> list[Route]:
    cfg = config or SinkConfig()

    def bearer_identity(request: Request, db: SinkDB) -> Identity | None:
        return request_identity(request, db, sessions)  # a token, or the review UI's session

    def denied(admin_needed: bool, who: Identity | None) -> JSONResponse | None:
        if who is None:
            return _error(401, "a Bearer token is required", **{"WWW-Authenticate": "Bearer"})
        if admin_needed and not who.admin:
            return _error(403, "an admin token is required")
        if not admin_needed and who.admin:
            return _error(403, "an admin token is not a device token")
        return None

    async def bundles(request: Request) -> JSONResponse:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        try:
            params = BundleQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            return _error(400, f"bad query: {validation_problem(exc)}")
        try:
            rows = index.query(
                store=params.store,
                device=params.device,
                rule=params.rule,
                fired=params.fired,
                since=params.since,
                until=params.until,
                barcode=params.barcode,
                label_status=params.label_status,
                status=params.status,
                empty_background=(
                    None if params.empty_background is None else params.empty_background == "1"
                ),
                q=params.q,
                limit=params.limit,
            )
        except QueryError as exc:
            return _error(400, f"bad query: {exc}")
        return _answer(BundlesResponse(bundles=[BundleRow.from_index(r) for r in rows]))

    async def heartbeat(request: Request) -> JSONResponse:
        who = bearer_identity(request, db)
        if (resp := denied(False, who)) is not None:
            return resp
        assert who is not None
        try:
            body = await read_body(request, cfg.limits.heartbeat_bytes)
            beat = Heartbeat.model_validate_json(body)
        except TooLarge as exc:
            return _error(413, str(exc))
        except ValidationError as exc:
            return _error(400, f"malformed heartbeat: {validation_problem(exc)}")
        db.record_heartbeat(who.device, beat.model_dump(exclude_none=True))
        return _answer(OkResponse())

    async def fleet(request: Request) -> JSONResponse:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        devices = []
        for row in db.heartbeats():
            body = {k: v for k, v in row.items() if k not in ("device", "last_heartbeat_utc")}
            try:  # rows written before heartbeats were validated may hold NaN or worse
                body = Heartbeat.model_validate(body).model_dump(exclude_none=True)
            except ValidationError:
                body = {"error": "an unreadable heartbeat"}
            devices.append(
                FleetDevice(
                    device_id=row["device"], last_heartbeat_utc=row["last_heartbeat_utc"], **body
                )
            )
        return _answer(FleetResponse(devices=devices))

    async def ingest_queue(request: Request) -> JSONResponse:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        counts = db.ingest_counts()
        return _answer(
            IngestResponse(pending=counts["pending"], done=counts["done"], failed=counts["failed"])
        )

    async def storage(request: Request) -> JSONResponse:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        out: dict[str, Any] = sweeper.usage() if sweeper is not None else {}
        if ingest is not None:
            out["returned_after_ingest_bytes"] = ingest.removed_bytes
        return _answer(StorageResponse(storage=out))

    async def foxglove(request: Request) -> Response:
        """One stored bundle as a Foxglove MCAP (:mod:`cloud_sink.foxglove`)."""
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        device, bundle = request.path_params["device_id"], request.path_params["bundle_id"]
        row = index.get(bundle, device) if BUNDLE_ID.match(bundle) else None
        if row is None or row["status"] != "ok" or ingest is None:
            return _error(404, "no such stored bundle (GET /api/bundles lists them)")
        tmp = Path(tempfile.mkdtemp(prefix="foxglove-"))

        def build() -> Path:
            from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS, Manifest
            from cloud_sink.foxglove import export_bundle

            prefix = f"bundles/{device}/{bundle}"
            manifest = Manifest.from_json(ingest.blobs.get_bytes(f"{prefix}/{MANIFEST}"))
            paths: dict[str, Path | None] = {CLIP: None, SENSORS: None}
            for name in (CLIP, SENSORS):
                if name in manifest.files:
                    path = tmp / name
                    path.write_bytes(ingest.blobs.get_bytes(f"{prefix}/{name}"))
                    paths[name] = path
            out = tmp / f"{bundle}.mcap"
            export_bundle(manifest, paths[CLIP], paths[SENSORS], out)
            return out

        try:
            out = await asyncio.to_thread(build)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            return _error(500, f"the bundle could not be exported: {exc}"[:300])
        return FileResponse(
            out,
            media_type="application/octet-stream",
            filename=out.name,
            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
        )

    async def prometheus(request: Request) -> Response:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return [
        *routes,
        *([Route("/metrics", prometheus)] if metrics is not None else []),
        Route("/api/bundles", bundles),
        Route("/api/bundles/{device_id}/{bundle_id}.mcap", foxglove),
        Route("/api/heartbeat", heartbeat, methods=["POST"]),
        Route("/api/fleet", fleet),
        Route("/api/ingest", ingest_queue),
        Route("/api/storage", storage),
    ]
