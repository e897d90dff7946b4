"""Framing, CRC, message layouts and the shared test vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import cobs
from firmware_bridge.crc import crc16_mcrf4xx
from firmware_bridge.framing import (
    MAX_ENCODED,
    FrameDecoder,
    FrameError,
    decode_frame,
    encode_frame,
)
from firmware_bridge.messages import PAYLOADS, MsgType, PayloadError, WeightSample

VECTORS = json.loads(
    (
        Path(__file__).resolve().parent.parent / "firmware_bridge/vectors/test_vectors.json"
    ).read_text()
)


def test_crc_check_value() -> None:
    assert crc16_mcrf4xx(b"123456789") == 0x6F91 == int(VECTORS["crc"]["check"]["crc"], 16)


@given(st.binary(max_size=700))
def test_cobs_roundtrip_and_no_zero(data: bytes) -> None:
    enc = cobs.encode(data)
    assert 0 not in enc
    assert cobs.decode(enc) == data


def _payload_from(vector: dict) -> object:
    cls = PAYLOADS[vector["type_code"]]
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in vector["payload"].items()}
    return cls(**fields)


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_decode_and_encode(vector: dict) -> None:
    wire = bytes.fromhex(vector["hex"])
    assert wire.endswith(b"\x00") and 0 not in wire[:-1]
    frame = decode_frame(wire[:-1])
    assert MsgType(frame.type).name == vector["type"]
    assert frame.seq == vector["seq"] and frame.timestamp_us == vector["timestamp_us"]
    assert frame.payload == _payload_from(vector)
    assert encode_frame(frame.payload, vector["seq"], vector["timestamp_us"]) == wire


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_are_rejected_by_kind(vector: dict) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(bytes.fromhex(vector["hex"])) == []
    assert dict(decoder.errors) == {vector["error"]: 1}


def test_catalogue_has_every_required_message() -> None:
    names = {t.name for t in MsgType}
    assert {
        "HELLO",
        "WEIGHT",
        "UWB_POSITION",
        "HEARTBEAT",
        "TARE",
        "SET_RATE",
        "SET_GAIN",
        "ACK",
        "NACK",
        "PING",
        "PONG",
    } <= names
    assert {v["type"] for v in VECTORS["valid"]} == names


def test_decoder_resyncs_after_garbage_and_split_reads() -> None:
    good = encode_frame(WeightSample(80, 128, (1, 2, 3, 4)), 5, 99)
    stream = b"\xff\xfe noise\x00" + good + b"\x00\x00" + good
    decoder = FrameDecoder()
    frames = []
    for i in range(0, len(stream), 3):  # arrives in 3-byte reads
        frames += decoder.feed(stream[i : i + 3])
    assert [f.seq for f in frames] == [5, 5]
    assert decoder.rejected == 1


def test_oversized_frame_is_dropped_without_growing_memory() -> None:
    decoder = FrameDecoder()
    good = encode_frame(WeightSample(80, 128, (7,)), 1, 1)
    frames = decoder.feed(b"\x01" * (MAX_ENCODED * 10) + b"\x00" + good)
    assert len(frames) == 1 and decoder.errors["overflow"] == 1
    assert len(decoder._buf) == 0


def test_weight_counts_must_fit_24_bits() -> None:
    with pytest.raises(PayloadError):
        WeightSample(80, 128, (1 << 23,)).pack()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_decoder_never_raises_on_arbitrary_bytes(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            assert frame.type in PAYLOADS
    assert decoder.frames + decoder.rejected <= sum(c.count(0) for c in chunks)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 39), st.integers(0, 7))
def test_any_single_bit_flip_is_caught(data: bytes, pos: int, bit: int) -> None:
    wire = encode_frame(WeightSample(80, 128, (int.from_bytes(data[:2], "little"),)), 1, 2)
    body = bytearray(wire[:-1])
    i = pos % len(body)
    body[i] ^= 1 << bit
    if body[i] == 0:
        return  # became a delimiter: the frame splits, which the stream decoder handles
    with pytest.raises(FrameError):
        decode_frame(bytes(body))
