"""The review UI end to end in a real browser (Debian's Chromium through Playwright): sign in
with an admin token (then only an HttpOnly cookie), review pre-labelled items by keyboard,
correct a class and draw a box, see a stale save refused, seek the clip anywhere."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud_sink.blobs import LocalBlobStore
from cloud_sink.catalogue import Catalogue
from cloud_sink.prelabel import Prelabeler
from tests.labelling_helpers import Fleet, private_sink
from tests.sink_helpers import Sink, api_json, sink_index

pytestmark = pytest.mark.usefixtures("sink_backend")  # SQLite, then PostgreSQL

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def reviewed_sink(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Sink, str]]:
    data = private_sink(fleet, tmp_path / "sink")
    index = sink_index(data)
    Prelabeler(
        index, LocalBlobStore(data / "blobs" / "store"), Catalogue.load(fleet.catalogue)
    ).run()
    index.close()
    sink = Sink(data)
    admin = sink.add_device("reviewer-ana", admin=True)
    sink.start()
    try:
        yield sink, admin
    finally:
        sink.stop()


def test_review_in_the_browser(reviewed_sink: tuple[Sink, str], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Debian's chromium package is needed (apt-get install chromium)"
    sink, admin = reviewed_sink
    auth = {"Authorization": f"Bearer {admin}"}
    quick = api_json(httpx.get(f"{sink.url}/api/labels?state=quick_confirm", headers=auth))["items"]
    full = api_json(httpx.get(f"{sink.url}/api/labels?state=needs_review", headers=auth))["items"]
    state = "quick_confirm" if len(quick) >= 3 else "needs_review"
    queue = quick if state == "quick_confirm" else full
    assert len(queue) >= 3
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{sink.url}/ui/")
        assert page.url.endswith("/ui/login")  # no session: the login page
        page.fill("#token", "not-a-token")
        page.click("#signin")
        assert "not an active admin token" in page.content()
        page.fill("#token", admin)
        page.click("#signin")
        page.wait_for_url(f"{sink.url}/ui/")
        cookie = next(c for c in page.context.cookies() if c["name"] == "capsight_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert admin not in page.url and admin not in cookie["value"]
        page.select_option("#f-state", state)
        loaded = "document.body.dataset.loaded === {!r}"
        page.wait_for_function(loaded.format(queue[0]["item_id"]))
        page.wait_for_function("document.getElementById('frame').naturalWidth > 0")
        # The item's track (the frames that take its label) is shown beside it, every one.
        track = len(queue[0]["track"])
        assert track > 0
        page.wait_for_function(
            "[...document.querySelectorAll('#track img')].filter(i => i.naturalWidth > 0)"
            f".length === {track}"
        )
        frame = f"{sink.url}/api/frames/{queue[0]['item_id']}.jpg"
        for k in ("0", str(track + 1), "x"):
            assert httpx.get(frame, params={"track": k}, headers=auth).status_code == 404
        # The clip is seekable to its end (a plain MP4 with its index first, Range requests).
        page.wait_for_function("document.getElementById('video').readyState >= 1")
        duration = page.evaluate("document.getElementById('video').duration")
        assert duration > 3
        page.evaluate(f"document.getElementById('video').currentTime = {duration - 0.5}")
        page.wait_for_function(
            f"Math.abs(document.getElementById('video').currentTime - {duration - 0.5}) < 0.6"
        )
        page.screenshot(path=os.environ.get("CAPSIGHT_SCREENSHOT", str(tmp_path / "review.png")))
        # 1: accept by keyboard.
        page.keyboard.press("a")
        page.wait_for_function(loaded.format(queue[1]["item_id"]))
        # 2: correct the class (type-ahead input) and draw a box, save with Enter.
        catalogue = api_json(httpx.get(f"{sink.url}/api/catalogue", headers=auth))["products"]
        other = next(p["sku"] for p in catalogue if p["sku"] != queue[1]["sku"])
        box = page.locator("#overlay").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6, steps=5)
        page.mouse.up()
        page.keyboard.press("/")
        page.fill("#sku", other)
        page.keyboard.press("Enter")
        page.wait_for_function(loaded.format(queue[2]["item_id"]))
        # 3: someone else saves item 3 first; our stale save is refused and says so.
        third = httpx.get(f"{sink.url}/api/labels/{queue[2]['item_id']}", headers=auth).json()
        r = httpx.post(
            f"{sink.url}/api/labels/{queue[2]['item_id']}",
            headers=auth,
            content=json.dumps(
                {"version": third["item"]["version"], "action": "reject", "seconds": 2.0}
            ),
        )
        assert r.status_code == 200
        page.keyboard.press("a")
        page.wait_for_function(
            "document.getElementById('message').textContent.includes('changed since you opened')"
        )
        # The fleet view is a page too.
        page.goto(f"{sink.url}/ui/fleet")
        page.wait_for_selector("#fleet")
        browser.close()
    first = api_json(httpx.get(f"{sink.url}/api/labels/{queue[0]['item_id']}", headers=auth))
    assert first["item"]["state"] == "reviewed" and first["item"]["reviewer"] == "reviewer-ana"
    assert first["history"][-1]["action"] == "accept" and first["history"][-1]["seconds"] > 0
    second = httpx.get(f"{sink.url}/api/labels/{queue[1]['item_id']}", headers=auth).json()
    item = second["item"]
    assert item["sku"] == other and item["source"] == "human" and item["box"][2] > 50
    third = httpx.get(f"{sink.url}/api/labels/{queue[2]['item_id']}", headers=auth).json()
    assert third["item"]["state"] == "rejected" and third["item"]["reviewer"] == "reviewer-ana"
    assert [e["action"] for e in third["history"]] == ["prelabel", "reject"]
    # Range requests: the clip is served in pieces.
    clip = f"{sink.url}/api/clips/{queue[0]['device_id']}/{queue[0]['bundle_id']}.mp4"
    part = httpx.get(clip, headers={**auth, "Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100
    assert httpx.get(clip).status_code == 401
    # Export through the API, as `capsight-sink export` does.
    url = f"{sink.url}/api/datasets"
    bad = httpx.post(url, headers=auth, content=json.dumps({"name": "../x"}))
    assert bad.status_code == 400
    none = httpx.post(url, headers=auth, content=json.dumps({"name": "ui", "stores": ["nope"]}))
    assert none.status_code == 409 and "no reviewed items" in api_json(none)["error"]
    made = httpx.post(url, headers=auth, content=json.dumps({"name": "ui"}))
    answer = api_json(made)
    if made.status_code == 200:  # the reviewed items span two stores or more
        assert answer["type"] == "dataset" and answer["version"] == 1
    else:  # one store only: refused, with the reason
        assert made.status_code == 409 and "at least two" in answer["error"]
    sensors = clip.replace("/api/clips/", "/api/bundles/").replace(".mp4", "/sensors")
    series = api_json(httpx.get(sensors, headers=auth))
    assert series["weight_g"] and series["duration_s"] > 3 and series["start_ns"] > 0
