"""Encoders, outputs and the Recorder: a contract suite over every encoder that opens here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS, ManifestError, verify_bundle
from capsight_edge.errors import EncoderUnavailable, FrameError
from capsight_edge.profile.schema import ENCODERS
from capsight_edge.recorder.encoders import VideoEncoder, open_encoder
from capsight_edge.recorder.outputs import Mp4Output, OutputError, PacketRing, RawRing
from capsight_edge.recorder.probe import probe_encoder
from tests.conftest import ROOT, SIM

OPENS = {name: probe_encoder(name) for name in ENCODERS}


def encoder_params() -> list[Any]:
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(not OPENS[name].opens, reason=f"{name}: {OPENS[name].reason}"),
        )
        for name in ENCODERS
    ]


def moving(i: int, w: int = 320, h: int = 240) -> Any:
    img = np.full((h, w, 3), 60, np.uint8)
    x = (i * 7) % (w - 40)
    img[h // 3 : h // 3 + 40, x : x + 40] = (30, 200, 250)
    return img


def decode(path: Path) -> tuple[int, float]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = sum(1 for _ in c.decode(stream))
        return frames, float(stream.duration * stream.time_base) if stream.duration else float(
            c.duration or 0
        ) / 1e6


@pytest.mark.parametrize("name", encoder_params())
def test_encoder_contract(name: str, tmp_path: Path) -> None:
    enc = VideoEncoder(name, 320, 240, 15.0, gop_s=1.0)
    packets = []
    for i in range(45):
        packets += enc.encode(moving(i), int(i / 15 * 1e9))
    packets += enc.flush()
    assert len(packets) == 45
    keys = [i for i, p in enumerate(packets) if p.keyframe]
    assert keys[:3] == [0, 15, 30]  # a keyframe every gop_s
    assert [p.t_ns for p in packets] == sorted(p.t_ns for p in packets)
    out = Mp4Output(tmp_path / "c.mp4", enc.codec, 15.0)
    out.write(packets[15:])  # a clip may start at any keyframe
    out.close()
    frames, duration = decode(tmp_path / "c.mp4")
    assert frames == 30 and abs(duration - 2.0) < 0.1


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe is not installed")
def test_clip_opens_in_ffprobe(tmp_path: Path) -> None:
    enc = VideoEncoder("libx264", 640, 480, 15.0)
    out = Mp4Output(tmp_path / "c.mp4", "h264", 15.0)
    for i in range(30):
        out.write(enc.encode(moving(i, 640, 480), int(i / 15 * 1e9)))
    out.write(enc.flush())
    out.close()
    res = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
            str(tmp_path / "c.mp4"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    (stream,) = json.loads(res.stdout)["streams"]
    assert stream == {"codec_name": "h264", "width": 640, "height": 480, "nb_read_frames": "30"}


def test_preference_falls_back_with_reasons() -> None:
    enc, failed = open_encoder(["h264_vaapi", "libx264"], 320, 240, 15.0)
    assert enc.name == "libx264" or OPENS["h264_vaapi"].opens
    if not OPENS["h264_vaapi"].opens:
        assert failed and failed[0][0] == "h264_vaapi" and failed[0][1]
    with pytest.raises(EncoderUnavailable, match="no encoder"):
        open_encoder(["h264_vaapi"] if not OPENS["h264_vaapi"].opens else ["nope"], 320, 240, 15.0)


def test_wrong_frames_are_rejected_and_counted() -> None:
    enc = VideoEncoder("libx264", 320, 240, 15.0)
    with pytest.raises(FrameError):
        enc.encode(np.zeros((100, 100, 3), np.uint8), 0)
    with pytest.raises(FrameError):
        enc.encode(np.zeros((240, 320, 3), np.float32), 0)
    assert enc.rejected == 2


def test_packet_ring_keeps_time_from_a_keyframe() -> None:
    enc = VideoEncoder("libx264", 320, 240, 15.0, gop_s=1.0)
    ring = PacketRing(3.0)
    for i in range(15 * 10):
        ring.write(enc.encode(moving(i), int(i / 15 * 1e9)))
    oldest = min(p.t_ns for p in ring.since(0))
    assert 9e9 - 4.1e9 <= oldest <= 9e9 - 3e9  # 3 s plus at most one GOP
    clip = ring.since(int(7.5e9))
    assert clip[0].keyframe and clip[0].t_ns == int(7e9)


def test_raw_ring_bounded_by_time_and_memory() -> None:
    ring = RawRing(1.0, max_bytes=10 * 320 * 240 * 3 // 2)
    for i in range(60):
        ring.push(moving(i), int(i / 30 * 1e9))
    kept = ring.since(0)
    assert len(kept) == 10 and ring.dropped_for_memory > 0


def test_clip_needs_a_keyframe_with_parameter_sets(tmp_path: Path) -> None:
    enc = VideoEncoder("libx264", 320, 240, 15.0)
    packets = [p for i in range(3) for p in enc.encode(moving(i), i)]
    with pytest.raises(OutputError, match="keyframe"):
        Mp4Output(tmp_path / "c.mp4", "h264", 15.0).write(packets[1:])


def test_disk_write_errors_are_output_errors(tmp_path: Path) -> None:
    enc = VideoEncoder("libx264", 320, 240, 15.0)
    packets = [p for i in range(3) for p in enc.encode(moving(i), i)]
    with pytest.raises(OutputError):
        Mp4Output(tmp_path / "missing-dir" / "c.mp4", "h264", 15.0).write(packets)


# -- the Recorder process over a real FrameBus ----------------------------------------------------
def run_recorder_once(
    tmp_path: Path, mode: str, seconds_before: float = 4.0, clip_s: float = 2.0
) -> Any:
    from capsight_edge.camera.framebus import FrameBus
    from capsight_edge.profile import load_profile
    from capsight_edge.recorder.recorder import Recorder
    from capsight_edge.sensors.ring import SensorRing
    from capsight_edge.triggers.engine import Decision
    from tests.conftest import SIM

    profile = load_profile(SIM, data_dir=tmp_path)
    ring = SensorRing()
    sealed: list[Any] = []
    with FrameBus(320, 240, fps=15.0) as bus:
        rec = Recorder(
            profile,
            bus_name=bus.name,
            width=320,
            height=240,
            fps=15.0,
            sensors=ring,
            preroll_mode=mode,
            on_sealed=lambda p, m: sealed.append((p, m)),
        )
        rec.start()
        start = time.monotonic_ns()
        i = 0

        def pump(until_s: float) -> None:
            nonlocal i
            while time.monotonic_ns() - start < until_s * 1e9:
                t = time.monotonic_ns()
                bus.publish(moving(i), t)
                ring.add("/weight/fused", t, grams=float(i), stable=True)
                i += 1
                time.sleep(1 / 15)

        pump(seconds_before)
        fire_ns = time.monotonic_ns()
        rec.on_decision(
            Decision(
                "fire",
                "scanned_item",
                2,
                fire_ns,
                {"barcode": True, "hand_motion": True},
                "test",
                clip_start_ns=fire_ns - 3_000_000_000,
            )
        )
        pump(seconds_before + clip_s)
        end_ns = time.monotonic_ns()
        rec.on_decision(
            Decision(
                "end",
                "scanned_item",
                2,
                end_ns,
                {},
                "post-roll done",
                clip_start_ns=fire_ns - 3_000_000_000,
                clip_end_ns=end_ns,
            )
        )
        pump(seconds_before + clip_s + 1.0)
        deadline = time.monotonic() + 20
        while rec.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        rec.stop()
    return rec, sealed, fire_ns, end_ns


@pytest.mark.parametrize("mode", ["raw", "encoded"])
def test_recorder_seals_a_verified_bundle(tmp_path: Path, mode: str) -> None:
    rec, sealed, fire_ns, end_ns = run_recorder_once(tmp_path, mode)
    assert len(sealed) == 1 and not rec.failed
    path, manifest = sealed[0]
    assert path.parent == tmp_path / "bundles" and not list(
        (tmp_path / "bundles" / ".partial").iterdir()
    )
    assert verify_bundle(path) == manifest
    assert sorted(p.name for p in path.iterdir()) == [CLIP, MANIFEST, SENSORS]
    v = manifest.video
    assert v is not None and v.encoder == "libx264" and v.complete
    frames, duration = decode(path / CLIP)
    assert frames == v.frames
    # pre-roll (3 s, from a keyframe in encoded mode) + 2 s until the end
    assert 4.5 <= duration <= 6.5 and abs(duration - v.duration_s) < 0.2
    assert manifest.start_ns <= fire_ns - 2_900_000_000 and manifest.end_ns >= end_ns
    assert manifest.trigger.rule == "scanned_item" and manifest.trigger.signals["barcode"]
    from capsight_edge.sensors.sensorlog import read_messages

    times = [t for m in read_messages(path / SENSORS) for t in m[2].get("t_ns", [])]
    assert times and manifest.start_ns <= min(times) and max(times) <= manifest.end_ns
    assert rec.seal_delays_s[0] < 1.0


def test_tampered_bundle_fails_verification(tmp_path: Path) -> None:
    _, sealed, _, _ = run_recorder_once(tmp_path, "raw", seconds_before=3.2, clip_s=1.0)
    path, _ = sealed[0]
    with open(path / CLIP, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xff")
    with pytest.raises(ManifestError, match="does not match"):
        verify_bundle(path)
    (path / MANIFEST).write_text("{}")
    with pytest.raises(ManifestError):
        verify_bundle(path)


@pytest.fixture
def spare_encoder() -> Iterator[str]:
    """A second backend on this machine's libx264, so a two-item preference list has two
    encoders that really open (the first plays the hardware encoder that dies)."""
    from capsight_edge.recorder import encoders

    encoders.BACKENDS["x264-spare"] = encoders.BACKENDS["libx264"]
    encoders.FFMPEG_NAMES["x264-spare"] = "libx264"
    yield "x264-spare"
    del encoders.BACKENDS["x264-spare"], encoders.FFMPEG_NAMES["x264-spare"]


@pytest.mark.parametrize("mode", ["encoded", "raw"])
def test_encoder_dying_mid_clip_hands_over_to_the_next_in_the_list(
    tmp_path: Path, mode: str, spare_encoder: str
) -> None:
    """Fault injection at the last inch: the first encoder's codec context vanishes while a clip
    is open; the next encoder of the preference list takes over and the clip goes on."""
    import queue

    from capsight_edge.camera.framebus import FrameBus
    from capsight_edge.recorder.messages import (
        ClipWritten,
        EncoderChosen,
        EncoderConfig,
        OpenClip,
        Stop,
    )
    from capsight_edge.recorder.process import EncoderProcess

    cfg = EncoderConfig((spare_encoder, "libx264"), "balanced", 0, 1.0, 15.0, 320, 240)
    cmd_q: queue.Queue[Any] = queue.Queue()
    result_q: queue.Queue[Any] = queue.Queue()
    with FrameBus(320, 240, fps=15.0) as bus:
        proc = EncoderProcess(bus.name, cfg, 1.0, mode, cmd_q, result_q)
        t = 0

        def step() -> None:
            nonlocal t
            t += 66_666_667
            bus.publish(moving(t // 66_666_667), t)
            assert proc.commands()
            frame = proc.reader.next_frame(0.5)
            assert frame is not None
            proc.on_frame(frame)
            proc.maybe_finish()

        for _ in range(20):
            step()
        cmd_q.put(OpenClip("c1", t - 500_000_000, str(tmp_path / "c1.mp4")))
        for _ in range(10):
            step()
        assert proc.preroll.encoder is not None and proc.preroll.encoder.name == spare_encoder
        proc.preroll.encoder._ctx = None  # the first encoder died
        for _ in range(15):
            step()  # the next one takes over, the clip goes on
        assert proc.preroll.encoder.name == "libx264" and proc.stats["encode_errors"] == 1
        cmd_q.put(Stop())
        assert not proc.commands()
        proc.finish("stopped")
        msgs = [result_q.get_nowait() for _ in range(result_q.qsize())]
        proc.reader.close()
    chosen = [m.name for m in msgs if isinstance(m, EncoderChosen)]
    assert chosen == [spare_encoder, "libx264"]
    (clip,) = [m for m in msgs if isinstance(m, ClipWritten)]
    assert clip.complete and clip.encoder == f"{spare_encoder}+libx264"
    assert (
        f"encoder {spare_encoder} failed mid-clip" in clip.note and "libx264 took over" in clip.note
    )
    frames, _ = decode(tmp_path / "c1.mp4")
    # Before the failure (the pre-roll and 10 frames) and after it (15 frames, less the one that
    # failed), in one playable clip.
    assert frames == clip.frames and frames >= 10 + 14


def test_an_encoder_that_dies_between_clips_is_tried_last(spare_encoder: str) -> None:
    from capsight_edge.recorder.messages import EncoderConfig
    from capsight_edge.recorder.preroll import EncoderChain

    changes: list[str] = []
    chain = EncoderChain(
        EncoderConfig((spare_encoder, "libx264"), "balanced", 0, 1.0, 15.0, 320, 240),
        lambda name, failed: changes.append(name),
    )
    assert chain.open().name == spare_encoder
    assert chain.died(spare_encoder, "gone").name == "libx264"
    assert chain.open().name == "libx264"  # not back to the one that died
    assert chain.order == ["libx264", spare_encoder] and changes == [spare_encoder, "libx264"]


def test_a_hardware_encoder_that_does_not_open_says_ffmpegs_reason_quietly(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The probe's reason carries FFmpeg's own log line (on an H200, which has no encoder engine:
    "OpenEncodeSessionEx failed: unsupported device"), and the probe prints nothing itself."""
    import av

    if "h264_nvenc" not in av.codecs_available:
        pytest.skip("this PyAV has no h264_nvenc")
    probe = probe_encoder("h264_nvenc")
    if probe.opens:
        pytest.skip("h264_nvenc opens here")
    assert "last error log: [h264_nvenc]" in probe.reason, probe.reason
    out, err = capfd.readouterr()
    assert "h264_nvenc" not in out + err
    assert av.logging.get_level() is None  # the probe leaves PyAV's logging as it found it


