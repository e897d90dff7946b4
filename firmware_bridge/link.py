"""The host's MCU link driver: one reader thread, self-healing, with clock sync.

The reader thread owns the port: it opens it (and re-opens it after an unplug, with backoff),
decodes frames, drops and counts bad ones, spots lost frames by sequence gaps, answers nothing
itself, pings the MCU for clock sync, and hands every good frame to the listeners with its host
timestamp. Nothing raised by bad input ever leaves the read loop.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_bridge.clock import ClockSync
from firmware_bridge.framing import ERROR_KINDS, Frame, FrameDecoder, encode_frame
from firmware_bridge.messages import (
    Ack,
    GetInfo,
    Hello,
    MsgType,
    Nack,
    NackReason,
    Payload,
    Ping,
    Pong,
    TareResult,
)
from firmware_bridge.transport import Transport, TransportError

log = logging.getLogger("capsight.bridge.link")

Listener = Callable[[Frame, int], None]

#: After connecting, pings go every 50 ms until the clock has kept this many exchanges...
FAST_PINGS_KEPT = 8
#: ...or this many were sent (a link where most round trips are left out falls back to the
#: ping interval rather than flooding the MCU).
FAST_PINGS_MAX = 40


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class RequestFailed(Exception):
    """A request got a NACK or no answer in time."""


@dataclass
class LinkStats:
    state: str
    port: str
    frames: int
    bytes: int
    errors: dict[str, int]
    lost_frames: int
    reconnects: int
    listener_errors: int
    firmware: str
    clock_offset_ms: float
    clock_drift_ppm: float
    clock_exchanges: int
    since_last_frame_s: float | None

    @property
    def frame_error_rate(self) -> float:
        bad = sum(self.errors.values())
        return bad / (bad + self.frames) if bad + self.frames else 0.0


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    frame: Frame | None = None


class McuLink:
    """Talks to the cart MCU over any :class:`~firmware_bridge.transport.Transport`.

    ``monotonic_ns`` is the host clock every timestamp is expressed in (injectable for tests).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        ping_interval_s: float = 1.0,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 2.0,
        read_batch_s: float = 0.05,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.transport = transport
        self.clock = ClockSync()
        self._now = monotonic_ns
        self._ping_interval_ns = int(ping_interval_s * 1e9)
        # Waking once per frame costs more CPU than decoding it: let bytes gather for
        # ``read_batch_s`` between reads, except while a PONG is due (its arrival time matters).
        self._read_batch_s = read_batch_s
        self._pong_due_ns = 0
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._listeners: list[Listener] = []
        self._state_listeners: list[Callable[[LinkState, LinkState], None]] = []
        self._state = LinkState.CLOSED
        self._state_changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._hello_waiters: list[_Pending] = []
        self._pings: dict[int, int] = {}
        self._ping_id = 0
        self._next_ping_ns = 0
        self._pings_sent_since_connect = 0
        self._decoder = FrameDecoder()
        self._errors: Counter[str] = Counter()
        self._logged_kinds: set[str] = set()
        self._last_seq: int | None = None
        self._last_frame_ns: int | None = None
        self.hello: Hello | None = None
        self.frames = 0
        self.bytes = 0
        self.lost_frames = 0
        self.reconnects = 0
        self.listener_errors = 0

    # -- lifecycle -------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Called on the reader thread for every good frame with its host timestamp (ns)."""
        self._listeners.append(listener)

    def add_state_listener(self, listener: Callable[[LinkState, LinkState], None]) -> None:
        """``listener(previous, new)`` on the thread that changed the state, for every change."""
        self._state_listeners.append(listener)

    def start(self) -> McuLink:
        if self._thread is not None:
            return self
        self._stop.clear()
        self._set_state(LinkState.CONNECTING)
        self._thread = threading.Thread(
            target=self._run, name=f"mcu-link:{self.transport.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.transport.close()
        self._set_state(LinkState.CLOSED)

    def __enter__(self) -> McuLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def state(self) -> LinkState:
        return self._state

    def wait_for_state(self, state: LinkState, timeout_s: float) -> bool:
        with self._state_changed:
            return self._state_changed.wait_for(lambda: self._state == state, timeout_s)

    def _set_state(self, state: LinkState) -> None:
        with self._state_changed:
            previous = self._state
            if state != previous:
                log.info("link %s: %s -> %s", self.transport.name, previous.value, state.value)
            self._state = state
            self._state_changed.notify_all()
        if state != previous:
            for fn in list(self._state_listeners):
                try:
                    fn(previous, state)
                except Exception:
                    self.listener_errors += 1
                    log.exception("link state listener failed")

    # -- sending ---------------------------------------------------------------------------
    def send(self, payload: Payload, *, pending: _Pending | None = None) -> int:
        """Send one message; returns its sequence number. Raises TransportError when down.
        ``pending`` is registered under the sequence number before the bytes leave."""
        with self._write_lock:
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFFFF
            if pending is not None:
                self._pending[seq] = pending
            try:
                self.transport.write(encode_frame(payload, seq, self._now() // 1000))
            except Exception:
                self._pending.pop(seq, None)
                raise
        return seq

    def request(self, payload: Payload, timeout_s: float = 1.0) -> Frame:
        """Send a command and wait for its ACK / TARE_RESULT (or HELLO for GET_INFO).

        Raises :class:`RequestFailed` on NACK or time-out, TransportError when the link is down.
        """
        pending = _Pending()
        if isinstance(payload, GetInfo):
            self._hello_waiters.append(pending)
            self.send(payload)
        else:
            seq = self.send(payload, pending=pending)
        if not pending.event.wait(timeout_s):
            if not isinstance(payload, GetInfo):
                self._pending.pop(seq, None)
            raise RequestFailed(f"{payload.TYPE.name}: no answer within {timeout_s} s")
        frame = pending.frame
        assert frame is not None
        if isinstance(frame.payload, Nack):
            code = frame.payload.reason
            known = {r.value: r.name for r in NackReason}
            reason = known.get(code, str(code))
            raise RequestFailed(f"{payload.TYPE.name} refused by the MCU: {reason}")
        return frame

    # -- reading ---------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self._reconnect[0]
        while not self._stop.is_set():
            if not self._connect():
                self._stop.wait(delay)
                delay = min(delay * 2, self._reconnect[1])
                continue
            delay = self._reconnect[0]
            self._read_until_failure()
        self.transport.close()

    def _connect(self) -> bool:
        try:
            self.transport.open()
        except TransportError as exc:
            if self._state != LinkState.DOWN or "open" not in self._logged_kinds:
                log.warning("%s", exc)
                self._logged_kinds.add("open")
            self._set_state(
                LinkState.DOWN if self.frames or self.reconnects else LinkState.CONNECTING
            )
            return False
        self._decoder = FrameDecoder()
        self._last_seq = None
        self.clock.reset()
        self._pings_sent_since_connect = 0
        self._next_ping_ns = 0
        self._set_state(LinkState.UP)
        with contextlib.suppress(TransportError):
            self.send(GetInfo())
        return True

    def _read_until_failure(self) -> None:
        while not self._stop.is_set():
            try:
                self._maybe_ping()
                data = self.transport.read(4096)
            except TransportError as exc:
                log.warning("link lost: %s; reconnecting", exc)
                self.transport.close()
                self.reconnects += 1
                self._set_state(LinkState.DOWN)
                return
            if not data:
                continue
            now = self._now()
            self.bytes += len(data)
            rejected = self._decoder.rejected
            before = Counter(self._decoder.errors) if rejected else Counter()
            for frame in self._decoder.feed(data):
                self._handle(frame, now)
            if self._read_batch_s and now > self._pong_due_ns:
                self._stop.wait(self._read_batch_s)
            if self._decoder.rejected == rejected:
                continue
            for kind, n in (self._decoder.errors - before).items():
                self._errors[kind] += n
                if kind not in self._logged_kinds:
                    self._logged_kinds.add(kind)
                    log.warning(
                        "dropped a bad frame (%s): %s; further ones are counted",
                        kind,
                        self._decoder.last_error,
                    )

    def _maybe_ping(self) -> None:
        now = self._now()
        if now < self._next_ping_ns:
            return
        self._ping_id = (self._ping_id + 1) & 0xFFFF_FFFF
        self._pings[self._ping_id] = now
        if len(self._pings) > 64:
            self._pings.pop(next(iter(self._pings)))
        self.send(Ping(self._ping_id))
        self._pong_due_ns = now + 100_000_000
        self._pings_sent_since_connect += 1
        # A quick burst after connecting gives a usable offset at once: until the clock has
        # kept FAST_PINGS_KEPT exchanges (a jittery link has some left out), at most
        # FAST_PINGS_MAX pings.
        fast = (
            self.clock.exchanges < FAST_PINGS_KEPT
            and self._pings_sent_since_connect < FAST_PINGS_MAX
        )
        self._next_ping_ns = now + (50_000_000 if fast else self._ping_interval_ns)

    def _handle(self, frame: Frame, arrival_ns: int) -> None:
        self.frames += 1
        self._last_frame_ns = arrival_ns
        p = frame.payload
        if isinstance(p, Hello):
            self.hello = p
            self._last_seq = frame.seq
            for waiter in self._hello_waiters:
                waiter.frame = frame
                waiter.event.set()
            self._hello_waiters.clear()
        else:
            if self._last_seq is not None:
                gap = (frame.seq - self._last_seq - 1) & 0xFFFF
                if 0 < gap < 0x8000:
                    self.lost_frames += gap
            self._last_seq = frame.seq
        if isinstance(p, Pong):
            self._pong_due_ns = 0
            sent = self._pings.pop(p.ping_id, None)
            if sent is not None:
                self.clock.add_exchange(sent, arrival_ns, p.rx_us)
            return
        if isinstance(p, Ack | Nack | TareResult):
            pending = self._pending.pop(p.acked_seq, None)
            if pending is not None:
                pending.frame = frame
                pending.event.set()
            if not isinstance(p, TareResult):
                return
        host_ns = self.clock.to_host_ns(frame.timestamp_us) if self.clock.synced else arrival_ns
        # A mapped time can never be later than when the bytes arrived.
        host_ns = min(host_ns, arrival_ns)
        for listener in self._listeners:
            try:
                listener(frame, host_ns)
            except Exception:  # a consumer bug must not kill the link
                self.listener_errors += 1
                log.exception("listener failed on %s", MsgType(frame.type).name)

    def stats(self) -> LinkStats:
        since = (self._now() - self._last_frame_ns) / 1e9 if self._last_frame_ns else None
        return LinkStats(
            state=self._state.value,
            port=self.transport.name,
            frames=self.frames,
            bytes=self.bytes,
            errors={k: self._errors[k] for k in ERROR_KINDS if self._errors[k]},
            lost_frames=self.lost_frames,
            reconnects=self.reconnects,
            listener_errors=self.listener_errors,
            firmware=self.hello.firmware if self.hello else "",
            clock_offset_ms=(self.clock.to_host_ns(0) / 1e6) if self.clock.synced else 0.0,
            clock_drift_ppm=self.clock.drift_ppm,
            clock_exchanges=self.clock.exchanges,
            since_last_frame_s=since,
        )
