"""Frames on the wire: header + payload + CRC-16/MCRF4XX, COBS-encoded, ended by 0x00.

:class:`FrameDecoder` turns an arbitrary byte stream into frames. It never raises on bad input:
each rejected frame is counted by reason in ``errors`` and skipped, and decoding resynchronises at
the next 0x00.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from firmware_bridge import cobs
from firmware_bridge.crc import crc16_mcrf4xx
from firmware_bridge.messages import (
    CRC_SIZE,
    HEADER,
    MAX_PAYLOAD,
    PAYLOADS,
    PROTOCOL_VERSION,
    Payload,
    PayloadError,
)

#: The longest COBS-encoded frame (plus slack) before the decoder gives up waiting for 0x00.
MAX_ENCODED = HEADER.size + MAX_PAYLOAD + CRC_SIZE + 8

#: Why a frame was rejected (keys of FrameDecoder.errors).
ERROR_KINDS = ("cobs", "short", "crc", "version", "length", "unknown_type", "payload", "overflow")


@dataclass(frozen=True)
class Frame:
    seq: int
    timestamp_us: int
    payload: Payload

    @property
    def type(self) -> int:
        return int(self.payload.TYPE)


def encode_frame(payload: Payload, seq: int, timestamp_us: int) -> bytes:
    body = payload.pack()
    if len(body) > MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(body)} bytes exceeds {MAX_PAYLOAD}")
    raw = (
        HEADER.pack(
            PROTOCOL_VERSION,
            int(payload.TYPE),
            seq & 0xFFFF,
            timestamp_us & 0xFFFF_FFFF_FFFF_FFFF,
            len(body),
        )
        + body
    )
    raw += crc16_mcrf4xx(raw).to_bytes(2, "little")
    return cobs.encode(raw) + b"\x00"


class FrameError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_frame(encoded: bytes) -> Frame:
    """Decode one frame (without its 0x00 delimiter); raises :class:`FrameError` with a kind."""
    try:
        raw = cobs.decode(encoded)
    except cobs.CobsError as exc:
        raise FrameError("cobs", str(exc)) from exc
    if len(raw) < HEADER.size + CRC_SIZE:
        raise FrameError("short", f"{len(raw)} bytes, shorter than header + CRC")
    body, crc = raw[:-CRC_SIZE], int.from_bytes(raw[-CRC_SIZE:], "little")
    if crc16_mcrf4xx(body) != crc:
        raise FrameError("crc", f"CRC {crc:#06x} != computed {crc16_mcrf4xx(body):#06x}")
    version, mtype, seq, ts, length = HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise FrameError("version", f"protocol version {version}, expected {PROTOCOL_VERSION}")
    if length > MAX_PAYLOAD or length != len(body) - HEADER.size:
        raise FrameError(
            "length", f"header says {length} payload bytes, frame has {len(body) - HEADER.size}"
        )
    cls = PAYLOADS.get(mtype)
    if cls is None:
        raise FrameError("unknown_type", f"unknown message type {mtype:#04x}")
    try:
        payload = cls.unpack(body[HEADER.size :])
    except PayloadError as exc:
        raise FrameError("payload", str(exc)) from exc
    return Frame(seq, ts, payload)


class FrameDecoder:
    """Stream decoder: ``feed(bytes)`` returns the complete, valid frames found so far."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False
        self.errors: Counter[str] = Counter()
        self.frames = 0
        self.last_error: FrameError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:])
                return out
            self._append(data[start:end])
            chunk, discarding = bytes(self._buf), self._discarding
            self._buf.clear()
            self._discarding = False
            start = end + 1
            if discarding or not chunk:
                continue  # an overflow was already counted; empty = back-to-back delimiters
            try:
                out.append(decode_frame(chunk))
                self.frames += 1
            except FrameError as exc:
                self.errors[exc.kind] += 1
                self.last_error = exc

    def _append(self, data: bytes) -> None:
        if self._discarding:
            return
        self._buf += data
        if len(self._buf) > MAX_ENCODED:
            self.errors["overflow"] += 1
            self.last_error = FrameError("overflow", f"no delimiter within {MAX_ENCODED} bytes")
            self._buf.clear()
            self._discarding = True

    @property
    def rejected(self) -> int:
        return sum(self.errors.values())
