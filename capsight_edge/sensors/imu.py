"""The cart's IMU on I2C (MPU-6050 and its clones) and what it tells about cart motion.

The driver takes any object with the methods of ``smbus2.SMBus`` (the real bus, or
``firmware_bridge.sim.smbus.SimulatedSMBus``). It reads the 14 data bytes from 0x3B in one block
read so the high and low bytes belong to the same sample.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Protocol

from capsight_edge.errors import DeviceError

log = logging.getLogger("capsight.sensors.imu")

#: WHO_AM_I answers seen on MPU-6050 boards: the genuine part, and clones/relabelled parts.
KNOWN_IDS = {
    0x68: "MPU-6050",
    0x70: "MPU-6500-class clone",
    0x98: "clone (0x98)",
    0x72: "MPU-6050 clone (0x72)",
}


class SMBusLike(Protocol):
    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int: ...

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None: ...

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ImuSample:
    t_ns: int
    accel_g: tuple[float, float, float]
    gyro_dps: tuple[float, float, float]
    temp_c: float

    @property
    def accel_magnitude_g(self) -> float:
        return math.sqrt(sum(a * a for a in self.accel_g))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Mpu6050:
    """MPU-6050 over an SMBus-like object. ``accel_range_g`` in {2, 4, 8, 16}, ``gyro_range_dps``
    in {250, 500, 1000, 2000}."""

    WHO_AM_I, PWR_MGMT_1, SMPLRT_DIV, CONFIG = 0x75, 0x6B, 0x19, 0x1A
    GYRO_CONFIG, ACCEL_CONFIG, DATA = 0x1B, 0x1C, 0x3B
    FIFO_EN, USER_CTRL, INT_STATUS, FIFO_COUNT_H, FIFO_R_W = 0x23, 0x6A, 0x3A, 0x72, 0x74
    FIFO_SAMPLE = 12  # accel xyz + gyro xyz, big-endian int16

    def __init__(
        self,
        *,
        bus: SMBusLike,
        address: int = 0x68,
        accel_range_g: int = 4,
        gyro_range_dps: int = 500,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.bus = bus
        self.address = address
        self.accel_sel = {2: 0, 4: 1, 8: 2, 16: 3}[accel_range_g]
        self.gyro_sel = {250: 0, 500: 1, 1000: 2, 2000: 3}[gyro_range_dps]
        self.accel_lsb = 16384 >> self.accel_sel
        self.gyro_lsb = 131.0 / (1 << self.gyro_sel)
        self.clock_ns = clock_ns
        self.chip = ""
        self.period_ns = 10_000_000
        self.fifo = False
        self.fifo_overflows = 0

    def _io(self, what: str, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except OSError as exc:
            nak = exc.errno in (errno.EREMOTEIO, errno.ENXIO, errno.EIO)
            raise DeviceError(
                f"IMU at {self.address:#04x}: {what} failed"
                f"{' (no acknowledge)' if nak else ''}: {exc}"
            ) from exc

    def probe(self) -> str:
        """Check the chip answers and is one we know; returns its name."""
        who = self._io(
            "WHO_AM_I read", lambda: self.bus.read_byte_data(self.address, self.WHO_AM_I)
        )
        assert isinstance(who, int)
        if who not in KNOWN_IDS:
            raise DeviceError(
                f"IMU at {self.address:#04x} answered WHO_AM_I {who:#04x}, "
                f"not one of {', '.join(hex(k) for k in KNOWN_IDS)}"
            )
        self.chip = KNOWN_IDS[who]
        return self.chip

    def configure(self, rate_hz: float = 100.0, *, fifo: bool = False) -> None:
        """Wake the chip and set rate and ranges. ``fifo``: queue samples in the chip's FIFO,
        so the host can read them in bursts (:meth:`read_fifo`) instead of waking per sample."""
        bus, a = self.bus, self.address
        self._io("wake", lambda: bus.write_byte_data(a, self.PWR_MGMT_1, 0x01))  # PLL, awake
        self._io("config", lambda: bus.write_byte_data(a, self.CONFIG, 0x03))  # 44 Hz DLPF
        div = max(0, min(255, int(1000 / rate_hz) - 1))
        self.period_ns = (div + 1) * 1_000_000
        self._io("rate", lambda: bus.write_byte_data(a, self.SMPLRT_DIV, div))
        self._io("gyro range", lambda: bus.write_byte_data(a, self.GYRO_CONFIG, self.gyro_sel << 3))
        self._io(
            "accel range", lambda: bus.write_byte_data(a, self.ACCEL_CONFIG, self.accel_sel << 3)
        )
        self.fifo = fifo
        if fifo:
            self._reset_fifo()

    def _reset_fifo(self) -> None:
        bus, a = self.bus, self.address
        self._io("fifo reset", lambda: bus.write_byte_data(a, self.USER_CTRL, 0x04))
        self._io("fifo select", lambda: bus.write_byte_data(a, self.FIFO_EN, 0x78))
        self._io("fifo enable", lambda: bus.write_byte_data(a, self.USER_CTRL, 0x40))

    def read_fifo(self) -> list[ImuSample]:
        """Every whole sample queued since the last call, oldest first, timestamped back from
        the moment of the read at the sample period. An overflow (the host fell behind by more
        than the FIFO holds) resets the FIFO and is counted."""
        bus, a = self.bus, self.address
        status = self._io("status", lambda: bus.read_byte_data(a, self.INT_STATUS))
        if isinstance(status, int) and status & 0x10:
            self.fifo_overflows += 1
            self._reset_fifo()
            return []
        hi_lo = self._io("fifo count", lambda: bus.read_i2c_block_data(a, self.FIFO_COUNT_H, 2))
        t_read = self.clock_ns()
        assert isinstance(hi_lo, list)
        n = ((hi_lo[0] << 8) | hi_lo[1]) // self.FIFO_SAMPLE
        data: list[int] = []
        per_read = 2 * self.FIFO_SAMPLE  # SMBus block reads carry at most 32 bytes
        remaining = n * self.FIFO_SAMPLE
        while remaining:
            size = min(per_read, remaining)
            chunk = self._io("fifo read", partial(bus.read_i2c_block_data, a, self.FIFO_R_W, size))
            assert isinstance(chunk, list)
            data += chunk
            remaining -= size
        temp_raw = self._io("temp read", lambda: bus.read_i2c_block_data(a, 0x41, 2))
        assert isinstance(temp_raw, list)
        temp = struct.unpack(">h", bytes(temp_raw))[0] / 340.0 + 36.53
        out = []
        acc, gyr = self.accel_lsb, self.gyro_lsb
        raw = bytes(data)
        for i in range(n):
            ax, ay, az, gx, gy, gz = struct.unpack_from(">6h", raw, i * self.FIFO_SAMPLE)
            out.append(
                ImuSample(
                    t_read - (n - 1 - i) * self.period_ns,
                    (ax / acc, ay / acc, az / acc),
                    (gx / gyr, gy / gyr, gz / gyr),
                    temp,
                )
            )
        return out

    def read(self) -> ImuSample:
        raw = self._io(
            "data read", lambda: self.bus.read_i2c_block_data(self.address, self.DATA, 14)
        )
        assert isinstance(raw, list)
        t = self.clock_ns()
        if len(raw) != 14:
            raise DeviceError(f"IMU at {self.address:#04x}: {len(raw)} data bytes, not 14")
        ax, ay, az, temp, gx, gy, gz = struct.unpack(">7h", bytes(raw))
        a, g = self.accel_lsb, self.gyro_lsb
        return ImuSample(
            t, (ax / a, ay / a, az / a), (gx / g, gy / g, gz / g), temp / 340.0 + 36.53
        )


class BumpDetector:
    """A jolt is an acceleration magnitude further than ``threshold_g`` from 1 g; the signal
    holds for ``hold_s`` after the last such sample."""

    def __init__(self, threshold_g: float = 0.35, hold_s: float = 0.5) -> None:
        self.threshold_g = threshold_g
        self.hold_ns = int(hold_s * 1e9)
        self._last_jolt_ns: int | None = None
        self.jolts = 0

    def push(self, sample: ImuSample) -> bool:
        if abs(sample.accel_magnitude_g - 1.0) > self.threshold_g:
            if self._last_jolt_ns is None or sample.t_ns - self._last_jolt_ns > self.hold_ns:
                self.jolts += 1
            self._last_jolt_ns = sample.t_ns
        return self.active(sample.t_ns)

    def active(self, now_ns: int) -> bool:
        return self._last_jolt_ns is not None and now_ns - self._last_jolt_ns <= self.hold_ns


class CartMotionDetector:
    """The cart is being pushed: the horizontal acceleration varies (steps, wheels on tiles)
    more than a parked cart's noise over the last ``window_s``."""

    def __init__(self, threshold_g: float = 0.02, window_s: float = 1.0) -> None:
        self.threshold_g = threshold_g
        self.window_ns = int(window_s * 1e9)
        self._samples: deque[tuple[int, float]] = deque()
        # The IMU thread pushes while the collector thread asks: a deque iterated while
        # another thread appends raises (it once stopped a cart's collector thread).
        self._lock = threading.Lock()

    def push(self, sample: ImuSample) -> None:
        with self._lock:
            self._samples.append((sample.t_ns, sample.accel_g[0]))
            while self._samples and self._samples[0][0] < sample.t_ns - self.window_ns:
                self._samples.popleft()

    def moving(self, now_ns: int) -> bool:
        with self._lock:
            xs = [x for t, x in self._samples if now_ns - t <= self.window_ns]
        if len(xs) < 10:
            return False
        mean = sum(xs) / len(xs)
        return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) >= self.threshold_g


