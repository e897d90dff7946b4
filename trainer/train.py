"""Training: one loop, run by every Ray Train worker (``TorchTrainer``, the V2 API) or, for the
benchmark's baseline, by one plain process.

Each worker reads the manifest and decodes the training split itself (a per-worker loader: the
dataset folder must be readable by every worker, which on one machine it is, and on a cluster
means shared storage). Every epoch draws one global order from ``(seed, epoch)``, padded to a
multiple of the workers, and each worker takes its share, as ``DistributedSampler`` does; the
augmentation draws from ``(seed, epoch, rank)``. A run is thus the same from its seed, and a
run resumed from the checkpoint of epoch k continues exactly as if nothing had happened.

Rank 0 writes a checkpoint every epoch (model, optimiser, epoch) through ``ray.train.report``;
a worker that dies makes Ray restart the group (``FailureConfig``), which resumes from the latest
checkpoint. Rank 0 also appends one line per epoch to ``progress.jsonl`` in the run's folder:
what the command line shows while the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROGRESS = "progress.jsonl"
STATE = "state.pt"


class TrainError(RuntimeError):
    pass


@dataclass
class TrainSettings:
    dataset: str  # the dataset folder (already resolved and checked)
    out: str
    arch: str = "recogniser"
    epochs: int = 20
    #: When above 0: exactly this many optimiser steps (the last epoch may be cut short) and
    #: ``epochs`` is what they need (:func:`epochs_for`): a fixed training budget, whatever the
    #: dataset's size, for comparisons where only the data may differ.
    steps: int = 0
    batch: int = 32
    lr: float = 3e-3
    seed: int = 0
    workers: int = 2
    cpus_per_worker: float = 0.5
    threads: int = 1  # torch intra-op threads per worker
    box_weight: float = 2.0
    #: How often each class is drawn: a frame's chance goes with its class's count to the
    #: power ``-balance``. 0 draws the data as it is (each frame once an epoch); 1 draws every
    #: class equally often (frames drawn with replacement). Fleet data follows what shoppers
    #: buy: without it, the products bought rarely lose accuracy.
    balance: float = 0.0
    #: How much an item's track counts: a frame of an item of n frames (its own and its
    #: track's, ``Item.track_of``) is drawn with chance n to the power ``-track_balance``
    #: (within its class's share, when ``balance`` is on). 0 draws every frame alike; 1 draws
    #: an item with all of its track as often as a frame with none; 0.5 counts a track of n
    #: frames as the worth of sqrt(n) frames. A track is one product event seen in poses a
    #: fraction of a second apart, not n views: drawn frame by frame, the products bought once
    #: were drawn from one event half the time and lost accuracy.
    track_balance: float = 0.0
    max_failures: int = 2
    use_gpu: bool = False


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    train_accuracy: float
    val_accuracy: float | None
    samples: int
    epoch_s: float
    samples_per_s: float
    decode_s: float
    attempt_pid: int
    resumed_from: int | None
    started_unix: float = 0.0  # when the epoch's first step began (wall clock)
    val_s: float = 0.0


@dataclass
class TrainResult:
    state_path: Path
    epochs: list[EpochReport] = field(default_factory=list)
    start_s: float = 0.0  # from the call (ray.init included) to the first epoch's first step
    total_s: float = 0.0
    workers: int = 0
    use_gpu: bool = False
    restarts: int = 0


# -- the loop ---------------------------------------------------------------------------------
def augment(images: Any, rng: Any) -> Any:
    """Light and blur jitter (a store is rarely a studio): each image's brightness times
    0.65..1.35; a third of them a horizontal 3- or 5-pixel motion blur."""
    import cv2
    import numpy as np

    out = images.astype(np.float32)
    gain = rng.uniform(0.65, 1.35, size=(len(images), 1, 1, 1)).astype(np.float32)
    out = np.clip(out * gain, 0, 255).astype(np.uint8)
    for k in np.nonzero(rng.random(len(images)) < 1 / 3)[0]:
        size = int(rng.choice((3, 5)))
        kernel = np.zeros((size, size), np.float32)
        kernel[size // 2, :] = 1.0 / size
        out[k] = cv2.filter2D(out[k], -1, kernel)
    return out


def draw(
    labels: Any,
    size: int,
    balance: float,
    seed: list[int],
    items: Any = None,
    track_balance: float = 0.0,
) -> Any:
    """An epoch's frame indices, ``size`` of them (see ``TrainSettings.balance`` and
    ``track_balance``; ``items``: each frame's item id, its track's frames carrying their
    item's)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frame = np.ones(len(labels), np.float64)
    if track_balance > 0 and items is not None:
        _, which, count = np.unique(np.asarray(items), return_inverse=True, return_counts=True)
        frame = count[which].astype(np.float64) ** -track_balance
    elif balance <= 0:
        return np.resize(rng.permutation(len(labels)), size)
    # A class's weight is what its frames weigh together, so that balance 1 still draws every
    # class equally often.
    weight = frame * np.bincount(labels, weights=frame)[labels] ** -balance
    return rng.choice(len(labels), size=size, replace=True, p=weight / weight.sum())


def lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine to zero."""
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def accuracy(model: Any, arrays: Any, spec: Any, device: Any, batch: int = 128) -> float:
    import torch

    from capsight_edge.runtime.card import to_input

    if len(arrays.labels) == 0:
        return float("nan")
    model.eval()
    right = 0
    with torch.no_grad():
        for s in range(0, len(arrays.labels), batch):
            x = torch.from_numpy(to_input(list(arrays.images[s : s + batch]), spec)).to(device)
            logits, _ = model(x)
            right += int((logits.argmax(1).cpu().numpy() == arrays.labels[s : s + batch]).sum())
    return right / len(arrays.labels)


def epochs_for(steps: int, train_items: int, workers: int, batch: int) -> int:
    """Epochs that ``steps`` optimiser steps take on ``train_items`` (each worker takes
    ``batch`` frames a step)."""
    per_epoch = math.ceil(math.ceil(train_items / workers) / batch)
    return max(1, math.ceil(steps / per_epoch))


def loop(config: dict[str, Any], rank: int = 0, world: int = 1, *, ray_mode: bool = False) -> None:
    """Train as ``config`` (a :class:`TrainSettings` as a dict) says, as worker ``rank`` of
    ``world``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from capsight_edge.runtime.card import CardInput, to_input
    from cloud_sink.datasets import Manifest
    from trainer.data import Dataset, decode
    from trainer.models import ARCHS, build, card_input

    s = TrainSettings(**config)
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    out = Path(s.out)
    if ray_mode:
        import ray.train
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
    root = Path(s.dataset)
    ds = Dataset(root, Manifest.model_validate_json((root / "manifest.json").read_bytes()))
    arch = ARCHS[s.arch]
    spec = CardInput(**card_input(s.arch))
    t0 = time.perf_counter()
    train = decode(ds, ds.split("train"), arch.size, arch.size)
    val = decode(ds, ds.split("val"), arch.size, arch.size) if rank == 0 else None
    decode_s = time.perf_counter() - t0
    model: Any = build(s.arch, len(ds.classes)).to(device)
    if ray_mode and world > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    plain = model.module if hasattr(model, "module") else model
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=1e-4)
    n = len(train.labels)
    per_rank = math.ceil(n / world)
    steps = math.ceil(per_rank / s.batch)
    total_steps = s.steps or steps * s.epochs
    start_epoch, resumed_from = 0, None
    checkpoint = ray.train.get_checkpoint() if ray_mode else None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE, map_location=device, weights_only=True)
        plain.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch = resumed_from = int(state["epoch"]) + 1
    (out / "workers").mkdir(parents=True, exist_ok=True)
    (out / "workers" / f"{rank}.pid").write_text(str(os.getpid()))
    events = [item.track_of or item.item_id for item in train.items]  # a track is its item's
    for epoch in range(start_epoch, s.epochs):
        t_epoch, started_unix = time.perf_counter(), time.time()
        order = draw(
            train.labels, per_rank * world, s.balance, [s.seed, epoch], events, s.track_balance
        )
        mine = order[rank::world]
        rng = np.random.default_rng([s.seed, epoch, rank, 1])
        torch.manual_seed(int(np.random.default_rng([s.seed, epoch, rank, 2]).integers(2**62)))
        model.train()  # dropout draws from the line above: an epoch run again draws the same
        loss_sum, right, seen = 0.0, 0, 0
        for step in range(min(steps, total_steps - epoch * steps)):
            idx = mine[step * s.batch : (step + 1) * s.batch]
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps + step, total_steps, s.lr)
            x = torch.from_numpy(to_input(list(augment(train.images[idx], rng)), spec)).to(device)
            y = torch.from_numpy(train.labels[idx]).to(device)
            logits, box = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.05)
            # The box loss over the items that have a box, always part of the graph: a batch
            # with none (all "no product", or the few frames that end an epoch) contributes a
            # zero gradient. Skipping the term there left the box head without a gradient on
            # one worker while the other waited for it in DDP's all-reduce: the run hung.
            has = torch.from_numpy(train.has_box[idx]).to(device).float()
            target = torch.from_numpy(train.boxes[idx]).to(device)
            per_item = F.smooth_l1_loss(
                torch.sigmoid(box), target, beta=0.05, reduction="none"
            ).mean(1)
            loss = loss + s.box_weight * (per_item * has).sum() / has.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            right += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        epoch_s = time.perf_counter() - t_epoch
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "epochs": s.epochs,
            "loss": loss_sum / max(1, seen),
            "train_accuracy": right / max(1, seen),
            "val_accuracy": None,
            "samples": seen * world,
            "epoch_s": epoch_s,
            "samples_per_s": seen * world / epoch_s,
            "decode_s": decode_s,
            "attempt_pid": os.getpid(),
            "resumed_from": resumed_from,
            "started_unix": started_unix,
            "val_s": 0.0,
        }
        if rank == 0 and val is not None and len(val.labels):
            t_val = time.perf_counter()
            metrics["val_accuracy"] = accuracy(plain, val, spec, device)
            metrics["val_s"] = time.perf_counter() - t_val
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                torch.save(
                    {"model": plain.state_dict(), "opt": opt.state_dict(), "epoch": epoch},
                    Path(tmp) / STATE,
                )
            if ray_mode:
                from ray.train import Checkpoint

                ckpt = Checkpoint.from_directory(tmp) if rank == 0 else None
                ray.train.report({k: v for k, v in metrics.items() if v is not None}, ckpt)
            else:
                (out / "checkpoints").mkdir(exist_ok=True)
                os.replace(Path(tmp) / STATE, out / "checkpoints" / STATE)
        if rank == 0:
            with (out / PROGRESS).open("a") as f:
                f.write(json.dumps(metrics) + "\n")


