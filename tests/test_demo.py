"""`capsight demo`: simulated carts (separate processes) against a local sink, end to end."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def test_demo_runs_carts_against_a_sink_and_every_capture_is_verified(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = run_cli("demo", "--minutes", "0.4", "--carts", "2", "--out", str(out), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "demo-summary.json").read_text())
    assert [c["cart"] for c in summary["carts"]] == ["demo-cart-1", "demo-cart-2"]
    # Two stores of one fleet: each cart's bundles at the sink name its own store.
    assert [c["store"] for c in summary["carts"]] == ["store-north", "store-south"]
    for cart in summary["carts"]:
        assert cart["sealed"] >= 1 and sum(cart["by_rule"].values()) == cart["sealed"]
        assert cart["verified"] == cart["sealed"] and cart["corrupt"] == 0
        assert cart["left_on_cart"] == 0 and cart["exit_code"] == 0
        assert 0 < cart["bytes_uploaded"] <= cart["bytes_captured"] + 64 * 1024
        assert cart["heartbeat"]["queue_depth"] >= 0  # the fleet view heard from the cart
    report = (out / "demo-report.md").read_text()
    assert "| demo-cart-1 | store-north |" in report and "verified at sink" in report
    assert "sealed demo-cart-1-" in res.stdout and "upload now" in res.stdout
