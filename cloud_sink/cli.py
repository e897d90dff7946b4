"""`capsight-sink`: run the sink and manage the devices allowed to upload."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cloud_sink import __version__
from cloud_sink.schemas import DeviceRecord


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsight-sink", description="capsight cloud sink: a tus 1.0 upload endpoint"
    )
    parser.add_argument("--version", action="version", version=f"capsight-sink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    s = sub.add_parser("serve", help="serve the tus endpoint at /files/")
    s.add_argument("--data", required=True, metavar="DIR", help="blobs and sink.db live here")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8080, help="port to listen on")
    s.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log threshold (INFO: a start line, one access line per request, one per ingest)",
    )
    s.add_argument(
        "--log-format",
        default="human",
        choices=("human", "json"),
        help="log lines for people, or one JSON object per line for a log shipper",
    )
    s.add_argument(
        "--config",
        metavar="FILE",
        help="the sink's profile (TOML): [limits], [quotas], [timeouts], [sweep]; defaults for "
        "what it does not state",
    )
    s.add_argument(
        "--max-size", type=int, default=None, help="Tus-Max-Size in bytes (limits.max_upload_bytes)"
    )
    s.add_argument(
        "--expire-hours",
        type=float,
        default=None,
        help="incomplete uploads expire after this long (sweep.expire_hours)",
    )
    s.add_argument(
        "--s3-bucket",
        metavar="NAME",
        help="keep ingested bundles in this S3-compatible bucket "
        "(credentials from the usual AWS environment)",
    )
    s.add_argument("--s3-endpoint", metavar="URL", help="endpoint URL of an S3-compatible store")
    s.add_argument("--s3-prefix", default="", help="key prefix inside the bucket")
    s.add_argument(
        "--ingest-workers",
        type=int,
        default=1,
        metavar="N",
        help="background workers that ingest completed uploads (0: the durable queue waits "
        "for a sink that has some)",
    )
    s.set_defaults(handler=cmd_serve)
    d = sub.add_parser("device", help="devices and their tokens")
    dsub = d.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    a = dsub.add_parser("add", help="add a device; prints its token once")
    a.add_argument("name", help="the device's name (letters, digits, . _ -)")
    a.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    a.add_argument("--admin", action="store_true", help="an admin token (API and UI)")
    a.add_argument("--json", action="store_true", help="one `device` record (JSON)")
    a.set_defaults(handler=cmd_add)
    ls = dsub.add_parser("list", help="the devices (never their tokens)")
    ls.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    ls.add_argument("--json", action="store_true", help="one `device` record per line")
    ls.set_defaults(handler=cmd_list)
    r = dsub.add_parser("revoke", help="revoke a device's token")
    r.add_argument("name", help="the device's name")
    r.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    r.set_defaults(handler=cmd_revoke)
    from capsight_edge.cli.common import polish_help

    polish_help(parser, EXAMPLES)
    return parser


EXAMPLES = {
    "": "capsight-sink device add ops --admin --data /srv/sink\n"
    "capsight-sink serve --data /srv/sink --host 0.0.0.0",
    "serve": "capsight-sink serve --data /srv/sink\n"
    "capsight-sink serve --data /srv/sink --config sink.toml --log-format json",
    "device": "capsight-sink device add cart-0001 --data /srv/sink",
    "device add": "capsight-sink device add cart-0001 --data /srv/sink\n"
    "capsight-sink device add ops --admin --json --data /srv/sink",
    "device list": "capsight-sink device list --json --data /srv/sink",
    "device revoke": "capsight-sink device revoke cart-0001 --data /srv/sink",
}


def _db(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cloud_sink.db import SinkDB

    return SinkDB(Path(args.data).expanduser() / "sink.db")


def cmd_serve(args: argparse.Namespace) -> int:
    from capsight_edge import logs
    from cloud_sink.config import SinkConfig
    from cloud_sink.server import serve
    from cloud_sink.tus import make_app

    logs.configure(args.log_format, args.log_level)
    config = SinkConfig.load(args.config)
    blobs = None
    if args.s3_bucket:
        from cloud_sink.blobs import S3BlobStore

        blobs = S3BlobStore(args.s3_bucket, endpoint_url=args.s3_endpoint, prefix=args.s3_prefix)
    app = make_app(
        args.data,
        config=config,
        max_size=args.max_size,
        expire_s=args.expire_hours * 3600 if args.expire_hours is not None else None,
        blobs=blobs,
        ingest_workers=args.ingest_workers,
    )
    logs.get_logger("sink").info(
        "capsight-sink %s serving http://%s:%d/ (tus at /files/), data %s, %d ingest workers, "
        "blobs %s",
        __version__,
        args.host,
        args.port,
        args.data,
        args.ingest_workers,
        f"s3://{args.s3_bucket}/{args.s3_prefix}" if args.s3_bucket else "local",
    )
    serve(app, args.host, args.port, app.state.config.timeouts)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    token = _db(args).add_device(args.name, admin=args.admin)
    if args.json:
        print(DeviceRecord(device_id=args.name, admin=args.admin, token=token).model_dump_json())
    else:
        print(f"device {args.name} added; its token (shown only now):\n{token}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [{k: v for k, v in d.items() if k != "token_sha256"} for d in _db(args).devices()]
    for row in rows:
        if args.json:
            record = DeviceRecord(
                device_id=row["name"],
                admin=bool(row["admin"]),
                created_utc=row.get("created_utc"),
                revoked_utc=row.get("revoked_utc"),
            )
            print(record.model_dump_json(exclude_none=True))
        else:
            print(
                f"{row['name']:<24} {'admin ' if row['admin'] else ''}created "
                f"{row['created_utc']}"
                + (f", revoked {row['revoked_utc']}" if row["revoked_utc"] else "")
            )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    _db(args).revoke(args.name)
    print(f"device {args.name}: token revoked")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from cloud_sink.db import SinkError

    args = build_parser().parse_args(argv)
    os.umask(0o077)  # whatever the sink writes is its own to read
    try:
        return int(args.handler(args) or 0)
    except SinkError as exc:
        print(f"capsight-sink: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
