"""The trigger engine on scripted signals, and the whole decision path on scripted scenes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks.trigger_eval import simulate
from capsight_edge.errors import ProfileError
from capsight_edge.profile import load_profile
from capsight_edge.profile.schema import TriggerRule
from capsight_edge.scene.catalogue import Catalogue
from capsight_edge.triggers.engine import TriggerEngine
from tests.camera_helpers import scripted
from tests.conftest import SIM

S = 1_000_000_000
SCANNED = TriggerRule(
    name="scanned_item",
    when="hand_motion & barcode",
    priority=2,
    preroll_s=3,
    postroll_s=2,
    cooldown_s=5,
)
UNSCANNED = TriggerRule(
    name="unscanned_item",
    when="weight_delta & !barcode[3s]",
    priority=3,
    preroll_s=3,
    postroll_s=2,
    cooldown_s=5,
    confirm_s=0.5,
)


def run(
    engine: TriggerEngine,
    events: list[tuple[float, str, bool]],
    until_s: float,
    step_s: float = 0.05,
) -> list[tuple[float, str, str]]:
    out = []
    events = sorted(events)
    t = 0.0
    while t <= until_s:
        while events and events[0][0] <= t:
            at, name, active = events.pop(0)
            out += [
                (round(d.t_ns / S, 2), d.kind, d.rule)
                for d in engine.signal(name, int(at * S), active)
            ]
        out += [(round(d.t_ns / S, 2), d.kind, d.rule) for d in engine.tick(int(t * S))]
        t = round(t + step_s, 6)
    return out


def test_scanned_then_placed_fires_only_the_scanned_rule() -> None:
    e = TriggerEngine([SCANNED, UNSCANNED])
    out = run(
        e,
        [
            (1.0, "hand_motion", True),
            (1.3, "barcode", True),
            (2.6, "weight_delta", True),
            (3.0, "hand_motion", False),
        ],
        10,
    )
    assert [k for k in out if k[1] == "fire"] == [(1.3, "fire", "scanned_item")]
    end = next(d for d in e.decisions if d.kind == "end")
    assert end.clip_start_ns == int(1.3 * S) - 3 * S
    assert end.clip_end_ns >= int(2.3 * S) + 2 * S - int(0.05 * S)


def test_unscanned_fires_after_confirmation() -> None:
    e = TriggerEngine([SCANNED, UNSCANNED])
    out = run(e, [(5.0, "weight_delta", True)], 10)
    fire = [k for k in out if k[1] == "fire"]
    assert fire == [(5.5, "fire", "unscanned_item")]
    decision = next(d for d in e.decisions if d.kind == "fire")
    assert decision.signals == {"barcode": False, "weight_delta": True}
    assert decision.clip_start_ns == 2 * S  # pre-roll counts from when it became true


def test_late_barcode_cancels_the_unscanned_rule() -> None:
    e = TriggerEngine([UNSCANNED])
    out = run(e, [(5.0, "weight_delta", True), (5.2, "barcode", True)], 8)
    assert ("fire", "unscanned_item") not in [(k[1], k[2]) for k in out]
    assert (5.2, "cancelled", "unscanned_item") in out


def test_hand_without_barcode_and_bumps_fire_nothing() -> None:
    e = TriggerEngine([SCANNED, UNSCANNED])
    out = run(
        e,
        [
            (1.0, "hand_motion", True),
            (2.5, "hand_motion", False),
            (4.0, "bump", True),
            (4.2, "unstable", True),
            (4.8, "unstable", False),
        ],
        8,
    )
    assert out == []


def test_cooldown_suppresses_and_max_length_ends() -> None:
    rule = dataclasses.replace(SCANNED, max_length_s=2.0, cooldown_s=3.0)
    e = TriggerEngine([rule])
    events = [(0.5, "hand_motion", True)] + [(0.5 + 0.2 * i, "barcode", True) for i in range(40)]
    out = run(e, events, 9)
    kinds = [(k[1], k[2]) for k in out]
    assert kinds[:3] == [
        ("fire", "scanned_item"),
        ("end", "scanned_item"),
        ("suppressed", "scanned_item"),
    ]
    end = next(d for d in e.decisions if d.kind == "end")
    assert end.reason == "max_length" and end.clip_end_ns - end.t_ns <= 0
    assert [k for k in out if k[1] == "fire"][1][0] >= 2.5 + 3.0  # fires again after cooldown


def test_manual_trigger() -> None:
    e = TriggerEngine(
        [TriggerRule(name="manual", when="manual", priority=5, preroll_s=5, postroll_s=5)]
    )
    out = run(e, [(2.0, "manual", True)], 4)
    assert out[0] == (2.0, "fire", "manual")


def test_invalid_rule_names_the_rule() -> None:
    bad = dataclasses.replace(SCANNED, name="broken", when="barcode &")
    with pytest.raises(ProfileError, match=r"triggers\[0\]\.when: rule .broken."):
        TriggerEngine([bad])


def test_invalid_rule_in_a_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f"extends = '{SIM}'\n[[triggers]]\nname = 'x'\nwhen = 'barcode[2h]'\n")
    with pytest.raises(ProfileError, match=r"triggers\[0\]\.when"):
        load_profile(path)


# -- the real detectors on scripted scenes, in simulated time ------------------------------------
CAT = Catalogue(10, seed=1)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("scanned", {"scanned_item"}),
        ("unscanned", {"unscanned_item"}),
        ("wave", {"empty_hand"}),  # a hand that left nothing: "no product" with a hand
        ("bump", set()),
    ],
)
def test_scripted_scenarios(kind: str, expected: set[str]) -> None:
    profile = load_profile(SIM)
    result = simulate(profile, scripted(kind, CAT), CAT, fps=30, clean=True, seed=1)
    fired = {d.rule for d in result.decisions if d.kind == "fire"}
    assert fired == expected, [(d.kind, d.rule, d.signals) for d in result.decisions]


def test_trigger_follows_a_readable_barcode_quickly() -> None:
    profile = load_profile(SIM)
    result = simulate(profile, scripted("scanned", CAT), CAT, fps=30, clean=True, seed=1)
    readable = result.first_readable_s[0]
    fire = result.fired("scanned_item")[0].t_ns / S
    assert fire - readable <= 0.2  # (a decoder may read it before the truth calls it readable)


def test_recorded_clip_of_a_scan_fires_through_the_real_detectors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A scanned item recorded to H.264, replayed: the detectors work on decoded video too."""
    from capsight_edge.camera.sources import FileReplaySource
    from capsight_edge.collector import Collector
    from capsight_edge.devices.render import SceneRenderer
    from tests.camera_helpers import record_clip

    scenario = scripted("scanned", CAT)
    clip = record_clip(
        tmp_path / "scan.mp4",
        SceneRenderer(scenario, CAT, clean=True),
        6.0,
        fps=30,
        size=(1280, 720),
    )
    source = FileReplaySource(str(clip), realtime=False)
    source.open()
    collector = Collector(load_profile(SIM))
    i = 0
    while (frame := source.read()) is not None:
        collector.process(frame.image, int(i / 30 * 1e9))
        i += 1
    source.close()
    assert i == 180
    assert collector.stats["barcodes"] >= 1
    assert [d.rule for d in collector.engine.decisions if d.kind == "fire"] == ["scanned_item"]


