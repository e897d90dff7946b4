"""The doctor's built-in probes, one per configured device or service."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from capsight_edge.doctor import FAIL, PASS, SKIP, WARN, Check, check, disk_check
from capsight_edge.profile.schema import Profile


@check("profile")
def probe_profile(profile: Profile) -> list[Check]:
    return [Check("profile", PASS, f"{profile.name} ({profile.source_path}) is valid")]


@check("camera")
def probe_camera(profile: Profile) -> list[Check]:
    cam = profile.camera
    if cam.source == "synthetic":
        return _probe_synthetic(profile)
    if cam.source == "file":
        return [_probe_replay(cam.replay_path, cam.required)]
    return [
        _probe_v4l2(
            cam.device, cam.width_px, cam.height_px, cam.fps, cam.pixel_format, cam.required
        )
    ]


def _probe_synthetic(profile: Profile) -> list[Check]:
    """Render the synthetic scene for a moment (measured fps) and decode a held-up product."""
    from capsight_edge.camera.barcodes import BarcodeDetector
    from capsight_edge.camera.sources import source_from_profile
    from capsight_edge.scene.catalogue import Catalogue
    from firmware_bridge.sim.scenario import ItemEvent, Scenario

    catalogue = Catalogue(n=5, seed=1)
    product = catalogue.products[0]
    scenario = Scenario(
        duration_s=10,
        items=[ItemEvent(t_s=1.6, grams=product.weight_g, sku=product.sku, scan_s=1.5)],
    )
    source = source_from_profile(profile, scenario=scenario, catalogue=catalogue)
    source.realtime = False
    source.renderer.clean = True
    source.open()
    frames: list[Any] = []
    start, readable = time.perf_counter(), None
    while len(frames) < int(2 * profile.camera.fps):
        frame = source.read()
        if frame is None:
            break
        frames.append(frame)
        if readable is None and frame.truth.barcode_readable:
            readable = frame
    spent = time.perf_counter() - start
    fps = len(frames) / spent if spent > 0 else 0.0
    checks = [
        Check(
            "camera",
            PASS if fps >= profile.camera.fps else WARN,
            f"synthetic cart scene {profile.camera.width_px}x{profile.camera.height_px}: "
            f"renders {fps:.0f} fps (asked {profile.camera.fps:g})",
            "" if fps >= profile.camera.fps else "lower camera.fps for the simulator",
        )
    ]
    if readable is None:
        return [*checks, Check("barcode", WARN, "no readable frame in the test scene", "")]
    codes = BarcodeDetector().decode_full(readable.image)
    ok = any(c.text == product.code for c in codes)
    checks.append(
        Check(
            "barcode",
            PASS if ok else FAIL,
            f"{product.symbology} {product.code} held up to the camera: "
            f"{'decoded' if ok else 'not decoded'}",
            "" if ok else "check the barcode backend install (zxing-cpp)",
        )
    )
    return checks


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
        codes = _decode_any(frame)
        detail = f"{device}: {shape[1]}x{shape[0]} at {measured:.1f} fps measured"  # type: ignore[index]
        status = PASS if measured >= 0.8 * fps else WARN
        remedy = "" if status == PASS else "lower fps/resolution or use MJPG over USB 2"
        detail += f"; barcodes in view: {', '.join(codes) if codes else 'none'}"
        return Check("camera", status, detail, remedy)
    finally:
        cap.release()


def _decode_any(image: Any) -> list[str]:
    try:
        from capsight_edge.camera.barcodes import BarcodeDetector

        return [f"{c.symbology} {c.text}" for c in BarcodeDetector().decode_full(image)]
    except Exception:  # readability is advice here; the camera check stands on its own
        return []


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
    """The sink answers its tus endpoint, and (with a token file) accepts this device's token."""
    up = profile.upload
    if not up.sink_url:
        return [Check("sink", PASS, "no sink configured: captures stay on the cart")]
    token = ""
    if up.token_file:
        path = Path(os.path.expanduser(up.token_file))
        if not path.is_file():
            return [
                Check(
                    "sink token",
                    FAIL,
                    f"token file {up.token_file} not found",
                    "run `capsight-sink device add NAME` and store the token there",
                )
            ]
        token = path.read_text().strip()
    try:
        import httpx
    except ImportError as exc:
        return [Check("sink", FAIL, f"httpx missing: {exc}", "install capsight[edge]")]
    start = time.perf_counter()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.options(up.sink_url.rstrip("/") + "/files/", headers=headers, timeout=3.0)
    except httpx.HTTPError as exc:
        return [
            Check(
                "sink",
                WARN,
                f"{up.sink_url} unreachable: {exc}",
                "check the network; captures queue on the cart meanwhile",
            )
        ]
    ms = 1000 * (time.perf_counter() - start)
    version = resp.headers.get("Tus-Version", "")
    if resp.status_code >= 500:
        return [
            Check(
                "sink",
                WARN,
                f"{up.sink_url} answered HTTP {resp.status_code}",
                "the sink reports an error",
            )
        ]
    checks = [
        Check(
            "sink",
            PASS,
            f"{up.sink_url} answered in {ms:.0f} ms" + (f" (tus {version})" if version else ""),
        )
    ]
    if token:
        accepted = resp.status_code == 204 and bool(version)
        checks.append(
            Check(
                "sink token",
                PASS if accepted else FAIL,
                "token accepted" if accepted else f"token refused (HTTP {resp.status_code})",
                ""
                if accepted
                else "ask for a new token: `capsight-sink device add NAME` on the sink",
            )
        )
    return checks


