"""The doctor's device probes: camera, MCU link (and the scale's calibration), IMU, GNSS.

Every device comes from the :class:`~capsight_edge.devices.DeviceFactory` the doctor was given,
exactly as a running cart gets it; the probes never ask whether a device is real or simulated.
Where a flow needs someone to act (a product held up to the camera), the factory's ``hands``
do it on a simulated cart; on a real one the probe reports what is in view.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from capsight_edge.devices import DeviceFactory
from capsight_edge.doctor.report import FAIL, PASS, SKIP, WARN, Check
from capsight_edge.errors import DeviceBusy, DeviceError, DeviceUnavailable
from capsight_edge.profile.schema import Profile


def _unavailable(name: str, exc: DeviceError, required: bool) -> Check:
    """A device the factory could not hand out: busy (another program holds it) is a warning,
    anything else a failure."""
    remedy = getattr(exc, "remedy", "") or "check the device and its cable"
    if isinstance(exc, DeviceBusy):
        return Check(name, WARN, str(exc), remedy)
    return Check(name, FAIL, str(exc), remedy, required)


# -- camera ---------------------------------------------------------------------------------------
def _read_frames(source: Any, seconds: float, max_frames: int) -> list[Any]:
    """Frames read for ``seconds`` (a stalled camera never blocks the doctor: the source is
    closed at the deadline, which ends its read)."""
    frames: list[Any] = []
    done = threading.Event()

    def reader() -> None:
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and len(frames) < max_frames:
                frame = source.read()
                if frame is None:
                    break
                frames.append(frame)
        except Exception:  # the caller judges by what arrived
            pass
        finally:
            done.set()

    t = threading.Thread(target=reader, name="doctor-camera", daemon=True)
    t.start()
    if not done.wait(seconds + 2.0):
        source.close()
        done.wait(2.0)
    return frames


def probe_camera(profile: Profile, factory: DeviceFactory) -> list[Check]:
    cam = profile.camera
    name = factory.describe("camera")
    try:
        source = factory.camera()
        source.open()
    except DeviceError as exc:
        if not isinstance(exc, DeviceUnavailable):
            exc = DeviceUnavailable(
                str(exc),
                remedy="check permissions (group 'video') and that no other program holds it",
            )
        return [_unavailable("camera", exc, cam.required)]
    try:
        start = time.perf_counter()
        frames = _read_frames(source, 1.5, int(3 * cam.fps))
        elapsed = time.perf_counter() - start
        if len(frames) < 2:
            return [
                Check(
                    "camera",
                    FAIL,
                    f"{name} opened but delivered {len(frames)} frames",
                    "try another pixel_format or resolution",
                    cam.required,
                )
            ]
        span_s = (frames[-1].t_ns - frames[0].t_ns) / 1e9
        fps = (len(frames) - 1) / span_s if span_s > 0 else len(frames) / elapsed
        ok = fps >= 0.8 * cam.fps
        checks = [
            Check(
                "camera",
                PASS if ok else WARN,
                f"{name}: {frames[-1].width}x{frames[-1].height} at {fps:.1f} fps measured "
                f"(asked {cam.fps:g})",
                "" if ok else "lower camera.fps or the resolution (or use MJPG over USB 2)",
            )
        ]
        checks.append(_barcode_check(source, factory, frames[-1]))
        return checks
    finally:
        source.close()


def _barcode_check(source: Any, factory: DeviceFactory, last: Any) -> Check:
    """A simulated cart's shopper holds a product up: its code must decode. A real camera:
    the codes in view (advice only: nobody may be holding one)."""
    from capsight_edge.camera.barcodes import BarcodeDetector
    from capsight_edge.camera.gs1 import same_gtin

    detector = BarcodeDetector()
    hands = factory.hands if factory.simulated("camera") else None
    if hands is None:
        codes = [f"{c.symbology} {c.text}" for c in detector.decode_full(last.image)]
        return Check("barcode", PASS, f"in view: {', '.join(codes) if codes else 'none'}")
    product, until_s = hands.show()
    deadline = time.monotonic() + 6.0
    decoded = False
    while not decoded and time.monotonic() < deadline and factory.clock() < until_s:
        frame = source.read()
        if frame is None:
            break
        decoded = any(same_gtin(c.key, product.code) for c in detector.decode_full(frame.image))
    return Check(
        "barcode",
        PASS if decoded else FAIL,
        f"{product.symbology} {product.code} held up to the camera: "
        f"{'decoded' if decoded else 'not decoded'}",
        "" if decoded else "check the barcode backend install (libzbar0, zxing-cpp)",
    )


# -- MCU link and scale ---------------------------------------------------------------------------
def probe_mcu(profile: Profile, factory: DeviceFactory) -> list[Check]:
    """Hello, firmware version, frame error rate and sample rate of the MCU link."""
    from firmware_bridge.link import LinkState, McuLink, RequestFailed
    from firmware_bridge.messages import GetInfo, Hello, MsgType
    from firmware_bridge.transport import TransportError

    mcu, required = profile.mcu, profile.mcu.required
    try:
        transport = factory.mcu_transport()
    except DeviceError as exc:
        return [_unavailable("mcu link", exc, required)]
    label = factory.describe("mcu")
    counts: dict[int, int] = {}
    link = McuLink(transport)
    link.add_listener(lambda f, t: counts.__setitem__(f.type, counts.get(f.type, 0) + 1))
    checks: list[Check] = []
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
    checks.append(_calibration_check(profile, self_taring=factory.simulated("mcu")))
    return checks


def _calibration_check(profile: Profile, *, self_taring: bool) -> Check:
    from capsight_edge.errors import CalibrationError
    from capsight_edge.sensors.calibration import FILENAME, Calibration

    folder = Path(os.path.expanduser(profile.storage.data_dir))
    path = folder / FILENAME
    if not path.exists():
        if self_taring:
            return Check("scale calibration", PASS, "simulated cart: tared automatically on start")
        return Check(
            "scale calibration",
            WARN,
            f"no {path}: weights are uncalibrated",
            "run `capsight scale tare`, then `capsight scale calibrate --known-grams G`",
        )
    try:
        cal = Calibration.load(folder, profile.load_cells.counts_per_gram)
    except CalibrationError as exc:
        return Check("scale calibration", FAIL, str(exc), "calibrate again", True)
    return Check("scale calibration", PASS, f"{path} (updated {cal.updated_utc or 'unknown'})")


# -- IMU ------------------------------------------------------------------------------------------
def probe_imu(profile: Profile, factory: DeviceFactory) -> list[Check]:
    from capsight_edge.sensors.imu import Mpu6050

    imu = profile.imu
    if not imu.enabled:
        return [Check("imu", SKIP, "no IMU configured")]
    try:
        bus = factory.i2c_bus()
    except DeviceError as exc:
        return [_unavailable("imu", exc, imu.required)]
    name = factory.describe("imu")
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


# -- positioning ----------------------------------------------------------------------------------
def probe_positioning(profile: Profile, factory: DeviceFactory) -> list[Check]:
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
    from firmware_bridge.transport import TransportError

    try:
        transport = factory.nmea_transport()
    except DeviceError as exc:
        return [_unavailable("gnss", exc, False)]
    port = factory.describe("nmea")
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
