"""Network faults on 127.0.0.1 for the uploader's tests and benchmarks.

- :class:`CuttingProxy`: a TCP proxy that resets both connections every ``cut_every`` bytes
  going to the server, so the client sees a real broken socket mid-request and the server a real
  disconnect mid-body; it counts what passed.
- :class:`FaultInjector`: ASGI middleware around the real sink that answers scripted faults
  (5xx, 409) before the sink sees the request, or flips a byte of a request body so the real sink
  finds the checksum wrong (460).
- :class:`ServerThread`: uvicorn serving an ASGI app on a free port in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from capsight_edge.localsink import free_port

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _LoopThread:
    """An asyncio loop in a daemon thread; ``start`` returns once ``_serve`` is listening."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        raise NotImplementedError

    def start(self) -> Any:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def join(self) -> None:
        self._thread.join(15)


class CuttingProxy(_LoopThread):
    """Forwards 127.0.0.1:``port`` to ``target_port``; every ``cut_every`` client bytes (0:
    never) both sockets are reset; :meth:`cut_answer` cuts one answer halfway. ``cuts`` counts
    the resets, ``upstream_bytes`` what reached the server, ``client_bytes`` what the client
    sent (forwarded or cut off), ``downstream_bytes`` what came back."""

    def __init__(self, target_port: int, cut_every: int = 0) -> None:
        super().__init__()
        self.target_port = target_port
        self.cut_every = cut_every
        self.port = free_port()
        self.cuts = 0
        self.upstream_bytes = 0
        self.client_bytes = 0  # everything the client sent, forwarded or cut off
        self._next_cut = cut_every
        self.downstream_bytes = 0
        self._cut_answer: tuple[bytes, int] | None = None
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def cut_answer(self, request_has: bytes, after: int) -> None:
        """Once: reset the connection ``after`` bytes into the answer to the next request
        whose bytes contain ``request_has`` (a download cut halfway)."""
        self._cut_answer = (request_has, after)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
            for w in list(self._writers):
                self._reset(w)

    @staticmethod
    def _reset(w: asyncio.StreamWriter) -> None:
        sock = w.get_extra_info("socket")
        with contextlib.suppress(OSError):  # RST, not FIN: the peer sees a broken connection
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self._reset(cw)
            return
        self._writers |= {cw, sw}
        cut = asyncio.Event()
        answer_left = [-1]  # bytes of this connection's answer still allowed (-1: no limit)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
            try:
                while not cut.is_set():
                    data = await r.read(65536)
                    if not data:
                        break
                    if up and self._cut_answer and self._cut_answer[0] in data:
                        answer_left[0], self._cut_answer = self._cut_answer[1], None
                    if not up:
                        if 0 <= answer_left[0] <= len(data):
                            w.write(data[: answer_left[0]])
                            await w.drain()
                            self.downstream_bytes += answer_left[0]
                            self.cuts += 1
                            cut.set()
                            break
                        if answer_left[0] > 0:
                            answer_left[0] -= len(data)
                        self.downstream_bytes += len(data)
                    if up:
                        self.client_bytes += len(data)
                    if up and self.cut_every:
                        room = self._next_cut - self.upstream_bytes
                        if len(data) >= room:
                            w.write(data[:room])
                            self.upstream_bytes += room
                            self._next_cut += self.cut_every
                            self.cuts += 1
                            cut.set()
                            break
                    if up:
                        self.upstream_bytes += len(data)
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                cut.set()
            finally:
                if cut.is_set():
                    self._reset(cw)
                    self._reset(sw)
                else:
                    w.close()

        await asyncio.gather(pump(cr, sw, True), pump(sr, cw, False))
        self._writers -= {cw, sw}

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.join()


@dataclass
class Fault:
    """Answer ``status`` (or, with ``corrupt``, flip a byte of the body) to the next ``times``
    requests with this ``method`` whose path starts with ``path``."""

    method: str
    status: int = 0
    times: int = 1
    path: str = "/files/"
    corrupt: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0


class FaultInjector:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, int]] = []  # method, path, status
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def _match(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.method == method and path.startswith(f.path) and f.hits < f.times:
                    f.hits += 1
                    return f
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        fault = self._match(method, path)
        status_box = [0]

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        if fault is not None and not fault.corrupt:
            while (await receive()).get("more_body"):
                pass  # read the body away, like a server that fails after reading
            headers = [(b"tus-resumable", b"1.0.0")] + [
                (k.lower().encode(), v.encode()) for k, v in fault.headers.items()
            ]
            await recording_send(
                {"type": "http.response.start", "status": fault.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": b"injected fault\n"})
        elif fault is not None:
            flipped = [False]

            async def corrupting_receive() -> Message:
                message = await receive()
                body = message.get("body", b"")
                if message["type"] == "http.request" and body and not flipped[0]:
                    flipped[0] = True
                    message = {**message, "body": bytes([body[0] ^ 0xFF]) + body[1:]}
                return message

            await self.app(scope, corrupting_receive, recording_send)
        else:
            await self.app(scope, receive, recording_send)
        self.seen.append((method, path, status_box[0]))


class ServerThread(_LoopThread):
    """uvicorn serving ``app`` on 127.0.0.1 in this process."""

    def __init__(self, app: Any, port: int = 0) -> None:
        super().__init__()
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    async def _serve(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="auto"
        )
        self._server = uvicorn.Server(config)
        task = asyncio.ensure_future(self._server.serve())
        while not self._server.started and not task.done():
            await asyncio.sleep(0.01)
        self._ready.set()
        await task

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self.join()
