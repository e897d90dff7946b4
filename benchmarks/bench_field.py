"""Field accuracy on real data: ``barcodes_real`` (real photos of retail codes, DataBar, QR and
Data Matrix, with plain pyzbar, plain zxing-cpp and their union scored in the same run) and
``nmea_real`` (real receiver logs scored against gpsd's own answers, with a naive pynmea2 loop
in the same run). Scoring: :mod:`benchmarks.field_data`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.field_data import (
    BARCODES,
    DEGRADATIONS,
    barcode_samples,
    code_free_images,
    nmea_logs,
    score_barcodes,
    score_degraded,
    score_gps,
)
from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark
from capsight_edge.camera.barcodes import Barcode
from capsight_edge.camera.gs1 import GS1Error, identify

_ZX_SYMBOLOGY = {
    "EAN-13": "EAN-13",
    "EAN-8": "EAN-8",
    "UPC-A": "UPC-A",
    "UPC-E": "UPC-E",
    "Code 128": "Code128",
    "QR Code": "QRCode",
    "Micro QR Code": "QRCode",
    "Data Matrix": "DataMatrix",
}
_ZB_SYMBOLOGY = {
    "EAN13": "EAN-13",
    "EAN8": "EAN-8",
    "UPCA": "UPC-A",
    "UPCE": "UPC-E",
    "CODE128": "Code128",
    "QRCODE": "QRCode",
    "DATABAR": "DataBar",
    "DATABAR_EXP": "DataBarExpanded",
}


def _as_read(symbology: str, text: str, gs1: bool, backend: str) -> Barcode:
    """A library's read given the identity ours gets (the same GTIN rules for all), so the
    comparison is of decoding alone; a read whose identity fails stays, with no GTIN."""
    try:
        ident = identify(symbology, text, gs1=gs1)
        return Barcode(ident.symbology, text, (0, 0, 1, 1), backend, True, ident.gtin, ident.ais)
    except GS1Error:
        return Barcode(symbology, text, (0, 0, 1, 1), backend)


def plain_zxing() -> Callable[[Any], list[Barcode]]:
    """zxing-cpp as a new user calls it: every format, the library's defaults."""
    import zxingcpp

    def decode(grey: Any) -> list[Barcode]:
        out = []
        for r in zxingcpp.read_barcodes(grey, text_mode=zxingcpp.TextMode.Plain):
            fmt = str(r.format)
            sym = _ZX_SYMBOLOGY.get(fmt) or ("DataBar" if fmt.startswith("DataBar") else fmt)
            if fmt.startswith("DataBar Exp"):
                sym = "DataBarExpanded"
            gs1 = str(r.content_type).endswith("GS1")
            out.append(_as_read(sym, r.text, gs1, "zxing-cpp"))
        return out

    return decode


def plain_pyzbar() -> Callable[[Any], list[Barcode]]:
    """pyzbar as a new user calls it: ``decode(image)``, every symbology zbar knows (its
    EAN-2/5 add-on symbols left out: they are not codes of their own)."""
    from pyzbar import pyzbar

    def decode(grey: Any) -> list[Barcode]:
        out = []
        for r in pyzbar.decode(grey):
            if r.type in ("EAN2", "EAN5"):
                continue
            sym = _ZB_SYMBOLOGY.get(r.type, r.type)
            text = r.data.decode("utf-8", "replace")
            if sym == "EAN-13" and len(text) == 13 and text[0] == "0":
                sym = "UPC-A"
            out.append(_as_read(sym, text, sym.startswith("DataBar"), "pyzbar"))
        return out

    return decode


def plain_union() -> Callable[[Any], list[Barcode]]:
    """Both libraries on every image, every read of either kept."""
    zx, zb = plain_zxing(), plain_pyzbar()
    return lambda grey: zx(grey) + zb(grey)


