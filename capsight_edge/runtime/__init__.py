"""The cart's model runtime (onnxruntime)."""
