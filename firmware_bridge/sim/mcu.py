"""An MCU simulator that speaks the real link protocol on a pty pair.

The host opens :attr:`McuSimulator.port` with pyserial exactly like a real ``/dev/ttyACM0``. The
port path is a symlink to the pty slave, like ``/dev/serial/by-id/...``: :meth:`unplug` removes it
and closes the pty (the host's reads fail as with a pulled USB cable), :meth:`replug` makes a new
pty behind the same path and reboots the MCU (clock and sequence restart, HELLO is sent).

The MCU has its own crystal: its microsecond clock runs ``crystal_ppm`` fast or slow against the
host's monotonic clock and starts at an arbitrary boot offset. Every frame it sends is recorded in
:attr:`history` with the true host time, so tests can check the host's clock mapping.
"""

from __future__ import annotations

import collections
import errno
import os
import pty
import random
import select
import tempfile
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

from firmware_bridge.framing import FrameDecoder, encode_frame
from firmware_bridge.messages import (
    Ack,
    GetInfo,
    Heartbeat,
    Hello,
    Nack,
    NackReason,
    Payload,
    Ping,
    Pong,
    SetGain,
    SetRate,
    Tare,
    TareResult,
    UwbPosition,
    WeightSample,
)
from firmware_bridge.sim.hx711 import RAIL_HIGH, RAIL_LOW, Hx711Array, LoadModel
from firmware_bridge.sim.scenario import ItemEvent, Scenario, ScenarioClock

FIRMWARE = (1, 4, 2)
SETTLE_S = {10: 0.4, 80: 0.05}


@dataclass
class Faults:
    """Fault injection, changeable while running. Rates are per frame (0..1)."""

    corrupt_rate: float = 0.0  # flip one byte of the encoded frame
    drop_rate: float = 0.0  # frame never leaves (its sequence number is used up)
    garbage_rate: float = 0.0  # random bytes between frames
    oversize_rate: float = 0.0  # a frame far longer than any allowed


@dataclass(frozen=True)
class SentRecord:
    seq: int
    type: int
    mcu_us: int
    host_ns: int


