"""trainer: turns curated captures into a gated, signed ONNX model."""

__version__ = "0.1.0"