@check("mcu")
def probe_mcu(profile: Profile) -> list[Check]:
    """Hello, firmware version, frame error rate and sample rate of the MCU link."""
    from firmware_bridge.link import LinkState, McuLink, RequestFailed
    from firmware_bridge.messages import GetInfo, Hello, MsgType
    from firmware_bridge.transport import SerialTransport, TransportError

    mcu, required = profile.mcu, profile.mcu.required
    sim = None
    port = mcu.port
    if mcu.transport == "sim":
        from firmware_bridge.sim.mcu import McuSimulator
        from firmware_bridge.sim.scenario import generate

        sim = McuSimulator(
            generate("idle", 60),
            n_cells=profile.load_cells.count,
            rate_sps=profile.load_cells.rate_sps,
            crystal_ppm=mcu.sim_crystal_ppm,
            uwb_hz=10.0 if profile.positioning.source == "uwb" else 0.0,
        ).start()
        port = sim.port
    elif not os.path.exists(port) and "://" not in port:
        return [
            Check(
                "mcu link",
                FAIL,
                f"{port} does not exist",
                "check the cable; use the /dev/serial/by-id/ path; is the user in group 'dialout'?",
                required,
            )
        ]
    counts: dict[int, int] = {}
    link = McuLink(SerialTransport(port, mcu.baud))
    link.add_listener(lambda f, t: counts.__setitem__(f.type, counts.get(f.type, 0) + 1))
    checks: list[Check] = []
    label = f"{port}{' (simulated MCU on a pty)' if sim else ''}"
    try:
        link.start()
        if not link.wait_for_state(LinkState.UP, 3.0):
            return [
                Check(
                    "mcu link",
                    FAIL,
                    f"{label} does not open",
                    "check permissions and that no other program holds the port",
                    required,
                )
            ]
        try:
            frame = link.request(GetInfo(), timeout_s=2.0)
        except (RequestFailed, TransportError) as exc:
            return [
                Check(
                    "mcu link",
                    FAIL,
                    f"{label} opened but the MCU did not say hello ({exc})",
                    "check the baud rate and that the firmware speaks capsight protocol v1",
                    required,
                )
            ]
        hello = frame.payload
        assert isinstance(hello, Hello)
        checks.append(
            Check(
                "mcu link",
                PASS,
                f"{label} at {mcu.baud} baud: {hello.name} "
                f"firmware {hello.firmware}, protocol v{hello.protocol_version}",
            )
        )
        if hello.n_cells != profile.load_cells.count:
            checks.append(
                Check(
                    "load cells",
                    FAIL,
                    f"the MCU reads {hello.n_cells} cells, the "
                    f"profile says {profile.load_cells.count}",
                    "fix load_cells.count",
                    required,
                )
            )
        window = 1.0
        before = link.stats()
        w0 = counts.get(int(MsgType.WEIGHT), 0)
        time.sleep(window)
        after = link.stats()
        weights = counts.get(int(MsgType.WEIGHT), 0) - w0
        bad = sum(after.errors.values()) - sum(before.errors.values())
        good = after.frames - before.frames
        rate = bad / (bad + good) if bad + good else 0.0
        status = PASS if rate < 0.001 else WARN if rate < 0.02 else FAIL
        checks.append(
            Check(
                "mcu frames",
                status,
                f"frame error rate {100 * rate:.2f}% over {window:.0f} s, "
                f"{after.lost_frames} lost, {weights} weight frames "
                f"({weights / window:.0f}/s, expected "
                f"{profile.load_cells.rate_sps}/s)",
                "" if status == PASS else "check cable, ground and baud rate",
                required and status == FAIL,
            )
        )
        if profile.positioning.source == "uwb":
            uwb = counts.get(int(MsgType.UWB_POSITION), 0)
            checks.append(
                Check(
                    "uwb",
                    PASS if uwb else WARN,
                    f"{uwb} UWB positions from the MCU",
                    "" if uwb else "check the UWB tag and its anchors",
                )
            )
    finally:
        link.stop()
        if sim is not None:
            sim.stop()
    checks.append(_calibration_check(profile, simulated=sim is not None))
    return checks


