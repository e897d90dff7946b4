"""Motion and barcode detection on the synthetic scene, and `capsight barcode scan`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from capsight_edge.camera.barcodes import BarcodeDetector, merge_boxes
from capsight_edge.camera.motion import MotionDetector
from capsight_edge.devices.render import SceneRenderer
from capsight_edge.scene.catalogue import Catalogue
from tests.camera_helpers import scripted
from tests.conftest import run_cli

CAT = Catalogue(10, seed=1)


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def run_motion(kind: str, seconds: float = 8.0, fps: int = 30) -> list[tuple[object, object]]:
    r = SceneRenderer(scripted(kind, CAT), CAT, clean=True)
    md = MotionDetector()
    out = []
    for i in range(int(seconds * fps)):
        image, truth = r.render(i / fps)
        out.append((md.push(image, int(i / fps * 1e9)), truth))
    return out


def test_still_basket_has_no_motion() -> None:
    md = MotionDetector()
    r = SceneRenderer(scripted("wave", CAT), CAT)
    results = [md.push(r.render(i / 30)[0], i) for i in range(60)]  # the wave starts at 3 s
    assert not any(m.regions for m in results[1:])
    assert not any(m.hand_activity for m in results)


def test_hand_motion_is_found_where_the_hand_is() -> None:
    results = run_motion("wave")
    with_hand = [(m, t) for m, t in results if t.hand_visible]  # type: ignore[attr-defined]
    assert with_hand
    found = [
        m
        for m, t in with_hand
        if m.regions  # type: ignore[attr-defined]
        and any(overlaps(r, t.hand_bbox) for r in m.regions)
    ]  # type: ignore[attr-defined]
    assert len(found) >= 0.8 * len(with_hand)
    assert all(m.hand_activity for m, _ in with_hand[5:])  # type: ignore[attr-defined]


def test_lights_switching_recalibrates_instead_of_motion() -> None:
    sc = scripted("wave", CAT)
    sc.waves.clear()
    sc.light_steps = [(1.0, 0.5)]
    r = SceneRenderer(sc, CAT)
    md = MotionDetector()
    results = [md.push(r.render(i / 30)[0], int(i / 30 * 1e9)) for i in range(60)]
    assert md.recalibrations == 1
    switch = results[30]
    assert switch.recalibrated and not switch.regions
    assert not any(m.regions for m in results[32:])


@pytest.mark.parametrize("backend", ["zxing-cpp", "pyzbar"])
def test_roi_decoding_reads_the_scanned_product(backend: str) -> None:
    r = SceneRenderer(scripted("scanned", CAT), CAT, clean=True)
    md, det = MotionDetector(), BarcodeDetector(backend, max_rate_hz=0)
    codes = set()
    for i in range(5 * 30):
        image, _ = r.render(i / 30)
        m = md.push(image, i)
        codes |= {c.text for c in det.decode_regions(image, m.regions, i)}
    assert codes == {CAT.products[0].code}


def test_rate_limit_bounds_decode_passes() -> None:
    det = BarcodeDetector(max_rate_hz=10)
    image = np.full((200, 300, 3), 128, np.uint8)
    for i in range(30):  # one second at 30 fps
        det.decode_regions(image, [(10, 10, 50, 50)], int(i / 30 * 1e9))
    assert det.passes == 10 and det.rate_limited == 20


def test_merge_boxes() -> None:
    boxes = merge_boxes([(0, 0, 10, 10), (15, 0, 10, 10), (200, 200, 5, 5)], 4, 300, 300)
    assert sorted(boxes) == [(0, 0, 29, 14), (196, 196, 13, 13)]


def test_cli_scan_png_webp_and_bad_files(tmp_path: Path) -> None:
    p = CAT.products[1]
    canvas = np.full((p.front.shape[0] + 60, p.front.shape[1] + 60, 3), 120, np.uint8)
    canvas[30:-30, 30:-30] = p.front
    png, webp = tmp_path / "a.png", tmp_path / "b.webp"
    cv2.imwrite(str(png), canvas)
    cv2.imwrite(str(webp), canvas, [cv2.IMWRITE_WEBP_QUALITY, 101])
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((100, 100), 255, np.uint8))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG garbage")
    res = run_cli(
        "barcode",
        "scan",
        "--json",
        str(png),
        str(corrupt),
        str(webp),
        str(blank),
        str(tmp_path / "missing.jpg"),
    )
    assert res.returncode == 1
    from tests.conftest import json_records

    rows = json_records(res.stdout)
    assert [r["type"] for r in rows] == ["barcode_scan", "error", "barcode_scan"] * 1 + [
        "barcode_scan",
        "error",
    ]
    assert [r["file"] for r in rows] == [
        str(png),
        str(corrupt),
        str(webp),
        str(blank),
        str(tmp_path / "missing.jpg"),
    ]
    assert rows[0]["codes"][0]["text"] == p.code and rows[0]["duration_s"] >= 0
    assert rows[2]["codes"][0]["text"] == p.code
    assert rows[3]["codes"] == []
    assert "error" in rows[1] and rows[4]["error"] == "file not found"


def test_cli_scan_with_pyzbar(tmp_path: Path) -> None:
    p = CAT.products[2]
    path = tmp_path / "p.png"
    canvas = np.full((p.front.shape[0] + 60, p.front.shape[1] + 60, 3), 120, np.uint8)
    canvas[30:-30, 30:-30] = p.front
    cv2.imwrite(str(path), canvas)
    res = run_cli("barcode", "scan", "--backend", "pyzbar", str(path))
    assert res.returncode == 0 and p.code in res.stdout and "pyzbar" in res.stdout
    res = run_cli("barcode", "scan", "--json", str(path), str(path.parent / "missing.png"))
    from tests.conftest import json_records

    found, missing = json_records(res.stdout)
    assert found["type"] == "barcode_scan" and found["codes"][0]["text"] == p.code
    assert missing == {
        "type": "error",
        "file": str(path.parent / "missing.png"),
        "error": "file not found",
    }
    assert res.returncode == 1


def test_default_backend_works_without_libzbar(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    import sys

    from capsight_edge.camera.barcodes import BarcodeBackendUnavailable, make_backend

    backend = make_backend()
    assert backend.name == "cascade" and backend.pyzbar is not None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyzbar", None)  # as if libzbar / pyzbar were missing
    monkeypatch.setitem(sys.modules, "pyzbar.pyzbar", None)
    with pytest.raises(BarcodeBackendUnavailable, match="libzbar0"):
        make_backend("pyzbar")
    backend = make_backend()
    assert backend.name == "cascade" and backend.pyzbar is None  # type: ignore[attr-defined]
    assert backend.decode(np.zeros((64, 64), np.uint8)) == []
