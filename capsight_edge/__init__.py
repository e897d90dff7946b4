"""capsight_edge: the cart side of the capsight data flywheel.

Importing this package is cheap on purpose: it never opens a device and never imports PyAV, OpenCV,
onnxruntime, torch or Ray. Backends import what they need when they are first used.
"""

from capsight_edge.errors import CapsightError

__version__ = "0.1.0"
__all__ = ["CapsightError", "__version__"]
