"""Barcode decoding: only where something moved, at a bounded rate, with pyzbar or zxing-cpp.

Both backends sit behind :class:`BarcodeBackend` and return the same :class:`Barcode` records
(symbology, text, position in full-frame pixels). Decoding is restricted to the retail formats a
cart sees (EAN-13, UPC-A, EAN-8, UPC-E, Code 128): restricting formats never lost a code in our
probes and makes decoding several times faster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from capsight_edge.errors import CapsightError

log = logging.getLogger("capsight.camera.barcodes")

RETAIL_FORMATS = ("EAN-13", "UPC-A", "EAN-8", "UPC-E", "Code128")


@dataclass(frozen=True)
class Barcode:
    symbology: str
    text: str
    bbox: tuple[int, int, int, int]  # x, y, w, h in full-frame pixels
    backend: str
    #: False for a read by a lenient pass that has not been seen again yet (see BarcodeDetector)
    confirmed: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Decoded = tuple[str, str, tuple[int, int, int, int], bool]


class BarcodeBackend(Protocol):
    name: str

    def decode(self, grey: Any) -> list[Decoded]:
        """(symbology, text, bbox, sure) of each code in a grey uint8 image; ``sure`` is False
        for reads of a lenient pass, which misreads blurred bars now and then."""
        ...


class ZxingBackend:
    name = "zxing-cpp"

    def __init__(self) -> None:
        import zxingcpp

        f = zxingcpp.BarcodeFormat
        self._zx = zxingcpp
        self._formats: Any = [f.EAN13, f.UPCA, f.EAN8, f.UPCE, f.Code128]
        self._verifier: PyzbarBackend | None = None
        try:
            self._verifier = PyzbarBackend()
        except ImportError:  # no libzbar: lenient reads then need a second sighting
            self._verifier = None
        self._names = {
            f.EAN13: "EAN-13",
            f.UPCA: "UPC-A",
            f.EAN8: "EAN-8",
            f.UPCE: "UPC-E",
            f.Code128: "Code128",
        }

    def decode(self, grey: Any) -> list[Decoded]:
        # The local-average binariser copes with uneven light; a fixed threshold reads blurred
        # bars it misses, but now and then misreads one. So the lenient pass runs only when the
        # strict one found nothing, and its reads count as sure only when pyzbar, a decoder
        # with another algorithm, reads the same text in the same place.
        results = self._zx.read_barcodes(grey, formats=self._formats, try_downscale=False)
        sure = bool(results)
        if not results:
            results = self._zx.read_barcodes(
                grey,
                formats=self._formats,
                try_downscale=False,
                binarizer=self._zx.Binarizer.FixedThreshold,
            )
        out: list[Decoded] = []
        for r in results:
            decoded = self._record(r)
            if not sure:
                verdict = self._verify(grey, decoded)
                if verdict is False:
                    continue  # the other decoder reads something else there: a misread
                decoded = (*decoded[:3], bool(verdict))
            out.append(decoded)
        return out

    def _verify(self, grey: Any, d: Decoded) -> bool | None:
        """True: pyzbar reads the same text there; False: it reads nothing or another text;
        None: no pyzbar here to ask."""
        if self._verifier is None:
            return None
        x, y, w, h = d[2]
        m = 24
        crop = grey[max(0, y - m) : y + h + m, max(0, x - m) : x + w + m]
        return any(v[1] == d[1] for v in self._verifier.decode(crop))

    def _record(self, r: Any) -> Decoded:
        p = r.position
        xs = [p.top_left.x, p.top_right.x, p.bottom_left.x, p.bottom_right.x]
        ys = [p.top_left.y, p.top_right.y, p.bottom_left.y, p.bottom_right.y]
        sym = self._names.get(r.format, str(r.format))
        text = r.text
        if sym == "EAN-13" and len(text) == 13 and text[0] == "0":
            sym, text = "UPC-A", text[1:]  # the same symbol; report it the retail way
        bbox = (min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)
        return (sym, text, bbox, True)


class PyzbarBackend:
    name = "pyzbar"

    def __init__(self) -> None:
        from pyzbar import pyzbar

        z = pyzbar.ZBarSymbol
        self._zbar = pyzbar
        self._symbols = [z.EAN13, z.UPCA, z.EAN8, z.UPCE, z.CODE128]
        self._names = {
            "EAN13": "EAN-13",
            "UPCA": "UPC-A",
            "EAN8": "EAN-8",
            "UPCE": "UPC-E",
            "CODE128": "Code128",
        }

    def decode(self, grey: Any) -> list[Decoded]:
        out: list[Decoded] = []
        for r in self._zbar.decode(grey, symbols=self._symbols):
            sym = self._names.get(r.type, r.type)
            text = r.data.decode("ascii", "replace")
            if sym == "EAN-13" and len(text) == 13 and text[0] == "0":
                sym, text = "UPC-A", text[1:]
            x, y, w, h = r.rect
            out.append((sym, text, (x, y, max(w, 1), max(h, 1)), True))
        return out


BACKENDS = {"zxing-cpp": ZxingBackend, "pyzbar": PyzbarBackend}
#: Chosen by measurement (benchmarks/bench_camera.py, README "Camera, barcodes and triggers"):
#: on the Collector's path pyzbar read 25 of 60 benchmark clips with no misread, zxing-cpp 19
#: with one, at 1.9 vs 0.9 ms per frame, both far inside the CPU budget: reading the code decides
#: whether an item counts as scanned, so the decode rate wins. Without libzbar, zxing-cpp.
DEFAULT_BACKEND = "pyzbar"
FALLBACK_BACKEND = "zxing-cpp"


class BarcodeBackendUnavailable(CapsightError):
    """The backend's library (or, for pyzbar, the system's libzbar) is not installed."""


def make_backend(name: str | None = None) -> BarcodeBackend:
    """The named backend, or (``None``) the default, falling back to zxing-cpp with a logged
    reason when libzbar is missing."""
    if name is None:
        try:
            return make_backend(DEFAULT_BACKEND)
        except BarcodeBackendUnavailable as exc:
            log.warning("%s; using %s", exc, FALLBACK_BACKEND)
            return make_backend(FALLBACK_BACKEND)
    if name not in BACKENDS:
        raise BarcodeBackendUnavailable(
            f"unknown barcode backend {name!r} (known: {', '.join(BACKENDS)})"
        )
    try:
        backend: BarcodeBackend = BACKENDS[name]()  # type: ignore[assignment]
        return backend
    except ImportError as exc:
        hint = " (apt-get install libzbar0)" if name == "pyzbar" else ""
        raise BarcodeBackendUnavailable(f"barcode backend {name} unavailable: {exc}{hint}") from exc


def to_grey(image: Any) -> Any:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


def merge_boxes(
    boxes: list[tuple[int, int, int, int]],
    margin: int,
    width: int,
    height: int,
) -> list[tuple[int, int, int, int]]:
    """Grow each box by ``margin``, clip to the frame, merge boxes that overlap."""
    grown = []
    for x, y, w, h in boxes:
        x0, y0 = max(0, x - margin), max(0, y - margin)
        x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
        if x1 > x0 and y1 > y0:
            grown.append([x0, y0, x1, y1])
    merged = True
    while merged:
        merged = False
        for i in range(len(grown)):
            for j in range(i + 1, len(grown)):
                a, b = grown[i], grown[j]
                if a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]:
                    grown[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del grown[j]
                    merged = True
                    break
            if merged:
                break
    return [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in grown]


class BarcodeDetector:
    """Decodes inside motion regions (grown by ``margin_px``), at most ``max_rate_hz`` times a
    second and over at most ``max_roi_fraction`` of the frame per pass.

    A read the backend is not sure of counts only once the same code is read again within
    ``confirm_s``: a lenient binariser reads blurred codes the strict one misses, and now and
    then misreads one; a misread rarely repeats, a real code in a shopper's hand does.
    """

    def __init__(
        self,
        backend: str | BarcodeBackend | None = None,
        *,
        max_rate_hz: float = 10.0,
        margin_px: int = 48,
        max_roi_fraction: float = 0.5,
        confirm_s: float = 1.5,
    ) -> None:
        self.backend = (
            make_backend(backend) if backend is None or isinstance(backend, str) else backend
        )
        self.min_interval_ns = int(1e9 / max_rate_hz) if max_rate_hz > 0 else 0
        self.margin_px = margin_px
        self.max_roi_fraction = max_roi_fraction
        self._last_ns: int | None = None
        self.confirm_ns = int(confirm_s * 1e9)
        self._pending: dict[tuple[str, str], int] = {}
        self.unconfirmed = 0
        self.passes = 0
        self.rate_limited = 0
        self.decode_s = 0.0

    def due(self, t_ns: int) -> bool:
        return self._last_ns is None or t_ns - self._last_ns >= self.min_interval_ns

    def decode_regions(
        self, image: Any, regions: list[tuple[int, int, int, int]], t_ns: int
    ) -> list[Barcode]:
        """Decode inside ``regions`` (full-frame pixels); [] when rate-limited or nothing
        moved."""
        if not regions:
            return []
        if not self.due(t_ns):
            self.rate_limited += 1
            return []
        self._last_ns = t_ns
        h, w = image.shape[:2]
        budget = self.max_roi_fraction * w * h
        found: dict[tuple[str, str], Barcode] = {}
        start = time.perf_counter()
        for x, y, rw, rh in merge_boxes(regions, self.margin_px, w, h):
            if rw * rh > budget:
                continue  # a huge region is a global change, not a product held up
            budget -= rw * rh
            crop = to_grey(image[y : y + rh, x : x + rw])
            for sym, text, (bx, by, bw, bh), sure in self.backend.decode(crop):
                key = (sym, text)
                seen = self._pending.get(key)
                if not sure and (seen is None or t_ns - seen > self.confirm_ns):
                    self._pending[key] = t_ns
                    self.unconfirmed += 1
                    continue
                found.setdefault(
                    key, Barcode(sym, text, (bx + x, by + y, bw, bh), self.backend.name)
                )
        for key, seen in list(self._pending.items()):
            if t_ns - seen > self.confirm_ns:
                del self._pending[key]
        self.decode_s += time.perf_counter() - start
        self.passes += 1
        return list(found.values())

    def decode_full(self, image: Any) -> list[Barcode]:
        """Decode the whole frame (no motion gating, no rate limit): for files and baselines."""
        start = time.perf_counter()
        out = [
            Barcode(sym, text, bbox, self.backend.name, confirmed=sure)
            for sym, text, bbox, sure in self.backend.decode(to_grey(image))
        ]
        self.decode_s += time.perf_counter() - start
        return out
