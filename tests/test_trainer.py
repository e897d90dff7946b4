"""The trainer, end to end through real Ray clusters: a rendered dataset, `capsight-train run`
on a cluster started with `ray start --head` with one of its workers killed mid-run (it resumes
from the last checkpoint and ends with the very weights of an uninterrupted run on a local
cluster), ONNX export with parity, int8, model cards every consumer reads, the release gate
(a worse candidate is rejected, a better one released) and publishing. Bad datasets are refused
before any worker starts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from capsight_edge.localray import ray_head
from cloud_sink.datasets import Manifest, load_manifest
from tests.conftest import ROOT

# A Ray cluster (`ray start --head`), both cores. The module's `runs` trains three models
# (136 s here in the suite on a slow day) in the first test that asks for it: twice the suite's
# 300 s per test, for a slower machine.
pytestmark = [pytest.mark.whole_machine, pytest.mark.timeout(600)]

TRAIN = [sys.executable, "-m", "trainer.cli"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
SKUS = 6


def train_cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRAIN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, **(env or {})},
        cwd=ROOT,
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@dataclass
class Runs:
    root: Path
    dataset: Path
    stores_test: Path
    killed: Path  # the run on `ray start --head` whose worker was killed
    clean: Path  # the same run, uninterrupted, on a local cluster
    worse: Path  # one epoch: a worse model
    killed_pid: int


def render(root: Path, *args: str) -> Path:
    res = train_cli(
        "render-dataset",
        "--root",
        str(root),
        "--catalogue-size",
        str(SKUS),
        "--width",
        "320",
        "--height",
        "180",
        "--json",
        *args,
    )
    assert res.returncode == 0, res.stderr
    (rec,) = records(res.stdout)
    assert rec["type"] == "dataset_rendered"
    return Path(rec["path"])


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("trainer")
    dataset = render(root, "--name", "baseline", "--views", "18")
    stores_test = render(
        root,
        "--name",
        "stores-test",
        "--views",
        "12",
        "--store",
        "store-north",
        "--store",
        "store-south",
        "--seed",
        "7",
    )
    common = ["--dataset", str(dataset), "--epochs", "10", "--seed", "3", "--json"]

    # 2 (started first, run beside 1: most of a short run is Ray starting and stopping
    # processes). The same run, uninterrupted, on a local cluster started for it (the default),
    # with a temporary folder too deep for Ray's session sockets: Ray gets a short one, removed
    # after. (torch keeps its compile cache, torchinductor_USER, in $TMPDIR on purpose: put
    # elsewhere.)
    clean, deep = root / "clean", root / ("t" * 60) / ("m" * 60)
    deep.mkdir(parents=True)
    env = {"TMPDIR": str(deep), "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor")}
    clean_log = (root / "clean.log").open("w+")
    clean_proc = subprocess.Popen(
        [*TRAIN, "run", *common, "--out", str(clean)],
        stdout=clean_log,
        stderr=subprocess.STDOUT,
        env={**ENV, **env},
        cwd=ROOT,
    )

    try:
        # 1. On an existing cluster (`ray start --head`), killing one worker after the first epoch;
        # beside it on the same cluster, a deliberately worse candidate: five optimiser steps (a
        # fixed budget, --steps).
        killed, worse = root / "killed", root / "worse"
        with ray_head() as address, (root / "worse.log").open("w+") as worse_log:
            proc = subprocess.Popen(
                [*TRAIN, "run", *common, "--out", str(killed), "--address", address],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
                cwd=ROOT,
            )
            worse_run = [
                *TRAIN,
                "run",
                "--dataset",
                str(dataset),
                "--steps",
                "5",
                "--out",
                str(worse),
            ]
            worse_proc = subprocess.Popen(
                [*worse_run, "--address", address],
                stdout=worse_log,
                stderr=subprocess.STDOUT,
                env=ENV,
                cwd=ROOT,
            )
            progress = killed / "progress.jsonl"

            def first_epoch() -> bool:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                return progress.is_file() and progress.read_text().count("\n") >= 2

            try:
                wait_for(first_epoch, 300, "the first two epochs")
                pid = int((killed / "workers" / "1.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                _out, err = proc.communicate(timeout=600)
                assert proc.returncode == 0, err[-3000:]
                if worse_proc.wait(timeout=600) != 0:
                    worse_log.seek(0)
                    pytest.fail(f"the five-step run failed: {worse_log.read()[-3000:]}")
                if clean_proc.wait(timeout=600) != 0:
                    clean_log.seek(0)
                    pytest.fail(f"the uninterrupted run failed: {clean_log.read()[-3000:]}")
            finally:  # a failure leaves no run behind
                for left in (proc, worse_proc):
                    if left.poll() is None:
                        left.kill()
                        left.wait()
    finally:
        if clean_proc.poll() is None:
            clean_proc.kill()
            clean_proc.wait()
        clean_log.close()
    assert list(deep.iterdir()) == []
    return Runs(root, dataset, stores_test, killed, clean, worse, pid)


def test_render_dataset_is_the_catalogue_in_the_manifest_format(tmp_path: Path) -> None:
    from capsight_edge.scene.catalogue import Catalogue

    a = render(tmp_path, "--name", "b", "--views", "6")
    b = render(tmp_path, "--name", "b", "--views", "6")
    assert (a.name, b.name) == ("v1", "v2")  # each render is a new version
    m, n = load_manifest(a), load_manifest(b)
    assert [i.sha256 for i in m.items] == [i.sha256 for i in n.items]  # fixed from its seed
    cat = Catalogue(SKUS, seed=1)
    assert m.classes == ["", *(p.sku for p in cat.products)]
    assert m.gtins == {p.sku: p.gtin14 for p in cat.products}
    assert m.stores == {"studio-a": "train", "studio-b": "val", "studio-c": "test"}
    counts = m.counts()
    assert counts["train"] > counts["test"] > 0 and counts["val"] > 0
    for sku in m.classes:  # every SKU (and "no product") in every split
        for split in ("train", "val", "test"):
            assert any(i.label.sku == sku and i.split == split for i in m.items), (sku, split)
    for item in m.items:
        assert item.label.source == "render"
        assert (item.label.box is not None) == bool(item.label.sku)
        if item.label.box:
            x, y, w, h = item.label.box
            assert x >= 0 and y >= 0 and x + w <= item.width and y + h <= item.height
        if item.label.sku:  # studio: clean conditions
            assert item.conditions == {
                "lighting": "normal",
                "blur": "no",
                "glare": "no",
                "occlusion": "no",
                "crumpled": "no",
            }


def test_a_killed_worker_resumes_from_its_checkpoint_with_the_same_result(runs: Runs) -> None:
    import torch

    killed = json.loads((runs.killed / "train.json").read_text())
    clean = json.loads((runs.clean / "train.json").read_text())
    assert killed["cluster"] == "existing" and clean["cluster"] == "local"
    assert killed["workers"] == 2 and killed["restarts"] >= 1
    assert any(e["resumed_from"] for e in killed["epochs"])  # from a checkpoint, not from 0
    assert clean["restarts"] == 0
    assert [e["epoch"] for e in killed["epochs"]] == list(range(10))
    pids = {e["attempt_pid"] for e in killed["epochs"]}
    assert runs.killed_pid not in pids or len(pids) > 1  # a new group after the kill
    # Deterministic from the seed: the resumed run ends with the uninterrupted run's weights.
    a = torch.load(runs.killed / "model.pt", weights_only=True)["model"]
    b = torch.load(runs.clean / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [e["loss"] for e in killed["epochs"]] == pytest.approx(
        [e["loss"] for e in clean["epochs"]], rel=1e-6
    )


def test_export_parity_int8_and_the_card_every_consumer_reads(runs: Runs) -> None:
    import onnx

    from capsight_edge.runtime.card import ONNX_KEY, read_card
    from cloud_sink.teacher import Teacher

    report = json.loads((runs.clean / "train.json").read_text())
    assert report["parity"]["max_abs_error"] <= 1e-4
    assert report["parity"]["argmax_agreement"] == 1.0
    models = report["models"]
    assert abs(models["int8_accuracy_loss"]) <= 0.05
    assert models["fp32"]["inferences_per_s_1core"] >= 15  # a cart's CPU, one core
    assert models["int8"]["bytes"] < models["fp32"]["bytes"] / 2
    manifest = Manifest.model_validate_json((runs.dataset / "manifest.json").read_bytes())
    for name, precision in (("model.onnx", "fp32"), ("model-int8.onnx", "int8")):
        path = runs.clean / name
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        assert proto.opset_import[0].version == 18
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
        inside = {p.key: p.value for p in proto.metadata_props}[ONNX_KEY]
        card = read_card(path)
        assert json.loads(inside) == json.loads(card.model_dump_json(exclude_none=True))
        assert card.precision == precision and card.labels == manifest.classes
        assert card.gtins == ["", *(manifest.gtins[s] for s in manifest.classes[1:])]
        assert card.dataset and card.dataset.sha256 == manifest.digest()
        assert card.metrics["accuracy"] > 0
        assert (card.input.width, card.input.color) == (112, "RGB")
        # The sink's pre-labelling takes the trained model as its teacher, through the card.
        teacher = Teacher(path)
        import cv2

        item = next(i for i in manifest.items if i.split == "test" and i.label.sku)
        img = cv2.imread(str(runs.dataset / item.frame))
        (pred,) = teacher.predict([img])
        assert pred.sku in manifest.classes and 0 <= pred.score <= 1


def test_the_gate_rejects_a_worse_candidate_and_releases_a_better_one(
    runs: Runs, tmp_path: Path
) -> None:
    good, worse = runs.clean / "model.onnx", runs.worse / "model.onnx"
    res = train_cli(
        "evaluate",
        "--candidate",
        str(worse),
        "--champion",
        str(good),
        "--test-set",
        str(runs.dataset),
        "--test-set",
        str(runs.stores_test),
        "--out",
        str(tmp_path / "no"),
        "--min-slice-items",
        "10",
        "--json",
    )
    assert res.returncode == 1, res.stderr
    (verdict,) = records(res.stdout)
    assert verdict["decision"] == "reject"
    assert any("does not beat the champion" in r for r in verdict["reasons"])
    assert verdict["candidate"]["accuracy"] < verdict["champion"]["accuracy"]
    for f in ("eval.json", "eval.md", "eval-slices.png", "eval-confusion.png"):
        assert (tmp_path / "no" / f).stat().st_size > 0
    assert json.loads((tmp_path / "no" / "eval.json").read_text()) == verdict
    kinds = {r["slice"] for r in verdict["slices"]}
    assert {"store", "sku", "lighting", "blur", "glare", "occlusion", "crumpled"} <= kinds
    assert {r["value"] for r in verdict["slices"] if r["slice"] == "store"} == {
        "studio-c",
        "store-north",
        "store-south",
    }
    assert {s["name"] for s in verdict["test_sets"]} == {"baseline", "stores-test"}

    # A registry: the sink's online key, the ML team's key, the signed root.
    from capsight_edge.runtime.trust import generate_key, pub_path

    registry, key = tmp_path / "registry", tmp_path / "ml-team.key"
    generate_key(registry / "online.json")
    assert train_cli("keygen", "--out", str(key)).returncode == 0
    init = train_cli(
        "registry-init",
        "--registry",
        str(registry),
        "--key",
        str(key),
        "--online-key",
        str(pub_path(registry / "online.json")),
    )
    assert init.returncode == 0, init.stderr
    before = (registry / "metadata" / "targets.json").read_bytes()

    # Publishing what the gate rejected is refused.
    pub = train_cli(
        "publish",
        "--model",
        str(worse),
        "--eval",
        str(tmp_path / "no" / "eval.json"),
        "--registry",
        str(registry),
        "--key",
        str(key),
    )
    assert pub.returncode == 2 and "the gate rejected" in pub.stderr
    assert (registry / "metadata" / "targets.json").read_bytes() == before

    # The better one against the worse champion: released, and published.
    res = train_cli(
        "evaluate",
        "--candidate",
        str(good),
        "--champion",
        str(worse),
        "--test-set",
        str(runs.dataset),
        "--out",
        str(tmp_path / "yes"),
        "--tolerance",
        "1",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "RELEASE" in res.stdout
    pub = train_cli(
        "publish",
        "--model",
        str(good),
        "--eval",
        str(tmp_path / "yes" / "eval.json"),
        "--registry",
        str(registry),
        "--key",
        str(key),
        "--json",
    )
    assert pub.returncode == 0, pub.stderr
    (rec,) = records(pub.stdout)
    assert rec["type"] == "published" and rec["targets_version"] == 2
    assert {f.rsplit("/", 1)[1] for f in rec["files"]} == {
        "model.onnx",
        "model.card.json",
        "golden.npz",
        "eval.json",
    }
    targets = json.loads((registry / "metadata" / "targets.json").read_text())["signed"]
    onnx_entry = next(v for k, v in targets["targets"].items() if k.endswith("/model.onnx"))
    assert onnx_entry["hashes"]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    # The eval of one file does not publish another.
    pub = train_cli(
        "publish",
        "--model",
        str(worse),
        "--eval",
        str(tmp_path / "yes" / "eval.json"),
        "--registry",
        str(registry),
        "--key",
        str(key),
    )
    assert pub.returncode == 2 and "judged another file" in pub.stderr


def test_a_step_budget_trains_exactly_that_many_steps(runs: Runs) -> None:
    from cloud_sink.datasets import load_manifest

    epochs = [json.loads(x) for x in (runs.worse / "progress.jsonl").read_text().splitlines()]
    report = json.loads((runs.worse / "train.json").read_text())
    assert report["settings"]["steps"] == 5
    # Two workers, up to 32 frames each a step; the epoch's last step takes what is left.
    n = load_manifest(runs.dataset, verify=False).counts()["train"]
    per_rank = -(-n // 2)
    sizes = [min(32, per_rank - k) for k in range(0, per_rank, 32)]
    steps = (sizes * 5)[:5]
    assert len(epochs) == -(-5 // len(sizes))
    assert sum(e["samples"] for e in epochs) == 2 * sum(steps)


def test_the_int8_model_goes_through_the_same_gate(runs: Runs, tmp_path: Path) -> None:
    res = train_cli(
        "evaluate",
        "--candidate",
        str(runs.clean / "model-int8.onnx"),
        "--champion",
        str(runs.clean / "model.onnx"),
        "--test-set",
        str(runs.dataset),
        "--out",
        str(tmp_path),
        "--margin",
        "-0.05",
        "--json",
    )
    (verdict,) = records(res.stdout)
    assert verdict["candidate"]["precision"] == "int8"
    assert verdict["champion"]["precision"] == "fp32"
    assert abs(verdict["candidate"]["accuracy"] - verdict["champion"]["accuracy"]) <= 0.05
    assert res.returncode == (0 if verdict["decision"] == "release" else 1)


def test_a_first_model_is_gated_against_fixed_minimums(runs: Runs, tmp_path: Path) -> None:
    res = train_cli(
        "evaluate",
        "--candidate",
        str(runs.worse / "model.onnx"),
        "--test-set",
        str(runs.dataset),
        "--out",
        str(tmp_path),
        "--min-accuracy",
        "0.99",
    )
    assert res.returncode == 1
    assert "below the first model's minimum" in res.stdout


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("bad"), "--name", "small", "--views", "6")


def broken(small: Path, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / how
    shutil.copytree(small, folder)
    m = Manifest.model_validate_json((folder / "manifest.json").read_bytes())
    items = list(m.items)
    if how == "missing":
        (folder / items[0].frame).unlink()
    elif how == "hash":
        (folder / items[1].frame).write_bytes(b"not the frame")
    elif how == "empty-class":
        gone = items[1].label.sku or items[2].label.sku
        items = [i for i in items if not (i.label.sku == gone and i.split == "train")]
    elif how == "leak":
        test = next(i for i in items if i.split == "test")
        train = next(i for i in items if i.split == "train")
        shutil.copyfile(folder / test.frame, folder / train.frame)
        items = [i.model_copy(update={"sha256": test.sha256}) if i is train else i for i in items]
    elif how == "outside":
        items[0] = items[0].model_copy(
            update={"label": items[0].label.model_copy(update={"sku": "sku-9999"})}
        )
    (folder / "manifest.json").write_text(m.model_copy(update={"items": items}).model_dump_json())
    return folder


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("missing", "is missing"),
        ("hash", "does not match its sha256"),
        ("empty-class", "have no training item"),
        ("leak", "also appear in training or validation"),
        ("outside", "is not in the catalogue"),
    ],
)
def test_bad_datasets_are_refused_before_any_worker_starts(
    small: Path, tmp_path: Path, how: str, says: str
) -> None:
    folder = broken(small, tmp_path, how)
    out = tmp_path / "run"
    res = train_cli("run", "--dataset", str(folder), "--out", str(out), "--json", timeout=120)
    assert res.returncode == 2, res.stderr
    assert says in res.stderr
    (rec,) = records(res.stdout)
    assert rec["type"] == "error" and says in rec["error"]
    assert not out.exists()  # no worker, no cluster, nothing written


@pytest.mark.parametrize("option", ["--balance", "--track-balance"])
def test_a_draw_setting_out_of_range_is_refused(small: Path, tmp_path: Path, option: str) -> None:
    out = tmp_path / "run"
    res = train_cli("run", "--dataset", str(small), "--out", str(out), option, "1.5", "--json")
    assert res.returncode == 2, res.stderr
    (rec,) = records(res.stdout)
    assert rec["type"] == "error" and rec["error"] == f"{option} must be between 0 and 1"
    assert not out.exists()


def test_datasets_combine_with_the_added_ones_in_training(small: Path, tmp_path: Path) -> None:
    from cloud_sink.datasets import load_manifest
    from trainer.data import open_dataset

    root = small.parent.parent
    stores = ["--store", "shop-a", "--store", "shop-b", "--store", "shop-c", "--split", "by-store"]
    shops = render(root, "--name", "shops", "--views", "6", "--seed", "5", *stores)
    res = train_cli(
        "combine-datasets", "--name", "both", "--base", "small", "--add", "shops",
        "--root", str(root), "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (rec,) = records(res.stdout)
    assert rec["type"] == "dataset_combined" and rec["combined"] == ["small@1", "shops@1"]
    both = load_manifest(rec["path"])  # every frame's hash checked, no store on two sides
    base, added = load_manifest(small), load_manifest(shops)
    assert len(both.items) == len(base.items) + len(added.items)
    assert both.counts()["train"] == base.counts()["train"] + len(added.items)
    assert both.counts()["test"] == base.counts()["test"]
    assert {s: both.stores[s] for s in added.stores} == dict.fromkeys(added.stores, "train")
    assert open_dataset(rec["path"]).classes == base.classes
    # The same frames twice, a store the base tests on, or another catalogue, are refused.
    res = train_cli(
        "combine-datasets", "--name", "twice", "--base", "small", "--add", "shops",
        "--add", "shops", "--root", str(root),
    )  # fmt: skip
    assert res.returncode == 2 and "in another of the datasets too" in res.stderr
    (test_store,) = [s for s, side in base.stores.items() if side == "test"]
    leaky = render(
        tmp_path, "--name", "leaky", "--views", "6", "--seed", "8", "--store", test_store,
        "--split", "test",
    )  # fmt: skip
    res = train_cli(
        "combine-datasets", "--name", "leak", "--base", "small", "--add", str(leaky),
        "--root", str(root),
    )  # fmt: skip
    assert res.returncode == 2 and "validation or test side" in res.stderr
    # A store the base trains on may gain items (the fleet's next round, for instance).
    (train_store,) = [s for s, side in base.stores.items() if side == "train"]
    more = render(
        tmp_path, "--name", "more", "--views", "6", "--seed", "9", "--store", train_store,
        "--split", "test",
    )  # fmt: skip
    res = train_cli(
        "combine-datasets", "--name", "more-of-a", "--base", "small", "--add", str(more),
        "--root", str(root), "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert load_manifest(records(res.stdout)[0]["path"]).stores[train_store] == "train"
    other = render(tmp_path, "--name", "other", "--views", "6", "--catalogue-size", "4", *stores)
    res = train_cli(
        "combine-datasets", "--name", "mixed", "--base", "small", "--add", str(other),
        "--root", str(root),
    )  # fmt: skip
    assert res.returncode == 2 and "another catalogue" in res.stderr
    # Frames of the base's test split added to training (the same bytes) are refused.
    same = render(root, "--name", "same", "--views", "6", *stores)  # seed 0, as `small`
    res = train_cli(
        "combine-datasets", "--name", "leaky", "--base", "small", "--add", str(same),
        "--root", str(root),
    )  # fmt: skip
    assert res.returncode == 2 and "would flatter the model" in res.stderr


def test_a_step_where_one_worker_has_no_box_does_not_hang(small: Path, tmp_path: Path) -> None:
    from cloud_sink.datasets import load_manifest

    # One frame per worker a step: some steps give one worker a "no product" frame (no box)
    # and the other a product. Both must still all-reduce the box head's gradient (it used to
    # hang there, as a run at batch 8 did after 12 epochs).
    out = tmp_path / "run"
    res = train_cli(
        "run", "--dataset", str(small), "--batch", "1", "--steps", "20", "--out", str(out),
        "--json", timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    m = load_manifest(small, verify=False)
    train = sorted((i for i in m.items if i.split == "train"), key=lambda i: i.item_id)
    assert any(i.label.box for i in train) and any(not i.label.sku for i in train)
    (rec,) = [r for r in records(res.stdout) if r["type"] == "train_result"]
    assert sum(e["samples"] for e in rec["epochs"]) == 20 * 2


def test_a_dataset_name_resolves_to_its_newest_version(small: Path, tmp_path: Path) -> None:
    from trainer.data import DatasetError, resolve

    root = small.parent.parent
    assert resolve("small", root) == small
    assert resolve("small@1", root) == small
    with pytest.raises(DatasetError, match="no version 7"):
        resolve("small@7", root)
    with pytest.raises(DatasetError, match="neither a dataset folder"):
        resolve("nothing-here", root)
    res = train_cli("run", "--dataset", "small", "--root", str(root), "--out", str(small))
    assert res.returncode == 2 and "is not empty" in res.stderr


def test_a_slice_rejects_only_on_a_loss_chance_does_not_explain() -> None:
    """The gate's per-slice test: the models are judged on the same items, so a loss counts
    when the items the candidate lost outnumber those it gained beyond chance (one-sided exact
    McNemar test)."""
    from trainer.evaluate import Scored, TestItems, disagreements, p_by_chance

    assert p_by_chance(0, 0) == 1.0 and p_by_chance(1, 0) == 0.5
    assert p_by_chance(5, 0) == 1 / 32 and p_by_chance(5, 1) == 7 / 64
    assert p_by_chance(0, 5) == 1.0 and p_by_chance(10, 10) > 0.5
    # One store, two SKUs: on sku "a" the candidate lost 5 items and gained none (a loss no
    # coin explains, 1 in 32); on "b" it lost 2 and gained 1.
    champ_ok = [True] * 5 + [True, True, False] + [True] * 4
    cand_ok = [False] * 5 + [False, False, True] + [True] * 4
    skus = ["a"] * 5 + ["b"] * 7
    tests = TestItems(truth=skus, slices=[{"store": "s", "sku": k} for k in skus])

    def scored(ok: list[bool]) -> Scored:
        return Scored("m.onnx", "0" * 64, "1", "fp32", skus, ok, [None] * len(ok))

    pairs = disagreements(tests, scored(cand_ok), scored(champ_ok))
    assert pairs == {("store", "s"): (7, 1), ("sku", "a"): (5, 0), ("sku", "b"): (2, 1)}
    assert p_by_chance(*pairs[("sku", "a")]) < 0.05 < p_by_chance(*pairs[("sku", "b")])


def test_class_balance_draws_every_class_equally_often() -> None:
    import numpy as np

    from trainer.train import draw

    labels = np.array([0] * 90 + [1] * 9 + [2])
    plain = draw(labels, 100, 0.0, [0, 1])
    assert sorted(plain.tolist()) == list(range(100))  # each frame once an epoch
    drawn = draw(labels, 30_000, 1.0, [0, 1])
    shares = np.bincount(labels[drawn], minlength=3) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.02), shares
    half = np.bincount(labels[draw(labels, 30_000, 0.5, [0, 1])], minlength=3) / 30_000
    assert half[0] > half[1] > half[2] > 1 / 100  # between the data and equal shares
    assert (draw(labels, 50, 1.0, [3, 4]) == draw(labels, 50, 1.0, [3, 4])).all()


def test_track_balance_counts_a_track_as_less_than_its_frames() -> None:
    import numpy as np

    from trainer.train import draw

    # Class 0: one item with a 15-frame track (16 frames) and four single frames; class 1: four
    # single frames.
    labels = np.array([0] * 20 + [1] * 4)
    items = ["ev"] * 16 + ["a", "b", "c", "d"] + ["e", "f", "g", "h"]
    n = 40_000

    def shares(track_balance: float, balance: float = 1.0) -> tuple[float, float]:
        drawn = draw(labels, n, balance, [0, 1], items, track_balance)
        return float(np.mean(np.isin(drawn, range(16)))), float(np.mean(labels[drawn] == 0))

    # Frame by frame the event is 16/20 of its class; as one frame, 1/5; at 0.5, 4/8.
    for tb, event in ((0.0, 16 / 20), (1.0, 1 / 5), (0.5, 4 / 8)):
        got_event, got_class = shares(tb)
        assert got_class == pytest.approx(0.5, abs=0.01)  # balance 1 still holds
        assert got_event == pytest.approx(event * 0.5, abs=0.01), tb
    # Without class balance the event alone weighs as much as one frame: 1/9 of the draws.
    assert shares(1.0, balance=0.0)[0] == pytest.approx(1 / 9, abs=0.01)
    # Items without tracks draw as before, whatever the setting: the same frames in order.
    single = [str(k) for k in range(24)]
    assert (draw(labels, 500, 1.0, [5], single, 1.0) == draw(labels, 500, 1.0, [5])).all()
    again = draw(labels, 500, 1.0, [5], items, 0.5)
    assert (draw(labels, 500, 1.0, [5], items, 0.5) == again).all()
