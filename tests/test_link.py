"""The real link driver over pyserial, against the MCU simulator on a pty."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterator

import pytest

from firmware_bridge.framing import Frame
from firmware_bridge.link import FAST_PINGS_KEPT, LinkState, McuLink, RequestFailed
from firmware_bridge.messages import (
    GetInfo,
    Hello,
    MsgType,
    SetGain,
    SetRate,
    Tare,
    TareResult,
    WeightSample,
)
from firmware_bridge.sim.mcu import McuSimulator
from firmware_bridge.sim.scenario import generate
from firmware_bridge.transport import SerialTransport
from tests.conftest import wait_until


class Recorder:
    def __init__(self) -> None:
        self.frames: list[tuple[Frame, int]] = []
        self.lock = threading.Lock()

    def __call__(self, frame: Frame, t_ns: int) -> None:
        with self.lock:
            self.frames.append((frame, t_ns))

    def of(self, mtype: MsgType) -> list[tuple[Frame, int]]:
        with self.lock:
            return [(f, t) for f, t in self.frames if f.type == mtype]


@pytest.fixture
def sim() -> Iterator[McuSimulator]:
    with McuSimulator(generate("idle", 600), crystal_ppm=50.0, seed=3) as s:
        yield s


@pytest.fixture
def link(sim: McuSimulator) -> Iterator[tuple[McuLink, Recorder]]:
    rec = Recorder()
    lk = McuLink(SerialTransport(sim.port), reconnect_max_s=0.2)
    lk.add_listener(rec)
    with lk:
        assert lk.wait_for_state(LinkState.UP, 5)
        yield lk, rec


def test_hello_and_weight_frames(link: tuple[McuLink, Recorder]) -> None:
    lk, rec = link
    hello = lk.request(GetInfo(), timeout_s=2).payload
    assert isinstance(hello, Hello) and hello.n_cells == 4 and hello.firmware == "1.4.2"
    assert wait_until(lambda: len(rec.of(MsgType.WEIGHT)) >= 40)
    frame, _ = rec.of(MsgType.WEIGHT)[-1]
    assert isinstance(frame.payload, WeightSample) and len(frame.payload.counts) == 4
    stats = lk.stats()
    assert stats.errors == {} and stats.lost_frames == 0 and stats.state == "up"


def test_commands_are_acked_or_refused(link: tuple[McuLink, Recorder], sim: McuSimulator) -> None:
    lk, _ = link
    assert lk.request(SetRate(10)).payload.TYPE == MsgType.ACK
    assert sim.hx.rate_sps == 10
    with pytest.raises(RequestFailed, match="BAD_VALUE"):
        lk.request(SetRate(20))
    with pytest.raises(RequestFailed, match="BAD_VALUE"):
        lk.request(SetGain(100))
    lk.request(SetRate(80))
    result = lk.request(Tare(16, 0b1111), timeout_s=3).payload
    assert isinstance(result, TareResult) and len(result.means) == 4
    for mean, cell in zip(result.means, sim.hx.cells, strict=True):
        assert abs(mean - cell.zero_counts) < 200  # empty platform: the zero, within noise


def test_rate_change_settles_before_samples(
    link: tuple[McuLink, Recorder], sim: McuSimulator
) -> None:
    lk, rec = link
    lk.request(SetRate(10))
    t_change = next(r.host_ns for r in reversed(sim.history) if r.type == MsgType.ACK)
    assert wait_until(lambda: any(t > t_change for _, t in rec.of(MsgType.WEIGHT)))
    first_after = min(
        r.host_ns for r in sim.history if r.type == MsgType.WEIGHT and r.host_ns > t_change
    )
    assert first_after - t_change >= 0.39e9  # the HX711's 400 ms at 10 SPS


def test_corruption_is_counted_and_the_link_carries_on(
    link: tuple[McuLink, Recorder], sim: McuSimulator
) -> None:
    lk, rec = link
    sim.faults.corrupt_rate = 0.3
    sim.faults.garbage_rate = 0.1
    sim.faults.oversize_rate = 0.02
    assert wait_until(lambda: sum(lk.stats().errors.values()) >= 30)
    sim.faults.corrupt_rate = sim.faults.garbage_rate = sim.faults.oversize_rate = 0.0
    n = len(rec.of(MsgType.WEIGHT))
    assert wait_until(lambda: len(rec.of(MsgType.WEIGHT)) >= n + 40)
    errors = lk.stats().errors
    assert set(errors) <= {
        "cobs",
        "crc",
        "short",
        "length",
        "version",
        "unknown_type",
        "payload",
        "overflow",
    }
    assert lk.state == LinkState.UP
    # Every frame that got through is a real one the simulator sent, unaltered.
    sent = {(r.seq, r.mcu_us) for r in sim.history}
    assert all((f.seq, f.timestamp_us) in sent for f, _ in rec.of(MsgType.WEIGHT))


def test_dropped_frames_show_as_sequence_gaps(
    link: tuple[McuLink, Recorder], sim: McuSimulator
) -> None:
    lk, _ = link
    sim.faults.drop_rate = 0.2
    assert wait_until(lambda: lk.stats().lost_frames >= 20)
    sim.faults.drop_rate = 0.0
    assert lk.stats().errors == {}


def test_the_simulator_survives_replugs_at_any_moment(sim: McuSimulator) -> None:
    """A replug boots the MCU again at whatever point its loop is: the loop must never send a
    time from before that boot (a negative uptime killed the simulator's thread)."""
    for _ in range(1000):
        sim.unplug()
        sim.replug()
    assert sim.boots == 1001
    sent = len(sim.history)
    assert wait_until(lambda: len(sim.history) > sent + 20)  # the loop still samples
    assert sim._thread is not None and sim._thread.is_alive()


def test_unplug_and_replug_reconnects(link: tuple[McuLink, Recorder], sim: McuSimulator) -> None:
    lk, rec = link
    assert wait_until(lambda: len(rec.of(MsgType.WEIGHT)) > 10)
    sim.unplug()
    assert lk.wait_for_state(LinkState.DOWN, 5)
    sim.replug()
    assert lk.wait_for_state(LinkState.UP, 5)
    n = len(rec.of(MsgType.WEIGHT))
    assert wait_until(lambda: len(rec.of(MsgType.WEIGHT)) > n + 20)
    stats = lk.stats()
    assert stats.reconnects == 1 and sim.boots == 2
    assert lk.request(GetInfo(), timeout_s=2).payload.TYPE == MsgType.HELLO


def test_listener_exception_does_not_stop_the_link(sim: McuSimulator) -> None:
    lk = McuLink(SerialTransport(sim.port))
    calls = []

    def bad(frame: Frame, t: int) -> None:
        calls.append(frame)
        raise RuntimeError("consumer bug")

    lk.add_listener(bad)
    with lk:
        assert wait_until(lambda: len(calls) > 50)
        assert lk.state == LinkState.UP and lk.stats().listener_errors >= 50


def test_clock_maps_mcu_time_onto_host_time(
    link: tuple[McuLink, Recorder], sim: McuSimulator
) -> None:
    lk, rec = link
    # The burst after connecting keeps pinging until the clock has this many exchanges.
    assert wait_until(lambda: lk.clock.exchanges >= FAST_PINGS_KEPT, timeout_s=15)
    start = len(rec.of(MsgType.WEIGHT))
    assert wait_until(lambda: len(rec.of(MsgType.WEIGHT)) > start + 80)
    truth = {(r.seq, r.mcu_us): r.host_ns for r in list(sim.history)}
    errors = [
        abs(t - truth[(f.seq, f.timestamp_us)]) / 1e6 for f, t in rec.of(MsgType.WEIGHT)[start:]
    ]
    assert statistics.median(errors) < 1.0
    assert max(errors) < 5.0


def test_missing_port_keeps_retrying_without_raising(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lk = McuLink(SerialTransport(str(tmp_path / "nope")), reconnect_max_s=0.05)
    with lk:
        assert wait_until(lambda: lk.state == LinkState.CONNECTING, 2)
        assert not lk.wait_for_state(LinkState.UP, 0.3)
    assert lk.state == LinkState.CLOSED
