"""NMEA 0183 positions from a GNSS receiver, robust to what real receivers send.

Real logs hold cold-boot garbage with NUL bytes, truncated and glued sentences, checksum failures,
no-fix periods (where pynmea2 yields latitude 0.0, not None), and GPS week-rollover dates. The
parser frames lines itself (pynmea2's stream reader mixes bytes and str), parses with
``check=True``, never raises, and counts every line it rejects by reason.

A fix is emitted for each GGA with quality > 0. Receivers that send no GGA at all get their fixes
from RMC sentences with status 'A'.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAX_LINE = 120  # NMEA allows 82 characters; proprietary sentences run a little longer
_CHECKSUM = re.compile(r"\*([0-9A-Fa-f]{2})\s*$")
#: Why a line was rejected (keys of NmeaParser.rejected).
REJECT_REASONS = ("binary", "no_start", "too_long", "no_checksum", "checksum", "parse", "bad_value")
#: Earliest plausible receiver date; older dates are a week-rollover bug (or no date at all).
MIN_PLAUSIBLE_DATE = dt.date(2000, 1, 1)
#: A GPS week number wraps every 1024 weeks; a receiver that missed a wrap is that far behind.
ROLLOVER = dt.timedelta(weeks=1024)


@dataclass(frozen=True)
class GnssFix:
    t_ns: int | None  # host monotonic ns when the sentence arrived (None when parsing a file)
    receiver_time: str  # hh:mm:ss.sss UTC from the receiver
    receiver_date: str | None  # YYYY-MM-DD from the last plausible RMC date
    lat: float
    lon: float
    alt_m: float | None
    quality: int
    satellites: int | None
    hdop: float | None
    source: str  # "GGA" or "RMC"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class LineFramer:
    """Bytes from a serial port in, complete lines out. An endless line is dropped up to its
    end (the next newline) and counted once in ``overlong``: memory stays bounded by
    ``4 * MAX_LINE`` whatever a receiver or a file sends."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False
        self.overlong = 0

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        start = 0
        while True:
            i = data.find(b"\n", start)
            if i < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                self._buf += data[start:i]
                if len(self._buf) <= 4 * MAX_LINE:
                    lines.append(bytes(self._buf).rstrip(b"\r"))
                else:
                    self.overlong += 1
            self._buf.clear()
            start = i + 1
        if not self._skipping:
            self._buf += data[start : start + 4 * MAX_LINE + 1]
            if len(self._buf) > 4 * MAX_LINE:
                self.overlong += 1
                self._skipping = True
                self._buf.clear()
        return lines

    def tail(self) -> bytes:
        """What is left after the last newline (the end of a file without one)."""
        return b"" if self._skipping else bytes(self._buf).rstrip(b"\r")


