"""A bundle as one MCAP that Foxglove opens: the clip as a ``foxglove.CompressedVideo`` channel
(``/camera/h264``) next to every sensor channel, all on UTC log times.

A cart logs on its host's monotonic clock (the only clock that never jumps); Foxglove shows log
times as wall-clock dates, so monotonic times would show 1970. The mapping comes from the cart's
own ``sensors.mcap`` metadata (``capsight`` record: ``utc_offset_ns``, UTC = monotonic + offset,
taken when the recorder started) or, for bundles from older carts, from the manifest
(``start_utc`` against ``start_ns``, millisecond precision).

Video: Foxglove wants H.264 in Annex B (start codes, not the MP4's length prefixes), one frame
per message, and SPS/PPS with every key frame; B-frames it cannot show (capsight's encoders
write none). Each frame's time is the manifest's start plus the frame's presentation time.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from capsight_edge.bundle.manifest import Manifest
from capsight_edge.sensors.sensorlog import CHANNELS, iter_messages_bounded

VIDEO_TOPIC = "/camera/h264"

#: foxglove.CompressedVideo in its JSON form (``data`` base64), as Foxglove names it.
COMPRESSED_VIDEO_SCHEMA: dict[str, Any] = {
    "title": "foxglove.CompressedVideo",
    "type": "object",
    "properties": {
        "timestamp": {
            "type": "object",
            "properties": {
                "sec": {"type": "integer", "minimum": 0},
                "nsec": {"type": "integer", "minimum": 0, "maximum": 999_999_999},
            },
        },
        "frame_id": {"type": "string"},
        "data": {"type": "string", "contentEncoding": "base64"},
        "format": {"type": "string"},
    },
}


class ExportError(ValueError):
    pass


def utc_ns_of(value: str) -> int:
    """``2026-12-02T21:41:48.123Z`` → nanoseconds since the epoch."""
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)


def utc_offset_ns(manifest: Manifest, sensors: Path | None) -> int:
    """UTC minus monotonic, from the cart's sensor-log metadata, else from the manifest."""
    if sensors is not None and sensors.is_file():
        from mcap.reader import make_reader

        try:
            with sensors.open("rb") as fh:
                for record in make_reader(fh).iter_metadata():
                    if record.name == "capsight" and "utc_offset_ns" in record.metadata:
                        return int(record.metadata["utc_offset_ns"])
        except Exception:  # an older or cut log: the manifest's mapping below
            pass
    return utc_ns_of(manifest.start_utc) - manifest.start_ns


def _avcc_parameter_sets(extradata: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, [SPS..., PPS...]) of an ``avcC`` record."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise ExportError("the clip's H.264 configuration is not an avcC record")
    length_size = (extradata[4] & 0x03) + 1
    out: list[bytes] = []
    pos, count = 6, extradata[5] & 0x1F
    for _ in range(count):
        (n,) = struct.unpack_from(">H", extradata, pos)
        out.append(extradata[pos + 2 : pos + 2 + n])
        pos += 2 + n
    count = extradata[pos]
    pos += 1
    for _ in range(count):
        (n,) = struct.unpack_from(">H", extradata, pos)
        out.append(extradata[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return length_size, out


START = b"\x00\x00\x00\x01"


def _annexb(packet: bytes, length_size: int) -> bytes:
    out, pos = bytearray(), 0
    while pos + length_size <= len(packet):
        n = int.from_bytes(packet[pos : pos + length_size], "big")
        pos += length_size
        if n == 0 or pos + n > len(packet):
            raise ExportError("a video packet's NAL lengths do not add up")
        out += START + packet[pos : pos + n]
        pos += n
    return bytes(out)


def video_frames(clip: Path) -> Iterator[tuple[float, bytes, bool]]:
    """(seconds from the clip's first frame, Annex B access unit, key frame) per frame."""
    import av

    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        if stream.codec_context.name != "h264":
            raise ExportError(f"the clip is {stream.codec_context.name}, not H.264")
        extradata = bytes(stream.codec_context.extradata or b"")
        avcc = bool(extradata) and extradata[0] == 1
        length_size, params = _avcc_parameter_sets(extradata) if avcc else (4, [])
        header = b"".join(START + p for p in params)
        tb = float(stream.time_base or 0)
        first: int | None = None
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            first = packet.pts if first is None else first
            data = bytes(packet)
            unit = _annexb(data, length_size) if avcc else data
            if packet.is_keyframe and avcc:
                unit = header + unit
            yield (packet.pts - first) * tb, unit, bool(packet.is_keyframe)


def export_bundle(
    manifest: Manifest,
    clip: Path | None,
    sensors: Path | None,
    out: str | os.PathLike[str],
    *,
    max_sensor_messages: int = 2_000_000,
) -> dict[str, int]:
    """Write the Foxglove MCAP; returns counts (``frames``, ``messages``)."""
    import base64

    from mcap.writer import CompressionType, Writer

    offset = utc_offset_ns(manifest, sensors)
    start_utc_ns = manifest.start_ns + offset
    frames = messages = 0
    with open(out, "wb") as fh:
        w = Writer(fh, compression=CompressionType.ZSTD)
        w.start(profile="", library="capsight-sink")
        w.add_metadata(
            "capsight",
            {
                "bundle_id": manifest.bundle_id,
                "device_id": manifest.device_id,
                "store_id": manifest.store_id,
                "rule": manifest.trigger.rule,
                "clock": "UTC (the cart's monotonic times + utc_offset_ns)",
                "utc_offset_ns": str(offset),
            },
        )
        # Sensor messages and frames, merged in time order (Foxglove reads in log-time order).
        events: list[tuple[int, int, bytes]] = []
        if clip is not None:
            sid = w.register_schema(
                "foxglove.CompressedVideo",
                "jsonschema",
                json.dumps(COMPRESSED_VIDEO_SCHEMA).encode(),
            )
            video = w.register_channel(VIDEO_TOPIC, "json", sid)
            for seconds, unit, _key in video_frames(clip):
                t = start_utc_ns + round(seconds * 1e9)
                body = {
                    "timestamp": {"sec": t // 1_000_000_000, "nsec": t % 1_000_000_000},
                    "frame_id": "camera",
                    "data": base64.b64encode(unit).decode(),
                    "format": "h264",
                }
                events.append((t, video, json.dumps(body).encode()))
                frames += 1
        if sensors is not None and sensors.is_file():
            channels: dict[str, int] = {}
            for topic, t_ns, data in iter_messages_bounded(
                sensors,
                max_chunk_bytes=64 << 20,
                max_message_bytes=16 << 20,
                max_messages=max_sensor_messages,
            ):
                if topic not in CHANNELS:
                    continue
                if topic not in channels:
                    name, schema, _ = CHANNELS[topic]
                    sid = w.register_schema(name, "jsonschema", json.dumps(schema).encode())
                    channels[topic] = w.register_channel(topic, "json", sid)
                events.append((t_ns + offset, channels[topic], data))
                messages += 1
        events.sort(key=lambda e: e[0])
        for seq, (t, channel, data) in enumerate(events):
            w.add_message(channel, log_time=t, data=data, publish_time=t, sequence=seq)
        w.finish()
    return {"frames": frames, "messages": messages}
