"""`capsight-sink`: run the sink and manage the devices allowed to upload."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_sink import __version__
from cloud_sink.db import SinkError
from cloud_sink.schemas import DeviceRecord

if TYPE_CHECKING:
    from cloud_sink.registry import Registry


def add_s3_options(p: argparse.ArgumentParser, bucket_help: str) -> None:
    """The bucket's options, the same for every command that reaches it."""
    p.add_argument(
        "--s3-bucket",
        metavar="NAME",
        help=f"{bucket_help} (credentials from the usual AWS environment)",
    )
    p.add_argument("--s3-endpoint", metavar="URL", help="endpoint URL of an S3-compatible store")
    p.add_argument("--s3-prefix", default="", help="key prefix inside the bucket")


def add_db_option(p: argparse.ArgumentParser) -> None:
    """``--db``: the sink's database server, the same for every command that opens it."""
    from cloud_sink.sql import DB_ENV

    p.add_argument(
        "--db",
        metavar="URL",
        default=os.environ.get(DB_ENV) or None,
        help="a postgresql:// URL that several sink instances share (password from the URL, "
        f"PGPASSWORD or ~/.pgpass); default: ${DB_ENV}, else sink.db in the data folder",
    )


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
    add_s3_options(s, "keep ingested bundles in this S3-compatible bucket")
    s.add_argument(
        "--staging",
        choices=("folder", "s3"),
        default="folder",
        help="where uploads in progress live: files in --data (the default; several instances "
        "must share that folder, with flock), or S3 multipart uploads in --s3-bucket (no shared "
        "folder; needs --db postgresql:// for more than one instance)",
    )
    add_db_option(s)
    s.add_argument(
        "--instance",
        metavar="NAME",
        default=None,
        help="this instance's name, on its ingest claims and its metrics (default: host:port)",
    )
    s.add_argument(
        "--ingest-workers",
        type=int,
        default=1,
        metavar="N",
        help="background workers that ingest completed uploads (0: the durable queue waits "
        "for a sink that has some)",
    )
    s.set_defaults(handler=cmd_serve)
    dr = sub.add_parser(
        "doctor",
        help="check the data folder, databases, ingest queue, blob store, catalogue and registry "
        "(reads only); non-zero exit when a required check fails",
    )
    dr.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    add_s3_options(dr, "the bucket serve keeps bundles in")
    add_db_option(dr)
    dr.add_argument("--json", action="store_true", help="`check` records, then `sink_doctor`")
    dr.set_defaults(handler=cmd_doctor)
    mg = sub.add_parser(
        "migrate",
        help="bring the sink's databases up to this version's schema (a failed step is rolled "
        "back)",
    )
    mg.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    add_db_option(mg)
    mg.add_argument(
        "--from-sqlite",
        metavar="DIR",
        help="with --db: copy an embedded sink's sink.db and index.db (devices, uploads, ingest "
        "queue, bundles, labels) from DIR into the database server, which must hold none yet",
    )
    mg.add_argument("--json", action="store_true", help="one `migrate` record per database")
    mg.set_defaults(handler=cmd_migrate)
    d = sub.add_parser("device", help="devices and their tokens")
    dsub = d.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    a = dsub.add_parser("add", help="add a device; prints its token once")
    a.add_argument("name", help="the device's name (letters, digits, . _ -)")
    a.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    add_db_option(a)
    a.add_argument("--admin", action="store_true", help="an admin token (API and UI)")
    a.add_argument("--json", action="store_true", help="one `device` record (JSON)")
    a.set_defaults(handler=cmd_add)
    ls = dsub.add_parser("list", help="the devices (never their tokens)")
    ls.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    add_db_option(ls)
    ls.add_argument("--json", action="store_true", help="one `device` record per line")
    ls.set_defaults(handler=cmd_list)
    r = dsub.add_parser("revoke", help="revoke a device's token")
    r.add_argument("name", help="the device's name")
    r.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    add_db_option(r)
    r.set_defaults(handler=cmd_revoke)
    c = sub.add_parser("catalogue", help="the fleet's product catalogue (SKU, GTIN, name)")
    csub = c.add_subparsers(dest="catalogue_command", metavar="ACTION", required=True)
    ci = csub.add_parser("import", help="check a catalogue file and make it the sink's")
    ci.add_argument("file", metavar="FILE", help='JSON: {"products": [{"sku", "gtin", "name"}]}')
    ci.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    ci.set_defaults(handler=cmd_catalogue_import)

    mo = sub.add_parser("model", help="the model registry: keys, channels, rollouts")
    msub = mo.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    mk = msub.add_parser("keygen", help="the sink's online key (snapshot, timestamp, rollout)")
    mk.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    mk.add_argument(
        "--next",
        action="store_true",
        help="the successor of the online key, for capsight-train rotate-keys --online-key",
    )
    mk.set_defaults(handler=cmd_model_keygen)
    mp = msub.add_parser("promote", help="point a channel at a published model")
    mp.add_argument("channel", choices=("canary", "stable"), help="the channel")
    mp.add_argument("name", help="the model's name (its card's)")
    mp.add_argument("version", help="the model's version (its card's)")
    mp.add_argument(
        "--rollout", type=int, default=100, metavar="PCT", help="share of the fleet, 0..100"
    )
    mp.add_argument("--by", default=os.environ.get("USER", ""), help="who does it (audited)")
    mp.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    add_db_option(mp)
    mp.add_argument("--json", action="store_true", help="a `model_channel` record")
    mp.set_defaults(handler=cmd_model_promote)
    mr = msub.add_parser("rollback", help="point a channel back at the model it offered before")
    mr.add_argument("channel", choices=("canary", "stable"), help="the channel")
    mr.add_argument("--by", default=os.environ.get("USER", ""), help="who does it (audited)")
    mr.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    add_db_option(mr)
    mr.add_argument("--json", action="store_true", help="a `model_channel` record")
    mr.set_defaults(handler=cmd_model_rollback)
    mi = msub.add_parser(
        "import",
        help="take what the ML team signed offline (a registry folder) into the sink's registry",
    )
    mi.add_argument("folder", metavar="DIR", help="the ML team's registry folder")
    mi.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    add_db_option(mi)
    mi.add_argument("--json", action="store_true", help="a `registry_import` record")
    mi.set_defaults(handler=cmd_model_import)
    ml = msub.add_parser("ls", help="published models and what each channel offers")
    ml.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    add_db_option(ml)
    ml.add_argument("--json", action="store_true", help="one record per model and channel")
    ml.set_defaults(handler=cmd_model_ls)

    pl = sub.add_parser(
        "prelabel", help="pick the frames of stored bundles worth a label and pre-label them"
    )
    pl.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    pl.add_argument("--teacher", metavar="MODEL", help="teacher ONNX model (its card beside it)")
    pl.add_argument(
        "--limit", type=int, default=1000, metavar="N", help="at most this many bundles"
    )
    pl.add_argument(
        "--vlm-url",
        metavar="URL",
        help="an OpenAI-compatible chat endpoint as a third source (off unless given; a key "
        "from $CAPSIGHT_VLM_KEY)",
    )
    pl.add_argument("--vlm-model", metavar="NAME", help="the model to ask (with --vlm-url)")
    pl.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the per-bundle work as a Ray Data job on this cluster (default: in process)",
    )
    pl.add_argument("--json", action="store_true", help="one `prelabel_report` record")
    add_db_option(pl)
    pl.set_defaults(handler=cmd_prelabel)

    au = sub.add_parser("audit", help="send reviewed labels the teacher or a barcode doubts back")
    au.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    au.add_argument("--teacher", metavar="MODEL", help="teacher ONNX model (its card beside it)")
    au.add_argument(
        "--min-score", type=float, default=0.9, help="the teacher's confidence that flags"
    )
    au.add_argument("--json", action="store_true", help="one `audit_report` record")
    add_db_option(au)
    au.set_defaults(handler=cmd_audit)

    ex = sub.add_parser("export", help="write the next version of a dataset of reviewed labels")
    ex.add_argument("--data", required=True, metavar="DIR", help="the sink's data folder")
    ex.add_argument("--name", required=True, help="dataset name (a-z, 0-9, . _ -)")
    ex.add_argument(
        "--test-store",
        action="append",
        metavar="STORE",
        help="stores whose items form the test set (repeatable; first version only)",
    )
    ex.add_argument("--store", action="append", metavar="STORE", help="only these stores")
    ex.add_argument("--seed", type=int, default=0, help="picks test stores when none are given")
    ex.add_argument(
        "--prelabels",
        action="store_true",
        help="the items not reviewed yet, labelled by their pre-labels alone (what review adds)",
    )
    ex.add_argument(
        "--rule",
        action="append",
        metavar="RULE",
        help="only the bundles in which this trigger rule fired (it opened the capture or "
        "fired while it was open; repeatable)",
    )
    ex.add_argument(
        "--without-rule",
        action="append",
        metavar="RULE",
        help="leave out the bundles in which this rule fired (repeatable)",
    )
    ex.add_argument(
        "--opened-by",
        action="append",
        metavar="RULE",
        help="only the bundles whose capture this rule opened (repeatable)",
    )
    ex.add_argument("--since", metavar="UTC", help="only bundles that started at or after this")
    ex.add_argument(
        "--max-bundles",
        type=int,
        metavar="N",
        help="only the first N bundles of the selection, oldest first (equal-sized comparisons)",
    )
    ex.add_argument(
        "--all-train",
        action="store_true",
        help="every store in training: data to add to a dataset whose test set lives elsewhere "
        "(capsight-train combine-datasets)",
    )
    ex.add_argument("--json", action="store_true", help="one `dataset` record")
    add_db_option(ex)
    ex.set_defaults(handler=cmd_export)

    from capsight_edge.cli.common import polish_help

    polish_help(parser, EXAMPLES)
    return parser


