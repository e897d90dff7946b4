"""`capsight demo`: the simulated flywheel on the embedded defaults.

What runs today: the doctor on the simulated cart, then the cart's sensors (MCU simulator on a pty
behind the real link driver, simulated IMU on a simulated I2C bus, UWB positions) for
``--minutes``, with item events printed as they happen and every channel logged to MCAP. The demo
grows as the recorder, journal, sink and uploader land.
"""

from __future__ import annotations

import argparse
import json
import queue
import time
from pathlib import Path

from capsight_edge.cli.common import EXIT_FAIL, EXIT_OK, profile_from
from capsight_edge.doctor import doctor_ok, format_table, run_doctor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the simulated flywheel on hw_profiles/sim.toml")
    p.add_argument("--profile", metavar="FILE", help="profile (default: hw_profiles/sim.toml)")
    p.add_argument("--out", metavar="DIR", default="demo-out", help="where the demo writes")
    p.add_argument("--minutes", type=float, default=0.5, help="how long the carts run")
    p.add_argument("--seed", type=int, default=7, help="scenario seed")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from capsight_edge.sensors.hub import SensorHub
    from capsight_edge.sensors.sensorlog import read_messages
    from firmware_bridge.sim.scenario import generate

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

    duration = max(5.0, args.minutes * 60)
    print(f"\n-- step 2: the cart's sensors for {duration:.0f} s (simulated shopper, MCU on a pty)")
    scenario = generate(
        "shopping", duration + 5, seed=args.seed, item_every_s=4.0, bump_every_s=8.0
    )
    log_path = out / "sensors.mcap"
    hub = SensorHub(profile, log_path=log_path, scenario=scenario, seed=args.seed)
    start = time.monotonic()
    with hub:
        last_status = 0.0
        while (elapsed := time.monotonic() - start) < duration:
            try:
                ev = hub.events.get(timeout=0.2)
            except queue.Empty:
                ev = None
            if ev is not None and ev.kind in ("item_added", "item_removed"):
                print(
                    f"  {elapsed:6.1f} s  {ev.kind:<12}  {ev.delta_g:+8.1f} g   cart "
                    f"{ev.weight_g:8.1f} g"
                )
            elif ev is not None and ev.kind == "unstable_end" and ev.bump:
                print(
                    f"  {elapsed:6.1f} s  bump          peak {ev.peak_g:+7.1f} g, weight unchanged"
                )
            if elapsed - last_status >= 10:
                last_status = elapsed
                s = hub.snapshot()
                link = s["link"] or {}
                print(
                    f"  {elapsed:6.1f} s  [status] weight {s['weight_g']} g, link "
                    f"{link.get('state')}, {link.get('frames')} frames, "
                    f"{sum((link.get('errors') or {}).values())} bad, clock drift "
                    f"{link.get('clock_drift_ppm', 0):+.0f} ppm"
                )
        final = hub.snapshot()
        sim_elapsed = hub.sim.scenario_time() if hub.sim else duration
    truth = [e for e in scenario.items if e.settle_s <= sim_elapsed - 1.0]
    detected = [e for e in hub.event_history if e.kind in ("item_added", "item_removed")]
    messages = read_messages(log_path)
    summary = {
        "seconds": round(duration, 1),
        "items_in_scenario": len(truth),
        "item_events_detected": len(detected),
        "bumps_in_scenario": sum(1 for b in scenario.bumps if b.end_s <= sim_elapsed),
        "final_weight_g": final["stable_weight_g"],
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
    print(f"  item events: {len(detected)} detected, {len(truth)} in the scenario")
    print(
        f"  cart weight: {summary['final_weight_g']} g stable, {summary['true_weight_g']} g placed"
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
    print("  not yet in the demo: camera/triggers, recorder, journal, sink, uploader, training")
    return EXIT_OK