class ImuReader:
    """Reads the IMU on its own thread; errors are counted, logged once per kind, and the loop
    goes on (the chip is re-initialised after repeated failures).

    With ``fifo_batch_s`` > 0 the chip queues samples in its FIFO and the thread wakes every
    ``fifo_batch_s`` to read them in one burst (waking per sample costs more CPU than reading it);
    with 0 it reads one sample per period from the data registers.
    """

    def __init__(
        self,
        imu: Mpu6050,
        rate_hz: float,
        on_sample: Callable[[ImuSample], None],
        *,
        fifo_batch_s: float = 0.1,
    ) -> None:
        self.imu = imu
        self.rate_hz = rate_hz
        self.fifo_batch_s = fifo_batch_s
        self.period_s = fifo_batch_s if fifo_batch_s > 0 else 1.0 / rate_hz
        self.on_sample = on_sample
        self.samples = 0
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged: set[str] = set()

    def start(self) -> ImuReader:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="imu", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None

    def _fail(self, kind: str, exc: Exception) -> None:
        self.errors[kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("IMU %s: %s (further ones are counted)", kind, exc)

    def _read(self) -> list[ImuSample]:
        if self.fifo_batch_s > 0:
            return self.imu.read_fifo()
        return [self.imu.read()]

    def _run(self) -> None:
        ready = False
        next_t = time.monotonic()
        streak = 0
        while not self._stop.is_set():
            if not ready:
                try:
                    self.imu.probe()
                    self.imu.configure(self.rate_hz, fifo=self.fifo_batch_s > 0)
                    ready = True
                except DeviceError as exc:
                    self._fail("init", exc)
                    self._stop.wait(1.0)
                    continue
            try:
                batch = self._read()
                streak = 0
            except DeviceError as exc:
                self._fail("read", exc)
                batch = []
                streak += 1
                if streak >= 20:
                    ready = False
                elif self.fifo_batch_s > 0:
                    # A burst cut short leaves the FIFO mid-sample: start it afresh.
                    with contextlib.suppress(DeviceError):
                        self.imu._reset_fifo()
            for sample in batch:
                self.samples += 1
                try:
                    self.on_sample(sample)
                except Exception as exc:  # a consumer bug must not stop the IMU
                    self._fail("consumer", exc)
            next_t += self.period_s
            delay = next_t - time.monotonic()
            if delay < -self.period_s:
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(max(0.0, delay))
