"""A simulated I2C bus with the methods of ``smbus2.SMBus``, and an MPU-6050 on it.

A device that is not on the bus NAKs: the call raises ``OSError(EREMOTEIO)``, as smbus2 does on
Linux. ``nak_rate`` injects NAKs on a device that is present (a loose connector).
"""

from __future__ import annotations

import errno
import math
import random
import struct
import threading
import time
from collections.abc import Callable

from firmware_bridge.sim.hx711 import bump_accel_g
from firmware_bridge.sim.scenario import Scenario


class RegisterDevice:
    """An I2C device seen as a bank of 8-bit registers."""

    def read(self, register: int) -> int:
        raise NotImplementedError

    def write(self, register: int, value: int) -> None:
        raise NotImplementedError

    def read_block(self, register: int, length: int) -> list[int]:
        """A block read: registers auto-increment unless the device says otherwise."""
        return [self.read(register + i) for i in range(length)]


class SimulatedSMBus:
    """Drop-in for ``smbus2.SMBus`` over simulated devices."""

    def __init__(
        self,
        devices: dict[int, RegisterDevice] | None = None,
        *,
        bus: int = 1,
        nak_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.devices = dict(devices or {})
        self.bus = bus
        self.nak_rate = nak_rate
        self.fd: int | None = 1
        self.transactions = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __enter__(self) -> SimulatedSMBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, bus: int) -> None:
        self.bus, self.fd = bus, 1

    def close(self) -> None:
        self.fd = None

    def _device(self, addr: int) -> RegisterDevice:
        if self.fd is None:
            raise OSError(errno.EBADF, "bus is closed")
        self.transactions += 1
        dev = self.devices.get(addr)
        if dev is None or (self.nak_rate and self._rng.random() < self.nak_rate):
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return dev

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        with self._lock:
            return self._device(i2c_addr).read(register)

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        with self._lock:
            self._device(i2c_addr).write(register, value & 0xFF)

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        with self._lock:
            if not 0 < length <= 32:
                raise OSError(errno.EINVAL, "SMBus block reads carry 1..32 bytes")
            return self._device(i2c_addr).read_block(register, length)

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: bool | None = None
    ) -> None:
        with self._lock:
            dev = self._device(i2c_addr)
            for i, v in enumerate(data):
                dev.write(register + i, v & 0xFF)

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        with self._lock:
            return self._device(i2c_addr).read(0)

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        with self._lock:
            self._device(i2c_addr)


Motion = Callable[[float], tuple[tuple[float, float, float], tuple[float, float, float]]]


def scenario_motion(scenario: Scenario, seed: int = 0) -> Motion:
    """Accelerations (g) and rotation rates (deg/s) of a cart following ``scenario``."""
    rng = random.Random(seed)

    def motion(t: float) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        _, bumps = scenario.snapshot()
        jolt = bump_accel_g(bumps, t)
        walk = 0.04 * math.sin(2 * math.pi * 1.8 * t) if scenario.is_moving(t) else 0.0
        ax = walk + 0.7 * jolt + rng.gauss(0, 0.01)
        ay = 0.3 * jolt + rng.gauss(0, 0.01)
        az = 1.0 + 0.5 * jolt + rng.gauss(0, 0.01)
        g = (rng.gauss(0, 0.3), rng.gauss(0, 0.3), rng.gauss(0, 0.3) + 40 * jolt)
        return (ax, ay, az), g

    return motion