@benchmark("barcodes_real")
def bench_barcodes_real(ctx: BenchContext) -> BenchResult:
    from capsight_edge.camera.barcodes import BarcodeDetector, CascadeBackend

    samples = barcode_samples()
    negatives = code_free_images(samples)
    res = BenchResult(
        "barcodes_real",
        f"{len(samples)} real photos and scans of retail codes (EAN/UPC with add-ons, UPC-E, "
        f"Code 128), GS1 DataBar, QR and Data Matrix from zxing-cpp's test corpus "
        f"({BARCODES.name}), plus {len(negatives)} code-free real images (those photos with "
        "the code painted over, and matplotlib's sample photograph); capsight's cascade vs "
        "plain pyzbar, plain zxing-cpp and their union, same images, same scoring",
    )
    cascade = CascadeBackend()
    runs: dict[str, Callable[[Any], list[Barcode]]] = {
        "capsight cascade": BarcodeDetector(cascade).decode_full,
        "plain zxing-cpp": plain_zxing(),
        "plain pyzbar": plain_pyzbar(),
        "plain union": plain_union(),
    }
    scores = {name: score_barcodes(fn, samples, negatives) for name, fn in runs.items()}
    for name, s in scores.items():
        res.metrics.append(Metric(f"{name}: recall", s.recall, "", target=""))
        res.metrics.append(
            Metric(f"{name}: misreads (photos + code-free)", s.misreads + s.negative_misreads, "")
        )
        res.metrics.append(Metric(f"{name}: CPU per image", 1000 * s.seconds / s.images, "ms"))
    ours = scores["capsight cascade"]
    best_name = max((n for n in scores if n != "capsight cascade"), key=lambda n: scores[n].read)
    best = scores[best_name]
    res.metrics.append(
        Metric(
            "cascade recall on real photos",
            ours.recall,
            "",
            best.recall,
            best_name,
            ">= 0.85 and > every plain decoder and their union",
            ours.recall >= 0.85 and ours.read > best.read,
        )
    )
    res.metrics.append(
        Metric(
            "cascade false positives (misreads on photos and code-free images)",
            ours.misreads + ours.negative_misreads,
            "reads",
            target="0",
            met=ours.misreads + ours.negative_misreads == 0,
        )
    )
    for group, (n, read) in sorted(ours.by_group.items()):
        res.metrics.append(Metric(f"cascade recall: {group} ({n} images)", read / n, ""))
    degraded = _degraded(ctx, res, samples)
    res.plots.append(_plot(ctx, scores, degraded))
    res.notes.append(
        "the cascade's last step that produced each sure read: "
        + ", ".join(f"{k} {v}" for k, v in sorted(cascade.steps.items()))
    )
    if ours.missed:
        res.notes.append("not read by the cascade: " + ", ".join(ours.missed[:20]))
    res.notes.append(
        "a read counts when it names the expected GTIN (leading zeros and UPC-E zero "
        "suppression aside) or the expected text; a wrong add-on makes it a misread; the "
        "plain libraries' reads get the same GTIN normalisation as ours"
    )
    return res


