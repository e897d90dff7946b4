"""Which onnxruntime execution providers a session really gets.

onnxruntime falls back to the CPU with only a log line when a requested provider cannot start, and
onnxruntime-gpu lists CUDA/TensorRT even on a machine with no GPU. The truth is the provider list of
a session that was actually created, so the probe creates one on a tiny bundled model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

PROBE_MODEL = Path(__file__).with_name("probe.onnx")


@dataclass(frozen=True)
class ProviderProbe:
    requested: tuple[str, ...]
    available: tuple[str, ...]
    active: tuple[str, ...]
    error: str
    seconds: float


def probe_providers(requested: list[str]) -> ProviderProbe:
    """Create a session with ``requested`` (in order) and report what it runs on. Never raises."""
    start = time.perf_counter()
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return ProviderProbe(
            tuple(requested),
            (),
            (),
            f"onnxruntime is not installed ({exc})",
            time.perf_counter() - start,
        )
    available = tuple(ort.get_available_providers())
    usable = [p for p in requested if p in available]
    if not usable:
        return ProviderProbe(
            tuple(requested),
            available,
            (),
            "no requested provider is built in",
            time.perf_counter() - start,
        )
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(PROBE_MODEL), sess_options=opts, providers=usable)
        active = tuple(session.get_providers())
        error = ""
    except Exception as exc:  # a provider that is listed but cannot start
        active, error = (), f"session failed: {exc}"
    return ProviderProbe(tuple(requested), available, active, error, time.perf_counter() - start)
