"""What a hostile or broken device sends, made on the spot: for the sink's abuse tests and the
``sink_abuse`` benchmark. Each maker returns bytes a device could upload."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def zstd_bomb(decoded_bytes: int) -> bytes:
    """Zeros, zstd-compressed: 2 GiB become about 65 KB."""
    import zstandard

    comp = zstandard.ZstdCompressor(level=3).compressobj()
    out = bytearray()
    block = bytes(1 << 20)
    left = decoded_bytes
    while left > 0:
        n = min(left, len(block))
        out += comp.compress(block[:n])
        left -= n
    out += comp.flush()
    return bytes(out)


def _record(opcode: int, body: bytes) -> bytes:
    return struct.pack("<BQ", opcode, len(body)) + body


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def mcap_bomb(decoded_bytes: int, *, claimed: int | None = None) -> bytes:
    """A valid-looking MCAP file with one zstd chunk that decodes to ``decoded_bytes``;
    ``claimed``: what the chunk record says it decodes to (default: the truth)."""
    header = _record(0x01, _string("") + _string("abuse"))
    data = zstd_bomb(decoded_bytes)
    chunk_body = (
        struct.pack("<QQQI", 0, 1, claimed if claimed is not None else decoded_bytes, 0)
        + _string("zstd")
        + struct.pack("<Q", len(data))
        + data
    )
    footer = _record(0x02, struct.pack("<QQI", 0, 0, 0))
    magic = b"\x89MCAP0\r\n"
    return (
        magic
        + header
        + _record(0x06, chunk_body)
        + _record(0x0F, struct.pack("<I", 0))
        + (footer + magic)
    )


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def metadata(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def upload(
    url: str, token: str, data: bytes, meta: str, *, timeout: float = 60.0
) -> httpx.Response:
    """One creation-with-upload request (the whole file at once)."""
    return httpx.post(
        url + "/files/",
        headers={
            **TUS,
            "Authorization": f"Bearer {token}",
            "Content-Type": OCTETS,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": meta,
        },
        content=data,
        timeout=timeout,
    )


def upload_bundle_file(
    url: str, token: str, bundle_id: str, name: str, data: bytes, encoding: str = ""
) -> httpx.Response:
    pairs = {"bundle_id": bundle_id, "filename": name}
    if encoding:
        pairs["encoding"] = encoding
    return upload(url, token, data, metadata(**pairs))


def manifest_of(folder: Path, **changes: Any) -> bytes:
    """The bundle's manifest with top-level ``changes``, or ``files__<name>__bytes=...`` for a
    file's entry."""
    m = json.loads((folder / "manifest.json").read_text())
    for key, value in changes.items():
        if key.startswith("files__"):
            _, name, field = key.split("__")
            m["files"][name.replace("_", ".")][field] = value
        else:
            m[key] = value
    return json.dumps(m).encode()


def sink_rss_peak_kb(pid: int) -> int:
    """VmHWM: the process's peak resident memory so far, in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
