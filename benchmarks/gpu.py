"""What a GPU host offers the benchmarks, and the reference CNN on its GPU.

The cart runs its model with onnxruntime; on a GPU cart, with onnxruntime-gpu's CUDA (or
TensorRT) provider. A GPU host reached through the device tool has PyTorch with CUDA but only the
CPU onnxruntime, and onnxruntime-gpu (about 244 MiB) does not fit in what a call carries (64 MiB).
So :func:`gpu_backend` picks onnxruntime's CUDA provider where it is there, else PyTorch on CUDA
running the same network with the same weights (read from the ONNX file, checked against
onnxruntime on the CPU before any timing), and says which one ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def gpu_backend() -> tuple[str, str]:
    """("onnxruntime-cuda" | "torch-cuda" | "", why the other ones are not usable)."""
    reasons = []
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "onnxruntime-cuda", ""
        reasons.append(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider")
    except ImportError as exc:
        reasons.append(f"no onnxruntime ({exc})")
    try:
        import torch

        if torch.cuda.is_available():
            return "torch-cuda", "; ".join(reasons)
        reasons.append(f"torch {torch.__version__} sees no CUDA device")
    except ImportError:
        reasons.append("no torch")
    return "", "; ".join(reasons)


def gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return ""


class TorchReference:
    """The reference CNN (``capsight_edge.runtime.inference.build_reference_cnn``) in PyTorch,
    its weights read from the ONNX file: five 3x3 convolutions with ReLU, global average pool,
    a matrix product. ``device``: "cuda" or "cpu"."""

    def __init__(self, onnx_path: str | Path, device: str = "cuda") -> None:
        import onnx
        import torch
        from onnx import numpy_helper

        model = onnx.load(str(onnx_path))
        weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.torch = torch
        self.device = torch.device(device)
        self.layers: list[tuple[Any, Any, int]] = []
        for node in model.graph.node:
            if node.op_type == "Conv":
                stride = next(a.ints[0] for a in node.attribute if a.name == "strides")
                w, b = (torch.tensor(weights[n]).to(self.device) for n in node.input[1:3])
                self.layers.append((w, b, int(stride)))
        self.fc = torch.tensor(weights["wf"]).to(self.device)

    def __call__(self, x: Any) -> Any:
        """``x``: float32 NCHW as numpy; returns the logits as numpy (synchronised)."""
        torch = self.torch
        f = torch.nn.functional
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            for w, b, stride in self.layers:
                t = f.relu(f.conv2d(t, w, b, stride=stride, padding=1))
            out = t.mean(dim=(2, 3)) @ self.fc
            return out.cpu().numpy()
