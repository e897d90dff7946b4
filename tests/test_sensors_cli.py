"""The field technician's sensor commands, run as real processes on the sim profile."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SIM, doctor_checks, json_records, run_cli


def test_tare_then_calibrate_persists(tmp_path: Path) -> None:
    res = run_cli("scale", "tare", "--data", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    (tare,) = json_records(res.stdout)
    zero = tare["zero_counts"]
    assert tare["type"] == "calibration" and tare["action"] == "tare"
    assert len(zero) == 4
    res = run_cli("scale", "calibrate", "--known-grams", "1000", "--data", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    (cal,) = json_records(res.stdout)
    # The simulated cells average 10 counts/g at the centre of the platform.
    assert abs(sum(cal["counts_per_gram"]) / 4 - 10.0) < 0.3
    stored = json.loads((tmp_path / "calibration.json").read_text())
    assert stored["counts_per_gram"] == cal["counts_per_gram"]
    assert [h["action"] for h in stored["history"]] == ["tare", "scale"]


def test_calibrate_rejects_nonpositive_weight(tmp_path: Path) -> None:
    res = run_cli("scale", "calibrate", "--known-grams", "0", "--data", str(tmp_path))
    assert res.returncode == 2 and "positive" in res.stderr


def test_watch_json_reports_readings(tmp_path: Path) -> None:
    res = run_cli(
        "sensors", "watch", "--json", "--duration", "5", "--interval", "1", "--data", str(tmp_path)
    )
    assert res.returncode == 0, res.stderr
    snaps = json_records(res.stdout)
    assert len(snaps) >= 2
    live = [s for s in snaps if s["link"]["state"] == "up" and s["weight_samples"] > 50]
    assert live, snaps[-1]
    assert "imu" in live[-1] and "uwb" in live[-1]


def test_watch_human_output(tmp_path: Path) -> None:
    res = run_cli("sensors", "watch", "--duration", "4", "--interval", "1", "--data", str(tmp_path))
    assert res.returncode == 0
    assert "weight" in res.stdout and "link     up" in res.stdout, res.stdout + res.stderr


def test_doctor_checks_mcu_and_i2c(tmp_path: Path) -> None:
    res = run_cli("doctor", "--json", "--only", "mcu", "--only", "imu", "--data", str(tmp_path))
    assert res.returncode == 0, res.stdout
    checks = {c["name"]: c for c in doctor_checks(res.stdout)}
    assert (
        checks["mcu link"]["status"] == "pass" and "firmware 1.4.2" in checks["mcu link"]["detail"]
    )
    assert checks["mcu frames"]["status"] == "pass"
    assert checks["imu"]["status"] == "pass"


def test_doctor_reports_missing_mcu_port_and_i2c_address(tmp_path: Path) -> None:
    prof = tmp_path / "real.toml"
    prof.write_text(
        f"extends = '{SIM}'\n[mcu]\ntransport = 'serial'\nport = "
        f"'{tmp_path}/ttyACM9'\n[imu]\naddress = 0x69\n"
    )
    res = run_cli(
        "doctor",
        "--json",
        "--profile",
        str(prof),
        "--only",
        "mcu",
        "--only",
        "imu",
        "--data",
        str(tmp_path),
    )
    assert res.returncode == 1
    checks = {c["name"]: c for c in doctor_checks(res.stdout)}
    assert (
        checks["mcu link"]["status"] == "fail" and "does not exist" in checks["mcu link"]["detail"]
    )
    # The simulated bus has its chip at 0x68 only: 0x69 does not acknowledge.
    assert checks["imu"]["status"] == "fail" and "no acknowledge" in checks["imu"]["detail"]


def test_calibrate_refuses_a_cell_the_cart_does_not_have_before_asking_for_weight(
    tmp_path: Path,
) -> None:
    res = run_cli(
        "scale", "calibrate", "--known-grams", "500", "--cell", "7", "--data", str(tmp_path)
    )
    assert res.returncode == 2 and "cells 0 to 3" in res.stderr
    assert "Place" not in res.stderr + res.stdout and not (tmp_path / "calibration.json").exists()