def _plot(ctx: BenchContext, scores: dict[str, Any], degraded: dict[str, Any]) -> str:
    """Recall of each decoder on the photos as they are and degraded, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [scores[n].recall for n in names], 0.4, label="real photos")
    ax.bar(
        [x + 0.2 for x in xs],
        [degraded[n].recall if n in degraded else 0 for n in names],
        0.4,
        label="the same photos degraded",
    )
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.85, color="grey", linewidth=0.8, linestyle="--")
    ax.legend(fontsize=8, loc="lower right")
    ours = scores["capsight cascade"]
    wrong = ours.misreads + ours.negative_misreads + degraded["capsight cascade"].misreads
    ax.set_title(
        f"barcodes_real: images whose code was read (cascade misreads: {wrong})", fontsize=9
    )
    fig.tight_layout()
    path = Path(ctx.out_dir) / "barcodes_real.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _degraded(ctx: BenchContext, res: BenchResult, samples: list[Any]) -> dict[str, Any]:
    """The same photos degraded the ways phone photos go wrong: how the strategy was chosen
    (not image by image), and an ablation that shows each image preparation still pays."""
    from capsight_edge.camera.barcodes import PREPARATIONS, BarcodeDetector, CascadeBackend

    subset = samples[::4] if ctx.quick else samples
    ours = score_degraded(BarcodeDetector(CascadeBackend()).decode_full, subset)
    union = score_degraded(plain_union(), subset)
    zx = score_degraded(plain_zxing(), subset)
    zb = score_degraded(plain_pyzbar(), subset)
    out = {
        "capsight cascade": ours,
        "plain zxing-cpp": zx,
        "plain pyzbar": zb,
        "plain union": union,
    }
    res.metrics += [
        Metric(
            f"degraded photos ({ours.images}): cascade recall",
            ours.recall,
            "",
            union.recall,
            "plain union",
            "> baseline",
            ours.read > union.read,
        ),
        Metric("degraded photos: plain zxing-cpp recall", zx.recall, ""),
        Metric("degraded photos: plain pyzbar recall", zb.recall, ""),
        Metric(
            "degraded photos: cascade misreads",
            ours.misreads,
            "reads",
            union.misreads,
            "plain union",
            "0",
            ours.misreads == 0,
        ),
    ]
    for kind, (_n, read) in ours.by_group.items():
        u = union.by_group[kind][1]
        res.metrics.append(
            Metric(f"degraded: {kind}: cascade vs union", read, "read", u, "plain union")
        )
    if ctx.quick:
        return out
    for step in PREPARATIONS:
        rest = tuple(p for p in PREPARATIONS if p != step)
        without = score_degraded(
            BarcodeDetector(CascadeBackend(preparations=rest)).decode_full, subset
        )
        res.metrics.append(
            Metric(
                f"ablation: reads lost without '{step}'",
                ours.read - without.read,
                "reads",
                target="> 0 (the step pays)",
                met=ours.read > without.read,
            )
        )
    res.notes.append(
        "degradations of each real photo: " + ", ".join(DEGRADATIONS) + " (benchmarks/"
        "field_data.py); the ablation drops one preparation at a time"
    )
    return out


def _naive_pynmea2(log: Path) -> Iterator[tuple[float, float]]:
    """What a first attempt does: pynmea2 on every line, a position from every GGA or RMC
    that has one (FIELD-NOTES: a no-fix sentence reads as 0.0)."""
    import pynmea2

    for raw in log.read_bytes().splitlines():
        line = raw.decode("ascii", "replace").strip()
        if not line.startswith("$"):
            continue
        try:
            msg = pynmea2.parse(line, check=True)
            if getattr(msg, "sentence_type", "") in ("GGA", "RMC") and msg.lat and msg.lon:
                yield float(msg.latitude), float(msg.longitude)
        except (pynmea2.ParseError, ValueError, TypeError, AttributeError):
            continue


def _ours(log: Path) -> Iterator[tuple[float, float]]:
    from capsight_edge.sensors.nmea import NmeaParser, parse_lines, read_log_lines

    parser = NmeaParser()
    for fix in parse_lines(read_log_lines(log, parser), parser):
        yield fix.lat, fix.lon


@benchmark("nmea_real")
def bench_nmea_real(ctx: BenchContext) -> BenchResult:
    logs = nmea_logs()
    res = BenchResult(
        "nmea_real",
        f"{len(logs)} real receiver logs from gpsd's regression suite scored against gpsd's "
        "own answers (distinct positions to 1e-5 degrees that gpsd reports with a fix); "
        "capsight's parser vs a naive pynmea2 loop, same logs, same scoring",
    )
    start = time.process_time()
    ours = score_gps(_ours, logs)
    ours_s = time.process_time() - start
    naive = score_gps(_naive_pynmea2, logs)
    res.metrics += [
        Metric(
            "precision vs gpsd",
            ours.precision,
            "",
            naive.precision,
            "naive pynmea2 loop",
            ">= 0.98",
            ours.precision >= 0.98,
        ),
        Metric(
            "recall vs gpsd",
            ours.recall,
            "",
            naive.recall,
            "naive pynmea2 loop",
            ">= 0.99",
            ours.recall >= 0.99,
        ),
        Metric("crashes", ours.crashes, "logs", target="0", met=ours.crashes == 0),
        Metric("positions gpsd reports", ours.true_fixes + ours.missed, "positions"),
        Metric("parse CPU for all logs", 1000 * ours_s, "ms"),
    ]
    for name, (tp, fp, fn) in ours.per_log.items():
        res.notes.append(f"{name}: {tp} found, {fp} false, {fn} missed")
    return res
