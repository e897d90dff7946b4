"""`capsight sensors watch`, `capsight scale tare|calibrate`, `capsight gps parse`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from capsight_edge.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    add_device_options,
    profile_from,
)
from capsight_edge.journal.journal import utc_now
from capsight_edge.records import (
    CalibrationRecord,
    GpsFixRecord,
    GpsSummaryRecord,
    SensorsRecord,
    emit,
)


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sensors", help="live sensor readings")
    ssub = s.add_subparsers(dest="sensors_command", metavar="ACTION", required=True)
    w = ssub.add_parser("watch", help="live readings and link health, refreshing in place")
    add_device_options(w)
    w.add_argument("--interval", type=float, default=0.5, help="refresh period in seconds")
    w.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)"
    )
    w.set_defaults(handler=cmd_watch)

    sc = sub.add_parser("scale", help="tare and calibrate the load cells")
    scsub = sc.add_subparsers(dest="scale_command", metavar="ACTION", required=True)
    t = scsub.add_parser("tare", help="zero the empty cart (stored in the data folder)")
    add_device_options(t)
    t.add_argument("--samples", type=int, default=40, help="conversions averaged by the MCU")
    t.set_defaults(handler=cmd_tare)
    c = scsub.add_parser("calibrate", help="scale the cells with a known weight on the cart")
    add_device_options(c)
    c.add_argument(
        "--known-grams",
        type=float,
        required=True,
        metavar="G",
        help="the reference weight, in grams",
    )
    c.add_argument(
        "--cell",
        type=int,
        default=None,
        help="calibrate one cell, with the weight over its corner (default: all)",
    )
    c.add_argument("--yes", action="store_true", help="do not wait for Enter between steps")
    c.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for stability")
    c.set_defaults(handler=cmd_calibrate)

    g = sub.add_parser("gps", help="NMEA tools")
    gsub = g.add_subparsers(dest="gps_command", metavar="ACTION", required=True)
    gp = gsub.add_parser("parse", help="parse an NMEA log: one JSON line per fix, then a summary")
    gp.add_argument("files", nargs="+", metavar="FILE", help="NMEA 0183 logs (text)")
    gp.add_argument(
        "--json", action="store_true", help="JSON lines (the default output is a table)"
    )
    gp.set_defaults(handler=cmd_gps_parse)


def _render(snap: dict[str, Any]) -> str:
    link = snap.get("link") or {}
    lines = [
        f"weight   {snap['weight_g'] if snap['weight_g'] is not None else '-':>9} g   "
        f"{'stable' if snap['stable'] else 'moving'}   stable weight {snap['stable_weight_g']} g"
        f"   {'tared' if snap['tared'] else 'NOT TARED'}",
        f"link     {link.get('state', '-')}  port {link.get('port', '-')}  fw "
        f"{link.get('firmware') or '-'}  frames {link.get('frames', 0)}  errors "
        f"{sum((link.get('errors') or {}).values())}  lost {link.get('lost_frames', 0)}  "
        f"reconnects {link.get('reconnects', 0)}",
        f"clock    drift {link.get('clock_drift_ppm', 0):+.1f} ppm  exchanges "
        f"{link.get('clock_exchanges', 0)}",
    ]
    if "imu" in snap:
        imu = snap["imu"]
        lines.append(
            f"imu      accel {imu['accel_g']} g  gyro {imu['gyro_dps']} dps  "
            f"{'BUMP' if imu['bump'] else ''}"
        )
    if "uwb" in snap:
        u = snap["uwb"]
        lines.append(f"uwb      x {u['x_mm']} mm  y {u['y_mm']} mm  quality {u['quality']}%")
    if "gnss" in snap:
        fix = snap["gnss"]["fix"]
        lines.append(
            "gnss     "
            + (f"{fix['lat']:.6f}, {fix['lon']:.6f} q{fix['quality']}" if fix else "no fix")
        )
    for ev in snap["events"][-3:]:
        lines.append(f"event    {ev['kind']:<15} delta {ev['delta_g']:+.1f} g")
    return "\n".join(lines)


def cmd_watch(args: argparse.Namespace) -> int:
    from capsight_edge.devices import factory_from_profile
    from capsight_edge.sensors.hub import SensorHub

    profile = profile_from(args)
    start = time.monotonic()
    tty = sys.stdout.isatty() and not args.json
    with (
        factory_from_profile(profile) as factory,
        SensorHub(profile, factory=factory) as hub,
    ):
        try:
            while not args.duration or time.monotonic() - start < args.duration:
                time.sleep(args.interval)
                snap = hub.snapshot()
                if args.json:
                    emit(SensorsRecord(utc=utc_now(), **snap))
                elif tty:
                    sys.stdout.write("\x1b[H\x1b[2J" + _render(snap) + "\n")
                    sys.stdout.flush()
                else:
                    print(_render(snap) + "\n")
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def cmd_tare(args: argparse.Namespace) -> int:
    from capsight_edge.sensors import scale

    with scale.scale_session(profile_from(args)) as hub:
        result = scale.tare(hub, samples=args.samples)
    if args.json:
        emit(
            CalibrationRecord(
                action="tare",
                zero_counts=list(result.zero_counts),
                counts_per_gram=list(result.counts_per_gram),
                file=str(result.file),
            )
        )
    else:
        print(f"tared: zero counts {result.zero_counts} stored in {result.file}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from capsight_edge.sensors import scale

    if args.known_grams <= 0:
        print("capsight: error: --known-grams must be positive", file=sys.stderr)
        return EXIT_USAGE
    profile = profile_from(args)
    cells = profile.load_cells.count
    if args.cell is not None and not 0 <= args.cell < cells:  # before anyone is asked to act
        print(
            f"capsight: error: --cell {args.cell}: this cart has cells 0 to {cells - 1}",
            file=sys.stderr,
        )
        return EXIT_USAGE

    def prompt(text: str, person_needed: bool) -> None:
        if person_needed and not args.yes and sys.stdin.isatty():
            input(text + " Then press Enter. ")
        else:
            print(text, file=sys.stderr)

    with scale.scale_session(profile) as hub:
        result = scale.calibrate(
            hub, args.known_grams, cell=args.cell, prompt=prompt, timeout_s=args.timeout
        )
    if args.json:
        emit(
            CalibrationRecord(
                action="calibrate",
                zero_counts=list(result.zero_counts),
                counts_per_gram=list(result.counts_per_gram),
                file=str(result.file),
            )
        )
    else:
        print(
            f"calibrated: counts per gram {[round(k, 4) for k in result.counts_per_gram]} "
            f"stored in {result.file}"
        )
    return EXIT_OK


def cmd_gps_parse(args: argparse.Namespace) -> int:
    from capsight_edge.sensors.nmea import NmeaParser, parse_lines, read_log_lines

    status = EXIT_OK
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            print(f"capsight: error: {name}: file not found", file=sys.stderr)
            status = EXIT_USAGE
            continue
        parser = NmeaParser()
        start = time.perf_counter()
        try:
            for fix in parse_lines(read_log_lines(path, parser), parser):
                if args.json:
                    emit(
                        GpsFixRecord(
                            file=name,
                            receiver_time=fix.receiver_time,
                            receiver_date=fix.receiver_date,
                            lat=round(fix.lat, 8),
                            lon=round(fix.lon, 8),
                            alt_m=fix.alt_m,
                            quality=fix.quality,
                            satellites=fix.satellites,
                            hdop=fix.hdop,
                            source=fix.source,
                        )
                    )
                else:
                    print(
                        f"{fix.receiver_time:>16}  {fix.lat:12.7f} {fix.lon:13.7f}  "
                        f"alt {fix.alt_m if fix.alt_m is not None else '-':>7}  q{fix.quality}  "
                        f"sats {fix.satellites if fix.satellites is not None else '-':>2}  "
                        f"hdop {fix.hdop if fix.hdop is not None else '-'}"
                    )
        except OSError as exc:
            print(f"capsight: error: {name}: cannot read: {exc.strerror}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        summary: dict[str, Any] = {
            "file": name,
            **parser.summary(),
            "duration_s": round(time.perf_counter() - start, 4),
        }
        if args.json:
            emit(GpsSummaryRecord(**summary))
        else:
            print(
                f"{name}: {summary['sentences']} sentences, {summary['fixes']} fixes, "
                f"rejected {summary['rejected_total']} {json.dumps(summary['rejected'])}"
            )
    return status
