"""Serving the sink: uvicorn with a deadline on every request head.

uvicorn closes idle keep-alive connections, but a client that sends a request head one byte at
a time keeps its connection for as long as it likes (slowloris). :class:`GuardedH11Protocol`
gives every connection ``[timeouts] header_s`` to deliver a whole request head, from when it
opens and again after each response; a connection that misses it is closed. Bodies have their
own deadline in the tus endpoint (``body_stall_s``).

A request head has a size limit too (``[limits] head_bytes``), counted before the parser sees
it, so that the answer does not depend on how TCP cut the stream: a head over it is answered
431 and the connection is closed gracefully (our side shuts its writing, then reads and
discards what the client still sends for a moment), so the client reads the 431 instead of a
connection reset.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from cloud_sink.config import Limits, Timeouts

#: After a 431, how long and how much the client may still send before the connection closes.
LINGER_S, LINGER_BYTES = 2.0, 4 * 1024 * 1024
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class GuardedH11Protocol(H11Protocol):
    header_s = 10.0
    head_bytes = 64 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._discarding = -1  # bytes still accepted while lingering; -1: not lingering
        self._arm()

    def _awaiting_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_s, self._head_deadline)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._awaiting_head() and not self.transport.is_closing():
            self.transport.close()

    def _head_too_large(self, data: bytes) -> bool:
        """Whether, awaiting a request head, the bytes so far pass ``head_bytes`` with no end
        of the head among them."""
        if self.conn.their_state is not h11.IDLE:
            return False
        buffered = self.conn.trailing_data[0]
        if len(buffered) + len(data) <= self.head_bytes:
            return False
        return b"\r\n\r\n" not in (buffered + data)[: self.head_bytes + 4]

    def _refuse_head(self) -> None:
        self._disarm()
        msg = f"the request head is over {self.head_bytes} bytes".encode()
        self.transport.write(TOO_LARGE % (len(msg), msg))
        self._discarding = LINGER_BYTES
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._discarding >= 0:
            self._discarding -= len(data)
            if self._discarding < 0:
                self.transport.close()
            return
        if self._head_too_large(data):
            self._refuse_head()
            return
        super().data_received(data)
        if self._awaiting_head():
            self._arm()
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle now: the keep-alive timeout applies until bytes arrive

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


#: glibc's ``mallopt`` parameters (malloc.h) and the values the sink serves with.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
HEAP = {M_MMAP_THRESHOLD: 8 << 20, M_TRIM_THRESHOLD: 32 << 20, M_TOP_PAD: 16 << 20}


def keep_heap() -> bool:
    """Let the process keep freed heap memory for reuse instead of giving it back at once.

    An upload's body arrives as one new buffer per socket read; with glibc's defaults the heap
    top is trimmed (and big buffers unmapped) as they are freed, so the next ones fault fresh
    pages in: about 300,000 minor faults per GiB received, measured. With these values (heap
    kept up to 32 MiB above what is in use, buffers under 8 MiB from the heap) a 1 GiB upload
    took about 1.4 s of the sink's CPU instead of 1.9 s, with almost no faults, and its peak
    memory did not grow. Only glibc has ``mallopt``; elsewhere this does nothing and says so
    (False)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's own C library, no search
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in HEAP.items())


def serve(app: Any, host: str, port: int, timeouts: Timeouts, limits: Limits) -> None:
    """Serve until SIGINT/SIGTERM. Logging is the caller's (``capsight_edge.logs.configure``):
    uvicorn's own lines go through the same handler and format; its access log is off (the
    app writes its own, :mod:`cloud_sink.observe`)."""
    import logging

    import uvicorn

    ours = logging.getLogger("capsight")
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = list(ours.handlers)
        lg.setLevel(max(ours.level, logging.INFO))
        lg.propagate = False
    if not keep_heap():
        ours.info("no glibc mallopt here: the heap keeps its default trimming")
    protocol = type(
        "SinkH11Protocol",
        (GuardedH11Protocol,),
        {"header_s": timeouts.header_s, "head_bytes": limits.head_bytes},
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        http=protocol,
        h11_max_incomplete_event_size=limits.head_bytes + 4,
        timeout_keep_alive=max(1, round(timeouts.keep_alive_s)),
    )