class NmeaParser:
    """Feed lines (bytes or str); get :class:`GnssFix` objects. Never raises.

    Fixes are decided per receiver cycle, as gpsd decides them: the sentences that share one UTC
    time (and the untimed ones, GSA and VTG, that follow them) are one cycle, and the cycle is a
    fix only when a sentence gives a position with a fix and no sentence of the cycle says there
    is none (GGA quality 0 or no satellite in use, RMC/GLL status V, a mode indicator N, GSA
    mode 1). A receiver's cycle ends with the sentence type that came last before the time
    changed (learned on the first change); that sentence closes later cycles at once, so a fix is
    not held back a second. Until the cycle is learned, every sentence's state is reported (gpsd
    does the same). :meth:`flush` closes the cycle open at the end of a stream, so its fix is not
    lost. Week-rollover dates (a receiver 1024 weeks behind) are corrected and counted.
    """

    def __init__(self) -> None:
        self.sentences = 0
        self.fixes = 0
        self.no_fix = 0
        self.other = 0
        self.suspect_dates = 0
        self.corrected_dates = 0
        self.rejected: Counter[str] = Counter()
        self.no_fix_reasons: Counter[str] = Counter()
        self.talkers: Counter[str] = Counter()
        self._date: str | None = None
        self._cycle = _Cycle()
        self._last_type: str | None = None
        self._enders: set[str] = set()
        self._last_reported: tuple[str, float, float] | None = None

    def feed_line(self, line: bytes | str, t_ns: int | None = None) -> GnssFix | None:
        text = self._clean(line)
        if text is None:
            return None
        import pynmea2  # lazy: an edge extra

        try:
            msg = pynmea2.parse(text, check=True)
        except pynmea2.ChecksumError:
            self.rejected["checksum"] += 1
            return None
        except (pynmea2.ParseError, ValueError, TypeError, AttributeError):
            self.rejected["parse"] += 1
            return None
        self.sentences += 1
        self.talkers[getattr(msg, "talker", "") or "P"] += 1
        try:
            return self._interpret(msg, t_ns)
        except (ValueError, TypeError, AttributeError):
            # pynmea2 converts fields lazily: a garbled number surfaces only here.
            self.rejected["bad_value"] += 1
            return None

    def flush(self) -> GnssFix | None:
        """The end of the stream closes the open cycle: its fix, if it had one."""
        fix = self._close()
        self._cycle = _Cycle()
        return fix

    def _clean(self, line: bytes | str) -> str | None:
        if isinstance(line, bytes):
            if b"\x00" in line or any(b > 0x7E for b in line):
                self.rejected["binary"] += 1
                return None
            text = line.decode("ascii", "replace")
        else:
            text = line
        text = text.strip()
        if not text:
            return None
        if any(ord(c) < 0x20 or ord(c) > 0x7E for c in text):
            self.rejected["binary"] += 1
            return None
        if text[0] not in "$!":
            self.rejected["no_start"] += 1
            return None
        if len(text) > MAX_LINE:
            self.rejected["too_long"] += 1
            return None
        if "$" in text[1:]:
            # Two sentences glued together after a lost line end: the first one is truncated.
            self.rejected["parse"] += 1
            return None
        if not _CHECKSUM.search(text):
            self.rejected["no_checksum"] += 1
            return None
        return text

    def _interpret(self, msg: object, t_ns: int | None) -> GnssFix | None:
        kind = getattr(msg, "sentence_type", "")
        reading = _READERS.get(kind)
        if reading is None:
            self.other += 1
            return None
        verdict = reading(msg)  # may raise ValueError on a garbled field: rejected as bad_value
        out: GnssFix | None = None
        stamp = _time(msg) if kind in _TIMED else ""
        if stamp:
            if self._cycle.time is not None and stamp != self._cycle.time:
                if self._last_type is not None:
                    self._enders.add(self._last_type)  # the receiver's cycle ends with it
                out = self._close()
                self._cycle = _Cycle()
            self._cycle.time = stamp
            self._last_type = kind
        if kind == "RMC":
            self._rmc_date(msg)  # after the cycle switch: the date belongs to this cycle
        self._cycle.add(kind, verdict, t_ns)
        if verdict.no_fix_reason:
            self.no_fix_reasons[verdict.no_fix_reason] += 1
        if not self._enders:
            # The cycle is not known yet: report this sentence's state, as gpsd does.
            early = self._cycle.state_now(self._date)
            if early is not None and out is None and self._new(early):
                out = early
                self.fixes += 1
        elif kind in self._enders and stamp:
            closed = self._close()
            self._cycle = _Cycle(time=stamp, closed=True)
            out = out or closed
        return out

    def _close(self) -> GnssFix | None:
        cycle = self._cycle
        if cycle.closed or not cycle.verdicts:
            return None
        cycle.closed = True
        fix = cycle.decide(self._date)
        if fix is None:
            if cycle.has_position() or any(v.no_fix_reason for v in cycle.verdicts):
                self.no_fix += 1
            return None
        if not self._new(fix):
            return None
        self.fixes += 1
        return fix

    def _new(self, fix: GnssFix) -> bool:
        """Not the fix reported last (the first cycle reports its state after each sentence)."""
        key = (fix.receiver_time, fix.lat, fix.lon)
        if key == self._last_reported:
            return False
        self._last_reported = key
        return True

    def _rmc_date(self, msg: object) -> None:
        data = getattr(msg, "data", None) or []
        if len(data) <= 8 or not data[8]:
            return
        try:
            raw_date: dt.date | None = msg.datestamp  # type: ignore[attr-defined]
        except (ValueError, TypeError):
            raw_date = None
        if not isinstance(raw_date, dt.date):
            raw_date = None  # pynmea2 hands back the raw text of "2208-1"
        if raw_date is None:
            self.suspect_dates += 1
            self._date = None
            return
        if raw_date < MIN_PLAUSIBLE_DATE:
            # A receiver that lost a GPS week rollover is 1024 weeks behind: add them back.
            fixed = raw_date
            while fixed < MIN_PLAUSIBLE_DATE:
                fixed += ROLLOVER
            if fixed > dt.date.today() + dt.timedelta(days=1):
                self.suspect_dates += 1
                self._date = None
                return
            self.corrected_dates += 1
            raw_date = fixed
        self._date = raw_date.isoformat()

    def summary(self) -> dict[str, object]:
        return {
            "sentences": self.sentences,
            "fixes": self.fixes,
            "no_fix": self.no_fix,
            "no_fix_reasons": dict(self.no_fix_reasons),
            "other_sentences": self.other,
            "suspect_dates": self.suspect_dates,
            "corrected_dates": self.corrected_dates,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "talkers": dict(self.talkers),
        }


