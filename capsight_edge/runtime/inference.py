"""A reference inference loop standing in for the cart's own AI in benchmarks and tests.

It reads the newest frame from the FrameBus at a fixed rate, resizes it to 224x224, and runs a
small CNN (about 0.3 GMAC, built here with random weights: the numbers it computes do not matter,
its cost does) through onnxruntime with one intra-op thread, recording each step's latency.
Given a cart's data folder instead of an ONNX file, the step is the cart's real
:class:`~capsight_edge.runtime.models.ModelRuntime` (the model it last pulled and verified).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def build_reference_cnn(path: str | Path, seed: int = 0) -> Path:
    """Write the reference CNN to ``path`` (needs the ``onnx`` package: dev/train extras)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    chans = [3, 32, 64, 64, 128, 256]
    strides = [2, 2, 1, 2, 2]
    x = "input"
    for i, (cin, cout, s) in enumerate(zip(chans[:-1], chans[1:], strides, strict=True)):
        w = (rng.standard_normal((cout, cin, 3, 3)) * (2 / (cin * 9)) ** 0.5).astype(np.float32)
        b = np.zeros(cout, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(
            helper.make_node(
                "Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[s, s]
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
    wf = (rng.standard_normal((chans[-1], 10)) * 0.05).astype(np.float32)
    inits.append(numpy_helper.from_array(wf, "wf"))
    nodes.append(helper.make_node("MatMul", ["flat", "wf"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "capsight_reference_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="capsight"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


@dataclass
class InferenceStats:
    latencies_ms: list[float] = field(default_factory=list)
    late: int = 0  # steps that started after their deadline
    skipped_frames: int = 0
    no_frame: int = 0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        s = sorted(self.latencies_ms)
        return s[min(len(s) - 1, int(q / 100 * len(s)))]

    def summary(self) -> dict[str, float]:
        return {
            "n": len(self.latencies_ms),
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "mean_ms": statistics.fmean(self.latencies_ms) if self.latencies_ms else 0.0,
            "late": self.late,
            "skipped_frames": self.skipped_frames,
            "no_frame": self.no_frame,
        }


class InferenceLoop:
    """Run the model on the newest FrameBus frame every ``1/rate_hz`` seconds."""

    def __init__(
        self,
        bus_name: str,
        model_path: str | Path,
        *,
        rate_hz: float = 15.0,
        threads: int = 1,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        from capsight_edge.camera.framebus import FrameBusReader

        self.runtime: Any = None
        if Path(model_path).is_dir():  # a cart's data folder: its ModelRuntime's model
            from capsight_edge.runtime.models import ModelRuntime

            self.runtime = ModelRuntime(
                model_path, device_id="inference-loop", providers=providers, threads=threads
            )
            if not self.runtime.version:
                raise ValueError(f"{model_path} holds no model that loads")
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        self.reader = FrameBusReader(bus_name)
        self.period_s = 1.0 / rate_hz
        self.stats = InferenceStats()

    def step(self, image: Any) -> Any:
        import cv2
        import numpy as np

        if self.runtime is not None:
            return self.runtime.predict([image])
        small = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)
        x = (small.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        return self.session.run(None, {"input": x})[0]

    def run(self, seconds: float) -> InferenceStats:
        end = time.monotonic() + seconds
        next_t = time.monotonic()
        while time.monotonic() < end:
            frame = self.reader.next_frame(timeout_s=self.period_s)
            now = time.monotonic()
            if now > next_t + self.period_s:
                self.stats.late += 1
            if frame is None:
                self.stats.no_frame += 1
            else:
                start = time.perf_counter()
                self.step(frame.image)
                self.stats.latencies_ms.append((time.perf_counter() - start) * 1000)
            next_t += self.period_s
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()
        self.stats.skipped_frames = self.reader.skipped
        return self.stats

    def close(self) -> None:
        self.reader.close()
