"""The model registry on a database server: the ML team signs offline into a folder
(`capsight-train registry-init/publish`) that `capsight-sink model import` verifies and takes into
PostgreSQL; two sink instances on that database serve and sign the same registry, a real
`ModelRuntime` pulls through either, channel changes made on either are seen by both, concurrent
changes from two instances never collide, tampered or older imports are refused, and
`capsight-sink migrate --from-sqlite` moves an embedded sink's registry folder into the server."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.push import make_recogniser
from capsight_edge.runtime.models import ModelRuntime
from tests.conftest import ROOT
from tests.sink_helpers import Sink


@contextlib.contextmanager
def serving(*sinks: Sink) -> Iterator[None]:
    started: list[Sink] = []
    try:
        for s in sinks:
            started.append(s.start())
        yield
    finally:
        for s in started:
            s.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=180, cwd=ROOT
    )


def ok(*args: str) -> str:
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {v: make_recogniser(base / f"v{v}", v, int(v)) for v in ("1", "2")}


def publish(registry: str, model: Path, key: Path) -> None:
    ok("trainer.cli", "publish", "--model", str(model), "--eval", str(model.with_name("eval.json")),
       "--registry", registry, "--key", str(key))  # fmt: skip


def take_in(folder: Path, data: Path, db: str) -> dict:  # type: ignore[type-arg]
    """`capsight-sink model import`: the ML team's folder into the sink's registry."""
    out = ok("cloud_sink.cli", "model", "import", str(folder), "--data", str(data), "--db", db,
             "--json")  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


def promote(data: Path, db: str, channel: str, version: str) -> dict:  # type: ignore[type-arg]
    out = ok("cloud_sink.cli", "model", "promote", channel, "recogniser", version,
             "--by", "test", "--data", str(data), "--db", db, "--json")  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


def runtime(cart: Path, sink: Sink, token: str, root: Path) -> ModelRuntime:
    return ModelRuntime(
        cart, device_id="cart-1", registry_url=sink.url, trust_root=root, token=token
    )


def ml_team(tmp_path: Path, online_pub: Path) -> tuple[Path, Path, Path]:
    """The ML team's key, its offline registry folder, and the root carts are given."""
    key = tmp_path / "ml-team.key"
    ok("trainer.cli", "keygen", "--out", str(key))
    folder = tmp_path / "ml-registry"
    ok("trainer.cli", "registry-init", "--registry", str(folder), "--key", str(key),
       "--online-key", str(online_pub))  # fmt: skip
    return key, folder, folder / "metadata" / "1.root.json"


def signed_offline(postgres, tmp_path: Path, model: Path) -> tuple[str, Path, Path, Path, Path]:  # type: ignore[no-untyped-def]
    """A fresh database, a sink's data folder with its online key, and the ML team's folder
    with ``model`` published: (db, data, key, folder, root)."""
    db = postgres.database()
    data = tmp_path / "sink"
    ok("cloud_sink.cli", "model", "keygen", "--data", str(data))
    key, folder, root = ml_team(tmp_path, data / "registry" / "online.pub.json")
    publish(str(folder), model, key)
    return db, data, key, folder, root


