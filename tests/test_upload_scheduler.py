"""The upload scheduler with plain values: no sockets, no clock, no journal."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from capsight_edge.profile.schema import UploadWindow
from capsight_edge.uploader.scheduler import TOKEN_RETRY_S, UploadScheduler
from capsight_edge.uploader.shaping import Backoff, UploadSchedule

NOON = dt.datetime(2026, 12, 2, 12, 0)  # a Wednesday


@dataclass(frozen=True)
class Row:
    id: str


QUEUE = [Row("p5-old"), Row("p5-new"), Row("p3"), Row("p1")]  # the journal's queue order


def scheduler(**kw: object) -> UploadScheduler:
    opts: dict[str, object] = {
        "concurrency": 2,
        "schedule": UploadSchedule(8_000_000),
        "backoff": Backoff(base_s=1, max_s=60, rng=random.Random(3)),
    }
    opts.update(kw)
    return UploadScheduler(**opts)  # type: ignore[arg-type]


def start(s: UploadScheduler, now: float, **kw: object) -> list[str]:
    plan = s.plan(QUEUE, now, NOON, **kw)  # type: ignore[arg-type]
    for row in plan.start:
        s.started(row.id)
    return [r.id for r in plan.start]


def test_queue_order_and_concurrency() -> None:
    s = scheduler()
    assert start(s, 0.0) == ["p5-old", "p5-new"]
    assert start(s, 0.1) == []  # full
    assert not s.wants_queue(0.1, NOON, counting=False)  # nothing could start: no query
    s.ended("p5-old")
    s.uploaded("p5-old")
    assert start(s, 0.2) == ["p5-old"]  # the queue passed in decides what is left
    assert s.state(0.2, NOON) == "uploading"


def test_a_failed_bundle_waits_its_backoff_and_retry_after() -> None:
    s = scheduler(concurrency=1)
    assert start(s, 0.0) == ["p5-old"]
    s.ended("p5-old")
    assert s.retry_later("p5-old", 0.0) == 1
    assert start(s, 0.0) == ["p5-new"]  # the others go meanwhile
    s.ended("p5-new")
    n = s.retry_later("p5-new", 1.0, after_s=30.0)  # Retry-After wins over a short backoff
    assert n == 1 and s.not_before["p5-new"] >= 31.0
    assert 0.5 <= s.not_before["p5-old"] <= 1.0  # attempt 0: between half and all of 1 s
    assert start(s, 1.1) == ["p5-old"]


def test_a_sink_that_refuses_connections_holds_every_upload_back() -> None:
    s = scheduler()
    start(s, 0.0)
    s.ended("p5-old")
    s.ended("p5-new")
    s.retry_later("p5-old", 10.0, sink_down=True)
    s.retry_later("p5-new", 10.0, sink_down=True)
    assert s.blocked(10.5, NOON) and start(s, 10.5) == []
    assert s.state(10.5, NOON).startswith("waiting: sink unreachable")
    later = s.sink_down_until + 0.01
    assert start(s, later)  # the shared backoff is over
    s.uploaded("p3")
    assert s.sink_failures == 0


def test_a_refused_token_holds_everything_until_it_changes_or_time_passes() -> None:
    s = scheduler()
    s.token_refused(100.0)
    assert start(s, 100.0) == [] and "refuses this device's token" in s.state(100.0, NOON)
    assert not s.token_may_retry(200.0, changed=False)
    assert s.token_may_retry(200.0, changed=True) and start(s, 200.0)
    s2 = scheduler()
    s2.token_refused(0.0)
    assert s2.token_may_retry(TOKEN_RETRY_S + 1, changed=False)


def test_pauses_from_the_hook_and_from_the_journal_cancel_what_flies() -> None:
    s = scheduler()
    start(s, 0.0)
    s.pause("cart not docked")
    plan = s.plan(QUEUE, 1.0, NOON)
    assert plan.cancel and plan.start == [] and s.state(1.0, NOON) == "paused: cart not docked"
    s.pause(None)
    s.follow_pause_key("technician")  # another process holds uploads through the journal
    assert s.paused == "technician"
    s.follow_pause_key(None)  # and releases them
    assert s.paused is None and not s.plan(QUEUE, 2.0, NOON).cancel


def test_a_window_at_zero_stops_uploads_and_uncapped_has_no_rate() -> None:
    off = UploadWindow(start="11:00", end="13:00", max_upload_bps=0)
    s = scheduler(schedule=UploadSchedule(8_000_000, (off,)))
    s.started("p1")
    plan = s.plan(QUEUE, 0.0, NOON)
    assert plan.rate_bps == 0 and plan.cancel and plan.start == []
    assert s.state(0.0, NOON).startswith("off:")
    assert s.rate_bps(NOON.replace(hour=14)) == 8_000_000
    assert scheduler(uncapped=True).rate_bps(NOON) is None


def test_a_flush_stops_counting_bundles_tried_often_enough() -> None:
    s = scheduler(concurrency=4)
    for _ in range(2):
        for row in s.plan(QUEUE, 0.0, NOON, max_attempts=2).start:
            s.started(row.id)
            s.ended(row.id)
    plan = s.plan(QUEUE, 0.0, NOON, max_attempts=2)
    assert plan.start == [] and plan.waiting == 0  # nothing more can go in this run
