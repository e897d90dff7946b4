"""Recorded clips and scripted scenes the camera tests share."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from capsight_edge.devices.render import SceneRenderer
from capsight_edge.scene.catalogue import Catalogue
from firmware_bridge.sim.scenario import Bump, HandWave, ItemEvent, Scenario


def record_clip(
    path: Path,
    renderer: SceneRenderer,
    seconds: float,
    fps: int = 15,
    size: tuple[int, int] = (640, 360),
) -> Path:
    """Encode the synthetic scene to an H.264 MP4 with PyAV (a recorded clip to replay)."""
    import cv2

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(int(seconds * fps)):
            image, _ = renderer.render(i / fps)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def scripted(kind: str, catalogue: Catalogue) -> Scenario:
    """The four scripted situations the trigger rules must tell apart."""
    p = catalogue.products[0]
    if kind == "scanned":
        return Scenario(
            duration_s=10,
            items=[ItemEvent(t_s=3.5, grams=p.weight_g, sku=p.sku, scan_s=1.5, scanned=True)],
        )
    if kind == "unscanned":
        return Scenario(
            duration_s=10,
            items=[ItemEvent(t_s=3.5, grams=p.weight_g, sku=p.sku, scan_s=0.6, scanned=False)],
        )
    if kind == "wave":
        return Scenario(duration_s=10, waves=[HandWave(t_s=3.0, duration_s=2.0)])
    if kind == "bump":
        return Scenario(duration_s=10, bumps=[Bump(t_s=3.0, amplitude_g=250, accel_g=1.8)])
    raise ValueError(kind)
