"""Consistent Overhead Byte Stuffing: a frame of any bytes becomes one with no 0x00 in it.

Unlike the ``cobs`` package on PyPI, :func:`encode` here does not append the 0x00 delimiter;
:mod:`firmware_bridge.framing` adds it.
"""

from __future__ import annotations


class CobsError(ValueError):
    """The encoded bytes are not valid COBS."""


def encode(data: bytes) -> bytes:
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def decode(data: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError(f"zero byte inside a COBS block at offset {i}")
        end = i + code
        if end > n:
            raise CobsError(f"block at offset {i} runs past the end ({code - 1} bytes wanted)")
        block = data[i + 1 : end]
        if 0 in block:
            raise CobsError(f"zero byte inside a COBS block near offset {i}")
        out += block
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)
