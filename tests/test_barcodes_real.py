"""Barcodes on real photos (../shared/data/barcodes-dev/), scored as the benchmark scores them,
and `capsight barcode scan` on bad input. Also the variable-weight check."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from benchmarks.field_data import BARCODES, barcode_samples, code_free_images, score_barcodes
from capsight_edge.camera.barcodes import BarcodeDetector, CascadeBackend
from capsight_edge.triggers.expr import SIGNALS
from capsight_edge.triggers.weightcheck import DeclaredWeightCheck
from tests.conftest import json_records, run_cli

needs_photos = pytest.mark.skipif(not BARCODES.is_dir(), reason=f"no photos in {BARCODES}")


@pytest.fixture(scope="module")
def photos():  # type: ignore[no-untyped-def]
    samples = barcode_samples()
    return samples, code_free_images(samples)


@needs_photos
def test_the_cascade_reads_more_than_either_library_or_their_union(photos) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.bench_field import plain_pyzbar, plain_union, plain_zxing

    samples, negatives = photos
    assert len(samples) >= 100 and len(negatives) >= 40
    ours = score_barcodes(BarcodeDetector(CascadeBackend()).decode_full, samples, negatives)
    zx = score_barcodes(plain_zxing(), samples, negatives)
    zb = score_barcodes(plain_pyzbar(), samples, negatives)
    both = score_barcodes(plain_union(), samples, negatives)
    assert ours.recall >= 0.85, ours.missed
    assert ours.read >= max(zx.read, zb.read, both.read)
    assert ours.misreads == 0 and ours.negative_misreads == 0
    # every kind of code in the set is read: retail 1D with add-ons, DataBar, QR, Data Matrix
    assert all(read > 0 for _n, read in ours.by_group.values()), ours.by_group


@needs_photos
def test_scan_reports_one_identity_per_read() -> None:
    files = [
        BARCODES / "upce-1" / "1.png",
        BARCODES / "ean13-extension-1" / "1.png",
        BARCODES / "rss14-1" / "1.png",
        BARCODES / "datamatrix-1" / "gs1-figure-4.15.1-2-32x32.png",
    ]
    res = run_cli("barcode", "scan", "--json", *map(str, files))
    assert res.returncode == 0, res.stderr
    by_file = {r["file"]: r["codes"] for r in json_records(res.stdout)}
    (upce,) = by_file[str(files[0])]
    assert upce["format"] == "UPC-E" and upce["text"] == "01234565"
    assert upce["gtin"] == "00012345000065"  # zero suppression expanded, padded to 14
    (ean,) = by_file[str(files[1])]
    assert ean["gtin"] == "09780735200449" and ean["addon"] == "51299"
    (databar,) = by_file[str(files[2])]
    assert databar["format"] == "DataBar" and databar["gtin"] == "04412345678909"
    (dm,) = by_file[str(files[3])]
    assert dm["format"] == "DataMatrix" and dm["gtin"] == "09504000059101"
    assert dm["ais"]["10"] == "1234567p" and dm["ais"]["17"] == "141120"


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_scan_refuses_huge_truncated_and_junk_files_with_reasons(tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(20000, 20000))
    junk = tmp_path / "junk.png"
    junk.write_bytes(bytes(range(256)) * 8)
    good = tmp_path / "good.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(good), np.full((50, 80), 255, np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    res = run_cli(
        "barcode", "scan", "--json", str(huge), str(junk), str(truncated), str(good), timeout=60
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    rows = {Path(r["file"]).name: r for r in json_records(res.stdout)}
    assert (
        "20000x20000" in rows["huge.png"]["error"] and "--max-pixels" in rows["huge.png"]["error"]
    )
    assert "not an image" in rows["junk.png"]["error"]
    assert "truncated" in rows["truncated.png"]["error"]
    assert rows["good.png"]["type"] == "barcode_scan" and rows["good.png"]["codes"] == []
    res = run_cli("barcode", "scan", "--formats", "EAN-13,Aztec", str(good))
    assert res.returncode == 2 and "Aztec" in res.stderr


def test_weight_check_pairs_a_stated_net_weight_with_the_weighed_item() -> None:
    assert "weight_mismatch" in SIGNALS
    check = DeclaredWeightCheck(tolerance_g=20, tolerance_pct=10, window_s=10)
    s = 1_000_000_000
    assert check.read(1 * s, 1.250, "A") is None  # nothing weighed yet
    ok = check.weighed(3 * s, 1290.0)  # 1250 g stated, 1290 g felt: within 10 %
    assert ok is not None and not ok.mismatch
    assert check.read(4 * s, 1.250, "A") is None  # the same label read again: not a new item
    assert check.weighed(20 * s, 600.0) is None  # no read near it
    off = check.read(25 * s, 0.500, "B")  # read after the weighing, within the window
    assert off is not None and off.mismatch and off.stated_g == 500 and off.measured_g == 600
    assert (check.checked, check.mismatches) == (2, 1)