EXAMPLES = {
    "": "capsight-sink device add ops --admin --data /srv/sink\n"
    "capsight-sink serve --data /srv/sink --host 0.0.0.0",
    "serve": "capsight-sink serve --data /srv/sink\n"
    "capsight-sink serve --data /srv/sink --config sink.toml --log-format json",
    "doctor": "capsight-sink doctor --data /srv/sink\n"
    "capsight-sink doctor --data /srv/sink --s3-bucket capsight-bundles --json",
    "migrate": "capsight-sink migrate --data /srv/sink",
    "device": "capsight-sink device add cart-0001 --data /srv/sink",
    "device add": "capsight-sink device add cart-0001 --data /srv/sink\n"
    "capsight-sink device add ops --admin --json --data /srv/sink",
    "device list": "capsight-sink device list --json --data /srv/sink",
    "device revoke": "capsight-sink device revoke cart-0001 --data /srv/sink",
    "catalogue": "capsight-sink catalogue import catalogue.json --data /srv/sink",
    "catalogue import": "capsight-sink catalogue import catalogue.json --data /srv/sink",
    "prelabel": "capsight-sink prelabel --data /srv/sink --teacher teacher.onnx\n"
    "capsight-sink prelabel --data /srv/sink --vlm-url http://127.0.0.1:8000/v1 "
    "--vlm-model qwen2-vl",
    "audit": "capsight-sink audit --data /srv/sink --teacher teacher.onnx --min-score 0.95",
    "export": "capsight-sink export --data /srv/sink --name shelf-v1 --test-store store-07",
    "model": "capsight-sink model promote canary recogniser 20261203.1 --data /srv/sink",
    "model keygen": "capsight-sink model keygen --data /srv/sink\n"
    "capsight-sink model keygen --next --data /srv/sink",
    "model promote": "capsight-sink model promote canary recogniser 20261203.1 --data /srv/sink\n"
    "capsight-sink model promote stable recogniser 20261203.1 --rollout 25 --data /srv/sink",
    "model rollback": "capsight-sink model rollback stable --data /srv/sink",
    "model ls": "capsight-sink model ls --data /srv/sink --json",
    "model import": "capsight-sink model import ml-registry --data /srv/sink "
    "--db postgresql://sink@db.internal/capsight",
}


