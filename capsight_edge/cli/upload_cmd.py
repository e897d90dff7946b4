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
    human_bytes,
    human_rate,
    open_journal,
    profile_from,
)
from capsight_edge.records import UploadProgressRecord, UploadResultRecord, emit


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
    queued = journal.upload_queue()
    bar = None if args.json else _Bar(profile, args, queued)

    def report(status: dict[str, Any]) -> None:
        if args.json:
            emit(UploadProgressRecord(state=status["state"], in_flight=status["in_flight"]))
        elif bar is not None:
            bar.update(status)

    try:
        if bar is not None:
            bar.start()
        result = flush(
            profile, journal, uncapped=args.uncapped, attempts=args.attempts, report=report
        )
    except UploadsHeld as exc:
        print(f"capsight: {exc}")
        return EXIT_FAIL
    finally:
        if bar is not None:
            bar.stop()
        journal.close()
    out = {k: v for k, v in result.items() if k not in ("queued", "sink", "rate_cap_bps")}
    if args.json:
        emit(UploadResultRecord(**out))
    else:
        print(
            f"done: {result['uploaded']} uploaded, {result['left']} left, "
            f"{len(result['quarantined'])} quarantined, {human_bytes(result['bytes_sent'])} "
            f"sent at {human_rate(result['rate_bps'])}, {result['retries']} retries"
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


class _Bar:
    """``upload now``'s live bar (rich): bytes on their way over the queue's wire bytes, with the
    rate and the time left; one line per state change of the uploader below it."""

    def __init__(self, profile: Any, args: argparse.Namespace, queued: list[Any]) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        cap = profile.upload.max_upload_bps
        rate = "uncapped" if args.uncapped or cap == 0 else human_rate(cap)
        print(
            f"uploading {len(queued)} bundles to {profile.upload.sink_url or '?'} ({rate})",
            flush=True,
        )
        self.total = sum(r.bytes - r.upload_offset for r in queued)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("upload", total=max(1, self.total))
        self.done: dict[str, int] = {}
        self.state = ""

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[0].completed)
        self.progress.stop()

    def update(self, status: dict[str, Any]) -> None:
        for p in status["in_flight"]:
            self.done[p["bundle_id"]] = p["bytes_sent"]
        # Finished bundles leave `in_flight`; the journal's stats count what they sent.
        sent = max(sum(self.done.values()), int(status["stats"].get("bytes_confirmed", 0)))
        self.progress.update(
            self.task, completed=min(sent, self.total), description=status["state"][:40]
        )
        if status["state"] != self.state:
            self.state = status["state"]