def test_profile_chooses_the_barcode_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from capsight_edge.collector import Collector

    path = tmp_path / "z.toml"
    path.write_text(f"extends = '{SIM}'\n[camera]\nbarcode_backend = 'zxing-cpp'\n")
    assert Collector(load_profile(path)).barcodes.backend.name == "zxing-cpp"
    assert Collector(load_profile(SIM)).barcodes.backend.name == "cascade"
    path.write_text(f"extends = '{SIM}'\n[camera]\nbarcode_formats = ['EAN-13', 'QRCode']\n")
    assert Collector(load_profile(path)).barcodes.backend.formats == ("EAN-13", "QRCode")  # type: ignore[attr-defined]
    path.write_text(f"extends = '{SIM}'\n[camera]\nbarcode_formats = ['Aztec']\n")
    with pytest.raises(ProfileError, match="Aztec"):
        load_profile(path)


def test_a_weight_mismatch_fires_its_rule() -> None:
    from capsight_edge.triggers.weightcheck import DeclaredWeightCheck

    rule = TriggerRule(name="wrong_weight", when="weight_mismatch", priority=3, preroll_s=3)
    e = TriggerEngine([rule])
    check = DeclaredWeightCheck()
    # a DataBar Expanded label states 500 g (AI 3103 000500); the basket gains 650 g
    assert check.read(int(4.0 * S), 0.500, "09506000134352") is None
    verdict = check.weighed(int(5.0 * S), 650.0)
    assert verdict is not None and verdict.mismatch
    out = run(e, [(verdict.t_ns / S, "weight_mismatch", True)], 8)
    assert [k for k in out if k[1] == "fire"] == [(5.0, "fire", "wrong_weight")]
