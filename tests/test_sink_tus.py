"""tus 1.0 conformance of the sink, by raw HTTP against a real server on 127.0.0.1, and tuspy."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.sink_helpers import Sink, sink_cli, tus_headers

OCTETS = {"Content-Type": "application/offset+octet-stream"}


pytestmark = pytest.mark.usefixtures("sink_backend")  # every test on SQLite, then PostgreSQL


@pytest.fixture(scope="module")
def sink(
    tmp_path_factory: pytest.TempPathFactory, sink_backend: str
) -> Iterator[tuple[Sink, str, str]]:
    data = tmp_path_factory.mktemp("sink")
    s = Sink(data, "--max-size", str(10 * 2**20))
    a, b = s.add_device("cart-a"), s.add_device("cart-b")
    s.start()
    yield s, a, b
    s.stop()


def create(s: Sink, token: str, length: int | None = 10, **extra: str) -> str:
    h = tus_headers(token, **extra)
    if length is not None:
        h["Upload-Length"] = str(length)
    r = httpx.post(s.url + "/files/", headers=h)
    assert r.status_code == 201, r.text
    return r.headers["Location"]


def test_options_advertises_the_extensions(sink: tuple[Sink, str, str]) -> None:
    s, a, _ = sink
    r = httpx.options(s.url + "/files/", headers={"Authorization": f"Bearer {a}"})
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0" and r.headers["Tus-Max-Size"] == str(10 * 2**20)
    assert set(r.headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
    }
    assert set(r.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5"}


def test_auth_is_required_and_checked(sink: tuple[Sink, str, str]) -> None:
    s, _, _ = sink
    r = httpx.post(s.url + "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    r = httpx.post(s.url + "/files/", headers=tus_headers("forged", **{"Upload-Length": "1"}))
    assert r.status_code == 401


def test_creation_rules(sink: tuple[Sink, str, str]) -> None:
    s, a, _ = sink
    r = httpx.post(
        s.url + "/files/", headers={"Authorization": f"Bearer {a}", "Upload-Length": "5"}
    )
    assert r.status_code == 412 and r.headers["Tus-Version"] == "1.0.0"
    assert httpx.post(s.url + "/files/", headers=tus_headers(a)).status_code == 400
    big = tus_headers(a, **{"Upload-Length": str(10 * 2**20 + 1)})
    assert httpx.post(s.url + "/files/", headers=big).status_code == 413
    bad_meta = tus_headers(a, **{"Upload-Length": "5", "Upload-Metadata": "name !!notb64"})
    assert httpx.post(s.url + "/files/", headers=bad_meta).status_code == 400
    assert (
        httpx.post(
            s.url + "/files/",
            headers=tus_headers(a, **{"Upload-Length": "5", "Upload-Metadata": "bad key aGk="}),
        ).status_code
        == 400
    )


def test_metadata_is_sanitised(sink: tuple[Sink, str, str]) -> None:
    s, a, _ = sink
    evil = base64.b64encode(b"../../etc/passwd\r\nX-Injected: 1").decode()
    url = create(
        s,
        a,
        5,
        **{
            "Upload-Metadata": f"filename {evil},bundle_id "
            f"{base64.b64encode(b'b-1').decode()},empty"
        },
    )
    head = httpx.head(url, headers=tus_headers(a))
    meta = dict(
        pair.split(" ") if " " in pair else (pair, "")
        for pair in head.headers["Upload-Metadata"].split(",")
    )
    assert base64.b64decode(meta["filename"]) == b"passwdX-Injected: 1"
    assert base64.b64decode(meta["bundle_id"]) == b"b-1"
    assert "X-Injected" not in head.headers


def test_patch_offsets_checksums_and_head(sink: tuple[Sink, str, str]) -> None:
    s, a, _ = sink
    url = create(s, a, 10)
    head = httpx.head(url, headers=tus_headers(a))
    assert head.status_code == 200 and head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == "10" and head.headers["Cache-Control"] == "no-store"
    assert "Upload-Expires" in head.headers
    h = tus_headers(a, **OCTETS, **{"Upload-Offset": "0"})
    r = httpx.patch(url, headers=h, content=b"hello")
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "5"
    # wrong offset: 409, nothing stored
    assert (
        httpx.patch(
            url, headers=tus_headers(a, **OCTETS, **{"Upload-Offset": "3"}), content=b"xx"
        ).status_code
        == 409
    )
    # wrong content type: 415
    assert (
        httpx.patch(
            url,
            headers=tus_headers(a, **{"Upload-Offset": "5", "Content-Type": "text/plain"}),
            content=b"xx",
        ).status_code
        == 415
    )
    # checksum mismatch: 460 and the chunk is not applied
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    r = httpx.patch(
        url,
        headers=tus_headers(
            a, **OCTETS, **{"Upload-Offset": "5", "Upload-Checksum": f"sha256 {wrong}"}
        ),
        content=b"world",
    )
    assert r.status_code == 460
    assert httpx.head(url, headers=tus_headers(a)).headers["Upload-Offset"] == "5"
    assert (
        httpx.patch(
            url,
            headers=tus_headers(
                a, **OCTETS, **{"Upload-Offset": "5", "Upload-Checksum": "crc32 AAAA"}
            ),
            content=b"w",
        ).status_code
        == 400
    )
    # too much: 413, nothing applied
    assert (
        httpx.patch(
            url, headers=tus_headers(a, **OCTETS, **{"Upload-Offset": "5"}), content=b"0123456789"
        ).status_code
        == 413
    )
    assert httpx.head(url, headers=tus_headers(a)).headers["Upload-Offset"] == "5"
    good = base64.b64encode(hashlib.md5(b"world").digest()).decode()
    r = httpx.patch(
        url,
        headers=tus_headers(
            a, **OCTETS, **{"Upload-Offset": "5", "Upload-Checksum": f"md5 {good}"}
        ),
        content=b"world",
    )
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "10"
    assert "Upload-Expires" not in r.headers  # complete: it no longer expires
    stored = s.data / "blobs" / "uploads" / url.rsplit("/", 1)[1]
    assert stored.read_bytes() == b"helloworld"


def test_creation_with_upload_and_defer_length(sink: tuple[Sink, str, str]) -> None:
    s, a, _ = sink
    sha1 = base64.b64encode(hashlib.sha1(b"abc").digest()).decode()
    r = httpx.post(
        s.url + "/files/",
        headers=tus_headers(
            a, **OCTETS, **{"Upload-Length": "6", "Upload-Checksum": f"sha1 {sha1}"}
        ),
        content=b"abc",
    )
    assert r.status_code == 201 and r.headers["Upload-Offset"] == "3"
    url = create(s, a, None, **{"Upload-Defer-Length": "1"})
    head = httpx.head(url, headers=tus_headers(a))
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    r = httpx.patch(
        url,
        headers=tus_headers(a, **OCTETS, **{"Upload-Offset": "0", "Upload-Length": "4"}),
        content=b"data",
    )
    assert r.status_code == 204
    assert httpx.head(url, headers=tus_headers(a)).headers["Upload-Length"] == "4"


def test_termination_and_method_override(sink: tuple[Sink, str, str]) -> None:
    s, a, _ = sink
    url = create(s, a, 4)
    r = httpx.post(
        url,
        headers=tus_headers(
            a, **OCTETS, **{"X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0"}
        ),
        content=b"ab",
    )
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "2"
    r = httpx.post(url, headers=tus_headers(a, **{"X-HTTP-Method-Override": "DELETE"}))
    assert r.status_code == 204
    assert httpx.head(url, headers=tus_headers(a)).status_code == 404
    assert not (s.data / "blobs" / "uploads" / url.rsplit("/", 1)[1]).exists()


def test_devices_see_only_their_own_uploads(sink: tuple[Sink, str, str]) -> None:
    s, a, b = sink
    url = create(s, a, 4)
    for method in ("HEAD", "DELETE"):
        assert httpx.request(method, url, headers=tus_headers(b)).status_code == 404
    assert (
        httpx.patch(
            url, headers=tus_headers(b, **OCTETS, **{"Upload-Offset": "0"}), content=b"evil"
        ).status_code
        == 404
    )
    assert httpx.head(url, headers=tus_headers(a)).headers["Upload-Offset"] == "0"
    assert httpx.head(s.url + "/files/" + "A" * 32, headers=tus_headers(a)).status_code == 404
    assert httpx.head(s.url + "/files/../sink.db", headers=tus_headers(a)).status_code == 404
    assert len(url.rsplit("/", 1)[1]) == 32  # unguessable ids (192 random bits)


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[7])


@pytest.mark.one_database
def test_a_body_is_received_into_kept_memory_not_fresh_pages(
    sink: tuple[Sink, str, str],
) -> None:
    """The sink keeps freed heap memory for the next buffers (``server.keep_heap``): with
    glibc's defaults each body received faulted about twice as many fresh pages in as it holds
    (4,000 to 4,600 for 8 MiB, measured); kept, 0 to 70 on an idle machine. The whole process
    is counted, so a busy machine adds some (CI saw 325 once): the median of five bodies is
    held to a quarter of the pages, eight times under the default's count."""
    s, a, _ = sink
    size = 8 << 20
    body = os.urandom(size)
    faults = []
    for _ in range(6):  # the first one grows the heap
        loc = create(s, a, size)
        before = _minor_faults(s.pid)
        r = httpx.patch(
            loc, headers={**tus_headers(a, **OCTETS), "Upload-Offset": "0"}, content=body
        )
        assert r.status_code == 204
        faults.append(_minor_faults(s.pid) - before)
    pages = size // os.sysconf("SC_PAGESIZE")
    assert statistics.median(faults[1:]) < pages / 4, (faults, pages)


