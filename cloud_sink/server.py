"""Serving the sink: uvicorn with a deadline on every request head.

uvicorn closes idle keep-alive connections, but a client that sends a request head one byte at
a time keeps its connection for as long as it likes (slowloris). :class:`GuardedH11Protocol`
gives every connection ``[timeouts] header_s`` to deliver a whole request head, from when it
opens and again after each response; a connection that misses it is closed. Bodies have their
own deadline in the tus endpoint (``body_stall_s``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from cloud_sink.config import Timeouts


class GuardedH11Protocol(H11Protocol):
    header_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
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

    def data_received(self, data: bytes) -> None:
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


def serve(app: Any, host: str, port: int, timeouts: Timeouts) -> None:
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
    protocol = type("SinkH11Protocol", (GuardedH11Protocol,), {"header_s": timeouts.header_s})
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        http=protocol,
        timeout_keep_alive=max(1, round(timeouts.keep_alive_s)),
    )
