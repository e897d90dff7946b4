"""What the clip and the scale add to the teacher's answer (cloud_sink/evidence.py), and how
pre-labelling carries a scan to the item placed after it."""

from __future__ import annotations

import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cloud_sink import evidence
from cloud_sink.catalogue import Catalogue
from cloud_sink.datasets import box_iou
from cloud_sink.labels import Candidate, route
from cloud_sink.prelabel import Moment, PrelabelConfig, Prelabeler, moments_of

SD = {"sd_g": 5.0, "sd_rel": 0.02}


def test_the_scale_decides_between_products_the_teacher_confuses() -> None:
    labels = ["", "tea", "rice", "salt"]
    weights = {"tea": 100.0, "rice": 500.0}  # salt: no weight in the catalogue
    probs = [0.1, 0.3, 0.5, 0.1]  # the teacher prefers rice
    assert evidence.weigh(probs, labels, weights, 101.0, **SD)[0] == "tea"
    sku, score = evidence.weigh(probs, labels, weights, -497.0, **SD)  # taken out: rice
    assert sku == "rice" and score > 0.95
    # A change no known product explains: neither known one; the rest as the teacher has it.
    assert evidence.weigh([0.1, 0.3, 0.5, 0.2], labels, weights, 300.0, **SD)[0] == "salt"
    # The scale never invents what the teacher rules out.
    assert evidence.weigh([0.5, 0.0, 0.5, 0.0], labels, weights, 100.0, **SD)[0] != "tea"
    with pytest.raises(ValueError, match="3 probabilities for 4 labels"):
        evidence.weigh([0.2, 0.3, 0.5], labels, weights, 1.0, **SD)


def test_a_change_agrees_with_a_weight_within_three_deviations() -> None:
    assert evidence.weight_agrees(1000.0, 1055.0, **SD)  # sd 20 g: 2.75 of them
    assert not evidence.weight_agrees(1000.0, 1065.0, **SD)
    assert evidence.weight_agrees(100.0, -114.0, **SD)  # sd 5 g (the floor); taken out
    assert not evidence.weight_agrees(100.0, 116.0, **SD)


def _basket(w: int = 1280, h: int = 720) -> np.ndarray:
    img = np.full((h, w, 3), 90, np.uint8)
    for k in range(3):  # the basket's grid: bright lines, 3 pixels wide
        img[k::40, :] = 170
        img[:, k::40] = 170
    return img


def test_a_box_is_fitted_to_the_product_and_not_the_arm_holding_it() -> None:
    import cv2

    background = _basket()
    frame = background.copy()
    true = [500, 220, 280, 170]
    x, y, w, h = true
    frame[y : y + h, x : x + w] = (40, 160, 220)  # the product
    frame[y + 40 : y + 60, x + 20 : x + w - 20] = (200, 40, 40)  # a band printed on it
    cv2.line(frame, (x + w, y + 60), (x + w + 260, 0), (120, 170, 230), 40)  # the arm
    cv2.circle(frame, (x + w, y + 70), 40, (120, 170, 230), -1)  # the hand on its side
    teacher = [x + 18, y - 12, w + 30, h - 10]  # a few of the teacher's pixels off
    small = cv2.resize(background, (evidence.FIT_WIDTH, 360), interpolation=cv2.INTER_AREA)
    small_bg = evidence.Background([small] * 3)
    fitted = evidence.fit_box(frame, small_bg, teacher)
    assert fitted is not None
    assert box_iou(teacher, true) < 0.8 and box_iou(fitted, true) > 0.93, fitted
    # The camera's exposure changed (the cart moved under brighter lights): every pixel a
    # little, the grid a lot; the product is still where it is, not the grid around it.
    brighter = np.clip(frame.astype(np.float32) * 1.3 + 12, 0, 255).astype(np.uint8)
    fitted = evidence.fit_box(brighter, small_bg, teacher)
    assert fitted is not None and box_iou(fitted, true) > 0.9, fitted
    # Nothing changed: nothing to fit to, the teacher's box stays.
    assert evidence.fit_box(background, small_bg, teacher) is None
    assert evidence.fit_box(frame, small_bg, None) is None


