"""The clip as a browser wants it: the cart writes fragmented MP4 (a crash loses at most a
fragment), which Chromium plays but cannot seek past what it buffered (measured: it reports
2.4 s for a 6.5 s clip). Ingest remuxes it once, without re-encoding, into a plain MP4 with its
index first (``faststart``), served with Range requests so review can jump to any moment."""

from __future__ import annotations

from pathlib import Path

REVIEW_CLIP = "review.mp4"


def remux_faststart(src: Path, dst: Path) -> None:
    import av

    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        with av.open(str(dst), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            ostream = out.add_stream_from_template(stream)
            for packet in inp.demux(stream):
                if packet.dts is None:
                    continue
                packet.stream = ostream
                out.mux(packet)
