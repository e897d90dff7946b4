"""The event API an integrator embeds: typed events as a stream and as callbacks, a Cart that
is a context manager, and stop() that is idempotent and leaves no thread behind."""

from __future__ import annotations

import threading
from pathlib import Path

from capsight_edge.cart import Cart
from capsight_edge.events import BundleSealed, LinkHealth, TriggerDecision, WeightEvent
from capsight_edge.profile import load_profile
from tests.conftest import SIM, wait_until


def test_a_cart_streams_typed_events_and_cleans_up(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    profile = load_profile(SIM, data_dir=tmp_path)
    seen: list[object] = []
    cart = Cart(profile, seed=5)
    unsubscribe = cart.events.subscribe(seen.append)  # before start: nothing is missed
    stream = cart.events.stream(timeout_s=60)
    with cart:
        assert wait_until(lambda: any(isinstance(e, LinkHealth) and e.state == "up" for e in seen))
        cart.capture_now("events test")
        sealed = None
        for event in stream:
            if isinstance(event, BundleSealed):
                sealed = event
                break
        unsubscribe()
        assert sealed is not None and sealed.path.is_dir() and sealed.bytes > 0
        assert sealed.manifest.bundle_id == sealed.bundle_id
        cart.stop()
        cart.stop()  # twice: nothing happens
    decisions = [e for e in seen if isinstance(e, TriggerDecision)]
    assert any(d.kind == "fire" and d.rule == "manual" for d in decisions)
    assert all(
        isinstance(e, BundleSealed | TriggerDecision | WeightEvent | LinkHealth) for e in seen
    )
    # stop() leaves no thread of ours running (the uploader is off: no sink in the profile).
    assert wait_until(lambda: set(threading.enumerate()) <= before, timeout_s=10), [
        t.name for t in set(threading.enumerate()) - before
    ]


def test_a_slow_stream_is_bounded() -> None:
    from capsight_edge.events import Events

    events = Events()
    stream = events.stream(maxsize=10, timeout_s=0.1)
    for i in range(100):
        events.publish(LinkHealth(i, "up", "connecting", 0, 0, 0.0))
    got = list(stream)
    assert [e.t_ns for e in got] == list(range(90, 100))  # type: ignore[union-attr]
    assert stream.dropped == 90
