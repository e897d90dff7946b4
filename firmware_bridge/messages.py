"""The MCU link's messages: header layout, message catalogue, payload encodings.

Everything here is pure data and bytes; see PROTOCOL.md for the wire format a firmware implements.
All integers are little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

PROTOCOL_VERSION = 1
#: version u8, type u8, seq u16, timestamp_us u64, payload_len u16
HEADER = struct.Struct("<BBHQH")
CRC_SIZE = 2
MAX_PAYLOAD = 255
MAX_CELLS = 8
NAME_MAX = 32


class MsgType(IntEnum):
    HELLO = 0x01
    HEARTBEAT = 0x02
    GET_INFO = 0x03
    WEIGHT = 0x10
    UWB_POSITION = 0x11
    TARE = 0x20
    SET_RATE = 0x21
    SET_GAIN = 0x22
    TARE_RESULT = 0x23
    ACK = 0x30
    NACK = 0x31
    PING = 0x40
    PONG = 0x41


class NackReason(IntEnum):
    BAD_VALUE = 1
    BUSY = 2
    UNSUPPORTED = 3


class PayloadError(ValueError):
    """A payload does not match its message type's layout."""


def _i24(value: int) -> bytes:
    if not -(1 << 23) <= value < (1 << 23):
        raise PayloadError(f"{value} does not fit a signed 24-bit count")
    return (value & 0xFFFFFF).to_bytes(3, "little")


def _from_i24(b: bytes) -> int:
    v = int.from_bytes(b, "little")
    return v - (1 << 24) if v & 0x800000 else v


class Payload:
    TYPE: ClassVar[MsgType]

    def pack(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def unpack(cls, data: bytes) -> Payload:
        raise NotImplementedError


def _fixed(fmt: str):  # type: ignore[no-untyped-def]
    """Pack/unpack for payloads that are one struct of the dataclass fields, in order."""
    st = struct.Struct(fmt)

    def pack(self: Payload) -> bytes:
        return st.pack(*(getattr(self, f) for f in self.__dataclass_fields__))  # type: ignore[attr-defined]

    @classmethod  # type: ignore[misc]
    def unpack(cls: type[Payload], data: bytes) -> Payload:
        if len(data) != st.size:
            raise PayloadError(f"{cls.TYPE.name} payload is {len(data)} bytes, not {st.size}")
        return cls(*st.unpack(data))

    return pack, unpack


@dataclass(frozen=True)
class Hello(Payload):
    """MCU -> host at boot and in answer to GET_INFO."""

    TYPE = MsgType.HELLO
    fw_major: int
    fw_minor: int
    fw_patch: int
    protocol_version: int
    n_cells: int
    caps: int  # bit 0: UWB tag present
    name: str

    _ST = struct.Struct("<BBBBBB")

    @property
    def firmware(self) -> str:
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"

    def pack(self) -> bytes:
        raw = self.name.encode("utf-8")[:NAME_MAX]
        return (
            self._ST.pack(
                self.fw_major,
                self.fw_minor,
                self.fw_patch,
                self.protocol_version,
                self.n_cells,
                self.caps,
            )
            + raw
        )

    @classmethod
    def unpack(cls, data: bytes) -> Hello:
        if not cls._ST.size <= len(data) <= cls._ST.size + NAME_MAX:
            raise PayloadError(f"HELLO payload is {len(data)} bytes")
        major, minor, patch, version, n_cells, caps = cls._ST.unpack(data[: cls._ST.size])
        return cls(
            major,
            minor,
            patch,
            version,
            n_cells,
            caps,
            data[cls._ST.size :].decode("utf-8", "replace"),
        )


@dataclass(frozen=True)
class Heartbeat(Payload):
    """MCU -> host once a second."""

    TYPE = MsgType.HEARTBEAT
    uptime_ms: int
    rx_errors: int
    tx_dropped: int
    status: int  # bit 0: HX711 settling, bit 1: UWB fix

    pack, unpack = _fixed("<IHHB")


@dataclass(frozen=True)
class GetInfo(Payload):
    TYPE = MsgType.GET_INFO

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, data: bytes) -> GetInfo:
        if data:
            raise PayloadError("GET_INFO carries no payload")
        return cls()