def test_the_encoder_process_starts_while_another_thread_imports_opencv(tmp_path: Path) -> None:
    """OpenCV's loader puts its own folder first on ``sys.path`` while it loads its native
    module; a process spawned in that window inherits the path, finds ``cv2/typing`` for
    ``typing`` and dies at start. Here a collector-like thread is held inside that window
    (deterministically: an import hook waits where the loader imports the native module) while
    the Recorder starts its encoder process: it must start. In a fresh interpreter, where cv2
    is not imported yet."""
    code = f"""
import importlib.abc, importlib.machinery, os, sys, threading
from capsight_edge.camera.framebus import FrameBus
from capsight_edge.profile import load_profile
from capsight_edge.recorder.recorder import Recorder

profile = load_profile({str(SIM)!r}, data_dir={str(tmp_path)!r})
bus = FrameBus(320, 240, fps=15.0)
rec = Recorder(profile, bus_name=bus.name, width=320, height=240, fps=15.0)
assert "cv2" not in sys.modules
hold, inside = threading.Event(), threading.Event()

class Held:  # loads the native module once let go (outside the import lock, as it runs)
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        inside.set()
        hold.wait(60)
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)


class Hold(importlib.abc.MetaPathFinder):
    calls = 0

    def find_spec(self, name, path, target=None):
        if name != "cv2":
            return None
        Hold.calls += 1
        if Hold.calls < 2:
            return None
        # the loader imports the native module: its folder is first on sys.path now
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        spec.loader = Held(spec.loader)
        return spec

sys.meta_path.insert(0, Hold())
importer = threading.Thread(target=lambda: __import__("cv2"))
importer.start()
assert inside.wait(60)
assert any(os.path.basename(p) == "cv2" for p in sys.path), sys.path  # the window is open
threading.Timer(1.0, hold.set).start()  # how long the import stays open: not what is tested
try:
    rec.start()
    print("started", rec.encoder_name)
    rec.stop()
finally:
    hold.set()
    importer.join()
    bus.close()
"""
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "started libx264" in res.stdout