def test_expired_upload_is_gone(tmp_path: Path) -> None:
    s = Sink(tmp_path, "--expire-hours", str(1 / 3600))  # one second
    token = s.add_device("cart")
    s.start()
    try:
        url = create(s, token, 10)
        time.sleep(1.5)
        assert httpx.head(url, headers=tus_headers(token)).status_code == 410
    finally:
        s.stop()


def test_device_cli(tmp_path: Path) -> None:
    res = sink_cli("device", "add", "cart-9", "--data", str(tmp_path))
    assert res.returncode == 0 and "token" in res.stdout
    token = res.stdout.strip().splitlines()[-1]
    listing = sink_cli("device", "list", "--data", str(tmp_path), "--json")
    assert token not in listing.stdout and "cart-9" in listing.stdout
    from tests.conftest import json_records

    (device,) = json_records(listing.stdout, folder="schemas/api")
    assert device["type"] == "device" and device["device_id"] == "cart-9"
    assert device["admin"] is False and "token" not in device
    assert sink_cli("device", "add", "cart-9", "--data", str(tmp_path)).returncode == 2
    assert sink_cli("device", "add", "../x", "--data", str(tmp_path)).returncode == 2
    assert sink_cli("device", "revoke", "cart-9", "--data", str(tmp_path)).returncode == 0
    s = Sink(tmp_path).start()
    try:
        r = httpx.post(s.url + "/files/", headers=tus_headers(token, **{"Upload-Length": "1"}))
        assert r.status_code == 401
    finally:
        s.stop()


