"""Scoring on real field data: barcode photos with their expected texts, GPS receiver logs with
gpsd's own answers (``../shared/data/``). Used by the ``barcodes_real`` and ``nmea_real``
benchmarks and by the tests, so both score the same way.

Barcodes: an image is read when one of the reads names its expected content: the same GTIN
(leading zeros and UPC-E zero suppression aside, the rule the data set states) or the same text
(line endings aside). An expected text of 13 digits plus 2 or 5 is a code with its add-on: a
read that reports an add-on must report that one. A read that names nothing expected is a
misread (a false positive), also on the code-free images.

GPS: the distinct positions (1e-5 degrees) gpsd reports with a 2D or 3D fix are the truth; a
position we report that gpsd does not is a false fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsight_edge.camera.gs1 import check_digit_ok, same_gtin

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BARCODES = SHARED / "barcodes-dev"
NMEA = SHARED / "nmea-gpsd"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".pgm", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    group: str
    path: Path
    expected: str  # "" for a code-free image


def barcode_samples(root: Path = BARCODES) -> list[Sample]:
    """Every image that has an expected text beside it (``NAME.txt``)."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for img in sorted(folder.iterdir()):
            txt = img.with_suffix(".txt")
            if img.suffix.lower() in IMAGE_SUFFIXES and txt.is_file():
                out.append(Sample(folder.name, img, txt.read_text(errors="replace").strip()))
    return out


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


@dataclass(frozen=True)
class Expected:
    text: str
    gtin: str | None = None
    addon: str | None = None


def expected_of(text: str) -> Expected:
    t = _norm(text)
    if t.isdigit():
        if len(t) == 16 and t.startswith("01") and check_digit_ok(t[2:]):
            return Expected(t, t[2:])  # AI 01 + GTIN-14 (DataBar)
        if len(t) in (15, 18) and check_digit_ok(t[:13]):
            return Expected(t, t[:13], t[13:])  # EAN-13 / UPC-A plus an EAN-2 / EAN-5
        if len(t) in (8, 12, 13, 14):
            return Expected(t, t)
    return Expected(t)


def read_matches(read: Any, exp: Expected) -> bool:
    """``read``: a :class:`capsight_edge.camera.barcodes.Barcode`."""
    if exp.addon and read.addon and read.addon != exp.addon:
        return False  # a wrong add-on is a misread, not a read
    if exp.gtin and read.gtin and same_gtin(read.gtin, exp.gtin):
        return True
    if exp.gtin and read.text.isdigit() and same_gtin(read.text, exp.gtin):
        return True
    return _norm(read.text) == exp.text


@dataclass
class Score:
    images: int = 0
    read: int = 0
    misreads: int = 0
    negatives: int = 0
    negative_misreads: int = 0
    seconds: float = 0.0
    by_group: dict[str, list[int]] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.read / self.images if self.images else 0.0


def score_barcodes(
    decode: Callable[[Any], list[Any]],
    samples: list[Sample],
    negatives: list[tuple[str, Any]] | None = None,
    *,
    grey_of: Callable[[Path], Any] | None = None,
) -> Score:
    """``decode(grey image) -> [Barcode]``; ``negatives``: (name, grey image) with no code."""
    import time

    import cv2

    load = grey_of or (lambda p: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))
    s = Score()
    for sample in samples:
        grey = load(sample.path)
        if grey is None:
            continue
        exp = expected_of(sample.expected)
        start = time.process_time()
        reads = decode(grey)
        s.seconds += time.process_time() - start
        ok = any(read_matches(r, exp) for r in reads)
        s.images += 1
        s.read += ok
        s.misreads += sum(not read_matches(r, exp) for r in reads)
        g = s.by_group.setdefault(sample.group, [0, 0])
        g[0] += 1
        g[1] += ok
        if not ok:
            s.missed.append(f"{sample.group}/{sample.path.name}")
    for _name, grey in negatives or []:
        s.negatives += 1
        s.negative_misreads += len(decode(grey))
    return s


def code_free_images(samples: list[Sample], limit: int = 60) -> list[tuple[str, Any]]:
    """Real photos without a code: each photo of ``samples`` with its code(s) painted over (the
    quadrilateral zxing-cpp finds, grown by a third, filled with the photo's median grey), plus
    matplotlib's sample photograph. Backgrounds, packaging print and light are real; only the
    code is gone."""
    import cv2
    import matplotlib
    import numpy as np
    import zxingcpp

    out: list[tuple[str, Any]] = []
    sample_photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if sample_photo.is_file():
        out.append(("grace_hopper.jpg", cv2.imread(str(sample_photo), cv2.IMREAD_GRAYSCALE)))
    for sample in samples:
        if len(out) >= limit:
            break
        grey = cv2.imread(str(sample.path), cv2.IMREAD_GRAYSCALE)
        if grey is None or min(grey.shape) < 64:
            continue
        found = zxingcpp.read_barcodes(grey, try_downscale=True)
        if not found:
            continue
        masked = grey.copy()
        fill = int(np.median(grey))
        for r in found:
            p = r.position
            pts = np.array(
                [
                    (p.top_left.x, p.top_left.y),
                    (p.top_right.x, p.top_right.y),
                    (p.bottom_right.x, p.bottom_right.y),
                    (p.bottom_left.x, p.bottom_left.y),
                ],
                dtype=np.float32,
            )
            centre = pts.mean(axis=0)
            spread = pts - centre
            # grow by a third, and at least 40 px across (a 1D code's quad is a line)
            grown = centre + spread * 1.35
            x0, y0 = grown.min(axis=0) - 20
            x1, y1 = grown.max(axis=0) + 20
            w = x1 - x0
            # 1D symbols: zxing-cpp's quad spans the bars, not their height; cover both
            pad_y = max(0.0, 0.6 * w - (y1 - y0)) / 2
            cv2.rectangle(
                masked,
                (int(x0), int(y0 - pad_y)),
                (int(x1), int(y1 + pad_y)),
                fill,
                thickness=-1,
            )
        if not zxingcpp.read_barcodes(masked, try_downscale=True):
            out.append((f"{sample.group}/{sample.path.name} (code painted over)", masked))
    return out