def _calibration_check(profile: Profile, *, simulated: bool) -> Check:
    from capsight_edge.doctor import data_dir
    from capsight_edge.errors import CalibrationError
    from capsight_edge.sensors.calibration import FILENAME, Calibration

    path = data_dir(profile) / FILENAME
    if not path.exists():
        if simulated:
            return Check("scale calibration", PASS, "simulated cart: tared automatically on start")
        return Check(
            "scale calibration",
            WARN,
            f"no {path}: weights are uncalibrated",
            "run `capsight scale tare`, then `capsight scale calibrate --known-grams G`",
        )
    try:
        cal = Calibration.load(data_dir(profile), profile.load_cells.counts_per_gram)
    except CalibrationError as exc:
        return Check("scale calibration", FAIL, str(exc), "calibrate again", True)
    return Check("scale calibration", PASS, f"{path} (updated {cal.updated_utc or 'unknown'})")


@check("imu")
def probe_imu(profile: Profile) -> list[Check]:
    from capsight_edge.errors import DeviceError
    from capsight_edge.sensors.imu import Mpu6050

    imu = profile.imu
    if not imu.enabled:
        return [Check("imu", SKIP, "no IMU configured")]
    name = f"i2c-{imu.i2c_bus} @ {imu.address:#04x}"
    if imu.transport == "sim":
        from firmware_bridge.sim.scenario import generate
        from firmware_bridge.sim.smbus import simulated_cart_bus

        bus: Any = simulated_cart_bus(generate("idle", 60), bus=imu.i2c_bus)
        name += " (simulated bus)"
    else:
        dev = f"/dev/i2c-{imu.i2c_bus}"
        if not os.path.exists(dev):
            return [
                Check(
                    "imu",
                    FAIL,
                    f"{dev} does not exist",
                    "enable I2C (dtparam=i2c_arm=on / jetson-io) and load i2c-dev",
                    imu.required,
                )
            ]
        try:
            import smbus2

            bus = smbus2.SMBus(imu.i2c_bus)
        except (OSError, ImportError) as exc:
            return [
                Check(
                    "imu",
                    FAIL,
                    f"cannot open {dev}: {exc}",
                    "add the user to group 'i2c'",
                    imu.required,
                )
            ]
    try:
        chip = Mpu6050(bus=bus, address=imu.address)
        model = chip.probe()
        chip.configure(imu.rate_hz)
        sample = chip.read()
    except DeviceError as exc:
        return [
            Check(
                "imu",
                FAIL,
                f"{name}: {exc}",
                f"check wiring and address (AD0 high = 0x69); i2cdetect -y {imu.i2c_bus}",
                imu.required,
            )
        ]
    finally:
        bus.close()
    g = sample.accel_magnitude_g
    status = PASS if 0.8 < g < 1.2 else WARN
    return [
        Check(
            "imu",
            status,
            f"{name}: {model}, |a| = {g:.2f} g, {sample.temp_c:.1f} C",
            "" if status == PASS else "the cart should be at rest: check mounting",
        )
    ]


@check("positioning")
def probe_positioning(profile: Profile) -> list[Check]:
    pos = profile.positioning
    if pos.source != "nmea":
        return [
            Check(
                "positioning",
                PASS if pos.source == "uwb" else SKIP,
                "UWB through the MCU (see the uwb line)"
                if pos.source == "uwb"
                else "no positioning configured",
            )
        ]
    from capsight_edge.sensors.nmea import LineFramer, NmeaParser
    from firmware_bridge.transport import SerialTransport, TransportError

    sim = None
    port = pos.nmea_port
    if pos.nmea_transport == "sim":
        from firmware_bridge.sim.gnss import GnssSimulator
        from firmware_bridge.sim.scenario import generate

        sim = GnssSimulator(generate("idle", 60)).start()
        port = sim.port
    transport = SerialTransport(port, pos.nmea_baud, timeout_s=0.2)
    parser, framer = NmeaParser(), LineFramer()
    try:
        transport.open()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and parser.sentences < 4:
            for line in framer.feed(transport.read(512)):
                parser.feed_line(line)
    except TransportError as exc:
        return [Check("gnss", FAIL, str(exc), "check the receiver's port and baud rate")]
    finally:
        transport.close()
        if sim is not None:
            sim.stop()
    s = parser.summary()
    if not parser.sentences:
        return [
            Check(
                "gnss",
                FAIL,
                f"{port}: no NMEA sentence in 2.5 s (rejected: {s['rejected']})",
                "check the baud rate (often 9600)",
            )
        ]
    return [
        Check(
            "gnss",
            PASS if parser.fixes else WARN,
            f"{port}: {parser.sentences} sentences, {parser.fixes} fixes",
            "" if parser.fixes else "no fix yet: give the antenna a view of the sky",
        )
    ]
