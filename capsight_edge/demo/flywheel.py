"""``capsight demo``: the flywheel, end to end, through the commands and HTTP APIs a user runs.

Stages (each a progress bar; wall and CPU time of each in the summary):

1. **doctor** on the simulated cart.
2. **fleet**: a sink (``capsight-sink serve``, embedded defaults) and ``carts`` simulated carts
   in ``stores`` stores (one catalogue, different conditions), each its own ``capsight run``;
   then ``capsight upload now`` on each (what a technician runs).
3. **teacher**: the ML team's pre-labelling model, trained by ``capsight-train`` on frames
   rendered in the stores' conditions (a stand-in for the big model a team would have).
4. **prelabel**: ``capsight-sink catalogue import`` and ``capsight-sink prelabel``; the
   pre-labels alone are exported (``export --prelabels``) to measure what review adds.
5. **review**: the simulated reviewer (:mod:`capsight_edge.demo.reviewer`) over the sink's
   review API (``GET/POST /api/labels``), then ``capsight-sink export``.
6. **train**: the **baseline** on clean studio renders (what a team collects by hand), the
   **fleet model** on the same renders plus what the fleet captured and review confirmed, and the
   fleet model on pre-labels alone: one architecture, the same number of optimiser steps, the same
   seed; only the data differs (``capsight-train combine-datasets``, ``run --steps``), on one
   ``ray start`` cluster.
7. **gate**: ``capsight-train evaluate`` of each against the baseline on the stores' test set,
   rendered once from a fixed seed in the stores' conditions and never trained on.
8. **publish**: keys, the registry, ``capsight-train publish`` and ``capsight-sink model
   promote stable`` (only a model the gate released).
9. **fleet again**: the carts run with ``[model]`` pointing at the registry: they pull, verify,
   hot-swap, and ``model_disagrees`` captures start; the fleet view shows each cart's version.

The summary (``demo-report.md``, ``demo-summary.json``, PNG plots in ``--out``) says what each
stage did. Ctrl-C stops every process the demo started and says where its output is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsight_edge.demo.fleet import (
    CATALOGUE_SIZE,
    STORES,
    DemoCart,
    DemoSink,
    run_carts,
    summarise_fleet,
)
from capsight_edge.journal.journal import utc_now
from capsight_edge.localray import niced
from capsight_edge.machine import describe_machine, machine_line

PY = sys.executable
SINK = (PY, "-m", "cloud_sink.cli")
TRAIN = (PY, "-m", "trainer.cli")
CAPSIGHT = (PY, "-m", "capsight_edge.cli.main", "--log-level", "ERROR")

#: The rule that makes the carts capture what the model gets wrong (round 2).
MODEL_RULE = "model_wrong"


def learning_rules(profile: Any) -> str:
    """Round 2's ``[[triggers]]`` as TOML: the profile's own rules and :data:`MODEL_RULE`
    (a profile's arrays replace the ones it extends, so the plain rules are written again)."""
    import dataclasses

    import tomli_w

    rules = [dataclasses.asdict(r) for r in profile.triggers if r.name != MODEL_RULE]
    rules.append(
        {
            "name": MODEL_RULE,
            "when": "model_disagrees | model_uncertain & hand_motion",
            "priority": 3,
            # Long enough that pre-labelling sees 3 s before a hand and 1 s after it, so a
            # hand the model took for a product can be labelled "no product" (empty hands).
            "preroll_s": 4.0,
            "postroll_s": 1.5,
            "cooldown_s": 4.0,
        }
    )
    return "\n" + tomli_w.dumps({"triggers": rules})


#: Frames per step per worker: small datasets, so small batches (more steps for each epoch's
#: fixed cost in Ray Train).
BATCH = 16


class DemoError(RuntimeError):
    pass


@dataclass
class Settings:
    out: Path
    carts: int = 3
    stores: int = 3
    minutes: float = 2.0
    seed: int = 7
    quick: bool = False
    profile: str | None = None

    @property
    def views(self) -> int:  # rendered frames per SKU (baseline, stores' test set, teacher)
        return 10 if self.quick else 24

    @property
    def epochs(self) -> int:  # the baseline's epochs: its steps are everyone's budget
        # 48: at 12 (96 steps) all three models stopped short of what their data allows, and
        # the one with more data the furthest (each sample seen half as often): on a 4-cart,
        # 5-minute run's data the fleet model went from 6.2 points below the baseline at 96
        # steps to 3.6 above at 384.
        return 4 if self.quick else 48

    @property
    def teacher_epochs(self) -> int:
        # 10: at 16 the teacher was the longest stage (3.5 minutes), and round 2's active
        # learning stages needed the time; its pre-labels are still accepted over 70 % of the
        # time (its quiet items help).
        return 8 if self.quick else 10

    @property
    def round2_s(self) -> float:  # how long the carts run with the new model
        return 15.0 if self.quick else max(20.0, self.minutes * 30)


def machine_cpu_s() -> float:
    """CPU seconds this machine has spent (every process: the sink, Ray's workers, the carts),
    from ``/proc/stat``; elsewhere, this process and its children."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class StageTime:
    stage: str
    wall_s: float
    cpu_s: float
    detail: str = ""


@dataclass
class Demo:
    """The running demo: its processes (all stopped on exit, Ctrl-C included), its stages'
    bars and times."""

    s: Settings
    progress: Any
    catalogue_seed: int = 1
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    times: list[StageTime] = field(default_factory=list)
    _bar: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    @contextlib.contextmanager
    def stage(self, name: str, total: float | None = None) -> Iterator[StageTime]:
        self._bar = self.progress.add_task(name, total=total)
        t0, c0 = time.monotonic(), machine_cpu_s()
        record = StageTime(name, 0.0, 0.0)
        try:
            yield record
        finally:
            record.wall_s = round(time.monotonic() - t0, 1)
            record.cpu_s = round(machine_cpu_s() - c0, 1)
            self.times.append(record)
            task = self.progress.tasks[-1]
            self.progress.update(
                self._bar, completed=task.total or 1, total=task.total or 1, description=name
            )

    def advance(
        self,
        completed: float | None = None,
        total: float | None = None,
        text: str | None = None,
        task: Any = None,
    ) -> None:
        kw: dict[str, Any] = {}
        if completed is not None:
            kw["completed"] = completed
        if total is not None:
            kw["total"] = total
        if text is not None:
            kw["description"] = text
        self.progress.update(self._bar if task is None else task, **kw)

    def run(
        self,
        args: tuple[str, ...] | list[str],
        *,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 900,
        ok: tuple[int, ...] = (0,),
        nice: int = 0,
    ) -> list[dict[str, Any]]:
        """Run one command (its own process group, stopped with the demo, at niceness
        ``nice``); its JSON Lines records. A failure raises :class:`DemoError` with the end of
        its stderr."""
        words = [a for a in args[1:] if not a.startswith("-") and a not in ("ERROR", "stable")]
        what = "-".join(w.rsplit("/", 1)[-1] for w in words[:3])
        records = []
        with self._lock:  # the teacher's commands run beside round 1's
            log = self.s.out / "logs" / f"{len(self.procs):02d}-{what[:60]}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            err = log.open("w")
            proc = subprocess.Popen(
                list(args),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                preexec_fn=niced(nice),
            )
            self.procs.append(proc)
        with err:
            assert proc.stdout is not None
            watchdog = threading.Timer(timeout_s, proc.kill)  # a command that hangs ends
            watchdog.start()
            try:
                for line in proc.stdout:
                    if line.startswith("{"):
                        with contextlib.suppress(ValueError):
                            rec = json.loads(line)
                            records.append(rec)
                            if on_record is not None:
                                on_record(rec)
                rc = proc.wait()
            finally:
                watchdog.cancel()
        if rc not in ok:
            tail = log.read_text()[-1500:]
            raise DemoError(f"`{' '.join(args[2:5])} ...` failed ({rc}):\n{tail}")
        return records

    def stop_all(self) -> None:
        """SIGTERM to every process still running (to its group when it leads one: a command's
        own children go too), SIGKILL to any still there 10 s later."""

        def signal_to(proc: subprocess.Popen[Any], sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)

        for proc in self.procs:
            if proc.poll() is None:
                signal_to(proc, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                signal_to(proc, signal.SIGKILL)
                proc.wait(10)


# -- stages -----------------------------------------------------------------------------------


def _carts_round(
    d: Demo, carts: list[DemoCart], seconds: float, seed: int, label: str, beside: str = ""
) -> None:
    import queue

    events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    with d.stage(label, total=seconds) as st:
        start = time.monotonic()
        for i, cart in enumerate(carts):
            cart.start(seconds, seed + i, events)
            assert cart.proc is not None
            d.procs.append(cart.proc)
        status = run_carts(
            carts,
            events,
            start,
            say=d.say,
            tick=lambda: d.advance(completed=min(seconds, time.monotonic() - start)),
        )
        if status != 0:
            raise DemoError(f"a cart exited with {status}: see {carts[0].dir.parent}/*/run.log")
        d.advance(text=f"{label}: `capsight upload now` on each cart")
        for cart in carts:
            rec = d.run(
                [
                    *CAPSIGHT,
                    "upload",
                    "now",
                    "--json",
                    "--profile",
                    str(cart.profile),
                    "--data",
                    str(cart.data),
                ]
            )
            cart.flush = next((x for x in reversed(rec) if "uploaded" in x), {})
        st.detail = f"{len(carts)} carts x {seconds:.0f} s" + (
            f"; {beside} at the lowest priority beside them" if beside else ""
        )


def _catalogue(d: Demo, sink: DemoSink, profile: Any) -> Path:
    from capsight_edge.scene.catalogue import Catalogue

    path = d.s.out / "catalogue.json"  # the carts' own: the profile's seed, the demo's size
    path.write_text(Catalogue(CATALOGUE_SIZE, seed=profile.sim.catalogue_seed).as_json())
    d.run([*SINK, "catalogue", "import", str(path), "--data", str(sink.data)])
    return path


def _store_profiles(d: Demo, stores: list[tuple[str, str]], base: Path) -> dict[str, Path]:
    """One profile file per store (its ``[sim.store_conditions]``), for rendering."""
    out = {}
    for store, toml in stores:
        p = d.s.out / "stores" / f"{store}.toml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f'extends = "{base.resolve()}"\n{toml}')
        out[store] = p
    return out


def _render(
    d: Demo, name: str, *extra: str, seed: int = 0, views: int | None = None, nice: int = 0
) -> dict[str, Any]:
    (rec,) = [
        r
        for r in d.run(
            [
                *TRAIN,
                "render-dataset",
                "--name",
                name,
                "--views",
                str(views or d.s.views),
                "--seed",
                str(seed),
                "--catalogue-seed",
                str(d.catalogue_seed),
                "--catalogue-size",
                str(CATALOGUE_SIZE),
                "--root",
                str(d.s.out / "datasets"),
                "--json",
                *extra,
            ],
            nice=nice,
        )
        if r.get("type") == "dataset_rendered"
    ]
    return rec


def _train(
    d: Demo,
    dataset: str,
    out: str,
    address: str,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    arch: str = "recogniser",
    batch: int = BATCH,
    version: str = "1",
    task: Any = None,
    nice: int = 0,
) -> dict[str, Any]:
    args = [
        *TRAIN,
        "run",
        "--dataset",
        dataset,
        "--out",
        str(d.s.out / "runs" / out),
        "--arch",
        arch,
        "--address",
        address,
        "--seed",
        "0",
        "--model-version",
        version,
        "--root",
        str(d.s.out / "datasets"),
        "--json",
        "--allow-empty-classes",
        "--batch",
        str(batch),
        # Every model of the demo draws its classes equally often: the fleet's follow what the
        # shoppers bought, and the products bought rarely lost accuracy without it.
        "--balance",
        "1",
        # ... and counts an item's track (its frames a fraction of a second apart) as the worth
        # of sqrt(n) frames, not n: drawn frame by frame, a product bought once was drawn from
        # that one event half the time, and the fleet model lost it (the round-1 data of two
        # default runs, four trainings: +2.6 to +3.6 points over the baseline drawn frame by
        # frame, +4.4 to +6.5 drawn so).
        "--track-balance",
        "0.5",
    ]
    args += ["--steps", str(steps)] if steps else ["--epochs", str(epochs)]

    def on(rec: dict[str, Any]) -> None:
        if rec.get("type") == "train_epoch":
            d.advance(
                text=f"train {out}: epoch {rec['epoch'] + 1}/{rec['epochs']}, "
                f"loss {rec['loss']:.3f}",
                task=task,
            )

    records = d.run(args, on_record=on, nice=nice)
    (result,) = [r for r in records if r.get("type") == "train_result"]
    return result


def _evaluate(
    d: Demo, candidate: str, champion: str | None, test_set: str, *extra: str
) -> dict[str, Any]:
    runs = d.s.out / "runs"
    args = [
        *TRAIN,
        "evaluate",
        "--candidate",
        str(runs / candidate / "model.onnx"),
        "--test-set",
        test_set,
        "--out",
        str(runs / candidate / "gate"),
        "--root",
        str(d.s.out / "datasets"),
        "--json",
    ]
    if champion:
        args += ["--champion", str(runs / champion / "model.onnx")]
    args += extra
    # Exit 1 is the gate's "reject", a verdict like "release".
    (rec,) = [r for r in d.run(args, ok=(0, 1)) if r.get("type") == "eval"]
    return rec


@contextlib.contextmanager
def ray_cluster(nice: int = 0) -> Iterator[str]:
    """One ``ray start --head`` for every training of the demo (its processes at niceness
    ``nice``); stopped at the end."""
    from capsight_edge.localray import ray_head

    with contextlib.ExitStack() as stack:
        try:
            address = stack.enter_context(ray_head(nice=nice))
        except RuntimeError as exc:
            raise DemoError(f"{exc}: the learning half needs `./dev.sh setup`") from None
        yield address


def _review(d: Demo, sink: DemoSink) -> dict[str, Any]:
    """The simulated reviewer over the review API: every item waiting for review."""
    import httpx

    from capsight_edge.demo import reviewer as sim

    headers = {"Authorization": f"Bearer {sink.admin}"}
    truths: dict[tuple[str, str], sim.Truth] = {}
    decisions: list[sim.Decision] = []
    by_source: dict[str, list[sim.Decision]] = {}
    with httpx.Client(base_url=sink.url, headers=headers, timeout=60) as client:
        waiting = []
        for state in ("quick_confirm", "needs_review"):
            r = client.get("/api/labels", params={"state": state, "limit": "1000"})
            r.raise_for_status()
            waiting += r.json()["items"]
        d.advance(completed=0, total=max(1, len(waiting)))
        for k, item in enumerate(waiting):
            key = (item["device_id"], item["bundle_id"])
            if key not in truths:  # the simulation's answer sheet, in the stored bundle
                path = sink.data / "blobs" / "store" / "bundles" / key[0] / key[1] / "sensors.mcap"
                truths[key] = sim.Truth.from_mcap(path)
            dec = sim.review(item, truths[key])
            body: dict[str, Any] = {
                "version": item["version"],
                "action": dec.action,
                "seconds": dec.seconds,
            }
            if dec.action == "correct":
                body |= sim.correction(item, dec)
            r = client.post(f"/api/labels/{item['item_id']}", json=body)
            if r.status_code != 200:
                raise DemoError(f"review of {item['item_id']} refused: {r.text[:300]}")
            decisions.append(dec)
            by_source.setdefault(item.get("source") or "none", []).append(dec)
            d.advance(completed=k + 1)
    out = sim.summary(decisions)
    out["by_source"] = {k: sim.summary(v) for k, v in sorted(by_source.items())}
    return out


def _export(
    d: Demo,
    sink: DemoSink,
    name: str,
    test_store: str | None,
    *extra: str,
    refused_ok: bool = False,
) -> dict[str, Any]:
    """``capsight-sink export``'s ``dataset`` record; with ``refused_ok``, {} when the export
    was refused (exit 2: nothing in the selection)."""
    args = [*SINK, "export", "--data", str(sink.data), "--name", name, "--json", *extra]
    args += ["--test-store", test_store] if test_store else []
    records = d.run(args, ok=(0, 2) if refused_ok else (0,))
    rec = next((r for r in records if r.get("type") == "dataset"), None)
    if rec is None and not refused_ok:
        raise DemoError(f"export of {name} wrote no dataset record")
    return rec or {}


def _combine(d: Demo, name: str, base: str, added: str) -> None:
    """``capsight-train combine-datasets``: ``base`` on its splits, ``added`` in training."""
    root = str(d.s.out / "datasets")
    d.run(
        [
            *TRAIN,
            "combine-datasets",
            "--name",
            name,
            "--base",
            base,
            "--add",
            added,
            "--root",
            root,
            "--json",
        ]
    )


def _prelabel(d: Demo, s: Settings, sink: DemoSink) -> dict[str, Any]:
    """``capsight-sink prelabel`` with the teacher, over every bundle not labelled yet."""
    teacher = s.out / "runs" / "teacher" / "model.onnx"
    args = [*SINK, "prelabel", "--data", str(sink.data), "--teacher", str(teacher), "--json"]
    (rec,) = [r for r in d.run(args) if r.get("type") == "prelabel_report"]
    return rec


def _steps_of(dataset_folder: Path, epochs: int, workers: int = 2, batch: int = BATCH) -> int:
    manifest = json.loads((dataset_folder / "manifest.json").read_text())
    train = sum(1 for i in manifest["items"] if i["split"] == "train")
    return epochs * math.ceil(math.ceil(train / workers) / batch)


def _publish(d: Demo, sink: DemoSink, runs: list[Path]) -> Path:
    """The keys, the registry, and ``capsight-train publish`` of each run's model (with its
    gate report), in order; returns the trust root the carts start from."""
    reg = sink.data / "registry"
    key = d.s.out / "keys" / "ml-team.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    d.run([*SINK, "model", "keygen", "--data", str(sink.data)])
    d.run([*TRAIN, "keygen", "--out", str(key), "--json"])
    d.run(
        [
            *TRAIN,
            "registry-init",
            "--registry",
            str(reg),
            "--key",
            str(key),
            "--online-key",
            str(reg / "online.pub.json"),
        ]
    )
    for run in runs:
        d.run(
            [
                *TRAIN,
                "publish",
                "--model",
                str(run / "model.onnx"),
                "--eval",
                str(run / "gate" / "eval.json"),
                "--registry",
                str(reg),
                "--key",
                str(key),
                "--json",
            ]
        )
    return reg / "metadata" / "1.root.json"


def _plots(out: Path, summary: dict[str, Any]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    slices = summary.get("accuracy", {}).get("slices", [])
    if slices:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(slices) + 1.5))
        names = [f"{r['slice']}={r['value']}" for r in slices]
        y = range(len(slices))
        for k, (model, colour) in enumerate(
            (("baseline", "#999999"), ("prelabels", "#e0a030"), ("fleet", "#2070c0"))
        ):
            vals = [r.get(model) or 0 for r in slices]
            ax.barh([v + (k - 1) * 0.27 for v in y], vals, height=0.27, label=model, color=colour)
        ax.set_yticks(list(y), names)
        ax.set_xlabel("accuracy on the stores' test set")
        ax.set_xlim(0, 1)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "demo-accuracy.png", dpi=110)
        plt.close(fig)
        written.append("demo-accuracy.png")
    stages = summary.get("stages", [])
    if stages:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(stages) + 1.2))
        y = range(len(stages))
        ax.barh(list(y), [s["wall_s"] for s in stages], color="#2070c0", label="wall s")
        ax.barh(
            list(y),
            [s["cpu_s"] / 2 for s in stages],
            height=0.35,
            color="#e0a030",
            label="CPU s / 2 cores",
        )
        ax.set_yticks(list(y), [s["stage"] for s in stages])
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "demo-stages.png", dpi=110)
        plt.close(fig)
        written.append("demo-stages.png")
    return written


# -- the whole demo -------------------------------------------------------------------------


def run_demo(s: Settings) -> int:
    """The whole demo (see the module docstring); returns the exit code."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from capsight_edge.doctor import doctor_ok, format_table, run_doctor
    from capsight_edge.profile import load_profile

    s.out.mkdir(parents=True, exist_ok=True)
    for old in ("sink", "carts", "data", "datasets", "runs", "keys", "logs", "stores"):
        shutil.rmtree(s.out / old, ignore_errors=True)
    profile = load_profile(s.profile, data_dir=s.out / "data")
    base = Path(profile.source_path)
    n_stores = max(2, min(s.stores, len(STORES)))
    stores = list(STORES[:n_stores])
    n_carts = max(n_stores, s.carts)
    seconds = max(10.0, s.minutes * 60)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(),
        transient=False,
    )
    d = Demo(s, progress, catalogue_seed=profile.sim.catalogue_seed)
    summary: dict[str, Any] = {
        "settings": {
            "carts": n_carts,
            "stores": n_stores,
            "seconds_per_round": seconds,
            "seed": s.seed,
            "quick": s.quick,
            "profile": profile.name,
        },
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": describe_machine(),
    }
    d.say(
        f"== capsight demo: {n_carts} carts in {n_stores} stores on profile {profile.name}, "
        f"output in {s.out}/"
    )
    checks = run_doctor(profile)
    if not doctor_ok(checks):
        print(format_table(checks))
        print("demo stopped: a required device failed")
        return 1
    sink = DemoSink(s.out / "sink", log=s.out / "sink" / "sink.log")
    (s.out / "sink").mkdir(parents=True)
    names = [f"demo-cart-{i + 1}" for i in range(n_carts)]
    status = 1
    try:
        with progress, ray_cluster(nice=TeacherJob.NICE) as address:
            tokens = sink.start_with(names)
            d.say(f"sink on {sink.url} (data in {s.out / 'sink'}), Ray at {address}")
            carts = [
                DemoCart(i + 1, s.out / "carts", base, sink, tokens[n], stores=stores)
                for i, n in enumerate(names)
            ]
            store_files = _store_profiles(d, stores, base)
            teacher = TeacherJob(d, s, store_files, address)
            _carts_round(d, carts, seconds, s.seed, "fleet: round 1", beside="the teacher")
            sink.wait_ingested()
            summary["round1"] = summarise_fleet(carts, sink, seconds, profile)
            status = _learn(
                d, s, sink, carts, stores, store_files, address, teacher, profile, summary
            )
    except DemoError as exc:
        d.say(f"demo stopped: {exc}")
        status = 1
    except KeyboardInterrupt:
        d.say(
            f"demo interrupted: every process it started is being stopped; what it wrote so "
            f"far is in {s.out}/"
        )
        status = 130
    finally:
        d.stop_all()
        sink.stop()
    summary["stages"] = [t.__dict__ for t in d.times]
    summary["plots"] = _plots(s.out, summary)
    report = report_markdown(summary)
    (s.out / "demo-report.md").write_text(report + "\n")
    (s.out / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    if status != 130:
        print(report)
    print(
        f"\nwritten: {s.out / 'demo-report.md'}, {s.out / 'demo-summary.json'}"
        + "".join(f", {s.out / p}" for p in summary["plots"])
    )
    return status


class TeacherJob:
    """The teacher's rendering and training on a thread, beside round 1: it needs no fleet
    data, and its commands (and the Ray cluster's workers) run at the lowest priority, so the
    carts keep every frame and the teacher takes the CPU they leave."""

    NICE = 19

    def __init__(self, d: Demo, s: Settings, store_files: dict[str, Path], address: str) -> None:
        # The teacher architecture (144 px, wider and deeper than the carts'); --quick trains
        # the carts' recogniser in its place, to keep the loop short.
        self.arch = "recogniser" if s.quick else "teacher"
        self.wall_s = 0.0
        self._result: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._error: BaseException | None = None
        self._task = d.progress.add_task("teacher: render and train, beside round 1", total=None)
        self._thread = threading.Thread(
            target=self._work, args=(d, s, store_files, address), daemon=True
        )
        self._t0 = time.monotonic()
        self._thread.start()

    def _work(self, d: Demo, s: Settings, store_files: dict[str, Path], address: str) -> None:
        try:
            specs = [f"t{k}-{sid}:{path}" for k in range(2) for sid, path in store_files.items()]
            data = _render(
                d,
                "teacher",
                *(x for spec in specs for x in ("--store", spec)),
                "--split",
                "by-store",
                seed=101,
                views=3 * s.views,
                nice=self.NICE,
            )
            d.advance(text="teacher: training, beside round 1", task=self._task)
            teacher = _train(
                d,
                "teacher",
                "teacher",
                address,
                epochs=s.teacher_epochs,
                batch=32,
                arch=self.arch,
                task=self._task,
                nice=self.NICE,
            )
            self._result = (data, teacher)
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc
        finally:
            self.wall_s = time.monotonic() - self._t0
            d.progress.update(self._task, total=1, completed=1, description="teacher: trained")

    def wait(self) -> tuple[dict[str, Any], dict[str, Any]]:
        self._thread.join()
        if self._error is not None:
            if isinstance(self._error, DemoError):
                raise self._error
            raise DemoError(f"the teacher's training failed: {self._error!r}")
        assert self._result is not None
        return self._result


def _learn(
    d: Demo,
    s: Settings,
    sink: DemoSink,
    carts: list[DemoCart],
    stores: list[tuple[str, str]],
    store_files: dict[str, Path],
    address: str,
    teacher_job: TeacherJob,
    profile: Any,
    summary: dict[str, Any],
) -> int:
    store_ids = [st for st, _ in stores]
    with d.stage("teacher: the rest of its training") as st:
        teacher_data, teacher = teacher_job.wait()
        st.detail = (
            f"{teacher_job.arch} architecture, {teacher_data['items']} rendered frames, test "
            f"accuracy {teacher['models']['fp32']['accuracy']:.1%}; "
            f"{teacher_job.wall_s:.0f} s in all, from round 1's start"
        )
    with d.stage("prelabel") as st:
        _catalogue(d, sink, profile)
        summary["prelabel"] = pre = _prelabel(d, s, sink)
        test_store = store_ids[0]
        pre_export = _export(d, sink, "fleet-prelabels", test_store, "--prelabels")
        st.detail = f"{pre['items']} frames worth a label from {pre['bundles']} bundles"
    with d.stage("review") as st:
        summary["review"] = _review(d, sink)
        fleet_export = _export(d, sink, "fleet", test_store)
        r = summary["review"]
        st.detail = f"{r['items']} items, {r['accepted_unchanged_pct']}% accepted unchanged"
    with d.stage("render: baseline and the stores' test set") as st:
        baseline = _render(d, "baseline", seed=0)
        specs = [x for sid in store_ids for x in ("--store", f"{sid}:{store_files[sid]}")]
        stores_test = _render(d, "stores-test", *specs, "--split", "test", seed=9001)
        for name, export in (("fleet-train", fleet_export), ("prelabels-train", pre_export)):
            _combine(d, name, "baseline", export["path"])
        st.detail = f"baseline {baseline['items']} frames, test set {stores_test['items']}"
    steps = _steps_of(Path(baseline["path"]), s.epochs)
    trained = {}
    for name, dataset in (
        ("baseline", "baseline"),
        ("fleet", "fleet-train"),
        ("prelabels", "prelabels-train"),
    ):
        with d.stage(f"train: {name}") as st:
            # The baseline is the carts' first model (version 1); the fleet's are its
            # challengers (version 2).
            version = "1" if name == "baseline" else "2"
            trained[name] = _train(d, dataset, name, address, steps=steps, version=version)
            st.detail = f"{steps} steps on {trained[name]['dataset'].get('name', dataset)}"
    with d.stage("gate: the stores' test set") as st:
        # --quick's few steps are for the loop, not the figures (its models score about what
        # chance does): its first model goes out whatever it scores, so that round 2 runs a
        # model and the model-driven rules fire.
        first = ["--min-accuracy", "0", "--min-box-iou", "0"] if s.quick else []
        gates = {
            "baseline": _evaluate(d, "baseline", None, "stores-test", *first),
            "fleet": _evaluate(d, "fleet", "baseline", "stores-test"),
            "prelabels": _evaluate(d, "prelabels", "baseline", "stores-test"),
        }
        summary["accuracy"] = accuracy_table(gates)
        a = summary["accuracy"]
        st.detail = (
            f"baseline {a['baseline']:.1%}, fleet {a['fleet']:.1%}, "
            f"pre-labels only {a['prelabels']:.1%}"
        )
    summary["gate"] = {
        k: {"decision": g["decision"], "reasons": g["reasons"]} for k, g in gates.items()
    }
    summary["training"] = {
        k: {
            "steps": steps,
            "train_items": v["dataset"].get("counts", {}).get("train"),
            "train_s": v["train_s"],
            "start_s": v["start_s"],
        }
        for k, v in trained.items()
    }
    released = gates["fleet"]["decision"] == "release"
    # What the gate released goes out: the baseline as the carts' first model, the fleet model
    # as its successor; the newest on stable.
    publish = [name for name in ("baseline", "fleet") if gates[name]["decision"] == "release"]
    version = ""
    if publish:
        with d.stage("publish") as st:
            root = _publish(d, sink, [s.out / "runs" / name for name in publish])
            number = "2" if publish[-1] == "fleet" else "1"
            d.run(
                [
                    *SINK,
                    "model",
                    "promote",
                    "stable",
                    "recogniser",
                    number,
                    "--by",
                    "demo",
                    "--data",
                    str(sink.data),
                    "--json",
                ]
            )
            version = f"recogniser:{number}"
            st.detail = f"{' and '.join(publish)} published; {publish[-1]} on stable, all carts"
        for cart in carts:
            cart.add_model(sink.url, root, learning_rules(profile))
    else:
        d.say("the gate released no model: nothing is pushed; round 2 runs without a model")
    carts2 = [c.again() for c in carts]
    round2_utc = utc_now()  # as the index writes a bundle's start
    _carts_round(d, carts2, s.round2_s, s.seed + 100, "fleet: round 2")
    sink.wait_ingested()
    summary["round2"] = summarise_fleet(carts2, sink, s.round2_s, profile)
    summary["models_on_carts"] = {
        c["cart"]: c["heartbeat"].get("model_version", "") for c in summary["round2"]["carts"]
    }
    ok = released and all(v == version for v in summary["models_on_carts"].values())
    if version:
        summary["active_learning"] = _active_learning(
            d, s, sink, address, round2_utc, steps, summary["accuracy"]["fleet"]
        )
    else:
        summary["active_learning"] = {
            "skipped": "no model was on the carts, so the model-driven rules could not fire"
        }
    return 0 if ok else 1


def _active_learning(
    d: Demo,
    s: Settings,
    sink: DemoSink,
    address: str,
    since: str,
    steps: int,
    fleet_accuracy: float,
) -> dict[str, Any]:
    """Round 2's captures, labelled like round 1's; then the same number of captures from
    the model-driven rule and from the plain rules, each added to the fleet model's data and
    trained with the same steps: accuracy gained on the stores' test set per uploaded MB."""
    import httpx

    out: dict[str, Any] = {"since_utc": since, "rule": MODEL_RULE}
    with d.stage("active learning: label round 2") as st:
        _prelabel(d, s, sink)
        out["review"] = _review(d, sink)
        r = httpx.get(
            sink.url + "/api/bundles",
            params={"since": since, "status": "ok", "limit": "1000"},
            headers={"Authorization": f"Bearer {sink.admin}"},
            timeout=30,
        )
        r.raise_for_status()
        # A capture counts for the rule that opened it: the model-driven side is what the
        # model's rule opened, the plain side what a plain rule opened (since the plain rules
        # capture empty hands too, few captures are the model's rule's alone).
        bundles = r.json()["bundles"]
        by_rule: dict[str, int] = {}
        for b in bundles:
            for rule in b["rules"]:
                by_rule[rule] = by_rule.get(rule, 0) + 1
        plain = sorted(k for k in by_rule if k != MODEL_RULE)
        n_plain = sum(1 for b in bundles if b["rule"] in plain)
        n_model = sum(1 for b in bundles if b["rule"] == MODEL_RULE)
        n = min(n_model, n_plain)
        out |= {
            "bundles": len(bundles),
            "bundles_by_rule": by_rule,
            "plain_rules": plain,
            "captures_each": n,
            "sides": "opened_by",
        }
        st.detail = f"{out['review']['items']} items; {n} captures from each side"
    if n == 0:
        out["skipped"] = (
            f"round 2 made {n_model} captures that {MODEL_RULE} opened and {n_plain} that a "
            "plain rule opened: nothing to compare"
        )
        return out
    sides = {"model-driven": [MODEL_RULE], "plain": plain}
    for side, rules in sides.items():
        name = f"round2-{side}"
        with d.stage(f"active learning: {side}") as st:
            # The same selection the export makes: the first n, oldest first.
            chosen = sorted(
                (b for b in bundles if b["rule"] in rules),
                key=lambda b: (b["start_utc"], b["device_id"], b["bundle_id"]),
            )[:n]
            mb = sum(b["bytes"] for b in chosen) / 1e6
            picked = _export(
                d,
                sink,
                name,
                None,
                *(x for rule in rules for x in ("--opened-by", rule)),
                "--since",
                since,
                "--max-bundles",
                str(n),
                "--all-train",
                refused_ok=True,  # nothing worth a label in them: nothing added, nothing gained
            )
            result: dict[str, Any] = {
                "rules": rules,
                "bundles": len(chosen),
                "mb": round(mb, 2),
                "items": picked["items"] if picked else 0,
                "accuracy": fleet_accuracy,
                "fleet_accuracy": fleet_accuracy,
            }
            if picked:
                _combine(d, f"{name}-train", "fleet-train", picked["path"])
                _train(d, f"{name}-train", name, address, steps=steps)
                gate = _evaluate(d, name, "fleet", "stores-test")
                result["accuracy"] = gate["candidate"]["accuracy"]
            gain = 100 * (result["accuracy"] - fleet_accuracy)
            result |= {
                "gain_points": round(gain, 1),
                "points_per_mb": round(gain / mb, 2) if mb > 0 else None,
            }
            out[side] = result
            st.detail = (
                f"{n} captures ({mb:.1f} MB), {result['items']} frames: "
                f"{result['accuracy']:.1%} ({gain:+.1f} points)"
            )
    return out


def accuracy_table(gates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and per slice of the baseline, the fleet model and the pre-labels-only
    model on the stores' test set, from the gate's reports (the baseline is each one's champion,
    scored on the same items)."""
    fleet, pre = gates["fleet"], gates["prelabels"]
    rows = []
    pre_by = {(r["slice"], r["value"]): r for r in pre["slices"]}
    for r in fleet["slices"]:
        if r["slice"] == "sku":
            continue
        p = pre_by.get((r["slice"], r["value"]), {})
        rows.append(
            {
                "slice": r["slice"],
                "value": r["value"],
                "items": r["items"],
                "baseline": r["champion"],
                "fleet": r["candidate"],
                "prelabels": p.get("candidate"),
            }
        )
    return {
        "baseline": fleet["champion"]["accuracy"],
        "fleet": fleet["candidate"]["accuracy"],
        "prelabels": pre["candidate"]["accuracy"],
        "items": fleet["candidate"]["items"],
        "gain_points": round(
            100 * (fleet["candidate"]["accuracy"] - fleet["champion"]["accuracy"]), 1
        ),
        "slices": rows,
    }


def report_markdown(summary: dict[str, Any]) -> str:
    st = summary["settings"]
    lines = [
        f"# capsight demo: {st['carts']} carts in {st['stores']} stores",
        "",
        f"Profile `{st['profile']}`, {st['seconds_per_round']:.0f} s per cart in round 1, "
        f"seed {st['seed']}" + (", --quick" if st["quick"] else "") + ".",
    ]
    if "machine" in summary:
        lines += ["", f"Run {summary['created_utc']} on {machine_line(summary['machine'])}."]
    gate = summary.get("gate", {})
    if gate.get("fleet", {}).get("decision") == "release":
        round2 = "Round 2: the carts run the fleet model"
    elif gate.get("baseline", {}).get("decision") == "release":
        round2 = "Round 2: the carts run the baseline (the gate kept it)"
    else:
        round2 = "Round 2: the carts again, with no new model (the gate released none)"
    for key, title in (("round1", "Round 1: the fleet collects"), ("round2", round2)):
        rows = summary.get(key, {}).get("carts", [])
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| cart | store | captures by rule | captured | uploaded | upload rate | "
            "frames dropped | verified | model |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            rules = ", ".join(f"{k} {v}" for k, v in sorted(r["by_rule"].items())) or "-"
            lines.append(
                f"| {r['cart']} | {r['store']} | {rules} | {r['bytes_captured'] / 2**20:.1f} MiB "
                f"({r['sealed']}) | {r['bytes_uploaded'] / 2**20:.1f} MiB | "
                f"{r['upload_rate_bps'] / 1e6:.2f} Mbit/s | {r['dropped_pct']:.1f}% | "
                f"{r['verified']}/{r['sealed']} | {r['heartbeat'].get('model_version') or '-'} |"
            )
    if "review" in summary:
        r, p = summary["review"], summary["prelabel"]
        lines += [
            "",
            "## Labelling",
            "",
            f"{p['items']} frames worth a label from {p['bundles']} bundles "
            f"({p['skipped_empty']} empty-background bundles skipped). Pre-labels accepted "
            f"unchanged: **{r['accepted_unchanged_pct']}%**; reviewer time "
            f"{r['reviewer_s']:.0f} s with pre-labels against {r['from_scratch_s']:.0f} s "
            f"from scratch ({r['saved_pct']}% saved).",
            "",
            "| source | items | accepted unchanged | reviewer s | from scratch s |",
            "|---|---:|---:|---:|---:|",
        ]
        for src, x in r.get("by_source", {}).items():
            lines.append(
                f"| {src} | {x['items']} | {x['accepted_unchanged_pct']}% | "
                f"{x['reviewer_s']:.0f} | {x['from_scratch_s']:.0f} |"
            )
    if "accuracy" in summary:
        a = summary["accuracy"]
        lines += [
            "",
            "## Accuracy on the stores' test set",
            "",
            f"{a['items']} frames rendered once in the stores' conditions (fixed seed), "
            "never trained on. One architecture, the same optimiser steps and seed: only "
            "the data differs.",
            "",
            "| model | trained on | accuracy |",
            "|---|---|---:|",
            f"| baseline | clean studio renders | {a['baseline']:.1%} |",
            f"| fleet, pre-labels only | the renders + the fleet's pre-labels | "
            f"{a['prelabels']:.1%} |",
            f"| fleet | the renders + the fleet's reviewed labels | {a['fleet']:.1%} |",
            "",
            f"Fleet model vs baseline: **{a['gain_points']:+.1f} points**. Gate: "
            f"{summary['gate']['fleet']['decision']}"
            + (
                f" ({'; '.join(summary['gate']['fleet']['reasons'])})"
                if summary["gate"]["fleet"]["reasons"]
                else ""
            )
            + ".",
        ]
        if "baseline" in gate:
            first = gate["baseline"]
            lines += [
                "",
                f"The baseline as the carts' first model: {first['decision']}"
                + (f" ({'; '.join(first['reasons'])})" if first["reasons"] else "")
                + ".",
            ]
        lines += [
            "",
            "| slice | items | baseline | pre-labels only | fleet |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in a["slices"]:
            cells = [
                f"{r[k]:.1%}" if r.get(k) is not None else "-"
                for k in ("baseline", "prelabels", "fleet")
            ]
            lines.append(
                f"| {r['slice']}={r['value']} | {r['items']} | " + " | ".join(cells) + " |"
            )
    al = summary.get("active_learning")
    if al:
        lines += ["", "## Active learning: round 2's captures, by rule", ""]
        if "skipped" in al:
            lines.append(f"Not measured: {al['skipped']}.")
        if "model-driven" in al and "plain" in al:
            found = ", ".join(f"{k} {v}" for k, v in sorted(al["bundles_by_rule"].items()))
            sides = (
                "The model-driven side: the captures the model's rule opened; the plain side: "
                "those a plain rule opened (other rules may have fired in either). "
                if al.get("sides") == "opened_by"
                else "The plain side: the captures in which a plain rule fired (the model's "
                "rule often fired in them too); the model-driven side: those only the model's "
                "rule made. "
            )
            lines += [
                f"Round 2 made {al['bundles']} captures; the rules that fired in them: {found}. "
                + sides
                + f"The first {al['captures_each']} captures of each side, labelled as "
                "round 1's were "
                "(pre-labels, then review), each added to the fleet model's data and trained "
                "with the same steps and seed; accuracy on the stores' test set, against the "
                f"fleet model's {al['model-driven']['fleet_accuracy']:.1%}:",
                "",
                "| captures from | captures | uploaded | frames | accuracy | gain | "
                "points per MB |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for side in ("model-driven", "plain"):
                x = al[side]
                per_mb = f"{x['points_per_mb']:+.2f}" if x["points_per_mb"] is not None else "-"
                lines.append(
                    f"| {side}: {', '.join(x['rules'])} | {x['bundles']} | {x['mb']:.1f} MB | "
                    f"{x['items']} | {x['accuracy']:.1%} | {x['gain_points']:+.1f} | {per_mb} |"
                )
    if summary.get("models_on_carts"):
        lines += [
            "",
            "## Which cart runs which model",
            "",
            ", ".join(f"{k}: {v or 'none'}" for k, v in summary["models_on_carts"].items()),
        ]
    if summary.get("stages"):
        lines += [
            "",
            "## Stages",
            "",
            "| stage | wall s | CPU s (whole machine) | what |",
            "|---|---:|---:|---|",
        ]
        for t in summary["stages"]:
            lines.append(f"| {t['stage']} | {t['wall_s']:.0f} | {t['cpu_s']:.0f} | {t['detail']} |")
        total = sum(t["wall_s"] for t in summary["stages"])
        lines.append(f"| all | {total:.0f} | {sum(t['cpu_s'] for t in summary['stages']):.0f} | |")
    for plot in summary.get("plots", []):
        lines += ["", f"![{plot}]({plot})"]
    return "\n".join(lines)