def test_kill_mid_upload_and_resume_is_byte_identical(tmp_path: Path) -> None:
    s = Sink(tmp_path)
    token = s.add_device("cart")
    s.start()
    source = os.urandom(6 * 2**20)
    url = create(s, token, len(source))
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        for i in range(0, len(source), 64 * 1024):
            if i >= 2 * 2**20:
                sent.set()
                time.sleep(0.05)
            yield source[i : i + 64 * 1024]

    def upload() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.patch(
                url,
                headers=tus_headers(token, **OCTETS, **{"Upload-Offset": "0"}),
                content=slow_body(),
                timeout=30,
            )

    t = threading.Thread(target=upload)
    t.start()
    assert sent.wait(30)
    time.sleep(0.3)
    s.kill()  # mid-body
    t.join(30)
    s.start()
    try:
        offset = int(httpx.head(url, headers=tus_headers(token)).headers["Upload-Offset"])
        stored = (tmp_path / "blobs" / "uploads" / url.rsplit("/", 1)[1]).read_bytes()
        assert len(stored) == offset and stored == source[:offset]  # only real bytes
        r = httpx.patch(
            url,
            headers=tus_headers(token, **OCTETS, **{"Upload-Offset": str(offset)}),
            content=source[offset:],
            timeout=60,
        )
        assert r.status_code == 204 and int(r.headers["Upload-Offset"]) == len(source)
        stored = (tmp_path / "blobs" / "uploads" / url.rsplit("/", 1)[1]).read_bytes()
        assert stored == source
    finally:
        s.stop()