@dataclass
class _Verdict:
    """What one sentence says: a position (or None), whether it has a fix (None: no opinion)."""

    fix: bool | None
    lat: float | None = None
    lon: float | None = None
    no_fix_reason: str | None = None
    alt_m: float | None = None
    quality: int | None = None
    satellites: int | None = None
    hdop: float | None = None
    time: str = ""


@dataclass
class _Cycle:
    time: str | None = None
    closed: bool = False
    verdicts: list[_Verdict] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    t_ns: int | None = None

    def add(self, kind: str, verdict: _Verdict, t_ns: int | None) -> None:
        self.verdicts.append(verdict)
        self.kinds.append(kind)
        if t_ns is not None:
            self.t_ns = t_ns

    def has_position(self) -> bool:
        return any(v.lat is not None for v in self.verdicts)

    def decide(self, date: str | None) -> GnssFix | None:
        if any(v.fix is False for v in self.verdicts):
            return None
        return self._fix(date)

    def state_now(self, date: str | None) -> GnssFix | None:
        """Last word wins: the state gpsd reports before it knows the cycle."""
        last = next((v.fix for v in reversed(self.verdicts) if v.fix is not None), None)
        return self._fix(date) if last else None

    def _fix(self, date: str | None) -> GnssFix | None:
        best = None
        for kind in ("GGA", "GNS", "RMC", "GLL"):
            for k, v in zip(self.kinds, self.verdicts, strict=True):
                if k == kind and v.fix and v.lat is not None and v.lon is not None:
                    best = (kind, v)
            if best:
                break
        if best is None:
            return None
        kind, v = best
        gga = next(
            (x for k, x in zip(self.kinds, self.verdicts, strict=True) if k == "GGA" and x.fix),
            None,
        )
        assert v.lat is not None and v.lon is not None
        return GnssFix(
            self.t_ns,
            v.time or (self.time or ""),
            date,
            v.lat,
            v.lon,
            gga.alt_m if gga else None,
            gga.quality if gga and gga.quality is not None else 1,
            gga.satellites if gga else None,
            gga.hdop if gga else None,
            kind,
        )


def _latlon(msg: object) -> tuple[float | None, float | None]:
    if not getattr(msg, "lat", "") or not getattr(msg, "lon", ""):
        return None, None
    lat, lon = float(msg.latitude), float(msg.longitude)  # type: ignore[attr-defined]
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError("latitude or longitude out of range")
    return lat, lon


