"""A GNSS receiver simulator: NMEA GGA + RMC once a second on a pty, following the cart's walk.

Store coordinates are a local plane (mm) around a reference latitude/longitude. ``garbage_rate``
mixes in what real receivers send at cold boot (NUL bytes, cut sentences, bad checksums).
"""

from __future__ import annotations

import contextlib
import math
import os
import pty
import random
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from functools import reduce
from pathlib import Path

from firmware_bridge.sim.scenario import Scenario


def nmea_sentence(body: str) -> bytes:
    checksum = reduce(lambda a, c: a ^ ord(c), body, 0)
    return f"${body}*{checksum:02X}\r\n".encode()


def _dm(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    v = abs(value)
    deg = int(v)
    minutes = (v - deg) * 60
    return (f"{deg:02d}{minutes:07.4f}" if lat else f"{deg:03d}{minutes:07.4f}"), hemi


class GnssSimulator:
    def __init__(
        self,
        scenario: Scenario,
        *,
        ref_lat: float = 52.5200,
        ref_lon: float = 13.4050,
        seed: int = 0,
        garbage_rate: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.scenario = scenario
        self.ref = (ref_lat, ref_lon)
        self.rng = random.Random(seed)
        self.garbage_rate = garbage_rate
        self._tmp = tempfile.mkdtemp(prefix="capsight-gnss-")
        self.port = str(Path(self._tmp) / "ttyGNSS0")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        t0 = time.monotonic()
        self.clock = clock or (lambda: time.monotonic() - t0)
        self.sent = 0

    def latlon(self, t_s: float) -> tuple[float, float]:
        x, y = self.scenario.position_mm(t_s)
        lat = self.ref[0] + (y / 1000.0) / 111_320.0
        lon = self.ref[1] + (x / 1000.0) / (111_320.0 * math.cos(math.radians(self.ref[0])))
        return lat, lon

    def sentences(self, t_s: float, utc: time.struct_time) -> list[bytes]:
        lat, lon = self.latlon(t_s)
        la, ns = _dm(lat, True)
        lo, ew = _dm(lon, False)
        hms = time.strftime("%H%M%S", utc) + ".00"
        dmy = time.strftime("%d%m%y", utc)
        out = [
            nmea_sentence(f"GPGGA,{hms},{la},{ns},{lo},{ew},1,09,0.9,48.0,M,39.0,M,,"),
            nmea_sentence(f"GPRMC,{hms},A,{la},{ns},{lo},{ew},0.4,90.0,{dmy},,,A"),
        ]
        if self.garbage_rate and self.rng.random() < self.garbage_rate:
            out.insert(
                0, b"\x00\x00$GPG" + bytes(self.rng.randrange(32, 127) for _ in range(9)) + b"\r\n"
            )
        return out

    def start(self) -> GnssSimulator:
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        os.symlink(os.ttyname(slave), self.port)
        self._master, self._slave = master, slave
        self._thread = threading.Thread(target=self._run, name="gnss-sim", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            t = self.clock()
            for s in self.sentences(t, time.gmtime()):
                try:
                    os.write(self._master, s)
                    self.sent += 1
                except OSError:
                    pass

    def stop(self) -> None:
        """Stop and remove the pty; safe to call twice."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=3)
            self._thread = None
        for fd in (getattr(self, "_master", -1), getattr(self, "_slave", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.port)
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(self._tmp)

    def __enter__(self) -> GnssSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
