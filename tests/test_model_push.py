"""Model push through the real registry: the ML team signs root and targets offline
(`capsight-train keygen`, `registry-init`, `publish`), the sink signs rollout, snapshot and
timestamp online (`capsight-sink model keygen`, `promote`, `rollback`) and serves them over
HTTP, and a real `ModelRuntime` pulls, verifies (python-tuf), loads, self-tests and swaps. Every
attack is refused with a reason while the running model keeps serving."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from benchmarks.push import LABELS, make_recogniser
from capsight_edge.errors import ModelRejected
from capsight_edge.runtime.card import card_path
from capsight_edge.runtime.models import Health, ModelRuntime
from tests.conftest import ROOT
from tests.sink_helpers import Sink
from trainer.publish import golden_path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=180, cwd=ROOT
    )


@dataclass
class Push:
    data: Path
    sink: Sink
    token: str
    key: Path
    root: Path
    models: dict[str, Path]

    def publish(self, version: str) -> None:
        m = self.models[version]
        res = cli(
            "-m",
            "trainer.cli",
            "publish",
            "--model",
            str(m),
            "--eval",
            str(m.with_name("eval.json")),
            "--registry",
            str(self.data / "registry"),
            "--key",
            str(self.key),
        )
        assert res.returncode == 0, res.stderr

    def promote(self, channel: str, version: str, pct: int = 100) -> None:
        res = cli(
            "-m",
            "cloud_sink.cli",
            "model",
            "promote",
            channel,
            "recogniser",
            version,
            "--rollout",
            str(pct),
            "--by",
            "test",
            "--data",
            str(self.data),
        )
        assert res.returncode == 0, res.stderr

    def sink_audit(self) -> list[dict]:  # type: ignore[type-arg]
        path = self.data / "registry" / "audit.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()]

    def cart_profile(self, folder: Path, upload: str = "") -> Path:
        """A simulated cart named cart-1 with its token, following this registry (poll_s 5);
        ``upload``: more of its ``[upload]`` table."""
        from tests.conftest import SIM

        token_file = folder / "cart.token"
        token_file.write_text(self.token)
        profile = folder / "cart.toml"
        profile.write_text(
            f"extends = '{SIM}'\n[device]\nid = 'cart-1'\n"
            f"[upload]\ntoken_file = '{token_file}'\n{upload}"
            f"[model]\nregistry_url = '{self.sink.url}'\ntrust_root = '{self.root}'\npoll_s = 5\n"
        )
        return profile

    def runtime(self, cart: Path, device: str = "cart-1", **kw: object) -> ModelRuntime:
        return ModelRuntime(
            cart,
            device_id=device,
            registry_url=self.sink.url,
            trust_root=self.root,
            channel=kw.pop("channel", "stable"),
            token=self.token,
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {
        "1": make_recogniser(base / "v1", "1", 1),
        "2": make_recogniser(base / "v2", "2", 2),
        "nan": make_recogniser(base / "nan", "nan", 3, nan=True),
        "dead": make_recogniser(base / "dead", "dead", 4, dead=True),
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Push:
    """A sink (not started) with cart-1's token and a registry: the sink's online key, the ML
    team's key and the root it signed, recogniser 1 published and on stable. Made once (its
    commands take seconds); each test starts a sink on its own copy (``push``)."""
    base = tmp_path_factory.mktemp("push")
    data = base / "sink"
    sink = Sink(data)
    token = sink.add_device("cart-1")
    res = cli("-m", "cloud_sink.cli", "model", "keygen", "--data", str(data))
    assert res.returncode == 0, res.stderr
    key = base / "ml-team.key"
    res = cli("-m", "trainer.cli", "keygen", "--out", str(key))
    assert res.returncode == 0, res.stderr
    res = cli(
        "-m",
        "trainer.cli",
        "registry-init",
        "--registry",
        str(data / "registry"),
        "--key",
        str(key),
        "--online-key",
        str(data / "registry" / "online.pub.json"),
    )
    assert res.returncode == 0, res.stderr
    root = base / "trusted-root.json"
    shutil.copyfile(data / "registry" / "metadata" / "1.root.json", root)
    p = Push(data, sink, token, key, root, models)
    p.publish("1")
    p.promote("stable", "1")
    return p


@pytest.fixture
def push(tmp_path: Path, template: Push):  # type: ignore[no-untyped-def]
    """A copy of the template's sink, registry and keys, its sink running."""
    shutil.copytree(template.data, tmp_path / "sink")
    key, root = tmp_path / template.key.name, tmp_path / template.root.name
    shutil.copyfile(template.key, key)
    shutil.copyfile(template.root, root)
    sink = Sink(tmp_path / "sink").start()
    try:
        yield Push(tmp_path / "sink", sink, template.token, key, root, template.models)
    finally:
        sink.stop()


