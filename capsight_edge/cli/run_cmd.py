"""`capsight run`: the Collector in the foreground, until SIGINT, SIGTERM or ``--duration``."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

from capsight_edge.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    add_device_options,
    human_bytes,
    profile_from,
)
from capsight_edge.cli.upload_cmd import add_sink_options, with_sink
from capsight_edge.records import (
    BundleSealedRecord,
    RunStartedRecord,
    RunSummaryRecord,
    emit,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run the collector (sensors, camera, triggers, recorder) in the foreground"
    )
    add_device_options(p)
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds (0: until SIGINT/SIGTERM)",
    )
    add_sink_options(p)
    p.add_argument("--seed", type=int, default=0, help="scenario seed (simulated devices)")
    p.add_argument(
        "--preroll",
        choices=("auto", "raw", "encoded"),
        default="auto",
        help="how the pre-roll is kept (auto: raw on CPU encoders, encoded on hardware ones)",
    )
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from capsight_edge.cart import Cart

    profile = with_sink(profile_from(args), args)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def sealed(path: Any, manifest: Any) -> None:
        row = BundleSealedRecord(
            bundle_id=manifest.bundle_id,
            rule=manifest.trigger.rule,
            duration_s=manifest.video.duration_s if manifest.video else None,
            frames=manifest.video.frames if manifest.video else None,
            bytes=sum(f.bytes for f in manifest.files.values()),
            path=str(path),
            start_utc=manifest.start_utc,
        )
        if args.json:
            emit(row)
        else:
            print(
                f"sealed {row.bundle_id} ({row.rule}, {row.duration_s} s, "
                f"{human_bytes(row.bytes)})",
                flush=True,
            )

    cart = Cart(profile, seed=args.seed, preroll_mode=args.preroll, on_sealed=sealed)
    try:
        cart.start()
        assert cart.recorder is not None
        if args.json:
            emit(
                RunStartedRecord(
                    profile=profile.name,
                    data_dir=str(cart.data_dir),
                    encoder=cart.recorder.encoder_name or "",
                    preroll=cart.recorder.mode,
                    sink=profile.upload.sink_url or None,
                )
            )
        else:
            print(
                f"capsight run: profile {profile.name}, data {cart.data_dir}, encoder "
                f"{cart.recorder.encoder_name or '?'} (pre-roll {cart.recorder.mode}), "
                f"uploads {'to ' + profile.upload.sink_url if cart.uploads else 'off'}; "
                "Ctrl-C stops",
                flush=True,
            )
        start = time.monotonic()
        while not stop.is_set():
            if args.duration and time.monotonic() - start >= args.duration:
                break
            stop.wait(0.2)
    finally:
        cart.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    rec = cart.recorder
    summary = RunSummaryRecord(
        sealed=len(rec.sealed) if rec else 0,
        failed=list(rec.failed) if rec else [],
        seal_delay_s=[round(x, 3) for x in rec.seal_delays_s] if rec else [],
        upload=cart.uploader.status() if cart.uploader else None,
    )
    if args.json:
        emit(summary)
    else:
        print(
            f"stopped: {summary.sealed} bundles sealed"
            + (f", {len(summary.failed)} failed" if summary.failed else "")
            + (
                f"; {cart.uploader.stats.bundles_uploaded} uploaded ({cart.uploader.state})"
                if cart.uploader
                else ""
            )
        )
    return EXIT_OK if not summary.failed else EXIT_FAIL
