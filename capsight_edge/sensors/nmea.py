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
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_LINE = 120  # NMEA allows 82 characters; proprietary sentences run a little longer
_CHECKSUM = re.compile(r"\*([0-9A-Fa-f]{2})\s*$")
#: Why a line was rejected (keys of NmeaParser.rejected).
REJECT_REASONS = ("binary", "no_start", "too_long", "no_checksum", "checksum", "parse", "bad_value")
#: Earliest plausible receiver date; older dates are a week-rollover bug (or no date at all).
MIN_PLAUSIBLE_DATE = dt.date(2000, 1, 1)


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
    """Bytes from a serial port in, complete lines out; an endless line is cut and counted."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.overlong = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                break
            lines.append(bytes(self._buf[:i]).rstrip(b"\r"))
            del self._buf[: i + 1]
        if len(self._buf) > 4 * MAX_LINE:
            self.overlong += 1
            self._buf.clear()
        return lines


class NmeaParser:
    """Feed lines (bytes or str); get :class:`GnssFix` objects. Never raises."""

    def __init__(self) -> None:
        self.sentences = 0
        self.fixes = 0
        self.no_fix = 0
        self.other = 0
        self.suspect_dates = 0
        self.rejected: Counter[str] = Counter()
        self.talkers: Counter[str] = Counter()
        self._date: str | None = None
        self._gga_seen = False

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
        if kind == "RMC":
            return self._rmc(msg, t_ns)
        if kind == "GGA":
            self._gga_seen = True
            return self._gga(msg, t_ns)
        self.other += 1
        return None

    def _rmc(self, msg: object, t_ns: int | None) -> GnssFix | None:
        data = getattr(msg, "data", None) or []
        if len(data) > 8 and data[8]:
            try:
                raw_date: dt.date | None = msg.datestamp  # type: ignore[attr-defined]
            except (ValueError, TypeError):
                raw_date = None
            if not isinstance(raw_date, dt.date):
                raw_date = None  # pynmea2 hands back the raw text of "2208-1" (week rollover)
            if raw_date is None or raw_date < MIN_PLAUSIBLE_DATE:
                self.suspect_dates += 1
                self._date = None
            else:
                self._date = raw_date.isoformat()
        if getattr(msg, "status", "") != "A":
            self.no_fix += 1
            return None
        if self._gga_seen:
            return None
        lat, lon = self._latlon(msg)
        if lat is None or lon is None:
            return None
        self.fixes += 1
        return GnssFix(t_ns, _time(msg), self._date, lat, lon, None, 1, None, None, "RMC")

    def _gga(self, msg: object, t_ns: int | None) -> GnssFix | None:
        quality = int(getattr(msg, "gps_qual", 0) or 0)
        if quality <= 0:
            self.no_fix += 1
            return None
        lat, lon = self._latlon(msg)
        if lat is None or lon is None:
            return None
        alt = getattr(msg, "altitude", None)
        sats = getattr(msg, "num_sats", None)
        hdop = getattr(msg, "horizontal_dil", None)
        self.fixes += 1
        return GnssFix(
            t_ns,
            _time(msg),
            self._date,
            lat,
            lon,
            float(alt) if alt not in (None, "") else None,
            quality,
            int(sats) if sats not in (None, "") else None,
            float(hdop) if hdop not in (None, "") else None,
            "GGA",
        )

    def _latlon(self, msg: object) -> tuple[float | None, float | None]:
        if not getattr(msg, "lat", "") or not getattr(msg, "lon", ""):
            self.rejected["bad_value"] += 1
            return None, None
        lat, lon = float(msg.latitude), float(msg.longitude)  # type: ignore[attr-defined]
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            self.rejected["bad_value"] += 1
            return None, None
        return lat, lon

    def summary(self) -> dict[str, object]:
        return {
            "sentences": self.sentences,
            "fixes": self.fixes,
            "no_fix": self.no_fix,
            "other_sentences": self.other,
            "suspect_dates": self.suspect_dates,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "talkers": dict(self.talkers),
        }


def _time(msg: object) -> str:
    ts = getattr(msg, "timestamp", None)
    return ts.isoformat() if ts is not None else ""


def parse_lines(lines: Iterable[bytes], parser: NmeaParser | None = None) -> Iterator[GnssFix]:
    parser = parser or NmeaParser()
    for line in lines:
        fix = parser.feed_line(line)
        if fix is not None:
            yield fix


def read_log_lines(path: str | Path) -> Iterator[bytes]:
    """Lines of a receiver log; ``#`` comment lines (gpsd's test-log headers) are skipped."""
    with open(path, "rb") as fh:
        framer = LineFramer()
        for chunk in iter(lambda: fh.read(65536), b""):
            for line in framer.feed(chunk):
                if not line.startswith(b"#"):
                    yield line
        tail = bytes(framer._buf).rstrip(b"\r")
        if tail and not tail.startswith(b"#"):
            yield tail
