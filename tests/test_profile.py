"""Hardware profiles: every shipped one loads; malformed ones are rejected with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

import hw_profiles
from capsight_edge.errors import ProfileError
from capsight_edge.profile import load_profile, profile_as_dict
from tests.conftest import ROOT, json_records, run_cli


@pytest.mark.parametrize("name", ["sim", "dev-laptop", "jetson-orin", "rpi5"])
def test_shipped_profiles_load(name: str) -> None:
    profile = load_profile(hw_profiles.path(name))
    assert profile.name == name
    assert profile.load_cells.count == len(profile.load_cells.counts_per_gram)


def test_sim_simulates_every_device() -> None:
    p = load_profile(hw_profiles.path("sim"))
    assert p.camera.source == "synthetic"
    assert p.mcu.transport == "sim"
    assert p.imu.transport == "sim"
    assert "libx264" in p.encoder.preference


def test_extends_merges_tables_and_replaces_arrays() -> None:
    laptop = load_profile(hw_profiles.path("dev-laptop"))
    sim = load_profile(hw_profiles.path("sim"))
    assert laptop.camera.source == "v4l2"
    assert laptop.mcu == sim.mcu  # inherited whole
    assert laptop.encoder.preference == ["h264_vaapi", "h264_qsv", "libx264"]
    assert laptop.triggers == sim.triggers


def test_data_override(tmp_path: Path) -> None:
    p = load_profile(hw_profiles.path("sim"), data_dir=tmp_path)
    assert p.storage.data_dir == str(tmp_path)


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# (profile text, key path named in the error, words the message must contain)
MALFORMED = [
    ("[camera]\nfps = 'fast'\n", "camera.fps", "a number"),
    ("[camera]\nfps = 0.5\n", "camera.fps", "between 1 and 240"),
    ("[camera]\nsource = 'webcam'\n", "camera.source", "one of 'synthetic', 'v4l2', 'file'"),
    ("[camera]\nresolution = '720p'\n", "camera.resolution", "unknown key"),
    ("[cameras]\nfps = 15\n", "cameras", "unknown key"),
    ("[imu]\naddress = 0x90\n", "imu.address", "between 8 and 119"),
    ("[imu]\nenabled = 'yes'\n", "imu.enabled", "true or false"),
    ("[mcu]\nbaud = 9600.5\n", "mcu.baud", "an integer"),
    ("[load_cells]\ncount = 2\n", "load_cells.counts_per_gram", "one value per cell"),
    ("[load_cells]\nrate_sps = 20\n", "load_cells.rate_sps", "one of 10, 80"),
    (
        "[storage]\nhigh_watermark_pct = 70.0\nlow_watermark_pct = 80.0\n",
        "storage.low_watermark_pct",
        "low < high",
    ),
    ("[storage]\nhigh_watermark_pct = 120\n", "storage.high_watermark_pct", "between 1 and 100"),
    ("[encoder]\npreference = ['h264_nvenc', 'mpeg2']\n", "encoder.preference[1]", "libx264"),
    ("[encoder]\npreference = []\n", "encoder.preference", "at least 1"),
    ("[upload]\nsink_url = 'ftp://x'\n", "upload.sink_url", "matching"),
    ("[[upload.windows]]\nstart = '25:00'\n", "upload.windows[0].start", "HH:MM"),
    (
        "[[upload.windows]]\nstart = '22:00'\nend = '06:00'\n",
        "upload.windows[0].end",
        "cross midnight",
    ),
    ("[model]\nproviders = ['GPU']\n", "model.providers[0]", "CPUExecutionProvider"),
    ("[[triggers]]\nname = 'x'\nwhen = 'hand_motion &'\n", "triggers[0].when", "ends too early"),
    (
        "[[triggers]]\nname = 'x'\nwhen = 'hand_motion & qr'\n",
        "triggers[0].when",
        "unknown signal 'qr'",
    ),
    (
        "[[triggers]]\nname = 'x'\nwhen = 'barcode'\npreroll_s = 0.5\n",
        "triggers[0].preroll_s",
        "keyframe interval",
    ),
    (
        "[[triggers]]\nname = 'a'\nwhen = 'barcode'\n[[triggers]]\nname = 'a'\nwhen = 'bump'\n",
        "triggers[1].name",
        "unique",
    ),
    (
        "[camera]\nsource = 'file'\nreplay_path = 'nope.mp4'\n",
        "camera.replay_path",
        "file not found",
    ),
    ("camera = 3\n", "camera", "a table"),
    ("extends = 'missing.toml'\n", "extends", "file not found"),
]


@pytest.mark.parametrize(
    ("text", "key", "words"), MALFORMED, ids=[m[1] + ":" + m[2][:20] for m in MALFORMED]
)
def test_malformed_profile_is_rejected_naming_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert err.value.key == key
    assert err.value.path == str(path)
    assert words in str(err.value)


def test_invalid_toml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[camera\nfps = 1\n")
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert "not valid TOML" in str(err.value) and "line 1" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="file not found"):
        load_profile(tmp_path / "nope.toml")


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path, "extends = 'b.toml'\n", "a.toml")
    write(tmp_path, "extends = 'a.toml'\n", "b.toml")
    with pytest.raises(ProfileError, match="cycle"):
        load_profile(tmp_path / "a.toml")


def test_effective_settings_have_every_default(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, "name = 'bare'\n"))
    d = profile_as_dict(p)
    assert d["camera"]["width_px"] == 1280
    assert [t["name"] for t in d["triggers"]] == ["scanned_item", "unscanned_item", "empty_hand"]


def test_cli_profile_check_rejects_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    bad = write(tmp_path, "[imu]\naddress = 300\n")
    res = run_cli("profile", "check", str(bad))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert f"{bad}: imu.address: is 300 (out of range) (expected between 8 and 119)" in res.stderr


def test_cli_profile_check_all_shipped_ok() -> None:
    files = [str(hw_profiles.path(n)) for n in hw_profiles.names()]
    res = run_cli("profile", "check", *files)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(": ok") == len(files)


def test_cli_profile_check_json(tmp_path: Path) -> None:
    bad = write(tmp_path, "[camera]\nfps = 'x'\n")
    res = run_cli("profile", "check", "--json", str(bad), str(ROOT / "hw_profiles/sim.toml"))
    assert res.returncode == 2
    rows = json_records(res.stdout)
    assert rows[0]["ok"] is False and rows[0]["key"] == "camera.fps"
    assert rows[1]["ok"] is True


def test_cli_profile_missing_file_exit_2(tmp_path: Path) -> None:
    res = run_cli("doctor", "--profile", str(tmp_path / "none.toml"))
    assert res.returncode == 2
    assert "file not found" in res.stderr and "Traceback" not in res.stderr


def test_env_var_selects_profile(tmp_path: Path) -> None:
    custom = write(
        tmp_path, "name = 'from-env'\nextends = '" + str(ROOT / "hw_profiles/sim.toml") + "'\n"
    )
    res = run_cli("profile", "show", "--json", env={"CAPSIGHT_PROFILE": str(custom)})
    assert res.returncode == 0, res.stderr
    (record,) = json_records(res.stdout)
    assert record["type"] == "profile" and record["profile"]["name"] == "from-env"


@pytest.mark.parametrize("name", ["sim", "dev-laptop", "jetson-orin", "rpi5"])
def test_profile_show_is_toml_that_checks_again(tmp_path: Path, name: str) -> None:
    res = run_cli("profile", "show", "--profile", str(hw_profiles.path(name)))
    assert res.returncode == 0, res.stderr
    assert "True" not in res.stdout and "{" not in res.stdout
    shown = tmp_path / "shown.toml"
    shown.write_text(res.stdout)
    check = run_cli("profile", "check", str(shown))
    assert check.returncode == 0, check.stderr
    again = profile_as_dict(load_profile(shown))
    first = profile_as_dict(load_profile(hw_profiles.path(name)))
    assert {k: v for k, v in again.items()} == first


def test_a_deeply_nested_profile_is_a_clean_error(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    res = run_cli("profile", "check", str(deep))
    assert res.returncode == 2 and "nested too deeply" in res.stderr
    assert "Traceback" not in res.stderr


def test_the_simulated_shoppers_habits_come_from_the_profile(tmp_path: Path) -> None:
    from capsight_edge.devices.sim import SimFactory

    def shopper(sim: str) -> tuple[int, int]:
        path = tmp_path / "p.toml"
        path.write_text(f'extends = "{hw_profiles.path("sim")}"\n\n[sim]\n{sim}')
        sc = SimFactory(load_profile(path), seed=3, duration_s=1800).scenario
        return len(sc.waves), len(sc.items)

    waves, items = shopper("")
    more_waves, fewer_items = shopper("empty_hand_rate = 0.45\n")
    assert more_waves > 2 * waves and fewer_items < items  # a hand that puts nothing in
    assert shopper("empty_hand_rate = 0\n")[0] == 0
    assert shopper("item_every_s = 1.0\n")[1] > items
    with pytest.raises(ProfileError, match="empty_hand_rate"):
        shopper("empty_hand_rate = 1.5\n")
