"""The trigger engine: turns timestamped signals into capture decisions.

Signals arrive as they happen (``signal(name, t_ns, active)``): instantaneous ones (a barcode
read, a weight event, a bump, a manual request) and states (hand motion, unstable weight, cart
moving). Each rule of the profile is an expression over them (see :mod:`.expr`). A rule

- **fires** when its expression becomes true (after holding for ``confirm_s``, if set) and it is
  not cooling down; the capture it asks for starts ``preroll_s`` before that moment;
- stays **active** while the expression keeps being true, and **ends** ``postroll_s`` after it
  turned false, or when the capture reaches ``max_length_s``;
- is **suppressed** while cooling down (``cooldown_s`` after its last end).

Every decision carries the signals that caused it and goes to the callbacks (the recorder, the
sensor log, the CLI) and to the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from capsight_edge.errors import ProfileError
from capsight_edge.triggers.expr import (
    DEFAULT_PULSE_S,
    PULSES,
    SIGNALS,
    Node,
    RuleSyntaxError,
    parse_rule,
    signals_of,
)

log = logging.getLogger("capsight.triggers")


@dataclass(frozen=True)
class Decision:
    kind: str  # "fire", "end", "suppressed", "cancelled"
    rule: str
    priority: int
    t_ns: int
    signals: dict[str, bool]
    reason: str = ""
    clip_start_ns: int = 0
    clip_end_ns: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SignalState:
    """When each signal was last raised, and which states are on now."""

    def __init__(self, history_s: float = 600.0) -> None:
        self._pulses: dict[str, deque[int]] = {}
        self._on_since: dict[str, int] = {}
        self._off_at: dict[str, int] = {}
        self.history_ns = int(history_s * 1e9)
        self.now_ns = 0

    def record(self, name: str, t_ns: int, active: bool = True) -> None:
        if name not in SIGNALS:
            raise ValueError(f"unknown signal {name!r}")
        if name in PULSES:
            if active:
                q = self._pulses.setdefault(name, deque(maxlen=256))
                q.append(t_ns)
        elif active:
            self._on_since.setdefault(name, t_ns)
        elif name in self._on_since:
            del self._on_since[name]
            self._off_at[name] = t_ns

    def active(self, name: str, window_s: float | None) -> bool:
        now = self.now_ns
        if name in PULSES:
            q = self._pulses.get(name)
            if not q:
                return False
            window = int((window_s if window_s is not None else DEFAULT_PULSE_S) * 1e9)
            return any(now - window <= t <= now for t in q)
        if name in self._on_since and self._on_since[name] <= now:
            return True
        if window_s is None:
            return False
        off = self._off_at.get(name)
        return off is not None and now - off <= window_s * 1e9


@dataclass
class _RuleState:
    name: str
    node: Node
    priority: int
    preroll_ns: int
    postroll_ns: int
    cooldown_ns: int
    confirm_ns: int
    max_length_ns: int
    state: str = "idle"  # idle, confirming, active
    since_ns: int = 0
    fired_ns: int = 0
    last_true_ns: int = 0
    cooldown_until_ns: int = 0
    suppressed_logged: bool = False
    fired: int = 0
    reads: set[str] = field(default_factory=set)


class TriggerEngine:
    """Thread-safe. ``rules``: objects with the profile's trigger-rule fields."""

    def __init__(
        self, rules: Iterable[Any], *, clock_ns: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self._clock = clock_ns
        self.state = SignalState()
        self._rules: list[_RuleState] = []
        for i, r in enumerate(rules):
            try:
                node = parse_rule(r.when)
            except RuleSyntaxError as exc:
                raise ProfileError("", f"triggers[{i}].when", f"rule {r.name!r}: {exc}") from exc
            self._rules.append(
                _RuleState(
                    r.name,
                    node,
                    r.priority,
                    int(r.preroll_s * 1e9),
                    int(r.postroll_s * 1e9),
                    int(r.cooldown_s * 1e9),
                    int(getattr(r, "confirm_s", 0.0) * 1e9),
                    int(getattr(r, "max_length_s", 30.0) * 1e9),
                    reads=signals_of(node),
                )
            )
        self._listeners: list[Callable[[Decision], None]] = []
        self.paused: str | None = None
        self._lock = threading.Lock()
        self.decisions: deque[Decision] = deque(maxlen=1000)

    def add_listener(self, fn: Callable[[Decision], None]) -> None:
        self._listeners.append(fn)

    def pause(self, reason: str | None) -> None:
        """While paused (the storage guard says the disk is nearly full), rules that would fire
        are suppressed with this reason; ``None`` resumes."""
        with self._lock:
            self.paused = reason

    @property
    def active_rules(self) -> list[str]:
        return [r.name for r in self._rules if r.state == "active"]

    def signal(self, name: str, t_ns: int | None = None, active: bool = True) -> list[Decision]:
        """Record one signal and evaluate every rule at its time."""
        t = t_ns if t_ns is not None else self._clock()
        with self._lock:
            self.state.record(name, t, active)
            return self._evaluate(t)

    def tick(self, now_ns: int | None = None) -> list[Decision]:
        """Evaluate at ``now`` with no new signal: windows run out, post-rolls end."""
        with self._lock:
            return self._evaluate(now_ns if now_ns is not None else self._clock())

    def _snapshot(self, rule: _RuleState) -> dict[str, bool]:
        return {name: self.state.active(name, None) for name in sorted(rule.reads)}

    def _evaluate(self, now: int) -> list[Decision]:
        self.state.now_ns = max(self.state.now_ns, now)
        now = self.state.now_ns
        out: list[Decision] = []
        for r in self._rules:
            true = r.node.evaluate(self.state)
            if r.state == "active":
                if true:
                    r.last_true_ns = now
                length = now - r.fired_ns
                if length >= r.max_length_ns:
                    out.append(self._end(r, now, "max_length", r.fired_ns + r.max_length_ns))
                elif not true and now - r.last_true_ns >= r.postroll_ns:
                    out.append(self._end(r, now, "post-roll done", r.last_true_ns + r.postroll_ns))
                continue
            if not true:
                if r.state == "confirming":
                    out.append(
                        Decision(
                            "cancelled",
                            r.name,
                            r.priority,
                            now,
                            self._snapshot(r),
                            "the expression turned false before confirm_s",
                        )
                    )
                r.state = "idle"
                r.suppressed_logged = False
                continue
            if self.paused is not None and r.state != "active":
                if not r.suppressed_logged:
                    r.suppressed_logged = True
                    out.append(
                        Decision(
                            "suppressed",
                            r.name,
                            r.priority,
                            now,
                            self._snapshot(r),
                            f"capture paused: {self.paused}",
                        )
                    )
                continue
            if now < r.cooldown_until_ns:
                if not r.suppressed_logged:
                    r.suppressed_logged = True
                    out.append(
                        Decision(
                            "suppressed", r.name, r.priority, now, self._snapshot(r), "cooling down"
                        )
                    )
                continue
            if r.state == "idle":
                r.state, r.since_ns = "confirming", now
            if r.state == "confirming" and now - r.since_ns >= r.confirm_ns:
                r.state, r.fired_ns, r.last_true_ns = "active", now, now
                r.fired += 1
                out.append(
                    Decision(
                        "fire",
                        r.name,
                        r.priority,
                        now,
                        self._snapshot(r),
                        "expression became true",
                        clip_start_ns=r.since_ns - r.preroll_ns,
                    )
                )
        for d in out:
            self.decisions.append(d)
            log.info(
                "trigger %s %s at %d (%s) signals=%s", d.rule, d.kind, d.t_ns, d.reason, d.signals
            )
            for fn in self._listeners:
                try:
                    fn(d)
                except Exception:  # a consumer bug must not stop the engine
                    log.exception("trigger listener failed")
        return out

    def _end(self, r: _RuleState, now: int, reason: str, clip_end: int) -> Decision:
        r.state = "idle"
        r.cooldown_until_ns = now + r.cooldown_ns
        r.suppressed_logged = False
        return Decision(
            "end",
            r.name,
            r.priority,
            now,
            self._snapshot(r),
            reason,
            clip_start_ns=r.fired_ns - r.preroll_ns,
            clip_end_ns=clip_end,
        )
