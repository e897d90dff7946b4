"""Barcode decoding: every retail code a shopper holds up, one identity per read.

Symbologies: EAN-13/8, UPC-A/E (with EAN-2/5 add-ons), Code 128 (GS1-128), GS1 DataBar (omni,
stacked, limited, expanded), QR and Data Matrix (GS1 element strings and GS1 Digital Link URIs
among them); the profile's ``barcode_formats`` narrows the list. Every read carries its
symbology, its raw text and, for GS1 codes, the GTIN-14 and the application identifiers
(:mod:`capsight_edge.camera.gs1`). A read whose check digit (or GS1 structure) is wrong is
dropped and counted, never reported.

Decoders sit behind :class:`BarcodeBackend`: zxing-cpp, pyzbar, and the default, a cascade
chosen by measurement on real photos (benchmark ``barcodes_real``): zxing-cpp first, pyzbar
when zxing-cpp read nothing, then image preparation passes while the time budget allows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from capsight_edge.camera.gs1 import ALL_FORMATS, EAN_UPC, GS1Error, identify
from capsight_edge.errors import CapsightError

log = logging.getLogger("capsight.camera.barcodes")

#: The 1D retail formats (the lenient second pass and the pyzbar verifier apply to these).
RETAIL_FORMATS = (*EAN_UPC, "Code128")
FORMATS = ALL_FORMATS


@dataclass(frozen=True)
class Barcode:
    symbology: str
    text: str
    bbox: tuple[int, int, int, int]  # x, y, w, h in full-frame pixels
    backend: str
    #: False for a read by a lenient pass that has not been seen again yet (see BarcodeDetector)
    confirmed: bool = True
    #: GTIN-14 (check digit verified) for GS1 codes, else None
    gtin: str | None = None
    #: GS1 application identifiers (AI -> value) of a GS1 element string or Digital Link
    ais: dict[str, str] = field(default_factory=dict)
    #: EAN-2/EAN-5 add-on digits printed beside an EAN/UPC
    addon: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        """What identifies the item: the GTIN when there is one, else the text."""
        return self.gtin or self.text


@dataclass(frozen=True)
class Decoded:
    symbology: str
    text: str
    bbox: tuple[int, int, int, int]
    #: False for reads of a lenient pass, which misreads blurred bars now and then
    sure: bool = True
    #: the decoder saw GS1 content (FNC1 in first position)
    gs1: bool = False
    addon: str | None = None


class BarcodeBackend(Protocol):
    name: str
    #: reads dropped because a check digit or a GS1 structure was wrong
    rejected: int

    def decode(self, grey: Any) -> list[Decoded]:
        """Each code in a grey uint8 image."""
        ...


_ZX_NAMES = {
    "EAN-13": "EAN-13",
    "EAN-8": "EAN-8",
    "UPC-A": "UPC-A",
    "UPC-E": "UPC-E",
    "Code 128": "Code128",
    "DataBar": "DataBar",
    "DataBar Omni": "DataBar",
    "DataBar Stacked": "DataBar",
    "DataBar Stacked Omni": "DataBar",
    "DataBar Limited": "DataBarLimited",
    "DataBar Expanded": "DataBarExpanded",
    "DataBar Expanded Stacked": "DataBarExpanded",
    "QR Code": "QRCode",
    "Micro QR Code": "QRCode",
    "Data Matrix": "DataMatrix",
}


def _check_formats(formats: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    chosen = tuple(formats) if formats else FORMATS
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise BarcodeBackendUnavailable(
            f"unknown barcode format {unknown[0]!r} (known: {', '.join(FORMATS)})"
        )
    return chosen


class ZxingBackend:
    name = "zxing-cpp"

    def __init__(self, formats: tuple[str, ...] | list[str] | None = None) -> None:
        import zxingcpp

        f = zxingcpp.BarcodeFormat
        self.formats = _check_formats(formats)
        self._zx = zxingcpp
        want = {
            "EAN-13": [f.EAN13],
            "UPC-A": [f.UPCA],
            "EAN-8": [f.EAN8],
            "UPC-E": [f.UPCE],
            "Code128": [f.Code128],
            "DataBar": [f.DataBarOmni, f.DataBarStk, f.DataBarStkOmni],
            "DataBarLimited": [f.DataBarLtd],
            "DataBarExpanded": [f.DataBarExp, f.DataBarExpStk],
            "QRCode": [f.QRCode, f.MicroQRCode],
            "DataMatrix": [f.DataMatrix],
        }
        self._formats: Any = [z for name in self.formats for z in want[name]]
        retail = [z for name in self.formats if name in RETAIL_FORMATS for z in want[name]]
        self._retail: Any = retail
        self._verifier: PyzbarBackend | None = None
        try:
            self._verifier = PyzbarBackend(RETAIL_FORMATS)
        except ImportError:  # no libzbar: lenient reads then need a second sighting
            self._verifier = None
        self.rejected = 0

    def decode(self, grey: Any, *, lenient: bool = True, downscale: bool = False) -> list[Decoded]:
        # The local-average binariser copes with uneven light; a fixed threshold reads blurred
        # bars it misses, but now and then misreads one. So the lenient pass runs only when the
        # strict one found nothing, and only for 1D retail codes; its reads count as sure only
        # when pyzbar, a decoder with another algorithm, reads the same text in the same place.
        results = self._read(grey, self._formats, try_downscale=downscale)
        sure = bool(results)
        if not results and lenient and self._retail:
            results = self._read(
                grey,
                self._retail,
                try_downscale=False,
                binarizer=self._zx.Binarizer.FixedThreshold,
            )
        out: list[Decoded] = []
        records = [d for d in (self._record(r) for r in results) if d is not None]
        with_addon = {(d.symbology, d.text) for d in records if d.addon}
        for decoded in records:
            if not decoded.addon and (decoded.symbology, decoded.text) in with_addon:
                continue  # the same code read again without its add-on
            if not sure:
                verdict = self._verify(grey, decoded)
                if verdict is False:
                    continue  # the other decoder reads something else there: a misread
                decoded = replace(decoded, sure=bool(verdict))
            out.append(decoded)
        return out

    def _read(self, grey: Any, formats: Any, *, try_downscale: bool, **kw: Any) -> list[Any]:
        return list(
            self._zx.read_barcodes(
                grey,
                formats=formats,
                try_downscale=try_downscale,
                text_mode=self._zx.TextMode.Plain,
                ean_add_on_symbol=self._zx.EanAddOnSymbol.Read,
                **kw,
            )
        )

    def _verify(self, grey: Any, d: Decoded) -> bool | None:
        """True: pyzbar reads the same text there; False: it reads nothing or another text;
        None: no pyzbar here to ask."""
        if self._verifier is None:
            return None
        x, y, w, h = d.bbox
        m = 24
        crop = grey[max(0, y - m) : y + h + m, max(0, x - m) : x + w + m]
        return any(v.text == d.text for v in self._verifier.decode(crop))

    def _record(self, r: Any) -> Decoded | None:
        sym = _ZX_NAMES.get(str(r.format))
        if sym is None:
            return None
        p = r.position
        xs = [p.top_left.x, p.top_right.x, p.bottom_left.x, p.bottom_right.x]
        ys = [p.top_left.y, p.top_right.y, p.bottom_left.y, p.bottom_right.y]
        text = r.text
        addon = None
        extra = r.extra if isinstance(r.extra, dict) else {}
        if sym in EAN_UPC:
            # An add-on is part of the read only when zxing-cpp put it in the text (]E3); a
            # candidate it did not confirm (]E0 with EanAddOn set) misreads too often.
            candidate = extra.get("EanAddOn") or ""
            if candidate and r.symbology_identifier == "]E3" and text.endswith(candidate):
                text, addon = text[: -len(candidate)], candidate
            if sym == "UPC-E" and extra.get("UPCE"):
                text = extra["UPCE"]  # the 8 digits printed; gs1.identify expands them
        if sym == "EAN-13" and len(text) == 13 and text[0] == "0":
            sym, text = "UPC-A", text[1:]  # the same symbol; report it the retail way
        gs1 = str(r.content_type).endswith("GS1") or sym in ("DataBar", "DataBarLimited")
        bbox = (min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)
        return Decoded(sym, text, bbox, True, gs1, addon)


class PyzbarBackend:
    name = "pyzbar"

    def __init__(self, formats: tuple[str, ...] | list[str] | None = None) -> None:
        from pyzbar import pyzbar

        z = pyzbar.ZBarSymbol
        self.formats = _check_formats(formats)
        self._zbar = pyzbar
        want = {
            "EAN-13": [z.EAN13],
            "UPC-A": [z.UPCA],
            "EAN-8": [z.EAN8],
            "UPC-E": [z.UPCE],
            "Code128": [z.CODE128],
            "DataBar": [z.DATABAR],
            "DataBarExpanded": [z.DATABAR_EXP],
            "QRCode": [z.QRCODE],
        }  # zbar reads no Data Matrix and no DataBar Limited
        self._symbols = [s for name in self.formats for s in want.get(name, [])]
        if any(name in EAN_UPC for name in self.formats):
            self._symbols += [z.EAN5, z.EAN2]
        self._names = {
            "EAN13": "EAN-13",
            "UPCA": "UPC-A",
            "EAN8": "EAN-8",
            "UPCE": "UPC-E",
            "CODE128": "Code128",
            "DATABAR": "DataBar",
            "DATABAR_EXP": "DataBarExpanded",
            "QRCODE": "QRCode",
        }
        self.rejected = 0

    def decode(self, grey: Any) -> list[Decoded]:
        if not self._symbols:
            return []
        found = self._zbar.decode(grey, symbols=self._symbols)
        addons = [r for r in found if r.type in ("EAN5", "EAN2")]
        out: list[Decoded] = []
        for r in found:
            sym = self._names.get(r.type)
            if sym is None:
                continue
            text = r.data.decode("utf-8", "replace")
            if sym == "EAN-13" and len(text) == 13 and text[0] == "0":
                sym, text = "UPC-A", text[1:]
            x, y, w, h = r.rect
            addon = _addon_beside((x, y, w, h), addons) if sym in EAN_UPC else None
            gs1 = sym in ("DataBar", "DataBarExpanded")
            out.append(Decoded(sym, text, (x, y, max(w, 1), max(h, 1)), True, gs1, addon))
        return out


def _addon_beside(box: tuple[int, int, int, int], addons: list[Any]) -> str | None:
    """The EAN-2/5 add-on zbar read just right of (or left of, when upside down) a code."""
    x, y, w, h = box
    for a in addons:
        ax, ay, aw, ah = a.rect
        gap = min(abs(ax - (x + w)), abs(x - (ax + aw)))
        if gap <= max(w, h) // 2 and ay < y + h and y < ay + ah:
            return str(a.data.decode("ascii", "replace"))
    return None


#: The cascade's image preparations (see CascadeBackend); each earns its place in the
#: ``barcodes_real`` benchmark's ablation.
#: A 2x downscale was tried and dropped: it added no read (zxing-cpp's own downscaling in the
#: first pass already covers large photos).
PREPARATIONS = ("upscale", "sharpen", "otsu", "clahe", "rotate", "upscale+sharpen")
#: Symbologies with Reed-Solomon error correction: one read is a read. A 1D code has one check
#: digit (or a weak checksum) and blur or a prepared image can turn it into another valid code.
STRONG = ("QRCode", "DataMatrix")


class CascadeBackend:
    """zxing-cpp, then pyzbar, then both on prepared images, until a read is sure or the time
    budget is spent.

    A 2D code's read is sure at once (Reed-Solomon). A 1D code's read is sure when two passes
    (another decoder, or another preparation of the image) read the same text and no other
    text of that symbology was read as often: on degraded real photos a single 1D read from a
    prepared image was wrong now and then, an agreed one never (benchmark ``barcodes_real``).
    The preparations, each kept because dropping it loses reads there: a 2x upscale (small or
    low resolution codes), unsharp masking (blur), Otsu binarisation (dim, noisy light), CLAHE
    (uneven light), rotations by +-30 and +-15/45 degrees (tilted 1D codes), and the upscale
    sharpened.

    ``first_read_sure`` (the Collector's path, with ``prepare=False``): zxing-cpp's strict first
    pass is trusted alone, and any other read is handed over as not sure, for the
    :class:`BarcodeDetector` to confirm when it is read again within ``confirm_s``: agreement
    over time instead of more passes over one frame, which keeps the path cheap.
    """

    name = "cascade"

    def __init__(
        self,
        formats: tuple[str, ...] | list[str] | None = None,
        *,
        budget_ms: float = 1500.0,
        prepare: bool = True,
        first_read_sure: bool = False,
        preparations: tuple[str, ...] = PREPARATIONS,
    ) -> None:
        self.formats = _check_formats(formats)
        unknown = set(preparations) - set(PREPARATIONS)
        if unknown:
            raise ValueError(f"unknown preparation {sorted(unknown)[0]!r} (known: {PREPARATIONS})")
        self.preparations = preparations
        self.zxing = ZxingBackend(self.formats)
        self.pyzbar: PyzbarBackend | None
        try:
            self.pyzbar = PyzbarBackend(self.formats)
        except ImportError:
            self.pyzbar = None
        self.budget_s = budget_ms / 1000
        self.prepare = prepare
        self.first_read_sure = first_read_sure
        self.rejected = 0
        self.steps: dict[str, int] = {}
        self.passes = 0
        self.out_of_budget = 0

    def decode(self, grey: Any) -> list[Decoded]:
        start = time.perf_counter()
        seen: dict[tuple[str, str], int] = {}
        first: dict[tuple[str, str], Decoded] = {}
        for step, reads in self._passes(grey):
            self.passes += 1
            for d in reads:
                key = (d.symbology, d.text)
                first.setdefault(key, d)
            for key in {(d.symbology, d.text) for d in reads}:
                seen[key] = seen.get(key, 0) + 1
            trusted = self.first_read_sure and step == "zxing-cpp"
            if trusted and reads and all(d.sure for d in reads):
                return self._done(step, reads)
            sure = [first[k] for k in seen if self._sure(k, seen)]
            if sure:
                return self._done(step, sure)
            if time.perf_counter() - start > self.budget_s:
                self.out_of_budget += 1
                break
        if self.first_read_sure:
            # The Collector's path: hand over what was read once, as not sure; the detector
            # counts it when the same code is read again in the next passes (a code in a
            # shopper's hand stays in view, a misread rarely repeats).
            return [replace(first[k], sure=False) for k in seen]
        return []

    @staticmethod
    def _sure(key: tuple[str, str], seen: dict[tuple[str, str], int]) -> bool:
        sym = key[0]
        if sym in STRONG:
            return True
        n = seen[key]
        rival = max((m for k, m in seen.items() if k[0] == sym and k != key), default=0)
        return n >= 2 and n > rival

    def _done(self, step: str, out: list[Decoded]) -> list[Decoded]:
        self.steps[step] = self.steps.get(step, 0) + 1
        return out

    def _passes(self, grey: Any) -> Any:
        yield "zxing-cpp", self.zxing.decode(grey, downscale=True)
        if self.pyzbar is not None:
            yield "pyzbar", self.pyzbar.decode(grey)
        if not self.prepare:
            return
        for name, prepared, scale in _preparations(grey, self.preparations):
            yield name, [_rescale(d, scale) for d in self.zxing.decode(prepared, lenient=False)]
            if self.pyzbar is not None:
                yield name, [_rescale(d, scale) for d in self.pyzbar.decode(prepared)]


def _rescale(d: Decoded, scale: float) -> Decoded:
    if scale == 1.0:
        return d
    x, y, w, h = d.bbox
    box = (int(x / scale), int(y / scale), max(1, int(w / scale)), max(1, int(h / scale)))
    return replace(d, bbox=box)


def _rotated(grey: Any, angle: float) -> Any:
    import cv2
    import numpy as np

    h, w = grey.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * s + w * c), int(h * c + w * s)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(grey, m, (nw, nh), borderValue=int(np.median(grey)))


def _sharpened(grey: Any, sigma: float) -> Any:
    import cv2

    blurred = cv2.GaussianBlur(grey, (0, 0), sigma)
    return cv2.addWeighted(grey, 1.8, blurred, -0.8, 0)


def _preparations(grey: Any, use: tuple[str, ...] = PREPARATIONS) -> Any:
    """(name, image, scale) in the order they paid off. Rotated images keep scale 1 and their
    boxes are approximate (the rotated frame's); everything else maps back exactly."""
    import cv2

    h, w = grey.shape[:2]
    small = max(h, w) <= 1600
    up = cv2.resize(grey, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC) if small else None
    if up is not None and "upscale" in use:
        yield "upscale", up, 2.0
    if "sharpen" in use:
        yield "sharpen", _sharpened(grey, 2.0), 1.0
    if "otsu" in use:
        blurred = cv2.GaussianBlur(grey, (3, 3), 0)
        yield "otsu", cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1], 1.0
    if "clahe" in use:
        yield "clahe", cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey), 1.0
    if "rotate" in use:
        for angle in (30, -30):
            yield "rotate", _rotated(grey, angle), 1.0
    if up is not None and "upscale+sharpen" in use:
        yield "upscale+sharpen", _sharpened(up, 3.0), 2.0
    if "rotate" in use:
        for angle in (45, -45, 15, -15):
            yield "rotate", _rotated(grey, angle), 1.0


