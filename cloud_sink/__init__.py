"""cloud_sink: receives, indexes and pre-labels the fleet's captures."""

import capsight_edge  # noqa: F401  (before onnxruntime: its telemetry off)

__version__ = "0.1.0"