def _ray_worker(config: dict[str, Any]) -> None:
    import ray.train

    ctx = ray.train.get_context()
    loop(config, ctx.get_world_rank(), ctx.get_world_size(), ray_mode=True)


# -- the drivers ------------------------------------------------------------------------------
def read_progress(out: Path) -> list[EpochReport]:
    path = out / PROGRESS
    if not path.is_file():
        return []
    rows: dict[int, EpochReport] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = EpochReport(**json.loads(line))
            rows[row.epoch] = row  # an epoch run again after a restart: its last run
    return [rows[k] for k in sorted(rows)]


def _attempts(out: Path) -> list[int]:
    """The worker groups that reported epochs (rank 0's pid, in order): one, unless a failure
    made Ray start the group again."""
    pids: list[int] = []
    for line in (out / PROGRESS).read_text().splitlines():
        if line.strip() and (pid := json.loads(line)["attempt_pid"]) not in pids:
            pids.append(pid)
    return pids


def _follow(out: Path, on_epoch: Callable[[EpochReport], None], stop: threading.Event) -> None:
    seen = 0
    path = out / PROGRESS
    while True:
        done = stop.wait(0.5)
        text = path.read_text() if path.is_file() else ""
        lines = text[: text.rfind("\n") + 1].splitlines()  # whole lines only
        for line in lines[seen:]:
            if line.strip():
                on_epoch(EpochReport(**json.loads(line)))
        seen = len(lines)
        if done:
            return


