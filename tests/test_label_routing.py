"""How pre-labels are routed: agreeing, confident and complete labels to quick confirmation."""

from __future__ import annotations

from cloud_sink.labels import Candidate, route


def test_routing() -> None:
    box = [10, 10, 50, 50]
    barcode = Candidate("barcode", "sku-1", 1.0)
    sure = Candidate("teacher", "sku-1", 0.9, box)
    unsure = Candidate("teacher", "sku-1", 0.5, box)
    other = Candidate("teacher", "sku-2", 0.99, box)
    best, queue = route([barcode, sure], agree_score=0.8, alone_score=0.95)
    assert queue == "quick_confirm" and best is not None
    assert best.source == "barcode" and best.box == box  # the barcode's class, the teacher's box
    assert route([barcode, unsure], agree_score=0.8, alone_score=0.95)[1] == "needs_review"
    assert route([barcode, other], agree_score=0.8, alone_score=0.95)[1] == "needs_review"
    assert route([barcode], agree_score=0.8, alone_score=0.95)[1] == "needs_review"  # no box
    assert route([other], agree_score=0.8, alone_score=0.95)[1] == "quick_confirm"
    assert route([sure], agree_score=0.8, alone_score=0.95)[1] == "needs_review"
    assert route([Candidate("teacher", "", 0.97)], agree_score=0.8, alone_score=0.95)[1] == (
        "quick_confirm"  # "no product", surely: nothing to draw
    )
    assert route([], agree_score=0.8, alone_score=0.95) == (None, "needs_review")
