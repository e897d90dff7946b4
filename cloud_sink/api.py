"""The sink's JSON API: query the index (admin tokens), device heartbeats and the fleet view.

- ``GET /api/bundles?store=&device=&rule=&since=&until=&barcode=&label_status=&status=&q=&limit=``
  (admin): bundles, newest first; ``q`` is a full-text query.
- ``POST /api/heartbeat`` (device): ``{"queue_depth", "disk_used_pct", "last_upload_utc",
  "model_version"}``.
- ``GET /api/fleet`` (admin): per device its last heartbeat.
- ``GET /api/ingest`` (admin): the ingest queue: uploads pending, done, failed.
- ``GET /api/storage`` (admin): the upload area and what the sweep gave back.

Every parameter and body goes through its schema (:mod:`cloud_sink.schemas`): a malformed one is
400 with the first problem, a body over its bound 413, a device token on an admin route 403 and
an admin token where a device is expected 403 (an admin is not a device).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloud_sink.auth import Identity, bearer_identity
from cloud_sink.config import SinkConfig
from cloud_sink.db import SinkDB
from cloud_sink.index import Index, QueryError
from cloud_sink.schemas import BundleQuery, Heartbeat, validation_problem


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
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def add_api(
    routes: list[Route],
    db: SinkDB,
    index: Index,
    config: SinkConfig | None = None,
    sweeper: Any = None,
    ingest: Any = None,
) -> list[Route]:
    cfg = config or SinkConfig()

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
        return JSONResponse({"bundles": rows})

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
        return JSONResponse({"ok": True})

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
                {"device": row["device"], "last_heartbeat_utc": row["last_heartbeat_utc"], **body}
            )
        return JSONResponse({"devices": devices})

    async def ingest_queue(request: Request) -> JSONResponse:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        return JSONResponse({"queue": db.ingest_counts()})

    async def storage(request: Request) -> JSONResponse:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        out: dict[str, Any] = sweeper.usage() if sweeper is not None else {}
        if ingest is not None:
            out["returned_after_ingest_bytes"] = ingest.removed_bytes
        return JSONResponse({"storage": out})

    return [
        *routes,
        Route("/api/bundles", bundles),
        Route("/api/heartbeat", heartbeat, methods=["POST"]),
        Route("/api/fleet", fleet),
        Route("/api/ingest", ingest_queue),
        Route("/api/storage", storage),
    ]
