"""capsight_edge: the cart side of the capsight data flywheel.

Importing this package is cheap on purpose: it never opens a device and never imports PyAV, OpenCV,
onnxruntime, torch or Ray. Backends import what they need when they are first used.
"""

import os

from capsight_edge.errors import CapsightError

# onnxruntime (1.32 for Linux, as pinned) starts Microsoft's telemetry client when it is
# imported: it keeps a session file, ``.ses``, in $TMPDIR (/tmp when unset) and reports usage to
# mobile.events.data.microsoft.com unless ORT_DISABLE_TELEMETRY is set. A cart on a bandwidth
# budget, and a sink holding a fleet's data, never phone home: off, unless the environment
# already says otherwise. Set here, before any of the project's modules can import onnxruntime.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
__all__ = ["CapsightError", "__version__"]