def _num(value: object, kind: type) -> object:
    return kind(value) if value not in (None, "") else None


def _gga(msg: object) -> _Verdict:
    quality = int(getattr(msg, "gps_qual", 0) or 0)
    sats = _num(getattr(msg, "num_sats", None), int)
    lat, lon = _latlon(msg)
    v = _Verdict(
        fix=True,
        lat=lat,
        lon=lon,
        alt_m=_num(getattr(msg, "altitude", None), float),  # type: ignore[arg-type]
        quality=quality,
        satellites=sats,  # type: ignore[arg-type]
        hdop=_num(getattr(msg, "horizontal_dil", None), float),  # type: ignore[arg-type]
        time=_time(msg),
    )
    if quality <= 0:
        v.fix, v.no_fix_reason = False, "gga_quality_0"
    elif sats == 0:
        v.fix, v.no_fix_reason = False, "no_satellites"
    elif lat is None:
        v.fix = None
    return v


def _mode_indicator_says_no_fix(msg: object) -> bool:
    mode = str(getattr(msg, "mode_indicator", "") or getattr(msg, "faa_mode", "") or "")
    return bool(mode) and set(mode) <= {"N"}


def _positioned(msg: object, void_reason: str | None) -> _Verdict:
    """RMC, GLL (status A/V, ``void_reason`` when V) and GNS (no status field): a position,
    unless the status or the mode indicator says there is no fix."""
    lat, lon = _latlon(msg)
    v = _Verdict(fix=True, lat=lat, lon=lon, time=_time(msg))
    if void_reason is not None and getattr(msg, "status", "") != "A":
        v.fix, v.no_fix_reason = False, void_reason
    elif _mode_indicator_says_no_fix(msg):
        v.fix, v.no_fix_reason = False, "mode_indicator_n"
    elif lat is None:
        v.fix = None
    return v


def _rmc(msg: object) -> _Verdict:
    return _positioned(msg, "rmc_void")


def _gll(msg: object) -> _Verdict:
    return _positioned(msg, "gll_void")


def _gns(msg: object) -> _Verdict:
    return _positioned(msg, None)


def _gsa(msg: object) -> _Verdict:
    mode = str(getattr(msg, "mode_fix_type", "") or "")
    if mode == "1":
        return _Verdict(fix=False, no_fix_reason="gsa_no_fix")
    return _Verdict(fix=None)


def _vtg(msg: object) -> _Verdict:
    return (
        _Verdict(fix=False, no_fix_reason="mode_indicator_n")
        if _mode_indicator_says_no_fix(msg)
        else _Verdict(fix=None)
    )


_READERS = {"GGA": _gga, "RMC": _rmc, "GLL": _gll, "GNS": _gns, "GSA": _gsa, "VTG": _vtg}
_TIMED = {"GGA", "RMC", "GLL", "GNS"}


def _time(msg: object) -> str:
    ts = getattr(msg, "timestamp", None)
    return ts.isoformat() if ts is not None else ""


def parse_lines(lines: Iterable[bytes], parser: NmeaParser | None = None) -> Iterator[GnssFix]:
    parser = parser or NmeaParser()
    for line in lines:
        fix = parser.feed_line(line)
        if fix is not None:
            yield fix
    last = parser.flush()
    if last is not None:
        yield last


def read_log_lines(path: str | Path, parser: NmeaParser | None = None) -> Iterator[bytes]:
    """Lines of a receiver log; ``#`` comment lines (gpsd's test-log headers) are skipped. A
    line longer than the framer keeps is dropped and counted as ``too_long`` on ``parser``."""
    with open(path, "rb") as fh:
        framer = LineFramer()
        for chunk in iter(lambda: fh.read(65536), b""):
            for line in framer.feed(chunk):
                if not line.startswith(b"#"):
                    yield line
            if parser is not None and framer.overlong:
                parser.rejected["too_long"] += framer.overlong
                framer.overlong = 0
        tail = framer.tail()
        if tail and not tail.startswith(b"#"):
            yield tail