def test_two_instances_serve_and_sign_one_registry_in_postgresql(
    postgres, tmp_path: Path, models: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    db = postgres.database()
    a, b = Sink(tmp_path / "a", db=db), Sink(tmp_path / "b", db=db)
    token = a.add_device("cart-1")
    ok("cloud_sink.cli", "model", "keygen", "--data", str(a.data))
    # Each instance holds a copy of the online key; nothing else of the registry is a file.
    shutil.copytree(a.data / "registry", b.data / "registry")
    key, folder, root = ml_team(tmp_path, a.data / "registry" / "online.pub.json")
    publish(str(folder), models["1"], key)
    got = take_in(folder, a.data, db)
    assert got["models"] == ["models/recogniser/1/model.onnx"] and got["files_copied"] == 4
    assert not (a.data / "registry" / "metadata").exists()  # all of it is in the database
    assert promote(a.data, db, "stable", "1")["sequence"] == 1
    with serving(a, b):
        rt = runtime(tmp_path / "cart", a, token, root)
        assert rt.pull().status == "updated" and rt.version == "recogniser:1"
        # Both instances answer the same signed metadata.
        auth = {"Authorization": f"Bearer {token}"}
        tags = {
            s.url: httpx.get(f"{s.url}/registry/metadata/timestamp.json", headers=auth)
            for s in (a, b)
        }
        assert all(r.status_code == 200 for r in tags.values())
        assert len({r.headers["etag"] for r in tags.values()}) == 1
        # A new model published and promoted through instance b, pulled through b.
        publish(str(folder), models["2"], key)
        assert take_in(folder, b.data, db)["files_copied"] == 4  # v1's files are there already
        assert promote(b.data, db, "stable", "2")["sequence"] == 2
        rt.registry_url = b.url
        assert rt.pull().status == "updated" and rt.version == "recogniser:2"
        # A rollback made on a, pulled through a.
        back = json.loads(ok("cloud_sink.cli", "model", "rollback", "stable", "--data",
                             str(a.data), "--db", db, "--json"))  # fmt: skip
        assert back["version"] == "1"
        rt.registry_url = a.url
        assert rt.pull().status == "updated" and rt.version == "recogniser:1"
        # A cut download resumes: the target answers Range requests from either instance.
        path = "models/recogniser/2/model.onnx"
        whole = httpx.get(f"{b.url}/registry/targets/{path}", headers=auth)
        assert whole.status_code == 200 and len(whole.content) > 1000
        part = httpx.get(
            f"{a.url}/registry/targets/{path}", headers={**auth, "Range": "bytes=1000-"}
        )
        assert part.status_code == 206 and part.content == whole.content[1000:]
        missing = httpx.get(f"{a.url}/registry/targets/models/../../sink.db", headers=auth)
        assert missing.status_code == 404
    ls = ok("cloud_sink.cli", "model", "ls", "--data", str(b.data), "--db", db, "--json")
    records = [json.loads(x) for x in ls.splitlines()]
    assert [r["version"] for r in records if r["type"] == "published_model"] == ["1", "2"]
    from cloud_sink.db import SinkDB
    from cloud_sink.registry import DatabaseStore

    sink_db = SinkDB(db)
    try:
        audit = DatabaseStore(sink_db.db).audit()
    finally:
        sink_db.close()
    assert [x["action"] for x in audit] == ["promote", "promote", "promote", "rollback"]


def test_changes_from_two_instances_at_once_never_collide(
    postgres, tmp_path: Path, models: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    from cloud_sink.db import SinkDB
    from cloud_sink.registry import Registry, sink_store

    db, data, key, folder, root = signed_offline(postgres, tmp_path, models["1"])
    publish(str(folder), models["2"], key)
    take_in(folder, data, db)
    # Two instances, each its own connection, change channels at once, 10 times each.
    instances = [SinkDB(db), SinkDB(db)]
    errors: list[BaseException] = []

    def changes(sink_db: SinkDB, channel: str) -> None:
        reg = Registry(data, sink_store(data, sink_db))
        try:
            for i in range(10):
                reg.promote(channel, "recogniser", "12"[i % 2], who=channel)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=changes, args=(s, c))
        for s, c in zip(instances, ("canary", "stable"), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    reg = Registry(data, sink_store(data, instances[0]))
    assert reg.channel("canary")["sequence"] == 10  # type: ignore[index]
    assert reg.channel("stable")["sequence"] == 10  # type: ignore[index]
    rollout = reg._load("rollout")
    assert sorted(rollout.signed.targets) == ["channels/canary.json", "channels/stable.json"]
    assert len(reg.audit()) == 20
    for s in instances:
        s.close()
    # What the last change left verifies end to end on a cart.
    sink = Sink(data, db=db)
    token = sink.add_device("cart-1")
    with serving(sink):
        rt = runtime(tmp_path / "cart", sink, token, root)
        assert rt.pull().status == "updated" and rt.version == "recogniser:2"


def test_migrate_from_sqlite_moves_the_registry_folder_into_the_server(
    postgres, tmp_path: Path, models: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    embedded = Sink(tmp_path / "embedded")  # SQLite: this module never uses sink_backend
    token = embedded.add_device("cart-1")
    ok("cloud_sink.cli", "model", "keygen", "--data", str(embedded.data))
    reg = embedded.data / "registry"
    key = tmp_path / "ml-team.key"
    ok("trainer.cli", "keygen", "--out", str(key))
    ok("trainer.cli", "registry-init", "--registry", str(reg), "--key", str(key),
       "--online-key", str(reg / "online.pub.json"))  # fmt: skip
    root = reg / "metadata" / "1.root.json"
    publish(str(reg), models["1"], key)
    ok("cloud_sink.cli", "model", "promote", "stable", "recogniser", "1", "--data",
       str(embedded.data))  # fmt: skip
    db = postgres.database()
    ok("cloud_sink.cli", "migrate", "--data", str(embedded.data), "--db", db,
       "--from-sqlite", str(embedded.data))  # fmt: skip
    # The server's instance has only the online key as a file.
    server = Sink(tmp_path / "server", db=db)
    (server.data / "registry").mkdir(parents=True)
    for name in ("online.json", "online.pub.json"):
        shutil.copyfile(reg / name, server.data / "registry" / name)
    with serving(server):
        rt = runtime(tmp_path / "cart", server, token, root)
        assert rt.pull().status == "updated" and rt.version == "recogniser:1"
    ls = ok("cloud_sink.cli", "model", "ls", "--data", str(server.data), "--db", db)
    assert "stable: recogniser 1 at 100%" in ls
    doctor = cli("cloud_sink.cli", "doctor", "--data", str(server.data), "--db", db, "--json")
    checks = {c["name"]: c for c in map(json.loads, doctor.stdout.splitlines()) if "name" in c}
    assert checks["model registry"]["status"] == "pass", checks["model registry"]
    # A second copy is refused before anything is copied.
    again = cli("cloud_sink.cli", "migrate", "--data", str(embedded.data), "--db", db,
                "--from-sqlite", str(embedded.data))  # fmt: skip
    assert again.returncode != 0 and "empty database only" in again.stderr


def test_an_import_takes_nothing_on_trust(
    postgres, tmp_path: Path, models: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    db, data, key, folder, _root = signed_offline(postgres, tmp_path, models["1"])
    older = tmp_path / "older"
    shutil.copytree(folder, older)
    publish(str(folder), models["2"], key)

    def refused(src: Path, why: str) -> None:
        res = cli("cloud_sink.cli", "model", "import", str(src), "--data", str(data),
                  "--db", db)  # fmt: skip
        assert res.returncode != 0 and why in res.stderr, res.stderr

    # A model file changed after the ML team signed it.
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    onnx = bad / "targets" / "models" / "recogniser" / "2" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    refused(bad, "does not match targets")
    # Targets changed without the ML team's key.
    forged = tmp_path / "forged"
    shutil.copytree(folder, forged)
    path = forged / "metadata" / "targets.json"
    doc = json.loads(path.read_text())
    doc["signed"]["version"] += 1
    path.write_text(json.dumps(doc))
    refused(forged, "UnsignedMetadataError")
    refused(tmp_path / "nothing", "not a registry folder")
    # Nothing was taken in by the refusals; the good folder goes in, an older one never after.
    take_in(folder, data, db)
    refused(older, "older than the sink's")


def test_the_ml_team_commands_refuse_what_is_not_a_registry(tmp_path: Path) -> None:
    key = tmp_path / "ml-team.key"
    ok("trainer.cli", "keygen", "--out", str(key))
    typo = tmp_path / "no-such-registry"
    res = cli("trainer.cli", "rotate-keys", "--registry", str(typo), "--key", str(key),
              "--new-key", str(key))  # fmt: skip
    assert res.returncode != 0
    assert not typo.exists()  # a mistyped folder is never created