def train_plain(settings: TrainSettings) -> TrainResult:
    """The same loop in this process, no Ray (the benchmark's baseline)."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, t0_unix = time.perf_counter(), time.time()
    loop(asdict(settings))
    epochs = read_progress(out)
    return TrainResult(
        out / "checkpoints" / STATE,
        epochs,
        start_s=_start_s(epochs, t0_unix),
        total_s=time.perf_counter() - t0,
        workers=1,
    )


def _start_s(epochs: list[EpochReport], t0_unix: float) -> float:
    """From the start of the call to the first epoch's first step (of the first attempt)."""
    return max(0.0, min(e.started_unix for e in epochs) - t0_unix) if epochs else 0.0


#: How often Ray Train's controller polls the workers (its default: 2 s), and the variable that
#: sets it.
POLL_S = 0.25
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def train_ray(
    settings: TrainSettings,
    *,
    address: str | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    object_store_bytes: int = 200_000_000,
) -> TrainResult:
    """Train with Ray Train's ``TorchTrainer`` on the cluster at ``address``, or on a local
    cluster started for the run (as many CPUs as this machine has, a bounded object store)."""
    # `ray start` (2.60) turns token authentication on by default, but a client whose
    # RAY_AUTH_MODE is unset does not send the token it has: say so before importing ray.
    if (Path.home() / ".ray" / "auth_token").is_file():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from capsight_edge.unixsock import ray_temp_dir

    out = Path(settings.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings.out = str(out)
    t0, t0_unix = time.perf_counter(), time.time()
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    # Ray Train's controller looks at its workers every 2 s by default, and a worker's report
    # (each epoch's checkpoint) waits for that look: on a small data set most of a run was
    # waiting. The job's workers (the controller among them) get a shorter interval unless the
    # environment names one.
    job_env = {
        POLL_ENV: os.environ.get(POLL_ENV, str(POLL_S)),
    }
    started_here = not ray.is_initialized()
    temp = contextlib.ExitStack()  # the cluster's short temporary folder, when it needs one
    try:
        if started_here and address:
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": job_env})
        elif started_here:
            # a cluster of its own: its session sockets must fit a Unix socket path
            ray.init(
                num_cpus=os.cpu_count() or 2,
                object_store_memory=object_store_bytes,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": job_env},
                _temp_dir=temp.enter_context(ray_temp_dir()),
            )
        gpus = float(ray.cluster_resources().get("GPU", 0))
        settings.use_gpu = settings.use_gpu or gpus >= settings.workers
        per_worker: dict[str, float] = {"CPU": settings.cpus_per_worker}
        if settings.use_gpu:
            per_worker["GPU"] = 1
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config=asdict(settings),
            scaling_config=ScalingConfig(
                num_workers=settings.workers,
                use_gpu=settings.use_gpu,
                resources_per_worker=per_worker,
            ),
            run_config=RunConfig(
                name="train",
                storage_path=str(out / "ray"),
                failure_config=FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        stop = threading.Event()
        follower = None
        if on_epoch is not None:
            follower = threading.Thread(target=_follow, args=(out, on_epoch, stop), daemon=True)
            follower.start()
        try:
            result = trainer.fit()
        except Exception as exc:
            raise TrainError(f"training failed: {exc}") from exc
        finally:
            stop.set()
            if follower is not None:
                follower.join()
        if result.error is not None:
            raise TrainError(f"training failed: {result.error}")
        if result.checkpoint is None:
            raise TrainError("training ended without a checkpoint")
        with result.checkpoint.as_directory() as d:
            state_path = out / "model.pt"
            state_path.write_bytes((Path(d) / STATE).read_bytes())
    finally:
        if started_here:
            ray.shutdown()
        temp.close()
    epochs = read_progress(out)
    return TrainResult(
        state_path,
        epochs,
        start_s=_start_s(epochs, t0_unix),
        total_s=time.perf_counter() - t0,
        workers=settings.workers,
        use_gpu=settings.use_gpu,
        restarts=len(_attempts(out)) - 1 if epochs else 0,
    )
