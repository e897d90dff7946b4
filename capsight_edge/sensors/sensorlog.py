"""All sensor channels, time-aligned on the host monotonic clock, in one MCAP file.

- Channels and their JSON schemas are declared once, here (:data:`CHANNELS`); readers (the cloud
  sink's ingest) import them from this module.
- High-rate samples are batched: one message holds up to ``batch_s`` of one channel (tiny messages
  make the indexes bigger than the data). A message's log time is its first sample's time.
- Messages are written in log-time order (out-of-order writes blow up reader memory): a short
  reorder window holds them until every producer has moved past.
- The current zstd chunk is closed and the file flushed (and fsync'd) every ``flush_s``, so a crash
  or power cut loses at most about that much; a truncated file is still readable with the MCAP
  stream reader.
"""

from __future__ import annotations

import dataclasses
import heapq
import io
import itertools
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from capsight_edge.errors import CapsightError


def _batch(props: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "t_ns": {"type": "array", "items": {"type": "integer"}},
            **{k: {"type": "array", "items": v} for k, v in props.items()},
        },
        "required": ["t_ns"],
    }


_NUM = {"type": "number"}
_VEC3 = {"type": "array", "items": _NUM, "minItems": 3, "maxItems": 3}

#: topic -> (schema name, JSON schema, batched). Batched channels carry parallel arrays.
CHANNELS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "/weight/raw": (
        "capsight.WeightRaw",
        _batch({"counts": {"type": "array", "items": {"type": "integer"}}}),
        True,
    ),
    "/weight/fused": (
        "capsight.WeightFused",
        _batch({"grams": _NUM, "stable": {"type": "boolean"}}),
        True,
    ),
    "/weight/events": (
        "capsight.WeightEvent",
        {
            "type": "object",
            "properties": {
                "kind": {"type": "string"},
                "t_ns": {"type": "integer"},
                "delta_g": _NUM,
                "weight_g": _NUM,
                "start_ns": {"type": "integer"},
                "peak_g": _NUM,
                "bump": {"type": "boolean"},
            },
        },
        False,
    ),
    "/imu": ("capsight.Imu", _batch({"accel_g": _VEC3, "gyro_dps": _VEC3, "temp_c": _NUM}), True),
    "/position/uwb": (
        "capsight.UwbPosition",
        _batch({"x_mm": _NUM, "y_mm": _NUM, "z_mm": _NUM, "quality": _NUM}),
        True,
    ),
    "/position/gnss": (
        "capsight.GnssFix",
        {
            "type": "object",
            "properties": {
                "t_ns": {"type": "integer"},
                "lat": _NUM,
                "lon": _NUM,
                "alt_m": _NUM,
                "quality": {"type": "integer"},
                "satellites": {"type": "integer"},
                "hdop": _NUM,
            },
        },
        False,
    ),
    "/link/health": ("capsight.LinkHealth", {"type": "object"}, False),
    "/triggers": (
        "capsight.TriggerDecision",
        {
            "type": "object",
            "properties": {
                "kind": {"type": "string"},
                "rule": {"type": "string"},
                "priority": {"type": "integer"},
                "t_ns": {"type": "integer"},
                "signals": {"type": "object"},
                "reason": {"type": "string"},
                "clip_start_ns": {"type": "integer"},
                "clip_end_ns": {"type": "integer"},
            },
        },
        False,
    ),
    "/camera/motion": (
        "capsight.Motion",
        _batch({"moving_fraction": _NUM, "hand_activity": {"type": "boolean"}}),
        True,
    ),
    "/model/answer": (
        "capsight.ModelAnswer",
        _batch({"label": {"type": "string"}, "score": _NUM, "disagrees": {"type": "boolean"}}),
        True,
    ),
    # Only a synthetic camera writes this channel; only tests, the simulated reviewer and the
    # evaluator may read it (never pre-labelling or training).
    "/sim/truth": (
        "capsight.SimTruth",
        _batch(
            {
                "sku": {"type": "string"},
                "item_bbox": {"type": "array", "items": {"type": "integer"}},
                "hand_visible": {"type": "boolean"},
                "barcode_readable": {"type": "boolean"},
                "barcode_code": {"type": "string"},
                "in_basket": {"type": "integer"},
                "light_gain": _NUM,
                "shake_px": {"type": "integer"},
                "blur_px": {"type": "integer"},
                "glare": {"type": "boolean"},
                "occluded": {"type": "boolean"},
                "crumpled": {"type": "boolean"},
            }
        ),
        True,
    ),
    "/camera/barcodes": (
        "capsight.Barcode",
        {
            "type": "object",
            "properties": {
                "t_ns": {"type": "integer"},
                "symbology": {"type": "string"},
                "text": {"type": "string"},
                "bbox": {"type": "array", "items": {"type": "integer"}},
                "gtin": {"type": ["string", "null"]},
                "ais": {"type": "object", "additionalProperties": {"type": "string"}},
                "addon": {"type": ["string", "null"]},
            },
        },
        False,
    ),
}


