"""The one device seam: everything a cart opens comes from a :class:`DeviceFactory`.

gpiozero's pin factory, for a cart. A factory hands out

- ``camera()``: the frame source (a V4L2 camera, a file replay, the synthetic scene),
- ``mcu_transport()``: the MCU's serial transport (a real port, or the simulator's pty),
- ``i2c_bus()``: the IMU's I2C bus (smbus2, or the simulated bus),
- ``nmea_transport()``: the GNSS receiver's serial port (a real one, or the simulator's pty),
- ``clock``: the clock those devices share (host ``CLOCK_MONOTONIC``; a simulated cart's
  scenario runs on it),

and ``hands``: on a simulated cart, the simulated shopper or technician who puts a weight on
the scale or holds a product up to the camera (``None`` on hardware, where a person does it).

Contract every factory keeps:

- nothing is opened before it is asked for; what cannot be had raises
  :class:`~capsight_edge.errors.DeviceUnavailable` with a ``remedy`` for the technician;
- what it hands out is *reserved*: a second claim of the same device, from this process or
  another one (``capsight doctor`` while ``capsight run`` holds the port), raises
  :class:`~capsight_edge.errors.DeviceBusy` naming the holder;
- :meth:`DeviceFactory.close` stops every simulator it started and releases every reservation;
  whoever made a factory closes it (a :class:`~capsight_edge.cart.Cart` owns its own).

Which factory a profile gets is decided in one place, :func:`capsight_edge.devices.select.
factory_from_profile`; :func:`device_kinds` is the only reader of the profile's transport kinds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from capsight_edge.errors import DeviceBusy
from capsight_edge.profile.schema import Profile

DEVICES = ("camera", "mcu", "imu", "nmea")


@dataclass(frozen=True)
class DeviceKinds:
    """Where each device of a profile comes from. ``camera``: synthetic | v4l2 | file;
    ``mcu``: sim | serial; ``imu``: sim | smbus | none; ``nmea``: sim | serial | none."""

    camera: str
    mcu: str
    imu: str
    nmea: str

    @property
    def simulated(self) -> frozenset[str]:
        return frozenset(d for d in DEVICES if getattr(self, d) in ("sim", "synthetic"))

    @property
    def used(self) -> frozenset[str]:
        return frozenset(d for d in DEVICES if getattr(self, d) != "none")


def device_kinds(profile: Profile) -> DeviceKinds:
    """The one reading of a profile's transport kinds."""
    return DeviceKinds(
        camera=profile.camera.source,
        mcu=profile.mcu.transport,
        imu=profile.imu.transport if profile.imu.enabled else "none",
        nmea=(
            profile.positioning.nmea_transport if profile.positioning.source == "nmea" else "none"
        ),
    )


class HostClock:
    """The host's ``CLOCK_MONOTONIC``: every sample and frame of a cart is stamped with it."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


def lock_dir() -> Path:
    """Where reservations live: ``$CAPSIGHT_LOCK_DIR``, else ``/run/lock/capsight``, else
    ``/tmp/capsight-locks``. Fixed paths on purpose: a process with another ``TMPDIR`` must
    still see the locks of the others."""
    env = os.environ.get("CAPSIGHT_LOCK_DIR")
    if env:
        return Path(env)
    if os.path.isdir("/run/lock") and os.access("/run/lock", os.W_OK):
        return Path("/run/lock/capsight")
    return Path("/tmp/capsight-locks")


class Reservation:
    """An exclusive ``flock`` on a lock file named after the device. Open file descriptions
    lock independently, so a second claim conflicts whether it comes from this process or
    another; the kernel drops the lock when its holder dies, so a crash leaves none behind."""

    def __init__(self, key: str, label: str) -> None:
        self.key = key
        folder = lock_dir()
        folder.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in key.strip("/"))
        self.path = folder / f"{name}.lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DeviceBusy(
                f"{label} is in use by {holder or 'another process'}",
                remedy="stop the program that holds it (a running `capsight run`?) and try again",
                holder=holder,
            ) from None
        os.ftruncate(fd, 0)
        me = f"pid {os.getpid()} ({' '.join(os.path.basename(a) for a in sys.argv[:3])})"
        os.pwrite(fd, me.encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the description releases the flock
            self._fd = None


class DeviceFactory:
    """Base of every factory: reservations, the close stack and the clock. Subclasses
    implement the four device methods (see the module docstring for the contract)."""

    #: "hardware", "sim" or "routed": for messages only; code asks :meth:`simulated`.
    kind = "abstract"

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.kinds = device_kinds(profile)
        self.clock: Any = HostClock()
        self._lock = threading.Lock()
        self._handed: dict[str, str] = {}
        self._reservations: list[Reservation] = []
        self._closers: list[Callable[[], None]] = []
        self._closed = False

    # -- the devices ----------------------------------------------------------------------------
    def camera(self) -> Any:
        """The frame source (not opened yet: the consumer calls ``open()``)."""
        raise NotImplementedError

    def mcu_transport(self) -> Any:
        """The MCU's serial transport (``firmware_bridge.transport.Transport``), not opened."""
        raise NotImplementedError

    def i2c_bus(self) -> Any:
        """An open ``smbus2.SMBus``-like bus for the IMU."""
        raise NotImplementedError

    def nmea_transport(self) -> Any:
        """The GNSS receiver's serial transport, not opened."""
        raise NotImplementedError

    @property
    def hands(self) -> Any:
        """Who puts weights on the scale and holds products up to the camera when a flow needs
        it: the simulated shopper on a simulated cart, ``None`` where a person must."""
        return None

    def simulated(self, device: str) -> bool:
        """Whether ``device`` (camera, mcu, imu, nmea) comes from a simulator."""
        return device in self.kinds.simulated

    def describe(self, device: str) -> str:
        """A short name for messages (the port, the bus, "simulated MCU on a pty")."""
        return device

    def temp_dirs(self) -> list[str]:
        """Temporary folders the devices handed out so far made (a simulator's pty links):
        a run that dies leaves them, so the cart records them for the next start to remove."""
        return []

    # -- reservations and closing ----------------------------------------------------------------
    def _claim(self, device: str, key: str | None = None, label: str = "") -> None:
        """Reserve ``device`` for this factory's one consumer; ``key`` (a device path) also
        reserves it against every other factory and process."""
        with self._lock:
            if self._closed:
                raise DeviceBusy(f"the device factory is closed: no {device} can be handed out")
            if device in self._handed:
                raise DeviceBusy(
                    f"the {device} is handed out already ({self._handed[device]})",
                    remedy="build the cart's parts from one factory, each device once",
                )
            if key is not None:
                self._reservations.append(Reservation(key, label or key))
            self._handed[device] = label or key or device

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the factory closes (last registered, first run)."""
        self._closers.append(fn)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            closers, self._closers = self._closers, []
            reservations, self._reservations = self._reservations, []
        for fn in reversed(closers):
            with contextlib.suppress(Exception):  # stopping one must not keep the rest alive
                fn()
        for r in reservations:
            r.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