class McuSimulator:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        n_cells: int = 4,
        rate_sps: int = 80,
        crystal_ppm: float = 30.0,
        uwb_hz: float = 10.0,
        seed: int = 0,
        spike_rate: float = 0.01,
        link_dir: str | None = None,
        name: str = "capsight-sim-mcu",
        clock: ScenarioClock | None = None,
    ) -> None:
        self.scenario = scenario
        self.model = LoadModel(scenario, n_cells)
        self.hx = Hx711Array(self.model, seed=seed, spike_rate=spike_rate)
        self.hx.rate_sps = rate_sps
        self.n_cells = n_cells
        self.crystal_ppm = crystal_ppm
        self.uwb_period_s = 1.0 / uwb_hz if uwb_hz > 0 else None
        self.faults = Faults()
        self.name = name
        self.rng = random.Random(seed + 1)
        self._tmp = tempfile.mkdtemp(prefix="capsight-mcu-") if link_dir is None else None
        self.port = str(Path(link_dir or self._tmp or ".") / "ttyCART0")
        self.history: collections.deque[SentRecord] = collections.deque(maxlen=200_000)
        self.commands: collections.deque[Payload] = collections.deque(maxlen=1000)
        self.tx_dropped = 0
        self.rx_errors = 0
        self.boots = 0
        self._master = -1
        self._slave = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.clock = clock or ScenarioClock()
        self._boot()

    @property
    def temp_dir(self) -> str | None:
        """The folder this simulator made for its link (None when given one): removed by
        ``stop()``; a run killed first records it for the next start to remove."""
        return self._tmp

    # -- time --------------------------------------------------------------------------------
    def scenario_time(self, host_ns: int | None = None) -> float:
        return self.clock.at(host_ns if host_ns is not None else time.monotonic_ns())

    def mcu_us(self, host_ns: int | None = None) -> int:
        host_ns = host_ns if host_ns is not None else time.monotonic_ns()
        return self._boot_us + int((host_ns - self._boot_ns) / 1000 * (1 + self.crystal_ppm * 1e-6))

    def _boot(self) -> None:
        self.boots += 1
        self._boot_ns = time.monotonic_ns()
        self._boot_us = self.rng.randrange(1_000, 5_000_000)
        self._seq = 0
        self._settle_until = self._boot_ns + int(SETTLE_S[self.hx.rate_sps] * 1e9)
        self._tare: tuple[int, int, int, list[list[int]]] | None = None

    # -- pty -----------------------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        tmp_link = self.port + ".new"
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(os.ttyname(slave), tmp_link)
        os.replace(tmp_link, self.port)
        self._master, self._slave = master, slave
        self._decoder = FrameDecoder()

    def _close_pty(self) -> None:
        if os.path.lexists(self.port):
            os.unlink(self.port)
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def start(self) -> McuSimulator:
        self._open_pty()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mcu-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            self._close_pty()
        if self._tmp and os.path.isdir(self._tmp):
            for p in Path(self._tmp).iterdir():
                p.unlink()
            os.rmdir(self._tmp)

    def __enter__(self) -> McuSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def unplug(self) -> None:
        """Pull the cable: the port path vanishes and the host's reads fail."""
        with self._lock:
            self._close_pty()

    def replug(self) -> None:
        """Plug back in: a new pty behind the same path; the MCU boots again."""
        with self._lock:
            if self._master < 0:
                self._open_pty()
                self._boot()
                self._send(Hello(*FIRMWARE, 1, self.n_cells, 1, self.name))

    @property
    def plugged(self) -> bool:
        return self._master >= 0

    # -- interactive -----------------------------------------------------------------------------
    def place(self, grams: float, *, x: float = 0.5, y: float = 0.5, hand_s: float = 0.5) -> float:
        """Put (grams > 0) or take out (grams < 0) a load now; returns when it will have settled
        (scenario seconds)."""
        ev = ItemEvent(t_s=self.scenario_time(), grams=grams, hand_s=hand_s, x=x, y=y, sku="manual")
        self.scenario.add_item(ev)
        return ev.settle_s

    # -- the MCU's main loop ---------------------------------------------------------------------
    def _send(self, payload: Payload, host_ns: int | None = None) -> None:
        """Encode and write one frame (caller holds the lock)."""
        host_ns = host_ns if host_ns is not None else time.monotonic_ns()
        mcu_us = self.mcu_us(host_ns)
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        frame = encode_frame(payload, seq, mcu_us)
        self.history.append(SentRecord(seq, int(payload.TYPE), mcu_us, host_ns))
        f = self.faults
        if f.drop_rate and self.rng.random() < f.drop_rate:
            return
        if f.corrupt_rate and self.rng.random() < f.corrupt_rate:
            i = self.rng.randrange(len(frame) - 1)
            frame = (
                frame[:i] + bytes([(frame[i] ^ (1 << self.rng.randrange(8))) or 1]) + frame[i + 1 :]
            )
        if f.garbage_rate and self.rng.random() < f.garbage_rate:
            frame = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 40))) + frame
        if f.oversize_rate and self.rng.random() < f.oversize_rate:
            frame = bytes(self.rng.randrange(1, 256) for _ in range(600)) + b"\x00" + frame
        self._write(frame)

    def _write(self, data: bytes) -> None:
        if self._master < 0:
            return
        try:
            os.write(self._master, data)
        except BlockingIOError:
            self.tx_dropped += 1  # host not reading: the UART's buffer overflows
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            self.tx_dropped += 1

    def _run(self) -> None:
        period_ns = int(1e9 / self.hx.rate_sps)
        next_sample = time.monotonic_ns()
        next_uwb = next_sample
        next_hb = next_sample
        with self._lock:
            self._send(Hello(*FIRMWARE, 1, self.n_cells, 1, self.name))
        while not self._stop.is_set():
            now = time.monotonic_ns()
            wait_s = max(0.0, (min(next_sample, next_uwb, next_hb) - now) / 1e9)
            master = self._master
            if master < 0:
                self._stop.wait(min(wait_s, 0.02) or 0.005)
            else:
                try:
                    ready, _, _ = select.select([master], [], [], wait_s)
                except (OSError, ValueError):
                    ready = []
                if ready:
                    self._read_commands()
            with self._lock:
                # Read the clock under the lock: a replug while we waited for it boots the MCU
                # again, and a time from before that boot would give a negative uptime.
                now = time.monotonic_ns()
                if self._master < 0:
                    next_sample = next_uwb = next_hb = now + period_ns
                    continue
                if now >= next_sample:
                    period_ns = int(1e9 / self.hx.rate_sps / (1 + self.crystal_ppm * 1e-6))
                    next_sample += period_ns
                    if next_sample < now:  # we fell behind (a stalled machine): skip, no burst
                        next_sample = now + period_ns
                    self._conversion(now)
                if self.uwb_period_s and now >= next_uwb:
                    next_uwb = now + int(self.uwb_period_s * 1e9)
                    x, y = self.scenario.position_mm(self.scenario_time(now))
                    q = 90 + self.rng.randrange(10)
                    self._send(
                        UwbPosition(
                            int(x + self.rng.gauss(0, 60)), int(y + self.rng.gauss(0, 60)), 950, q
                        ),
                        now,
                    )
                if now >= next_hb:
                    next_hb = now + 1_000_000_000
                    settling = 1 if now < self._settle_until else 0
                    self._send(
                        Heartbeat(
                            (now - self._boot_ns) // 1_000_000,
                            self.rx_errors & 0xFFFF,
                            self.tx_dropped & 0xFFFF,
                            settling | 2,
                        ),
                        now,
                    )

    def _conversion(self, now: int) -> None:
        if now < self._settle_until:
            return  # the HX711 is settling after a rate change: DOUT stays high
        counts = self.hx.sample(self.scenario_time(now))
        self._send(WeightSample(self.hx.rate_sps, self.hx.gain, counts), now)
        if self._tare is not None:
            seq, samples, mask, acc = self._tare
            for i, c in enumerate(counts):
                if mask >> i & 1 and c not in (RAIL_HIGH, RAIL_LOW):
                    acc[i].append(c)
            if min(len(a) for i, a in enumerate(acc) if mask >> i & 1) >= samples:
                means = tuple(int(sorted(a)[len(a) // 2]) if a else 0 for a in acc)
                self._tare = None
                self._send(TareResult(seq, means), now)

    def _read_commands(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the host has not opened the port (EIO): nothing to read
        rx_ns = time.monotonic_ns()
        before = self._decoder.rejected
        frames = self._decoder.feed(data)
        self.rx_errors += self._decoder.rejected - before
        with self._lock:
            for frame in frames:
                self._command(frame.seq, frame.payload, rx_ns)

    def _command(self, seq: int, p: Payload, rx_ns: int) -> None:
        self.commands.append(p)
        if isinstance(p, Ping):
            self._send(Pong(p.ping_id, self.mcu_us(rx_ns)))
        elif isinstance(p, GetInfo):
            self._send(Hello(*FIRMWARE, 1, self.n_cells, 1, self.name))
        elif isinstance(p, SetRate):
            if p.rate_sps not in SETTLE_S:
                self._send(Nack(int(p.TYPE), seq, NackReason.BAD_VALUE))
                return
            self.hx.rate_sps = p.rate_sps
            self._settle_until = time.monotonic_ns() + int(SETTLE_S[p.rate_sps] * 1e9)
            self._send(Ack(int(p.TYPE), seq))
        elif isinstance(p, SetGain):
            if p.gain not in (128, 64, 32):
                self._send(Nack(int(p.TYPE), seq, NackReason.BAD_VALUE))
                return
            self.hx.set_gain(p.gain)
            self._send(Ack(int(p.TYPE), seq))
        elif isinstance(p, Tare):
            if not p.samples >= 1 or not p.channel_mask or self._tare is not None:
                reason = NackReason.BUSY if self._tare is not None else NackReason.BAD_VALUE
                self._send(Nack(int(p.TYPE), seq, reason))
                return
            self._tare = (seq, p.samples, p.channel_mask, [[] for _ in range(self.n_cells)])
        else:
            self._send(Nack(int(p.TYPE), seq, NackReason.UNSUPPORTED))