class SensorLogError(CapsightError):
    """The sensor log could not be written."""


class SensorLog:
    """Thread-safe MCAP writer. Producers call :meth:`add` (batched channels) or
    :meth:`event` (one message each) with host-monotonic nanosecond times."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_size: int = 64 * 1024,
        flush_s: float = 1.0,
        batch_s: float = 0.1,
        reorder_s: float = 0.3,
        metadata: dict[str, str] | None = None,
    ) -> None:
        from mcap.writer import CompressionType, Writer  # lazy: edge extra

        self.path = Path(path)
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._writer = Writer(self._fh, chunk_size=chunk_size, compression=CompressionType.ZSTD)
        self._writer.start(profile="", library="capsight")
        # Channels are registered when first written: a log holds only what was recorded.
        self._channel_ids: dict[str, int] = {}
        if metadata:
            self._writer.add_metadata("capsight", {k: str(v) for k, v in metadata.items()})
        self._batch_ns = int(batch_s * 1e9)
        self._reorder_ns = int(reorder_s * 1e9)
        self._flush_s = flush_s
        self._batches: dict[str, dict[str, list[Any]]] = {}
        self._heap: list[tuple[int, int, str, bytes]] = []
        self._tie = itertools.count()
        self._newest_ns = 0
        self._written_ns = 0
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False
        self.messages = 0
        self.late_messages = 0

    def add(self, topic: str, t_ns: int, **fields: Any) -> None:
        """Append one sample to a batched channel."""
        with self._lock:
            if self._closed:
                return
            batch = self._batches.get(topic)
            if batch is not None and t_ns - batch["t_ns"][0] >= self._batch_ns:
                self._queue(topic, batch)
                batch = None
            if batch is None:
                batch = {"t_ns": [], **{k: [] for k in fields}}
                self._batches[topic] = batch
            batch["t_ns"].append(t_ns)
            for k, v in fields.items():
                batch.setdefault(k, []).append(v)
            self._advance(t_ns)

    def event(self, topic: str, t_ns: int, obj: dict[str, Any]) -> None:
        """Write one message on an unbatched channel."""
        with self._lock:
            if self._closed:
                return
            self._push(t_ns, topic, json.dumps(obj, default=str).encode())
            self._advance(t_ns)

    def _queue(self, topic: str, batch: dict[str, list[Any]]) -> None:
        self._push(batch["t_ns"][0], topic, json.dumps(batch).encode())

    def _push(self, t_ns: int, topic: str, data: bytes) -> None:
        if topic not in self._channel_ids:
            if topic not in CHANNELS:
                raise SensorLogError(f"unknown sensor-log channel {topic!r}")
            name, schema, _ = CHANNELS[topic]
            sid = self._writer.register_schema(name, "jsonschema", json.dumps(schema).encode())
            self._channel_ids[topic] = self._writer.register_channel(topic, "json", sid)
        heapq.heappush(self._heap, (t_ns, next(self._tie), topic, data))

    def _advance(self, t_ns: int) -> None:
        self._newest_ns = max(self._newest_ns, t_ns)
        self._drain(self._newest_ns - self._reorder_ns)
        if time.monotonic() - self._last_flush >= self._flush_s:
            self._flush()

    def _drain(self, until_ns: int | None) -> None:
        while self._heap and (until_ns is None or self._heap[0][0] <= until_ns):
            t_ns, _, topic, data = heapq.heappop(self._heap)
            if t_ns < self._written_ns:
                self.late_messages += 1  # later than the reorder window allowed: keep it anyway
            self._written_ns = max(self._written_ns, t_ns)
            self._writer.add_message(
                self._channel_ids[topic], log_time=t_ns, data=data, publish_time=t_ns
            )
            self.messages += 1

    def _flush(self) -> None:
        # Old batches that stopped growing would otherwise wait for their next sample.
        for topic, batch in list(self._batches.items()):
            if self._newest_ns - batch["t_ns"][0] >= self._batch_ns:
                self._queue(topic, batch)
                del self._batches[topic]
        self._drain(self._newest_ns - self._reorder_ns)
        try:
            self._writer.flush()  # closes the chunk in progress
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SensorLogError(f"{self.path}: {exc}") from exc
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for topic, batch in self._batches.items():
                self._queue(topic, batch)
            self._batches.clear()
            self._drain(None)
            self._writer.finish()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> SensorLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_messages(path: str | os.PathLike[str]) -> list[tuple[str, int, dict[str, Any]]]:
    """(topic, log_time_ns, decoded JSON) of every message, in file order; works on a file cut
    short by a crash (reads up to the last complete record)."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message
    from mcap.stream_reader import StreamReader

    out: list[tuple[str, int, dict[str, Any]]] = []
    topics: dict[int, str] = {}
    with open(path, "rb") as fh:
        try:
            for record in StreamReader(fh, skip_magic=False, emit_chunks=False).records:
                if isinstance(record, Channel):
                    topics[record.id] = record.topic
                elif isinstance(record, Message):
                    out.append(
                        (
                            topics.get(record.channel_id, "?"),
                            record.log_time,
                            json.loads(record.data),
                        )
                    )
        except (McapError, EOFError, ValueError, struct.error):
            pass  # truncated: what was complete is returned
    return out


