"""Clock mapping on synthetic ping/pong exchanges with known truth."""

from __future__ import annotations

import random

from firmware_bridge.clock import ClockSync


def exchanges(ppm: float, seconds: float, seed: int = 1, every_s: float = 1.0):  # type: ignore[no-untyped-def]
    """(send_ns, recv_ns, mcu_rx_us, true host ns of rx) with jittery, sometimes queued links."""
    rng = random.Random(seed)
    boot_us = 123_456_789
    t = 5.0
    while t < seconds:
        up = rng.uniform(60e-6, 400e-6) + (rng.random() < 0.05) * rng.uniform(1e-3, 20e-3)
        down = rng.uniform(60e-6, 400e-6) + (rng.random() < 0.05) * rng.uniform(1e-3, 20e-3)
        send = int(t * 1e9)
        rx_true = send + int(up * 1e9)
        recv = rx_true + int(down * 1e9)
        yield send, recv, boot_us + int(rx_true / 1000 * (1 + ppm * 1e-6)), rx_true
        t += every_s


def test_drift_and_offset_are_tracked() -> None:
    clock = ClockSync()
    errors = []
    for send, recv, mcu_us, truth in exchanges(50.0, 600):
        if clock.exchanges > 10:
            errors.append(abs(clock.to_host_ns(mcu_us) - truth))
        clock.add_exchange(send, recv, mcu_us)
    errors.sort()
    p99 = errors[int(0.99 * len(errors))]
    assert p99 < 1_000_000, p99  # 1 ms
    assert abs(clock.drift_ppm - 50.0) < 5


def test_queued_exchanges_are_left_out() -> None:
    clock = ClockSync()
    for send, recv, mcu_us, _ in exchanges(0.0, 60):
        clock.add_exchange(send, recv, mcu_us)
    assert clock.rejected > 0
    assert not clock.add_exchange(10**12, 10**12 + 50_000_000, 1)  # 50 ms round trip


def test_a_link_that_gets_slower_for_good_is_followed_not_left_out() -> None:
    """A quick start (0.1 ms round trips), then a busier machine (3 ms, steady): the slower
    exchanges are queueing outliers only while the quick ones are recent; after that they are
    kept, and the mapping follows the link (before, every one was left out for ever)."""
    clock, boot_us = ClockSync(), 7_000_000
    for i in range(60):
        rtt = 100_000 if i < 5 else 3_000_000
        send = 10**9 * (i + 1)
        rx = send + rtt // 2
        assert clock.add_exchange(send, send + rtt, boot_us + rx // 1000) or 5 <= i < 5 + 16
    assert clock.exchanges >= 60 - 16
    probe = 10**9 * 61 + 1_500_000
    assert abs(clock.to_host_ns(boot_us + probe // 1000) - probe) < 1_000_000


def test_offset_only_before_enough_span() -> None:
    clock = ClockSync()
    clock.add_exchange(1_000_000, 1_200_000, 500)
    assert clock.synced
    assert clock.to_host_ns(500) == 1_100_000
    assert clock.to_host_ns(1500) == 2_100_000  # nominal rate until drift is known


def test_reset_forgets() -> None:
    clock = ClockSync()
    clock.add_exchange(0, 100, 0)
    clock.reset()
    assert not clock.synced
