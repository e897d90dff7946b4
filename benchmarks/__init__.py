"""Hardware-in-loop benchmarks: each one measured beside its baseline in the same run.

Run ``python -m benchmarks [--quick] [--only NAME] [--profile FILE] [--out DIR]``.
"""

import capsight_edge  # noqa: F401  (before onnxruntime: its telemetry off)