def _db(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cloud_sink.db import SinkDB

    return SinkDB(args.db or Path(args.data).expanduser() / "sink.db")


@contextlib.contextmanager
def _registry(args: argparse.Namespace) -> Iterator[Registry]:
    """The model registry of the sink ``--data`` (and ``--db``) names."""
    from cloud_sink.registry import Registry, sink_store

    sink_db = _db(args) if args.db else None
    try:
        yield Registry(args.data, sink_store(args.data, sink_db))
    finally:
        if sink_db is not None:
            sink_db.close()


def cmd_serve(args: argparse.Namespace) -> int:
    from capsight_edge import logs
    from cloud_sink.config import SinkConfig
    from cloud_sink.server import serve
    from cloud_sink.tus import make_app

    logs.configure(args.log_format, args.log_level)
    config = SinkConfig.load(args.config)
    blobs = staging = None
    if args.s3_bucket:
        from cloud_sink.blobs import S3BlobStore

        blobs = S3BlobStore(args.s3_bucket, endpoint_url=args.s3_endpoint, prefix=args.s3_prefix)
    if args.staging == "s3":
        if not args.s3_bucket:
            raise SinkError("--staging s3 keeps uploads in progress in --s3-bucket: name one")
        from functools import partial

        from cloud_sink.staging import S3Staging

        staging = partial(
            S3Staging, args.s3_bucket, endpoint_url=args.s3_endpoint, prefix=args.s3_prefix
        )
    app = make_app(
        args.data,
        config=config,
        max_size=args.max_size,
        expire_s=args.expire_hours * 3600 if args.expire_hours is not None else None,
        blobs=blobs,
        ingest_workers=args.ingest_workers,
        db=args.db,
        instance=args.instance or f"{socket.gethostname()}:{args.port}",
        staging=staging,
    )
    logs.get_logger("sink").info(
        "capsight-sink %s serving http://%s:%d/ (tus at /files/), data %s, database %s, "
        "%d ingest workers, blobs %s, uploads in progress %s",
        __version__,
        args.host,
        args.port,
        args.data,
        app.state.db.name,
        args.ingest_workers,
        f"s3://{args.s3_bucket}/{args.s3_prefix}" if args.s3_bucket else "local",
        app.state.tus.staging.name if app.state.tus.staging else app.state.tus.dir,
    )
    serve(app, args.host, args.port, app.state.config.timeouts, app.state.config.limits)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from capsight_edge.doctor.report import doctor_ok, format_table
    from capsight_edge.records import CheckRecord
    from cloud_sink.doctor import run_doctor
    from cloud_sink.schemas import SinkDoctorRecord

    s3 = (
        {"bucket": args.s3_bucket, "endpoint": args.s3_endpoint, "prefix": args.s3_prefix}
        if args.s3_bucket
        else None
    )
    checks = run_doctor(args.data, s3=s3, db=args.db)
    ok = doctor_ok(checks)
    if args.json:
        for c in checks:
            print(CheckRecord(**c.as_dict()).model_dump_json())  # type: ignore[arg-type]
        failed = [c.name for c in checks if c.status == "fail"]
        print(
            SinkDoctorRecord(
                data=args.data, ok=ok, checks=len(checks), failed=failed
            ).model_dump_json()
        )
    else:
        print(f"capsight-sink doctor: data {args.data}")
        print(format_table(checks))
        print("result: " + ("ok" if ok else "FAILED: a required check failed (see REMEDY)"))
    return 0 if ok else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from cloud_sink.doctor import migrate
    from cloud_sink.schemas import MigrateRecord

    if args.from_sqlite and not args.db:
        raise SinkError("--from-sqlite copies into a database server: give --db URL too")
    for name, before, after in migrate(args.data, db=args.db, from_sqlite=args.from_sqlite):
        if args.json:
            print(
                MigrateRecord(
                    database=name, version_before=before, version_after=after
                ).model_dump_json()
            )
        else:
            print(
                f"{name}: version {before} -> {after}"
                if after != before
                else f"{name}: version {after}, nothing to do"
            )
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


def _labelling(args: argparse.Namespace) -> tuple[Any, Any]:
    from cloud_sink.blobs import LocalBlobStore
    from cloud_sink.index import Index

    data = Path(args.data).expanduser()
    if args.db:  # the index lives in the sink's database server
        if not data.is_dir():
            raise SinkError(
                f"{data} holds no sink (no such folder): give the folder `serve --data` uses"
            )
        return Index(args.db), LocalBlobStore(data / "blobs" / "store")
    if not (data / "index.db").is_file():
        raise SinkError(f"{data} holds no sink (no index.db): give the folder `serve --data` uses")
    return Index(data / "index.db"), LocalBlobStore(data / "blobs" / "store")


def _teacher(args: argparse.Namespace) -> Any:
    if not args.teacher:
        return None
    from cloud_sink.teacher import Teacher, TeacherError

    try:
        return Teacher(args.teacher)
    except TeacherError as exc:
        raise SinkError(str(exc)) from None


def _catalogue(data: str) -> Any:
    from cloud_sink.catalogue import Catalogue, catalogue_path

    path = catalogue_path(data)
    return Catalogue.load(path) if path.is_file() else None


def cmd_catalogue_import(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cloud_sink.catalogue import Catalogue, catalogue_path

    try:
        cat = Catalogue.load(args.file)
    except (OSError, ValidationError, ValueError) as exc:
        raise SinkError(f"{args.file}: not a catalogue: {str(exc)[:500]}") from None
    target = catalogue_path(args.data)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(cat.to_json())
    os.replace(tmp, target)
    print(f"catalogue: {len(cat.products)} products in {target}")
    return 0


def cmd_prelabel(args: argparse.Namespace) -> int:
    from cloud_sink.prelabel import Prelabeler
    from cloud_sink.schemas import PrelabelRecord
    from cloud_sink.teacher import TeacherError

    index, blobs = _labelling(args)
    catalogue = _catalogue(args.data)
    if catalogue is None and not args.teacher:
        raise SinkError("nothing to pre-label with: import a catalogue or give --teacher")
    vlm = None
    if args.vlm_url:
        from cloud_sink.vlm import VlmClient

        if catalogue is None or not args.vlm_model:
            raise SinkError("--vlm-url needs --vlm-model and an imported catalogue")
        vlm = VlmClient(args.vlm_url, args.vlm_model, {p.sku: p.name for p in catalogue.products})
    try:
        labeler = Prelabeler(index, blobs, catalogue, _teacher(args), vlm=vlm)
        if args.ray_address:
            report = labeler.run_ray(args.ray_address, limit=args.limit)
        else:
            report = labeler.run(limit=args.limit)
    except TeacherError as exc:
        raise SinkError(f"the teacher failed; nothing more was labelled: {exc}") from None
    finally:
        if vlm is not None:
            vlm.close()
    r = report.as_dict()
    if args.json:
        print(PrelabelRecord(**r).model_dump_json())
    else:
        print(
            f"pre-labelled {r['items']} frames of {r['bundles']} bundles "
            f"({r['skipped_empty']} empty, {len(r['failed'])} failed): {r['by_state']}; "
            f"{r['frames_per_s'] or '-'} frames/s end to end, model "
            f"{r['model_frames_per_s'] or '-'} frames/s"
        )
        for what, why in r["failed"].items():
            print(f"  failed {what}: {why}")
    return 0 if not r["failed"] else 1


def cmd_audit(args: argparse.Namespace) -> int:
    from cloud_sink.audit import audit, audit_report
    from cloud_sink.schemas import AuditRecord

    index, blobs = _labelling(args)
    result = audit(index, blobs, _teacher(args), min_score=args.min_score)
    after = audit_report(index)
    record = AuditRecord(
        checked=result.checked,
        flagged=result.flagged,
        by_reason=result.by_reason,
        flagged_total=after["flagged_total"],
        reviewed_again=after["reviewed_again"],
        changed=after["changed"],
    )
    if args.json:
        print(record.model_dump_json())
    else:
        print(
            f"audit: {record.checked} labels checked, {record.flagged} sent back to review "
            f"{record.by_reason}; so far {record.flagged_total} flagged, "
            f"{record.reviewed_again} reviewed again, {record.changed} changed"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cloud_sink.datasets import load_manifest
    from cloud_sink.export import ExportError, export_dataset
    from cloud_sink.schemas import DatasetRecord

    index, blobs = _labelling(args)
    catalogue = _catalogue(args.data)
    if catalogue is None:
        raise SinkError("import the fleet's catalogue first: its SKUs are the classes")
    if args.max_bundles is not None and args.max_bundles < 1:
        raise SinkError("--max-bundles must be at least 1")
    if args.all_train and args.test_store:
        raise SinkError("--all-train puts every store in training: it takes no --test-store")
    selected: list[dict[str, Any]] | None = None
    if args.rule or args.without_rule or args.opened_by or args.since or args.max_bundles:
        found = {
            (r["device_id"], r["id"]): r
            for rule in args.rule or [None]
            for r in index.query(fired=rule, since=args.since, status="ok", limit=100_000)
        }
        without = set(args.without_rule or [])
        kept = [r for r in found.values() if not without & set((r["rules"] or "").split())]
        if args.opened_by:
            kept = [r for r in kept if r["rule"] in set(args.opened_by)]
        selected = sorted(kept, key=lambda r: (r["start_utc"], r["device_id"], r["id"]))
        selected = selected[: args.max_bundles or None]
    try:
        folder = export_dataset(
            index,
            blobs,
            Path(args.data).expanduser(),
            args.name,
            catalogue.skus,
            test_stores=args.test_store,
            seed=args.seed,
            stores=args.store,
            gtins=catalogue.gtins(),
            prelabels=args.prelabels,
            bundles=None if selected is None else {(r["device_id"], r["id"]) for r in selected},
            all_train=args.all_train,
        )
    except ExportError as exc:
        raise SinkError(f"export refused: {exc}") from None
    m = load_manifest(folder)
    record = DatasetRecord(
        name=m.name,
        version=m.version,
        path=str(folder),
        items=len(m.items),
        splits=m.counts(),
        stores=dict(m.stores),
        digest=m.digest(),
        bundles=None if selected is None else len(selected),
        bundle_bytes=None if selected is None else sum(int(r["bytes"] or 0) for r in selected),
    )
    if args.json:
        print(record.model_dump_json())
    else:
        print(f"dataset {m.name} v{m.version}: {len(m.items)} items {m.counts()} in {folder}")
    return 0


def _channel_record(channel: str, entry: dict[str, Any] | None) -> Any:
    from cloud_sink.schemas import ModelChannelRecord

    e = entry or {}
    return ModelChannelRecord(
        channel=channel,
        name=e.get("name"),
        version=e.get("version"),
        rollout_pct=e.get("rollout_pct"),
        sequence=e.get("sequence"),
        updated_utc=e.get("updated_utc"),
        by=e.get("by"),
    )


def cmd_model_keygen(args: argparse.Namespace) -> int:
    from cloud_sink.registry import RegistryError, keygen, registry_dir

    try:
        pub = keygen(args.data, next_key=args.next)
    except RegistryError as exc:
        raise SinkError(str(exc)) from None
    name, use = (
        ("online.next.pub.json", "rotate-keys --online-key")
        if args.next
        else ("online.pub.json", "registry-init")
    )
    print(
        f"online key {pub['keyid'][:16]}...: give {registry_dir(args.data) / name} "
        f"to the ML team for capsight-train {use}"
    )
    return 0


def cmd_model_promote(args: argparse.Namespace) -> int:
    return _change_channel(args, rollback=False)


def cmd_model_rollback(args: argparse.Namespace) -> int:
    return _change_channel(args, rollback=True)


def _change_channel(args: argparse.Namespace, *, rollback: bool) -> int:
    """``model promote`` and ``model rollback``: one signed change of a channel, printed."""
    from cloud_sink.registry import RegistryError

    with _registry(args) as reg:
        try:
            if rollback:
                entry = reg.rollback(args.channel, who=args.by)
            else:
                entry = reg.promote(
                    args.channel, args.name, args.version, rollout_pct=args.rollout, who=args.by
                )
        except RegistryError as exc:
            raise SinkError(str(exc)) from None
    if args.json:
        print(_channel_record(args.channel, entry).model_dump_json())
    else:
        what = "back to " if rollback else ""
        print(
            f"{args.channel}: {what}{entry['name']} {entry['version']} for "
            f"{entry['rollout_pct']}% of the fleet (change {entry['sequence']})"
        )
    return 0


def cmd_model_import(args: argparse.Namespace) -> int:
    from cloud_sink.registry import RegistryError, import_registry
    from cloud_sink.schemas import RegistryImportRecord

    with _registry(args) as reg:
        try:
            out = import_registry(args.folder, reg.store)
        except RegistryError as exc:
            raise SinkError(str(exc)) from None
    rec = RegistryImportRecord(**out)
    print(
        rec.model_dump_json()
        if args.json
        else f"imported root v{rec.root_version}, targets v{rec.targets_version} "
        f"({len(rec.models)} models, {rec.files_copied} files copied) into {reg.store.name}"
    )
    return 0


def cmd_model_ls(args: argparse.Namespace) -> int:
    from cloud_sink.registry import RegistryError
    from cloud_sink.schemas import PublishedModelRecord

    with _registry(args) as reg:
        if not reg.ready:
            raise SinkError(
                "no registry yet: capsight-train registry-init --registry "
                + (
                    "ML_FOLDER, then capsight-sink model import ML_FOLDER"
                    if args.db
                    else "DATA/registry"
                )
            )
        try:
            models = reg.models()
            channels = {c: reg.channel(c) for c in ("canary", "stable")}
        except RegistryError as exc:
            raise SinkError(str(exc)) from None
    for m in models:
        rec = PublishedModelRecord(
            name=m.get("name", "?"),
            version=m.get("version", "?"),
            path=m["path"],
            length=m["length"],
            precision=m.get("precision"),
            accuracy=float(m["accuracy"]) if m.get("accuracy") else None,
        )
        print(rec.model_dump_json() if args.json else f"{rec.name} {rec.version} ({rec.path})")
    for channel, entry in channels.items():
        rec = _channel_record(channel, entry)
        print(
            rec.model_dump_json()
            if args.json
            else (
                f"{channel}: {rec.name} {rec.version} at {rec.rollout_pct}%"
                if rec.name
                else f"{channel}: nothing"
            )
        )
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
