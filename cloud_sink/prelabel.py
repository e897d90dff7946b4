"""Pre-labelling: pick the frames of a stored bundle worth a label, and ask the cheap sources
what they show, so a person only confirms or corrects.

1. **Moments** from the bundle's ``sensors.mcap``: trigger firings (``/triggers``), confirmed
   barcode reads (``/camera/barcodes``) and weight events (``/weight/events``), on the cart's
   monotonic clock; moments closer than ``merge_s`` are one.
2. **Frames** (:func:`frames_at`): a barcode read takes the frame nearest the read; a trigger
   or weight change takes the frame around it that differs most from the clip's median frame
   (the product in view; by the time the scale settles, the hand has let go). A frame whose
   changed pixels are under ``empty_changed_pct`` shows only the basket: skipped, as are
   bundles indexed ``empty_background`` or ``corrupt``. Times: the manifest's ``start_ns``
   plus the frame's presentation time. An **empty hand** (:func:`empty_hands`) is a moment
   too: a stretch of the cart's hand-activity signal (``/camera/motion``) with no weight
   change near it and no read in it; its frame is the most changed of the stretch. Once the
   teacher has seen them, a weight change with no read at it takes, of its frame and its
   track, the one where the teacher weighed by the scale is surest of a product
   (:func:`best_seen`).
3. **Boxes** fitted to the changed pixels (:func:`cloud_sink.evidence.fit_box`): the
   teacher's box, moved to where the frame differs from the clip's median frame.
4. **Sources**: barcode-as-label (the read's GTIN through the fleet catalogue: the product in
   the hand at that moment, score 1); the same read carried to the item placed after it, when
   the scale's change matches the scanned product's catalogue weight (scan, then place: a
   self-checkout's weight check); the teacher (:mod:`cloud_sink.teacher`, batched), whose box
   also serves the barcode's label; and at a weight event, ``weight``: the teacher's
   probabilities weighed by how well each product's catalogue weight explains the change
   (:func:`cloud_sink.evidence.weigh`); at an empty hand, ``scale``: "no product" (nothing
   was put in or taken out, nothing was read). Agreement and confidence route the item
   (:func:`cloud_sink.labels.route`).

Pre-labelling never reads ``/sim/truth``: that channel is the simulation's answer sheet.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS, Manifest
from capsight_edge.sensors.sensorlog import iter_messages_bounded
from cloud_sink import evidence
from cloud_sink.catalogue import Catalogue
from cloud_sink.datasets import NONE
from cloud_sink.labels import Candidate, LabelStore, NewItem, TrackFrame
from cloud_sink.teacher import Prediction, Teacher, TeacherError

log = logging.getLogger("capsight.sink.prelabel")
TRUTH = "/sim/truth"  # never read here
READ = (
    "/triggers",
    "/camera/barcodes",
    "/weight/events",
    "/camera/motion",
    "/imu",
    "/position/uwb",
)


@dataclass
class PrelabelConfig:
    merge_s: float = 0.5
    look_back_s: float = 1.5
    look_ahead_s: float = 0.3
    changed_grey: float = 25.0
    empty_changed_pct: float = 2.0
    max_moments: int = 64
    agree_score: float = 0.8
    alone_score: float = 0.95
    jpeg_quality: int = 92
    #: fitting the teacher's box to the changed pixels (cloud_sink.evidence.fit_box)
    fit_boxes: bool = True
    fit_level: float = 45.0
    fit_share: float = 0.8
    fit_samples: int = 16
    #: the scale against the catalogue's weights: the standard deviation of a product's weight
    #: change, max(weight_sd_g, weight_sd_rel x its weight)
    weight_sd_g: float = 5.0
    weight_sd_rel: float = 0.02
    #: a read is carried to an item placed at most this long after it (scan, then place)
    scan_to_place_s: float = 10.0
    #: the item's track: up to ``track_frames`` other frames of its moment, from the unbroken
    #: run of frames around the chosen one (at most ``track_s`` away, never past half-way to
    #: another moment's frame) whose changed pixels stay at least ``track_share`` of the
    #: chosen frame's: the same product in other poses and blurs, labelled by one review.
    #: At most ``max_track_per_bundle`` in a bundle (frames held at once are bounded).
    track_frames: int = 12
    track_s: float = 1.5
    track_share: float = 0.5
    max_track_per_bundle: int = 48
    #: at a weight change (no read at it), the item's frame is, of the chosen frame and its
    #: track, the one where the teacher weighed by the scale is surest of a product: the
    #: product the scale points at, best seen; the chosen frame joins the track (frames past
    #: ``track_s`` from the new one leave it). Where the hand moves most, the product is often
    #: small, low or half hidden and its box wrong. Replayed with the runs' own teachers and
    #: simulated reviewer, pre-labels accepted unchanged in round 1: a default demo run's 87
    #: of 117 with the most-changed frame, 94 with this (its weighed items 19 and 25 of 39); a
    #: 4-cart, 5-minute run's 264 and 281 of 391.
    weight_frame: bool = True
    #: a quiet item: the middle frame of the clip's longest stretch with under
    #: ``empty_changed_pct`` changed pixels and at least ``quiet_gap_s`` from every moment (the
    #: basket with no product in hand: what "no product" looks like in that store), with up
    #: to ``quiet_track`` more frames of the stretch as its track; none when the stretch is
    #: shorter than ``quiet_min_frames``
    quiet: bool = True
    quiet_gap_s: float = 1.5
    quiet_track: int = 4
    quiet_min_frames: int = 5
    #: an empty hand: a stretch of the cart's hand activity (gaps up to ``hand_join_s``
    #: joined) at least ``hand_min_s`` long with no read in it, no weight change starting
    #: within ``hand_lead_s`` after it (a hand puts a product down while in view: the scale
    #: starts changing before it leaves), none settled within ``hand_after_added_s`` before
    #: it (the hand let go of what it put in) nor, for a removal, ``hand_after_removed_s``
    #: (the hand may be leaving with what it took out), and the log covering all of that (the
    #: bundle's first and last ``/camera/motion`` samples): a hand over the basket holding
    #: nothing, "no product" in that store with a hand in view. A change starts where the
    #: load cells became unsettled (``unstable_end``'s ``start_ns``). The scale's word for it
    #: scores ``hand_score``. Its track: up to ``hand_track_frames`` other frames of the
    #: stretch that show a change (:func:`hand_track`). At most ``max_hands`` in a bundle.
    hands: bool = True
    hand_join_s: float = 0.3
    hand_min_s: float = 0.8
    hand_lead_s: float = 1.0
    hand_after_added_s: float = 1.0
    hand_after_removed_s: float = 3.0
    hand_score: float = 0.9
    hand_track_frames: int = 24
    max_hands: int = 8


@dataclass
class Moment:
    t_ns: int
    reasons: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    weight_delta_g: float | None = None
    #: (code, read time) of the read this item was placed after (scan, then place)
    scanned: tuple[str, int] | None = None
    #: (start, end) of the empty hand this moment lies in (:func:`empty_hands`)
    hand: tuple[int, int] | None = None


@dataclass
class PrelabelReport:
    bundles: int = 0
    skipped_empty: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    moments: int = 0
    empty_frames: int = 0
    items: int = 0
    track_frames: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    decode_s: float = 0.0
    model_s: float = 0.0
    model_frames: int = 0
    write_s: float = 0.0
    total_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["model_frames_per_s"] = (
            round(self.model_frames / self.model_s, 1) if self.model_s > 0 else None
        )
        out["frames_per_s"] = round(self.items / self.total_s, 1) if self.total_s > 0 else None
        return out


def read_sensors(path: Path) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """The channels pre-labelling uses, as (log time, message) lists. ``/sim/truth`` is skipped
    unread."""
    out: dict[str, list[tuple[int, dict[str, Any]]]] = {t: [] for t in READ}
    for topic, t_ns, data in iter_messages_bounded(
        path, max_chunk_bytes=64 << 20, max_message_bytes=4 << 20, max_messages=2_000_000
    ):
        if topic == TRUTH or topic not in out:
            continue
        try:
            msg = json.loads(data)
        except ValueError:
            continue
        if isinstance(msg, dict):
            out[topic].append((t_ns, msg))
    return out


def moments_of(
    sensors: dict[str, list[tuple[int, dict[str, Any]]]], cfg: PrelabelConfig
) -> list[Moment]:
    raw: list[Moment] = []
    for t, m in sensors["/triggers"]:
        if m.get("kind") == "fire" and m.get("rule") != "manual":
            raw.append(Moment(int(m.get("t_ns", t)), [f"trigger:{m.get('rule', '')}"]))
    for t, m in sensors["/camera/barcodes"]:
        code = m.get("gtin") or m.get("text")
        if m.get("confirmed", True) and isinstance(code, str):
            raw.append(Moment(int(m.get("t_ns", t)), ["barcode"], [code]))
    for t, m in sensors["/weight/events"]:
        if m.get("kind") in ("item_added", "item_removed"):
            # The hub's item events carry the time the scale settled (their start_ns is 0; the
            # change's start is on the unstable_end before them). Frames looked for around the
            # settled time were labelled better than around the start: on one default demo
            # run's round 1, 77.8 % of the pre-labels were accepted unchanged against 73.5 %
            # (the weight's 53.8 % against 51.3 %, the teacher's 89.5 % against 81.4 %).
            at = int(m.get("start_ns") or m.get("t_ns", t))
            raw.append(
                Moment(at, [f"weight:{m['kind']}"], weight_delta_g=float(m.get("delta_g", 0.0)))
            )
    raw.sort(key=lambda mo: mo.t_ns)
    merged: list[Moment] = []
    for mo in raw:
        last = merged[-1] if merged else None
        if last is not None and mo.t_ns - last.t_ns <= cfg.merge_s * 1e9:
            had_codes = bool(last.codes)
            last.reasons += [r for r in mo.reasons if r not in last.reasons]
            last.codes += [c for c in mo.codes if c not in last.codes]
            if mo.weight_delta_g is not None:
                last.weight_delta_g = mo.weight_delta_g
            if mo.codes and not had_codes:
                last.t_ns = mo.t_ns  # a read's time is the best moment to look
        else:
            merged.append(mo)
    # Scan, then place: the first item added after a read (within scan_to_place_s, no other
    # read between) is the read's candidate; whether the scale agrees is the catalogue's to say.
    read: tuple[str, int] | None = None
    for mo in merged:
        if mo.codes:
            read = None if "weight:item_added" in mo.reasons else (mo.codes[0], mo.t_ns)
        elif read is not None and "weight:item_added" in mo.reasons:
            if mo.t_ns - read[1] <= cfg.scan_to_place_s * 1e9:
                mo.scanned = read
            read = None
    # An empty hand takes the triggers' moments in it (no read or weight change is near it),
    # or is a moment of its own.
    near = int(cfg.merge_s * 1e9)
    for a, b in empty_hands(sensors, cfg):
        inside = [
            mo
            for mo in merged
            if a - near <= mo.t_ns <= b + near and not mo.codes and mo.weight_delta_g is None
        ]
        if inside:
            first = inside[0]
            for mo in inside[1:]:
                first.reasons += [r for r in mo.reasons if r not in first.reasons]
                merged.remove(mo)
        else:
            first = Moment((a + b) // 2)
            merged.append(first)
        first.reasons.append("hand:empty")
        first.hand = (a, b)
    merged.sort(key=lambda mo: mo.t_ns)
    return merged[: cfg.max_moments]


def empty_hands(
    sensors: dict[str, list[tuple[int, dict[str, Any]]]], cfg: PrelabelConfig
) -> list[tuple[int, int]]:
    """(start, end) of each empty hand (see :class:`PrelabelConfig`), in time order."""
    if not cfg.hands:
        return []
    active: list[int] = []
    seen: list[int] = []  # what the log covers: the first and last samples
    for _t, m in sensors.get("/camera/motion", []):
        times, flags = m.get("t_ns"), m.get("hand_activity")
        if isinstance(times, list) and isinstance(flags, list) and len(times) == len(flags):
            active += [int(t) for t, f in zip(times, flags, strict=True) if f is True]
            seen += [int(times[0]), int(times[-1])] if times else []
    if not active:
        return []
    active.sort()
    # A hand whose margins the log does not cover may have put in or taken out something the
    # log does not show.
    first, last = min(seen), max(seen)
    stretches: list[list[int]] = []
    for t in active:
        if stretches and t - stretches[-1][1] <= cfg.hand_join_s * 1e9:
            stretches[-1][1] = t
        else:
            stretches.append([t, t])
    events = [(int(m.get("t_ns", t)), m) for t, m in sensors["/weight/events"]]
    began = {
        t: int(m["start_ns"])
        for t, m in events
        if m.get("kind") == "unstable_end" and m.get("start_ns")
    }
    changes: list[tuple[int, int, int]] = []  # (start, settled, how long after it to keep off)
    for end, m in events:
        if m.get("kind") in ("item_added", "item_removed"):
            start = int(m.get("start_ns") or began.get(end) or end)
            keep = cfg.hand_after_added_s if m["kind"] == "item_added" else cfg.hand_after_removed_s
            changes.append((start, end, int(keep * 1e9)))
    reads = sorted(
        int(m.get("t_ns", t)) for t, m in sensors["/camera/barcodes"] if m.get("confirmed", True)
    )
    lead = int(cfg.hand_lead_s * 1e9)
    back = int(max(cfg.hand_after_added_s, cfg.hand_after_removed_s) * 1e9)
    out: list[tuple[int, int]] = []
    for a, b in stretches:
        if b - a < cfg.hand_min_s * 1e9 or a - back < first or b + lead > last:
            continue
        if any(s <= b + lead and e + keep >= a for s, e, keep in changes):
            continue
        if any(a <= r <= b for r in reads):
            continue
        out.append((a, b))
    return out[: cfg.max_hands]


def _nearest_batched(
    msgs: list[tuple[int, dict[str, Any]]], t_ns: int, keys: tuple[str, ...]
) -> list[float] | None:
    """The sample of a batched channel nearest ``t_ns`` (within 0.5 s)."""
    best, best_d = None, 5e8
    for _t, m in msgs:
        times = m.get("t_ns") or []
        if not isinstance(times, list) or not times:
            continue
        i = bisect.bisect_left(times, t_ns)
        for j in (i - 1, i):
            if 0 <= j < len(times) and abs(times[j] - t_ns) < best_d:
                best_d = abs(times[j] - t_ns)
                try:
                    if len(keys) == 1:
                        best = [float(v) for v in m[keys[0]][j]]
                    else:
                        best = [float(m[k][j]) for k in keys]
                except (KeyError, IndexError, TypeError, ValueError):
                    best = None
    return best


def track_around(
    pick: int,
    times: list[int],
    changed: list[float],
    keys: set[int],
    taken: set[int],
    cfg: PrelabelConfig,
) -> list[int]:
    """The frames of ``pick``'s track (see :class:`PrelabelConfig`): the unbroken run around it
    whose changed pixels stay at least ``track_share`` of its own (and above the empty
    threshold), within ``track_s``, ending at a frame in ``taken`` (another item's) and before
    half-way to another item's chosen frame (``keys``); up to ``track_frames`` of them, spread
    evenly over the run."""
    if cfg.track_frames <= 0:
        return []
    floor = max(cfg.empty_changed_pct, cfg.track_share * changed[pick])
    reach = int(cfg.track_s * 1e9)
    run: list[int] = []
    for step in (-1, 1):
        j = pick + step
        while (
            0 <= j < len(times)
            and abs(times[j] - times[pick]) <= reach
            and j not in taken
            and changed[j] >= floor
            and not any(
                (k - pick) * step > 0 and abs(times[j] - times[k]) <= abs(times[j] - times[pick])
                for k in keys
            )
        ):
            run.append(j)
            j += step
    run.sort()
    return spread(run, cfg.track_frames)


def frames_at(
    clip: Path, start_ns: int, moments: list[Moment], cfg: PrelabelConfig
) -> tuple[
    list[tuple[int, Any] | None],
    list[bool],
    Any,
    list[list[tuple[int, Any]]],
    list[tuple[int, Any]],
]:
    """For each moment, (time, BGR frame) of the frame to label, and whether it shows only the
    background. A barcode read's moment takes the frame nearest the read; any other moment (a
    trigger, a weight change: the hand has let go by then) takes, of the frames from
    ``look_back_s`` before it to ``look_ahead_s`` after (an empty hand: of its stretch), the
    one that differs most from the clip's median frame: where the product is in view. A frame
    whose share of changed pixels (more than ``changed_grey`` levels at 160 px wide) is under
    ``empty_changed_pct`` shows only the basket. Each chosen frame also brings its track
    (:func:`track_around`; an empty hand's: :func:`hand_track`), as (time, BGR frame) lists;
    last come the quiet item's frames (:func:`quiet_stretch`). Two decoding passes: the first
    measures every frame, the second keeps only the chosen ones. Also returns the clip's median
    frame in colour (``fit_samples`` frames spread over the clip,
    :class:`cloud_sink.evidence.Background`; None when boxes are not fitted), for fitting
    boxes. At most twice ``fit_samples`` colour frames are held at once, whatever length the
    container states."""
    import av
    import numpy as np

    times: list[int] = []
    small: list[Any] = []
    samples: list[Any] = []
    with av.open(str(clip)) as container:
        first: float | None = None
        stream = container.streams.video[0]
        total = stream.frames or (container.duration or 0) / 1e6 * float(stream.average_rate or 0)
        every = max(1, -(-int(total) // max(1, cfg.fit_samples))) if total else 4
        for k, frame in enumerate(container.decode(video=0)):
            t = float(frame.time or 0.0)
            first = t if first is None else first
            times.append(start_ns + int((t - first) * 1e9))
            small.append(_small(frame.to_ndarray(format="gray")))
            if cfg.fit_boxes and k % every == 0:
                samples.append(evidence.small_frame(frame))
                if len(samples) > 2 * cfg.fit_samples:  # longer than the container said
                    samples, every = samples[::2], every * 2
    if not times:
        return [None] * len(moments), [True] * len(moments), None, [[] for _ in moments], []
    if len(samples) > cfg.fit_samples > 0:  # fit_samples of them, spread evenly
        step = (len(samples) - 1) / max(1, cfg.fit_samples - 1)
        samples = [samples[round(i * step)] for i in range(cfg.fit_samples)]
    colour_bg = evidence.Background(samples) if samples else None
    background = np.median(np.stack(small[:: max(1, len(small) // 60)]), axis=0)
    changed = [float(np.mean(np.abs(f - background) > cfg.changed_grey)) * 100 for f in small]
    chosen: list[int | None] = []
    for m in moments:
        if m.codes:
            chosen.append(min(range(len(times)), key=lambda k: abs(times[k] - m.t_ns)))
            continue
        lo, hi = m.t_ns - int(cfg.look_back_s * 1e9), m.t_ns + int(cfg.look_ahead_s * 1e9)
        if m.hand is not None:  # the hand's stretch: where it is most in view
            lo, hi = m.hand
        window = [k for k, t in enumerate(times) if lo <= t <= hi]
        chosen.append(max(window, key=lambda k: changed[k]) if window else None)
    keys = {k for k in chosen if k is not None and changed[k] >= cfg.empty_changed_pct}
    taken = set(keys)
    tracks: list[list[int]] = []
    budget = cfg.max_track_per_bundle
    for m, key in zip(moments, chosen, strict=True):
        run: list[int] = []
        if key is not None and key in keys and budget > 0:
            if m.hand is not None:
                run = hand_track(key, times, changed, m.hand, taken, cfg)[:budget]
            else:
                run = track_around(key, times, changed, keys - {key}, taken - {key}, cfg)
                run = run[:budget]
            budget -= len(run)
            taken.update(run)
        tracks.append(run)
    still = quiet_stretch(times, changed, moments, cfg)
    wanted = {k for k in chosen if k is not None} | {i for t in tracks for i in t} | set(still)
    images: dict[int, Any] = {}
    with av.open(str(clip)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in wanted:
                images[k] = frame.to_ndarray(format="bgr24")
            if len(images) == len(wanted):
                break
    frames: list[tuple[int, Any] | None] = []
    empty: list[bool] = []
    for pick in chosen:
        if pick is None or pick not in images:
            frames.append(None)
            empty.append(True)
            continue
        frames.append((times[pick], images[pick]))
        empty.append(changed[pick] < cfg.empty_changed_pct)
    held = [[(times[i], images[i]) for i in run if i in images] for run in tracks]
    quiet = [(times[i], images[i]) for i in still if i in images]
    return frames, empty, colour_bg, held, quiet


def hand_track(
    pick: int,
    times: list[int],
    changed: list[float],
    hand: tuple[int, int],
    taken: set[int],
    cfg: PrelabelConfig,
) -> list[int]:
    """An empty hand's track: up to ``hand_track_frames`` other frames of its stretch that
    show a change (the hand elsewhere over the basket), spread evenly, none another item's."""
    run = [
        k
        for k, t in enumerate(times)
        if hand[0] <= t <= hand[1]
        and k != pick
        and k not in taken
        and changed[k] >= cfg.empty_changed_pct
    ]
    return spread(run, cfg.hand_track_frames)


def quiet_stretch(
    times: list[int], changed: list[float], moments: list[Moment], cfg: PrelabelConfig
) -> list[int]:
    """The quiet item's frames (see :class:`PrelabelConfig`), its own first; [] for none."""
    if not cfg.quiet:
        return []
    gap = int(cfg.quiet_gap_s * 1e9)
    best: list[int] = []
    run: list[int] = []
    for k, t in enumerate(times):
        if changed[k] < cfg.empty_changed_pct and all(abs(t - m.t_ns) >= gap for m in moments):
            run.append(k)
            if len(run) > len(best):
                best = list(run)
        else:
            run = []
    if len(best) < max(1, cfg.quiet_min_frames):
        return []
    mid = best[len(best) // 2]
    return [mid, *spread([k for k in best if k != mid], cfg.quiet_track)]


def spread(frames: list[int], most: int) -> list[int]:
    """At most ``most`` of ``frames``, spread evenly over them (all of them when they are
    fewer): how a track is thinned."""
    if len(frames) <= most:
        return frames
    if most <= 0:
        return []
    gap = len(frames) / most
    return [frames[int(gap * i + gap / 2)] for i in range(most)]


def _fit(pred: Prediction, img: Any, background: Any, cfg: PrelabelConfig) -> Prediction:
    """The teacher's prediction with its boxes fitted to the changed pixels, where they can be."""
    fitted = evidence.fit_box(
        img, background, pred.product_box, level=cfg.fit_level, share=cfg.fit_share
    )
    if fitted is None:
        return pred
    return replace(
        pred, box=fitted if pred.box is not None else None, product_box=fitted, fitted=True
    )


def _small(grey: Any) -> Any:
    import cv2
    import numpy as np

    return cv2.resize(
        grey, (160, max(1, 160 * grey.shape[0] // grey.shape[1])), interpolation=cv2.INTER_AREA
    ).astype(np.float32)


def _ms_into(manifest: Manifest, t_ns: int) -> int:
    """Milliseconds from the bundle's start (an item's and a frame's name)."""
    return max(0, (t_ns - manifest.start_ns) // 1_000_000)


def utc_at(manifest: Manifest, t_ns: int) -> str:
    from cloud_sink.foxglove import utc_ns_of

    ns = utc_ns_of(manifest.start_utc) + (t_ns - manifest.start_ns)
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9))
    return f"{s}.{(ns // 1_000_000) % 1000:03d}Z"


class Prelabeler:
    def __init__(
        self,
        index: Any,
        blobs: Any,
        catalogue: Catalogue | None,
        teacher: Teacher | None = None,
        config: PrelabelConfig | None = None,
        vlm: Any = None,
    ) -> None:
        self.index = index
        self.labels = LabelStore(index)
        self.blobs = blobs
        self.catalogue = catalogue
        self.teacher = teacher
        self.vlm = vlm  # cloud_sink.vlm.VlmClient, optional
        self.cfg = config or PrelabelConfig()

    @property
    def weights(self) -> dict[str, float] | None:
        """The catalogue's product weights (grams by SKU), or None without a catalogue."""
        return dict(self.catalogue.weights) if self.catalogue is not None else None

    def pending(self, limit: int = 1000) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.index.db.execute(
                "SELECT id, device_id, store_id, empty_background FROM bundles WHERE "
                "status = 'ok' AND label_status = 'unlabelled' ORDER BY start_utc LIMIT ?",
                (limit,),
            )
        ]

    def run(self, *, limit: int = 1000) -> PrelabelReport:
        """Pre-label every stored bundle not labelled yet (at most ``limit``)."""
        report = PrelabelReport()
        start = time.perf_counter()
        for row in self.pending(limit):
            report.bundles += 1
            if row["empty_background"]:
                report.skipped_empty += 1
                self.index.set_label_status(row["id"], row["device_id"], "empty")
                continue
            try:
                self.bundle(row["device_id"], row["id"], row["store_id"], report)
            except Exception as exc:  # a missing or corrupt blob marks the bundle, not the run
                if isinstance(exc, TeacherError):  # the model is wrong: stop, label nothing more
                    raise
                why = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("pre-labelling %s/%s failed: %s", row["device_id"], row["id"], why)
                report.failed[f"{row['device_id']}/{row['id']}"] = why
                self.index.set_label_status(row["id"], row["device_id"], "failed")
        report.total_s = time.perf_counter() - start
        return report

    def bundle(self, device: str, bundle_id: str, store: str, report: PrelabelReport) -> None:
        work = compute_bundle(self.blobs, device, bundle_id, self.cfg, self.teacher, self.weights)
        self.write(work, device, store, report)

    def write(self, work: dict[str, Any], device: str, store: str, report: PrelabelReport) -> None:
        """Store what :func:`compute_bundle` found: frames, pre-labels, the bundle's status."""
        manifest = Manifest.from_json(work["manifest"])
        for key in ("moments", "empty_frames", "model_frames"):
            setattr(report, key, getattr(report, key) + work[key])
        report.decode_s += work["decode_s"]
        report.model_s += work["model_s"]
        t2 = time.perf_counter()
        for f in work["frames"]:
            state = self._item(manifest, device, store, f)
            report.items += 1
            report.track_frames += len(f.get("track", [])) if state != "exists" else 0
            report.by_state[state] = report.by_state.get(state, 0) + 1
        report.write_s += time.perf_counter() - t2
        status = "prelabelled" if work["frames"] else "nothing"
        self.index.set_label_status(manifest.bundle_id, device, status)

    def run_ray(self, address: str, *, limit: int = 1000, workers: int = 2) -> PrelabelReport:
        """The same pre-labelling as :meth:`run`, its per-bundle work (read, decode, teacher,
        JPEG) as a Ray Data job on the cluster at ``address``; this process writes the labels
        (one writer for the index). The blob store must be a folder the workers can read (the
        sink's own, on this machine or a shared volume)."""
        # `ray start` (2.60) turns token authentication on by default, but a client whose
        # RAY_AUTH_MODE is unset does not send the token it has: say so before importing ray.
        if (Path.home() / ".ray" / "auth_token").is_file():
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        # No usage statistics: with them on, Ray Data's driver also starts a thread that asks
        # a Prometheus server (localhost:9090 unless told) for the cluster's counters.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        report = PrelabelReport()
        start = time.perf_counter()
        rows = []
        for row in self.pending(limit):
            report.bundles += 1
            if row["empty_background"]:
                report.skipped_empty += 1
                self.index.set_label_status(row["id"], row["device_id"], "empty")
            else:
                rows.append(
                    {"device": row["device_id"], "bundle": row["id"], "store": row["store_id"]}
                )
        root = getattr(self.blobs, "root", None)
        if root is None:
            raise ValueError("the Ray path needs a blob store folder the workers can read")
        if rows:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            try:
                ds = ray.data.from_items(rows).map(
                    _RayBundleWork,  # type: ignore[arg-type]  # a callable class: one per worker
                    fn_constructor_kwargs={
                        "root": str(root),
                        "cfg": self.cfg,
                        "teacher": str(self.teacher.path) if self.teacher else "",
                        "weights": self.weights,
                    },
                    concurrency=workers,
                    num_cpus=0.5,
                )
                for out in ds.iter_rows():
                    key = f"{out['device']}/{out['bundle']}"
                    if out["error"]:
                        if out["error"].startswith("TeacherError"):
                            raise TeacherError(out["error"])
                        report.failed[key] = out["error"]
                        self.index.set_label_status(out["bundle"], out["device"], "failed")
                        continue
                    self.write(pickle.loads(out["work"]), out["device"], out["store"], report)
            finally:
                ray.shutdown()
        report.total_s = time.perf_counter() - start
        return report

    def _item(self, manifest: Manifest, device: str, store: str, f: dict[str, Any]) -> str:
        m, t_ns, data, pred = f["moment"], f["t_ns"], f["jpeg"], f["pred"]
        key = self._put_frame(manifest, device, t_ns, data)
        track = [
            TrackFrame(
                t["t_ns"],
                self._put_frame(manifest, device, t["t_ns"], t["jpeg"]),
                hashlib.sha256(t["jpeg"]).hexdigest(),
                t["box"],
            )
            for t in f.get("track", [])
        ]
        candidates: list[Candidate] = []
        box = pred.product_box if pred is not None else None
        if self.catalogue is not None:
            for code in m.codes:
                product = self.catalogue.by_code(code)
                if product is not None:
                    candidates.append(Candidate("barcode", product.sku, 1.0, box, "", code))
                    break
            else:
                carried = self._scanned_then_placed(m)
                if carried is not None:
                    candidates.append(replace(carried, box=box))
        if self.vlm is not None:
            answer = self.vlm.ask(data)
            if answer is not None:
                candidates.append(
                    Candidate("vlm", answer.sku, round(answer.score, 4), None, self.vlm.version)
                )
        if pred is not None:
            version = self.teacher.version if self.teacher else ""
            candidates.append(
                Candidate(
                    "teacher",
                    pred.sku,
                    round(pred.score, 4),
                    pred.box,
                    version,
                    "box fitted to the changed pixels" if pred.fitted else "",
                )
            )
            weighed = self._weighed(m, pred)
            if weighed is not None:
                sku, score = weighed
                candidates.append(
                    Candidate(
                        "weight",
                        sku,
                        round(score, 4),
                        pred.product_box if sku else None,
                        version,
                        f"teacher x scale: {m.weight_delta_g:+.0f} g",
                    )
                )
        if m.hand is not None and not m.codes and m.weight_delta_g is None:
            held_s = (m.hand[1] - m.hand[0]) / 1e9
            candidates.append(
                Candidate(
                    "scale",
                    NONE,
                    self.cfg.hand_score,
                    None,
                    "",
                    f"a hand in view for {held_s:.1f} s with nothing put in, taken out or read",
                )
            )
        moment = {"reasons": m.reasons, "weight_delta_g": m.weight_delta_g, **f["at"]}
        h, w = f["height"], f["width"]
        return self.labels.add(
            NewItem(
                item_id=f"{device}~{manifest.bundle_id}~{_ms_into(manifest, t_ns)}",
                device_id=device,
                bundle_id=manifest.bundle_id,
                store_id=store,
                t_ns=t_ns,
                t_utc=utc_at(manifest, t_ns),
                frame_key=key,
                frame_sha256=hashlib.sha256(data).hexdigest(),
                width=w,
                height=h,
                candidates=candidates,
                moment=moment,
                track=track,
            ),
            agree_score=self.cfg.agree_score,
            alone_score=self.cfg.alone_score,
        )

    def _put_frame(self, manifest: Manifest, device: str, t_ns: int, data: bytes) -> str:
        key = f"frames/{device}/{manifest.bundle_id}/{_ms_into(manifest, t_ns):08d}.jpg"
        with tempfile.NamedTemporaryFile(suffix=".jpg") as fh:
            fh.write(data)
            fh.flush()
            self.blobs.put_file(key, Path(fh.name))
        return key

    def _scanned_then_placed(self, m: Moment) -> Candidate | None:
        """The read an added item was placed after, as its label, when the scale's change is
        the scanned product's catalogue weight (a product with no weight is not carried)."""
        if m.scanned is None or m.weight_delta_g is None or self.catalogue is None:
            return None
        code, t_read = m.scanned
        product = self.catalogue.by_code(code)
        if product is None or product.weight_g is None:
            return None
        sd = dict(sd_g=self.cfg.weight_sd_g, sd_rel=self.cfg.weight_sd_rel)
        if not evidence.weight_agrees(product.weight_g, m.weight_delta_g, **sd):
            return None
        return Candidate(
            "barcode",
            product.sku,
            1.0,
            None,
            "",
            f"{code} (scanned {(m.t_ns - t_read) / 1e9:.1f} s before this item was placed; "
            f"the scale {m.weight_delta_g:+.0f} g, the catalogue {product.weight_g:g} g)",
        )

    def _weighed(self, m: Moment, pred: Prediction) -> tuple[str, float] | None:
        """The teacher's answer weighed by the scale at a weight event, when the catalogue
        has weights."""
        if (
            m.weight_delta_g is None
            or not pred.probs
            or self.teacher is None
            or self.catalogue is None
            or not self.catalogue.weights
        ):
            return None
        return evidence.weigh(
            pred.probs,
            self.teacher.labels,
            self.catalogue.weights,
            m.weight_delta_g,
            sd_g=self.cfg.weight_sd_g,
            sd_rel=self.cfg.weight_sd_rel,
        )


def compute_bundle(
    blobs: Any,
    device: str,
    bundle_id: str,
    cfg: PrelabelConfig,
    teacher: Teacher | None,
    weights: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The per-bundle work, with no writes: the frames worth a label (JPEG), the teacher's
    predictions and the sensors at each moment. Runs in this process or in a Ray worker.
    ``weights``: the catalogue's product weights (grams by SKU), for choosing a weight
    change's frame (``PrelabelConfig.weight_frame``)."""
    prefix = f"bundles/{device}/{bundle_id}"
    tmp = Path(tempfile.mkdtemp(prefix="prelabel-"))
    try:
        manifest_bytes = blobs.get_bytes(f"{prefix}/{MANIFEST}")
        manifest = Manifest.from_json(manifest_bytes)
        if SENSORS not in manifest.files or CLIP not in manifest.files:
            raise ValueError("the bundle has no clip or no sensor log")
        for name in (CLIP, SENSORS):
            (tmp / name).write_bytes(blobs.get_bytes(f"{prefix}/{name}"))
        t0 = time.perf_counter()
        sensors = read_sensors(tmp / SENSORS)
        moments = moments_of(sensors, cfg)
        frames, empty, background, tracks, quiet = frames_at(
            tmp / CLIP, manifest.start_ns, moments, cfg
        )
        decode_s = time.perf_counter() - t0
        keep: list[tuple[Moment, tuple[int, Any]]] = []
        kept_tracks: list[list[tuple[int, Any]]] = []
        for m, f, e, track in zip(moments, frames, empty, tracks, strict=True):
            if not f or e:
                continue
            same = next((k for k in keep if k[1][0] == f[0]), None)
            if same is None:
                keep.append((m, f))
                kept_tracks.append(track)
            else:  # two moments chose one frame: one item, with both reasons
                same[0].reasons += [r for r in m.reasons if r not in same[0].reasons]
                same[0].codes += [c for c in m.codes if c not in same[0].codes]
                if m.weight_delta_g is not None:
                    same[0].weight_delta_g = m.weight_delta_g
                same[0].scanned = same[0].scanned or m.scanned
                same[0].hand = same[0].hand or m.hand
        if quiet:
            keep.append((Moment(quiet[0][0], ["quiet"]), quiet[0]))
            kept_tracks.append(quiet[1:])
        # The teacher sees every frame (the chosen ones, then the tracks'): its box, fitted to
        # the changed pixels, is where each track frame's product is.
        images = [f[1] for _m, f in keep] + [img for t in kept_tracks for _t, img in t]
        preds: list[Any] = [None] * len(images)
        model_s = 0.0
        if teacher is not None and images:
            t1 = time.perf_counter()
            preds = list(teacher.predict(images))
            model_s = time.perf_counter() - t1
            if cfg.fit_boxes and background is not None:
                preds = [
                    _fit(p, img, background, cfg) for p, img in zip(preds, images, strict=True)
                ]
        key_preds = preds[: len(keep)]
        rest = iter(preds[len(keep) :])
        track_preds = [list(itertools.islice(rest, len(t))) for t in kept_tracks]
        if cfg.weight_frame and weights and teacher is not None:
            for i, (m, f) in enumerate(keep):
                if m.weight_delta_g is None or m.codes or m.hand is not None:
                    continue
                seen, seen_preds = best_seen(
                    [f, *kept_tracks[i]],
                    [key_preds[i], *track_preds[i]],
                    teacher.labels,
                    weights,
                    m.weight_delta_g,
                    cfg,
                )
                keep[i], kept_tracks[i] = (m, seen[0]), seen[1:]
                key_preds[i], track_preds[i] = seen_preds[0], seen_preds[1:]
        out = []
        kept = zip(keep, key_preds, kept_tracks, track_preds, strict=True)
        for (m, (t_ns, img)), pred, track, tpreds in kept:
            jpg = _jpeg(img, cfg)
            h, w = img.shape[:2]
            at = {
                "accel_g": _nearest_batched(sensors["/imu"], t_ns, ("accel_g",)),
                "position_mm": _nearest_batched(
                    sensors["/position/uwb"], t_ns, ("x_mm", "y_mm", "z_mm")
                ),
            }
            out.append(
                {
                    "moment": m,
                    "t_ns": t_ns,
                    "jpeg": jpg,
                    "width": w,
                    "height": h,
                    "pred": pred,
                    "at": at,
                    "track": [
                        {
                            "t_ns": t,
                            "jpeg": _jpeg(timg, cfg),
                            "box": p.product_box if p is not None else None,
                        }
                        for (t, timg), p in zip(track, tpreds, strict=True)
                    ],
                }
            )
        return {
            "manifest": manifest_bytes,
            "frames": out,
            "moments": len(moments),
            "empty_frames": sum(1 for f, e in zip(frames, empty, strict=True) if f and e),
            "model_frames": len(images) if teacher is not None else 0,
            "decode_s": decode_s,
            "model_s": model_s,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def surest_weighed(
    preds: list[Prediction | None],
    labels: list[str],
    weights: Mapping[str, float],
    delta_g: float,
    cfg: PrelabelConfig,
) -> int:
    """Which of ``preds`` (the teacher on a weight change's frames, the chosen one first) is
    surest of a product once weighed by the scale's change ``delta_g``: the index of the
    highest posterior whose label is a product (:func:`cloud_sink.evidence.weigh`); 0 when
    none is higher than the first's."""
    best, best_score = 0, -1.0
    for k, pred in enumerate(preds):
        if pred is None or not pred.probs:
            continue
        sku, score = evidence.weigh(
            pred.probs, labels, weights, delta_g, sd_g=cfg.weight_sd_g, sd_rel=cfg.weight_sd_rel
        )
        score = score if sku else 0.0
        if score > best_score:
            best, best_score = k, score
    return best if best_score > 0 else 0


def best_seen(
    frames: list[tuple[int, Any]],
    preds: list[Prediction | None],
    labels: list[str],
    weights: Mapping[str, float],
    delta_g: float,
    cfg: PrelabelConfig,
) -> tuple[list[tuple[int, Any]], list[Prediction | None]]:
    """A weight change's frames (the chosen one, then its track, as (time, image)) and the
    teacher's predictions on them, reordered so that the frame :func:`surest_weighed` picks
    comes first; the rest, in time order, are its track: those at most ``track_s`` from it."""
    j = surest_weighed(preds, labels, weights, delta_g, cfg)
    if j == 0:
        return frames, preds
    t_new, reach = frames[j][0], int(cfg.track_s * 1e9)
    rest = sorted((k for k in range(len(frames)) if k != j), key=lambda k: frames[k][0])
    rest = [k for k in rest if abs(frames[k][0] - t_new) <= reach]
    return [frames[j], *(frames[k] for k in rest)], [preds[j], *(preds[k] for k in rest)]


def _jpeg(img: Any, cfg: PrelabelConfig) -> bytes:
    import cv2

    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    if not ok:
        raise ValueError("a frame could not be encoded as JPEG")
    return bytes(jpg.tobytes())


class _RayBundleWork:
    """A Ray Data worker: opens the blob folder and the teacher once, then works bundles."""

    def __init__(
        self, root: str, cfg: PrelabelConfig, teacher: str, weights: dict[str, float] | None
    ) -> None:
        from cloud_sink.blobs import LocalBlobStore

        self.blobs = LocalBlobStore(root)
        self.cfg = cfg
        self.teacher = Teacher(teacher) if teacher else None
        self.weights = weights

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {**row, "error": "", "work": b""}
        try:
            work = compute_bundle(
                self.blobs, row["device"], row["bundle"], self.cfg, self.teacher, self.weights
            )
            out["work"] = pickle.dumps(work)
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return out
