"""The synthetic catalogue and cart scene: real barcodes, determinism, truth that matches."""

from __future__ import annotations

import numpy as np
import pytest

from capsight_edge.camera.barcodes import BarcodeDetector
from capsight_edge.devices.render import SceneRenderer
from capsight_edge.scene.catalogue import Catalogue, ean13_modules, ean_check_digit
from firmware_bridge.sim.scenario import ItemEvent, Scenario, generate


def test_check_digits_and_symbol_layout() -> None:
    assert ean_check_digit("400638133393") == "1"  # a real EAN-13: 4006381333931
    assert len(ean13_modules("4006381333931")) == 95
    assert ean13_modules("036000291452") == ean13_modules("0036000291452")  # UPC-A
    with pytest.raises(ValueError):
        ean13_modules("4006381333932")


def test_catalogue_is_deterministic_and_valid() -> None:
    a, b = Catalogue(50, seed=9), Catalogue(50, seed=9)
    assert [p.code for p in a.products] == [p.code for p in b.products]
    assert len({p.code for p in a.products}) == 50
    assert {p.symbology for p in a.products} == {"EAN-13", "UPC-A"}
    for p in a.products:
        ean13_modules(p.code)  # raises on a bad check digit
        assert 20 <= p.weight_g <= 2000


@pytest.mark.parametrize("backend", ["zxing-cpp", "pyzbar"])
def test_every_product_front_decodes_and_back_does_not(backend: str) -> None:
    det = BarcodeDetector(backend)
    cat = Catalogue(30, seed=2)
    for p in cat.products:
        canvas = np.full((p.front.shape[0] + 80, p.front.shape[1] + 80, 3), 110, np.uint8)
        canvas[40:-40, 40:-40] = p.front
        assert [c.text for c in det.decode_full(canvas)] == [p.code], p.sku
        canvas[40:-40, 40:-40] = p.back
        assert det.decode_full(canvas) == []
    assert cat.by_code("0" + cat.products[0].code) in (None, cat.products[0])


def test_renderer_is_deterministic() -> None:
    cat = Catalogue(20, seed=1)
    sc = generate("shopping", 30, seed=5, products=[(p.sku, p.weight_g) for p in cat.products])
    a, ta = SceneRenderer(sc, cat, seed=5).render(7.3)
    b, tb = SceneRenderer(sc, cat, seed=5).render(7.3)
    assert np.array_equal(a, b) and ta == tb


def test_weights_come_from_the_catalogue() -> None:
    cat = Catalogue(20, seed=1)
    sc = generate("shopping", 120, seed=5, products=[(p.sku, p.weight_g) for p in cat.products])
    adds = [e for e in sc.items if e.grams > 0]
    assert adds and all(e.grams == cat.by_sku(e.sku).weight_g for e in adds)
    assert any(not e.scanned for e in adds) and any(e.scanned for e in adds)


def test_truth_follows_the_timeline() -> None:
    cat = Catalogue(5, seed=1)
    p = cat.products[0]
    ev = ItemEvent(t_s=3.0, grams=p.weight_g, sku=p.sku, scan_s=1.5, hand_s=0.5)
    r = SceneRenderer(Scenario(duration_s=10, items=[ev]), cat, clean=True)
    before = r.render(1.0)[1]
    assert not before.hand_visible and before.placed == []
    during = [r.render(1.5 + i / 30)[1] for i in range(45)]
    assert all(t.hand_visible for t in during)
    readable = [t for t in during if t.barcode_readable]
    assert readable and all(t.barcode_code == p.code for t in readable)
    after = r.render(5.0)[1]
    assert not after.hand_visible and after.placed == [p.sku]
    frame, _ = r.render(1.5 + 0.5 * 1.5)  # the scan's dwell
    assert [c.text for c in BarcodeDetector().decode_full(frame)] == [p.code]