class Mpu6050Sim(RegisterDevice):
    """Register map of an MPU-6050 (or a clone answering another WHO_AM_I), with its FIFO.

    Data registers latch one sample per burst read from 0x3B. With the FIFO enabled (USER_CTRL
    bit 6, FIFO_EN = 0x78: accelerometer and gyro), the chip queues a 12-byte sample every
    sample period (1 kHz / (1 + SMPLRT_DIV) with the low-pass filter on); 1024 bytes at most,
    after which the oldest are lost and INT_STATUS bit 4 (overflow) is set.
    """

    WHO_AM_I, PWR_MGMT_1, ACCEL_CONFIG, GYRO_CONFIG, DATA = 0x75, 0x6B, 0x1C, 0x1B, 0x3B
    SMPLRT_DIV, FIFO_EN, USER_CTRL, INT_STATUS = 0x19, 0x23, 0x6A, 0x3A
    FIFO_COUNT_H, FIFO_COUNT_L, FIFO_R_W = 0x72, 0x73, 0x74
    FIFO_SIZE = 1024

    def __init__(
        self,
        motion: Motion,
        *,
        who_am_i: int = 0x68,
        temp_c: float = 27.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.motion = motion
        self.who_am_i = who_am_i
        self.temp_c = temp_c
        t0 = time.monotonic()
        self.clock = clock or (lambda: time.monotonic() - t0)
        self.samples = 0
        self._reset()

    def _reset(self) -> None:
        self.regs = bytearray(128)
        self.regs[self.WHO_AM_I] = self.who_am_i
        self.regs[self.PWR_MGMT_1] = 0x40  # asleep after power-up
        self.fifo = bytearray()
        self._fifo_start: float | None = None
        self._fifo_made = 0

    @property
    def _awake(self) -> bool:
        return not self.regs[self.PWR_MGMT_1] & 0x40

    @property
    def _fifo_on(self) -> bool:
        return bool(self.regs[self.USER_CTRL] & 0x40) and self.regs[self.FIFO_EN] == 0x78

    @property
    def period_s(self) -> float:
        return (1 + self.regs[self.SMPLRT_DIV]) / 1000.0

    def write(self, register: int, value: int) -> None:
        if register == self.PWR_MGMT_1 and value & 0x80:  # device reset
            self._reset()
            return
        if register == self.USER_CTRL and value & 0x04:  # FIFO reset
            self.fifo.clear()
            self._fifo_start = None
            value &= ~0x04
        if register != self.WHO_AM_I:
            self.regs[register] = value

    def read(self, register: int) -> int:
        if register == self.INT_STATUS:
            self._fill_fifo()
            value = self.regs[register]
            self.regs[register] = 0  # cleared on read
            return value
        if register in (self.FIFO_COUNT_H, self.FIFO_COUNT_L):
            self._fill_fifo()
            n = len(self.fifo)
            return n >> 8 if register == self.FIFO_COUNT_H else n & 0xFF
        if register == self.FIFO_R_W:
            return self.fifo.pop(0) if self.fifo else 0
        return self.regs[register & 0x7F]

    def read_block(self, register: int, length: int) -> list[int]:
        if self.DATA <= register < self.DATA + 14:
            self.snapshot()  # one sample for the whole burst, as the chip latches it
        if register == self.FIFO_R_W:
            out = list(self.fifo[:length]) + [0] * max(0, length - len(self.fifo))
            del self.fifo[:length]
            return out
        return super().read_block(register, length)

    def _raw(self, t: float) -> list[int]:
        (ax, ay, az), (gx, gy, gz) = self.motion(t)
        a_lsb = 16384 >> ((self.regs[self.ACCEL_CONFIG] >> 3) & 3)
        g_lsb = 131.0 / (1 << ((self.regs[self.GYRO_CONFIG] >> 3) & 3))

        def clamp(v: float) -> int:
            return max(-32768, min(32767, round(v)))

        return [
            clamp(ax * a_lsb),
            clamp(ay * a_lsb),
            clamp(az * a_lsb),
            clamp((self.temp_c - 36.53) * 340),
            clamp(gx * g_lsb),
            clamp(gy * g_lsb),
            clamp(gz * g_lsb),
        ]

    def snapshot(self) -> None:
        if not self._awake:
            return  # asleep: the data registers keep their (reset) values
        self.regs[self.DATA : self.DATA + 14] = struct.pack(">7h", *self._raw(self.clock()))
        self.samples += 1

    def _fill_fifo(self) -> None:
        now = self.clock()
        if not (self._awake and self._fifo_on):
            self._fifo_start = None
            return
        if self._fifo_start is None:
            self._fifo_start, self._fifo_made = now, 0
            return
        period = self.period_s
        due = int((now - self._fifo_start) / period + 1e-6)
        keep = self.FIFO_SIZE // 12 + 1
        if due - self._fifo_made > keep:  # only the newest can still be in the FIFO
            self.regs[self.INT_STATUS] |= 0x10
            self._fifo_made = due - keep
        for k in range(self._fifo_made + 1, due + 1):
            raw = self._raw(self._fifo_start + k * period)
            self.fifo += struct.pack(">6h", *raw[:3], *raw[4:])
            self.samples += 1
        self._fifo_made = max(self._fifo_made, due)
        if len(self.fifo) > self.FIFO_SIZE:
            del self.fifo[: len(self.fifo) - self.FIFO_SIZE]
            self.regs[self.INT_STATUS] |= 0x10


#: Where the simulated cart's board has its MPU-6050 (AD0 tied low), whatever a profile says.
SIM_IMU_ADDRESS = 0x68


def simulated_cart_bus(
    scenario: Scenario, *, bus: int = 1, seed: int = 0, clock: Callable[[], float] | None = None
) -> SimulatedSMBus:
    """The simulated cart's I2C bus: an MPU-6050 at 0x68 following ``scenario``."""
    return SimulatedSMBus(
        {SIM_IMU_ADDRESS: Mpu6050Sim(scenario_motion(scenario, seed), clock=clock)},
        bus=bus,
        seed=seed,
    )
