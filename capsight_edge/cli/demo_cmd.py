"""`capsight demo`: the simulated flywheel on the embedded defaults.

What runs today: the doctor on the simulated cart, then the simulated cart for ``--minutes``:
a shopper scans (or does not scan) products and puts them in, takes some out, waves over the
basket; the cart is bumped and walks the store. The MCU simulator sits on a pty behind the real
link driver, the IMU on a simulated I2C bus, the camera is the synthetic scene on the same clock.
The Collector (FrameBus, motion, barcodes, trigger engine) decides what to capture; item events
and trigger decisions print as they happen; every channel goes to one MCAP sensor log. The demo
grows as the recorder, journal, sink and uploader land.
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
    from capsight_edge.collector import Collector
    from capsight_edge.sensors.sensorlog import SensorLog, read_messages
    from capsight_edge.simcart import start_simulated_cart

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
        "and places products; sensors, camera and triggers run live"
    )
    log_path = out / "sensors.mcap"
    hub, source, scenario = start_simulated_cart(profile, args.seed, duration_s=duration + 30)
    log = SensorLog(log_path, metadata={"device_id": profile.device.id, "profile": profile.name})
    hub.log = log
    start = time.monotonic()
    start_ns = time.monotonic_ns()
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

    collector = Collector(
        profile, source, hub=hub, sensor_log=log, control_dir=profile.storage.data_dir
    )
    collector.add_listener(on_decision)
    try:
        with collector:
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
                        f"  {elapsed:6.1f} s  bump          peak {ev.peak_g:+7.1f} g, weight "
                        "unchanged",
                        flush=True,
                    )
                while not lines.empty():
                    print(f"  {elapsed:6.1f} s  {lines.get()}", flush=True)
                if elapsed - last_status >= 15:
                    last_status = elapsed
                    s = hub.snapshot()
                    link = s["link"] or {}
                    print(
                        f"  {elapsed:6.1f} s  [status] weight {s['stable_weight_g']} g, "
                        f"link {link.get('state')}, {link.get('frames')} frames, "
                        f"camera {collector.stats['frames']} frames, "
                        f"{collector.stats['barcodes']} barcode reads",
                        flush=True,
                    )
            final = hub.snapshot()
            sim_elapsed = hub.sim.scenario_time() if hub.sim else duration
    finally:
        hub.stop()
        log.close()
    truth = [e for e in scenario.items if e.settle_s <= sim_elapsed - 1.0]
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
        "stable_weight_g": final["stable_weight_g"],
        "true_weight_g": round(sum(e.grams for e in truth), 1),
        "link": final["link"],
        "sensor_log": {
            "file": str(log_path),
            "bytes": log_path.stat().st_size,
            "messages": len(messages),
            "channels": sorted({m[0] for m in messages}),
        },
        "started_ns": start_ns,
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
    print("  not yet in the demo: recorder (clips), journal, sink, uploader, training")
    return EXIT_OK
