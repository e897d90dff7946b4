"""The cart hardware profile: one declaration per setting, with its default and unit in its name.

A profile file (TOML) only states what differs from these defaults. The dataclasses below are the
single source of truth: the loader validates against them and ``capsight profile show`` prints the
effective values.

Constraints are kept in field metadata: ``choices``, ``min``/``max`` (inclusive), ``item_choices``
for lists, and ``help``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from capsight_edge.camera.gs1 import ALL_FORMATS as BARCODE_FORMATS

ENCODERS = (
    "h264_nvenc",
    "hevc_nvenc",
    "h264_v4l2m2m",
    "h264_qsv",
    "h264_vaapi",
    "h264_amf",
    "libx264",
)
EXECUTION_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "XnnpackExecutionProvider",
    "CPUExecutionProvider",
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def setting(default: Any, help: str, **constraints: Any) -> Any:
    """Declare one setting. Lists get a fresh copy per instance."""
    meta = {"help": help, **constraints}
    if isinstance(default, list):
        return field(default_factory=partial(list, default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceSection:
    id: str = setting(
        "sim-cart-0001",
        "device id, unique in the fleet; names bundles and uploads",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    )
    store_id: str = setting(
        "sim-store-01", "store the cart belongs to", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )


@dataclass(frozen=True)
class CameraSection:
    source: str = setting("synthetic", "frame source", choices=("synthetic", "v4l2", "file"))
    device: str = setting("/dev/video0", "V4L2 device path, or a camera index such as '0'")
    width_px: int = setting(1280, "frame width", min=16, max=7680)
    height_px: int = setting(720, "frame height", min=16, max=4320)
    fps: float = setting(15.0, "frames per second asked of the camera", min=1, max=240)
    pixel_format: str = setting(
        "MJPG", "camera pixel format (FOURCC)", choices=("MJPG", "YUYV", "NV12", "GREY", "BGR3")
    )
    replay_path: str = setting("", "video file for source = 'file'")
    replay_realtime: bool = setting(
        True, "replay paced at the file's frame rate (else as fast as possible)"
    )
    required: bool = setting(True, "doctor fails (non-zero exit) when the camera does not deliver")
    barcode_backend: str = setting(
        "auto",
        "barcode decoder: auto (= cascade: zxing-cpp, then pyzbar, reads confirmed over "
        "time), cascade, pyzbar or zxing-cpp",
        choices=("auto", "cascade", "pyzbar", "zxing-cpp"),
    )
    barcode_formats: list[str] = setting(
        list(BARCODE_FORMATS),
        "symbologies decoded (fewer is faster)",
        item_choices=BARCODE_FORMATS,
        min_items=1,
    )


@dataclass(frozen=True)
class EncoderSection:
    preference: list[str] = setting(
        ["h264_nvenc", "h264_v4l2m2m", "h264_qsv", "h264_vaapi", "libx264"],
        "encoders tried in order; the first that opens is used",
        item_choices=ENCODERS,
        min_items=1,
    )
    quality: str = setting(
        "balanced",
        "the one quality knob; each encoder maps it to its own bitrate/CRF",
        choices=("low", "balanced", "high"),
    )
    bitrate_kbps: int = setting(
        0, "explicit bitrate; 0 derives it from quality", min=0, max=100_000
    )
    gop_s: float = setting(
        1.0, "keyframe interval (must be shorter than any trigger pre-roll)", min=0.1, max=10
    )


@dataclass(frozen=True)
class McuSection:
    transport: str = setting(
        "sim",
        "'serial' for a real MCU, 'sim' for the simulator on a pty",
        choices=("serial", "sim"),
    )
    port: str = setting("/dev/ttyACM0", "serial port (prefer /dev/serial/by-id/...)")
    baud: int = setting(921600, "serial baud rate", min=1200, max=12_000_000)
    required: bool = setting(True, "doctor fails when the MCU does not answer")
    sim_scenario: str = setting(
        "shopping",
        "simulator scenario for transport = 'sim'",
        choices=("shopping", "idle", "bumpy"),
    )
    sim_crystal_ppm: float = setting(30.0, "simulated MCU crystal error", min=-500, max=500)


@dataclass(frozen=True)
class LoadCellsSection:
    count: int = setting(4, "HX711 channels behind the MCU", min=1, max=8)
    rate_sps: int = setting(80, "HX711 output rate", choices=(10, 80))
    gain: int = setting(
        128, "HX711 gain (channel A: 128 or 64, channel B: 32)", choices=(128, 64, 32)
    )
    counts_per_gram: list[float] = setting(
        [10.0, 10.0, 10.0, 10.0],
        "per-cell scale, one value per cell (calibration overrides)",
        item_min=0.001,
        item_max=1e6,
    )
    item_threshold_g: float = setting(
        15.0, "smallest weight change reported as an item event", min=1, max=10_000
    )
    stable_window_s: float = setting(
        0.3, "how long the weight must hold still to count as stable", min=0.05, max=5
    )
    declared_weight_tolerance_g: float = setting(
        20.0,
        "weight_mismatch: a weighed item may differ this much from the net weight its code "
        "states (GS1 AI 310n), or declared_weight_tolerance_pct of it if larger",
        min=0,
        max=10000,
    )
    declared_weight_tolerance_pct: float = setting(
        10.0,
        "weight_mismatch: relative tolerance (see declared_weight_tolerance_g)",
        min=0,
        max=100,
    )
    stable_tolerance_g: float = setting(
        4.0, "allowed spread of the weight within the stable window", min=0.1, max=100
    )


@dataclass(frozen=True)
class PositioningSection:
    source: str = setting("uwb", "position source", choices=("none", "nmea", "uwb"))
    nmea_transport: str = setting(
        "sim", "'serial' for a GPS receiver, 'sim' for a simulated one", choices=("serial", "sim")
    )
    nmea_port: str = setting("/dev/ttyUSB0", "NMEA receiver serial port")
    nmea_baud: int = setting(9600, "NMEA receiver baud rate", min=1200, max=921600)


@dataclass(frozen=True)
class ImuSection:
    enabled: bool = setting(True, "read an IMU")
    transport: str = setting(
        "sim", "'smbus' for /dev/i2c-N, 'sim' for a simulated bus", choices=("smbus", "sim")
    )
    i2c_bus: int = setting(1, "I2C bus number (/dev/i2c-N)", min=0, max=63)
    address: int = setting(0x68, "7-bit I2C address", min=0x08, max=0x77)
    model: str = setting("mpu6050", "IMU chip", choices=("mpu6050",))
    rate_hz: float = setting(100.0, "sample rate", min=1, max=1000)
    required: bool = setting(True, "doctor fails when the IMU does not acknowledge")


@dataclass(frozen=True)
class StorageSection:
    data_dir: str = setting("./capsight-data", "where bundles, the journal and calibration live")
    high_watermark_pct: float = setting(90.0, "disk use above which capture pauses", min=1, max=100)
    low_watermark_pct: float = setting(80.0, "disk use below which capture resumes", min=0, max=99)
    min_free_bytes: int = setting(512 * 1024 * 1024, "capture pauses when less is free", min=0)
    headroom_min: float = setting(
        10.0,
        "capture pauses when less than this many minutes of recording at the measured bitrate fit",
        min=0,
        max=24 * 60,
    )


@dataclass(frozen=True)
class UploadWindow:
    start: str = setting("00:00", "local time the window opens (HH:MM)", time=True)
    end: str = setting("24:00", "local time the window closes (HH:MM; 24:00 = midnight)", time=True)
    max_upload_bps: int = setting(1_000_000, "bit/s allowed in this window; 0 = no uploads", min=0)
    days: list[str] = setting(
        list(WEEKDAYS), "weekdays the window applies to", item_choices=WEEKDAYS, min_items=1
    )


@dataclass(frozen=True)
class UploadSection:
    sink_url: str = setting(
        "",
        "sink base URL (http:// or https://); empty = keep captures on the cart",
        pattern=r"^(|https?://\S+)$",
    )
    token_file: str = setting("", "file holding this device's bearer token")
    max_upload_bps: int = setting(
        2_000_000, "bit/s cap for all uploads together outside the windows", min=0
    )
    concurrency: int = setting(2, "uploads in flight at once", min=1, max=16)
    chunk_bytes: int = setting(
        0,
        "bytes per PATCH; 0 = about 4 s at the current rate (256 KiB to 8 MiB); an interrupted "
        "chunk is what gets sent again",
        min=0,
        max=256 * 1024 * 1024,
    )
    timeout_s: float = setting(
        30.0, "timeout of every request to the sink: connect, each read, each write", min=1
    )
    heartbeat_s: float = setting(
        60.0, "seconds between heartbeats to the sink's fleet view; 0 = none", min=0
    )
    windows: list[UploadWindow] = setting(
        [], "schedule of [[upload.windows]]; the first matching window sets the rate"
    )


@dataclass(frozen=True)
class ModelSection:
    providers: list[str] = setting(
        ["CPUExecutionProvider"],
        "onnxruntime execution providers, in order of preference",
        item_choices=EXECUTION_PROVIDERS,
        min_items=1,
    )
    model_path: str = setting("", "ONNX model the cart runs; empty = none yet")
    registry_url: str = setting(
        "", "model registry polled for new models; empty = no polling", pattern=r"^(|https?://\S+)$"
    )
    intra_op_threads: int = setting(1, "onnxruntime intra-op threads", min=1, max=64)
    trust_root: str = setting(
        "", "the model registry's root metadata the cart trusts (1.root.json from the ML team)"
    )
    channel: str = setting(
        "stable", "the registry channel the cart follows", choices=("canary", "stable")
    )
    poll_s: float = setting(300.0, "seconds between polls of the model registry", min=5, max=86400)
    uncertain_below: float = setting(
        0.5, "a product named with a top score under this raises model_uncertain", min=0, max=1
    )
    rate_hz: float = setting(
        5.0, "most model runs a second on camera frames (while a hand moves)", min=0.1, max=60
    )


@dataclass(frozen=True)
class StoreConditionsSection:
    light_level: float = setting(
        0.975, "the store's mean brightness (1.0 = normal light)", min=0.2, max=2.0
    )
    light_jitter: float = setting(
        0.225, "spread of the light from one product to the next (+/-)", min=0, max=0.8
    )
    light_changes_per_hour: float = setting(
        0.0, "how often the store's lights switch to another brightness", min=0, max=600
    )
    blur_rate: float = setting(0.4, "share of products moved fast enough to blur", min=0, max=1)
    glare_rate: float = setting(0.15, "share of products with glare on the label", min=0, max=1)
    occlusion_rate: float = setting(
        0.1, "share of products held with fingers across the barcode", min=0, max=1
    )
    crumpled_rate: float = setting(0.2, "share of crumpled packs", min=0, max=1)


@dataclass(frozen=True)
class SimSection:
    catalogue_seed: int = setting(
        1, "seed of the fleet's product catalogue: every cart of one fleet uses the same", min=0
    )
    catalogue_size: int = setting(40, "products in the fleet's catalogue", min=2, max=2000)
    item_every_s: float = setting(
        4.0, "the simulated shopper puts an item in about this often", min=0.5, max=3600
    )
    bump_every_s: float = setting(
        12.0, "the simulated cart bumps into something about this often", min=1, max=3600
    )
    empty_hand_rate: float = setting(
        0.15,
        "share of the simulated shopper's turns at the basket that put nothing in (a hand over "
        "the basket, holding nothing)",
        min=0,
        max=0.9,
    )
    store_conditions: StoreConditionsSection = field(default_factory=StoreConditionsSection)


#: The ``empty_hand`` rule's expression (see :data:`DEFAULT_TRIGGERS`).
EMPTY_HAND = "hand_motion & !weight_delta[3s] & !barcode[3s] & !unstable & !bump[3s]"


@dataclass(frozen=True)
class TriggerRule:
    name: str = setting(
        "", "rule name, recorded in each bundle's manifest", pattern=r"^[a-z][a-z0-9_]{0,47}$"
    )
    when: str = setting(
        "", "boolean expression over signals, e.g. 'hand_motion & barcode'", rule=True
    )
    priority: int = setting(
        1, "upload and eviction priority (higher = more valuable)", min=0, max=9
    )
    preroll_s: float = setting(3.0, "seconds kept from before the trigger", min=0, max=30)
    postroll_s: float = setting(2.0, "seconds recorded after the signals clear", min=0, max=60)
    cooldown_s: float = setting(5.0, "seconds before the same rule may fire again", min=0, max=3600)
    confirm_s: float = setting(
        0.0,
        "the rule must hold this long before it fires (lets a late signal cancel it)",
        min=0,
        max=30,
    )
    max_length_s: float = setting(30.0, "longest capture one firing may ask for", min=1, max=600)


DEFAULT_TRIGGERS = [
    TriggerRule(name="scanned_item", when="hand_motion & barcode", priority=2),
    TriggerRule(
        name="unscanned_item", when="weight_delta & !barcode[3s]", priority=3, confirm_s=0.5
    ),
    # A hand over the basket for 0.8 s with nothing put in, taken out or read, the load cells
    # settled and the cart not jolted: "no product" with a hand in view. Pre- and
    # post-roll show the pre-labeller that nothing changed for 3 s before the hand and 1 s
    # after it (cloud_sink.prelabel, empty hands).
    TriggerRule(
        name="empty_hand",
        when=EMPTY_HAND,
        priority=1,
        confirm_s=0.8,
        preroll_s=5.0,
        postroll_s=3.0,
    ),
]


@dataclass(frozen=True)
class Profile:
    name: str = setting("unnamed", "profile name shown by doctor and in manifests")
    extends: str = setting(
        "", "another profile (path relative to this file) whose values this one starts from"
    )
    device: DeviceSection = field(default_factory=DeviceSection)
    camera: CameraSection = field(default_factory=CameraSection)
    encoder: EncoderSection = field(default_factory=EncoderSection)
    mcu: McuSection = field(default_factory=McuSection)
    load_cells: LoadCellsSection = field(default_factory=LoadCellsSection)
    positioning: PositioningSection = field(default_factory=PositioningSection)
    imu: ImuSection = field(default_factory=ImuSection)
    storage: StorageSection = field(default_factory=StorageSection)
    upload: UploadSection = field(default_factory=UploadSection)
    model: ModelSection = field(default_factory=ModelSection)
    sim: SimSection = field(default_factory=SimSection)
    triggers: list[TriggerRule] = field(default_factory=lambda: list(DEFAULT_TRIGGERS))
    #: The file the profile was loaded from (not a setting).
    source_path: str = field(default="", metadata={"internal": True})
