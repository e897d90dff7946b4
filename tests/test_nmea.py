"""NMEA parsing over the real receiver logs in ../shared/data/nmea-gpsd/ and over a pty."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsight_edge.sensors.nmea import (
    REJECT_REASONS,
    LineFramer,
    NmeaParser,
    parse_lines,
    read_log_lines,
)
from firmware_bridge.sim.gnss import GnssSimulator, nmea_sentence
from firmware_bridge.sim.scenario import generate
from firmware_bridge.transport import SerialTransport
from tests.conftest import ROOT, json_records, run_cli, wait_until

LOGS = ROOT.parent / "shared" / "data" / "nmea-gpsd"
LOG_FILES = sorted(LOGS.glob("*.log")) if LOGS.is_dir() else []
needs_logs = pytest.mark.skipif(not LOG_FILES, reason=f"receiver logs not found in {LOGS}")


@needs_logs
def test_every_shared_log_parses() -> None:
    assert len(LOG_FILES) == 10
    for path in LOG_FILES:
        parser = NmeaParser()
        fixes = list(parse_lines(read_log_lines(path), parser))
        assert parser.sentences > 0, path.name
        assert set(parser.rejected) <= set(REJECT_REASONS)
        for fix in fixes:
            assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180
            assert (fix.lat, fix.lon) != (0.0, 0.0)  # a no-fix sentence never becomes a fix


@needs_logs
def test_cold_boot_garbage_is_counted_by_reason() -> None:
    parser = NmeaParser()
    fixes = list(parse_lines(read_log_lines(LOGS / "gp-320fw-2019-04-07-coldboot.log"), parser))
    assert parser.rejected["checksum"] > 0
    assert parser.rejected["binary"] > 0  # NUL bytes
    assert parser.suspect_dates > 0  # 1999/2006 dates after the rollover
    assert fixes and all(f.receiver_date != "1999-08-22" for f in fixes)


@needs_logs
def test_week_rollover_date_is_not_trusted_but_position_kept() -> None:
    parser = NmeaParser()
    fixes = list(parse_lines(read_log_lines(LOGS / "april6_2019.log"), parser))
    assert len(fixes) == 2 and all(f.receiver_date is None for f in fixes)
    assert fixes[0].lat == pytest.approx(48.4833, abs=1e-3)
    assert parser.suspect_dates == 2


@needs_logs
def test_mixed_talkers() -> None:
    parser = NmeaParser()
    list(parse_lines(read_log_lines(LOGS / "ublox-zed-f9p-nmea.log"), parser))
    assert {"GN", "GP"} <= set(parser.talkers)


def test_no_fix_gga_is_not_a_fix() -> None:
    parser = NmeaParser()
    assert parser.feed_line(nmea_sentence("GPGGA,120000.00,,,,,0,00,99.9,,M,,M,,")) is None
    assert parser.no_fix == 1


def test_specific_rejections() -> None:
    parser = NmeaParser()
    good = nmea_sentence("GPGGA,120000.00,5231.2000,N,01324.3000,E,1,09,0.9,48.0,M,39.0,M,,")
    assert parser.feed_line(good) is not None
    parser.feed_line(good[:-4] + b"00\r\n")  # wrong checksum
    parser.feed_line(b"GPGGA,no,dollar*00")
    parser.feed_line(b"$GPGGA,120000.00,5231.2000,N")  # no checksum
    parser.feed_line(b"$GP\x00GGA*00")
    parser.feed_line(b"$" + b"A" * 200 + b"*00")
    assert dict(parser.rejected) == {
        "checksum": 1,
        "no_start": 1,
        "no_checksum": 1,
        "binary": 1,
        "too_long": 1,
    }


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parser_never_raises(line: bytes) -> None:
    parser = NmeaParser()
    parser.feed_line(line)
    parser.feed_line(b"$" + line)
    parser.feed_line(line.decode("latin-1"))


def test_line_framer_bounds_memory() -> None:
    framer = LineFramer()
    assert framer.feed(b"x" * 10_000) == []
    assert framer.overlong == 1
    assert framer.feed(b"$A*00\r\n") == [b"$A*00"]


def test_nmea_over_a_pty() -> None:
    with GnssSimulator(generate("shopping", 60, seed=1), garbage_rate=0.5) as sim:
        transport = SerialTransport(sim.port, 9600, timeout_s=0.2)
        transport.open()
        parser, framer, fixes = NmeaParser(), LineFramer(), []
        try:

            def pump() -> bool:
                for line in framer.feed(transport.read(512)):
                    fix = parser.feed_line(line)
                    if fix:
                        fixes.append(fix)
                return len(fixes) >= 2

            assert wait_until(pump, timeout_s=6)
        finally:
            transport.close()
    assert abs(fixes[0].lat - 52.52) < 0.1 and fixes[0].quality == 1


@needs_logs
def test_cli_gps_parse_json() -> None:
    path = LOGS / "bu353s4.log"
    res = run_cli("gps", "parse", "--json", str(path))
    assert res.returncode == 0, res.stderr
    rows = json_records(res.stdout)
    fixes, summary = rows[:-1], rows[-1]
    assert {r["type"] for r in fixes} == {"gps_fix"} and summary["type"] == "gps_summary"
    assert len(fixes) == summary["fixes"] == 25
    assert {"lat", "lon", "alt_m", "quality", "satellites", "hdop"} <= set(fixes[0])
    assert summary["sentences"] > summary["fixes"]


def test_cli_gps_parse_missing_file(tmp_path: Path) -> None:
    res = run_cli("gps", "parse", str(tmp_path / "none.log"))
    assert res.returncode == 2 and "file not found" in res.stderr