def test_a_model_goes_from_publish_to_a_running_cart_and_survives_a_reboot(
    push: Push, tmp_path: Path
) -> None:
    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    assert rt.version == "recogniser:1"
    assert rt.current and rt.current["providers"] == ["CPUExecutionProvider"]
    frame = np.zeros((360, 640, 3), np.uint8)
    (label, score, box) = rt.predict([frame])[0]
    assert label in LABELS and 0 <= score <= 1 and len(box) == 4
    assert rt.pull().status == "current"
    # A reboot: the last good model loads from disk, with no registry at all.
    again = ModelRuntime(tmp_path / "cart", device_id="cart-1")
    assert again.version == "recogniser:1"
    # A new model on the channel, then a signed rollback to the old one.
    push.publish("2")
    push.promote("stable", "2")
    assert rt.pull().status == "updated" and rt.version == "recogniser:2"
    res = cli(
        "-m", "cloud_sink.cli", "model", "rollback", "stable", "--data", str(push.data), "--json"
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["version"] == "1"
    assert rt.pull().status == "updated" and rt.version == "recogniser:1"
    audit = [
        json.loads(x) for x in (push.data / "registry" / "audit.jsonl").read_text().splitlines()
    ]
    assert [a["action"] for a in audit] == ["promote", "promote", "promote", "rollback"]
    ls = cli("-m", "cloud_sink.cli", "model", "ls", "--data", str(push.data), "--json")
    kinds = [json.loads(x)["type"] for x in ls.stdout.splitlines()]
    assert kinds.count("published_model") == 2 and kinds.count("model_channel") == 2


def test_a_staged_rollout_reaches_the_share_of_the_fleet_it_names(
    push: Push, tmp_path: Path
) -> None:
    from capsight_edge.runtime.trust import bucket

    push.publish("2")
    push.promote("canary", "2", pct=50)
    devices = [f"cart-{i:03d}" for i in range(40)]
    inside = [d for d in devices if bucket(d) < 50]
    assert 0 < len(inside) < len(devices)
    for d in devices[:6]:
        rt = push.runtime(tmp_path / d, device=d, channel="canary")
        status = rt.pull().status
        assert status == ("updated" if bucket(d) < 50 else "not_in_rollout")


def tamper(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def attack_model_bytes(push: Push) -> str:
    f = push.data / "registry" / "targets" / "models" / "recogniser" / "2" / "model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    return "LengthOrHashMismatch"


def attack_longer_download(push: Push) -> str:
    f = push.data / "registry" / "targets" / "models" / "recogniser" / "2" / "model.onnx"
    f.write_bytes(f.read_bytes() + b"\0" * 1_000_000)
    return "Length"


def attack_truncated_download(push: Push) -> str:
    f = push.data / "registry" / "targets" / "models" / "recogniser" / "2" / "model.onnx"
    f.write_bytes(f.read_bytes()[:1000])
    return "Length"


def attack_unsigned_targets(push: Push) -> str:
    def change(d: dict) -> None:  # type: ignore[type-arg]
        for target in d["signed"]["targets"].values():
            target["length"] += 1  # the same version, changed without the ML team's key

    tamper(push.data / "registry" / "metadata" / "targets.json", change)
    return "Unsigned"


def attack_untrusted_key(push: Push) -> str:
    from capsight_edge.runtime.trust import generate_key
    from trainer.publish import publish

    other = push.key.with_name("intruder.key")
    generate_key(other)
    m = push.models["2"]
    with pytest.raises(ValueError, match="not the key the registry's root trusts"):
        publish(m, m.with_name("eval.json"), push.data / "registry", other)
    # Force it: sign targets with the intruder's key anyway.
    from tuf.api.metadata import Metadata

    from capsight_edge.runtime.trust import load_signer

    path = push.data / "registry" / "metadata" / "targets.json"
    md = Metadata.from_file(str(path))
    md.signed.version += 1
    md.signatures.clear()
    md.sign(load_signer(other))
    path.write_bytes(md.to_bytes())
    return "Unsigned"


def attack_expired_timestamp(push: Push) -> str:
    from datetime import UTC, datetime, timedelta

    from tuf.api.metadata import Metadata

    from capsight_edge.runtime.trust import load_signer

    reg = push.data / "registry"
    signer = load_signer(reg / "online.json")
    push.sink.stop()
    (reg / "online.json").rename(reg / "online.away")  # nobody re-signs it
    path = reg / "metadata" / "timestamp.json"
    md = Metadata.from_file(str(path))
    md.signed.version += 1
    md.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    md.signatures.clear()
    md.sign(signer)
    path.write_bytes(md.to_bytes())
    push.sink.start()
    return "Expired"


@pytest.mark.parametrize(
    "attack",
    [
        attack_model_bytes,
        attack_longer_download,
        attack_truncated_download,
        attack_unsigned_targets,
        attack_untrusted_key,
        attack_expired_timestamp,
    ],
)
def test_attacks_are_refused_and_the_running_model_keeps_serving(
    push: Push, tmp_path: Path, attack
) -> None:  # type: ignore[no-untyped-def]
    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    push.publish("2")
    push.promote("stable", "2")
    says = attack(push)
    with pytest.raises(ModelRejected) as err:
        rt.pull()
    assert says.lower() in str(err.value).lower(), str(err.value)
    assert rt.version == "recogniser:1"
    assert rt.predict([np.zeros((360, 640, 3), np.uint8)])


def test_replayed_old_metadata_is_refused(push: Push, tmp_path: Path) -> None:
    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    push.publish("2")
    meta = push.data / "registry" / "metadata"
    chan = push.data / "registry" / "targets" / "channels" / "stable.json"
    old = {n: (meta / n).read_bytes() for n in ("timestamp.json", "snapshot.json", "rollout.json")}
    old_channel = chan.read_bytes()
    push.promote("stable", "2")
    assert rt.pull().status == "updated" and rt.version == "recogniser:2"
    # An attacker serves yesterday's (validly signed) metadata, pointing back at model 1.
    push.sink.stop()
    (push.data / "registry" / "online.json").rename(push.data / "registry" / "online.away")
    for name, data in old.items():
        (meta / name).write_bytes(data)
    chan.write_bytes(old_channel)
    push.sink.start()
    with pytest.raises(ModelRejected, match=r"(?i)version"):
        rt.pull()
    assert rt.version == "recogniser:2"


def test_a_model_that_fails_its_self_test_or_its_card_is_refused(
    push: Push, tmp_path: Path
) -> None:
    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    push.publish("nan")
    push.promote("stable", "nan")
    with pytest.raises(ModelRejected, match="NaN"):
        rt.pull()
    assert rt.version == "recogniser:1"


def test_a_card_that_does_not_match_the_model_is_refused(
    push: Push, tmp_path: Path, models: dict[str, Path]
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(models["2"].parent, bad)
    card = json.loads((bad / "model.card.json").read_text())
    card["version"], card["input"]["width"] = "bad", 96
    (bad / "model.card.json").write_text(json.dumps(card))
    # The card inside the file says 112; the publisher reads the one beside it.
    push.models["bad"] = bad / "model.onnx"
    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    push.publish("bad")
    push.promote("stable", "bad")
    with pytest.raises(ModelRejected, match="input shape"):
        rt.pull()
    assert rt.version == "recogniser:1"


def test_a_registry_that_is_down_leaves_the_running_model_alone(push: Push, tmp_path: Path) -> None:
    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    push.sink.stop()
    with pytest.raises(ModelRejected, match="cannot be used now"):
        rt.pull()
    assert rt.predict([np.zeros((360, 640, 3), np.uint8)])
    push.sink.start()


def test_a_model_that_goes_bad_in_service_is_rolled_back_by_the_cart(
    push: Push, tmp_path: Path
) -> None:
    rt = push.runtime(tmp_path / "cart", health=Health(bad_limit=3, good_after=5))
    assert rt.pull().status == "updated"
    frame = np.zeros((360, 640, 3), np.uint8)
    for _ in range(5):
        rt.predict([frame])  # model 1 proves itself: the last good model
    push.publish("2")
    push.promote("stable", "2")
    assert rt.pull().status == "updated" and rt.version == "recogniser:2"
    rt.health.max_latency_ms = 0.0  # every answer of model 2 is now too slow: unhealthy
    for _ in range(3):
        with pytest.raises(ModelRejected):
            rt.predict([frame])
    assert rt.version == "recogniser:1"
    assert any("rolled back" in e for e in rt.events)
    rt.health.max_latency_ms = 1000.0
    assert rt.pull().status == "current"  # the bad model is not installed again


def test_a_model_whose_answers_do_not_depend_on_the_frame_is_rolled_back(
    push: Push, tmp_path: Path
) -> None:
    rt = push.runtime(tmp_path / "cart", health=Health(window=10, bad_limit=3, good_after=5))
    assert rt.pull().status == "updated"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (90, 160, 3), np.uint8) for _ in range(20)]
    for f in frames[:10]:
        rt.predict([f])  # model 1 answers differently to different frames: healthy
    push.publish("dead")
    push.promote("stable", "dead")
    assert rt.pull().status == "updated" and rt.version == "recogniser:dead"
    for f in frames[:9]:
        rt.predict([f])  # not yet a full window
    for f in frames[9:12]:
        with pytest.raises(ModelRejected):
            rt.predict([f])
    assert rt.version == "recogniser:1"
    assert any("answers alike to different frames" in e for e in rt.events)


def test_a_running_cart_pulls_its_model_and_the_fleet_view_shows_the_version(
    push: Push, tmp_path: Path
) -> None:
    import httpx

    from tests.conftest import start_run

    admin = push.sink.add_device("ops", admin=True)
    profile = push.cart_profile(tmp_path, f"sink_url = '{push.sink.url}/files/'\nheartbeat_s = 1\n")
    proc = start_run(tmp_path / "cart", "--duration", "12", profile=profile)
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    fleet = httpx.get(
        push.sink.url + "/api/fleet", headers={"Authorization": f"Bearer {admin}"}
    ).json()
    (cart,) = [d for d in fleet["devices"] if d["device_id"] == "cart-1"]
    assert cart["model_version"] == "recogniser:1"
    state = json.loads((tmp_path / "cart" / "models" / "state.json").read_text())
    assert state["current"]["version"] == "1"


def test_a_cart_polls_the_registry_only_inside_its_upload_windows(
    push: Push, tmp_path: Path
) -> None:
    from tests.conftest import start_run

    # All day, every day, no traffic: no poll either.
    profile = push.cart_profile(
        tmp_path, "[[upload.windows]]\nstart = '00:00'\nend = '24:00'\nmax_upload_bps = 0\n"
    )
    proc = start_run(tmp_path / "cart", "--duration", "3", profile=profile)
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    assert not (tmp_path / "cart" / "models" / "state.json").exists()
    assert not (tmp_path / "cart" / "models" / "tuf").exists()


def test_the_running_model_raises_model_signals_in_the_trigger_engine(
    push: Push, tmp_path: Path
) -> None:
    from capsight_edge.collector import Collector
    from capsight_edge.profile import load_profile
    from tests.conftest import SIM

    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    prof = tmp_path / "p.toml"
    prof.write_text(
        f"extends = '{SIM}'\n[model]\nuncertain_below = 0.5\n"
        '[[triggers]]\nname = "model_wrong"\nwhen = "model_disagrees | model_uncertain"\n'
        "priority = 3\n"
    )
    profile = load_profile(prof, data_dir=tmp_path)
    collector = Collector(profile)
    collector.models = rt
    t = 1_000_000_000
    gtin = "00012345678905"
    # The model's answers, as the runtime gives them, through the collector's rules.
    collector._model_signals(("sku-0001", 0.9, gtin), t)  # a sure product and no read
    assert collector.stats["model_disagrees"] == 1
    collector._last_code = (t + 10_000_000, "012345678905")  # the same product, read
    collector._model_signals(("sku-0001", 0.9, gtin), t + 20_000_000)
    assert collector.stats["model_disagrees"] == 1
    collector._model_signals(("sku-0002", 0.9, "00000000000017"), t + 30_000_000)  # another
    assert collector.stats["model_disagrees"] == 2
    collector._model_signals(("", 0.9, ""), t + 40_000_000)  # none, though one was read
    assert collector.stats["model_disagrees"] == 3
    collector._model_signals(("sku-0001", 0.3, gtin), t + 50_000_000)  # unsure
    assert collector.stats["model_uncertain"] == 1
    collector.engine.tick(t + 60_000_000)
    assert "model_wrong" in {d.rule for d in collector.engine.decisions if d.kind == "fire"}
    # On a real camera frame, the model runs (at most [model] rate_hz) and answers.
    import cv2

    frame = cv2.resize(np.full((90, 160, 3), 120, np.uint8), (1280, 720))
    assert collector._model_answer(frame, t) is not None
    assert collector._model_answer(frame, t + 1_000_000) is None  # the rate cap
    assert collector.stats["model_runs"] == 1


def test_a_technician_sees_pulls_and_rolls_back_the_model(push: Push, tmp_path: Path) -> None:
    from tests.conftest import json_records

    profile = push.cart_profile(tmp_path)
    base = ["-m", "capsight_edge.cli.main", "model"]
    where = ["--profile", str(profile), "--data", str(tmp_path / "cart"), "--json"]
    res = cli(*base, "pull", *where)
    assert res.returncode == 0, res.stderr
    (rec,) = json_records(res.stdout)
    assert rec["pull"] == "updated" and rec["running"] == "recogniser:1"
    assert rec["providers"] == ["CPUExecutionProvider"]
    (rec,) = json_records(cli(*base, "ls", *where).stdout)
    assert rec["running"] == "recogniser:1" and rec["installed"] == ["recogniser:1"]
    doctor = cli("-m", "capsight_edge.cli.main", "doctor", "--only", "model", *where)
    checks = {c["name"]: c for c in json_records(doctor.stdout) if c["type"] == "check"}
    assert checks["model trust root"]["status"] == "pass", checks
    assert checks["model"]["status"] == "pass" and "recogniser:1" in checks["model"]["detail"]
    res = cli(*base, "rollback", *where)
    assert res.returncode == 1
    assert json_records(res.stdout)[0]["detail"] == "no other good model to go back to"
    push.sink.stop()
    res = cli(*base, "pull", *where)
    assert res.returncode == 1
    (rec,) = json_records(res.stdout)
    assert rec["pull"] == "refused" and rec["running"] == "recogniser:1"
    push.sink.start()


def test_a_poll_of_an_unchanged_registry_costs_one_request(push: Push, tmp_path: Path) -> None:
    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    http = rt._fetcher()
    before = http.requests
    res = rt.pull()
    assert (res.status, res.detail) == ("current", "registry unchanged")
    assert http.requests == before + 1  # timestamp.json answered 304, nothing else asked
    push.publish("2")
    push.promote("stable", "2")
    assert rt.pull().status == "updated" and rt.version == "recogniser:2"
    # The answer survives a restart of the cart: still one request for an unchanged registry.
    again = push.runtime(tmp_path / "cart")
    assert again.pull().detail == "registry unchanged" and again._fetcher().requests == 1


def test_a_download_cut_halfway_resumes_where_it_stopped(push: Push, tmp_path: Path) -> None:
    from benchmarks.faultnet import CuttingProxy

    proxy = CuttingProxy(push.sink.port).start()
    try:
        rt = push.runtime(tmp_path / "cart")
        rt.registry_url = f"http://127.0.0.1:{proxy.port}"
        assert rt.pull().status == "updated"
        push.publish("2")
        push.promote("stable", "2")
        size = push.models["2"].stat().st_size
        proxy.cut_answer(b"/2/model.onnx", size // 2)
        with pytest.raises(ModelRejected, match="cannot be used now"):
            rt.pull()
        assert proxy.cuts == 1 and rt.version == "recogniser:1"
        (part,) = (tmp_path / "cart" / "models" / "partial").iterdir()
        # What was kept is what the cart read before the cut: the proxy resets the connection,
        # and the bytes the cart's kernel held unread go with it, so how much that is depends
        # on how fast the cart read. Some of it, never all of it.
        saved = part.stat().st_size
        assert 0 < saved <= size // 2
        got = proxy.downstream_bytes
        assert rt.pull().status == "updated" and rt.version == "recogniser:2"
        http = rt._fetcher()
        assert http.resumed_bytes == saved  # it went on from exactly there
        # The second try fetched only the rest of the model, then the card and golden inputs
        # (and some metadata and headers): never the first half again.
        rest = size - http.resumed_bytes
        m = push.models["2"]
        others = card_path(m).stat().st_size + golden_path(m).stat().st_size
        assert rest + others < proxy.downstream_bytes - got < rest + others + 50_000
        assert not any((tmp_path / "cart" / "models" / "partial").iterdir())
    finally:
        proxy.stop()


def test_a_partial_download_with_wrong_bytes_is_dropped_not_trusted(
    push: Push, tmp_path: Path
) -> None:
    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    push.publish("2")
    push.promote("stable", "2")
    good = push.models["2"].read_bytes()
    sha = hashlib.sha256(good).hexdigest()
    partial = tmp_path / "cart" / "models" / "partial"
    partial.mkdir(exist_ok=True)
    (partial / sha).write_bytes(b"\0" * (len(good) // 2))  # a prefix that is not the model's
    with pytest.raises(ModelRejected, match="LengthOrHashMismatch"):
        rt.pull()
    assert rt.version == "recogniser:1" and not (partial / sha).exists()
    assert rt.pull().status == "updated" and rt.version == "recogniser:2"


def test_a_good_model_goes_canary_then_stable_across_a_fleet(push: Push, tmp_path: Path) -> None:
    import httpx

    from capsight_edge.runtime.trust import bucket

    names = [f"cart-{i:02d}" for i in range(40)]
    canary = names[:2]
    stable_in = [n for n in names[2:] if bucket(n) < 50][:2]
    stable_out = [n for n in names[2:] if bucket(n) >= 50][:2]
    fleet = {}
    for name in canary + stable_in + stable_out:
        rt = ModelRuntime(
            tmp_path / name,
            device_id=name,
            registry_url=push.sink.url,
            trust_root=push.root,
            channel="canary" if name in canary else "stable",
            token=push.sink.add_device(name),
            health=Health(window=10, good_after=10),
        )
        fleet[name] = rt
    admin = push.sink.add_device("ops", admin=True)

    def round_of_pulls() -> dict[str, str]:
        """Every cart polls, then says what it runs in its heartbeat; the fleet view."""
        for rt in fleet.values():
            rt.pull()  # before the first promote to canary: "no_channel"
            beat = {"queue_depth": 0, "disk_used_pct": 1.0, "model_version": rt.version}
            r = httpx.post(
                push.sink.url + "/api/heartbeat",
                json=beat,
                headers={"Authorization": f"Bearer {rt.token}"},
            )
            assert r.status_code == 200, r.text
        view = httpx.get(
            push.sink.url + "/api/fleet", headers={"Authorization": f"Bearer {admin}"}
        ).json()
        return {d["device_id"]: d.get("model_version", "") for d in view["devices"]}

    v1, v2 = "recogniser:1", "recogniser:2"
    seen = round_of_pulls()
    assert {n: seen[n] for n in canary} == {n: "" for n in canary}  # canary offers nothing yet
    assert all(seen[n] == v1 for n in stable_in + stable_out)
    push.publish("2")
    push.promote("canary", "2")
    seen = round_of_pulls()
    assert [seen[n] for n in canary] == [v2, v2]
    assert all(seen[n] == v1 for n in stable_in + stable_out)
    frames = np.random.default_rng(1).integers(0, 255, (10, 90, 160, 3), np.uint8)
    for name in canary:  # model 2 proves itself on the canaries
        for f in frames:
            fleet[name].predict([f])
        state = json.loads((tmp_path / name / "models" / "state.json").read_text())
        assert state["last_good"]["version"] == "2"
    push.promote("stable", "2", pct=50)
    seen = round_of_pulls()
    assert all(seen[n] == v2 for n in canary + stable_in)
    assert all(seen[n] == v1 for n in stable_out)
    push.promote("stable", "2")
    seen = round_of_pulls()
    assert all(seen[n] == v2 for n in fleet), seen
    for rt in fleet.values():
        rt.close()


def test_swaps_under_inference_load_fail_no_inference(push: Push, tmp_path: Path) -> None:
    from benchmarks.bench_models import Load
    from cloud_sink.registry import Registry

    push.publish("2")
    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    load = Load(rt)
    load.thread.start()
    registry = Registry(push.data)
    versions = []
    for version in ("2", "1", "2", "1"):
        registry.promote("stable", "recogniser", version, who="test")
        assert rt.pull().status == "updated"
        versions.append(rt.version)
    load.stop.set()
    load.thread.join(10)
    assert versions == ["recogniser:2", "recogniser:1", "recogniser:2", "recogniser:1"]
    assert load.steps and all(ok for *_, ok in load.steps)


def test_keys_are_rotated_and_the_old_ones_are_refused(push: Push, tmp_path: Path) -> None:
    from tuf.api.metadata import Metadata

    from capsight_edge.runtime.trust import load_signer

    rt = push.runtime(tmp_path / "cart")
    assert rt.pull().status == "updated"
    reg = push.data / "registry"
    old_online = tmp_path / "old-online.json"
    shutil.copyfile(reg / "online.json", old_online)
    new_key = tmp_path / "ml-team-2.key"
    assert cli("-m", "trainer.cli", "keygen", "--out", str(new_key)).returncode == 0
    res = cli("-m", "cloud_sink.cli", "model", "keygen", "--next", "--data", str(push.data))
    assert res.returncode == 0, res.stderr
    res = cli(
        "-m", "trainer.cli", "rotate-keys", "--registry", str(reg), "--key", str(push.key),
        "--new-key", str(new_key), "--online-key", str(reg / "online.next.pub.json"), "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rotated = json.loads(res.stdout)
    assert rotated["type"] == "keys_rotated" and rotated["root_version"] == 2
    # The old ML key can no longer publish; the new one can, and the sink signs with its
    # next key from the first change on.
    m = push.models["2"]
    publish = ["-m", "trainer.cli", "publish", "--model", str(m), "--eval"]
    publish += [str(m.with_name("eval.json")), "--registry", str(reg), "--key"]
    res = cli(*publish, str(push.key))
    assert res.returncode != 0 and "not the key the registry's root trusts" in res.stderr
    assert cli(*publish, str(new_key)).returncode == 0
    push.promote("stable", "2")
    assert not (reg / "online.next.json").exists()
    assert load_signer(reg / "online.json").public_key.keyid == rotated["online_keyid"]
    assert "online key rotated" in [a["action"] for a in push.sink_audit()]
    # A running cart walks root 1 -> 2 by itself; a new cart given only root 1 does too.
    assert rt.pull().status == "updated" and rt.version == "recogniser:2"
    assert Metadata.from_file(str(tmp_path / "cart/models/tuf/root.json")).signed.version == 2
    fresh = push.runtime(tmp_path / "new-cart", device="cart-new")
    assert fresh.pull().status == "updated" and fresh.version == "recogniser:2"
    # Whoever kept the old online key cannot sign for the carts any more.
    for role in ("timestamp.json",):
        md = Metadata.from_file(str(reg / "metadata" / role))
        md.signed.version += 1
        md.signatures.clear()
        md.sign(load_signer(old_online))
        (reg / "metadata" / role).write_bytes(md.to_bytes())
    (reg / "online.json").rename(reg / "online.away")  # the sink cannot re-sign over it
    with pytest.raises(ModelRejected, match=r"(?i)signature|threshold|unsigned"):
        rt.pull()
    assert rt.version == "recogniser:2"