#: How a phone photo goes wrong, applied to each real photo (the strategy is chosen on these,
#: not image by image): tilted, out of focus, small and compressed, dim and noisy, large and
#: soft, seen at an angle.
DEGRADATIONS = ("tilted", "blurred", "small_jpeg", "dim_noisy", "large_soft", "perspective")


def degrade(grey: Any, kind: str, seed: int = 0) -> Any:
    import cv2
    import numpy as np

    h, w = grey.shape[:2]
    fill = int(np.median(grey))
    if kind == "tilted":
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 25, 1.0)
        c, s = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(h * s + w * c), int(h * c + w * s)
        m[0, 2] += nw / 2 - w / 2
        m[1, 2] += nh / 2 - h / 2
        return cv2.warpAffine(grey, m, (nw, nh), borderValue=fill)
    if kind == "blurred":
        return cv2.GaussianBlur(grey, (0, 0), 1.6)
    if kind == "small_jpeg":
        small = cv2.resize(grey, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        _ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 35])
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if kind == "dim_noisy":
        rng = np.random.default_rng(seed)
        x = grey.astype(np.float32) * 0.35 + 60 + rng.normal(0, 6, grey.shape)
        return np.clip(x, 0, 255).astype(np.uint8)
    if kind == "large_soft":
        big = cv2.resize(grey, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
        return cv2.GaussianBlur(big, (0, 0), 3.5)
    if kind == "perspective":
        src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
        dst = np.array([[w * 0.12, h * 0.05], [w * 0.9, 0], [w, h], [0, h * 0.9]], dtype=np.float32)
        m = cv2.getPerspectiveTransform(src, dst)
        return cv2.warpPerspective(grey, m, (w, h), borderValue=fill)
    raise ValueError(f"unknown degradation {kind!r}")


def score_degraded(decode: Callable[[Any], list[Any]], samples: list[Sample]) -> Score:
    """Every photo under every degradation, as one score (groups are the degradations)."""
    import cv2

    total = Score()
    for kind in DEGRADATIONS:

        def load(p: Path, k: str = kind) -> Any:
            return degrade(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), k)

        s = score_barcodes(decode, samples, grey_of=load)
        total.images += s.images
        total.read += s.read
        total.misreads += s.misreads
        total.seconds += s.seconds
        total.by_group[kind] = [s.images, s.read]
    return total


# -- GPS -----------------------------------------------------------------------------------------


def nmea_logs(root: Path = NMEA) -> list[Path]:
    return sorted(root.glob("*.log")) if root.is_dir() else []


def gpsd_positions(chk: Path) -> set[tuple[float, float]]:
    """The distinct positions (1e-5 degrees) gpsd reports with a 2D or 3D fix."""
    out = set()
    for line in chk.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("class") == "TPV" and r.get("mode", 0) >= 2 and "lat" in r:
                out.add((round(r["lat"], 5), round(r["lon"], 5)))
    return out


@dataclass
class GpsScore:
    true_fixes: int = 0
    false_fixes: int = 0
    missed: int = 0
    crashes: int = 0
    per_log: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        n = self.true_fixes + self.false_fixes
        return self.true_fixes / n if n else 0.0

    @property
    def recall(self) -> float:
        n = self.true_fixes + self.missed
        return self.true_fixes / n if n else 0.0


def score_gps(
    positions: Callable[[Path], Iterator[tuple[float, float]]], logs: list[Path]
) -> GpsScore:
    """``positions(log) -> (lat, lon) of every fix``, scored against ``expected/LOG.chk``."""
    s = GpsScore()
    for log in logs:
        expected = gpsd_positions(log.parent / "expected" / f"{log.name}.chk")
        try:
            got = {(round(lat, 5), round(lon, 5)) for lat, lon in positions(log)}
        except Exception:  # a crash is scored, not raised: the naive baseline may crash
            s.crashes += 1
            got = set()
        tp, fp, fn = len(got & expected), len(got - expected), len(expected - got)
        s.true_fixes, s.false_fixes, s.missed = s.true_fixes + tp, s.false_fixes + fp, s.missed + fn
        s.per_log[log.name] = (tp, fp, fn)
    return s
