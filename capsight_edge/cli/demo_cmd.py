"""`capsight demo`: the simulated flywheel on the embedded defaults.

What runs today: the doctor on the simulated cart, then the simulated cart for ``--minutes``:
a shopper scans (or does not scan) products and puts them in, takes some out, waves over the
basket; the cart is bumped and walks the store. The MCU simulator sits on a pty behind the real
link driver, the IMU on a simulated I2C bus, the camera is the synthetic scene on the same clock.
The Collector (FrameBus, motion, barcodes, trigger engine) decides what to capture and the
Recorder (its own process, libx264 here) seals capture bundles. Item events, trigger decisions and
sealed bundles print as they happen; every channel also goes to one MCAP sensor log. The demo grows
as the journal, sink and uploader land.
"""

from __future__ import annotations

import argparse
import json
import queue
import time
from pathlib import Path
from typing import Any

from capsight_edge.cli.common import EXIT_FAIL, EXIT_OK, profile_from
from capsight_edge.doctor import doctor_ok, format_table, run_doctor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the simulated flywheel on hw_profiles/sim.toml")
    p.add_argument("--profile", metavar="FILE", help="profile (default: hw_profiles/sim.toml)")
    p.add_argument("--out", metavar="DIR", default="demo-out", help="where the demo writes")
    p.add_argument("--minutes", type=float, default=1.0, help="how long the cart runs")
    p.add_argument("--seed", type=int, default=7, help="scenario seed")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from capsight_edge.cart import Cart
    from capsight_edge.sensors.sensorlog import SensorLog, read_messages

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.data = str(out / "data")
    profile = profile_from(args)
    print(f"== capsight demo: profile {profile.name}, output in {out}/")
    print("-- step 1: doctor on the simulated cart")
    checks = run_doctor(profile)
    print(format_table(checks))
    if not doctor_ok(checks):
        print("demo stopped: a required device failed")
        return EXIT_FAIL

    duration = max(10.0, args.minutes * 60)
    print(
        f"\n-- step 2: the simulated cart for {duration:.0f} s: a shopper scans (or does not) "
        "and places products; sensors, camera, triggers and recorder run live"
    )
    log_path = out / "sensors.mcap"
    log = SensorLog(log_path, metadata={"device_id": profile.device.id, "profile": profile.name})
    lines: queue.Queue[str] = queue.Queue()

    def on_decision(d: Any) -> None:
        if d.kind in ("fire", "end"):
            on = ", ".join(k for k, v in d.signals.items() if v) or "-"
            what = (
                f"clip {(d.clip_end_ns - d.clip_start_ns) / 1e9:.1f} s"
                if d.kind == "end"
                else f"signals: {on}"
            )
            lines.put(f"trigger {d.kind:<4} {d.rule:<15} p{d.priority}  {what}")

    def on_sealed(path: Any, manifest: Any) -> None:
        v = manifest.video
        lines.put(
            f"bundle sealed {manifest.bundle_id} ({manifest.trigger.rule}, "
            f"{v.duration_s if v else 0:.1f} s, {v.encoder if v else '-'}, "
            f"{sum(f.bytes for f in manifest.files.values()) // 1024} KiB)"
        )

    cart = Cart(
        profile,
        seed=args.seed,
        sensor_log=log,
        on_sealed=on_sealed,
        decision_listener=on_decision,
        sim_duration_s=duration + 60,
    )
    start = time.monotonic()
    cart.start()
    hub, collector, recorder = cart.hub, cart.collector, cart.recorder
    assert collector is not None and recorder is not None
    print(
        f"  encoder {recorder.encoder_name}, pre-roll kept {recorder.mode}; bundles in "
        f"{cart.data_dir / 'bundles'}"
    )

    def drain(elapsed: float) -> None:
        while not lines.empty():
            print(f"  {elapsed:6.1f} s  {lines.get()}", flush=True)

    try:
        last_status = 0.0
        while (elapsed := time.monotonic() - start) < duration:
            try:
                ev = hub.events.get(timeout=0.1)
            except queue.Empty:
                ev = None
            if ev is not None and ev.kind in ("item_added", "item_removed"):
                print(
                    f"  {elapsed:6.1f} s  {ev.kind:<12}  {ev.delta_g:+8.1f} g   cart "
                    f"{ev.weight_g:8.1f} g",
                    flush=True,
                )
            elif ev is not None and ev.kind == "unstable_end" and ev.bump:
                print(
                    f"  {elapsed:6.1f} s  bump          peak {ev.peak_g:+7.1f} g, weight unchanged",
                    flush=True,
                )
            drain(elapsed)
            if elapsed - last_status >= 15:
                last_status = elapsed
                s = hub.snapshot()
                link = s["link"] or {}
                print(
                    f"  {elapsed:6.1f} s  [status] weight {s['stable_weight_g']} g, "
                    f"link {link.get('state')}, {link.get('frames')} frames, "
                    f"camera {collector.stats['frames']} frames, "
                    f"{collector.stats['barcodes']} barcode reads, "
                    f"{len(recorder.sealed)} bundles",
                    flush=True,
                )
        final = hub.snapshot()
        sim_elapsed = hub.sim.scenario_time() if hub.sim else duration
    finally:
        cart.stop()
        log.close()
    drain(time.monotonic() - start)
    scenario = cart.scenario
    truth = [e for e in scenario.items if e.settle_s <= sim_elapsed - 1.0] if scenario else []
    detected = [e for e in hub.event_history if e.kind in ("item_added", "item_removed")]
    decisions = [d for d in collector.engine.decisions if d.kind == "fire"]
    messages = read_messages(log_path)
    summary = {
        "seconds": round(duration, 1),
        "items_in_scenario": len(truth),
        "unscanned_in_scenario": sum(1 for e in truth if e.grams > 0 and not e.scanned),
        "item_events_detected": len(detected),
        "triggers_fired": {
            r: sum(1 for d in decisions if d.rule == r) for r in sorted({d.rule for d in decisions})
        },
        "camera_frames": collector.stats["frames"],
        "barcode_reads": collector.stats["barcodes"],
        "bundles_sealed": [str(p) for p in recorder.sealed],
        "bundles_failed": recorder.failed,
        "seal_delay_s": [round(x, 3) for x in recorder.seal_delays_s],
        "stable_weight_g": final["stable_weight_g"],
        "true_weight_g": round(sum(e.grams for e in truth), 1),
        "link": final["link"],
        "sensor_log": {
            "file": str(log_path),
            "bytes": log_path.stat().st_size,
            "messages": len(messages),
            "channels": sorted({m[0] for m in messages}),
        },
    }
    (out / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    print("\n-- summary")
    print(
        f"  item events: {len(detected)} detected, {len(truth)} in the scenario "
        f"({summary['unscanned_in_scenario']} put in unscanned)"
    )
    print(
        f"  triggers fired: {summary['triggers_fired']} "
        f"({summary['barcode_reads']} barcode reads in {summary['camera_frames']} frames)"
    )
    print(
        f"  bundles sealed: {len(recorder.sealed)} in {cart.data_dir / 'bundles'} "
        f"(clip.mp4 + sensors.mcap + manifest.json each), failed: {len(recorder.failed)}"
    )
    print(
        f"  cart weight: {summary['stable_weight_g']} g stable, {summary['true_weight_g']} g placed"
    )
    link = final["link"] or {}
    print(
        f"  MCU link: {link.get('frames')} frames, {link.get('lost_frames')} lost, "
        f"errors {link.get('errors')}, clock drift {link.get('clock_drift_ppm', 0):+.1f} ppm "
        f"(simulated crystal {profile.mcu.sim_crystal_ppm:+.0f} ppm)"
    )
    print(
        f"  sensor log: {log_path} ({summary['sensor_log']['bytes']} bytes, "
        f"{len(messages)} messages on {', '.join(summary['sensor_log']['channels'])})"
    )
    print(f"  written: {out / 'demo-summary.json'}")
    print(
        f"  journal: {cart.data_dir / 'journal.db'} (see `capsight status --data {cart.data_dir}`)"
    )
    print(
        "  not yet in the demo: uploading to the sink (the uploader is the next issue), "
        "pre-labelling, training"
    )
    return EXIT_OK if not recorder.failed else EXIT_FAIL
