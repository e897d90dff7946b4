"""trainer: turns curated captures into a gated, signed ONNX model."""

import capsight_edge  # noqa: F401  (before onnxruntime: its telemetry off)

__version__ = "0.1.0"
