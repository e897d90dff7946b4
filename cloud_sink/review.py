"""Human review, served by the sink: the label API and the browser UI at ``/ui/``.

API (admin: a bearer token, or the UI's session cookie):

- ``GET /api/labels?state=&store=&device=&bundle=&limit=``: label items, oldest first;
- ``GET /api/labels/ITEM``: one item with its history;
- ``POST /api/labels/ITEM`` ``{"version", "action": "accept"|"correct"|"reject", "seconds",
  "sku"?, "box"?}``: a review; 409 when the item changed since ``version`` (someone else saved
  first), 400 when the review does not fit the item;
- ``GET /api/frames/ITEM.jpg``: the item's frame; ``?track=K``: the K-th frame of its track
  (the other frames of the moment, which take the item's label when exported);
- ``GET /api/clips/DEVICE/BUNDLE.mp4``: the bundle's clip as a seekable MP4 (Range requests);
- ``GET /api/bundles/DEVICE/BUNDLE/sensors``: the sensor channels on the clip's time axis
  (seconds from its first frame), thinned to at most 1500 points each;
- ``GET /api/catalogue``: the fleet's products (the class type-ahead);
- ``POST /api/datasets`` ``{"name", "test_stores"?, "stores"?, "seed"?}``: export the next
  version of a dataset (as ``capsight-sink export``); 409 with the reason when refused.

UI: ``/ui/login`` takes the admin token once and sets an HttpOnly, SameSite=Strict session cookie
(:class:`cloud_sink.auth.Sessions`); ``/ui/`` is the review page, ``/ui/fleet`` the fleet view.
Plain HTML and JavaScript in ``cloud_sink/ui/``: no build step.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from capsight_edge.bundle.manifest import BUNDLE_ID, CLIP, MANIFEST, SENSORS, Manifest
from cloud_sink.api import TooLarge, read_body
from cloud_sink.auth import SESSION_COOKIE, SESSION_S, Identity, Sessions, request_identity
from cloud_sink.catalogue import Catalogue, catalogue_path
from cloud_sink.labels import LabelConflict, LabelError, LabelStore
from cloud_sink.media import REVIEW_CLIP
from cloud_sink.schemas import (
    CatalogueResponse,
    DatasetRecord,
    LabelResponse,
    LabelsResponse,
    SensorSeriesResponse,
)

UI = Path(__file__).with_name("ui")
ITEM_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}~[A-Za-z0-9._-]{1,80}~\d{1,9}$")
MAX_REVIEW_BODY = 4096


class ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    test_stores: list[str] | None = Field(default=None, max_length=100)
    stores: list[str] | None = Field(default=None, max_length=1000)
    seed: int = 0


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    version: int = Field(ge=1)
    action: Literal["accept", "correct", "reject"]
    seconds: float = Field(ge=0, le=3600)
    sku: str | None = Field(default=None, max_length=64)
    box: list[int] | None = Field(default=None, min_length=4, max_length=4)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": message}, status_code=status)


def _answer(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump())


def add_review(
    routes: list[Route], db: Any, index: Any, blobs: Any, data_dir: Path, sessions: Sessions
) -> list[Route]:
    labels = LabelStore(index)

    def admin(request: Request) -> Identity | JSONResponse:
        who = request_identity(request, db, sessions)
        if who is None:
            return _error(401, "sign in: a Bearer token or the UI's session")
        if not who.admin:
            return _error(403, "an admin token is required")
        return who

    async def list_labels(request: Request) -> Response:
        if isinstance(who := admin(request), JSONResponse):
            return who
        q = request.query_params
        state, store = q.get("state") or None, q.get("store") or None
        bundle = None
        if q.get("bundle") and q.get("device"):
            bundle = (q["device"], q["bundle"])
        try:
            limit = int(q.get("limit", "200"))
        except ValueError:
            return _error(400, "limit must be a number")
        for value in (state, store):
            if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
                return _error(400, "bad filter value")
        items = labels.items(
            state=state, store=store, bundle=bundle, limit=max(1, min(limit, 1000))
        )
        return _answer(LabelsResponse.model_validate({"items": items, "counts": labels.counts()}))

    def item_or_404(item_id: str) -> dict[str, Any] | JSONResponse:
        if not ITEM_ID.match(item_id):
            return _error(404, "no such item")
        item = labels.get(item_id)
        return item if item is not None else _error(404, "no such item")

    async def one_label(request: Request) -> Response:
        if isinstance(who := admin(request), JSONResponse):
            return who
        item_id = request.path_params["item_id"]
        if isinstance(item := item_or_404(item_id), JSONResponse):
            return item
        if request.method == "GET":
            return _answer(
                LabelResponse.model_validate({"item": item, "history": labels.history(item_id)})
            )
        try:
            body = await read_body(request, MAX_REVIEW_BODY)
        except TooLarge as exc:
            return _error(413, str(exc))
        try:
            r = ReviewBody.model_validate_json(body)
        except ValidationError as exc:
            return _error(400, f"malformed review: {exc.errors()[0]['msg']}")
        try:
            done = await asyncio.to_thread(
                labels.review,
                item_id,
                version=r.version,
                action=r.action,
                who=who.device,
                seconds=r.seconds,
                sku=r.sku,
                box=r.box,
            )
        except LabelConflict as exc:
            return _error(409, str(exc))
        except LabelError as exc:
            return _error(400, str(exc))
        return _answer(
            LabelResponse.model_validate({"item": done, "history": labels.history(item_id)})
        )

    async def frame(request: Request) -> Response:
        if isinstance(who := admin(request), JSONResponse):
            return who
        if isinstance(item := item_or_404(request.path_params["item_id"]), JSONResponse):
            return item
        key = item["frame_key"]
        if "track" in request.query_params:  # ?track=K: the K-th frame of the item's track
            k = request.query_params["track"]
            track = item.get("track") or []
            if not k.isdigit() or not 1 <= int(k) <= len(track):
                return _error(404, f"item {item['item_id']} has {len(track)} track frame(s)")
            key = track[int(k) - 1]["frame_key"]
        data = await asyncio.to_thread(blobs.get_bytes, key)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private"})

    def bundle_key(request: Request) -> str | None:
        device, bundle = request.path_params["device_id"], request.path_params["bundle_id"]
        if not BUNDLE_ID.match(bundle) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", device):
            return None
        row = index.get(bundle, device)
        return f"bundles/{device}/{bundle}" if row and row["status"] == "ok" else None

    async def clip(request: Request) -> Response:
        if isinstance(who := admin(request), JSONResponse):
            return who
        prefix = bundle_key(request)
        if prefix is None:
            return _error(404, "no such stored bundle")
        for name in (REVIEW_CLIP, CLIP):
            key = f"{prefix}/{name}"
            local = getattr(blobs, "local_path", None)
            path = local(key) if local else None
            if path is not None:
                return FileResponse(path, media_type="video/mp4")
            if blobs.exists(key):
                tmp = Path(tempfile.mkstemp(suffix=".mp4")[1])
                tmp.write_bytes(await asyncio.to_thread(blobs.get_bytes, key))
                return FileResponse(
                    tmp, media_type="video/mp4", background=BackgroundTask(tmp.unlink)
                )
        return _error(404, "the bundle has no clip")

    async def sensors(request: Request) -> Response:
        if isinstance(who := admin(request), JSONResponse):
            return who
        prefix = bundle_key(request)
        if prefix is None:
            return _error(404, "no such stored bundle")
        series = await asyncio.to_thread(sensor_series, blobs, prefix)
        return _answer(SensorSeriesResponse.model_validate(series))

    async def catalogue(request: Request) -> Response:
        if isinstance(who := admin(request), JSONResponse):
            return who
        path = catalogue_path(data_dir)
        cat = Catalogue.load(path) if path.is_file() else Catalogue([])
        products = [{"sku": p.sku, "gtin": p.gtin, "name": p.name} for p in cat.products]
        return _answer(CatalogueResponse(products=products))

    async def datasets(request: Request) -> Response:
        """``POST /api/datasets`` ``{"name", "test_stores"?, "stores"?, "seed"?}``: the next
        version of a dataset, as ``capsight-sink export`` writes it (409 when refused)."""
        if isinstance(who := admin(request), JSONResponse):
            return who
        try:
            body = await read_body(request, MAX_REVIEW_BODY)
        except TooLarge as exc:
            return _error(413, str(exc))
        try:
            ask = ExportBody.model_validate_json(body)
        except ValidationError as exc:
            return _error(400, f"malformed request: {exc.errors()[0]['msg']}")
        path = catalogue_path(data_dir)
        if not path.is_file():
            return _error(409, "import the fleet's catalogue first: its SKUs are the classes")
        from cloud_sink.datasets import load_manifest
        from cloud_sink.export import ExportError, export_dataset

        cat = Catalogue.load(path)
        try:
            folder = await asyncio.to_thread(
                export_dataset,
                index,
                blobs,
                data_dir,
                ask.name,
                cat.skus,
                test_stores=ask.test_stores,
                seed=ask.seed,
                stores=ask.stores,
                gtins=cat.gtins(),
            )
        except ExportError as exc:
            return _error(409, f"export refused: {exc}")
        m = load_manifest(folder, verify=False)
        return _answer(
            DatasetRecord(
                name=m.name,
                version=m.version,
                path=str(folder),
                items=len(m.items),
                splits=m.counts(),
                stores=dict(m.stores),
                digest=m.digest(),
            )
        )

    # -- the pages -------------------------------------------------------------------------------
    async def login(request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse((UI / "login.html").read_text())
        try:
            body = await read_body(request, MAX_REVIEW_BODY)
        except TooLarge as exc:
            return _error(413, str(exc))
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        token = (form.get("token") or [""])[0][:200].strip()
        who = db.authenticate(token) if token else None
        if not who or not who[1]:
            page = (
                (UI / "login.html")
                .read_text()
                .replace("<!--error-->", '<p class="error">That is not an active admin token.</p>')
            )
            return HTMLResponse(page, status_code=401)
        resp = RedirectResponse("/ui/", status_code=303)
        resp.set_cookie(
            SESSION_COOKIE,
            sessions.issue(who[0]),
            max_age=SESSION_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    async def logout(request: Request) -> Response:
        resp = RedirectResponse("/ui/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    def page(name: str) -> Any:
        async def serve(request: Request) -> Response:
            if request_identity(request, db, sessions) is None:
                return RedirectResponse("/ui/login", status_code=303)
            return HTMLResponse((UI / name).read_text())

        return serve

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("app.js", "fleet.js", "style.css"):
            return _error(404, "no such file")
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return FileResponse(UI / name, media_type=kind)

    return [
        *routes,
        Route("/api/labels", list_labels),
        Route("/api/labels/{item_id}", one_label, methods=["GET", "POST"]),
        Route("/api/frames/{item_id}.jpg", frame),
        Route("/api/clips/{device_id}/{bundle_id}.mp4", clip),
        Route("/api/bundles/{device_id}/{bundle_id}/sensors", sensors),
        Route("/api/catalogue", catalogue),
        Route("/api/datasets", datasets, methods=["POST"]),
        Route("/ui/login", login, methods=["GET", "POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/", page("index.html")),
        Route("/ui/fleet", page("fleet.html")),
        Route("/ui/static/{name}", asset),
    ]


def _thin(points: list[list[float]], n: int = 1500) -> list[list[float]]:
    if len(points) <= n:
        return points
    step = len(points) / n
    return [points[int(i * step)] for i in range(n)]


def sensor_series(blobs: Any, prefix: str) -> dict[str, Any]:
    """Weight, IMU, position and the trigger, barcode and weight events of a bundle, in seconds
    from its clip's first frame. ``/sim/truth`` is never shown: a reviewer judges the frame."""
    from capsight_edge.sensors.sensorlog import iter_messages_bounded

    manifest = Manifest.from_json(blobs.get_bytes(f"{prefix}/{MANIFEST}"))
    t0 = manifest.start_ns
    out: dict[str, Any] = {
        "type": "sensor_series",
        "start_ns": t0,  # the clip's first frame, on the cart's monotonic clock
        "duration_s": 0.0,
        "weight_g": [],
        "accel_g": [],
        "position_mm": [],
        "events": [],
    }
    if manifest.video is not None:
        out["duration_s"] = manifest.video.duration_s
    if SENSORS not in manifest.files:
        return out
    with tempfile.NamedTemporaryFile(suffix=".mcap") as fh:
        fh.write(blobs.get_bytes(f"{prefix}/{SENSORS}"))
        fh.flush()
        for topic, _t, data in iter_messages_bounded(
            fh.name, max_chunk_bytes=64 << 20, max_message_bytes=4 << 20, max_messages=1_000_000
        ):
            if topic == "/sim/truth":
                continue
            try:
                m = json.loads(data)
            except ValueError:
                continue
            if topic == "/weight/fused":
                out["weight_g"] += [
                    [round((t - t0) / 1e9, 3), g]
                    for t, g in zip(m["t_ns"], m["grams"], strict=False)
                ]
            elif topic == "/imu":
                out["accel_g"] += [
                    [round((t - t0) / 1e9, 3), round(sum(v * v for v in a) ** 0.5, 3)]
                    for t, a in zip(m["t_ns"], m["accel_g"], strict=False)
                ]
            elif topic == "/position/uwb":
                out["position_mm"] += [
                    [round((t - t0) / 1e9, 3), x, y]
                    for t, x, y in zip(m["t_ns"], m["x_mm"], m["y_mm"], strict=False)
                ]
            elif topic in ("/triggers", "/weight/events", "/camera/barcodes"):
                t = int(m.get("t_ns", _t))
                label = m.get("rule") or m.get("kind") or m.get("text", "")
                out["events"].append(
                    {
                        "t_s": round((t - t0) / 1e9, 3),
                        "channel": topic,
                        "label": f"{m.get('kind', '')} {label}".strip(),
                    }
                )
    for key in ("weight_g", "accel_g", "position_mm"):
        out[key] = _thin(out[key])
    out["events"] = out["events"][:500]
    return out
