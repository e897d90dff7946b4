"""The benchmark registry and the shape of a result."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Metric:
    """One figure. ``baseline`` is the same figure for the reference measured in this run;
    ``ratio`` is value / baseline (None when there is no baseline)."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass
class BenchResult:
    name: str
    description: str
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """As ``results.json`` holds it (plots by file name: they lie in the run's folder)."""
        return {
            "name": self.name,
            "description": self.description,
            "notes": list(self.notes),
            "plots": [Path(p).name for p in self.plots],
            "metrics": [m.as_dict() for m in self.metrics],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        metrics = [Metric(**{k: v for k, v in m.items() if k != "ratio"}) for m in d["metrics"]]
        return cls(d["name"], d["description"], metrics, list(d["notes"]), list(d["plots"]))


@dataclass
class BenchContext:
    quick: bool
    profile_path: str
    out_dir: str
    #: A folder that lasts as long as the run, where a benchmark leaves inputs that a later one
    #: may reuse (``record_carts``); "" when there is none (a benchmark called on its own).
    shared: str = ""


#: The ``[camera]`` lines of a simulated cart that a --quick run records (``capsight run``):
#: 640x360 at 10 fps, a sixth of the pixels a second of the profile's 1280x720 at 15 fps.
QUICK_CAMERA = "width_px = 640\nheight_px = 360\nfps = 10.0\n"


def cart_profile(profile: str, device: str, store: str, quick: bool) -> str:
    """The profile of one simulated cart a benchmark records with ``capsight run``: ``profile``
    with its own device id and store, and (``quick``) the smaller camera of QUICK_CAMERA."""
    return (
        f"extends = '{Path(profile).resolve()}'\n[device]\nid = '{device}'\n"
        f"store_id = '{store}'\n" + (f"[camera]\n{QUICK_CAMERA}" if quick else "")
    )


def capsight_cli(*args: str) -> list[str]:
    """The cart's CLI (``capsight ARGS``) as a benchmark runs it: this Python, errors only."""
    return [sys.executable, "-m", "capsight_edge.cli.main", "--log-level", "ERROR", *args]


@dataclass(frozen=True)
class SimCart:
    """A simulated cart a benchmark records: its device id, its store, its shopper's seed."""

    device: str
    store: str
    seed: int


def fleet_carts(n: int) -> list[SimCart]:
    """The benchmarks' simulated fleet, its first ``n`` carts: cart ``i`` is ``fleet-ii`` in
    store ``store-ii``, its shopper seeded ``41 + i``."""
    return [SimCart(f"fleet-{i:02d}", f"store-{i:02d}", 41 + i) for i in range(n)]


def record_carts(
    ctx: BenchContext, carts: list[SimCart], seconds: float, dest: Path, *, at_once: int
) -> int:
    """Record ``carts`` on the run's profile (``capsight run``, ``at_once`` at a time, each for
    ``seconds``; with --quick the smaller camera of QUICK_CAMERA) into ``dest``: each cart's
    data folder ``dest/<device>`` and its profile ``dest/<device>.toml``.

    A recording is an input, not a figure: a cart that an earlier benchmark of the same run
    recorded with the same profile, seed and seconds is copied from the run's shared folder
    instead of recorded again (fleet_cost and prelabel's --quick runs share the fleet's first
    carts). Returns how many carts were copied so."""
    dest.mkdir(parents=True, exist_ok=True)
    shared = Path(ctx.shared) / "carts" if ctx.shared else None
    todo: list[tuple[SimCart, Path, Path | None]] = []  # the cart, where it records, its keep
    reused = 0
    for cart in carts:
        text = cart_profile(ctx.profile_path, cart.device, cart.store, ctx.quick)
        (dest / f"{cart.device}.toml").write_text(text)
        if shared is None:
            todo.append((cart, dest / cart.device, None))
            continue
        key = hashlib.sha256(
            f"{text}\n{cart.seed}\n{seconds}\n".encode() + Path(ctx.profile_path).read_bytes()
        ).hexdigest()[:16]
        kept = shared / f"{cart.device}-{key}"
        if kept.is_dir():
            shutil.copytree(kept, dest / cart.device)
            reused += 1
        else:  # recorded into a .part folder, renamed when whole: a killed run leaves no half
            part = shared / f"{kept.name}.part"
            shutil.rmtree(part, ignore_errors=True)
            todo.append((cart, part, kept))
    for start in range(0, len(todo), at_once):
        procs = []
        for cart, data, _ in todo[start : start + at_once]:
            run = capsight_cli(
                "run", "--profile", str(dest / f"{cart.device}.toml"), "--data", str(data),
                "--seed", str(cart.seed), "--duration", str(seconds),
            )  # fmt: skip
            procs.append(subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for p in procs:
            _out, err = p.communicate(timeout=seconds + 180)
            if p.returncode != 0:
                raise RuntimeError(f"capsight run failed: {err.decode()[-500:]}")
    for cart, data, keep in todo:
        if keep is not None:
            data.rename(keep)
            shutil.copytree(keep, dest / cart.device)
    return reused


Benchmark = Callable[[BenchContext], BenchResult]
BENCHMARKS: dict[str, Benchmark] = {}

#: What a benchmark needs beyond this host's CPU and disk, by name. "simulated carts": it runs
#: whole carts (``capsight run``) on the profile, which needs the profile's camera and MCU to be
#: simulated. (Benchmarks that find out for themselves, such as a GPU, FUSE or network
#: namespaces, skip with their own reason.)
NEEDS: dict[str, frozenset[str]] = {}
KNOWN_NEEDS = frozenset({"simulated carts"})


def benchmark(name: str, *, needs: tuple[str, ...] = ()) -> Callable[[Benchmark], Benchmark]:
    unknown = set(needs) - KNOWN_NEEDS
    if unknown:  # a misspelt need would never skip anything
        raise ValueError(f"benchmark {name}: unknown needs {sorted(unknown)}")

    def deco(fn: Benchmark) -> Benchmark:
        BENCHMARKS[name] = fn
        NEEDS[name] = frozenset(needs)
        return fn

    return deco


def unmet_needs(name: str, profile_path: str) -> str:
    """Why ``name`` cannot run with ``profile_path`` ("" when it can)."""
    if "simulated carts" not in NEEDS.get(name, frozenset()):
        return ""
    from capsight_edge.devices.factory import device_kinds
    from capsight_edge.profile import load_profile

    kinds = device_kinds(load_profile(profile_path))
    real = sorted(d for d in ("camera", "mcu") if d not in kinds.simulated)
    if not real:
        return ""
    which = ", ".join(f"{d} ({getattr(kinds, d)})" for d in real)
    return (
        f"it runs whole simulated carts on the profile, and {profile_path} has a real {which}; "
        "it measures the sink and the trainer, not the cart: run it with hw_profiles/sim.toml"
    )


def profile_note(profile_path: str) -> str:
    """For a run on a profile with real devices: what the other benchmarks measured."""
    from capsight_edge.devices.factory import device_kinds
    from capsight_edge.profile import load_profile

    kinds = device_kinds(load_profile(profile_path))
    real = sorted(kinds.used - kinds.simulated)
    if not real:
        return ""
    return (
        f"real {', '.join(real)}. This host's CPU, disk, encoders and accelerators were "
        "measured on synthetic or recorded inputs; the devices themselves were not opened"
    )