def iter_messages_bounded(
    path: str | os.PathLike[str],
    *,
    max_chunk_bytes: int,
    max_message_bytes: int,
    max_messages: int,
) -> Iterator[tuple[str, int, bytes]]:
    """(topic, log_time_ns, raw message data) of a sensor log written by someone we do not
    trust: every record's size is checked before it is read, a chunk is decompressed only when
    it declares at most ``max_chunk_bytes`` (and never past what it declares), only zstd or
    uncompressed chunks are accepted, and at most ``max_messages`` messages of at most
    ``max_message_bytes`` each. SensorLogError says which limit was broken; a file cut short
    ends where it was cut."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Chunk, Message
    from mcap.stream_reader import StreamReader, breakup_chunk

    max_record = max_chunk_bytes + 64 * 1024  # a chunk's own header and index beside its data
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89MCAP0\r\n":
            raise SensorLogError("not an MCAP file")
        while True:  # the top-level records' sizes, before any is read
            head = fh.read(9)
            if len(head) < 9:
                break
            opcode, length = struct.unpack("<BQ", head)
            if length > max_record:
                raise SensorLogError(f"a record of {length} bytes (limit {max_record})")
            fh.seek(length, os.SEEK_CUR)
            if opcode == 0x02:  # footer
                break
        fh.seek(0, os.SEEK_END)
        capped = _CappedReader(fh, fh.tell())
        fh.seek(0)
        topics: dict[int, str] = {}
        count = 0

        def emit(record: Any) -> Iterator[tuple[str, int, bytes]]:
            nonlocal count
            if isinstance(record, Channel):
                topics[record.id] = record.topic[:256]
            elif isinstance(record, Message):
                count += 1
                if count > max_messages:
                    raise SensorLogError(f"more than {max_messages} messages")
                if len(record.data) > max_message_bytes:
                    raise SensorLogError(
                        f"a message of {len(record.data)} bytes (limit {max_message_bytes})"
                    )
                yield topics.get(record.channel_id, "?"), record.log_time, record.data

        try:
            reader = StreamReader(
                capped,  # type: ignore[arg-type]  # read() is all it uses
                skip_magic=False,
                emit_chunks=True,
                record_size_limit=max_record,
            )
            for record in reader.records:
                if isinstance(record, Chunk):
                    if record.compression not in ("zstd", ""):
                        raise SensorLogError(f"chunk compression {record.compression!r}")
                    if record.uncompressed_size > max_chunk_bytes:
                        raise SensorLogError(
                            f"a chunk of {record.uncompressed_size} bytes decoded "
                            f"(limit {max_chunk_bytes})"
                        )
                    if record.compression == "zstd":
                        record = dataclasses.replace(
                            record, compression="", data=_unzstd(record.data, max_chunk_bytes)
                        )
                    if len(record.data) > max_chunk_bytes:
                        raise SensorLogError(f"a chunk larger than {max_chunk_bytes} bytes")
                    for inner in breakup_chunk(
                        dataclasses.replace(record, uncompressed_size=len(record.data))
                    ):
                        yield from emit(inner)
                else:
                    yield from emit(record)
        except SensorLogError:
            raise
        except (McapError, EOFError, ValueError, struct.error, UnicodeDecodeError):
            return  # truncated or garbled: what was complete is returned


class _CappedReader:
    """A file whose ``read(n)`` never asks for more than what is left: a length field that
    claims a terabyte reads what is there (and the parser stops) instead of allocating it."""

    def __init__(self, fh: Any, size: int) -> None:
        self._fh, self._size = fh, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._fh.tell())
        return bytes(self._fh.read(left if n < 0 else min(n, left)))


def _unzstd(data: bytes, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes, whatever the frame claims (SensorLogError beyond)."""
    import zstandard

    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            while len(out) <= limit:
                block = reader.read(min(1 << 20, limit + 1 - len(out)))
                if not block:
                    return bytes(out)
                out += block
    except zstandard.ZstdError as exc:
        raise SensorLogError(f"a chunk does not decompress: {exc}") from exc
    raise SensorLogError(f"a chunk decodes to more than {limit} bytes")
