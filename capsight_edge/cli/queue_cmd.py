"""`capsight status` and `capsight queue ls|retry|purge`: what the cart holds and why."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from capsight_edge.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    add_device_options,
    human_bytes,
    human_rate,
    human_seconds,
    open_journal,
    profile_from,
)
from capsight_edge.journal.journal import STATES
from capsight_edge.records import BundleRecord, StatusRecord, UploadQueueRecord, emit


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
    ls = qsub.add_parser("ls", help="one line (or `bundle` record) per bundle")
    add_device_options(ls, inherited=True)
    ls.add_argument(
        "--state", action="append", choices=STATES, help="only these states (repeatable)"
    )
    ls.set_defaults(handler=cmd_ls)
    r = qsub.add_parser("retry", help="send quarantined bundles back to the upload queue")
    add_device_options(r, inherited=True)
    r.add_argument("ids", nargs="*", metavar="ID", help="bundle ids (default: all quarantined)")
    r.set_defaults(handler=cmd_retry)
    p = qsub.add_parser("purge", help="delete bundles now (uploaded ones by default)")
    add_device_options(p, inherited=True)
    p.add_argument("ids", nargs="*", metavar="ID", help="bundle ids")
    p.add_argument(
        "--state",
        action="append",
        default=None,
        choices=STATES,
        help="purge every bundle in this state (default: uploaded)",
    )
    p.add_argument(
        "--yes", action="store_true", help="required to purge bundles that were never uploaded"
    )
    p.set_defaults(handler=cmd_purge)


def _journal(args: argparse.Namespace, *, readonly: bool = False) -> tuple[Any, Path]:
    return open_journal(profile_from(args), readonly=readonly)


def cmd_status(args: argparse.Namespace) -> int:
    from capsight_edge.status import cart_status

    profile = profile_from(args)
    journal, _ = open_journal(profile, readonly=True)
    try:
        st = cart_status(profile, journal)
    finally:
        journal.close()
    if args.json:
        emit(StatusRecord(**{k: v for k, v in st.items() if k != "upload_queue"}))
        return EXIT_OK
    disk, u, q = st["disk"], st["upload"], st["upload_queue"]
    print(f"data: {st['data_dir']}")
    print(
        f"disk: {disk['used_pct']:.1f}% used, {human_bytes(disk['free_bytes'])} free, about "
        f"{disk['headroom_min']:.0f} min of recording at "
        f"{human_bytes(disk['recording_bytes_per_min'])}/min "
        f"(pause at {disk['high_watermark_pct']:g}%, resume at {disk['low_watermark_pct']:g}%)"
    )
    paused = st["capture_paused"]
    print(f"capture: {'PAUSED: ' + paused if paused else 'running'}")
    print(
        f"uploads: {u['state']}{'' if u['running'] else ' (uploader not running)'}"
        + (f"; held: {u['uploads_held']}" if u["uploads_held"] else "")
        + f"; {len(q['bundles'])} bundles, {human_bytes(q['bytes_left'])} to go"
    )
    if not st["queue"]:
        print("queue: empty")
    for state, c in st["queue"].items():
        prios = ", ".join(f"p{p}: {n}" for p, n in c["by_priority"].items())
        print(
            f"  {state:<12} {c['count']:5d} bundles  {human_bytes(c['bytes']):>10}  "
            f"oldest {c['oldest_utc']}  ({prios})"
        )
    if st["last_error"]:
        print(f"last error: {st['last_error']['bundle_id']}: {st['last_error']['error']}")
    return EXIT_OK


def _bar(done: int, total: int, width: int = 20) -> str:
    frac = min(1.0, done / total) if total else 0.0
    full = int(frac * width)
    return "[" + "#" * full + "." * (width - full) + f"] {100 * frac:5.1f}%"


def format_progress(p: dict[str, Any]) -> str:
    u = p["uploader"]
    head = (
        f"uploader: {u['state']}"
        + (f" (cap {human_rate(u['rate_cap_bps'])})" if u["rate_cap_bps"] else "")
        + ("" if u["running"] else " - not running")
    )
    if p["uploads_held"]:
        head += f"; held by `upload pause`: {p['uploads_held']}"
    lines = [head]
    for r in p["bundles"]:
        rate = f"{human_rate(r['rate_bps']):>12}" if r["rate_bps"] else " " * 12
        eta = f"ETA {human_seconds(r['eta_s'])}" if r["eta_s"] is not None else ""
        lines.append(
            f"  {r['bundle_id']:<28} p{r['priority']} {r['state']:<9} "
            f"{_bar(r['bytes_sent'], r['bytes'])} "
            f"{human_bytes(r['bytes_sent']):>10} of {human_bytes(r['bytes']):<10} {rate} {eta}"
        )
    if not p["bundles"]:
        lines.append("  the upload queue is empty")
    else:
        lines.append(
            f"  {len(p['bundles'])} bundles, {human_bytes(p['bytes_left'])} left"
            + (f", about {human_seconds(p['eta_s'])} at the cap" if p["eta_s"] else "")
        )
    if u["last_error"]:
        lines.append(f"  last error: {u['last_error']}")
    return "\n".join(lines)


def cmd_progress(args: argparse.Namespace) -> int:
    import time

    from capsight_edge.uploader.status import queue_progress

    journal, _ = _journal(args, readonly=True)
    tty = sys.stdout.isatty()
    try:
        while True:
            progress = queue_progress(journal)
            if args.json:
                emit(
                    UploadQueueRecord(
                        uploader=progress["uploader"],
                        uploads_held=progress["uploads_held"],
                        bundles=len(progress["bundles"]),
                        bytes_left=progress["bytes_left"],
                        eta_s=progress["eta_s"],
                    )
                )
                for row in progress["bundles"]:
                    emit(BundleRecord(**row))
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
    journal, _ = _journal(args, readonly=True)
    try:
        rows = journal.bundles(tuple(args.state) if args.state else None)
        return _ls(journal, rows, args.json)
    finally:
        journal.close()


def _ls(journal: Any, rows: list[Any], as_json: bool) -> int:
    from capsight_edge.uploader.status import bundle_row

    for r in rows:
        if as_json:
            emit(BundleRecord(**bundle_row(journal, r)))
        else:
            print(
                f"{r.id}  {r.state:<11} p{r.priority} {r.rule:<15} {human_bytes(r.bytes):>10}"
                f"  attempts {r.attempts}"
                + (f"  ({r.reason or r.last_error})" if r.reason or r.last_error else "")
            )
    return EXIT_OK


def _results(results: list[Any]) -> int:
    status = EXIT_OK
    for r in results:
        if r.ok:
            print(r.message)
        else:
            print(f"capsight: error: {r.message}", file=sys.stderr)
            status = max(status, EXIT_USAGE if r.refused else EXIT_FAIL)
    return status


def cmd_retry(args: argparse.Namespace) -> int:
    from capsight_edge.journal import queue_ops

    journal, data = _journal(args)
    try:
        return _results(queue_ops.retry(journal, data, args.ids))
    finally:
        journal.close()


def cmd_purge(args: argparse.Namespace) -> int:
    from capsight_edge.journal import queue_ops

    journal, data = _journal(args)
    try:
        results = queue_ops.purge(
            journal, data, args.ids, states=args.state or ["uploaded"], force=args.yes
        )
    finally:
        journal.close()
    return _results(results)