BACKENDS = {"cascade": CascadeBackend, "zxing-cpp": ZxingBackend, "pyzbar": PyzbarBackend}
#: Chosen by measurement (benchmark barcodes_real, README "Camera, barcodes and triggers").
DEFAULT_BACKEND = "cascade"
FALLBACK_BACKEND = "zxing-cpp"


class BarcodeBackendUnavailable(CapsightError):
    """The backend's library (or, for pyzbar, the system's libzbar) is not installed."""


def make_backend(
    name: str | None = None, formats: tuple[str, ...] | list[str] | None = None
) -> BarcodeBackend:
    """The named backend, or (``None``) the default, falling back to zxing-cpp with a logged
    reason when a library is missing."""
    if name is None:
        try:
            return make_backend(DEFAULT_BACKEND, formats)
        except BarcodeBackendUnavailable as exc:
            log.warning("%s; using %s", exc, FALLBACK_BACKEND)
            return make_backend(FALLBACK_BACKEND, formats)
    if name not in BACKENDS:
        raise BarcodeBackendUnavailable(
            f"unknown barcode backend {name!r} (known: {', '.join(BACKENDS)})"
        )
    try:
        backend: BarcodeBackend = BACKENDS[name](formats)  # type: ignore[assignment]
        return backend
    except ImportError as exc:
        hint = " (apt-get install libzbar0)" if name == "pyzbar" else ""
        raise BarcodeBackendUnavailable(f"barcode backend {name} unavailable: {exc}{hint}") from exc


