"""`capsight barcode scan`, `capsight trigger test`, `capsight trigger manual`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

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


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("barcode", help="barcode tools")
    bsub = b.add_subparsers(dest="barcode_command", metavar="ACTION", required=True)
    s = bsub.add_parser("scan", help="decode barcodes in image files (PNG, JPEG, WebP, ...)")
    s.add_argument("files", nargs="+", metavar="FILE", help="image files")
    s.add_argument(
        "--backend",
        choices=("zxing-cpp", "pyzbar"),
        default=None,
        help="decoder (default: pyzbar, chosen by measurement; zxing-cpp without libzbar)",
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


def cmd_scan(args: argparse.Namespace) -> int:
    import cv2

    from capsight_edge.camera.barcodes import BarcodeDetector

    detector = BarcodeDetector(args.backend) if args.backend else BarcodeDetector()
    status = EXIT_OK
    for name in args.files:
        start = time.perf_counter()
        image = cv2.imread(name, cv2.IMREAD_GRAYSCALE) if Path(name).is_file() else None
        if image is None:
            status = EXIT_FAIL
            reason = "file not found" if not Path(name).exists() else "not an image OpenCV can read"
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
                        )
                        for c in codes
                    ],
                    backend=detector.backend.name,
                    duration_s=round(ms / 1000, 5),
                )
            )
        else:
            found = (
                ", ".join(
                    f"{c.symbology} {c.text}" + ("" if c.confirmed else " (lenient read)")
                    for c in codes
                )
                or "no barcode"
            )
            print(f"{name}: {found} ({ms:.1f} ms, {detector.backend.name})")
    return status


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