def _sensors(reads: list[float], adds: list[tuple[float, float]]) -> dict[str, list]:
    s: dict[str, list] = {t: [] for t in ("/triggers", "/camera/barcodes", "/weight/events")}
    for t in reads:
        s["/camera/barcodes"].append((int(t * 1e9), {"gtin": "4006381333931"}))
    for t, g in adds:
        kind = "item_added" if g > 0 else "item_removed"
        s["/weight/events"].append((int(t * 1e9), {"kind": kind, "delta_g": g}))
    return s


def _hand_activity(s: dict[str, list], spans: list[tuple[float, float]]) -> None:
    """The cart's ``/camera/motion`` at 15 frames a second for 40 s, batched as it logs it,
    its hand activity raised within each (start, end)."""
    times = [int(k * 1e9 / 15) for k in range(600)]
    flags = [any(a <= t / 1e9 <= b for a, b in spans) for t in times]
    s["/camera/motion"] = [(times[0], {"t_ns": times, "hand_activity": flags})]


def test_a_hand_that_left_nothing_is_a_no_product_moment() -> None:
    """A hand in view for a while with no weight change near it and no read in it is a moment
    of its own ("no product" with a hand); one with a trigger in it takes the trigger's."""
    cfg = PrelabelConfig()
    s = _sensors([12.5], [(19.2, 412.0), (33.0, -412.0)])
    # The load cells became unsettled at 18.4 s: where the change put in at 19.2 s began.
    s["/weight/events"].append((int(19.2e9), {"kind": "unstable_end", "start_ns": int(18.4e9)}))
    _hand_activity(
        s,
        [
            (1.0, 2.5),  # the log began 1 s before it: it may have taken something out
            (3.5, 5.0),  # alone: an empty hand
            (6.5, 7.0),  # too short
            (9.0, 9.8),  # joined with the next (0.13 s apart): one hand
            (9.93, 10.6),
            (12.0, 13.5),  # a read in it
            (16.0, 17.8),  # the scale began changing 0.6 s after: it put something down
            (21.0, 22.5),  # 1.8 s after what was put in settled: the hand let go of it
            (25.0, 27.0),  # a trigger in it
            (30.0, 31.5),  # something was taken out 1.5 s after it left: another hand's doing
            (35.0, 36.5),  # 2 s after that: it may hold what it took out
            (38.0, 39.5),  # the log ends 0.4 s after it: it may have put something in
        ],
    )
    s["/triggers"].append((int(26.5e9), {"kind": "fire", "rule": "model_wrong"}))
    ms = moments_of(s, cfg)
    hands = [m for m in ms if m.hand is not None]
    assert [(round(m.hand[0] / 1e9, 1), round(m.hand[1] / 1e9, 1)) for m in hands] == [
        (3.5, 5.0),
        (9.0, 10.6),
        (21.0, 22.5),
        (25.0, 27.0),
        (30.0, 31.5),
    ]
    assert [m.reasons for m in hands] == [
        ["hand:empty"],
        ["hand:empty"],
        ["hand:empty"],
        ["trigger:model_wrong", "hand:empty"],
        ["hand:empty"],
    ]
    assert round(hands[0].t_ns / 1e9, 1) == 4.3 and round(hands[3].t_ns / 1e9, 1) == 26.5
    assert all(m.weight_delta_g is None and not m.codes for m in hands)
    assert len(ms) == len(hands) + 3  # and the read, and the two weight changes
    assert not [m for m in moments_of(s, replace(cfg, hands=False)) if m.hand]
    # Bounded: at most max_hands in a bundle.
    assert len([m for m in moments_of(s, replace(cfg, max_hands=1)) if m.hand]) == 1


