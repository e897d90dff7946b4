"""`capsight upload now|pause|resume`: flush the queue by hand, or hold uploads.

``upload now`` is for field technicians: it sends the queue outside the upload windows (at the
profile's ``max_upload_bps``, or ``--uncapped``) and returns when the queue is empty or nothing
more can go; the exit code says which. ``pause``/``resume`` hold and release every uploader that
runs on this journal (``capsight run`` included) through the journal, at once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import threading
from typing import Any

from capsight_edge.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    add_device_options,
    open_journal,
    print_json,
    profile_from,
)


def register(sub: argparse._SubParsersAction) -> None:
    u = sub.add_parser("upload", help="send the upload queue now, or pause/resume uploads")
    usub = u.add_subparsers(dest="upload_command", metavar="ACTION", required=True)
    now = usub.add_parser(
        "now", help="send the queue now, outside the windows; return when empty or stuck"
    )
    add_device_options(now)
    add_sink_options(now)
    now.add_argument(
        "--uncapped", action="store_true", help="no bandwidth cap (default: upload.max_upload_bps)"
    )
    now.add_argument(
        "--attempts", type=int, default=4, help="tries per bundle before it counts as stuck"
    )
    now.set_defaults(handler=cmd_now)
    p = usub.add_parser("pause", help="hold every upload on this cart until `upload resume`")
    add_device_options(p, json_output=False)
    p.add_argument("--reason", default="paused by a technician", help="shown in `status`")
    p.set_defaults(handler=cmd_pause)
    r = usub.add_parser("resume", help="release uploads held by `upload pause`")
    add_device_options(r, json_output=False)
    r.set_defaults(handler=cmd_resume)


def add_sink_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sink", metavar="URL", help="sink to upload to (overrides upload.sink_url)"
    )
    parser.add_argument("--token-file", metavar="FILE", help="bearer token file for the sink")


def with_sink(profile: Any, args: argparse.Namespace) -> Any:
    """The profile with ``--sink``/``--token-file`` applied to its ``[upload]`` section."""
    if not (args.sink or args.token_file):
        return profile
    upload = dataclasses.replace(
        profile.upload,
        sink_url=args.sink or profile.upload.sink_url,
        token_file=args.token_file or profile.upload.token_file,
    )
    return dataclasses.replace(profile, upload=upload)


def cmd_now(args: argparse.Namespace) -> int:
    from capsight_edge.uploader.service import uploader_from_profile
    from capsight_edge.uploader.uploader import PAUSE_KEY

    profile = with_sink(profile_from(args), args)
    journal, _ = open_journal(profile)
    held = journal.kv_get(PAUSE_KEY)
    if held:
        journal.close()
        print(f"capsight: uploads are paused ({held}); run `capsight upload resume` first")
        return EXIT_FAIL
    cap = profile.upload.max_upload_bps
    up = uploader_from_profile(profile, journal, uncapped=args.uncapped or cap == 0)
    up.schedule = dataclasses.replace(up.schedule, windows=())  # outside the windows
    before = {r.id for r in journal.upload_queue()}
    if not args.json:
        rate = "uncapped" if up.uncapped else f"{cap / 1e6:g} Mbit/s"
        print(f"uploading {len(before)} bundles to {up.base} ({rate})", flush=True)
    done = threading.Event()
    reporter = threading.Thread(target=_report, args=(up, done, args.json), daemon=True)
    reporter.start()
    try:
        stats = asyncio.run(up.run(until_idle=True, max_attempts=args.attempts))
    finally:
        done.set()
        reporter.join(5)
    left = journal.upload_queue()
    quarantined = [r.id for r in journal.bundles(("quarantined",)) if r.id in before]
    journal.close()
    result = {
        "uploaded": stats.bundles_uploaded,
        "left": len(left),
        "quarantined": quarantined,
        "bytes_sent": stats.bytes_sent,
        "bytes_confirmed": stats.bytes_confirmed,
        "rate_bps": round(stats.rate_bps),
        "interruptions": stats.interruptions,
        "retries": stats.retries,
        "state": up.state,
        "last_error": up.last_error,
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"done: {stats.bundles_uploaded} uploaded, {len(left)} left, "
            f"{len(quarantined)} quarantined, {stats.bytes_sent / 2**20:.1f} MiB sent, "
            f"{stats.retries} retries"
        )
        if left:
            print(f"not everything could go: {up.state}; last error: {up.last_error or '-'}")
    return EXIT_OK if not left else EXIT_FAIL


def _report(up: Any, done: threading.Event, as_json: bool) -> None:
    """A line per second while bundles are in flight (a separate thread: the loop stays free)."""
    last = ""
    while not done.wait(1.0):
        status = up.status()
        parts = [
            f"{p['id']} {100 * p['bytes_confirmed'] / max(1, p['bytes_total']):5.1f}% "
            f"{p['rate_bps'] / 1e6:6.2f} Mbit/s"
            + (f" eta {p['eta_s']:.0f} s" if p["eta_s"] is not None else "")
            for p in status["in_flight"]
        ]
        line = f"  {status['state']}: " + ("; ".join(parts) or "-")
        if line != last:
            last = line
            if as_json:
                print_json({"progress": status["in_flight"], "state": status["state"]})
            else:
                print(line, flush=True)


def _hold(args: argparse.Namespace, reason: str | None) -> None:
    from capsight_edge.uploader.uploader import PAUSE_KEY

    journal, _ = open_journal(profile_from(args))
    journal.kv_set(PAUSE_KEY, reason)
    journal.close()


def cmd_pause(args: argparse.Namespace) -> int:
    _hold(args, args.reason)
    print(f"uploads paused: {args.reason}")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    _hold(args, None)
    print("uploads resumed")
    return EXIT_OK