@dataclass(frozen=True)
class WeightSample(Payload):
    """One conversion of every HX711 channel: raw signed 24-bit counts."""

    TYPE = MsgType.WEIGHT
    rate_sps: int
    gain: int
    counts: tuple[int, ...]

    def pack(self) -> bytes:
        if not 1 <= len(self.counts) <= MAX_CELLS:
            raise PayloadError(f"{len(self.counts)} channels (1..{MAX_CELLS} allowed)")
        return bytes((self.rate_sps, self.gain, len(self.counts))) + b"".join(
            _i24(c) for c in self.counts
        )

    @classmethod
    def unpack(cls, data: bytes) -> WeightSample:
        if len(data) < 3:
            raise PayloadError("WEIGHT payload shorter than its 3-byte head")
        rate, gain, n = data[0], data[1], data[2]
        if not 1 <= n <= MAX_CELLS or len(data) != 3 + 3 * n:
            raise PayloadError(f"WEIGHT says {n} channels but carries {len(data) - 3} bytes")
        return cls(rate, gain, tuple(_from_i24(data[3 + 3 * i : 6 + 3 * i]) for i in range(n)))


@dataclass(frozen=True)
class UwbPosition(Payload):
    TYPE = MsgType.UWB_POSITION
    x_mm: int
    y_mm: int
    z_mm: int
    quality: int  # 0..100 %

    pack, unpack = _fixed("<iiiB")


@dataclass(frozen=True)
class Tare(Payload):
    """Host -> MCU: average ``samples`` conversions per channel in ``channel_mask`` and answer
    TARE_RESULT. Raw counts stay raw: the host keeps the zero offsets."""

    TYPE = MsgType.TARE
    samples: int
    channel_mask: int

    pack, unpack = _fixed("<BB")


@dataclass(frozen=True)
class SetRate(Payload):
    TYPE = MsgType.SET_RATE
    rate_sps: int  # 10 or 80

    pack, unpack = _fixed("<B")


@dataclass(frozen=True)
class SetGain(Payload):
    TYPE = MsgType.SET_GAIN
    gain: int  # 128, 64 (channel A) or 32 (channel B)

    pack, unpack = _fixed("<B")


@dataclass(frozen=True)
class TareResult(Payload):
    TYPE = MsgType.TARE_RESULT
    acked_seq: int
    means: tuple[int, ...]

    def pack(self) -> bytes:
        return struct.pack("<HB", self.acked_seq, len(self.means)) + b"".join(
            struct.pack("<i", m) for m in self.means
        )

    @classmethod
    def unpack(cls, data: bytes) -> TareResult:
        if len(data) < 3:
            raise PayloadError("TARE_RESULT payload shorter than 3 bytes")
        seq, n = struct.unpack("<HB", data[:3])
        if n > MAX_CELLS or len(data) != 3 + 4 * n:
            raise PayloadError(f"TARE_RESULT says {n} channels but carries {len(data) - 3} bytes")
        return cls(seq, struct.unpack(f"<{n}i", data[3:]))


@dataclass(frozen=True)
class Ack(Payload):
    TYPE = MsgType.ACK
    acked_type: int
    acked_seq: int

    pack, unpack = _fixed("<BH")


@dataclass(frozen=True)
class Nack(Payload):
    TYPE = MsgType.NACK
    acked_type: int
    acked_seq: int
    reason: int

    pack, unpack = _fixed("<BHB")


@dataclass(frozen=True)
class Ping(Payload):
    """Host -> MCU. The header timestamp is the host's clock (us) at send."""

    TYPE = MsgType.PING
    ping_id: int

    pack, unpack = _fixed("<I")


@dataclass(frozen=True)
class Pong(Payload):
    """MCU -> host: ``rx_us`` is the MCU clock when the PING arrived; the header timestamp is the
    MCU clock when the PONG left."""

    TYPE = MsgType.PONG
    ping_id: int
    rx_us: int

    pack, unpack = _fixed("<IQ")


PAYLOADS: dict[int, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Heartbeat,
        GetInfo,
        WeightSample,
        UwbPosition,
        Tare,
        SetRate,
        SetGain,
        TareResult,
        Ack,
        Nack,
        Ping,
        Pong,
    )
}