def test_the_median_frame_is_the_per_pixel_median_wherever_it_is_asked_for() -> None:
    """Worked out tile by tile as boxes ask for it, and kept: any crop, in any order, is the
    per-pixel median of the samples (the upper middle one of an even count)."""
    rng = np.random.default_rng(4)
    for count in (1, 2, 5, 16):
        samples = [rng.integers(0, 256, (150, 200, 3), dtype=np.uint8) for _ in range(count)]
        stack = np.stack(samples)
        bg = evidence.Background(samples)
        for _ in range(25):
            x0, x1 = sorted(int(v) for v in rng.integers(0, 201, 2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, 151, 2))
            want = np.sort(stack[:, y0:y1, x0:x1], axis=0)[count // 2].astype(np.int16)
            got = bg.crop(x0, y0, x1, y1)
            assert got.dtype == np.int16 and np.array_equal(got, want)
        assert np.array_equal(bg.crop(0, 0, 200, 150), np.sort(stack, axis=0)[count // 2])


def test_a_scan_is_carried_to_the_first_item_placed_after_it() -> None:
    cfg = PrelabelConfig()
    ms = moments_of(_sensors([1.0, 20.0], [(3.0, 412.0), (5.0, 412.0), (31.0, 412.0)]), cfg)
    carried = {round(m.t_ns / 1e9): m.scanned for m in ms if not m.codes}
    assert carried[3] == ("4006381333931", 1_000_000_000)  # placed 2 s after the read
    assert carried[5] is None  # one read, one item
    assert carried[31] is None  # 11 s after the read: over scan_to_place_s
    # A read merged with its own weight event is that item's already.
    ms = moments_of(_sensors([1.0], [(1.2, 412.0), (4.0, 412.0)]), cfg)
    assert [m.scanned for m in ms if not m.codes] == [None]
    # Taken out after a read: not the scanned item.
    ms = moments_of(_sensors([1.0], [(3.0, -412.0)]), cfg)
    assert [m.scanned for m in ms if not m.codes] == [None]


def test_a_carried_scan_needs_the_scale_to_agree(tmp_path: Path) -> None:
    cat = tmp_path / "catalogue.json"
    cat.write_text(
        '{"products": [{"sku": "tea", "gtin": "4006381333931", "weight_g": 412},'
        ' {"sku": "salt", "gtin": "0012345678905"}]}'
    )
    p = Prelabeler(None, None, Catalogue.load(cat))
    placed = Moment(3_000_000_000, ["weight:item_added"], [], 409.0, ("4006381333931", 10**9))
    c = p._scanned_then_placed(placed)
    assert c is not None and (c.source, c.sku, c.score) == ("barcode", "tea", 1.0)
    assert c.detail.startswith("4006381333931 (scanned 2.0 s before")
    wrong = Moment(3_000_000_000, ["weight:item_added"], [], 950.0, ("4006381333931", 10**9))
    assert p._scanned_then_placed(wrong) is None  # something else went in
    unknown = Moment(3_000_000_000, ["weight:item_added"], [], 409.0, ("0012345678905", 10**9))
    assert p._scanned_then_placed(unknown) is None  # no weight to check against


def test_a_catalogue_weight_must_be_a_positive_number(tmp_path: Path) -> None:
    from pydantic import ValidationError

    cat = tmp_path / "catalogue.json"
    for bad in ('"-1"', "-1", "0", "1e9", '"NaN"'):
        cat.write_text(
            f'{{"products": [{{"sku": "a", "gtin": "4006381333931", "weight_g": {bad}}}]}}'
        )
        with pytest.raises(ValidationError):
            Catalogue.load(cat)
    cat.write_text('{"products": [{"sku": "a", "gtin": "4006381333931", "weight_g": 412.5}]}')
    loaded = Catalogue.load(cat)
    assert loaded.weights == {"a": 412.5} and '"weight_g": 412.5' in loaded.to_json()


def test_the_weighed_answer_outranks_the_teacher_and_a_barcode_outranks_both() -> None:
    box = [1, 2, 3, 4]
    teacher = Candidate("teacher", "rice", 0.6, box)
    weighed = Candidate("weight", "tea", 0.9, box)
    best, state = route([teacher, weighed], agree_score=0.8, alone_score=0.95)
    assert best is not None and best.sku == "tea" and state == "needs_review"  # they disagree
    agree = Candidate("weight", "rice", 0.97, box)
    best, state = route([teacher, agree], agree_score=0.8, alone_score=0.95)
    assert best is not None and best.source == "weight" and state == "quick_confirm"
    scan = Candidate("barcode", "salt", 1.0, box, "", "4006381333931")
    best, _ = route([teacher, weighed, scan], agree_score=0.8, alone_score=0.95)
    assert best is not None and best.source == "barcode"
    # An empty hand: the scale's "no product" outranks the teacher's product, and a person looks.
    hand = Candidate("scale", "", 0.9)
    best, state = route([teacher, hand], agree_score=0.8, alone_score=0.95)
    assert best == hand and state == "needs_review"
    best, state = route([Candidate("teacher", "", 0.9), hand], agree_score=0.8, alone_score=0.95)
    assert best is not None and best.sku == "" and state == "quick_confirm"


def test_the_median_frame_holds_a_bounded_number_of_frames_whatever_the_clip_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw H.264 stream states no length: sampling every fourth frame of a long one would
    hold them all. At most twice ``fit_samples`` colour frames are held at once."""
    import av

    from cloud_sink.prelabel import frames_at

    clip = tmp_path / "clip.h264"
    with av.open(str(clip), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(200):
            img = np.full((48, 64, 3), i % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(clip)) as probe:
        assert not probe.streams.video[0].frames and not probe.duration  # it says nothing
    held: list[weakref.ref[np.ndarray]] = []
    most = 0

    def counted(frame: av.VideoFrame) -> np.ndarray:
        nonlocal most
        img = small_frame(frame)
        held.append(weakref.ref(img))
        most = max(most, sum(r() is not None for r in held))
        return img

    small_frame = evidence.small_frame
    monkeypatch.setattr(evidence, "small_frame", counted)
    frames, empty, background, _tracks, _quiet = frames_at(
        clip, 0, [], PrelabelConfig(fit_samples=3)
    )
    assert len(held) > 10 and most <= 2 * 3 + 1, (len(held), most)
    assert frames == [] and empty == []
    assert background is not None and len(background.stack) == 3


def test_a_weight_changes_item_is_the_frame_where_the_weighed_product_is_best_seen() -> None:
    from cloud_sink.prelabel import best_seen, surest_weighed
    from cloud_sink.teacher import Prediction

    labels = ["", "tea", "rice"]
    weights = {"tea": 100.0, "rice": 500.0}
    cfg = PrelabelConfig(track_s=1.0)

    def pred(probs: list[float]) -> Prediction:
        k = max(range(3), key=probs.__getitem__)
        return Prediction(labels[k], probs[k], None, None, tuple(probs))

    # The frame that changed most (first) shows mostly the arm; the teacher sees tea best in
    # the third frame, and the scale (+101 g) says tea. A frame the teacher is surer of, but
    # of rice, does not win: the scale rules rice out.
    preds = [
        pred([0.6, 0.3, 0.1]),
        pred([0.1, 0.05, 0.85]),
        pred([0.1, 0.85, 0.05]),
        pred([0.3, 0.6, 0.1]),
    ]
    assert surest_weighed(preds, labels, weights, 101.0, cfg) == 2
    ns = 1_000_000_000
    frames = [(t * ns // 2, f"img{t}") for t in (4, 1, 5, 8)]  # seconds 2, 0.5, 2.5, 4
    seen, seen_preds = best_seen(frames, preds, labels, weights, 101.0, cfg)
    # The picked frame first; then, in time order, the others within track_s (1 s) of it.
    assert [t for t, _ in seen] == [5 * ns // 2, 4 * ns // 2]
    assert seen_preds == [preds[2], preds[0]]
    # Nothing better than the chosen frame, or no product by the scale anywhere: unchanged.
    assert best_seen(frames, [preds[2], *preds[1:]], labels, weights, 101.0, cfg)[0] == frames
    # (300 g: no product weighs that, so every frame says "no product" once weighed)
    assert surest_weighed(preds, labels, weights, 300.0, cfg) == 0
    assert surest_weighed([None, *preds[1:]], labels, weights, 101.0, cfg) == 2