def roi_backend(
    name: str | None = None, formats: tuple[str, ...] | list[str] | None = None
) -> BarcodeBackend:
    """The backend for the Collector's motion regions: ``auto``/``cascade`` is zxing-cpp's
    strict pass, then pyzbar, no image preparation, other reads confirmed over time."""
    if name in (None, "auto", "cascade"):
        try:
            return CascadeBackend(formats, prepare=False, first_read_sure=True)
        except ImportError as exc:
            log.warning("cascade unavailable (%s); using %s", exc, FALLBACK_BACKEND)
            return make_backend(FALLBACK_BACKEND, formats)
    return make_backend(name, formats)


def to_barcode(d: Decoded, backend: str, offset: tuple[int, int] = (0, 0)) -> Barcode | None:
    """The read with its identity, or None when a check digit or GS1 structure is wrong."""
    try:
        ident = identify(d.symbology, d.text, gs1=d.gs1, addon=d.addon)
    except GS1Error as exc:
        log.debug("dropped %s read %r: %s", d.symbology, d.text[:40], exc)
        return None
    x, y, w, h = d.bbox
    return Barcode(
        ident.symbology,
        d.text,
        (x + offset[0], y + offset[1], w, h),
        backend,
        d.sure,
        ident.gtin,
        ident.ais,
        ident.addon,
    )


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
        formats: tuple[str, ...] | list[str] | None = None,
        max_rate_hz: float = 10.0,
        margin_px: int = 48,
        max_roi_fraction: float = 0.5,
        confirm_s: float = 1.5,
    ) -> None:
        self.backend = (
            make_backend(backend, formats)
            if backend is None or isinstance(backend, str)
            else backend
        )
        self.rejected = 0  # reads dropped for a wrong check digit or GS1 structure
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
            for d in self.backend.decode(crop):
                code = to_barcode(d, self.backend.name, (x, y))
                if code is None:
                    self.rejected += 1
                    continue
                key = (code.symbology, code.text)
                seen = self._pending.get(key)
                if not d.sure and (seen is None or t_ns - seen > self.confirm_ns):
                    self._pending[key] = t_ns
                    self.unconfirmed += 1
                    continue
                found.setdefault(key, replace(code, confirmed=True))
        for key, seen in list(self._pending.items()):
            if t_ns - seen > self.confirm_ns:
                del self._pending[key]
        self.decode_s += time.perf_counter() - start
        self.passes += 1
        return list(found.values())

    def decode_full(self, image: Any) -> list[Barcode]:
        """Decode the whole frame (no motion gating, no rate limit): for files and baselines."""
        start = time.perf_counter()
        out = []
        for d in self.backend.decode(to_grey(image)):
            code = to_barcode(d, self.backend.name)
            if code is None:
                self.rejected += 1
            elif code not in out:
                out.append(code)
        self.decode_s += time.perf_counter() - start
        return out
