"""The sink's JSON API: query the index (admin tokens), device heartbeats and the fleet view.

- ``GET /api/bundles?store=&device=&rule=&since=&until=&barcode=&label_status=&status=&q=&limit=``
  (admin): bundles, newest first; ``q`` is a full-text query.
- ``POST /api/heartbeat`` (device): ``{"queue_depth", "disk_used_pct", "last_upload_utc",
  "model_version"}``.
- ``GET /api/fleet`` (admin): per device its last heartbeat.
- ``GET /api/ingest`` (admin): the ingest queue: uploads pending, done, failed.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloud_sink.auth import Identity, bearer_identity
from cloud_sink.db import SinkDB
from cloud_sink.index import Index

HEARTBEAT_FIELDS = {
    "queue_depth": int,
    "disk_used_pct": float,
    "last_upload_utc": str,
    "model_version": str,
}


def add_api(routes: list[Route], db: SinkDB, index: Index) -> list[Route]:
    def denied(admin_needed: bool, who: Identity | None) -> JSONResponse | None:
        if who is None:
            return JSONResponse(
                {"error": "a Bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if admin_needed and not who.admin:
            return JSONResponse({"error": "an admin token is required"}, status_code=403)
        return None

    async def bundles(request: Request) -> JSONResponse:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        p = request.query_params
        try:
            limit = int(p.get("limit", "100"))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        try:
            rows = index.query(
                store=p.get("store"),
                device=p.get("device"),
                rule=p.get("rule"),
                since=p.get("since"),
                until=p.get("until"),
                barcode=p.get("barcode"),
                label_status=p.get("label_status"),
                status=p.get("status"),
                empty_background={"1": True, "0": False}.get(p.get("empty_background", "")),
                q=p.get("q"),
                limit=limit,
            )
        except Exception as exc:  # a malformed full-text query
            return JSONResponse({"error": f"bad query: {exc}"}, status_code=400)
        return JSONResponse({"bundles": rows})

    async def heartbeat(request: Request) -> JSONResponse:
        who = bearer_identity(request, db)
        if (resp := denied(False, who)) is not None:
            return resp
        assert who is not None
        try:
            body = json.loads(await request.body())
            clean: dict[str, Any] = {
                k: t(body[k])
                for k, t in HEARTBEAT_FIELDS.items()
                if k in body and body[k] is not None
            }
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": f"malformed heartbeat: {exc}"}, status_code=400)
        db.record_heartbeat(who.device, clean)
        return JSONResponse({"ok": True})

    async def fleet(request: Request) -> JSONResponse:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        return JSONResponse({"devices": db.heartbeats()})

    async def ingest(request: Request) -> JSONResponse:
        if (resp := denied(True, bearer_identity(request, db))) is not None:
            return resp
        return JSONResponse({"queue": db.ingest_counts()})

    return [
        *routes,
        Route("/api/bundles", bundles),
        Route("/api/heartbeat", heartbeat, methods=["POST"]),
        Route("/api/fleet", fleet),
        Route("/api/ingest", ingest),
    ]
