"""The MPU-6050 driver over the simulated SMBus (same methods as smbus2.SMBus)."""

from __future__ import annotations

import inspect
import itertools

import pytest
import smbus2

from capsight_edge.errors import DeviceError
from capsight_edge.sensors.imu import BumpDetector, ImuReader, ImuSample, Mpu6050
from firmware_bridge.sim.scenario import Bump, Scenario
from firmware_bridge.sim.smbus import Mpu6050Sim, SimulatedSMBus, scenario_motion
from tests.conftest import wait_until


def bus_with(
    who: int = 0x68, scenario: Scenario | None = None, t: float | None = 0.0, **kw: object
) -> SimulatedSMBus:
    """A bus with one MPU-6050; ``t`` freezes the chip's clock (None: real time)."""
    sc = scenario or Scenario(duration_s=60)
    clock = None if t is None else (lambda: t)
    return SimulatedSMBus({0x68: Mpu6050Sim(scenario_motion(sc), who_am_i=who, clock=clock)}, **kw)  # type: ignore[arg-type]


def test_simulated_bus_offers_smbus2_methods() -> None:
    for name in (
        "read_byte_data",
        "write_byte_data",
        "read_i2c_block_data",
        "write_i2c_block_data",
        "read_byte",
        "close",
    ):
        assert hasattr(SimulatedSMBus, name)
        real = list(inspect.signature(getattr(smbus2.SMBus, name)).parameters)
        ours = list(inspect.signature(getattr(SimulatedSMBus, name)).parameters)
        assert ours == real, name


@pytest.mark.parametrize("who", [0x68, 0x70, 0x98])
def test_genuine_and_clone_ids_are_accepted(who: int) -> None:
    imu = Mpu6050(bus=bus_with(who))
    assert imu.probe()
    imu.configure(100)
    sample = imu.read()
    assert 0.9 < sample.accel_magnitude_g < 1.1
    assert 20 < sample.temp_c < 35


def test_unknown_id_is_rejected() -> None:
    with pytest.raises(DeviceError, match="WHO_AM_I 0x12"):
        Mpu6050(bus=bus_with(0x12)).probe()


def test_missing_device_naks_as_device_error() -> None:
    with pytest.raises(DeviceError, match="no acknowledge"):
        Mpu6050(bus=SimulatedSMBus({}), address=0x69).probe()


def test_asleep_chip_reads_zero_until_woken() -> None:
    bus = bus_with()
    imu = Mpu6050(bus=bus)
    assert imu.read().accel_g == (0.0, 0.0, 0.0)
    imu.configure()
    assert imu.read().accel_g[2] > 0.9


def test_bump_is_seen() -> None:
    sc = Scenario(duration_s=10, bumps=[Bump(t_s=1.0, accel_g=1.5)])
    imu = Mpu6050(bus=bus_with(scenario=sc, t=1.01))
    imu.configure()
    det = BumpDetector()
    assert det.push(imu.read())
    assert det.jolts == 1


def test_reader_counts_naks_and_keeps_going() -> None:
    bus = bus_with(nak_rate=0.3, seed=2)
    got: list[ImuSample] = []
    reader = ImuReader(Mpu6050(bus=bus), 200.0, got.append, fifo_batch_s=0).start()
    try:
        assert wait_until(lambda: len(got) >= 50 and reader.errors["read"] >= 5)
    finally:
        reader.stop()
    assert reader.samples == len(got)


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_fifo_burst_returns_every_sample_in_order() -> None:
    clock = ManualClock()
    sim = Mpu6050Sim(scenario_motion(Scenario(duration_s=60)), clock=clock)
    imu = Mpu6050(bus=SimulatedSMBus({0x68: sim}), clock_ns=lambda: int(clock.t * 1e9))
    imu.configure(100, fifo=True)
    assert imu.read_fifo() == []  # the FIFO starts filling now
    clock.t = 0.25
    samples = imu.read_fifo()
    assert len(samples) == 25
    times = [s.t_ns for s in samples]
    assert times == sorted(times) and times[-1] == 250_000_000
    assert all(t2 - t1 == 10_000_000 for t1, t2 in itertools.pairwise(times))
    assert all(0.9 < s.accel_magnitude_g < 1.1 for s in samples)


def test_fifo_overflow_is_counted_and_recovered() -> None:
    clock = ManualClock()
    sim = Mpu6050Sim(scenario_motion(Scenario(duration_s=60)), clock=clock)
    imu = Mpu6050(bus=SimulatedSMBus({0x68: sim}), clock_ns=lambda: int(clock.t * 1e9))
    imu.configure(100, fifo=True)
    imu.read_fifo()
    clock.t = 5.0  # 500 samples: far more than 1024 bytes
    assert imu.read_fifo() == [] and imu.fifo_overflows == 1
    clock.t = 5.1
    imu.read_fifo()
    clock.t = 5.2
    assert len(imu.read_fifo()) == 10


def test_fifo_reader_survives_naks() -> None:
    got: list[ImuSample] = []
    reader = ImuReader(
        Mpu6050(bus=bus_with(t=None, nak_rate=0.1, seed=4)), 100.0, got.append, fifo_batch_s=0.05
    ).start()
    try:
        assert wait_until(lambda: len(got) >= 100 and reader.errors["read"] >= 2)
    finally:
        reader.stop()
    assert all(0.8 < s.accel_magnitude_g < 1.2 for s in got)  # never a misaligned sample


def test_cart_motion_from_the_imu() -> None:
    from capsight_edge.sensors.imu import CartMotionDetector
    from firmware_bridge.sim.scenario import generate

    sc = generate("bumpy", 120, seed=4)
    moving_t = next(
        t / 10 for t in range(10, 1000) if sc.is_moving(t / 10 - 0.6) and sc.is_moving(t / 10)
    )
    still = Scenario(duration_s=60)
    for scenario, t_end, expect in ((sc, moving_t, True), (still, 5.0, False)):
        clock = ManualClock()
        sim = Mpu6050Sim(scenario_motion(scenario), clock=clock)
        imu = Mpu6050(bus=SimulatedSMBus({0x68: sim}), clock_ns=lambda c=clock: int(c.t * 1e9))
        imu.configure(100)
        det = CartMotionDetector()
        for i in range(100):
            clock.t = t_end - 1.0 + i / 100
            det.push(imu.read())
        assert det.moving(int(t_end * 1e9)) is expect


def test_cart_motion_is_asked_safely_while_the_imu_thread_pushes() -> None:
    """The IMU thread pushes samples while the collector thread asks whether the cart moves
    (an unguarded deque raised "mutated during iteration" there and stopped a cart's collector).
    Threads switch every microsecond here, so an unguarded window is hit at once."""
    import sys
    import threading

    from capsight_edge.sensors.imu import CartMotionDetector

    detector = CartMotionDetector(window_s=1.0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def pusher() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            detector.push(
                ImuSample(k * 1_000_000, (0.01 * (k % 7), 0.0, 1.0), (0.0, 0.0, 0.0), 25.0)
            )

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=pusher)
    thread.start()
    try:
        for _ in range(20_000):
            try:
                detector.moving(10**12)
            except RuntimeError as exc:
                errors.append(exc)
                break
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
    assert errors == []
