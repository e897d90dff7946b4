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
    assert parser.corrected_dates > 0  # 1999 dates after the rollover, 1024 weeks behind
    assert fixes and all(f.receiver_date in (None, "2019-04-07") for f in fixes)
    assert parser.no_fix_reasons["gga_quality_0"] > 0 and parser.no_fix_reasons["rmc_void"] > 0


@needs_logs
def test_week_rollover_date_is_corrected_and_garbage_date_not_trusted() -> None:
    parser = NmeaParser()
    fixes = list(parse_lines(read_log_lines(LOGS / "april6_2019.log"), parser))
    assert len(fixes) == 2
    assert fixes[0].receiver_date is None  # "2208-1": no date at all
    assert fixes[1].receiver_date == "2019-04-07"  # 22 Aug 1999 + 1024 weeks
    assert fixes[0].lat == pytest.approx(48.4833, abs=1e-3)
    assert parser.suspect_dates == 1 and parser.corrected_dates == 1


def gpsd_positions(chk: Path) -> set[tuple[float, float]]:
    """The distinct positions (1e-5 degrees) gpsd reports with a 2D or 3D fix."""
    import json

    out = set()
    for line in chk.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            if r.get("class") == "TPV" and r.get("mode", 0) >= 2 and "lat" in r:
                out.add((round(r["lat"], 5), round(r["lon"], 5)))
    return out


@needs_logs
def test_fixes_agree_with_gpsd_on_every_real_log() -> None:
    """Scored the way the issue scores gpsd's positions: recall and precision per log and over
    all logs (targets 0.99 and 0.98; every log passes at 1.0 today)."""
    tp = fp = fn = 0
    for path in LOG_FILES:
        expected = gpsd_positions(LOGS / "expected" / f"{path.name}.chk")
        got = {(round(f.lat, 5), round(f.lon, 5)) for f in parse_lines(read_log_lines(path))}
        tp, fp, fn = tp + len(got & expected), fp + len(got - expected), fn + len(expected - got)
        assert not got - expected, f"{path.name}: fixes gpsd does not report: {got - expected}"
        assert not expected - got, f"{path.name}: gpsd's fixes we miss: {expected - got}"
    assert tp / (tp + fp) >= 0.98 and tp / (tp + fn) >= 0.99


def feed(*bodies: str) -> tuple[NmeaParser, list]:
    parser = NmeaParser()
    fixes = list(parse_lines([nmea_sentence(b) for b in bodies], parser))
    return parser, fixes


GGA = "GPGGA,{t},5231.2000,N,01324.3000,E,{q},{n},0.9,48.0,M,39.0,M,,"
RMC = "GPRMC,{t},{s},5231.2000,N,01324.3000,E,0.1,0.0,040426,,,{m}"


def test_a_cycle_with_any_no_fix_sentence_is_no_fix() -> None:
    cycles = [
        (GGA.format(t="120000.00", q=1, n="08"), RMC.format(t="120000.00", s="A", m="A")),
        (GGA.format(t="120001.00", q=1, n="00"), RMC.format(t="120001.00", s="A", m="A")),
        (GGA.format(t="120002.00", q=1, n="08"), RMC.format(t="120002.00", s="V", m="A")),
        (GGA.format(t="120003.00", q=1, n="08"), RMC.format(t="120003.00", s="A", m="N")),
        (GGA.format(t="120004.00", q=1, n="08"), "GPGSA,A,1,,,,,,,,,,,,,99.0,99.0,99.0"),
        (GGA.format(t="120005.00", q=1, n="08"), RMC.format(t="120005.00", s="A", m="A")),
    ]
    parser, fixes = feed(*(b for c in cycles for b in c))
    assert [f.receiver_time[:8] for f in fixes] == ["12:00:00", "12:00:05"]
    assert dict(parser.no_fix_reasons) == {
        "no_satellites": 1,
        "rmc_void": 1,
        "mode_indicator_n": 1,
        "gsa_no_fix": 1,
    }


def test_the_last_fix_of_a_stream_is_reported_and_rmc_alone_is_enough() -> None:
    _, fixes = feed(
        GGA.format(t="120001.00", q=1, n="08"),
        RMC.format(t="120001.00", s="A", m="A"),
        GGA.format(t="120002.00", q=1, n="08"),
        RMC.format(t="120002.00", s="A", m="A"),
        RMC.format(t="120003.00", s="A", m="D"),  # the GGA of the last second was lost
    )
    assert [f.receiver_time[:8] for f in fixes] == ["12:00:01", "12:00:02", "12:00:03"]
    assert fixes[-1].source == "RMC" and fixes[-1].receiver_date == "2026-04-04"


def test_a_fix_is_reported_at_the_end_of_its_cycle_not_a_second_later() -> None:
    parser = NmeaParser()
    out = []
    for t in ("120001.00", "120002.00", "120003.00"):
        out.append(parser.feed_line(nmea_sentence(GGA.format(t=t, q=1, n="08"))))
        out.append(parser.feed_line(nmea_sentence(RMC.format(t=t, s="A", m="A"))))
    # the cycle ends with RMC (learned when the time first changed): reported at the RMC
    assert out[-1] is not None and out[-1].receiver_time.startswith("12:00:03")


def test_cli_counts_a_ten_megabyte_line_and_binary_junk(tmp_path: Path) -> None:
    path = tmp_path / "junk.log"
    good = nmea_sentence(GGA.format(t="120001.00", q=1, n="08"))
    path.write_bytes(good + b"$" + b"A" * 10_000_000 + b"\r\n" + bytes(range(256)) * 50 + b"\n")
    res = run_cli("gps", "parse", "--json", str(path))
    assert res.returncode == 0, res.stderr
    summary = json_records(res.stdout)[-1]
    assert summary["fixes"] == 1
    assert summary["rejected"]["too_long"] == 1 and summary["rejected"]["binary"] > 0
    assert "Traceback" not in res.stderr


@needs_logs
def test_mixed_talkers() -> None:
    parser = NmeaParser()
    list(parse_lines(read_log_lines(LOGS / "ublox-zed-f9p-nmea.log"), parser))
    assert {"GN", "GP"} <= set(parser.talkers)


def test_no_fix_gga_is_not_a_fix() -> None:
    parser = NmeaParser()
    assert parser.feed_line(nmea_sentence("GPGGA,120000.00,,,,,0,00,99.9,,M,,M,,")) is None
    assert parser.flush() is None
    assert parser.no_fix == 1 and parser.no_fix_reasons["gga_quality_0"] == 1


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
    assert framer.feed(b"rest of the long line\n$A*00\r\n") == [b"$A*00"]
    assert framer.overlong == 1  # one long line is counted once


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
