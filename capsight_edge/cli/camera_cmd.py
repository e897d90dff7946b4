"""`capsight barcode scan`, `capsight trigger test`, `capsight trigger manual`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from capsight_edge.camera.gs1 import ALL_FORMATS as FORMATS
from capsight_edge.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    add_device_options,
    profile_from,
)
from capsight_edge.records import (
    BarcodeRead,
    BarcodeScanRecord,
    ErrorRecord,
    TriggerDecisionRecord,
    TriggerSummaryRecord,
    emit,
)

#: Largest image `barcode scan` decodes (a 12 MP phone photo is 12,000,000; 20000x20000 is not)
MAX_PIXELS = 60_000_000


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("barcode", help="barcode tools")
    bsub = b.add_subparsers(dest="barcode_command", metavar="ACTION", required=True)
    s = bsub.add_parser("scan", help="decode barcodes in image files (PNG, JPEG, WebP, ...)")
    s.add_argument("files", nargs="+", metavar="FILE", help="image files")
    s.add_argument(
        "--backend",
        choices=("cascade", "zxing-cpp", "pyzbar"),
        default=None,
        help="decoder (default: cascade, chosen by measurement on real photos)",
    )
    s.add_argument(
        "--formats",
        default="",
        help=f"comma-separated symbologies to decode (default all: {','.join(FORMATS)})",
    )
    s.add_argument(
        "--budget-ms",
        type=float,
        default=1500.0,
        help="time the cascade may spend on one image before it gives up (default 1500)",
    )
    s.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"refuse images larger than this many pixels (default {MAX_PIXELS:,})",
    )
    s.add_argument("--json", action="store_true", help="one JSON record per file")
    s.set_defaults(handler=cmd_scan)

    t = sub.add_parser("trigger", help="trigger rules")
    tsub = t.add_subparsers(dest="trigger_command", metavar="ACTION", required=True)
    tt = tsub.add_parser(
        "test", help="run the camera and sensors and print every trigger decision live"
    )
    add_device_options(tt)
    tt.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)"
    )
    tt.add_argument("--seed", type=int, default=7, help="scenario seed (simulated devices)")
    tt.set_defaults(handler=cmd_trigger_test)
    tm = tsub.add_parser("manual", help="ask the running collector for a capture now")
    add_device_options(tm, json_output=False)
    tm.add_argument("--note", default="", help="a word about why (logged)")
    tm.set_defaults(handler=cmd_trigger_manual)


def _load_grey(name: str, max_pixels: int) -> tuple[Any, str]:
    """(grey image, "") or (None, why not). The size is read from the header first, so a
    huge image is refused before a byte of it is decoded."""
    import cv2
    from PIL import Image, UnidentifiedImageError

    path = Path(name)
    if not path.is_file():
        return None, "file not found" if not path.exists() else "not a file"
    Image.MAX_IMAGE_PIXELS = None  # only the header is read here; our own limit follows
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None, "not an image file (unknown format or damaged header)"
    if width * height > max_pixels:
        return None, (
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (--max-pixels)"
        )
    image = cv2.imread(name, cv2.IMREAD_GRAYSCALE)
    if image is None:
        return None, "image data cannot be decoded (truncated or damaged)"
    return image, ""


def cmd_scan(args: argparse.Namespace) -> int:
    from capsight_edge.camera.barcodes import BarcodeDetector, CascadeBackend

    formats = [f.strip() for f in args.formats.split(",") if f.strip()] or None
    unknown = [f for f in formats or [] if f not in FORMATS]
    if unknown:
        print(
            f"capsight: error: unknown format {unknown[0]!r} (known: {', '.join(FORMATS)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.backend in (None, "cascade"):
        detector = BarcodeDetector(CascadeBackend(formats, budget_ms=args.budget_ms))
    else:
        detector = BarcodeDetector(args.backend, formats=formats)
    status = EXIT_OK
    for name in args.files:
        start = time.perf_counter()
        image, reason = _load_grey(name, args.max_pixels)
        if image is None:
            status = EXIT_FAIL
            if args.json:
                emit(ErrorRecord(file=name, error=reason))
            else:
                print(f"{name}: error: {reason}", file=sys.stderr)
            continue
        codes = detector.decode_full(image)
        ms = (time.perf_counter() - start) * 1000
        if args.json:
            emit(
                BarcodeScanRecord(
                    file=name,
                    codes=[
                        BarcodeRead(
                            format=c.symbology,
                            text=c.text,
                            bbox=list(c.bbox),
                            confirmed=c.confirmed,
                            gtin=c.gtin,
                            ais=c.ais,
                            addon=c.addon,
                        )
                        for c in codes
                    ],
                    backend=detector.backend.name,
                    duration_s=round(ms / 1000, 5),
                    width=int(image.shape[1]),
                    height=int(image.shape[0]),
                )
            )
        else:
            found = ", ".join(_describe(c) for c in codes) or "no barcode"
            print(f"{name}: {found} ({ms:.1f} ms, {detector.backend.name})")
    return status


def _describe(c: Any) -> str:
    text = c.text if len(c.text) <= 60 else c.text[:57] + "..."
    out = f"{c.symbology} {text!r}" if not c.text.isdigit() else f"{c.symbology} {c.text}"
    if c.gtin:
        out += f" gtin {c.gtin}"
    if c.addon:
        out += f" add-on {c.addon}"
    extra = {k: v for k, v in c.ais.items() if k != "01"}
    if extra:
        out += " " + " ".join(f"({k}){v}" for k, v in extra.items())
    return out + ("" if c.confirmed else " (lenient read)")


def cmd_trigger_test(args: argparse.Namespace) -> int:
    from capsight_edge.cart import Cart

    profile = profile_from(args)
    start = time.monotonic_ns()

    def show(d: Any) -> None:
        if args.json:
            emit(TriggerDecisionRecord(**d.as_dict()))
            return
        on = ", ".join(k for k, v in d.signals.items() if v) or "-"
        extra = ""
        if d.kind in ("suppressed", "cancelled"):
            extra = f" ({d.reason})"
        elif d.kind == "fire":
            extra = f" clip from {(d.clip_start_ns - start) / 1e9:+.1f} s"
        elif d.kind == "end":
            extra = f" ({d.reason}; clip {(d.clip_end_ns - d.clip_start_ns) / 1e9:.1f} s)"
        print(
            f"{(d.t_ns - start) / 1e9:8.2f} s  {d.kind:<10} {d.rule:<16} p{d.priority}  "
            f"signals: {on}{extra}",
            flush=True,
        )

    cart = Cart(profile, seed=args.seed, record=False, decision_listener=show)
    if not args.json:
        print(
            f"starting the camera and sensors of {profile.name} (a few seconds); every trigger "
            "decision is printed as it happens, suppressed ones with their reason; Ctrl-C stops",
            flush=True,
        )
    try:
        cart.start()
        if not args.json:
            print("running: waiting for the first decision", flush=True)
        t0 = time.monotonic()
        while not args.duration or time.monotonic() - t0 < args.duration:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        cart.stop()
    assert cart.collector is not None
    collector = cart.collector
    s = collector.stats
    summary = TriggerSummaryRecord(
        frames=s["frames"],
        skipped=s["skipped"],
        barcodes=s["barcodes"],
        fired=s["decision_fire"],
        suppressed=s["decision_suppressed"],
        manual=s["manual"],
    )
    if args.json:
        emit(summary)
    else:
        print(
            f"frames {summary.frames} (skipped {summary.skipped}), barcodes "
            f"{summary.barcodes}, fired {summary.fired}, suppressed {summary.suppressed}"
        )
    return EXIT_OK


def cmd_trigger_manual(args: argparse.Namespace) -> int:
    from capsight_edge.collector import send_manual_trigger
    from capsight_edge.errors import FrameError

    profile = profile_from(args)
    try:
        send_manual_trigger(profile.storage.data_dir, args.note)
    except FrameError as exc:
        print(f"capsight: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("manual trigger sent")
    return EXIT_OK
