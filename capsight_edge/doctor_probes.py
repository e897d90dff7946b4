"""The doctor's built-in probes, one per configured device or service."""

from __future__ import annotations

import os
import time
from pathlib import Path

from capsight_edge.doctor import FAIL, PASS, SKIP, WARN, Check, check, disk_check
from capsight_edge.profile.schema import Profile


@check("profile")
def probe_profile(profile: Profile) -> list[Check]:
    return [Check("profile", PASS, f"{profile.name} ({profile.source_path}) is valid")]


@check("camera")
def probe_camera(profile: Profile) -> list[Check]:
    cam = profile.camera
    if cam.source == "synthetic":
        return [Check("camera", PASS, "synthetic cart scene selected (simulated, no device)")]
    if cam.source == "file":
        return [_probe_replay(cam.replay_path, cam.required)]
    return [
        _probe_v4l2(
            cam.device, cam.width_px, cam.height_px, cam.fps, cam.pixel_format, cam.required
        )
    ]


def _probe_replay(path: str, required: bool) -> Check:
    try:
        import av
    except ImportError as exc:
        return Check("camera", FAIL, f"PyAV missing: {exc}", "install capsight[edge]", required)
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in zip(range(30), container.decode(stream), strict=False))
            return Check(
                "camera",
                PASS,
                f"replay {path}: {stream.codec_context.name} "
                f"{stream.codec_context.width}x{stream.codec_context.height}, "
                f"decoded {frames} frames",
            )
    except Exception as exc:
        return Check(
            "camera",
            FAIL,
            f"replay {path} does not decode: {exc}",
            "point camera.replay_path at a playable video file",
            required,
        )


def _probe_v4l2(
    device: str, width: int, height: int, fps: float, fourcc: str, required: bool
) -> Check:
    index_or_path: int | str = int(device) if device.isdigit() else device
    if isinstance(index_or_path, str) and not os.path.exists(index_or_path):
        return Check(
            "camera",
            FAIL,
            f"{device} does not exist",
            "plug the camera in, or fix camera.device (ls /dev/video*)",
            required,
        )
    try:
        import cv2
    except ImportError as exc:
        return Check("camera", FAIL, f"OpenCV missing: {exc}", "install capsight[edge]", required)
    cap = cv2.VideoCapture(index_or_path)
    try:
        if not cap.isOpened():
            return Check(
                "camera",
                FAIL,
                f"{device} does not open",
                "check permissions (group 'video') and that no other program holds it",
                required,
            )
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc[:4]))  # type: ignore[attr-defined]
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_FPS, fps)
        got, start, shape = 0, time.perf_counter(), None
        while time.perf_counter() - start < 1.5 and got < 60:
            ok, frame = cap.read()
            if not ok:
                break
            got, shape = got + 1, frame.shape
        elapsed = time.perf_counter() - start
        if got < 2:
            return Check(
                "camera",
                FAIL,
                f"{device} opened but delivered {got} frames",
                "try another pixel_format or resolution",
                required,
            )
        measured = (got - 1) / elapsed
        detail = f"{device}: {shape[1]}x{shape[0]} at {measured:.1f} fps measured"  # type: ignore[index]
        status = PASS if measured >= 0.8 * fps else WARN
        remedy = "" if status == PASS else "lower fps/resolution or use MJPG over USB 2"
        return Check("camera", status, detail, remedy)
    finally:
        cap.release()


@check("encoders")
def probe_encoders(profile: Profile) -> list[Check]:
    from capsight_edge.recorder.probe import probe_encoder

    checks: list[Check] = []
    chosen = None
    for name in profile.encoder.preference:
        result = probe_encoder(name)
        if result.opens and chosen is None:
            chosen = name
            checks.append(
                Check(f"encoder {name}", PASS, f"{result.reason}; selected", seconds=result.seconds)
            )
        elif result.opens:
            checks.append(
                Check(f"encoder {name}", PASS, f"{result.reason}; fallback", seconds=result.seconds)
            )
        else:
            checks.append(Check(f"encoder {name}", SKIP, result.reason, seconds=result.seconds))
    if chosen is None:
        checks.append(
            Check(
                "encoder",
                FAIL,
                "no encoder in encoder.preference opens here",
                "add 'libx264' to encoder.preference as the CPU fallback",
                required=True,
            )
        )
    return checks


@check("model")
def probe_model_runtime(profile: Profile) -> list[Check]:
    from capsight_edge.runtime.providers import probe_providers

    requested = profile.model.providers
    result = probe_providers(requested)
    detail = (
        f"requested {', '.join(requested)}; session runs on {', '.join(result.active) or 'nothing'}"
    )
    if not result.active:
        return [
            Check(
                "onnxruntime",
                FAIL,
                f"{detail}: {result.error}",
                "install capsight[edge] (CPU) or capsight[gpu]",
                required=True,
                seconds=result.seconds,
            )
        ]
    if result.active[0] != requested[0]:
        return [
            Check(
                "onnxruntime",
                WARN,
                detail + f" (available: {', '.join(result.available)})",
                f"{requested[0]} is not usable here: install its runtime, or put the "
                "provider you have first",
                seconds=result.seconds,
            )
        ]
    return [Check("onnxruntime", PASS, detail, seconds=result.seconds)]


@check("disk")
def probe_disk(profile: Profile) -> list[Check]:
    return [disk_check(profile)]


@check("sink")
def probe_sink(profile: Profile) -> list[Check]:
    up = profile.upload
    if not up.sink_url:
        return [Check("sink", PASS, "no sink configured: captures stay on the cart")]
    checks = []
    if up.token_file and not Path(os.path.expanduser(up.token_file)).is_file():
        checks.append(
            Check(
                "sink token",
                FAIL,
                f"token file {up.token_file} not found",
                "run `capsight-sink device add NAME` and store the token there",
            )
        )
    try:
        import httpx
    except ImportError as exc:
        return [*checks, Check("sink", FAIL, f"httpx missing: {exc}", "install capsight[edge]")]
    start = time.perf_counter()
    try:
        resp = httpx.options(up.sink_url.rstrip("/") + "/files/", timeout=3.0)
        checks.append(
            Check(
                "sink",
                PASS if resp.status_code < 500 else WARN,
                f"{up.sink_url} answered HTTP {resp.status_code} in "
                f"{1000 * (time.perf_counter() - start):.0f} ms",
                "" if resp.status_code < 500 else "the sink reports an error",
            )
        )
    except httpx.HTTPError as exc:
        checks.append(
            Check(
                "sink",
                WARN,
                f"{up.sink_url} unreachable: {exc}",
                "check the network; captures queue on the cart meanwhile",
            )
        )
    return checks
