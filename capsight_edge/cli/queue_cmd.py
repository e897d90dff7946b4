"""`capsight status` and `capsight queue ls|retry|purge`: what the cart holds and why."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from capsight_edge.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    add_device_options,
    open_journal,
    print_json,
    profile_from,
)


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "status", help="queue by state and priority, bytes, oldest, disk, pause state, last error"
    )
    add_device_options(s)
    s.set_defaults(handler=cmd_status)

    q = sub.add_parser(
        "queue",
        help="upload progress per bundle (bytes sent, rate, ETA); ls|retry|purge act on bundles",
    )
    add_device_options(q)
    q.add_argument(
        "--watch", action="store_true", help="refresh every second until the queue is empty"
    )
    q.set_defaults(handler=cmd_progress)
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION", required=False)
    ls = qsub.add_parser("ls", help="one line (or JSON object) per bundle")
    add_device_options(ls)
    ls.add_argument("--state", action="append", help="only these states (repeatable)")
    ls.set_defaults(handler=cmd_ls)
    r = qsub.add_parser("retry", help="send quarantined bundles back to the upload queue")
    add_device_options(r)
    r.add_argument("ids", nargs="*", metavar="ID", help="bundle ids (default: all quarantined)")
    r.set_defaults(handler=cmd_retry)
    p = qsub.add_parser("purge", help="delete bundles now (uploaded ones by default)")
    add_device_options(p)
    p.add_argument("ids", nargs="*", metavar="ID", help="bundle ids")
    p.add_argument(
        "--state",
        action="append",
        default=None,
        help="purge every bundle in this state (default: uploaded)",
    )
    p.add_argument(
        "--yes", action="store_true", help="required to purge bundles that were never uploaded"
    )
    p.set_defaults(handler=cmd_purge)


def _journal(args: argparse.Namespace) -> tuple[Any, Path]:
    return open_journal(profile_from(args))


def cmd_status(args: argparse.Namespace) -> int:
    from capsight_edge.journal.guard import PAUSE_KEY, StorageGuard

    journal, data = _journal(args)
    profile = profile_from(args)
    guard = StorageGuard.from_profile(journal, profile)
    disk = guard.disk()
    counts = journal.counts()
    paused = journal.kv_get(PAUSE_KEY)
    last = journal.last_error()
    progress = queue_progress(journal)
    out = {
        "data_dir": str(data),
        "queue": counts,
        "disk": {
            "total_bytes": disk.total,
            "free_bytes": disk.free,
            "used_pct": round(disk.used_pct, 1),
            "recording_bytes_per_min": round(disk.bytes_per_min),
            "headroom_min": round(disk.headroom_min, 1),
            "high_watermark_pct": guard.high,
            "low_watermark_pct": guard.low,
        },
        "capture_paused": paused,
        "last_error": {"bundle": last[0], "error": last[1]} if last else None,
        "upload": {**progress["uploader"], "held": progress["paused"]},
    }
    journal.close()
    if args.json:
        print_json(out)
        return EXIT_OK
    print(f"data: {data}")
    print(
        f"disk: {disk.used_pct:.1f}% used, {disk.free / 2**30:.2f} GiB free, about "
        f"{disk.headroom_min:.0f} min of recording at {disk.bytes_per_min / 2**20:.1f} MiB/min "
        f"(pause at {guard.high:g}%, resume at {guard.low:g}%)"
    )
    print(f"capture: {'PAUSED: ' + paused if paused else 'running'}")
    u = progress["uploader"]
    print(
        f"uploads: {u['state']}{'' if u['running'] else ' (uploader not running)'}"
        + (f"; held: {progress['paused']}" if progress["paused"] else "")
        + (f"; {len(progress['bundles'])} bundles, {progress['bytes_left'] / 2**20:.1f} MiB to go")
    )
    if not counts:
        print("queue: empty")
    for state, c in counts.items():
        prios = ", ".join(f"p{p}: {n}" for p, n in c["by_priority"].items())
        print(
            f"  {state:<12} {c['count']:5d} bundles  {c['bytes'] / 2**20:9.1f} MiB  "
            f"oldest {c['oldest_utc']}  ({prios})"
        )
    if last:
        print(f"last error: {last[0]}: {last[1]}")
    return EXIT_OK


def queue_progress(journal: Any) -> dict[str, Any]:
    """What waits to go, with how far each bundle got, and what the running uploader says
    (rate and ETA of the bundles in flight; its status is at most a few seconds old)."""
    import calendar
    import json
    import time

    from capsight_edge.uploader.uploader import PAUSE_KEY, STATUS_KEY

    raw = journal.kv_get(STATUS_KEY)
    up = json.loads(raw) if raw else {}
    age = None
    if up.get("utc"):
        t = calendar.timegm(time.strptime(up["utc"][:19], "%Y-%m-%dT%H:%M:%S"))
        age = max(0.0, time.time() - t)
    # A running uploader writes at least every 30 s (every second while anything changes).
    live = age is not None and age < 45 and up.get("state") != "stopped"
    flying = {p["id"]: p for p in up.get("in_flight", [])} if live else {}
    rows = []
    for r in journal.upload_queue():
        plan = journal.upload_plan(r.id)
        total = sum(p.wire_bytes for p in plan) if plan else r.bytes
        f = flying.get(r.id, {})
        sent = f.get("bytes_confirmed", r.upload_offset if plan else 0)
        rows.append(
            {
                "id": r.id,
                "state": r.state,
                "priority": r.priority,
                "rule": r.rule,
                "bytes_total": total,
                "bytes_sent": sent,
                "rate_bps": f.get("rate_bps"),
                "eta_s": f.get("eta_s"),
                "attempts": r.attempts,
                "last_error": r.last_error,
            }
        )
    left = sum(r["bytes_total"] - r["bytes_sent"] for r in rows)
    cap = up.get("rate_cap_bps") if live else None
    return {
        "uploader": {
            "running": live,
            "state": up.get("state", "never ran") if raw else "never ran",
            "status_age_s": round(age, 1) if age is not None else None,
            "rate_cap_bps": cap,
            "stats": up.get("stats", {}),
            "last_error": up.get("last_error", ""),
        },
        "paused": journal.kv_get(PAUSE_KEY),
        "bundles": rows,
        "bytes_left": left,
        "eta_s": round(left * 8 / cap, 1) if cap else None,
    }


def _bar(done: int, total: int, width: int = 20) -> str:
    frac = min(1.0, done / total) if total else 0.0
    full = int(frac * width)
    return "[" + "#" * full + "." * (width - full) + f"] {100 * frac:5.1f}%"


def format_progress(p: dict[str, Any]) -> str:
    u = p["uploader"]
    head = (
        f"uploader: {u['state']}"
        + (f" (cap {u['rate_cap_bps'] / 1e6:g} Mbit/s)" if u["rate_cap_bps"] else "")
        + ("" if u["running"] else " - not running")
    )
    if p["paused"]:
        head += f"; held by `upload pause`: {p['paused']}"
    lines = [head]
    for r in p["bundles"]:
        rate = f"{r['rate_bps'] / 1e6:6.2f} Mbit/s" if r["rate_bps"] else " " * 13
        eta = f"ETA {r['eta_s']:5.0f} s" if r["eta_s"] is not None else ""
        lines.append(
            f"  {r['id']:<28} p{r['priority']} {r['state']:<9} "
            f"{_bar(r['bytes_sent'], r['bytes_total'])} "
            f"{r['bytes_sent'] / 2**20:7.2f}/{r['bytes_total'] / 2**20:.2f} MiB {rate} {eta}"
        )
    if not p["bundles"]:
        lines.append("  the upload queue is empty")
    else:
        lines.append(
            f"  {len(p['bundles'])} bundles, {p['bytes_left'] / 2**20:.1f} MiB left"
            + (f", about {p['eta_s']:.0f} s at the cap" if p["eta_s"] else "")
        )
    if u["last_error"]:
        lines.append(f"  last error: {u['last_error']}")
    return "\n".join(lines)


def cmd_progress(args: argparse.Namespace) -> int:
    import time

    journal, _ = _journal(args)
    tty = sys.stdout.isatty()
    try:
        while True:
            progress = queue_progress(journal)
            if args.json:
                print_json(progress)
            else:
                if tty and args.watch:
                    sys.stdout.write("\x1b[H\x1b[J")
                print(format_progress(progress), flush=True)
            if not args.watch or not progress["bundles"]:
                break
            time.sleep(1.0)
    finally:
        journal.close()
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    journal, _ = _journal(args)
    rows = journal.bundles(tuple(args.state) if args.state else None)
    journal.close()
    for r in rows:
        if args.json:
            print_json(
                {
                    "id": r.id,
                    "state": r.state,
                    "priority": r.priority,
                    "rule": r.rule,
                    "bytes": r.bytes,
                    "attempts": r.attempts,
                    "created_utc": r.created_utc,
                    "upload_offset": r.upload_offset,
                    "upload_url": r.upload_url,
                    "last_error": r.last_error,
                    "reason": r.reason,
                }
            )
        else:
            print(
                f"{r.id}  {r.state:<11} p{r.priority} {r.rule:<15} {r.bytes / 2**20:8.2f} MiB"
                f"  attempts {r.attempts}"
                + (f"  ({r.reason or r.last_error})" if r.reason or r.last_error else "")
            )
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from capsight_edge.errors import JournalError

    journal, data = _journal(args)
    ids = args.ids or [r.id for r in journal.bundles(("quarantined",))]
    status = EXIT_OK
    for bundle_id in ids:
        try:
            if not (data / "bundles" / bundle_id).is_dir():
                raise JournalError(
                    f"{bundle_id}: its files are gone (quarantine/ holds what "
                    "could not be verified)"
                )
            journal.retry(bundle_id)
            print(f"{bundle_id}: back in the upload queue")
        except JournalError as exc:
            print(f"capsight: error: {exc}", file=sys.stderr)
            status = EXIT_FAIL
    journal.close()
    return status


def cmd_purge(args: argparse.Namespace) -> int:
    from capsight_edge.errors import JournalError

    journal, data = _journal(args)
    states = tuple(args.state or ["uploaded"])
    rows = [journal.get(i) for i in args.ids] if args.ids else journal.bundles(states)
    status = EXIT_OK
    for row in rows:
        if row is None:
            print("capsight: error: no such bundle", file=sys.stderr)
            status = EXIT_USAGE
            continue
        if row.state in ("sealed", "quarantined") and not args.yes:
            print(
                f"capsight: error: {row.id} was never uploaded; add --yes to delete it",
                file=sys.stderr,
            )
            status = EXIT_USAGE
            continue
        try:
            if row.state == "quarantined":
                journal.retry(row.id)
            journal.mark_evicted(row.id, "purged by a technician")
        except JournalError as exc:
            print(f"capsight: error: {exc}", file=sys.stderr)
            status = EXIT_FAIL
            continue
        shutil.rmtree(data / "bundles" / row.id, ignore_errors=True)
        print(f"{row.id}: purged")
    journal.close()
    return status
