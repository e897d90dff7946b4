"""The benchmark registry and the shape of a result."""

from __future__ import annotations

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
