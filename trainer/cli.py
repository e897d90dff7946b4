"""`capsight-train`: render datasets, train through Ray, gate, and publish.

Exit status: 0 done (for ``evaluate``: released), 1 the gate rejected the candidate, 2 bad input
(the message says what), 3 training failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capsight_edge.cli.common import polish_help
from trainer import __version__

EXAMPLES = {
    "": "capsight-train render-dataset --name baseline\n"
    "capsight-train run --dataset baseline --out runs/baseline\n"
    "capsight-train evaluate --candidate runs/fleet/model.onnx "
    "--champion runs/baseline/model.onnx --test-set stores-test --out runs/fleet/gate",
    "render-dataset": "capsight-train render-dataset --name baseline\n"
    "capsight-train render-dataset --name stores-test --store store-north:north.toml "
    "--store store-south --seed 7 --json",
    "run": "capsight-train run --dataset baseline --out runs/baseline\n"
    "capsight-train run --dataset /srv/sink/datasets/fleet/v3 --out runs/fleet "
    "--address 10.0.0.5:6379 --workers 4 --cpus-per-worker 2\n"
    "capsight-train run --dataset baseline@1 --out runs/teacher --arch teacher --epochs 20",
    "evaluate": "capsight-train evaluate --candidate runs/fleet/model.onnx "
    "--champion runs/baseline/model.onnx --test-set stores-test --out runs/fleet/gate\n"
    "capsight-train evaluate --candidate runs/baseline/model-int8.onnx --test-set baseline "
    "--out runs/baseline/gate-int8 --json",
    "publish": "capsight-train publish --model runs/fleet/model.onnx "
    "--eval runs/fleet/gate/eval.json --registry /srv/sink/registry --key ml-team.key",
    "keygen": "capsight-train keygen --out ml-team.key",
    "registry-init": "capsight-train registry-init --registry /srv/sink/registry "
    "--key ml-team.key --online-key /srv/sink/registry/online.pub.json",
    "combine-datasets": "capsight-train combine-datasets --name shelf-plus-fleet --base shelf "
    "--add fleet",
    "rotate-keys": "capsight-train rotate-keys --registry /srv/sink/registry --key ml-team.key "
    "--new-key ml-team-2027.key --online-key /srv/sink/registry/online.next.pub.json",
}


class CliError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsight-train",
        description="capsight trainer: rendered and fleet datasets in, gated ONNX models out",
    )
    parser.add_argument("--version", action="version", version=f"capsight-train {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--root",
            help="where dataset NAMEs live (default: $CAPSIGHT_DATASETS, else ./datasets)",
        )
        p.add_argument("--json", action="store_true", help="JSON Lines records on stdout")

    r = sub.add_parser(
        "render-dataset",
        help="render a dataset of the catalogue (clean studio, or stores' conditions)",
    )
    r.add_argument("--name", required=True, help="the dataset's name (a new version each time)")
    r.add_argument("--catalogue-seed", type=int, default=1, help="the fleet catalogue's seed")
    r.add_argument("--catalogue-size", type=int, default=40, help="products in the catalogue")
    r.add_argument("--views", type=int, default=24, help="frames per SKU over all splits")
    r.add_argument(
        "--none-share", type=float, default=0.15, help="share of frames with no product held"
    )
    r.add_argument("--width", type=int, default=640, help="frame width in pixels")
    r.add_argument("--height", type=int, default=360, help="frame height in pixels")
    r.add_argument("--seed", type=int, default=0, help="the renders' seed (fixed: same frames)")
    r.add_argument(
        "--store",
        action="append",
        metavar="ID[:PROFILE]",
        help="render in this store's conditions (its profile's [sim.store_conditions]; "
        "repeat for several stores); without it: the clean studio",
    )
    r.add_argument(
        "--split",
        choices=("test", "by-store"),
        default="test",
        help="with --store: every store in the test split, or the stores spread over "
        "train/val/test",
    )
    common(r)
    r.set_defaults(handler=cmd_render)

    cb = sub.add_parser(
        "combine-datasets",
        help="a new dataset: one on its own splits, plus others' items all in training",
    )
    cb.add_argument(
        "--name", required=True, help="the new dataset's name (a new version each time)"
    )
    cb.add_argument("--base", required=True, help="the dataset kept on its own splits")
    cb.add_argument(
        "--add",
        action="append",
        required=True,
        metavar="DATASET",
        help="a dataset whose every item goes to training (repeat)",
    )
    common(cb)
    cb.set_defaults(handler=cmd_combine)

    t = sub.add_parser("run", help="train a model through Ray Train, export it, check it")
    t.add_argument("--dataset", required=True, help="a dataset folder, NAME or NAME@VERSION")
    t.add_argument("--out", required=True, help="the run's folder (must be new or empty)")
    t.add_argument(
        "--arch",
        choices=("recogniser", "teacher"),
        default="recogniser",
        help="the cart's recogniser or the larger pre-labelling teacher",
    )
    t.add_argument("--epochs", type=int, default=20, help="passes over the training split")
    t.add_argument(
        "--steps",
        type=int,
        help="exactly this many optimiser steps instead of --epochs (a fixed training budget "
        "whatever the dataset's size)",
    )
    t.add_argument("--batch", type=int, default=32, help="frames per step per worker")
    t.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    t.add_argument(
        "--balance",
        type=float,
        default=0.0,
        help="0..1: draw a class with chance count**-BALANCE (0: the data as it is; 1: every "
        "class equally often, for data whose classes are uneven, like a fleet's)",
    )
    t.add_argument(
        "--track-balance",
        type=float,
        default=0.0,
        help="0..1: draw a frame of an item of n frames (its own and its track's) with chance "
        "n**-TRACK_BALANCE (0: every frame alike; 1: an item with its whole track as often as "
        "one frame; 0.5: a track of n frames worth sqrt(n) frames)",
    )
    t.add_argument("--seed", type=int, default=0, help="the run's seed (same seed, same model)")
    t.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    t.add_argument(
        "--cpus-per-worker", type=float, default=0.5, help="CPUs each worker reserves (fractional)"
    )
    t.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    t.add_argument(
        "--address",
        help="an existing Ray cluster (host:port of `ray start --head`); default: a local "
        "cluster started for the run",
    )
    t.add_argument(
        "--max-failures", type=int, default=2, help="worker failures a run survives (resumes)"
    )
    t.add_argument(
        "--allow-empty-classes",
        action="store_true",
        help="train even when some classes have no training item",
    )
    t.add_argument("--model-version", help="the model card's version (default: UTC time)")
    common(t)
    t.set_defaults(handler=cmd_run)

    e = sub.add_parser("evaluate", help="the release gate: a candidate against the champion")
    e.add_argument("--candidate", required=True, help="the candidate's ONNX file (with its card)")
    e.add_argument("--champion", help="the current champion's ONNX file; none: a first model")
    e.add_argument(
        "--test-set",
        action="append",
        required=True,
        metavar="DATASET",
        help="a dataset whose test split judges (folder, NAME or NAME@VERSION; repeat)",
    )
    e.add_argument("--out", required=True, help="where eval.json, eval.md and the plots go")
    e.add_argument("--margin", type=float, default=0.01, help="accuracy the candidate must gain")
    e.add_argument("--tolerance", type=float, default=0.03, help="accuracy any one slice may lose")
    e.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="a slice's loss past the tolerance rejects when chance explains it less often "
        "than this (one-sided exact McNemar test on the same items); 1 rejects on any such loss",
    )
    e.add_argument(
        "--min-slice-items", type=int, default=20, help="slices smaller than this are not judged"
    )
    e.add_argument(
        "--min-accuracy", type=float, default=0.6, help="a first model's minimum accuracy"
    )
    e.add_argument("--min-box-iou", type=float, default=0.5, help="a first model's minimum IoU")
    common(e)
    e.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("publish", help="sign a released model into the model registry")
    p.add_argument("--model", required=True, help="the ONNX file the gate released")
    p.add_argument("--eval", required=True, help="the gate's eval.json for that file")
    p.add_argument("--registry", required=True, help="the registry folder (the sink's)")
    p.add_argument("--key", required=True, help="the ML team's offline key file")
    p.add_argument("--json", action="store_true", help="JSON Lines records on stdout")
    p.set_defaults(handler=cmd_publish)

    k = sub.add_parser("keygen", help="a new ed25519 signing key (the ML team's offline key)")
    k.add_argument("--out", required=True, help="the private key file (a .pub.json beside it)")
    k.add_argument("--json", action="store_true", help="JSON Lines records on stdout")
    k.set_defaults(handler=cmd_keygen)

    ri = sub.add_parser("registry-init", help="create the model registry's signed root")
    ri.add_argument("--registry", required=True, help="the registry folder (the sink's)")
    ri.add_argument("--key", required=True, help="the ML team's offline key file")
    ri.add_argument("--online-key", required=True, help="the sink's online public key (.pub.json)")
    ri.set_defaults(handler=cmd_registry_init)
    rk = sub.add_parser(
        "rotate-keys", help="a new registry root naming a new ML team key and/or online key"
    )
    rk.add_argument("--registry", required=True, help="the registry folder (the sink's)")
    rk.add_argument("--key", required=True, help="the ML team's current offline key file")
    rk.add_argument("--new-key", help="the ML team's new offline key file (capsight-train keygen)")
    rk.add_argument(
        "--online-key",
        help="the sink's next online public key (online.next.pub.json, from "
        "capsight-sink model keygen --next)",
    )
    rk.add_argument("--json", action="store_true", help="a `keys_rotated` record")
    rk.set_defaults(handler=cmd_rotate_keys)
    polish_help(parser, EXAMPLES)
    return parser


def _say(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout)


def _progress(args: argparse.Namespace) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=args.json or not sys.stderr.isatty(),
    )


def cmd_render(args: argparse.Namespace) -> int:
    from trainer.data import datasets_root
    from trainer.records import DatasetRenderedRecord
    from trainer.render import RenderSpec, render_dataset

    if not 2 <= args.catalogue_size <= 2000:
        raise CliError("--catalogue-size must be 2..2000")
    if not 1 <= args.views <= 1000:
        raise CliError("--views must be 1..1000")
    if not 0 <= args.none_share < 0.9:
        raise CliError("--none-share must be 0..0.9")
    if not (64 <= args.width <= 3840 and 64 <= args.height <= 2160):
        raise CliError("--width/--height must be 64..3840 x 64..2160")
    stores = None
    if args.store:
        stores = _stores(args.store, args.split)
    spec = RenderSpec(
        name=args.name,
        root=datasets_root(args.root),
        catalogue_seed=args.catalogue_seed,
        catalogue_size=args.catalogue_size,
        views=args.views,
        none_share=args.none_share,
        width=args.width,
        height=args.height,
        seed=args.seed,
        stores=stores,
    )
    t0 = time.perf_counter()
    with _progress(args) as bar:
        task = bar.add_task(f"rendering {args.name}", total=None)
        folder = render_dataset(
            spec, on_item=lambda done, total: bar.update(task, completed=done, total=total)
        )
    _print_dataset(args, DatasetRenderedRecord, folder, t0)
    return 0


def _print_dataset(
    args: argparse.Namespace, kind: Any, folder: Path, t0: float, **extra: Any
) -> None:
    """The record of a new dataset version (``kind``), or one line."""
    from cloud_sink.datasets import load_manifest
    from trainer.records import emit

    m = load_manifest(folder, verify=False)
    record = kind(
        name=m.name,
        version=m.version,
        path=str(folder),
        items=len(m.items),
        splits=m.counts(),
        stores=dict(m.stores),
        classes=len(m.classes),
        digest=m.digest(),
        duration_s=round(time.perf_counter() - t0, 3),
        **extra,
    )
    if args.json:
        emit(record)
    else:
        c = record.splits
        print(
            f"{m.name} v{m.version}: {record.items} frames ({c['train']} train, {c['val']} val, "
            f"{c['test']} test), {record.classes - 1} SKUs, in {folder}"
        )


def cmd_combine(args: argparse.Namespace) -> int:
    from trainer.data import combine_datasets, open_dataset
    from trainer.records import DatasetCombinedRecord

    t0 = time.perf_counter()
    base = open_dataset(args.base, root=args.root, allow_empty_classes=True)
    added = [
        open_dataset(a, root=args.root, allow_empty_classes=True, added=True) for a in args.add
    ]
    folder = combine_datasets(args.name, base, added, root=args.root)
    combined = [f"{d.manifest.name}@{d.manifest.version}" for d in [base, *added]]
    _print_dataset(args, DatasetCombinedRecord, folder, t0, combined=combined)
    return 0


def _stores(specs: list[str], split: str) -> dict[str, tuple[Any, str]]:
    import re

    from capsight_edge.profile import load_profile
    from capsight_edge.scene.conditions import StoreConditions

    out: dict[str, tuple[Any, str]] = {}
    ids = []
    for spec in specs:
        store, _, profile = spec.partition(":")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", store):
            raise CliError(f"--store {spec!r}: the store id must be letters, digits, . _ -")
        if store in out:
            raise CliError(f"--store {store} is given twice")
        try:
            cond = (
                StoreConditions.from_section(load_profile(profile).sim.store_conditions)
                if profile
                else StoreConditions()
            )
        except Exception as exc:
            raise CliError(f"--store {spec}: {exc}") from None
        out[store] = (cond, "test")
        ids.append(store)
    if split == "by-store":
        if len(ids) < 3:
            raise CliError("--split by-store needs at least three stores (train, val, test)")
        for i, store in enumerate(sorted(ids)):
            side = "test" if i == 0 else "val" if i == 1 else "train"
            out[store] = (out[store][0], side)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from trainer.data import open_dataset
    from trainer.records import TrainEpochRecord, TrainResultRecord, emit
    from trainer.run import run
    from trainer.train import TrainError, TrainSettings, epochs_for

    if not 1 <= args.epochs <= 1000:
        raise CliError("--epochs must be 1..1000")
    if not 1 <= args.batch <= 4096:
        raise CliError("--batch must be 1..4096")
    if not 1 <= args.workers <= 256 or not 0 < args.cpus_per_worker <= 256:
        raise CliError("--workers must be 1..256 and --cpus-per-worker above 0")
    if not 0 < args.lr < 1:
        raise CliError("--lr must be between 0 and 1")
    if not 0 <= args.balance <= 1:
        raise CliError("--balance must be between 0 and 1")
    if not 0 <= args.track_balance <= 1:
        raise CliError("--track-balance must be between 0 and 1")
    out = Path(args.out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise CliError(f"{out} is not empty: give a new folder for the run")
    # Every check of the data happens here, before any worker starts.
    ds = open_dataset(args.dataset, root=args.root, allow_empty_classes=args.allow_empty_classes)
    if args.steps is not None:
        if not 1 <= args.steps <= 1_000_000:
            raise CliError("--steps must be 1..1000000")
        args.epochs = epochs_for(
            args.steps, ds.manifest.counts()["train"], args.workers, args.batch
        )
    settings = TrainSettings(
        dataset=str(ds.root.resolve()),
        out=str(out),
        arch=args.arch,
        epochs=args.epochs,
        steps=args.steps or 0,
        batch=args.batch,
        lr=args.lr,
        balance=args.balance,
        track_balance=args.track_balance,
        seed=args.seed,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        threads=args.threads,
        max_failures=args.max_failures,
    )
    c = ds.manifest.counts()
    _say(
        args,
        f"training {args.arch} on {ds.manifest.name} v{ds.manifest.version} ({c['train']} train, "
        f"{c['val']} val, {c['test']} test, {len(ds.classes) - 1} SKUs) with {args.workers} Ray "
        f"workers on {'the cluster at ' + args.address if args.address else 'a local cluster'}",
    )
    with _progress(args) as bar:
        task = bar.add_task("starting Ray", total=args.epochs)

        def on_epoch(e: Any) -> None:
            val = "" if e.val_accuracy is None else f", val {e.val_accuracy:.1%}"
            text = (
                f"epoch {e.epoch + 1}/{e.epochs}: loss {e.loss:.3f}, train "
                f"{e.train_accuracy:.1%}{val}, {e.samples_per_s:.0f} frames/s"
                + (f" (resumed from epoch {e.resumed_from})" if e.resumed_from is not None else "")
            )
            bar.update(task, completed=e.epoch + 1, description=text)
            if args.json:
                emit(
                    TrainEpochRecord(
                        **{k: getattr(e, k) for k in TrainEpochRecord.model_fields if k != "type"}
                    )
                )
            elif not sys.stderr.isatty():
                print(text, flush=True)

        try:
            report = run(
                ds,
                settings,
                address=args.address,
                on_epoch=on_epoch,
                on_stage=lambda s: bar.update(task, description=s),
                version=args.model_version,
            )
        except TrainError as exc:
            print(f"capsight-train: {exc}", file=sys.stderr)
            return 3
    if args.json:
        emit(TrainResultRecord(**report))
    else:
        m = report["models"]
        print(
            f"done in {report['train_s'] + report['export_s']:.0f} s (of which starting Ray and "
            f"the workers {report['start_s']:.0f} s): test accuracy fp32 "
            f"{m['fp32']['accuracy']:.1%}, "
            f"int8 {m['int8']['accuracy']:.1%}; {m['fp32']['inferences_per_s_1core']:.0f} "
            f"inferences/s on one core (int8 {m['int8']['inferences_per_s_1core']:.0f}); "
            f"parity max abs error {report['parity']['max_abs_error']:.1e}\n"
            f"model: {out / 'model.onnx'} (+ model-int8.onnx, cards, train.json)"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trainer.data import open_dataset
    from trainer.evaluate import GateConfig, gate, load_tests, write_report
    from trainer.records import EvalRecord, emit

    candidate = Path(args.candidate)
    champion = Path(args.champion) if args.champion else None
    for m in (candidate, champion):
        if m is not None and not m.is_file():
            raise CliError(f"{m}: no such model")
    sets = [open_dataset(t, root=args.root, test_only=True) for t in args.test_set]
    config = GateConfig(
        margin=args.margin,
        tolerance=args.tolerance,
        alpha=args.alpha,
        min_slice_items=args.min_slice_items,
        min_accuracy=args.min_accuracy,
        min_box_iou=args.min_box_iou,
    )
    try:
        report = gate(candidate, champion, load_tests(sets), config)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    write_report(report, Path(args.out))
    if args.json:
        emit(EvalRecord(**report))
    else:
        cand, champ = report["candidate"], report["champion"]
        vs = f" vs champion {champ['accuracy']:.1%}" if champ else " (first model)"
        print(f"gate: {report['decision'].upper()}: accuracy {cand['accuracy']:.1%}{vs}")
        for r in report["reasons"]:
            print(f"  - {r}")
        print(f"report: {Path(args.out) / 'eval.md'}")
    return 0 if report["decision"] == "release" else 1


def cmd_publish(args: argparse.Namespace) -> int:
    from trainer.publish import PublishError, publish
    from trainer.records import PublishedRecord, emit

    try:
        out = publish(Path(args.model), Path(args.eval), Path(args.registry), Path(args.key))
    except (PublishError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        emit(PublishedRecord(**out))
    else:
        print(
            f"published {out['name']} {out['version']} in {args.registry} (targets "
            f"v{out['targets_version']}); point a channel at it with capsight-sink model promote"
        )
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from capsight_edge.runtime.trust import generate_key, pub_path
    from trainer.records import KeyRecord, emit

    out = Path(args.out)
    if out.exists():
        raise CliError(f"{out} exists: a key is never overwritten")
    pub = generate_key(out)
    record = KeyRecord(path=str(out), public_path=str(pub_path(out)), keyid=pub["keyid"])
    if args.json:
        emit(record)
    else:
        print(f"key {record.keyid[:16]}...: {out} (keep it offline), public {record.public_path}")
    return 0


def cmd_registry_init(args: argparse.Namespace) -> int:
    from trainer.publish import PublishError, init_registry

    try:
        root = init_registry(Path(args.registry), Path(args.key), Path(args.online_key))
    except (PublishError, FileNotFoundError, ValueError, KeyError) as exc:
        raise CliError(str(exc)) from None
    print(f"registry root: {root} (give a copy to every cart as [model] trust_root)")
    return 0


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    from trainer.publish import PublishError, rotate_keys
    from trainer.records import KeysRotatedRecord, emit

    try:
        out = rotate_keys(
            Path(args.registry),
            Path(args.key),
            new_ml_key=Path(args.new_key) if args.new_key else None,
            new_online=Path(args.online_key) if args.online_key else None,
        )
    except (PublishError, FileNotFoundError, ValueError, KeyError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        emit(KeysRotatedRecord(**out))
    else:
        print(
            f"root v{out['root_version']}: {out['root']} (carts follow it at their next poll; "
            f"new carts may be given it as [model] trust_root); targets v{out['targets_version']}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = build_parser().parse_args(argv)
    from trainer.data import DatasetError

    try:
        return int(args.handler(args))
    except (CliError, DatasetError) as exc:
        if getattr(args, "json", False):
            from trainer.records import ErrorRecord, emit

            emit(ErrorRecord(error=str(exc)))
        print(f"capsight-train: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