def test_tuspy_uploads_resumes_after_restart_and_completes(tmp_path: Path) -> None:
    from tusclient import client
    from tusclient.storage.filestorage import FileStorage

    s = Sink(tmp_path / "sink")
    token = s.add_device("cart")
    s.start()
    src = tmp_path / "bundle.bin"
    src.write_bytes(os.urandom(3 * 2**20 + 123))
    storage = FileStorage(str(tmp_path / "urls.json"))
    try:
        c = client.TusClient(s.url + "/files/", headers={"Authorization": f"Bearer {token}"})
        up = c.uploader(
            str(src),
            chunk_size=512 * 1024,
            store_url=True,
            url_storage=storage,
            metadata={"filename": "bundle.bin"},
        )
        for _ in range(3):
            up.upload_chunk()
        assert 0 < up.offset < src.stat().st_size
        s.kill()
        s.start()
        c = client.TusClient(s.url + "/files/", headers={"Authorization": f"Bearer {token}"})
        again = c.uploader(str(src), chunk_size=512 * 1024, store_url=True, url_storage=storage)
        assert again.url == up.url and again.offset == up.offset  # resumed, not restarted
        again.upload()
        stored = tmp_path / "sink" / "blobs" / "uploads" / again.url.rsplit("/", 1)[1]
        assert stored.read_bytes() == src.read_bytes()
    finally:
        s.stop()


def test_device_doctor_checks_the_sink_and_token(
    sink: tuple[Sink, str, str], tmp_path: Path
) -> None:
    from capsight_edge.doctor import run_doctor
    from capsight_edge.profile import load_profile
    from tests.conftest import SIM

    s, a, _ = sink
    (tmp_path / "token").write_text(a + "\n")
    (tmp_path / "bad").write_text("nope\n")
    for token_file, expected in (("token", "pass"), ("bad", "fail")):
        prof = tmp_path / f"{token_file}.toml"
        prof.write_text(
            f"extends = '{SIM}'\n[upload]\nsink_url = '{s.url}'\n"
            f"token_file = '{tmp_path / token_file}'\n"
        )
        checks = {c.name: c for c in run_doctor(load_profile(prof), only={"sink"})}
        assert checks["sink"].status == "pass"
        assert checks["sink token"].status == expected
        assert ("tus 1.0.0" in checks["sink"].detail) is (expected == "pass")


def test_a_chunk_left_unverified_by_a_crash_is_rolled_back(tmp_path: Path) -> None:
    """A crash while a checksummed chunk is being written leaves the ``.pending`` marker: the
    sink reports the verified size, and the next writer truncates the unverified bytes."""
    data = tmp_path / "sink"
    s = Sink(data)
    token = s.add_device("cart-a")
    s.start()
    try:
        url = create(s, token, 20)
        digest = base64.b64encode(hashlib.sha256(b"0123456789").digest()).decode()
        h = tus_headers(token, **OCTETS, **{"Upload-Checksum": f"sha256 {digest}"})
        r = httpx.patch(url, headers={**h, "Upload-Offset": "0"}, content=b"0123456789")
        assert r.status_code == 204 and r.headers["Upload-Offset"] == "10"
        s.kill()
        # What a crash mid-chunk leaves: the marker with the verified size, bytes behind it.
        stored = data / "blobs" / "uploads" / url.rsplit("/", 1)[1]
        stored.with_suffix(".pending").write_text("10")
        with open(stored, "ab") as fh:
            fh.write(b"garbage")
        s.start()
        head = httpx.head(url, headers=tus_headers(token))
        assert head.headers["Upload-Offset"] == "10"  # only what was verified
        digest = base64.b64encode(hashlib.sha256(b"abcdefghij").digest()).decode()
        h = tus_headers(token, **OCTETS, **{"Upload-Checksum": f"sha256 {digest}"})
        r = httpx.patch(url, headers={**h, "Upload-Offset": "10"}, content=b"abcdefghij")
        assert r.status_code == 204 and r.headers["Upload-Offset"] == "20"
        assert stored.read_bytes() == b"0123456789abcdefghij"
        assert not stored.with_suffix(".pending").exists()
    finally:
        s.stop()
