"""`capsight upload now|pause|resume`: flush the queue by hand, or hold uploads.

``upload now`` is for field technicians: it sends the queue outside the upload windows (at the
profile's ``max_upload_bps``, or ``--uncapped``) and returns when the queue is empty or nothing
more can go; the exit code says which. ``pause``/``resume`` hold and release every uploader that
runs on this journal (``capsight run`` included) through the journal, at once.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    from capsight_edge.uploader.service import UploadsHeld, flush

    profile = with_sink(profile_from(args), args)
    journal, _ = open_journal(profile)
    if not args.json:
        cap = profile.upload.max_upload_bps
        rate = "uncapped" if args.uncapped or cap == 0 else f"{cap / 1e6:g} Mbit/s"
        print(
            f"uploading {len(journal.upload_queue())} bundles to "
            f"{profile.upload.sink_url or '?'} ({rate})",
            flush=True,
        )
    last = [""]

    def report(status: dict[str, Any]) -> None:
        parts = [
            f"{p['id']} {100 * p['bytes_confirmed'] / max(1, p['bytes_total']):5.1f}% "
            f"{p['rate_bps'] / 1e6:6.2f} Mbit/s"
            + (f" eta {p['eta_s']:.0f} s" if p["eta_s"] is not None else "")
            for p in status["in_flight"]
        ]
        line = f"  {status['state']}: " + ("; ".join(parts) or "-")
        if line != last[0]:
            last[0] = line
            if args.json:
                print_json({"progress": status["in_flight"], "state": status["state"]})
            else:
                print(line, flush=True)

    try:
        result = flush(
            profile, journal, uncapped=args.uncapped, attempts=args.attempts, report=report
        )
    except UploadsHeld as exc:
        print(f"capsight: {exc}")
        return EXIT_FAIL
    finally:
        journal.close()
    out = {k: v for k, v in result.items() if k not in ("queued", "sink", "rate_cap_bps")}
    if args.json:
        print_json(out)
    else:
        print(
            f"done: {result['uploaded']} uploaded, {result['left']} left, "
            f"{len(result['quarantined'])} quarantined, {result['bytes_sent'] / 2**20:.1f} MiB "
            f"sent, {result['retries']} retries"
        )
        if result["left"]:
            print(
                f"not everything could go: {result['state']}; last error: "
                f"{result['last_error'] or '-'}"
            )
    return EXIT_OK if not result["left"] else EXIT_FAIL


def _hold(args: argparse.Namespace, reason: str | None) -> None:
    from capsight_edge.uploader.service import hold

    journal, _ = open_journal(profile_from(args))
    try:
        hold(journal, reason)
    finally:
        journal.close()


def cmd_pause(args: argparse.Namespace) -> int:
    _hold(args, args.reason)
    print(f"uploads paused: {args.reason}")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    _hold(args, None)
    print("uploads resumed")
    return EXIT_OK
